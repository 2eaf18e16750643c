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
from impls.numpy.carried import Carried


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
    """§8: the bounds of one step's new states from those of its input and previous states (`step_bounds`).
    `diagnostics` gets `largest_gate_term`, the largest size of the terms a pre-activation sums."""
    terms, bounds = step_bounds(x, x_bound, h, h_bound, c, c_bound, W_x, W_h, b, gates, c_new, h_new)
    extreme(diagnostics, "largest_gate_term", float(terms.max()), max)
    return bounds["h"], bounds["c"]


def step_bounds(x: np.ndarray, x_bound: np.ndarray, h: np.ndarray, h_bound: np.ndarray, c: np.ndarray,
                c_bound: np.ndarray, W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray, gates: np.ndarray,
                c_new: np.ndarray, h_new: np.ndarray, weights_error: np.ndarray | float = 0.0
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """§8 for one step: the sizes of the terms a pre-activation sums, (B, 4H), and the bound of each value
    the step computes, by name: the pre-activations "a", the gates "i", "f", "g", "o" (each through its
    function), the new cell state "c", its "tanh_c" and the new hidden state "h". `weights_error` is the
    squared error weights that carry bounds bring to the pre-activations (§11.2; 0 for exact ones)."""
    H = h.shape[-1]
    terms = np.abs(x) @ np.abs(W_x) + np.abs(h) @ np.abs(W_h) + np.abs(b)  # (B, 4H)
    # the input's and the state's errors in quadrature; a sum of d_in + H products, the bias and one more
    # addition, for implementations that add two biases or two partial products
    gates_bound = (np.sqrt(carried(x_bound, W_x)**2 + carried(h_bound, W_h)**2 + weights_error)
                   + rounding(x.shape[-1] + H + 2) * terms)
    (i, i_b), (f, f_b), (g, g_b), (o, o_b) = (
        activation_bound(fn, gates[:, k * H:(k + 1) * H], gates_bound[:, k * H:(k + 1) * H])
        for k, fn in enumerate((sigmoid, sigmoid, np.tanh, sigmoid)))
    c_new_bound = (np.abs(c) * f_b + np.abs(f) * c_bound + np.abs(g) * i_b + np.abs(i) * g_b
                   + np.abs(f * c) + np.abs(i * g) + np.abs(c_new))  # two products and their sum round
    tanh_c, tanh_c_bound = activation_bound(np.tanh, c_new, c_new_bound)
    h_new_bound = np.abs(tanh_c) * o_b + np.abs(o) * tanh_c_bound + np.abs(h_new)
    return terms, {"a": gates_bound, "i": i_b, "f": f_b, "g": g_b, "o": o_b, "c": c_new_bound,
                   "tanh_c": tanh_c_bound, "h": h_new_bound}


def activation_bound(fn, a: np.ndarray, a_bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """§8: sigmoid or tanh of `a` and its bound: the input's error times the function's slope, and the
    function's own rounding: relative to its value, with `exp` rounding at the size of its argument (|a|),
    and for tanh also absolute, since 2 sigmoid(2a) - 1, the same function, cancels near 0."""
    y = fn(a)
    if fn is sigmoid:
        return y, y * (1 - y) * (a_bound + np.abs(a) + 1) + 2 * y
    return y, (1 - y**2) * (a_bound + np.abs(a)) + 2 * np.abs(y) + 2


def activation_rounding(fn, a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """§8: the part of `activation_bound` that its input's error does not bring, the function's own rounding
    (§11.2 carries it into the slope)."""
    if fn is sigmoid:
        return y * (1 - y) * (np.abs(a) + 1) + 2 * y
    return (1 - y**2) * np.abs(a) + 2 * np.abs(y) + 2


# --- §11: gradients -------------------------------------------------------------------------------------

OUTPUTS = ("logits", "hidden_states", "h_n", "c_n")


def weight_names(config: Mapping[str, Any]) -> list[str]:
    """§3's weights by their concrete names, layer by layer and then the classifier's."""
    return [f"{n}_{l}" for l in range(config["num_layers"]) for n in ("W_x", "W_h", "b")] + ["W_out", "b_out"]


def backward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             cotangents: Mapping[str, np.ndarray], eps: float | None = None) -> dict[str, Carried]:
    """§11: the gradients of the sum of <cotangents[o], o> over the four outputs o with respect to x and every
    weight, each with its bound in eps when `eps` (the dtype under test's) is given, by §11.2's rules. An
    output without a cotangent counts as one of zeros."""
    bounds = eps  # the dtype's eps: bounds, with the products of two errors; None: none
    w = {name: Carried.exact(weights[name], bounds) for name in weight_names(config)}
    cot = {name: Carried.exact(cotangents[name], bounds) for name in OUTPUTS if name in cotangents}
    return pullback(config, w, Carried.exact(inputs["x"], bounds), cot, eps)


def pullback(config: Mapping[str, Any], weights: Mapping[str, Carried], x: Carried,
             cotangents: Mapping[str, Carried], eps: float | None) -> dict[str, Carried]:
    """§11.1 on x and the outputs' cotangents, each carrying its bound (a block's inner values do): the
    gradients with respect to x ("x") and the weights, by name. Nothing here has a kink (§11.1), so `eps` is
    not needed beyond the bounds the arguments carry."""
    L, H = config["num_layers"], config["hidden"]
    B, T, _ = x.shape
    W_out = weights["W_out"]
    zeros = lambda *shape: Carried.exact(np.zeros(shape, dtype=x.value.dtype), x.bounds)
    cot = {"logits": zeros(B, W_out.shape[1]), "hidden_states": zeros(B, T, H), "h_n": zeros(L, B, H),
           "c_n": zeros(L, B, H), **cotangents}

    # §6 again, with §8's bounds of the values the gradients need: each layer's input sequence and steps
    layers, seq = [], x
    for l in range(L):  # §6.4: bottom layer first
        steps = layer_steps(seq, weights[f"W_x_{l}"], weights[f"W_h_{l}"], weights[f"b_{l}"])
        layers.append((seq, steps))
        seq = _stack([s["h"] for s in steps], axis=1)  # (B, T, H): the next layer's input

    # §6.5 backwards: logits = h_T @ W_out + b_out
    dlogits = cot["logits"]  # (B, num_classes)
    h_T = layers[-1][1][-1]["h"]  # (B, H)
    grads = {"W_out": h_T.mT @ dlogits, "b_out": dlogits.sum(axis=0)}
    dh_T = dlogits @ W_out.mT  # (B, H)

    dseq = cot["hidden_states"]  # (B, T, H): the cotangent of the top layer's hidden states, §6.4
    for l in reversed(range(L)):  # §6.4 backwards: top layer first, each passes its input's cotangent down
        seq, steps = layers[l]
        W_x, W_h = weights[f"W_x_{l}"], weights[f"W_h_{l}"]
        dh_next, dc_next = _at(cot["h_n"], l), _at(cot["c_n"], l)  # §6.6 backwards: (B, H) each
        if l == L - 1:
            dh_next = dh_next + dh_T
        das = [None] * T
        for t in reversed(range(T)):  # §6.3 backwards: last step first
            s = steps[t]
            dh = _at(dseq, (slice(None), t)) + dh_next  # (B, H): h_t feeds the output and step t + 1
            # h_t = o * tanh(c_t)
            do = dh * s["tanh_c"]
            dc = dc_next + dh * s["o"] * slope(np.tanh, s["c"], s["tanh_c"])
            # c_t = f * c_{t-1} + i * g; §6.2 backwards: each gate's slope at its pre-activation
            das[t] = _concat([dc * s["g"] * slope(sigmoid, s["a_i"], s["i"]),
                              dc * s["c_prev"] * slope(sigmoid, s["a_f"], s["f"]),
                              dc * s["i"] * slope(np.tanh, s["a_g"], s["g"]),
                              do * slope(sigmoid, s["a_o"], s["o"])], axis=-1)  # (B, 4H), blocks i, f, g, o
            # §6.1 backwards: a_t = x_t @ W_x + h_{t-1} @ W_h + b, for the previous step's states
            dh_next = das[t] @ W_h.mT  # (B, H)
            dc_next = dc * s["f"]  # (B, H): the cell state's path through the forget gate
        # §6.1 backwards, summed over every step and batch element
        da = _stack(das, axis=1)  # (B, T, 4H)
        h_prev = _stack([s["h_prev"] for s in steps], axis=1)  # (B, T, H)
        rows = lambda v: v.reshape(B * T, v.shape[-1])  # the positions as one axis
        grads.update({f"W_x_{l}": rows(seq).mT @ rows(da), f"W_h_{l}": rows(h_prev).mT @ rows(da),
                      f"b_{l}": da.sum(axis=(0, 1))})
        dseq = da @ W_x.mT  # (B, T, d): the cotangent of this layer's input
    grads["x"] = dseq
    return grads


def layer_steps(seq: Carried, W_x: Carried, W_h: Carried, b: Carried) -> list[dict[str, Carried]]:
    """§6.1-6.3 over one layer's steps from zero states, as `forward` computes them, each value with §8's
    bound (`step_bounds`; the weights' own errors, where they carry any, join the pre-activations' in
    quadrature): per step "h_prev", "c_prev", the pre-activations "a_i", "a_f", "a_g", "a_o", the gates "i",
    "f", "g", "o", and "c", "tanh_c", "h"."""
    B, T, _ = seq.shape
    H = W_h.shape[0]
    bounded = seq.bounds
    h = Carried.exact(np.zeros((B, H), dtype=W_h.value.dtype), bounded)  # §6.3: zero initial states
    c = Carried.exact(np.zeros((B, H), dtype=W_h.value.dtype), bounded)
    steps = []
    for t in range(T):
        x_t = seq.value[:, t]  # (B, d)
        gates = x_t @ W_x.value + h.value @ W_h.value + b.value  # (B, 4H), §6.1
        i, f, o = (sigmoid(gates[:, k * H:(k + 1) * H]) for k in (0, 1, 3))  # §6.2
        g = np.tanh(gates[:, 2 * H:3 * H])
        c_new = f * c.value + i * g  # (B, H), §6.3
        tanh_c = np.tanh(c_new)
        h_new = o * tanh_c
        values = {"a": gates, "i": i, "f": f, "g": g, "o": o, "c": c_new, "tanh_c": tanh_c, "h": h_new}
        if bounded:
            weights_error = (x_t**2 @ W_x.bound**2 + h.value**2 @ W_h.bound**2 + b.bound**2)  # (B, 4H)
            _, bounds = step_bounds(x_t, seq.bound[:, t], h.value, h.bound, c.value, c.bound, W_x.value,
                                    W_h.value, b.value, gates, c_new, h_new, weights_error)
        else:
            bounds = dict.fromkeys(values)
        step = {name: Carried(v, bounds[name]) for name, v in values.items()}
        a = step.pop("a")
        step.update({f"a_{k}": _at(a, (slice(None), slice(n * H, (n + 1) * H))) for n, k in enumerate("ifgo")},
                    h_prev=h, c_prev=c)
        steps.append(step)
        h, c = step["h"], step["c"]
    return steps


#: §11.2: the largest |sigmoid''|, s (1 - s) (1 - 2 s) at a = +-1.317 (0.0962), and the largest |tanh''|,
#: 2 t (1 - t^2) at a = +-0.658 (4 / (3 sqrt 3) = 0.770): an error in a moves the slope by at most this much.
SIGMOID_CURVATURE = 0.1
TANH_CURVATURE = 0.77


def slope(fn, a: Carried, y: Carried) -> Carried:
    """§11.1: fn'(a) from y = fn(a), s (1 - s) for the sigmoid and 1 - t^2 for tanh, with §11.2's bound: a's
    error by the largest curvature, y's own rounding (§8) by the slope's derivative in y (|1 - 2 s|, 2 |t|),
    and the slope's own roundings (of 1 - s and the product, 2 s (1 - s); of t^2 and 1 - t^2, 1)."""
    v = y.value
    value = v * (1 - v) if fn is sigmoid else 1 - v * v
    if not y.bounds:
        return Carried(value, None)
    own = activation_rounding(fn, a.value, v)
    if fn is sigmoid:
        return Carried(value, SIGMOID_CURVATURE * a.bound + np.abs(1 - 2 * v) * own + 2 * value)
    return Carried(value, TANH_CURVATURE * a.bound + 2 * np.abs(v) * own + 1)


def _at(v: Carried, index) -> Carried:
    """v[index], its bound alike."""
    return Carried(v.value[index], None if not v.bounds else v.bound[index])


def _stack(parts: list[Carried], axis: int) -> Carried:
    """np.stack of the values, and of the bounds: moving elements rounds nothing."""
    bounds = None if not parts[0].bounds else np.stack([p.bound for p in parts], axis=axis)
    return Carried(np.stack([p.value for p in parts], axis=axis), bounds)


def _concat(parts: list[Carried], axis: int) -> Carried:
    """np.concatenate of the values, and of the bounds."""
    bounds = None if not parts[0].bounds else np.concatenate([p.bound for p in parts], axis=axis)
    return Carried(np.concatenate([p.value for p in parts], axis=axis), bounds)


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "lstm_classifier"
    forward = staticmethod(forward)
    backward = staticmethod(backward)


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
