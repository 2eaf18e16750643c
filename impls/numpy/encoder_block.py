"""Transformer encoder block in NumPy, written from spec/encoder_block.md.

Run in float64 this is the reference every other implementation is compared
with. The attention and the feed-forward network are the references of the
`mha` and `ffn` components, called as they are; this file adds the layer
norms and the residual connections. Section numbers refer to
spec/encoder_block.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation

from impls.numpy import ffn, mha


def layer_norm(v: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float) -> np.ndarray:
    """§5.3: over the last axis, with the biased variance (divided by d_model)."""
    mean = v.mean(axis=-1, keepdims=True)
    var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return (v - mean) / np.sqrt(var + epsilon) * gamma + beta


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§5.4 (post-norm) or §5.5 (pre-norm) in the dtype of the weights; §7: no dropout at inference."""
    x = inputs["x"]  # (B, T, d_model)
    y, attn, y_mag, score_scale = block(config, weights, x, np.abs(x), inputs.get("padding_mask"), diagnostics)
    if diagnostics is not None:
        diagnostics["score_scale"], diagnostics["y_scale"] = score_scale, float(y_mag.max())
        padding = inputs.get("padding_mask")  # §8: 1 where a query may see a key, 0 where §6 hides it
        diagnostics["visible"] = (np.ones(attn.shape) if padding is None else
                                  np.broadcast_to(np.asarray(padding, dtype=np.float64)[:, None, None, :], attn.shape))
    return {"y": y, "attention_weights": attn}


def block(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], x: np.ndarray, x_mag: np.ndarray,
          padding: np.ndarray | None, diagnostics: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One block from an input `x` of magnitude `x_mag` (§8; |x| for a block on its own, what came before
    for a block in a stack): (y, attention weights, the magnitude of y, score_scale). `diagnostics` gets
    `least_variance`, the smallest variance of a layer norm's input row (§8: below a dtype's smallest normal
    number the example is outside its range), the least over every block it is given for."""
    mask = None if padding is None else padding[:, None, :]  # (B, 1, T): padded keys hidden from every query, §6
    eps, w = config["epsilon"], weights

    def attention(v, v_mag):  # §5.1: query = key = value = v
        out = mha.forward(config, w, {"query": v, "key": v, "value": v, "attention_mask": mask})
        a, attn = out["output"], out["attention_weights"]  # (B, T, d_model), (B, H, T, T)
        return a, attn, *_attention_magnitude(config, w, v_mag, mask, attn, diagnostics)

    def feed_forward(v, v_mag):  # §5.2
        return ffn.forward(config, w, {"x": v})["y"], ffn.magnitude(w, v_mag)  # (B, T, d_model)

    def norm(v, v_mag, i):  # §5.3
        gamma, beta = w[f"gamma_{i}"], w[f"beta_{i}"]
        if diagnostics is not None and v.shape[-1] > 1:  # with one feature the variance is 0 whatever the dtype
            least = float(v.var(axis=-1).min())
            diagnostics["least_variance"] = min(diagnostics.get("least_variance", least), least)
        return layer_norm(v, gamma, beta, eps), _norm_magnitude(v, v_mag, gamma, beta, eps)

    if config["norm"] == "post":  # §5.4
        a, attn, a_mag, score_scale = attention(x, x_mag)
        h, h_mag = norm(x + a, x_mag + a_mag, 1)
        f, f_mag = feed_forward(h, h_mag)
        y, y_mag = norm(h + f, h_mag + f_mag, 2)
    else:  # §5.5
        z1, z1_mag = norm(x, x_mag, 1)
        a, attn, a_mag, score_scale = attention(z1, z1_mag)
        h, h_mag = x + a, x_mag + a_mag
        f, f_mag = feed_forward(*norm(h, h_mag, 2))
        y, y_mag = h + f, h_mag + f_mag
    return y, attn, y_mag, score_scale


# --- §8: the magnitudes the budgets scale by ----------------------------------------

def _norm_magnitude(v, v_mag, gamma, beta, epsilon):
    """§8: |gamma| * ((1 - 2/d_model) v_mag + mean(v_mag) + |n| mean(|n| v_mag)) / s + |beta|, per position.

    s = sqrt(var(v) + epsilon) and n = (v - mean(v)) / s are the reference's own.
    """
    d_model = v.shape[-1]
    mean = v.mean(axis=-1, keepdims=True)
    s = np.sqrt(((v - mean) ** 2).mean(axis=-1, keepdims=True) + epsilon)  # (B, T, 1)
    n = np.abs(v - mean) / s  # (B, T, d_model)
    deviation = (1 - 2 / d_model) * v_mag + v_mag.mean(axis=-1, keepdims=True)  # v - mean on magnitudes
    return np.abs(gamma) * (deviation + n * (n * v_mag).mean(axis=-1, keepdims=True)) / s + np.abs(beta)


def _attention_magnitude(config, w, v_mag, mask, attn, record=None):
    """spec/mha.md §9 elementwise, from input magnitudes v_mag: (output magnitude, score_scale).

    Every batch element's key 0 is visible, so the set of visible scores is never empty.
    """
    B, T, _ = v_mag.shape
    H, d = config["num_heads"], config["d_head"]

    def project(W, b):  # (B, T, H*d) -> (B, H, T, d)
        return (v_mag @ np.abs(w[W]) + np.abs(w[b])).reshape(B, T, H, d).transpose(0, 2, 1, 3)

    q, k, v = project("W_q", "b_q"), project("W_k", "b_k"), project("W_v", "b_v")
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # (B, H, T, T)
    visible = np.broadcast_to(mha.broadcast_mask(mask, B, T, T)[:, None], scores.shape)
    context = (attn @ v).transpose(0, 2, 1, 3).reshape(B, T, H * d)  # (B, T, H*d)
    if record is not None:  # masked ones too: an implementation computes every score (spec/README.md, range)
        record["largest_score"] = max(record.get("largest_score", 0.0), float(scores.max()))
    return context @ np.abs(w["W_o"]) + np.abs(w["b_o"]), float(scores[visible].max())


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
