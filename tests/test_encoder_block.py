"""encoder_block beyond the generic tests (tests/test_components.py): the unbiased variance caught beyond
d_model = 1, PyTorch's own layer agrees, converters, Keras config."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

from conformance import generate
from conformance.engine import run_cell
from conformance.spec import load_spec

from checks import mistake


SPEC = Path(__file__).resolve().parent.parent / "spec" / "encoder_block.md"
keras_installed = importlib.util.find_spec("keras") is not None


@pytest.fixture(scope="module")
def block_spec():
    return load_spec(SPEC)


def torch_encoder_layer(config: Mapping[str, Any], weights: Mapping[str, Any],
                        inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """spec/encoder_block.md through torch.nn.TransformerEncoderLayer in float64.

    Needs d_head * num_heads == d_model. Runs with autograd on and weights that
    require grad, which keeps the layer on its ordinary path (its fused "fast
    path" is only taken without grad). The layer returns no attention weights,
    so they come from its own self_attn called on the input its forward gives it.
    """
    import torch

    D, H = config["d_model"], config["num_heads"]
    assert config["d_head"] * H == D, "torch.nn.TransformerEncoderLayer splits d_model evenly across heads"
    w = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in weights.items()}
    layer = torch.nn.TransformerEncoderLayer(
        D, H, dim_feedforward=config["d_ff"], dropout=0.0, activation=config["activation"],
        layer_norm_eps=config["epsilon"], batch_first=True, norm_first=config["norm"] == "pre",
        dtype=torch.float64).eval()
    attn = layer.self_attn
    with torch.no_grad():  # packed input projection: rows are output features, so W^T
        attn.in_proj_weight.copy_(torch.cat([w["W_q"].T, w["W_k"].T, w["W_v"].T]))
        attn.in_proj_bias.copy_(torch.cat([w["b_q"], w["b_k"], w["b_v"]]))
        attn.out_proj.weight.copy_(w["W_o"].T)
        attn.out_proj.bias.copy_(w["b_o"])
        for linear, i in ((layer.linear1, 1), (layer.linear2, 2)):
            linear.weight.copy_(w[f"W_{i}"].T)
            linear.bias.copy_(w[f"b_{i}"])
        for norm, i in ((layer.norm1, 1), (layer.norm2, 2)):
            norm.weight.copy_(w[f"gamma_{i}"])
            norm.bias.copy_(w[f"beta_{i}"])
    x = torch.tensor(np.asarray(inputs["x"], dtype=np.float64))
    mask = inputs.get("padding_mask")  # spec: True = real token; torch: True = ignore
    padding = None if mask is None else ~torch.tensor(np.asarray(mask, dtype=bool))
    with torch.enable_grad():
        y = layer(x, src_key_padding_mask=padding)
        v = layer.norm1(x) if config["norm"] == "pre" else x
        _, weights_ = attn(v, v, v, key_padding_mask=padding, need_weights=True, average_attn_weights=False)
    return {"y": y.detach().numpy(), "attention_weights": weights_.detach().numpy()}


def _examples():
    return load_spec(SPEC).examples


@pytest.mark.parametrize("example", _examples(), ids=[e.name for e in _examples()])
def test_torch_transformer_encoder_layer_agrees_with_worked_example(block_spec, example, monkeypatch):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    c = example.config
    if c["d_head"] * c["num_heads"] != c["d_model"]:
        pytest.skip("torch.nn.TransformerEncoderLayer needs d_head * num_heads == d_model")

    def fast_path(*args, **kwargs):
        raise AssertionError("the fused fast path was taken")

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", fast_path)
    monkeypatch.setattr(torch, "_native_multi_head_attention", fast_path)
    _, inputs = generate.worked_arrays(block_spec, example.weights, example.inputs)
    got = torch_encoder_layer(c, example.weights, inputs)
    for name, want in example.expected.items():
        np.testing.assert_allclose(got[name], np.asarray(want, dtype=np.float64), rtol=0, atol=1e-12,
                                   err_msg=f"{example.name}: {name}")


def test_torch_examples_cover_both_arrangements():
    torch_made = [e for e in _examples() if "TransformerEncoderLayer" in e.name]
    assert {e.config["norm"] for e in torch_made} == {"post", "pre"}
    assert all(e.config["mask"] == "padding" for e in torch_made)



def test_unbiased_variance_is_caught_beyond_one_feature(root, block_spec):
    """Not only the NaN at d_model = 1: with two or more features the values are off."""
    plugin = mistake("encoder_block", "UnbiasedVariance")
    for d_model in (2, 8):
        example = {"d_model": d_model, "num_heads": 1, "d_head": 2, "d_ff": 4, "activation": "relu", "norm": "post",
                   "epsilon": 1e-5, "dropout": 0.0, "B": 1, "T": 2, "mask": "none", "scale_exp": 0, "seed": 3}
        cell = run_cell(block_spec, plugin, "float32", "cpu", example=example)
        assert cell.verdict == "non-conformant" and "output 'y' differs" in cell.reason


def _arrays(block_spec, **config):
    example = {"B": 2, "T": 3, "activation": "relu", "norm": "post", "epsilon": 1e-5, "dropout": 0.0,
               "mask": "padding", "seed": 1, "scale_exp": 0, **config}
    return generate.make_arrays(block_spec, example)


def test_torch_converter_reuses_the_attention_and_ffn_converters(block_spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch
    from impls.torch.encoder_block import EncoderBlock, load_canonical

    w, _ = _arrays(block_spec, d_model=6, num_heads=2, d_head=4, d_ff=5)
    module = EncoderBlock(6, 2, 4, 5).to(torch.float64)
    assert module.norm1.eps == 1e-5  # the default of spec §5.6
    load_canonical(module, w)
    np.testing.assert_array_equal(module.attention.q_proj.weight.detach().numpy(), w["W_q"].T)  # (out, in)
    np.testing.assert_array_equal(module.ffn.linear2.weight.detach().numpy(), w["W_2"].T)
    np.testing.assert_array_equal(module.norm2.weight.detach().numpy(), w["gamma_2"])
    np.testing.assert_array_equal(module.norm1.bias.detach().numpy(), w["beta_1"])
    with pytest.raises(ValueError, match="norm must be one of post, pre, got 'sandwich'"):
        EncoderBlock(6, 2, 4, 5, norm="sandwich")


@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_converter_reuses_the_attention_and_ffn_converters(block_spec):
    from impls.keras.encoder_block import EncoderBlock, load_canonical

    w, _ = _arrays(block_spec, d_model=6, num_heads=2, d_head=4, d_ff=5)
    layer = EncoderBlock(6, 2, 4, 5, dtype="float64")
    layer.build()
    assert layer.epsilon == 1e-5 and layer.attention.dtype_policy.name == "float64"
    load_canonical(layer, w)
    np.testing.assert_array_equal(np.asarray(layer.attention.query_kernel)[:, 1, :], w["W_q"][:, 4:8])
    np.testing.assert_array_equal(np.asarray(layer.ffn.kernel_1), w["W_1"])
    np.testing.assert_array_equal(np.asarray(layer.gamma_2), w["gamma_2"])




def test_layer_norm_defaults_are_as_the_spec_says():
    """spec/encoder_block.md §5.6: PyTorch's epsilon is 1e-5, Keras' 1e-3; torch.var is unbiased."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    assert torch.nn.LayerNorm(3).eps == 1e-5
    layer = torch.nn.TransformerEncoderLayer(4, 2)
    assert layer.norm1.eps == 1e-5 and layer.norm_first is False
    assert float(torch.var(torch.tensor([1.0, 3.0]))) == 2.0  # divided by n - 1
    if keras_installed:
        import keras

        assert keras.layers.LayerNormalization().epsilon == 1e-3
