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


def _define(name: str, base: type, changes: str, options: dict[str, Any] | None = None) -> None:
    """A family member named `name` in this module: `base`'s computation with `options` set."""
    attrs = {"changes": changes, "__module__": __name__, **({"options": options} if options else {})}
    globals()[name] = type(name, (base,) if issubclass(base, Changed) else (base, Changed), attrs)


class _Attention(Changed):
    component = "mha"

    def forward(self, config, weights, inputs):
        return _attention(config, weights, inputs, **self.options)


class _FeedForward(Changed):
    component = "ffn"

    def forward(self, config, weights, inputs):
        return _ffn(config, weights, inputs["x"], **self.options)


class _Block(Changed):
    component = "encoder_block"

    def forward(self, config, weights, inputs):
        return block(config, weights, inputs["x"], inputs.get("padding_mask"), **self.options)


class Correct(_Block):
    """The control: nothing changed."""

    changes = ""


#: name: (what it changes, the switches it sets). Each is a change of mha (the name) and of encoder_block's
#: attention ("Block" + name).
ATTENTION = {
    "DivisorSqrtDModel": ("score divisor sqrt(d_model) for sqrt(d_head)", {"divisor": lambda c: c["d_model"]}),
    "NoMaxShift": ("softmax without the max shift", {"softmax": softmax_without_shift}),
    "AdditiveFill1e4": ("mask added as -1e4", {"softmax": additive_fill(-1e4)}),
    "ReplacingFill1e9": ("masked scores replaced by -1e9", {"softmax": replacing_fill(-1e9)}),
}
#: The same for the feed-forward network: of ffn (the name) and of encoder_block's ("Block" + name).
GELU = {
    "TanhGelu": ("tanh GELU for the exact one", {"activations": {**ACTIVATIONS, "gelu": gelu_tanh}}),
    "SigmoidGelu": ("sigmoid GELU for the exact one", {"activations": {**ACTIVATIONS, "gelu": gelu_sigmoid}}),
}
for _name, (_changes, _options) in ATTENTION.items():
    _define(_name, _Attention, _changes, _options)
    _define("Block" + _name, _Block, _changes, _options)
for _name, (_changes, _options) in GELU.items():
    _define(_name, _FeedForward, _changes, _options)
    _define("Block" + _name, _Block, _changes, _options)
_define("DivisorDHead", _Attention, "score divisor d_head for sqrt(d_head)", {"divisor": lambda c: c["d_head"] ** 2})
_define("SigmoidGeluTanh", _FeedForward, "sigmoid GELU for the tanh one",
        {"activations": {**ACTIVATIONS, "gelu_tanh": gelu_sigmoid}})
_define("Epsilon1e12", _Block, "layer-norm epsilon 1e-12 (BERT's)", {"epsilon": 1e-12})
_define("Epsilon1e6", _Block, "layer-norm epsilon 1e-6", {"epsilon": 1e-6})
_define("Epsilon1e3", _Block, "layer-norm epsilon 1e-3 (Keras' default)", {"epsilon": 1e-3})
_define("OnePassVariance", _Block, "layer-norm variance as E[v**2] - E[v]**2", {"one_pass": True})

# embedding, lstm_classifier, lstm_seq2seq, text_classifier: tests/wrong_<component>.py's switches
_define("EmbeddingConcatenated", wrong_embedding.ConcatenatedHalves, "sinusoids as [sin..., cos...] for interleaved")
_define("EmbeddingExponentByColumn", wrong_embedding.ExponentByColumn,
        "frequency exponent j / d_model for 2 floor(j/2) / d_model")
_define("EmbeddingBase1e5", wrong_embedding._Wrong, "sinusoid base 1e5 for 10000", {"base": 1e5})
_define("EmbeddingScaleMissing", wrong_embedding.MissingScale, "no sqrt(d_model) on the tokens")
_define("EmbeddingPositionsFromOne", wrong_embedding.PositionsFromOne, "positions counted from 1")
_define("LstmGateOrderFgio", wrong_lstm_classifier.BookGateOrder, "gate order f, g, i, o for i, f, g, o")
_define("LstmHardSigmoid", wrong_lstm_classifier.HardSigmoid, "hard sigmoid gates (Keras 2's recurrent_activation)")
_define("LstmForgetBias1", wrong_lstm_classifier._Wrong, "1 added to the forget gate (TF 1's forget_bias)",
        {"forget_bias": 1.0})
_define("Seq2seqGatesIofg", wrong_lstm_seq2seq.GatesInONNXOrder, "gate order i, o, f, g (ONNX) for i, f, g, o")
_define("Seq2seqScaledScores", wrong_lstm_seq2seq.ScaledScores, "attention scores divided by hidden")
_define("Seq2seqBiasTwice", wrong_lstm_seq2seq.BiasCountedTwice,
        "the gate bias added twice (b_ih + b_hh, both loaded with b)")
_define("ClassifierMaxOverPadding", wrong_text_classifier.MaxOverPadding, "max pooling over padded positions too")
_define("ClassifierMeanOverT", wrong_text_classifier.MeanOverT, "mean pooling divided by T")


#: Every family member, by component.
FAMILIES = {c: [k for k in list(globals().values()) if isinstance(k, type) and issubclass(k, Changed)
                and k.changes and getattr(k, "component", None) == c]
            for c in ("mha", "ffn", "encoder_block", "embedding", "lstm_classifier", "lstm_seq2seq", "text_classifier")}
