"""Keras' own attention and layer norm as implementations (impls/keras/builtin_mha.py,
impls/keras/builtin_encoder.py) and their ledger entries, on every Keras backend.

Keras fixes its backend once per process: this process checks TensorFlow (the default backend),
and each other backend runs this file as a script in a process of its own (`observe`).
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

from conformance import conditions, deviations, generate
from conformance.engine import run_cell
from conformance.spec import load_spec
from conformance.registry import keras_backend, registry, resolve

ROOT = Path(__file__).resolve().parent.parent
needs_keras = pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
SCORES, NO_SCORES = "keras.layers.MultiHeadAttention", "keras.layers.MultiHeadAttention[scores=False]"
LAYER_NORM = "keras.layers.LayerNormalization"

_MHA = {"d_model": 8, "num_heads": 2, "d_head": 4, "dropout": 0.1, "B": 2, "Lq": 3, "Lk": 4, "scale_exp": 0}
MHA_PADDING = {**_MHA, "mask": "padding", "seed": 1}  # d_head = 4: 1/sqrt(d_head) is exact in float32
MHA_ROW = {**_MHA, "mask": "random", "seed": 2}  # masks query row 1 of batch 0 fully (§7.4)
MHA_FILL = {**_MHA, "mask": "padding", "scale_exp": 5, "seed": 2}  # a row whose visible scores are all below -1e9
MHA_CAUSAL = {**_MHA, "d_model": 6, "num_heads": 3, "d_head": 2, "mask": "causal", "seed": 3}  # (Lq, Lk) mask
# d_head = 1 and Lk = num_heads: where keras.ops.add on TensorFlow adds the key's and value's bias by position
MHA_HEAD_BIAS = {**_MHA, "d_model": 1, "num_heads": 2, "d_head": 1, "dropout": 0.0, "B": 1, "Lq": 1, "Lk": 2,
                 "mask": "none", "seed": 0}
_BLOCK = {"num_heads": 2, "d_ff": 3, "activation": "relu", "norm": "pre", "dropout": 0.0, "B": 4, "T": 8,
          "mask": "padding"}
BLOCK = {**_BLOCK, "d_model": 4, "d_head": 3, "activation": "gelu", "epsilon": 0.001, "dropout": 0.1,
         "seed": 5, "scale_exp": 0}
BLOCK_1 = {**_BLOCK, "d_model": 1, "d_head": 4, "epsilon": 1e-05, "seed": 13, "scale_exp": 1}  # d_model = 1

#: (component, implementation, dtype, example) by case name; `observe` replays each as a one-example cell.
CASES = {
    "mha float32": ("mha", SCORES, "float32", MHA_CAUSAL),
    "mha float32 masked row": ("mha", SCORES, "float32", MHA_ROW),
    "mha float64": ("mha", SCORES, "float64", MHA_PADDING),
    "mha float64 d_head=2": ("mha", SCORES, "float64", MHA_CAUSAL),
    "mha float64 masked row": ("mha", SCORES, "float64", MHA_ROW),
    "mha float64 past the fill": ("mha", SCORES, "float64", MHA_FILL),
    "mha float32 d_head=1": ("mha", SCORES, "float32", MHA_HEAD_BIAS),
    "dpa float32": ("mha", NO_SCORES, "float32", MHA_CAUSAL),
    "dpa float32 d_head=1": ("mha", NO_SCORES, "float32", MHA_HEAD_BIAS),
    "dpa float32 masked row": ("mha", NO_SCORES, "float32", MHA_ROW),
    "dpa float64": ("mha", NO_SCORES, "float64", MHA_PADDING),
    "dpa float64 d_head=2": ("mha", NO_SCORES, "float64", MHA_CAUSAL),
    "norm float32": ("encoder_block", LAYER_NORM, "float32", BLOCK),
    "norm float32 d_model=1": ("encoder_block", LAYER_NORM, "float32", BLOCK_1),
    "norm float64": ("encoder_block", LAYER_NORM, "float64", BLOCK),
    "norm float64 d_model=1": ("encoder_block", LAYER_NORM, "float64", BLOCK_1),
}

#: The ledger entry each case deviates under, per backend; every other case is conformant.
DEVIATES = {
    "tensorflow": {
        "mha float64 past the fill": "keras-mha-float64-mask-fill-1e9",
        "mha float64 d_head=2": "keras-mha-tensorflow-float64-score-scale",
        "dpa float32 masked row": "keras-mha-dot-product-attention-fully-masked-row",
        "dpa float64 d_head=2": "keras-mha-dot-product-attention-tensorflow-float64-score-scale",
        "mha float32 d_head=1": "keras-mha-tensorflow-bias-added-by-position",
        "dpa float32 d_head=1": "keras-mha-dot-product-attention-tensorflow-bias-added-by-position",
    },
    "torch": {
        "mha float64 past the fill": "keras-mha-float64-mask-fill-1e9",
        "dpa float32 masked row": "keras-mha-dot-product-attention-fully-masked-row",
        "dpa float64": "keras-mha-dot-product-attention-float64-in-float32",
        "dpa float64 d_head=2": "keras-mha-dot-product-attention-float64-in-float32",
        "norm float64": "keras-layer-norm-float64-in-float32",
        "norm float64 d_model=1": "keras-layer-norm-float64-in-float32",
    },
    "jax": {
        "mha float64 past the fill": "keras-mha-float64-mask-fill-1e9",
        "dpa float32 masked row": "keras-mha-dot-product-attention-fully-masked-row",
        "dpa float64": "keras-mha-dot-product-attention-float64-in-float32",
        "dpa float64 d_head=2": "keras-mha-dot-product-attention-float64-in-float32",
        "norm float64": "keras-layer-norm-float64-in-float32",
        "norm float64 d_model=1": "keras-layer-norm-float64-in-float32",
    },
}


#: Keras on JAX compiles every operation for each new shape, so it replays the cases that tell the
#: backends apart: each of its entries deviating, and where the others' entries do not apply.
CASES_ON = {"jax": ("mha float32", "mha float64 d_head=2", "mha float64 masked row", "mha float64 past the fill",
                    "dpa float32",
                    "dpa float32 masked row", "dpa float64", "norm float32", "norm float32 d_model=1", "norm float64")}


def observe(cases: tuple[str, ...] = tuple(CASES)) -> dict[str, list]:
    """Each case as a one-example cell with the repository's ledger: [verdict, ledger entry, reason].

    With one example, a covering entry gives `known-deviation` only if the example really deviates;
    had it followed the spec, the entry would be stale and the cell non-conformant.
    """
    specs = {c: load_spec(ROOT / "spec" / f"{c}.md") for c in ("mha", "encoder_block")}
    seen = {}
    for case in cases:
        component, name, dtype, example = CASES[case]
        cell = run_cell(specs[component], resolve(component, name), dtype, "cpu", example=example)
        seen[case] = [cell.verdict, cell.deviation, cell.reason]
    return seen


def _expected(backend: str) -> dict[str, tuple[str, str | None]]:
    return {case: ("known-deviation", DEVIATES[backend][case]) if case in DEVIATES[backend] else ("conformant", None)
            for case in CASES_ON.get(backend, CASES)}



@needs_keras
@pytest.mark.parametrize("backend", list(DEVIATES))
def test_each_case_follows_the_spec_or_deviates_as_the_ledger_says(backend):
    """The ledger's Keras entries, each seen deviating on its backend and dtype, and nowhere else."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"Keras backend {backend} is not installed")
    cases = CASES_ON.get(backend, tuple(CASES))
    if backend == keras_backend():
        seen = observe(cases)
    else:
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, __file__, *cases], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen = json.loads(proc.stdout.strip().splitlines()[-1])
    got = {case: (verdict, entry) for case, (verdict, entry, _) in seen.items()}
    assert got == _expected(backend), {case: seen[case][2] for case in got if got[case] != _expected(backend)[case]}


def _mha_weights(**config):
    spec = load_spec(ROOT / "spec" / "mha.md")
    example = {**MHA_PADDING, **config}
    return example, *generate.make_arrays(spec, example)


@needs_keras
def test_converter_puts_each_heads_columns_where_keras_expects_them():
    from impls.keras.builtin_mha import MultiHeadAttentionAdapter, load_canonical

    _, w, _ = _mha_weights(d_model=5, num_heads=3, d_head=2)  # num_heads * d_head != d_model
    adapter = MultiHeadAttentionAdapter(5, 3, 2, dtype="float64")
    adapter.build()
    load_canonical(adapter, w)
    layer = adapter.attention
    for h in range(3):  # head h = columns 2h, 2h+1 of W_q and rows 2h, 2h+1 of W_o (spec §3, §6.2)
        np.testing.assert_array_equal(np.asarray(layer.query_dense.kernel)[:, h, :], w["W_q"][:, 2 * h:2 * h + 2])
        np.testing.assert_array_equal(np.asarray(layer.value_dense.bias)[h], w["b_v"][2 * h:2 * h + 2])
        np.testing.assert_array_equal(np.asarray(layer.output_dense.kernel)[h], w["W_o"][2 * h:2 * h + 2])
    np.testing.assert_array_equal(np.asarray(layer.key_dense.kernel).reshape(5, 6), w["W_k"])
    np.testing.assert_array_equal(np.asarray(layer.output_dense.bias), w["b_o"])


@needs_keras
def test_adapters_round_trip_through_config():
    from checks import keras_round_trip
    from impls.keras.builtin_encoder import LayerNormalizationEncoderBlock
    from impls.keras.builtin_mha import MultiHeadAttentionAdapter, load_canonical

    example, w, x = _mha_weights(d_model=5, num_heads=3, d_head=2)
    adapter = MultiHeadAttentionAdapter(5, 3, 2, 0.1, return_attention_scores=False, dtype="float64")
    adapter.build()
    load_canonical(adapter, w)
    clone = keras_round_trip(adapter, load_canonical, w, *(x[n] for n in ("query", "key", "value")))
    assert clone.attention.dropout == 0.1 and not clone.return_attention_scores

    from impls.keras.encoder_block import load_canonical as load_block

    spec = load_spec(ROOT / "spec" / "encoder_block.md")
    w, x = generate.make_arrays(spec, BLOCK)
    block = LayerNormalizationEncoderBlock(4, 2, 3, 3, "gelu", "pre", 1e-3, dtype="float64")
    block.build()
    load_block(block, w)
    keras_round_trip(block, load_block, w, x["x"])


@needs_keras
def test_layer_norms_are_keras_layers_with_the_configured_epsilon_and_the_canonical_weights():
    import keras

    from impls.keras.encoder_block import EncoderBlock

    spec = load_spec(ROOT / "spec" / "encoder_block.md")
    w, _ = generate.make_arrays(spec, BLOCK)
    instance = resolve("encoder_block", LAYER_NORM).load().build({**BLOCK, "epsilon": 1e-5}, dtype="float64",
                                                                  device="cpu")
    instance.load(w)
    block = instance.layer
    assert isinstance(block, EncoderBlock)  # ours, with only the layer norms replaced
    for i, norm in ((1, block.norm_1), (2, block.norm_2)):
        assert isinstance(norm, keras.layers.LayerNormalization)
        assert (norm.epsilon, norm.axis, norm.compute_dtype) == (1e-5, [-1], "float64")
        np.testing.assert_array_equal(np.asarray(norm.gamma), w[f"gamma_{i}"])
        np.testing.assert_array_equal(np.asarray(norm.beta), w[f"beta_{i}"])
    # the hand-written layer norm's weights are not made at all
    assert {v.path.rsplit("/", 1)[-1] for v in block.weights} >= {"gamma", "beta"}
    assert not any(v.path.endswith(("gamma_1", "beta_2")) for v in block.weights)


@needs_keras
@pytest.mark.parametrize("name", [SCORES, NO_SCORES])
def test_worked_examples_in_float32(name):
    """§10.3, the fully masked row, is the only one the dot-product path misses (the ledger's)."""
    spec = load_spec(ROOT / "spec" / "mha.md")
    from conformance.engine import NonConformance, Runner

    runner = Runner(spec, resolve("mha", name), "float32", "cpu", ledger=[])
    missed = []
    for worked in spec.examples:
        try:
            assert runner.run_worked(worked).ratio <= 1.0
        except NonConformance:
            missed.append(worked.name)
    assert missed == ([] if name == SCORES else ["fully masked row by hand"])


@needs_keras
def test_declared_outputs():
    spec = load_spec(ROOT / "spec" / "mha.md")
    assert resolve("mha", SCORES).outputs(tuple(spec.outputs)) == ("output", "attention_weights")
    assert resolve("mha", NO_SCORES).outputs(tuple(spec.outputs)) == ("output",)


def test_ledger_names_registered_implementations():
    deviations.check_names(deviations.load(), registry())


def test_every_keras_entry_is_seen_deviating_on_every_backend_it_covers():
    """So that the test above replays, on each backend, an example of every entry that applies there."""
    for entry in deviations.load():
        if entry.implementation in (SCORES, NO_SCORES, LAYER_NORM):
            for backend in entry.scope.get("backends", tuple(DEVIATES)):
                cases = CASES_ON.get(backend, tuple(CASES))
                assert entry.id in {DEVIATES[backend].get(case) for case in cases}, (entry.id, backend)


def test_condition_single_feature():
    assert conditions.holds("encoder_block", "single_feature", {"d_model": 1}, {})
    assert not conditions.holds("encoder_block", "single_feature", {"d_model": 2}, {})


@pytest.mark.parametrize("d_head, inexact", [(1, False), (2, True), (3, True), (4, False), (9, True), (16, False)])
def test_condition_score_scale_inexact_in_float32(d_head, inexact):
    """1 / sqrt(d_head) is a float32 number exactly when it is a power of 2, that is when d_head is a power of 4."""
    assert conditions.holds("mha", "score_scale_inexact_in_float32", {"d_head": d_head}, {}) is inexact


if __name__ == "__main__":  # one backend's observations of the cases named, for the test above
    print(json.dumps(observe(tuple(sys.argv[1:]))))
