"""The properties: rules that hold for any correct implementation, checked without the reference.

A spec's `property` table lists its component's (spec/README.md, "Properties").
Every one of them compares the candidate with itself: a call on inputs changed
where the rule says nothing may follow from the change, against the same
instance's call on the example's own inputs, element by element, within the
budget of the reference comparison at those elements. One example in
`EVERY` that passed the reference comparison also checks one property, the
one checked least so far that the example reaches; a property that fails is
recorded with its example and not checked again in that cell, and the search
goes on.

- batch_independence: the batch is permuted and one element replaced; the rest
  follow the permutation (here, from the spec's shapes: `B`'s axis in each).
- masked_key_invariance, padding_invariance, causality,
  key_permutation_equivariance: the reference module's function of that name
  says what to change and which outputs must stay (`Change`); it returns None
  where the example does not reach the property (no mask, one step).
- statelessness and determinism: one call sequence on one instance (`Sequence`).

New values are drawn like the example's own (another seed, the same shapes),
float ones scaled by the first of `FACTORS` that keeps the example inside the
dtype's range rule, so that what must change nothing is far from the values
the example had.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from conformance import generate, tolerances
from conformance.spec import Spec, evaluate
from conformance.tolerances import dtype_constants
from conformance.vocabulary import Held, Property

if TYPE_CHECKING:
    from conformance.engine import Runner

#: One example in this many, of those that pass the reference comparison, also checks a property.
EVERY = 3
#: New float values are the example's own kind of draw times the first of these its dtype's range allows.
FACTORS = (1e8, 1e4, 1e2, 1.0)
#: Calls of the example again, after its first, until one differs: in the search, and in a replay of determinism
#: failing (a difference that showed once may need a few tries to show again).
SEARCH_REPEATS, REPLAY_REPEATS = 2, 16
#: The properties one call sequence checks together.
SEQUENCE = (Property.STATELESSNESS, Property.DETERMINISM)


class PropertyFailure(Exception):
    """A property that does not hold on one example: `reason`, and the example that replays it (its JSON
    carries `property`, and for statelessness the calls in between, `then`)."""

    def __init__(self, name: Property, reason: str, example: Mapping[str, Any]):
        super().__init__(reason)
        self.name, self.reason, self.example = name, reason, dict(example)


class NotReached(Exception):
    """The example does not reach the property (one batch element, no mask, a new shape that would compile)."""


@dataclass
class Record:
    """One property in one cell, as the results file holds it."""

    status: Held = Held.NOT_CHECKED
    examples: int = 0  # examples it was checked on
    exact: bool = True  # every compared element was bit-identical
    max_ratio: float = 0.0  # the largest difference / budget over the compared elements
    spread: float | None = None  # determinism: the largest difference of repeated calls, in eps
    reason: str | None = None
    sections: list[str] = field(default_factory=list)
    counterexample: dict[str, Any] | None = None
    repro: str | None = None
    not_reached: dict[str, int] = field(default_factory=dict)  # why an example did not reach it -> count

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": Held(self.status).value}


@dataclass
class Change:
    """What the reference's function of a property gives: the changed `inputs`, what the outputs must then be
    (`expect(name, array)` maps an array of the example's outputs' shape to the new one: the identity where
    nothing moves) and which elements of each output are `compared` (outputs left out are not)."""

    inputs: dict[str, Any]
    expect: Callable[[str, np.ndarray], np.ndarray]
    compared: dict[str, np.ndarray]
    what: str


class Draw:
    """What the reference's function of a property works from: the example, its inputs as the candidate got
    them, a second set of inputs of the same shapes (`other`, float ones scaled by `factor`), and a random
    generator; `replaced(name, where)` is the input with `other`'s values where `where` holds."""

    def __init__(self, spec: Spec, example: Mapping[str, Any], inputs: Mapping[str, Any], dtype: str,
                 factor: float):
        self.example, self.inputs, self.factor = dict(example), dict(inputs), factor
        self.rng = np.random.default_rng([int(example["seed"]), 17])
        _, other = generate.make_arrays(spec, {**example, "seed": (int(example["seed"]) + 1) % 2**32})
        with np.errstate(over="ignore"):
            self.other = generate.cast({k: v * factor if _is_float(v) else v for k, v in other.items()}, dtype)

    def replaced(self, name: str, where: np.ndarray) -> np.ndarray:
        value = self.inputs[name]
        return np.where(np.broadcast_to(where, value.shape), self.other[name], value)


def _is_float(value: Any) -> bool:
    return isinstance(value, np.ndarray) and generate.is_float(value.dtype)


def batch_axes(spec: Spec, example: Mapping[str, Any]) -> dict[str, int | None]:
    """Each input's and output's batch axis: where `B` stands in its shape (None where it has none, as a causal
    mask's `(Lq, Lk)`)."""
    axes = {}
    for t in [*spec.inputs.values(), *spec.outputs.values()]:
        shape = t.shapes.get(example.get("mask", "")) or t.shapes.get("") or ()
        axes[t.name] = shape.index("B") if "B" in shape else None
    return axes


def batch_change(spec: Spec, draw: Draw) -> Change | None:
    """batch_independence: the batch permuted (never the identity), and the element that lands at one position
    replaced by `other`'s; every other position's outputs are the permuted ones."""
    B = int(draw.example.get("B", 1))
    if B < 2:
        return None
    order = draw.rng.permutation(B)
    while (order == np.arange(B)).all():
        order = draw.rng.permutation(B)
    replaced = int(draw.rng.integers(B))
    axes = batch_axes(spec, draw.example)
    inputs = {}
    for name, value in draw.inputs.items():
        axis = axes.get(name)
        if value is None or axis is None:
            inputs[name] = value
            continue
        moved = np.take(value, order, axis=axis)
        index = [slice(None)] * value.ndim
        index[axis] = replaced
        moved[tuple(index)] = np.take(draw.other[name], order, axis=axis)[tuple(index)]
        inputs[name] = moved

    def expect(name: str, array: np.ndarray) -> np.ndarray:
        axis = axes.get(name)
        return array if axis is None else np.take(array, order, axis=axis)

    compared = {}
    for name, axis in axes.items():
        if name in spec.outputs and axis is not None:
            keep = np.ones(B, dtype=bool)
            keep[replaced] = False
            ndim = len(spec.outputs[name].shape)
            compared[name] = keep.reshape([-1 if a == axis else 1 for a in range(ndim)])
    return Change(inputs, expect, compared,
                  f"the batch reordered as {order.tolist()} and the element at {replaced} replaced "
                  f"(its float inputs {draw.factor:g} times the example's scale)")


def changes_for(spec: Spec, name: Property, draw: Draw) -> list[Change]:
    """The changes a property makes on this draw (the reference's function may give one, or a list of them:
    causality both replaces the later steps and cuts them off); none where the example does not reach it."""
    if name == Property.BATCH_INDEPENDENCE:
        found = batch_change(spec, draw)
        return [] if found is None else [found]
    from conformance.conditions import reference_function

    found = reference_function(spec.component, name.value)(draw)
    if found is None:
        return []
    return [Change(dict(inputs), expect, dict(compared), what)
            for inputs, expect, compared, what in (found if isinstance(found, list) else [found])]


class Checks:
    """The properties of one cell: which to check on the next example, the checks, and their records."""

    def __init__(self, runner: "Runner"):
        self.runner, self.spec = runner, runner.spec
        self.records = {Property(name): Record(sections=[f"{self.spec.component} §{s}" for s in row.sections])
                        for name, row in self.spec.properties.items()}
        self.passed = 0  # examples that passed the reference comparison

    def due(self) -> bool:
        """Whether the example that just passed the reference comparison also checks a property."""
        self.passed += 1
        return bool(self.records) and self.passed % EVERY == 0

    def open(self) -> list[Property]:
        """The properties still to check, the least checked first (statelessness and determinism as one)."""
        names = [n for n, r in self.records.items() if r.status != Held.FAILED]
        if Property.DETERMINISM in names and Property.STATELESSNESS in names:
            names.remove(Property.DETERMINISM)
        return sorted(names, key=lambda n: self.records[n].examples)

    def check(self, example: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
              outputs: Mapping[str, Any], diagnostics: Mapping[str, Any], *, only: Property | None = None) -> None:
        """Check one property on the example (`only`: that one, as a replay asks): the first of `open` that
        the example reaches. A failure is recorded, never raised; the cell's verdict reads the records."""
        for name in [only] if only is not None else self.open():
            try:
                if name in SEQUENCE:
                    self._sequence(example, weights, inputs, outputs, diagnostics, forced=only)
                else:
                    self._change(name, example, weights, inputs, outputs, diagnostics)
            except NotReached as e:
                self.records[name].not_reached[str(e)] = self.records[name].not_reached.get(str(e), 0) + 1
                continue
            except PropertyFailure as e:
                self.fail(e)
            return

    def fail(self, e: PropertyFailure) -> None:
        record = self.records[e.name]
        if record.status == Held.FAILED:
            return
        record.status, record.reason, record.counterexample = Held.FAILED, e.reason, e.example
        runner = self.runner
        from conformance.engine import repro_command

        record.repro = repro_command(self.spec.component, runner.impl.label, runner.dtype, runner.device,
                                     e.example, runner.mode)

    def held(self, name: Property, ratio: float, exact: bool) -> None:
        record = self.records[name]
        record.examples += 1
        record.max_ratio = max(record.max_ratio, ratio)
        record.exact = record.exact and exact
        if record.status == Held.NOT_CHECKED:
            record.status = Held.HELD

    # --- the checks ---------------------------------------------------------------------------

    def _budget(self, example: Mapping[str, Any], diagnostics: Mapping[str, Any], name: str,
                shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
        """An output's budget at the example: (per-element scale broadcast to `shape`, allowed eps)."""
        env = {**example, **diagnostics, **dtype_constants(self.runner.dtype)}
        scale_expr, growth_expr = self.spec.budgets[name]
        scale = np.broadcast_to(np.asarray(evaluate(scale_expr, env), dtype=np.float64), shape)
        return scale, tolerances.K[self.runner.dtype] * float(evaluate(growth_expr, env))

    def _same(self, name: Property, got: Mapping[str, Any], want: Mapping[str, np.ndarray],
              scales: Mapping[str, np.ndarray], allowed: Mapping[str, float],
              compared: Mapping[str, np.ndarray], what: str, replay: Mapping[str, Any],
              margins: Mapping[str, np.ndarray] | None = None) -> tuple[float, bool]:
        """The candidate's outputs `got` equal `want` where `compared` holds: float outputs within the budget
        (`scales`, `allowed`), the others exactly (a greedy output up to its first near tie, `margins`).
        Returns (largest difference / budget, whether bit-identical); PropertyFailure otherwise."""
        worst, exact = 0.0, True
        dtype = self.runner.dtype
        for out in self.spec.outputs.values():
            if out.name not in compared or out.name not in self.runner.outputs:
                continue
            if out.name not in got:
                raise PropertyFailure(name, f"{what}: output {out.name!r} missing", replay)
            value = np.asarray(got[out.name])
            expected = want[out.name]
            if value.shape != expected.shape:
                raise PropertyFailure(name, f"{what}: output {out.name!r} has shape {value.shape}, expected "
                                            f"{expected.shape}", replay)
            where = np.broadcast_to(np.asarray(compared[out.name], dtype=bool), value.shape)
            if out.dtype != "float":
                if margins is not None and out.name in margins:
                    where = where & margins[out.name]
                differs = where & (value != expected)
                if differs.any():
                    idx = tuple(int(i) for i in np.argwhere(differs)[0])
                    raise PropertyFailure(name, f"{what}: output {out.name!r} changed at index {idx}: "
                                                f"{expected[idx]} became {value[idx]}", replay)
                continue
            with np.errstate(invalid="ignore"):
                same = (value == expected) | (np.isnan(value.astype(np.float64)) & np.isnan(expected.astype(np.float64)))
            exact = exact and bool(same[where].all())
            ratios = tolerances.errors_in_eps(value, expected, dtype, scales[out.name]) / allowed[out.name]
            ratios = np.where(where, ratios, 0.0)
            if not np.all(np.nan_to_num(ratios, nan=np.inf) <= 1.0):
                key = np.where(np.isnan(ratios), np.inf, ratios)
                idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(key)), key.shape))
                raise PropertyFailure(
                    name, f"{what}: output {out.name!r} changed by {float(key[idx]) * allowed[out.name]:.4g} eps, "
                          f"budget {allowed[out.name]:.4g} eps (at index {idx}: {expected[idx]!r} became "
                          f"{value[idx]!r})", replay)
            worst = max(worst, float(np.max(ratios, initial=0.0)))
        return worst, exact

    def _change(self, name: Property, example: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                inputs: Mapping[str, Any], outputs: Mapping[str, Any], diagnostics: Mapping[str, Any]) -> None:
        """A property of the change kind: the call on the changed inputs against the example's own call."""
        runner = self.runner
        for factor in FACTORS:
            draw = Draw(self.spec, example, inputs, runner.dtype, factor)
            changes = changes_for(self.spec, name, draw)
            if not changes:
                raise NotReached("the example does not reach it")
            if all(runner.in_range(example, weights, change.inputs) for change in changes):
                break
        else:
            raise NotReached("its changed inputs are outside the dtype's range")
        if runner.pooled:
            changes = [c for c in changes if runner.shapes_key(example, c.inputs) in runner.shapes_seen]
            if not changes:
                raise NotReached("its changed inputs have a shape this cell has not compiled")
        worst, exact = 0.0, True
        for change in changes:
            ratio, same = self._one_change(name, example, weights, change, outputs, diagnostics)
            worst, exact = max(worst, ratio), exact and same
        self.held(name, worst, exact)

    def _one_change(self, name: Property, example: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                    change: Change, outputs: Mapping[str, Any], diagnostics: Mapping[str, Any]) -> tuple[float, bool]:
        runner = self.runner
        replay = {**example, "property": name.value}
        got = runner.call_again(example, weights, change.inputs)
        if isinstance(got, str):
            raise PropertyFailure(name, f"{change.what}: the call raised {got}", replay)
        want, scales, allowed, compared = {}, {}, {}, {}
        for out in self.spec.outputs.values():
            if out.name not in change.compared or out.name not in outputs:
                continue
            first = np.asarray(outputs[out.name])
            want[out.name] = change.expect(out.name, first)
            compared[out.name] = change.compared[out.name]
            if out.dtype == "float":
                scale, allowed[out.name] = self._budget(example, diagnostics, out.name, first.shape)
                scales[out.name] = change.expect(out.name, np.asarray(scale))
        margins = self._margins(example, diagnostics, change.expect)
        return self._same(name, got, want, scales, allowed, compared, change.what, replay, margins)

    def _margins(self, example: Mapping[str, Any], diagnostics: Mapping[str, Any],
                 expect: Callable[[str, np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        """For a greedy output: the steps before its first near tie (engine.check_tokens' rule), moved as
        `expect` moves the output."""
        found = {}
        for out in self.spec.outputs.values():
            if not out.compare.startswith("greedy("):
                continue
            logits = out.compare[len("greedy("):-1]
            scale, allowed = self._budget(example, diagnostics, logits, ())
            absolute = allowed * tolerances.EPS[self.runner.dtype] * float(np.max(scale, initial=0.0))
            margin = np.asarray(diagnostics[f"{out.name}_margin"])
            before = np.cumsum(margin <= 2 * absolute, axis=-1) == 0
            found[out.name] = expect(out.name, before)
        return found

    def _sequence(self, example: Mapping[str, Any], weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any],
                  outputs: Mapping[str, Any], diagnostics: Mapping[str, Any], forced: Property | None) -> None:
        """Statelessness and determinism, on one instance: the same call again (determinism; beyond the
        budget, a call that changed the instance), a call on inputs of another shape and one on other inputs
        of the same shape without reloading the weights, then other weights loaded and the example's inputs
        again; each judged against the reference, and no call may change the arrays it was given."""
        runner = self.runner
        then = dict(example.get("then") or runner.other_shape(example) or {})
        if not then:
            raise NotReached("no other shape to call it on")
        replay = {**{k: v for k, v in example.items() if k != "then"}, "property": Property.STATELESSNESS.value,
                  "then": then}
        # a replay of determinism failing repeats the call: a difference that showed once may need a few tries
        sequence = runner.sequence(example, weights, inputs, then,
                                   repeats=REPLAY_REPEATS if forced == Property.DETERMINISM else SEARCH_REPEATS)
        try:
            first, again = next(sequence), next(sequence)
        except _Raised as e:
            raise PropertyFailure(Property.STATELESSNESS, f"the call sequence raised {e}", replay) from None
        shape = {out: np.asarray(v).shape for out, v in first.items()}
        scales, allowed = {}, {}
        for out in self.spec.outputs.values():
            if out.dtype == "float" and out.name in first:
                scales[out.name], allowed[out.name] = self._budget(example, diagnostics, out.name, shape[out.name])
        compared = {name: np.ones((), dtype=bool) for name in first}
        identity = lambda name, array: array  # noqa: E731
        margins = self._margins(example, diagnostics, identity)
        # determinism: the same call twice
        same_bits = all(np.array_equal(np.asarray(first[k]), np.asarray(again[k]), equal_nan=True) for k in first)
        if Property.DETERMINISM in self.records and forced in (None, Property.DETERMINISM):
            record = self.records[Property.DETERMINISM]
            if same_bits:
                self.held(Property.DETERMINISM, 0.0, True)
            else:
                ratio = self._spread(first, again, scales, allowed)
                record.spread = max(record.spread or 0.0, ratio)
                if ratio <= 1.0 and runner.device != "cpu":
                    record.examples += 1
                    record.status, record.exact = Held.NON_DETERMINISTIC, False
                elif ratio <= 1.0:
                    self.fail(PropertyFailure(Property.DETERMINISM,
                                              f"the same call twice on {runner.device} gave outputs that differ "
                                              f"by up to {ratio:.3g} of the budget (on the CPU they must be "
                                              f"bit-identical)", {**replay, "property": "determinism"}))
        if Property.STATELESSNESS not in self.records or forced == Property.DETERMINISM:
            return
        what = "the same call again on the same instance"
        ratio, exact = self._same(Property.STATELESSNESS, again, first, scales, allowed, compared, what, replay,
                                  margins)
        try:
            for step in sequence:  # the later calls, each judged against the reference
                if step is not None:
                    raise PropertyFailure(Property.STATELESSNESS, step, replay)
        except _Raised as e:
            raise PropertyFailure(Property.STATELESSNESS, f"the call sequence raised {e}", replay) from None
        self.held(Property.STATELESSNESS, ratio, exact)

    def _spread(self, first: Mapping[str, Any], again: Mapping[str, Any], scales: Mapping[str, np.ndarray],
                allowed: Mapping[str, float]) -> float:
        """The largest difference of two calls' outputs over the budget: infinite where an integer or bool
        output differs, which no rounding explains."""
        if any(not np.array_equal(np.asarray(first[k]), np.asarray(again[k])) for k in first if k not in scales):
            return float("inf")
        spread = 0.0
        for name, scale in scales.items():
            ratios = tolerances.errors_in_eps(np.asarray(again[name]), np.asarray(first[name]), self.runner.dtype,
                                              scale) / allowed[name]
            spread = max(spread, float(np.max(np.nan_to_num(ratios, nan=np.inf), initial=0.0)))
        return spread

    def to_json(self) -> dict[str, Any]:
        return {name.value: record.to_json() for name, record in self.records.items()}


class _Raised(Exception):
    """A call of the sequence raised: its description."""


def parse(spec: Spec, example: Mapping[str, Any]) -> Property | None:
    """The property a replayed example names (`property`), checked against the spec's table."""
    name = example.get("property")
    if name is None:
        return None
    if name not in spec.properties:
        raise ValueError(f"property {json.dumps(name)} is not one of {spec.component}'s: "
                         f"{', '.join(spec.properties) or 'it has none'}")
    return Property(name)
