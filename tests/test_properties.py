"""The properties of spec/*.md (their `property` tables; spec/README.md, "Properties").

Each mistake in tests/wrong_properties.py passes the reference comparison and
breaks one property; the property must reject it in float32 at the default
profile on every one of ten seeds, and its counterexample must fail again when
replayed. Correct implementations hold every property they reach.
"""

from __future__ import annotations

import json

import pytest

from conformance import engine, registry
from conformance.generate import parse_example
from conformance.spec import load_spec, list_components
from conformance.vocabulary import Held, Property, UsageError

import wrong_properties

#: One mistake for each property, run on ten seeds; the others on three.
TEN_SEEDS = {"batch_independence": "BatchWideOverflowGuard", "causality": "SequenceWideOverflowGuard",
             "masked_key_invariance": "MaskedKeysKeepAFloor", "padding_invariance": "PaddedKeysKeepAFloor",
             "key_permutation_equivariance": "PaddingMaskAsLengths", "statelessness": "MaskCachedByShape",
             "determinism": "HiddenUnitsInAlternateOrders"}
CASES = [(m.__name__, seed) for m in wrong_properties.MISTAKES
         for seed in (range(10) if m.__name__ in TEN_SEEDS.values() else range(3))]


def _run(component: str, target: str, **kwargs) -> engine.CellResult:
    spec = load_spec(f"spec/{component}.md")
    return engine.run_cell(spec, registry.resolve(component, target), "float32", "cpu", **kwargs)


def test_every_property_has_a_mistake_run_on_ten_seeds():
    assert set(TEN_SEEDS) == {p.value for p in Property}
    assert {getattr(wrong_properties, name).breaks for name in TEN_SEEDS.values()} == set(TEN_SEEDS)


@pytest.mark.parametrize("name, seed", CASES)
def test_the_property_rejects_the_mistake_and_its_counterexample_replays(name, seed):
    mistake = getattr(wrong_properties, name)
    target = f"tests/wrong_properties.py:{name}"
    cell = _run(mistake.component, target, seed=seed)
    record = cell.properties[mistake.breaks]
    assert cell.verdict == "non-conformant" and record["status"] == Held.FAILED, (cell.verdict, cell.reason)
    assert cell.reason.startswith("property "), cell.reason  # the reference comparison passed: a property failed
    example = parse_example(load_spec(f"spec/{mistake.component}.md"), json.dumps(record["counterexample"]))
    replayed = _run(mistake.component, target, example=example)
    assert replayed.verdict == "non-conformant", replayed.reason
    assert replayed.properties[mistake.breaks]["status"] == Held.FAILED, replayed.reason
    assert "--example" in record["repro"] and name in record["repro"]


@pytest.mark.parametrize("component", list_components())
@pytest.mark.parametrize("impl", ["numpy", "torch"])
def test_correct_implementations_hold_every_property_they_reach(component, impl):
    cell = _run(component, impl, seed=1)
    assert cell.verdict == "conformant", cell.reason
    statuses = {name: record["status"] for name, record in cell.properties.items()}
    assert set(statuses) == set(load_spec(f"spec/{component}.md").properties)
    assert all(s == Held.HELD for s in statuses.values()), statuses


def test_a_replayed_example_names_a_property_of_its_component():
    spec = load_spec("spec/ffn.md")
    example = {"d_model": 2, "d_ff": 3, "activation": "relu", "dropout": 0.0, "B": 1, "T": 2, "scale_exp": 0, "seed": 0}
    example = {k: v for k, v in example.items() if k in spec.params or k in ("scale_exp", "seed")}
    with pytest.raises(UsageError, match="ffn's are batch_independence, statelessness, determinism"):
        parse_example(spec, json.dumps({**example, "property": "causality"}))
    with pytest.raises(UsageError, match="after must be a list"):
        parse_example(spec, json.dumps({**example, "after": {}}))
    parsed = parse_example(spec, json.dumps({**example, "property": "statelessness", "then": {**example, "T": 3}}))
    assert parsed["then"]["T"] == 3 and parsed["property"] == "statelessness"
