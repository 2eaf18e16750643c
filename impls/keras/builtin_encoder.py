"""Keras' own layer norm inside our encoder block: an implementation of spec/encoder_block.md.

An adapter, not an implementation: the block is ours (impls/keras/encoder_block.py),
with its two hand-written layer norms (§5.3) replaced by
`keras.layers.LayerNormalization(epsilon=epsilon, axis=-1)`, so the harness
checks what Keras' layer norm computes inside a block, on whichever backend
KERAS_BACKEND picks. Everything else (attention, feed-forward network, the
post- and pre-norm arrangements of §5.4 and §5.5) is our block's, unchanged.

| Keras variable   | shape        | canonical  |
|------------------|--------------|------------|
| `norm_1.gamma`   | (d_model,)   | `gamma_1`  |
| `norm_1.beta`    | (d_model,)   | `beta_1`   |
| `norm_2.gamma`   | (d_model,)   | `gamma_2`  |
| `norm_2.beta`    | (d_model,)   | `beta_2`   |

Keras' layer norm, like §5.3, divides the squared deviations by d_model (the
biased variance) and adds epsilon to the variance inside the square root.
Its default epsilon is 1e-3 (§5.6); here it is the configuration's.
"""

from __future__ import annotations

from typing import Any, Mapping

import keras

from impls import FrameworkLayer
from impls.keras import KerasImplementation
from impls.keras.encoder_block import EncoderBlock, load_canonical


@keras.saving.register_keras_serializable(package="conformance")
class LayerNormalizationEncoderBlock(EncoderBlock):
    """Our encoder block with LN_1 and LN_2 as keras.layers.LayerNormalization."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)  # checks the arguments, epsilon included
        self.norm_1, self.norm_2 = (
            keras.layers.LayerNormalization(axis=-1, epsilon=self.epsilon, dtype=self.dtype_policy, name=f"norm_{i}")
            for i in (1, 2))

    def build_layer_norms(self):
        for norm in (self.norm_1, self.norm_2):
            norm.build((None, None, self.d_model))  # (B, T, d_model)

    def layer_norm(self, v, i):
        return (self.norm_1 if i == 1 else self.norm_2)(v)

    # The canonical names of the layer-norm weights, so that our block's converter loads them unchanged.
    gamma_1 = property(lambda self: self.norm_1.gamma)
    beta_1 = property(lambda self: self.norm_1.beta)
    gamma_2 = property(lambda self: self.norm_2.gamma)
    beta_2 = property(lambda self: self.norm_2.beta)


class LayerNormalization(FrameworkLayer, KerasImplementation):
    name = "keras.layers.LayerNormalization"
    component = "encoder_block"
    load_canonical = staticmethod(load_canonical)

    def layer(self, config: Mapping[str, Any], dtype: str) -> LayerNormalizationEncoderBlock:
        return LayerNormalizationEncoderBlock(
            config["d_model"], config["num_heads"], config["d_head"], config["d_ff"], config["activation"],
            config["norm"], config["epsilon"], config["dropout"], kernel_initializer="zeros", dtype=dtype)
