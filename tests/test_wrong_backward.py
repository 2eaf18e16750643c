"""Wrong backward passes under right forward passes (tests/wrong_backward.py) are caught by the gradient checks
(spec/README.md, "Gradients") alone.

Each cell, at the default profile, has its forward verdict conformant and its
gradients non-conformant, for a gradient that differs from the reference, in
the component's gradient section; the `--example` of its gradients' reproduce
line, replayed, fails the same way. The PyTorch mistakes are judged in
float32, in this process; the Keras one breaks float64 only and is judged
there, on the torch backend, in a process of its own (Keras fixes its backend
once per process), through the command as a user runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.engine import CellResult, run_cell
from conformance.generate import parse_example
from conformance.registry import resolve
from conformance.spec import find_spec_dir, load_spec

import wrong_backward

ROOT = Path(__file__).resolve().parent.parent
WRONG = Path(wrong_backward.__file__).resolve()
#: The default profile's examples per cell (README: --profile ci).
EXAMPLES = 100
#: Each component's gradient section (spec/<component>.md).
GRADIENTS = {"mha": "12.1", "encoder_block": "11.1", "lstm_classifier": "11.1", "ffn": "11.1"}
TORCH = [("mha", "SoftmaxBackwardWithoutRowSum"), ("encoder_block", "LayerNormVarianceDetached"),
         ("encoder_block", "LayerNormBackwardWithoutMean"), ("lstm_classifier", "ForgetGatePathDetached")]


def caught_by_the_gradients(cell: dict, component: str) -> None:
    """The forward comparison passed; the gradients failed on a value, naming the component's gradient section."""
    gradients = cell["gradients"]
    assert cell["verdict"] == "conformant", cell["reason"]
    assert gradients["verdict"] == "non-conformant", gradients
    assert "differs from the reference by" in gradients["reason"], gradients["reason"]
    assert f"{component} §{GRADIENTS[component]}" in gradients["sections"], gradients["sections"]
    assert gradients["counterexample"]["gradients"] is True


def replayed(repro: str) -> list[str]:
    """The reproduce line's arguments after `conformance`, its `--example` asking for the gradients."""
    args = shlex.split(repro)
    assert args[0] == "conformance" and '"gradients":true' in args[args.index("--example") + 1], repro
    return args[1:]


def _cell(component: str, name: str, **kwargs) -> CellResult:
    spec = load_spec(find_spec_dir() / f"{component}.md")
    return run_cell(spec, resolve(component, f"{WRONG}:{name}"), "float32", "cpu", **kwargs)


@pytest.mark.parametrize("component, name", TORCH, ids=[name for _, name in TORCH])
def test_a_torch_backward_mistake_is_caught_by_the_gradients_and_replays(component, name):
    cell = _cell(component, name, max_examples=EXAMPLES)
    assert cell.examples >= EXAMPLES
    caught_by_the_gradients(cell.to_json(), component)
    args = replayed(cell.gradients["repro"])
    assert args[:3] == ["check", component, "--impl"] and args[3].endswith(f"wrong_backward.py:{name}")
    example = parse_example(load_spec(find_spec_dir() / f"{component}.md"), args[args.index("--example") + 1])
    again = _cell(component, name, example=example)
    caught_by_the_gradients(again.to_json(), component)
    assert again.gradients["reason"] == cell.gradients["reason"]


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("keras", "torch")),
                    reason="Keras or PyTorch is not installed")
def test_a_float32_gradient_of_a_float64_keras_layer_is_caught_and_replays(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "torch"}

    def check(args: list[str], out: Path) -> dict:
        proc = subprocess.run([sys.executable, "-m", "conformance", *args, "--jobs", "1", "-o", str(out)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the gradients fail the check
        (cell,) = json.loads(out.read_text())["cells"]
        return cell

    target = f"{WRONG}:Float32GradientFFN"
    cell = check(["check", "ffn", "--impl", target, "--dtype", "float64", "--device", "cpu", "--mode", "eager",
                  "--examples", str(EXAMPLES)], tmp_path / "search.json")
    assert cell["backend"] == "torch" and cell["examples"] >= EXAMPLES
    caught_by_the_gradients(cell, "ffn")
    again = check(replayed(cell["gradients"]["repro"]), tmp_path / "replay.json")
    caught_by_the_gradients(again, "ffn")
    assert again["gradients"]["reason"] == cell["gradients"]["reason"]
