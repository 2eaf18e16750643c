"""Multi-head attention in NumPy, written from spec/mha.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one rather than aiming for
speed. Section numbers refer to spec/mha.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation


def broadcast_mask(mask: np.ndarray | None, B: int, Lq: int, Lk: int) -> np.ndarray:
    """§7.2: a (B, Lq, Lk), (B, 1, Lk) or (Lq, Lk) boolean mask as (B, Lq, Lk); None is all-true."""
    if mask is None:
        return np.ones((B, Lq, Lk), dtype=bool)
    return np.broadcast_to(np.asarray(mask, dtype=bool), (B, Lq, Lk))


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """§6.4 and §7.4: softmax over the last axis where mask is true; rows with no true entry give zeros."""
    any_visible = mask.any(axis=-1, keepdims=True)
    shifted = np.where(mask, scores, -np.inf)
    row_max = np.where(any_visible, shifted.max(axis=-1, keepdims=True), 0.0)
    e = np.where(mask, np.exp(np.where(mask, scores - row_max, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    return e / np.where(any_visible, total, 1.0)


def finite_fill_softmax(fill: float):
    """Masked scores replaced by a finite `fill` before the softmax and the masked weights zeroed after it:
    against §6.4 and §7.1 once every visible score of a row is below the fill, when the row's weight goes to
    its masked keys and is zeroed there, so the row sums to about 0 instead of 1."""
    def softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
        s = np.where(mask, scores, fill)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return np.where(mask, e / e.sum(axis=-1, keepdims=True), 0.0)
    return softmax


def masked_by_a_fill_of_1e9(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
                            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """What a layer gives whose softmax replaces masked scores by -1e9 and zeroes the masked weights after it
    (keras.layers.Softmax with a mask, which keras.layers.MultiHeadAttention uses): the bound of the ledger's
    entries for it."""
    return _attend(config, weights, inputs, diagnostics, finite_fill_softmax(-1e9))


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§6: the whole computation in the dtype of the weights."""
    return _attend(config, weights, inputs, diagnostics, masked_softmax)


def _attend(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None, softmax) -> dict[str, np.ndarray]:
    H, d_head = config["num_heads"], config["d_head"]
    query, key, value = inputs["query"], inputs["key"], inputs["value"]
    B, Lq, _ = query.shape
    Lk = key.shape[1]
    dtype = weights["W_q"].dtype

    # §6.1 projections, §6.2 head split: (B, L, H*d_head) -> (B, H, L, d_head)
    def project(x, W, b, L):
        return (x @ W + b).reshape(B, L, H, d_head).transpose(0, 2, 1, 3)

    q = project(query, weights["W_q"], weights["b_q"], Lq)  # (B, H, Lq, d_head)
    k = project(key, weights["W_k"], weights["b_k"], Lk)  # (B, H, Lk, d_head)
    v = project(value, weights["W_v"], weights["b_v"], Lk)  # (B, H, Lk, d_head)

    # §6.3 scores, scaled by the per-head width
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dtype.type(d_head))  # (B, H, Lq, Lk)
    mask = broadcast_mask(inputs.get("attention_mask"), B, Lq, Lk)[:, None]  # (B, 1, Lq, Lk)
    weights_ = softmax(scores, mask).astype(dtype)  # (B, H, Lq, Lk)

    # §6.5 context and head merge: (B, H, Lq, d_head) -> (B, Lq, H*d_head)
    context = (weights_ @ v).transpose(0, 2, 1, 3).reshape(B, Lq, H * d_head)
    # §6.6 output projection
    output = context @ weights["W_o"] + weights["b_o"]  # (B, Lq, d_model)

    if diagnostics is not None:  # the magnitudes spec/mha.md §9 scales and grows budgets by
        # each step evaluated with |.| on every input, weight and bias: the size of the terms summed
        q_abs = project(np.abs(query), np.abs(weights["W_q"]), np.abs(weights["b_q"]), Lq)
        k_abs = project(np.abs(key), np.abs(weights["W_k"]), np.abs(weights["b_k"]), Lk)
        v_abs = project(np.abs(value), np.abs(weights["W_v"]), np.abs(weights["b_v"]), Lk)
        s_abs = q_abs @ k_abs.transpose(0, 1, 3, 2) / np.sqrt(d_head)  # (B, H, Lq, Lk)
        visible = np.broadcast_to(mask, scores.shape)
        diagnostics["score_scale"] = float(s_abs[visible].max()) if visible.any() else 0.0
        diagnostics["largest_score"] = float(s_abs.max())  # masked ones too: an implementation computes every score
        c_abs = (weights_ @ v_abs).transpose(0, 2, 1, 3).reshape(B, Lq, H * d_head)
        diagnostics["output_scale"] = float((c_abs @ np.abs(weights["W_o"]) + np.abs(weights["b_o"])).max())
        diagnostics["visible"] = visible.astype(np.float64)  # §9: 1 where a key is visible, 0 where masked
    return {"output": output, "attention_weights": weights_}


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "mha"
    forward = staticmethod(forward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def fully_masked_query_row(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """§7.4: query rows whose every key is masked; their rows of `output` and of every head's weights."""
    mask = inputs.get("attention_mask")
    B, Lq, Lk = example["B"], example["Lq"], example["Lk"]
    rows = ~broadcast_mask(mask, B, Lq, Lk).any(axis=-1)  # (B, Lq)
    return {"output": rows[:, :, None], "attention_weights": rows[:, None, :, None]}


def score_scale_inexact_in_float32(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§6.3: the score scale 1 / sqrt(d_head) is not a float32 number (d_head is not a power of 4)."""
    scale = 1.0 / np.sqrt(example["d_head"])
    return bool(np.float32(scale) != scale)
