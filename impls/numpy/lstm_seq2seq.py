"""LSTM sequence-to-sequence with dot-product attention in NumPy, written from spec/lstm_seq2seq.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one rather than aiming for
speed. Section numbers refer to spec/lstm_seq2seq.md.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from impls.numpy import NumpyImplementation
from impls.numpy.bounds import rounding
from impls.numpy.carried import Carried


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


# --- §11: gradients -------------------------------------------------------------------------------------

#: §3: the weights, in the order of the weights table; the gradients have the same names.
WEIGHTS = ("E_src", "W_x_enc", "W_h_enc", "b_enc", "E_tgt", "W_x_dec", "W_h_dec", "b_dec", "W_out", "b_out")


def backward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             cotangents: Mapping[str, np.ndarray], eps: float | None = None) -> dict[str, Carried]:
    """§11: the gradients of <cotangents, (logits, attention_weights)> with respect to every weight, each with
    its bound in eps when `eps` (the dtype under test's) is given, by §11.2's rules. The token ids are not
    differentiated, and `generated` is an integer output with no cotangent."""
    bounds = eps  # the dtype's eps: bounds, with the products of two errors; None: none
    w = {name: Carried.exact(weights[name], bounds) for name in WEIGHTS}
    c = {name: Carried.exact(value, bounds) for name, value in cotangents.items()}
    return pullback(config, w, np.asarray(inputs["source"]), np.asarray(inputs["target_in"]), c, eps)


def pullback(config: Mapping[str, Any], weights: Mapping[str, Carried], source: np.ndarray, target_in: np.ndarray,
             cotangents: Mapping[str, Carried], eps: float | None) -> dict[str, Carried]:
    """§11.1 on the tokens and the cotangents of the float outputs (a missing one counts as zero), weights and
    cotangents carrying their bounds: the gradients of every weight, by name. Only the teacher-forced run
    (§6.6) reaches a float output, so the greedy run (§6.7) is not recomputed. `eps` is not read: nothing here
    has a kink whose side depends on it."""
    w = weights
    B, S = source.shape
    T = target_in.shape[1]
    hidden, tgt_vocab = w["W_h_enc"].shape[0], w["W_out"].shape[1]
    zeros = lambda *shape: Carried.exact(np.zeros(shape), w["W_out"].bounds)
    dz = cotangents.get("logits", zeros(B, T, tgt_vocab))  # (B, T, tgt_vocab)
    dweights = cotangents.get("attention_weights", zeros(B, T, S))  # (B, T, S)

    # §6.2, §6.3 and §6.6 again, with the bounds of the values the gradients need (§11.2)
    encoder = lstm_run(_take(w["E_src"], source), zeros(B, hidden), zeros(B, hidden), w, "enc")
    decoder = lstm_run(_take(w["E_tgt"], target_in), encoder[-1].h, encoder[-1].c, w, "dec")
    hs_enc = _joined(np.stack, [step.h for step in encoder], axis=1)  # (B, S, hidden)
    hs_dec = _joined(np.stack, [step.h for step in decoder], axis=1)  # (B, T, hidden): h_t of every step
    # §6.4 at every step at once
    a = softmax(hs_dec @ hs_enc.mT)  # (B, T, S)
    context = a @ hs_enc  # (B, T, hidden)

    # §6.5 backwards: logits_t = [context_t, h_t] @ W_out + b_out
    rows = lambda v: v.reshape(B * T, v.shape[-1])  # the steps as one axis: weight gradients sum over them
    feature = _joined(np.concatenate, [context, hs_dec], axis=-1)  # (B, T, 2*hidden): context first
    grads = {"W_out": rows(feature).mT @ rows(dz), "b_out": dz.sum(axis=(0, 1))}
    dfeature = dz @ w["W_out"].mT  # (B, T, 2*hidden)
    dcontext = _take(dfeature, (..., slice(0, hidden)))  # (B, T, hidden)
    dh_dec = _take(dfeature, (..., slice(hidden, 2 * hidden)))  # (B, T, hidden)
    # §6.4 backwards: context_t = a_t @ hs_enc, a_t = softmax(scores_t), scores_t = hs_enc @ h_t
    dw = dcontext @ hs_enc.mT + dweights  # (B, T, S): the attention weights' gradient
    dscores = a * (dw - (a * dw).sum(axis=-1, keepdims=True))  # (B, T, S): the softmax's Jacobian
    dh_dec = dh_dec + dscores @ hs_enc  # (B, T, hidden)
    dhs_enc = a.mT @ dcontext + dscores.mT @ hs_dec  # (B, S, hidden): summed over the decoder's steps
    # §6.6 backwards, last step first; what reaches the decoder's initial state goes to the encoder's final one
    dgates_dec, dh, dc = lstm_run_backward(decoder, dh_dec, zeros(B, hidden), zeros(B, hidden), w["W_h_dec"])
    # §6.3 and §6.2 backwards: h_S is both the last row of hs_enc and h_0^dec, and c_S is c_0^dec
    dgates_enc, _, _ = lstm_run_backward(encoder, dhs_enc, dh, dc, w["W_h_enc"])
    grads.update(lstm_weight_gradients(encoder, dgates_enc, source, w, "enc", "E_src"))
    grads.update(lstm_weight_gradients(decoder, dgates_dec, target_in, w, "dec", "E_tgt"))
    return {name: grads[name] for name in WEIGHTS}


class Step(NamedTuple):
    """One LSTM step of §6.1 in carried values: its input and previous state, its gates and new state."""
    x: Carried
    h_prev: Carried
    c_prev: Carried
    i: Carried
    f: Carried
    g: Carried
    o: Carried
    tanh_c: Carried
    h: Carried
    c: Carried


def lstm_run(xs: Carried, h: Carried, c: Carried, w: Mapping[str, Carried], side: str) -> list[Step]:
    """§6.1 over the steps of xs (B, L, d_embed) from the state (h, c), with the encoder's or the decoder's
    weights, each value with §11.2's bound."""
    W_x, W_h, b = w[f"W_x_{side}"], w[f"W_h_{side}"], w[f"b_{side}"]
    H = h.shape[-1]
    block = lambda v, k: _take(v, (..., slice(k * H, (k + 1) * H)))  # gate k of the 4*hidden axis
    steps = []
    for t in range(xs.shape[1]):
        x = _take(xs, (slice(None), t))  # (B, d_embed)
        a = x @ W_x + h @ W_h + b  # (B, 4*hidden)
        i, f, o = (carried_sigmoid(block(a, k)) for k in (0, 1, 3))
        g = carried_tanh(block(a, 2))
        c_new = f * c + i * g  # (B, hidden)
        tanh_c = carried_tanh(c_new)
        steps.append(Step(x, h, c, i, f, g, o, tanh_c, o * tanh_c, c_new))
        h, c = steps[-1].h, c_new
    return steps


def lstm_run_backward(steps: Sequence[Step], dh_out: Carried, dh: Carried, dc: Carried, W_h: Carried
                      ) -> tuple[list[Carried], Carried, Carried]:
    """§6.1 backwards over a run, last step first: dh_out (B, L, hidden) is what reaches each step's h from
    outside the recurrence, (dh, dc) what reaches the last step's state from after the run. Gives each step's
    gradient of its pre-activations a (B, 4*hidden), in the steps' order, and the gradient of the initial state."""
    dgates = [None] * len(steps)
    for t in reversed(range(len(steps))):
        s = steps[t]
        dh = dh + _take(dh_out, (slice(None), t))  # (B, hidden)
        # h = o * tanh(c), c = f * c_prev + i * g
        do = dh * s.tanh_c
        dc = dc + dh * s.o * (1 - s.tanh_c * s.tanh_c)
        # the gates' slopes: sigmoid' = s (1 - s), tanh' = 1 - g^2
        dgates[t] = _joined(np.concatenate, [dc * s.g * (s.i * (1 - s.i)), dc * s.c_prev * (s.f * (1 - s.f)),
                                             dc * s.i * (1 - s.g * s.g), do * (s.o * (1 - s.o))], axis=-1)
        dh = dgates[t] @ W_h.mT  # (B, hidden): a = x @ W_x + h_prev @ W_h + b
        dc = dc * s.f
    return dgates, dh, dc


def lstm_weight_gradients(steps: Sequence[Step], dgates: Sequence[Carried], tokens: np.ndarray,
                          w: Mapping[str, Carried], side: str, table: str) -> dict[str, Carried]:
    """§6.1 backwards, the weights' share: a = x @ W_x + h_prev @ W_h + b at every step, summed over the steps
    and the batch, and x = E[token], whose gradient is summed into the token's row."""
    W_x = w[f"W_x_{side}"]
    E = w[table]
    rows = lambda parts: _joined(np.stack, parts, axis=1).reshape(-1, parts[0].shape[-1])  # (B*L, n)
    da = rows(dgates)  # (B*L, 4*hidden)
    x, h_prev = rows([s.x for s in steps]), rows([s.h_prev for s in steps])
    dx = da @ W_x.mT  # (B*L, d_embed)
    one_hot = Carried.exact((tokens.reshape(-1)[:, None] == np.arange(E.shape[0])).astype(np.float64), E.bounds)
    return {f"W_x_{side}": x.mT @ da, f"W_h_{side}": h_prev.mT @ da, f"b_{side}": da.sum(axis=0),
            table: one_hot.mT @ dx}  # (vocab, d_embed): token v's row sums the dx of its positions


def carried_sigmoid(a: Carried) -> Carried:
    """sigmoid(a) with lstm_classifier §8's bound: the slope y (1 - y) times a's error, exp's rounding at the
    size of its argument, and 2 eps of y for the sum and the division."""
    y = sigmoid(a.value)
    return a.apply(sigmoid, y * (1 - y), y * (1 - y) * (np.abs(a.value) + 1) + 2 * y)


def carried_tanh(a: Carried) -> Carried:
    """tanh(a) with lstm_classifier §8's bound: the slope 1 - y^2 times a's error and exp's rounding, and an
    absolute 2 eps besides 2 of |y|, since 2 sigmoid(2a) - 1 cancels near 0."""
    y = np.tanh(a.value)
    return a.apply(np.tanh, 1 - y**2, (1 - y**2) * np.abs(a.value) + 2 * np.abs(y) + 2)


def softmax(scores: Carried) -> Carried:
    """§6.4's softmax over the last axis, with mha §9's bound: rho = e(s) + |s - max s| + 2 per score, and
    p (rho + sum(p rho) + r(S) + 1)."""
    shifted = scores.value - scores.value.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    p = e / e.sum(axis=-1, keepdims=True)
    if not scores.bounds:
        return Carried(p, None)
    rho = scores.bound + np.abs(shifted) + 2
    return Carried(p, p * (rho + (p * rho).sum(axis=-1, keepdims=True) + rounding(p.shape[-1]) + 1))


def _take(v: Carried, index: Any) -> Carried:
    """v[index], each element with its bound: an embedding lookup, a gate's block, a step."""
    return Carried(v.value[index], None if not v.bounds else v.bound[index])


def _joined(join: Any, parts: Sequence[Carried], axis: int) -> Carried:
    """np.stack or np.concatenate of carried values, the bounds joined alike (no arithmetic, no rounding)."""
    bounds = parts[0].bounds
    return Carried(join([p.value for p in parts], axis=axis), join([p.bound for p in parts], axis=axis) if bounds
                   else None)


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "lstm_seq2seq"
    forward = staticmethod(forward)
    backward = staticmethod(backward)


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
