"""The Transformer text classifier in NumPy, composed from our embedding and encoder block, written from
spec/text_classifier.md.

Run in float64 this is the reference. It restates nothing of its parts: the
embedding is impls/numpy/embedding.py and each block impls/numpy/encoder_block.py;
what is its own is the stack, the pooling over real tokens and the head. The
backward pass (§10) composes the parts' pullbacks in the same way.
Section numbers refer to spec/text_classifier.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation
from impls.numpy import embedding, encoder_block
from impls.numpy.bounds import linear_bound
from impls.numpy.carried import Carried

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
    xs, x_bounds, real = stack(config, weights, np.asarray(inputs["tokens"]), diagnostics is not None, diagnostics)
    x, x_bound = xs[-1], x_bounds[-1]  # (B, T, d_model) each: the last block's output
    pooled_over = np.ones_like(real) if pool_padding else real
    pooled = pool(x, pooled_over, config["pooling"])  # (B, d_model)
    z = pooled @ weights["W_c"] + weights["b_c"]  # (B, num_classes), §5.4
    y = sigmoid(z) if config["head"] == "sigmoid" else z

    if diagnostics is not None:  # §7: the last block's bound through the pooling and the head
        pooled_bound = pool_bound(x, x_bound, pooled_over, config["pooling"])  # (B, d_model)
        _, z_bound = linear_bound(pooled, pooled_bound, weights["W_c"], weights["b_c"])
        if config["head"] == "sigmoid":
            z_bound = sigmoid_bound(z, z_bound, y)
        diagnostics["pooled_bound"], diagnostics["y_bound"] = pooled_bound, z_bound
    return {"y": y, "pooled": pooled}


def stack(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], tokens: np.ndarray, bounds: bool,
          diagnostics: dict | None = None) -> tuple[list[np.ndarray], list[np.ndarray | None], np.ndarray]:
    """§5.1 and §5.2: ([x_0, ..., x_L], their §7 bounds in eps (None each without `bounds`), padding_mask).
    `diagnostics` gets the blocks' range-rule extremes (encoder_block.block)."""
    embedded = embedding.forward(embedding_config(config), weights, {"tokens": tokens})
    x, real = embedded["x"], embedded["padding_mask"]  # (B, T, d_model), (B, T): True = a real token
    # §7: the embedding's output is off by up to its own budget, embedding §8
    x_bound = EMBEDDING_GROWTH * embedding.magnitude(embedding_config(config), weights, tokens) if bounds else None
    xs, x_bounds = [x], [x_bound]
    for layer in range(config["num_layers"]):  # §5.2: every block gets the same mask; positions were added once
        # §7: each block's own bound (encoder_block §8, from an exact input), and what came before it passed on
        # with a gain of 1 to every position of the sequence
        own = None if x_bound is None else np.zeros(x.shape)
        x, _, block_bounds = encoder_block.block(block_config(config), block_weights(weights, layer), x, own,
                                                 real, diagnostics)
        if block_bounds is not None:
            x_bound = block_bounds.y + x_bound.max(axis=(1, 2), keepdims=True)  # (B, T, d_model)
        xs.append(x)
        x_bounds.append(x_bound)
    return xs, x_bounds, real


def sigmoid_bound(z: np.ndarray, z_bound: np.ndarray | float, y: np.ndarray) -> np.ndarray:
    """§7: the bound of y = sigmoid(z): slope y (1 - y) <= 1/4 times z's; exp rounds at |z|, the sum and the
    division twice. With z_bound = 0, the sigmoid's own rounding (§10.2)."""
    return y * (1 - y) * (z_bound + np.abs(z) + 1) + 2 * y


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


# --- §10: gradients -------------------------------------------------------------------------------------

def backward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             cotangents: Mapping[str, np.ndarray], eps: float | None = None) -> dict[str, Carried]:
    """§10: the gradients of <cotangents["y"], y> + <cotangents["pooled"], pooled> (one left out counts as
    zero) with respect to every weight, by its concrete name (W_q_0, ...), each with its bound in eps when
    `eps` (the dtype under test's) is given, by §10.2's rules. The tokens are ids and are not differentiated."""
    bounds = eps  # the dtype's eps: bounds, with the products of two errors; None: none
    w = {name: Carried.exact(value, bounds) for name, value in weights.items()}
    return pullback(config, w, np.asarray(inputs["tokens"]),
                    {name: Carried.exact(c, bounds) for name, c in cotangents.items()}, eps)


def pullback(config: Mapping[str, Any], weights: Mapping[str, Carried], tokens: np.ndarray,
             cotangents: Mapping[str, Carried], eps: float | None) -> dict[str, Carried]:
    """§10.1 on the cotangents of `y` and `pooled` (either may be left out), each carrying its bound: the
    gradients with respect to every weight, by concrete name. The forward values are recomputed with §7's
    bounds, by the forward's own functions (which take the weights as exact)."""
    w = {name: c.value for name, c in weights.items()}
    bounded = eps is not None
    carry = lambda value, bound: Carried(value, bound if bounded else None, eps)
    # §5 again, with §7's bounds of the values the gradients need
    xs, x_bounds, real = stack(config, w, tokens, bounded)  # x_0 ... x_L, each (B, T, d_model)
    x, x_bound = xs[-1], x_bounds[-1]
    pooled_value = pool(x, real, config["pooling"])  # (B, d_model)
    pooled = carry(pooled_value, pool_bound(x, x_bound, real, config["pooling"]) if bounded else None)
    W_c = weights["W_c"]
    zeros = lambda shape: Carried.exact(np.zeros(shape, dtype=x.dtype), eps)
    d_y = cotangents.get("y", zeros((x.shape[0], W_c.shape[1])))  # (B, num_classes)
    d_pooled = cotangents.get("pooled", zeros(pooled.shape))  # (B, d_model)

    # §5.4 backwards: y = sigmoid(z) or z, z = pooled @ W_c + b_c
    if config["head"] == "sigmoid":
        z = carry(*linear_bound(pooled_value, pooled.bound, w["W_c"], w["b_c"]))  # (B, num_classes)
        y = sigmoid(z.value)
        d_z = d_y * sigmoid_slope(z, y, bounded)
    else:
        d_z = d_y
    grads = {"W_c": pooled.mT @ d_z, "b_c": d_z.sum(axis=0)}  # sums over the batch
    d_pooled = d_pooled + d_z @ W_c.mT  # (B, d_model): what reaches pooled from both outputs
    # §5.3 backwards: to the real positions the pooling read; padded ones get nothing
    d_x = pool_pullback(carry(x, x_bound), real, config["pooling"], d_pooled, eps)  # (B, T, d_model)
    # §5.2 backwards: the blocks from the last down, each given the same padding mask; their attention
    # weights are not outputs here, so they have no cotangent
    for layer in reversed(range(config["num_layers"])):
        suffix = f"_{layer}"
        block = encoder_block.pullback(block_config(config),
                                       {name: weights[name + suffix] for name in encoder_block.WEIGHTS},
                                       carry(xs[layer], x_bounds[layer]), real, d_x, None, eps)
        d_x = block.pop("x")  # (B, T, d_model): the cotangent of x_layer
        grads.update({name + suffix: g for name, g in block.items()})
    # §5.1 backwards: embedding §12.1
    grads.update(embedding.pullback(embedding_config(config), {"E": weights["E"], "P": weights["P"]}, tokens,
                                    d_x, eps))
    return grads


#: §10.2: the largest |sigmoid''|, y (1 - y) (1 - 2 y) at z = +-1.317 (0.0962): an error in z moves the slope
#: by at most this much (lstm_classifier §11.2's rule).
SIGMOID_CURVATURE = 0.1


def sigmoid_slope(z: Carried, y: np.ndarray, bounded: bool) -> Carried:
    """§10.1: y (1 - y), the sigmoid's slope at z, with §10.2's bound: z's error by the largest curvature, y's
    own rounding (§7) by the slope's derivative in y, |1 - 2 y|, and the slope's roundings (1 - y and the
    product)."""
    value = y * (1 - y)
    if not bounded:
        return Carried(value, None)
    own = sigmoid_bound(z.value, 0.0, y)
    return Carried(value, SIGMOID_CURVATURE * z.bound + np.abs(1 - 2 * y) * own + 2 * value, z.eps)


def pool_pullback(h: Carried, real: np.ndarray, how: str, d_pooled: Carried, eps: float | None) -> Carried:
    """§10.1, §5.3 backwards: pooled's cotangent (B, d_model) to h = x_L, (B, T, d_model), over the real
    positions. A mean sends each its share, d / |R_b| (1 / |R_b| rounded once, §10.2); a maximum sends d to
    the position that holds it, split evenly between exact ties, and where another real position's value
    lies within the bounds of the maximum (§10.2), the choice carries a bound of 1 / eps there."""
    B, _, d_model = h.shape
    keep = real[:, :, None]  # (B, T, 1)
    if how == "mean":
        count = real.sum(axis=1, keepdims=True).astype(h.value.dtype)  # (B, 1): at least one (§5.3)
        share = d_pooled * Carried(1 / count, 1 / count if d_pooled.bounds else None, eps)  # (B, d_model)
        spread = Carried(np.broadcast_to(share.value[:, None, :], h.shape),
                         None if not share.bounds else np.broadcast_to(share.bound[:, None, :], h.shape), eps)
        return spread.where(keep)  # (B, T, d_model)
    if how != "max":
        raise ValueError(f"pooling must be 'max' or 'mean', got {how!r}")
    v = np.where(keep, h.value, -np.inf)  # (B, T, d_model): padded positions are no candidates
    tied = v == v.max(axis=1, keepdims=True)  # (B, T, d_model): the maxima of each feature
    chosen = (tied / tied.sum(axis=1, keepdims=True)).astype(h.value.dtype)  # 1 at the maximum, 1 / k at k ties
    if eps is None:
        choice = Carried(chosen, None)
    else:  # a position may be a correct implementation's maximum if its value can exceed the maximum's floor
        floor = np.where(keep, h.value - h.bound * eps, -np.inf).max(axis=1, keepdims=True)  # (B, 1, d_model)
        near = keep & (h.value + h.bound * eps >= floor)  # (B, T, d_model)
        either = near & (near.sum(axis=1, keepdims=True) > 1)
        choice = Carried(chosen, np.where(either, 1.0 / eps, 0.0), eps)
    return d_pooled.reshape(B, 1, d_model) * choice  # (B, T, d_model)


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "text_classifier"
    forward = staticmethod(forward)
    backward = staticmethod(backward)


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
