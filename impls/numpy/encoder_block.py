"""Transformer encoder block in NumPy, written from spec/encoder_block.md.

Run in float64 this is the reference every other implementation is compared
with. The attention and the feed-forward network are the references of the
`mha` and `ffn` components, called as they are; this file adds the layer
norms and the residual connections, and §8's error bounds, which it carries
beside the values when the harness asks for diagnostics (text_classifier
composes them too). Section numbers refer to spec/encoder_block.md.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from impls.numpy import NumpyImplementation

from impls.numpy import ffn, mha
from impls.numpy.bounds import extreme, rounding


def layer_norm(v: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """§5.3: over the last axis, with the biased variance (divided by d_model)."""
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return (v - mean) / np.sqrt(var + epsilon) * gamma + beta


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§5.4 (post-norm) or §5.5 (pre-norm) in the dtype of the weights; §7: no dropout at inference. With
    `diagnostics`, also §8's error bounds, which the budgets scale by, per element."""
    x = inputs["x"]  # (B, T, d_model)
    x_bound = None if diagnostics is None else np.zeros(x.shape)  # the reference's inputs are exact
    y, attn, bounds = block(config, weights, x, x_bound, inputs.get("padding_mask"), diagnostics)
    if bounds is not None:
        diagnostics["y_bound"], diagnostics["weights_bound"] = bounds.y, bounds.weights
    return {"y": y, "attention_weights": attn}


class Bounds(NamedTuple):
    """§8: how far a correct implementation's outputs may be from the reference, per element, in units of
    the dtype's eps (before the budget's constant K)."""

    y: np.ndarray  # (B, T, d_model)
    weights: np.ndarray  # (B, H, T, T)


def block(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], x: np.ndarray, x_bound: np.ndarray | None,
          padding: np.ndarray | None, diagnostics: dict | None = None
          ) -> tuple[np.ndarray, np.ndarray, Bounds | None]:
    """One block on `x`: (y, attention weights, their bounds). `x_bound` is how far `x` may already be off, in
    eps (§8; zero for a block on its own, what came before for a block in a stack); None computes no bounds.
    `diagnostics` gets the range rule's extremes over every block it is given for: `least_variance`,
    `largest_row_sum` and `largest_sum_of_squares` of a layer norm's input rows, and `score_scale` and `largest_score`, the
    largest visible score and the largest of any as sums of the terms' sizes."""
    mask = None if padding is None else padding[:, None, :]  # (B, 1, T): padded keys hidden from every query, §6
    w = config, weights

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
        a, attn, a_bound, attn_bound = attention_bound(*w, x, x_bound, mask, diagnostics)
        h, h_bound = norm(*residual(x, x_bound, a, a_bound), 1)
        f, f_bound = ffn.bound(config, weights, h, h_bound)
        y, y_bound = norm(*residual(h, h_bound, f, f_bound), 2)
    else:  # §5.5
        z, z_bound = norm(x, x_bound, 1)
        a, attn, a_bound, attn_bound = attention_bound(*w, z, z_bound, mask, diagnostics)
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
    d_model = v.shape[-1]
    mean = v.mean(axis=-1, keepdims=True)
    deviation = v - mean  # (B, T, d_model)
    var = (deviation**2).mean(axis=-1, keepdims=True)  # (B, T, 1)
    s = np.sqrt(var + epsilon)
    n = deviation / s
    mean_error = rounding(d_model) * np.abs(v).mean(axis=-1, keepdims=True)
    deviation_error = ((1 - 2 / d_model) * v_bound + v_bound.mean(axis=-1, keepdims=True) + mean_error
                       + np.abs(deviation))
    var_error = 2 * (np.abs(deviation) * deviation_error).mean(axis=-1, keepdims=True) + (rounding(d_model) + 1) * var
    s_error = 0.5 * var_error / (var + epsilon) + 2  # relative: half the variance's, the sum with epsilon, the root
    folded = (np.abs(v) + 2 * np.abs(v).mean(axis=-1, keepdims=True)) / s  # v * inv, mean * inv, beta - mean * inv
    n_error = deviation_error / s + np.abs(n) * (s_error + 1) + folded
    return np.abs(gamma) * n_error + np.abs(n * gamma) + np.abs(n * gamma + beta)


def attention_bound(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], v: np.ndarray,
                    v_bound: np.ndarray | None, mask: np.ndarray | None, diagnostics: dict | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """§5.1 and §8: self-attention on v, and the bounds of its output and weights by spec/mha.md §9."""
    inputs = {"query": v, "key": v, "value": v, "attention_mask": mask}
    if v_bound is None:
        out = mha.forward(config, weights, inputs)
        return out["output"], out["attention_weights"], None, None
    return mha.attention_bound(config, weights, inputs, {"query": v_bound, "key": v_bound, "value": v_bound},
                               {} if diagnostics is None else diagnostics)


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "encoder_block"
    forward = staticmethod(forward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def padded_position(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """§6: positions whose `padding_mask` is False; their rows of `y`, and their rows and columns (as query and
    as key) of every head's attention weights."""
    mask = inputs.get("padding_mask")
    padded = np.zeros((example["B"], example["T"]), dtype=bool) if mask is None else ~np.asarray(mask, dtype=bool)
    return {"y": padded[:, :, None], "attention_weights": padded[:, None, :, None] | padded[:, None, None, :]}


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
