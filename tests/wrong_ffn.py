"""Deliberately wrong implementations of spec/ffn.md, loaded through the plug-in interface.

Each one makes a mistake people really make when porting a Transformer's
feed-forward block between frameworks. The harness must reject every one of
them in float32; tests/test_ffn.py checks that it does and what it reports.
"""

from __future__ import annotations


import numpy as np

from wrong_base import Switchable

from impls.numpy.ffn import ACTIVATIONS, gelu, gelu_tanh


def _ffn(config, weights, x, *, activations=ACTIVATIONS, first_bias=True, transpose_W_2=False,
         dropout_rng=None):
    """spec/ffn.md §5 with one switch per mistake; the defaults are the spec."""
    h = x @ weights["W_1"] + (weights["b_1"] if first_bias else 0)  # (B, T, d_ff)
    a = activations[config["activation"]](h)
    if dropout_rng is not None and config["dropout"] > 0:
        keep = dropout_rng.random(a.shape) >= config["dropout"]
        a = (a * keep / (1 - config["dropout"])).astype(x.dtype)
    W_2 = weights["W_2"]
    if transpose_W_2 and W_2.shape[0] == W_2.shape[1]:
        W_2 = W_2.T
    return {"y": a @ W_2 + weights["b_2"]}  # (B, T, d_model)


#: What every shrunk counterexample of these mistakes shows (a mistake's `shrunk` adds to it or overrides it).
SHRUNK = {"B": 1, "T": 1, "d_model": 1, "d_ff": 1}


class _Wrong(Switchable):
    """A NumPy implementation whose forward pass is `_ffn` with some switches set."""

    component = "ffn"

    def forward(self, config, weights, inputs):
        return _ffn(config, weights, inputs["x"], **self.options)


class TanhForGelu(_Wrong):
    """`gelu` computed with the tanh approximation, as keras.ops.gelu does by default (§6.2)."""
    breaks, says = '6.2', 'differs from the reference'
    options = {"activations": {**ACTIVATIONS, "gelu": gelu_tanh}}


class ErfForGeluTanh(_Wrong):
    """`gelu_tanh` computed with the exact erf form, as torch's default GELU does (§6.3)."""
    breaks, says = '6.3', 'differs from the reference'
    options = {"activations": {**ACTIVATIONS, "gelu_tanh": gelu}}


class DropoutAtInference(_Wrong):
    """Applies dropout after the activation although conformance is judged at inference (§7)."""
    breaks, says = '7', 'differs from the reference'
    first = True
    options = {"dropout_rng": np.random.default_rng(0)}


class NoFirstBias(_Wrong):
    """The first projection built without a bias, b_1 ignored (§5.1)."""
    breaks, says = '5.1', 'differs from the reference'
    options = {"first_bias": False}


class TransposedSecondProjection(_Wrong):
    """Uses W_2 in PyTorch's (out, in) layout where the shapes allow it (§3)."""
    breaks, says = '3', 'differs from the reference'
    worked = 'relu and layout by hand'
    options = {"transpose_W_2": True}


class Correct(_Wrong):
    """No switch set: follows the spec (a control for the cases above)."""
