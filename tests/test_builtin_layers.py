"""The frameworks' own layers as implementations (impls/torch/builtin_mha.py) and the known-deviation ledger."""

from __future__ import annotations

import numpy as np
import pytest

from conformance import conditions, deviations, generate
from conformance.deviations import Bound, BoundKind, Deviation, LedgerError
from conformance.engine import ConfigUnsupported, NonConformance, Outcome, Runner, run_cell
from conformance.registry import resolve

pytest.importorskip("torch", reason="PyTorch is not installed")

ADAPTERS = ("torch.nn.MultiheadAttention", "torch.nn.MultiheadAttention[need_weights=False]", "torch.sdpa")
MHA_ENTRY = "torch-mha-fully-masked-row"


def _examples(mask: str) -> list[dict]:
    """A few examples the built-in layer can express (num_heads * d_head == d_model); these masks never
    mask a query row fully (padding keeps at least one key, causal always shows key 0)."""
    configs = [(4, 2, 2, 2, 3, 5), (6, 3, 2, 1, 4, 4), (8, 1, 8, 3, 5, 2), (12, 4, 3, 2, 1, 7)]
    return [{"d_model": d, "num_heads": h, "d_head": dh, "dropout": 0.1, "B": b, "Lq": lq, "Lk": lk,
             "mask": mask, "seed": 10 * i + 1, "scale_exp": i % 2}
            for i, (d, h, dh, b, lq, lk) in enumerate(configs)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mask", ["none", "padding", "causal"])
@pytest.mark.parametrize("name", ADAPTERS)
def test_adapter_is_conformant_where_no_row_is_fully_masked(mha_spec, name, mask, dtype):
    runner = Runner(mha_spec, resolve("mha", name), dtype, "cpu", ledger=[])
    for example in _examples(mask):
        outcome = runner.run(example)
        assert isinstance(outcome, Outcome) and outcome.ratio <= 1.0
    for worked in mha_spec.examples:  # §10.3 masks a row fully: that one is the ledger's (below)
        if worked.config["mask"] != "random":
            assert runner.run_worked(worked).ratio <= 1.0


@pytest.mark.parametrize("name", ["torch.nn.MultiheadAttention[need_weights=False]", "torch.sdpa"])
def test_paths_without_weights_are_conformant_in_the_full_search(mha_spec, name):
    """Fully masked rows included: both give output b_o there (torch 2.13.0), as §7.4 asks."""
    cell = run_cell(mha_spec, resolve("mha", name), "float64", "cpu", max_examples=16, ledger=[])
    assert cell.verdict == "conformant", cell.reason
    assert cell.outputs_compared == ["output"]
    assert cell.examples > 0


def test_converter_packs_the_input_projections_in_q_k_v_order(mha_spec):
    from impls.torch.builtin_mha import MultiheadAttentionAdapter, load_multihead_attention
    import torch

    _, weights, _ = _arrays(mha_spec, _examples("none")[1])
    module = MultiheadAttentionAdapter(6, 3, need_weights=True).to(torch.float64)
    load_multihead_attention(module, weights)
    packed = module.layer.in_proj_weight.detach().numpy()  # (3 * d_model, d_model), rows are outputs
    np.testing.assert_array_equal(packed[6:12], weights["W_k"].T)
    np.testing.assert_array_equal(module.layer.in_proj_bias.detach().numpy()[12:], weights["b_v"])
    np.testing.assert_array_equal(module.layer.out_proj.weight.detach().numpy(), weights["W_o"].T)


def _arrays(spec, example):
    weights, inputs = generate.make_arrays(spec, example)
    return example, weights, inputs


def test_config_the_layer_cannot_express_is_skipped_and_counted(mha_spec):
    impl = resolve("mha", "torch.nn.MultiheadAttention")
    example = {**_examples("none")[0], "d_head": 3}  # 2 heads * 3 != d_model 4
    with pytest.raises(ConfigUnsupported, match=r"num_heads \* d_head != d_model \(it splits"):
        Runner(mha_spec, impl, "float64", "cpu", ledger=[]).run(example)
    with pytest.raises(ValueError, match="unsupported configuration"):  # a direct caller gets a clear error too
        impl.load().build({"d_model": 4, "num_heads": 2, "d_head": 3, "dropout": 0.0}, dtype="float64", device="cpu")
    cell = run_cell(mha_spec, impl, "float64", "cpu", example=example, ledger=[])
    assert (cell.verdict, cell.skipped, cell.examples) == ("unsupported", 1, 0)
    assert cell.skip_reason.startswith("num_heads * d_head != d_model")
    assert "every example was skipped" in cell.reason


def test_fully_masked_row_is_a_known_deviation_with_its_explanation(mha_spec):
    ledger = deviations.load()
    entry = next(d for d in ledger if d.id == MHA_ENTRY)
    cell = run_cell(mha_spec, resolve("mha", "torch.nn.MultiheadAttention"), "float64", "cpu", max_examples=16,
                    ledger=ledger)
    assert cell.verdict == "known-deviation", cell.reason
    assert cell.deviation == MHA_ENTRY and cell.known_deviations >= 1  # §10.3 at least
    assert entry.explanation in cell.reason and "non-finite" in cell.reason
    assert cell.sections == ["mha §7.4"]
    assert cell.examples > 0  # the examples outside the condition were checked in full


def test_without_the_ledger_the_same_cell_is_non_conformant(mha_spec):
    cell = run_cell(mha_spec, resolve("mha", "torch.nn.MultiheadAttention"), "float64", "cpu", max_examples=16,
                    ledger=[], shrink=False)
    assert cell.verdict == "non-conformant"
    assert "non-finite" in cell.reason


def test_an_entry_narrows_it_does_not_skip(mha_spec, monkeypatch):
    """An example outside the entry's condition is still checked in full: here a layer left with its own
    random weights, wrong everywhere, fails on a padding example although the ledger has an entry for it."""
    from impls.torch.builtin_mha import MultiheadAttentionWeights

    monkeypatch.setattr(MultiheadAttentionWeights, "load_canonical", staticmethod(lambda module, weights: None))
    runner = Runner(mha_spec, resolve("mha", "torch.nn.MultiheadAttention"), "float64", "cpu",
                    ledger=deviations.load())
    with pytest.raises(NonConformance, match="differs from the reference"):
        runner.run(_examples("padding")[0])


def test_stale_entry_is_reported(mha_spec):
    """An entry against our own implementation, which follows §7.4: the entry is stale."""
    stale = Deviation("our-torch-nan", "torch", "mha", "fully_masked_query_row", ("7.4",),
                      "pretends our layer gives NaN on fully masked rows", Bound(BoundKind.REGION))
    cell = run_cell(mha_spec, resolve("mha", "torch"), "float64", "cpu", max_examples=8, ledger=[stale], shrink=False)
    assert cell.verdict == "non-conformant"
    assert "ledger entry 'our-torch-nan' is stale" in cell.reason
    assert cell.sections == ["mha §7.4"]


def test_scope_fields_narrow_an_entry_to_some_cells():
    entry, = deviations.parse([{**GOOD, "condition": "always", "dtypes": ["float64"], "backends": ["torch", "jax"]}])
    cell = {"dtype": "float64", "backend": "torch", "device": "cpu", "mode": "eager"}
    assert entry.applies(**cell)
    assert not entry.applies(**{**cell, "dtype": "float32"})
    assert not entry.applies(**{**cell, "backend": "tensorflow"})
    assert not entry.applies(**{**cell, "backend": None})  # a backend-scoped entry never covers plain torch
    assert entry.applies(**{**cell, "device": "cuda", "mode": "compiled"})  # fields it does not give: every value
    assert deviations.entries_for([entry], "mha", "torch", **{**cell, "dtype": "float32"}) == []


def test_entry_is_stale_only_when_no_covered_example_deviates(mha_spec):
    """A dtype-wide entry against our own conformant implementation: stale. The same entry against a layer
    that deviates on some covered examples and not on others: a known deviation, the rest checked."""
    always = Deviation("our-numpy-always", "numpy", "mha", "always", ("9",), "pretends every example is off",
                       Bound(BoundKind.DTYPE, "float32"))
    cell = run_cell(mha_spec, resolve("mha", "numpy"), "float64", "cpu", max_examples=4, ledger=[always],
                    shrink=False)
    assert cell.verdict == "non-conformant" and "'our-numpy-always' is stale" in cell.reason
    assert cell.counterexample is not None
    masked = Deviation("mha-nan", "torch.nn.MultiheadAttention", "mha", "fully_masked_query_row", ("7.4",),
                       "NaN rows", Bound(BoundKind.REGION))
    cell = run_cell(mha_spec, resolve("mha", "torch.nn.MultiheadAttention"), "float64", "cpu", max_examples=16,
                    ledger=[masked])
    assert cell.verdict == "known-deviation" and cell.examples > 0 and cell.known_deviations > 0


def test_condition_fully_masked_query_row():
    example = {"B": 1, "Lq": 2, "Lk": 2}
    holds = lambda mask: conditions.holds("mha", "fully_masked_query_row", example, {"attention_mask": mask})  # noqa: E731
    assert not holds(None)
    assert not holds(np.array([[[True, False]]]))
    assert holds(np.array([[True, False], [False, False]]))


GOOD = {"id": "x", "implementation": "torch", "component": "mha", "condition": "fully_masked_query_row",
        "sections": ["7.4"], "explanation": "because", "bound": "region"}


@pytest.mark.parametrize("change, message", [
    ({"sectoins": ["7.4"]}, "entry 'x': unknown fields sectoins; required: id, implementation, component, "
                            "condition, sections, explanation, bound; optional: reference, seen_on, dtypes, backends, "
                            "devices, modes"),
    ({"explanation": None}, "entry 'x': missing fields explanation; required: id"),
    ({"condition": 3}, "entry 'x': condition has the wrong type"),  # a name its spec lacks: tests/test_usage_errors.py
    ({"sections": "7.4"}, "entry 'x': sections has the wrong type"),
    ({"dtypes": ["float65"]}, "entry 'x': dtypes has float65; it is a non-empty list of: float64, float32, "
                              "float16, bfloat16"),
    ({"backends": "jax"}, "entry 'x': backends has jax; it is a non-empty list of: tensorflow, torch, jax"),
    ({"modes": []}, "entry 'x': modes has (empty list); it is a non-empty list of: eager, compiled"),
    ({"bound": None}, "entry 'x': missing fields bound"),
    ({"bound": "float64"}, "entry 'x': bound is 'float64'; it is \"region\", a dtype (\"float32\"), a number of eps"),
    ({"bound": "-3 eps"}, "entry 'x': bound is '-3 eps'; it is"),
    ({"bound": "like"}, "entry 'x': bound is 'like'; it is"),
    ({"bound": 3}, "entry 'x': bound is 3; it is"),
])
def test_bad_entry_names_itself_and_the_valid_fields(change, message):
    entry = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(LedgerError) as info:
        deviations.parse([entry])
    assert message in str(info.value)


def test_ledger_file_parses_and_rejects_unknown_tables(tmp_path):
    entry = {d.id: d for d in deviations.load()}[MHA_ENTRY]
    assert entry.seen_on == {"torch": "2.13.0"} and entry.scope == {}
    bad = tmp_path / "deviations.toml"
    bad.write_text('[[deviations]]\nid = "x"\n')
    with pytest.raises(LedgerError, match=r"unknown top-level keys deviations; entries are \[\[deviation\]\] tables"):
        deviations.load(bad)
    assert deviations.load(tmp_path / "absent.toml") == []


def test_declared_outputs_must_be_spec_outputs(mha_spec):
    impl = resolve("mha", "torch.sdpa")
    assert impl.outputs(tuple(mha_spec.outputs)) == ("output",)
    assert resolve("mha", "numpy").outputs(tuple(mha_spec.outputs)) == tuple(mha_spec.outputs)


@pytest.mark.parametrize("text, message", [
    ("[[deviation]\n", "is not valid TOML"),
    ('[[deviation]]\nid = "x"\nimplementation = "torch.nn.MultiHeadAttention"\ncomponent = "mha"\n'
     'condition = "always"\nsections = ["7.4"]\nexplanation = "e"\nbound = "float32"\n',
     "ledger entry 'x': mha has no implementation 'torch.nn.MultiHeadAttention'; registered: "),
    ('[[deviation]]\nid = "x"\nimplementation = "torch"\ncomponent = "attention"\n'
     'condition = "always"\nsections = ["7.4"]\nexplanation = "e"\nbound = "float32"\n',
     "ledger entry 'x': unknown component 'attention'; known: "),
    (None, "no ledger file"),
])
def test_a_bad_ledger_stops_the_run_before_it_starts(tmp_path, capsys, text, message):
    from conformance.cli import main

    path = tmp_path / "ledger.toml"
    if text is not None:
        path.write_text(text)
    out = tmp_path / "results.json"
    assert main(["run", "--component", "ffn", "--framework", "numpy", "--ledger", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_empty_ledger_shows_the_deviation_raw(capsys):
    from conformance.cli import main

    example = ('{"d_model":1,"num_heads":1,"d_head":1,"dropout":0.0,"B":1,"Lq":1,"Lk":1,"mask":"random",'
               '"scale_exp":0,"seed":0}')
    argv = ["check", "mha", "--impl", "torch.nn.MultiheadAttention", "--dtype", "float64", "--device", "cpu",
            "--mode", "eager", "--example", example]
    assert main(argv) == 0
    assert "known-deviation" in capsys.readouterr().out
    assert main([*argv, "--ledger", "none"]) == 1
    assert "non-conformant" in capsys.readouterr().out
