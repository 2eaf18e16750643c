"""Gradient conformance: an implementation's vector-Jacobian products against the reference's backward pass.

A spec's `gradient` table lists what its component's backward pass gives
(spec/README.md, "Gradients"). An implementation that offers
`vjp(inputs, cotangents)` on its instances has its gradients checked on one
example in `EVERY` of those that pass the reference comparison, on the same
instance with the same weights: cotangents are drawn for the float outputs
it returns (standard normal, from the example's seed, rounded to the dtype),
and each gradient is compared with the reference's as outputs are, within
`K[dtype]` times its bound. A failure is recorded with its example and
`reproduce:` line (whose `--example` carries `"gradients": true`) and its
arrays (the cotangents, the candidate's gradients and the reference's, in
conformance/evidence.py's bounded format), and ends the cell's gradient
checks; the forward search goes on. The cell's gradient verdict is apart from
its forward verdict: `unsupported` where the implementation gives no `vjp`.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from conformance import evidence, generate, tolerances
from conformance.spec import Spec
from conformance.vocabulary import Held, Verdict, numpy_dtype

if TYPE_CHECKING:
    from conformance.engine import Runner

#: One example in this many, of those that pass the reference comparison, also checks the gradients.
EVERY = 2
#: The dtypes whose gradient budgets have been calibrated (spec/README.md, "Gradients"); in the others a cell's
#: gradients are unsupported, with the reason, until they are.
DTYPES = ("float64", "float32")
#: The key a replayed example carries to check its gradients whatever `EVERY` says.
REPLAY_KEY = "gradients"


class GradientFailure(Exception):
    """A gradient beyond its budget (or missing, misshapen, of another dtype, not finite) on one example."""

    def __init__(self, reason: str, sections: tuple[str, ...], gradient: str):
        super().__init__(reason)
        self.reason, self.sections, self.gradient = reason, sections, gradient


@dataclass
class GradientRecord:
    """A cell's gradients, as the results file holds them."""

    # conformant, non-conformant, unsupported (no vjp, or no gradient table), or not-checked (no example
    # passed the reference comparison to start from)
    verdict: str = Held.NOT_CHECKED.value
    examples: int = 0  # examples whose gradients were compared
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
        self.reference = importlib.import_module(f"impls.numpy.{self.spec.component}") if self.spec.gradients else None
        self.offered: bool | None = None  # whether the instances give vjp, once one has been seen
        self.done = False
        self.arrays: dict[str, Any] = {}  # the example being compared: cotangents, gradients, reference

    def due(self, example: Mapping[str, Any]) -> bool:
        """Whether this passing example checks the gradients: a replay that asks, or one in EVERY."""
        if self.reference is None or self.done or self.offered is False or self.runner.dtype not in DTYPES:
            return False
        if example.get(REPLAY_KEY):
            return True
        self.passed += 1
        return (self.passed - 1) % EVERY == 0

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
        reference = self.reference.backward(config, as64(weights), as64(inputs), {**everything, **as64(cotangents)},
                                            eps=tolerances.EPS[dtype])
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
        tiny = tolerances.dtype_constants(dtype)["tiny"] / tolerances.EPS[dtype]
        worst = 0.0
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
            errors = tolerances.errors_in_eps(value, want.value, dtype, want.bound + tiny)
            error = float(np.max(errors)) if errors.size else 0.0
            allowed = tolerances.K[dtype]
            if not error <= allowed:
                key = np.where(np.isnan(errors), np.inf, errors)
                at = tuple(int(i) for i in np.unravel_index(int(np.argmax(key)), key.shape))
                raise GradientFailure(
                    f"gradient {name!r} differs from the reference by {error:.4g} eps of its bound, budget "
                    f"{allowed:.4g} (at index {at}: got {value[at]!r}, reference {want.value[at]!r})",
                    sections, name)
            self.record.max_error[name] = max(self.record.max_error.get(name, 0.0), error)
            self.record.ratio[name] = max(self.record.ratio.get(name, 0.0), error / allowed)
            worst = max(worst, error / allowed)
        self.record.examples += 1
        self.record.max_ratio = max(self.record.max_ratio or 0.0, worst)

    def to_json(self) -> dict[str, Any]:
        if self.reference is not None and self.runner.dtype not in DTYPES:
            self.record.verdict = Verdict.UNSUPPORTED.value
            self.record.reason = (f"gradient budgets are calibrated in {' and '.join(DTYPES)} so far; "
                                  f"{self.runner.dtype}'s are not yet")
        elif self.reference is None:
            self.record.verdict = Verdict.UNSUPPORTED.value
            self.record.reason = f"spec/{self.spec.component}.md has no gradient table yet"
        elif self.record.verdict == Held.NOT_CHECKED.value:
            self.record.reason = "no example passed the reference comparison to start from"
        return self.record.to_json()
