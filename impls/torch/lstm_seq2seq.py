"""LSTM sequence-to-sequence with attention as a torch.nn.Module, written from spec/lstm_seq2seq.md.

The LSTM cell is written out with torch operations (not torch.nn.LSTM, which
is tested as a framework layer of its own). Its input and recurrent
projections are nn.Linear layers in PyTorch's (out, in) layout, as in
nn.LSTM's weight_ih and weight_hh; `load_canonical` transposes into it.
Section numbers refer to spec/lstm_seq2seq.md.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls.torch import to_tensor, TorchImplementation


class LSTMCell(nn.Module):
    """§6.1: gates i, f, g, o in that order along the 4*hidden axis, one bias."""

    def __init__(self, d_embed: int, hidden: int):
        super().__init__()
        self.x_proj = nn.Linear(d_embed, 4 * hidden)  # W_x^T and b
        self.h_proj = nn.Linear(hidden, 4 * hidden, bias=False)  # W_h^T

    def forward(self, x, h, c):
        i, f, g, o = (self.x_proj(x) + self.h_proj(h)).chunk(4, dim=-1)  # each (B, hidden)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class AttentionSeq2Seq(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, d_embed: int, hidden: int, N: int):
        super().__init__()
        self.hidden, self.N = hidden, N
        self.src_embed = nn.Embedding(src_vocab, d_embed)  # E_src
        self.encoder = LSTMCell(d_embed, hidden)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_embed)  # E_tgt
        self.decoder = LSTMCell(d_embed, hidden)
        self.out_proj = nn.Linear(2 * hidden, tgt_vocab)  # W_out^T and b_out

    def encode(self, source):
        """§6.2: every hidden state, and the final (h, c)."""
        x = self.src_embed(source)  # (B, S, d_embed)
        h = c = x.new_zeros(x.shape[0], self.hidden)
        hs = []
        for s in range(x.shape[1]):
            h, c = self.encoder(x[:, s], h, c)
            hs.append(h)
        return torch.stack(hs, dim=1), (h, c)  # (B, S, hidden)

    def decode_step(self, token, h, c, hs_enc):
        """§6.3-6.5: one decoder step from the previous (h, c)."""
        h, c = self.decoder(self.tgt_embed(token), h, c)  # (B, hidden)
        a, logits = self.attend(h, hs_enc)
        return h, c, a, logits

    def attend(self, h, hs_enc):
        """§6.4-6.5: attention weights and logits for one decoder hidden state h (B, hidden)."""
        scores = (hs_enc @ h.unsqueeze(-1)).squeeze(-1)  # (B, S), not scaled
        a = torch.softmax(scores, dim=-1)
        context = (a.unsqueeze(1) @ hs_enc).squeeze(1)  # (B, hidden)
        logits = self.out_proj(torch.cat([context, h], dim=-1))  # (B, tgt_vocab)
        return a, logits

    def forward(self, source, target_in):
        hs_enc, state = self.encode(source)
        h, c = state  # §6.3: both carried into the decoder
        logits, attention = [], []
        for t in range(target_in.shape[1]):  # §6.6 teacher forcing
            h, c, a, z = self.decode_step(target_in[:, t], h, c, hs_enc)
            logits.append(z)
            attention.append(a)
        h, c = state
        token = torch.zeros_like(source[:, 0])  # §6.7: start id 0
        generated = []
        for _ in range(self.N):
            h, c, _, z = self.decode_step(token, h, c, hs_enc)
            token = z.argmax(dim=-1)  # the first maximum on ties
            generated.append(token)
        return torch.stack(logits, 1), torch.stack(attention, 1), torch.stack(generated, 1)


def load_canonical(module: AttentionSeq2Seq, weights: Mapping[str, np.ndarray]) -> None:
    """Canonical (in, out) matrices -> nn.Linear's (out, in): transpose; embeddings and biases as they are."""
    t = lambda name: to_tensor((weights[name]))  # noqa: E731
    with torch.no_grad():
        module.src_embed.weight.copy_(t("E_src"))
        module.tgt_embed.weight.copy_(t("E_tgt"))
        for cell, side in ((module.encoder, "enc"), (module.decoder, "dec")):
            cell.x_proj.weight.copy_(t(f"W_x_{side}").T)
            cell.x_proj.bias.copy_(t(f"b_{side}"))
            cell.h_proj.weight.copy_(t(f"W_h_{side}").T)
        module.out_proj.weight.copy_(t("W_out").T)
        module.out_proj.bias.copy_(t("b_out"))


class Implementation(TorchImplementation):
    component = "lstm_seq2seq"
    load_canonical = staticmethod(load_canonical)

    def module(self, config: Mapping[str, Any]) -> AttentionSeq2Seq:
        return AttentionSeq2Seq(config["src_vocab"], config["tgt_vocab"], config["d_embed"], config["hidden"],
                                config["N"])
