"""Multi-head attention as a torch.nn.Module, written from spec/mha.md.

Uses torch operations only (not torch.nn.MultiheadAttention, which is tested
as a framework layer of its own). Section numbers refer to spec/mha.md.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls.torch import to_tensor, TorchImplementation


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_head: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads, self.d_head = num_heads, d_head
        self.q_proj = nn.Linear(d_model, num_heads * d_head)
        self.k_proj = nn.Linear(d_model, num_heads * d_head)
        self.v_proj = nn.Linear(d_model, num_heads * d_head)
        self.out_proj = nn.Linear(num_heads * d_head, d_model)
        self.dropout = nn.Dropout(dropout)  # on the attention weights (§8)

    def heads(self, query, key, value):
        """§6.1, §6.2: project, then (B, L, H*d_head) -> (B, H, L, d_head)."""
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        H, d_head = self.num_heads, self.d_head
        q = self.q_proj(query).view(B, Lq, H, d_head).transpose(1, 2)
        k = self.k_proj(key).view(B, Lk, H, d_head).transpose(1, 2)
        v = self.v_proj(value).view(B, Lk, H, d_head).transpose(1, 2)
        return q, k, v

    def forward(self, query, key, value, attention_mask=None):
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        H, d_head = self.num_heads, self.d_head
        q, k, v = self.heads(query, key, value)

        scores = q @ k.transpose(-2, -1) / math.sqrt(d_head)  # (B, H, Lq, Lk), §6.3
        if attention_mask is None:
            weights = torch.softmax(scores, dim=-1)
        else:
            mask = attention_mask.expand(B, Lq, Lk).unsqueeze(1)  # (B, 1, Lq, Lk), §7.2
            weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
            weights = weights.masked_fill(~mask, 0.0)  # rows with no visible key: NaN -> 0 (§7.4)
        weights = self.dropout(weights)

        context = (weights @ v).transpose(1, 2).reshape(B, Lq, H * d_head)  # (B, Lq, H*d_head), §6.5
        return self.out_proj(context), weights  # (B, Lq, d_model), (B, H, Lq, Lk)


def load_canonical(module: MultiHeadAttention, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) matrices -> nn.Linear's (out, in) weight: transpose; biases as they are."""
    table = {"q_proj": ("W_q", "b_q"), "k_proj": ("W_k", "b_k"),
             "v_proj": ("W_v", "b_v"), "out_proj": ("W_o", "b_o")}
    with torch.no_grad():
        for layer_name, (w, b) in table.items():
            layer = getattr(module, layer_name)
            layer.weight.copy_(to_tensor(weights[w].T))
            layer.bias.copy_(to_tensor(weights[b]))


class Implementation(TorchImplementation):
    component = "mha"
    load_canonical = staticmethod(load_canonical)

    def module(self, config: Mapping[str, Any]) -> MultiHeadAttention:
        return MultiHeadAttention(config["d_model"], config["num_heads"], config["d_head"], config["dropout"])
