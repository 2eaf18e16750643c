"""Ledger entries that cover gradients (`parts`, conformance/deviations.py): a float64 ffn whose outputs are
exact and whose gradients are float32-accurate (tests/wrong_backward.py: CotangentInFloat32) is a known
deviation under an entry bounded by "float32", non-conformant beyond a tighter bound, and an entry over a
correct implementation's gradients is stale."""

from __future__ import annotations

from pathlib import Path

from conformance import deviations
from conformance.engine import run_cell
from conformance.registry import resolve
from conformance.spec import find_spec_dir, load_spec

import wrong_backward

WRONG = Path(wrong_backward.__file__).resolve()
SPEC = load_spec(find_spec_dir() / "ffn.md")


def _entry(implementation: str, bound: str, parts: list[str]) -> dict:
    return {"id": "ffn-backward-in-float32", "implementation": implementation, "component": "ffn",
            "condition": "always", "sections": ["11.1"], "bound": bound, "parts": parts, "dtypes": ["float64"],
            "explanation": "the backward pass starts from a float32 cotangent"}


def _gradients(target: str, bound: str | None, parts: list[str] = ("gradients",), examples: int = 20) -> dict:
    """The cell's gradients under an entry with `bound` and `parts` (None: under an empty ledger)."""
    impl = resolve("ffn", target)
    ledger = [] if bound is None else deviations.parse([_entry(impl.label, bound, list(parts))])
    cell = run_cell(SPEC, impl, "float64", "cpu", max_examples=examples, ledger=ledger).to_json()
    assert cell["verdict"] == "conformant", cell["reason"]  # the outputs are exact, so the entry never touches them
    return cell["gradients"]


def test_without_the_entry_the_float32_backward_fails():
    record = _gradients(f"{WRONG}:CotangentInFloat32", None)
    assert record["verdict"] == "non-conformant" and "differs from the reference by" in record["reason"]


def test_a_gradient_entry_bounded_by_float32_makes_it_a_known_deviation():
    record = _gradients(f"{WRONG}:CotangentInFloat32", "float32")
    assert record["verdict"] == "known-deviation", record["reason"]
    assert record["deviation"] == "ffn-backward-in-float32"
    assert 0 < record["known_deviations"] <= record["examples"]
    assert "ffn-backward-in-float32" in record["reason"] and "ffn §11.1" in record["sections"]


def test_a_deviation_beyond_the_entrys_bound_is_non_conformant():
    record = _gradients(f"{WRONG}:CotangentInFloat32", "1000 eps")
    assert record["verdict"] == "non-conformant"
    assert record["reason"].startswith("beyond ledger entry 'ffn-backward-in-float32' (bound: 1000 eps): "
                                       "gradient "), record["reason"]


def test_an_entry_over_gradients_that_follow_the_spec_is_stale():
    record = _gradients("torch", "float32")
    assert record["verdict"] == "non-conformant"
    assert "ledger entry 'ffn-backward-in-float32' is stale for the gradients" in record["reason"]
