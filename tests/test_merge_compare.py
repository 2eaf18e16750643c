"""`conformance merge` and `conformance compare`, and what all three readers do with a bad input file."""

from __future__ import annotations

import pytest

from conformance import results
from conformance.cli import main
from conformance.compare import compare, reason_class
from conformance.vocabulary import Property, Slot
from conformance.schema import load_results

from results_sample import break_property, find, read, save, write
from wrong_gradients import scaled_w1_json

IDENTITY = ("component", "implementation", "backend", "device", "mode", "dtype", "verdict", "max_ratio", "reason")


def _other_machine(monkeypatch):
    real = results.environment
    monkeypatch.setattr(results, "environment", lambda: {**real(), "cpu": "Other CPU 9000"})


def _same(a, b):
    return [tuple(c[k] for k in IDENTITY) for c in a] == [tuple(c[k] for k in IDENTITY) for c in b]


def test_merge_keeps_each_cells_environment(tmp_path, monkeypatch, capsys):
    a = write(tmp_path / "a.json")
    _other_machine(monkeypatch)
    b = write(tmp_path / "b.json", ["conformance", "run", "--on-b"])
    out = tmp_path / "merged.json"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 0
    assert "12 cells from 2 environment(s) in 2 file(s)" in capsys.readouterr().out
    merged = read(out)
    envs = merged["environments"]
    assert [e["source"] for e in envs] == [str(a), str(b)] and envs[1]["cpu"] == "Other CPU 9000"
    first, second = merged["cells"][:6], merged["cells"][6:]
    assert {c["env"] for c in first} == {0} and {c["env"] for c in second} == {1}
    assert _same(first, read(a)["cells"]) and _same(second, read(b)["cells"])


def test_merge_round_trip_and_merged_files_are_inputs_again(tmp_path, monkeypatch, capsys):
    a = write(tmp_path / "a.json")
    _other_machine(monkeypatch)
    b = write(tmp_path / "b.json", ["conformance", "run", "--on-b"])
    ab, again = tmp_path / "ab.json", tmp_path / "again.json"
    assert main(["merge", str(a), str(b), "-o", str(ab)]) == 0
    # merging a merged file with one of its sources, or with itself, adds nothing
    assert main(["merge", str(ab), str(a), str(ab), "-o", str(again)]) == 0
    assert read(again)["environments"] == read(ab)["environments"]
    assert read(again)["cells"] == read(ab)["cells"]
    # one file merged alone: the same cells, the same environment (now naming its source)
    assert main(["merge", str(a), "-o", str(tmp_path / "alone.json")]) == 0
    alone, original = read(tmp_path / "alone.json"), read(a)
    assert alone["cells"] == original["cells"]
    assert alone["environments"] == [{**original["environments"][0], "source": str(a)}]
    # a merged file is valid input to compare and report
    assert main(["compare", str(ab), str(again)]) == 0
    assert main(["report", str(ab), "-o", str(tmp_path / "report" / "index.html")]) == 0


def test_compare_identical_files_passes(tmp_path, capsys):
    a = write(tmp_path / "a.json")
    assert main(["compare", str(a), str(a)]) == 0
    out = capsys.readouterr().out
    assert "compared 6 slots" in out and "0 regression(s)" in out


def test_compare_catches_a_cell_that_is_no_longer_conformant(tmp_path, capsys):
    base = write(tmp_path / "base.json")
    data = read(base)
    cell = find(data, component="ffn")
    cell.update(verdict="non-conformant", reason="example: output 'output' differs from the reference by 99 eps")
    current = save(tmp_path / "current.json", data)
    assert main(["compare", str(base), str(current)]) == 1
    out = capsys.readouterr().out
    assert ("REGRESSION  ffn numpy cpu eager float32: was conformant, now non-conformant: example: output "
            "'output' differs") in out
    assert "1 regression(s)" in out
    # the other way round it is an improvement, and no regression
    assert main(["compare", str(current), str(base)]) == 0
    assert "improvement ffn numpy cpu eager float32: was non-conformant, now conformant" in capsys.readouterr().out


def test_compare_catches_an_error_grown_past_the_factor_inside_the_budget(tmp_path, capsys):
    base = write(tmp_path / "base.json")
    data = read(base)
    cell = find(data, component="mha", implementation="numpy", dtype="float32", device="cpu", mode="eager")
    assert 1e-3 < cell["max_ratio"] < 0.05
    cell["max_ratio"] *= 10
    current = save(tmp_path / "current.json", data)
    assert main(["compare", str(base), str(current)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION  mha numpy cpu eager float32: largest error/budget" in out
    assert "(x10, more than x2), still inside the budget" in out
    assert main(["compare", str(base), str(current), "--factor", "20"]) == 0  # a stated factor is honoured
    capsys.readouterr()
    assert main(["compare", str(base), str(current), "--factor", "1"]) == 2
    assert "--factor must be greater than 1" in capsys.readouterr().err


def test_growth_from_a_tiny_baseline_is_ignored_and_said_so(tmp_path, capsys):
    base_data = read(write(tmp_path / "base.json"))
    find(base_data, component="ffn")["max_ratio"] = 1e-4
    current_data = read(tmp_path / "base.json")
    find(current_data, component="ffn")["max_ratio"] = 5e-4  # x5, but below 2 x the floor 1e-3
    base, current = save(tmp_path / "b.json", base_data), save(tmp_path / "c.json", current_data)
    assert main(["compare", str(base), str(current)]) == 0
    assert "growth ignored, the baseline is below 0.001 of the budget" in capsys.readouterr().out
    find(current_data, component="ffn")["max_ratio"] = 5e-3  # past 2 x the floor: a regression
    assert main(["compare", str(base), str(save(tmp_path / "c.json", current_data))]) == 1


def test_compare_catches_a_new_kind_of_failure(tmp_path, capsys):
    base = write(tmp_path / "base.json")
    data = read(base)
    wrong = find(data, verdict="non-conformant")
    wrong["reason"] = "example: raised ValueError: query and key lengths differ at wrong_mha.py:40"
    current = save(tmp_path / "current.json", data)
    assert main(["compare", str(base), str(current)]) == 1
    out = capsys.readouterr().out
    assert ("new kind of failure: non-conformant: raised ValueError (was non-conformant: output 'output' differs)"
            in out)
    wrong["verdict"], wrong["reason"] = "error", "ModuleNotFoundError: No module named 'x'"
    assert main(["compare", str(base), str(save(tmp_path / "current.json", data))]) == 1
    assert "new kind of failure: error: ModuleNotFoundError" in capsys.readouterr().out


def test_compare_catches_a_property_that_held_and_now_fails(tmp_path, capsys):
    """The slot's verdict changed because of the property alone: one line, the property's, with its reason."""
    base = write(tmp_path / "base.json")
    data = read(base)
    cell = break_property(find(data, component="ffn"), Property.STATELESSNESS,
                          "the same call again on the same instance: output 'output' changed by 7 eps")
    sections = ", ".join(cell["properties"]["statelessness"]["sections"])
    current = save(tmp_path / "current.json", data)
    assert main(["compare", str(base), str(current)]) == 1
    out = capsys.readouterr().out
    assert (f"REGRESSION  ffn numpy cpu eager float32: property statelessness ({sections}) was held, now failed: "
            f"the same call again on the same instance: output 'output' changed by 7 eps") in out
    assert "1 regression(s)" in out and "was conformant" not in out
    # the other way round it is an improvement, said once
    assert main(["compare", str(current), str(base)]) == 0
    out = capsys.readouterr().out
    assert f"improvement ffn numpy cpu eager float32: property statelessness ({sections}) was failed, now held" in out
    assert "1 improvement(s)" in out


def test_compare_catches_a_property_broken_by_a_cell_that_already_failed(tmp_path, capsys):
    """A non-conformant cell whose verdict and reason stay the same still regresses when a property breaks."""
    data = read(write(tmp_path / "base.json"))
    wrong = find(data, verdict="non-conformant")
    wrong["properties"]["batch_independence"]["status"] = "held"  # whether the search got to it varies
    base = save(tmp_path / "base.json", data)
    break_property(wrong, Property.BATCH_INDEPENDENCE, "the batch reordered: output 'output' changed", alone=False)
    current = save(tmp_path / "current.json", data)
    result = compare(load_results(base), load_results(current))
    [regression] = result.regressions
    assert regression.key == Slot.of(wrong)
    assert "property batch_independence" in regression.what and "the batch reordered" in regression.what
    assert main(["compare", str(base), str(current)]) == 1
    capsys.readouterr()


def test_properties_not_in_the_baseline_are_not_compared(tmp_path):
    """A baseline older than conformance-results/6 recorded none: the verdict says what changed."""
    data = read(write(tmp_path / "base.json"))
    old = {**data, "schema": "conformance-results/5",
           "cells": [{k: v for k, v in c.items() if k != "properties"} for c in data["cells"]]}
    break_property(find(data, component="ffn"), Property.STATELESSNESS, "it changed")
    result = compare(load_results(save(tmp_path / "old.json", old)), load_results(save(tmp_path / "c.json", data)))
    [regression] = result.regressions
    assert regression.what.startswith("was conformant, now non-conformant: property statelessness")


def _break_gradients(cell: dict) -> dict:
    """A cell as a results file holds it (changed in place, and returned) whose gradients failed as
    ScaledW1Gradient's really do: its verdict, the forward one, unchanged."""
    cell["gradients"] = scaled_w1_json()["gradients"]
    return cell


def test_compare_catches_gradients_that_were_conformant_and_now_fail(tmp_path, capsys):
    """The verdict stays conformant; the gradients regress all the same, with their reason and sections."""
    base = write(tmp_path / "base.json")
    data = read(base)
    assert find(data, component="ffn")["gradients"]["verdict"] == "conformant"
    gradients = _break_gradients(find(data, component="ffn"))["gradients"]
    current = save(tmp_path / "current.json", data)
    assert main(["compare", str(base), str(current)]) == 1
    out = capsys.readouterr().out
    sections = ", ".join(gradients["sections"])
    assert (f"REGRESSION  ffn numpy cpu eager float32: gradients ({sections}) were conformant, now non-conformant: "
            "gradient 'W_1' differs from the reference by") in out
    assert "1 regression(s)" in out and "was conformant" not in out
    # the other way round it is an improvement
    assert main(["compare", str(current), str(base)]) == 0
    out = capsys.readouterr().out
    assert "improvement ffn numpy cpu eager float32: gradients were non-conformant, now conformant" in out
    assert "0 regression(s), 1 improvement(s)" in out


def test_compare_catches_a_new_kind_of_gradient_failure(tmp_path):
    data = read(write(tmp_path / "base.json"))
    _break_gradients(find(data, component="ffn"))
    base = save(tmp_path / "base.json", data)
    find(data, component="ffn")["gradients"]["reason"] = "gradient 'x' missing; vjp gave ['W_1', 'W_2']"
    result = compare(load_results(base), load_results(save(tmp_path / "current.json", data)))
    [regression] = result.regressions
    assert "new kind of gradient failure" in regression.what
    assert "gradient 'x' missing (was gradient 'W_1' differs)" in regression.what


def test_gradients_not_checked_in_the_baseline_are_not_compared(tmp_path, capsys):
    """A baseline older than conformance-results/7 checked none: no false regression, and no improvement in
    every slot either, whatever the gradients now came to."""
    data = read(write(tmp_path / "base.json"))
    old = save(tmp_path / "old.json", {**data, "schema": "conformance-results/6",
                                       "cells": [{k: v for k, v in c.items() if k != "gradients"}
                                                 for c in data["cells"]]})
    current = write(tmp_path / "current.json")
    assert main(["compare", str(old), str(current)]) == 0
    assert "0 regression(s), 0 improvement(s)" in capsys.readouterr().out
    _break_gradients(find(data, component="ffn"))
    result = compare(load_results(old), load_results(save(tmp_path / "broken.json", data)))
    assert result.changes == []


def test_reason_classes_ignore_numbers_and_places():
    def cls(reason, verdict="non-conformant"):
        return reason_class({"verdict": verdict, "reason": reason})

    assert cls("example: output 'output' differs from the reference by 4.9e+06 eps, budget 13.2") == \
        cls("worked example 'two heads by hand': output 'output' differs from the reference by 7 eps") == \
        "non-conformant: output 'output' differs"
    assert cls("example: output 'attention_weights' has 3 non-finite values (NaN or Inf)") == \
        "non-conformant: output 'attention_weights' non-finite"
    assert cls("build raised RuntimeError: no at x.py:3") == "non-conformant: build raised RuntimeError"
    assert cls("ImportError: cannot import name 'x'", "error") == "error: ImportError"
    assert cls("property causality (mha \u00a711.3): outputs before step 3 changed by 2.5 eps") == \
        "non-conformant: property causality"


def test_slots_run_in_several_environments_are_judged_by_their_worst(tmp_path, monkeypatch):
    a = read(write(tmp_path / "a.json"))
    _other_machine(monkeypatch)
    b = read(write(tmp_path / "b.json"))
    find(b, component="ffn").update(verdict="error", reason="RuntimeError: boom")
    merged = tmp_path / "m.json"
    assert main(["merge", str(save(tmp_path / "a2.json", a)), str(save(tmp_path / "b2.json", b)),
                 "-o", str(merged)]) == 0
    result = compare(load_results(tmp_path / "a2.json"), load_results(merged))
    [regression] = result.regressions
    assert regression.key == Slot.of(find(a, component="ffn")) and "now error" in regression.what


def test_of_two_environments_alike_in_verdict_the_one_with_failed_gradients_speaks(tmp_path, monkeypatch):
    a = read(write(tmp_path / "a.json"))
    _other_machine(monkeypatch)
    b = read(write(tmp_path / "b.json"))
    _break_gradients(find(b, component="ffn"))
    merged = tmp_path / "m.json"
    for first, second in ((a, b), (b, a)):  # whichever comes first
        assert main(["merge", str(save(tmp_path / "1.json", first)), str(save(tmp_path / "2.json", second)),
                     "-o", str(merged)]) == 0
        result = compare(load_results(save(tmp_path / "a2.json", a)), load_results(merged))
        [regression] = result.regressions
        assert "gradients" in regression.what and regression.key == Slot.of(find(a, component="ffn"))


# --- bad input files ------------------------------------------------------------------------

def _corrupt(tmp_path):
    good = write(tmp_path / "good.json")
    truncated = tmp_path / "x.json"
    truncated.write_text(good.read_text()[:2000])  # a copy cut short
    return {
        "truncated": (truncated, "not valid JSON"),
        "wrong schema": (save(tmp_path / "y.json", {**read(good), "schema": "other-format/1"}),
                         "schema 'other-format/1' is not one this version reads"),
        "schema mismatch": (save(tmp_path / "z.json", {**read(good), "cells": [{"component": "mha"}]}),
                            f"does not follow {results.SCHEMA}: at cells/0:"),
        "missing": (tmp_path / "nowhere.json", "cannot read"),
    }


@pytest.mark.parametrize("problem", ["truncated", "wrong schema", "schema mismatch", "missing"])
@pytest.mark.parametrize("command", ["merge", "compare-baseline", "compare-current", "report"])
def test_a_bad_input_exits_2_naming_the_file_and_leaves_outputs_alone(tmp_path, capsys, command, problem):
    bad, message = _corrupt(tmp_path)[problem]
    good = tmp_path / "good.json"
    out = tmp_path / "out"
    out.mkdir()
    merged, html = out / "merged.json", out / "index.html"
    merged.write_text("previous merge")
    html.write_text("previous report")
    argv = {
        "merge": ["merge", str(good), str(bad), "-o", str(merged)],
        "compare-baseline": ["compare", str(bad), str(good)],
        "compare-current": ["compare", str(good), str(bad)],
        "report": ["report", str(good), str(bad), "-o", str(html)],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"conformance: error: {bad}: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert merged.read_text() == "previous merge" and html.read_text() == "previous report"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "merged.json"]  # no npz/, no temporary files


def test_a_bad_baseline_for_the_report_is_named_too(tmp_path, capsys):
    good = write(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    html = tmp_path / "index.html"
    assert main(["report", str(good), "--baseline", str(bad), "-o", str(html)]) == 2
    assert f"{bad}: not valid JSON" in capsys.readouterr().err and not html.exists()


def test_files_with_nothing_in_common_are_not_compared(tmp_path, capsys):
    a = read(write(tmp_path / "a.json"))
    b = {**a, "cells": [{**c, "component": "other"} for c in a["cells"] if c["verdict"] != "non-conformant"]}
    assert main(["compare", str(save(tmp_path / "a2.json", a)), str(save(tmp_path / "b.json", b))]) == 2
    assert "have no slot in common: nothing to compare" in capsys.readouterr().err


def test_an_incomplete_results_file_is_shown_as_such(tmp_path, capsys):
    """A file an interrupted run wrote: compare fails on it, merge keeps the mark, the report shows it."""
    a = write(tmp_path / "a.json")
    data = read(a)
    data["incomplete"] = {"reason": "interrupted by SIGINT", "missing": ["ffn numpy cpu eager float64"]}
    b = save(tmp_path / "b.json", data)
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert f"INCOMPLETE  {b} is incomplete (interrupted by SIGINT): 1 slot(s) were not run" in out
    assert main(["compare", str(b), str(a)]) == 0  # an incomplete baseline is only a note
    assert "note" in capsys.readouterr().out
    merged = tmp_path / "merged.json"
    assert main(["merge", str(b), "-o", str(merged)]) == 0
    assert read(merged)["incomplete"]["missing"] == ["ffn numpy cpu eager float64"]
    html = tmp_path / "report" / "index.html"
    assert main(["report", str(b), "-o", str(html)]) == 0
    page = html.read_text()
    assert "Incomplete:" in page and "interrupted by SIGINT" in page and "ffn numpy cpu eager float64" in page
