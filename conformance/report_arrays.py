"""What the report makes of a cell's evidence (conformance/evidence.py): its .npz download and its attention heatmaps.

The report runs nothing: the arrays are those the engine kept in the results
when the cell failed (or first deviated), the candidate's outputs beside the
float64 reference's. A cell without evidence (a conformant one, or one from a
file older than conformance-results/4) has neither.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from conformance.evidence import Kept, arrays, difference
from conformance.report_figures import Heatmap, heatmap

#: The output the heatmaps show, in the components that have one.
ATTENTION = "attention_weights"
#: Prefix of each group's arrays in the .npz.
PREFIX = {"inputs": "input", "outputs": "output", "reference": "reference", "weights": "weight"}
#: The same, in the .npz of a gradient failure (conformance/evidence.py, GRADIENT_GROUPS).
GRADIENT_PREFIX = {"cotangents": "cotangent", "gradients": "gradient", "reference": "reference_gradient"}
#: A heatmap shows at most this many rows and columns, around where the candidate differs most.
HEATMAP_SIDE = 32


def npz_bytes(cell: Mapping[str, Any], unpacked: Mapping[str, Mapping[str, Kept] | None], which: str,
              example: Mapping[str, Any] | None) -> bytes:
    """The kept arrays as a compressed .npz: `input.<name>`, `weight.<name>`, `output.<name>` (the
    implementation's), `reference.<output>`, and `meta`.

    Floating-point arrays are stored as float64 (which holds every value of a
    narrower float exactly, and which NumPy loads without ml_dtypes); masks stay
    bool and tokens integers. An array kept only in part is its block, `meta`'s
    `windows` giving where it starts and the whole shape; one not kept is listed
    in `omitted` with the reason.
    """
    note = (f"input.* and weight.* are the arrays the implementation received, in {cell['dtype']}, and "
            "output.* what it returned; reference.* are the float64 NumPy reference's outputs on the same "
            "inputs. Floating-point values are stored as float64, exactly.")
    return _npz(cell, unpacked, PREFIX, f"the {which} of this cell", example, cell["evidence"] or {}, note)


def gradient_npz_bytes(cell: Mapping[str, Any], unpacked: Mapping[str, Mapping[str, Kept] | None]) -> bytes:
    """A gradient failure's kept arrays (the cell's `gradients`' evidence) as a compressed .npz, as
    `npz_bytes` stores them: `cotangent.<output>`, `gradient.<name>` (the implementation's vjp's),
    `reference_gradient.<name>`, and `meta`, its example the gradient failure's counterexample."""
    record = cell["gradients"]
    note = (f"cotangent.* are the cotangents of the outputs the implementation's vjp received, in {cell['dtype']}, "
            "and gradient.* the gradients it gave; reference_gradient.* are the float64 NumPy reference's backward "
            "pass on the same weights, inputs and cotangents (the reproduce command makes the weights and inputs "
            "again). Floating-point values are stored as float64, exactly.")
    return _npz(cell, unpacked, GRADIENT_PREFIX, "the example on which the gradients failed, in this cell",
                record["counterexample"], record["evidence"] or {}, note)


def _npz(cell: Mapping[str, Any], unpacked: Mapping[str, Mapping[str, Kept] | None], prefix: Mapping[str, str],
         what: str, example: Mapping[str, Any] | None, evidence: Mapping[str, Any], note: str) -> bytes:
    out: dict[str, np.ndarray] = {}
    windows: dict[str, Any] = {}
    omitted: dict[str, str] = {}
    for group, name, kept in arrays(unpacked):
        key = f"{prefix[group]}.{name}"
        if kept.values is None:
            omitted[key] = kept.omitted or "not kept"
            continue
        values = kept.values
        out[key] = values.astype(values.dtype.newbyteorder("=") if values.dtype.kind in "biu" else np.float64)
        if kept.start is not None:
            windows[key] = {"start": list(kept.start), "shape": list(kept.shape)}
    meta = {
        "what": what,
        "cell": {k: cell[k] for k in ("component", "implementation", "backend", "device", "mode", "dtype")},
        "example": None if example is None else dict(example),
        "windows": windows,
        "omitted": omitted,
        "absent": {g: why for g, why in (evidence.get("absent") or {}).items() if g in prefix},
        "note": note,
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **out)
    return buffer.getvalue()


@dataclass
class Attention:
    """The attention heatmaps of one cell: reference, candidate and their difference, on one 2-D block."""

    maps: list[Heatmap]
    where: str  # which (batch, head) and which rows and columns are shown
    note: str = ""  # why a map is missing


def attention(unpacked: Mapping[str, Mapping[str, Kept] | None], candidate: str,
              absent: Mapping[str, str]) -> Attention | None:
    """Heatmaps of the kept attention weights, or None when the evidence has none."""
    def drawable(group: str) -> Kept | None:
        kept = (unpacked.get(group) or {}).get(ATTENTION)
        return kept if kept is not None and kept.values is not None and kept.values.ndim >= 2 else None

    ref, got = drawable("reference"), drawable("outputs")
    first = ref or got
    if first is None:
        return None
    same = ref is not None and got is not None and ref.values.shape == got.values.shape and ref.start == got.start
    diff = difference(got.values, ref.values) if same else None
    index = _worst(diff if diff is not None else np.zeros(first.values.shape))
    rows, cols = _around(index[-2:], first.values.shape[-2:])
    plane = index[:-2] + (rows, cols)
    maps = []
    if ref is not None:
        maps.append(heatmap(ref.values[plane], "reference (NumPy, float64)"))
    if got is not None:
        maps.append(heatmap(got.values[plane], candidate, _note(diff[plane]) if diff is not None else ""))
    if diff is not None:
        part = diff[plane]
        top = float(np.max(part[np.isfinite(part)], initial=0.0))
        scale = (f"white 0, darkest {top:.3g}" if top > 0 else
                 "none but where one is NaN or infinite" if not np.isfinite(part).all() else "no difference")
        maps.append(heatmap(part / top if top > 0 else part, "|difference|", scale))
    note = ""
    if got is None:
        kept = (unpacked.get("outputs") or {}).get(ATTENTION)
        why = absent.get("outputs") or (f"no {ATTENTION!r} among its outputs" if kept is None
                                         else kept.omitted or f"its shape is {list(kept.shape)}")
        note = f"No map of the implementation's: {why}."
    return Attention(maps, _where(first, index[:-2], rows, cols), note)


def _worst(diff: np.ndarray) -> tuple[int, ...]:
    if diff.size == 0:
        return (0,) * diff.ndim
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))


def _around(centre: tuple[int, ...], shape: tuple[int, ...]) -> tuple[slice, slice]:
    """At most HEATMAP_SIDE rows and columns around `centre`."""
    out = []
    for c, n in zip(centre, shape):
        size = min(n, HEATMAP_SIDE)
        start = min(max(c - size // 2, 0), n - size)
        out.append(slice(start, start + size))
    return out[0], out[1]


def _note(diff: np.ndarray) -> str:
    finite = diff[np.isfinite(diff)]
    notes = [f"max |difference| {float(finite.max()):.3g}"] if finite.size else []
    if finite.size < diff.size:  # e.g. the NaN rows of a known deviation
        notes.append(f"{diff.size - finite.size} of {diff.size} entries NaN or infinite in only one of the two")
    return "; ".join(notes)


def _where(kept: Kept, lead: tuple[int, ...], rows: slice, cols: slice) -> str:
    """E.g. `batch 1, head 0; rows 687-718 of 1200, columns 0-31 of 1200` (rows are queries or decoder steps)."""
    start = kept.start or (0,) * len(kept.shape)
    names = ("batch", "head") if len(kept.shape) == 4 else ("batch",)
    parts = [", ".join(f"{n} {s + i}" for n, s, i in zip(names, start, lead))]
    r0, c0 = start[-2] + rows.start, start[-1] + cols.start
    n_rows, n_cols = kept.shape[-2:]
    if (rows.stop - rows.start, cols.stop - cols.start) != (n_rows, n_cols):
        parts.append(f"rows {r0}-{r0 + rows.stop - rows.start - 1} of {n_rows}, "
                     f"columns {c0}-{c0 + cols.stop - cols.start - 1} of {n_cols}")
    return "; ".join(p for p in parts if p)
