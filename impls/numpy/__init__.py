"""Implementations in plain NumPy. `<component>.py` run in float64 is the harness's reference."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np


class NumpyImplementation:
    """What every NumPy implementation shares; a subclass names its component and forward function."""

    name = "numpy"
    framework = "numpy"
    dtypes = ("float32", "float64")
    forward: Callable[..., dict[str, np.ndarray]]

    def devices(self) -> list[str]:
        return ["cpu"]

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str) -> "_Instance":
        return _Instance(type(self).forward, config, dtype)


class _Instance:
    def __init__(self, forward: Callable[..., dict[str, np.ndarray]], config: Mapping[str, Any], dtype: str):
        self.forward, self.config, self.dtype = forward, dict(config), np.dtype(dtype)
        self.weights: dict[str, np.ndarray] = {}

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        self.weights = {name: np.asarray(w, dtype=self.dtype) for name, w in weights.items()}

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        # Dropout is the identity at inference, so no forward function uses its rate.
        return self.forward(self.config, self.weights, inputs)
