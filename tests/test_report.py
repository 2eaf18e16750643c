"""`conformance report`: one self-contained HTML page, everything from a results file escaped, drill-downs."""

from __future__ import annotations

import base64
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conformance import generate
from conformance.cli import main
from conformance.evidence import MAX_ELEMENTS
from conformance.report import github_anchor
from conformance.report_matrix import format_ratio
from conformance.properties import Record
from conformance.spec import load_spec
from conformance.vocabulary import Property

from results_sample import WRONG, break_property, find, read, save, write
from wrong_gradients import SCALED_W1, scaled_w1_json

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>"
WRONG_NAME = WRONG


class Page(HTMLParser):
    """Every start tag with its attributes, the ids, and the text of script and style elements."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: set[str] = set()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._in: str | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        self._in = tag if tag in ("script", "style") else None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts.append(data)
        elif self._in == "style":
            self.styles.append(data)

    def handle_endtag(self, tag):
        self._in = None

    def attrs(self, name: str) -> list[str]:
        return [a[name] for _, a in self.tags if a.get(name) is not None]


@pytest.fixture
def report(tmp_path):
    """Results with one failing plug-in cell, reported to tmp/site/index.html; returns (html, page, dir)."""
    def make(data=None, *extra):
        results = write(tmp_path / "results.json")
        if data is not None:
            results = save(tmp_path / "results.json", data(read(results)))
        out = tmp_path / "site" / "index.html"
        assert main(["report", str(results), "-o", str(out), *extra]) == 0
        html = out.read_text()
        return html, Page(html), out.parent

    return make


def test_text_from_results_files_is_escaped(report):
    def inject(data):
        cell = find(data, verdict="non-conformant")
        cell["reason"] = cell["repro"] = HOSTILE
        cell["sections"] = [HOSTILE, "mha \u00a77.1"]
        cell["counterexample"]["mask"] = HOSTILE
        cell["environment"]["torch"] = HOSTILE
        cell["samples"]["columns"][0] = HOSTILE
        cell["evidence"].update(outputs=None, absent={"outputs": HOSTILE})  # shown beside the heatmaps
        data["environments"][0]["cpu"] = HOSTILE
        data["environments"][0]["packages"][HOSTILE] = "1.0"
        data["command"] = [HOSTILE]
        find(data, verdict="unsupported")["reason"] = HOSTILE
        return data

    html, page, _ = report(inject)
    assert "<script>alert" not in html and "<img" not in html and "alert(2)>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert [t for t, _ in page.tags].count("script") == 1  # the page's own, with no data in it
    assert "alert" not in "".join(page.scripts) and not any(t == "img" for t, _ in page.tags)
    assert not [(t, k) for t, a in page.tags for k in a if k.startswith("on")]  # no event handler attributes
    assert any(HOSTILE in (a.get("title") or "") for _, a in page.tags)  # shown, as text, in a tooltip


def test_the_page_is_self_contained(report):
    html, page, site = report()
    assert not page.attrs("src")  # nothing loaded: scripts, images and styles are inline
    assert not [t for t, _ in page.tags if t in ("link", "iframe", "object", "embed", "img", "base")]
    for href in page.attrs("href"):
        assert not re.match(r"(?i)(https?:)?//", href), href
        if href.startswith("#"):
            assert href[1:] in page.ids, f"dangling anchor {href}"
        elif href.startswith("npz/"):
            assert (site / href).is_file()
    styles = "".join(page.styles)
    assert "@import" not in styles and "url(" not in styles
    assert "http://" not in html and "https://" not in html


def test_totals_matrix_and_drill_down(report):
    html, page, _ = report()
    totals = dict(re.findall(r'<div class="total v-([\w-]+)"><b>(\d+)</b>', html))
    assert totals == {"conformant": "3", "non-conformant": "1", "unsupported": "1", "not-available": "1",
                      "known-deviation": "0", "error": "0"}
    # a table per component, its implementations as rows
    tables = [a["id"] for t, a in page.tags if t == "table" and "matrix" in a.get("class", "")]
    assert tables == ["matrix-ffn", "matrix-mha"]
    rows = re.findall(r"<tr><th>([^<]+)</th>", html[html.index('id="matrix-mha"'):])
    assert rows[:2] == [WRONG_NAME, "numpy"] or rows[:2] == ["numpy", WRONG_NAME]
    # a column group per device and per mode in it; folded at first where nothing ran (mha on cuda)
    groups = {a["data-g"]: a for t, a in page.tags if t == "th" and "grp" in a.get("class", "")}
    assert len(groups) == (1 + 1) + (2 + 3)
    assert any("data-idle" in a for a in groups.values())
    # each matrix cell links to its slot's section
    links = [a["href"][1:] for t, a in page.tags if t == "a" and a.get("href", "").startswith("#mha")]
    assert "mha--numpy--cpu--eager--float32" in links and set(links) <= page.ids
    section = _section(html, "mha--numpy--cpu--eager--float32")
    assert 'class="scatter"' in section and "against d_model" in section
    assert "reproduce" in section.lower() and "conformance check mha --impl numpy --dtype float32" in section
    # a conformant cell keeps no arrays (the engine keeps a failing example's), so no heatmaps and no .npz:
    # the report no longer runs implementations to draw them
    assert "reference (NumPy, float64)" not in section and ".npz" not in section


def test_what_needs_attention_leads_and_what_did_not_run_is_counted(report):
    """Failures first (non-conformant, error, known deviation, over half the budget, in that order), then
    the matrix; slots that did not run get no section each, only a count per reason."""
    def mixed(data):
        error = json.loads(json.dumps(find(data, component="ffn")))
        error.update(implementation="broken", verdict="error", reason="RuntimeError: out of memory", max_ratio=None)
        deviating = json.loads(json.dumps(find(data, verdict="non-conformant")))
        deviating.update(implementation="deviating", verdict="known-deviation", deviation="some-entry")
        near = find(data, component="mha", dtype="float64")
        near["max_ratio"] = 0.75
        more_missing = json.loads(json.dumps(find(data, verdict="not-available")))
        more_missing["dtype"] = "float64"
        data["cells"] += [error, deviating, more_missing]
        return data

    html, page, _ = report(mixed)
    headings = re.findall(r'<h3 class="group" id="attention-([\w-]+)">[^(]+\((\d+)\)', html)
    assert headings == [("non-conformant", "1"), ("error", "1"), ("known-deviation", "1"), ("near", "1")]
    assert html.index('id="attention"') < html.index('id="matrix"') < html.index('id="conformant"')
    attention = html[html.index('id="attention"'):html.index('id="matrix"')]
    assert "mha numpy cpu eager float64" in attention  # 0.75 of its budget
    assert "mha numpy cpu eager float32" not in attention  # 0.0072 of it
    # no section for a slot that did not run; one row per reason, with how many and where
    assert not [i for i in page.ids if i.endswith(("--compiled--float32", "--cuda--eager--float32"))]
    not_run = html[html.index('id="not-run"'):html.index('id="environments"')]
    assert re.search(r'not-available</span></td><td class="n">2</td><td class="reason">device cuda not available',
                     not_run)
    assert "dtypes: all" in not_run and "modes: eager;" in not_run and "implementations: numpy;" in not_run
    # their matrix cells link to that row
    cuda = [a["href"] for t, a in page.tags if t == "a" and "cuda" in (a.get("title") or "")]
    assert cuda and {h[1:] for h in cuda} <= {i for i in page.ids if i.startswith("not-run-")}


def _section(html: str, ident: str) -> str:
    start = html.index(f'<details class="slot" id="{ident}"')
    return html[start:html.index("</details>", start)]


def test_a_failing_cell_shows_its_counterexample_sections_and_npz(report, root):
    html, page, site = report()
    data = read(site.parent / "results.json")
    cell = find(data, verdict="non-conformant")
    ident = next(i for i in page.ids if i.endswith("InvertedMask--cpu--eager--float32"))
    section = _section(html, ident)
    assert "minimal counterexample" in section and "example: output" in section
    assert re.search(r'Spec sections of the failure:\s*<a href="[^"]+">mha \u00a77', section)
    # spec links are relative, and lead to the spec file and one of its headings
    hrefs = [h for h in re.findall(r'href="([^"]+)"', section) if ".md#" in h]
    path, anchor = hrefs[0].split("#")
    assert Path(os.path.normpath(site / path)) == root / "spec" / "mha.md"
    headings = re.findall(r"^#{2,3} (.+)$", (root / "spec" / "mha.md").read_text(), re.M)
    assert anchor in {github_anchor(h) for h in headings}
    # the .npz holds the counterexample's arrays as the implementation received them, from the results
    npz = site / f"npz/{ident}.npz"
    assert f'href="npz/{ident}.npz"' in section
    with np.load(npz, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert meta["example"] == cell["counterexample"] and meta["cell"]["dtype"] == "float32"
        weights, inputs = generate.make_arrays(load_spec(root / "spec" / "mha.md"), cell["counterexample"])
        np.testing.assert_array_equal(z["weight.W_q"], weights["W_q"].astype(np.float32).astype(np.float64))
        np.testing.assert_array_equal(z["input.attention_mask"], inputs["attention_mask"])
        assert z["reference.output"].shape == z["input.query"].shape == z["output.output"].shape
        assert meta["windows"] == {} and meta["omitted"] == {}
    # the attention weights: the reference's, the implementation's and their difference, side by side
    assert "reference (NumPy, float64)" in section and f"{WRONG_NAME}, float32" in section
    assert "|difference|" in section


def test_a_failed_property_shows_its_name_reason_and_repro(report):
    """A cell that failed a property alone leads the failures with it; a property broken beside another
    failure gets its own reason and command; the properties that held take one line."""
    def broken(data):
        wrong = break_property(find(data, verdict="non-conformant"), Property.BATCH_INDEPENDENCE,
                               "the batch reordered: output 'output' changed", alone=False)
        # two it did not check: one no example was left for, one the examples did not reach
        others = [n for n in wrong["properties"] if n != Property.BATCH_INDEPENDENCE]
        for name, why in zip(others, ({}, {"the example does not reach it": 4})):
            wrong["properties"][name] = Record(sections=wrong["properties"][name]["sections"],
                                               not_reached=why).to_json()
        break_property(find(data, component="ffn"), Property.STATELESSNESS,
                       "the same call again on the same instance: output 'output' changed by <7> eps")
        return data

    html, page, site = report(broken)
    attention = html[html.index('id="attention-non-conformant"'):html.index('id="matrix"')]
    assert "ffn numpy cpu eager float32" in attention and "property statelessness" in attention
    section = _section(html, "ffn--numpy--cpu--eager--float32")
    assert "<code>statelessness</code>" in section and 'badge v-non-conformant">failed' in section
    assert "output 'output' changed by &lt;7&gt; eps" in section and "<7>" not in section  # escaped
    assert "the command that replays it are the cell's, above" in section  # the cell's repro is the property's
    assert "example on which property statelessness failed" in section and '"property":"statelessness"' in section
    assert "A failed property keeps no arrays" in section and "before conformance-results/4" not in section
    assert re.search(r"Properties held \([^)]*\): batch_independence \(\d+\)", section)
    ident = next(i for i in page.ids if i.endswith("InvertedMask--cpu--eager--float32"))
    section = _section(html, ident)
    assert "<code>batch_independence</code>" in section and "the batch reordered" in section
    assert "minimal counterexample" in section  # the cell's own failure is still the reference comparison's
    repros = re.findall(r"Reproduce it:(?:</p>)?\s*<pre>([^<]*)</pre>", section)
    assert len(repros) == 2 and "batch_independence" in repros[1] and "batch_independence" not in repros[0]
    assert re.search(r"Properties not checked \(the cell ended before an example did\): \w+\.", section)
    assert "not reached: the example does not reach it (4 examples)" in section


def test_a_gradient_failure_needs_attention_and_shows_its_gradients_reason_repro_and_npz(report):
    """A cell whose verdict is conformant and whose gradients failed: marked in the matrix (text, with the
    reason in the tooltip), listed under what needs attention, and its section has a row per gradient, the
    reason, the example, the command that replays it and a .npz of the cotangents and both gradients."""
    def add(data):
        data["cells"].append(scaled_w1_json())
        return data

    html, page, site = report(add)
    cell = scaled_w1_json()
    gradients = cell["gradients"]
    ident = next(i for i in page.ids if i.endswith("ScaledW1Gradient--cpu--eager--float32"))
    # the matrix: the cell keeps its verdict and marks its gradients; the legend says what the mark means
    marked = [a for t, a in page.tags if t == "td" and "gx" in a.get("class", "").split()]
    [td] = [a for a in marked if "sum" not in a["class"]]
    assert "v-conformant" in td["class"]
    folded = [a for a in marked if "sum" in a["class"]]  # the device's and the mode's column, when folded
    assert len(folded) == 2 and all("1 with non-conformant gradients" in a["title"] for a in folded)
    [link] = [a for t, a in page.tags if t == "a" and a.get("href") == f"#{ident}"]
    assert "gradients non-conformant: gradient 'W_1' differs" in link["title"]
    assert '<b class="gx">\u2207\u2717</b> non-conformant' in html and 'content: "\u2207\u2717"' in html
    # what needs attention: its own group, the reason in the summary line
    heading = re.search(r'<h3 class="group" id="attention-gradients">Non-conformant gradients \((\d+)\)', html)
    assert heading and heading[1] == "1"
    assert re.search(r'<div class="total v-non-conformant gradients"><b>1</b><a href="#attention-gradients">', html)
    totals = dict(re.findall(r'<div class="total v-([\w-]+)"><b>(\d+)</b>', html))
    assert totals["conformant"] == "4" and totals["non-conformant"] == "1"  # the verdicts stay the forward ones
    attention = html[html.index('id="attention-gradients"'):html.index('id="matrix"')]
    assert f'id="{ident}"' in attention and "gradients: gradient &#39;W_1&#39; differs" in attention
    section = _section(html, ident)
    assert 'badge v-conformant">conformant' in section and 'badge v-non-conformant">gradients non-conformant' in section
    table = section[section.index("<th>gradient</th>"):]
    rows = dict(re.findall(r"<tr><td><code>(\w+)</code></td>(.*?)</tr>", table[:table.index("</table>")], re.S))
    assert set(rows) == {"x", "W_1", "b_1", "W_2", "b_2"}
    assert [name for name, row in rows.items() if "<b>failed</b>" in row] == ["W_1"]
    assert "gradient 'W_1' differs from the reference by" in section
    assert re.search(r"Spec sections of the gradients' failure:\s*<a href=\"[^\"]+ffn.md#11", section)
    repro = re.search(r"Reproduce the gradients' failure:</p>\s*<pre>([^<]*)</pre>", section)[1]
    assert repro == gradients["repro"] and f"--impl {SCALED_W1}" in repro and '"gradients":true' in repro
    # the .npz: the cotangents, the implementation's gradients and the reference's, from the results
    npz = f"npz/{ident}-gradients.npz"
    assert f'href="{npz}"' in section
    with np.load(site / npz, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert meta["example"] == gradients["counterexample"] and meta["cell"]["dtype"] == "float32"
        assert {"cotangent.y", "gradient.W_1", "reference_gradient.W_1", "gradient.x"} <= set(z.files)
        scale = np.abs(z["reference_gradient.W_1"]).max()
        np.testing.assert_allclose(z["gradient.W_1"], 1.01 * z["reference_gradient.W_1"], atol=1e-4 * scale)
        assert np.abs(z["gradient.W_1"] - z["reference_gradient.W_1"]).max() > 0.005 * scale


def test_conformant_gradients_take_a_few_words_and_old_files_none(report):
    html, page, _ = report()
    section = _section(html, "ffn--numpy--cpu--eager--float32")
    assert re.search(r"Gradients conformant on \d+ examples, largest error/budget [\d.e-]+ \((x|[Wb]_[12])\)\.",
                     section)
    assert "v-conformant g" in html  # the matrix marks them; the no-vjp plug-in's cell is not marked
    wrong = next(a for t, a in page.tags if t == "td" and "v-non-conformant" in a.get("class", "")
                 and "sum" not in a.get("class", ""))
    assert not {"g", "gx", "gq"} & set(wrong["class"].split())

    def version_6(data):
        for c in data["cells"]:
            del c["gradients"]
        return {**data, "schema": "conformance-results/6"}

    html, page, _ = report(version_6)
    assert "Gradients conformant" not in html and "Gradients unsupported" not in html
    assert not [a for t, a in page.tags if t == "td" and {"g", "gx", "gq"} & set(a.get("class", "").split())]


def test_a_cell_without_arrays_says_so_once(report):
    """A failing cell from a file older than conformance-results/4 has no evidence: one short line, no .npz."""
    def version_3(data):
        for c in data["cells"]:
            del c["evidence"]
        return {**data, "schema": "conformance-results/3"}

    html, page, site = report(version_3)
    ident = next(i for i in page.ids if i.endswith("InvertedMask--cpu--eager--float32"))
    section = _section(html, ident)
    assert section.count("keep no arrays") == 1 and ".npz" not in section and not (site / "npz").exists()
    assert html.count("keep no arrays") == 1  # the conformant cells are not expected to have any


def test_evidence_past_the_bound_is_refused_in_one_line(report):
    """A crafted file cannot make a cell add megabytes: evidence over MAX_ELEMENTS is not drawn nor written."""
    def oversized(data):
        ev = find(data, verdict="non-conformant")["evidence"]
        big = np.zeros((64, 64), dtype=np.float64)  # 4096 elements each, over the cell's bound in all
        for name in ("output", "attention_weights"):
            ev["reference"][name] = {"shape": [64, 64], "dtype": "float64",
                                     "data": base64.b64encode(big.tobytes()).decode()}
        return data

    html, page, site = report(oversized)
    ident = next(i for i in page.ids if i.endswith("InvertedMask--cpu--eager--float32"))
    section = _section(html, ident)
    assert section.count("cannot be shown") == 1 and f"more than the {MAX_ELEMENTS}" in section
    assert ".npz" not in section and "reference (NumPy, float64)" not in section


def test_plugins_named_in_results_are_not_run_by_the_report(report, tmp_path):
    """A results file could name any file as an implementation; the report does not import it (it runs
    nothing: the heatmaps are drawn from the arrays the results kept)."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n"
                    "from impls.numpy.mha import Implementation as Impl\n")

    def point_at_evil(data):
        find(data, verdict="non-conformant")["implementation"] = f"{evil}:Impl"
        return data

    html, _, _ = report(point_at_evil)
    assert not marker.exists()
    assert f"{evil}:Impl, float32" in html  # its attention weights, as the results kept them


def test_spec_url_and_baseline(report, tmp_path):
    baseline = tmp_path / "baseline.json"
    base = read(write(tmp_path / "b0.json"))
    save(baseline, base)

    def regress(data):
        cell = find(data, component="ffn")
        cell.update(verdict="non-conformant", reason="example: output 'output' differs from the reference")
        return data

    html, page, _ = report(regress, "--baseline", str(baseline), "--spec-url", "https://example.org/spec/")
    assert "https://example.org/spec/mha.md#" in html  # links, not fetches
    assert not page.attrs("src")
    cell = next(a for t, a in page.tags if t == "td" and " reg" in a.get("class", ""))
    assert "v-non-conformant" in cell["class"]
    section = html[html.index('id="comparison"'):html.index('id="conformant"')]  # the slots' sections follow it
    assert "Regressions" in section and "ffn numpy cpu eager float32</a>: was conformant, now non-conformant" in section


def test_ratio_format():
    assert [format_ratio(r) for r in (None, 0.0, 0.00721, 0.5, 1.25, 4e-5, float("inf"))] == \
        ["-", "0", "0.0072", "0.5", "1.2", "4e-05", "inf"]


def test_a_slot_from_several_environments_shows_the_worst_and_lists_the_others(report, tmp_path):
    def two_machines(data):
        other = json.loads(json.dumps(data))
        other["environments"][0]["cpu"] = "Other CPU 9000"
        failing = find(other, component="ffn")
        failing.update(verdict="error", reason="RuntimeError: out of memory")
        # and a Keras cell from another backend (the report used to try to rerun it; now it reads it only)
        keras = json.loads(json.dumps(find(other, component="mha", implementation="numpy", dtype="float32",
                                           device="cpu", mode="eager")))
        keras.update(implementation="keras", framework="keras", backend="jax")
        other["cells"].append(keras)
        other["cells"] = [{**c, "env": 1} for c in other["cells"]]
        return {**data, "environments": data["environments"] + other["environments"],
                "cells": data["cells"] + other["cells"]}

    html, page, _ = report(two_machines)
    assert "Other CPU 9000" in html and "environment 1" in html
    section = _section(html, "ffn--numpy--cpu--eager--float32")
    assert "badge v-error" in section and "RuntimeError: out of memory" in section
    assert "The same slot in other environments" in section and "v-conformant" in section
    assert "mha--keras--jax--cpu--eager--float32" in page.ids
