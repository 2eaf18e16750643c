"""A multi-layer LSTM classifier as a torch.nn.Module, written from spec/lstm_classifier.md.

The cell is written out with torch operations (torch.nn.LSTM is tested as a
framework layer of its own), but the parameters have torch.nn.LSTM's names
and layout, so `load_canonical` is the converter spec §7.1 describes and a
state dict of this module loads into torch.nn.LSTM too. Section numbers
refer to spec/lstm_classifier.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls.torch import to_tensor, TorchImplementation


class LSTMClassifier(nn.Module):
    def __init__(self, d_in: int, hidden: int, num_layers: int, num_classes: int):
        super().__init__()
        self.hidden, self.num_layers = hidden, num_layers
        for k in range(num_layers):  # torch.nn.LSTM's layout: (4H, in) matrices, two biases, gates i, f, g, o
            size_in = d_in if k == 0 else hidden
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(4 * hidden, size_in)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(4 * hidden, hidden)))
            self.register_parameter(f"bias_ih_l{k}", nn.Parameter(torch.zeros(4 * hidden)))
            self.register_parameter(f"bias_hh_l{k}", nn.Parameter(torch.zeros(4 * hidden)))
            for name in (f"weight_ih_l{k}", f"weight_hh_l{k}"):
                nn.init.uniform_(getattr(self, name), -hidden ** -0.5, hidden ** -0.5)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x):
        B, T, _ = x.shape
        H = self.hidden
        seq = x  # (B, T, d_in), then (B, T, H) for the layers above the first
        h_n, c_n = [], []
        for k in range(self.num_layers):  # §6.4
            W_ih, W_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            bias = getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")  # (4H,)
            h = x.new_zeros(B, H)  # §6.3: zero initial states
            c = x.new_zeros(B, H)
            hs = []
            for t in range(T):
                gates = seq[:, t] @ W_ih.T + h @ W_hh.T + bias  # (B, 4H), §6.1
                i, f, g, o = gates.split(H, dim=1)  # §3: blocks i, f, g, o
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # §6.2, §6.3
                h = torch.sigmoid(o) * torch.tanh(c)
                hs.append(h)
            seq = torch.stack(hs, dim=1)  # (B, T, H)
            h_n.append(h)
            c_n.append(c)
        logits = self.classifier(seq[:, -1])  # (B, num_classes), §6.5
        return logits, seq, torch.stack(h_n), torch.stack(c_n)  # §6.6


def load_canonical(module: LSTMClassifier, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, 4H) matrices -> (4H, in): transpose, gate order unchanged; b -> bias_ih, 0 -> bias_hh."""
    def tensor(a):
        return to_tensor((a))

    with torch.no_grad():
        for k in range(module.num_layers):
            getattr(module, f"weight_ih_l{k}").copy_(tensor(weights[f"W_x_{k}"].T))
            getattr(module, f"weight_hh_l{k}").copy_(tensor(weights[f"W_h_{k}"].T))
            getattr(module, f"bias_ih_l{k}").copy_(tensor(weights[f"b_{k}"]))
            getattr(module, f"bias_hh_l{k}").zero_()
        module.classifier.weight.copy_(tensor(weights["W_out"].T))
        module.classifier.bias.copy_(tensor(weights["b_out"]))


class Implementation(TorchImplementation):
    component = "lstm_classifier"
    load_canonical = staticmethod(load_canonical)

    def module(self, config: Mapping[str, Any]) -> LSTMClassifier:
        return LSTMClassifier(config["d_in"], config["hidden"], config["num_layers"], config["num_classes"])
