"""Implementations that each change one constant or convention a spec fixes, and nothing else.

Where the deliberately wrong implementations (tests/wrong_<component>.py) differ
in structure, these are the quiet changes a port makes: another framework's
layer-norm epsilon, another GELU, a score divisor, a softmax without its max
shift, a finite mask fill. Each spec's "Sensitivity" section names the region
of its domain where each one shows; tests/test_sensitivity.py requires every
one to be rejected in float32 alone, at the default profile, on each of ten
seeds.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

import wrong_embedding
import wrong_lstm_classifier
import wrong_lstm_seq2seq
import wrong_text_classifier
from wrong_base import Switchable
from wrong_ffn import _ffn
from wrong_mha import _attention

from impls.numpy.ffn import ACTIVATIONS, gelu_tanh
from impls.numpy.mha import masked_softmax


# --- the changed pieces --------------------------------------------------------------------------------------

def gelu_sigmoid(h: np.ndarray) -> np.ndarray:
    """The sigmoid approximation h * sigmoid(1.702 h) some ports use for GELU."""
    return (h / (1 + np.exp(-1.702 * h))).astype(h.dtype)


def softmax_without_shift(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """mha §6.4 without subtracting the row's largest score: exp overflows past about 88.7 in float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.where(mask, np.exp(np.where(mask, scores, 0)), 0).astype(scores.dtype)
        total = e.sum(axis=-1, keepdims=True)
        return np.where(mask.any(axis=-1, keepdims=True), e / np.where(total == 0, 1, total), 0).astype(scores.dtype)


def additive_fill(fill: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A mask added to the scores as `fill` (0 where visible), the shifted softmax, fully masked rows zeroed."""
    def softmax(scores, mask):
        s = scores + np.where(mask, 0, fill).astype(scores.dtype)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        w = e / e.sum(axis=-1, keepdims=True)
        return np.where(mask.any(axis=-1, keepdims=True), w, 0).astype(scores.dtype)
    return softmax


def replacing_fill(fill: float) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Masked scores replaced by `fill` (masked_fill), the shifted softmax, fully masked rows zeroed."""
    def softmax(scores, mask):
        s = np.where(mask, scores, fill).astype(scores.dtype)
        e = np.exp(s - s.max(axis=-1, keepdims=True))
        w = e / e.sum(axis=-1, keepdims=True)
        return np.where(mask.any(axis=-1, keepdims=True), w, 0).astype(scores.dtype)
    return softmax


def layer_norm(v: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float, *,
               one_pass: bool = False) -> np.ndarray:
    """encoder_block §5.3; `one_pass`: the variance as E[v**2] - E[v]**2, which cancels when the mean is large."""
    mean = v.mean(axis=-1, keepdims=True)
    if one_pass:
        var = np.maximum((v * v).mean(axis=-1, keepdims=True) - mean * mean, 0)
    else:
        var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((v - mean) / np.sqrt(var + v.dtype.type(epsilon)) * gamma + beta).astype(v.dtype)


def block(config: Mapping[str, Any], w: Mapping[str, np.ndarray], x: np.ndarray, padding: np.ndarray | None, *,
          epsilon: float | None = None, one_pass: bool = False, activations=ACTIVATIONS,
          divisor=None, softmax=masked_softmax) -> dict[str, np.ndarray]:
    """spec/encoder_block.md §5 with one changed piece; the defaults are the spec."""
    eps = config["epsilon"] if epsilon is None else epsilon
    mask = None if padding is None else padding[:, None, :]  # (B, 1, T)

    def LN(v, i):
        return layer_norm(v, w[f"gamma_{i}"], w[f"beta_{i}"], eps, one_pass=one_pass)

    def MHA(v):
        out = _attention(config, w, {"query": v, "key": v, "value": v, "attention_mask": mask},
                         divisor=divisor, softmax=softmax)
        return out["output"], out["attention_weights"]

    def FFN(v):
        h = v @ w["W_1"] + w["b_1"]  # (B, T, d_ff)
        return activations[config["activation"]](h) @ w["W_2"] + w["b_2"]

    if config["norm"] == "post":
        a, attn = MHA(x)
        h = LN(x + a, 1)
        y = LN(h + FFN(h), 2)
    else:
        a, attn = MHA(LN(x, 1))
        h = x + a
        y = h + FFN(LN(h, 2))
    return {"y": y, "attention_weights": attn}


class Changed(Switchable):
    """One constant changed: `changes` says which, as the test's parameter id shows it."""

    changes = ""

    def forward(self, config, weights, inputs):
        raise NotImplementedError


# --- mha -----------------------------------------------------------------------------------------------------

class _Attention(Changed):
    component = "mha"

    def forward(self, config, weights, inputs):
        return _attention(config, weights, inputs, **self.options)


class DivisorSqrtDModel(_Attention):
    changes = "score divisor sqrt(d_model) for sqrt(d_head)"
    options = {"divisor": lambda c: c["d_model"]}


class DivisorDHead(_Attention):
    changes = "score divisor d_head for sqrt(d_head)"
    options = {"divisor": lambda c: c["d_head"] ** 2}


class NoMaxShift(_Attention):
    changes = "softmax without the max shift"
    options = {"softmax": softmax_without_shift}


class AdditiveFill1e4(_Attention):
    changes = "mask added as -1e4"
    options = {"softmax": additive_fill(-1e4)}


class ReplacingFill1e9(_Attention):
    changes = "masked scores replaced by -1e9"
    options = {"softmax": replacing_fill(-1e9)}


# --- ffn -----------------------------------------------------------------------------------------------------

class _FeedForward(Changed):
    component = "ffn"

    def forward(self, config, weights, inputs):
        return _ffn(config, weights, inputs["x"], **self.options)


class TanhGelu(_FeedForward):
    changes = "tanh GELU for the exact one"
    options = {"activations": {**ACTIVATIONS, "gelu": gelu_tanh}}


class SigmoidGelu(_FeedForward):
    changes = "sigmoid GELU for the exact one"
    options = {"activations": {**ACTIVATIONS, "gelu": gelu_sigmoid}}


class SigmoidGeluTanh(_FeedForward):
    changes = "sigmoid GELU for the tanh one"
    options = {"activations": {**ACTIVATIONS, "gelu_tanh": gelu_sigmoid}}


# --- encoder_block -------------------------------------------------------------------------------------------

class _Block(Changed):
    component = "encoder_block"

    def forward(self, config, weights, inputs):
        return block(config, weights, inputs["x"], inputs.get("padding_mask"), **self.options)


class Epsilon1e12(_Block):
    changes = "layer-norm epsilon 1e-12 (BERT's)"
    options = {"epsilon": 1e-12}


class Epsilon1e6(_Block):
    changes = "layer-norm epsilon 1e-6"
    options = {"epsilon": 1e-6}


class Epsilon1e3(_Block):
    changes = "layer-norm epsilon 1e-3 (Keras' default)"
    options = {"epsilon": 1e-3}


class OnePassVariance(_Block):
    changes = "layer-norm variance as E[v**2] - E[v]**2"
    options = {"one_pass": True}


class BlockTanhGelu(_Block):
    changes = "tanh GELU for the exact one"
    options = {"activations": {**ACTIVATIONS, "gelu": gelu_tanh}}


class BlockSigmoidGelu(_Block):
    changes = "sigmoid GELU for the exact one"
    options = {"activations": {**ACTIVATIONS, "gelu": gelu_sigmoid}}


class BlockDivisorSqrtDModel(_Block):
    changes = "score divisor sqrt(d_model) for sqrt(d_head)"
    options = {"divisor": lambda c: c["d_model"]}


class BlockNoMaxShift(_Block):
    changes = "softmax without the max shift"
    options = {"softmax": softmax_without_shift}


class BlockAdditiveFill1e4(_Block):
    changes = "mask added as -1e4"
    options = {"softmax": additive_fill(-1e4)}


class BlockReplacingFill1e9(_Block):
    changes = "masked scores replaced by -1e9"
    options = {"softmax": replacing_fill(-1e9)}


class Correct(_Block):
    """The control: nothing changed."""

    changes = ""


# --- embedding, lstm_classifier, lstm_seq2seq, text_classifier: the switches of tests/wrong_<component>.py ---

#: name: (the wrong implementation it is, or whose switches it sets, what it changes, the switches it sets)
REUSED = {
    "EmbeddingConcatenated": (wrong_embedding.ConcatenatedHalves, "sinusoids as [sin..., cos...] for interleaved", {}),
    "EmbeddingExponentByColumn": (wrong_embedding.ExponentByColumn,
                                  "frequency exponent j / d_model for 2 floor(j/2) / d_model", {}),
    "EmbeddingBase1e5": (wrong_embedding._Wrong, "sinusoid base 1e5 for 10000", {"base": 1e5}),
    "EmbeddingScaleMissing": (wrong_embedding.MissingScale, "no sqrt(d_model) on the tokens", {}),
    "EmbeddingPositionsFromOne": (wrong_embedding.PositionsFromOne, "positions counted from 1", {}),
    "LstmGateOrderFgio": (wrong_lstm_classifier.BookGateOrder, "gate order f, g, i, o for i, f, g, o", {}),
    "LstmHardSigmoid": (wrong_lstm_classifier.HardSigmoid, "hard sigmoid gates (Keras 2's recurrent_activation)", {}),
    "LstmForgetBias1": (wrong_lstm_classifier._Wrong, "1 added to the forget gate (TF 1's forget_bias)",
                        {"forget_bias": 1.0}),
    "Seq2seqGatesIofg": (wrong_lstm_seq2seq.GatesInONNXOrder, "gate order i, o, f, g (ONNX) for i, f, g, o", {}),
    "Seq2seqScaledScores": (wrong_lstm_seq2seq.ScaledScores, "attention scores divided by hidden", {}),
    "Seq2seqBiasTwice": (wrong_lstm_seq2seq.BiasCountedTwice,
                         "the gate bias added twice (b_ih + b_hh, both loaded with b)", {}),
    "ClassifierMaxOverPadding": (wrong_text_classifier.MaxOverPadding, "max pooling over padded positions too", {}),
    "ClassifierMeanOverT": (wrong_text_classifier.MeanOverT, "mean pooling divided by T", {}),
}
for _name, (_base, _changes, _options) in REUSED.items():
    globals()[_name] = type(_name, (_base, Changed), {"changes": _changes, "__module__": __name__,
                                                      **({"options": _options} if _options else {})})


#: Every family member, by component.
FAMILIES = {c: [k for k in list(globals().values()) if isinstance(k, type) and issubclass(k, Changed)
                and k.changes and getattr(k, "component", None) == c]
            for c in ("mha", "ffn", "encoder_block", "embedding", "lstm_classifier", "lstm_seq2seq", "text_classifier")}
