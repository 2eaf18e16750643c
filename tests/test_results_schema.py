"""Results files are data: every file the suite writes follows conformance/results.schema.json."""

from __future__ import annotations

import json
import threading

import jsonschema
import pytest

from conformance.cli import main
from conformance.engine import SAMPLE_CAP, Samples
from conformance.results import SCHEMA
from conformance.schema import SCHEMA_FILE, ResultsFileError, load_results

from results_sample import cells, find, read, save, write


def validate(path) -> dict:
    """Checked with jsonschema directly, not through the code under test."""
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = read(path)
    jsonschema.Draft202012Validator(schema).validate(data)
    return data


def test_a_runs_file_follows_the_schema(tmp_path):
    data = validate(write(tmp_path / "r.json"))
    assert data["schema"] == SCHEMA == "conformance-results/3"
    assert {c["verdict"] for c in data["cells"]} == {"conformant", "non-conformant", "unsupported", "not-available"}
    assert [c["env"] for c in data["cells"]] == [0] * len(data["cells"])
    env = data["environments"][0]
    assert env["packages"]["numpy"] and env["cpu"] and env["command"] == ["conformance", "run", "--test"]


def test_cells_carry_a_sample_of_examples_and_per_output_ratios(tmp_path):
    data = validate(write(tmp_path / "r.json"))
    cell = find(data, component="mha", dtype="float32", device="cpu", mode="eager", implementation="numpy")
    samples = cell["samples"]
    assert samples["columns"][-1] == "ratio" and {"d_model", "Lq", "seed", "scale_exp"} <= set(samples["columns"])
    assert 0 < len(samples["rows"]) == samples["total"] and all(len(r) == len(samples["columns"]) for r in samples["rows"])
    assert max(r[-1] for r in samples["rows"]) == pytest.approx(cell["max_ratio"], rel=1e-3)
    assert set(cell["output_ratio"]) == {"output", "attention_weights"}
    assert max(cell["output_ratio"].values()) == pytest.approx(cell["max_ratio"])
    skipped = find(data, mode="compiled")
    assert skipped["samples"] == {"columns": [], "rows": [], "total": 0}


def test_the_sample_is_bounded_and_repeats():
    def fill(seed):
        s = Samples(cap=SAMPLE_CAP, seed=seed)
        for i in range(3 * SAMPLE_CAP):
            s.add({"d_model": i % 7, "seed": i}, i / 1000)
        return s.to_json()

    first = fill(0)
    assert len(first["rows"]) == SAMPLE_CAP and first["total"] == 3 * SAMPLE_CAP
    assert fill(0) == first != fill(1)


def test_run_and_check_write_valid_files_too(tmp_path, root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    main(["run", "--framework", "numpy", "--component", "ffn", "--examples", "3", "-o", str(tmp_path / "run.json")])
    assert len(validate(tmp_path / "run.json")["cells"]) == 16
    main(["check", "mha", "--impl", "tests/wrong_mha.py:InvertedMask", "--dtype", "float32", "--device", "cpu",
          "--examples", "20", "-o", str(tmp_path / "check.json")])
    assert validate(tmp_path / "check.json")["cells"][0]["verdict"] == "non-conformant"


def test_a_merged_file_follows_the_schema(tmp_path, capsys):
    a, b = write(tmp_path / "a.json"), write(tmp_path / "b.json", ["conformance", "run", "--other"])
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "m.json")]) == 0
    data = validate(tmp_path / "m.json")
    assert len(data["environments"]) == 2


def test_non_finite_numbers_are_strings_in_the_file_and_floats_when_read(tmp_path):
    bad = cells()
    bad[1].max_ratio, bad[1].max_error["output"] = float("inf"), float("nan")
    from conformance.results import write_results

    data = validate(write_results(tmp_path / "r.json", bad))
    assert data["cells"][1]["max_ratio"] == "inf" and data["cells"][1]["max_error"]["output"] == "nan"
    loaded = load_results(tmp_path / "r.json")
    assert loaded["cells"][1]["max_ratio"] == float("inf")


def test_two_runs_writing_at_once_leave_a_whole_file(tmp_path):
    """Each write is atomic: a reader always finds one complete file, never a mixture or a fragment."""
    path = tmp_path / "r.json"
    write(path)
    stop = threading.Event()

    def writer(n):
        while not stop.is_set():
            write(path, ["conformance", "run", f"--writer={n}"])

    threads = [threading.Thread(target=writer, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            assert load_results(path)["command"][-1] in ("--test", "--writer=1", "--writer=2")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


def test_version_2_files_are_read_as_version_3(tmp_path):
    data = read(write(tmp_path / "r.json"))
    old = {"schema": "conformance-results/2", "created": data["created"], "command": data["command"],
           "environment": {k: v for k, v in data["environments"][0].items() if k not in ("created", "command")},
           "cells": [{k: v for k, v in c.items() if k not in ("env", "samples", "output_ratio")}
                     for c in data["cells"]]}
    loaded = load_results(save(tmp_path / "old.json", old))
    assert loaded["schema"] == SCHEMA and loaded["environments"][0]["cpu"] == data["environments"][0]["cpu"]
    assert [c["verdict"] for c in loaded["cells"]] == [c["verdict"] for c in data["cells"]]


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema="conformance-results/99"),
     "schema 'conformance-results/99' is not one this version reads; readable: conformance-results/2, "
     "conformance-results/3"),
    (lambda d: d.pop("schema"), "not a results file: no 'schema' field"),
    (lambda d: d["cells"][0].update(verdict="maybe"), "does not follow conformance-results/3: at cells/0/verdict"),
    (lambda d: d["cells"][2].pop("env"), "at cells/2: 'env' is a required property"),
    (lambda d: d["cells"][1].update(env=5), "at cells/1/env: environment 5 does not exist (the file has 1)"),
    (lambda d: d.update(environments=[]), "at environments"),
])
def test_a_file_that_does_not_follow_the_schema_is_named_with_the_problem(tmp_path, change, message):
    data = read(write(tmp_path / "r.json"))
    change(data)
    path = save(tmp_path / "bad.json", data)
    with pytest.raises(ResultsFileError) as e:
        load_results(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
