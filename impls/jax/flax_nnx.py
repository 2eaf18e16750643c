"""Flax NNX's own layers as implementations of spec/mha.md and spec/lstm_classifier.md.

Adapters, not implementations: the canonical weights are copied into the
library's parameters and Flax computes. Each adapter splits its module once
(nnx.split) and runs a pure function that merges the graph with a state
whose parameters are the canonical arrays rearranged (`mha_params`,
`lstm_params`); jax.vjp of that function gives the canonical gradients
(impls/jax/__init__.py). Section numbers refer to the component's spec.

mha: `flax.nnx.MultiHeadAttention(num_heads=H, in_features=d_model,
qkv_features=H * d_head, out_features=d_model)` (its head size is
qkv_features // num_heads, so every configuration of §2 is expressible).
Its projections are LinearGeneral layers with per-head kernels:

| Flax parameter   | shape                | canonical                          |
|------------------|----------------------|------------------------------------|
| `query.kernel`   | (d_model, H, d_head) | `W_q.reshape(d_model, H, d_head)`  |
| `query.bias`     | (H, d_head)          | `b_q.reshape(H, d_head)`           |
| `key.*`, `value.*` | as for the query   | `W_k`, `b_k`; `W_v`, `b_v` alike   |
| `out.kernel`     | (H, d_head, d_model) | `W_o.reshape(H, d_head, d_model)`  |
| `out.bias`       | (d_model,)           | `b_o`                              |

Head h owns columns h*d_head .. (h+1)*d_head - 1 (§3), which a row-major
reshape puts at kernel[:, h, :]. The mask (§7.1: True = attend, as Flax's)
is broadcast to (B, Lq, Lk) and given a head axis: (B, 1, Lq, Lk).

The layer has two code paths, registered separately:

- `flax.nnx.MultiHeadAttention`, called with sow_weights=True, built with the
  configuration's dropout rate and called deterministic=True (§8): Flax's
  own dot_product_attention_weights (masked scores set to finfo(dtype).min,
  softmax in the layer's dtype), which sows the weights, so both outputs are
  compared.
- `flax.nnx.MultiHeadAttention[sow_weights=False]`, built with dropout 0, as
  most models call it: Flax hands the heads to jax.nn.dot_product_attention,
  which takes its softmax in float32 whatever the dtype. Output only.

lstm_classifier: one `nnx.RNN(cell, return_carry=True)` per layer (Flax's
scan over time; initial carry zeros, §6.3), then `nnx.Linear` on the top
layer's last step (kernel = W_out, §6.5). Both cells compute §6.2-§6.3 with
their defaults gate_fn=sigmoid, activation_fn=tanh; the carry is (c, h).

| `nnx.LSTMCell` (per layer l) | shape  | canonical (gate k of i, f, g, o) |
|------------------------------|--------|----------------------------------|
| `ii`, `if_`, `ig`, `io` `.kernel` | (in, H) | `W_x_l[:, kH:(k+1)H]`       |
| `hi`, `hf`, `hg`, `ho` `.kernel` | (H, H)  | `W_h_l[:, kH:(k+1)H]`       |
| `hi`, `hf`, `hg`, `ho` `.bias`   | (H,)    | `b_l[kH:(k+1)H]`            |

The input Linears have no bias, so each gate's one bias is the spec's.
`nnx.OptimizedLSTMCell` keeps the blocks together: `dense_i.kernel = W_x_l`
(in, 4H), `dense_h.kernel = W_h_l` (H, 4H), `dense_h.bias = b_l`, split as
i, f, g, o like the spec's.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from impls.jax import Forward, JaxLayer, broadcast_mask

#: Canonical weights -> the module's parameters as a pure dict (nnx.to_pure_dict's layout).
Native = Callable[[Mapping[str, Any]], dict]


def pure_forward(module: nnx.Module, native: Native, call: Callable[[nnx.Module, Mapping[str, Any]], tuple]
                 ) -> Forward:
    """`call` on a fresh copy of `module` whose parameters are `native(weights)`: a pure function.

    The module itself is never touched (its state is copied before the values are replaced), so no
    traced value outlives a jax.vjp, and nothing a call sows stays behind for the next one.
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def forward(weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple:
        state = jax.tree.map(lambda v: v, params)  # new Variables holding the same arrays
        nnx.replace_by_pure_dict(state, native(weights))
        return call(nnx.merge(graphdef, state, jax.tree.map(lambda v: v, rest)), inputs)

    return forward


# --- mha ------------------------------------------------------------------------------------------

def mha_params(weights: Mapping[str, Any], num_heads: int, d_head: int) -> dict:
    """Canonical (in, out) matrices -> MultiHeadAttention's per-head kernels, as the module table says."""
    H, d = num_heads, d_head
    D = weights["W_q"].shape[0]
    params = {name: {"kernel": weights[f"W_{c}"].reshape(D, H, d),  # (d_model, H, d_head)
                     "bias": weights[f"b_{c}"].reshape(H, d)}  # (H, d_head)
              for name, c in (("query", "q"), ("key", "k"), ("value", "v"))}
    params["out"] = {"kernel": weights["W_o"].reshape(H, d, D), "bias": weights["b_o"]}  # (H, d_head, d_model)
    return params


class MultiHeadAttention(JaxLayer):
    """nnx.MultiHeadAttention with sow_weights=True: both outputs."""

    name = "flax.nnx.MultiHeadAttention"
    component = "mha"
    library = "flax"
    sow_weights = True

    def module(self, config: Mapping[str, Any], dtype: str) -> nnx.MultiHeadAttention:
        H, d, D = config["num_heads"], config["d_head"], config["d_model"]
        dropout = config["dropout"] if self.sow_weights else 0.0
        return nnx.MultiHeadAttention(num_heads=H, in_features=D, qkv_features=H * d, out_features=D,
                                      dropout_rate=dropout, deterministic=True, decode=False, dtype=dtype,
                                      param_dtype=dtype, rngs=nnx.Rngs(0))

    def forward(self, config: Mapping[str, Any], dtype: str) -> Forward:
        H, d = config["num_heads"], config["d_head"]

        def call(layer: nnx.MultiHeadAttention, inputs: Mapping[str, Any]) -> tuple:
            query, key, value = inputs["query"], inputs["key"], inputs["value"]
            (B, Lq, _), Lk = query.shape, key.shape[1]
            mask = broadcast_mask(inputs.get("attention_mask"), B, Lq, Lk)  # (B, Lq, Lk)
            mask = None if mask is None else mask[:, None]  # (B, 1, Lq, Lk): the same for every head
            output = layer(query, key, value, mask=mask, deterministic=True, sow_weights=self.sow_weights)
            if not self.sow_weights:
                return (output,)
            weights, = layer.attention_weights.get_value()  # (B, H, Lq, Lk), sown once by this call
            return output, weights

        return pure_forward(self.module(config, dtype), lambda w: mha_params(w, H, d), call)


class MultiHeadAttentionFused(MultiHeadAttention):
    """sow_weights=False and dropout 0: jax.nn.dot_product_attention computes the attention."""

    name = "flax.nnx.MultiHeadAttention[sow_weights=False]"
    sow_weights = False
    outputs = ("output",)


# --- lstm_classifier ------------------------------------------------------------------------------

class StackedLSTM(nnx.Module):
    """spec/lstm_classifier.md: `num_layers` nnx.RNN layers over time, then nnx.Linear on the last step."""

    def __init__(self, cell: type, d_in: int, hidden: int, num_layers: int, num_classes: int, *, dtype: str):
        rngs = nnx.Rngs(0)
        self.layers = nnx.List([
            nnx.RNN(cell(d_in if l == 0 else hidden, hidden, dtype=dtype, param_dtype=dtype, rngs=rngs),
                    return_carry=True)
            for l in range(num_layers)])
        self.classifier = nnx.Linear(hidden, num_classes, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        h_n, c_n = [], []
        for rnn in self.layers:  # §6.4: layer l reads layer l - 1's hidden states
            (c, h), x = rnn(x)  # (B, H) each, and (B, T, H): every step's h
            h_n.append(h)
            c_n.append(c)
        logits = self.classifier(x[:, -1])  # (B, num_classes), the last step (§6.5)
        return logits, x, jnp.stack(h_n), jnp.stack(c_n)  # h_n, c_n: (L, B, H), bottom layer first


def lstm_params(weights: Mapping[str, Any], num_layers: int, optimized: bool) -> dict:
    """Canonical (W_x_l, W_h_l, b_l, W_out, b_out) -> StackedLSTM's parameters, as the module tables say."""
    layers = {}
    for l in range(num_layers):
        W_x, W_h, b = weights[f"W_x_{l}"], weights[f"W_h_{l}"], weights[f"b_{l}"]
        if optimized:  # blocks i, f, g, o kept together, as the spec's
            layers[l] = {"cell": {"dense_i": {"kernel": W_x}, "dense_h": {"kernel": W_h, "bias": b}}}
            continue
        H = W_h.shape[0]
        cell = {}
        for k, gate in enumerate("ifgo"):  # gate k: columns kH .. (k+1)H - 1
            block = slice(k * H, (k + 1) * H)
            cell["if_" if gate == "f" else f"i{gate}"] = {"kernel": W_x[:, block]}  # (in, H), no bias
            cell[f"h{gate}"] = {"kernel": W_h[:, block], "bias": b[block]}  # (H, H), (H,)
        layers[l] = {"cell": cell}
    return {"layers": layers, "classifier": {"kernel": weights["W_out"], "bias": weights["b_out"]}}


class LSTMCell(JaxLayer):
    """nnx.LSTMCell: one Linear per gate and operand."""

    name = "flax.nnx.LSTMCell"
    component = "lstm_classifier"
    library = "flax"
    cell: type = nnx.LSTMCell

    def forward(self, config: Mapping[str, Any], dtype: str) -> Forward:
        L = config["num_layers"]
        module = StackedLSTM(self.cell, config["d_in"], config["hidden"], L, config["num_classes"], dtype=dtype)
        optimized = self.cell is nnx.OptimizedLSTMCell
        return pure_forward(module, lambda w: lstm_params(w, L, optimized), lambda m, inputs: m(inputs["x"]))


class OptimizedLSTMCell(LSTMCell):
    """nnx.OptimizedLSTMCell: one Linear per operand for all four gates."""

    name = "flax.nnx.OptimizedLSTMCell"
    cell = nnx.OptimizedLSTMCell
