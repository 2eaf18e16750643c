"""Each constant a spec fixes, changed alone, is rejected in float32, at the default profile, on ten seeds.

The implementations are in tests/changed_constants.py; each spec's sensitivity
table (its `constant` table: mha §9.3, ffn §8.3, encoder_block §8.3) says where
in the domain each change shows and which settings reach it.
"""

from __future__ import annotations

import pytest

from changed_constants import FAMILIES, Correct
from conformance.engine import run_cell
from conformance.registry import resolve
from conformance.spec import find_spec_dir, load_spec

SEEDS = range(10)
#: The default profile's examples per cell (README: --profile ci).
EXAMPLES = 100
CASES = [pytest.param(component, changed.__name__, id=f"{component}-{changed.__name__}")
         for component, family in FAMILIES.items() for changed in family]


def _rejections(component: str, name: str) -> list[int]:
    """The seeds on which the float32 cell of the changed implementation is non-conformant."""
    spec = load_spec(find_spec_dir() / f"{component}.md")
    impl = resolve(component, f"{find_spec_dir().parent / 'tests' / 'changed_constants.py'}:{name}")
    return [seed for seed in SEEDS
            if run_cell(spec, impl, "float32", "cpu", max_examples=EXAMPLES, seed=seed, shrink=False).verdict
            == "non-conformant"]


@pytest.mark.parametrize("component, name", CASES)
def test_a_changed_constant_is_rejected_in_float32_on_every_seed(component, name):
    assert _rejections(component, name) == list(SEEDS)


def test_the_control_passes_on_every_seed():
    """The same code with nothing changed: conformant, so the rejections above are the changes'."""
    assert _rejections("encoder_block", Correct.__name__) == []


def test_every_component_with_a_sensitivity_table_has_a_family():
    specs = [load_spec(p) for p in sorted(find_spec_dir().glob("*.md")) if p.name != "README.md"]
    assert {s.component for s in specs if s.sensitivity} <= set(FAMILIES)
