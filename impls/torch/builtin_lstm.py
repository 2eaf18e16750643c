"""PyTorch's own LSTM as an implementation of spec/lstm_classifier.md and spec/lstm_seq2seq.md.

These are adapters, not implementations: the recurrences run in PyTorch's
layers, configured from the canonical weights, so the harness checks what
PyTorch itself computes. Everything else (the classifier's `torch.nn.Linear`,
the seq2seq embeddings, attention and output layer) is kept as small as
possible, and for seq2seq it is our own module's code
(impls/torch/lstm_seq2seq.py). Section numbers are those of the component's
spec.

- `torch.nn.LSTM` (lstm_classifier): one `nn.LSTM` of `num_layers` layers
  over the whole sequence.
- `torch.nn.LSTM` (lstm_seq2seq): an `nn.LSTM` each for the encoder and the
  decoder, both over whole sequences; greedy generation feeds the decoder
  sequences of length 1, carrying its state from call to call.
- `torch.nn.LSTMCell` (lstm_seq2seq): the encoder as above, the decoder an
  `nn.LSTMCell` stepped one token at a time in both decoder runs: another
  code path inside PyTorch.

The mapping a user porting canonical weights into `torch.nn.LSTM` needs, for
layer `k` of the classifier (`W_x_k`, `W_h_k`, `b_k`) or either LSTM of
seq2seq (`W_x_enc`, `W_h_enc`, `b_enc` into `weight_ih_l0` and so on):

| torch parameter   | shape       | canonical | why                                            |
|-------------------|-------------|-----------|------------------------------------------------|
| `weight_ih_l{k}`  | `(4H, in)`  | `W_x^T`   | torch stores (out, in); the spec `(in, 4H)`    |
| `weight_hh_l{k}`  | `(4H, H)`   | `W_h^T`   | likewise                                       |
| `bias_ih_l{k}`    | `(4H,)`     | `b`       | the spec has one bias, added once (§6.1)       |
| `bias_hh_l{k}`    | `(4H,)`     | `0`       | torch adds both biases; zero keeps the sum `b` |

`nn.LSTMCell` has the same four parameters without the `_l{k}` suffix.

Gate order: the spec's blocks along the `4H` axis are i, f, g, o
(classifier §3, seq2seq §3), and so are torch's, so transposing carries every
gate's block to the rows where torch reads it; no permutation is needed.
`bias_ih = b, bias_hh = 0` is the split that is exact in floating point;
copying `b` into both would add it twice.

The rest of the configuration:

- `batch_first=True`: the spec's inputs are `(B, T, in)`; torch's default is
  `(T, B, in)`.
- Initial states: the classifier starts every layer from zeros (classifier
  §6.3), which is what `torch.nn.LSTM` does when no `(h_0, c_0)` is given. The
  seq2seq decoder starts from the encoder's final `(h, c)`, both parts
  (seq2seq §6.3): torch's state tuple `(h_n, c_n)`, each `(1, B, H)`, is
  passed on as it is to an `nn.LSTM`, and without its layer axis, `(B, H)`,
  to an `nn.LSTMCell`.
- Padding and lengths: neither spec has any. Every sequence of a batch has
  the full length (`T` or `S`) and every step is read, so there is no
  `pack_padded_sequence`, and the classifier reads the output at the last
  step, which is `h_n[-1]`.
- `dropout`, `bidirectional`, `proj_size` keep their defaults (0, False, 0):
  the specs have no dropout, one direction and no projection of `h`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from impls import FrameworkLayer
from impls.torch import TorchImplementation, to_tensor
from impls.torch.lstm_seq2seq import AttentionSeq2Seq


def load_lstm_layer(lstm: nn.LSTM | nn.LSTMCell, W_x: np.ndarray, W_h: np.ndarray, b: np.ndarray, *,
                    k: int = 0) -> None:
    """One LSTM layer's canonical weights (§3) into layer `k` of an nn.LSTM, or into an nn.LSTMCell (the same
    four parameters without the `_l{k}` suffix), as the table above says."""
    suffix = "" if isinstance(lstm, nn.LSTMCell) else f"_l{k}"
    with torch.no_grad():
        getattr(lstm, f"weight_ih{suffix}").copy_(to_tensor(W_x.T))  # (4H, in), gate blocks i, f, g, o as ours
        getattr(lstm, f"weight_hh{suffix}").copy_(to_tensor(W_h.T))  # (4H, H)
        getattr(lstm, f"bias_ih{suffix}").copy_(to_tensor(b))  # (4H,): the one canonical bias
        getattr(lstm, f"bias_hh{suffix}").zero_()  # torch adds this one too


def load_linear(linear: nn.Linear, W: np.ndarray, b: np.ndarray) -> None:
    """A canonical `y = x @ W + b`, W (in, out), into torch.nn.Linear's (out, in) weight."""
    with torch.no_grad():
        linear.weight.copy_(to_tensor(W.T))
        linear.bias.copy_(to_tensor(b))


# --- lstm_classifier ------------------------------------------------------------------------------

class ClassifierLSTM(nn.Module):
    """spec/lstm_classifier.md: one torch.nn.LSTM of num_layers layers, then torch.nn.Linear on the last step."""

    def __init__(self, d_in: int, hidden: int, num_layers: int, num_classes: int):
        super().__init__()
        self.num_layers = num_layers
        self.lstm = nn.LSTM(d_in, hidden, num_layers=num_layers, batch_first=True)  # §6.4: layers stacked inside
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x):
        # no (h_0, c_0): zeros for every layer (§6.3)
        hidden_states, (h_n, c_n) = self.lstm(x)  # (B, T, H), (L, B, H) bottom layer first (§6.6), (L, B, H)
        logits = self.classifier(hidden_states[:, -1])  # (B, num_classes), the last step (§6.5)
        return logits, hidden_states, h_n, c_n


def load_classifier(module: ClassifierLSTM, weights: Mapping[str, np.ndarray]) -> None:
    for k in range(module.num_layers):
        load_lstm_layer(module.lstm, weights[f"W_x_{k}"], weights[f"W_h_{k}"], weights[f"b_{k}"], k=k)
    load_linear(module.classifier, weights["W_out"], weights["b_out"])  # §7.1: weight = W_out^T


# --- lstm_seq2seq ---------------------------------------------------------------------------------

class Seq2SeqLSTM(AttentionSeq2Seq):
    """spec/lstm_seq2seq.md with a torch.nn.LSTM for the encoder and another for the decoder.

    Embeddings, attention and output layer are our module's (impls/torch/lstm_seq2seq.py); only its
    hand-written cells are replaced. Greedy generation (§6.7) runs the decoder one step at a time: a
    sequence of length 1 with the state carried from the previous call.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, d_embed: int, hidden: int, N: int):
        super().__init__(src_vocab, tgt_vocab, d_embed, hidden, N)
        self.encoder = nn.LSTM(d_embed, hidden, batch_first=True)
        self.decoder = nn.LSTM(d_embed, hidden, batch_first=True)

    def forward(self, source, target_in):
        hs_enc, state = self.encoder(self.src_embed(source))  # (B, S, H); zero initial state (§6.2)
        # state = (h_S, c_S), each (1, B, H): the decoder starts from both (§6.3)
        hs_dec, _ = self.decoder(self.tgt_embed(target_in), state)  # (B, T, H), teacher forcing (§6.6)
        attention, logits = zip(*(self.attend(hs_dec[:, t], hs_enc) for t in range(target_in.shape[1])))

        token = torch.zeros_like(source[:, :1])  # (B, 1), start id 0 (§6.7), from the same state
        generated = []
        for _ in range(self.N):
            h, state = self.decoder(self.tgt_embed(token), state)  # (B, 1, H)
            _, z = self.attend(h[:, 0], hs_enc)  # (B, tgt_vocab)
            token = z.argmax(dim=-1, keepdim=True)  # (B, 1), the first maximum on ties
            generated.append(token)
        return torch.stack(logits, 1), torch.stack(attention, 1), torch.cat(generated, 1)


class Seq2SeqLSTMCell(AttentionSeq2Seq):
    """spec/lstm_seq2seq.md with the decoder a torch.nn.LSTMCell, stepped in both runs as a hand-written
    decoding loop would; the encoder stays a torch.nn.LSTM, since every one of its states is needed (§6.2).

    Our module's forward (impls/torch/lstm_seq2seq.py) runs as it is, with its cells swapped for torch's.
    nn.LSTMCell's state has no layer axis: (B, H) where nn.LSTM's is (1, B, H).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, d_embed: int, hidden: int, N: int):
        super().__init__(src_vocab, tgt_vocab, d_embed, hidden, N)
        self.encoder = nn.LSTM(d_embed, hidden, batch_first=True)
        self.decoder = nn.LSTMCell(d_embed, hidden)

    def encode(self, source):
        hs_enc, (h, c) = self.encoder(self.src_embed(source))  # (B, S, H), (1, B, H) each; zero state (§6.2)
        return hs_enc, (h[0], c[0])  # (B, H) each, both handed to the decoder (§6.3)

    def decode_step(self, token, h, c, hs_enc):
        h, c = self.decoder(self.tgt_embed(token), (h, c))  # (B, H) each
        return (h, c, *self.attend(h, hs_enc))


def load_seq2seq(module: Seq2SeqLSTM | Seq2SeqLSTMCell, weights: Mapping[str, np.ndarray]) -> None:
    with torch.no_grad():
        module.src_embed.weight.copy_(to_tensor(weights["E_src"]))  # (src_vocab, d_embed), rows are ids
        module.tgt_embed.weight.copy_(to_tensor(weights["E_tgt"]))
    load_lstm_layer(module.encoder, weights["W_x_enc"], weights["W_h_enc"], weights["b_enc"])
    load_lstm_layer(module.decoder, weights["W_x_dec"], weights["W_h_dec"], weights["b_dec"])  # LSTM or LSTMCell
    load_linear(module.out_proj, weights["W_out"], weights["b_out"])  # rows: context first, then h (§6.5)


# --- registered implementations -------------------------------------------------------------------

class _Builtin(FrameworkLayer, TorchImplementation):
    """What the adapters share: the name (LSTMCell's changes it)."""

    name = "torch.nn.LSTM"


class Classifier(_Builtin):
    component = "lstm_classifier"
    load_canonical = staticmethod(load_classifier)

    def module(self, config: Mapping[str, Any]) -> ClassifierLSTM:
        return ClassifierLSTM(config["d_in"], config["hidden"], config["num_layers"], config["num_classes"])


class Seq2Seq(_Builtin):
    component = "lstm_seq2seq"
    load_canonical = staticmethod(load_seq2seq)
    layer = Seq2SeqLSTM

    def module(self, config: Mapping[str, Any]) -> Seq2SeqLSTM | Seq2SeqLSTMCell:
        return self.layer(config["src_vocab"], config["tgt_vocab"], config["d_embed"], config["hidden"],
                          config["N"])


class Seq2SeqCell(Seq2Seq):
    name = "torch.nn.LSTMCell"
    layer = Seq2SeqLSTMCell
