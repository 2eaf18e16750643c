"""Deliberately wrong implementations of spec/text_classifier.md, loaded through the plug-in interface.

Each is a mistake made when a classifier is put together from correct parts:
the pooling reads padding, the mask stops at the first block, positions are
added again, the sigmoid is doubled or dropped. The harness must reject every
one in float32 (tests/test_components.py).
"""

from __future__ import annotations

import numpy as np

from wrong_base import Switchable

from impls.numpy import embedding, encoder_block
from impls.numpy.text_classifier import block_config, block_weights, embedding_config, pool, sigmoid


def _classifier(config, weights, inputs, *, pool_padding=False, mean_over_T=False, mask_first_block_only=False,
                positions_per_block=False, sigmoids=1):
    """spec/text_classifier.md §5 with one switch per mistake; the defaults are the spec."""
    tokens = np.asarray(inputs["tokens"])  # (B, T)
    out = embedding.forward(embedding_config(config), weights, {"tokens": tokens})
    x, real = out["x"], out["padding_mask"]
    positions = x - weights["E"][tokens]  # (B, T, d_model): the positions the embedding added (unscaled, §5.1)
    for layer in range(config["num_layers"]):
        if positions_per_block and layer > 0:
            x = x + positions
        mask = real if layer == 0 or not mask_first_block_only else None
        x, _, _ = encoder_block.block(block_config(config), block_weights(weights, layer), x, None, mask)
    seen = np.ones_like(real) if pool_padding else real
    pooled = pool(x, seen, config["pooling"])
    if mean_over_T and config["pooling"] == "mean":
        pooled = (pooled * real.sum(axis=1, keepdims=True) / real.shape[1]).astype(x.dtype)
    z = pooled @ weights["W_c"] + weights["b_c"]
    if config["head"] == "sigmoid":
        for _ in range(sigmoids):
            z = sigmoid(z)
    return {"y": z, "pooled": pooled}


#: What every shrunk counterexample of these mistakes shows (a mistake's `shrunk` adds to it or overrides it).
SHRUNK = {"B": 1, "num_classes": 1}


class _Wrong(Switchable):
    """A NumPy implementation whose forward pass is `_classifier` with some switches set."""

    component = "text_classifier"

    def forward(self, config, weights, inputs):
        return _classifier(config, weights, inputs, **self.options)


class MaxOverPadding(_Wrong):
    """Max pooling over every position, padded ones included (Keras' GlobalMaxPooling1D given no mask; §5.3)."""
    breaks, says = '5.3', 'differs from the reference'
    options = {"pool_padding": True}


class MeanOverT(_Wrong):
    """Mean pooling that sums the real tokens but divides by the padded length T (§5.3)."""
    breaks, says = '5.3', 'differs from the reference'
    options = {"mean_over_T": True}


class MaskToFirstBlockOnly(_Wrong):
    """The padding mask reaches the first block only; the later ones attend to padded keys (§5.2)."""
    breaks, says = '5.2', 'differs from the reference'
    shrunk = {"num_layers": 2}
    options = {"mask_first_block_only": True}


class PositionsPerBlock(_Wrong):
    """Positions added again before every block after the first, as if each block embedded its input (§5.2)."""
    breaks, says = '5.2', 'differs from the reference'
    shrunk = {"num_layers": 2}
    options = {"positions_per_block": True}


class SigmoidTwice(_Wrong):
    """The sigmoid applied twice, by the head's Dense and again by a separate activation (§5.4)."""
    breaks, says = '5.4', "output 'y' differs from the reference"
    options = {"sigmoids": 2}


class NoSigmoid(_Wrong):
    """Logits returned where the spec asks for the sigmoid (a loss "from_logits" mixed up; §5.4)."""
    breaks, says = '5.4', "output 'y' differs from the reference"
    options = {"sigmoids": 0}


class Correct(_Wrong):
    """No switch set: follows the spec (a control for the cases above)."""
