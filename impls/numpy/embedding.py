"""Token embedding with positional encoding in NumPy, written from spec/embedding.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one. Section numbers refer to
spec/embedding.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation
from impls.numpy.bounds import rounding
from impls.numpy.carried import Carried

BASE = 10000  # §6.5


def sinusoid_angles(T: int, d_model: int, dtype: np.dtype) -> np.ndarray:
    """§6.5: angle[pos, j] = pos / BASE**(2i / d_model) with 2i = j rounded down to even, as (T, d_model)."""
    pos = np.arange(T, dtype=dtype)[:, None]  # (T, 1)
    two_i = (np.arange(d_model) // 2 * 2).astype(dtype)  # (d_model,): 0, 0, 2, 2, 4, ...
    return pos / dtype.type(BASE) ** (two_i / dtype.type(d_model))  # (T, d_model)


def sinusoidal_table(T: int, d_model: int, dtype: np.dtype) -> np.ndarray:
    """§6.5: sine in the even columns, cosine in the odd ones; with odd d_model the last column is a sine."""
    angle = sinusoid_angles(T, d_model, dtype)  # (T, d_model)
    PE = np.empty((T, d_model), dtype=dtype)
    PE[:, 0::2] = np.sin(angle[:, 0::2])  # PE[pos, 2i]
    PE[:, 1::2] = np.cos(angle[:, 1::2])  # PE[pos, 2i+1], same angle as column 2i
    return PE


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§6 and §7: the whole computation in the dtype of the weights."""
    d_model, positional = config["d_model"], config["positional"]
    E, P = weights["E"], weights["P"]
    tokens = np.asarray(inputs["tokens"])
    B, T = tokens.shape
    dtype = E.dtype
    if T > config["max_len"]:
        raise ValueError(f"T = {T} exceeds max_len = {config['max_len']} (§7.3)")

    emb = E[tokens]  # (B, T, d_model), §6.1: padding ids too (§7.2)
    s = np.sqrt(dtype.type(d_model)) if config["scale"] else dtype.type(1)  # §6.2
    if positional == "learned":
        PE = P[:T]  # (T, d_model), §6.4
    elif positional == "sinusoidal":
        PE = sinusoidal_table(T, d_model, dtype)  # (T, d_model), §6.5
    else:
        raise ValueError(f"positional must be 'learned' or 'sinusoidal', got {positional!r}")
    x = emb * s + PE[None]  # (B, T, d_model), §6.6
    padding_mask = tokens != 0  # (B, T), §7.1: True = a real token

    if diagnostics is not None:  # the magnitude spec/embedding.md §8 scales the budget by
        diagnostics["x_scale"] = float(magnitude(config, weights, tokens).max())
    return {"x": x, "padding_mask": padding_mask}


def magnitude(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], tokens: np.ndarray) -> np.ndarray:
    """§8: the magnitude of x element by element, (B, T, d_model): the terms it is summed from, and for
    sinusoids the angle, whose rounding the sine and cosine pass on."""
    d_model, T = config["d_model"], tokens.shape[1]
    E = weights["E"]
    s = np.sqrt(E.dtype.type(d_model)) if config["scale"] else E.dtype.type(1)
    if config["positional"] == "sinusoidal":
        PE, angle = sinusoidal_table(T, d_model, E.dtype), sinusoid_angles(T, d_model, E.dtype)
    else:
        PE, angle = weights["P"][:T], np.zeros((T, d_model))
    return np.abs(E[tokens]) * abs(s) + np.abs(PE)[None] + np.abs(angle)[None]


def backward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
             cotangents: Mapping[str, np.ndarray], eps: float | None = None) -> dict[str, Carried]:
    """§12: the gradients of <cotangents["x"], x> with respect to E and P, each with its bound in eps when
    `eps` (the dtype under test's) is given, by §12.2's rules. The tokens are not differentiated, and
    `padding_mask`, being boolean, has no cotangent."""
    bounds = eps  # the dtype's eps: bounds, with the products of two errors; None: none
    w = {name: Carried.exact(weights[name], bounds) for name in ("E", "P")}
    return pullback(config, w, np.asarray(inputs["tokens"]), Carried.exact(cotangents["x"], bounds), eps)


def pullback(config: Mapping[str, Any], weights: Mapping[str, Carried], tokens: np.ndarray, d_x: Carried,
             eps: float | None) -> dict[str, Carried]:
    """§12.1 on x's cotangent d_x, (B, T, d_model), carrying its bound (a model's inner values do): the
    gradients with respect to E ("E") and P ("P"). x is affine in both, so their values are not needed,
    only their shapes."""
    E, P = weights["E"], weights["P"]
    vocab_size, max_len = E.shape[0], P.shape[0]
    # §6.6 backwards: x = emb * s + PE[None]; PE gets the sum of d_x over the batch
    if config["positional"] == "learned":  # §6.4 backwards: PE = P[:T]; rows T and beyond are not read
        grads = {"P": padded(d_x.sum(axis=0), max_len)}  # (T, d_model) -> (max_len, d_model)
    elif config["positional"] == "sinusoidal":  # §6.5: PE has no weights and P is not read
        grads = {"P": Carried.exact(np.zeros(P.shape), d_x.bounds)}  # (max_len, d_model)
    else:
        raise ValueError(f"positional must be 'learned' or 'sinusoidal', got {config['positional']!r}")
    # §6.2 backwards: d_emb = d_x * s, s rounded once as §8.1 counts it (s = 1 is exact and not applied)
    d_emb = d_x
    if config["scale"]:
        s = np.sqrt(E.value.dtype.type(config["d_model"]))
        d_emb = d_x * Carried(s, abs(s) if d_x.bounds else None)  # (B, T, d_model)
    # §6.1 backwards: emb[b, t] = E[tokens[b, t]]; each position's row goes back to its id's row of E,
    # padding positions (id 0) included (§7.2)
    rows = d_emb.reshape(-1, d_emb.shape[-1])  # (B * T, d_model)
    grads["E"] = scatter_rows(tokens.reshape(-1), rows, vocab_size)  # (vocab_size, d_model)
    return grads


def scatter_rows(ids: np.ndarray, rows: Carried, n: int) -> Carried:
    """§12.1: a scatter-add, (n, width): out[v] is the sum of rows[i] over every i with ids[i] = v, 0 where v
    does not occur. §12.2: row v is a sum of as many terms as v occurs, bounded by spec/README.md's rule for
    a sum of that many terms (the zeros a one-hot product would add are exact)."""
    value = np.zeros((n, rows.shape[-1]), rows.value.dtype)
    np.add.at(value, ids, rows.value)  # (n, width), in the order of the positions
    if not rows.bounds:
        return Carried(value, None)
    inherited, size = np.zeros(value.shape), np.zeros(value.shape)
    np.add.at(inherited, ids, rows.bound**2)
    np.add.at(size, ids, np.abs(rows.value))
    r = np.array([rounding(int(count)) for count in np.bincount(ids, minlength=n)])[:, None]  # (n, 1)
    return Carried(value, np.sqrt(inherited) + r * size)


def padded(rows: Carried, n: int) -> Carried:
    """`rows` followed by exact zero rows, n rows in all."""
    pad = [(0, n - rows.shape[0])] + [(0, 0)] * (rows.value.ndim - 1)
    return Carried(np.pad(rows.value, pad), None if not rows.bounds else np.pad(rows.bound, pad))


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "embedding"
    forward = staticmethod(forward)
    backward = staticmethod(backward)


# --- conditions (the spec's `condition` table): where one rule applies --------------------------------------

def padding_position(example: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """§7.2: positions holding the padding id 0; their rows of `x`."""
    padding = np.asarray(inputs["tokens"]) == 0  # (B, T)
    return {"x": padding[:, :, None]}


# --- properties (the spec's `property` table, §11), as in impls/numpy/mha.py -------------------------------

def trailing_padding(draw: Any, max_len: int) -> tuple | None:
    """Padding ids 0 added at the end of every row (up to `max_len` positions), or the columns that hold
    padding in every row cut off; returns (tokens, the positions kept, what), or None where neither can be."""
    tokens = draw.inputs["tokens"]
    B, T = tokens.shape
    real_length = int((tokens != 0).sum(axis=-1).max())
    if T < max_len and (real_length == T or draw.rng.random() < 0.5):
        added = int(draw.rng.integers(1, max_len - T + 1))
        return np.concatenate([tokens, np.zeros((B, added), tokens.dtype)], axis=1), T, f"{added} padding ids added"
    if real_length < T:
        return tokens[:, :real_length], real_length, f"{T - real_length} columns of padding cut off"
    return None


def padding_invariance(draw: Any) -> tuple | None:
    """§11.2: padding added at the end of the rows or cut off; the real positions' rows of `x` stay as they
    were, and `padding_mask` is as long as the new rows (False where padding was added)."""
    found = trailing_padding(draw, draw.example["max_len"])
    if found is None:
        return None
    tokens, kept, what = found
    T = tokens.shape[1]

    def expect(name: str, array: np.ndarray) -> np.ndarray:
        if array.shape[1] >= T:
            return array[:, :T]
        added = np.zeros((array.shape[0], T - array.shape[1], *array.shape[2:]), array.dtype)
        return np.concatenate([array, added], axis=1)

    real = (tokens != 0)
    return {"tokens": tokens}, expect, {"x": real[:, :, None], "padding_mask": np.ones((), bool)}, what
