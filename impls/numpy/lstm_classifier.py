"""A multi-layer LSTM classifier in NumPy, written from spec/lstm_classifier.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one, with a plain loop over
layers and time steps. Section numbers refer to spec/lstm_classifier.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation
from impls.numpy.bounds import carried, extreme, linear_bound, rounding


def sigmoid(a: np.ndarray) -> np.ndarray:
    """§6.2: the logistic function 1 / (1 + exp(-a)), arranged so that exp never overflows."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§6: the whole computation in the dtype of the weights. With `diagnostics`, also §8's error bounds, which
    the budgets scale by, per element, carried beside the states step by step."""
    hidden, num_layers = config["hidden"], config["num_layers"]
    x = inputs["x"]  # (B, T, d_in)
    B, T, _ = x.shape
    dtype = weights["W_out"].dtype
    H = hidden
    bounded = diagnostics is not None

    seq = x  # the input sequence of the current layer: (B, T, d_in), then (B, T, hidden)
    seq_bound = np.zeros(x.shape) if bounded else None  # §8: the inputs are exact
    h_n, c_n, h_n_bound, c_n_bound = [], [], [], []
    for l in range(num_layers):  # §6.4: bottom layer first
        W_x, W_h, b = weights[f"W_x_{l}"], weights[f"W_h_{l}"], weights[f"b_{l}"]
        h = np.zeros((B, H), dtype=dtype)  # §6.3: zero initial states
        c = np.zeros((B, H), dtype=dtype)
        h_bound = c_bound = np.zeros((B, H))
        hs, hs_bound = [], []
        for t in range(T):
            gates = seq[:, t] @ W_x + h @ W_h + b  # (B, 4H), §6.1
            i = sigmoid(gates[:, 0 * H:1 * H])  # input gate, §6.2
            f = sigmoid(gates[:, 1 * H:2 * H])  # forget gate
            g = np.tanh(gates[:, 2 * H:3 * H])  # cell candidate
            o = sigmoid(gates[:, 3 * H:4 * H])  # output gate
            c_new = f * c + i * g  # (B, H), §6.3
            h_new = o * np.tanh(c_new)  # (B, H)
            if bounded:
                h_bound, c_bound = step_bound(seq[:, t], seq_bound[:, t], h, h_bound, c, c_bound, W_x, W_h, b,
                                              gates, c_new, h_new, diagnostics)
                hs_bound.append(h_bound)
            h, c = h_new, c_new
            hs.append(h)
        seq = np.stack(hs, axis=1)  # (B, T, H): the next layer's input
        seq_bound = np.stack(hs_bound, axis=1) if bounded else None
        h_n.append(h)
        c_n.append(c)
        h_n_bound.append(h_bound)
        c_n_bound.append(c_bound)

    h_T = seq[:, -1]  # (B, H): the top layer at the last step, §6.5
    logits, logits_bound = linear_bound(h_T, None if seq_bound is None else seq_bound[:, -1],
                                        weights["W_out"], weights["b_out"])  # (B, num_classes)
    if bounded:
        diagnostics.update(hidden_states_bound=seq_bound, h_n_bound=np.stack(h_n_bound),
                           c_n_bound=np.stack(c_n_bound), logits_bound=logits_bound)
        logit_terms = np.abs(h_T) @ np.abs(weights["W_out"]) + np.abs(weights["b_out"])
        extreme(diagnostics, "largest_logit_term", float(logit_terms.max()), max)
    return {"logits": logits, "hidden_states": seq, "h_n": np.stack(h_n), "c_n": np.stack(c_n)}


# --- §8: the error bounds the budgets scale by ----------------------------------------

def step_bound(x: np.ndarray, x_bound: np.ndarray, h: np.ndarray, h_bound: np.ndarray, c: np.ndarray,
               c_bound: np.ndarray, W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray, gates: np.ndarray,
               c_new: np.ndarray, h_new: np.ndarray, diagnostics: dict) -> tuple[np.ndarray, np.ndarray]:
    """§8: the bounds of one step's new states from those of its input and previous states: the
    pre-activations', each gate's through its function, the cell update's and the hidden state's.
    `diagnostics` gets `largest_gate_term`, the largest size of the terms a pre-activation sums."""
    H = h.shape[-1]
    terms = np.abs(x) @ np.abs(W_x) + np.abs(h) @ np.abs(W_h) + np.abs(b)  # (B, 4H)
    extreme(diagnostics, "largest_gate_term", float(terms.max()), max)
    # the input's and the state's errors in quadrature; a sum of d_in + H products, the bias and one more
    # addition, for implementations that add two biases or two partial products
    gates_bound = (np.sqrt(carried(x_bound, W_x)**2 + carried(h_bound, W_h)**2)
                   + rounding(x.shape[-1] + H + 2) * terms)
    (i, i_b), (f, f_b), (g, g_b), (o, o_b) = (
        activation_bound(fn, gates[:, k * H:(k + 1) * H], gates_bound[:, k * H:(k + 1) * H])
        for k, fn in enumerate((sigmoid, sigmoid, np.tanh, sigmoid)))
    c_new_bound = (np.abs(c) * f_b + np.abs(f) * c_bound + np.abs(g) * i_b + np.abs(i) * g_b
                   + np.abs(f * c) + np.abs(i * g) + np.abs(c_new))  # two products and their sum round
    tanh_c, tanh_c_bound = activation_bound(np.tanh, c_new, c_new_bound)
    h_new_bound = np.abs(tanh_c) * o_b + np.abs(o) * tanh_c_bound + np.abs(h_new)
    return h_new_bound, c_new_bound


def activation_bound(fn, a: np.ndarray, a_bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """§8: sigmoid or tanh of `a` and its bound: the input's error times the function's slope, and the
    function's own rounding: relative to its value, with `exp` rounding at the size of its argument (|a|),
    and for tanh also absolute, since 2 sigmoid(2a) - 1, the same function, cancels near 0."""
    y = fn(a)
    if fn is sigmoid:
        return y, y * (1 - y) * (a_bound + np.abs(a) + 1) + 2 * y
    return y, (1 - y**2) * (a_bound + np.abs(a)) + 2 * np.abs(y) + 2


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "lstm_classifier"
    forward = staticmethod(forward)


# --- properties (the spec's `property` table, §10), as in impls/numpy/mha.py -------------------------------

def causality(draw: Any) -> tuple | None:
    """§10.2: the inputs after a step t replaced, and cut off; `hidden_states` up to t stay as they were."""
    T = draw.example["T"]
    if T < 2:
        return None
    t = int(draw.rng.integers(T - 1))  # the last step kept
    kept = np.arange(T) <= t
    replaced = {**draw.inputs, "x": draw.replaced("x", ~kept[None, :, None])}
    cut = {**draw.inputs, "x": draw.inputs["x"][:, :t + 1]}
    return [(replaced, lambda name, array: array, {"hidden_states": kept[None, :, None]},
             f"the inputs after step {t} replaced"),
            (cut, lambda name, array: array[:, :t + 1], {"hidden_states": np.ones((), bool)},
             f"the inputs cut off after step {t}")]
