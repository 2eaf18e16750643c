"""`conformance report`: one self-contained HTML file over any number of results files.

The report only reads results: it runs no implementation and recomputes no
reference. The page (templates/report.html, rendered by jinja2 with
autoescaping on, so every reason, repr and name from a results file is shown
as text) leads with what needs attention: the non-conformant slots, the
errors, the known deviations and the slots that used over half their budget,
in that order, each a section that opens on a click. Then the matrix
(report_matrix.py: a table per component, implementations as rows, columns
device > mode > dtype, foldable), the comparison with --baseline, the other
slots that ran, the slots that did not (unsupported, not available) as counts
grouped by reason, and the environments the results came from. A slot's
section has the spec sections involved (linked), the errors against their
budgets, a scatter plot of error / budget against the examples' shape
parameters, the minimal or worst example with its reproduction command, and,
where the results kept the failing example's arrays (conformance/evidence.py),
a .npz of them and for attention components the attention weights of the
implementation beside the reference's (report_arrays.py), and the spec's
properties: those that held on one line (a report of thousands of cells has
thousands of such lines), each other a row, a failure with its reason and the
command that replays it. The gradients, judged apart from the verdict, are a
marker under the matrix cell and a line in the slot's section (its largest
error / budget), or for a failure a row per gradient with its largest error /
budget, the reason, the example, the command that replays it, and a .npz of
the cotangents and of the implementation's and the reference's gradients; a
slot whose gradients failed needs attention whatever its verdict. CSS and the
one small script are inline and graphics are inline SVG, so the file opens
from disk with nothing fetched.

Everything is read and rendered before anything is written; then the .npz
files (npz/ beside the page) and the page are each written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence
from pathlib import Path

import jinja2
import markupsafe

from conformance import __version__
from conformance.atomic import atomic_write
from conformance.compare import Change, Comparison, compare, failed_property
from conformance.engine import repro_command
from conformance.evidence import GRADIENT_GROUPS, EvidenceError, unpack
from conformance.merge import by_slot, merge_documents, representative
from conformance.report_arrays import attention, gradient_npz_bytes, npz_bytes
from conformance.report_figures import scatter_plot
from conformance.report_matrix import (GRADIENT_MARKS, axis_order, cell_text, format_ratio, gradient_mark,
                                       impl_order, slot_order, tables, walk)
from conformance.results import failed_gradient, gradients_failed
from conformance.schema import load_results
from conformance.spec import Spec, SpecError, find_spec_dir, load_spec
from conformance.vocabulary import DEVICES, DTYPES, Held, impl_label, MODES, Slot, Verdict

#: A reason shown in a section's one-line summary is cut to this many characters.
SUMMARY_REASON = 160
#: The values of an axis named for the slots that did not run for one reason, before "and N more".
SPAN_NAMES = 8
#: The verdict whose colour a property's status is shown in.
HELD_COLOUR = {Held.HELD: Verdict.CONFORMANT, Held.FAILED: Verdict.NON_CONFORMANT,
               Held.NON_DETERMINISTIC: Verdict.KNOWN_DEVIATION,
               Held.NOT_CHECKED: Verdict.UNSUPPORTED}


def near(cell: dict[str, Any]) -> bool:
    """A conformant cell whose largest error used over half its budget."""
    return cell["verdict"] == Verdict.CONFORMANT and (cell["max_ratio"] or 0) > 0.5


#: What needs attention, in the order the page shows it: (id, heading, which slots). A slot is shown in the
#: first group it belongs to.
ATTENTION_GROUPS = (
    ("non-conformant", "Non-conformant", lambda c: c["verdict"] == Verdict.NON_CONFORMANT),
    ("error", "Errors", lambda c: c["verdict"] == Verdict.ERROR),
    ("gradients", "Non-conformant gradients", lambda c: gradients_failed(c["gradients"])),
    ("known-deviation", "Known deviations", lambda c: c["verdict"] == Verdict.KNOWN_DEVIATION),
    ("near", "Conformant, over half the budget", near),
)


@dataclass
class Written:
    html: Path
    npz: int
    notes: list[str]


def write_report(files: Sequence[str], output: Path | str, *, baseline: str | None = None,
                 spec_url: str | None = None, factor: float = 2.0, floor: float = 1e-3,
                 command: list[str] | None = None) -> Written:
    """Read `files` (and `baseline`), render the page, then write the .npz files and the page."""
    docs = [(str(f), load_results(f)) for f in files]
    base = load_results(baseline) if baseline else None
    doc = merge_documents(docs, list(command if command is not None else sys.argv))
    comparison = compare(base, doc, factor=factor, floor=floor) if base is not None else None
    output = Path(output)
    builder = _Builder(doc, output.parent, spec_url, comparison)
    page = builder.page(files=[f for f, _ in docs], baseline=baseline)
    html = _environment().get_template("report.html").render(**page)
    for name, data in builder.npz.items():
        atomic_write(output.parent / "npz" / name, lambda f, data=data: f.write(data), binary=True)
    atomic_write(output, lambda f: f.write(html))
    return Written(output, len(builder.npz), builder.notes)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("conformance", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["ratio"] = format_ratio
    env.filters["num"] = lambda v: "-" if v is None else f"{v:.4g}"
    env.filters["tojson_text"] = lambda v: text(json.dumps(v, sort_keys=False))
    env.filters["text"] = text
    return env


def text(value: Any) -> markupsafe.Markup:
    """Escaped for an element's content, where only &, < and > need it (quotes stay quotes, which keeps
    JSON and commands short and readable); never for an attribute's value."""
    s = str(value)
    return markupsafe.Markup(s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown viewers) give a heading: `7.4 Query rows` -> `74-query-rows`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def slot_id(key: Slot, taken: set[str]) -> str:
    """An id for HTML anchors and .npz names: the slot's fields, filename-safe, unique, not too long."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", "--".join(str(p) for p in key if p is not None)).strip("-.")
    if len(base) > 120:  # a plug-in named by a long path
        base = f"{base[:60]}-{hashlib.sha256(base.encode()).hexdigest()[:10]}-{base[-40:]}"
    ident, n = base, 1
    while ident in taken:
        n += 1
        ident = f"{base}-{n}"
    taken.add(ident)
    return ident


class _Builder:
    """Turns one merged document into the template's context."""

    def __init__(self, doc: dict[str, Any], out_dir: Path, spec_url: str | None, comparison: Comparison | None):
        self.doc, self.out_dir, self.spec_url, self.comparison = doc, out_dir, spec_url, comparison
        self.groups_of = by_slot(doc["cells"])
        self.slots = {k: representative(v) for k, v in self.groups_of.items()}
        self.changes = comparison.by_key() if comparison else {}
        self.notes: list[str] = []
        self.npz: dict[str, bytes] = {}
        self.specs = self._specs()
        self.not_run, self.not_run_of = self._not_run()
        taken: set[str] = set()
        ids = {k: slot_id(k, taken) for k in sorted(self.slots, key=str)}
        # where a slot links to: its own section, or for a slot that did not run the row of its reason
        self.anchor = {k: ids[k] if Verdict(c["verdict"]).ran else self.not_run_of[k] for k, c in self.slots.items()}

    # --- specs and links --------------------------------------------------------------------

    def _specs(self) -> dict[str, Spec]:
        try:
            self.spec_dir: Path | None = find_spec_dir()
        except SpecError as e:
            self.spec_dir = None
            self.notes.append(f"no spec links: {e}")
            return {}
        specs = {}
        for component in sorted({k.component for k in self.slots}):
            path = self.spec_dir / f"{component}.md"
            if not re.fullmatch(r"[a-z0-9_]+", component) or not path.is_file():
                self.notes.append(f"no spec for component {component!r} in {self.spec_dir}")
                continue
            try:
                specs[component] = load_spec(path)
            except SpecError as e:
                self.notes.append(str(e))
        return specs

    def section_link(self, component: str, number: str) -> dict[str, Any]:
        spec = self.specs.get(component)
        text = f"{component} \u00a7{number}"
        if spec is None or number not in spec.sections:
            return {"text": text, "href": None}
        if self.spec_url:
            base = self.spec_url.rstrip("/")
        else:
            base = Path(os.path.relpath(self.spec_dir, self.out_dir.resolve())).as_posix()
        anchor = github_anchor(f"{number} {spec.sections[number]}")
        return {"text": f"{text} {spec.sections[number]}", "href": f"{base}/{component}.md#{anchor}"}

    def section_links(self, sections: list[str]) -> list[dict[str, Any]]:
        """Links for sections as results name them, `mha §7.4`; plain text for one in another form."""
        links = []
        for s in sections:
            m = re.fullmatch(r"(\S+) \u00a7(\S+)", s)
            links.append(self.section_link(m[1], m[2]) if m else {"text": s, "href": None})
        return links

    def spec_outputs(self, component: str) -> list[dict[str, Any]]:
        """Each output of a component's spec with the sections that define it, once per component
        (under its matrix) rather than in every slot's section."""
        spec = self.specs.get(component)
        if spec is None:
            return []
        return [{"name": name, "sections": [self.section_link(component, s) for s in out.sections]}
                for name, out in spec.outputs.items()]

    # --- the page ---------------------------------------------------------------------------

    def page(self, files: list[str], baseline: str | None) -> dict[str, Any]:
        order = sorted(self.slots, key=lambda k: slot_order(k, self.slots[k]["framework"]))
        ran = [k for k in order if Verdict(self.slots[k]["verdict"]).ran]
        attention_ = []
        shown: set[Slot] = set()
        for ident, title, which in ATTENTION_GROUPS:
            keys = [k for k in ran if which(self.slots[k]) and k not in shown]
            shown.update(keys)
            if keys:
                attention_.append({"id": ident, "title": title, "details": [self._slot(k) for k in keys]})
        matrix = tables(self.slots, self._leaf)
        return {
            "version": __version__,
            "created": self.doc["created"],
            "files": files,
            "baseline": baseline,
            "totals": {v: sum(c["verdict"] == v for c in self.slots.values()) for v in Verdict},
            "near_count": sum(near(c) for c in self.slots.values()),
            "gradient_failures": sum(gradients_failed(self.slots[k]["gradients"]) for k in ran),
            "cell_count": len(self.doc["cells"]),
            "attention": attention_,
            "tables": matrix,
            "gradient_marks": [(cls, mark, str(verdict)) for verdict, (cls, mark) in GRADIENT_MARKS.items()],
            "spec_outputs": {t.component: self.spec_outputs(t.component) for t in matrix},
            "all_groups": [g for t in matrix for top in t.groups for g in walk(top)],
            "details": [self._slot(k) for k in ran if k not in shown],
            "not_run": self.not_run,
            "environments": self._environments(),
            "comparison": self._comparison(),
            "notes": self.notes,
            "incomplete": self.doc.get("incomplete"),
        }

    def _leaf(self, key: Slot) -> dict[str, Any] | None:
        cell = self.slots.get(key)
        if cell is None:
            return None
        v = cell["verdict"]
        change = self.changes.get(key)
        title = f"{key.label}: {v}" + (f": {cell['reason']}" if cell["reason"] else "")
        mark = gradient_mark(cell)
        if mark is not None and cell["gradients"]["verdict"] != Verdict.CONFORMANT:  # conformant: the legend says
            title += f"\ngradients {cell['gradients']['verdict']}: {cell['gradients']['reason']}"
        if change is not None:
            title += f"\n{change.kind}: {change.what}"
        return {"id": self.anchor[key], "verdict": v, "text": cell_text(cell), "title": title, "near": near(cell),
                "change": change.kind if change else None, "gradients": mark}

    # --- slots that did not run --------------------------------------------------------------

    def _not_run(self) -> tuple[list[dict[str, Any]], dict[Slot, str]]:
        """The slots that did not run counted by verdict and reason, a row each with the axes' values they
        span; and the id of each slot's row."""
        found: dict[tuple[str, str], list[Slot]] = defaultdict(list)
        for key, cell in self.slots.items():
            if not Verdict(cell["verdict"]).ran:
                found[(cell["verdict"], cell["reason"] or "no reason given")].append(key)
        order = [Verdict.UNSUPPORTED, Verdict.NOT_AVAILABLE]
        rows, row_of = [], {}
        for n, ((verdict, reason), keys) in enumerate(sorted(
                found.items(), key=lambda item: (order.index(item[0][0]), -len(item[1]), item[0][1]))):
            ident = f"not-run-{n + 1}"
            row_of.update(dict.fromkeys(keys, ident))
            rows.append({"id": ident, "verdict": verdict, "reason": reason, "count": len(keys),
                         "where": self._span(keys)})
        return rows, row_of

    def _span(self, keys: list[Slot]) -> list[tuple[str, str]]:
        """(axis, its values among `keys`) for each axis; "all" where they are all the report has."""
        def impl(k: Slot) -> tuple:
            return impl_order((k.implementation, k.backend, self.slots[k]["framework"]))

        axes = [("components", lambda k: k.component, lambda k: k.component), ("implementations", lambda k: k.impl, impl),
                ("devices", lambda k: k.device, lambda k: axis_order(DEVICES)(k.device)),
                ("modes", lambda k: k.mode, lambda k: axis_order(MODES)(k.mode)),
                ("dtypes", lambda k: k.dtype, lambda k: axis_order(DTYPES)(k.dtype))]
        out = []
        for name, of, order in axes:
            every = {of(k) for k in self.slots}
            values = list(dict.fromkeys(of(k) for k in sorted(keys, key=order)))
            if len(values) == len(every) > 1:
                out.append((name, "all"))
            else:
                more = f" and {len(values) - SPAN_NAMES} more" if len(values) > SPAN_NAMES else ""
                out.append((name, ", ".join(values[:SPAN_NAMES]) + more))
        return out

    # --- one slot ---------------------------------------------------------------------------

    def _slot(self, key: Slot) -> dict[str, Any]:
        cell = self.slots[key]
        sections = self.section_links(cell["sections"])
        outputs = [{"name": name, "max": cell["max_error"].get(name), "p99": cell["p99_error"].get(name),
                    "budget": cell["budget"].get(name), "ratio": cell["output_ratio"].get(name)}
                   for name in dict.fromkeys([*cell["max_error"], *cell["budget"]])]
        example, which = _example(cell)
        repro = cell["repro"]
        if repro is None and example is not None:
            repro = repro_command(key.component, key.implementation, key.dtype, key.device, example, key.mode)
        ident = self.anchor[key]
        others = [{"env": c["env"], "verdict": c["verdict"], "ratio": c["max_ratio"], "reason": c["reason"]}
                  for c in self.groups_of[key] if c is not cell]
        reason = (cell["reason"] or "").strip().splitlines()
        if not reason and gradients_failed(cell["gradients"]):  # the forward comparison passed: the gradients' news
            reason = [f"gradients: {cell['gradients']['reason']}"]
        short = reason[0] if reason else ""
        return {
            "id": ident, "label": key.label, "key": key, "cell": cell, "verdict": cell["verdict"],
            "short": short if len(short) <= SUMMARY_REASON else short[:SUMMARY_REASON - 1] + "\u2026",
            "sections": sections, "outputs": outputs, "others": others,
            "scatter": scatter_plot(cell["samples"], cell["worst"], cell["max_ratio"]),
            "samples_shown": len(cell["samples"]["rows"]), "samples_total": cell["samples"]["total"],
            "example": example, "which": which, "repro": repro,
            **self._arrays(key, cell, example, which),
            "properties": self._properties(cell),
            "gradients": self._gradients(key, cell),
            "change": self.changes.get(key),
        }

    def _gradients(self, key: Slot, cell: dict[str, Any]) -> dict[str, Any] | None:
        """The slot's gradients: None where unsupported (or the cell did not run); else their verdict, the
        examples compared, the largest error / budget and of which gradient, and for a failure a row per
        gradient, the failure's spec sections, example, command and .npz."""
        record = cell.get("gradients") or {}
        verdict = record.get("verdict")
        if verdict in (None, Verdict.UNSUPPORTED):
            return None
        ratios = record["ratio"]
        worst = max(ratios, key=lambda n: ratios[n], default=None) if record["max_ratio"] is not None else None
        found = {"verdict": verdict, "examples": record["examples"], "ratio": record["max_ratio"], "worst": worst,
                 "reason": record["reason"], "rows": [], "sections": [], "example": None, "repro": None,
                 "npz": None, "arrays_note": None}
        if verdict != Verdict.NON_CONFORMANT:
            return found
        failing = failed_gradient(record)
        names = dict.fromkeys([*record["max_error"], *([failing] if failing else [])])
        found.update(
            rows=[{"name": n, "max": record["max_error"].get(n), "ratio": ratios.get(n), "failed": n == failing}
                  for n in names],
            sections=self.section_links(record["sections"]), example=record["counterexample"],
            repro=record["repro"], **self._gradient_arrays(key, cell))
        return found

    def _gradient_arrays(self, key: Slot, cell: dict[str, Any]) -> dict[str, Any]:
        """The .npz of a gradient failure's arrays, or one line on why there is none."""
        kept = cell["gradients"].get("evidence")
        if kept is None:
            return {"npz": None, "arrays_note": "The results keep no arrays of this example; the command above "
                                                "recreates them."}
        try:
            unpacked = unpack(kept, GRADIENT_GROUPS)
        except EvidenceError as e:
            return {"npz": None, "arrays_note": f"The arrays kept in the results cannot be shown: {e}."}
        name = f"{self.anchor[key]}-gradients.npz"
        self.npz[name] = gradient_npz_bytes(cell, unpacked)
        return {"npz": f"npz/{name}", "arrays_note": None}

    def _properties(self, cell: dict[str, Any]) -> dict[str, Any]:
        """The slot's properties: those that held and those no example was left to check, each kind on one
        compact line (a report of thousands of cells has thousands of these), and a row for each of the
        others, with its spec sections and, for a failure, its reason and the command that replays it (where
        that is not the cell's own, shown above)."""
        held, unchecked, rows = [], [], []
        for name, record in cell["properties"].items():
            status = Held(record["status"])
            if status == Held.HELD:
                held.append({"name": name, "examples": record["examples"], "exact": record["exact"],
                             "ratio": record["max_ratio"]})
                continue
            if status == Held.NOT_CHECKED and not record["not_reached"] and not record["reason"]:
                unchecked.append(name)
                continue
            above = record["repro"] is not None and record["repro"] == cell["repro"]
            rows.append({"name": name, "status": status, "colour": HELD_COLOUR[status],
                         "examples": record["examples"], "exact": record["exact"], "ratio": record["max_ratio"],
                         "spread": record["spread"], "sections": self.section_links(record["sections"]),
                         "reason": record["reason"] or _not_reached(record),
                         "repro": None if above else record["repro"], "repro_above": above})
        return {"held": held, "unchecked": unchecked, "rows": rows}

    def _arrays(self, key: Slot, cell: dict[str, Any], example: dict | None, which: str) -> dict[str, Any]:
        """The slot's .npz and attention heatmaps from its evidence, or one line on why there are none."""
        none = {"npz": None, "attention": None, "arrays_note": None, "arrays_of": which}
        evidence = cell.get("evidence")
        if evidence is None:
            if failed_property(cell) is not None:
                return {**none, "arrays_note": "A failed property keeps no arrays; the command above "
                                               "replays it."}
            if cell["verdict"] in (Verdict.NON_CONFORMANT, Verdict.KNOWN_DEVIATION):
                return {**none, "arrays_note": "The results keep no arrays of this example (written before "
                                               "conformance-results/4); the command above recreates them."}
            return none
        if not cell["counterexample"]:  # the arrays are those of the worked example that failed
            example, which = None, "worked example that failed"
        try:
            unpacked = unpack(evidence)
        except EvidenceError as e:
            return {**none, "arrays_note": f"The arrays kept in the results cannot be shown: {e}."}
        name = f"{self.anchor[key]}.npz"
        self.npz[name] = npz_bytes(cell, unpacked, which, example)
        heat = attention(unpacked, f"{key.impl}, {key.dtype}", evidence.get("absent") or {})
        return {**none, "npz": f"npz/{name}", "attention": heat, "arrays_of": which}

    # --- environments and the comparison -----------------------------------------------------

    def _environments(self) -> list[dict[str, Any]]:
        envs = []
        for i, env in enumerate(self.doc["environments"]):
            reported: dict[str, dict[str, Any]] = {}
            for c in self.doc["cells"]:
                extra = {k: v for k, v in c["environment"].items() if env.get(k) != v} if c["env"] == i else {}
                if extra:
                    reported.setdefault(impl_label(c["implementation"], c["backend"]), {}).update(extra)
            fields = {k: v for k, v in env.items() if k != "packages"}
            envs.append({"index": i, "fields": fields, "packages": env.get("packages", {}),
                         "reported": reported, "cells": sum(c["env"] == i for c in self.doc["cells"])})
        return envs

    def _comparison(self) -> dict[str, Any] | None:
        cmp = self.comparison
        if cmp is None:
            return None

        def row(c: Change) -> dict[str, Any]:
            return {"label": c.key.label, "what": c.what, "id": self.anchor.get(c.key)}

        return {"compared": cmp.compared, "factor": cmp.factor, "floor": cmp.floor,
                "regressions": [row(c) for c in cmp.of_kind("regression")],
                "improvements": [row(c) for c in cmp.of_kind("improvement")],
                "notes": [row(c) for c in cmp.of_kind("note")],
                "only_baseline": [k.label for k in cmp.only_baseline],
                "only_current": [k.label for k in cmp.only_current]}


def _example(cell: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The example a slot's section shows: the minimal counterexample (for a known deviation, the first
    example that deviated), else the worst one.

    When the worst was a worked example of the spec (recorded as None), it is
    the worst of the sampled drawn examples instead.
    """
    if cell["counterexample"]:
        if cell["verdict"] == Verdict.KNOWN_DEVIATION:
            return cell["counterexample"], "first example that deviated"
        if (name := failed_property(cell)) is not None:
            return cell["counterexample"], f"example on which property {name} failed"
        return cell["counterexample"], "minimal counterexample"
    if cell["worst"]:
        return cell["worst"], "worst example"
    columns, rows = cell["samples"]["columns"], cell["samples"]["rows"]
    rows = [r for r in rows if len(r) == len(columns) and isinstance(r[-1], (int, float))]
    if not rows:
        return None, ""
    top = max(rows, key=lambda r: r[-1])
    return dict(zip(columns[:-1], top[:-1])), "worst drawn example (a worked example of the spec did worse)"


def _not_reached(record: dict[str, Any]) -> str | None:
    """Why a property that was not checked was not, e.g. `not reached: no mask (12 examples)`."""
    if record["examples"] or Held(record["status"]) != Held.NOT_CHECKED:
        return None
    return "not reached: " + "; ".join(f"{reason} ({n} example{'s' if n != 1 else ''})"
                                       for reason, n in record["not_reached"].items())
