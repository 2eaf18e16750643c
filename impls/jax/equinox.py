"""Equinox's own layers as implementations of spec/mha.md and spec/lstm_classifier.md.

Adapters, not implementations: the canonical weights replace the layer's
arrays (eqx.tree_at) inside a pure function, Equinox computes, and jax.vjp
of that function gives the canonical gradients (impls/jax/__init__.py).
Equinox layers work on one example, without a batch axis: the adapters
jax.vmap them over B, as Equinox's documentation does. Section numbers
refer to the component's spec.

mha: `equinox.nn.MultiheadAttention(num_heads=H, query_size=d_model,
qk_size=d_head, vo_size=d_head, output_size=d_model)` with all four biases
switched on (use_query_bias, use_key_bias, use_value_bias, use_output_bias
all default to False), built with the configuration's dropout_p and
inference=True (§8). Every configuration of §2 is expressible. Each
projection is an `eqx.nn.Linear` whose weight is (out, in):

| Equinox array                          | shape                  | canonical |
|----------------------------------------|------------------------|-----------|
| `query_proj.weight`                    | (H * d_head, d_model)  | `W_q.T`   |
| `query_proj.bias`                      | (H * d_head,)          | `b_q`     |
| `key_proj.*`, `value_proj.*`           | as for the query       | `W_k.T`, `b_k`; `W_v.T`, `b_v` |
| `output_proj.weight`                   | (d_model, H * d_head)  | `W_o.T`   |
| `output_proj.bias`                     | (d_model,)             | `b_o`     |

The layer reshapes each projection's H * d_head features to (H, d_head),
so head h gets features h*d_head .. (h+1)*d_head - 1, as §3 says. Its mask
is (Lq, Lk) per example, True = attend (§7.1): the spec's mask is broadcast
to (B, Lq, Lk) and mapped over B with the inputs. The layer returns no
attention weights, so the adapter declares `outputs = ("output",)`.

lstm_classifier: one `equinox.nn.LSTMCell` per layer, stepped over time with
jax.lax.scan from zero states (§6.3), as in Equinox's documentation; the
top layer's last h goes through `eqx.nn.Linear` (weight = W_out.T, §6.5).
The cell computes §6.1-§6.3 with jax.nn.sigmoid and jnp.tanh, its state is
(h, c), and it splits its 4H pre-activations as i, f, g, o like the spec:

| `LSTMCell` (layer l) | shape       | canonical  |
|----------------------|-------------|------------|
| `weight_ih`          | (4H, in)    | `W_x_l.T`  |
| `weight_hh`          | (4H, H)     | `W_h_l.T`  |
| `bias`               | (4H,)       | `b_l`      |

One bias, added once: no split needed.
"""

from __future__ import annotations

from typing import Any, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp

from impls.jax import Forward, JaxLayer, broadcast_mask


# --- mha ------------------------------------------------------------------------------------------

def load_mha(layer: eqx.nn.MultiheadAttention, weights: Mapping[str, Any]) -> eqx.nn.MultiheadAttention:
    """The layer with the canonical weights in place, as the module table says (Linear weights are (out, in))."""
    def arrays(m: eqx.nn.MultiheadAttention) -> list:
        return [a for p in (m.query_proj, m.key_proj, m.value_proj, m.output_proj) for a in (p.weight, p.bias)]

    return eqx.tree_at(arrays, layer, [a for c in "qkvo" for a in (weights[f"W_{c}"].T, weights[f"b_{c}"])])


class MultiheadAttention(JaxLayer):
    """eqx.nn.MultiheadAttention with every bias, vmapped over the batch."""

    name = "equinox.nn.MultiheadAttention"
    component = "mha"
    library = "equinox"
    outputs = ("output",)

    def forward(self, config: Mapping[str, Any], dtype: str) -> Forward:
        layer = eqx.nn.MultiheadAttention(
            config["num_heads"], config["d_model"], qk_size=config["d_head"], vo_size=config["d_head"],
            output_size=config["d_model"], use_query_bias=True, use_key_bias=True, use_value_bias=True,
            use_output_bias=True, dropout_p=config["dropout"], inference=True, dtype=dtype,
            key=jax.random.key(0))

        def forward(weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple:
            attention = load_mha(layer, weights)
            query, key, value = inputs["query"], inputs["key"], inputs["value"]
            (B, Lq, _), Lk = query.shape, key.shape[1]
            mask = broadcast_mask(inputs.get("attention_mask"), B, Lq, Lk)  # (B, Lq, Lk)
            if mask is None:
                output = jax.vmap(lambda q, k, v: attention(q, k, v, inference=True))(query, key, value)
            else:
                output = jax.vmap(lambda q, k, v, m: attention(q, k, v, m, inference=True))(query, key, value, mask)
            return (output,)  # (B, Lq, d_model)

        return forward


# --- lstm_classifier ------------------------------------------------------------------------------

def load_cell(cell: eqx.nn.LSTMCell, W_x: Any, W_h: Any, b: Any) -> eqx.nn.LSTMCell:
    """One layer's canonical weights in an LSTMCell: transposed to (4H, in), gate blocks as they are."""
    return eqx.tree_at(lambda c: (c.weight_ih, c.weight_hh, c.bias), cell, (W_x.T, W_h.T, b))


class LSTMCell(JaxLayer):
    """eqx.nn.LSTMCell per layer under jax.lax.scan, eqx.nn.Linear on the last step, vmapped over the batch."""

    name = "equinox.nn.LSTMCell"
    component = "lstm_classifier"
    library = "equinox"

    def forward(self, config: Mapping[str, Any], dtype: str) -> Forward:
        d_in, H, L, C = config["d_in"], config["hidden"], config["num_layers"], config["num_classes"]
        keys = jax.random.split(jax.random.key(0), L + 1)
        cells = [eqx.nn.LSTMCell(d_in if l == 0 else H, H, dtype=dtype, key=keys[l]) for l in range(L)]
        linear = eqx.nn.Linear(H, C, dtype=dtype, key=keys[L])

        def one_example(weights: Mapping[str, Any], x: jax.Array) -> tuple:
            h_n, c_n = [], []
            for l, cell in enumerate(cells):  # §6.4: layer l reads layer l - 1's hidden states
                cell = load_cell(cell, weights[f"W_x_{l}"], weights[f"W_h_{l}"], weights[f"b_{l}"])

                def step(state, x_t, cell=cell):
                    state = cell(x_t, state)  # (h, c), each (H,)
                    return state, state[0]

                zeros = jnp.zeros(H, dtype=x.dtype)
                (h, c), x = jax.lax.scan(step, (zeros, zeros), x)  # x: (T, H), every step's h
                h_n.append(h)
                c_n.append(c)
            classifier = eqx.tree_at(lambda m: (m.weight, m.bias), linear, (weights["W_out"].T, weights["b_out"]))
            return classifier(x[-1]), x, jnp.stack(h_n), jnp.stack(c_n)  # (C,), (T, H), (L, H), (L, H)

        def forward(weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple:
            logits, hidden_states, h_n, c_n = jax.vmap(one_example, in_axes=(None, 0))(weights, inputs["x"])
            return logits, hidden_states, h_n.transpose(1, 0, 2), c_n.transpose(1, 0, 2)  # h_n, c_n: (L, B, H)

        return forward
