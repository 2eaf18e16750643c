"""Position-wise feed-forward network as a Keras 3 layer, written from spec/ffn.md.

Uses keras.ops only. Both GELUs are written out rather than taken from
ops.gelu: ops.gelu defaults to the tanh form, and on the TensorFlow backend
it rounds its constants to float32, far outside the float64 budget (§6.4).
Keras 3.15 computes some float64 operations in float32 on some backends
(ops.matmul, ops.dot and ops.tensordot on torch, ops.tanh on JAX, ops.mean
on both), so this file uses ops.einsum, ops.erf and ops.sigmoid, which keep
float64. Section numbers refer to spec/ffn.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls.keras import KerasImplementation


def gelu(h):
    """§6.2: 0.5 h (1 + erf(h / sqrt 2))."""
    return 0.5 * h * (1.0 + ops.erf(h * math.sqrt(0.5)))


def gelu_tanh(h):
    """§6.3: 0.5 h (1 + tanh(u)) with u = sqrt(2/pi) (h + 0.044715 h^3), written as h * sigmoid(2u).

    0.5 (1 + tanh(u)) = sigmoid(2u) exactly; ops.tanh is avoided because on the
    JAX backend of Keras 3.15 it computes float64 inputs in float32.
    """
    u = math.sqrt(2.0 / math.pi) * (h + 0.044715 * h * h * h)
    return h * ops.sigmoid(2.0 * u)


ACTIVATIONS = {"relu": ops.relu, "gelu": gelu, "gelu_tanh": gelu_tanh}


@keras.saving.register_keras_serializable(package="conformance")
class FeedForward(keras.layers.Layer):
    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("d_model", d_model), ("d_ff", d_ff)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.d_model, self.d_ff, self.activation, self.rate = d_model, d_ff, activation, dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # after the activation (§7); the parent's dtype policy, or weights would be cast to float32
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.kernel_1 = self.add_weight(shape=(self.d_model, self.d_ff), name="kernel_1",
                                        initializer=self.kernel_initializer)
        self.bias_1 = self.add_weight(shape=(self.d_ff,), name="bias_1", initializer="zeros")
        self.kernel_2 = self.add_weight(shape=(self.d_ff, self.d_model), name="kernel_2",
                                        initializer=self.kernel_initializer)
        self.bias_2 = self.add_weight(shape=(self.d_model,), name="bias_2", initializer="zeros")

    def call(self, x, training=None):  # (B, T, d_model)
        h = ops.einsum("btd,df->btf", x, self.kernel_1) + self.bias_1  # (B, T, d_ff), §5.1
        a = self.dropout(ACTIVATIONS[self.activation](h), training=training)  # §6, §7
        return ops.einsum("btf,fd->btd", a, self.kernel_2) + self.bias_2  # (B, T, d_model), §5.2

    def get_config(self):
        return {**super().get_config(), "d_model": self.d_model, "d_ff": self.d_ff,
                "activation": self.activation, "dropout": self.rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def load_canonical(layer: FeedForward, weights: Mapping[str, np.ndarray]) -> None:
    """The canonical (in, out) layout is the kernels' own: assigned as they are."""
    for variable, name in ((layer.kernel_1, "W_1"), (layer.bias_1, "b_1"),
                           (layer.kernel_2, "W_2"), (layer.bias_2, "b_2")):
        variable.assign(weights[name])


class Implementation(KerasImplementation):
    component = "ffn"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> FeedForward:
        return FeedForward(config["d_model"], config["d_ff"], config["activation"], config["dropout"],
                           kernel_initializer="zeros", dtype=dtype)
