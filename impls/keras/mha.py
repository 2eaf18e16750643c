"""Multi-head attention as a Keras 3 layer, written from spec/mha.md.

Uses keras.ops only. The projections are per-head einsum kernels of shape
(d_model, H, d_head), the layout Keras' own MultiHeadAttention uses; the
canonical (d_model, H*d_head) matrices are reshaped into it by
`load_canonical`. Section numbers refer to spec/mha.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping


import keras
import numpy as np
from keras import ops

from impls.keras import KerasImplementation, softmax



@keras.saving.register_keras_serializable(package="conformance")
class MultiHeadAttention(keras.layers.Layer):
    def __init__(self, d_model: int, num_heads: int, d_head: int, dropout: float = 0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("d_model", d_model), ("num_heads", num_heads), ("d_head", d_head)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.d_model, self.num_heads, self.d_head, self.rate = d_model, num_heads, d_head, dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # Sub-layers take the parent's dtype policy; a default Dropout would cast weights to float32.
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape=None):
        D, H, d = self.d_model, self.num_heads, self.d_head
        for name in ("query", "key", "value"):
            setattr(self, f"{name}_kernel", self.add_weight(shape=(D, H, d), name=f"{name}_kernel",
                                                                initializer=self.kernel_initializer))
            setattr(self, f"{name}_bias", self.add_weight(shape=(H, d), name=f"{name}_bias", initializer="zeros"))
        self.output_kernel = self.add_weight(shape=(H, d, D), name="output_kernel",
                                             initializer=self.kernel_initializer)
        self.output_bias = self.add_weight(shape=(D,), name="output_bias", initializer="zeros")

    def call(self, query, key, value, attention_mask=None, training=None):
        # §6.1, §6.2: (B, L, D) x (D, H, d) -> (B, H, L, d)
        q = ops.einsum("bld,dhk->bhlk", query, self.query_kernel) + self.query_bias[:, None, :]
        k = ops.einsum("bld,dhk->bhlk", key, self.key_kernel) + self.key_bias[:, None, :]
        v = ops.einsum("bld,dhk->bhlk", value, self.value_kernel) + self.value_bias[:, None, :]

        scores = ops.einsum("bhqk,bhsk->bhqs", q, k) / math.sqrt(self.d_head)  # (B, H, Lq, Lk), §6.3
        if attention_mask is None:
            weights = softmax(scores, axis=-1)
        else:
            B, Lq, Lk = ops.shape(query)[0], ops.shape(query)[1], ops.shape(key)[1]
            mask = ops.expand_dims(ops.broadcast_to(attention_mask, (B, Lq, Lk)), 1)  # (B, 1, Lq, Lk), §7.2
            weights = softmax(ops.where(mask, scores, float("-inf")), axis=-1)
            weights = ops.where(mask, weights, ops.zeros_like(weights))  # rows with no visible key -> 0, §7.4
        weights = self.dropout(weights, training=training)

        context = ops.einsum("bhqs,bhsk->bhqk", weights, v)  # (B, H, Lq, d), §6.5
        output = ops.einsum("bhqk,hkd->bqd", context, self.output_kernel) + self.output_bias  # §6.6
        return output, weights

    def get_config(self):
        return {**super().get_config(), "d_model": self.d_model, "num_heads": self.num_heads,
                "d_head": self.d_head, "dropout": self.rate,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def load_canonical(layer: MultiHeadAttention, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (D, H*d) projections -> (D, H, d) kernels; (H*d, D) output -> (H, d, D)."""
    D, H, d = layer.d_model, layer.num_heads, layer.d_head
    for name, w, b in (("query", "W_q", "b_q"), ("key", "W_k", "b_k"), ("value", "W_v", "b_v")):
        getattr(layer, f"{name}_kernel").assign(weights[w].reshape(D, H, d))
        getattr(layer, f"{name}_bias").assign(weights[b].reshape(H, d))
    layer.output_kernel.assign(weights["W_o"].reshape(H, d, D))
    layer.output_bias.assign(weights["b_o"])


class Implementation(KerasImplementation):
    component = "mha"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> MultiHeadAttention:
        return MultiHeadAttention(config["d_model"], config["num_heads"], config["d_head"], config["dropout"],
                                  kernel_initializer="zeros", dtype=dtype)
