"""keras.layers.LSTM as the recurrence of spec/lstm_classifier.md and spec/lstm_seq2seq.md.

These are adapters: Keras' own LSTM layer runs every recurrence, and the
rest of each component (the classifier head; embeddings, attention and
output layer) is the small amount of code around it, so the harness checks
what Keras itself computes. Both register as "keras.layers.LSTM".

Canonical weights to one keras.layers.LSTM (stored in its `cell`, a
keras.layers.LSTMCell), lstm_classifier §7.2 and lstm_seq2seq §3:

| canonical                        | keras.layers.LSTM        | shape     |
|----------------------------------|--------------------------|-----------|
| `W_x_{l}`, `W_x_enc`, `W_x_dec`  | `cell.kernel`            | (in, 4H)  |
| `W_h_{l}`, `W_h_enc`, `W_h_dec`  | `cell.recurrent_kernel`  | (H, 4H)   |
| `b_{l}`, `b_enc`, `b_dec`        | `cell.bias`              | (4H,)     |

No transpose and no permutation: the canonical gate blocks i, f, g, o are
Keras' i, f, c, o (Keras names the candidate `c`), and Keras adds its one
bias once per step. The layer is built with the defaults the specs need,
named explicitly: activation="tanh" and recurrent_activation="sigmoid" (the
logistic function, lstm_classifier §6.2; hard_sigmoid was the default of old
Keras releases), use_bias=True. unit_forget_bias only initialises the bias,
which `load` overwrites. Neither spec has padded steps (lstm_classifier §1,
lstm_seq2seq §4), so no mask is passed; initial states are zeros unless
given (lstm_classifier §6.3), and the seq2seq decoder gets the encoder's
(h, c) as `initial_state` (lstm_seq2seq §6.3).

Which code runs (Keras 3.15.1, use_cudnn="auto"): LSTM.inner_loop first
offers the whole sequence to the backend's fused `backend.lstm`. On a CPU
the TensorFlow and JAX backends decline it (their cuDNN kernels need a GPU)
and Keras' generic loop calls LSTMCell.call step by step, with
keras.ops.matmul and the activations above; the torch backend runs its own
CPU loop (`_fallback_lstm` in keras/src/backend/torch/rnn.py: torch.matmul,
torch.sigmoid, torch.tanh in the layer's dtype). On the JAX backend
keras.ops.tanh computes a float64 input in float32 (its result_type demotes
64-bit floats, keras-team/keras#23223), so float64 cells there are a ledger
entry (spec/deviations.toml).
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls import FrameworkLayer
from impls.keras import KerasImplementation
from impls.keras.lstm_seq2seq import attention_readout


def lstm_layer(hidden: int, dtype_policy: Any, name: str) -> keras.layers.LSTM:
    """One LSTM layer returning its whole output sequence and its final (h, c)."""
    return keras.layers.LSTM(hidden, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                             return_sequences=True, return_state=True, dtype=dtype_policy, name=name)


def load_lstm(lstm: keras.layers.LSTM, W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray) -> None:
    """Canonical (W_x, W_h, b) into one keras.layers.LSTM, as the module docstring's table says."""
    lstm.cell.kernel.assign(W_x)  # (in, 4H)
    lstm.cell.recurrent_kernel.assign(W_h)  # (H, 4H)
    lstm.cell.bias.assign(b)  # (4H,)


def _check_sizes(**sizes: Any) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


@keras.saving.register_keras_serializable(package="conformance")
class StackedLSTMClassifier(keras.layers.Layer):
    """lstm_classifier: `num_layers` keras.layers.LSTM, then the classifier of §6.5."""

    def __init__(self, d_in: int, hidden: int, num_layers: int, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        _check_sizes(d_in=d_in, hidden=hidden, num_layers=num_layers, num_classes=num_classes)
        self.d_in, self.hidden, self.num_layers, self.num_classes = d_in, hidden, num_layers, num_classes
        self.lstms = [lstm_layer(hidden, self.dtype_policy, f"lstm_{l}") for l in range(num_layers)]  # §6.4

    def build(self, input_shape=None):
        for l, lstm in enumerate(self.lstms):
            lstm.build((None, None, self.d_in if l == 0 else self.hidden))
        # The classifier is a product, not keras.layers.Dense: Dense is checked as the `ffn` adapter, and
        # its float64 matmul is float32 on the torch backend, which would hide the recurrence's own result.
        self.output_kernel = self.add_weight(shape=(self.hidden, self.num_classes), name="output_kernel",
                                             initializer="zeros")
        self.output_bias = self.add_weight(shape=(self.num_classes,), name="output_bias", initializer="zeros")

    def call(self, x, training=None):
        seq, h_n, c_n = x, [], []  # (B, T, d_in)
        for lstm in self.lstms:
            seq, h, c = lstm(seq, training=False)  # (B, T, H), (B, H), (B, H); zero initial states, §6.3
            h_n.append(h)
            c_n.append(c)
        logits = ops.einsum("bh,hk->bk", seq[:, -1, :], self.output_kernel) + self.output_bias  # (B, K), §6.5
        return logits, seq, ops.stack(h_n), ops.stack(c_n)  # §6.6: bottom layer first

    def get_config(self):
        return {**super().get_config(), "d_in": self.d_in, "hidden": self.hidden,
                "num_layers": self.num_layers, "num_classes": self.num_classes}


def load_classifier(layer: StackedLSTMClassifier, weights: Mapping[str, np.ndarray]) -> None:
    for l, lstm in enumerate(layer.lstms):
        load_lstm(lstm, weights[f"W_x_{l}"], weights[f"W_h_{l}"], weights[f"b_{l}"])
    layer.output_kernel.assign(weights["W_out"])
    layer.output_bias.assign(weights["b_out"])


@keras.saving.register_keras_serializable(package="conformance")
class LSTMSeq2SeqLayers(keras.layers.Layer):
    """lstm_seq2seq: keras.layers.Embedding and keras.layers.LSTM for the encoder and the decoder, and
    our attention and output layer (impls/keras/lstm_seq2seq.py) on each decoder state."""

    def __init__(self, src_vocab: int, tgt_vocab: int, d_embed: int, hidden: int, N: int, **kwargs):
        super().__init__(**kwargs)
        _check_sizes(src_vocab=src_vocab, tgt_vocab=tgt_vocab, d_embed=d_embed, hidden=hidden, N=N)
        self.src_vocab, self.tgt_vocab, self.d_embed, self.hidden, self.N = src_vocab, tgt_vocab, d_embed, hidden, N
        self.source_embedding = keras.layers.Embedding(src_vocab, d_embed, dtype=self.dtype_policy,
                                                       name="source_embedding")
        self.target_embedding = keras.layers.Embedding(tgt_vocab, d_embed, dtype=self.dtype_policy,
                                                       name="target_embedding")
        self.encoder = lstm_layer(hidden, self.dtype_policy, "encoder")
        self.decoder = lstm_layer(hidden, self.dtype_policy, "decoder")

    def build(self, input_shape=None):
        self.source_embedding.build()
        self.target_embedding.build()
        self.encoder.build((None, None, self.d_embed))
        self.decoder.build((None, None, self.d_embed))
        self.output_kernel = self.add_weight(shape=(2 * self.hidden, self.tgt_vocab), name="output_kernel",
                                             initializer="zeros")
        self.output_bias = self.add_weight(shape=(self.tgt_vocab,), name="output_bias", initializer="zeros")

    def readout(self, states, hs_enc):
        """§6.4-6.5 at every step of a decoder output (B, T, hidden): weights (B, T, S), logits (B, T, V)."""
        steps = [attention_readout(states[:, t], hs_enc, self.output_kernel, self.output_bias)
                 for t in range(ops.shape(states)[1])]
        return ops.stack([a for a, _ in steps], axis=1), ops.stack([z for _, z in steps], axis=1)

    def call(self, source, target_in, training=None):
        # §6.2: hs_enc (B, S, hidden), final state (B, hidden) twice, from zero states
        hs_enc, h, c = self.encoder(self.source_embedding(source), training=False)
        # §6.6: the teacher-forced run from the encoder's (h, c), §6.3
        states, _, _ = self.decoder(self.target_embedding(target_in), initial_state=[h, c], training=False)
        attention, logits = self.readout(states, hs_enc)  # (B, T, S), (B, T, V)

        # §6.7: the same decoder layer on sequences of one step, each reading the previous argmax
        token = ops.zeros_like(source[:, :1])  # (B, 1), start id 0
        state, generated = [h, c], []
        for _ in range(self.N):
            out, h_n, c_n = self.decoder(self.target_embedding(token), initial_state=state, training=False)
            _, z = self.readout(out, hs_enc)  # (B, 1, V)
            token = ops.argmax(z, axis=-1)  # (B, 1); the first maximum on ties
            generated.append(token)
            state = [h_n, c_n]
        return logits, attention, ops.concatenate(generated, axis=1)  # generated (B, N)

    def get_config(self):
        return {**super().get_config(), "src_vocab": self.src_vocab, "tgt_vocab": self.tgt_vocab,
                "d_embed": self.d_embed, "hidden": self.hidden, "N": self.N}


def load_seq2seq(layer: LSTMSeq2SeqLayers, weights: Mapping[str, np.ndarray]) -> None:
    """E_src, E_tgt are the Embedding tables as they are (row v is token v); the LSTMs as in the table."""
    layer.source_embedding.embeddings.assign(weights["E_src"])
    layer.target_embedding.embeddings.assign(weights["E_tgt"])
    load_lstm(layer.encoder, weights["W_x_enc"], weights["W_h_enc"], weights["b_enc"])
    load_lstm(layer.decoder, weights["W_x_dec"], weights["W_h_dec"], weights["b_dec"])
    layer.output_kernel.assign(weights["W_out"])
    layer.output_bias.assign(weights["b_out"])


class _Builtin(FrameworkLayer, KerasImplementation):
    """What both adapters share: the name."""

    name = "keras.layers.LSTM"


class Classifier(_Builtin):
    component = "lstm_classifier"
    load_canonical = staticmethod(load_classifier)

    def layer(self, config: Mapping[str, Any], dtype: str) -> StackedLSTMClassifier:
        return StackedLSTMClassifier(config["d_in"], config["hidden"], config["num_layers"], config["num_classes"],
                                     dtype=dtype)


class Seq2Seq(_Builtin):
    component = "lstm_seq2seq"
    load_canonical = staticmethod(load_seq2seq)

    def layer(self, config: Mapping[str, Any], dtype: str) -> LSTMSeq2SeqLayers:
        return LSTMSeq2SeqLayers(config["src_vocab"], config["tgt_vocab"], config["d_embed"], config["hidden"],
                                 config["N"], dtype=dtype)
