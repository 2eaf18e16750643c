"""ffn beyond the generic tests (tests/test_components.py): the GELU mix-up rejected by a wide margin, a layout
mistake only a worked example catches, converters, Keras config, the frameworks' GELU defaults."""

from __future__ import annotations

import importlib.util
import math
import re
from pathlib import Path

import numpy as np
import pytest

from conformance import generate
from conformance.engine import run_cell
from conformance.spec import load_spec

from checks import mistake


keras_installed = importlib.util.find_spec("keras") is not None


@pytest.fixture(scope="module")
def ffn_spec():
    return load_spec(Path(__file__).resolve().parent.parent / "spec" / "ffn.md")



def test_erf_and_tanh_gelu_are_told_apart_in_float32_with_a_wide_margin(root, ffn_spec):
    # the classic Keras/PyTorch mismatch: rejected by more than ten times its budget on the minimal example
    for name in ("TanhForGelu", "ErfForGeluTanh"):
        cell = run_cell(ffn_spec, mistake("ffn", name), "float32", "cpu", max_examples=30)
        err, budget = map(float, re.search(r"by (\S+) eps, budget (\S+) eps", cell.reason).groups())
        assert err > 10 * budget, cell.reason


def test_transposed_second_projection_is_caught_by_the_layout_example(root, ffn_spec):
    # W_2 can only be used transposed when d_ff == d_model, which random search rarely draws
    cell = run_cell(ffn_spec, mistake("ffn", "TransposedSecondProjection"), "float32", "cpu", max_examples=3)
    assert cell.verdict == "non-conformant"
    assert cell.reason.startswith("worked example 'relu and layout by hand'")


def _arrays(ffn_spec, **config):
    example = {"B": 2, "T": 3, "activation": "gelu", "dropout": 0.0, "seed": 1, "scale_exp": 0, **config}
    weights, inputs = generate.make_arrays(ffn_spec, example)
    return weights, inputs


def test_torch_converter_transposes_into_linear_layout(ffn_spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch
    from impls.torch.ffn import FeedForward, load_canonical

    w, x = _arrays(ffn_spec, d_model=3, d_ff=5)
    module = FeedForward(3, 5, "gelu").to(torch.float64)
    load_canonical(module, w)
    np.testing.assert_array_equal(module.linear1.weight.detach().numpy(), w["W_1"].T)  # (out, in)
    np.testing.assert_array_equal(module.linear2.weight.detach().numpy(), w["W_2"].T)
    np.testing.assert_array_equal(module.linear1.bias.detach().numpy(), w["b_1"])
    with pytest.raises(ValueError, match="activation must be one of relu, gelu, gelu_tanh, got 'swish'"):
        FeedForward(3, 5, "swish")


@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_converter_keeps_the_canonical_layout(ffn_spec):
    from impls.keras.ffn import FeedForward, load_canonical

    w, _ = _arrays(ffn_spec, d_model=3, d_ff=5)
    layer = FeedForward(3, 5, dtype="float64")
    layer.build()
    load_canonical(layer, w)
    np.testing.assert_array_equal(np.asarray(layer.kernel_1), w["W_1"])  # (in, out), as Dense
    np.testing.assert_array_equal(np.asarray(layer.kernel_2), w["W_2"])
    np.testing.assert_array_equal(np.asarray(layer.bias_2), w["b_2"])




# spec/ffn.md §9.2 and §9.3: the activations at -1, 1, 2
H = np.array([-1.0, 1.0, 2.0])
GELU = np.array([-0.15865525393145707, 0.8413447460685429, 1.9544997361036416])
GELU_TANH = np.array([-0.15880800939172324, 0.8411919906082768, 1.954597694087775])


def test_worked_gelu_values_follow_the_formulas():
    np.testing.assert_allclose([0.5 * h * (1 + math.erf(h / math.sqrt(2))) for h in H], GELU, rtol=0, atol=1e-15)
    tanh_form = [0.5 * h * (1 + math.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3))) for h in H]
    np.testing.assert_allclose(tanh_form, GELU_TANH, rtol=0, atol=1e-15)


def test_torch_gelu_defaults_are_as_the_spec_says():
    """spec/ffn.md §6.4: torch's GELU is the erf form unless approximate='tanh'."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    h = torch.tensor(H, dtype=torch.float64)
    np.testing.assert_allclose(torch.nn.functional.gelu(h).numpy(), GELU, rtol=0, atol=1e-15)
    np.testing.assert_allclose(torch.nn.GELU()(h).numpy(), GELU, rtol=0, atol=1e-15)
    np.testing.assert_allclose(torch.nn.functional.gelu(h, approximate="tanh").numpy(), GELU_TANH, rtol=0, atol=1e-15)


@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_gelu_defaults_are_as_the_spec_says():
    """spec/ffn.md §6.4: keras.activations.gelu is the erf form, keras.ops.gelu the tanh form.

    In float32, where every backend computes them accurately; the two forms differ by 1.5e-4 here.
    """
    import keras
    from keras import ops

    h = ops.convert_to_tensor(H.astype(np.float32))
    np.testing.assert_allclose(ops.convert_to_numpy(keras.activations.gelu(h)), GELU, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(keras.layers.Activation("gelu")(h)), GELU, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.gelu(h)), GELU_TANH, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.gelu(h, approximate=False)), GELU, rtol=0, atol=1e-6)
