"""The Transformer text classifier as a Keras 3 layer, composed from our embedding and encoder block,
written from spec/text_classifier.md.

Nothing of the parts is rewritten: the embedding is impls/keras/embedding.py
and each block impls/keras/encoder_block.py. What is the model's own is the
stack sharing one padding mask, the pooling over real tokens (a sum divided by
the count, as the encoder block computes its means, rather than ops.mean) and
the head (ops.einsum, as our other layers use it in place of ops.matmul). Section numbers refer to spec/text_classifier.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls.keras import KerasImplementation
from impls.keras.embedding import TokenAndPositionEmbedding
from impls.keras.embedding import load_canonical as load_embedding
from impls.keras.encoder_block import EncoderBlock
from impls.keras.encoder_block import load_canonical as load_block

POOLINGS, HEADS = ("max", "mean"), ("sigmoid", "none")


def masked_pool(h, real, how: str):
    """§5.3: (B, T, d_model) -> (B, d_model) over the real tokens only (every sequence has one at least)."""
    keep = ops.expand_dims(real, -1)  # (B, T, 1)
    if how == "max":
        return ops.max(ops.where(keep, h, ops.cast(float("-inf"), h.dtype)), axis=1)
    count = ops.sum(ops.cast(keep, h.dtype), axis=1)  # (B, 1): the real tokens, not T
    return ops.sum(ops.where(keep, h, ops.zeros_like(h)), axis=1) / count


@keras.saving.register_keras_serializable(package="conformance")
class TextClassifier(keras.layers.Layer):
    def __init__(self, vocab_size: int, d_model: int, max_len: int, positional: str, num_heads: int, d_head: int,
                 d_ff: int, epsilon: float, num_layers: int, pooling: str, head: str, num_classes: int,
                 dropout: float = 0.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("num_layers", num_layers), ("num_classes", num_classes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.config_ = {"vocab_size": vocab_size, "d_model": d_model, "max_len": max_len, "positional": positional,
                        "num_heads": num_heads, "d_head": d_head, "d_ff": d_ff, "epsilon": epsilon,
                        "num_layers": num_layers, "pooling": pooling, "head": head, "num_classes": num_classes,
                        "dropout": dropout}
        self.d_model, self.num_classes, self.pooling, self.head = d_model, num_classes, pooling, head
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        # the parts check their own arguments and take this layer's dtype policy (§5.1, §5.2)
        self.embedding = TokenAndPositionEmbedding(vocab_size, d_model, max_len, positional, False,
                                                   kernel_initializer, dtype=self.dtype_policy)
        self.blocks = [EncoderBlock(d_model, num_heads, d_head, d_ff, "relu", "post", epsilon, dropout,
                                    kernel_initializer, dtype=self.dtype_policy) for _ in range(num_layers)]
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy)  # before the head (§6)

    def build(self, input_shape=None):
        self.embedding.build()
        for block in self.blocks:
            block.build()
        self.classifier_kernel = self.add_weight(shape=(self.d_model, self.num_classes), name="classifier_kernel",
                                                 initializer=self.kernel_initializer)  # W_c, (in, out)
        self.classifier_bias = self.add_weight(shape=(self.num_classes,), name="classifier_bias", initializer="zeros")

    def call(self, tokens, training=None):  # (B, T) int
        x, real = self.embedding(tokens)  # (B, T, d_model), (B, T) True = real token
        for block in self.blocks:  # §5.2: the same mask to every block
            x, _ = block(x, real, training=training)
        pooled = masked_pool(x, real, self.pooling)  # (B, d_model)
        # ops.einsum, not ops.matmul, which computes float64 in float32 on the torch backend (impls/keras/ffn.py)
        z = ops.einsum("bd,dc->bc", self.dropout(pooled, training=training), self.classifier_kernel)
        z = z + self.classifier_bias  # (B, num_classes), §5.4
        return (ops.sigmoid(z) if self.head == "sigmoid" else z), pooled  # (B, num_classes), (B, d_model)

    def get_config(self):
        return {**super().get_config(), **self.config_,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)}


def load_canonical(layer: TextClassifier, weights: Mapping[str, np.ndarray]) -> None:
    """The embedding's and each block's own converters (block l reads its weights without the `_l`, §3)."""
    load_embedding(layer.embedding, weights)
    for l, block in enumerate(layer.blocks):
        suffix = f"_{l}"
        load_block(block, {k[: -len(suffix)]: v for k, v in weights.items() if k.endswith(suffix)})
    layer.classifier_kernel.assign(weights["W_c"])
    layer.classifier_bias.assign(weights["b_c"])


def layer_from(config: Mapping[str, Any], dtype: str, **kwargs: Any) -> TextClassifier:
    """The model of a layer config (the spec's layer parameters)."""
    names = ("vocab_size", "d_model", "max_len", "positional", "num_heads", "d_head", "d_ff", "epsilon",
             "num_layers", "pooling", "head", "num_classes", "dropout")
    return TextClassifier(*(config[k] for k in names), dtype=dtype, **kwargs)


class Implementation(KerasImplementation):
    component = "text_classifier"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> TextClassifier:
        return layer_from(config, dtype, kernel_initializer="zeros")
