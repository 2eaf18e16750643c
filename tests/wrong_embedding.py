"""Deliberately wrong implementations of spec/embedding.md, loaded through the plug-in interface.

Each one makes a mistake found in real code: a layout used by another code
base (spec/embedding.md §9), a convention read the other way round, or a step
left out. The harness must reject every one of them in float32;
tests/test_embedding.py checks that it does and what it reports.
"""

from __future__ import annotations


import numpy as np

from wrong_base import Switchable

BASE = 10000.0


def _sinusoids(T, d_model, dtype, *, layout="interleaved", first_position=0, base=BASE):
    """The table of §6.5 with one switch per mistake; the defaults are the spec."""
    pos = np.arange(first_position, first_position + T, dtype=dtype)[:, None]  # (T, 1)
    if layout == "by_column":  # exponent j / d_model for column j instead of 2*floor(j/2) / d_model
        angle = pos / base ** (np.arange(d_model, dtype=dtype) / d_model)  # (T, d_model)
        PE = np.where(np.arange(d_model) % 2 == 0, np.sin(angle), np.cos(angle))
        return PE.astype(dtype)
    two_i = np.arange(0, d_model, 2, dtype=dtype)  # (ceil(d_model/2),)
    angle = pos / base ** (two_i / d_model)  # (T, ceil(d_model/2))
    sin, cos = np.sin(angle), np.cos(angle)
    if layout == "concatenated":  # [sin ..., cos ...], the last cosine dropped when d_model is odd
        return np.concatenate([sin, cos], axis=1)[:, :d_model].astype(dtype)
    if layout == "swapped":  # cosine in the even columns, sine in the odd ones
        sin, cos = cos, sin
    return np.stack([sin, cos], axis=-1).reshape(T, -1)[:, :d_model].astype(dtype)


def _embed(config, weights, tokens, *, layout="interleaved", scale="tokens", first_position=0,
           zero_padding_row=False, mask="real", base=BASE):
    """spec/embedding.md §6 and §7 with one switch per mistake; the defaults are the spec."""
    E, P = weights["E"], weights["P"]
    dtype = E.dtype
    B, T = tokens.shape
    d_model = config["d_model"]
    if zero_padding_row:  # E[0] taken as zero, as nn.Embedding(padding_idx=0) initialises it
        E = E.copy()
        E[0] = 0
    emb = E[tokens]  # (B, T, d_model)
    if config["positional"] == "learned":
        PE = P[first_position:first_position + T]  # (T, d_model)
    else:
        PE = _sinusoids(T, d_model, dtype, layout=layout, first_position=first_position, base=base)
    s = np.sqrt(dtype.type(d_model)) if config["scale"] else dtype.type(1)
    if scale == "tokens":
        x = emb * s + PE
    elif scale == "none":
        x = emb + PE
    else:  # "both": the sum scaled, positions included
        x = (emb + PE) * s
    padding_mask = tokens != 0 if mask == "real" else tokens == 0
    return {"x": x.astype(dtype), "padding_mask": padding_mask}


#: What every shrunk counterexample of these mistakes shows (a mistake's `shrunk` adds to it or overrides it).
SHRUNK = {"B": 1, "scale_exp": 0}


class _Wrong(Switchable):
    """A NumPy implementation whose forward pass is `_embed` with some switches set."""

    component = "embedding"

    def forward(self, config, weights, inputs):
        return _embed(config, weights, inputs["tokens"], **self.options)


class ConcatenatedHalves(_Wrong):
    """All sines, then all cosines, as tensor2tensor and fairseq lay them out (§6.5, §9)."""
    breaks, says = '6.5', "output 'x' differs from the reference"
    options = {"layout": "concatenated"}


class SwappedSinCos(_Wrong):
    """Cosine in the even columns and sine in the odd ones (§6.5)."""
    breaks, says = '6.5', "output 'x' differs from the reference"
    options = {"layout": "swapped"}


class ExponentByColumn(_Wrong):
    """Column j uses the exponent j / d_model instead of 2 * floor(j / 2) / d_model (§6.5)."""
    breaks, says = '6.5', "output 'x' differs from the reference"
    options = {"layout": "by_column"}


class MissingScale(_Wrong):
    """Never multiplies by sqrt(d_model), whatever `scale` says (§6.2)."""
    breaks, says = '6.2', "output 'x' differs from the reference"
    options = {"scale": "none"}


class ScaledPositions(_Wrong):
    """Multiplies the sum, positions included, by sqrt(d_model) (§6.2, §6.6)."""
    breaks, says = '6.2', "output 'x' differs from the reference"
    options = {"scale": "both"}


class PositionsFromOne(_Wrong):
    """Counts positions from 1, as fairseq's make_positions does for padding_idx = 0 (§6.3)."""
    breaks, says = '6.3', "output 'x' differs from the reference"
    options = {"first_position": 1}


class InvertedMask(_Wrong):
    """Returns True at padding, as a mask of positions to ignore (§7.1)."""
    breaks, says = '7.1', "output 'padding_mask' differs at index (0, 0): got False, reference True"
    options = {"mask": "padding"}


class ZeroPaddingRow(_Wrong):
    """Embeds the padding id as zeros instead of with row 0 of E (§7.2)."""
    breaks, says = '7.2', "output 'x' differs from the reference"
    first = True
    options = {"zero_padding_row": True}


class FloatMask(_Wrong):
    """Returns the mask as 1.0 / 0.0 in the float dtype, as TensorFlow tutorials build masks (§4, §9)."""
    breaks, says = '4', "output 'padding_mask' has dtype float32, expected bool"

    def forward(self, config, weights, inputs):
        out = super().forward(config, weights, inputs)
        return {**out, "padding_mask": out["padding_mask"].astype(weights["E"].dtype)}


class Correct(_Wrong):
    """No switch set: follows the spec (a control for the cases above)."""
