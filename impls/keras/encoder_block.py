"""Transformer encoder block as a Keras 3 layer, written from spec/encoder_block.md.

Uses keras.ops only, with this repository's attention (impls/keras/mha.py)
and feed-forward network (impls/keras/ffn.py) as sub-layers. The layer norm
is written out: the mean is a sum divided by d_model because ops.mean (and
ops.var) compute float64 in float32 on the torch and JAX backends of Keras
3.15, and the variance is the mean squared deviation from the mean, which
stays accurate when the mean is large next to the spread. Section numbers
refer to spec/encoder_block.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls.keras import KerasImplementation
from impls.keras.ffn import FeedForward
from impls.keras.ffn import load_canonical as load_ffn
from impls.keras.mha import MultiHeadAttention
from impls.keras.mha import load_canonical as load_mha

NORMS = ("post", "pre")


@keras.saving.register_keras_serializable(package="conformance")
class EncoderBlock(keras.layers.Layer):
    def __init__(self, d_model: int, num_heads: int, d_head: int, d_ff: int, activation: str = "relu",
                 norm: str = "post", epsilon: float = 1e-5, dropout: float = 0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        self.d_model, self.num_heads, self.d_head, self.d_ff = d_model, num_heads, d_head, d_ff
        self.activation, self.norm, self.epsilon, self.rate = activation, norm, epsilon, dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # sub-layers check their own arguments and take this layer's dtype policy
        self.attention = MultiHeadAttention(d_model, num_heads, d_head, dropout, kernel_initializer,
                                            dtype=self.dtype_policy)
        self.ffn = FeedForward(d_model, d_ff, activation, dropout, kernel_initializer, dtype=self.dtype_policy)
        self.dropout1 = keras.layers.Dropout(dropout, dtype=self.dtype_policy)  # on each sub-layer's output (§7)
        self.dropout2 = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        self.attention.build()
        self.ffn.build()
        self.build_layer_norms()

    def build_layer_norms(self):
        """The weights of LN_1 and LN_2 (§5.3); `build_layer_norms` and `layer_norm` go together."""
        for i in (1, 2):
            setattr(self, f"gamma_{i}", self.add_weight(shape=(self.d_model,), name=f"gamma_{i}", initializer="ones"))
            setattr(self, f"beta_{i}", self.add_weight(shape=(self.d_model,), name=f"beta_{i}", initializer="zeros"))

    def layer_norm(self, v, i):
        """LN_i of §5.3 over the last axis, biased variance."""
        mean = ops.sum(v, axis=-1, keepdims=True) / self.d_model  # (B, T, 1)
        var = ops.sum(ops.square(v - mean), axis=-1, keepdims=True) / self.d_model  # (B, T, 1)
        return (v - mean) / ops.sqrt(var + self.epsilon) * getattr(self, f"gamma_{i}") + getattr(self, f"beta_{i}")

    def call(self, x, padding_mask=None, training=None):  # (B, T, d_model), (B, T) True = real token
        mask = None if padding_mask is None else ops.expand_dims(padding_mask, 1)  # (B, 1, T), §6

        def attend(v):  # §5.1
            a, weights = self.attention(v, v, v, attention_mask=mask, training=training)
            return self.dropout1(a, training=training), weights

        if self.norm == "post":  # §5.4
            a, weights = attend(x)
            h = self.layer_norm(x + a, 1)
            y = self.layer_norm(h + self.dropout2(self.ffn(h, training=training), training=training), 2)
        else:  # §5.5
            a, weights = attend(self.layer_norm(x, 1))
            h = x + a
            y = h + self.dropout2(self.ffn(self.layer_norm(h, 2), training=training), training=training)
        return y, weights  # (B, T, d_model), (B, H, T, T)

    def get_config(self):
        return {**super().get_config(), "d_model": self.d_model, "num_heads": self.num_heads,
                "d_head": self.d_head, "d_ff": self.d_ff, "activation": self.activation, "norm": self.norm,
                "epsilon": self.epsilon, "dropout": self.rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def load_canonical(layer: EncoderBlock, weights: Mapping[str, np.ndarray]) -> None:
    """The attention's and feed-forward network's own converters; layer-norm vectors as they are."""
    load_mha(layer.attention, weights)
    load_ffn(layer.ffn, weights)
    for name in ("gamma_1", "beta_1", "gamma_2", "beta_2"):
        getattr(layer, name).assign(weights[name])


class Implementation(KerasImplementation):
    component = "encoder_block"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> EncoderBlock:
        return EncoderBlock(config["d_model"], config["num_heads"], config["d_head"], config["d_ff"],
                            config["activation"], config["norm"], config["epsilon"], config["dropout"],
                            kernel_initializer="zeros", dtype=dtype)
