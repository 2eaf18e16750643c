"""The report's matrix: components as rows; columns grouped implementation[backend] > device > mode > dtype.

Every group can be folded into one column that shows the worst cell under it.
The page is laid out for that without a script: each group's summary column
comes first inside it and is hidden by CSS; folding (the page's small script
adds the class `x-<group id>` to the table) hides the cells marked `in-<id>`
and shows those marked `sum-<id>`, and the script sets the group headings'
colspans to what is left visible. Without the script the matrix shows unfolded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from conformance.merge import representative
from conformance.vocabulary import DEVICES, DTYPES, impl_label, MODES, Slot, Verdict

_FRAMEWORK_ORDER = {"numpy": 0, "torch": 1, "keras": 2}
#: What a matrix cell shows when its verdict is not conformant (a conformant one shows its err/budget).
SHORT = {Verdict.KNOWN_DEVIATION: "kd", Verdict.NON_CONFORMANT: "\u2717", Verdict.ERROR: "err",
         Verdict.UNSUPPORTED: "\u2013", Verdict.NOT_AVAILABLE: "n/a"}

#: (implementation, backend), device, mode, dtype: a column.
Column = tuple[tuple[str, str | None], str, str, str]


@dataclass
class Group:
    """A foldable group of columns: an implementation, a device in it, or a mode in that."""

    id: str
    label: str
    level: int  # 0 implementation, 1 device, 2 mode
    classes: str  # "in-<id>" of every enclosing group
    children: list["Group"] = field(default_factory=list)
    columns: list[Column] = field(default_factory=list)  # every column below it, in order
    idle: bool = True  # nothing below it ran in any component: folded when the page opens

    def leaf_classes(self) -> str:
        return f"{self.classes} in-{self.id}".strip()


def format_ratio(r: float | None) -> str:
    """An error / budget for a matrix cell: two significant digits, small ones as powers of ten."""
    if r is None:
        return "-"
    if r != r or r in (float("inf"), float("-inf")):
        return str(r)
    return "0" if r == 0 else (f"{r:.0e}" if r < 1e-3 else f"{r:.2g}")


def cell_text(cell: dict[str, Any]) -> str:
    return format_ratio(cell["max_ratio"]) if cell["verdict"] == Verdict.CONFORMANT else SHORT[cell["verdict"]]


def impl_order(impl: tuple[str, str | None, str]) -> tuple[int, str, str]:
    """NumPy, PyTorch, Keras (by backend), then plug-ins by name."""
    label, backend, framework = impl
    return _FRAMEWORK_ORDER.get(framework, 3), label, backend or ""


def _axis_order(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    return lambda v: (order.index(v) if v in order else len(order), v)


def column_order(key: Slot, framework: str) -> tuple:
    return (impl_order((key.implementation, key.backend, framework)), _axis_order(DEVICES)(key.device),
            _axis_order(MODES)(key.mode), _axis_order(DTYPES)(key.dtype))


def walk(group: Group) -> Iterator[Group]:
    """A group and every group inside it, depth first: the order of the matrix's columns."""
    yield group
    for child in group.children:
        yield from walk(child)


def column_groups(slots: dict[Slot, dict[str, Any]]) -> list[Group]:
    """The column groups over every slot of every component."""
    impls = sorted({(k.implementation, k.backend, c["framework"]) for k, c in slots.items()}, key=impl_order)
    ran = {((k.implementation, k.backend), k.device, k.mode, k.dtype)
           for k, c in slots.items() if Verdict(c["verdict"]).ran}
    ids = (f"g{n}" for n in range(1_000_000))
    groups = []
    for label, backend, _ in impls:
        impl = (label, backend)
        mine = [k for k in slots if (k.implementation, k.backend) == impl]
        top = Group(next(ids), impl_label(label, backend), 0, "")
        for device in sorted({k.device for k in mine}, key=_axis_order(DEVICES)):
            dev = Group(next(ids), device, 1, top.leaf_classes())
            for mode in sorted({k.mode for k in mine if k.device == device}, key=_axis_order(MODES)):
                m = Group(next(ids), mode, 2, dev.leaf_classes())
                dtypes = sorted({k.dtype for k in mine if (k.device, k.mode) == (device, mode)}, key=_axis_order(DTYPES))
                m.columns = [(impl, device, mode, d) for d in dtypes]
                dev.children.append(m)
            dev.columns = [c for m in dev.children for c in m.columns]
            top.children.append(dev)
        top.columns = [c for d in top.children for c in d.columns]
        for g in walk(top):
            g.idle = not ran.intersection(g.columns)
        groups.append(top)
    return groups


def header_rows(groups: list[Group]) -> list[list[dict[str, Any]]]:
    """The four header rows: implementation, device, mode, dtype; each group's summary column first."""
    rows: list[list[dict[str, Any]]] = [[], [], [], []]
    for top in groups:
        for g in walk(top):
            rows[g.level].append({"kind": "group", "group": g, "span": len(g.columns)})
            rows[g.level + 1].append({"kind": "sum", "group": g, "rowspan": 3 - g.level})
            if g.level == 2:
                rows[3] += [{"kind": "leaf", "label": c[3], "classes": g.leaf_classes()} for c in g.columns]
    return rows


def matrix_row(component: str, groups: list[Group], slots: dict[Slot, dict[str, Any]],
               leaf: Callable[[Slot], dict[str, Any] | None]) -> dict[str, Any]:
    """One component's row: per group its summary cell, then (in mode groups) a cell per dtype."""
    cells = []
    for top in groups:
        for g in walk(top):
            cells.append({"kind": "sum", "group": g, **_summary(component, g, slots)})
            if g.level == 2:
                for (impl, device, mode, dtype) in g.columns:
                    key = Slot(component, impl[0], impl[1], device, mode, dtype)
                    cells.append({"kind": "leaf", "classes": g.leaf_classes(), "slot": leaf(key)})
    return {"component": component, "cells": cells}


def _summary(component: str, g: Group, slots: dict[Slot, dict[str, Any]]) -> dict[str, Any]:
    """A folded group's cell in one row: its worst cell, and a count of verdicts as the tooltip."""
    present = [slots[k] for k in (Slot(component, i[0], i[1], dev, m, dt) for i, dev, m, dt in g.columns) if k in slots]
    if not present:
        return {"verdict": "none", "text": "", "title": "no cells"}
    worst = representative(present)
    counts = ", ".join(f"{n} {v}" for v in Verdict if (n := sum(c["verdict"] == v for c in present)))
    return {"verdict": worst["verdict"], "text": cell_text(worst), "title": f"{g.label}: {counts}"}
