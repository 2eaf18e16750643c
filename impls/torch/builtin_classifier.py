"""PyTorch's own encoder stack in the text classifier of spec/text_classifier.md, as users build it.

Adapters, not implementations: torch.nn.Embedding, torch.nn.TransformerEncoder
(`num_layers` copies of torch.nn.TransformerEncoderLayer) and torch.nn.Linear,
with the pooling over the real tokens written out as a user must (PyTorch has
no masked pooling), so the harness checks what PyTorch's layers compute in
the model. Section numbers refer to spec/text_classifier.md.

    x = token_embedding(tokens) + positions[:T]                    (B, T, d_model), §5.1
    x = TransformerEncoder(layer, L)(x, src_key_padding_mask=~real)   §5.2, torch: True = padding
    pooled = max or mean of x over the real tokens                 (B, d_model), §5.3
    y = sigmoid(head(pooled)) or head(pooled)                      (B, num_classes), §5.4

Each layer is built as the encoder_block adapters build theirs
(impls/torch/builtin_encoder.py): post-norm, relu, `batch_first`, the
configuration's epsilon and dropout; each splits `d_model` evenly across its
heads, so `num_heads * d_head != d_model` is skipped (`supports`).

The encoder is left at its default, `enable_nested_tensor=True`, as a user
gets it. In eval mode under no_grad, with an even `num_heads`, it packs the
real tokens into a nested tensor, runs each layer's fused fast path and pads
the result back with zeros, so padded rows of `x` are 0 (the ledger's
torch-nested-encoder-padded-positions, encoder_block §6); with an odd
`num_heads` it runs the ordinary path. The pooling reads the real tokens
only, so those zeros reach neither `pooled` nor `y`: both variants follow the
spec, with no ledger entry (tests/test_text_classifier.py).

| canonical | torch                                                         |
|-----------|---------------------------------------------------------------|
| `E`       | `token_embedding.weight`, as it is                            |
| `P`       | `positions.weight` (learned; sinusoids are a buffer)          |
| `*_{l}`   | `encoder.layers[l]`, the encoder_block adapters' converter    |
| `W_c`     | `head.weight`, transposed: nn.Linear is (out, in)             |
| `b_c`     | `head.bias`                                                   |

"torch.nn.TransformerEncoder[classifier, state_dict]" copies the weights into
the module, saves its `state_dict()` with torch.save to a buffer, loads that
into a freshly built module (`torch.load(weights_only=True)`,
`load_state_dict`) and calls the fresh one.
"""

from __future__ import annotations

import io
import types
import warnings
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls import FrameworkLayer
from impls.torch import ModuleInstance, TorchImplementation, to_tensor
from impls.torch.builtin_encoder import encoder_layer, load_encoder_layer
from impls.torch.text_classifier import masked_pool

BASE = 10000.0  # embedding §6.5


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """embedding §6.5 in float64: sine in the even columns, cosine of the same angle in the odd ones."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (max_len, 1)
    two_i = (torch.arange(d_model) // 2 * 2).to(torch.float64)  # (d_model,): 0, 0, 2, 2, 4, ...
    angle = pos / BASE ** (two_i / d_model)  # (max_len, d_model)
    return torch.where(torch.arange(d_model) % 2 == 0, torch.sin(angle), torch.cos(angle))


class EncoderClassifier(nn.Module):
    """The model of the module docstring; returns (y, pooled)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        d_model = config["d_model"]
        self.pooling, self.sigmoid = config["pooling"], config["head"] == "sigmoid"
        self.learned = config["positional"] == "learned"
        self.token_embedding = nn.Embedding(config["vocab_size"], d_model)  # E
        if self.learned:
            self.positions = nn.Embedding(config["max_len"], d_model)  # P
        else:
            self.register_buffer("sinusoid", sinusoidal_table(config["max_len"], d_model))
        layer = encoder_layer({**config, "activation": "relu", "norm": "post"})
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but ..." when it cannot use them
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.encoder = nn.TransformerEncoder(layer, config["num_layers"])  # enable_nested_tensor=True
        self.dropout = nn.Dropout(config["dropout"])
        self.head = nn.Linear(d_model, config["num_classes"])

    def forward(self, tokens):  # (B, T) int64
        T = tokens.shape[1]
        real = tokens != 0  # (B, T) True = real token
        table = self.positions.weight if self.learned else self.sinusoid  # (max_len, d_model)
        x = self.token_embedding(tokens) + table[:T]  # (B, T, d_model)
        with warnings.catch_warnings():  # said on every call: the nested-tensor API is a prototype
            warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
            x = self.encoder(x, src_key_padding_mask=~real)  # (B, T, d_model)
        pooled = masked_pool(x, real, self.pooling)  # (B, d_model)
        z = self.head(self.dropout(pooled))  # (B, num_classes)
        return (torch.sigmoid(z) if self.sigmoid else z), pooled


def load_classifier(module: EncoderClassifier, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical weights into the module (the table in the module docstring)."""
    for l, layer in enumerate(module.encoder.layers):  # §3: block l's names with _l appended
        suffix = f"_{l}"
        load_encoder_layer(types.SimpleNamespace(layer=layer),
                           {k[: -len(suffix)]: v for k, v in weights.items() if k.endswith(suffix)})
    with torch.no_grad():
        module.token_embedding.weight.copy_(to_tensor(weights["E"]))
        if module.learned:
            module.positions.weight.copy_(to_tensor(weights["P"]))
        module.head.weight.copy_(to_tensor(weights["W_c"]).T)  # (num_classes, d_model)
        module.head.bias.copy_(to_tensor(weights["b_c"]))


class StateDictInstance(ModuleInstance):
    """Weights go into the module built here; the module called is a fresh one given its state_dict."""

    def __init__(self, module: EncoderClassifier, config: Mapping[str, Any], *, dtype: str, device: str):
        super().__init__(module, load_classifier, dtype=dtype, device=device)
        self.config, self.dtype = config, getattr(torch, dtype)

    def load(self, weights: Mapping[str, np.ndarray]) -> None:
        super().load(weights)
        buffer = io.BytesIO()
        torch.save(self.module.state_dict(), buffer)
        buffer.seek(0)
        fresh = EncoderClassifier(self.config).to(self.device, self.dtype).eval()
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        self.forward = self.called = fresh  # `vjp` differentiates the module called, with self.module's names


class TransformerEncoderClassifier(FrameworkLayer, TorchImplementation):
    name = "torch.nn.TransformerEncoder[classifier]"
    component = "text_classifier"
    load_canonical = staticmethod(load_classifier)

    def supports(self, config: Mapping[str, Any]) -> str | None:
        if config["num_heads"] * config["d_head"] != config["d_model"]:
            return "num_heads * d_head != d_model (it splits d_model evenly across the heads)"
        return None

    def module(self, config: Mapping[str, Any]) -> EncoderClassifier:
        return EncoderClassifier(config)


class TransformerEncoderClassifierStateDict(TransformerEncoderClassifier):
    name = "torch.nn.TransformerEncoder[classifier, state_dict]"

    def build(self, config: Mapping[str, Any], *, dtype: str, device: str, mode: str = "eager") -> StateDictInstance:
        reason = self.supports(config)
        if reason is not None:
            raise ValueError(f"{self.name}: unsupported configuration: {reason}")
        return StateDictInstance(self.module(config), config, dtype=dtype, device=device)
