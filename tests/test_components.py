"""Generic tests over every component, in place of what each component's test file used to repeat.

What is specific to a component (its converters, its framework's defaults, its
wrong implementations' shrunk examples) stays in tests/test_<component>.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.engine import run_cell
from conformance.registry import resolve
from conformance.spec import list_components, load_spec
from conformance.vocabulary import DTYPES

ROOT = Path(__file__).resolve().parent.parent
keras_on_torch = all(importlib.util.find_spec(m) is not None for m in ("keras", "torch"))


@pytest.fixture(scope="module")
def keras_on_the_torch_backend(tmp_path_factory) -> list[dict]:
    """Every Keras cell on the torch backend, eager, every dtype: one run for all components (tests/test_mha.py
    runs every backend and both modes for mha; the calibration runs the rest)."""
    out = tmp_path_factory.mktemp("keras-torch") / "results.json"
    proc = subprocess.run([sys.executable, "-m", "conformance", "run", "--framework", "keras", "--backend", "torch",
                           "--mode", "eager", "--device", "cpu", "--examples", "30", "-o", str(out)],
                          cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["cells"]


@pytest.mark.xdist_group("keras-on-torch")  # one worker runs the fixture's run once for all components
@pytest.mark.skipif(not keras_on_torch, reason="Keras or PyTorch is not installed")
@pytest.mark.parametrize("component", list_components())
def test_our_keras_implementation_conforms_on_the_torch_backend(keras_on_the_torch_backend, component):
    ours = [c for c in keras_on_the_torch_backend if c["component"] == component and c["implementation"] == "keras"]
    assert {(c["backend"], c["dtype"], c["verdict"]) for c in ours} == {("torch", d, "conformant") for d in DTYPES}, \
        [(c["dtype"], c["verdict"], c["reason"]) for c in ours]
    assert all(c["examples"] >= 30 for c in ours)


#: Our Keras layer of each component, and arguments it accepts; the bad arguments below replace some of them.
KERAS_LAYERS = {
    "mha": ("impls.keras.mha", "MultiHeadAttention", {"d_model": 4, "num_heads": 2, "d_head": 2, "dropout": 0.0}),
    "ffn": ("impls.keras.ffn", "FeedForward", {"d_model": 4, "d_ff": 8}),
    "embedding": ("impls.keras.embedding", "TokenAndPositionEmbedding",
                  {"vocab_size": 5, "d_model": 4, "max_len": 8, "positional": "learned", "scale": False}),
    "encoder_block": ("impls.keras.encoder_block", "EncoderBlock", {"d_model": 4, "num_heads": 2, "d_head": 2, "d_ff": 8}),
    "lstm_classifier": ("impls.keras.lstm_classifier", "LSTMClassifier",
                        {"d_in": 2, "hidden": 3, "num_layers": 1, "num_classes": 2}),
    "lstm_seq2seq": ("impls.keras.lstm_seq2seq", "AttentionSeq2Seq",
                     {"src_vocab": 4, "tgt_vocab": 4, "d_embed": 2, "hidden": 2, "N": 2}),
}

#: (component, the arguments changed, what the error must say): the layer names the bad value and the valid ones.
BAD_ARGUMENTS = [
    ("mha", {"num_heads": 0}, "num_heads must be a positive integer, got 0"),
    ("mha", {"d_head": 2.5}, "d_head must be a positive integer, got 2.5"),
    ("mha", {"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ("ffn", {"d_ff": 0}, "d_ff must be a positive integer, got 0"),
    ("ffn", {"d_model": 2.5}, "d_model must be a positive integer, got 2.5"),
    ("ffn", {"activation": "gelu_erf"}, "activation must be one of relu, gelu, gelu_tanh, got 'gelu_erf'"),
    ("ffn", {"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
    ("embedding", {"vocab_size": 0}, "vocab_size must be a positive integer, got 0"),
    ("embedding", {"d_model": 2.5}, "d_model must be a positive integer, got 2.5"),
    ("embedding", {"positional": "rotary"}, "positional must be one of learned, sinusoidal, got 'rotary'"),
    ("embedding", {"scale": "yes"}, "scale must be True or False, got 'yes'"),
    ("encoder_block", {"norm": "sandwich"}, "norm must be one of post, pre, got 'sandwich'"),
    ("encoder_block", {"epsilon": 0.0}, "epsilon must be positive, got 0.0"),
    ("encoder_block", {"d_ff": 0}, "d_ff must be a positive integer, got 0"),
    ("encoder_block", {"num_heads": 0}, "num_heads must be a positive integer, got 0"),
    ("encoder_block", {"activation": "gelu_erf"}, "activation must be one of relu, gelu, gelu_tanh, got 'gelu_erf'"),
    ("lstm_classifier", {"hidden": 0}, "hidden must be a positive integer, got 0"),
    ("lstm_classifier", {"num_layers": 1.5}, "num_layers must be a positive integer, got 1.5"),
    ("lstm_classifier", {"d_in": True}, "d_in must be a positive integer, got True"),
    ("lstm_seq2seq", {"hidden": 0}, "hidden must be a positive integer, got 0"),
    ("lstm_seq2seq", {"d_embed": 2.5}, "d_embed must be a positive integer, got 2.5"),
    ("lstm_seq2seq", {"N": True}, "N must be a positive integer, got True"),
]


def test_every_component_has_a_keras_layer_and_bad_arguments_for_it():
    assert set(KERAS_LAYERS) == set(list_components()) == {c for c, _, _ in BAD_ARGUMENTS}


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
@pytest.mark.parametrize("component, bad, message", BAD_ARGUMENTS,
                         ids=[f"{c}-{next(iter(bad))}" for c, bad, _ in BAD_ARGUMENTS])
def test_our_keras_layer_rejects_bad_arguments_by_name(component, bad, message):
    module, cls, good = KERAS_LAYERS[component]
    layer = getattr(importlib.import_module(module), cls)
    layer(**good)  # the arguments the bad ones replace are accepted
    with pytest.raises(ValueError) as info:
        layer(**{**good, **bad})
    assert message in str(info.value)


@pytest.mark.parametrize("component", list_components())
def test_the_control_beside_the_wrong_implementations_is_conformant(component):
    """tests/wrong_<component>.py's `Correct`, the control its mistakes are variations of: conformant over the
    search and every worked example, on every float output, within a tenth of its budget (the calibration rule,
    spec/README.md)."""
    spec = load_spec(ROOT / "spec" / f"{component}.md")
    cell = run_cell(spec, resolve(component, f"{ROOT / 'tests' / f'wrong_{component}.py'}:Correct"), "float32", "cpu",
                    max_examples=60)
    assert cell.verdict == "conformant", cell.reason
    assert cell.examples >= 60 + len(spec.examples)
    assert set(cell.max_error) == {o.name for o in spec.outputs.values() if o.dtype == "float"}
    assert 0 < cell.max_ratio <= 0.1 and cell.p99_ratio <= cell.max_ratio
