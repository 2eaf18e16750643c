"""Assertions the component test modules share."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from conformance.engine import CellResult, named_outputs, run_cell
from conformance.spec import Spec, find_spec_dir, load_spec
from conformance.registry import Registered, resolve


def rejected(spec: Spec, target: str, *, reason: str, max_examples: int) -> CellResult:
    """A wrong implementation run in float32: non-conformant for `reason`, caught by the random
    search (so there is a counterexample and a repro line), and reproduced by that example alone."""
    cell = run_cell(spec, resolve(spec.component, target), "float32", "cpu", max_examples=max_examples)
    assert cell.verdict == "non-conformant", f"{target} was not caught: {cell}"
    assert reason in cell.reason, cell.reason
    ex = cell.counterexample
    assert ex is not None and cell.repro and "--example" in cell.repro
    again = run_cell(spec, resolve(spec.component, target), "float32", "cpu", example=ex)
    assert again.verdict == "non-conformant" and again.reason == cell.reason
    return cell


def keras_round_trip(layer: Any, load: Callable[[Any, dict], None], weights: dict, *inputs: Any,
                     **named: Any) -> Any:
    """Serialize a built, loaded Keras layer and rebuild it: same config, built, same outputs (for `inputs`
    given in order, and `named` by name; a None stays None)."""
    import keras
    from keras import ops

    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert clone.get_config() == layer.get_config()
    assert clone.built  # the serialized build config rebuilds it
    load(clone, weights)
    tensors = [ops.convert_to_tensor(x) for x in inputs]
    by_name = {k: None if x is None else ops.convert_to_tensor(x) for k, x in named.items()}
    ours, theirs = layer(*tensors, **by_name), clone(*tensors, **by_name)
    if not isinstance(ours, (tuple, list)):
        ours, theirs = [ours], [theirs]
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))
    return clone


def outputs_of(registered: Registered, instance: Any, inputs: dict) -> dict[str, Any]:
    """What an instance returns for `inputs`, by output name, as the engine names it (the order of the spec's
    output table, or of the implementation's `outputs`)."""
    spec = load_spec(find_spec_dir() / f"{registered.component}.md")
    return dict(named_outputs(instance(inputs), registered.outputs(tuple(spec.outputs))))


def mistake(component: str, name: str) -> Registered:
    """One of the deliberately wrong implementations of tests/wrong_<component>.py, as a plug-in."""
    return resolve(component, f"{Path(__file__).resolve().parent / f'wrong_{component}.py'}:{name}")
