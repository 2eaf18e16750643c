"""Our own implementations against the committed baseline (reports/baseline/): a change that
shifts their numerics past the comparison's factor, or breaks a cell, fails here.

The runs repeat the commands that made the baseline (reports/README.md says how to
refresh it after an intended change), with the same seed, so they draw the same examples.
"""

from __future__ import annotations

import pytest

from conformance.cli import main
from conformance.compare import compare, format_comparison
from conformance.schema import load_results

RUN = ["run", "--device", "cpu", "--mode", "eager", "--profile", "dev"]


def _compare(root, current) -> None:
    name = current.name
    baseline = root / "reports" / "baseline" / name
    before, after = load_results(baseline), load_results(current)
    result = compare(before, after)
    assert result.compared == len(before["cells"]) > 0, "the run no longer covers the baseline's cells"
    assert not result.regressions, format_comparison(result, str(baseline), str(current))


def test_numpy_and_torch_match_the_baseline(root, tmp_path):
    pytest.importorskip("torch")
    current = tmp_path / "results-numpy-torch.json"
    assert main([*RUN, "--framework", "numpy", "--framework", "torch", "-o", str(current)]) == 0
    _compare(root, current)


@pytest.mark.xdist_group("keras-on-torch")  # the run is tests/conftest.py's, shared with tests/test_components.py
def test_keras_on_torch_matches_the_baseline(root, keras_on_torch_run):
    pytest.importorskip("keras")
    _compare(root, keras_on_torch_run)
