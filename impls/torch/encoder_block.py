"""Transformer encoder block as a torch.nn.Module, written from spec/encoder_block.md.

Built from this repository's attention (impls/torch/mha.py) and feed-forward
network (impls/torch/ffn.py) with nn.LayerNorm, not from
torch.nn.TransformerEncoderLayer, which is tested as a framework layer of its
own. Section numbers refer to spec/encoder_block.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls.torch import ffn, mha, to_tensor, TorchImplementation

NORMS = ("post", "pre")


class EncoderBlock(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_head: int, d_ff: int, activation: str = "relu",
                 norm: str = "post", epsilon: float = 1e-5, dropout: float = 0.0):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.norm = norm
        self.attention = mha.MultiHeadAttention(d_model, num_heads, d_head, dropout)
        self.ffn = ffn.FeedForward(d_model, d_ff, activation, dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=epsilon)  # biased variance, as §5.3
        self.norm2 = nn.LayerNorm(d_model, eps=epsilon)
        self.dropout1 = nn.Dropout(dropout)  # on each sub-layer's output (§7)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, x, padding_mask=None):  # (B, T, d_model), (B, T) True = real token
        mask = None if padding_mask is None else padding_mask.unsqueeze(1)  # (B, 1, T), §6

        def attend(v):  # §5.1
            a, weights = self.attention(v, v, v, mask)
            return self.dropout1(a), weights

        if self.norm == "post":  # §5.4
            a, weights = attend(x)
            h = self.norm1(x + a)
            y = self.norm2(h + self.dropout2(self.ffn(h)))
        else:  # §5.5
            a, weights = attend(self.norm1(x))
            h = x + a
            y = h + self.dropout2(self.ffn(self.norm2(h)))
        return y, weights  # (B, T, d_model), (B, H, T, T)


def load_canonical(module: EncoderBlock, weights: Mapping[str, np.ndarray]) -> None:
    """The attention's and feed-forward network's own converters; layer-norm vectors as they are."""
    mha.load_canonical(module.attention, weights)
    ffn.load_canonical(module.ffn, weights)
    with torch.no_grad():
        for norm, i in ((module.norm1, 1), (module.norm2, 2)):
            norm.weight.copy_(to_tensor(weights[f"gamma_{i}"]))
            norm.bias.copy_(to_tensor(weights[f"beta_{i}"]))


class Implementation(TorchImplementation):
    component = "encoder_block"
    load_canonical = staticmethod(load_canonical)

    def module(self, config: Mapping[str, Any]) -> EncoderBlock:
        return EncoderBlock(config["d_model"], config["num_heads"], config["d_head"], config["d_ff"],
                            config["activation"], config["norm"], config["epsilon"], config["dropout"])
