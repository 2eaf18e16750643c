"""A counterexample's arrays, kept in the results so that the report reads them and never runs an implementation.

`keep` turns the arrays of the example a cell failed on (`Runner.last`: the
weights and inputs as the candidate received them, the float64 reference's
outputs and the candidate's own) into JSON of bounded size; `unpack` reads it
back for the report, checking the bound again, since a results file may come
from anywhere.

The format (results.schema.json, `evidence`): the groups "inputs", "outputs"
(the candidate's), "reference" and "weights", each a mapping name -> array, or
null where there is none ("absent" then says why: the candidate raised, or
returned something that matches no output). Outputs returned by position (a
tuple, or one array) are named as the engine names them, in the order of the
spec's output table. An array is {"shape", "dtype",
"data"}, `data` the base64 of its little-endian bytes in row-major order; with
"window": {"start", "shape"}, `data` holds only that block of it; or it is
{"shape", "dtype", "omitted": why}. Values keep the array's own dtype, so they
are exact, NaN and infinities included.

A cell keeps at most MAX_ELEMENTS elements, shared out in three tiers: first
the inputs and the output that differs most from the reference (with its
reference), then the other outputs (each with its reference), then the
weights. Within a tier the small arrays are kept whole and the large ones
share what is left equally; an array cut short keeps a window around its worst
element (for an output, where it differs most from the reference; for an
input or a weight, its start), and one whose share is under MIN_WINDOW
elements is omitted.

A gradient failure (conformance/gradients.py) keeps its own arrays in the same
format and bound (`keep_gradients`, results.schema.json `gradient_evidence`):
the groups "cotangents" (as the candidate's vjp received them), "gradients"
(what it gave) and "reference" (the float64 reference's gradients), the
cotangents and the failing gradient with its reference first, then the other
gradients. The example's weights and inputs are not kept: its `reproduce:`
line makes them again.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from conformance.spec import Spec
from conformance.vocabulary import DTYPES, numpy_dtype

#: Elements kept per cell over all its arrays (32 KiB of float64; about 44 kB of base64).
MAX_ELEMENTS = 4096
#: An array cut to fewer elements than this is omitted rather than kept as a window.
MIN_WINDOW = 16
#: The dtypes whose values are kept; others (complex, strings, objects) are described, not stored.
STORED_DTYPES = (*DTYPES, "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
#: The groups, in the order the report shows them.
GROUPS = ("inputs", "outputs", "reference", "weights")
#: The groups of a gradient failure's evidence, in that order.
GRADIENT_GROUPS = ("cotangents", "gradients", "reference")


@dataclass(frozen=True)
class Layout:
    """Which of a kind of evidence's groups plays which part: `lead`'s arrays are kept first, beside the
    candidate's array that differs most from the reference's; `rest`'s (if any) last."""

    groups: tuple[str, ...]
    lead: str
    candidate: str
    reference: str
    rest: str | None


#: A cell's evidence: its example's inputs, outputs, reference outputs and weights.
FORWARD = Layout(GROUPS, "inputs", "outputs", "reference", "weights")
#: A gradient failure's evidence: the cotangents, the candidate's gradients and the reference's.
GRADIENTS = Layout(GRADIENT_GROUPS, "cotangents", "gradients", "reference", None)


class EvidenceError(ValueError):
    """Evidence that cannot be read back: malformed, or larger than MAX_ELEMENTS."""


@dataclass
class _Unit:
    """Arrays that share one allowance and one window: an output with its reference, or one input or weight."""

    keys: list[tuple[str, str]]  # (group, name)
    shape: tuple[int, ...]
    centre: tuple[int, ...]  # the element a window is centred on

    @property
    def size(self) -> int:
        return math.prod(self.shape) * len(self.keys)


def _as_array(value: Any) -> np.ndarray | str:
    """The value as an array of a stored dtype, or why it is not kept."""
    try:
        a = np.asarray(value)
    except Exception as e:  # a candidate may return anything
        return f"not array-like: {type(e).__name__}"
    if str(a.dtype) not in STORED_DTYPES:
        return f"dtype {a.dtype} is not stored"
    return a


def difference(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|got - ref| element by element in float64: 0 where both hold the same value (infinities and NaN
    included), infinite where one is non-finite and the other is not the same."""
    g, r = got.astype(np.float64), ref.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(g - r)
    diff[(g == r) | (np.isnan(g) & np.isnan(r))] = 0.0
    diff[np.isnan(diff)] = np.inf
    return diff


def _difference(got: np.ndarray, ref: np.ndarray) -> tuple[float, tuple[int, ...]]:
    """How much `got` differs from `ref`, relative to the reference's largest magnitude, and where most.

    A shape that differs, or a non-finite value where the other has another value, counts as infinite."""
    if got.shape != ref.shape:
        return math.inf, (0,) * ref.ndim
    if got.size == 0:
        return 0.0, (0,) * ref.ndim
    diff = difference(got, ref)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape)
    r = ref.astype(np.float64)
    finite = np.abs(r[np.isfinite(r)])
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return float(diff[worst]) / scale, tuple(int(i) for i in worst)


def _tiers(found: dict[str, dict[str, np.ndarray]], spec: Spec, layout: Layout,
           failing: str | None) -> list[list[_Unit]]:
    """The arrays to keep, as units in three tiers of priority; `failing`: the candidate's array the failure
    names, kept first whatever differs most."""
    def origin(a: np.ndarray) -> tuple[int, ...]:
        return (0,) * a.ndim

    candidate, reference = layout.candidate, layout.reference
    lead = [_Unit([(layout.lead, k)], a.shape, origin(a)) for k, a in found[layout.lead].items()]
    last = [_Unit([(layout.rest, k)], a.shape, origin(a)) for k, a in found[layout.rest].items()] \
        if layout.rest else []
    order = {name: i for i, name in enumerate(spec.outputs)}
    names = sorted(set(found[candidate]) | set(found[reference]), key=lambda n: (order.get(n, len(order)), n))
    ranked = []
    for name in names:
        got, ref = found[candidate].get(name), found[reference].get(name)
        if got is None or ref is None:
            only = got if got is not None else ref
            group = candidate if got is not None else reference
            ranked.append((0.0, name, _Unit([(group, name)], only.shape, origin(only))))
            continue
        amount, centre = _difference(got, ref)
        if got.shape == ref.shape:
            ranked.append((amount, name, _Unit([(candidate, name), (reference, name)], ref.shape, centre)))
        else:  # shapes differ: no shared window
            ranked += [(amount, name, _Unit([(candidate, name)], got.shape, origin(got))),
                       (amount, name, _Unit([(reference, name)], ref.shape, origin(ref)))]
    if failing in names:  # the one the failure names, whatever differs most
        chosen = {failing}
    else:
        top = max((amount for amount, _, _ in ranked), default=0.0)
        chosen = {name for amount, name, _ in ranked if top > 0 and amount == top}
    differing = [u for _, name, u in ranked if name in chosen]
    rest = [u for _, name, u in ranked if name not in chosen]
    return [lead + differing, rest, last]


def _share(units: list[_Unit], room: int) -> tuple[dict[int, int], int]:
    """Elements per unit (by id): the smallest kept whole, the rest sharing what is left equally."""
    given: dict[int, int] = {}
    ordered = sorted(units, key=lambda u: u.size)
    for i, unit in enumerate(ordered):
        take = min(unit.size, room // (len(ordered) - i))
        given[id(unit)] = take
        room -= take
    return given, room


def window(shape: tuple[int, ...], centre: tuple[int, ...], room: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(start, size) of a block of at most `room` elements around `centre`: as square as it can be over
    the last two axes (a heatmap's rows and columns), then widened along the axes before them."""
    sizes = [1] * len(shape)
    if len(shape) >= 2:
        sizes[-1] = min(shape[-1], max(1, math.isqrt(room)))
        sizes[-2] = min(shape[-2], max(1, room // sizes[-1]))
        sizes[-1] = min(shape[-1], max(1, room // sizes[-2]))  # what short columns leave to the rows
    elif shape:
        sizes[-1] = min(shape[-1], room)
    for axis in reversed(range(len(shape) - 2)):
        sizes[axis] = min(shape[axis], max(1, room // math.prod(sizes)))
    start = [min(max(c - s // 2, 0), n - s) for c, s, n in zip(centre, sizes, shape)]
    return tuple(start), tuple(sizes)


def _encode(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).decode("ascii")


def _store(a: np.ndarray, unit: _Unit, allowance: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    if a.size <= allowance:
        entry["data"] = _encode(a)
    elif allowance >= MIN_WINDOW:
        start, size = window(a.shape, unit.centre, allowance)
        block = a[tuple(slice(s, s + n) for s, n in zip(start, size))]
        entry["window"] = {"start": list(start), "shape": list(size)}
        entry["data"] = _encode(block)
    else:
        entry["omitted"] = f"{a.size} elements; the {MAX_ELEMENTS} a cell keeps went to arrays of higher priority"
    return entry


def _named(got: Any, reference: Mapping[str, Any], spec: Spec) -> Any:
    """The candidate's outputs as a mapping where it returned them by position, as the engine names them:
    a tuple (or list) in the order of the spec's output table, or one array. When it returned fewer
    (an adapter declares the outputs it has), each is named by the next output in that order whose
    reference has its shape; what cannot be named so is returned as it came."""
    if isinstance(got, Mapping) or got is None:
        return got
    values = list(got) if isinstance(got, (tuple, list)) else [got]
    names = [n for n in spec.outputs if n in reference] or list(reference)
    if len(values) == len(names):
        return dict(zip(names, values))
    named: dict[str, Any] = {}
    rest = iter(names)
    try:
        for value in values:
            named[next(n for n in rest if np.shape(reference[n]) == np.shape(value))] = value
    except (StopIteration, Exception):  # no such output, or a value np.shape cannot read
        return got
    return named


def keep(arrays: Mapping[str, Any] | None, spec: Spec) -> dict[str, Any] | None:
    """The arrays of one example in the format above, at most MAX_ELEMENTS elements; None without arrays."""
    if not arrays:
        return None
    reference = arrays.get("reference") if isinstance(arrays.get("reference"), Mapping) else {}
    arrays = {**arrays, "outputs": _named(arrays.get("outputs"), reference, spec)}
    return _keep(arrays, spec, FORWARD, None)


def keep_gradients(arrays: Mapping[str, Any] | None, spec: Spec,
                   failing: str | None = None) -> dict[str, Any] | None:
    """A gradient failure's arrays ("cotangents", "gradients": what the candidate's vjp gave, None where it
    raised; "reference": the reference's gradients) in the format above, at most MAX_ELEMENTS elements, the
    gradient named `failing` and its reference kept first; None without arrays."""
    if not arrays:
        return None
    return _keep(arrays, spec, GRADIENTS, failing)


def _why_absent(values: Any, layout: Layout) -> str:
    """Why the candidate's group is null: it raised (None), or returned something that is not a mapping."""
    if layout is GRADIENTS:
        return ("the implementation's vjp raised" if values is None
                else f"the implementation's vjp returned a {type(values).__name__}, not a mapping of gradients")
    return ("the implementation raised" if values is None
            else f"the implementation returned a {type(values).__name__} that does not match the reference's outputs")


def _keep(arrays: Mapping[str, Any], spec: Spec, layout: Layout, failing: str | None) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    absent: dict[str, str] = {}
    found: dict[str, dict[str, np.ndarray]] = {}
    for group in layout.groups:
        values = arrays.get(group)
        found[group] = {}
        if not isinstance(values, Mapping):
            kept[group] = None
            if group == layout.candidate:
                absent[group] = _why_absent(values, layout)
            continue
        kept[group] = {}
        for name, value in values.items():
            if value is None:  # an input left out, such as no mask
                continue
            a = _as_array(value)
            if isinstance(a, str):
                kept[group][str(name)] = {"omitted": a}
            else:
                found[group][str(name)] = a
    room = MAX_ELEMENTS
    for tier in _tiers(found, spec, layout, failing):
        given, room = _share(tier, room)
        for unit in tier:
            for group, name in unit.keys:
                kept[group][name] = _store(found[group][name], unit, given[id(unit)] // len(unit.keys))
    for group in layout.groups:  # in the order the arrays came
        if kept[group] is not None:
            source = arrays[group]
            kept[group] = {str(k): kept[group][str(k)] for k in source if str(k) in kept[group]}
    if absent:
        kept["absent"] = absent
    return kept


# --- reading it back ------------------------------------------------------------------------


@dataclass(eq=False)
class Kept:
    """One array as the results hold it: all of it, a block of it (`start`), or only why it is not there."""

    shape: tuple[int, ...]
    dtype: str
    values: np.ndarray | None = None  # the whole array, or the block at `start`
    start: tuple[int, ...] | None = None
    omitted: str | None = None

    @property
    def whole(self) -> bool:
        return self.values is not None and self.start is None


def _dtype(name: str) -> np.dtype:
    if name not in STORED_DTYPES:
        raise EvidenceError(f"dtype {name!r} is not one evidence stores")
    return (numpy_dtype(name) if name in DTYPES else np.dtype(name)).newbyteorder("<")


def _unpack_array(entry: Mapping[str, Any]) -> Kept:
    shape = tuple(int(n) for n in entry.get("shape", ()))
    dtype = str(entry.get("dtype", ""))
    if "data" not in entry:
        return Kept(shape, dtype, omitted=str(entry.get("omitted", "no values")))
    block = shape
    start = None
    if "window" in entry:
        start = tuple(int(n) for n in entry["window"]["start"])
        block = tuple(int(n) for n in entry["window"]["shape"])
        if len(start) != len(shape) or len(block) != len(shape) or any(
                s < 0 or n < 0 or s + n > m for s, n, m in zip(start, block, shape)):
            raise EvidenceError(f"window {list(start)} + {list(block)} is not inside shape {list(shape)}")
    dtype_ = _dtype(dtype)
    if math.prod(block) > MAX_ELEMENTS:  # checked before decoding anything
        raise EvidenceError(f"an array of {math.prod(block)} elements, over the {MAX_ELEMENTS} a cell keeps")
    try:
        raw = base64.b64decode(entry["data"], validate=True)
    except (binascii.Error, TypeError, ValueError) as e:
        raise EvidenceError(f"data is not base64: {e}") from None
    if len(raw) != math.prod(block) * dtype_.itemsize:
        raise EvidenceError(f"{len(raw)} bytes of data for {math.prod(block)} elements of {dtype}")
    return Kept(shape, dtype, np.frombuffer(raw, dtype_).reshape(block), start)


def unpack(evidence: Mapping[str, Any], groups: tuple[str, ...] = GROUPS) -> dict[str, dict[str, Kept] | None]:
    """A cell's evidence (or with GRADIENT_GROUPS, a gradient failure's) as arrays, group by group;
    EvidenceError if malformed or over MAX_ELEMENTS in all."""
    out: dict[str, dict[str, Kept] | None] = {}
    total = 0
    try:
        for group in groups:
            entries = evidence.get(group)
            if entries is None:
                out[group] = None
                continue
            out[group] = {str(name): _unpack_array(entry) for name, entry in entries.items()}
            total += sum(k.values.size for k in out[group].values() if k.values is not None)
            if total > MAX_ELEMENTS:
                raise EvidenceError(f"more than the {MAX_ELEMENTS} elements a cell keeps")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, EvidenceError):
            raise
        raise EvidenceError(f"malformed: {type(e).__name__}: {e}") from None
    return out


def arrays(unpacked: Mapping[str, Mapping[str, Kept] | None]) -> Iterator[tuple[str, str, Kept]]:
    """(group, name, kept) for every array, in the order of the groups (as `unpack` gives them)."""
    for group, entries in unpacked.items():
        for name, kept in (entries or {}).items():
            yield group, name, kept
