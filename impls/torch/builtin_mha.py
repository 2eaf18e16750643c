"""PyTorch's own attention layers as implementations of spec/mha.md.

These are adapters, not implementations: each builds a framework layer,
copies the canonical weights into it and translates the mask, so the harness
checks what PyTorch itself computes. The mapping is the part a user porting
weights needs, so it is kept short and explicit. Section numbers refer to
spec/mha.md.

- `torch.nn.MultiheadAttention` with need_weights=True and
  average_attn_weights=False: both outputs, per head.
- `torch.nn.MultiheadAttention[need_weights=False]`: another code path inside
  the layer (it calls scaled_dot_product_attention); it returns no weights,
  so it declares `outputs = ("output",)` and only that is compared.
- `torch.sdpa`: our projections (§6.1, §6.2, §6.6) around
  `torch.nn.functional.scaled_dot_product_attention` for §6.3-§6.5; it too
  returns the output only.

torch.nn.MultiheadAttention splits `d_model` evenly across its heads, so it
can express only configurations with `num_heads * d_head == d_model`; for the
others `supports` gives the reason and the harness skips those examples.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from impls import FrameworkLayer
from impls.torch import TorchImplementation, to_tensor
from impls.torch.mha import MultiHeadAttention, load_canonical as load_projections


class MultiheadAttentionAdapter(nn.Module):
    """torch.nn.MultiheadAttention behind the spec's call signature and mask convention."""

    def __init__(self, d_model: int, num_heads: int, *, need_weights: bool):
        super().__init__()
        # dropout 0: conformance is judged at inference (§8), and the module is in eval mode anyway
        self.layer = nn.MultiheadAttention(d_model, num_heads, dropout=0.0, bias=True, batch_first=True)
        self.num_heads, self.need_weights = num_heads, need_weights

    def forward(self, query, key, value, attention_mask=None):
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        attn_mask = None
        if attention_mask is not None:
            # spec §7.1: True = attend; torch.nn.MultiheadAttention's bool attn_mask: True = NOT allowed.
            # It takes (Lq, Lk) or (B*H, Lq, Lk), batch-major: entry b*H + h is batch b, head h.
            blocked = ~attention_mask.expand(B, Lq, Lk)  # (B, Lq, Lk), §7.2
            attn_mask = blocked.repeat_interleave(self.num_heads, dim=0)  # (B*H, Lq, Lk)
        output, weights = self.layer(query, key, value, attn_mask=attn_mask, need_weights=self.need_weights,
                                     average_attn_weights=False)
        return (output, weights) if self.need_weights else output  # (B, Lq, d_model), (B, H, Lq, Lk)


def load_multihead_attention(module: MultiheadAttentionAdapter, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) weights -> torch.nn.MultiheadAttention's packed (out, in) layout.

    | torch parameter          | canonical                          |
    |--------------------------|------------------------------------|
    | `in_proj_weight`         | `[W_q^T; W_k^T; W_v^T]`, rows stacked |
    | `in_proj_bias`           | `[b_q; b_k; b_v]`                  |
    | `out_proj.weight`        | `W_o^T`                            |
    | `out_proj.bias`          | `b_o`                              |

    Heads are contiguous blocks of d_head output rows in both layouts (§6.2),
    so no reordering within a matrix is needed.
    """
    layer = module.layer
    with torch.no_grad():
        layer.in_proj_weight.copy_(to_tensor(np.concatenate([weights["W_q"].T, weights["W_k"].T, weights["W_v"].T])))
        layer.in_proj_bias.copy_(to_tensor(np.concatenate([weights["b_q"], weights["b_k"], weights["b_v"]])))
        layer.out_proj.weight.copy_(to_tensor(weights["W_o"].T))
        layer.out_proj.bias.copy_(to_tensor(weights["b_o"]))


class SDPAttention(MultiHeadAttention):
    """Our projections (impls/torch/mha.py) with scaled_dot_product_attention as the core."""

    def forward(self, query, key, value, attention_mask=None):
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        q, k, v = self.heads(query, key, value)  # (B, H, L, d_head)

        mask = None
        if attention_mask is not None:  # SDPA's bool mask: True = attend, as in the spec (§7.1)
            mask = attention_mask.expand(B, Lq, Lk).unsqueeze(1)  # (B, 1, Lq, Lk), broadcast over heads
        # scale defaults to 1/sqrt(d_head), the last dimension of q (§6.3)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)  # (B, H, Lq, d_head)
        context = context.transpose(1, 2).reshape(B, Lq, -1)  # (B, Lq, H*d_head), §6.5
        return self.out_proj(context)  # (B, Lq, d_model), §6.6


class _Builtin(FrameworkLayer, TorchImplementation):
    """What the adapters share: the component."""

    component = "mha"


class MultiheadAttentionWeights(_Builtin):
    name = "torch.nn.MultiheadAttention"
    need_weights = True
    load_canonical = staticmethod(load_multihead_attention)

    def supports(self, config: Mapping[str, Any]) -> str | None:
        if config["num_heads"] * config["d_head"] != config["d_model"]:
            return "num_heads * d_head != d_model (it splits d_model evenly across the heads)"
        return None

    def module(self, config: Mapping[str, Any]) -> MultiheadAttentionAdapter:
        return MultiheadAttentionAdapter(config["d_model"], config["num_heads"], need_weights=self.need_weights)


class MultiheadAttentionNoWeights(MultiheadAttentionWeights):
    name = "torch.nn.MultiheadAttention[need_weights=False]"
    outputs = ("output",)
    need_weights = False


class SDPA(_Builtin):
    name = "torch.sdpa"
    outputs = ("output",)
    load_canonical = staticmethod(load_projections)

    def module(self, config: Mapping[str, Any]) -> SDPAttention:
        return SDPAttention(config["d_model"], config["num_heads"], config["d_head"])
