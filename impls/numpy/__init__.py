"""Implementations in plain NumPy. `<component>.py` run in float64 is the harness's reference.

float16 is NumPy's own. bfloat16 comes from ml_dtypes, which stores it but
computes matrix products in float32, and a float32 product makes everything
after it float32; so a bfloat16 instance takes bfloat16 inputs and weights,
computes as NumPy promotes them, and rounds its outputs to bfloat16.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from impls import numpy_dtype


class NumpyImplementation:
    """What every NumPy implementation shares; a subclass names its component and forward function."""

    name = "numpy"
    framework = "numpy"
    dtypes = ("float64", "float32", "float16", "bfloat16")
    forward: Callable[..., dict[str, np.ndarray]]

    def devices(self) -> list[str]:
        return ["cpu"]

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str) -> "_Instance":
        backward = getattr(type(self), "backward", None)  # spec's gradients section, where it has one
        if backward is None:
            return _Instance(type(self).forward, config, dtype)
        return _DifferentiableInstance(type(self).forward, config, dtype, backward)

    def environment(self) -> dict[str, Any]:
        import ml_dtypes

        return {"numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__}


class _Instance:
    def __init__(self, forward: Callable[..., dict[str, np.ndarray]], config: Mapping[str, Any], dtype: str):
        self.forward, self.config, self.dtype = forward, dict(config), numpy_dtype(dtype)
        self.weights: dict[str, np.ndarray] = {}

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {name: np.asarray(w, dtype=self.dtype) for name, w in weights.items()}

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        # Dropout is the identity at inference, so no forward function uses its rate.
        outputs = self.forward(self.config, self.weights, inputs)
        return {name: value.astype(self.dtype) if value.dtype.kind in "fV" else value
                for name, value in outputs.items()}


class _DifferentiableInstance(_Instance):
    """An instance whose component's reference has a backward pass: `vjp` runs it in the instance's dtype."""

    def __init__(self, forward: Callable[..., dict[str, np.ndarray]], config: Mapping[str, Any], dtype: str,
                 backward: Callable[..., dict[str, Any]]):
        super().__init__(forward, config, dtype)
        self.backward = backward

    def vjp(self, inputs: Mapping[str, Any], cotangents: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        given = {name: c for name, c in cotangents.items() if c is not None}  # None: an integer output
        grads = self.backward(self.config, self.weights, inputs, given)
        return {name: np.asarray(g.value).astype(self.dtype) for name, g in grads.items()}
