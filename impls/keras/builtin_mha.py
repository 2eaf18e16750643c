"""Keras' own attention layer as an implementation of spec/mha.md.

An adapter, not an implementation: it builds `keras.layers.MultiHeadAttention`,
copies the canonical weights into it and passes the mask on, so the harness
checks what Keras itself computes, on whichever backend KERAS_BACKEND picks.
The mapping is what a user porting weights needs, so it is kept short and
explicit. Section numbers refer to spec/mha.md.

The layer has two code paths, registered separately:

- `keras.layers.MultiHeadAttention`, called with return_attention_scores=True:
  Keras computes the scores with einsums and a masked `keras.layers.Softmax`,
  and returns the weights too, so both outputs are compared. The layer is
  built with the configuration's dropout rate; at inference it is the
  identity (§8).
- `keras.layers.MultiHeadAttention[scores=False]`: the same layer called
  with return_attention_scores=False and built with dropout 0, which sends
  it through `keras.ops.dot_product_attention`: torch's
  scaled_dot_product_attention on the torch backend,
  jax.nn.dot_product_attention on JAX, Keras' own einsums and softmax on
  TensorFlow (with a positive rate Keras falls back to the first path). It
  returns the output only, so it declares `outputs = ("output",)`.

Where either path departs from the spec, the entry is in spec/deviations.toml.

Keras' layer takes key_dim and value_dim per head and an output_shape, so it
expresses every configuration of §2: key_dim = value_dim = d_head and
output_shape = d_model, whatever num_heads * d_head is.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls import FrameworkLayer
from impls.keras import KerasImplementation


@keras.saving.register_keras_serializable(package="conformance")
class MultiHeadAttentionAdapter(keras.layers.Layer):
    """keras.layers.MultiHeadAttention behind the spec's call signature (query, key, value, attention_mask)."""

    def __init__(self, d_model: int, num_heads: int, d_head: int, dropout: float = 0.0, *,
                 return_attention_scores: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.d_model, self.return_attention_scores = d_model, return_attention_scores
        # Keras checks num_heads, key_dim and value_dim itself, naming the bad value
        self.attention = keras.layers.MultiHeadAttention(
            num_heads, key_dim=d_head, value_dim=d_head, dropout=dropout, output_shape=d_model,
            dtype=self.dtype_policy, name="attention")

    def build(self, input_shape=None):
        shape = (None, None, self.d_model)  # (B, L, d_model) for query, value and key
        self.attention.build(shape, shape, shape)

    def call(self, query, key, value, attention_mask=None, training=None):
        if attention_mask is not None:
            # §7.1: True = attend in both. Keras documents the mask as (B, Lq, Lk) and expands it over
            # the heads itself; §7.2's (B, 1, Lk) and (Lq, Lk) are broadcast to that shape here.
            B, Lq, Lk = ops.shape(query)[0], ops.shape(query)[1], ops.shape(key)[1]
            attention_mask = ops.broadcast_to(attention_mask, (B, Lq, Lk))  # (B, Lq, Lk)
        # Keras' argument order is (query, value, key)
        return self.attention(query, value, key=key, attention_mask=attention_mask,
                              return_attention_scores=self.return_attention_scores, training=training)

    def get_config(self):
        attention = self.attention
        return {**super().get_config(), "d_model": self.d_model, "num_heads": attention.num_heads,
                "d_head": attention.key_dim, "dropout": attention.dropout,
                "return_attention_scores": self.return_attention_scores}


def load_canonical(adapter: MultiHeadAttentionAdapter, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) matrices -> the per-head kernels of Keras' EinsumDense sub-layers.

    | Keras variable                    | shape                | canonical                          |
    |-----------------------------------|----------------------|------------------------------------|
    | `query_dense.kernel`              | (d_model, H, d_head) | `W_q.reshape(d_model, H, d_head)`  |
    | `query_dense.bias`                | (H, d_head)          | `b_q.reshape(H, d_head)`           |
    | `key_dense.*`, `value_dense.*`    | as for the query     | `W_k`, `b_k`; `W_v`, `b_v` alike   |
    | `output_dense.kernel`             | (H, d_head, d_model) | `W_o.reshape(H, d_head, d_model)`  |
    | `output_dense.bias`               | (d_model,)           | `b_o`                              |

    Head h owns columns h*d_head .. (h+1)*d_head - 1 of W_q (§3, §6.2), and a
    row-major reshape of the column axis into (H, d_head) puts exactly those
    at kernel[:, h, :]; likewise rows of W_o at output kernel[h]. Nothing is
    transposed: Keras' kernels are (in, out) like the spec's.
    """
    layer = adapter.attention
    D, H, d = adapter.d_model, layer.num_heads, layer.key_dim
    for dense, w, b in ((layer.query_dense, "W_q", "b_q"), (layer.key_dense, "W_k", "b_k"),
                        (layer.value_dense, "W_v", "b_v")):
        dense.kernel.assign(weights[w].reshape(D, H, d))  # (d_model, H, d_head)
        dense.bias.assign(weights[b].reshape(H, d))  # (H, d_head)
    layer.output_dense.kernel.assign(weights["W_o"].reshape(H, d, D))  # (H, d_head, d_model)
    layer.output_dense.bias.assign(weights["b_o"])  # (d_model,)


class MultiHeadAttentionScores(FrameworkLayer, KerasImplementation):
    """return_attention_scores=True: both outputs."""

    name = "keras.layers.MultiHeadAttention"
    component = "mha"
    return_attention_scores = True
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> MultiHeadAttentionAdapter:
        return MultiHeadAttentionAdapter(config["d_model"], config["num_heads"], config["d_head"],
                                         config["dropout"], return_attention_scores=True, dtype=dtype)


class MultiHeadAttentionNoScores(MultiHeadAttentionScores):
    """return_attention_scores=False and dropout 0: keras.ops.dot_product_attention."""

    name = "keras.layers.MultiHeadAttention[scores=False]"
    outputs = ("output",)

    def layer(self, config: Mapping[str, Any], dtype: str) -> MultiHeadAttentionAdapter:
        return MultiHeadAttentionAdapter(config["d_model"], config["num_heads"], config["d_head"], 0.0,
                                         return_attention_scores=False, dtype=dtype)
