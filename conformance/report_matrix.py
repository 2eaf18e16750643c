"""The report's matrix: one table per component, its implementations as rows, its columns grouped device > mode > dtype.

A table per component keeps the page as narrow as the device, mode and dtype
axes (sixteen columns at most today), however many implementations there
are: they add rows, not columns. Every device and mode group can be folded
into one column that shows the worst cell under it. The page is laid out for
that without a script: each group's summary column comes first inside it and
is hidden by CSS; folding (the page's small script adds the class
`x-<group id>` to the table) hides the cells marked `in-<id>` and shows those
marked `sum-<id>`, and the script sets the group headings' colspans to what is
left visible. Without the script the matrix shows unfolded.

A cell whose gradients were checked marks them below its own text (`GRADIENT_MARKS`): a class on the cell,
whose text the page's CSS adds (a few bytes in each of thousands of cells), explained by the legend; the
link's tooltip says it in words where they failed or were not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Any, Callable, Iterator, Sequence

from conformance.merge import representative
from conformance.vocabulary import DEVICES, DTYPES, Held, impl_label, MODES, Slot, Verdict

_FRAMEWORK_ORDER = {"numpy": 0, "torch": 1, "keras": 2}
#: What a matrix cell shows when its verdict is not conformant (a conformant one shows its err/budget).
SHORT = {Verdict.KNOWN_DEVIATION: "kd", Verdict.NON_CONFORMANT: "\u2717", Verdict.ERROR: "err",
         Verdict.UNSUPPORTED: "\u2013", Verdict.NOT_AVAILABLE: "n/a"}
#: How a matrix cell marks its gradients (conformance/gradients.py) below its text: (CSS class, the text it
#: adds); no mark where they are unsupported (no vjp, or results older than conformance-results/7).
GRADIENT_MARKS = {Verdict.CONFORMANT: ("g", "\u2207"), Verdict.KNOWN_DEVIATION: ("gk", "\u2207~"),
                  Verdict.NON_CONFORMANT: ("gx", "\u2207\u2717"),
                  Held.NOT_CHECKED: ("gq", "\u2207?")}
#: The levels of column groups; below the last, a column per dtype.
LEVELS = ("device", "mode")

#: device, mode, dtype: a column of a component's table.
Column = tuple[str, str, str]
#: implementation, backend, framework: a row.
Impl = tuple[str, str | None, str]


@dataclass
class Group:
    """A foldable group of columns: a device, or a mode in it."""

    id: str
    label: str
    level: int  # 0 device, 1 mode
    classes: str  # "in-<id>" of every enclosing group
    children: list["Group"] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)  # every column below it, in order
    idle: bool = True  # nothing below it ran for any implementation: folded when the page opens

    def leaf_classes(self) -> str:
        return f"{self.classes} in-{self.id}".strip()


@dataclass
class Table:
    """One component's matrix."""

    component: str
    groups: list[Group]
    header_rows: list[list[dict[str, Any]]]
    rows: list[dict[str, Any]]


def format_ratio(r: float | None) -> str:
    """An error / budget for a matrix cell: two significant digits, small ones as powers of ten."""
    if r is None:
        return "-"
    if r != r or r in (float("inf"), float("-inf")):
        return str(r)
    return "0" if r == 0 else (f"{r:.0e}" if r < 1e-3 else f"{r:.2g}")


def cell_text(cell: dict[str, Any]) -> str:
    return format_ratio(cell["max_ratio"]) if cell["verdict"] == Verdict.CONFORMANT else SHORT[cell["verdict"]]


def gradient_mark(cell: dict[str, Any]) -> str | None:
    """The class that marks a cell's gradients (`GRADIENT_MARKS`); None where there is none to show, and for
    a cell that did not run."""
    mark = GRADIENT_MARKS.get((cell.get("gradients") or {}).get("verdict"))
    return mark[0] if mark and Verdict(cell["verdict"]).ran else None


def impl_order(impl: Impl) -> tuple[int, str, str]:
    """NumPy, PyTorch, Keras (by backend), then plug-ins by name."""
    label, backend, framework = impl
    return _FRAMEWORK_ORDER.get(framework, 3), label, backend or ""


def axis_order(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    """A sort key: the values `order` names in its order, then any others by name."""
    return lambda v: (order.index(v) if v in order else len(order), v)


def slot_order(key: Slot, framework: str) -> tuple:
    """Where a slot comes in the page: by component, then as its row and column of the matrix."""
    return (key.component, impl_order((key.implementation, key.backend, framework)),
            axis_order(DEVICES)(key.device), axis_order(MODES)(key.mode), axis_order(DTYPES)(key.dtype))


def walk(group: Group) -> Iterator[Group]:
    """A group and every group inside it, depth first: the order of the matrix's columns."""
    yield group
    for child in group.children:
        yield from walk(child)


def column_groups(slots: dict[Slot, dict[str, Any]], ids: Iterator[int]) -> list[Group]:
    """The column groups of one component's slots; `ids` numbers groups uniquely across the page."""
    ran = {(k.device, k.mode, k.dtype) for k, c in slots.items() if Verdict(c["verdict"]).ran}
    groups = []
    for device in sorted({k.device for k in slots}, key=axis_order(DEVICES)):
        dev = Group(f"g{next(ids)}", device, 0, "")
        for mode in sorted({k.mode for k in slots if k.device == device}, key=axis_order(MODES)):
            m = Group(f"g{next(ids)}", mode, 1, dev.leaf_classes())
            dtypes = sorted({k.dtype for k in slots if (k.device, k.mode) == (device, mode)}, key=axis_order(DTYPES))
            m.columns = [(device, mode, d) for d in dtypes]
            dev.children.append(m)
        dev.columns = [c for m in dev.children for c in m.columns]
        for g in walk(dev):
            g.idle = not ran.intersection(g.columns)
        groups.append(dev)
    return groups


def header_rows(groups: list[Group]) -> list[list[dict[str, Any]]]:
    """The header rows: device, mode, dtype; each group's summary column first."""
    depth = len(LEVELS)
    rows: list[list[dict[str, Any]]] = [[] for _ in range(depth + 1)]
    for top in groups:
        for g in walk(top):
            rows[g.level].append({"kind": "group", "group": g, "span": len(g.columns)})
            rows[g.level + 1].append({"kind": "sum", "group": g, "rowspan": depth - g.level})
            if g.level == depth - 1:
                rows[depth] += [{"kind": "leaf", "label": c[-1], "classes": g.leaf_classes()} for c in g.columns]
    return rows


def matrix_row(component: str, impl: Impl, groups: list[Group], slots: dict[Slot, dict[str, Any]],
               leaf: Callable[[Slot], dict[str, Any] | None]) -> dict[str, Any]:
    """One implementation's row: per group its summary cell, then (in mode groups) a cell per dtype."""
    def key(column: Column) -> Slot:
        return Slot(component, impl[0], impl[1], *column)

    cells = []
    for top in groups:
        for g in walk(top):
            present = [slots[k] for k in map(key, g.columns) if k in slots]
            cells.append({"kind": "sum", "group": g, **_summary(g, present)})
            if g.level == len(LEVELS) - 1:
                cells += [{"kind": "leaf", "classes": g.leaf_classes(), "slot": leaf(key(c))} for c in g.columns]
    return {"impl": impl_label(impl[0], impl[1]), "cells": cells}


def tables(slots: dict[Slot, dict[str, Any]], leaf: Callable[[Slot], dict[str, Any] | None]) -> list[Table]:
    """A table per component, in name order, its implementations in `impl_order`."""
    ids = count()
    found = []
    for component in sorted({k.component for k in slots}):
        mine = {k: c for k, c in slots.items() if k.component == component}
        groups = column_groups(mine, ids)
        impls = sorted({(k.implementation, k.backend, c["framework"]) for k, c in mine.items()}, key=impl_order)
        found.append(Table(component, groups, header_rows(groups),
                           [matrix_row(component, i, groups, mine, leaf) for i in impls]))
    return found


def _summary(g: Group, present: list[dict[str, Any]]) -> dict[str, Any]:
    """A folded group's cell in one row: its worst cell, and a count of verdicts as the tooltip; the marker of
    non-conformant gradients where a cell under it has them."""
    if not present:
        return {"verdict": "none", "text": "", "title": "no cells", "gradients": None}
    worst = representative(present)
    counts = ", ".join(f"{n} {v}" for v in Verdict if (n := sum(c["verdict"] == v for c in present)))
    failed = sum(gradient_mark(c) == GRADIENT_MARKS[Verdict.NON_CONFORMANT][0] for c in present)
    title = f"{g.label}: {counts}" + (f"; {failed} with non-conformant gradients" if failed else "")
    return {"verdict": worst["verdict"], "text": cell_text(worst), "title": title,
            "gradients": GRADIENT_MARKS[Verdict.NON_CONFORMANT][0] if failed else None}
