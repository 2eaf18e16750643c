"""keras.layers.Embedding and keras.layers.Dense as implementations of spec/embedding.md and spec/ffn.md.

Adapters, not implementations: each subclasses our layer (impls/keras/embedding.py,
impls/keras/ffn.py) for its arguments, validation and config, and replaces
the computation with Keras' own layers, so the harness checks what Keras
computes.

`embedding` (section numbers of spec/embedding.md), "keras.layers.Embedding":

| canonical | Keras                                                      | shape                |
|-----------|------------------------------------------------------------|----------------------|
| `E`       | `token_embedding.embeddings`, Embedding(mask_zero=True)    | (vocab_size, d_model) |
| `P`       | `position_embedding.embeddings`, looked up at arange(T)    | (max_len, d_model)   |

Row `v` of a table is id `v`'s vector in both layouts (§3). With
mask_zero=True the token Embedding's `compute_mask(tokens)` is
`tokens != 0`, True at real tokens: exactly `padding_mask` (§7.1). Keras does
not zero the vectors at padding (its mask only travels with the output), as
§7.2 asks. The sinusoidal table and the scale are ours (§6.2, §6.5).

`ffn` (section numbers of spec/ffn.md), "keras.layers.Dense":

| canonical    | Keras                    | shape          |
|--------------|--------------------------|----------------|
| `W_1`, `b_1` | `dense_1.kernel`, `.bias` | (d_model, d_ff), (d_ff,) |
| `W_2`, `b_2` | `dense_2.kernel`, `.bias` | (d_ff, d_model), (d_model,) |

Dense kernels are (in, out), the canonical layout (§3). The activation is
the first Dense's own `activation` (§6.4): "relu"; "gelu", which is
keras.activations.gelu with its default approximate=False, the exact form;
and for gelu_tanh keras.activations.gelu(approximate=True), for which Keras
has no name (keras.ops.gelu's default is the tanh form, the reverse of
keras.activations.gelu's). Between the two sits keras.layers.Dropout, the
identity at inference (§7).

In float64, Keras 3.15.1's Dense computes its product in float32 on the
torch backend (keras.ops.matmul, keras-team/keras#23704), and both GELUs on
the TensorFlow backend round a constant to float32 (tf.nn.gelu): both are
entries in spec/deviations.toml.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls import FrameworkLayer
from impls.keras import KerasImplementation
from impls.keras.embedding import TokenAndPositionEmbedding
from impls.keras.ffn import FeedForward


@keras.saving.register_keras_serializable(package="conformance")
class EmbeddingLayers(TokenAndPositionEmbedding):
    """spec/embedding.md with keras.layers.Embedding for E (and its padding mask) and for P."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_embedding = keras.layers.Embedding(self.vocab_size, self.d_model, mask_zero=True,
                                                      dtype=self.dtype_policy, name="token_embedding")
        self.position_embedding = None
        if self.positional == "learned":
            self.position_embedding = keras.layers.Embedding(self.max_len, self.d_model, dtype=self.dtype_policy,
                                                             name="position_embedding")

    def build(self, input_shape=None):
        self.token_embedding.build()
        if self.position_embedding is not None:
            self.position_embedding.build()
        else:
            self.sinusoid = self._sinusoidal_table()  # (max_len, d_model), §6.5

    def call(self, tokens, training=None):
        T = ops.shape(tokens)[1]
        x = self.token_embedding(tokens)  # (B, T, d_model), §6.1
        if self.scale:
            x = x * math.sqrt(self.d_model)  # §6.2
        if self.position_embedding is not None:
            pe = self.position_embedding(ops.arange(T))  # (T, d_model), positions from 0, §6.3, §6.4
        else:
            pe = self.sinusoid[:T]
        return x + pe[None], self.token_embedding.compute_mask(tokens)  # §6.6; (B, T) True = real, §7.1


def load_embedding(layer: EmbeddingLayers, weights: Mapping[str, np.ndarray]) -> None:
    """E and P are the tables as they are; P only for learned positions (§3)."""
    layer.token_embedding.embeddings.assign(weights["E"])
    if layer.position_embedding is not None:
        layer.position_embedding.embeddings.assign(weights["P"])


def gelu_tanh(x):
    """§6.3 through Keras' own activation; Keras registers no name for this form."""
    return keras.activations.gelu(x, approximate=True)


#: The spec's activation names as Keras Dense activations (§6, §6.4).
KERAS_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": gelu_tanh}


@keras.saving.register_keras_serializable(package="conformance")
class DenseFeedForward(FeedForward):
    """spec/ffn.md as Dense(d_ff, activation) -> Dropout -> Dense(d_model)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # validates the arguments and makes self.dropout
        self.dense_1 = keras.layers.Dense(self.d_ff, activation=KERAS_ACTIVATIONS[self.activation],
                                          dtype=self.dtype_policy, name="dense_1")
        self.dense_2 = keras.layers.Dense(self.d_model, dtype=self.dtype_policy, name="dense_2")

    def build(self, input_shape=None):
        self.dense_1.build((None, None, self.d_model))
        self.dense_2.build((None, None, self.d_ff))

    def call(self, x, training=None):  # (B, T, d_model)
        a = self.dropout(self.dense_1(x), training=training)  # (B, T, d_ff), §5.1, §6, §7
        return self.dense_2(a)  # (B, T, d_model), §5.2


def load_ffn(layer: DenseFeedForward, weights: Mapping[str, np.ndarray]) -> None:
    """(in, out) kernels as they are, as the table in the module docstring says."""
    layer.dense_1.kernel.assign(weights["W_1"])
    layer.dense_1.bias.assign(weights["b_1"])
    layer.dense_2.kernel.assign(weights["W_2"])
    layer.dense_2.bias.assign(weights["b_2"])


class Embedding(FrameworkLayer, KerasImplementation):
    name = "keras.layers.Embedding"
    component = "embedding"
    load_canonical = staticmethod(load_embedding)

    def layer(self, config: Mapping[str, Any], dtype: str) -> EmbeddingLayers:
        return EmbeddingLayers(config["vocab_size"], config["d_model"], config["max_len"], config["positional"],
                               config["scale"], dtype=dtype)


class Dense(FrameworkLayer, KerasImplementation):
    name = "keras.layers.Dense"
    component = "ffn"
    load_canonical = staticmethod(load_ffn)

    def layer(self, config: Mapping[str, Any], dtype: str) -> DenseFeedForward:
        return DenseFeedForward(config["d_model"], config["d_ff"], config["activation"], config["dropout"],
                                dtype=dtype)
