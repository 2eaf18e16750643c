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
from impls.numpy.bounds import extreme, linear_bound

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


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§5: the whole computation in the dtype of the weights; §7: no dropout at inference. With
    `diagnostics`, also §8's error bound, which the budget scales by, per element."""
    x = inputs["x"]  # (B, T, d_model)
    y, y_bound = bound(config, weights, x, None if diagnostics is None else np.zeros(x.shape))
    if diagnostics is not None:
        diagnostics["y_bound"] = y_bound
        # for the range rule: §5 evaluated with |.| on every input, weight and bias and the activation left
        # out (|act(h)| <= |h| for each of §6), the size of the terms an output sums
        h_terms = np.abs(x) @ np.abs(weights["W_1"]) + np.abs(weights["b_1"])  # (B, T, d_ff)
        y_terms = h_terms @ np.abs(weights["W_2"]) + np.abs(weights["b_2"])  # (B, T, d_model)
        extreme(diagnostics, "largest_output_term", float(y_terms.max()), max)
    return {"y": y}


#: §8: the largest slope of the exact GELU, Phi(h) + h phi(h) at h = sqrt(2): an error in its input grows by
#: at most this much.
GELU_SLOPE = 1.13


def bound(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], x: np.ndarray, x_bound: np.ndarray | None
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """§5 on x, and §8's bound of the result given x's (None computes none): both projections, and the
    activation, whose slope is at most 1 (relu, which rounds nothing) or GELU_SLOPE (a GELU, which rounds erf
    or tanh and the products around it)."""
    h, h_bound = linear_bound(x, x_bound, weights["W_1"], weights["b_1"])  # (B, T, d_ff), §5.1
    a = ACTIVATIONS[config["activation"]](h)  # (B, T, d_ff), §6
    if h_bound is None:
        a_bound = None
    elif config["activation"] == "relu":
        a_bound = h_bound
    else:
        a_bound = GELU_SLOPE * h_bound + 3 * np.abs(a) + np.abs(h)
    return linear_bound(a, a_bound, weights["W_2"], weights["b_2"])  # (B, T, d_model), §5.2


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "ffn"
    forward = staticmethod(forward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def gelu_activation(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§6.2, §6.3: the activation is a GELU, exact or tanh, not relu."""
    return example["activation"] in ("gelu", "gelu_tanh")
