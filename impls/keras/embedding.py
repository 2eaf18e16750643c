"""Token embedding with positional encoding as a Keras 3 layer, written from spec/embedding.md.

Uses keras.ops for the computation (ops.take for the lookup). The sinusoidal
table is a constant computed with NumPy in float64 in build() and converted to
the layer's compute dtype: in Keras 3.15.1, keras.ops.sin and keras.ops.cos
return float32 for a float64 tensor on the JAX backend (their result_type
demotes 64-bit floats, the cause reported in keras-team/keras#23223), which
would make a float64 layer's table only float32-accurate. The layer returns
the embedded sequence and the boolean padding mask. Section numbers refer to
spec/embedding.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls.keras import KerasImplementation

BASE = 10000.0  # §6.5
POSITIONAL = ("learned", "sinusoidal")


@keras.saving.register_keras_serializable(package="conformance")
class TokenAndPositionEmbedding(keras.layers.Layer):
    def __init__(self, vocab_size: int, d_model: int, max_len: int, positional: str = "learned",
                 scale: bool = False, embeddings_initializer="random_normal", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("max_len", max_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if positional not in POSITIONAL:
            raise ValueError(f"positional must be one of {', '.join(POSITIONAL)}, got {positional!r}")
        if not isinstance(scale, bool):
            raise ValueError(f"scale must be True or False, got {scale!r}")
        self.vocab_size, self.d_model, self.max_len = vocab_size, d_model, max_len
        self.positional, self.scale = positional, scale
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape=None):
        # E, §6.1
        self.token_embeddings = self.add_weight(shape=(self.vocab_size, self.d_model), name="token_embeddings",
                                                initializer=self.embeddings_initializer)
        if self.positional == "learned":  # P, §6.4
            self.position_embeddings = self.add_weight(shape=(self.max_len, self.d_model),
                                                       name="position_embeddings",
                                                       initializer=self.embeddings_initializer)
        else:  # §6.5, a constant: not a weight
            self.sinusoid = self._sinusoidal_table()

    def _sinusoidal_table(self):
        """§6.5: PE[pos, 2i] = sin(pos / BASE**(2i/d_model)), PE[pos, 2i+1] = cos(the same angle)."""
        pos = np.arange(self.max_len, dtype=np.float64)[:, None]  # (max_len, 1)
        two_i = np.arange(0, self.d_model, 2, dtype=np.float64)  # (ceil(d_model/2),)
        angle = pos / BASE ** (two_i / self.d_model)  # (max_len, ceil(d_model/2))
        pe = np.stack([np.sin(angle), np.cos(angle)], axis=-1)  # (max_len, ceil(d_model/2), 2)
        pe = pe.reshape(self.max_len, -1)[:, : self.d_model]  # (max_len, d_model), interleaved
        return ops.convert_to_tensor(pe, dtype=self.compute_dtype)

    def call(self, tokens, training=None):
        T = ops.shape(tokens)[1]
        x = ops.take(self.token_embeddings, tokens, axis=0)  # (B, T, d_model), §6.1
        if self.scale:
            x = x * math.sqrt(self.d_model)  # §6.2, before the positions are added
        table = self.position_embeddings if self.positional == "learned" else self.sinusoid
        x = x + table[None, :T, :]  # (B, T, d_model), §6.6
        return x, ops.not_equal(tokens, 0)  # padding_mask (B, T), True = real token (§7.1)

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "d_model": self.d_model,
                "max_len": self.max_len, "positional": self.positional, "scale": self.scale,
                "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer)}


def load_canonical(layer: TokenAndPositionEmbedding, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical E and P are the layer's tables as they are; P is used only for learned positions (§3)."""
    layer.token_embeddings.assign(weights["E"])
    if layer.positional == "learned":
        layer.position_embeddings.assign(weights["P"])


class Implementation(KerasImplementation):
    component = "embedding"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> TokenAndPositionEmbedding:
        return TokenAndPositionEmbedding(config["vocab_size"], config["d_model"], config["max_len"],
                                         config["positional"], config["scale"],
                                         embeddings_initializer="zeros", dtype=dtype)
