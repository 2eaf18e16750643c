"""Deliberately wrong implementations of spec/encoder_block.md, loaded through the plug-in interface.

Each one makes a mistake people really make when writing or porting an
encoder layer: the layer-norm variance and epsilon of another framework, the
other residual arrangement, a mask or a residual left out. The harness must
reject every one of them in float32; tests/test_encoder_block.py checks that
it does and what it reports.
"""

from __future__ import annotations


import numpy as np

from wrong_base import Switchable

from impls.numpy import ffn, mha


def _layer_norm(v, gamma, beta, epsilon, *, ddof=0, eps_outside=False):
    mean = v.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # ddof=1 with d_model = 1 is the NaN of torch.var
        var = ((v - mean) ** 2).sum(axis=-1, keepdims=True) / (v.shape[-1] - ddof)
        denominator = np.sqrt(var) + epsilon if eps_outside else np.sqrt(var + epsilon)
        return (v - mean) / denominator * gamma + beta


def _block(config, w, x, padding, *, norm=None, ddof=0, epsilon=None, eps_outside=False, use_mask=True,
           attention_residual=True, zero_padded_rows=False, attend=mha.forward):
    """spec/encoder_block.md §5 with one switch per mistake; the defaults are the spec."""
    eps = config["epsilon"] if epsilon is None else epsilon
    mask = padding[:, None, :] if padding is not None and use_mask else None  # (B, 1, T)

    def LN(v, i):
        return _layer_norm(v, w[f"gamma_{i}"], w[f"beta_{i}"], eps, ddof=ddof, eps_outside=eps_outside)

    def MHA(v):
        out = attend(config, w, {"query": v, "key": v, "value": v, "attention_mask": mask})
        return out["output"], out["attention_weights"]

    def FFN(v):
        return ffn.forward(config, w, {"x": v})["y"]

    if (norm or config["norm"]) == "post":
        a, attn = MHA(x)
        h = LN(x + a if attention_residual else a, 1)
        y = LN(h + FFN(h), 2)
    else:
        a, attn = MHA(LN(x, 1))
        h = x + a if attention_residual else a
        y = h + FFN(LN(h, 2))
    if zero_padded_rows and padding is not None:
        y = np.where(padding[..., None], y, 0).astype(y.dtype)
    return {"y": y, "attention_weights": attn}


#: What every shrunk counterexample of these mistakes shows (a mistake's `shrunk` adds to it or overrides it).
SHRUNK = {"B": 1, "num_heads": 1, "d_head": 1}


class _Wrong(Switchable):
    """A NumPy implementation whose forward pass is `_block` with some switches set."""

    component = "encoder_block"

    def forward(self, config, weights, inputs):
        return _block(config, weights, inputs["x"], inputs.get("padding_mask"), **self.options)


class PreNormForPostNorm(_Wrong):
    """Always the pre-norm arrangement (norm_first=True) even where post-norm is specified (§5.4)."""
    breaks, says = '5.4', 'differs from the reference'
    options = {"norm": "pre"}


class UnbiasedVariance(_Wrong):
    """Layer norm with the unbiased variance, divided by d_model - 1, as torch.var's default (§5.3)."""
    breaks, says = '5.3', 'non-finite values'
    options = {"ddof": 1}


class EpsilonIgnored(_Wrong):
    """Layer norm with Keras' default epsilon 1e-3 whatever the layer's epsilon (§5.3)."""
    breaks, says = '5.3', 'differs from the reference'
    options = {"epsilon": 1e-3}


class EpsilonOutsideSqrt(_Wrong):
    """(v - mean) / (std + epsilon), as in some tutorial layer norms, instead of sqrt(var + epsilon) (§5.3)."""
    breaks, says = '5.3', 'differs from the reference'
    options = {"eps_outside": True}


class PaddingMaskIgnored(_Wrong):
    """The padding mask is never passed to the attention, so padded keys are attended to (§6)."""
    breaks, says = '6', "output 'attention_weights' differs from the reference"
    options = {"use_mask": False}


class MissingAttentionResidual(_Wrong):
    """The attention sub-layer's residual connection left out (§5.4, §5.5)."""
    # the search shrinks to d_model = 2, where a layer norm maps any row to +-gamma + beta, so that the residual
    # shows only through epsilon, a few eps; there it passes with d_head = 1, so the failure names §5.1
    breaks, says = '5.1', 'differs from the reference'
    options = {"attention_residual": False}
    shrunk = {"d_head": 2}


class PaddedRowsZeroed(_Wrong):
    """Outputs at padded positions set to zero, though the spec computes them like any other (§6)."""
    breaks, says = '6', "output 'y' differs from the reference"
    first = True
    options = {"zero_padded_rows": True}


class Correct(_Wrong):
    """No switch set: follows the spec (a control for the cases above)."""
