"""The report's graphics as geometry: scatter plots of error / budget and attention heatmaps.

Only numbers and colours are computed here; the template turns them into
inline SVG, so every label (which may come from a results file) passes through
the template's escaping. Points are drawn as zero-length path segments with
round caps and a heatmap's entries as runs of one shade, a few bytes each,
which keeps a report of thousands of cells small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

#: Scatter panel size and margins, in pixels.
WIDTH, HEIGHT = 170, 110
LEFT, RIGHT, TOP, BOTTOM = 34, 6, 8, 22
#: A cell's panels share one SVG, at most this many in a row, this far apart; only the first of a row has y labels.
PER_ROW, STEP = 8, WIDTH - LEFT + 8
#: Heatmaps are drawn at most this many pixels across.
HEATMAP_PIXELS = 144


@dataclass
class Scatter:
    """One panel: error / budget (y) against one example parameter (x)."""

    name: str
    points: str  # SVG path data, one dot per example
    worst: str  # the cell's worst example, drawn on top
    x_ticks: list[tuple[int, str]]
    y_ticks: list[tuple[int, str]]
    budget_y: int | None  # where error / budget = 1 is, when it is inside the plot
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    bottom: int = HEIGHT - BOTTOM
    right: int = WIDTH - RIGHT
    top: int = TOP


@dataclass
class ScatterPlot:
    """A cell's panels placed in rows on one y scale: (x, y) offsets of each panel, and the SVG's size."""

    panels: list[tuple[int, int, Scatter]]
    width: int
    height: int

    @property
    def label(self) -> str:
        return "error/budget against " + ", ".join(p.name for _, _, p in self.panels)


def scatter_plot(samples: Mapping[str, Any], worst: Mapping[str, Any] | None,
                 worst_ratio: float | None) -> ScatterPlot | None:
    """`scatter_panels` laid out in one SVG, PER_ROW to a row; None when there is nothing to plot."""
    panels = scatter_panels(samples, worst, worst_ratio)
    if not panels:
        return None
    placed = [(i % PER_ROW * STEP, i // PER_ROW * HEIGHT, p) for i, p in enumerate(panels)]
    columns = min(len(panels), PER_ROW)
    return ScatterPlot(placed, (columns - 1) * STEP + WIDTH, HEIGHT * math.ceil(len(panels) / PER_ROW))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plotted_columns(samples: Mapping[str, Any]) -> list[int]:
    """Indices of the integer parameters worth a panel: shapes, sizes and `scale_exp`; not the seed,
    not categories, not a parameter that took one value only."""
    columns, rows = samples["columns"], samples["rows"]
    keep = []
    for i, name in enumerate(columns[:-1]):
        values = [r[i] for r in rows if len(r) == len(columns)]
        if name == "seed" or not values or not all(_is_number(v) and float(v).is_integer() for v in values):
            continue
        if len(set(values)) > 1:
            keep.append(i)
    return keep


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi - lo + 1 <= count:
        return [float(v) for v in range(int(lo), int(hi) + 1)]
    step = max(1, math.ceil((hi - lo) / (count - 1)))
    return [float(v) for v in range(int(lo), int(hi) + 1, step)]


def _label(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.0e}" if abs(v) < 1e-3 else f"{v:.2g}"


def scatter_panels(samples: Mapping[str, Any], worst: Mapping[str, Any] | None,
                   worst_ratio: float | None) -> list[Scatter]:
    """A panel per plotted parameter of a cell's sampled examples, all on one y scale; the worst
    example (which the sample may have left out) is marked."""
    columns = list(samples.get("columns") or [])
    rows = [r for r in samples.get("rows") or [] if len(r) == len(columns) and _is_number(r[-1])]
    if not rows or len(columns) < 2:
        return []
    samples = {"columns": columns, "rows": rows}
    y_max = max([r[-1] for r in rows] + ([worst_ratio] if _is_number(worst_ratio) else []))
    y_max = 1.05 if y_max > 0.6 else (y_max * 1.15 if y_max > 0 else 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def y_of(ratio: float) -> float:
        return TOP + plot_h * (1 - min(ratio, y_max) / y_max)

    panels = []
    for i in plotted_columns(samples):
        values = [float(r[i]) for r in rows]
        if worst is not None and _is_number(worst.get(columns[i])):
            values.append(float(worst[columns[i]]))
        lo, hi = min(values), max(values)
        slot = plot_w / (hi - lo + 1)

        def x_of(v: float, jitter: float = 0.0) -> float:
            return LEFT + (v - lo + 0.5 + jitter) * slot

        dots = set()
        for n, r in enumerate(rows):
            jitter = ((n * 0.618034) % 1 - 0.5) * 0.6  # spreads examples that share a value
            dots.add((round(x_of(float(r[i]), jitter)), round(y_of(r[-1]))))
        worst_path = ""
        if worst is not None and _is_number(worst.get(columns[i])) and _is_number(worst_ratio):
            worst_path = f"M{round(x_of(float(worst[columns[i]])))} {round(y_of(worst_ratio))}h0"
        panels.append(Scatter(
            name=columns[i],
            points="".join(f"M{x} {y}h0" for x, y in sorted(dots)),
            worst=worst_path,
            x_ticks=[(round(x_of(t)), f"{t:g}") for t in _ticks(lo, hi)],
            y_ticks=[(round(y_of(t)), _label(t)) for t in (0.0, y_max / 2, y_max)],
            budget_y=round(y_of(1.0)) if y_max >= 1 else None,
        ))
    return panels


#: Shades between 0 and 1 in a heatmap; entries of one shade are drawn as one path.
SHADES = 20


@dataclass
class Heatmap:
    """One attention matrix: rows are queries (or decoder steps), columns keys (or source positions)."""

    title: str
    rows: int
    cols: int
    pixel: int  # size of one entry
    paths: list[tuple[str, str]] = field(default_factory=list)  # (fill, path data of its unit squares)
    note: str = ""


def colour(value: float) -> str:
    """0 white .. 1 dark blue in SHADES steps; a value outside [0, 1] is clipped, a non-finite one magenta."""
    if not math.isfinite(value):
        return "#e0f"
    t = round(min(max(value, 0.0), 1.0) * SHADES) / SHADES
    low, high = (255, 255, 255), (8, 48, 107)
    r, g, b = (round(a + (c - a) * t) for a, c in zip(low, high))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(matrix: np.ndarray, title: str, note: str = "") -> Heatmap:
    """A 2-D array of attention weights as coloured rectangles, one per run of a shade along a row,
    one path per shade."""
    matrix = np.asarray(matrix, dtype=np.float64)
    rows, cols = matrix.shape
    pixel = max(4, min(18, HEATMAP_PIXELS // max(rows, cols, 1)))
    runs: dict[str, list[str]] = {}
    for i in range(rows):
        shades = [colour(float(v)) for v in matrix[i]]
        j = 0
        while j < cols:
            n = 1
            while j + n < cols and shades[j + n] == shades[j]:
                n += 1
            runs.setdefault(shades[j], []).append(f"M{j} {i}h{n}v1h-{n}z")
            j += n
    return Heatmap(title, rows, cols, pixel, [(fill, "".join(d)) for fill, d in runs.items()], note)
