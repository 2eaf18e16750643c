"""Generic tests over every component, in place of what each component's test file used to repeat.

What is specific to a component (its converters, its framework's defaults, its
wrong implementations' shrunk examples) stays in tests/test_<component>.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.spec import list_components
from conformance.vocabulary import DTYPES

ROOT = Path(__file__).resolve().parent.parent
keras_on_torch = all(importlib.util.find_spec(m) is not None for m in ("keras", "torch"))


@pytest.fixture(scope="module")
def keras_on_the_torch_backend(tmp_path_factory) -> list[dict]:
    """Every Keras cell on the torch backend, eager, every dtype: one run for all components (tests/test_mha.py
    runs every backend and both modes for mha; the calibration runs the rest)."""
    out = tmp_path_factory.mktemp("keras-torch") / "results.json"
    proc = subprocess.run([sys.executable, "-m", "conformance", "run", "--framework", "keras", "--backend", "torch",
                           "--mode", "eager", "--device", "cpu", "--examples", "30", "-o", str(out)],
                          cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["cells"]


@pytest.mark.xdist_group("keras-on-torch")  # one worker runs the fixture's run once for all components
@pytest.mark.skipif(not keras_on_torch, reason="Keras or PyTorch is not installed")
@pytest.mark.parametrize("component", list_components())
def test_our_keras_implementation_conforms_on_the_torch_backend(keras_on_the_torch_backend, component):
    ours = [c for c in keras_on_the_torch_backend if c["component"] == component and c["implementation"] == "keras"]
    assert {(c["backend"], c["dtype"], c["verdict"]) for c in ours} == {("torch", d, "conformant") for d in DTYPES}, \
        [(c["dtype"], c["verdict"], c["reason"]) for c in ours]
    assert all(c["examples"] >= 30 for c in ours)
