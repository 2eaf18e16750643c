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
from impls.numpy.carried import Carried

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


# --- §11: gradients -------------------------------------------------------------------------------------

def backward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             cotangents: Mapping[str, np.ndarray], eps: float | None = None) -> dict[str, Carried]:
    """§11: the gradients of <cotangents["y"], y> with respect to x and every weight, each with its bound in
    eps when `eps` (the dtype under test's) is given, by §11.2's rules."""
    bounds = eps  # the dtype's eps: bounds, with the products of two errors; None: none
    w = {name: Carried.exact(weights[name], bounds) for name in ("W_1", "b_1", "W_2", "b_2")}
    return pullback(config, w, Carried.exact(inputs["x"], bounds), Carried.exact(cotangents["y"], bounds), eps)


def pullback(config: Mapping[str, Any], weights: Mapping[str, Carried], x: Carried, dy: Carried,
             eps: float | None) -> dict[str, Carried]:
    """§11.1 on x and y's cotangent dy, each carrying its bound (a block's inner values do): the gradients
    with respect to x ("x") and the weights, by name."""
    W_1, b_1, W_2, b_2 = (weights[n] for n in ("W_1", "b_1", "W_2", "b_2"))
    B, T, d_model = x.shape
    d_ff = W_1.shape[1]
    # §5 again, with the bounds of the values the gradients need
    h = x @ W_1 + b_1  # (B, T, d_ff), §5.1
    a = activate(config["activation"], h)  # (B, T, d_ff), §6
    # §5.2 backwards: y = a @ W_2 + b_2
    rows = lambda v, n: v.reshape(B * T, n)  # the positions as one axis: weight gradients sum over them
    grads = {"W_2": rows(a, d_ff).mT @ rows(dy, d_model), "b_2": dy.sum(axis=(0, 1))}
    da = dy @ W_2.mT  # (B, T, d_ff)
    # §6 backwards: the activation's slope at h
    dh = da * derivative(config["activation"], h, eps)  # (B, T, d_ff)
    # §5.1 backwards: h = x @ W_1 + b_1
    grads.update({"W_1": rows(x, d_model).mT @ rows(dh, d_ff), "b_1": dh.sum(axis=(0, 1)), "x": dh @ W_1.mT})
    return grads


def activate(activation: str, h: Carried) -> Carried:
    """§6 on h, with §8's bound: relu passes h's on, a GELU carries it by its largest slope and rounds."""
    a = ACTIVATIONS[activation](h.value)
    if not h.bounds:
        return Carried(a, None)
    if activation == "relu":
        return Carried(a, h.bound)
    return Carried(a, GELU_SLOPE * h.bound + 3 * np.abs(a) + np.abs(h.value))


#: §11.2: the largest |act''| of the two GELUs, at h = 0 (2 / sqrt(2 pi) for the exact one, 0.798 too for the
#: tanh form): an error in h moves the slope by at most this much times it.
GELU_CURVATURE = 0.8


def derivative(activation: str, h: Carried, eps: float | None) -> Carried:
    """§11.1: act'(h), with §11.2's bound. relu's is 1 where h > 0 and 0 elsewhere (0 at h = 0); where h's own
    bound reaches 0 a correct implementation may take either side, and the bound is 1 / eps (a whole unit)."""
    v = h.value
    if activation == "relu":
        if eps is None:
            return Carried((v > 0).astype(v.dtype), None)
        return Carried((v > 0).astype(v.dtype), np.where(np.abs(v) <= h.bound * eps, 1.0 / eps, 0.0))
    if activation == "gelu":
        cdf = 0.5 * (1.0 + _erf(v * math.sqrt(0.5)))
        pdf = np.exp(-0.5 * v**2) / math.sqrt(2 * math.pi)
        first, second = cdf, v * pdf  # Phi(h) + h phi(h)
        curvature = pdf * (2.0 - v**2)
    else:  # gelu_tanh: 0.5 (1 + t) + 0.5 h (1 - t^2) u' with u = c (h + k h^3), t = tanh(u)
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        with np.errstate(over="ignore", invalid="ignore"):
            t = np.tanh(c * (v + k * v**3))
            du = c * (1.0 + 3 * k * v**2)
            first, second = 0.5 * (1.0 + t), np.nan_to_num(0.5 * v * (1.0 - t**2) * du)
            curvature = np.nan_to_num((1.0 - t**2) * (du + 0.5 * v * (6 * c * k * v - 2 * t * du**2)))
    slope = first + second
    if eps is None:
        return Carried(slope, None)
    return Carried(slope, GELU_CURVATURE * h.bound + 3 * (np.abs(first) + np.abs(second))
                   + 2 * np.abs(v * curvature))


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "ffn"
    forward = staticmethod(forward)
    backward = staticmethod(backward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def gelu_activation(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§6.2, §6.3: the activation is a GELU, exact or tanh, not relu."""
    return example["activation"] in ("gelu", "gelu_tanh")
