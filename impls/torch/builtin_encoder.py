"""PyTorch's own encoder layer as implementations of spec/encoder_block.md.

Adapters, not implementations: each builds torch.nn.TransformerEncoderLayer
from the layer parameters, copies the canonical weights into it and negates
the padding mask, so the harness checks what PyTorch itself computes. Section
numbers refer to spec/encoder_block.md.

| spec parameter | torch.nn.TransformerEncoderLayer argument |
|----------------|-------------------------------------------|
| `d_model`      | `d_model`                                 |
| `num_heads`    | `nhead` (`d_head = d_model / nhead`)      |
| `d_ff`         | `dim_feedforward`                         |
| `activation`   | `activation`, `"relu"` or `"gelu"`; the string `"gelu"` is `F.gelu`, the exact erf form (§2) |
| `norm`         | `norm_first`: post is False, pre is True (§5.4, §5.5) |
| `epsilon`      | `layer_norm_eps`, both layer norms (§5.3)  |
| `dropout`      | `dropout`; the module is in eval mode (§7) |

and always `batch_first=True`, `bias=True`. The layer has three code paths
at inference, and each is registered under its own name:

- `torch.nn.TransformerEncoderLayer`: the layer as it is called at inference
  (eval mode, no grad). With an even `num_heads` it takes its fused "fast
  path", `torch._transformer_encoder_layer_fwd` (torch 2.13.0; its other
  conditions hold for every configuration here); with an odd one it cannot,
  and runs the ordinary path below.
- `torch.nn.TransformerEncoderLayer[fastpath=False]`: the ordinary path, the
  sub-modules one after another, with the fast paths switched off through
  `torch.backends.mha.set_fastpath_enabled(False)` for the call (restored
  after it).
- `torch.nn.TransformerEncoder[nested]`: the layer inside a one-layer
  `torch.nn.TransformerEncoder(enable_nested_tensor=True)`, which, given a
  padding mask, packs the real tokens of each sequence into a nested tensor,
  runs the fast path on it and pads the result back with zeros. It does so
  only for post-norm layers with an even `num_heads`; `supports` turns the
  other configurations away, since they would run one of the paths above.

None of them returns the attention weights, so only `y` is compared
(`outputs`), and all split `d_model` evenly across the heads, so a
configuration with `num_heads * d_head != d_model` is skipped (`supports`).

A sequence with no real token at all, which §6 leaves out of the harness's
draws, comes out as NaN on the fast path and as zeros on the nested path,
while the ordinary path computes it as mha §7.4 says; see
tests/test_builtin_encoder.py.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from impls import FrameworkLayer
from impls.torch import TorchImplementation, to_tensor


@contextlib.contextmanager
def fastpath(enabled: bool) -> Iterator[None]:
    """torch.backends.mha's fast-path switch set for a block and put back as it was."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def encoder_layer(config: Mapping[str, Any]) -> nn.TransformerEncoderLayer:
    """torch.nn.TransformerEncoderLayer with the spec's layer parameters (the table above)."""
    return nn.TransformerEncoderLayer(config["d_model"], config["num_heads"], dim_feedforward=config["d_ff"],
                                      dropout=config["dropout"], activation=config["activation"],
                                      layer_norm_eps=config["epsilon"], batch_first=True,
                                      norm_first=config["norm"] == "pre", bias=True)


class EncoderLayerAdapter(nn.Module):
    """torch.nn.TransformerEncoderLayer behind the spec's call signature and mask convention."""

    def __init__(self, config: Mapping[str, Any], *, fastpath: bool = True):
        super().__init__()
        self.layer = encoder_layer(config)
        self.fastpath = fastpath

    def forward(self, x, padding_mask=None):  # (B, T, d_model), (B, T) True = real token
        ignore = None if padding_mask is None else ~padding_mask  # (B, T), torch: True = padding (§6)
        with fastpath(self.fastpath):
            return self.layer(x, src_key_padding_mask=ignore)  # (B, T, d_model)


class NestedEncoderAdapter(nn.Module):
    """A one-layer torch.nn.TransformerEncoder, which runs a padded batch as a nested tensor."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        self.encoder = nn.TransformerEncoder(encoder_layer(config), num_layers=1, enable_nested_tensor=True)

    @property
    def layer(self) -> nn.TransformerEncoderLayer:
        return self.encoder.layers[0]  # a copy of the layer passed in: the one whose weights count

    def forward(self, x, padding_mask=None):  # (B, T, d_model), (B, T) True = real token
        ignore = None if padding_mask is None else ~padding_mask  # (B, T), torch: True = padding (§6)
        with warnings.catch_warnings():  # said on every call: the nested-tensor API is a prototype
            warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
            return self.encoder(x, src_key_padding_mask=ignore)  # (B, T, d_model)


def load_encoder_layer(module: EncoderLayerAdapter | NestedEncoderAdapter, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) weights -> torch.nn.TransformerEncoderLayer's (out, in) layout.

    | torch parameter              | canonical                             |
    |------------------------------|---------------------------------------|
    | `self_attn.in_proj_weight`   | `[W_q^T; W_k^T; W_v^T]`, rows stacked |
    | `self_attn.in_proj_bias`     | `[b_q; b_k; b_v]`                     |
    | `self_attn.out_proj.weight`  | `W_o^T`                               |
    | `self_attn.out_proj.bias`    | `b_o`                                 |
    | `linear1.weight`, `.bias`    | `W_1^T`, `b_1`                        |
    | `linear2.weight`, `.bias`    | `W_2^T`, `b_2`                        |
    | `norm1.weight`, `.bias`      | `gamma_1`, `beta_1` (`LN_1`)          |
    | `norm2.weight`, `.bias`      | `gamma_2`, `beta_2` (`LN_2`)          |

    Heads are contiguous blocks of d_head output rows in both layouts (§5.1,
    mha §6.2). `norm1` is the norm around the attention and `norm2` the one
    around the feed-forward network in both arrangements, as `LN_1` and `LN_2`.
    """
    layer = module.layer
    attention = layer.self_attn
    w = {name: to_tensor(weights[name].T if name.startswith("W_") else weights[name])
         for name in weights}  # (out, in) matrices, vectors as they are
    with torch.no_grad():
        attention.in_proj_weight.copy_(torch.cat([w["W_q"], w["W_k"], w["W_v"]]))  # (3 * d_model, d_model)
        attention.in_proj_bias.copy_(torch.cat([w["b_q"], w["b_k"], w["b_v"]]))  # (3 * d_model,)
        for parameter, name in ((attention.out_proj.weight, "W_o"), (attention.out_proj.bias, "b_o"),
                                (layer.linear1.weight, "W_1"), (layer.linear1.bias, "b_1"),
                                (layer.linear2.weight, "W_2"), (layer.linear2.bias, "b_2"),
                                (layer.norm1.weight, "gamma_1"), (layer.norm1.bias, "beta_1"),
                                (layer.norm2.weight, "gamma_2"), (layer.norm2.bias, "beta_2")):
            parameter.copy_(w[name])


class _Builtin(FrameworkLayer, TorchImplementation):
    """What the adapters share: `y` only, d_model split evenly across the heads."""

    component = "encoder_block"
    outputs = ("y",)
    load_canonical = staticmethod(load_encoder_layer)

    def supports(self, config: Mapping[str, Any]) -> str | None:
        if config["num_heads"] * config["d_head"] != config["d_model"]:
            return "num_heads * d_head != d_model (it splits d_model evenly across the heads)"
        return None


class TransformerEncoderLayer(_Builtin):
    name = "torch.nn.TransformerEncoderLayer"

    def module(self, config: Mapping[str, Any]) -> EncoderLayerAdapter:
        return EncoderLayerAdapter(config, fastpath=True)


class TransformerEncoderLayerNoFastpath(_Builtin):
    name = "torch.nn.TransformerEncoderLayer[fastpath=False]"

    def module(self, config: Mapping[str, Any]) -> EncoderLayerAdapter:
        return EncoderLayerAdapter(config, fastpath=False)


class NestedTransformerEncoder(_Builtin):
    name = "torch.nn.TransformerEncoder[nested]"

    def supports(self, config: Mapping[str, Any]) -> str | None:
        reason = super().supports(config)
        if reason is None and config["norm"] != "post":
            reason = "pre-norm (it uses nested tensors only for post-norm layers)"
        if reason is None and config["num_heads"] % 2:
            reason = "an odd num_heads (it uses nested tensors only for an even num_heads)"
        return reason

    def module(self, config: Mapping[str, Any]) -> NestedEncoderAdapter:
        return NestedEncoderAdapter(config)
