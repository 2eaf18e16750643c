"""Position-wise feed-forward network as a torch.nn.Module, written from spec/ffn.md.

Section numbers refer to spec/ffn.md. torch.nn.functional.gelu computes the
exact (erf) GELU by default and the tanh approximation with approximate="tanh"
(§6.4).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from impls.torch import to_tensor, TorchImplementation

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": lambda h: F.gelu(h, approximate="none"),  # §6.2, erf form
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),  # §6.3
}


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)  # after the activation (§7)

    def forward(self, x):  # (B, T, d_model)
        a = ACTIVATIONS[self.activation](self.linear1(x))  # (B, T, d_ff), §5.1
        return self.linear2(self.dropout(a))  # (B, T, d_model), §5.2


def load_canonical(module: FeedForward, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) matrices -> nn.Linear's (out, in) weight: transpose; biases as they are."""
    with torch.no_grad():
        for layer, (w, b) in ((module.linear1, ("W_1", "b_1")), (module.linear2, ("W_2", "b_2"))):
            layer.weight.copy_(to_tensor(weights[w].T))
            layer.bias.copy_(to_tensor(weights[b]))


class Implementation(TorchImplementation):
    component = "ffn"
    load_canonical = staticmethod(load_canonical)

    def module(self, config: Mapping[str, Any]) -> FeedForward:
        return FeedForward(config["d_model"], config["d_ff"], config["activation"], config["dropout"])
