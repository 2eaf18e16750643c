"""Token embedding with positional encoding as a torch.nn.Module, written from spec/embedding.md.

The token lookup is nn.Embedding (a plain table lookup; no padding_idx, so
padding ids are embedded like any other, §7.2). The sinusoidal table is
computed in forward in the dtype of the embedding table, so a float64 module
gets a float64 table. Section numbers refer to spec/embedding.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls.torch import to_tensor, TorchImplementation

BASE = 10000.0  # §6.5


def sinusoidal_table(T: int, d_model: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """§6.5: PE[pos, 2i] = sin(pos / BASE**(2i/d_model)), PE[pos, 2i+1] = cos(the same angle)."""
    pos = torch.arange(T, dtype=dtype, device=device)  # (T,)
    two_i = torch.arange(0, d_model, 2, dtype=dtype, device=device)  # (ceil(d_model/2),)
    angle = pos[:, None] / torch.pow(BASE, two_i / d_model)  # (T, ceil(d_model/2))
    pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)  # (T, ceil(d_model/2), 2)
    return pe.reshape(T, -1)[:, :d_model]  # (T, d_model), interleaved; odd d_model drops the last cosine


class TokenAndPositionEmbedding(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, max_len: int, positional: str = "learned",
                 scale: bool = False):
        super().__init__()
        if positional not in ("learned", "sinusoidal"):
            raise ValueError(f"positional must be 'learned' or 'sinusoidal', got {positional!r}")
        self.d_model, self.max_len, self.positional, self.scale = d_model, max_len, positional, scale
        self.token_embedding = nn.Embedding(vocab_size, d_model)  # E, §6.1
        if positional == "learned":  # P, §6.4; a sinusoidal module has no positional weights
            self.position_embedding = nn.Parameter(torch.randn(max_len, d_model) * 0.5)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = tokens.shape
        if T > self.max_len:
            raise ValueError(f"sequence length {T} exceeds max_len {self.max_len} (§7.3)")
        x = self.token_embedding(tokens)  # (B, T, d_model)
        if self.scale:
            x = x * math.sqrt(self.d_model)  # §6.2, before the positions are added
        if self.positional == "learned":
            pe = self.position_embedding[:T]  # (T, d_model), §6.4
        else:
            pe = sinusoidal_table(T, self.d_model, x.dtype, x.device)  # (T, d_model), §6.5
        return x + pe, tokens != 0  # (B, T, d_model), (B, T) with True = real token (§6.6, §7.1)


def load_canonical(module: TokenAndPositionEmbedding, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical E is nn.Embedding's weight as it is; P is copied only for learned positions (§3)."""
    with torch.no_grad():
        module.token_embedding.weight.copy_(to_tensor(weights["E"]))
        if module.positional == "learned":
            module.position_embedding.copy_(to_tensor(weights["P"]))


class Implementation(TorchImplementation):
    component = "embedding"
    load_canonical = staticmethod(load_canonical)

    def module(self, config: Mapping[str, Any]) -> TokenAndPositionEmbedding:
        return TokenAndPositionEmbedding(config["vocab_size"], config["d_model"], config["max_len"],
                                         config["positional"], config["scale"])
