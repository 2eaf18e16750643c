import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))  # helpers: wrong_mha, torch_reference


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def mha_spec():
    from conformance.spec import load_spec

    return load_spec(ROOT / "spec" / "mha.md")


#: The matrix run that made reports/baseline/results-keras-torch.json (reports/README.md).
KERAS_ON_TORCH = ["run", "--device", "cpu", "--mode", "eager", "--profile", "dev", "--framework", "keras"]


@pytest.fixture(scope="session")
def keras_on_torch_run(tmp_path_factory) -> Path:
    """Every Keras cell on the torch backend, eager, at the dev profile: one run (about six minutes here) that
    tests/test_baseline.py compares with the baseline and tests/test_components.py reads our Keras cells from.
    Tests that use it share the xdist group "keras-on-torch", so one worker runs it once."""
    out = tmp_path_factory.mktemp("keras-torch") / "results-keras-torch.json"
    proc = subprocess.run([sys.executable, "-m", "conformance", *KERAS_ON_TORCH, "-o", str(out)], cwd=ROOT,
                          env={**os.environ, "KERAS_BACKEND": "torch"}, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(out.read_text())["cells"]
    return out
