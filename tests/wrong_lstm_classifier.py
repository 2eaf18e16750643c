"""Deliberately wrong implementations of spec/lstm_classifier.md, loaded through the plug-in interface.

Each one makes a mistake people really make when they move LSTM weights
between frameworks and textbooks. The harness must reject every one of them
in float32; tests/test_lstm_classifier.py checks that it does and what it reports.
"""

from __future__ import annotations


import numpy as np

from wrong_base import Switchable

from impls.numpy.lstm_classifier import sigmoid


def hard_sigmoid(a):
    """Keras' and PyTorch's hard sigmoid, clip(a / 6 + 1/2, 0, 1): piecewise linear, not the logistic function."""
    return np.clip(a / 6 + 0.5, 0, 1).astype(a.dtype)


def _lstm(config, weights, inputs, *, gate_order="ifgo", gate=sigmoid, bias_times=1, classify_step=-1,
          states="all", forget_bias=0.0, initial=None):
    """spec/lstm_classifier.md §6 with one switch per mistake; the defaults are the spec (`initial`: each
    layer's first (h, c), as (num_layers, B, H) arrays, in place of zeros)."""
    H, num_layers = config["hidden"], config["num_layers"]
    x = inputs["x"]  # (B, T, d_in)
    B, T, _ = x.shape
    seq, h_n, c_n = x, [], []
    for l in range(num_layers):
        W_x, W_h, b = weights[f"W_x_{l}"], weights[f"W_h_{l}"], weights[f"b_{l}"]
        h = np.zeros((B, H), dtype=x.dtype) if initial is None else initial[0][l]
        c = np.zeros((B, H), dtype=x.dtype) if initial is None else initial[1][l]
        hs = []
        for t in range(T):
            gates = seq[:, t] @ W_x + h @ W_h + b * x.dtype.type(bias_times)  # (B, 4H)
            block = {name: gates[:, k * H:(k + 1) * H] for k, name in enumerate(gate_order)}
            block["f"] = block["f"] + x.dtype.type(forget_bias)  # a constant added to the forget gate, as TF 1's cells
            i, f, g, o = gate(block["i"]), gate(block["f"]), np.tanh(block["g"]), gate(block["o"])
            c = f * c + i * g
            h = o * np.tanh(c)
            hs.append(h)
        seq = np.stack(hs, axis=1)  # (B, T, H)
        h_n.append(h)
        c_n.append(c)
    h_n, c_n = np.stack(h_n), np.stack(c_n)  # (num_layers, B, H)
    if states == "swapped":
        h_n, c_n = c_n, h_n
    elif states == "top":
        h_n, c_n = h_n[-1:], c_n[-1:]
    logits = seq[:, classify_step] @ weights["W_out"] + weights["b_out"]
    return {"logits": logits, "hidden_states": seq, "h_n": h_n, "c_n": c_n}


#: What every shrunk counterexample of these mistakes shows (a mistake's `shrunk` adds to it or overrides it).
SHRUNK = {"d_in": 1, "hidden": 1, "num_layers": 1, "num_classes": 1, "B": 1, "T": 1, "scale_exp": 0}


class _Wrong(Switchable):
    """A NumPy implementation whose forward pass is `_lstm` with some switches set."""

    component = "lstm_classifier"

    def forward(self, config, weights, inputs):
        return _lstm(config, weights, inputs, **self.options)


class BookGateOrder(_Wrong):
    """Reads the canonical i, f, g, o blocks in the order f, g, i, o of some textbooks (§3)."""
    breaks, says = '3', 'differs from the reference'
    options = {"gate_order": "fgio"}


class HardSigmoid(_Wrong):
    """A hard (piecewise linear) sigmoid on the gates instead of the logistic function (§6.2)."""
    breaks, says = '6.2', 'differs from the reference'
    options = {"gate": hard_sigmoid}


class FirstStepClassified(_Wrong):
    """Feeds the first time step's hidden state to the classifier instead of the last one (§6.5)."""
    breaks, says = '6.5', "output 'logits' differs from the reference"
    shrunk = {'T': 2}
    options = {"classify_step": 0}


class BiasTwice(_Wrong):
    """Adds the bias twice, as if both of torch.nn.LSTM's biases were set to b: a converter's mistake (§7.1),
    seen in the output as §6.1's pre-activations with 2b in place of b, which is what the failure names."""
    breaks, says = '6.1', 'differs from the reference'
    options = {"bias_times": 2}


class SwappedStates(_Wrong):
    """Returns the cell states as h_n and the hidden states as c_n (§6.6)."""
    breaks, says = '6.6', "output 'h_n' differs from the reference"
    options = {"states": "swapped"}


class TopLayerStatesOnly(_Wrong):
    """Returns the final states of the top layer only, shape (1, B, hidden) (§6.6)."""
    breaks, says = '6.6', "output 'h_n' has shape (1, 1, 1), expected (2, 1, 1)"
    shrunk = {'num_layers': 2}
    options = {"states": "top"}


class Correct(_Wrong):
    """No switch set: follows the spec (a control for the cases above)."""
