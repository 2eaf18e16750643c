"""ONNX Runtime as an execution target (impls/torch/onnx_runtime.py): names, exports, and what the harness finds.

The legacy (TorchScript) exporter takes a fraction of a second per export and serves most cells here; the
dynamo exporter takes seconds, so one module-scoped export of mha serves every dynamo test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance import deviations, generate
from conformance.engine import KnownDeviation, NonConformance, Runner, run_cell
from conformance.registry import resolve
from conformance.spec import load_spec

pytest.importorskip("torch", reason="PyTorch is not installed")
pytest.importorskip("onnx", reason="onnx is not installed")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

from impls.torch import onnx_runtime  # noqa: E402  (needs torch)

SPEC = Path(__file__).resolve().parent.parent / "spec"
TARGET = "impls.torch.onnx_runtime:"


def _spec(component: str):
    return load_spec(SPEC / f"{component}.md")


def _mha_example(d_head: int = 3, mask: str = "padding", B: int = 2, seed: int = 1) -> dict:
    return {"d_model": 6, "num_heads": 2, "d_head": d_head, "dropout": 0.0, "B": B, "Lq": 3, "Lk": 4,
            "mask": mask, "seed": seed, "scale_exp": 0}


def _called(target: onnx_runtime.OnnxTarget, spec, example: dict, dtype: str):
    """An instance of `target` for the example's config, loaded with its weights and called on its inputs."""
    weights, inputs = generate.make_arrays(spec, example)
    weights, inputs = generate.cast(weights, dtype), generate.cast(inputs, dtype)
    instance = target.build(generate.layer_config(spec, example), dtype=dtype, device="cpu")
    instance.load(weights)
    return instance, instance(inputs)


def _ledger(entry: dict) -> list:
    return deviations.parse([{"condition": "always", "explanation": "tested", **entry}])


# --- the targets themselves --------------------------------------------------------------------------

def test_names_say_the_exporter_inside_the_inner_names_brackets():
    assert onnx_runtime.MhaOnnx().name == "torch[onnx]"
    assert onnx_runtime.MhaOnnxLegacy().name == "torch[onnx, legacy]"
    assert onnx_runtime.MultiheadAttentionOnnx().name == "torch.nn.MultiheadAttention[onnx]"
    assert onnx_runtime.tagged("torch.nn.X[a=b]", "onnx") == "torch.nn.X[a=b, onnx]"
    dynamo, legacy = onnx_runtime.targets("impls.torch.builtin_encoder:TransformerEncoderLayer")
    assert (dynamo.name, legacy.name) == ("torch.nn.TransformerEncoderLayer[onnx]",
                                          "torch.nn.TransformerEncoderLayer[onnx, legacy]")
    assert dynamo.outputs == ("y",) and dynamo.component == "encoder_block"


def test_inference_only_cpu_eager_and_lstm_in_float32_only():
    target = onnx_runtime.MhaOnnxLegacy()
    assert not hasattr(target.build(_mha_example(), dtype="float32", device="cpu"), "vjp")  # gradients unsupported
    assert (target.devices(), target.modes, target.dtypes) == (["cpu"], ("eager",), ("float64", "float32"))
    assert onnx_runtime.LSTMClassifierOnnx().dtypes == ("float32",)  # ORT has no float64 LSTM kernel
    assert onnx_runtime.MhaOnnx().compiles_per_shape("eager") and not target.compiles_per_shape("eager")
    with pytest.raises(ValueError, match="exporter must be one of dynamo, legacy"):
        onnx_runtime.OnnxTarget(target.inner, "tracing")


# --- exports: weights as inputs, absent inputs, shapes --------------------------------------------------

def test_one_legacy_export_per_shape_and_mask_presence_whatever_the_weights(mha_spec):
    target = onnx_runtime.MhaOnnxLegacy()
    before = onnx_runtime._COUNTS["exports"]
    instance, _ = _called(target, mha_spec, _mha_example(seed=11), "float32")
    for example in (_mha_example(seed=12), _mha_example(mask="none", seed=13), _mha_example(mask="none", seed=14)):
        weights, inputs = generate.make_arrays(mha_spec, example)
        instance.load(generate.cast(weights, "float32"))  # new weights: fed, not exported
        instance(generate.cast(inputs, "float32"))
    assert onnx_runtime._COUNTS["exports"] - before == 2  # with a mask, without one
    _called(target, mha_spec, _mha_example(B=3, seed=15), "float32")
    assert onnx_runtime._COUNTS["exports"] - before == 3  # the legacy exporter's shapes are static


def test_legacy_export_per_length_keeps_a_python_loop_right():
    """The tracer unrolls our LSTM's loop over T: one trace run at another length would be silently wrong."""
    import torch

    spec, target = _spec("lstm_classifier"), onnx_runtime.LstmClassifierOnnxLegacy()
    for T in (2, 3):
        example = {"d_in": 2, "hidden": 3, "num_layers": 2, "num_classes": 2, "B": 2, "T": T, "seed": 5,
                   "scale_exp": 0}
        instance, got = _called(target, spec, example, "float64")
        _, inputs = generate.make_arrays(spec, example)
        with torch.no_grad():
            expected = instance.module(torch.from_numpy(inputs["x"]))
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e.numpy(), rtol=1e-12, atol=1e-15)


@pytest.fixture(scope="module")
def dynamo_mha():
    """Our mha exported by the dynamo exporter in float64 (d_head = 3), and called: one export for the module."""
    pytest.importorskip("onnxscript", reason="onnxscript is not installed")
    target = onnx_runtime.MhaOnnx()
    instance, outputs = _called(target, _spec("mha"), _mha_example(), "float64")
    return target, instance, outputs


def test_dynamo_export_serves_other_batch_sizes_and_lengths(mha_spec, dynamo_mha):
    target, instance, _ = dynamo_mha
    B, Lq, d_model = instance.last_export.dims["query"]
    assert isinstance(B, str) and isinstance(Lq, str)  # dynamic (d_model is the weights', whatever it says)
    before = onnx_runtime._COUNTS["exports"]
    example = {**_mha_example(B=4, seed=2), "Lq": 5, "Lk": 2}
    weights, inputs = generate.make_arrays(mha_spec, example)
    instance.load(weights)
    output, attention = instance(inputs)
    assert output.shape == (4, 5, 6) and attention.shape == (4, 2, 5, 2)
    assert onnx_runtime._COUNTS["exports"] == before


def test_dynamo_exporter_rounds_the_float64_score_divisor_through_float32(dynamo_mha):
    """mha §6.3: the legacy exporter keeps math.sqrt(d_head) exact; the dynamo exporter's constant is
    float32(sqrt(3)) widened to float64."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(dynamo_mha[1].last_export.model).graph
    constants = [numpy_helper.to_array(t) for t in graph.initializer]
    divisors = [c.item() for c in constants if c.dtype == np.float64 and c.size == 1 and 1.7 < c.item() < 1.8]
    assert divisors == [float(np.float32(np.sqrt(3.0)))] and divisors[0] != np.sqrt(3.0)


def test_harness_flags_the_float64_divisor_and_the_ledger_entry_covers_it(mha_spec, dynamo_mha):
    impl = resolve("mha", TARGET + "MhaOnnx")
    with pytest.raises(NonConformance, match="differs from the reference"):  # the fixture's export, cached
        Runner(mha_spec, impl, "float64", "cpu", ledger=[]).run(_mha_example())
    entry = _ledger({"id": "onnx-dynamo-float64-score-scale", "implementation": TARGET + "MhaOnnx",
                     "component": "mha", "condition": "score_scale_inexact_in_float32", "sections": ["6.3"],
                     "bound": "float32", "dtypes": ["float64"]})
    cell = run_cell(mha_spec, impl, "float64", "cpu", example=_mha_example(), ledger=entry)
    assert cell.verdict == "known-deviation", cell.reason
    assert Runner(mha_spec, impl, "float32", "cpu", ledger=[]).run(_mha_example()).ratio <= 1.0


# --- cells: what the harness finds ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_legacy_mha_is_conformant(mha_spec, dtype):
    cell = run_cell(mha_spec, resolve("mha", TARGET + "MhaOnnxLegacy"), dtype, "cpu", max_examples=3, ledger=[])
    assert cell.verdict == "conformant", cell.reason
    assert cell.gradients["verdict"] == "unsupported"  # ORT infers only: no vjp


def test_exported_multihead_attention_keeps_nan_in_fully_masked_rows(mha_spec):
    """mha §7.4, as torch.nn.MultiheadAttention itself (ledger torch-mha-fully-masked-row)."""
    impl = resolve("mha", TARGET + "MultiheadAttentionOnnxLegacy")
    worked = next(w for w in mha_spec.examples if w.name == "fully masked row by hand")
    with pytest.raises(NonConformance, match="non-finite"):
        Runner(mha_spec, impl, "float32", "cpu", ledger=[]).run_worked(worked)
    entry = _ledger({"id": "onnx-legacy-torch-mha-fully-masked-row", "implementation": impl.label,
                     "component": "mha", "condition": "fully_masked_query_row", "sections": ["7.4"],
                     "bound": "region"})
    with pytest.raises(KnownDeviation):
        Runner(mha_spec, impl, "float32", "cpu", ledger=entry).run_worked(worked)


LSTM_TAIL = {"d_in": 1, "hidden": 1, "num_layers": 1, "num_classes": 1, "B": 1, "T": 1, "scale_exp": 1, "seed": 2}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ort_sigmoid_is_only_absolutely_accurate_in_its_negative_tail(dtype):
    """lstm_classifier §6.2: a nearly closed gate is off by much of its own size (ORT's Sigmoid kernel)."""
    spec, impl = _spec("lstm_classifier"), resolve("lstm_classifier", TARGET + "LstmClassifierOnnxLegacy")
    cell = run_cell(spec, impl, dtype, "cpu", example=LSTM_TAIL, ledger=[])
    assert cell.verdict == "non-conformant" and "differs from the reference" in cell.reason
    bound = {"float32": "1e7 eps", "float64": "1e16 eps"}[dtype]
    entry = _ledger({"id": "onnx-legacy-ort-sigmoid-absolute", "implementation": impl.label,
                     "component": "lstm_classifier", "sections": ["6.2"], "bound": bound, "dtypes": [dtype]})
    assert run_cell(spec, impl, dtype, "cpu", example=LSTM_TAIL, ledger=entry).verdict == "known-deviation"


def test_ort_sigmoid_kernel_alone():
    """The cause, with ONNX and ONNX Runtime alone: sigmoid(-15) = 3.059e-7, sigmoid(-20) = 2.061e-9."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    for elem, dtype in ((TensorProto.FLOAT, np.float32), (TensorProto.DOUBLE, np.float64)):
        graph = helper.make_graph([helper.make_node("Sigmoid", ["a"], ["s"])], "sigmoid",
                                  [helper.make_tensor_value_info("a", elem, [None])],
                                  [helper.make_tensor_value_info("s", elem, [None])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        a = np.array([-15.0, -20.0, -38.0], dtype=dtype)
        got = session.run(None, {"a": a})[0].astype(np.float64)
        exact = 1.0 / (1.0 + np.exp(-a.astype(np.float64)))
        assert np.all(np.abs(got - exact) / exact > 1e5 * np.finfo(dtype).eps)  # relative error far beyond eps
        assert np.all(np.abs(got - exact) < 1e-7 if dtype == np.float32 else np.abs(got - exact) < 1e-15)


def test_float64_gelu_is_skipped_ort_has_no_float64_erf():
    """ffn §6.2: F.gelu exports as Erf, which ORT's CPU provider implements for float32 only: the example is
    skipped with that reason (plugin.Unsupported), not failed, and the relu examples run."""
    spec = _spec("ffn")
    impl = resolve("ffn", TARGET + "FfnOnnxLegacy")
    example = {"d_model": 3, "d_ff": 4, "activation": "gelu", "dropout": 0.0, "B": 1, "T": 2, "seed": 3,
               "scale_exp": 0}
    cell = run_cell(spec, impl, "float64", "cpu", example=example, ledger=[])
    assert cell.verdict == "unsupported" and cell.skipped == 1, (cell.verdict, cell.reason)
    assert "no float64 kernel for Erf" in cell.reason
    assert run_cell(spec, impl, "float32", "cpu", example=example, ledger=[]).verdict == "conformant"
    relu = {**example, "activation": "relu"}
    assert run_cell(spec, impl, "float64", "cpu", example=relu, ledger=[]).verdict == "conformant"


def test_a_kernel_ort_lacks_found_when_the_graph_loads_is_unsupported_not_a_failure(monkeypatch):
    """Past `supports`: the graph with float64 Erf exported and loaded, ORT's NOT_IMPLEMENTED becomes
    impls.Unsupported, remembered for the config so that its other shapes are not exported again."""
    import impls

    spec, target = _spec("ffn"), onnx_runtime.FfnOnnxLegacy()
    example = {"d_model": 3, "d_ff": 4, "activation": "gelu", "dropout": 0.0, "B": 1, "T": 2, "seed": 3,
               "scale_exp": 0}
    config = generate.layer_config(spec, example)
    instance = onnx_runtime.OnnxInstance(target, target.inner.module(config).double().eval(), config, "float64")
    weights, inputs = generate.make_arrays(spec, example)
    instance.load(weights)
    exported, export = [], onnx_runtime.export_bytes
    monkeypatch.setattr(onnx_runtime, "export_bytes", lambda *a, **k: exported.append(1) or export(*a, **k))
    for B in (1, 2):
        with pytest.raises(impls.Unsupported, match="no float64 kernel for Erf"):
            instance(generate.make_arrays(spec, {**example, "B": B})[1])
    assert len(exported) == 1  # the second shape is not exported again


# --- registered: listed, checked by name, not available without ONNX Runtime ------------------------------

def test_registered_targets_are_listed_and_checked_by_name(capsys):
    import json

    from conformance.cli import main

    assert main(["list", "--json"]) == 0
    listed = {(i["component"], i["name"]): i for i in json.loads(capsys.readouterr().out)["implementations"]}
    for key in (("mha", "torch.nn.MultiheadAttention[onnx]"), ("mha", "torch[onnx, legacy]"),
                ("encoder_block", "torch.nn.TransformerEncoderLayer[onnx, legacy]"),
                ("text_classifier", "torch[onnx]")):
        assert listed[key]["available"] is True, key
    assert listed[("lstm_classifier", "torch.nn.LSTM[onnx]")]["dtypes"] == ["float32"]
    assert main(["check", "mha", "--impl", "torch.nn.MultiheadAttention[onnx, legacy]", "--dtype", "float32",
                 "--device", "cpu", "--mode", "eager", "--examples", "4"]) == 0
    assert "torch.nn.MultiheadAttention[onnx, legacy]" in capsys.readouterr().out


def test_without_onnxruntime_the_targets_are_not_available(monkeypatch):
    import importlib.util

    from conformance import registry

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    targets = [r for r in registry.shipped() if "[onnx" in r.name]
    assert len(targets) == 22 and {r.group for r in targets} == {"onnxruntime"}
    assert {r.unavailable_reason() for r in targets} == {"not installed: onnxruntime"}
