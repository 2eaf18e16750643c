"""The engine beyond the generic tests of tests/test_components.py (which reject every wrong implementation):
the repro line replays, worked examples catch what one random example misses, one cell never stops another."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from conformance import results
from conformance.cli import main
from conformance.deviations import Bound, BoundKind, Deviation
from conformance.engine import run_cell, run_matrix
from conformance.registry import find_shipped, Registered, resolve
from conformance.spec import load_spec

from checks import mistake


WRONG = "tests/wrong_mha.py"


def test_repro_line_reproduces(root, mha_spec, monkeypatch, capsys):
    monkeypatch.chdir(root)
    cell = run_cell(mha_spec, resolve("mha", f"{WRONG}:InvertedMask"), "float32", "cpu", max_examples=50)
    argv = shlex.split(cell.repro)
    assert argv[:2] == ["conformance", "check"]
    assert main(argv[1:]) == 1
    assert "non-conformant" in capsys.readouterr().out


def test_worked_examples_catch_what_random_search_may_miss(root, mha_spec):
    # With one example the search cannot find the mistake; the worked examples still do.
    cell = run_cell(mha_spec, mistake("mha", "TransposedOutputProjection"), "float32", "cpu", max_examples=1)
    assert cell.verdict == "non-conformant"
    assert cell.reason.startswith("worked example 'two heads by hand'")
    assert cell.sections and all(s.startswith("mha §") for s in cell.sections)


def test_one_broken_cell_does_not_stop_the_others(root, mha_spec, monkeypatch):
    from conformance import registry

    monkeypatch.setitem(registry.FRAMEWORK_MODULES, "torch", ("no_such_torch_module",))
    cells = run_matrix([mha_spec], [
        Registered("mha", "missing-module", "numpy", "no_such_module_anywhere:Impl", "plugin"),
        mistake("mha", "BrokenBuild"),
        find_shipped("mha", "torch"),
        find_shipped("mha", "numpy"),
    ], dtypes=["float32"], devices=["cpu"], modes=["eager"], max_examples=10)
    verdicts = [(c.implementation, c.verdict) for c in cells]
    assert verdicts == [("no_such_module_anywhere:Impl", "error"),
                        (f"{root / WRONG}:BrokenBuild", "non-conformant"),
                        ("torch", "not-available"),
                        ("numpy", "conformant")]
    assert "no_such_module_anywhere" in cells[0].reason
    assert cells[2].reason == "not installed: no_such_torch_module"


def test_results_file_is_written_whole_or_not_at_all(tmp_path, mha_spec, monkeypatch):
    cells = [run_cell(mha_spec, find_shipped("mha", "numpy"), "float64", "cpu", max_examples=5)]
    path = results.write_results(tmp_path / "r.json", cells)
    before = path.read_text()
    data = json.loads(before)
    assert data["schema"] == results.SCHEMA and data["cells"][0]["verdict"] == "conformant"
    assert data["environments"][0]["packages"]["numpy"] and data["cells"][0]["env"] == 0

    def explode(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(results.json, "dump", explode)
    with pytest.raises(OSError):
        results.write_results(path, cells)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_python_api_for_a_projects_own_tests(root):
    from conformance import assert_conformant, check
    from wrong_mha import Correct, InvertedMask

    cells = assert_conformant("mha", Correct(), dtypes=["float32"], examples=20)
    # the device and mode axes in full: what cannot run here is reported, not failed
    assert [(c.device, c.mode, c.verdict) for c in cells] == [
        ("cpu", "eager", "conformant"), ("cpu", "compiled", "unsupported"),
        ("cuda", "eager", "not-available"), ("cuda", "compiled", "unsupported")]
    assert {c.implementation for c in cells} == {"wrong_mha:Correct"}
    with pytest.raises(AssertionError, match=r"(?s)non-conformant.*reproduce: conformance check mha --impl wrong_mha:InvertedMask"):
        assert_conformant("mha", InvertedMask(), dtypes=["float32"], examples=20)
    assert check("mha", "numpy", dtypes=["float64"], examples=5)[0].verdict == "conformant"
    with pytest.raises(AssertionError, match="no cell could run here: 2 unsupported"):
        assert_conformant("mha", Correct(), dtypes=["float32"], modes=["compiled"], examples=5)


def test_a_cell_covered_by_several_ledger_entries_names_each_with_its_own_count(mha_spec):
    """Every entry that applied is named, each with the examples it covered that deviated."""
    both = mistake("mha", "ScaledByDModelAndNaNRows")
    ledger = [Deviation("nan-rows", both.label, "mha", "fully_masked_query_row", ("7.4",), "NaN in masked rows.",
                        Bound(BoundKind.REGION)),
              Deviation("divisor", both.label, "mha", "always", ("6.3",), "Divides by sqrt(d_model).",
                        Bound(BoundKind.EPS, 1e30))]
    cell = run_cell(mha_spec, both, "float32", "cpu", max_examples=60, ledger=ledger)
    assert cell.verdict == "known-deviation", cell.reason
    counts = {name: int(n) for name, n in re.findall(r"'([a-z-]+)' \((\d+) examples where", cell.reason)}
    assert set(counts) == {"nan-rows", "divisor"} and all(counts.values()), cell.reason
    # an example with a fully masked row needs both entries' bounds and counts for each
    assert max(counts.values()) <= cell.known_deviations < sum(counts.values())
    assert cell.reason.startswith("ledger entries ") and set(cell.sections) == {"mha §7.4", "mha §6.3"}


def test_no_shrink_ends_a_failing_cell_at_the_first_failure(root, tmp_path, monkeypatch):
    """`check --no-shrink`: the same verdict, sooner; its counterexample (the first found) still replays."""
    monkeypatch.chdir(root)
    examples, first = {}, {}
    for flag in ([], ["--no-shrink"]):
        out = tmp_path / f"r{len(flag)}.json"
        assert main(["check", "mha", "--impl", "tests/wrong_mha.py:ScaledByDModel", "--dtype", "float32", "--device",
                     "cpu", "--mode", "eager", "--examples", "100", "-j", "1", *flag, "-o", str(out)]) == 1
        cell = json.loads(out.read_text())["cells"][0]
        assert cell["verdict"] == "non-conformant"
        examples[bool(flag)], first[bool(flag)] = cell["examples"], cell["first_failure"]
    assert examples[True] < examples[False]  # shrinking runs passing examples on the way to the smallest
    # the first failure is the same example either way: the passes before it, and it
    assert first[True] == first[False] == examples[True] + 1
    again = run_cell(load_spec(root / "spec" / "mha.md"), mistake("mha", "ScaledByDModel"), "float32", "cpu",
                     example=cell["counterexample"])
    assert again.verdict == "non-conformant"


def test_first_failure_counts_the_examples_up_to_the_first_that_failed(mha_spec):
    """Not the passes shrinking adds after it; None where nothing failed; a worked example counts as one."""
    caught = run_cell(mha_spec, mistake("mha", "DropoutAtInference"), "float32", "cpu", max_examples=100)
    assert caught.verdict == "non-conformant" and 1 <= caught.first_failure <= caught.examples + 1
    late = run_cell(mha_spec, mistake("mha", "TransposedOutputProjection"), "float32", "cpu", max_examples=3)
    assert late.reason.startswith("worked example") and late.first_failure > late.examples - len(mha_spec.examples)
    assert run_cell(mha_spec, mistake("mha", "Correct"), "float32", "cpu", max_examples=10).first_failure is None
