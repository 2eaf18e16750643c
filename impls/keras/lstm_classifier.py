"""A multi-layer LSTM classifier as a Keras 3 layer, written from spec/lstm_classifier.md.

Uses keras.ops only, with a Python loop over the (short) time axis; not
keras.layers.LSTM, which is tested as a framework layer of its own. The
weights have keras.layers.LSTM's layout (kernel (in, 4H), recurrent_kernel
(H, 4H), one bias (4H,), gates i, f, c, o), which is the canonical one, so
`load_canonical` only renames (spec §7.2). Section numbers refer to
spec/lstm_classifier.md.

Keras 3.15 computes some float64 ops in float32 on some backends
(keras-team/keras#23223): `ops.matmul` on torch and `ops.tanh` on JAX. This
layer uses `ops.einsum` for its products and `tanh` from `ops.sigmoid`,
which keep the dtype on every backend.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls.keras import KerasImplementation


def _tanh(a):
    """tanh(a) = 2 sigmoid(2a) - 1, the same function; see the module docstring for why."""
    return 2 * ops.sigmoid(2 * a) - 1


@keras.saving.register_keras_serializable(package="conformance")
class LSTMClassifier(keras.layers.Layer):
    def __init__(self, d_in: int, hidden: int, num_layers: int, num_classes: int,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("d_in", d_in), ("hidden", hidden), ("num_layers", num_layers),
                            ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.d_in, self.hidden, self.num_layers, self.num_classes = d_in, hidden, num_layers, num_classes
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)

    def build(self, input_shape=None):
        H = self.hidden
        self.kernels, self.recurrent_kernels, self.biases = [], [], []
        for l in range(self.num_layers):
            size_in = self.d_in if l == 0 else H
            self.kernels.append(self.add_weight(shape=(size_in, 4 * H), name=f"kernel_{l}",
                                                initializer=self.kernel_initializer))
            self.recurrent_kernels.append(self.add_weight(shape=(H, 4 * H), name=f"recurrent_kernel_{l}",
                                                          initializer=self.recurrent_initializer))
            self.biases.append(self.add_weight(shape=(4 * H,), name=f"bias_{l}", initializer="zeros"))
        self.output_kernel = self.add_weight(shape=(H, self.num_classes), name="output_kernel",
                                             initializer=self.kernel_initializer)
        self.output_bias = self.add_weight(shape=(self.num_classes,), name="output_bias", initializer="zeros")

    def call(self, x, training=None):
        B, T = ops.shape(x)[0], ops.shape(x)[1]
        H = self.hidden
        seq = x  # (B, T, d_in), then (B, T, H) for the layers above the first
        h_n, c_n = [], []
        for l in range(self.num_layers):  # §6.4
            h = ops.zeros((B, H), dtype=self.compute_dtype)  # §6.3: zero initial states
            c = ops.zeros((B, H), dtype=self.compute_dtype)
            hs = []
            for t in range(T):
                gates = (ops.einsum("bi,ig->bg", seq[:, t, :], self.kernels[l])  # (B, 4H), §6.1
                         + ops.einsum("bh,hg->bg", h, self.recurrent_kernels[l]) + self.biases[l])
                i = ops.sigmoid(gates[:, 0 * H:1 * H])  # §6.2, gates i, f, c(= g), o
                f = ops.sigmoid(gates[:, 1 * H:2 * H])
                g = _tanh(gates[:, 2 * H:3 * H])
                o = ops.sigmoid(gates[:, 3 * H:4 * H])
                c = f * c + i * g  # (B, H), §6.3
                h = o * _tanh(c)
                hs.append(h)
            seq = ops.stack(hs, axis=1)  # (B, T, H)
            h_n.append(h)
            c_n.append(c)
        # (B, num_classes), §6.5
        logits = ops.einsum("bh,hk->bk", seq[:, -1, :], self.output_kernel) + self.output_bias
        return logits, seq, ops.stack(h_n), ops.stack(c_n)  # §6.6

    def get_config(self):
        return {**super().get_config(), "d_in": self.d_in, "hidden": self.hidden,
                "num_layers": self.num_layers, "num_classes": self.num_classes,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer)}


def load_canonical(layer: LSTMClassifier, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical weights are Keras' own layout: W_x_l -> kernel_l, W_h_l -> recurrent_kernel_l, b_l -> bias_l."""
    for l in range(layer.num_layers):
        layer.kernels[l].assign(weights[f"W_x_{l}"])
        layer.recurrent_kernels[l].assign(weights[f"W_h_{l}"])
        layer.biases[l].assign(weights[f"b_{l}"])
    layer.output_kernel.assign(weights["W_out"])
    layer.output_bias.assign(weights["b_out"])


class Implementation(KerasImplementation):
    component = "lstm_classifier"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> LSTMClassifier:
        return LSTMClassifier(config["d_in"], config["hidden"], config["num_layers"], config["num_classes"],
                              kernel_initializer="zeros", recurrent_initializer="zeros", dtype=dtype)
