"""The Transformer text classifier as a torch.nn.Module, composed from our embedding and encoder block,
written from spec/text_classifier.md.

Nothing of the parts is rewritten: the embedding is impls/torch/embedding.py
and each block impls/torch/encoder_block.py. What is the model's own is the
stack sharing one padding mask, the pooling over real tokens and the head.
Section numbers refer to spec/text_classifier.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls.torch import embedding, encoder_block, to_tensor, TorchImplementation

POOLINGS, HEADS = ("max", "mean"), ("sigmoid", "none")


def masked_pool(h: torch.Tensor, real: torch.Tensor, how: str) -> torch.Tensor:
    """§5.3: (B, T, d_model) -> (B, d_model) over the real tokens only (every sequence has one at least)."""
    keep = real.unsqueeze(-1)  # (B, T, 1)
    if how == "max":
        return h.masked_fill(~keep, float("-inf")).amax(dim=1)
    return (h * keep).sum(dim=1) / keep.sum(dim=1).to(h.dtype)  # divided by the real tokens, not by T


class TextClassifier(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, max_len: int, positional: str, num_heads: int, d_head: int,
                 d_ff: int, epsilon: float, num_layers: int, pooling: str, head: str, num_classes: int,
                 dropout: float = 0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.pooling, self.head = pooling, head
        self.embedding = embedding.TokenAndPositionEmbedding(vocab_size, d_model, max_len, positional)  # §5.1
        self.blocks = nn.ModuleList(encoder_block.EncoderBlock(d_model, num_heads, d_head, d_ff, "relu", "post",
                                                               epsilon, dropout) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)  # before the head (§6)
        self.classifier = nn.Linear(d_model, num_classes)

    def forward(self, tokens):  # (B, T) int64
        x, real = self.embedding(tokens)  # (B, T, d_model), (B, T) True = real token
        for block in self.blocks:  # §5.2: the same mask to every block
            x, _ = block(x, real)
        pooled = masked_pool(x, real, self.pooling)  # (B, d_model)
        z = self.classifier(self.dropout(pooled))  # (B, num_classes), §5.4
        return (torch.sigmoid(z) if self.head == "sigmoid" else z), pooled


def load_canonical(module: TextClassifier, weights: Mapping[str, np.ndarray]) -> None:
    """The embedding's and each block's own converters (block l reads its weights without the `_l`, §3)."""
    embedding.load_canonical(module.embedding, weights)
    for l, block in enumerate(module.blocks):
        suffix = f"_{l}"
        encoder_block.load_canonical(block, {k[: -len(suffix)]: v for k, v in weights.items() if k.endswith(suffix)})
    with torch.no_grad():
        module.classifier.weight.copy_(to_tensor(weights["W_c"]).T)  # (num_classes, d_model): nn.Linear's layout
        module.classifier.bias.copy_(to_tensor(weights["b_c"]))


def module_from(config: Mapping[str, Any]) -> TextClassifier:
    """The model of a layer config (the spec's layer parameters)."""
    return TextClassifier(config["vocab_size"], config["d_model"], config["max_len"], config["positional"],
                          config["num_heads"], config["d_head"], config["d_ff"], config["epsilon"],
                          config["num_layers"], config["pooling"], config["head"], config["num_classes"],
                          config["dropout"])


class Implementation(TorchImplementation):
    component = "text_classifier"
    load_canonical = staticmethod(load_canonical)

    def module(self, config: Mapping[str, Any]) -> TextClassifier:
        return module_from(config)
