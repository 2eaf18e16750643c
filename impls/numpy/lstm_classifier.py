"""A multi-layer LSTM classifier in NumPy, written from spec/lstm_classifier.md.

Run in float64 this is the reference every other implementation is compared
with, so it follows the spec's equations one by one, with a plain loop over
layers and time steps. Section numbers refer to spec/lstm_classifier.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from impls.numpy import NumpyImplementation


def sigmoid(a: np.ndarray) -> np.ndarray:
    """§6.2: the logistic function 1 / (1 + exp(-a)), arranged so that exp never overflows."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


def forward(config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
            diagnostics: dict | None = None) -> dict[str, np.ndarray]:
    """§6: the whole computation in the dtype of the weights."""
    hidden, num_layers = config["hidden"], config["num_layers"]
    x = inputs["x"]  # (B, T, d_in)
    B, T, _ = x.shape
    dtype = weights["W_out"].dtype
    H = hidden

    seq = x  # the input sequence of the current layer: (B, T, d_in), then (B, T, hidden)
    h_n, c_n = [], []
    gate_scale, cell_scale = 0.0, 0.0  # §8 diagnostics
    for l in range(num_layers):  # §6.4: bottom layer first
        W_x, W_h, b = weights[f"W_x_{l}"], weights[f"W_h_{l}"], weights[f"b_{l}"]
        h = np.zeros((B, H), dtype=dtype)  # §6.3: zero initial states
        c = np.zeros((B, H), dtype=dtype)
        hs = []
        for t in range(T):
            gates = seq[:, t] @ W_x + h @ W_h + b  # (B, 4H), §6.1
            i = sigmoid(gates[:, 0 * H:1 * H])  # input gate, §6.2
            f = sigmoid(gates[:, 1 * H:2 * H])  # forget gate
            g = np.tanh(gates[:, 2 * H:3 * H])  # cell candidate
            o = sigmoid(gates[:, 3 * H:4 * H])  # output gate
            if diagnostics is not None:  # the terms the pre-activations are summed from
                terms = np.abs(seq[:, t]) @ np.abs(W_x) + np.abs(h) @ np.abs(W_h) + np.abs(b)
                gate_scale = max(gate_scale, float(terms.max()))
            c = f * c + i * g  # (B, H), §6.3
            h = o * np.tanh(c)  # (B, H)
            cell_scale = max(cell_scale, float(np.abs(c).max()))
            hs.append(h)
        seq = np.stack(hs, axis=1)  # (B, T, H): the next layer's input
        h_n.append(h)
        c_n.append(c)

    h_T = seq[:, -1]  # (B, H): the top layer at the last step, §6.5
    logits = h_T @ weights["W_out"] + weights["b_out"]  # (B, num_classes)

    if diagnostics is not None:  # the magnitudes spec §8 scales budgets by
        W_out = np.abs(weights["W_out"])
        diagnostics["gate_scale"] = gate_scale
        diagnostics["cell_scale"] = cell_scale
        diagnostics["out_gain"] = float(W_out.sum(axis=0).max())
        diagnostics["logit_scale"] = float((np.abs(h_T) @ W_out + np.abs(weights["b_out"])).max())
    return {"logits": logits, "hidden_states": seq, "h_n": np.stack(h_n), "c_n": np.stack(c_n)}


class Implementation(NumpyImplementation):
    """The registered NumPy implementation (and, in float64, the reference)."""

    component = "lstm_classifier"
    forward = staticmethod(forward)
