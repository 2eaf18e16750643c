"""Every ledger entry bounds how far its deviation may go (spec/deviations.toml, `bound`).

For each entry of the repository's ledger, an implementation that deviates
exactly as the entry says (the reference, with the entry's deviation made:
NaN across the condition's region, the arithmetic of a coarser dtype, errors
of half the eps allowed, or the outputs of the entry's model of it) is a
known deviation under that entry; the same with a second, larger error (half
the output's scale added to one element outside the region) is
non-conformant, and its reason names the entry and the excess.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import pytest

from conformance import conditions, deviations, generate, tolerances
from conformance.engine import reference_forward, run_cell
from conformance.tolerances import dtype_constants
from conformance.spec import evaluate, find_spec_dir, load_spec
from conformance.registry import Registered
from conformance.vocabulary import SHIPPED, numpy_dtype

LEDGER = deviations.load()


class AsRecorded:
    """The reference with one entry's deviation made, and with `second` a larger error added besides."""

    framework = "numpy"

    def __init__(self, entry: deviations.Deviation, second: bool):
        self.entry, self.second = entry, second
        self.example: dict[str, Any] = {}  # the one example the cell replays, for the condition's region
        self.spec = load_spec(find_spec_dir() / f"{entry.component}.md")
        self.dtypes = entry.scope.get("dtypes", ("float32",))

    def build(self, config, *, dtype, device):
        recorded = self

        class Instance:
            def load(self, weights):
                self.weights = weights

            def __call__(self, inputs):
                return recorded.forward(config, self.weights, inputs, dtype)

        return Instance()

    def forward(self, config: Mapping[str, Any], weights: dict, inputs: dict, dtype: str) -> dict[str, np.ndarray]:
        entry, kind = self.entry, self.entry.bound.kind
        wide = lambda arrays: generate.cast(arrays, "float64")  # noqa: E731
        diagnostics: dict[str, float] = {}
        reference = reference_forward(entry.component)
        outputs = reference(config, wide(weights), wide(inputs), diagnostics=diagnostics)
        region = {}
        if kind == deviations.BoundKind.REGION:  # NaN across the region
            region = conditions.predicate(entry.component, entry.condition)(self.example, inputs)
            outputs = {k: np.where(region[k], np.nan, v) if k in region else v for k, v in outputs.items()}
        elif kind == deviations.BoundKind.DTYPE:  # the whole computation in the coarser dtype
            coarse = entry.bound.value
            outputs = reference(config, generate.cast(weights, coarse), generate.cast(inputs, coarse))
        elif kind == deviations.BoundKind.EPS:  # every element off by half the eps allowed at its own scale
            for name, (scale, _) in self.spec.budgets.items():
                size = np.asarray(evaluate(scale, {**config, **diagnostics, **dtype_constants(dtype)}))
                outputs[name] = outputs[name] + 0.5 * entry.bound.value * tolerances.EPS[dtype] * size
        else:  # like NAME: the entry's model of the deviation
            outputs = conditions.reference_function(entry.component, entry.bound.value)(config, wide(weights),
                                                                                        wide(inputs))
        outputs = {k: np.asarray(v).astype(numpy_dtype(dtype)) if np.asarray(v).dtype.kind == "f" else v
                   for k, v in outputs.items()}
        if self.second:  # half the output's scale added to its first element outside the region
            for name, (scale, _) in self.spec.budgets.items():
                size = np.max(evaluate(scale, {**config, **diagnostics, **dtype_constants(dtype)}))
                where = np.broadcast_to(region.get(name, False), outputs[name].shape)
                first = np.flatnonzero(~where)[0]
                outputs[name].flat[first] += 0.5 * size
        return outputs


def _example(entry: deviations.Deviation) -> dict[str, Any]:
    """A drawn example the entry's condition holds for, with a float output of it outside its region, and
    where the entry's model of the deviation (a `like` bound) differs from the reference."""
    spec = load_spec(find_spec_dir() / f"{entry.component}.md")
    # plain magnitudes, where the budgets are tight enough for the deviation and the second error to show;
    # others only where the entry's model of the deviation needs them to differ from the reference (large
    # scores, for a finite mask fill)
    for plain in (True, False) if entry.bound.kind == deviations.BoundKind.LIKE else (True,):
        found = _drawn(spec, entry, plain)
        if found is not None:
            return found
    raise AssertionError(f"no drawn example meets {entry.condition}")


def _drawn(spec, entry: deviations.Deviation, plain: bool) -> dict[str, Any] | None:
    """_example's search over drawn examples, with the magnitudes' first values only (`plain`) or all."""
    rng = np.random.default_rng(0)
    domains = {**{name: tuple(p.domain) for name, p in spec.params.items()},
               **{name: domain[:1] if plain else domain for name, domain in spec.magnitudes().items()}}
    for _ in range(2000):
        example = {name: list(domain)[int(rng.integers(len(domain)))] for name, domain in domains.items()}
        example.update(seed=int(rng.integers(2**32)))
        weights, inputs = generate.make_arrays(spec, example)
        if not conditions.holds(entry.component, entry.condition, example, inputs):
            continue
        if entry.bound.kind == deviations.BoundKind.LIKE:
            model = conditions.reference_function(entry.component, entry.bound.value)(example, weights, inputs)
            ours = reference_forward(entry.component)(example, weights, inputs)
            if all(np.allclose(model[k], ours[k], rtol=1e-6, atol=0) for k in spec.budgets):
                continue
        if entry.bound.kind == deviations.BoundKind.REGION:
            region = conditions.predicate(entry.component, entry.condition)(example, inputs)
            shapes = {o.name: spec.shape_of(o, example) for o in spec.outputs.values()}
            if any(np.broadcast_to(r, shapes[k]).all() for k, r in region.items()):  # some output wholly inside
                continue
        return example
    return None


def _cell(entry: deviations.Deviation, second: bool):
    entry = dataclasses.replace(entry, scope={k: v for k, v in entry.scope.items() if k == "dtypes"})
    recorded = AsRecorded(entry, second)
    impl = Registered(entry.component, entry.implementation, "numpy", "tests/test_ledger_bounds.py:AsRecorded",
                      SHIPPED, recorded)
    spec = load_spec(find_spec_dir() / f"{entry.component}.md")
    recorded.example = _example(entry)
    return run_cell(spec, impl, recorded.dtypes[0], "cpu", example=recorded.example, ledger=[entry])


@pytest.mark.parametrize("entry", LEDGER, ids=[d.id for d in LEDGER])
def test_deviating_as_the_entry_says_is_a_known_deviation(entry):
    cell = _cell(entry, second=False)
    assert (cell.verdict, cell.deviation) == ("known-deviation", entry.id), cell.reason


@pytest.mark.parametrize("entry", LEDGER, ids=[d.id for d in LEDGER])
def test_a_second_larger_error_is_beyond_the_bound(entry):
    cell = _cell(entry, second=True)
    assert cell.verdict == "non-conformant", cell.reason
    assert f"beyond ledger entry {entry.id!r} (bound: {entry.bound.text})" in cell.reason, cell.reason
    assert "differs from the reference by" in cell.reason, cell.reason
