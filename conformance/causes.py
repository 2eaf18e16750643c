"""Likely causes: what a failing example's outputs agree with, when not with the spec.

A failure names the spec sections it breaks; porting mistakes and framework
habits have shapes of their own, and a failure that fits one is easier to
act on when it says so. After a cell fails on its minimal example, each
pattern below recomputes the reference with one thing changed and judges the
candidate's outputs against it exactly as against the reference (the same
budgets); one that passes is named beside the sections, as the likely cause:

- float64 computed at float32 accuracy: the outputs are within the float32
  budget (measured in float32's eps) though not the float64 one;
- an inverted mask: the outputs follow the reference with every mask input
  negated (True read as "masked out");
- a causal mask: the outputs follow the reference whose attention mask also
  hides later keys (a layer that makes itself causal when given no mask);
- transposed weights: the outputs follow the reference with every square
  weight matrix transposed, or one of them (an `(out, in)` layout read as
  `(in, out)`).

A pattern counts only where it fits clearly: the outputs within `CLEAR` of
their budget against the changed reference (a correct implementation of the
changed layer reaches a tenth to a third), since where the example's budget is
wide next to what the change does, a change may fit by chance.

A failure inside a condition's region (a fully masked row) names that
condition already (`Runner.inside_a_condition`); its meaning is added here.
The checks run once per failing cell, on arrays already at hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np

from conformance import generate

if TYPE_CHECKING:
    from conformance.engine import NonConformance, Runner

Alternative = tuple[str, dict[str, Any], dict[str, Any]]  # (cause, weights, inputs)

#: The largest error / budget against a changed reference that names it as the likely cause.
CLEAR = 0.5


def likely(runner: "Runner", example: Mapping[str, Any], failure: "NonConformance") -> str | None:
    """The likely cause of `failure` on `example` (the arrays of `runner.last`), or None where none fits."""
    from conformance.engine import Leeway, NonConformance

    last = runner.last
    if last.get("outputs") is None or last.get("reference") is None:
        return None
    inside = [c for c in runner.spec.conditions.values() if f"only where {c.name} (" in failure.reason]
    if inside:
        return inside[0].name.replace("_", " ")
    weights, inputs = last["weights"], last["inputs"]
    if runner.dtype == "float64" and _passes(runner, example, inputs, Leeway(dtype="float32")):
        return "float64 computed at float32 accuracy"
    forward = _forward(runner)
    config = generate.layer_config(runner.spec, example)
    for cause, w, x in alternatives(runner, example, weights, inputs):
        diagnostics: dict[str, Any] = {}
        try:
            outputs = forward(config, generate.cast(w, "float64"), generate.cast(x, "float64"), diagnostics)
        except Exception:  # an alternative the reference cannot compute (a shape it does not take)
            continue
        if not all(np.all(np.isfinite(v)) for v in outputs.values() if v is not None and np.asarray(v).dtype.kind == "f"):
            continue
        try:
            outcome = runner.judge(example, inputs, Leeway(dtype=runner.dtype, reference=outputs,
                                                           diagnostics=diagnostics))
        except NonConformance:
            continue
        if outcome.ratio <= CLEAR:
            return cause
    return None


def _forward(runner: "Runner") -> Callable[..., dict[str, Any]]:
    from conformance.engine import reference_forward

    forward = reference_forward(runner.spec.component)
    return lambda config, weights, inputs, diagnostics: forward(config, weights, inputs, diagnostics=diagnostics)


def _passes(runner: "Runner", example: Mapping[str, Any], inputs: Mapping[str, Any], leeway: Any) -> bool:
    """Whether the outputs are clearly within their budgets under `leeway` (`CLEAR`)."""
    from conformance.engine import NonConformance

    try:
        return runner.judge(example, inputs, leeway).ratio <= CLEAR
    except NonConformance:
        return False


def alternatives(runner: "Runner", example: Mapping[str, Any], weights: Mapping[str, Any],
                 inputs: Mapping[str, Any]) -> Iterator[Alternative]:
    """The changed arrays each pattern of the module's doc stands for, where the example has what it changes."""
    spec = runner.spec
    masks = [t.name for t in spec.inputs.values() if t.kind == "mask"]
    given = [m for m in masks if inputs.get(m) is not None]
    if given:
        flipped = {**inputs, **{m: ~np.asarray(inputs[m], dtype=bool) for m in given}}
        yield f"an inverted mask ({', '.join(given)} read with True as masked out)", dict(weights), flipped
    lengths = example.get("Lq", example.get("T")), example.get("Lk", example.get("T"))
    if "attention_mask" in masks and all(isinstance(n, int) for n in lengths):
        causal = np.tril(np.ones(lengths, dtype=bool))
        current = inputs.get("attention_mask")
        mask = causal if current is None else np.asarray(current, dtype=bool) & causal
        yield ("a causal mask (later keys masked too" + ("; no mask was given)" if current is None else ")"),
               dict(weights), {**inputs, "attention_mask": mask})
    square = [name for name, value in weights.items()
              if np.ndim(value) == 2 and np.shape(value)[0] == np.shape(value)[1] > 1]
    if len(square) > 1:  # a layout mistake made for every matrix at once
        yield (f"transposed weights ({', '.join(square)} read as (out, in))",
               {**weights, **{n: np.asarray(weights[n]).T.copy() for n in square}}, dict(inputs))
    for name in square:
        yield (f"a transposed weight ({name} read as (out, in))", {**weights, name: np.asarray(weights[name]).T.copy()},
               dict(inputs))
