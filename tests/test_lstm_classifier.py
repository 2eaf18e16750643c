"""spec/lstm_classifier.md beyond the generic tests (tests/test_components.py): the worked examples by hand
catch every mistake, converters, the Keras layer, and the
frameworks' own LSTM layers recomputing the worked examples."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

from conformance import generate
from conformance.engine import NonConformance, Runner
from conformance.spec import load_spec
from conformance.registry import find_shipped

from checks import mistake, outputs_of

OUTPUTS = ("logits", "hidden_states", "h_n", "c_n")
torch_installed = importlib.util.find_spec("torch") is not None
keras_installed = importlib.util.find_spec("keras") is not None


@pytest.fixture(scope="module")
def spec():
    return load_spec(Path(__file__).resolve().parent.parent / "spec" / "lstm_classifier.md")


def _arrays(spec, **config):
    example = {"d_in": 3, "hidden": 4, "num_layers": 2, "num_classes": 5, "B": 2, "T": 3,
               "seed": 1, "scale_exp": 0, **config}
    weights, inputs = generate.make_arrays(spec, example)
    return example, weights, inputs


# --- the frameworks' own layers, float64 (spec §7) -------------------------------

def torch_lstm_classifier(config: Mapping[str, Any], weights: Mapping[str, Any],
                          inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """spec/lstm_classifier.md through torch.nn.LSTM and torch.nn.Linear, converted as spec §7.1 says.

    That is the adapter impls/torch/builtin_lstm.py, which the harness also checks as an implementation
    under test; here it runs in float64 and must give the worked examples' numbers to 1e-12.
    """
    layer = find_shipped("lstm_classifier", "torch.nn.LSTM")
    instance = layer.load().build(config, dtype="float64", device="cpu")
    instance.load({k: np.asarray(v, dtype=np.float64) for k, v in weights.items()})
    return outputs_of(layer, instance, {"x": np.asarray(inputs["x"], dtype=np.float64)})


def keras_lstm_classifier(config: Mapping[str, Any], weights: Mapping[str, Any],
                          inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """spec/lstm_classifier.md through stacked keras.layers.LSTM and keras.layers.Dense, as spec §7.2 says."""
    import keras
    from keras import ops

    seq = ops.convert_to_tensor(np.asarray(inputs["x"], dtype=np.float64))  # (B, T, d_in)
    h_n, c_n = [], []
    for k in range(config["num_layers"]):
        lstm = keras.layers.LSTM(config["hidden"], return_sequences=True, return_state=True, dtype="float64")
        lstm.build(tuple(seq.shape))
        # kernel (in, 4H), recurrent_kernel (H, 4H), bias (4H,), gate blocks i, f, c, o: the canonical layout
        lstm.set_weights([np.asarray(weights[f"W_x_{k}"], dtype=np.float64),
                          np.asarray(weights[f"W_h_{k}"], dtype=np.float64),
                          np.asarray(weights[f"b_{k}"], dtype=np.float64)])
        seq, h, c = lstm(seq)  # (B, T, H), (B, H), (B, H)
        h_n.append(ops.convert_to_numpy(h))
        c_n.append(ops.convert_to_numpy(c))
    dense = keras.layers.Dense(config["num_classes"], dtype="float64")
    dense.build((None, config["hidden"]))
    dense.set_weights([np.asarray(weights[name], dtype=np.float64) for name in ("W_out", "b_out")])
    logits = dense(seq[:, -1, :])
    return {"logits": ops.convert_to_numpy(logits), "hidden_states": ops.convert_to_numpy(seq),
            "h_n": np.stack(h_n), "c_n": np.stack(c_n)}


FRAMEWORK_LAYERS = {"torch.nn.LSTM": ("torch", torch_lstm_classifier),
                    "keras.layers.LSTM": ("keras", keras_lstm_classifier)}


@pytest.mark.parametrize("layer", list(FRAMEWORK_LAYERS))
def test_framework_layer_agrees_with_every_worked_example(spec, layer):
    """§7: with converted weights the frameworks' own LSTMs compute every worked example, by hand or not."""
    module, compute = FRAMEWORK_LAYERS[layer]
    pytest.importorskip(module, reason=f"{module} is not installed")
    assert any(layer in ex.name for ex in spec.examples), f"no worked example was computed with {layer}"
    for ex in spec.examples:
        _, inputs = generate.worked_arrays(spec, ex.weights, ex.inputs)
        got = compute(ex.config, ex.weights, inputs)
        for name in OUTPUTS:
            np.testing.assert_allclose(got[name], np.asarray(ex.expected[name], dtype=np.float64), rtol=0,
                                       atol=1e-12, err_msg=f"{layer}, worked example {ex.name!r}, output {name!r}")


# --- deliberately wrong implementations -------------------------------------------


@pytest.mark.parametrize("name", ["BookGateOrder", "HardSigmoid", "FirstStepClassified", "BiasTwice",
                                  "SwappedStates", "TopLayerStatesOnly"])
def test_a_worked_example_by_hand_rejects_each_mistake(root, spec, name):
    """§9.1 and §9.2 alone catch every mistake above, whatever the random search finds."""
    runner = Runner(spec, mistake("lstm_classifier", name), "float32", "cpu")
    caught = []
    for ex in (ex for ex in spec.examples if ex.name.endswith("by hand")):
        try:
            runner.run_worked(ex)
        except NonConformance:
            caught.append(ex.name)
    assert caught, f"{name} passes every worked example computed by hand"


# --- converters (spec §7) and the Keras layer ----------------------------------------

@pytest.mark.skipif(not torch_installed, reason="PyTorch is not installed")
def test_torch_converter_gives_torch_nn_lstm_layout(spec):
    import torch
    from impls.torch.lstm_classifier import LSTMClassifier, load_canonical

    _, w, x = _arrays(spec)
    module = LSTMClassifier(3, 4, 2, 5).to(torch.float64)
    load_canonical(module, w)
    np.testing.assert_array_equal(module.weight_ih_l0.detach().numpy(), w["W_x_0"].T)  # (4H, d_in)
    np.testing.assert_array_equal(module.weight_hh_l1.detach().numpy(), w["W_h_1"].T)  # (4H, H)
    np.testing.assert_array_equal(module.bias_ih_l1.detach().numpy(), w["b_1"])
    np.testing.assert_array_equal(module.bias_hh_l0.detach().numpy(), np.zeros(16))
    np.testing.assert_array_equal(module.classifier.weight.detach().numpy(), w["W_out"].T)
    # the same parameters, by name, drive torch.nn.LSTM to the same states
    lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, dtype=torch.float64)
    lstm.load_state_dict({k: v for k, v in module.state_dict().items() if not k.startswith("classifier.")})
    with torch.no_grad():
        states, (h_n, c_n) = lstm(torch.tensor(x["x"]))
        _, ours, our_h, our_c = module(torch.tensor(x["x"]))
    for theirs, mine in ((states, ours), (h_n, our_h), (c_n, our_c)):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), rtol=0, atol=1e-14)


@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_converter_keeps_the_canonical_layout(spec):
    from impls.keras.lstm_classifier import LSTMClassifier, load_canonical

    _, w, _ = _arrays(spec)
    layer = LSTMClassifier(3, 4, 2, 5, dtype="float64")
    layer.build()
    load_canonical(layer, w)
    assert tuple(layer.kernels[0].shape) == (3, 16) and tuple(layer.kernels[1].shape) == (4, 16)
    np.testing.assert_array_equal(np.asarray(layer.kernels[1]), w["W_x_1"])
    np.testing.assert_array_equal(np.asarray(layer.recurrent_kernels[0]), w["W_h_0"])
    np.testing.assert_array_equal(np.asarray(layer.biases[1]), w["b_1"])
    np.testing.assert_array_equal(np.asarray(layer.output_kernel), w["W_out"])

