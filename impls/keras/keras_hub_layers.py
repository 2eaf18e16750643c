"""KerasHub's own layers as implementations of spec/encoder_block.md and spec/embedding.md.

Adapters, not implementations: each builds the KerasHub layer a user would
(keras-hub 0.32.0), copies the canonical weights into its variables and
calls it, so the harness checks what KerasHub computes on whichever backend
KERAS_BACKEND picks. Each adapter class's docstring holds its porting table.

- `TransformerEncoder`, "keras_hub.layers.TransformerEncoder" (encoder_block):
  `keras_hub.layers.TransformerEncoder` called with its public `padding_mask`
  (True = real token, as encoder_block §6) and `return_attention_scores=True`.
  It derives each head's width as `d_model // num_heads`, so configurations
  with another `d_head` are refused (`supports`).
- `TokenAndPositionEmbedding`, "keras_hub.layers.TokenAndPositionEmbedding"
  (embedding): the layer with `mask_zero=True`, learned positions only and no
  scale (it has neither sinusoids nor a `sqrt(d_model)` factor).
- `SinePositionEncoding`, "keras_hub.layers.SinePositionEncoding" (embedding):
  `keras.layers.Embedding(mask_zero=True)` for the tokens, times
  `sqrt(d_model)` where the configuration scales, plus
  `keras_hub.layers.SinePositionEncoding()` of the result, as the layer's
  docstring example does; sinusoidal positions only.

The variables are found by their public paths (`Variable.path`); the
layers' own attributes for them (`_self_attention_layer`, ...) are private.
TokenAndPositionEmbedding's padding mask is only attached to its output
(`keras.src.backend.get_keras_mask`, private): its token embedding, a
`keras.layers.ReversibleEmbedding`, returns None from `compute_mask`.
Where a layer departs from the spec, see the ledger entries that name it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import keras
import keras_hub
import numpy as np
from keras.src.backend import get_keras_mask

from impls import FrameworkLayer
from impls.keras import KerasImplementation

NORMS = ("post", "pre")
#: Keras warns on every call when a layer that does not support masking gets a masked input: KerasHub's
#: PositionEmbedding inside TokenAndPositionEmbedding, and SinePositionEncoding on an Embedding's output.
MASK_WARNING = r"Layer '.*' \(of type \w+\) was passed an input with a mask attached to it"
#: ... and about a softmax over one key (T = 1, valid input: encoder_block §2), as impls.keras.softmax says.
SOFTMAX_WARNING = "You are using a softmax over axis"


def variables_by_path(layer: keras.layers.Layer) -> dict[str, keras.Variable]:
    """The layer's variables by their paths below the layer's own name, e.g. "self_attention_layer/query/kernel"."""
    return {v.path.rpartition(f"{layer.name}/")[2]: v for v in layer.weights}


# --- encoder_block -------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="conformance")
class TransformerEncoderAdapter(keras.layers.Layer):
    """keras_hub.layers.TransformerEncoder behind the spec's call (x, padding_mask) -> (y, attention_weights)."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, activation: str = "relu", norm: str = "post",
                 epsilon: float = 1e-5, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.d_model, self.norm = d_model, norm
        # KerasHub checks d_model // num_heads > 0 itself, when built
        self.encoder = keras_hub.layers.TransformerEncoder(
            intermediate_dim=d_ff, num_heads=num_heads, dropout=dropout, activation=activation,
            layer_norm_epsilon=epsilon, normalize_first=norm == "pre", dtype=self.dtype_policy,
            name="transformer_encoder")

    def build(self, input_shape=None):
        self.encoder.build((None, None, self.d_model))  # (B, T, d_model)

    def call(self, x, padding_mask=None, training=None):
        # §6: padding_mask (B, T), True = real token; KerasHub makes it the (B, 1, T) attention mask
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SOFTMAX_WARNING)
            return self.encoder(x, padding_mask=padding_mask, training=training, return_attention_scores=True)

    def get_config(self):
        e = self.encoder
        return {**super().get_config(), "d_model": self.d_model, "num_heads": e.num_heads,
                "d_ff": e.intermediate_dim, "activation": keras.activations.serialize(e.activation),
                "norm": self.norm, "epsilon": e.layer_norm_epsilon, "dropout": e.dropout}


def load_encoder(adapter: TransformerEncoderAdapter, weights: Mapping[str, np.ndarray]) -> None:
    """The table in `TransformerEncoder`'s docstring: reshapes into the heads, nothing transposed."""
    v = variables_by_path(adapter.encoder)
    D, H = adapter.d_model, adapter.encoder.num_heads
    d = D // H  # KerasHub's key_dim
    for name, w, b in (("query", "W_q", "b_q"), ("key", "W_k", "b_k"), ("value", "W_v", "b_v")):
        v[f"self_attention_layer/{name}/kernel"].assign(weights[w].reshape(D, H, d))  # (d_model, H, d_head)
        v[f"self_attention_layer/{name}/bias"].assign(weights[b].reshape(H, d))  # (H, d_head)
    v["self_attention_layer/attention_output/kernel"].assign(weights["W_o"].reshape(H, d, D))  # (H, d_head, d_model)
    v["self_attention_layer/attention_output/bias"].assign(weights["b_o"])  # (d_model,)
    for path, name in (("self_attention_layer_norm/gamma", "gamma_1"), ("self_attention_layer_norm/beta", "beta_1"),
                       ("feedforward_layer_norm/gamma", "gamma_2"), ("feedforward_layer_norm/beta", "beta_2"),
                       ("feedforward_intermediate_dense/kernel", "W_1"), ("feedforward_intermediate_dense/bias", "b_1"),
                       ("feedforward_output_dense/kernel", "W_2"), ("feedforward_output_dense/bias", "b_2")):
        v[path].assign(weights[name])


class TransformerEncoder(FrameworkLayer, KerasImplementation):
    """keras_hub.layers.TransformerEncoder (spec/encoder_block.md).

    | KerasHub variable (path below the layer)       | shape                | canonical                          |
    |------------------------------------------------|----------------------|------------------------------------|
    | `self_attention_layer/query/kernel`            | (d_model, H, d_head) | `W_q.reshape(d_model, H, d_head)`  |
    | `self_attention_layer/query/bias`              | (H, d_head)          | `b_q.reshape(H, d_head)`           |
    | `self_attention_layer/key/*`, `.../value/*`    | as for the query     | `W_k`, `b_k`; `W_v`, `b_v` alike   |
    | `self_attention_layer/attention_output/kernel` | (H, d_head, d_model) | `W_o.reshape(H, d_head, d_model)`  |
    | `self_attention_layer/attention_output/bias`   | (d_model,)           | `b_o`                              |
    | `self_attention_layer_norm/gamma`, `/beta`     | (d_model,)           | `gamma_1`, `beta_1` (LN_1)         |
    | `feedforward_layer_norm/gamma`, `/beta`        | (d_model,)           | `gamma_2`, `beta_2` (LN_2)         |
    | `feedforward_intermediate_dense/kernel`, `/bias` | (d_model, d_ff), (d_ff,) | `W_1`, `b_1`                 |
    | `feedforward_output_dense/kernel`, `/bias`     | (d_ff, d_model), (d_model,) | `W_2`, `b_2`                |

    The attention is keras.layers.MultiHeadAttention with key_dim = value_dim =
    d_model // num_heads (builtin_mha.py has why the reshapes put head h's
    columns in place); the layer norms are keras.layers.LayerNormalization
    with `layer_norm_epsilon`; `normalize_first=True` is §5.5's pre-norm and
    False §5.4's post-norm; `activation` is the first Dense's, "gelu" being
    Keras' exact form (§5.2).
    """

    name = "keras_hub.layers.TransformerEncoder"
    component = "encoder_block"
    load_canonical = staticmethod(load_encoder)

    def supports(self, config: Mapping[str, Any]) -> str | None:
        if config["d_head"] != config["d_model"] // config["num_heads"]:
            return "d_head != d_model // num_heads"  # KerasHub's key_dim, not an argument
        return None

    def layer(self, config: Mapping[str, Any], dtype: str) -> TransformerEncoderAdapter:
        return TransformerEncoderAdapter(config["d_model"], config["num_heads"], config["d_ff"],
                                         config["activation"], config["norm"], config["epsilon"], config["dropout"],
                                         dtype=dtype)


# --- embedding -----------------------------------------------------------------------------------------------

@keras.saving.register_keras_serializable(package="conformance")
class TokenAndPositionEmbeddingAdapter(keras.layers.Layer):
    """keras_hub.layers.TokenAndPositionEmbedding(mask_zero=True): tokens -> (x, padding_mask)."""

    def __init__(self, vocab_size: int, d_model: int, max_len: int, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras_hub.layers.TokenAndPositionEmbedding(
            vocabulary_size=vocab_size, sequence_length=max_len, embedding_dim=d_model, mask_zero=True,
            dtype=self.dtype_policy, name="token_and_position_embedding")

    def build(self, input_shape=None):
        self.embedding.build((None, None))  # (B, T)

    def call(self, tokens, training=None):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MASK_WARNING)
            x = self.embedding(tokens)  # (B, T, d_model): E[tokens] + P[:T], §6.1, §6.4, §6.6
        return x, get_keras_mask(x)  # (B, T), tokens != 0, §7.1: the mask KerasHub attaches to x

    def get_config(self):
        e = self.embedding
        return {**super().get_config(), "vocab_size": e.vocabulary_size, "d_model": e.embedding_dim,
                "max_len": e.sequence_length}


def load_token_and_position(adapter: TokenAndPositionEmbeddingAdapter, weights: Mapping[str, np.ndarray]) -> None:
    """E and P as they are (the table in `TokenAndPositionEmbedding`'s docstring)."""
    adapter.embedding.token_embedding.embeddings.assign(weights["E"])  # (vocab_size, d_model)
    adapter.embedding.position_embedding.position_embeddings.assign(weights["P"])  # (max_len, d_model)


class TokenAndPositionEmbedding(FrameworkLayer, KerasImplementation):
    """keras_hub.layers.TokenAndPositionEmbedding (spec/embedding.md), learned positions, unscaled.

    | KerasHub variable                          | shape                 | canonical |
    |--------------------------------------------|-----------------------|-----------|
    | `token_embedding.embeddings`               | (vocab_size, d_model) | `E`       |
    | `position_embedding.position_embeddings`   | (max_len, d_model)    | `P`       |

    (Their paths: `token_embedding/embeddings` and `position_embedding/embeddings`.)
    `vocabulary_size`, `sequence_length` and `embedding_dim` are the spec's
    `vocab_size`, `max_len` and `d_model`. The token table is a
    keras.layers.ReversibleEmbedding with its default `tie_weights=True`, so
    it has no second table; rows are ids as in §3. Positions are P[0:T] (§6.3).
    """

    name = "keras_hub.layers.TokenAndPositionEmbedding"
    component = "embedding"
    load_canonical = staticmethod(load_token_and_position)

    def supports(self, config: Mapping[str, Any]) -> str | None:
        if config["positional"] != "learned":
            return "positional != learned"
        if config["scale"]:
            return "scale = true"  # the layer adds E[tokens] and P with no factor between
        return None

    def layer(self, config: Mapping[str, Any], dtype: str) -> TokenAndPositionEmbeddingAdapter:
        return TokenAndPositionEmbeddingAdapter(config["vocab_size"], config["d_model"], config["max_len"],
                                                dtype=dtype)


@keras.saving.register_keras_serializable(package="conformance")
class SinePositionEmbeddingAdapter(keras.layers.Layer):
    """keras.layers.Embedding(mask_zero=True), scaled as configured, plus keras_hub.layers.SinePositionEncoding."""

    def __init__(self, vocab_size: int, d_model: int, scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.d_model, self.scale = d_model, scale
        self.token_embedding = keras.layers.Embedding(vocab_size, d_model, mask_zero=True, dtype=self.dtype_policy,
                                                      name="token_embedding")
        self.position_encoding = keras_hub.layers.SinePositionEncoding(dtype=self.dtype_policy,
                                                                       name="sine_position_encoding")

    def build(self, input_shape=None):
        self.token_embedding.build()

    def call(self, tokens, training=None):
        x = self.token_embedding(tokens)  # (B, T, d_model), §6.1
        if self.scale:
            x = x * math.sqrt(self.d_model)  # §6.2
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=MASK_WARNING)
            pe = self.position_encoding(x)  # (B, T, d_model), §6.5; only x's shape is used
        return x + pe, self.token_embedding.compute_mask(tokens)  # §6.6; (B, T) tokens != 0, §7.1

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.token_embedding.input_dim, "d_model": self.d_model,
                "scale": self.scale}


def load_sine(adapter: SinePositionEmbeddingAdapter, weights: Mapping[str, np.ndarray]) -> None:
    """E as it is; P is not used (§3: sinusoidal positions ignore it)."""
    adapter.token_embedding.embeddings.assign(weights["E"])  # (vocab_size, d_model)


class SinePositionEncoding(FrameworkLayer, KerasImplementation):
    """keras_hub.layers.SinePositionEncoding with keras.layers.Embedding (spec/embedding.md), sinusoidal positions.

    | Keras / KerasHub variable      | shape                 | canonical       |
    |--------------------------------|-----------------------|-----------------|
    | `token_embedding.embeddings`   | (vocab_size, d_model) | `E`             |
    | (none: SinePositionEncoding)   |                       | `P` is not used |

    SinePositionEncoding's default `max_wavelength=10000` is §6.5's base; it
    interleaves sines (even columns) and cosines (odd) with the exponent
    2 * floor(j / 2) / d_model, as §6.5, for any length, so `max_len` needs
    no counterpart. The scale is the user's `x * sqrt(d_model)` (§6.2).
    """

    name = "keras_hub.layers.SinePositionEncoding"
    component = "embedding"
    load_canonical = staticmethod(load_sine)

    def supports(self, config: Mapping[str, Any]) -> str | None:
        return None if config["positional"] == "sinusoidal" else "positional != sinusoidal"

    def layer(self, config: Mapping[str, Any], dtype: str) -> SinePositionEmbeddingAdapter:
        return SinePositionEmbeddingAdapter(config["vocab_size"], config["d_model"], config["scale"], dtype=dtype)
