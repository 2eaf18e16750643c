"""lstm_seq2seq beyond the generic tests (tests/test_components.py): worked examples catch what one random example
misses, the greedy comparison, converters, Keras config, the torch.nn.LSTM check."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conformance import generate
from conformance.engine import Runner, run_cell
from conformance.spec import load_spec
from conformance.registry import find_shipped

from checks import mistake


keras_installed = importlib.util.find_spec("keras") is not None


@pytest.fixture(scope="module")
def spec():
    from conformance.spec import find_spec_dir

    return load_spec(find_spec_dir() / "lstm_seq2seq.md")



@pytest.mark.parametrize("name, example", [
    ("GenerationStartsAtOne", "one hidden unit by hand"),
    ("GenerationFedTeacherTokens", "one hidden unit by hand"),
    ("ScaledScores", "two sequences from torch.nn.LSTM"),
])
def test_worked_examples_catch_what_one_random_example_misses(root, spec, name, example):
    cell = run_cell(spec, mistake("lstm_seq2seq", name), "float32", "cpu", max_examples=1)
    assert cell.verdict == "non-conformant" and cell.reason.startswith(f"worked example {example!r}"), cell.reason


def test_torch_implementation_in_float32_is_conformant(spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    cell = run_cell(spec, find_shipped("lstm_seq2seq", "torch"), "float32", "cpu", max_examples=100)
    assert cell.verdict == "conformant", cell.reason


def test_a_near_tie_is_not_a_disagreement(root, spec):
    """§7.1: where the best two logits tie, the pick and every later step go uncompared."""
    from impls.numpy.lstm_seq2seq import forward

    config = {"src_vocab": 3, "tgt_vocab": 3, "d_embed": 2, "hidden": 2, "N": 3, "B": 2, "S": 2, "T": 2}
    weights, inputs = generate.make_arrays(spec, {**config, "seed": 3, "scale_exp": 0})
    weights["W_out"][:, 1] = weights["W_out"][:, 2]  # logits 1 and 2 always equal...
    weights["b_out"][1] = weights["b_out"][2]
    weights["b_out"][0] = weights["b_out"][2] - 10.0  # ...and larger than logit 0
    diagnostics = {}
    reference = forward(config, weights, inputs, diagnostics)
    assert (diagnostics["generated_margin"][:, 0] == 0).all() and (reference["generated"][:, 0] == 1).all()

    candidate = mistake("lstm_seq2seq", "TiesToHigherId")
    got = candidate.load().build(config, dtype="float64", device="cpu")
    got.load(weights)
    assert (got(inputs)["generated"][:, 0] == 2).all()  # it disagrees from the first step on...
    Runner(spec, candidate, "float32", "cpu").compare(config, config, weights, inputs)  # ...and is accepted


def test_torch_converter_transposes_into_linear_layout(spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    import torch
    from impls.torch.lstm_seq2seq import AttentionSeq2Seq, load_canonical

    config = {"src_vocab": 5, "tgt_vocab": 7, "d_embed": 3, "hidden": 4, "N": 2}
    weights, _ = generate.make_arrays(spec, {**config, "B": 1, "S": 1, "T": 1, "seed": 1, "scale_exp": 0})
    module = AttentionSeq2Seq(**config).to(torch.float64)
    load_canonical(module, weights)
    np.testing.assert_array_equal(module.encoder.x_proj.weight.detach().numpy(), weights["W_x_enc"].T)  # (out, in)
    np.testing.assert_array_equal(module.decoder.h_proj.weight.detach().numpy(), weights["W_h_dec"].T)
    np.testing.assert_array_equal(module.decoder.x_proj.bias.detach().numpy(), weights["b_dec"])
    assert module.decoder.h_proj.bias is None  # one bias per LSTM (§3)
    np.testing.assert_array_equal(module.out_proj.weight.detach().numpy(), weights["W_out"].T)
    np.testing.assert_array_equal(module.tgt_embed.weight.detach().numpy(), weights["E_tgt"])


def _keras_layer(spec, dtype="float64", **overrides):
    from impls.keras.lstm_seq2seq import AttentionSeq2Seq, load_canonical

    config = {"src_vocab": 5, "tgt_vocab": 7, "d_embed": 3, "hidden": 4, "N": 3, **overrides}
    weights, inputs = generate.make_arrays(spec, {**config, "B": 2, "S": 4, "T": 3, "seed": 2, "scale_exp": 0})
    layer = AttentionSeq2Seq(**config, dtype=dtype)
    layer.build()
    load_canonical(layer, weights)
    return layer, weights, inputs


@pytest.mark.skipif(not keras_installed, reason="Keras is not installed")
def test_keras_converter_maps_names_onto_the_lstmcell_layout(spec):
    from keras import ops
    from impls.keras.lstm_seq2seq import CANONICAL_NAMES

    layer, weights, _ = _keras_layer(spec)
    assert set(CANONICAL_NAMES) == set(weights)
    for name, variable in CANONICAL_NAMES.items():
        np.testing.assert_array_equal(ops.convert_to_numpy(getattr(layer, variable)), weights[name])




def torch_seq2seq(config, weights, inputs):
    """spec/lstm_seq2seq.md with torch.nn.LSTM for both LSTMs; attention and output in a few torch ops.

    Uses PyTorch's own LSTM, not our implementation, so it checks the spec's
    numbers independently: weight_ih = W_x^T, weight_hh = W_h^T, bias_ih = b,
    bias_hh = 0 (nn.LSTM's gate order is i, f, g, o too), converted by the
    adapter's `load_lstm_layer` (impls/torch/builtin_lstm.py). The attention
    and output layer here are written apart from the adapter's, which are our
    module's.
    """
    import torch
    from impls.torch.builtin_lstm import load_lstm_layer

    w = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in weights.items()}

    def lstm(side):
        layer = torch.nn.LSTM(config["d_embed"], config["hidden"], batch_first=True, dtype=torch.float64)
        W_x, W_h, b = (np.asarray(weights[f"{n}_{side}"], dtype=np.float64) for n in ("W_x", "W_h", "b"))
        load_lstm_layer(layer, W_x, W_h, b)
        return layer

    encoder, decoder = lstm("enc"), lstm("dec")
    source, target_in = (torch.tensor(np.asarray(inputs[n])) for n in ("source", "target_in"))

    def attend_and_project(dec_hs, hs_enc):  # (B, L, hidden), (B, S, hidden)
        a = torch.softmax(dec_hs @ hs_enc.transpose(1, 2), dim=-1)  # (B, L, S)
        features = torch.cat([a @ hs_enc, dec_hs], dim=-1)  # (B, L, 2*hidden): context, then h
        return a, features @ w["W_out"] + w["b_out"]  # (B, L, tgt_vocab)

    with torch.no_grad():
        hs_enc, state = encoder(w["E_src"][source])  # zero initial state; state = (h_S, c_S)
        dec_hs, _ = decoder(w["E_tgt"][target_in], state)  # teacher forcing from the encoder's (h, c)
        attention, logits = attend_and_project(dec_hs, hs_enc)
        token, generated = torch.zeros_like(source[:, :1]), []  # start id 0, (B, 1)
        for _ in range(config["N"]):
            h, state = decoder(w["E_tgt"][token], state)
            token = attend_and_project(h, hs_enc)[1].argmax(dim=-1)  # (B, 1)
            generated.append(token)
    return {"logits": logits.numpy(), "attention_weights": attention.numpy(),
            "generated": torch.cat(generated, dim=1).numpy()}


def test_torch_lstm_agrees_with_every_worked_example(spec):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    assert any("torch.nn.LSTM" in ex.name for ex in spec.examples)
    for ex in spec.examples:
        got = torch_seq2seq(ex.config, ex.weights, generate.worked_arrays(spec, ex.weights, ex.inputs)[1])
        np.testing.assert_array_equal(got["generated"], np.asarray(ex.expected["generated"]), err_msg=ex.name)
        for name in ("logits", "attention_weights"):
            np.testing.assert_allclose(got[name], np.asarray(ex.expected[name]), rtol=0, atol=1e-12,
                                       err_msg=f"{ex.name}: {name}")
