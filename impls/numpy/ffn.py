"""Position-wise feed-forward network in NumPy, written from spec/ffn.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one. NumPy has no erf, so the
exact GELU uses Python's math.erf elementwise. Section numbers refer to
spec/ffn.md.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import numpy as np

from impls.numpy import NumpyImplementation

_erf = np.vectorize(math.erf, otypes=[np.float64])


def relu(h: np.ndarray) -> np.ndarray:
    """§6.1: max(h, 0)."""
    return np.maximum(h, 0)


def gelu(h: np.ndarray) -> np.ndarray:
    """§6.2: h * Phi(h) = 0.5 h (1 + erf(h / sqrt 2)), the exact form."""
    phi = (0.5 * (1.0 + _erf(h.astype(np.float64) * math.sqrt(0.5)))).astype(h.dtype)
    return h * phi


def gelu_tanh(h: np.ndarray) -> np.ndarray:
    """§6.3: 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3))), the tanh approximation.

    In float16, h^3 overflows to +-inf for |h| > 40; tanh(+-inf) = +-1 is the right limit.
    """
    with np.errstate(over="ignore"):
        return 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h**3)))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": relu, "gelu": gelu, "gelu_tanh": gelu_tanh}


def magnitude(weights: Mapping[str, np.ndarray], x_abs: np.ndarray) -> np.ndarray:
    """§8: §5 evaluated with |.| on every weight and bias and the activation left out.

    `x_abs` is the magnitude of the input (|x| for the component on its own).
    Every activation satisfies |act(h)| <= |h|, so this bounds the terms each
    output is summed from.
    """
    h_abs = x_abs @ np.abs(weights["W_1"]) + np.abs(weights["b_1"])  # (..., d_ff)
    return h_abs @ np.abs(weights["W_2"]) + np.abs(weights["b_2"])  # (..., d_model)


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§5: the whole computation in the dtype of the weights; §7: no dropout at inference."""
    x = inputs["x"]  # (B, T, d_model)
    h = x @ weights["W_1"] + weights["b_1"]  # (B, T, d_ff), §5.1
    a = ACTIVATIONS[config["activation"]](h)  # (B, T, d_ff), §6
    y = a @ weights["W_2"] + weights["b_2"]  # (B, T, d_model), §5.2
    if diagnostics is not None:  # the magnitude spec/ffn.md §8 scales the budget by
        diagnostics["y_scale"] = float(magnitude(weights, np.abs(x)).max())
    return {"y": y}


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "ffn"
    forward = staticmethod(forward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def gelu_activation(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§6.2, §6.3: the activation is a GELU, exact or tanh, not relu."""
    return example["activation"] in ("gelu", "gelu_tanh")
