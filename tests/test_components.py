"""Generic tests over every component, in place of what each component's test file used to repeat.

What is specific to a component (its converters, its framework's defaults, its
wrong implementations' shrunk examples) stays in tests/test_<component>.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conformance import conditions, generate
from conformance.components import COMPONENTS
from conformance.engine import NonConformance, Runner, run_cell
from conformance.registry import resolve
from conformance.spec import list_components, load_spec
from conformance.vocabulary import DTYPES

from checks import keras_round_trip, rejected

ROOT = Path(__file__).resolve().parent.parent
keras_on_torch = all(importlib.util.find_spec(m) is not None for m in ("keras", "torch"))


@pytest.mark.xdist_group("keras-on-torch")  # one worker runs the fixture's run once for all components
@pytest.mark.skipif(not keras_on_torch, reason="Keras or PyTorch is not installed")
@pytest.mark.parametrize("component", list_components())
def test_our_keras_implementation_conforms_on_the_torch_backend(keras_on_torch_run, component):
    """Every Keras cell on the torch backend, eager, every dtype, at the dev profile (tests/conftest.py's run;
    tests/test_mha.py runs every backend and both modes for mha; the calibration runs the rest)."""
    cells = json.loads(keras_on_torch_run.read_text())["cells"]
    ours = [c for c in cells if c["component"] == component and c["implementation"] == "keras"]
    assert {(c["backend"], c["dtype"], c["verdict"]) for c in ours} == {("torch", d, "conformant") for d in DTYPES}, \
        [(c["dtype"], c["verdict"], c["reason"]) for c in ours]
    assert all(c["examples"] >= 25 for c in ours)  # the dev profile's


def test_every_spec_has_a_component_record_and_every_record_a_spec():
    assert [c.id for c in COMPONENTS] and sorted(c.id for c in COMPONENTS) == list_components()


@pytest.mark.parametrize("component, layer", [(c.id, layer) for c in COMPONENTS for layer in c.layers],
                         ids=[layer.name for c in COMPONENTS for layer in c.layers])
def test_a_framework_layer_record_names_its_adapter_as_the_adapter_names_itself(component, layer):
    """The record lets the registry list a layer without importing its framework; the adapter's own `name`
    and `component` must agree with it."""
    missing = [m for m in (layer.framework, *layer.requires) if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    module, _, cls = layer.target.partition(":")
    adapter = getattr(importlib.import_module(module), cls)
    assert (adapter.component, adapter.name, adapter.framework) == (component, layer.name, layer.framework)


@pytest.mark.parametrize("component", [c.id for c in COMPONENTS])
def test_every_condition_of_a_spec_is_a_function_of_its_reference(component):
    """The spec's condition table names functions of impls/numpy/<component>.py; a region they return is
    keyed by outputs of the spec."""
    spec = load_spec(ROOT / "spec" / f"{component}.md")
    for condition in spec.conditions.values():
        function = conditions.predicate(component, condition.name)
        for worked in spec.examples:
            _, inputs = generate.worked_arrays(spec, worked.weights, worked.inputs)
            value = function(worked.config, inputs)
            assert isinstance(value, bool) or set(value) <= set(spec.outputs), (condition.name, value)


WORKED = [(c.id, ex.name) for c in COMPONENTS for ex in load_spec(ROOT / "spec" / f"{c.id}.md").examples]


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
@pytest.mark.parametrize("component, example", WORKED, ids=[f"{c}-{e}" for c, e in WORKED])
def test_our_keras_layer_round_trips_through_its_config(component, example):
    """Our Keras layer in each worked example's configuration, with its weights, serialized and rebuilt: the same
    config, built, and the same outputs on its inputs (the Keras layer contract: `get_config` round-trips)."""
    spec = load_spec(ROOT / "spec" / f"{component}.md")
    worked = next(ex for ex in spec.examples if ex.name == example)
    ours = importlib.import_module(f"impls.keras.{component}").Implementation()
    weights, inputs = generate.worked_arrays(spec, worked.weights, worked.inputs)
    layer = ours.layer(generate.layer_config(spec, worked.config), "float64")
    layer.build()
    ours.load_canonical(layer, generate.cast(weights, "float64"))
    keras_round_trip(layer, ours.load_canonical, generate.cast(weights, "float64"), **generate.cast(inputs, "float64"))


BAD_ARGUMENTS = [(c, changed, message) for c in COMPONENTS for changed, message in c.bad_arguments]


def test_every_component_has_bad_arguments_for_its_keras_layer():
    assert {c.id for c, _, _ in BAD_ARGUMENTS} == {c.id for c in COMPONENTS}


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="Keras is not installed")
@pytest.mark.parametrize("component, bad, message", BAD_ARGUMENTS,
                         ids=[f"{c.id}-{next(iter(bad))}" for c, bad, _ in BAD_ARGUMENTS])
def test_our_keras_layer_rejects_bad_arguments_by_name(component, bad, message):
    module, _, cls = component.keras_layer.partition(":")
    layer = getattr(importlib.import_module(module), cls)
    layer(**component.keras_arguments)  # the arguments the bad ones replace are accepted
    with pytest.raises(ValueError) as info:
        layer(**{**component.keras_arguments, **bad})
    assert message in str(info.value)


def _wrong_module(component: str):
    path = ROOT / "tests" / f"wrong_{component}.py"
    found = importlib.util.spec_from_file_location(f"wrong_{component}", path)
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


#: Every deliberately wrong implementation: (component, class name), from tests/wrong_<component>.py of each record.
MISTAKES = [(c.id, name) for c in COMPONENTS for name, cls in vars(_wrong_module(c.id)).items()
            if isinstance(cls, type) and cls.__module__ == f"wrong_{c.id}" and getattr(cls, "breaks", None) is not None]


def test_every_component_has_wrong_implementations():
    assert {c for c, _ in MISTAKES} == {c.id for c in COMPONENTS}


@pytest.mark.parametrize("component, name", MISTAKES, ids=[f"{c}-{n}" for c, n in MISTAKES])
def test_wrong_implementation_is_rejected_naming_the_section_it_breaks(component, name):
    """Rejected in float32, for the reason it declares (`says`), naming the section it breaks (`breaks`; first,
    where its region or a parameter pins the rule down), with a shrunk counterexample that replays; or, where
    random examples rarely reach it, by the worked example it names, and by the cell whatever it meets first."""
    module = _wrong_module(component)
    mistake, spec = getattr(module, name), load_spec(ROOT / "spec" / f"{component}.md")
    target = f"{ROOT / 'tests' / f'wrong_{component}.py'}:{name}"
    if mistake.worked:  # the worked example it names catches it, whatever the search meets first
        worked = next(w for w in spec.examples if w.name == mistake.worked)
        with pytest.raises(NonConformance) as caught:
            Runner(spec, resolve(component, target), "float32", "cpu").run_worked(worked)
        assert mistake.says in str(caught.value) and mistake.breaks in worked.sections, (caught.value, worked.sections)
        cell = run_cell(spec, resolve(component, target), "float32", "cpu", max_examples=100)
        assert cell.verdict == "non-conformant" and mistake.says in cell.reason, cell.reason
        return
    cell = rejected(spec, target, reason=mistake.says, max_examples=100)
    shrunk = {**module.SHRUNK, **mistake.shrunk}
    assert {k: cell.counterexample[k] for k in shrunk} == shrunk and cell.counterexample["seed"] <= 10, \
        cell.counterexample
    if not mistake.breaks:
        assert cell.sections == [], cell.sections
    elif mistake.first:
        assert cell.sections[0] == f"{component} §{mistake.breaks}", (cell.sections, cell.reason)
    else:
        assert f"{component} §{mistake.breaks}" in cell.sections, (cell.sections, cell.reason)
    named = {s.split(" §")[1] for s in cell.sections}
    assert named <= set(spec.sections), named  # the sections a failure names exist


@pytest.mark.parametrize("component", [c.id for c in COMPONENTS])
def test_the_control_beside_the_wrong_implementations_is_conformant(component):
    """tests/wrong_<component>.py's `Correct`, the control its mistakes are variations of: conformant over the
    search and every worked example, on every float output, within a third of its budget (the calibration rule,
    spec/README.md: a tenth, or a third where the error model is a tight bound)."""
    spec = load_spec(ROOT / "spec" / f"{component}.md")
    cell = run_cell(spec, resolve(component, f"{ROOT / 'tests' / f'wrong_{component}.py'}:Correct"), "float32", "cpu",
                    max_examples=60)
    assert cell.verdict == "conformant", cell.reason
    assert cell.examples >= 60 + len(spec.examples)
    assert set(cell.max_error) == {o.name for o in spec.outputs.values() if o.dtype == "float"}
    assert 0 < cell.max_ratio <= 1 / 3 and cell.p99_ratio <= cell.max_ratio
