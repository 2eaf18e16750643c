"""PyTorch's own LSTM as an implementation of lstm_classifier and lstm_seq2seq (impls/torch/builtin_lstm.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance import generate
from conformance.engine import NonConformance, Outcome, Runner
from conformance.spec import load_spec
from conformance.registry import resolve

from checks import outputs_of
from impls.numpy.lstm_classifier import forward as numpy_forward

torch = pytest.importorskip("torch", reason="PyTorch is not installed")

from impls.torch import builtin_lstm  # noqa: E402  (needs torch)

SPEC = Path(__file__).resolve().parent.parent / "spec"
NAME = "torch.nn.LSTM"
SEQ2SEQ = (NAME, "torch.nn.LSTMCell")  # the decoder an nn.LSTM, or an nn.LSTMCell
GATES = "ifgo"  # the canonical order of the four H-wide blocks along the 4H axis (both specs' §3)
TORCH_GATES = "ifgo"  # the order of torch.nn.LSTM's four H-row blocks of weight_ih, weight_hh and the biases


@pytest.fixture(scope="module")
def classifier_spec():
    return load_spec(SPEC / "lstm_classifier.md")


@pytest.fixture(scope="module")
def seq2seq_spec():
    return load_spec(SPEC / "lstm_seq2seq.md")


def classifier_examples() -> list[dict]:
    """d_in, hidden, num_layers, num_classes, B, T: one and three layers, d_in above and below hidden, T = 1."""
    configs = [(3, 4, 2, 5, 2, 3), (1, 1, 1, 1, 1, 1), (7, 2, 3, 4, 3, 6), (2, 5, 1, 3, 4, 8)]
    return [{"d_in": d, "hidden": h, "num_layers": n, "num_classes": c, "B": b, "T": t, "seed": 10 * i + 1,
             "scale_exp": i % 2} for i, (d, h, n, c, b, t) in enumerate(configs)]


def seq2seq_examples() -> list[dict]:
    """src_vocab, tgt_vocab, d_embed, hidden, N, B, S, T."""
    configs = [(5, 4, 3, 2, 4, 2, 3, 3), (2, 2, 1, 1, 1, 1, 1, 1), (9, 7, 6, 8, 5, 3, 7, 2)]
    keys = ("src_vocab", "tgt_vocab", "d_embed", "hidden", "N", "B", "S", "T")
    return [{**dict(zip(keys, c)), "seed": 10 * i + 2, "scale_exp": 0} for i, c in enumerate(configs)]


def _permuted(a: np.ndarray, order: str) -> np.ndarray:
    """The four gate blocks of a (..., 4H) array rearranged: block j of the result is gate order[j]."""
    blocks = np.split(a, 4, axis=-1)
    return np.concatenate([blocks[GATES.index(g)] for g in order], axis=-1)


# --- registration -------------------------------------------------------------------------------

@pytest.mark.parametrize("component, name, spec_name", [("lstm_classifier", NAME, "classifier_spec"),
                                                         *(("lstm_seq2seq", n, "seq2seq_spec") for n in SEQ2SEQ)])
def test_registered_under_each_component_with_every_output(request, component, name, spec_name):
    spec = request.getfixturevalue(spec_name)
    impl = resolve(component, name)
    assert (impl.framework, impl.dtypes, impl.modes) == ("torch", ("float64", "float32"), ("eager",))
    assert impl.outputs(tuple(spec.outputs)) == tuple(spec.outputs)
    assert impl.unsupported_config(generate.layer_config(spec, spec.examples[0].config)) is None


# --- the converter (classifier §7.1, seq2seq §3) ------------------------------------------------

def test_converter_puts_each_gate_where_torch_reads_it(classifier_spec):
    """Each gate's H rows of torch's weight_ih, weight_hh and bias_ih hold that gate's canonical columns."""
    example = classifier_examples()[0]
    weights, _ = generate.make_arrays(classifier_spec, example)
    module = builtin_lstm.ClassifierLSTM(3, 4, 2, 5).to(torch.float64)
    builtin_lstm.load_classifier(module, weights)
    lstm, H = module.lstm, 4
    assert lstm.batch_first and lstm.num_layers == 2 and not lstm.bidirectional and lstm.proj_size == 0
    for k in range(2):
        for gate in GATES:
            t, c = TORCH_GATES.index(gate), GATES.index(gate)
            rows, cols = slice(t * H, (t + 1) * H), slice(c * H, (c + 1) * H)
            for torch_name, canonical in (("weight_ih", "W_x"), ("weight_hh", "W_h")):
                got = getattr(lstm, f"{torch_name}_l{k}").detach().numpy()[rows]  # (H, in)
                np.testing.assert_array_equal(got, weights[f"{canonical}_{k}"][:, cols].T, err_msg=f"{gate}, l{k}")
            np.testing.assert_array_equal(getattr(lstm, f"bias_ih_l{k}").detach().numpy()[rows],
                                          weights[f"b_{k}"][cols])
        np.testing.assert_array_equal(getattr(lstm, f"bias_hh_l{k}").detach().numpy(), np.zeros(4 * H))
    np.testing.assert_array_equal(module.classifier.weight.detach().numpy(), weights["W_out"].T)


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_converter_fills_encoder_decoder_and_output_layer(seq2seq_spec, name):
    example = seq2seq_examples()[0]
    weights, _ = generate.make_arrays(seq2seq_spec, example)
    impl = resolve("lstm_seq2seq", name).load()
    module = impl.module(generate.layer_config(seq2seq_spec, example)).to(torch.float64)
    impl.load_canonical(module, weights)
    suffix = "" if name == "torch.nn.LSTMCell" else "_l0"
    assert isinstance(module.decoder, torch.nn.LSTMCell if suffix == "" else torch.nn.LSTM)
    for lstm, side, s in ((module.encoder, "enc", "_l0"), (module.decoder, "dec", suffix)):
        np.testing.assert_array_equal(getattr(lstm, f"weight_ih{s}").detach().numpy(), weights[f"W_x_{side}"].T)
        np.testing.assert_array_equal(getattr(lstm, f"weight_hh{s}").detach().numpy(), weights[f"W_h_{side}"].T)
        np.testing.assert_array_equal(getattr(lstm, f"bias_ih{s}").detach().numpy(), weights[f"b_{side}"])
        np.testing.assert_array_equal(getattr(lstm, f"bias_hh{s}").detach().numpy(), np.zeros(8))
    np.testing.assert_array_equal(module.tgt_embed.weight.detach().numpy(), weights["E_tgt"])
    np.testing.assert_array_equal(module.out_proj.weight.detach().numpy(), weights["W_out"].T)


# classifier §7.3: the book's, TensorFlow's LSTMBlockCell's, Chainer's (without its interleaving); ONNX's (seq2seq §8)
@pytest.mark.parametrize("order", ["fgio", "igfo", "gifo", "iofg"])
def test_another_gate_order_is_caught(classifier_spec, monkeypatch, order):
    """Loading the blocks in any other order than torch's i, f, g, o is a different function, and the
    harness says so: the converter's gate order is tested, not assumed."""
    load = builtin_lstm.load_lstm_layer

    def wrong(lstm, W_x, W_h, b, **kw):
        load(lstm, _permuted(W_x, order), _permuted(W_h, order), _permuted(b, order), **kw)

    monkeypatch.setattr(builtin_lstm, "load_lstm_layer", wrong)
    runner = Runner(classifier_spec, resolve("lstm_classifier", NAME), "float32", "cpu", ledger=[])
    with pytest.raises(NonConformance, match="differs from the reference"):
        runner.run(classifier_examples()[0])


def test_bias_in_both_of_torch_biases_is_caught(seq2seq_spec, monkeypatch):
    """seq2seq §3: torch adds bias_ih and bias_hh; copying the one canonical bias into both doubles it."""
    load = builtin_lstm.load_lstm_layer

    def twice(lstm, W_x, W_h, b, **kw):
        load(lstm, W_x, W_h, b, **kw)
        with torch.no_grad():
            lstm.bias_hh_l0.copy_(torch.from_numpy(b))

    monkeypatch.setattr(builtin_lstm, "load_lstm_layer", twice)
    runner = Runner(seq2seq_spec, resolve("lstm_seq2seq", NAME), "float64", "cpu", ledger=[])
    with pytest.raises(NonConformance, match="differs"):
        runner.run(seq2seq_examples()[0])


# --- conformance on a handful of examples, and the worked examples --------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_classifier_is_conformant(classifier_spec, dtype):
    runner = Runner(classifier_spec, resolve("lstm_classifier", NAME), dtype, "cpu", ledger=[])
    for example in classifier_examples():
        outcome = runner.run(example)
        assert isinstance(outcome, Outcome) and outcome.ratio <= 0.1  # §8.2: a tenth of the budget at most
    for worked in classifier_spec.examples:
        assert runner.run_worked(worked).ratio <= 0.1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", SEQ2SEQ)
def test_seq2seq_is_conformant(seq2seq_spec, name, dtype):
    runner = Runner(seq2seq_spec, resolve("lstm_seq2seq", name), dtype, "cpu", ledger=[])
    for example in seq2seq_examples():
        assert runner.run(example).ratio <= 0.1  # §7.3: a twentieth, in the calibration
    for worked in seq2seq_spec.examples:
        assert runner.run_worked(worked).ratio <= 0.1


# --- states and steps ------------------------------------------------------------------------------

def test_trailing_zero_steps_are_read_not_treated_as_padding(classifier_spec):
    """Classifier §1 and §6.5: no step is padding. Zero input rows at the end of a sequence are still steps
    (the bias alone moves the state), and the logits come from h_T, not from the last non-zero step."""
    example = {**classifier_examples()[0], "B": 2, "T": 5}
    weights, inputs = generate.make_arrays(classifier_spec, example)
    x = inputs["x"].copy()
    x[0, 2:] = 0.0  # row 0 looks like a length-2 sequence padded with zeros
    instance = resolve("lstm_classifier", NAME).load().build(generate.layer_config(classifier_spec, example),
                                                             dtype="float64", device="cpu")
    instance.load(weights)
    got = outputs_of(resolve("lstm_classifier", NAME), instance, {"x": x})
    reference = numpy_forward(example, weights, {"x": x})
    for name in ("logits", "hidden_states", "h_n", "c_n"):
        np.testing.assert_allclose(got[name], reference[name], rtol=0, atol=1e-12, err_msg=name)
    assert not np.allclose(got["hidden_states"][0, 1], got["hidden_states"][0, -1])  # the zero steps did work
    np.testing.assert_array_equal(got["h_n"][-1], got["hidden_states"][:, -1])  # §6.6


class ZeroCellState(torch.nn.LSTM):
    """An encoder that hands on its final h but a zero cell state, as the book's decoder starts (seq2seq §8)."""

    def forward(self, x, hx=None):
        hs, (h, c) = super().forward(x, hx)
        return hs, (h, torch.zeros_like(c))


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_decoder_starts_from_both_parts_of_the_encoder_state(seq2seq_spec, monkeypatch, name):
    """seq2seq §6.3: the decoder's initial state is the encoder's (h_S, c_S); dropping c_S is caught."""
    example = seq2seq_examples()[0]
    runner = Runner(seq2seq_spec, resolve("lstm_seq2seq", name), "float64", "cpu", ledger=[])
    assert runner.run(example).ratio <= 0.1  # as it is
    module = builtin_lstm.Seq2Seq.module

    def with_zero_cell_state(self, config):
        built = module(self, config)
        built.encoder = ZeroCellState(config["d_embed"], config["hidden"], batch_first=True)
        return built

    monkeypatch.setattr(builtin_lstm.Seq2Seq, "module", with_zero_cell_state)
    with pytest.raises(NonConformance, match="differs"):
        Runner(seq2seq_spec, resolve("lstm_seq2seq", name), "float64", "cpu", ledger=[]).run(example)
