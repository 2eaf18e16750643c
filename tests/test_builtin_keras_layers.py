"""Keras' own LSTM, Embedding and Dense layers as implementations (impls/keras/builtin_lstm.py,
impls/keras/builtin_layers.py), and their entries in the known-deviation ledger.

Keras runs on this process's backend (KERAS_BACKEND, default tensorflow); one subprocess per other
backend runs a few cells there, including each ledger entry scoped to that backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from conformance import conditions, deviations, generate
from conformance.engine import NonConformance, Runner, run_cell
from conformance.spec import load_spec
from conformance.registry import resolve

pytest.importorskip("keras", reason="Keras is not installed")
# a source of length 1 is valid (lstm_seq2seq §6.4); Keras warns about its softmax on every call
pytestmark = pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")

ROOT = Path(__file__).resolve().parent.parent
#: component -> the registered name of its Keras built-in
ADAPTERS = {"lstm_classifier": "keras.layers.LSTM", "lstm_seq2seq": "keras.layers.LSTM",
            "embedding": "keras.layers.Embedding", "ffn": "keras.layers.Dense"}
#: ledger entry -> (component, backend, an example it covers)
ENTRIES = {
    "keras-lstm-jax-float64-tanh": ("lstm_classifier", "jax", {
        "d_in": 2, "hidden": 2, "num_layers": 2, "num_classes": 2, "B": 1, "T": 2, "scale_exp": 0, "seed": 1}),
    "keras-lstm-seq2seq-jax-float64-tanh": ("lstm_seq2seq", "jax", {
        "src_vocab": 5, "tgt_vocab": 4, "d_embed": 3, "hidden": 2, "N": 2, "B": 1, "S": 2, "T": 2, "scale_exp": 0,
        "seed": 1}),
    "keras-dense-torch-float64-matmul": ("ffn", "torch", {
        "d_model": 3, "d_ff": 5, "activation": "relu", "dropout": 0.0, "B": 2, "T": 2, "scale_exp": 0, "seed": 1}),
    "keras-dense-tensorflow-float64-gelu": ("ffn", "tensorflow", {
        "d_model": 3, "d_ff": 5, "activation": "gelu", "dropout": 0.0, "B": 2, "T": 2, "scale_exp": 0, "seed": 1}),
}


def backend() -> str:
    import keras

    return keras.backend.backend()


@cache
def spec(component: str):
    return load_spec(ROOT / "spec" / f"{component}.md")


def runner(component: str, dtype: str, ledger=()) -> Runner:
    return Runner(spec(component), resolve(component, ADAPTERS[component]), dtype, "cpu", ledger=list(ledger))


def worked(component: str, name: str):
    return next(ex for ex in spec(component).examples if ex.name == name)


# --- registration and layouts ------------------------------------------------------

def test_adapters_are_registered_as_keras_float64_float32_eager():
    for component, name in ADAPTERS.items():
        r = resolve(component, name)
        assert (r.framework, r.dtypes, r.modes) == ("keras", ("float64", "float32"), ("eager",))
        assert r.label == name and r.outputs(tuple(spec(component).outputs)) == tuple(spec(component).outputs)


def test_lstm_weights_load_into_keras_layout_unchanged():
    """lstm_classifier §7.2: kernel (in, 4H), recurrent_kernel (H, 4H), one bias (4H,), gates i, f, c, o."""
    import keras

    from impls.keras.builtin_lstm import StackedLSTMClassifier, load_classifier

    example = {"d_in": 3, "hidden": 4, "num_layers": 2, "num_classes": 5, "B": 1, "T": 1, "scale_exp": 0, "seed": 1}
    w, _ = generate.make_arrays(spec("lstm_classifier"), example)
    layer = StackedLSTMClassifier(3, 4, 2, 5, dtype="float64")
    layer.build()
    load_classifier(layer, w)
    top = layer.lstms[1].cell
    assert [tuple(v.shape) for v in (layer.lstms[0].cell.kernel, top.kernel, top.recurrent_kernel, top.bias)] == [
        (3, 16), (4, 16), (4, 16), (16,)]
    np.testing.assert_array_equal(np.asarray(top.kernel), w["W_x_1"])
    np.testing.assert_array_equal(np.asarray(layer.lstms[0].cell.recurrent_kernel), w["W_h_0"])
    np.testing.assert_array_equal(np.asarray(top.bias), w["b_1"])
    # §6.2: Keras 3's default gate activation is the logistic sigmoid, not hard_sigmoid
    assert keras.layers.LSTM(2).cell.recurrent_activation is keras.activations.sigmoid
    assert top.recurrent_activation is keras.activations.sigmoid and top.activation is keras.activations.tanh


def test_swapped_gate_order_is_caught(monkeypatch):
    """Canonical blocks read in the book's order f, g, i, o (lstm_classifier §7.3) fail §9.1."""
    from impls.keras import builtin_lstm

    def book_order(lstm, W_x, W_h, b):
        H = W_h.shape[0]
        f, g, i, o = (slice(k * H, (k + 1) * H) for k in range(4))
        order = lambda a: np.concatenate([a[..., i], a[..., f], a[..., g], a[..., o]], axis=-1)  # noqa: E731
        original(lstm, order(W_x), order(W_h), order(b))

    original = builtin_lstm.load_lstm
    monkeypatch.setattr(builtin_lstm, "load_lstm", book_order)
    with pytest.raises(NonConformance, match="differs from the reference"):
        runner("lstm_classifier", "float32").run_worked(worked("lstm_classifier", "one layer two steps by hand"))


def test_dense_kernels_and_activation_names():
    """ffn §3: Dense kernels are (in, out); §6.4: "gelu" is keras.activations.gelu, exact by default."""
    import inspect

    import keras

    from impls.keras.builtin_layers import DenseFeedForward, gelu_tanh, load_ffn

    example = {"d_model": 3, "d_ff": 5, "activation": "gelu", "dropout": 0.1, "B": 1, "T": 1, "scale_exp": 0,
               "seed": 1}
    w, _ = generate.make_arrays(spec("ffn"), example)
    layer = DenseFeedForward(3, 5, "gelu", 0.1, dtype="float64")
    layer.build()
    load_ffn(layer, w)
    assert tuple(layer.dense_1.kernel.shape) == (3, 5) and tuple(layer.dense_2.kernel.shape) == (5, 3)
    np.testing.assert_array_equal(np.asarray(layer.dense_2.kernel), w["W_2"])
    assert layer.dense_1.activation is keras.activations.gelu
    assert inspect.signature(keras.activations.gelu).parameters["approximate"].default is False
    assert inspect.signature(keras.ops.gelu).parameters["approximate"].default is True  # the other way round
    assert DenseFeedForward(3, 5, "gelu_tanh").dense_1.activation is gelu_tanh


def test_swapped_gelu_forms_are_caught(monkeypatch):
    """Dense's "gelu" read as the tanh form misses ffn §9.2 in float32."""
    from impls.keras import builtin_layers

    monkeypatch.setitem(builtin_layers.KERAS_ACTIVATIONS, "gelu", builtin_layers.gelu_tanh)
    with pytest.raises(NonConformance, match="differs from the reference"):
        runner("ffn", "float32").run_worked(worked("ffn", "gelu (erf) by hand"))


def test_padding_mask_is_the_embedding_layers_own_mask():
    """embedding §7.1: Embedding(mask_zero=True).compute_mask is tokens != 0; §7.2: padding is embedded."""
    from keras import ops

    from impls.keras.builtin_layers import EmbeddingLayers, load_embedding

    ex = worked("embedding", "learned positions by hand")
    w, x = generate.worked_arrays(spec("embedding"), ex.weights, ex.inputs)
    layer = EmbeddingLayers(3, 2, 8, "learned", False, dtype="float64")
    layer.build()
    load_embedding(layer, w)
    assert layer.token_embedding.mask_zero
    out, mask = layer(ops.convert_to_tensor(x["tokens"]))
    np.testing.assert_array_equal(ops.convert_to_numpy(mask), [[True, True, False]])
    np.testing.assert_array_equal(ops.convert_to_numpy(out), ex.expected["x"])  # [50.5, 60.5]: not zeroed


# --- conformance on this process's backend --------------------------------------------

def _expected_verdict(component: str, dtype: str, backend_name: str) -> str:
    """Conformant, except where a ledger entry scoped to this backend and dtype covers the drawn examples."""
    covered = {(c, b) for c, b, _ in ENTRIES.values()}
    return "known-deviation" if dtype == "float64" and (component, backend_name) in covered else "conformant"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("component", list(ADAPTERS))
def test_adapter_conforms_on_a_few_examples(component, dtype):
    """Every worked example and a few drawn ones (the search's first stratum examples)."""
    cell = run_cell(spec(component), resolve(component, ADAPTERS[component]), dtype, "cpu", max_examples=2)
    assert cell.verdict == _expected_verdict(component, dtype, backend()), cell.reason
    assert cell.examples > 0 and cell.outputs_compared == list(spec(component).outputs)
    if cell.verdict == "conformant":
        assert cell.max_ratio <= 0.1  # correct implementations stay at a tenth of their budget


@pytest.mark.skipif(os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow", reason="TensorFlow's gelu")
def test_tensorflow_gelu_deviation_is_real_and_narrow():
    """The entry covers gelu and gelu_tanh in float64; relu in float64 is checked in full and conforms."""
    ledger = deviations.load()
    _, _, example = ENTRIES["keras-dense-tensorflow-float64-gelu"]
    for activation in ("gelu", "gelu_tanh"):
        with pytest.raises(NonConformance, match="differs from the reference"):
            runner("ffn", "float64").run({**example, "activation": activation})
        cell = run_cell(spec("ffn"), resolve("ffn", "keras.layers.Dense"), "float64", "cpu",
                        example={**example, "activation": activation}, ledger=ledger)
        assert (cell.verdict, cell.deviation) == ("known-deviation", "keras-dense-tensorflow-float64-gelu")
    assert runner("ffn", "float64", ledger).run({**example, "activation": "relu"}).ratio <= 0.1
    assert runner("ffn", "float32", ledger).run(example).ratio <= 0.1  # float32 is not covered


def test_condition_gelu_activation():
    assert conditions.holds("ffn", "gelu_activation", {"activation": "gelu"}, {})
    assert conditions.holds("ffn", "gelu_activation", {"activation": "gelu_tanh"}, {})
    assert not conditions.holds("ffn", "gelu_activation", {"activation": "relu"}, {})


def test_ledger_entries_are_scoped_to_one_backend_and_float64():
    ledger = {d.id: d for d in deviations.load()}
    for entry_id, (component, backend_name, _) in ENTRIES.items():
        d = ledger[entry_id]
        assert (d.component, d.implementation) == (component, ADAPTERS[component])
        assert d.scope == {"dtypes": ("float64",), "backends": (backend_name,)}
        assert d.reference.startswith("https://github.com/") and d.seen_on.get("keras") == "3.15.1"


# --- the other backends, one process each -------------------------------------------

CELLS = """
import json, sys
from pathlib import Path
from conformance.engine import run_cell
from conformance.spec import load_spec
from conformance.registry import resolve

for component, name, dtype, example in json.loads(sys.argv[1]):
    spec = load_spec(Path("spec") / f"{component}.md")
    cell = run_cell(spec, resolve(component, name), dtype, "cpu", example=example)  # the repository's ledger
    print(json.dumps([component, dtype, cell.backend, cell.verdict, cell.deviation, cell.examples,
                      cell.known_deviations, cell.max_ratio, cell.reason]))
"""


def _run_cells(backend_name: str, cells: list) -> list[list]:
    if importlib.util.find_spec(backend_name) is None:
        pytest.skip(f"{backend_name} is not installed")
    proc = subprocess.run([sys.executable, "-c", CELLS, json.dumps(cells)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "KERAS_BACKEND": backend_name})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]


#: The cells each other backend runs, one example each: every entry scoped to it, and float32 beside it.
#: (On JAX every new shape compiles each operation, so it runs the longest component in float64 only.)
OTHER_BACKENDS = {
    "torch": [(c, d) for c in ADAPTERS for d in ("float32", "float64")],
    "jax": [("lstm_classifier", "float32"), ("lstm_classifier", "float64"), ("lstm_seq2seq", "float64"),
            ("embedding", "float64"), ("ffn", "float32"), ("ffn", "float64")],
}


def _cells_for(backend_name: str) -> list:
    """[component, name, dtype, example]: an entry's own example where it covers the cell."""
    entries = {(c, b): ex for c, b, ex in ENTRIES.values()}
    small = {c: ex for c, _, ex in ENTRIES.values()}  # ffn: a gelu example
    small["embedding"] = {"vocab_size": 5, "d_model": 4, "max_len": 8, "positional": "learned", "scale": True,
                          "B": 2, "T": 3, "scale_exp": 0, "seed": 1}
    return [[c, ADAPTERS[c], d, entries.get((c, backend_name), small[c]) if d == "float64" else small[c]]
            for c, d in OTHER_BACKENDS[backend_name]]


@pytest.mark.parametrize("backend_name", ["torch", "jax"])
def test_adapters_on_another_backend(backend_name):
    """One example per cell: conformant, or a known deviation exactly where the ledger scopes one."""
    if backend_name == backend():
        pytest.skip("this process's backend is tested above")
    results = _run_cells(backend_name, _cells_for(backend_name))
    assert len(results) == len(OTHER_BACKENDS[backend_name])
    for component, dtype, got_backend, verdict, deviation, examples, known, max_ratio, reason in results:
        assert got_backend == backend_name
        want = _expected_verdict(component, dtype, backend_name)
        assert verdict == want, f"{component} {dtype}: {verdict}: {reason}"
        if verdict == "known-deviation":  # the entry's deviation really happens
            assert known == 1 and deviation in ENTRIES and ENTRIES[deviation][:2] == (component, backend_name)
        else:
            assert examples == 1 and max_ratio <= 0.1
