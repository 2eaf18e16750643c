"""Worked examples recomputed with PyTorch's own layers in float64.

These use the frameworks' layers, not our implementations, so they are an
independent check of the spec's numbers and of our reading of them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def torch_mha(config: Mapping[str, Any], weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """spec/mha.md through torch.nn.MultiheadAttention (needs d_head * num_heads == d_model)."""
    import torch

    D, H = config["d_model"], config["num_heads"]
    assert config["d_head"] * H == D, "torch.nn.MultiheadAttention splits d_model evenly across heads"
    w = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in weights.items()}
    layer = torch.nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64).eval()
    with torch.no_grad():
        # packed input projection: rows are output features, so the canonical (in, out) matrices transposed
        layer.in_proj_weight.copy_(torch.cat([w["W_q"].T, w["W_k"].T, w["W_v"].T]))
        layer.in_proj_bias.copy_(torch.cat([w["b_q"], w["b_k"], w["b_v"]]))
        layer.out_proj.weight.copy_(w["W_o"].T)
        layer.out_proj.bias.copy_(w["b_o"])
        q, k, v = (torch.tensor(np.asarray(inputs[n], dtype=np.float64)) for n in ("query", "key", "value"))
        mask = inputs.get("attention_mask")
        padding = None
        if mask is not None:  # spec (B, 1, Lk), True = attend -> torch key_padding_mask (B, Lk), True = ignore
            padding = ~torch.tensor(np.asarray(mask, dtype=bool))[:, 0, :]
        out, attn = layer(q, k, v, key_padding_mask=padding, need_weights=True, average_attn_weights=False)
    return {"output": out.numpy(), "attention_weights": attn.numpy()}
