"""The error bounds that mha, ffn, encoder_block, text_classifier and lstm_classifier carry beside their values.

A bound is an array of the value's shape, in units of the dtype's eps: how far
a correct implementation's value may be from the reference's, to first order,
counting the error each step inherits from its inputs and the rounding it adds
(spec/mha.md §9 states the rules). The helpers here are the rules that every
component shares: a sum's rounding, a projection, and the extremes a component
reports for the range rule.
"""

from __future__ import annotations

import math

import numpy as np


def rounding(n: int) -> float:
    """The rounding of a sum of n terms, in eps of the sum of their sizes: sqrt(n - 1) for the n - 1
    additions, whose errors are independent and add like a random walk, and 1 for storing the result."""
    return math.sqrt(max(n - 1, 0)) + 1


def carried(bound: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Errors of up to `bound` in the terms of a product with W, as they reach its result: independent errors
    of either sign add in quadrature, sqrt(bound**2 @ W**2)."""
    return np.sqrt(bound**2 @ W**2)


def linear_bound(v: np.ndarray, v_bound: np.ndarray | None, W: np.ndarray, b: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """v @ W + b and its bound: the input's error carried by |W|, and the rounding of a sum of the
    d_in + 1 terms. None for `v_bound` computes no bound."""
    if v_bound is None:
        return v @ W + b, None
    terms = np.abs(v) @ np.abs(W) + np.abs(b)
    return v @ W + b, carried(v_bound, W) + rounding(v.shape[-1] + 1) * terms


def extreme(diagnostics: dict, name: str, value: float, pick) -> None:
    """Keep the extreme (`pick`: min or max) of `name` over every value given."""
    diagnostics[name] = pick(diagnostics.get(name, value), value)
