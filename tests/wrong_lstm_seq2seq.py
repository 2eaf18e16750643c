"""Deliberately wrong implementations of spec/lstm_seq2seq.md, loaded through the plug-in interface.

Each one makes a mistake people really make (several are in the book chapter
this component comes from, or in weight converters between frameworks). The
harness must reject every one of them in float32; tests/test_lstm_seq2seq.py
checks that it does and what it reports.
"""

from __future__ import annotations


import numpy as np

from wrong_base import Switchable

from impls.numpy.lstm_seq2seq import sigmoid

GATE_ORDERS = {"ifgo": (0, 1, 2, 3), "iofg": (0, 2, 3, 1)}  # block index of i, f, g, o


def _seq2seq(config, w, inputs, *, concat="context_first", memory="encoder", score_divisor=None,
             carry_c=True, gate_order="ifgo", bias_factor=1, generation_input="argmax", start_id=0,
             ties_to="lower"):
    """spec/lstm_seq2seq.md §6 with one switch per mistake; the defaults are the spec."""
    source, target_in = inputs["source"], inputs["target_in"]
    B, hidden, T = source.shape[0], config["hidden"], target_in.shape[1]

    def step(x, h, c, side):
        a = x @ w[f"W_x_{side}"] + h @ w[f"W_h_{side}"] + bias_factor * w[f"b_{side}"]  # (B, 4*hidden)
        blocks = np.split(a, 4, axis=-1)
        i, f, g, o = (blocks[k] for k in GATE_ORDERS[gate_order])
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        return sigmoid(o) * np.tanh(c), c

    h = c = np.zeros((B, hidden), w["W_out"].dtype)
    hs_enc = []
    for s in range(source.shape[1]):
        h, c = step(w["E_src"][source[:, s]], h, c, "enc")
        hs_enc.append(h)
    hs_enc = np.stack(hs_enc, axis=1)  # (B, S, hidden)
    state = (h, c if carry_c else np.zeros_like(c))

    def run(tokens_at, own_memory):  # one decoder run; tokens_at[n](previous logits) is step n's input
        h, c = state
        own = []  # the decoder's own hidden states so far
        logits, attention, z = [], [], None
        for n in range(len(tokens_at)):
            h, c = step(w["E_tgt"][tokens_at[n](z)], h, c, "dec")
            own.append(h)
            keys = hs_enc if memory == "encoder" else own_memory(own)  # (B, S, hidden) or the decoder's
            scores = np.einsum("bk,bsk->bs", h, keys)
            if score_divisor:
                scores = scores / np.sqrt(scores.dtype.type(score_divisor(config)))
            e = np.exp(scores - scores.max(axis=-1, keepdims=True))
            a = e / e.sum(axis=-1, keepdims=True)
            context = np.einsum("bs,bsk->bk", a, keys)
            feature = [context, h] if concat == "context_first" else [h, context]
            z = np.concatenate(feature, axis=-1) @ w["W_out"] + w["b_out"]
            logits.append(z)
            attention.append(a)
        return logits, attention, own

    def pick(z):  # argmax; among equal largest logits the lower id, or the higher one
        if ties_to == "lower":
            return np.argmax(z, axis=-1)
        return z.shape[-1] - 1 - np.argmax(z[:, ::-1], axis=-1)

    teacher = [lambda z, t=t: target_in[:, t] for t in range(T)]
    # attending over the decoder's states: all T of them under teacher forcing, those so far when generating
    all_states = np.stack(run(teacher, lambda own: np.stack(own, axis=1))[2], axis=1)  # (B, T, hidden)
    logits, attention, _ = run(teacher, lambda own: all_states)

    def greedy(n):
        if n == 0 and generation_input == "argmax":
            return lambda z: np.full(B, start_id)
        if generation_input == "teacher" and n < T:
            return lambda z: target_in[:, n]
        return pick

    gen_logits, _, _ = run([greedy(n) for n in range(config["N"])], lambda own: np.stack(own, axis=1))
    return {"logits": np.stack(logits, axis=1), "attention_weights": np.stack(attention, axis=1),
            "generated": np.stack([pick(z) for z in gen_logits], axis=1)}


#: What every shrunk counterexample of these mistakes shows (a mistake's `shrunk` adds to it or overrides it).
SHRUNK = {"B": 1}


class _Wrong(Switchable):
    """A NumPy implementation whose forward pass is `_seq2seq` with some switches set."""

    component = "lstm_seq2seq"

    def forward(self, config, weights, inputs):
        return _seq2seq(config, weights, inputs, **self.options)


class HiddenStateFirst(_Wrong):
    """Output layer reads [h_t, context_t] instead of [context_t, h_t] (§6.5)."""
    breaks, says = '6.5', "output 'logits' differs from the reference"
    options = {"concat": "hidden_first"}


class AttendsToOwnStates(_Wrong):
    """The decoder attends over its own hidden states instead of the encoder's (§6.4)."""
    breaks, says = '6.4', "output 'logits' differs from the reference"
    options = {"memory": "decoder"}


class ScaledScores(_Wrong):
    """Scores divided by sqrt(hidden), as in scaled dot-product attention (§6.4)."""
    breaks, says = '6.4', "output 'logits' differs from the reference"
    options = {"score_divisor": lambda c: c["hidden"]}


class DecoderCellStartsAtZero(_Wrong):
    """Only h is carried from the encoder; the decoder's cell state starts at zero (§6.3)."""
    breaks, says = '6.3', "output 'logits' differs from the reference"
    options = {"carry_c": False}


class GenerationFedTeacherTokens(_Wrong):
    """Generation reads target_in[:, n] while it lasts instead of its own previous argmax (§6.7)."""
    breaks, says = '6.7', "output 'generated' differs at index"
    options = {"generation_input": "teacher"}


class GenerationStartsAtOne(_Wrong):
    """Generation starts from id 1 (a separate start-of-sequence token) instead of id 0 (§6.7)."""
    breaks, says = '6.7', "output 'generated' differs at index"
    options = {"start_id": 1}


class GatesInONNXOrder(_Wrong):
    """Reads the 4*hidden blocks as i, o, f, g (ONNX's order) instead of i, f, g, o (§6.1)."""
    breaks, says = '6.1', "output 'logits' differs from the reference"
    options = {"gate_order": "iofg"}


class BiasCountedTwice(_Wrong):
    """The one bias copied into both of PyTorch's b_ih and b_hh, so it is added twice (§3, §6.1)."""
    breaks, says = '6.1', "output 'logits' differs from the reference"
    options = {"bias_factor": 2}


class TiesToHigherId(_Wrong):
    """Breaks exact ties towards the higher id (§6.7). The harness cannot reject this one: an exact
    tie is a near tie, after which a row is not compared (§7.1)."""
    options = {"ties_to": "higher"}


class Correct(_Wrong):
    """No switch set: follows the spec (a control for the cases above)."""
