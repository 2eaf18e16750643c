"""Cells in parallel, every Keras backend in one run, and shards: the same results as one cell at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.cli import main
from conformance.vocabulary import Slot

ROOT = Path(__file__).resolve().parent.parent
# eager only: the compiled mode's compilations (tests/test_compilation.py) would take most of the time and
# make no difference to how cells are split, scheduled and merged
NUMPY = ["run", "--framework", "numpy", "--framework", "torch", "--component", "mha", "--component", "ffn",
         "--mode", "eager", "--dtype", "float64", "--dtype", "float32", "--device", "cpu", "--examples", "5"]
SAME = ("verdict", "examples", "max_ratio", "worst", "reason")


def slots(path: Path) -> dict[Slot, dict]:
    cells = json.loads(Path(path).read_text())["cells"]
    found = {Slot.of(c): {k: c[k] for k in SAME} for c in cells}
    assert len(found) == len(cells)  # one cell per slot
    return found


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory) -> dict[tuple, dict]:
    out = tmp_path_factory.mktemp("serial") / "results.json"
    assert main([*NUMPY, "-j", "1", "-o", str(out)]) == 0
    return slots(out)


def test_parallel_workers_give_the_same_results(one_at_a_time, tmp_path):
    out = tmp_path / "results.json"
    assert main([*NUMPY, "-j", "2", "-o", str(out)]) == 0
    assert slots(out) == one_at_a_time
    assert list(slots(out)) == list(one_at_a_time)  # and the file lists them in the same order


def test_three_shards_merged_equal_an_unsharded_run(one_at_a_time, tmp_path, capsys):
    parts = [tmp_path / f"shard-{k}.json" for k in (1, 2, 3)]
    for k, part in enumerate(parts, 1):
        assert main([*NUMPY, "--shard", f"{k}/3", "-o", str(part)]) == 0
    shards = [slots(p) for p in parts]
    assert all(shards) and sum(len(s) for s in shards) == len(one_at_a_time)  # disjoint, none empty
    merged = tmp_path / "merged.json"
    assert main(["merge", *map(str, parts), "-o", str(merged)]) == 0
    assert slots(merged) == one_at_a_time
    capsys.readouterr()
    assert main([*NUMPY, "--shard", "2/3", "-o", str(tmp_path / "again.json")]) == 0
    assert slots(tmp_path / "again.json") == shards[1]  # the split is the same every time


@pytest.mark.slow
def test_one_run_covers_every_keras_backend(tmp_path):
    """With every backend installed and KERAS_BACKEND unset, one run has keras[tensorflow], [torch] and [jax],
    each with the verdicts of a run on that backend alone."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    args = ["run", "--framework", "keras", "--component", "ffn", "--dtype", "float32", "--device", "cpu",
            "--mode", "eager", "--examples", "4"]
    together = tmp_path / "together.json"
    proc = subprocess.run([sys.executable, "-m", "conformance", *args, "-o", str(together)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = slots(together)
    assert {key.backend for key in found} == {"tensorflow", "torch", "jax"}
    for backend in ("tensorflow", "torch", "jax"):
        alone = tmp_path / f"{backend}.json"
        proc = subprocess.run([sys.executable, "-m", "conformance", *args, "-o", str(alone)], cwd=ROOT,
                              env={**env, "KERAS_BACKEND": backend}, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for key, cell in slots(alone).items():
            assert key.backend == backend and found[key]["verdict"] == cell["verdict"], key
