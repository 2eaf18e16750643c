"""Hugging Face Transformers' attention and encoder layer as implementations of spec/mha.md and spec/encoder_block.md.

Adapters, not implementations: each builds what a Transformers model runs,
copies the canonical weights into it and turns the spec's boolean mask into
the mask Transformers builds for that attention implementation, so the harness
checks what Transformers itself computes (checked with transformers 5.24.0 and
torch 2.13.0). Section numbers name the spec of the adapter's component.

Attention (spec/mha.md). Transformers' models compute attention through
interface functions picked by `config._attn_implementation`; BERT's
BertSelfAttention calls `ALL_ATTENTION_FUNCTIONS.get_interface(impl,
eager_attention_forward)` with its own module, projected (B, H, L, d_head)
queries, keys and values, a 4-D mask, `scaling = d_head ** -0.5` and dropout
0 at inference. `TransformersAttention` is that call with BertSelfAttention's
projections around it (as separate q/k/v inputs, so cross-attention too) and
BertSelfOutput's dense output projection, and with any d_head (§2):

- `transformers.eager_attention`: `eager_attention_forward` of
  transformers.models.bert.modeling_bert. Its mask is additive: 0 where the
  key is seen, `torch.finfo(dtype).min` where not (masking_utils.eager_mask).
  It returns the weights too. A query row with every key masked gets scores
  all near `finfo.min`, whose softmax is uniform: weights 1/Lk and the mean of
  the values instead of §7.4's zeros (the ledger's entry).
- `transformers.sdpa_attention`: `sdpa_attention_forward` of
  transformers.integrations.sdpa_attention, which calls
  torch.nn.functional.scaled_dot_product_attention with a boolean mask (True
  = attend, as §7.1; masking_utils.sdpa_mask). It returns no weights
  (`outputs`). A fully masked row gets a zero context, as §7.4 says.
  Without a mask it makes the attention causal unless the module it is given
  has `is_causal` False (`getattr(module, "is_causal", True)`); our module
  sets it as BertSelfAttention does (`is_causal=False` for an encoder).

Both masks are made by Transformers' own mask factories (`eager_mask`,
`sdpa_mask`) from a mask function that reads the spec's mask, the path a
model's custom mask function takes; with no mask given both pass None, as
`create_bidirectional_mask` does for a batch without padding.

Encoder block (spec/encoder_block.md). `transformers.BertLayer` is one
layer of BertModel's encoder, post-norm, built from a BertConfig:

| spec parameter | BertConfig field                                                |
|----------------|-----------------------------------------------------------------|
| `d_model`      | `hidden_size`                                                   |
| `num_heads`    | `num_attention_heads` (`d_head = hidden_size / num_attention_heads`) |
| `d_ff`         | `intermediate_size`                                             |
| `activation`   | `hidden_act`: `"relu"`, or `"gelu"`, the erf form (`nn.functional.gelu`) |
| `norm`         | none: BertLayer is post-norm only (§5.4); pre-norm is refused   |
| `epsilon`      | `layer_norm_eps`, both layer norms (§5.3)                       |
| `dropout`      | `hidden_dropout_prob`, `attention_probs_dropout_prob`; eval mode (§7) |

(`"gelu_new"` and `"gelu_pytorch_tanh"` are the tanh form of GELU, outside
§2's domain.)

The padding mask goes through `masking_utils.create_bidirectional_mask`, as
BertModel.forward does. `transformers.BertLayer` runs the eager attention and
returns the attention weights too, caught from BertSelfAttention's output as
Transformers' `output_attentions=True` does; `transformers.BertLayer[sdpa]`
runs SDPA and returns `y` only.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertLayer
from transformers.masking_utils import create_bidirectional_mask, eager_mask, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert.modeling_bert import eager_attention_forward

from impls import FrameworkLayer
from impls.torch import TorchImplementation, to_tensor

#: Our activation names (spec/ffn.md §6) as BertConfig.hidden_act: "gelu" is the exact, erf form there too.
HIDDEN_ACT = {"relu": "relu", "gelu": "gelu"}


class TransformersAttention(nn.Module):
    """BertSelfAttention's projections, a Transformers attention interface, and an output projection.

    `attn_implementation` is "eager" or "sdpa", looked up as BertSelfAttention
    looks it up. The attributes the interfaces read (`training`, `is_causal`,
    `scaling`) are those BertSelfAttention has.
    """

    def __init__(self, d_model: int, num_heads: int, d_head: int, dropout: float, attn_implementation: str):
        super().__init__()
        self.num_heads, self.d_head = num_heads, d_head
        self.attn_implementation = attn_implementation
        self.scaling = d_head ** -0.5  # §6.3, as BertSelfAttention.scaling
        self.is_causal = False  # as BertSelfAttention in an encoder; sdpa_attention_forward defaults to True
        self.dropout = nn.Dropout(dropout)
        self.query = nn.Linear(d_model, num_heads * d_head)
        self.key = nn.Linear(d_model, num_heads * d_head)
        self.value = nn.Linear(d_model, num_heads * d_head)
        self.output = nn.Linear(num_heads * d_head, d_model)  # BertSelfOutput.dense

    def split(self, x: torch.Tensor, projection: nn.Linear) -> torch.Tensor:
        B, L, _ = x.shape
        return projection(x).view(B, L, self.num_heads, self.d_head).transpose(1, 2)  # (B, H, L, d_head), §6.2

    def transformers_mask(self, attention_mask: torch.Tensor | None, B: int, Lq: int, Lk: int,
                          dtype: torch.dtype) -> torch.Tensor | None:
        """The spec's boolean mask (§7.2's shapes) as Transformers' 4-D mask for this attention implementation."""
        if attention_mask is None:
            return None
        allowed = attention_mask.expand(B, Lq, Lk)  # (B, Lq, Lk), §7.2

        def mask_function(b, h, q, kv):  # masking_utils' index-based mask function: True = attend (§7.1)
            return allowed[b, q, kv]

        factory = eager_mask if self.attn_implementation == "eager" else sdpa_mask
        return factory(batch_size=B, q_length=Lq, kv_length=Lk, mask_function=mask_function,
                       allow_is_causal_skip=False, dtype=dtype, device=allowed.device)  # (B, 1, Lq, Lk)

    def forward(self, query, key, value, attention_mask=None):
        B, Lq, _ = query.shape
        Lk = key.shape[1]
        q, k, v = self.split(query, self.query), self.split(key, self.key), self.split(value, self.value)
        mask = self.transformers_mask(attention_mask, B, Lq, Lk, q.dtype)
        interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(self.attn_implementation,
                                                                    eager_attention_forward)
        context, weights = interface(self, q, k, v, mask, dropout=0.0 if not self.training else self.dropout.p,
                                     scaling=self.scaling)  # (B, Lq, H, d_head), (B, H, Lq, Lk) or None
        output = self.output(context.reshape(B, Lq, -1))  # (B, Lq, d_model), §6.5, §6.6
        return output if weights is None else (output, weights)


def load_attention(module: TransformersAttention, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) weights -> nn.Linear's (out, in).

    | Transformers parameter | shape                        | canonical |
    |------------------------|------------------------------|-----------|
    | `query.weight`         | (H * d_head, d_model)        | `W_q^T`   |
    | `query.bias`           | (H * d_head,)                | `b_q`     |
    | `key.*`, `value.*`     | as for the query             | `W_k^T`, `b_k`; `W_v^T`, `b_v` |
    | `output.weight`        | (d_model, H * d_head)        | `W_o^T`   |
    | `output.bias`          | (d_model,)                   | `b_o`     |

    BertSelfAttention views a projection's (H * d_head) features as
    (H, d_head), so head h owns rows h*d_head .. (h+1)*d_head - 1, the
    columns of the canonical matrix that §6.2 gives it: nothing is reordered.
    """
    with torch.no_grad():
        for linear, w, b in ((module.query, "W_q", "b_q"), (module.key, "W_k", "b_k"),
                             (module.value, "W_v", "b_v"), (module.output, "W_o", "b_o")):
            linear.weight.copy_(to_tensor(weights[w].T))
            linear.bias.copy_(to_tensor(weights[b]))


class EagerAttention(FrameworkLayer, TorchImplementation):
    """eager_attention_forward (BERT's), both outputs; every configuration of §2."""

    name = "transformers.eager_attention"
    component = "mha"
    attn_implementation = "eager"
    load_canonical = staticmethod(load_attention)

    def module(self, config: Mapping[str, Any]) -> TransformersAttention:
        return TransformersAttention(config["d_model"], config["num_heads"], config["d_head"], config["dropout"],
                                     self.attn_implementation)


class SDPAAttention(EagerAttention):
    """sdpa_attention_forward: the output only."""

    name = "transformers.sdpa_attention"
    attn_implementation = "sdpa"
    outputs = ("output",)


def bert_config(config: Mapping[str, Any], attn_implementation: str) -> BertConfig:
    """A BertConfig with the spec's layer parameters (the table in the module docstring)."""
    bert = BertConfig(hidden_size=config["d_model"], num_attention_heads=config["num_heads"],
                      intermediate_size=config["d_ff"], hidden_act=HIDDEN_ACT[config["activation"]],
                      layer_norm_eps=config["epsilon"], hidden_dropout_prob=config["dropout"],
                      attention_probs_dropout_prob=config["dropout"])
    bert._attn_implementation = attn_implementation
    return bert


class BertLayerAdapter(nn.Module):
    """transformers.BertLayer behind the spec's call signature (x, padding_mask)."""

    def __init__(self, config: Mapping[str, Any], attn_implementation: str):
        super().__init__()
        self.config = bert_config(config, attn_implementation)
        self.layer = BertLayer(self.config)

    def forward(self, x, padding_mask=None):  # (B, T, d_model), (B, T) True = real token (§6)
        # as BertModel.forward: (B, 1, T, T) additive for eager, boolean for sdpa, None without padding
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=x, attention_mask=padding_mask)
        found = []  # BertSelfAttention's (output, weights), as output_attentions=True records them
        hook = self.layer.attention.self.register_forward_hook(lambda module, args, out: found.append(out[1]))
        try:
            y = self.layer(x, mask)  # (B, T, d_model)
        finally:
            hook.remove()
        return y if found[0] is None else (y, found[0])  # weights: (B, H, T, T)


def load_bert_layer(module: BertLayerAdapter, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) weights -> BertLayer's nn.Linear (out, in) layout.

    | Transformers parameter               | shape               | canonical            |
    |--------------------------------------|---------------------|----------------------|
    | `attention.self.query.weight`, `.bias` | (d_model, d_model), (d_model,) | `W_q^T`, `b_q` |
    | `attention.self.key.weight`, `.bias`   | (d_model, d_model), (d_model,) | `W_k^T`, `b_k` |
    | `attention.self.value.weight`, `.bias` | (d_model, d_model), (d_model,) | `W_v^T`, `b_v` |
    | `attention.output.dense.weight`, `.bias` | (d_model, d_model), (d_model,) | `W_o^T`, `b_o` |
    | `attention.output.LayerNorm.weight`, `.bias` | (d_model,)    | `gamma_1`, `beta_1` (`LN_1`) |
    | `intermediate.dense.weight`, `.bias` | (d_ff, d_model), (d_ff,) | `W_1^T`, `b_1` |
    | `output.dense.weight`, `.bias`       | (d_model, d_ff), (d_model,) | `W_2^T`, `b_2` |
    | `output.LayerNorm.weight`, `.bias`   | (d_model,)          | `gamma_2`, `beta_2` (`LN_2`) |

    Heads are contiguous blocks of d_head rows, as in load_attention.
    """
    layer = module.layer
    attention = layer.attention
    with torch.no_grad():
        for parameter, name in ((attention.self.query.weight, "W_q"), (attention.self.query.bias, "b_q"),
                                (attention.self.key.weight, "W_k"), (attention.self.key.bias, "b_k"),
                                (attention.self.value.weight, "W_v"), (attention.self.value.bias, "b_v"),
                                (attention.output.dense.weight, "W_o"), (attention.output.dense.bias, "b_o"),
                                (attention.output.LayerNorm.weight, "gamma_1"),
                                (attention.output.LayerNorm.bias, "beta_1"),
                                (layer.intermediate.dense.weight, "W_1"), (layer.intermediate.dense.bias, "b_1"),
                                (layer.output.dense.weight, "W_2"), (layer.output.dense.bias, "b_2"),
                                (layer.output.LayerNorm.weight, "gamma_2"), (layer.output.LayerNorm.bias, "beta_2")):
            w = weights[name]
            parameter.copy_(to_tensor(w.T if name.startswith("W_") else w))


class BertLayerEager(FrameworkLayer, TorchImplementation):
    """BertLayer with the eager attention: `y` and the attention weights."""

    name = "transformers.BertLayer"
    component = "encoder_block"
    attn_implementation = "eager"
    load_canonical = staticmethod(load_bert_layer)

    def supports(self, config: Mapping[str, Any]) -> str | None:
        if config["norm"] != "post":
            return "pre-norm (BertLayer is post-norm only)"
        if config["num_heads"] * config["d_head"] != config["d_model"]:
            return "num_heads * d_head != d_model (it splits hidden_size evenly across the heads)"
        return None

    def module(self, config: Mapping[str, Any]) -> BertLayerAdapter:
        return BertLayerAdapter(config, self.attn_implementation)


class BertLayerSDPA(BertLayerEager):
    """BertLayer with config._attn_implementation = "sdpa": `y` only."""

    name = "transformers.BertLayer[sdpa]"
    attn_implementation = "sdpa"
    outputs = ("y",)
