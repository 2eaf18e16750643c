"""The engine: one cell is one implementation of one component on one dtype and device.

For each example hypothesis draws: make arrays -> round them to the dtype ->
run the float64 NumPy reference on the rounded values -> run the candidate ->
check outputs (present, shape, dtype, finite) -> compare each with the
reference against its budget -> record. The CLI, pytest and the results file
are front ends over `run_cell` and `run_matrix`.
"""

from __future__ import annotations

import importlib
import json
import math
import shlex
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, settings, target
from hypothesis import seed as hypothesis_seed

from conformance import generate, tolerances
from conformance.spec import Example, Spec, evaluate
from impls import Registered

VERDICTS = ("conformant", "non-conformant", "error", "unavailable")


class NonConformance(Exception):
    """One example on which a candidate does not follow the spec."""

    def __init__(self, reason: str, sections: tuple[str, ...] = (), output: str | None = None):
        super().__init__(reason)
        self.reason, self.sections, self.output = reason, sections, output


@dataclass
class Outcome:
    """A passing example: per output, the error in eps units and its budget."""

    errors: dict[str, float]
    budgets: dict[str, float]

    @property
    def ratio(self) -> float:
        return max((self.errors[k] / self.budgets[k] for k in self.errors), default=0.0)


@dataclass
class CellResult:
    component: str
    implementation: str
    framework: str
    backend: str | None
    device: str
    dtype: str
    mode: str = "eager"
    verdict: str = "error"
    examples: int = 0
    seconds: float = 0.0
    max_error: dict[str, float] = field(default_factory=dict)  # eps units, per output
    k: float | None = None  # the budget constant of this dtype (conformance/tolerances.py)
    max_ratio: float | None = None  # error / budget, worst over outputs and examples
    p99_ratio: float | None = None
    worst: dict[str, Any] | None = None  # the example with the largest ratio
    reason: str | None = None  # why not conformant, or why it could not run
    sections: list[str] = field(default_factory=list)  # spec sections of the failure
    counterexample: dict[str, Any] | None = None  # minimal failing example after shrinking
    repro: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reference_forward(component: str) -> Callable[..., dict[str, np.ndarray]]:
    return importlib.import_module(f"impls.numpy.{component}").forward


class Runner:
    """Runs examples of one cell, building the candidate once per layer config."""

    def __init__(self, spec: Spec, impl: Registered, dtype: str, device: str):
        self.spec, self.impl, self.dtype, self.device = spec, impl, dtype, device
        self.reference = reference_forward(spec.component)
        self._instances: dict[tuple, Any] = {}

    def instance(self, config: Mapping[str, Any]) -> Any:
        key = tuple(sorted(config.items()))
        if key not in self._instances:
            try:
                self._instances[key] = self.impl.load().build(dict(config), dtype=self.dtype, device=self.device)
            except Exception as e:
                self._instances[key] = NonConformance(f"build raised {_describe_exception(e)}")
        built = self._instances[key]
        if isinstance(built, NonConformance):
            raise built
        return built

    def run(self, example: Mapping[str, Any]) -> Outcome:
        weights, inputs = generate.make_arrays(self.spec, example)
        return self.compare(generate.layer_config(self.spec, example), example, weights, inputs)

    def run_worked(self, worked: Example) -> Outcome:
        weights, inputs = generate.worked_arrays(self.spec, worked.weights, worked.inputs)
        return self.compare(generate.layer_config(self.spec, worked.config), worked.config, weights, inputs)

    def compare(self, config: Mapping[str, Any], example: Mapping[str, Any],
                weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any]) -> Outcome:
        weights, inputs = generate.cast(weights, self.dtype), generate.cast(inputs, self.dtype)
        diagnostics: dict[str, float] = {}
        reference = self.reference(example, generate.cast(weights, "float64"),
                                   generate.cast(inputs, "float64"), diagnostics=diagnostics)
        instance = self.instance(config)
        try:
            instance.load({k: v.copy() for k, v in weights.items()})
            got = instance({k: None if v is None else v.copy() for k, v in inputs.items()})
        except Exception as e:
            raise NonConformance(f"raised {_describe_exception(e)}") from None

        env = {**example, **diagnostics}
        errors, budgets, tolerance = {}, {}, {}
        if not isinstance(got, Mapping):
            raise NonConformance(f"returned {type(got).__name__}, expected a dict of outputs "
                                 f"{', '.join(self.spec.outputs)}", ("4",))
        # float outputs first: a greedy comparison needs its logits' tolerance
        for out in sorted(self.spec.outputs.values(), key=lambda o: o.dtype != "float"):
            name, sections = out.name, out.sections
            if name not in got:
                raise NonConformance(f"output {name!r} missing; returned {sorted(got)}", sections, name)
            try:
                value = np.asarray(got[name])
            except Exception as e:
                raise NonConformance(f"output {name!r} is not array-like: {_describe_exception(e)}", sections, name)
            want = self.spec.shape_of(out, example)
            if value.shape != want:
                raise NonConformance(f"output {name!r} has shape {value.shape}, expected {want}", sections, name)
            if out.dtype in ("int", "bool"):
                if value.dtype.kind not in ("iu" if out.dtype == "int" else "b"):
                    expected = "an integer dtype" if out.dtype == "int" else "bool"
                    raise NonConformance(f"output {name!r} has dtype {value.dtype}, expected {expected}",
                                         sections, name)
                self._compare_tokens(out, value, reference[name], diagnostics, tolerance)
                continue
            if value.dtype != np.dtype(self.dtype):
                raise NonConformance(f"output {name!r} has dtype {value.dtype}, expected {self.dtype}",
                                     sections, name)
            if not np.all(np.isfinite(value)):
                bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
                raise NonConformance(f"output {name!r} has {bad} non-finite values (NaN or Inf) "
                                     f"where the spec says finite", sections, name)
            scale_expr, growth_expr = self.spec.budgets[name]
            scale = float(evaluate(scale_expr, env))
            errors[name] = tolerances.error_in_eps(value, reference[name], self.dtype, scale)
            budgets[name] = tolerances.K[self.dtype] * float(evaluate(growth_expr, env))
            tolerance[name] = budgets[name] * tolerances.EPS[self.dtype] * scale  # the same budget, absolute
            if not errors[name] <= budgets[name]:
                raise NonConformance(
                    f"output {name!r} differs from the reference by {errors[name]:.4g} eps, "
                    f"budget {budgets[name]:.4g} eps ({_worst_element(value, reference[name])})",
                    sections, name)
        return Outcome(errors, budgets)

    def _compare_tokens(self, out, value: np.ndarray, reference: np.ndarray, diagnostics: Mapping[str, Any],
                        tolerance: Mapping[str, float]) -> None:
        """Integer outputs match exactly; a greedy(logits) output only up to each row's first near tie.

        At a step where the reference's best and second-best logits are within twice the
        logits' absolute tolerance, a correct implementation may pick either token, and
        every later step depends on that pick, so the row is compared before it only.
        """
        compared = np.ones(value.shape, dtype=bool)
        if out.compare.startswith("greedy("):
            margin = np.asarray(diagnostics[f"{out.name}_margin"])  # (..., steps)
            near_tie = margin <= 2 * tolerance[out.compare[len("greedy("):-1]]
            compared = np.cumsum(near_tie, axis=-1) == 0
        differs = compared & (value != reference)
        if differs.any():
            idx = tuple(int(i) for i in np.argwhere(differs)[0])
            raise NonConformance(f"output {out.name!r} differs at index {idx}: got {value[idx]}, "
                                 f"reference {reference[idx]}", out.sections, out.name)


def _worst_element(candidate: np.ndarray, reference: np.ndarray) -> str:
    diff = np.abs(candidate.astype(np.float64) - reference)
    idx = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return f"at index {tuple(int(i) for i in idx)}: got {candidate[idx]!r}, reference {reference[idx]!r}"


def _describe_exception(e: BaseException) -> str:
    frame = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def repro_command(component: str, impl: str, dtype: str, device: str, example: Mapping[str, Any] | None) -> str:
    parts = ["conformance", "check", component, "--impl", impl, "--dtype", dtype, "--device", device]
    if example is not None:
        parts += ["--example", json.dumps(dict(example), separators=(",", ":"))]
    return " ".join(shlex.quote(p) for p in parts)


def run_cell(spec: Spec, impl: Registered, dtype: str, device: str, *, max_examples: int = 100,
             seed: int = 0, example: Mapping[str, Any] | None = None, shrink: bool = True) -> CellResult:
    """Run one cell to a verdict. Never raises for anything the implementation does."""
    start = time.perf_counter()
    result = CellResult(spec.component, impl.name if impl.source != "plugin" else impl.target,
                        impl.framework, None, device, dtype)
    try:
        reason = impl.unavailable_reason()
        if reason is None:
            result.backend = impl.backend()
            if dtype not in impl.dtypes:
                reason = f"dtype {dtype} not supported; supported: {', '.join(impl.dtypes)}"
            elif device not in impl.devices():
                reason = f"device {device} not available; available: {', '.join(impl.devices())}"
        if reason is not None:
            result.verdict, result.reason = "unavailable", reason
            return result
        runner = Runner(spec, impl, dtype, device)
        result.k = tolerances.K[dtype]
        _run(runner, result, max_examples=max_examples, seed=seed, example=example, shrink=shrink)
    except Exception as e:  # the harness could not run this cell (e.g. the framework failed to import)
        result.verdict, result.reason = "error", _describe_exception(e)
    finally:
        result.seconds = round(time.perf_counter() - start, 3)
    return result


def _run(runner: Runner, result: CellResult, *, max_examples: int, seed: int,
         example: Mapping[str, Any] | None, shrink: bool) -> None:
    spec = runner.spec
    ratios: list[float] = []
    failure: list[tuple[dict[str, Any], NonConformance]] = []

    def record(ex: Mapping[str, Any] | None, outcome: Outcome) -> None:
        result.examples += 1
        ratios.append(outcome.ratio)
        for k, v in outcome.errors.items():
            result.max_error[k] = max(result.max_error.get(k, 0.0), v)
        if result.max_ratio is None or outcome.ratio > result.max_ratio:
            result.max_ratio, result.worst = outcome.ratio, dict(ex) if ex is not None else None

    def fail(ex: dict[str, Any] | None, e: NonConformance, what: str) -> None:
        result.verdict, result.reason = "non-conformant", f"{what}: {e.reason}"
        result.sections = [f"{spec.component} §{s}" for s in e.sections]
        result.counterexample = ex
        result.repro = repro_command(spec.component, result.implementation, result.dtype, result.device, ex)

    if example is not None:  # replay exactly one example
        try:
            record(example, runner.run(example))
        except NonConformance as e:
            return fail(dict(example), e, "example")
        result.verdict = "conformant"
        return

    phases = [Phase.generate, Phase.target] + ([Phase.shrink] if shrink else [])
    strata = generate.strata(spec)
    per_stratum = max(1, math.ceil(max_examples / len(strata)))

    for fixed in strata:
        @settings(max_examples=per_stratum, deadline=None, database=None, phases=phases,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                  verbosity=Verbosity.quiet)
        @hypothesis_seed(seed)
        @given(generate.examples(spec, fixed))
        def check(ex: dict[str, Any]) -> None:
            try:
                outcome = runner.run(ex)
            except NonConformance as e:
                failure.append((dict(ex), e))  # the last one recorded is the shrunk minimum
                raise
            record(ex, outcome)
            target(outcome.ratio, label="error/budget")

        try:
            check()
        except NonConformance:
            ex, e = failure[-1]
            return fail(ex, e, "example")

    # Then the spec's worked examples, the hand-checked cases (after the search,
    # so that a mistake both would catch is reported with a shrunk example).
    for worked in spec.examples:
        try:
            record(None, runner.run_worked(worked))
        except NonConformance as e:
            e.sections = tuple(worked.sections)
            return fail(None, e, f"worked example {worked.name!r}")
    result.verdict = "conformant"
    if ratios:
        result.p99_ratio = float(np.percentile(ratios, 99))


def run_matrix(specs: list[Spec], impls: list[Registered], *, dtypes: list[str] | None = None,
               devices: list[str] | None = None, max_examples: int = 100, seed: int = 0,
               on_result: Callable[[CellResult], None] | None = None) -> list[CellResult]:
    """Every cell of the given specs and implementations; one failing cell never stops the others."""
    results = []
    for spec in specs:
        for impl in (i for i in impls if i.component == spec.component):
            for dtype, device in cells_of(impl, dtypes, devices):
                cell = run_cell(spec, impl, dtype, device, max_examples=max_examples, seed=seed)
                results.append(cell)
                if on_result:
                    on_result(cell)
    return results


def cells_of(impl: Registered, dtypes: list[str] | None, devices: list[str] | None) -> list[tuple[str, str]]:
    """The (dtype, device) cells to run: those asked for, else all the implementation supports."""
    if impl.unavailable_reason() is not None:
        return [(d, dev) for d in (dtypes or list(tolerances.DTYPES)) for dev in (devices or ["cpu"])]
    try:
        own_dtypes, own_devices = impl.dtypes, impl.devices()
    except Exception:  # reported by run_cell
        own_dtypes, own_devices = tolerances.DTYPES, ["cpu"]
    return [(d, dev) for d in (dtypes or own_dtypes) for dev in (devices or own_devices)]
