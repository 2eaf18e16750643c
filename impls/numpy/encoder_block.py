"""Transformer encoder block in NumPy, written from spec/encoder_block.md.

Run in float64 this is the reference every other implementation is compared
with. The attention and the feed-forward network are the references of the
`mha` and `ffn` components, called as they are; this file adds the layer
norms and the residual connections, and §8's error bounds, which it carries
beside the values when the harness asks for diagnostics (text_classifier
composes them too). The backward pass (§11) composes those components'
pullbacks in the same way. Section numbers refer to spec/encoder_block.md.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from impls.numpy import NumpyImplementation

from impls.numpy import ffn, mha
from impls.numpy.bounds import extreme, rounding
from impls.numpy.carried import Carried


def layer_norm(v: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """§5.3: over the last axis, with the biased variance (divided by d_model)."""
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return (v - mean) / np.sqrt(var + epsilon) * gamma + beta


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§5.4 (post-norm) or §5.5 (pre-norm) in the dtype of the weights; §7: no dropout at inference. With
    `diagnostics`, also §8's error bounds, which the budgets scale by, per element."""
    return _forward(config, weights, inputs, diagnostics)


def biases_added_by_position(config: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                             inputs: Mapping[str, Any], diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """The block whose attention adds its per-head biases along the positions when d_head = 1 and
    T = num_heads > 1, as keras.layers.MultiHeadAttention does on TensorFlow (mha.biases_added_by_position):
    the bound of the ledger's entries for layers built on it."""
    return _forward(config, weights, inputs, diagnostics, bias_by_position=True)


def _forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             diagnostics: dict | None, bias_by_position: bool = False) -> dict[str, np.ndarray]:
    x = inputs["x"]  # (B, T, d_model)
    x_bound = None if diagnostics is None else np.zeros(x.shape)  # the reference's inputs are exact
    y, attn, bounds = block(config, weights, x, x_bound, inputs.get("padding_mask"), diagnostics,
                            bias_by_position=bias_by_position)
    if bounds is not None:
        diagnostics["y_bound"], diagnostics["weights_bound"] = bounds.y, bounds.weights
    return {"y": y, "attention_weights": attn}


class Bounds(NamedTuple):
    """§8: how far a correct implementation's outputs may be from the reference, per element, in units of
    the dtype's eps (before the budget's constant K)."""

    y: np.ndarray  # (B, T, d_model)
    weights: np.ndarray  # (B, H, T, T)


def block(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], x: np.ndarray, x_bound: np.ndarray | None,
          padding: np.ndarray | None, diagnostics: dict | None = None, bias_by_position: bool = False
          ) -> tuple[np.ndarray, np.ndarray, Bounds | None]:
    """One block on `x`: (y, attention weights, their bounds). `x_bound` is how far `x` may already be off, in
    eps (§8; zero for a block on its own, what came before for a block in a stack); None computes no bounds.
    `diagnostics` gets the range rule's extremes over every block it is given for: `least_variance`,
    `largest_row_sum` and `largest_sum_of_squares` of a layer norm's input rows, and `score_scale` and `largest_score`, the
    largest visible score and the largest of any as sums of the terms' sizes."""
    mask = None if padding is None else padding[:, None, :]  # (B, 1, T): padded keys hidden from every query, §6
    w = config, weights
    attention = lambda v, v_bound: attention_bound(*w, v, v_bound, mask, diagnostics, bias_by_position)

    def norm(v, v_bound, i):  # §5.3
        gamma, beta = weights[f"gamma_{i}"], weights[f"beta_{i}"]
        if diagnostics is not None:  # the sums a layer norm computes: of the row, and of its squared deviations
            extreme(diagnostics, "largest_row_sum", float(np.abs(v).sum(axis=-1).max()), max)
        if diagnostics is not None and v.shape[-1] > 1:  # with one feature the variance is 0 whatever the dtype
            var = v.var(axis=-1)
            extreme(diagnostics, "least_variance", float(var.min()), min)
            extreme(diagnostics, "largest_sum_of_squares", float(var.max()) * v.shape[-1], max)
        return layer_norm(v, gamma, beta, config["epsilon"]), norm_bound(v, v_bound, gamma, beta, config["epsilon"])

    if config["norm"] == "post":  # §5.4
        a, attn, a_bound, attn_bound = attention(x, x_bound)
        h, h_bound = norm(*residual(x, x_bound, a, a_bound), 1)
        f, f_bound = ffn.bound(config, weights, h, h_bound)
        y, y_bound = norm(*residual(h, h_bound, f, f_bound), 2)
    else:  # §5.5
        z, z_bound = norm(x, x_bound, 1)
        a, attn, a_bound, attn_bound = attention(z, z_bound)
        h, h_bound = residual(x, x_bound, a, a_bound)
        f, f_bound = ffn.bound(config, weights, *norm(h, h_bound, 2))
        y, y_bound = residual(h, h_bound, f, f_bound)
    return y, attn, None if y_bound is None else Bounds(y_bound, attn_bound)


# --- §8: the error bounds the budgets scale by ----------------------------------------

def residual(u: np.ndarray, u_bound: np.ndarray | None, v: np.ndarray, v_bound: np.ndarray | None
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """§8: u + v and its bound: both errors, and the rounding of the sum."""
    return u + v, None if u_bound is None else u_bound + v_bound + np.abs(u + v)


def norm_bound(v: np.ndarray, v_bound: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
               epsilon: float) -> np.ndarray | None:
    """§8: the bound of LN(v) over the last axis, from its input's bound and its own rounding: the mean,
    the deviations, their mean square, the square root, the division and gamma, beta. The roundings of an
    implementation that folds the mean into a bias (v * inv + (beta - mean * inv), inv = gamma / s) count
    too: three, of numbers of size |v * gamma| / s, which with one feature are all that keeps it from
    beta."""
    if v_bound is None:
        return None
    n, _, n_error, _ = norm_statistics(v, v_bound, epsilon)
    return np.abs(gamma) * n_error + np.abs(n * gamma) + np.abs(n * gamma + beta)


class NormStatistics(NamedTuple):
    """§5.3 and §8: what a layer norm computes of its input rows before gamma and beta, with the bounds in
    eps (None without an input bound)."""

    n: np.ndarray  # (..., d_model): the normalized deviations (v - mean) / s
    s: np.ndarray  # (..., 1): sqrt(var + epsilon)
    n_error: np.ndarray | None  # (..., d_model): e(n), absolute
    s_error: np.ndarray | None  # (..., 1): e(s) / s, relative


def norm_statistics(v: np.ndarray, v_bound: np.ndarray | None, epsilon: float) -> NormStatistics:
    """§8's layer norm over the last axis up to the normalized deviations: each step's value and bound, for
    `norm_bound` and for the backward pass (§11.2)."""
    d_model = v.shape[-1]
    mean = v.mean(axis=-1, keepdims=True)
    deviation = v - mean  # (B, T, d_model)
    var = (deviation**2).mean(axis=-1, keepdims=True)  # (B, T, 1)
    s = np.sqrt(var + epsilon)
    n = deviation / s
    if v_bound is None:
        return NormStatistics(n, s, None, None)
    mean_error = rounding(d_model) * np.abs(v).mean(axis=-1, keepdims=True)
    deviation_error = ((1 - 2 / d_model) * v_bound + v_bound.mean(axis=-1, keepdims=True) + mean_error
                       + np.abs(deviation))
    var_error = 2 * (np.abs(deviation) * deviation_error).mean(axis=-1, keepdims=True) + (rounding(d_model) + 1) * var
    s_error = 0.5 * var_error / (var + epsilon) + 2  # relative: half the variance's, the sum with epsilon, the root
    folded = (np.abs(v) + 2 * np.abs(v).mean(axis=-1, keepdims=True)) / s  # v * inv, mean * inv, beta - mean * inv
    n_error = deviation_error / s + np.abs(n) * (s_error + 1) + folded
    return NormStatistics(n, s, n_error, s_error)


def attention_bound(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], v: np.ndarray,
                    v_bound: np.ndarray | None, mask: np.ndarray | None, diagnostics: dict | None = None,
                    bias_by_position: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """§5.1 and §8: self-attention on v, and the bounds of its output and weights by spec/mha.md §9
    (`bias_by_position`: as mha.biases_added_by_position)."""
    inputs = {"query": v, "key": v, "value": v, "attention_mask": mask}
    if v_bound is None:
        out = (mha.biases_added_by_position if bias_by_position else mha.forward)(config, weights, inputs)
        return out["output"], out["attention_weights"], None, None
    return mha.attention_bound(config, weights, inputs, {"query": v_bound, "key": v_bound, "value": v_bound},
                               {} if diagnostics is None else diagnostics, bias_by_position=bias_by_position)


# --- §11: gradients -------------------------------------------------------------------------------------

#: §3: the weights, in the order of the spec's table.
WEIGHTS = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o", "W_1", "b_1", "W_2", "b_2",
           "gamma_1", "beta_1", "gamma_2", "beta_2")


def backward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             cotangents: Mapping[str, np.ndarray], eps: float | None = None) -> dict[str, Carried]:
    """§11: the gradients of <cotangents["y"], y> + <cotangents["attention_weights"], attention_weights> with
    respect to x and every weight, each with its bound in eps when `eps` (the dtype under test's) is given,
    by §11.2's rules."""
    bounds = eps  # the dtype's eps: bounds, with the products of two errors; None: none
    w = {name: Carried.exact(weights[name], bounds) for name in WEIGHTS}
    padding = inputs.get("padding_mask")
    d_weights = cotangents.get("attention_weights")
    return pullback(config, w, Carried.exact(inputs["x"], bounds),
                    None if padding is None else np.asarray(padding, dtype=bool),
                    Carried.exact(cotangents["y"], bounds),
                    None if d_weights is None else Carried.exact(d_weights, bounds), eps)


def pullback(config: Mapping[str, Any], weights: Mapping[str, Carried], x: Carried, padding: np.ndarray | None,
             d_y: Carried, d_weights: Carried | None, eps: float | None) -> dict[str, Carried]:
    """§11.1 on x and the cotangents of y (`d_y`) and of the attention weights (`d_weights`, None for none),
    each carrying its bound (a block in a stack gets inner values that do): the gradients with respect to x
    ("x") and the 16 weights, by name. The forward values are recomputed with §8's bounds, by the forward's
    own functions (which take the weights as exact)."""
    mask = None if padding is None else padding[:, None, :]  # (B, 1, T), as the forward's §6
    w = {name: weights[name].value for name in WEIGHTS}
    epsilon = config["epsilon"]

    def attend(v: Carried) -> Carried:  # §5.1, and §8's bound of its output
        a, _, a_bound, _ = attention_bound(config, w, v.value, v.bound, mask)
        return Carried(a, a_bound)

    def add(u: Carried, v: Carried) -> Carried:  # a residual sum, with §8's bound
        return Carried(*residual(u.value, u.bound, v.value, v.bound))

    def norm(v: Carried, i: int) -> Carried:  # §5.3, with §8's bound
        gamma, beta = w[f"gamma_{i}"], w[f"beta_{i}"]
        return Carried(layer_norm(v.value, gamma, beta, epsilon), norm_bound(v.value, v.bound, gamma, beta, epsilon))

    def attention_back(v: Carried, d_out: Carried) -> Carried:  # §5.1 backwards: v is query, key and value
        grads.update(mha.pullback(config, weights, v, v, v, mask, d_out, d_weights, eps))
        return grads.pop("query") + grads.pop("key") + grads.pop("value")

    def ffn_back(v: Carried, d_out: Carried) -> Carried:  # §5.2 backwards
        grads.update(ffn.pullback(config, weights, v, d_out, eps))
        return grads.pop("x")

    def norm_back(v: Carried, d_out: Carried, i: int) -> Carried:  # §5.3 backwards
        dv, grads[f"gamma_{i}"], grads[f"beta_{i}"] = norm_pullback(v, weights[f"gamma_{i}"], d_out, epsilon)
        return dv

    grads: dict[str, Carried] = {}
    if config["norm"] == "post":  # §5.4 again, then backwards: y = LN_2(u_2), u_2 = h + FFN(h), ...
        u_1 = add(x, attend(x))  # (B, T, d_model)
        h = norm(u_1, 1)
        u_2 = add(h, Carried(*ffn.bound(config, w, h.value, h.bound)))
        d_u2 = norm_back(u_2, d_y, 2)
        d_u1 = norm_back(u_1, d_u2 + ffn_back(h, d_u2), 1)  # h's two uses: the residual and the FFN
        d_x = d_u1 + attention_back(x, d_u1)  # x's four: the residual, and query, key and value
    else:  # §5.5 again, then backwards: y = h + FFN(LN_2(h)), h = x + MHA(LN_1(x))
        z = norm(x, 1)  # (B, T, d_model)
        h = add(x, attend(z))
        d_h = d_y + norm_back(h, ffn_back(norm(h, 2), d_y), 2)
        d_x = d_h + norm_back(x, attention_back(z, d_h), 1)
    return {"x": d_x, **grads}


def norm_pullback(v: Carried, gamma: Carried, d_out: Carried, epsilon: float
                  ) -> tuple[Carried, Carried, Carried]:
    """§11.1, §5.3 backwards over the last axis of v, given the cotangent `d_out` of LN(v): (dv, dgamma,
    dbeta), the weights' summed over every position. n and s carry §8's bounds (`norm_statistics`), 1 / s
    one rounding more (§11.2)."""
    stats = norm_statistics(v.value, v.bound, epsilon)
    n = Carried(stats.n, stats.n_error)  # (B, T, d_model)
    inv_s = Carried(1 / stats.s, None if stats.s_error is None else (stats.s_error + 1) / stats.s)  # (B, T, 1)
    mean = lambda c: c.sum(axis=-1, keepdims=True).scaled(1 / v.shape[-1])  # over the features: (B, T, 1)
    g = d_out * gamma  # (B, T, d_model)
    dv = (g - mean(g) - n * mean(g * n)) * inv_s  # the mean's dependence on v, and the variance's
    positions = tuple(range(v.value.ndim - 1))
    return dv, (d_out * n).sum(axis=positions), d_out.sum(axis=positions)


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "encoder_block"
    forward = staticmethod(forward)
    backward = staticmethod(backward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def padded_position(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """§6: positions whose `padding_mask` is False; their rows of `y`, and their rows and columns (as query and
    as key) of every head's attention weights."""
    mask = inputs.get("padding_mask")
    padded = np.zeros((example["B"], example["T"]), dtype=bool) if mask is None else ~np.asarray(mask, dtype=bool)
    return {"y": padded[:, :, None], "attention_weights": padded[:, None, :, None] | padded[:, None, None, :]}


def per_head_bias_meets_positions(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§5.1: d_head = 1 and T = num_heads > 1, where the attention's per-head bias of shape (num_heads, 1) and
    the positions of a projection have the same length (mha's condition of that name)."""
    H = example["num_heads"]
    return example["d_head"] == 1 and H > 1 and example["T"] == H


def single_feature(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§5.3: one feature, d_model = 1: a layer norm's input equals its mean, and LN(v) = beta exactly."""
    return example["d_model"] == 1


# --- properties (the spec's `property` table, §10), as in impls/numpy/mha.py -------------------------------

def padding_invariance(draw: Any) -> tuple | None:
    """§10.2: the features at padded positions replaced; the rows of `y` and of each head's weights at the
    real positions stay as they were."""
    mask = draw.inputs.get("padding_mask")
    if mask is None or mask.all():
        return None
    real = np.asarray(mask, dtype=bool)  # (B, T)
    inputs = {**draw.inputs, "x": draw.replaced("x", ~real[:, :, None])}
    compared = {"y": real[:, :, None], "attention_weights": real[:, None, :, None]}
    return inputs, lambda name, array: array, compared, f"the features at {int((~real).sum())} padded positions replaced"
