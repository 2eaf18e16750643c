"""PyTorch's own encoder layer as implementations of spec/encoder_block.md (impls/torch/builtin_encoder.py).

Three code paths of one layer, each under its own name: the fused fast path,
the ordinary path, and the nested-tensor path of torch.nn.TransformerEncoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance import conditions, deviations, generate
from conformance.engine import ConfigUnsupported, KnownDeviation, NonConformance, Outcome, Runner, run_cell
from conformance.spec import load_spec
from conformance.registry import resolve

from checks import outputs_of

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from impls.torch import builtin_encoder  # noqa: E402  (needs torch)

FAST, ORDINARY, NESTED = ("torch.nn.TransformerEncoderLayer", "torch.nn.TransformerEncoderLayer[fastpath=False]",
                          "torch.nn.TransformerEncoder[nested]")
NESTED_ENTRY = "torch-nested-encoder-padded-positions"
SPEC = Path(__file__).resolve().parent.parent / "spec" / "encoder_block.md"


@pytest.fixture(scope="module")
def block_spec():
    return load_spec(SPEC)


def _example(d_model=8, num_heads=2, d_ff=6, *, norm="post", activation="relu", mask="padding", epsilon=1e-5,
             B=3, T=4, seed=1, scale_exp=0) -> dict:
    return {"d_model": d_model, "num_heads": num_heads, "d_head": d_model // num_heads, "d_ff": d_ff,
            "activation": activation, "norm": norm, "epsilon": epsilon, "dropout": 0.1, "B": B, "T": T,
            "mask": mask, "scale_exp": scale_exp, "seed": seed}


def _examples(**fixed) -> list[dict]:
    """A few examples the layer can express (num_heads * d_head == d_model), even num_heads but for one;
    epsilon 1e-3 where the inputs are of scale 1, so that an epsilon left at torch's 1e-5 shows."""
    shapes = [(4, 2, 6, 2, 3), (8, 4, 5, 3, 5), (6, 3, 7, 2, 4), (12, 2, 16, 1, 6)]
    return [_example(d, h, f, B=b, T=t, seed=10 * i + 1, scale_exp=i % 2, epsilon=(1e-3, 1e-5)[i % 2], **fixed)
            for i, (d, h, f, b, t) in enumerate(shapes)]


def _config(example: dict) -> dict:
    keys = ("d_model", "num_heads", "d_head", "d_ff", "activation", "norm", "epsilon", "dropout")
    return {k: example[k] for k in keys}


# --- the converter and the layer's parameters (the tables in impls/torch/builtin_encoder.py) ---

@pytest.mark.parametrize("name", [FAST, NESTED])
def test_converter_puts_each_canonical_weight_where_torch_expects_it(block_spec, name):
    example = _example()
    weights, _ = generate.make_arrays(block_spec, example)
    instance = resolve("encoder_block", name).load().build(_config(example), dtype="float64", device="cpu")
    instance.load(weights)
    layer = instance.module.layer  # for the encoder: its own copy of the layer, the one that runs
    if name == NESTED:
        assert layer is instance.module.encoder.layers[0]
    got = {n: p.detach().numpy() for n, p in layer.named_parameters()}
    packed = got["self_attn.in_proj_weight"]  # (3 * d_model, d_model), rows are output features
    for i, w in enumerate(("W_q", "W_k", "W_v")):
        np.testing.assert_array_equal(packed[8 * i:8 * (i + 1)], weights[w].T)
    np.testing.assert_array_equal(got["self_attn.in_proj_bias"],
                                  np.concatenate([weights["b_q"], weights["b_k"], weights["b_v"]]))
    for torch_name, canonical in (("self_attn.out_proj.weight", "W_o"), ("linear1.weight", "W_1"),
                                  ("linear2.weight", "W_2")):
        np.testing.assert_array_equal(got[torch_name], weights[canonical].T)
    for torch_name, canonical in (("self_attn.out_proj.bias", "b_o"), ("linear1.bias", "b_1"),
                                  ("linear2.bias", "b_2"), ("norm1.weight", "gamma_1"), ("norm1.bias", "beta_1"),
                                  ("norm2.weight", "gamma_2"), ("norm2.bias", "beta_2")):
        np.testing.assert_array_equal(got[torch_name], weights[canonical])


@pytest.mark.parametrize("norm, activation, epsilon", [("post", "relu", 1e-5), ("pre", "gelu", 1e-3)])
def test_layer_parameters_reach_the_layer(norm, activation, epsilon):
    """§2: norm -> norm_first, epsilon -> both layer norms, "gelu" -> F.gelu, whose default is the erf form."""
    from torch.nn import functional as F

    layer = builtin_encoder.encoder_layer(_config(_example(norm=norm, activation=activation, epsilon=epsilon)))
    assert layer.norm_first == (norm == "pre") and layer.self_attn.batch_first
    assert layer.norm1.eps == layer.norm2.eps == epsilon
    assert layer.linear1.out_features == 6 and layer.self_attn.num_heads == 2 and layer.dropout.p == 0.1
    if activation == "gelu":
        assert layer.activation is F.gelu and layer.activation_relu_or_gelu == 2  # what the fast path is told
        h = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
        np.testing.assert_allclose(layer.activation(h), h * (1 + torch.erf(h / 2 ** 0.5)) / 2, rtol=1e-15)


def test_our_torch_block_builds_its_layer_norms_with_the_specs_epsilon():
    """impls/torch/encoder_block.py uses nn.LayerNorm with `epsilon` from the config, not its default 1e-5."""
    from impls.torch.encoder_block import Implementation

    module = Implementation().module(_config(_example(epsilon=1e-3)))
    assert module.norm1.eps == module.norm2.eps == 1e-3
    assert isinstance(module.norm1, torch.nn.LayerNorm) and module.norm1.normalized_shape == (8,)


# --- conformance of each path ---

@pytest.mark.parametrize("mask", ["none", "padding"])
@pytest.mark.parametrize("norm, activation", [("post", "relu"), ("pre", "gelu"), ("post", "gelu"), ("pre", "relu")])
@pytest.mark.parametrize("name", [FAST, ORDINARY])
def test_layer_is_conformant(block_spec, name, norm, activation, mask):
    for dtype in ("float64", "float32"):
        runner = Runner(block_spec, resolve("encoder_block", name), dtype, "cpu", ledger=[])
        assert runner.outputs == ("y",)
        for example in _examples(norm=norm, activation=activation, mask=mask):
            outcome = runner.run(example)
            assert isinstance(outcome, Outcome) and outcome.ratio <= 1.0, example


@pytest.mark.parametrize("name", [FAST, ORDINARY])
def test_layer_reproduces_the_worked_examples_it_can_express(block_spec, name):
    """§9.3 and §9.4 come from this layer (two heads); §9.1 and §9.2 have num_heads * d_head != d_model."""
    runner = Runner(block_spec, resolve("encoder_block", name), "float64", "cpu", ledger=[])
    done = 0
    for worked in block_spec.examples:
        if worked.config["num_heads"] * worked.config["d_head"] == worked.config["d_model"]:
            assert runner.run_worked(worked).ratio <= 1.0
            done += 1
    assert done == 2


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_nested_encoder_is_conformant_without_padding(block_spec, activation):
    runner = Runner(block_spec, resolve("encoder_block", NESTED), "float32", "cpu", ledger=[])
    for example in _examples(norm="post", activation=activation, mask="none"):
        if example["num_heads"] % 2 == 0:
            assert runner.run(example).ratio <= 1.0


# --- which code path runs ---

class Calls:
    """Counts calls of torch functions, passing them through."""

    def __init__(self, monkeypatch, *names):
        self.count = dict.fromkeys(names, 0)
        for name in names:
            original = getattr(torch, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.count[_name] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(torch, name, counted)


FUSED = ("_transformer_encoder_layer_fwd", "_native_multi_head_attention", "_nested_tensor_from_mask")


@pytest.mark.parametrize("name, num_heads, calls", [
    (FAST, 2, (1, 0, 0)),
    (FAST, 1, (0, 0, 0)),  # odd num_heads: the ordinary path, attention included
    (ORDINARY, 2, (0, 0, 0)),
    (NESTED, 2, (1, 0, 1)),
])
def test_each_name_runs_its_code_path(block_spec, monkeypatch, name, num_heads, calls):
    """How often each fused torch function runs in one call. The fast path needs an even num_heads
    (torch 2.13.0); fastpath=False switches it off, the attention's own fast path included, for the call only."""
    counted = Calls(monkeypatch, *FUSED)
    example = _example(d_model=4, num_heads=num_heads)
    weights, inputs = generate.make_arrays(block_spec, example)
    instance = resolve("encoder_block", name).load().build(_config(example), dtype="float32", device="cpu")
    instance.load(weights)
    instance(generate.cast(inputs, "float32"))
    assert counted.count == dict(zip(FUSED, calls))
    assert torch.backends.mha.get_fastpath_enabled()  # put back after the call


# --- configurations a path cannot express ---

@pytest.mark.parametrize("name, change, reason", [
    (FAST, {"d_head": 3}, r"num_heads \* d_head != d_model \(it splits"),
    (ORDINARY, {"d_head": 3}, r"num_heads \* d_head != d_model \(it splits"),
    (NESTED, {"norm": "pre"}, "nested tensors only for post-norm layers"),
    (NESTED, {"num_heads": 1, "d_head": 8}, "an odd num_heads \\(it uses nested tensors only for an even num_heads\\)"),
])
def test_config_the_layer_cannot_express_is_skipped_and_counted(block_spec, name, change, reason):
    impl = resolve("encoder_block", name)
    example = {**_example(), **change}
    with pytest.raises(ConfigUnsupported, match=reason):
        Runner(block_spec, impl, "float64", "cpu", ledger=[]).run(example)
    with pytest.raises(ValueError, match="unsupported configuration"):  # a direct caller gets a clear error too
        impl.load().build(_config(example), dtype="float64", device="cpu")
    cell = run_cell(block_spec, impl, "float64", "cpu", example=example, ledger=[])
    assert (cell.verdict, cell.skipped, cell.examples) == ("unsupported", 1, 0)


# --- the nested path's known deviation (spec/deviations.toml) ---

def test_condition_padded_position():
    example = {"B": 2, "T": 2}
    assert not conditions.holds("encoder_block", "padded_position", example, {"padding_mask": None})
    assert not conditions.holds("encoder_block", "padded_position", example, {"padding_mask": np.ones((2, 2), bool)})
    assert conditions.holds("encoder_block", "padded_position", example,
                            {"padding_mask": np.array([[True, True], [True, False]])})


def test_nested_encoder_zeroes_padded_positions_as_the_ledger_records(block_spec):
    """§6: padded positions are computed like any other; the nested path returns 0 there (torch 2.13.0)."""
    example = _example(seed=2)
    weights, inputs = generate.make_arrays(block_spec, example)
    padded = ~inputs["padding_mask"]  # (B, T)
    assert padded.any() and not padded.all(axis=1).any()
    instance = resolve("encoder_block", NESTED).load().build(_config(example), dtype="float64", device="cpu")
    instance.load(weights)
    y = outputs_of(resolve("encoder_block", NESTED), instance, inputs)["y"]  # (B, T, d_model)
    assert np.all(y[padded] == 0)
    assert np.all(y[~padded] != 0)

    impl = resolve("encoder_block", NESTED)
    with pytest.raises(NonConformance, match="output 'y' differs from the reference"):
        Runner(block_spec, impl, "float64", "cpu", ledger=[]).run(example)
    ledger = deviations.load()
    with pytest.raises(KnownDeviation):
        Runner(block_spec, impl, "float64", "cpu", ledger=ledger).run(example)
    cell = run_cell(block_spec, impl, "float32", "cpu", example=example, ledger=ledger)
    assert (cell.verdict, cell.deviation, cell.known_deviations) == ("known-deviation", NESTED_ENTRY, 1)
    assert cell.sections == ["encoder_block §6"]


def test_the_ledger_entry_covers_no_other_path(block_spec):
    """The fast and ordinary paths compute padded positions as §6 asks: an entry for them would be stale."""
    example = _example(seed=2)
    for name in (FAST, ORDINARY):
        stale = deviations.Deviation("x", name, "encoder_block", "padded_position", ("6",), "zeros",
                                        deviations.Bound(deviations.BoundKind.REGION))
        cell = run_cell(block_spec, resolve("encoder_block", name), "float64", "cpu", example=example, ledger=[stale],
                        shrink=False)
        assert cell.verdict == "non-conformant" and "ledger entry 'x' is stale" in cell.reason


# --- outside what the harness draws ---

def test_fully_padded_sequence(block_spec):
    """A sequence with no real token: §6 keeps the first key visible, so the harness never draws one; by
    mha §7.4 its attention outputs are b_o. Recorded here as torch 2.13.0 behaves: the ordinary path agrees
    with the reference, the fast path gives NaN for that sequence, the nested path zeros."""
    example = _example(seed=2)
    weights, inputs = generate.make_arrays(block_spec, example)
    inputs["padding_mask"][0] = False  # sequence 0 fully padded
    from impls.numpy.encoder_block import forward

    reference = forward(example, weights, inputs)["y"]  # (B, T, d_model)
    real = inputs["padding_mask"]  # (B, T)
    got = {}
    for name in (FAST, ORDINARY, NESTED):
        instance = resolve("encoder_block", name).load().build(_config(example), dtype="float64", device="cpu")
        instance.load(weights)
        got[name] = outputs_of(resolve("encoder_block", name), instance, inputs)["y"]
        np.testing.assert_allclose(got[name][real], reference[real], atol=1e-12)  # the real tokens
    np.testing.assert_allclose(got[ORDINARY], reference, atol=1e-12)
    assert np.isnan(got[FAST][0]).all() and np.isfinite(got[FAST][1:]).all()
    assert np.all(got[NESTED][~real] == 0)
