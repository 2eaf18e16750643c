"""Deliberately wrong implementations of spec/mha.md, loaded through the plug-in interface.

Each one makes a mistake people really make (several come from the documents
this project started from). The harness must reject every one of them in
float32; tests/test_engine.py checks that it does and what it reports.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from wrong_base import Switchable

from impls.numpy.mha import broadcast_mask, masked_softmax


def _attention(config, weights, inputs, *, divisor=None, invert_mask=False, softmax=masked_softmax,
               transpose_output=False, head_split="contiguous", dropout_rng=None):
    """spec/mha.md §6 with one switch per mistake; the defaults are the spec."""
    H, d = config["num_heads"], config["d_head"]
    query, key, value = inputs["query"], inputs["key"], inputs["value"]
    B, Lq, _ = query.shape
    Lk = key.shape[1]

    def split(x, L):  # (B, L, H*d) -> (B, H, L, d)
        if head_split == "interleaved":  # head h takes every H-th column
            return x.reshape(B, L, d, H).transpose(0, 3, 1, 2)
        return x.reshape(B, L, H, d).transpose(0, 2, 1, 3)

    q = split(query @ weights["W_q"] + weights["b_q"], Lq)
    k = split(key @ weights["W_k"] + weights["b_k"], Lk)
    v = split(value @ weights["W_v"] + weights["b_v"], Lk)
    scale = np.sqrt(q.dtype.type(divisor(config) if divisor else d))
    scores = q @ k.transpose(0, 1, 3, 2) / scale  # (B, H, Lq, Lk)
    mask = broadcast_mask(inputs.get("attention_mask"), B, Lq, Lk)[:, None]
    if invert_mask and inputs.get("attention_mask") is not None:
        mask = ~mask
    attn = softmax(scores, mask).astype(q.dtype)
    if dropout_rng is not None and config["dropout"] > 0:
        keep = dropout_rng.random(attn.shape) >= config["dropout"]
        attn = (attn * keep / (1 - config["dropout"])).astype(q.dtype)
    context = (attn @ v).transpose(0, 2, 1, 3).reshape(B, Lq, H * d)
    W_o = weights["W_o"].T if transpose_output and weights["W_o"].shape[0] == weights["W_o"].shape[1] else weights["W_o"]
    return {"output": context @ W_o + weights["b_o"], "attention_weights": attn}


def nan_softmax(scores, mask):
    """torch.nn.MultiheadAttention's behaviour: -inf everywhere in a row gives NaN."""
    s = np.where(mask, scores, -np.inf)
    with np.errstate(invalid="ignore"):  # -inf - -inf is the NaN this mistake is about
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def uniform_softmax(scores, mask):
    """keras.ops.dot_product_attention's behaviour on a fully masked row: uniform weights (its finite fill
    makes every masked score equal); elsewhere the masked keys take no part."""
    uniform = np.full(scores.shape, 1.0 / scores.shape[-1], dtype=scores.dtype)
    return np.where(mask.any(axis=-1, keepdims=True), masked_softmax(scores, mask), uniform)


#: What every shrunk counterexample of these mistakes shows (a mistake's `shrunk` adds to it or overrides it).
SHRUNK = {"B": 1, "scale_exp": 0}


class _Wrong(Switchable):
    """A NumPy implementation whose forward pass is `_attention` with some switches set."""

    component = "mha"
    post: Callable[[dict, Mapping[str, Any]], dict] | None = None

    def forward(self, config, weights, inputs):
        out = _attention(config, weights, inputs, **self.options)
        return self.post(out, inputs) if self.post else out


class ScaledByDModel(_Wrong):
    """Scores divided by sqrt(d_model) instead of sqrt(d_head) (§6.3)."""
    breaks, says = '6.3', 'differs from the reference'
    options = {"divisor": lambda c: c["d_model"]}


class InvertedMask(_Wrong):
    """Reads True as 'masked out', as torch.nn.MultiheadAttention does (§7.1)."""
    breaks, says = '7.1', 'differs from the reference'
    first = True
    options = {"invert_mask": True}


class NaNOnFullyMaskedRow(_Wrong):
    """Softmax over a row of -inf gives NaN (§7.4)."""
    breaks, says = '7.4', 'non-finite values'
    first = True
    options = {"softmax": nan_softmax}


class UniformOnFullyMaskedRow(_Wrong):
    """A fully masked row attends uniformly to every key (§7.4)."""
    breaks, says = '7.4', 'differs from the reference'
    first = True
    options = {"softmax": uniform_softmax}


class InterleavedHeads(_Wrong):
    """Head h takes every H-th feature instead of a contiguous block (§6.2)."""
    breaks, says = '6.2', 'differs from the reference'
    options = {"head_split": "interleaved"}


class TransposedOutputProjection(_Wrong):
    """Uses W_o in PyTorch's (out, in) layout (§3)."""
    breaks, says = '3', 'differs from the reference'
    worked = 'two heads by hand'
    options = {"transpose_output": True}


class DropoutAtInference(_Wrong):
    """Applies dropout although conformance is judged at inference (§8)."""
    breaks, says = '8', 'differs from the reference'
    first = True
    options = {"dropout_rng": np.random.default_rng(0)}


class HeadAveragedWeights(_Wrong):
    """Returns attention weights averaged over heads, shape (B, Lq, Lk) (§4)."""
    breaks, says = '4', 'has shape'
    post = staticmethod(lambda out, inputs: {**out, "attention_weights": out["attention_weights"].mean(axis=1)})


class AlwaysFloat64(_Wrong):
    """Computes and returns float64 whatever dtype it was built for (§4)."""
    breaks, says = '4', 'has dtype float64, expected float32'

    def build(self, config, *, dtype, device):
        return super().build(config, dtype="float64", device=device)


class SelfAttentionOnly(_Wrong):
    """Raises when the query and key lengths differ (§1, cross-attention)."""
    breaks, says = '1', 'raised ValueError: query and key lengths differ'
    post = None

    def build(self, config, *, dtype, device):
        inner = super().build(config, dtype=dtype, device=device)

        class Instance:
            load = inner.load

            def __call__(self, inputs):
                if inputs["query"].shape[1] != inputs["key"].shape[1]:
                    raise ValueError("query and key lengths differ")
                return inner(inputs)

        return Instance()


class BrokenBuild(_Wrong):
    """Cannot even be built."""
    breaks, says = '', 'build raised RuntimeError'

    def build(self, config, *, dtype, device):
        raise RuntimeError("this implementation cannot be built")


class Correct(_Wrong):
    """No switch set: follows the spec (a control for the cases above)."""


class ScaledByDModelAndNaNRows(_Wrong):
    """Two mistakes at once, for ledger tests (tests/test_engine.py): the divisor of ScaledByDModel and the NaN
    rows of NaNOnFullyMaskedRow. Not a case of the generic test (no `breaks`)."""
    options = {"divisor": lambda c: c["d_model"], "softmax": nan_softmax}
