"""Failures name their likely cause where it fits a known pattern (conformance/causes.py), and only then."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.engine import run_cell
from conformance.registry import resolve
from conformance.spec import find_spec_dir, load_spec

HERE = Path(__file__).resolve().parent
SPEC = load_spec(find_spec_dir() / "mha.md")


def _reason(target: str, dtype: str = "float32") -> str:
    cell = run_cell(SPEC, resolve("mha", target), dtype, "cpu", max_examples=100, ledger=[])
    assert cell.verdict == "non-conformant", cell.reason
    return cell.reason


@pytest.mark.parametrize("target, cause", [
    ("wrong_mha.py:InvertedMask", "likely cause: an inverted mask (attention_mask read with True as masked out)"),
    ("wrong_mha.py:TransposedOutputProjection", "likely cause: a transposed weight (W_o read as (out, in))"),
    ("wrong_mha.py:UniformOnFullyMaskedRow", "likely cause: fully masked query row"),
    ("wrong_causes.py:CausalWhenUnmasked", "likely cause: a causal mask (later keys masked too; no mask was given)"),
])
def test_a_failure_that_fits_a_pattern_names_it(target, cause):
    reason = _reason(f"{HERE / target}")
    assert cause in reason, reason


def test_float64_at_float32_accuracy_is_named_in_float64_only():
    assert "likely cause: float64 computed at float32 accuracy" in _reason(f"{HERE}/wrong_causes.py:Float32Inside",
                                                                          "float64")


def test_a_failure_that_fits_no_pattern_names_none():
    assert "likely cause" not in _reason(f"{HERE}/wrong_mha.py:ScaledByDModel")
