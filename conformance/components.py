"""One record per component: what the project ships for it, declared once.

From a component's id follow its spec (spec/<id>.md), its reference
(impls/numpy/<id>.py, `forward`) and our implementations
(impls/<framework>/<id>.py, class `Implementation`, one per framework of
`impls.OUR_FRAMEWORKS`). The record adds what cannot be derived: the
frameworks' own layers we adapt, and our Keras layer with arguments it takes
and arguments it must refuse. The registry (conformance/registry.py) lists
implementations from the records without importing a framework; the generic
tests (tests/test_components.py) run over them, with each component's
deliberately wrong implementations in tests/wrong_<id>.py. Adding a component
is a spec, a reference, implementations and one record here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Mapping

from conformance.vocabulary import UsageError


@dataclass(frozen=True)
class Layer:
    """A framework's or library's own layer, adapted in impls/<framework>/: the name results give it (the
    adapter class's `name`), its framework, the adapter as "module:Class", and the modules it needs beyond
    the framework's (a library such as transformers: without it the layer is listed as not installed)."""

    name: str
    framework: str
    target: str
    requires: tuple[str, ...] = ()


@dataclass(frozen=True)
class Component:
    id: str
    keras_layer: str  # our Keras layer, "module:Class" (it validates its arguments and round-trips its config)
    keras_arguments: Mapping[str, Any]  # arguments it accepts
    bad_arguments: tuple[tuple[Mapping[str, Any], str], ...]  # (arguments that replace some, what the error says)
    layers: tuple[Layer, ...] = ()

    @property
    def reference(self) -> str:
        return f"impls.numpy.{self.id}:forward"

    def ours(self, framework: str) -> str:
        """Our implementation in `framework`, as a registry target."""
        return f"impls.{framework}.{self.id}:Implementation"


def _bad(*pairs: tuple[dict[str, Any], str]) -> tuple[tuple[Mapping[str, Any], str], ...]:
    return tuple((MappingProxyType(changed), message) for changed, message in pairs)


#: The modules the adapters of each library need beyond their framework's (the first names the library).
_HF = ("transformers",)
_KERAS_HUB = ("keras_hub",)
_FLAX = ("flax",)
_EQUINOX = ("equinox",)
_ONNX = ("onnxruntime", "onnx", "onnxscript")  # the dynamo exporter's translations are onnxscript's
_ONNX_LEGACY = ("onnxruntime", "onnx")

_MHA_ARGS = {"d_model": 4, "num_heads": 2, "d_head": 2, "dropout": 0.0}

COMPONENTS = (
    Component(
        "mha", "impls.keras.mha:MultiHeadAttention", MappingProxyType(_MHA_ARGS),
        _bad(({"num_heads": 0}, "num_heads must be a positive integer, got 0"),
             ({"d_head": 2.5}, "d_head must be a positive integer, got 2.5"),
             ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0")),
        (Layer("torch.nn.MultiheadAttention", "torch", "impls.torch.builtin_mha:MultiheadAttentionWeights"),
         Layer("torch.nn.MultiheadAttention[need_weights=False]", "torch",
               "impls.torch.builtin_mha:MultiheadAttentionNoWeights"),
         Layer("torch.sdpa", "torch", "impls.torch.builtin_mha:SDPA"),
         Layer("keras.layers.MultiHeadAttention", "keras", "impls.keras.builtin_mha:MultiHeadAttentionScores"),
         Layer("keras.layers.MultiHeadAttention[scores=False]", "keras",
               "impls.keras.builtin_mha:MultiHeadAttentionNoScores"),
         Layer("transformers.eager_attention", "torch", "impls.torch.hf_transformers:EagerAttention", _HF),
         Layer("transformers.sdpa_attention", "torch", "impls.torch.hf_transformers:SDPAAttention", _HF),
         Layer("flax.nnx.MultiHeadAttention", "jax", "impls.jax.flax_nnx:MultiHeadAttention", _FLAX),
         Layer("flax.nnx.MultiHeadAttention[sow_weights=False]", "jax", "impls.jax.flax_nnx:MultiHeadAttentionFused",
               _FLAX),
         Layer("equinox.nn.MultiheadAttention", "jax", "impls.jax.equinox:MultiheadAttention", _EQUINOX))),
    Component(
        "ffn", "impls.keras.ffn:FeedForward", MappingProxyType({"d_model": 4, "d_ff": 8}),
        _bad(({"d_ff": 0}, "d_ff must be a positive integer, got 0"),
             ({"d_model": 2.5}, "d_model must be a positive integer, got 2.5"),
             ({"activation": "gelu_erf"}, "activation must be one of relu, gelu, gelu_tanh, got 'gelu_erf'"),
             ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0")),
        (Layer("keras.layers.Dense", "keras", "impls.keras.builtin_layers:Dense"),)),
    Component(
        "embedding", "impls.keras.embedding:TokenAndPositionEmbedding",
        MappingProxyType({"vocab_size": 5, "d_model": 4, "max_len": 8, "positional": "learned", "scale": False}),
        _bad(({"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
             ({"d_model": 2.5}, "d_model must be a positive integer, got 2.5"),
             ({"positional": "rotary"}, "positional must be one of learned, sinusoidal, got 'rotary'"),
             ({"scale": "yes"}, "scale must be True or False, got 'yes'")),
        (Layer("keras.layers.Embedding", "keras", "impls.keras.builtin_layers:Embedding"),
         Layer("keras_hub.layers.TokenAndPositionEmbedding", "keras",
               "impls.keras.keras_hub_layers:TokenAndPositionEmbedding", _KERAS_HUB),
         Layer("keras_hub.layers.SinePositionEncoding", "keras", "impls.keras.keras_hub_layers:SinePositionEncoding",
               _KERAS_HUB))),
    Component(
        "encoder_block", "impls.keras.encoder_block:EncoderBlock",
        MappingProxyType({"d_model": 4, "num_heads": 2, "d_head": 2, "d_ff": 8}),
        _bad(({"norm": "sandwich"}, "norm must be one of post, pre, got 'sandwich'"),
             ({"epsilon": 0.0}, "epsilon must be positive, got 0.0"),
             ({"d_ff": 0}, "d_ff must be a positive integer, got 0"),
             ({"num_heads": 0}, "num_heads must be a positive integer, got 0"),
             ({"activation": "gelu_erf"}, "activation must be one of relu, gelu, gelu_tanh, got 'gelu_erf'")),
        (Layer("torch.nn.TransformerEncoderLayer", "torch", "impls.torch.builtin_encoder:TransformerEncoderLayer"),
         Layer("torch.nn.TransformerEncoderLayer[fastpath=False]", "torch",
               "impls.torch.builtin_encoder:TransformerEncoderLayerNoFastpath"),
         Layer("torch.nn.TransformerEncoder[nested]", "torch", "impls.torch.builtin_encoder:NestedTransformerEncoder"),
         Layer("keras.layers.LayerNormalization", "keras", "impls.keras.builtin_encoder:LayerNormalization"),
         Layer("transformers.BertLayer", "torch", "impls.torch.hf_transformers:BertLayerEager", _HF),
         Layer("transformers.BertLayer[sdpa]", "torch", "impls.torch.hf_transformers:BertLayerSDPA", _HF),
         Layer("keras_hub.layers.TransformerEncoder", "keras", "impls.keras.keras_hub_layers:TransformerEncoder",
               _KERAS_HUB))),
    Component(
        "lstm_classifier", "impls.keras.lstm_classifier:LSTMClassifier",
        MappingProxyType({"d_in": 2, "hidden": 3, "num_layers": 1, "num_classes": 2}),
        _bad(({"hidden": 0}, "hidden must be a positive integer, got 0"),
             ({"num_layers": 1.5}, "num_layers must be a positive integer, got 1.5"),
             ({"d_in": True}, "d_in must be a positive integer, got True")),
        (Layer("torch.nn.LSTM", "torch", "impls.torch.builtin_lstm:Classifier"),
         Layer("keras.layers.LSTM", "keras", "impls.keras.builtin_lstm:Classifier"),
         Layer("flax.nnx.LSTMCell", "jax", "impls.jax.flax_nnx:LSTMCell", _FLAX),
         Layer("flax.nnx.OptimizedLSTMCell", "jax", "impls.jax.flax_nnx:OptimizedLSTMCell", _FLAX),
         Layer("equinox.nn.LSTMCell", "jax", "impls.jax.equinox:LSTMCell", _EQUINOX))),
    Component(
        "lstm_seq2seq", "impls.keras.lstm_seq2seq:AttentionSeq2Seq",
        MappingProxyType({"src_vocab": 4, "tgt_vocab": 4, "d_embed": 2, "hidden": 2, "N": 2}),
        _bad(({"hidden": 0}, "hidden must be a positive integer, got 0"),
             ({"d_embed": 2.5}, "d_embed must be a positive integer, got 2.5"),
             ({"N": True}, "N must be a positive integer, got True")),
        (Layer("torch.nn.LSTM", "torch", "impls.torch.builtin_lstm:Seq2Seq"),
         Layer("torch.nn.LSTMCell", "torch", "impls.torch.builtin_lstm:Seq2SeqCell"),
         Layer("keras.layers.LSTM", "keras", "impls.keras.builtin_lstm:Seq2Seq"))),
)

COMPONENTS += (
    Component(
        "text_classifier", "impls.keras.text_classifier:TextClassifier",
        MappingProxyType({"vocab_size": 5, "d_model": 4, "max_len": 8, "positional": "learned", "num_heads": 2,
                          "d_head": 2, "d_ff": 8, "epsilon": 1e-5, "num_layers": 1, "pooling": "max",
                          "head": "sigmoid", "num_classes": 1}),
        _bad(({"pooling": "sum"}, "pooling must be one of max, mean, got 'sum'"),
             ({"head": "softmax"}, "head must be one of sigmoid, none, got 'softmax'"),
             ({"num_layers": 0}, "num_layers must be a positive integer, got 0"),
             ({"num_classes": 1.5}, "num_classes must be a positive integer, got 1.5")),
        (Layer("torch.nn.TransformerEncoder[classifier]", "torch",
               "impls.torch.builtin_classifier:TransformerEncoderClassifier"),
         Layer("torch.nn.TransformerEncoder[classifier, state_dict]", "torch",
               "impls.torch.builtin_classifier:TransformerEncoderClassifierStateDict"),
         Layer("keras.Model[functional]", "keras", "impls.keras.builtin_classifier:FunctionalModel"),
         Layer("keras.Model[functional, saved and loaded]", "keras",
               "impls.keras.builtin_classifier:SavedFunctionalModel"))),
)

#: PyTorch implementations run through ONNX Runtime (impls/torch/onnx_runtime.py), per component: (the inner
#: implementation's name, the target class for the dynamo exporter; its legacy exporter's adds "Legacy").
ONNX_TARGETS = {
    "mha": (("torch", "MhaOnnx"), ("torch.nn.MultiheadAttention", "MultiheadAttentionOnnx")),
    "ffn": (("torch", "FfnOnnx"),),
    "embedding": (("torch", "EmbeddingOnnx"),),
    "encoder_block": (("torch", "EncoderBlockOnnx"),
                      ("torch.nn.TransformerEncoderLayer", "TransformerEncoderLayerOnnx")),
    "lstm_classifier": (("torch", "LstmClassifierOnnx"), ("torch.nn.LSTM", "LSTMClassifierOnnx")),
    "lstm_seq2seq": (("torch", "LstmSeq2SeqOnnx"), ("torch.nn.LSTM", "LSTMSeq2SeqOnnx")),
    "text_classifier": (("torch", "TextClassifierOnnx"),),
}


def _onnx_layers(component: str) -> tuple[Layer, ...]:
    """The ONNX Runtime targets of a component: each inner implementation through each exporter, named
    `inner[onnx]` and `inner[onnx, legacy]` (a bracketed name takes the tag inside its brackets)."""
    def tagged(name: str, tag: str) -> str:
        return f"{name[:-1]}, {tag}]" if name.endswith("]") else f"{name}[{tag}]"

    return tuple(layer for inner, cls in ONNX_TARGETS.get(component, ()) for layer in (
        Layer(tagged(inner, "onnx"), "torch", f"impls.torch.onnx_runtime:{cls}", _ONNX),
        Layer(tagged(inner, "onnx, legacy"), "torch", f"impls.torch.onnx_runtime:{cls}Legacy", _ONNX_LEGACY)))


COMPONENTS = tuple(replace(c, layers=c.layers + _onnx_layers(c.id)) for c in COMPONENTS)

BY_ID = {c.id: c for c in COMPONENTS}


def record(component: str) -> Component:
    """The record of a component (UsageError naming the known ones)."""
    if component not in BY_ID:
        raise UsageError(f"unknown component {component!r}; known: {', '.join(BY_ID)}")
    return BY_ID[component]


def framework_layer(target: str) -> Layer | None:
    """The framework layer whose adapter is `target`, if it is one."""
    return next((layer for c in COMPONENTS for layer in c.layers if layer.target == target), None)
