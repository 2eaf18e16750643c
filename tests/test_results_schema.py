"""Results files are data: every file the suite writes follows conformance/results.schema.json."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import numpy as np
import pytest

from conformance import evidence, generate
from conformance.cli import main
from conformance.engine import SAMPLE_CAP, Samples
from conformance.results import SCHEMA
from conformance.schema import SCHEMA_FILE, ResultsFileError, load_results
from conformance.spec import load_spec
from conformance.vocabulary import Held, Property, Verdict

from results_sample import break_property, cells, find, read, save, write
from wrong_gradients import scaled_w1_cell, scaled_w1_json


def validate(path) -> dict:
    """Checked with jsonschema directly, not through the code under test."""
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    data = read(path)
    jsonschema.Draft202012Validator(schema).validate(data)
    return data


def test_a_runs_file_follows_the_schema(tmp_path):
    data = validate(write(tmp_path / "r.json"))
    assert data["schema"] == SCHEMA == "conformance-results/7"
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
    # the sample holds drawn examples; the worst may be a worked example (`worst` is then null)
    if cell["worst"] is None:
        assert max(r[-1] for r in samples["rows"]) <= cell["max_ratio"]
    else:
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


def test_version_2_files_are_read_as_the_current_version(tmp_path):
    data = read(write(tmp_path / "r.json"))
    old = {"schema": "conformance-results/2", "created": data["created"], "command": data["command"],
           "environment": {k: v for k, v in data["environments"][0].items() if k not in ("created", "command")},
           "cells": [{k: v for k, v in c.items() if k not in ("env", "samples", "output_ratio", "evidence", "first_failure")}
                     for c in data["cells"]]}
    loaded = load_results(save(tmp_path / "old.json", old))
    assert loaded["schema"] == SCHEMA and loaded["environments"][0]["cpu"] == data["environments"][0]["cpu"]
    assert [c["verdict"] for c in loaded["cells"]] == [c["verdict"] for c in data["cells"]]
    assert [c["evidence"] for c in loaded["cells"]] == [None] * len(data["cells"])


def test_version_6_files_are_read_with_gradients_unsupported(tmp_path):
    """A file from before the gradients were checked: each cell's gradients read as unsupported, saying why,
    so that nothing reads them as checked (compare then compares none)."""
    data = read(write(tmp_path / "r.json"))
    assert any(c["gradients"] for c in data["cells"])  # the NumPy cells of the sample give vjp
    old = {**data, "schema": "conformance-results/6",
           "cells": [{k: v for k, v in c.items() if k != "gradients"} for c in data["cells"]]}
    loaded = load_results(save(tmp_path / "old.json", old))
    assert loaded["schema"] == SCHEMA
    for cell in loaded["cells"]:
        gradients = cell["gradients"]
        assert gradients["verdict"] == "unsupported" and "recorded before gradients were checked" in gradients["reason"]
        assert gradients["examples"] == 0 and gradients["max_ratio"] is None and gradients["evidence"] is None
    assert [c["properties"] for c in loaded["cells"]] == [c["properties"] for c in data["cells"]]
    # and older files go through /6 too
    older = {**old, "schema": "conformance-results/5",
             "cells": [{k: v for k, v in c.items() if k != "properties"} for c in old["cells"]]}
    assert {c["gradients"]["verdict"] for c in load_results(save(tmp_path / "older.json", older))["cells"]} == \
        {"unsupported"}


def test_gradients_a_development_version_wrote_under_version_6_are_kept(tmp_path):
    data = read(write(tmp_path / "r.json"))
    cell = find(data, component="ffn")
    assert cell["gradients"]["verdict"] == "conformant"
    for c in data["cells"]:
        c["gradients"].pop("evidence", None)  # the development version kept no arrays
    loaded = find(load_results(save(tmp_path / "dev.json", {**data, "schema": "conformance-results/6"})),
                  component="ffn")
    assert loaded["gradients"] == {**cell["gradients"], "evidence": None}
    assert find(data, mode="compiled")["gradients"] == {}  # a cell that did not run has none, then as now


def test_version_5_files_are_read_with_no_properties(tmp_path):
    data = read(write(tmp_path / "r.json"))
    assert any(c["properties"] for c in data["cells"])  # the sample's specs have properties
    old = {**data, "schema": "conformance-results/5",
           "cells": [{k: v for k, v in c.items() if k != "properties"} for c in data["cells"]]}
    loaded = load_results(save(tmp_path / "old.json", old))
    assert loaded["schema"] == SCHEMA and [c["properties"] for c in loaded["cells"]] == [{}] * len(data["cells"])
    assert [c["first_failure"] for c in loaded["cells"]] == [c["first_failure"] for c in data["cells"]]


def test_version_4_files_are_read_with_no_first_failure(tmp_path):
    data = read(write(tmp_path / "r.json"))
    assert any(c["first_failure"] for c in data["cells"])  # the sample has a failing cell
    old = {**data, "schema": "conformance-results/4",
           "cells": [{k: v for k, v in c.items() if k != "first_failure"} for c in data["cells"]]}
    loaded = load_results(save(tmp_path / "old.json", old))
    assert loaded["schema"] == SCHEMA and [c["first_failure"] for c in loaded["cells"]] == [None] * len(data["cells"])
    assert [c["evidence"] for c in loaded["cells"]] == [c["evidence"] for c in data["cells"]]


def test_version_3_files_are_read_with_no_evidence(tmp_path):
    data = read(write(tmp_path / "r.json"))
    old = {**data, "schema": "conformance-results/3",
           "cells": [{k: v for k, v in c.items() if k not in ("evidence", "first_failure")} for c in data["cells"]]}
    loaded = load_results(save(tmp_path / "old.json", old))
    assert loaded["schema"] == SCHEMA and [c["evidence"] for c in loaded["cells"]] == [None] * len(data["cells"])
    bad = {**old, "cells": [{**old["cells"][0], "verdict": "maybe"}]}
    with pytest.raises(ResultsFileError, match="does not follow conformance-results/3: at cells/0/verdict"):
        load_results(save(tmp_path / "bad.json", bad))


# --- properties: what each of the spec's properties came to in a cell ----------------------------

def test_cells_record_their_properties_with_the_vocabularys_words(tmp_path):
    data = validate(write(tmp_path / "r.json"))
    cell = find(data, component="mha", dtype="float32", device="cpu", mode="eager", implementation="numpy")
    assert cell["properties"] and set(cell["properties"]) <= {p.value for p in Property}
    assert {r["status"] for r in cell["properties"].values()} <= {h.value for h in Held}
    assert find(data, mode="compiled")["properties"] == {}  # a cell that did not run checked none
    # the schema's lists of names are the vocabulary's, not a second definition that could drift
    defs = json.loads(SCHEMA_FILE.read_text())["$defs"]
    assert defs["cell_properties"]["propertyNames"]["enum"] == [p.value for p in Property]
    assert defs["property_record"]["properties"]["status"]["enum"] == [h.value for h in Held]


def test_a_failed_property_follows_the_schema_and_its_non_finite_numbers_are_read_as_floats(tmp_path):
    data = read(write(tmp_path / "r.json"))
    cell = break_property(find(data, component="ffn"), Property.STATELESSNESS, "the second call changed")
    cell["properties"]["determinism"]["spread"] = "inf"
    save(tmp_path / "broken.json", data)
    assert validate(tmp_path / "broken.json")
    loaded = find(load_results(tmp_path / "broken.json"), component="ffn")
    assert loaded["properties"]["statelessness"]["status"] == "failed"
    assert loaded["properties"]["determinism"]["spread"] == float("inf")


@pytest.mark.parametrize("change, message", [
    (lambda p: p["statelessness"].update(status="mostly"), "at cells/4/properties/statelessness/status: 'mostly' "
                                                           "is not one of ['held', 'failed'"),
    (lambda p: p.update(commutativity=p["statelessness"]), "at cells/4/properties: 'commutativity' is not one of "
                                                           "['batch_independence'"),
    (lambda p: p["statelessness"].pop("reason"), "at cells/4/properties/statelessness: 'reason' is a required"),
    (lambda p: p["statelessness"].update(examples=-1), "at cells/4/properties/statelessness/examples: -1 is less"),
    (lambda p: p["statelessness"].update(not_reached={f"why {i}": 1 for i in range(17)}),
     "at cells/4/properties/statelessness/not_reached: {'why 0'"),
    (lambda p: p["statelessness"].update(sections=["ffn \u00a71"] * 17), "properties/statelessness/sections: "),
])
def test_a_malformed_property_record_is_refused(tmp_path, change, message):
    data = read(write(tmp_path / "r.json"))
    assert find(data, component="ffn") is data["cells"][4]
    change(data["cells"][4]["properties"])
    with pytest.raises(ResultsFileError, match=re.escape(message)):
        load_results(save(tmp_path / "bad.json", data))


# --- gradients: what the vjp came to, judged apart from the verdict ------------------------------

def test_cells_record_their_gradients_with_the_vocabularys_words(tmp_path):
    data = validate(write(tmp_path / "r.json"))
    cell = find(data, component="ffn")
    gradients = cell["gradients"]
    assert gradients["verdict"] == "conformant" and gradients["examples"] > 0 and gradients["evidence"] is None
    assert set(gradients["ratio"]) == set(gradients["max_error"]) == {"x", "W_1", "b_1", "W_2", "b_2"}
    assert gradients["max_ratio"] == max(gradients["ratio"].values())
    wrong = find(data, verdict="non-conformant")  # a plug-in with no vjp
    assert wrong["gradients"]["verdict"] == "unsupported" and "gives no vjp" in wrong["gradients"]["reason"]
    defs = json.loads(SCHEMA_FILE.read_text())["$defs"]
    assert defs["gradient_record"]["properties"]["verdict"]["enum"] == [
        Verdict.CONFORMANT, Verdict.KNOWN_DEVIATION, Verdict.NON_CONFORMANT, Verdict.UNSUPPORTED, Held.NOT_CHECKED]


def test_a_gradient_failure_keeps_its_example_command_and_arrays(tmp_path):
    """The cotangents, the candidate's gradients and the reference's, as the vjp saw and gave them."""
    from conformance.results import write_results

    data = validate(write_results(tmp_path / "r.json", [scaled_w1_cell()]))
    [cell] = data["cells"]
    gradients = cell["gradients"]
    assert cell["verdict"] == "conformant" and gradients["verdict"] == "non-conformant"
    assert gradients["reason"].startswith("gradient 'W_1' differs from the reference")
    assert gradients["sections"] and all(s.startswith("ffn \u00a711") for s in gradients["sections"])
    assert gradients["counterexample"]["gradients"] is True and '"gradients":true' in gradients["repro"]
    kept = evidence.unpack(load_results(tmp_path / "r.json")["cells"][0]["gradients"]["evidence"],
                           evidence.GRADIENT_GROUPS)
    assert set(kept) == {"cotangents", "gradients", "reference"}
    assert set(kept["gradients"]) == set(kept["reference"]) == {"x", "W_1", "b_1", "W_2", "b_2"}
    got, want = kept["gradients"]["W_1"], kept["reference"]["W_1"]
    assert got.whole and got.dtype == "float32" and want.dtype == "float64"
    scale = np.abs(want.values).max()
    np.testing.assert_allclose(got.values, want.values * 1.01, rtol=0, atol=1e-4 * scale)  # 1 % off, as built
    assert np.abs(got.values - want.values).max() > 0.005 * scale
    right, reference = kept["gradients"]["W_2"].values, kept["reference"]["W_2"].values
    np.testing.assert_allclose(right, reference, rtol=0, atol=1e-4 * np.abs(reference).max())
    example = gradients["counterexample"]
    assert kept["cotangents"]["y"].shape == (example["B"], example["T"], example["d_model"])


def test_a_gradient_failures_arrays_are_bounded_and_lead_with_the_failing_gradient(root):
    spec = load_spec(root / "spec" / "ffn.md")
    big = {name: np.ones((64, 128)) for name in ("W_1", "W_2", "x")}
    kept = evidence.keep_gradients({"cotangents": {"y": np.ones((64, 128), np.float32)},
                                    "gradients": {**big, "W_1": big["W_1"] * 2},
                                    "reference": big}, spec, failing="W_2")
    sizes = {(group, name): int(np.prod(a.get("window", {}).get("shape", a.get("shape"))))
             for group in evidence.GRADIENT_GROUPS for name, a in kept[group].items() if "data" in a}
    assert sum(sizes.values()) <= evidence.MAX_ELEMENTS
    assert sizes[("gradients", "W_2")] == sizes[("reference", "W_2")] > 0  # named by the failure, kept first
    assert "omitted" in kept["gradients"]["x"]  # what is left after the first tier
    raised = evidence.keep_gradients({"cotangents": {}, "gradients": None, "reference": {"W_1": np.ones(3)}}, spec)
    assert raised["gradients"] is None and raised["absent"] == {"gradients": "the implementation's vjp raised"}


@pytest.mark.parametrize("change, message", [
    (lambda g: g.update(verdict="held"), "at cells/0/gradients/verdict: 'held' is not one of ['conformant'"),
    (lambda g: g.pop("repro"), "at cells/0/gradients: 'repro' is a required property"),
    (lambda g: g.update(examples=-1), "at cells/0/gradients/examples: -1 is less than the minimum of 0"),
    (lambda g: g["evidence"].pop("cotangents"), "at cells/0/gradients/evidence: 'cotangents' is a required"),
    (lambda g: g["evidence"]["gradients"]["W_1"].update(data="AAAA" * 20_000), "(fails maxLength 43692)"),
])
def test_a_malformed_gradient_record_is_refused(tmp_path, change, message):
    data = read(write(tmp_path / "r.json"))
    data["cells"] = [scaled_w1_json()]
    change(data["cells"][0]["gradients"])
    with pytest.raises(ResultsFileError, match=re.escape(message)):
        load_results(save(tmp_path / "bad.json", data))


# --- evidence: the arrays of a failing example --------------------------------------------------

def test_a_failing_cell_keeps_its_counterexamples_arrays_exactly(tmp_path, root):
    data = validate(write(tmp_path / "r.json"))
    assert [c["evidence"] is not None for c in data["cells"]] == [c["verdict"] == "non-conformant"
                                                                  for c in data["cells"]]
    cell = find(data, verdict="non-conformant")
    kept = evidence.unpack(cell["evidence"])
    spec = load_spec(root / "spec" / "mha.md")
    weights, inputs = generate.make_arrays(spec, cell["counterexample"])
    assert set(kept["inputs"]) == {k for k, v in inputs.items() if v is not None}
    assert set(kept["weights"]) == set(weights) and set(kept["outputs"]) == set(kept["reference"]) == set(spec.outputs)
    for name, value in generate.cast(weights, "float32").items():
        assert kept["weights"][name].whole and kept["weights"][name].dtype == "float32"
        np.testing.assert_array_equal(kept["weights"][name].values, value)  # bit for bit
    assert kept["reference"]["output"].dtype == "float64" and kept["outputs"]["output"].dtype == "float32"


def _arrays(outputs, size=40, d=8):
    """A Runner.last-like dict for mha with Lq = Lk = `size`: float32 inputs, float64 reference."""
    rng = np.random.default_rng(0)
    weights = {"W_q": rng.normal(size=(d, d)), "b_q": rng.normal(size=d)}
    inputs = {"query": rng.normal(size=(2, size, d)).astype(np.float32), "key_padding_mask": None,
              "attention_mask": rng.random((2, size, size)) < 0.5}
    reference = {"output": rng.normal(size=(2, size, d)), "attention_weights": rng.random((2, 2, size, size))}
    return {"weights": weights, "inputs": inputs, "reference": reference, "outputs": outputs(reference)}


def test_evidence_is_bounded_and_keeps_a_window_around_the_worst_element(root):
    spec = load_spec(root / "spec" / "mha.md")

    def nan_at(reference):
        got = {k: v.astype(np.float32) for k, v in reference.items()}
        got["attention_weights"][1, 0, 900, 1000] = np.nan  # where it differs most
        return got

    kept = evidence.keep(_arrays(nan_at, size=1200), spec)
    assert len(json.dumps(kept)) < 60_000  # the arrays themselves hold 40 MB
    unpacked = evidence.unpack(kept)
    stored = [k.values.size for _, _, k in evidence.arrays(unpacked) if k.values is not None]
    assert sum(stored) <= evidence.MAX_ELEMENTS
    got, ref = unpacked["outputs"]["attention_weights"], unpacked["reference"]["attention_weights"]
    assert got.start == ref.start and got.values.shape == ref.values.shape  # the same block of both
    (b, h, i, j), (_, _, rows, cols) = got.start, got.values.shape
    assert (b, h) == (1, 0) and i <= 900 < i + rows and j <= 1000 < j + cols
    assert np.isnan(got.values[0, 0, 900 - i, 1000 - j]) and rows * cols >= 256
    # the inputs come first: a window of each, and the output that differs less and the weights after them
    assert all(k.values is not None for k in unpacked["inputs"].values())
    assert "key_padding_mask" not in unpacked["inputs"]  # None: no such input in this example
    assert unpacked["weights"]["W_q"].omitted and "higher priority" in unpacked["weights"]["W_q"].omitted


def test_small_arrays_are_kept_whole_and_garbage_outputs_are_described(root):
    spec = load_spec(root / "spec" / "mha.md")
    whole = evidence.unpack(evidence.keep(_arrays(lambda r: {k: v + 1e-9 for k, v in r.items()}, size=3), spec))
    assert all(k.whole for _, _, k in evidence.arrays(whole))
    raised = evidence.keep(_arrays(lambda r: None), spec)
    assert raised["outputs"] is None and raised["absent"] == {"outputs": "the implementation raised"}
    garbage = evidence.keep(_arrays(lambda r: "nonsense"), spec)
    assert garbage["absent"]["outputs"] == ("the implementation returned a str that does not match the "
                                           "reference's outputs")
    # outputs returned by position are named as the engine names them, where the shapes say which is which
    positional = evidence.keep(_arrays(lambda r: (r["output"], r["attention_weights"])), spec)
    assert list(positional["outputs"]) == ["output", "attention_weights"]
    one = evidence.keep(_arrays(lambda r: r["output"]), spec)
    assert list(one["outputs"]) == ["output"]
    weights_only = evidence.keep(_arrays(lambda r: (r["attention_weights"],)), spec)
    assert list(weights_only["outputs"]) == ["attention_weights"]
    unknown = evidence.keep(_arrays(lambda r: (r["output"][0],)), spec)
    assert unknown["outputs"] is None and "tuple" in unknown["absent"]["outputs"]
    strings = evidence.keep(_arrays(lambda r: {"output": np.array(["a"]), "attention_weights": object()}), spec)
    assert strings["outputs"]["output"]["omitted"] == "dtype <U1 is not stored"
    assert "not stored" in strings["outputs"]["attention_weights"]["omitted"]


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(data="AAAA" * 20_000), "query/data: 'AAAA.*\\(fails maxLength 43692\\)"),
    (lambda a: a.update(dtype="complex128"), "is not one of"),
    (lambda a: a.update(shape=[1] * 9), "is too long"),
    (lambda a: a.pop("data"), "at cells/5/evidence/inputs/query: {'shape'"),
])
def test_evidence_past_the_schemas_bounds_is_refused(tmp_path, change, message):
    data = read(write(tmp_path / "r.json"))
    change(find(data, verdict="non-conformant")["evidence"]["inputs"]["query"])
    with pytest.raises(ResultsFileError, match=message):
        load_results(save(tmp_path / "bad.json", data))


@pytest.mark.parametrize("change, message", [
    (lambda e: e["inputs"]["query"].update(data="not base64!"), "not base64"),
    (lambda e: e["inputs"]["query"].update(shape=[2, 2]), "bytes of data for 4 elements"),
    (lambda e: e["inputs"]["query"].update(window={"start": [0, 0, 1], "shape": [1, 1, 1]}), "is not inside"),
    (lambda e: e["reference"].update({f"x{i}": {"shape": [512], "dtype": "float64", "data": "A" * 5462 + "=="}
                                      for i in range(9)}), "more than the 4096 elements"),
])
def test_evidence_the_schema_cannot_judge_is_refused_when_read(tmp_path, change, message):
    data = read(write(tmp_path / "r.json"))
    ev = find(data, verdict="non-conformant")["evidence"]
    change(ev)
    with pytest.raises(evidence.EvidenceError, match=message):
        evidence.unpack(load_results(save(tmp_path / "bad.json", data))["cells"][5]["evidence"])


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema="conformance-results/99"),
     "schema 'conformance-results/99' is not one this version reads; readable: conformance-results/2, "
     "conformance-results/3, conformance-results/4, conformance-results/5, conformance-results/6, "
     "conformance-results/7"),
    (lambda d: d.pop("schema"), "not a results file: no 'schema' field"),
    (lambda d: d["cells"][0].update(verdict="maybe"), "does not follow conformance-results/7: at cells/0/verdict"),
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
