"""LSTM sequence-to-sequence with dot-product attention in NumPy, written from spec/lstm_seq2seq.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one rather than aiming for
speed. Section numbers refer to spec/lstm_seq2seq.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def lstm_step(x, h, c, W_x, W_h, b):
    """§6.1: one LSTM step; gates i, f, g, o are consecutive blocks of the 4*hidden axis."""
    a = x @ W_x + h @ W_h + b  # (B, 4*hidden)
    i, f, g, o = np.split(a, 4, axis=-1)  # each (B, hidden)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    return h, c


def attend(h, hs_enc):
    """§6.4: dot-product scores (not scaled), softmax over the source, context."""
    scores = np.einsum("bk,bsk->bs", h, hs_enc)  # (B, S)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    a = e / e.sum(axis=-1, keepdims=True)  # (B, S)
    context = np.einsum("bs,bsk->bk", a, hs_enc)  # (B, hidden)
    return a, context


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§6: encoder, teacher-forced decoder and greedy decoder, in the dtype of the weights."""
    w = weights
    source, target_in = inputs["source"], inputs["target_in"]  # (B, S), (B, T) int
    B, S = source.shape
    T, N, hidden = target_in.shape[1], config["N"], config["hidden"]
    dtype = w["W_out"].dtype

    def step(x, h, c, side):  # §6.1 with the encoder's or the decoder's weights
        return lstm_step(x, h, c, w[f"W_x_{side}"], w[f"W_h_{side}"], w[f"b_{side}"])

    # §6.2 encoder: zero initial state, every hidden state kept
    h = c = np.zeros((B, hidden), dtype)
    hs_enc = []
    for s in range(S):
        h, c = step(w["E_src"][source[:, s]], h, c, "enc")  # (B, hidden)
        hs_enc.append(h)
    hs_enc = np.stack(hs_enc, axis=1)  # (B, S, hidden)
    h_enc, c_enc = h, c  # §6.3: the decoder starts from both

    h_dec = []  # the decoder's hidden state at every step of both runs, for the diagnostics

    def decode(token, h, c):  # §6.3-6.5: one decoder step
        h, c = step(w["E_tgt"][token], h, c, "dec")
        h_dec.append(h)
        a, context = attend(h, hs_enc)  # (B, S), (B, hidden)
        feature = np.concatenate([context, h], axis=-1)  # (B, 2*hidden): context first
        return h, c, a, feature @ w["W_out"] + w["b_out"]  # logits (B, tgt_vocab)

    # §6.6 teacher forcing: step t reads target_in[:, t]
    h, c = h_enc, c_enc
    logits, attention = [], []
    for t in range(T):
        h, c, a, z = decode(target_in[:, t], h, c)
        logits.append(z)
        attention.append(a)

    # §6.7 greedy generation: start id 0, each step's argmax is the next input
    h, c = h_enc, c_enc
    token = np.zeros(B, dtype=np.int64)
    generated, margins = [], []
    for n in range(N):
        h, c, _, z = decode(token, h, c)
        token = np.argmax(z, axis=-1)  # the first maximum: ties go to the lower id
        generated.append(token)
        top2 = np.sort(z, axis=-1)[:, -2:]  # (B, 2)
        margins.append(top2[:, 1] - top2[:, 0])

    if diagnostics is not None:  # the magnitudes spec/lstm_seq2seq.md §7 scales budgets by
        # the largest |h_t| . |hs_enc[s]| over both decoder runs: the size of the terms each score sums
        diagnostics["score_scale"] = float(np.einsum("nbk,bsk->nbs", np.abs(np.stack(h_dec)), np.abs(hs_enc)).max())
        # the largest logit features of size at most 1 could give: max over v of sum_k |W_out[k, v]| + |b_out[v]|
        diagnostics["logits_scale"] = float((np.abs(w["W_out"]).sum(axis=0) + np.abs(w["b_out"])).max())
        diagnostics["generated_margin"] = np.stack(margins, axis=1)  # (B, N), best minus second-best logit
    return {"logits": np.stack(logits, axis=1).astype(dtype),  # (B, T, tgt_vocab)
            "attention_weights": np.stack(attention, axis=1).astype(dtype),  # (B, T, S)
            "generated": np.stack(generated, axis=1)}  # (B, N)


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "lstm_seq2seq"
    forward = staticmethod(forward)


# --- properties (the spec's `property` table, §10), as in impls/numpy/mha.py -------------------------------

def causality(draw: Any) -> tuple | None:
    """§10.2: the decoder's inputs after a step t replaced, and cut off; the logits and weights up to t, and the
    generated tokens (which read the source only), stay as they were."""
    T = draw.example["T"]
    if T < 2:
        return None
    t = int(draw.rng.integers(T - 1))  # the last step kept
    kept = np.arange(T) <= t
    ones = np.ones((), dtype=bool)
    replaced = {**draw.inputs, "target_in": draw.replaced("target_in", ~kept[None, :])}
    cut = {**draw.inputs, "target_in": draw.inputs["target_in"][:, :t + 1]}
    return [(replaced, lambda name, array: array,
             {"logits": kept[None, :, None], "attention_weights": kept[None, :, None], "generated": ones},
             f"the decoder's inputs after step {t} replaced"),
            (cut, lambda name, array: array if name == "generated" else array[:, :t + 1],
             {"logits": ones, "attention_weights": ones, "generated": ones},
             f"the decoder's inputs cut off after step {t}")]
