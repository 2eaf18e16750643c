"""Arrays the report makes again from an example: the .npz downloads and the attention heatmaps.

An example (spec parameters, `seed`, `scale_exp`) determines its weights and
inputs (conformance/generate.py), so the report regenerates them instead of
the results file carrying them. For the heatmaps the report also runs
implementations on the example, in this process, on the CPU, eagerly: only
registered ones (built-in or installed under the entry-point group), never a
plug-in named by a path in a results file, which the report would otherwise
execute; each that cannot run here is named with the reason.
"""

from __future__ import annotations

import io
import json
from typing import Any, Mapping

import numpy as np

from conformance import generate
from conformance.engine import reference_forward
from conformance.spec import Spec
from conformance.vocabulary import UsageError
from conformance.registry import builtin, keras_backend, Registered, registry
from impls import OUR_FRAMEWORKS

#: The output the heatmaps show, in the components that have one.
ATTENTION = "attention_weights"


def example_arrays(spec: Spec, example: Mapping[str, Any], dtype: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Weights and inputs as the implementation under test received them: made from the seed, rounded to dtype."""
    weights, inputs = generate.make_arrays(spec, example)
    return generate.cast(weights, dtype), generate.cast(inputs, dtype)


def reference(spec: Spec, example: Mapping[str, Any], dtype: str) -> dict[str, np.ndarray]:
    """The float64 NumPy reference on the rounded arrays, as the engine computes it."""
    weights, inputs = example_arrays(spec, example, dtype)
    return reference_forward(spec.component)(example, generate.cast(weights, "float64"),
                                             generate.cast(inputs, "float64"))


def npz_bytes(spec: Spec, cell: Mapping[str, Any], example: Mapping[str, Any], which: str) -> bytes:
    """One example as a compressed .npz: `weight.<name>`, `input.<name>`, `reference.<output>`, and `meta`.

    Weights and inputs hold the values the implementation received, rounded to
    the cell's dtype and stored as float64 (which holds every one exactly, and
    which NumPy loads without ml_dtypes); masks stay bool and tokens int64. An
    input that was None (no mask) is left out and listed in `meta`.
    """
    weights, inputs = example_arrays(spec, example, cell["dtype"])
    expected = reference(spec, example, cell["dtype"])
    arrays: dict[str, np.ndarray] = {}
    for prefix, group in (("weight", weights), ("input", inputs), ("reference", expected)):
        for name, value in group.items():
            if value is not None:
                arrays[f"{prefix}.{name}"] = np.asarray(generate.cast({name: value}, "float64")[name])
    meta = {
        "what": f"the {which} of this cell",
        "cell": {k: cell[k] for k in ("component", "implementation", "backend", "device", "mode", "dtype")},
        "example": dict(example),
        "inputs_absent": sorted(k for k, v in inputs.items() if v is None),
        "note": (f"weight.* and input.* are the arrays the implementation received, rounded to {cell['dtype']} "
                 "and stored as float64; reference.* are the float64 NumPy reference's outputs on them"),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


class Recomputer:
    """Runs implementations of a component on one example for the attention heatmaps, with a cache."""

    def __init__(self) -> None:
        self._found: dict[tuple[str, str, str | None], Registered | str] = {}
        self._runs: dict[str, np.ndarray | str] = {}

    def find(self, component: str, implementation: str, backend: str | None) -> Registered | str:
        """The registered implementation, or why it cannot run in this process."""
        key = (component, implementation, backend)
        if key not in self._found:
            self._found[key] = self._find(*key)
        return self._found[key]

    def _find(self, component: str, implementation: str, backend: str | None) -> Registered | str:
        if ":" in implementation:
            return "a plug-in named by its file or module; the report runs registered implementations only"
        try:
            found = builtin(component, implementation) if implementation in OUR_FRAMEWORKS else next(
                r for r in registry() if r.component == component and r.name == implementation)
        except (UsageError, StopIteration):
            return "not registered in this installation"
        missing = found.unavailable_reason()
        if missing is not None:
            return missing
        if found.framework == "keras" and keras_backend() != backend:  # known before importing Keras
            return f"this process runs Keras on {keras_backend()}, the cell ran on {backend} (set KERAS_BACKEND)"
        try:
            here = found.backend()
        except Exception as e:
            return f"failed to load: {type(e).__name__}: {e}"
        if here != backend:
            return f"this process runs on backend {here}, the cell ran on {backend}"
        return found

    def attention(self, spec: Spec, implementation: str, backend: str | None, dtype: str,
                  example: Mapping[str, Any]) -> np.ndarray | str:
        """The implementation's attention weights (float64) on the example, or why there are none."""
        key = json.dumps([spec.component, implementation, backend, dtype, example], sort_keys=True, default=str)
        if key not in self._runs:
            self._runs[key] = self._attention(spec, implementation, backend, dtype, example)
        return self._runs[key]

    def _attention(self, spec: Spec, implementation: str, backend: str | None, dtype: str,
                   example: Mapping[str, Any]) -> np.ndarray | str:
        found = self.find(spec.component, implementation, backend)
        if isinstance(found, str):
            return found
        try:
            if dtype not in found.dtypes:
                return f"does not support {dtype}"
            weights, inputs = example_arrays(spec, example, dtype)
            built = found.load().build(generate.layer_config(spec, example), dtype=dtype, device="cpu")
            built.load({k: v.copy() for k, v in weights.items()})
            outputs = built({k: None if v is None else v.copy() for k, v in inputs.items()})
            if ATTENTION not in outputs:
                return f"returned no {ATTENTION!r}"
            return np.asarray(outputs[ATTENTION]).astype(np.float64)
        except Exception as e:  # whatever the implementation does, the report goes on
            return f"raised {type(e).__name__}: {e}"
