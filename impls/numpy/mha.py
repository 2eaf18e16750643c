"""Multi-head attention in NumPy, written from spec/mha.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one rather than aiming for
speed. Section numbers refer to spec/mha.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation
from impls.numpy.bounds import extreme, linear_bound, rounding
from impls.numpy.carried import Carried


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


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§6: the whole computation in the dtype of the weights. With `diagnostics`, also §9's error bounds,
    which the budgets scale by, per element."""
    return _bounded(config, weights, inputs, diagnostics, masked_softmax)


def masked_by_a_fill_of_1e9(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
                            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """What a layer gives whose softmax replaces masked scores by -1e9 and zeroes the masked weights after it
    (keras.layers.Softmax with a mask, which keras.layers.MultiHeadAttention uses): the bound of the ledger's
    entries for it."""
    return _bounded(config, weights, inputs, diagnostics, finite_fill_softmax(-1e9))


def biases_added_by_position(config: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                             inputs: Mapping[str, Any], diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """What keras.layers.MultiHeadAttention gives on TensorFlow, where keras.ops.add takes a (num_heads, 1) bias
    for a vector and adds it with tf.nn.bias_add along axis 1 of the (B, L, num_heads, 1) projection, the
    positions, whenever d_head = 1 and L = num_heads > 1: position l of the query, key or value gets head l's
    bias in every head. The bound of the ledger's entries for it; its error bounds are the spec's."""
    return _bounded(config, weights, inputs, diagnostics, masked_softmax, bias_by_position=True)


def _bounded(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             diagnostics: dict | None, softmax, bias_by_position: bool = False) -> dict[str, np.ndarray]:
    """The outputs, and with `diagnostics` their bounds (`output_bound`, `weights_bound`) for exact inputs."""
    if diagnostics is None:
        return _attend(config, weights, inputs, softmax, bias_by_position)
    exact = {name: np.zeros(inputs[name].shape) for name in ("query", "key", "value")}  # the reference's inputs
    output, p, diagnostics["output_bound"], diagnostics["weights_bound"] = attention_bound(
        config, weights, inputs, exact, diagnostics, softmax, bias_by_position)
    return {"output": output, "attention_weights": p}


def _attend(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            softmax, bias_by_position: bool = False) -> dict[str, np.ndarray]:
    H, d_head = config["num_heads"], config["d_head"]
    query, key, value = inputs["query"], inputs["key"], inputs["value"]
    B, Lq, _ = query.shape
    Lk = key.shape[1]
    dtype = weights["W_q"].dtype

    # §6.1 projections, §6.2 head split: (B, L, H*d_head) -> (B, H, L, d_head)
    def project(x, W, b, L):
        if bias_by_position and d_head == 1 and L == H > 1:  # see biases_added_by_position
            return ((x @ W).reshape(B, L, H, 1) + b.reshape(1, L, 1, 1)).transpose(0, 2, 1, 3)
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
    return {"output": output, "attention_weights": weights_}


# --- §9: the error bounds the budgets scale by ----------------------------------------

def attention_bound(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
                    input_bounds: Mapping[str, np.ndarray], diagnostics: dict, softmax=masked_softmax,
                    bias_by_position: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """§6 on `inputs` as the reference computes it, and §9's bounds: (output, attention weights, the output's
    bound, the weights' bound). `input_bounds` says how far query, key and value may already be off, in eps
    (zero for the component on its own; what came before inside a block). The bounds are `attention_terms`'
    and the output projection's. `diagnostics` gets `score_scale` and `largest_score`, the largest visible
    score and the largest of any as sums of the terms' sizes, and `largest_output_term`, the largest size of
    the terms an output sums (for the range rule)."""
    H, d = config["num_heads"], config["d_head"]
    B, Lq, _ = inputs["query"].shape
    out = _attend(config, weights, inputs, softmax, bias_by_position)
    p = out["attention_weights"]  # (B, H, Lq, Lk), 0 at every hidden key and in every fully masked row
    t = attention_terms(config, weights, inputs, input_bounds, p)
    terms, visible, v = t["terms"], t["visible"], t["v"]
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, Lq, H * d)  # (B, H, Lq, d) -> (B, Lq, H*d)
    _, output_bound = linear_bound(merge(t["context"]), merge(t["context_bound"]), weights["W_o"], weights["b_o"])
    # masked scores too in largest_score: an implementation computes every score
    extreme(diagnostics, "score_scale", float(terms[visible].max()) if visible.any() else 0.0, max)
    extreme(diagnostics, "largest_score", float(terms.max()), max)
    output_terms = merge(p @ np.abs(v)) @ np.abs(weights["W_o"]) + np.abs(weights["b_o"])
    extreme(diagnostics, "largest_output_term", float(output_terms.max()), max)
    return out["output"], p, output_bound, t["row_bound"]


def attention_terms(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
                    input_bounds: Mapping[str, np.ndarray] | None, p: np.ndarray | None = None,
                    weight_bounds: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray | None]:
    """The values of §6.1 to §6.5 and their §9 bounds, by name: `q`, `k`, `v` split by head (B, H, L, d_head),
    `scores`, `terms` (the sizes of the scores' terms) and `visible` (the mask, broadcast), `p` (the weights:
    as given, else §6.4 of the scores), `context` (B, H, Lq, d_head), and `<name>_bound` beside each value
    (None where `input_bounds` is None). The bounds are each projection's (the input's error, the weights'
    own in `weight_bounds` if any, and the rounding), the scores' (the error of q and k carried by the other's
    size, and the rounding of the dot product and the scaling), the weights' (relative: the score's error and
    the rounding of exp at its distance from the row's largest visible score, those of the row as the sum
    carries them, and the sum's rounding; `row_bound` holds every visible weight to its row's largest, 0 where
    a key is hidden) and the context's."""
    H, d = config["num_heads"], config["d_head"]
    B, Lq, _ = inputs["query"].shape
    Lk = inputs["key"].shape[1]
    bounds = input_bounds is not None

    def project(name, W):  # (B, L, H*d) -> (B, H, L, d): value and bound
        x, W_, b = inputs[name], weights[f"W_{W}"], weights[f"b_{W}"]
        value, bound = linear_bound(x, input_bounds[name] if bounds else None, W_, b)
        if bounds and weight_bounds is not None:  # the weights' own errors, if they carry any, in quadrature
            eW, eb = weight_bounds[f"W_{W}"], weight_bounds[f"b_{W}"]
            if np.any(eW) or np.any(eb):
                bound = (np.sqrt(input_bounds[name]**2 @ W_**2 + x**2 @ eW**2 + eb**2)
                         + rounding(x.shape[-1] + 1) * (np.abs(x) @ np.abs(W_) + np.abs(b)))
        return [None if a is None else a.reshape(B, -1, H, d).transpose(0, 2, 1, 3) for a in (value, bound)]

    (q, q_bound), (k, k_bound), (v, v_bound) = project("query", "q"), project("key", "k"), project("value", "v")
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)  # (B, H, Lq, Lk)
    terms = np.abs(q) @ np.abs(k).transpose(0, 1, 3, 2) / math.sqrt(d)  # (B, H, Lq, Lk)
    visible = np.broadcast_to(broadcast_mask(inputs.get("attention_mask"), B, Lq, Lk)[:, None], scores.shape)
    if p is None:
        p = masked_softmax(scores, visible)  # (B, H, Lq, Lk), 0 at every hidden key and in every fully masked row
    context = p @ v  # (B, H, Lq, d)
    t = {"q": q, "k": k, "v": v, "scores": scores, "terms": terms, "visible": visible, "p": p, "context": context,
         "q_bound": q_bound, "k_bound": k_bound, "v_bound": v_bound, "scores_bound": None, "p_bound": None,
         "row_bound": None, "context_bound": None}
    if not bounds:
        return t
    s_bound = (np.sqrt(q_bound**2 @ (k**2).transpose(0, 1, 3, 2) + q**2 @ (k_bound**2).transpose(0, 1, 3, 2))
               / math.sqrt(d) + (rounding(d) + 1) * terms)
    top = np.where(visible, scores, -np.inf).max(axis=-1, keepdims=True)  # (B, H, Lq, 1)
    top = np.where(np.isfinite(top), top, 0.0)  # a fully masked row has no visible score, and weights 0
    relative = np.where(visible, s_bound + np.abs(scores - top) + 2, 0.0)  # (B, H, Lq, Lk)
    p_bound = p * (relative + (p * relative).sum(axis=-1, keepdims=True) + rounding(Lk) + 1)  # (B, H, Lq, Lk)
    # each visible weight is held to its row's largest bound: first order no longer holds where a weight has
    # underflowed in the reference and the row's scores are off by as much as their gaps
    row_bound = np.where(visible, p_bound.max(axis=-1, keepdims=True), 0.0)
    context_bound = p_bound @ np.abs(v) + p @ v_bound + rounding(Lk) * (p @ np.abs(v))
    t.update(scores_bound=s_bound, p_bound=p_bound, row_bound=row_bound, context_bound=context_bound)
    return t


# --- §12: gradients -------------------------------------------------------------------------------------

#: §3: the weights, in the order of the spec's table.
WEIGHTS = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o")


def backward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             cotangents: Mapping[str, np.ndarray], eps: float | None = None) -> dict[str, Carried]:
    """§12: the gradients of <cotangents, outputs> (of `output` and `attention_weights`; one left out counts
    as zero) with respect to query, key, value and every weight, each with its bound in eps when `eps` (the
    dtype under test's) is given, by §12.2's rules."""
    bounds = eps  # the dtype's eps: bounds, with the products of two errors; None: none
    exact = lambda a: Carried.exact(a, bounds)
    query, key, value = (exact(inputs[name]) for name in ("query", "key", "value"))
    d_output = cotangents.get("output")
    d_weights = cotangents.get("attention_weights")
    return pullback(config, {name: exact(weights[name]) for name in WEIGHTS}, query, key, value,
                    inputs.get("attention_mask"), exact(np.zeros(query.shape) if d_output is None else d_output),
                    None if d_weights is None else exact(d_weights), eps)


def pullback(config: Mapping[str, Any], weights: Mapping[str, Carried], query: Carried, key: Carried,
             value: Carried, mask: np.ndarray | None, d_output: Carried, d_weights: Carried | None,
             eps: float | None) -> dict[str, Carried]:
    """§12.1 on query, key and value and the cotangents of `output` (d_output, (B, Lq, d_model)) and of
    `attention_weights` (d_weights, (B, H, Lq, Lk), None for none), each carrying its bound (a block's inner
    values do): the gradients with respect to "query", "key", "value" and the weights, by name. `mask` is
    the attention mask as the forward takes it (§7.2). The bounds follow the inputs'; `eps` changes nothing
    here, as attention has no kink (§12.1)."""
    H, d = config["num_heads"], config["d_head"]
    B = query.shape[0]
    bounds = query.bounds
    # §6.1 to §6.5 again, with §9's bounds of the values the gradients need; the weights' bound is §9's row bound
    t = attention_terms(
        config, {n: weights[n].value for n in WEIGHTS},
        {"query": query.value, "key": key.value, "value": value.value, "attention_mask": mask},
        {"query": query.bound, "key": key.bound, "value": value.bound} if bounds else None,
        weight_bounds={n: weights[n].bound for n in WEIGHTS} if bounds else None)
    q, k, v = (Carried(t[n], t[f"{n}_bound"]) for n in ("q", "k", "v"))  # (B, H, L, d_head)
    p = Carried(t["p"], t["row_bound"])  # (B, H, Lq, Lk), exactly 0 at hidden keys and in fully masked rows
    context = Carried(t["context"], t["context_bound"])  # (B, H, Lq, d_head)
    heads = lambda a: a.reshape(B, -1, H, d).transpose(0, 2, 1, 3)  # (B, L, H*d) -> (B, H, L, d)
    merge = lambda a: a.transpose(0, 2, 1, 3).reshape(B, -1, H * d)  # (B, H, L, d) -> (B, L, H*d)
    rows = lambda a: a.reshape(-1, a.shape[-1])  # the positions as one axis: weight gradients sum over them

    # §6.6 backwards: output = C @ W_o + b_o
    grads = {"W_o": rows(merge(context)).mT @ rows(d_output), "b_o": d_output.sum(axis=(0, 1))}
    dC = heads(d_output @ weights["W_o"].mT)  # (B, H, Lq, d_head), §6.5's head merge undone
    # §6.5 backwards: C_h = A_h @ V_h
    dV = p.mT @ dC  # (B, H, Lk, d_head)
    dP = dC @ v.mT  # (B, H, Lq, Lk)
    if d_weights is not None:  # A_h is an output too
        dP = dP + d_weights
    # §6.4 backwards: dS = A (dP - sum_k A dP) over the row's keys; A = 0 at a hidden key and in a fully
    # masked row (§7.4), so their dS is exactly 0
    row = (p * dP).sum(axis=-1, keepdims=True)  # (B, H, Lq, 1)
    if bounds:  # the same sum as dC . C_h plus sum_k A d_weights (FlashAttention's order): held to either bound
        other = (dC * context).sum(axis=-1, keepdims=True)
        if d_weights is not None:
            other = other + (p * d_weights).sum(axis=-1, keepdims=True)
        row = Carried(row.value, np.maximum(row.bound, other.bound))
    dS = p * (dP - row)  # (B, H, Lq, Lk)
    # §6.3 backwards: scores = Q_h K_h^T / sqrt(d_head)
    scale = 1.0 / math.sqrt(d)
    dQ = (dS @ k).scaled(scale)  # (B, H, Lq, d_head)
    dK = (dS.mT @ q).scaled(scale)  # (B, H, Lk, d_head)
    # §6.2 backwards (the heads merged into their columns), §6.1 backwards: Q = X_q @ W_q + b_q and the others
    for name, x, dX, w in (("query", query, dQ, "q"), ("key", key, dK, "k"), ("value", value, dV, "v")):
        dX = merge(dX)  # (B, L, H*d_head)
        grads.update({f"W_{w}": rows(x).mT @ rows(dX), f"b_{w}": dX.sum(axis=(0, 1)),
                      name: dX @ weights[f"W_{w}"].mT})
    return grads


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "mha"
    forward = staticmethod(forward)
    backward = staticmethod(backward)


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


def per_head_bias_meets_positions(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§6.1: d_head = 1 and the query or key length equals num_heads > 1, where a per-head bias of shape
    (num_heads, 1) and the positions of a projection have the same length."""
    H = example["num_heads"]
    return example["d_head"] == 1 and H > 1 and H in (example["Lq"], example["Lk"])


# --- properties (the spec's `property` table, §11): what to change, and which outputs must not follow -------
# Each takes the harness's draw (`example`, `inputs`, `other`: inputs of the same shapes with new values,
# `rng`, `factor`, `replaced(name, where)`) and returns (inputs, expect, compared, what), or None where the
# example does not reach the property (or a list of such tuples, each checked); `expect(name, array)` moves an array of the example's outputs' shape
# to where the changed call's outputs must have it, and `compared` marks the elements checked.

def _same(name: str, array: np.ndarray) -> np.ndarray:
    return array


def masked_key_invariance(draw: Any) -> tuple | None:
    """§11.2: the keys and values a mask hides from one query, chosen at random per batch element, replaced;
    the outputs and weights of every query they are hidden from stay as they were."""
    mask = draw.inputs.get("attention_mask")
    if mask is None:
        return None
    B, Lq, Lk = (draw.example[k] for k in ("B", "Lq", "Lk"))
    visible = broadcast_mask(mask, B, Lq, Lk)  # (B, Lq, Lk)
    changed = np.zeros((B, Lk), dtype=bool)  # (B, Lk): hidden from the chosen query
    for b in range(B):
        some_hidden = np.flatnonzero(~visible[b].all(axis=-1))  # queries with a hidden key
        if some_hidden.size:
            changed[b] = ~visible[b, draw.rng.choice(some_hidden)]
    if not changed.any():
        return None
    kept = ~(visible & changed[:, None, :]).any(axis=-1)  # (B, Lq): queries that see none of them
    inputs = {**draw.inputs, "key": draw.replaced("key", changed[:, :, None]),
              "value": draw.replaced("value", changed[:, :, None])}
    compared = {"output": kept[:, :, None], "attention_weights": kept[:, None, :, None]}
    return inputs, _same, compared, f"{int(changed.sum())} masked key and value rows replaced"


def causality(draw: Any) -> tuple | None:
    """§11.3: with the causal mask, the queries, keys and values after a step t replaced, and cut off; the
    outputs and weights of the queries up to t stay as they were in both."""
    if draw.example["mask"] != "causal" or min(draw.example["Lq"], draw.example["Lk"]) < 2:
        return None
    Lq, Lk = draw.example["Lq"], draw.example["Lk"]
    t = int(draw.rng.integers(min(Lq, Lk) - 1))  # the last step kept
    later_q, later_k = np.arange(Lq) > t, np.arange(Lk) > t
    replaced = {**draw.inputs, "query": draw.replaced("query", later_q[None, :, None]),
                "key": draw.replaced("key", later_k[None, :, None]),
                "value": draw.replaced("value", later_k[None, :, None])}
    kept = ~later_q
    compared = {"output": kept[None, :, None], "attention_weights": kept[None, None, :, None]}
    cut = {"query": draw.inputs["query"][:, :t + 1], "key": draw.inputs["key"][:, :t + 1],
           "value": draw.inputs["value"][:, :t + 1], "attention_mask": draw.inputs["attention_mask"][:t + 1, :t + 1]}

    def expect(name: str, array: np.ndarray) -> np.ndarray:
        return array[:, :t + 1] if name == "output" else array[:, :, :t + 1, :t + 1]

    ones = np.ones((), dtype=bool)
    return [(replaced, _same, compared, f"the inputs after step {t} replaced"),
            (cut, expect, {"output": ones, "attention_weights": ones}, f"the inputs cut off after step {t}")]


def key_permutation_equivariance(draw: Any) -> tuple | None:
    """§11.4: the keys and values reordered, with the mask's key axis; the output stays as it was and each
    head's weights are reordered the same way. Not with the causal mask, a pattern of positions."""
    Lk = draw.example["Lk"]
    if draw.example["mask"] == "causal" or Lk < 2:
        return None
    order = draw.rng.permutation(Lk)
    while (order == np.arange(Lk)).all():
        order = draw.rng.permutation(Lk)
    mask = draw.inputs.get("attention_mask")
    inputs = {**draw.inputs, "key": draw.inputs["key"][:, order], "value": draw.inputs["value"][:, order],
              "attention_mask": None if mask is None else mask[..., order]}

    def expect(name: str, array: np.ndarray) -> np.ndarray:
        return array if name == "output" else array[..., order]

    ones = np.ones((), dtype=bool)
    return inputs, expect, {"output": ones, "attention_weights": ones}, f"the keys reordered as {order.tolist()}"
