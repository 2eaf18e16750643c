"""KerasHub's own layers as implementations (impls/keras/keras_hub_layers.py): their converters, what they refuse,
and their verdicts, with the built-in ledger's entries for them.

The verdicts come from one-example cells run in processes of their own, one per Keras backend
(KERAS_BACKEND is fixed once per process): torch, where every layer conforms in float32 and only the
encoder deviates in float64, and TensorFlow, where the encoder and SinePositionEncoding deviate in float64.
The adapters are named by their targets (module:Class), which works whether or not the harness registers
them, and so are spec/deviations.toml's entries for them in these cells (`CELLS` renames them).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras_hub", reason="KerasHub (keras-hub) is not installed")

from conformance import generate  # noqa: E402
from conformance.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENCODER = "impls.keras.keras_hub_layers:TransformerEncoder"
LEARNED = "impls.keras.keras_hub_layers:TokenAndPositionEmbedding"
SINE = "impls.keras.keras_hub_layers:SinePositionEncoding"

#: d_head = d_model // num_heads (KerasHub's key_dim), not a power of 4 and gelu: both TensorFlow constants.
BLOCK = {"d_model": 6, "num_heads": 2, "d_head": 3, "d_ff": 5, "activation": "gelu", "norm": "post",
         "epsilon": 1e-5, "dropout": 0.1, "B": 2, "T": 4, "mask": "padding", "scale_exp": 0, "offset": 0,
         "weight_exp": 0, "seed": 1}
PRE_BLOCK = {**BLOCK, "d_model": 8, "d_head": 4, "activation": "relu", "norm": "pre", "epsilon": 1e-3, "seed": 2}
LEARNED_EMBEDDING = {"vocab_size": 7, "d_model": 5, "max_len": 8, "positional": "learned", "scale": False,
                     "B": 2, "T": 4, "scale_exp": 0, "seed": 1}
SINE_EMBEDDING = {**LEARNED_EMBEDDING, "positional": "sinusoidal", "scale": True, "T": 6}

#: (case, component, target, dtype, example, whether the ledger entries apply) per backend, and what each
#: gives: (forward verdict, gradient verdict, the entry it deviates under or None). A one-example cell checks
#: the gradients only where the forward pass followed the spec ("not-checked" otherwise); the entries' gradient
#: parts were seen covering deviating gradients on drawn examples (conformance check --profile dev).
CASES = {
    "torch": [
        ("encoder float32", "encoder_block", ENCODER, "float32", BLOCK, False),
        ("encoder float32 pre-norm", "encoder_block", ENCODER, "float32", PRE_BLOCK, False),
        ("encoder float64 raw", "encoder_block", ENCODER, "float64", BLOCK, False),
        ("encoder float64", "encoder_block", ENCODER, "float64", BLOCK, True),
        ("learned float32", "embedding", LEARNED, "float32", LEARNED_EMBEDDING, False),
        ("learned float64", "embedding", LEARNED, "float64", LEARNED_EMBEDDING, False),
        ("sine float32", "embedding", SINE, "float32", SINE_EMBEDDING, False),
        ("sine float64", "embedding", SINE, "float64", SINE_EMBEDDING, False),
    ],
    "tensorflow": [
        ("encoder float64", "encoder_block", ENCODER, "float64", BLOCK, True),
        ("encoder float64 exact constants", "encoder_block", ENCODER, "float64", PRE_BLOCK, False),
        ("sine float64 raw", "embedding", SINE, "float64", SINE_EMBEDDING, False),
        ("sine float64", "embedding", SINE, "float64", SINE_EMBEDDING, True),
        ("learned float64", "embedding", LEARNED, "float64", LEARNED_EMBEDDING, False),
    ],
}
EXPECTED = {
    "torch": {
        "encoder float32": ("conformant", "conformant", None),
        "encoder float32 pre-norm": ("conformant", "conformant", None),
        "encoder float64 raw": ("non-conformant", "not-checked", None),
        "encoder float64": ("known-deviation", "not-checked", "keras-hub-transformer-encoder-float64-in-float32"),
        "learned float32": ("conformant", "conformant", None),
        "learned float64": ("conformant", "conformant", None),
        "sine float32": ("conformant", "conformant", None),
        "sine float64": ("conformant", "conformant", None),
    },
    "tensorflow": {
        "encoder float64": ("known-deviation", "not-checked",
                            "keras-hub-transformer-encoder-tensorflow-float64-constants"),
        "encoder float64 exact constants": ("conformant", "conformant", None),  # d_head = 4 and relu
        "sine float64 raw": ("non-conformant", "not-checked", None),
        "sine float64": ("known-deviation", "not-checked",
                         "keras-hub-sine-position-encoding-tensorflow-float64-wavelength"),
        "learned float64": ("conformant", "conformant", None),
    },
}

CELLS = """
import dataclasses, json, sys
from pathlib import Path
from conformance import deviations
from conformance.components import COMPONENTS
from conformance.engine import run_cell
from conformance.spec import load_spec
from conformance.registry import resolve

# the built-in ledger's entries for KerasHub's layers, named by the adapters' targets as the cells name them
targets = {(c.id, layer.name): layer.target for c in COMPONENTS for layer in c.layers}
entries = [dataclasses.replace(d, implementation=targets[(d.component, d.implementation)])
            for d in deviations.load() if d.implementation.startswith("keras_hub.")]
for case, component, target, dtype, example, with_entries in json.loads(sys.argv[1]):
    spec = load_spec(Path("spec") / f"{component}.md")
    cell = run_cell(spec, resolve(component, target), dtype, "cpu", example=example,
                    ledger=entries if with_entries else [])
    g = cell.gradients or {}
    print(json.dumps([case, cell.backend, cell.verdict, g.get("verdict"), cell.deviation, cell.max_ratio,
                      g.get("max_ratio"), cell.reason]))
"""


def run_cases(backend: str) -> dict[str, list]:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"Keras backend {backend} is not installed")
    proc = subprocess.run([sys.executable, "-c", CELLS, json.dumps(CASES[backend])], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {row[0]: row[1:] for row in map(json.loads, (s for s in proc.stdout.splitlines() if s.startswith("[")))}


@pytest.mark.parametrize("backend", list(CASES))
def test_verdicts_on_one_example_each(backend):
    """Conformant where the spec holds (forward and gradients within a tenth of their budgets); elsewhere
    non-conformant without the entries and a known deviation under exactly the entry for it."""
    seen = run_cases(backend)
    got = {case: tuple(row[1:4]) for case, row in seen.items()}
    assert got == EXPECTED[backend], {case: seen[case][-1] for case in got if got[case] != EXPECTED[backend][case]}
    for case, (got_backend, verdict, gradients, entry, ratio, gradient_ratio, reason) in seen.items():
        assert got_backend == backend
        if verdict == "conformant":
            assert ratio <= 0.1 and gradient_ratio <= 0.1, case
        if verdict == "non-conformant":
            assert "float32 accuracy" in reason or "float32's budget" in reason, reason  # the likely cause


# --- in this process, on its backend ---------------------------------------------------------------------

def spec(component: str):
    return load_spec(ROOT / "spec" / f"{component}.md")


def test_supports_refuses_what_the_layers_cannot_express():
    from impls.keras.keras_hub_layers import SinePositionEncoding, TokenAndPositionEmbedding, TransformerEncoder

    assert TransformerEncoder().supports(BLOCK) is None
    assert TransformerEncoder().supports({**BLOCK, "d_model": 7}) is None  # 7 // 2 = 3: the spare feature is fine
    assert TransformerEncoder().supports({**BLOCK, "d_head": 2}) == "d_head != d_model // num_heads"
    assert TokenAndPositionEmbedding().supports(LEARNED_EMBEDDING) is None
    assert TokenAndPositionEmbedding().supports({**LEARNED_EMBEDDING, "scale": True}) == "scale = true"
    assert TokenAndPositionEmbedding().supports(SINE_EMBEDDING) == "positional != learned"
    assert SinePositionEncoding().supports(SINE_EMBEDDING) is None
    assert SinePositionEncoding().supports(LEARNED_EMBEDDING) == "positional != sinusoidal"


def test_encoder_converter_puts_each_heads_columns_in_place_and_round_trips():
    """encoder_block §3: head h owns columns h*d_head .. of W_q and rows of W_o; LN_1 is the attention's norm."""
    from checks import keras_round_trip
    from impls.keras.keras_hub_layers import TransformerEncoderAdapter, load_encoder, variables_by_path

    example = {**BLOCK, "d_model": 7}  # num_heads * d_head = 6 < d_model
    w, x = generate.make_arrays(spec("encoder_block"), example)
    adapter = TransformerEncoderAdapter(7, 2, 5, "gelu", "post", 1e-5, 0.1, dtype="float64")
    adapter.build()
    load_encoder(adapter, w)
    v = {path: np.asarray(var) for path, var in variables_by_path(adapter.encoder).items()}
    assert len(v) == 16  # one variable per canonical weight
    for h in range(2):
        np.testing.assert_array_equal(v["self_attention_layer/query/kernel"][:, h], w["W_q"][:, 3 * h:3 * h + 3])
        np.testing.assert_array_equal(v["self_attention_layer/attention_output/kernel"][h], w["W_o"][3 * h:3 * h + 3])
    np.testing.assert_array_equal(v["self_attention_layer_norm/gamma"], w["gamma_1"])
    np.testing.assert_array_equal(v["feedforward_intermediate_dense/kernel"], w["W_1"])
    assert adapter.encoder.layer_norm_epsilon == 1e-5 and not adapter.encoder.normalize_first
    keras_round_trip(adapter, load_encoder, w, x["x"], padding_mask=x["padding_mask"])


def test_embedding_converters_and_padding_masks():
    """embedding §3: E and P as they are; §7.1: the mask each layer gives is tokens != 0."""
    from keras import ops

    from impls.keras.keras_hub_layers import (SinePositionEmbeddingAdapter, TokenAndPositionEmbeddingAdapter,
                                       load_sine, load_token_and_position)

    w, x = generate.make_arrays(spec("embedding"), LEARNED_EMBEDDING)
    learned = TokenAndPositionEmbeddingAdapter(7, 5, 8, dtype="float64")
    learned.build()
    load_token_and_position(learned, w)
    out, mask = learned(ops.convert_to_tensor(x["tokens"]))
    T = x["tokens"].shape[1]
    np.testing.assert_array_equal(ops.convert_to_numpy(out), w["E"][x["tokens"]] + w["P"][:T])
    np.testing.assert_array_equal(ops.convert_to_numpy(mask), x["tokens"] != 0)
    # the public compute_mask of KerasHub's token embedding (a ReversibleEmbedding) gives no mask
    assert learned.embedding.token_embedding.compute_mask(x["tokens"]) is None
    sine = SinePositionEmbeddingAdapter(7, 5, True, dtype="float64")
    sine.build()
    load_sine(sine, w)
    assert [tuple(v.shape) for v in sine.trainable_variables] == [(7, 5)]  # P is not used (§3)
    _, mask = sine(ops.convert_to_tensor(x["tokens"]))
    np.testing.assert_array_equal(ops.convert_to_numpy(mask), x["tokens"] != 0)
