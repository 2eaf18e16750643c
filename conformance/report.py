"""`conformance report`: one self-contained HTML file over any number of results files.

The page (templates/report.html, rendered by jinja2 with autoescaping on, so
every reason, repr and name from a results file is shown as text) has: totals
per verdict; the matrix (report_matrix.py), components by
implementation[backend] > device > mode > dtype, with foldable column groups;
a section per slot with the spec
sections involved (linked), the errors against their budgets, a scatter plot
of error / budget against the examples' shape parameters, the minimal or worst
example with its reproduction command and a .npz of its arrays, and for
attention components the attention weights of each implementation side by
side; the environments the results came from; and with --baseline, the
comparison. CSS and the one small script are inline and graphics are inline
SVG, so the file opens from disk with nothing fetched.

Everything is read and rendered before anything is written; then the .npz
files (npz/ beside the page) and the page are each written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np

from conformance import __version__
from conformance.atomic import atomic_write
from conformance.compare import Change, Comparison, compare
from conformance.engine import repro_command
from conformance.merge import by_slot, merge_documents, representative
from conformance.report_arrays import ATTENTION, Recomputer, npz_bytes, reference
from conformance.report_figures import describe_index, heatmap, leading_index, scatter_panels
from conformance.report_matrix import (cell_text, column_groups, column_order, format_ratio, header_rows, impl_order,
                                       matrix_row, walk)
from conformance.schema import load_results
from conformance.spec import Spec, SpecError, find_spec_dir, load_spec
from conformance.vocabulary import impl_label, Slot, Verdict


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
    env.filters["tojson_text"] = lambda v: json.dumps(v, sort_keys=False)
    return env


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
        self.recomputer = Recomputer()
        self.specs = self._specs()
        taken: set[str] = set()
        self.ids = {k: slot_id(k, taken) for k in sorted(self.slots, key=str)}

    # --- specs and links --------------------------------------------------------------------

    def _specs(self) -> dict[str, Spec]:
        try:
            self.spec_dir: Path | None = find_spec_dir()
        except SpecError as e:
            self.spec_dir = None
            self.notes.append(f"no spec links, .npz files or heatmaps: {e}")
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

    # --- the page ---------------------------------------------------------------------------

    def page(self, files: list[str], baseline: str | None) -> dict[str, Any]:
        groups = column_groups(self.slots)
        components = sorted({k.component for k in self.slots})
        order = sorted(self.slots, key=lambda k: (k.component, column_order(k, self.slots[k]["framework"])))
        details = [self._slot(k) for k in order]
        totals = {v: sum(c["verdict"] == v for c in self.slots.values()) for v in Verdict}
        return {
            "version": __version__,
            "created": self.doc["created"],
            "files": files,
            "baseline": baseline,
            "totals": totals,
            "cell_count": len(self.doc["cells"]),
            "groups": groups,
            "all_groups": [g for top in groups for g in walk(top)],
            "header_rows": header_rows(groups),
            "rows": [matrix_row(c, groups, self.slots, self._leaf) for c in components],
            "details": details,
            "failing": [d for d in details if Verdict(d["verdict"]).failed],
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
        text = cell_text(cell)
        change = self.changes.get(key)
        title = f"{key.label}: {v}" + (f": {cell['reason']}" if cell["reason"] else "")
        if change is not None:
            title += f"\n{change.kind}: {change.what}"
        near = v == Verdict.CONFORMANT and (cell["max_ratio"] or 0) > 0.5
        return {"id": self.ids[key], "verdict": v, "text": text, "title": title, "near": near,
                "change": change.kind if change else None}

    # --- one slot ---------------------------------------------------------------------------

    def _slot(self, key: Slot) -> dict[str, Any]:
        cell = self.slots[key]
        spec = self.specs.get(key.component)
        sections = []
        for s in cell["sections"]:
            m = re.fullmatch(r"(\S+) \u00a7(\S+)", s)
            sections.append(self.section_link(m[1], m[2]) if m else {"text": s, "href": None})
        outputs = []
        for name in dict.fromkeys([*cell["max_error"], *cell["budget"]]):
            err, budget = cell["max_error"].get(name), cell["budget"].get(name)
            out_spec = spec.outputs.get(name) if spec else None
            outputs.append({
                "name": name, "max": err, "p99": cell["p99_error"].get(name), "budget": budget,
                "ratio": cell["output_ratio"].get(name),
                "sections": [self.section_link(key.component, s) for s in (out_spec.sections if out_spec else ())],
            })
        example, which = _example(cell)
        repro = cell["repro"]
        if repro is None and example is not None:
            repro = repro_command(key.component, key.implementation, key.dtype, key.device, example, key.mode)
        ident = self.ids[key]
        others = [{"env": c["env"], "verdict": c["verdict"], "ratio": c["max_ratio"], "reason": c["reason"]}
                  for c in self.groups_of[key] if c is not cell]
        return {
            "id": ident, "label": key.label, "key": key, "cell": cell, "verdict": cell["verdict"],
            "sections": sections, "outputs": outputs, "others": others,
            "scatter": scatter_panels(cell["samples"], cell["worst"], cell["max_ratio"]),
            "samples_shown": len(cell["samples"]["rows"]), "samples_total": cell["samples"]["total"],
            "example": example, "which": which, "repro": repro,
            "npz": self._npz(ident, spec, cell, example, which),
            "attention": self._attention(spec, key, cell, example),
            "change": self.changes.get(key),
        }

    def _npz(self, ident: str, spec: Spec | None, cell: dict[str, Any], example: dict | None,
             which: str) -> str | None:
        if spec is None or example is None:
            return None
        try:
            self.npz[f"{ident}.npz"] = npz_bytes(spec, cell, example, which)
        except Exception as e:  # an example from another version of the spec, say
            self.notes.append(f"no .npz for {ident}: cannot regenerate its arrays: {type(e).__name__}: {e}")
            return None
        return f"npz/{ident}.npz"

    def _attention(self, spec: Spec | None, key: Slot, cell: dict[str, Any],
                   example: dict | None) -> dict[str, Any] | None:
        """The attention weights on the slot's example: the reference and each implementation side by side."""
        if spec is None or example is None or ATTENTION not in spec.outputs:
            return None
        dtype = key.dtype
        try:
            ref = reference(spec, example, dtype)[ATTENTION]
        except Exception as e:
            return {"maps": [], "missing": [], "where": "", "error": f"{type(e).__name__}: {e}"}
        impls = sorted({(k.implementation, k.backend, c["framework"]) for k, c in self.slots.items() if k.component == key.component},
                       key=lambda i: (i[:2] != key[1:3], impl_order(i)))
        got, missing = [], []
        for label, backend, _ in impls:
            name = impl_label(label, backend)
            value = self.recomputer.attention(spec, label, backend, dtype, example)
            if isinstance(value, str):
                missing.append({"name": name, "why": value})
            elif value.shape != ref.shape:
                missing.append({"name": name, "why": f"shape {value.shape}, the reference's is {ref.shape}"})
            else:
                got.append((name, value))
        own = dict(got).get(key.impl)
        lead = leading_index(np.abs((own if own is not None else ref) - ref))
        maps = [heatmap(ref[lead], "reference (NumPy, float64)")]
        for name, value in got:
            diff = np.abs(value[lead] - ref[lead])
            finite = diff[~np.isnan(diff)]
            notes = [f"max |difference| {float(finite.max()) if finite.size else 0.0:.3g}"] if finite.size or \
                not diff.size else []
            if finite.size < diff.size:  # e.g. the NaN rows of a known deviation
                notes.append(f"NaN in {diff.size - finite.size} of {diff.size} entries")
            maps.append(heatmap(value[lead], f"{name}, {dtype}", "; ".join(notes)))
        where = describe_index(lead, ("batch", "head") if ref.ndim == 4 else ("batch",))
        if own is not None and where:
            where += ", where this implementation differs most from the reference"
        return {"maps": maps, "missing": missing, "where": where, "error": None}

    # --- environments and the comparison -----------------------------------------------------

    def _environments(self) -> list[dict[str, Any]]:
        envs = []
        for i, env in enumerate(self.doc["environments"]):
            reported: dict[str, dict[str, Any]] = {}
            for c in self.doc["cells"]:
                if c["env"] == i and c["environment"]:
                    name = impl_label(c["implementation"], c["backend"])
                    extra = {k: v for k, v in c["environment"].items() if env.get(k) != v}
                    reported.setdefault(name, {}).update(extra)
            fields = {k: v for k, v in env.items() if k != "packages"}
            envs.append({"index": i, "fields": fields, "packages": env.get("packages", {}),
                         "reported": reported, "cells": sum(c["env"] == i for c in self.doc["cells"])})
        return envs

    def _comparison(self) -> dict[str, Any] | None:
        cmp = self.comparison
        if cmp is None:
            return None

        def row(c: Change) -> dict[str, Any]:
            return {"label": c.key.label, "what": c.what, "id": self.ids.get(c.key)}

        return {"compared": cmp.compared, "factor": cmp.factor, "floor": cmp.floor,
                "regressions": [row(c) for c in cmp.of_kind("regression")],
                "improvements": [row(c) for c in cmp.of_kind("improvement")],
                "notes": [row(c) for c in cmp.of_kind("note")],
                "only_baseline": [k.label for k in cmp.only_baseline],
                "only_current": [k.label for k in cmp.only_current]}


def _example(cell: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The example a slot's section shows: the minimal counterexample, else the worst one.

    When the worst was a worked example of the spec (recorded as None), it is
    the worst of the sampled drawn examples instead.
    """
    if cell["counterexample"]:
        return cell["counterexample"], "minimal counterexample"
    if cell["worst"]:
        return cell["worst"], "worst example"
    columns, rows = cell["samples"]["columns"], cell["samples"]["rows"]
    rows = [r for r in rows if len(r) == len(columns) and isinstance(r[-1], (int, float))]
    if not rows:
        return None, ""
    top = max(rows, key=lambda r: r[-1])
    return dict(zip(columns[:-1], top[:-1])), "worst drawn example (a worked example of the spec did worse)"

