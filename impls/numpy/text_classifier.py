"""The Transformer text classifier in NumPy, composed from our embedding and encoder block, written from
spec/text_classifier.md.

Run in float64 this is the reference. It restates nothing of its parts: the
embedding is impls/numpy/embedding.py and each block impls/numpy/encoder_block.py;
what is its own is the stack, the pooling over real tokens and the head.
Section numbers refer to spec/text_classifier.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation
from impls.numpy import embedding, encoder_block
from impls.numpy.bounds import linear_bound

#: The encoder block's parameters this model fixes (§5.2): post-norm and ReLU, as the seed's block.
BLOCK = {"norm": "post", "activation": "relu"}


def embedding_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """§5.1: the embedding's parameters, positions unscaled."""
    return {"vocab_size": config["vocab_size"], "d_model": config["d_model"], "max_len": config["max_len"],
            "positional": config["positional"], "scale": False}


def block_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """§5.2: the parameters every block of the stack shares."""
    names = ("d_model", "num_heads", "d_head", "d_ff", "epsilon", "dropout")
    return {**{k: config[k] for k in names}, **BLOCK}


def block_weights(weights: Mapping[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """§3: block `layer`'s weights under the encoder block's names (W_q_1 -> W_q)."""
    suffix = f"_{layer}"
    return {k[: -len(suffix)]: v for k, v in weights.items() if k.endswith(suffix) and not k.startswith(("E", "P"))}


def pool(y: np.ndarray, real: np.ndarray, how: str) -> np.ndarray:
    """§5.3: (B, T, d_model) -> (B, d_model) over the real tokens of each sequence only."""
    if how == "max":
        return np.where(real[:, :, None], y, -np.inf).max(axis=1).astype(y.dtype)
    if how == "mean":
        count = real.sum(axis=1, keepdims=True).astype(y.dtype)  # (B, 1): the real tokens, at least one (§5.3)
        return (np.where(real[:, :, None], y, 0).sum(axis=1) / count).astype(y.dtype)
    raise ValueError(f"pooling must be 'max' or 'mean', got {how!r}")


def sigmoid(z: np.ndarray) -> np.ndarray:
    """§5.4: 1 / (1 + exp(-z)), without overflow for large |z|."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§5: embedding, the stack of blocks sharing one padding mask, pooling, head; §6: no dropout."""
    return _classify(config, weights, inputs, diagnostics, pool_padding=False)


def pooled_over_every_position(config: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                               inputs: Mapping[str, Any], diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """What a model gives whose pooling reads the padded positions too, against §5.3 (the blocks still mask
    them): the bound of the ledger's entries for such models."""
    return _classify(config, weights, inputs, diagnostics, pool_padding=True)


def _classify(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
              diagnostics: dict | None, pool_padding: bool) -> dict[str, np.ndarray]:
    tokens = np.asarray(inputs["tokens"])  # (B, T)
    embedded = embedding.forward(embedding_config(config), weights, {"tokens": tokens})
    x, real = embedded["x"], embedded["padding_mask"]  # (B, T, d_model), (B, T): True = a real token
    pooled_over = np.ones_like(real) if pool_padding else real
    # §7: the embedding's output is off by up to its own budget, embedding §8
    x_bound = None if diagnostics is None else EMBEDDING_GROWTH * embedding.magnitude(
        embedding_config(config), weights, tokens)
    for layer in range(config["num_layers"]):  # §5.2: every block gets the same mask; positions were added once
        # §7: each block's own bound (encoder_block §8, from an exact input), and what came before it passed on
        # with a gain of 1 to every position of the sequence
        own = None if x_bound is None else np.zeros(x.shape)
        x, _, bounds = encoder_block.block(block_config(config), block_weights(weights, layer), x, own,
                                           real, diagnostics)
        if bounds is not None:
            x_bound = bounds.y + x_bound.max(axis=(1, 2), keepdims=True)  # (B, T, d_model)
    pooled = pool(x, pooled_over, config["pooling"])  # (B, d_model)
    z = pooled @ weights["W_c"] + weights["b_c"]  # (B, num_classes), §5.4
    y = sigmoid(z) if config["head"] == "sigmoid" else z

    if diagnostics is not None:  # §7: the last block's bound through the pooling and the head
        pooled_bound = pool_bound(x, x_bound, pooled_over, config["pooling"])  # (B, d_model)
        _, z_bound = linear_bound(pooled, pooled_bound, weights["W_c"], weights["b_c"])
        if config["head"] == "sigmoid":  # slope y (1 - y) <= 1/4; exp rounds at |z|, the sum and division twice
            z_bound = y * (1 - y) * (z_bound + np.abs(z) + 1) + 2 * y
        diagnostics["pooled_bound"], diagnostics["y_bound"] = pooled_bound, z_bound
    return {"y": y, "pooled": pooled}


#: §7: the embedding's growth, embedding §8.
EMBEDDING_GROWTH = 2


def pool_bound(x: np.ndarray, x_bound: np.ndarray, real: np.ndarray, how: str) -> np.ndarray:
    """§7: the pooled features' bound: a maximum is off by at most the largest error it is taken over; a mean by
    the mean error and the rounding of its sum and division."""
    if how == "max":
        return np.where(real[:, :, None], x_bound, 0.0).max(axis=1)
    count = real.sum(axis=1)[:, None]  # (B, 1)
    mean = lambda a: np.where(real[:, :, None], a, 0.0).sum(axis=1) / count  # (B, T, d_model) -> (B, d_model)
    return mean(x_bound) + (np.sqrt(np.maximum(count - 1, 0)) + 2) * mean(np.abs(x))


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "text_classifier"
    forward = staticmethod(forward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def padded_sequence(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§5.3: some sequence of the batch has padding, so pooling over real tokens and over every position differ."""
    return bool((np.asarray(inputs["tokens"]) == 0).any())


def single_feature(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§5.2: d_model = 1, where each block's layer norms give their beta whatever came before them."""
    return example["d_model"] == 1


def mean_pooling(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """§5.3: the pooling is the mean, a sum over the sequence divided by a count."""
    return example["pooling"] == "mean"


# --- properties (the spec's `property` table, §9), as in impls/numpy/mha.py --------------------------------

def padding_invariance(draw: Any) -> tuple | None:
    """§9.2: padding added at the end of the rows or cut off; `y` and `pooled` stay as they were."""
    found = embedding.trailing_padding(draw, draw.example["max_len"])
    if found is None:
        return None
    tokens, _, what = found
    ones = np.ones((), dtype=bool)
    return {"tokens": tokens}, lambda name, array: array, {"y": ones, "pooled": ones}, what
