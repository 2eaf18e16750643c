"""spec/embedding.md beyond the generic tests (tests/test_components.py): the shrunk counterexamples, converters, the Keras layer, and PyTorch's own layers.

Keras runs on the backend of this process (KERAS_BACKEND, default tensorflow);
tests/test_components.py runs the Keras implementation on the torch backend.
"""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

from conformance import generate
from conformance.engine import run_cell
from conformance.spec import load_spec

from checks import mistake


keras_installed = importlib.util.find_spec("keras") is not None


@pytest.fixture(scope="module")
def spec():
    return load_spec(Path(__file__).resolve().parent.parent / "spec" / "embedding.md")



def test_shrunk_counterexamples_are_the_smallest_that_show_each_mistake(root, spec):
    def minimal(name):
        return run_cell(spec, mistake("embedding", name), "float32", "cpu", max_examples=60).counterexample

    # concatenated and interleaved agree for d_model <= 2; from d_model = 3 they differ already at
    # position 0, [0, 1, 0] against [0, 0, 1]
    concatenated = minimal("ConcatenatedHalves")
    assert (concatenated["d_model"], concatenated["T"], concatenated["positional"]) == (3, 1, "sinusoidal")
    # cos 0 = 1 against sin 0 = 0: one column at one position is enough
    swapped = minimal("SwappedSinCos")
    assert (swapped["d_model"], swapped["T"], swapped["positional"]) == (1, 1, "sinusoidal")
    assert minimal("MissingScale")["scale"] is True and minimal("MissingScale")["d_model"] == 2


def test_the_mistakes_miss_their_budget_by_far(root, spec):
    # the worked example of §10.1 in float32: each wrong layout misses by more than 10**4 budgets
    from conformance.engine import NonConformance, Runner

    worked = next(e for e in spec.examples if e.config["positional"] == "sinusoidal" and e.config["scale"])

    for name in ("ConcatenatedHalves", "SwappedSinCos", "MissingScale", "ScaledPositions", "PositionsFromOne"):
        runner = Runner(spec, mistake("embedding", name), "float32", "cpu")
        with pytest.raises(NonConformance) as info:
            runner.run_worked(worked)
        err, budget = map(float, re.search(r"by (\S+) eps, budget (\S+) eps", info.value.reason).groups())
        assert err > 1e4 * budget, (name, info.value.reason)


def _example(spec, **config):
    example = {"vocab_size": 7, "d_model": 5, "max_len": 9, "positional": "learned", "scale": True,
               "B": 2, "T": 4, "seed": 3, "scale_exp": 0, **config}
    weights, inputs = generate.make_arrays(spec, example)
    return example, weights, inputs


# --- PyTorch -----------------------------------------------------------------------------------

def test_torch_converter_copies_tables_as_they_are(spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch
    from impls.torch.embedding import TokenAndPositionEmbedding, load_canonical

    _, w, _ = _example(spec)
    module = TokenAndPositionEmbedding(7, 5, 9, "learned", True).to(torch.float64)
    load_canonical(module, w)
    np.testing.assert_array_equal(module.token_embedding.weight.detach().numpy(), w["E"])  # (vocab, d_model)
    np.testing.assert_array_equal(module.position_embedding.detach().numpy(), w["P"])
    assert module.token_embedding.padding_idx is None  # padding ids keep their own row (§7.2)

    sinusoidal = TokenAndPositionEmbedding(7, 5, 9, "sinusoidal").to(torch.float64)
    load_canonical(sinusoidal, w)  # P is ignored (§3)
    assert not hasattr(sinusoidal, "position_embedding")
    assert [n for n, _ in sinusoidal.named_parameters()] == ["token_embedding.weight"]


def test_torch_sinusoidal_table_follows_the_dtype_of_the_module():
    pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch
    from impls.torch.embedding import sinusoidal_table

    pe = sinusoidal_table(3, 5, torch.float64, torch.device("cpu"))
    assert pe.dtype == torch.float64 and pe.shape == (3, 5)
    assert pe[2, 4].item() == pytest.approx(math.sin(2 / 10000 ** (4 / 5)), abs=1e-15)  # last column: a sine


def torch_embedding(config: Mapping[str, Any], weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict:
    """spec/embedding.md with learned positions through two torch.nn.Embedding tables, in float64.

    These are PyTorch's own lookups, not our implementation: one table holds E (no padding_idx),
    one holds P and is looked up at arange(T).
    """
    import torch

    assert config["positional"] == "learned", "PyTorch has no built-in sinusoidal encoding"
    E = torch.tensor(np.asarray(weights["E"], dtype=np.float64))
    P = torch.tensor(np.asarray(weights["P"], dtype=np.float64))
    token_table = torch.nn.Embedding.from_pretrained(E, freeze=True)
    position_table = torch.nn.Embedding.from_pretrained(P, freeze=True)
    tokens = torch.tensor(np.asarray(inputs["tokens"], dtype=np.int64))
    with torch.no_grad():
        x = token_table(tokens)
        if config["scale"]:
            x = x * math.sqrt(config["d_model"])
        x = x + position_table(torch.arange(tokens.shape[1]))
    return {"x": x.numpy(), "padding_mask": (tokens != 0).numpy()}


def test_torch_embedding_layers_agree_with_the_worked_example(spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    worked = [e for e in spec.examples if "torch.nn.Embedding" in e.name]
    assert worked, "§10.4 is the example computed with torch.nn.Embedding"
    for example in worked:
        got = torch_embedding(example.config, example.weights, example.inputs)
        np.testing.assert_allclose(got["x"], np.asarray(example.expected["x"]), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(got["padding_mask"], np.asarray(example.expected["padding_mask"]))


# --- Keras -------------------------------------------------------------------------------------

@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_converter_and_sinusoidal_table(spec):
    from keras import ops
    from impls.keras.embedding import TokenAndPositionEmbedding, load_canonical

    _, w, _ = _example(spec)
    layer = TokenAndPositionEmbedding(7, 5, 9, "learned", True, dtype="float64")
    layer.build()
    load_canonical(layer, w)
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.token_embeddings), w["E"])
    np.testing.assert_array_equal(ops.convert_to_numpy(layer.position_embeddings), w["P"])

    sinusoidal = TokenAndPositionEmbedding(7, 5, 9, "sinusoidal", dtype="float64")
    sinusoidal.build()
    load_canonical(sinusoidal, w)  # P is ignored (§3)
    assert [v.name for v in sinusoidal.weights] == ["token_embeddings"]
    table = ops.convert_to_numpy(sinusoidal.sinusoid)
    assert table.dtype == np.float64 and table.shape == (9, 5)
    assert table[3, 1] == pytest.approx(math.cos(3), abs=1e-15) and table[3, 4] == pytest.approx(
        math.sin(3 / 10000 ** (4 / 5)), abs=1e-15)

