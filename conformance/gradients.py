"""Gradient conformance: an implementation's vector-Jacobian products against the reference's backward pass.

A spec's `gradient` table lists what its component's backward pass gives
(spec/README.md, "Gradients"). An implementation that offers
`vjp(inputs, cotangents)` on its instances has its gradients checked on one
example in `EVERY` of those that pass the reference comparison (the first of
them included), on the same instance with the same weights; where each new
shape compiles (the compiled mode, Keras on JAX), only on examples of the
first `POOLED_SHAPES` shapes it checked, since differentiating a compiled
function compiles it again for each shape (15-40 s apiece for torch.compile
on a CPU): cotangents are drawn for the float outputs
it returns (standard normal, from the example's seed, rounded to the dtype),
and each gradient is compared with the reference's as outputs are, within
`K[dtype]` times its bound. A failure is recorded with its example and
`reproduce:` line (whose `--example` carries `"gradients": true`) and its
arrays (the cotangents, the candidate's gradients and the reference's, in
conformance/evidence.py's bounded format), and ends the cell's gradient
checks; the forward search goes on. The cell's gradient verdict is apart from
its forward verdict: `unsupported` where the implementation gives no `vjp`.

An example whose reference gradients, or their bounds, leave the dtype's
range (a value above its largest number over `engine.RANGE_HEADROOM`, or a
bound that overflows: a layer norm over values far from their mean in
bfloat16, whose gradients no implementation in that dtype can give to any
accuracy) is skipped for the gradients, counted with its reason, and the
next passing example is checked in its place.

Ledger entries whose `parts` list "gradients" (conformance/deviations.py)
cover the gradient checks of their cells: an example whose gradients go past
their budgets but within a covering entry's bound is a known deviation (the
cell's gradients `known-deviation`, naming the entry), one beyond every bound
fails and names them, and an entry that covered compared examples of which
none deviated is stale: the gradients are non-conformant.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from conformance import deviations, evidence, generate, tolerances
from conformance.spec import Spec
from conformance.vocabulary import Held, Verdict, numpy_dtype

if TYPE_CHECKING:
    from conformance.engine import Runner

#: One example in this many, of those that pass the reference comparison, also checks the gradients.
EVERY = 4
#: Where shapes compile (`Runner.pooled`), the shapes whose examples check the gradients: the first met.
POOLED_SHAPES = 1
#: The dtypes whose gradient budgets have been calibrated (spec/README.md, "Gradients"); in the others a cell's
#: gradients are unsupported, with the reason, until they are.
DTYPES = ("float64", "float32", "float16", "bfloat16")
#: The key a replayed example carries to check its gradients whatever `EVERY` says.
REPLAY_KEY = "gradients"


class GradientSkip(Exception):
    """An example whose gradients cannot be judged in the cell's dtype (outside its range): skipped."""


class GradientFailure(Exception):
    """A gradient beyond its budget (or missing, misshapen, of another dtype, not finite) on one example."""

    def __init__(self, reason: str, sections: tuple[str, ...], gradient: str, differs: bool = False):
        super().__init__(reason)
        self.reason, self.sections, self.gradient = reason, sections, gradient
        self.differs = differs  # a value beyond its budget, which a ledger bound may hold (not a shape or dtype)


@dataclass
class GradientRecord:
    """A cell's gradients, as the results file holds them."""

    # conformant, known-deviation (as a ledger entry records for the gradients), non-conformant, unsupported
    # (no vjp, or no gradient table), or not-checked (no example passed the reference comparison to start from)
    verdict: str = Held.NOT_CHECKED.value
    examples: int = 0  # examples whose gradients were compared
    skipped: int = 0  # examples due for the gradients but outside the dtype's range for them
    skip_reason: str | None = None  # the first such example's
    known_deviations: int = 0  # of them, those that deviated within a covering ledger entry's bound
    deviation: str | None = None  # that entry's id (the first, where several held one)
    max_error: dict[str, float] = field(default_factory=dict)  # eps units, per gradient
    ratio: dict[str, float] = field(default_factory=dict)  # per gradient, the largest error / budget
    max_ratio: float | None = None
    reason: str | None = None
    sections: list[str] = field(default_factory=list)
    counterexample: dict[str, Any] | None = None
    repro: str | None = None
    # a failure's arrays: cotangents, the candidate's gradients, the reference's (evidence.keep_gradients)
    evidence: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def template(spec: Spec, name: str) -> str:
    """The gradient table's row for a concrete name: `W_q_1` is the row `W_q_{l}`."""
    if name in spec.gradients:
        return name
    for row in spec.gradients:
        if "{" in row and name.startswith(row.split("{")[0]) and name[len(row.split("{")[0]):].isdigit():
            return row
    return name


def cotangents_for(spec: Spec, example: Mapping[str, Any], outputs: Mapping[str, Any], names: tuple[str, ...],
                   dtype: str) -> dict[str, np.ndarray]:
    """Standard normal cotangents of the float outputs in `names`, of their shapes in `outputs`, drawn from the
    example's seed and rounded to `dtype`."""
    rng = np.random.default_rng([int(example.get("seed", 0)), 0x6772])
    return {name: rng.normal(size=np.shape(outputs[name])).astype(numpy_dtype(dtype))
            for name in names if spec.outputs[name].dtype == "float"}


class GradientChecks:
    """The gradient checks of one cell (`Runner`'s implementation, dtype and device)."""

    def __init__(self, runner: "Runner"):
        self.runner, self.spec = runner, runner.spec
        self.record = GradientRecord()
        self.passed = 0  # examples that passed the reference comparison, of which one in EVERY checks
        self.owed = False  # a due example was skipped: the next passing one checks in its place
        self.shapes: set[tuple] = set()  # where shapes compile: those whose examples check the gradients
        self.reference = importlib.import_module(f"impls.numpy.{self.spec.component}") if self.spec.gradients else None
        self.offered: bool | None = None  # whether the instances give vjp, once one has been seen
        self.done = False
        self.arrays: dict[str, Any] = {}  # the example being compared: cotangents, gradients, reference
        self.ledger = runner.gradient_ledger  # entries that cover the cell's gradients
        self.covered: dict[str, Any] = {}  # entry id -> entry, for those that covered a compared example
        self.deviated: dict[str, int] = {}  # entry id -> the compared examples that deviated within its bound

    def due(self, example: Mapping[str, Any]) -> bool:
        """Whether this passing example checks the gradients: a replay that asks, or one in EVERY."""
        if self.reference is None or self.done or self.offered is False or self.runner.dtype not in DTYPES:
            return False
        if example.get(REPLAY_KEY):
            return True
        if self.runner.pooled:
            shapes = self.runner.shapes_key(example, self.runner.last["inputs"])
            if shapes not in self.shapes and len(self.shapes) >= POOLED_SHAPES:
                return False
        self.passed += 1
        if (self.passed - 1) % EVERY and not self.owed:
            return False
        self.owed = False
        if self.runner.pooled:
            self.shapes.add(shapes)
        return True

    def check(self, example: Mapping[str, Any], instance: Any, last: Mapping[str, Any], repro: str) -> None:
        """The gradients of `instance` (loaded with the example's weights, just called on its inputs) against
        the reference's; a failure ends the cell's gradient checks."""
        vjp = getattr(instance, "vjp", None)
        self.offered = callable(vjp)
        if not self.offered:
            self.record.verdict = Verdict.UNSUPPORTED.value
            self.record.reason = f"{self.runner.impl.label} gives no vjp (impls/__init__.py)"
            return
        try:
            self._compare(example, vjp, last)
        except NotImplementedError as e:  # an instance that has vjp but cannot differentiate this layer
            self.offered = False
            self.record.verdict = Verdict.UNSUPPORTED.value
            self.record.reason = f"{self.runner.impl.label}'s vjp: {e}"
            return
        except GradientSkip as e:
            self.owed = True
            self.record.skipped += 1
            self.record.skip_reason = self.record.skip_reason or str(e)
        except GradientFailure as e:
            self.done = True
            record = self.record
            record.verdict, record.reason = Verdict.NON_CONFORMANT.value, e.reason
            record.sections = [f"{self.spec.component} §{s}" for s in e.sections]
            record.counterexample = {**example, REPLAY_KEY: True}
            record.repro = repro
            record.evidence = evidence.keep_gradients(self.arrays, self.spec, e.gradient or None)

    def _compare(self, example: Mapping[str, Any], vjp: Any, last: Mapping[str, Any]) -> None:
        runner, spec, dtype = self.runner, self.spec, self.runner.dtype
        weights, inputs = last["weights"], last["inputs"]  # as the candidate received them, in `dtype`
        outputs = last["reference"]
        cotangents = cotangents_for(spec, example, outputs, runner.outputs, dtype)
        config = generate.layer_config(spec, example)
        as64 = lambda arrays: generate.cast(arrays, "float64")
        everything = {n: np.zeros(np.shape(outputs[n])) for n in spec.outputs if spec.outputs[n].dtype == "float"}
        with np.errstate(over="ignore", invalid="ignore"):  # a bound that overflows is skipped (in_range)
            reference = self.reference.backward(config, as64(weights), as64(inputs),
                                                {**everything, **as64(cotangents)}, eps=tolerances.EPS[dtype])
        self.in_range(reference, dtype)
        self.arrays = {"cotangents": cotangents, "gradients": None,
                       "reference": {name: want.value for name, want in reference.items()}}
        try:
            # one per output the implementation returns, in its order; None for an integer output
            got = vjp({k: None if v is None else v.copy() for k, v in inputs.items()},
                      {n: cotangents[n].copy() if n in cotangents else None for n in runner.outputs})
        except NotImplementedError:
            raise
        except Exception as e:
            raise GradientFailure(f"vjp raised {type(e).__name__}: {e}", (), "") from None
        if self.record.verdict == Held.NOT_CHECKED.value:
            self.record.verdict = Verdict.CONFORMANT.value
        self.arrays["gradients"] = got
        covering = [d for d in self.ledger if d.matches(example, inputs)]
        for d in covering:
            self.covered.setdefault(d.id, d)
        try:
            worst, errors = self._judge(reference, got, dtype)
        except GradientFailure as e:
            if not covering or not e.differs:  # a bound holds values, not shapes or dtypes
                raise
            for entries in deviations.tries(covering):
                measure, eps = deviations.widest(entries, dtype)
                with np.errstate(over="ignore", invalid="ignore"):
                    bounded = reference if measure == dtype else self.reference.backward(
                        config, as64(weights), as64(inputs), {**everything, **as64(cotangents)},
                        eps=tolerances.EPS[measure])
                try:
                    self._judge(bounded, got, dtype, measure=measure, allowed_eps=eps)
                except GradientFailure:
                    continue
                for d in entries:
                    self.deviated[d.id] = self.deviated.get(d.id, 0) + 1
                self.record.known_deviations += 1
                self.record.deviation = self.record.deviation or entries[0].id
                self.record.examples += 1
                return
            raise GradientFailure(deviations.beyond(covering, e.reason), e.sections, e.gradient) from None
        for name, (error, ratio) in errors.items():
            self.record.max_error[name] = max(self.record.max_error.get(name, 0.0), error)
            self.record.ratio[name] = max(self.record.ratio.get(name, 0.0), ratio)
        self.record.examples += 1
        self.record.max_ratio = max(self.record.max_ratio or 0.0, worst)

    @staticmethod
    def in_range(reference: Mapping[str, Any], dtype: str) -> None:
        """GradientSkip where a reference gradient or its bound leaves `dtype`'s range (the module's doc)."""
        from conformance.engine import RANGE_HEADROOM

        limit = float(tolerances.finfo(dtype).max) / RANGE_HEADROOM
        for name, want in reference.items():
            value, bound = np.abs(want.value), want.bound * tolerances.EPS[dtype]
            if value.size and not np.max(value) <= limit:
                raise GradientSkip(f"example outside {dtype}'s range for the gradients: {name} reaches "
                                   f"{np.max(value):.3g}, above {limit:.3g} (its largest number / "
                                   f"{RANGE_HEADROOM:g})")
            if bound.size and not np.all(np.isfinite(bound)):
                raise GradientSkip(f"example outside {dtype}'s range for the gradients: the error bound of {name} "
                                   f"overflows (no {dtype} arithmetic determines it)")

    def _judge(self, reference: Mapping[str, Any], got: Mapping[str, Any], dtype: str, *,
               measure: str | None = None, allowed_eps: float | None = None) -> tuple[float, dict]:
        """Each gradient against the reference's within its budget: the worst error / budget and, per
        gradient, (error in eps, error / budget); GradientFailure for the first beyond. A ledger bound may
        measure in another dtype's eps (`measure`, with `reference` computed in it) or allow a number of eps
        in place of the budget (`allowed_eps`)."""
        spec = self.spec
        measure = measure or dtype
        tiny = tolerances.dtype_constants(measure)["tiny"] / tolerances.EPS[measure]
        worst, errors = 0.0, {}
        for name, want in reference.items():
            sections = spec.gradients[template(spec, name)].sections
            if name not in got or got[name] is None:
                raise GradientFailure(f"gradient {name!r} missing; vjp gave {sorted(got)}", sections, name)
            value = np.asarray(got[name])
            if value.shape != want.value.shape:
                raise GradientFailure(f"gradient {name!r} has shape {value.shape}, expected {want.value.shape}",
                                      sections, name)
            if value.dtype != numpy_dtype(dtype):
                raise GradientFailure(f"gradient {name!r} has dtype {value.dtype}, expected {dtype}", sections, name)
            ratios = tolerances.errors_in_eps(value, want.value, measure, want.bound + tiny)
            error = float(np.max(ratios)) if ratios.size else 0.0
            allowed = max(tolerances.K[measure], allowed_eps or 0.0)
            if not error <= allowed:
                key = np.where(np.isnan(ratios), np.inf, ratios)
                at = tuple(int(i) for i in np.unravel_index(int(np.argmax(key)), key.shape))
                raise GradientFailure(
                    f"gradient {name!r} differs from the reference by {error:.4g} eps"
                    f"{'' if measure == dtype else f' of {measure}'} of its bound, budget "
                    f"{allowed:.4g} (at index {at}: got {value[at]!r}, reference {want.value[at]!r})",
                    sections, name, differs=True)
            errors[name] = (error, error / allowed)
            worst = max(worst, error / allowed)
        return worst, errors

    def to_json(self) -> dict[str, Any]:
        if self.reference is not None and self.runner.dtype not in DTYPES:
            self.record.verdict = Verdict.UNSUPPORTED.value
            self.record.reason = (f"gradient budgets are calibrated in {' and '.join(DTYPES)} so far; "
                                  f"{self.runner.dtype}'s are not yet")
        elif self.reference is None:
            self.record.verdict = Verdict.UNSUPPORTED.value
            self.record.reason = f"spec/{self.spec.component}.md has no gradient table yet"
        elif self.record.verdict == Held.NOT_CHECKED.value and self.record.skipped:
            self.record.reason = f"every example due for the gradients was skipped: {self.record.skip_reason}"
        elif self.record.verdict == Held.NOT_CHECKED.value:
            self.record.reason = "no example passed the reference comparison to start from"
        elif self.record.verdict == Verdict.CONFORMANT.value:
            self._ledger_verdict()
        return self.record.to_json()

    def _ledger_verdict(self) -> None:
        """A conformant cell's gradients under the ledger: non-conformant where an entry that covered compared
        examples saw none deviate (stale), known-deviation where some deviated within an entry's bound."""
        record = self.record
        stale = [d for i, d in self.covered.items() if not self.deviated.get(i)]
        if stale:
            d = stale[0]
            record.verdict = Verdict.NON_CONFORMANT.value
            record.reason = (f"ledger entry {d.id!r} is stale for the gradients: {self.runner.impl.label}'s "
                             f"gradients followed the spec on every compared example of this cell where "
                             f"{d.condition} ({d.explanation})")
            record.sections = [f"{self.spec.component} §{s}" for s in d.sections]
        elif record.known_deviations:
            entries = [self.covered[i] for i in self.deviated]
            record.verdict = Verdict.KNOWN_DEVIATION.value
            record.reason = "ledger " + ("entry " if len(entries) == 1 else "entries ") + " ".join(
                f"{d.id!r} ({self.deviated[d.id]} of {record.examples} compared examples, within its bound "
                f"{d.bound.text}): {d.explanation}" for d in entries)
            record.sections = list(dict.fromkeys(f"{self.spec.component} §{s}" for d in entries for s in d.sections))
