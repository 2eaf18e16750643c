"""LSTM sequence-to-sequence with attention as a Keras 3 layer, written from spec/lstm_seq2seq.md.

Uses keras.ops and Python loops over time (not keras.layers.LSTM, which is
tested as a framework layer of its own). Each LSTM keeps Keras' LSTMCell
layout, `kernel` (d_embed, 4*hidden), `recurrent_kernel` (hidden, 4*hidden)
and one `bias` with gates i, f, g (Keras calls it c), o: the canonical
layout, so `load_canonical` only maps names.

Keras 3.15's type promotion (keras.backend.result_type) turns float64 into
float32, and some ops compute in its result: ops.matmul on the torch backend,
ops.tanh on JAX. Products are therefore einsums and tanh is written through
the sigmoid; both keep float64 on every backend. Section numbers refer to
spec/lstm_seq2seq.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls.keras import KerasImplementation, softmax


def attention_readout(h, hs_enc, output_kernel, output_bias):
    """§6.4-6.5 for one decoder state h (B, hidden) over hs_enc (B, S, hidden): (weights, logits)."""
    scores = ops.einsum("bk,bsk->bs", h, hs_enc)  # (B, S), not scaled
    a = softmax(scores, axis=-1)  # a source of length 1 is valid: every step attends to one state
    context = ops.einsum("bs,bsk->bk", a, hs_enc)  # (B, hidden)
    features = ops.concatenate([context, h], axis=-1)  # (B, 2*hidden): context first
    return a, ops.einsum("bk,kv->bv", features, output_kernel) + output_bias  # (B, S), (B, tgt_vocab)


@keras.saving.register_keras_serializable(package="conformance")
class AttentionSeq2Seq(keras.layers.Layer):
    def __init__(self, src_vocab: int, tgt_vocab: int, d_embed: int, hidden: int, N: int,
                 embeddings_initializer="uniform", kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        sizes = {"src_vocab": src_vocab, "tgt_vocab": tgt_vocab, "d_embed": d_embed, "hidden": hidden, "N": N}
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.src_vocab, self.tgt_vocab, self.d_embed, self.hidden, self.N = sizes.values()
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape=None):
        D, H = self.d_embed, self.hidden
        self.src_embeddings = self.add_weight(shape=(self.src_vocab, D), name="src_embeddings",
                                              initializer=self.embeddings_initializer)
        self.tgt_embeddings = self.add_weight(shape=(self.tgt_vocab, D), name="tgt_embeddings",
                                              initializer=self.embeddings_initializer)
        for side in ("encoder", "decoder"):
            setattr(self, f"{side}_kernel", self.add_weight(shape=(D, 4 * H), name=f"{side}_kernel",
                                                            initializer=self.kernel_initializer))
            setattr(self, f"{side}_recurrent_kernel", self.add_weight(
                shape=(H, 4 * H), name=f"{side}_recurrent_kernel", initializer=self.kernel_initializer))
            setattr(self, f"{side}_bias", self.add_weight(shape=(4 * H,), name=f"{side}_bias", initializer="zeros"))
        self.output_kernel = self.add_weight(shape=(2 * H, self.tgt_vocab), name="output_kernel",
                                             initializer=self.kernel_initializer)
        self.output_bias = self.add_weight(shape=(self.tgt_vocab,), name="output_bias", initializer="zeros")

    @staticmethod
    def tanh(x):
        return 2 * ops.sigmoid(2 * x) - 1  # tanh(x); see the module docstring

    def lstm_step(self, side, x, h, c):
        """§6.1: gates i, f, g, o in that order along the 4*hidden axis."""
        a = (ops.einsum("bd,dg->bg", x, getattr(self, f"{side}_kernel"))
             + ops.einsum("bk,kg->bg", h, getattr(self, f"{side}_recurrent_kernel"))
             + getattr(self, f"{side}_bias"))  # (B, 4*hidden)
        i, f, g, o = ops.split(a, 4, axis=-1)  # each (B, hidden)
        c = ops.sigmoid(f) * c + ops.sigmoid(i) * self.tanh(g)
        return ops.sigmoid(o) * self.tanh(c), c

    def decode_step(self, token, h, c, hs_enc):
        """§6.3-6.5: one decoder step from the previous (h, c)."""
        h, c = self.lstm_step("decoder", ops.take(self.tgt_embeddings, token, axis=0), h, c)  # (B, hidden)
        a, logits = attention_readout(h, hs_enc, self.output_kernel, self.output_bias)
        return h, c, a, logits  # logits (B, tgt_vocab)

    def call(self, source, target_in, training=None):
        x = ops.take(self.src_embeddings, source, axis=0)  # (B, S, d_embed)
        h = c = ops.zeros((ops.shape(source)[0], self.hidden), dtype=self.compute_dtype)
        hs = []
        for s in range(ops.shape(source)[1]):  # §6.2 encoder
            h, c = self.lstm_step("encoder", x[:, s], h, c)
            hs.append(h)
        hs_enc, state = ops.stack(hs, axis=1), (h, c)  # (B, S, hidden); §6.3 both carried

        h, c = state
        logits, attention = [], []
        for t in range(ops.shape(target_in)[1]):  # §6.6 teacher forcing
            h, c, a, z = self.decode_step(target_in[:, t], h, c, hs_enc)
            logits.append(z)
            attention.append(a)

        h, c = state
        token = ops.zeros_like(source[:, 0])  # §6.7: start id 0
        generated = []
        for _ in range(self.N):
            h, c, _, z = self.decode_step(token, h, c, hs_enc)
            token = ops.argmax(z, axis=-1)  # the first maximum on ties
            generated.append(token)
        return ops.stack(logits, axis=1), ops.stack(attention, axis=1), ops.stack(generated, axis=1)

    def get_config(self):
        return {**super().get_config(), "src_vocab": self.src_vocab, "tgt_vocab": self.tgt_vocab,
                "d_embed": self.d_embed, "hidden": self.hidden, "N": self.N,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


#: canonical weight -> the layer's variable
CANONICAL_NAMES = {
    "E_src": "src_embeddings", "E_tgt": "tgt_embeddings",
    "W_x_enc": "encoder_kernel", "W_h_enc": "encoder_recurrent_kernel", "b_enc": "encoder_bias",
    "W_x_dec": "decoder_kernel", "W_h_dec": "decoder_recurrent_kernel", "b_dec": "decoder_bias",
    "W_out": "output_kernel", "b_out": "output_bias",
}


def load_canonical(layer: AttentionSeq2Seq, weights: Mapping[str, np.ndarray]) -> None:
    """The canonical layout is the layer's own; only the names differ."""
    for name, variable in CANONICAL_NAMES.items():
        getattr(layer, variable).assign(weights[name])


class Implementation(KerasImplementation):
    component = "lstm_seq2seq"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> AttentionSeq2Seq:
        return AttentionSeq2Seq(config["src_vocab"], config["tgt_vocab"], config["d_embed"], config["hidden"],
                                config["N"], embeddings_initializer="zeros", kernel_initializer="zeros",
                                dtype=dtype)
