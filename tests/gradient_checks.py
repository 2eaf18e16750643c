"""Checks of the reference's backward passes that every component's gradient tests share.

The reference's gradients (impls/numpy/<component>.py, `backward`) are checked
against central finite differences of its own forward pass, extrapolated
(Richardson) so that the difference quotient's error is of the fourth order in
the step: along random directions, one named input or weight at a time.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import numpy as np

from conformance.generate import layer_config, make_arrays, shape_groups
from conformance.spec import Spec, find_spec_dir, load_spec


def spec_of(component: str) -> Spec:
    return load_spec(find_spec_dir() / f"{component}.md")


def reference(component: str) -> Any:
    return importlib.import_module(f"impls.numpy.{component}")


def drawn(spec: Spec, count: int, seed: int, **fixed: Any) -> list[dict[str, Any]]:
    """`count` examples, every parameter uniform over its domain (`fixed` as given)."""
    rng = np.random.default_rng(seed)
    pick = lambda domain: list(domain)[int(rng.integers(len(domain)))]
    return [{**group, **{n: fixed.get(n, pick(d)) for n, d in spec.magnitudes().items()},
             "seed": int(rng.integers(2**31))} for group in shape_groups(spec, fixed, count, rng)]


def float_outputs(spec: Spec) -> list[str]:
    return [name for name, t in spec.outputs.items() if t.dtype == "float"]


def differentiated(spec: Spec, example: Mapping[str, Any]) -> list[str]:
    """What a backward pass gives gradients for on `example`: the float inputs and every weight (a weight
    repeated per layer once per layer)."""
    return [name for name, t in spec.inputs.items() if t.kind == "float"] + list(spec.weight_shapes(example))


def arrays(spec: Spec, example: Mapping[str, Any], rng: np.random.Generator
           ) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """(config, weights, inputs, cotangents) of one example, the cotangents standard normal."""
    weights, inputs = make_arrays(spec, example)
    config = layer_config(spec, example)
    outputs = reference(spec.component).forward(config, weights, inputs)
    cotangents = {name: rng.normal(size=np.shape(outputs[name])) for name in float_outputs(spec)}
    return config, weights, inputs, cotangents


def loss(component: str, config: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
         cotangents: Mapping[str, np.ndarray]) -> float:
    """<cotangents, outputs>: the scalar whose gradient a backward pass gives."""
    outputs = reference(component).forward(config, weights, inputs)
    return float(sum((np.asarray(outputs[name], dtype=np.float64) * c).sum() for name, c in cotangents.items()))


def loss_terms(component: str, config: Mapping[str, Any], weights: Mapping[str, np.ndarray],
               inputs: Mapping[str, Any], cotangents: Mapping[str, np.ndarray]) -> float:
    """sum |cotangent * output|: the size of what `loss` sums, whose rounding is the differences' noise."""
    outputs = reference(component).forward(config, weights, inputs)
    return float(sum(np.abs(np.asarray(outputs[name], dtype=np.float64) * c).sum() for name, c in cotangents.items()))


def directional(component: str, config: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                inputs: Mapping[str, Any], cotangents: Mapping[str, np.ndarray], name: str,
                direction: np.ndarray, step: float) -> float:
    """The derivative of `loss` along `direction` in `name` (an input or a weight), by central differences at
    steps `step` and `step / 2` combined by Richardson extrapolation."""
    def at(t: float) -> float:
        w, x = dict(weights), dict(inputs)
        target = w if name in w else x
        target[name] = target[name] + t * direction
        return loss(component, config, w, x, cotangents)

    def quotient(h: float) -> float:
        return (at(h) - at(-h)) / (2 * h)

    return (4 * quotient(step / 2) - quotient(step)) / 3


#: The steps tried, in units of the root mean square of what is stepped: the first that agrees passes (where
#: large scores saturate a softmax, the larger step reaches past the region where the loss is quadratic).
STEPS = (1e-4, 1e-6)


def check_against_differences(component: str, example: Mapping[str, Any], seed: int, tolerance: float = 1e-7,
                              steps: tuple[float, ...] = STEPS) -> list[str]:
    """Each gradient of the reference's backward on `example` against `directional` along two random
    directions; the failures, one line each (an empty list when all agree). The agreement asked is
    `tolerance` of sum |gradient| |direction|, the size of the terms the directional derivative sums, plus
    the differences' own noise: ten float64 roundings of the loss's terms, divided by the step."""
    spec = spec_of(component)
    rng = np.random.default_rng(seed)
    config, weights, inputs, cotangents = arrays(spec, example, rng)
    grads = reference(component).backward(config, weights, inputs, cotangents)
    assert set(grads) == set(differentiated(spec, example)), (sorted(grads), differentiated(spec, example))
    noise = loss_terms(component, config, weights, inputs, cotangents)
    failures = []
    for name in differentiated(spec, example):
        value = {**weights, **inputs}[name]
        g = grads[name].value
        assert g.shape == np.shape(value), (name, g.shape, np.shape(value))
        size = float(np.sqrt(np.mean(np.square(value)))) or 1.0
        for _ in range(2):
            direction = rng.normal(size=np.shape(value))
            got = float((g * direction).sum())
            terms = float((np.abs(g) * np.abs(direction)).sum())
            for step in steps:
                expected = directional(component, config, weights, inputs, cotangents, name, direction, step * size)
                allowed = tolerance * terms + 10 * 2.0**-52 * noise / (step * size)
                if abs(got - expected) <= allowed:
                    break
            else:
                failures.append(f"{name}: backward {got!r}, differences {expected!r}, off by "
                                f"{abs(got - expected) / allowed:.3g} times the agreement asked, example "
                                f"{dict(example)}")
    return failures
