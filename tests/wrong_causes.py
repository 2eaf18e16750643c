"""Porting mistakes whose failure should name its likely cause (conformance/causes.py), beside the ones of
tests/wrong_mha.py that do too (InvertedMask, TransposedOutputProjection, UniformOnFullyMaskedRow)."""

from __future__ import annotations

import numpy as np

import wrong_mha


class CausalWhenUnmasked(wrong_mha._Wrong):
    """Makes itself causal when given no mask, as attention helpers that fall back on `is_causal` do."""

    def forward(self, config, weights, inputs):
        if inputs.get("attention_mask") is None:
            Lq, Lk = inputs["query"].shape[1], inputs["key"].shape[1]
            inputs = {**inputs, "attention_mask": np.tril(np.ones((Lq, Lk), dtype=bool))}
        return wrong_mha._attention(config, weights, inputs)


class Float32Inside(wrong_mha._Wrong):
    """Computes in float32 whatever the dtype, and casts the outputs back."""

    def forward(self, config, weights, inputs):
        low = lambda group: {k: v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                             for k, v in group.items()}
        out = wrong_mha._attention(config, low(weights), low(inputs))
        return {k: v.astype(inputs["query"].dtype) for k, v in out.items()}
