"""Comparing two results documents slot by slot: regressions, improvements, and what was not compared.

A regression is one of:
- a slot that was conformant and now is not (non-conformant, error, a known deviation, or no longer supported);
- a new kind of failure: a slot that now fails and before did not run, or failed in another way
  (another verdict, or another reason class; see `reason_class`);
- a largest error / budget that grew past `factor` times the baseline's, even inside the budget.
  A baseline below `floor` (a tiny fraction of the budget, e.g. an exact float64 result) counts as
  `floor`, so noise around zero is not a regression; such growth is listed as a note;
- a property (spec/README.md, "Properties") that held and now fails, named with its new reason, whatever
  the verdict did: a cell that already failed the reference comparison can break a property too. One that
  failed and now holds is an improvement. Where the slot's verdict changed because of that property alone,
  the property's line says it and the verdict's is not repeated;
- gradients (spec/README.md, "Gradients") that were conformant and now are not, or that fail in a new way
  (another gradient, or another kind of failure), or that were conformant and now deviate as the ledger
  records, whatever the verdict did: the gradients are judged apart
  from it. Gradients that failed and now are conformant are an improvement. A slot whose gradients were not
  compared in one of the two (unsupported: no vjp, or a file older than conformance-results/7; not checked)
  has no gradient change.

Slots are matched by (component, implementation, backend, device, mode, dtype); a slot
run in several environments is judged by its worst cell (`merge.representative`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from conformance.merge import slots
from conformance.vocabulary import Held, Slot, Verdict

DEFAULT_FACTOR = 2.0
DEFAULT_FLOOR = 1e-3
_FAILED = (Verdict.NON_CONFORMANT, Verdict.ERROR)
_DID_NOT_RUN = (Verdict.UNSUPPORTED, Verdict.NOT_AVAILABLE)
#: A property that held (off the CPU, perhaps not to the bit): one that held and now fails has regressed; one
#: that failed and now holds improved.
_HELD = (Held.HELD, Held.NON_DETERMINISTIC)
#: At most this many slots are named when a whole group is only in one of the two documents.
_NAMED = 5


@dataclass
class Change:
    key: Slot
    kind: str  # "regression", "improvement" or "note"
    what: str


@dataclass
class Comparison:
    factor: float
    floor: float
    compared: int = 0
    changes: list[Change] = field(default_factory=list)
    only_baseline: list[Slot] = field(default_factory=list)
    incomplete: dict[str, Any] = field(default_factory=dict)  # "baseline"/"current" -> that file's `incomplete`
    only_current: list[Slot] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[Change]:
        return [c for c in self.changes if c.kind == kind]

    @property
    def regressions(self) -> list[Change]:
        return self.of_kind("regression")

    def by_key(self) -> dict[Slot, Change]:
        """The most important change of each slot (a regression over anything else)."""
        order = {"regression": 0, "improvement": 1, "note": 2}
        found: dict[Slot, Change] = {}
        for c in sorted(self.changes, key=lambda c: order[c.kind]):
            found.setdefault(c.key, c)
        return found


def reason_class(cell: dict[str, Any]) -> str:
    """A failure's kind, without the numbers and names that vary between runs.

    `example: output 'output' differs from the reference by 4.9e+06 eps ...` -> `non-conformant: output 'output' differs`;
    `example: raised ValueError: ...` -> `non-conformant: raised ValueError`.
    """
    reason = re.sub(r"^(example|worked example '[^']*'): ", "", cell.get("reason") or "")
    patterns = [
        (r"^(build raised|raised) ([\w.]+)", "{0} {1}"),
        (r"^output ('[^']*') (missing|is not array-like|has shape|has dtype|differs)", "output {0} {1}"),
        (r"^output ('[^']*') has \d+ non-finite", "output {0} non-finite"),
        (r"^returned (\w+)", "returned {0}"),
        (r"^([\w.]+(?:Error|Exception)):", "{0}"),
        (r"^property (\w+)", "property {0}"),
    ]
    for pattern, form in patterns:
        if m := re.match(pattern, reason):
            return f"{cell['verdict']}: {form.format(*m.groups())}"
    words = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "N", reason).split()[:6]
    return f"{cell['verdict']}: {' '.join(words)}".rstrip(": ")


def _ratio(cell: dict[str, Any]) -> float:
    r = cell["max_ratio"]
    return 0.0 if r is None else r


def compare(baseline: dict[str, Any], current: dict[str, Any], *, factor: float = DEFAULT_FACTOR,
            floor: float = DEFAULT_FLOOR) -> Comparison:
    """Every change from `baseline` to `current` (both as `schema.load_results` returns them)."""
    before, after = slots(baseline), slots(current)
    result = Comparison(factor, floor)
    result.incomplete = {name: doc["incomplete"] for name, doc in (("baseline", baseline), ("current", current))
                         if doc.get("incomplete")}
    result.only_baseline = [k for k in before if k not in after]
    for key, now in after.items():
        was = before.get(key)
        if was is None:
            result.only_current.append(key)
            if now["verdict"] in _FAILED:
                result.changes.append(Change(key, "regression", f"new slot, {reason_class(now)}"))
            continue
        result.compared += 1
        properties = property_changes(was, now)
        what = _change(was, now, factor, floor)
        if what is not None and not _said_by_property(what[0], was, now, properties):
            result.changes.append(Change(key, *what))
        result.changes += [Change(key, *change) for change in properties.values()]
        if (gradients := gradient_change(was, now)) is not None:
            result.changes.append(Change(key, *gradients))
    return result


def gradient_change(was: dict[str, Any], now: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, text) for a slot's gradients that were conformant and now fail, or fail in a new way (a
    regression), or failed and now are conformant (an improvement); None otherwise, and where either file
    did not compare them."""
    before, after = was.get("gradients") or {}, now.get("gradients") or {}  # {}: the cell did not run
    g0, g1 = before.get("verdict"), after.get("verdict")
    where = f" ({', '.join(after['sections'])})" if after.get("sections") else ""
    if g0 == Verdict.CONFORMANT and g1 in (Verdict.NON_CONFORMANT, Verdict.KNOWN_DEVIATION):
        return "regression", f"gradients{where} were conformant, now {g1}: {after['reason']}"
    if g0 == g1 == Verdict.NON_CONFORMANT and gradient_class(after) != gradient_class(before):
        return "regression", (f"new kind of gradient failure{where}: {gradient_class(after)} (was "
                              f"{gradient_class(before)}): {after['reason']}")
    if g0 == Verdict.NON_CONFORMANT and g1 in (Verdict.CONFORMANT, Verdict.KNOWN_DEVIATION):
        return "improvement", f"gradients were non-conformant, now {g1}"
    return None


def gradient_class(record: dict[str, Any]) -> str:
    """A gradient failure's kind, without its numbers: `gradient 'W_1' differs`, `vjp raised ValueError`."""
    reason = record.get("reason") or ""
    if m := re.match(r"gradient ('[^']*') (missing|has shape|has dtype|differs)", reason):
        return f"gradient {m[1]} {m[2]}"
    if m := re.match(r"vjp raised ([\w.]+)", reason):
        return f"vjp raised {m[1]}"
    return " ".join(re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "N", reason).split()[:6])


def property_changes(was: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Property name -> (kind, text) for each property of a slot that held and now fails (a regression),
    or failed and now holds (an improvement); one the baseline has no record of is not compared."""
    before = was.get("properties") or {}  # none in a file older than conformance-results/6
    found = {}
    for name, record in (now.get("properties") or {}).items():
        if name not in before:
            continue
        s0, s1 = Held(before[name]["status"]), Held(record["status"])
        where = f" ({', '.join(record['sections'])})" if record["sections"] else ""
        if s0 in _HELD and s1 == Held.FAILED:
            found[name] = ("regression", f"property {name}{where} was {s0}, now failed: {record['reason']}")
        elif s0 == Held.FAILED and s1 in _HELD:
            found[name] = ("improvement", f"property {name}{where} was failed, now {s1}")
    return found


def failed_property(cell: dict[str, Any]) -> str | None:
    """The property whose failure is the cell's verdict (the engine gives the cell that property's
    counterexample), or None where the verdict comes from elsewhere."""
    for name, record in (cell.get("properties") or {}).items():
        if record["status"] == Held.FAILED and record["counterexample"] is not None \
                and record["counterexample"] == cell["counterexample"]:
            return name
    return None


def _said_by_property(kind: str, was: dict[str, Any], now: dict[str, Any],
                      properties: dict[str, tuple[str, str]]) -> bool:
    """Whether a slot's change of verdict is one of its property changes: a regression to a failure that
    is a property's, or an improvement from one."""
    cell = now if kind == "regression" else was
    name = failed_property(cell) if Verdict(cell["verdict"]) in _FAILED else None
    return name in properties and properties[name][0] == kind


def _change(was: dict[str, Any], now: dict[str, Any], factor: float, floor: float) -> tuple[str, str] | None:
    """(kind, text) for one slot, or None when nothing worth saying changed."""
    v0, v1 = was["verdict"], now["verdict"]
    if v0 == Verdict.CONFORMANT and v1 in (*_FAILED, Verdict.UNSUPPORTED, Verdict.KNOWN_DEVIATION):
        return "regression", f"was conformant, now {v1}: {now['reason']}"
    if v1 in _FAILED and v0 not in _FAILED:
        return "regression", f"now {v1} (was {v0}): {now['reason']}"
    if v1 in _FAILED and reason_class(now) != reason_class(was):
        return "regression", f"new kind of failure: {reason_class(now)} (was {reason_class(was)}): {now['reason']}"
    if v0 in _FAILED and v1 == Verdict.CONFORMANT:
        return "improvement", f"was {v0}, now conformant"
    if v0 in _DID_NOT_RUN and v1 == Verdict.CONFORMANT:
        return "improvement", f"now runs and is conformant (was {v0})"
    if v0 == Verdict.CONFORMANT and v1 == Verdict.NOT_AVAILABLE:
        return "note", f"not compared: conformant in the baseline, not available now ({now['reason']})"
    if v0 == v1 == Verdict.CONFORMANT:
        r0, r1 = _ratio(was), _ratio(now)
        grew = f"largest error/budget {r0:.3g} -> {r1:.3g}"
        if r1 > factor * max(r0, floor):
            times = f"x{r1 / r0:.3g}" if r0 > 0 else "from zero"
            return "regression", f"{grew} ({times}, more than x{factor:g}), still inside the budget"
        if r1 > factor * r0:
            return "note", (f"{grew}: growth ignored, the baseline is below {floor:g} of the budget "
                            f"and the new value below {factor:g} x {floor:g}")
        if r0 >= floor and r1 < r0 / factor:
            return "improvement", f"{grew} (less than 1/{factor:g} of the baseline)"
    return None


def format_comparison(result: Comparison, baseline: str, current: str) -> str:
    """The comparison as `conformance compare` prints it: one line per change, then a tally."""
    lines = [f"compared {result.compared} slots of {baseline} (baseline) with {current} "
             f"(factor {result.factor:g}, floor {result.floor:g})"]
    heads = {"regression": "REGRESSION ", "improvement": "improvement", "note": "note       "}
    for kind in ("regression", "improvement", "note"):
        lines += [f"{heads[kind]} {c.key.label}: {c.what}" for c in result.of_kind(kind)]
    for keys, where in ((result.only_baseline, "only in the baseline"), (result.only_current, "only in current")):
        if keys:
            named = ", ".join(k.label for k in keys[:_NAMED]) + (", ..." if len(keys) > _NAMED else "")
            lines.append(f"note        {len(keys)} slot(s) {where}, not compared: {named}")
    for name, path in (("baseline", baseline), ("current", current)):
        if name in result.incomplete:
            what = result.incomplete[name]
            head = "INCOMPLETE " if name == "current" else "note       "
            lines.append(f"{head} {path} is incomplete ({what['reason']}): {len(what['missing'])} slot(s) were "
                         f"not run" + (", so it cannot pass as a regression check" if name == "current" else ""))
    n = {k: len(result.of_kind(k)) for k in heads}
    lines.append(f"{n['regression']} regression(s), {n['improvement']} improvement(s), {n['note']} note(s)")
    return "\n".join(lines)
