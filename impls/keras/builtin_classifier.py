"""Keras' own functional model of spec/text_classifier.md, as users build the seed's model.

Adapters, not implementations: a `keras.Model` is wired the way the seed's
model is, from Keras' own layers around our encoder block
(impls/keras/encoder_block.py), and the canonical weights are copied in, so
the harness checks what Keras' layers and its mask propagation compute.
Section numbers refer to spec/text_classifier.md.

    tokens = keras.Input((None,), dtype="int32")                          (B, T)
    x = Embedding(vocab_size, d_model, mask_zero=True)(tokens)            (B, T, d_model), mask (B, T)
    x = PositionEmbedding(max_len, d_model, positional)(x)                + P[:T] or sinusoids; mask passed on
    x, _ = EncoderBlock(...)(x, padding_mask)     for each of L blocks    padding_mask = the Embedding's mask
    pooled = GlobalMaxPooling1D()(x) or GlobalAveragePooling1D()(x)       (B, d_model), no mask given by hand
    y = Dense(num_classes, activation="sigmoid" or None)(Dropout(dropout)(pooled))

`mask_zero=True` makes the mask the seed's positional embedding makes in its
`compute_mask`: Keras attaches `tokens != 0` to the embedding's output and
carries it from layer to layer, and the pooling is called as the seed calls
it, without a mask, so that whatever reaches it is Keras' propagation. The
blocks take the mask as their `padding_mask` argument, the one our block has
(the seed's block gets it as `mask`, which Keras fills in).

| canonical | Keras                                   | shape                   |
|-----------|-----------------------------------------|-------------------------|
| `E`       | `token_embedding.embeddings`            | (vocab_size, d_model)   |
| `P`       | `positions.positions` (learned only)    | (max_len, d_model)      |
| `*_{l}`   | `block_{l}`, our block's own converter  | encoder_block §3        |
| `W_c`     | `head.kernel`, (in, out) as canonical   | (d_model, num_classes)  |
| `b_c`     | `head.bias`                             | (num_classes,)          |

What Keras 3.15.1 does with the mask (tests/test_text_classifier.py): it
does not reach the pooling. A layer passes a mask on only when it declares
`supports_masking`; our block, like the seed's encoder layer, does not, so
Keras drops the mask there with only a warning ("will therefore destroy the
mask information", keras/src/layers/layer.py:1039). Both poolings then read
every position, padding included, against §5.3. GlobalMaxPooling1D would not
use a mask that reached it either: its `call(self, inputs)` is `ops.max` over
every step (keras/src/layers/pooling/global_max_pooling1d.py:64-66), it does
not declare `supports_masking`, and `mask=` given by hand is a TypeError.
GlobalAveragePooling1D does honour a mask that reaches it. In float64, the
head's Dense (keras.ops.matmul) on the torch backend and the unmasked
GlobalAveragePooling1D (keras.ops.mean, global_average_pooling1d.py:83) on
the torch and JAX backends compute in float32 (keras-team/keras#23704). All
are ledger entries (spec/deviations.toml).

"keras.Model[functional, saved and loaded]" copies the weights into the
model, saves it to a `.keras` file in a temporary folder and calls the model
that `keras.saving.load_model` makes from that file, with `custom_objects`
naming the two custom layers as the seed does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Any, Mapping

import keras
import numpy as np
from keras import ops

from impls import FrameworkLayer
from impls.keras import KerasImplementation, LayerInstance, keras_device, pin_precision
from impls.keras.encoder_block import EncoderBlock
from impls.keras.encoder_block import load_canonical as load_block

BASE = 10000.0  # embedding §6.5
POSITIONAL = ("learned", "sinusoidal")


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """embedding §6.5 in float64: sine in the even columns, cosine of the same angle in the odd ones."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]  # (max_len, 1)
    two_i = (np.arange(d_model) // 2 * 2).astype(np.float64)  # (d_model,): 0, 0, 2, 2, 4, ...
    angle = pos / BASE ** (two_i / d_model)  # (max_len, d_model)
    return np.where(np.arange(d_model) % 2 == 0, np.sin(angle), np.cos(angle))


@keras.saving.register_keras_serializable(package="conformance")
class PositionEmbedding(keras.layers.Layer):
    """Adds positions to an embedded sequence (embedding §6.4, §6.5) and passes its input's mask on."""

    def __init__(self, max_len: int, d_model: int, positional: str = "learned", **kwargs):
        super().__init__(**kwargs)
        if positional not in POSITIONAL:
            raise ValueError(f"positional must be one of {', '.join(POSITIONAL)}, got {positional!r}")
        self.max_len, self.d_model, self.positional = max_len, d_model, positional
        self.supports_masking = True  # the token Embedding's mask goes on to the next layer

    def build(self, input_shape=None):
        if self.positional == "learned":
            self.positions = self.add_weight(shape=(self.max_len, self.d_model), name="positions",
                                             initializer="random_normal")  # P
        else:  # a constant, computed in float64 and rounded once to the layer's dtype
            self.sinusoid = ops.convert_to_tensor(sinusoidal_table(self.max_len, self.d_model),
                                                  dtype=self.compute_dtype)

    def call(self, x):  # (B, T, d_model)
        T = ops.shape(x)[1]
        table = self.positions if self.positional == "learned" else self.sinusoid  # (max_len, d_model)
        return x + table[None, :T, :]  # (B, T, d_model), positions from 0

    def compute_output_shape(self, input_shape):
        return input_shape  # said, not traced: tracing a symbolic T longer than max_len would fail

    def get_config(self):
        return {**super().get_config(), "max_len": self.max_len, "d_model": self.d_model,
                "positional": self.positional}


@contextlib.contextmanager
def mask_dropped_quietly():
    """Silences Keras' warning that a layer drops the mask, which it gives on every call (the finding itself,
    shown by tests/test_text_classifier.py), so that a run's output is not one warning per example."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will therefore destroy the mask information")
        yield


#: What the seed hands keras.saving.load_model: its custom layers by name.
CUSTOM_OBJECTS = {"PositionEmbedding": PositionEmbedding, "EncoderBlock": EncoderBlock}
POOLINGS = {"max": keras.layers.GlobalMaxPooling1D, "mean": keras.layers.GlobalAveragePooling1D}


def functional_model(config: Mapping[str, Any], dtype: str) -> keras.Model:
    """The model of the module docstring for the spec's layer parameters; outputs [y, pooled]."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")  # (B, T)
    token_embedding = keras.layers.Embedding(config["vocab_size"], config["d_model"], mask_zero=True,
                                             dtype=dtype, name="token_embedding")
    x = token_embedding(tokens)  # (B, T, d_model), with Keras' mask tokens != 0
    x = PositionEmbedding(config["max_len"], config["d_model"], config["positional"], dtype=dtype,
                          name="positions")(x)  # §5.1
    padding_mask = token_embedding.compute_mask(tokens)  # (B, T) True = real token
    for l in range(config["num_layers"]):  # §5.2
        x, _ = EncoderBlock(config["d_model"], config["num_heads"], config["d_head"], config["d_ff"], "relu",
                            "post", config["epsilon"], config["dropout"], dtype=dtype, name=f"block_{l}")(
            x, padding_mask)
    pooled = POOLINGS[config["pooling"]](dtype=dtype, name="pooling")(x)  # (B, d_model), §5.3
    h = keras.layers.Dropout(config["dropout"], dtype=dtype, name="dropout")(pooled)  # §6
    y = keras.layers.Dense(config["num_classes"], activation="sigmoid" if config["head"] == "sigmoid" else None,
                           dtype=dtype, name="head")(h)  # (B, num_classes), §5.4
    return keras.Model(tokens, [y, pooled], name="text_classifier")


def load_model_weights(model: keras.Model, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical weights into the model's layers, found by name (the table in the module docstring)."""
    model.get_layer("token_embedding").embeddings.assign(weights["E"])
    positions = model.get_layer("positions")
    if positions.positional == "learned":
        positions.positions.assign(weights["P"])
    blocks = [layer for layer in model.layers if layer.name.startswith("block_")]
    for l, block in enumerate(blocks):  # §3: block l's weights are the block's names with _l appended
        suffix = f"_{l}"
        load_block(block, {k[: -len(suffix)]: v for k, v in weights.items() if k.endswith(suffix)})
    head = model.get_layer("head")
    head.kernel.assign(weights["W_c"])
    head.bias.assign(weights["b_c"])


class ModelInstance(LayerInstance):
    """A functional model called on the token ids alone (`LayerInstance` calls a layer with keywords)."""

    def __init__(self, model: keras.Model, *, device: str):
        self.layer, self.load_canonical = model, load_model_weights
        self.device = keras_device(device)
        pin_precision()
        self.call = self.call_model

    def call_model(self, tensors: Mapping[str, Any]) -> list:
        with mask_dropped_quietly():
            return self.layer(tensors["tokens"], training=False)  # [y, pooled]


class SavedModelInstance(ModelInstance):
    """Weights go into the model built here; the model called is the one loaded back from its .keras file."""

    def __init__(self, model: keras.Model, *, device: str):
        super().__init__(model, device=device)
        self.built_model = model

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        with keras.device(self.device):
            load_model_weights(self.built_model, weights)
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "text_classifier.keras")
                self.built_model.save(path)
                with mask_dropped_quietly():  # the loaded model is wired again, which warns again
                    self.layer = keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS)


class FunctionalModel(FrameworkLayer, KerasImplementation):
    name = "keras.Model[functional]"
    component = "text_classifier"
    instance = ModelInstance

    def layer(self, config: Mapping[str, Any], dtype: str) -> keras.Model:
        return functional_model(config, dtype)

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str, mode: str = "eager") -> ModelInstance:
        pin_precision()
        with keras.device(keras_device(device)), mask_dropped_quietly():  # the variables are made as it is wired
            return self.instance(self.layer(config, dtype), device=device)


class SavedFunctionalModel(FunctionalModel):
    name = "keras.Model[functional, saved and loaded]"
    instance = SavedModelInstance
