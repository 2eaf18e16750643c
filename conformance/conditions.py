"""The spec's conditions: where one rule applies, as predicates of the component's reference.

A spec's `condition` table names each condition with its sections; the
reference module (impls/numpy/<id>.py) defines a function of that name taking
(example, inputs) and returning either a bool (the condition holds for the
whole example) or a dict from output names to boolean arrays broadcastable to
those outputs (the elements it holds for). The ledger names conditions to say
which examples an entry covers; the engine names a condition's sections when
an output fails inside its region.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import numpy as np

from conformance.spec import Condition, Spec

#: The condition every ledger entry may name: every example of the cells it covers.
ALWAYS = "always"

Predicate = Callable[[Mapping[str, Any], Mapping[str, Any]], "bool | Mapping[str, np.ndarray]"]


def reference_function(component: str, name: str) -> Callable[..., Any]:
    """A function of the component's reference module: a condition's predicate, or a ledger entry's model of
    its deviation (`like NAME`); AttributeError naming both when the module has none."""
    module = importlib.import_module(f"impls.numpy.{component}")
    found = getattr(module, name, None)
    if not callable(found):
        raise AttributeError(f"impls/numpy/{component}.py defines no function {name!r}")
    return found


def predicate(component: str, name: str) -> Predicate:
    """The reference module's function for a condition (AttributeError naming both when it has none)."""
    try:
        return reference_function(component, name)
    except AttributeError as e:
        raise AttributeError(f"{e} for the condition of that name in spec/{component}.md") from None


def holds(component: str, name: str, example: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
    """Whether the condition holds anywhere in the example."""
    if name == ALWAYS:
        return True
    value = predicate(component, name)(example, inputs)
    if isinstance(value, Mapping):
        return any(bool(np.any(region)) for region in value.values())
    return bool(value)


def special_cases(spec: Spec, example: Mapping[str, Any], inputs: Mapping[str, Any]) -> set[str]:
    """The spec's whole-example conditions (those whose function returns a bool) that hold for the example."""
    found = set()
    for condition in spec.conditions.values():
        value = predicate(spec.component, condition.name)(example, inputs)
        if not isinstance(value, Mapping) and value:
            found.add(condition.name)
    return found


def confining(spec: Spec, example: Mapping[str, Any], inputs: Mapping[str, Any], output: str,
              bad: np.ndarray) -> list[Condition]:
    """The spec's conditions whose region of `output` holds every element marked in `bad` (and one at least)."""
    found = []
    for condition in spec.conditions.values():
        value = predicate(spec.component, condition.name)(example, inputs)
        if isinstance(value, Mapping) and output in value and bad.any():
            region = np.broadcast_to(np.asarray(value[output], dtype=bool), bad.shape)
            if not (bad & ~region).any():
                found.append(condition)
    return found
