"""The engine: one cell is one implementation of one component on one dtype, device and mode.

For each example hypothesis draws: make arrays -> round them to the dtype ->
run the float64 NumPy reference on the rounded values -> run the candidate ->
check outputs (present, shape, dtype, finite) -> compare each with the
reference against its budget -> record. The CLI, pytest and the results file
are front ends over `run_cell` and `run_matrix`.

Where each new input shape costs a compilation (the compiled mode, and the
eager mode of a backend that compiles op by op, such as JAX: the
implementation's `compiles_per_shape`), the examples are grouped: a few shapes
per cell are drawn up front, and the search varies values, magnitudes and
seeds within them (`generate.shape_groups`). spec/README.md says what that
leaves out of the search.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from hypothesis import HealthCheck, Phase, Verbosity, given, reject, settings, target
from hypothesis.errors import Flaky, Unsatisfiable
from hypothesis import seed as hypothesis_seed

from conformance import causes, conditions, deviations, evidence, generate, gradients, plugin, properties, tolerances
from conformance.deviations import Deviation
from conformance.spec import Example, Spec, Tensor, evaluate, expression_names
from conformance.tolerances import DTYPE_CONSTANTS, dtype_constants, finfo
from conformance.registry import Registered
from conformance.vocabulary import DEVICES, DTYPES, MODES, SHIPPED, Held, numpy_dtype, Property, Verdict
from impls import compilation_cache_dir


def keep_hypothesis_files_out_of_the_working_folder() -> None:
    """Hypothesis writes a cache of the constants in local code under ./.hypothesis even with its
    database off; point it at our cache folder (or a temporary one when that is off) unless the
    user chose a place with HYPOTHESIS_STORAGE_DIRECTORY.

    For the worker processes only (conformance/workers.py): the setting is process-wide, and in a
    process that imports this package for its own tests it would move that project's database.
    """
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        return
    from hypothesis.configuration import set_hypothesis_home_dir

    folder = compilation_cache_dir("hypothesis")
    if folder is None:
        folder = Path(tempfile.gettempdir()) / f"nn-conformance-hypothesis-{os.getuid()}"
    set_hypothesis_home_dir(folder)


#: Shapes per cell where each new shape compiles (`Registered.compiles_per_shape`), at least one per
#: stratum. The same number serves both modes; a new shape costs more in the eager mode, where Keras on JAX
#: compiles each operation of the call (mha in float32 on a 2-core CPU: 22 XLA programs, 0.6 s a shape,
#: against 0.2 s under jax.jit), which argues for no more.
COMPILED_SHAPES = 4
#: A region of the spec's sensitivity table gets this fraction of a stratum's examples, and at least
#: REGION_EXAMPLES (hypothesis tries the plainest example first), in each stratum that reaches it: its
#: settings are fixed, so few examples find it; the strata's own searches keep their whole share.
REGION_SHARE = 4
REGION_EXAMPLES = 4
#: Passing examples kept per cell for the report's error-against-shape plots (a uniform sample beyond this).
SAMPLE_CAP = 200
#: Keys a replayed example may carry beside its parameters: the property it checks, the other shapes of a
#: statelessness sequence, the examples run on its instance before it, and whether it checks the gradients.
REPLAY_KEYS = ("property", "then", "after", "gradients")


def point(example: Mapping[str, Any]) -> dict[str, Any]:
    """The example as a point of the parameter space: without the keys a replay may add (REPLAY_KEYS)."""
    return {k: v for k, v in example.items() if k not in REPLAY_KEYS}


class Event(str, Enum):
    """What a cell tells its watcher as it goes (`Progress`): an example starts, with the example."""

    EXAMPLE = "example"  # a drawn example: the dict of spec parameters, seed and scale_exp
    WORKED = "worked"  # one of the spec's worked examples: {"worked_example": name}
    COMPILE = "compile"  # the example's call is the first on a new shape, where shapes compile


#: A cell's watcher: called with the event and the example it concerns.
Progress = Callable[[Event, dict[str, Any]], None]


class ConfigUnsupported(Exception):
    """An example whose layer config the implementation says it cannot express (`supports`)."""


class OutOfRange(ConfigUnsupported):
    """An example whose values the cell's dtype cannot hold (spec/README.md, "Which values a cell reaches"):
    skipped and counted like an unsupported config, with the reason."""


#: An example is out of a dtype's range when a value its budgets scale by exceeds the dtype's largest finite
#: number divided by this: room for the sums and products a correct implementation forms on the way.
RANGE_HEADROOM = 64.0


class KnownDeviation(Exception):
    """An example covered by ledger entries, on which the candidate deviates as they record, within their
    bounds: `entries` are those whose bounds (together) hold it."""

    def __init__(self, entries: tuple[Deviation, ...], reason: str):
        super().__init__(reason)
        self.entries, self.reason = entries, reason


@dataclass
class Leeway:
    """How far ledger entries let one example's outputs deviate (their `bound`s, spec/deviations.toml):
    elements left unchecked (`region`, per output), the dtype whose eps measures errors (`dtype`), a number
    of eps allowed in place of the budget (`eps`), and outputs to compare with in place of the reference's
    (`reference`, with their `diagnostics`)."""

    region: dict[str, np.ndarray] = field(default_factory=dict)
    dtype: str = "float64"
    eps: float | None = None
    reference: dict[str, np.ndarray] | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, entries: list[Deviation], runner: "Runner", example: Mapping[str, Any],
           weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any]) -> "Leeway":
        measure, eps = deviations.widest(entries, runner.dtype)
        leeway = cls(dtype=measure, eps=eps)
        rounded_inputs = generate.cast(inputs, runner.dtype)
        for d in entries:
            kind = d.bound.kind
            if kind == deviations.BoundKind.REGION:
                marked = conditions.predicate(runner.spec.component, d.condition)(example, rounded_inputs)
                if not isinstance(marked, Mapping):
                    raise ValueError(f"ledger entry {d.id!r}: bound \"region\" needs a condition that marks "
                                     f"elements; {d.condition} holds for whole examples")
                for name, where in marked.items():
                    where = np.asarray(where, dtype=bool)
                    leeway.region[name] = where if name not in leeway.region else leeway.region[name] | where
            elif kind == deviations.BoundKind.LIKE and leeway.reference is None:  # like NAME: the deviation modelled by a function of the reference
                model = conditions.reference_function(runner.spec.component, d.bound.value)
                leeway.reference = model(example, generate.cast(generate.cast(weights, runner.dtype), "float64"),
                                         generate.cast(rounded_inputs, "float64"), diagnostics=leeway.diagnostics)
        return leeway

    def outside_region(self, output: str, value: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """`value` with the elements of the region replaced by the reference's: only the rest is checked."""
        if output not in self.region:
            return value
        where = np.broadcast_to(self.region[output], value.shape)
        return np.where(where, reference.astype(value.dtype), value)


class NonConformance(Exception):
    """One example on which a candidate does not follow the spec."""

    def __init__(self, reason: str, sections: tuple[str, ...] = (), output: str | None = None, *,
                 index: tuple[int, ...] | None = None, bad: np.ndarray | None = None, narrow: bool = False):
        super().__init__(reason)
        self.reason, self.sections, self.output = reason, sections, output
        self.index = index  # the element of `output` the failure is about, where there is one
        self.bad = bad  # every element of `output` that breaks the check, where the check is per element
        # whether the sections are every one the output's row names (or none, for a call that raised), so
        # that the rule broken is to be found: inside a condition's region (`Runner.check`), or among the
        # parameters the failure needs (`narrow_by_parameters`)
        self.narrow = narrow
        self.inside = False  # whether `sections` are those of the conditions whose region holds every bad element


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
    verdict: Verdict = Verdict.ERROR
    examples: int = 0
    seconds: float = 0.0  # wall time of the whole cell
    compile_seconds: float = 0.0  # of which first calls per input shape, where shapes compile
    compiles: int = 0  # distinct (config, input shapes) met where shapes compile: a compilation each
    # the framework's own counts over the cell (`Registered.compilations`): "graphs" compiled (torch.compile
    # counts each piece between graph breaks; JAX each XLA program, one per operation in the eager mode),
    # "cache_hits" of them loaded from the persistent compilation cache; empty where it gives none
    framework_compiles: dict[str, int] = field(default_factory=dict)
    max_error: dict[str, float] = field(default_factory=dict)  # eps units, per output
    p99_error: dict[str, float] = field(default_factory=dict)
    budget: dict[str, float] = field(default_factory=dict)  # eps units, per output, at the worst example
    output_ratio: dict[str, float] = field(default_factory=dict)  # per output, the largest error / budget
    k: float | None = None  # the budget constant of this dtype (conformance/tolerances.py)
    max_ratio: float | None = None  # error / budget, worst over outputs and examples
    p99_ratio: float | None = None
    worst: dict[str, Any] | None = None  # the example with the largest ratio
    samples: dict[str, Any] = field(default_factory=lambda: Samples().to_json())  # (example, ratio) table
    reason: str | None = None  # why not conformant, or why it could not run
    sections: list[str] = field(default_factory=list)  # spec sections of the failure
    counterexample: dict[str, Any] | None = None  # minimal failing example after shrinking
    # the examples run up to and including the first that failed (drawn, worked and skipped ones alike): how soon
    # the search finds the mistake, apart from the passing examples shrinking runs after it; None if none failed
    first_failure: int | None = None
    # the counterexample's arrays (inputs, weights, the candidate's outputs, the reference's), bounded in size:
    # what the report draws and offers for download, so that it never runs an implementation (conformance/evidence.py)
    evidence: dict[str, Any] | None = None
    outputs_compared: list[str] = field(default_factory=list)  # all the spec's, or those the implementation returns
    skipped: int = 0  # examples whose layer config the implementation cannot express (its `supports`)
    skip_reason: str | None = None  # the implementation's reason, for the first of them
    examples_asked: int | None = None  # --examples (or the profile's); None for a replay of one example
    known_deviations: int = 0  # examples a ledger entry covers, on which it deviated as recorded
    deviation: str | None = None  # the ledger entry's id, when known_deviations > 0
    repro: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)  # framework versions, precision flags
    # the spec's properties (conformance/properties.py): name -> what each came to, with its counterexample
    properties: dict[str, Any] = field(default_factory=dict)
    # the gradients (conformance/gradients.py), judged apart from the forward verdict: their own verdict,
    # the largest error / budget of each, and a failure's example and reproduce line
    gradients: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": Verdict(self.verdict).value}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "CellResult":
        """A cell as `to_json` gave it (fields this version does not know, such as a file's `env`, are left out)."""
        known = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        return cls(**{**known, "verdict": Verdict(known.get("verdict", Verdict.ERROR))})


class Samples:
    """A bounded, uniform sample of a cell's passing examples and their error / budget ratios.

    The report plots the ratio against each shape parameter from it. Stored as
    a table (`columns`, then one row per example, the ratio last) to keep results
    files small; `total` counts every passing example seen. Past `cap` rows it is
    a reservoir sample, seeded so that a run repeats exactly.
    """

    def __init__(self, cap: int = SAMPLE_CAP, seed: int = 0):
        self.cap, self.total = cap, 0
        self.columns: list[str] = []
        self.rows: list[list[Any]] = []
        self._rng = random.Random(seed)

    def add(self, example: Mapping[str, Any], ratio: float) -> None:
        if not self.columns:
            self.columns = [*example, "ratio"]
        row = [example.get(k) for k in self.columns[:-1]] + [float(f"{ratio:.4g}")]
        self.total += 1
        if len(self.rows) < self.cap:
            self.rows.append(row)
        elif (j := self._rng.randrange(self.total)) < self.cap:
            self.rows[j] = row

    def to_json(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows": [list(r) for r in self.rows], "total": self.total}


def machine() -> dict[str, str]:
    """The interpreter and the CPU: the part of a cell's environment that is not the framework's."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu": cpu}


def reference_forward(component: str) -> Callable[..., dict[str, np.ndarray]]:
    return importlib.import_module(f"impls.numpy.{component}").forward


class Runner:
    """Runs examples of one cell, building the candidate once per layer config.

    The first call of an instance on each input shape is timed apart: where
    shapes compile (`pooled`) it is the compilation (`compile_seconds`).
    """

    def __init__(self, spec: Spec, impl: Registered, dtype: str, device: str, mode: str = "eager",
                 ledger: list[Deviation] = (), progress: Progress | None = None):
        self.spec, self.impl, self.dtype, self.device, self.mode = spec, impl, dtype, device, mode
        self.progress = progress or (lambda event, example: None)
        self.outputs = impl.outputs(tuple(spec.outputs))
        self.pooled = impl.compiles_per_shape(mode)  # each new shape compiles: draw a few up front
        cell_entries = deviations.entries_for(list(ledger), spec.component, impl.label, dtype=dtype,
                                              backend=impl.backend(), device=device, mode=mode)
        self.ledger = [d for d in cell_entries if "forward" in d.parts]  # those the outputs are judged by
        self.gradient_ledger = [d for d in cell_entries if "gradients" in d.parts]  # conformance/gradients.py
        self.reference = reference_forward(spec.component)
        # the diagnostics the budget table names, which bound the values a correct implementation handles
        self.range_names = sorted({n for scale, growth in spec.budgets.values()
                                   for n in expression_names(scale) | expression_names(growth)}
                                  - set(spec.params) - set(spec.magnitudes()) - set(DTYPE_CONSTANTS))
        self._instances: dict[tuple, Any] = {}
        self._history: dict[tuple, list[dict[str, Any]]] = {}  # config -> the drawn examples its instance ran
        self.shapes_seen: set[tuple] = set()
        self.seen: dict[tuple, dict[str, Any]] = {}  # shapes -> an example that had them (a sequence's other shape)
        # told of a failure that a fresh instance does not repeat: (the example with the calls before it that
        # make it fail, `after`, and the reason); the cell records it as statelessness failing
        self.on_stateful: Callable[[dict[str, Any], str], None] = lambda example, reason: None
        self.compile_seconds = 0.0
        self.conformed_under: dict[str, tuple[Deviation, dict[str, Any]]] = {}  # entry id -> (entry, example)
        # the arrays of the example `check` ran last: "weights" and "inputs" as the candidate received them,
        # the float64 "reference" outputs, and the candidate's "outputs" (None when it raised)
        self.last: dict[str, Any] = {}

    def instance(self, config: Mapping[str, Any]) -> Any:
        """The cell's instance for this layer config, built at its first use."""
        key = tuple(sorted(config.items()))
        if key not in self._instances:
            self._instances[key] = self.fresh(config)
            self._history[key] = []
        return self._instances[key]

    def fresh(self, config: Mapping[str, Any]) -> Any:
        """A new instance for this layer config, for this use alone."""
        reason = self.impl.unsupported_config(config, dtype=self.dtype)
        if reason is not None:
            raise ConfigUnsupported(reason)
        extra = {} if self.mode == "eager" else {"mode": self.mode}  # plug-ins without modes take no mode
        try:
            framework_setup(self.impl, self.dtype)
            return self.impl.load().build(dict(config), dtype=self.dtype, device=self.device, **extra)
        except plugin.Unsupported as e:
            raise ConfigUnsupported(str(e)) from None
        except Exception as e:
            raise NonConformance(f"build raised {_describe_exception(e)}") from None

    def run(self, example: Mapping[str, Any]) -> Outcome:
        """A drawn example on the cell's instance for its config. One that fails there, where that instance
        has run other examples before, runs again on a fresh instance: if that passes, the failure came from
        the earlier calls, which is statelessness failing (`on_stateful`, with the calls that make it fail from
        a fresh instance), and the fresh instance's outcome counts and replaces the other.

        An example with `after` (a replay of such a failure) runs on a fresh instance after those examples."""
        self.progress(Event.EXAMPLE, point(example))
        config = generate.layer_config(self.spec, example)
        reason = self.impl.unsupported_config(config, example, dtype=self.dtype)
        if reason is not None:  # before the arrays and the reference: a narrow layer rejects most draws
            raise ConfigUnsupported(reason)
        weights, inputs = generate.make_arrays(self.spec, example)
        if example.get("after"):  # a replay: the failure must come back after these calls, and not without them
            try:
                return self.compare(config, example, weights, inputs, instance=self.after(example["after"], config))
            except NonConformance as e:
                outcome = self.compare(config, example, weights, inputs, instance=self.fresh(config))
                self.on_stateful(dict(example), e.reason)
                return outcome
        try:
            outcome = self.compare(config, example, weights, inputs)
        except NonConformance as e:
            key = tuple(sorted(config.items()))
            history = self._history.get(key, [])
            if not history or isinstance(self._instances.get(key), NonConformance):
                raise
            fresh = self.fresh(config)
            try:
                outcome = self.compare(config, example, weights, inputs, instance=fresh)
            except NonConformance:
                raise e from None
            self._instances[key], self._history[key] = fresh, [dict(example)]
            passed = self.last  # the fresh instance's arrays, which the replays below would replace
            self.on_stateful(self.calls_that_fail(example, history), e.reason)
            self.last = passed
            return outcome
        self._history.setdefault(tuple(sorted(config.items())), []).append(
            point(example))
        return outcome

    def after(self, examples: list[Mapping[str, Any]], config: Mapping[str, Any]) -> Any:
        """A fresh instance that has been loaded with and called on each of `examples` (their outputs unjudged)."""
        instance = self.fresh(config)
        for before in examples:
            w, x = generate.make_arrays(self.spec, before)
            w, x = generate.cast(w, self.dtype), generate.cast(x, self.dtype)
            try:
                instance.load({k: v.copy() for k, v in w.items()})
                instance({k: None if v is None else v.copy() for k, v in x.items()})
            except Exception:
                pass  # a call that raises is judged where it is the example's own
        return instance

    def calls_that_fail(self, example: Mapping[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        """The example with the fewest earlier calls (`after`) of those tried that make it fail from a fresh
        instance: the last one, the first one, the last eight; all of them if none of those does."""
        config = generate.layer_config(self.spec, example)
        weights, inputs = generate.make_arrays(self.spec, example)
        tries = [history[-1:], history[:1], history[-8:]]
        for calls in dict.fromkeys(tuple(json.dumps(c, sort_keys=True) for c in t) for t in tries):
            after = [json.loads(c) for c in calls]
            try:
                self.compare(config, example, weights, inputs, instance=self.after(after, config))
            except (NonConformance, KnownDeviation):
                return {**example, "after": after}
            except ConfigUnsupported:
                break
        return {**example, "after": list(history)}

    def run_worked(self, worked: Example) -> Outcome:
        """A worked example, on a fresh instance: it checks the implementation's logic, apart from what earlier
        calls may have left in the cell's instances (statelessness, `run`, checks that). Where shapes compile,
        on the cell's instance, since a fresh one compiles anew (a Keras model on JAX: seconds apiece)."""
        self.progress(Event.WORKED, {"worked_example": worked.name})
        weights, inputs = generate.worked_arrays(self.spec, worked.weights, worked.inputs)
        config = generate.layer_config(self.spec, worked.config)
        return self.compare(config, worked.config, weights, inputs,
                            instance=self.instance(config) if self.pooled else self.fresh(config))

    def compare(self, config: Mapping[str, Any], example: Mapping[str, Any],
                weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any], instance: Any = None,
                load: bool = True) -> Outcome:
        """`check` the example; where ledger entries cover it, a failure must stay within their bounds.

        The bounds are tried one entry at a time, then all the covering entries together; the first that
        holds the example names the entries it counts for. Beyond every one, the example is non-conformant.
        """
        covering = [d for d in self.ledger if d.matches(example, inputs) and self.models_a_change(d, example, weights, inputs)]
        if not covering:
            return self.check(config, example, weights, inputs, instance, load)
        try:
            outcome = self.check(config, example, weights, inputs, instance, load)
        except NonConformance as e:
            if self.last.get("outputs") is None:  # it raised, or returned no outputs: no bound holds that
                raise
            excess = e
            for entries in deviations.tries(covering):
                try:
                    self.judge(example, inputs, Leeway.of(entries, self, example, weights, inputs))
                except NonConformance as beyond:
                    excess = beyond
                    continue
                raise KnownDeviation(tuple(entries), e.reason) from None
            excess.reason = deviations.beyond(covering, excess.reason)
            raise excess from None
        # It followed the spec here. That counts as a pass; an entry is stale if no example of the
        # cell deviates (see `stale_entries`), since a dtype-wide entry may miss an exact small case.
        for entry in covering:
            self.conformed_under.setdefault(entry.id, (entry, dict(example)))
        return outcome

    def models_a_change(self, entry: Deviation, example: Mapping[str, Any], weights: Mapping[str, np.ndarray],
                        inputs: Mapping[str, Any]) -> bool:
        """Whether the entry can cover the example: an entry that models its deviation (`like NAME`) covers only
        the examples where the model departs from the spec beyond the budget, so that one whose deviation is rare
        (a finite mask fill, past scores of 1e9) is not stale on a cell that never reaches it."""
        if entry.bound.kind != deviations.BoundKind.LIKE:
            return True
        leeway = Leeway.of([entry], self, example, weights, inputs)
        with np.errstate(over="ignore"):  # rounding; an overflow is check_range's to report
            weights, inputs = generate.cast(weights, self.dtype), generate.cast(inputs, self.dtype)
        reference = self.reference(example, generate.cast(weights, "float64"), generate.cast(inputs, "float64"))
        env = {**example, **leeway.diagnostics, **dtype_constants(self.dtype)}
        for name, budget in self.spec.budgets.items():
            try:
                check_within_budget(self.spec.outputs[name], np.asarray(leeway.reference[name]), reference[name],
                                    self.dtype, budget, env)
            except NonConformance:
                return True
        return False

    def stale_entries(self, deviated: set[str]) -> list[tuple[Deviation, dict[str, Any]]]:
        """Entries that covered examples of the cell, none of which deviated: (entry, an example)."""
        return [v for k, v in self.conformed_under.items() if k not in deviated]

    def check(self, config: Mapping[str, Any], example: Mapping[str, Any],
              weights: Mapping[str, np.ndarray], inputs: Mapping[str, Any], instance: Any = None,
              load: bool = True) -> Outcome:
        """Run the candidate (`instance`, else the cell's for the config; `load`: with the example's weights
        loaded first, else with those it holds) on the example and judge its outputs against the reference."""
        with np.errstate(over="ignore"):  # a value beyond the dtype's range rounds to inf: check_range says so
            weights, inputs = generate.cast(weights, self.dtype), generate.cast(inputs, self.dtype)
        self.last = {"weights": weights, "inputs": inputs, "reference": None, "outputs": None, "diagnostics": {}}
        self.check_range(weights, inputs, {})
        diagnostics: dict[str, float] = {}
        reference = self.reference(example, generate.cast(weights, "float64"),
                                   generate.cast(inputs, "float64"), diagnostics=diagnostics)
        self.last = {"weights": weights, "inputs": inputs, "reference": reference, "outputs": None,
                     "diagnostics": diagnostics}
        self.check_range(weights, inputs, diagnostics)
        instance = self.instance(config) if instance is None else instance
        shapes = self.shapes_key(example, inputs)
        self.seen.setdefault(shapes, point(example))
        first = self.pooled and shapes not in self.shapes_seen
        if first:
            self.progress(Event.COMPILE, dict(example))
        try:
            if load:
                instance.load({k: v.copy() for k, v in weights.items()})
            start = time.perf_counter()
            got = instance({k: None if v is None else v.copy() for k, v in inputs.items()})
            if first:
                self.compile_seconds += time.perf_counter() - start
        except plugin.Unsupported as e:
            raise ConfigUnsupported(str(e)) from None
        except Exception as e:
            raise NonConformance(f"raised {_describe_exception(e)}", narrow=True) from None
        finally:
            self.shapes_seen.add(shapes)
        self.last["outputs"] = named_outputs(got, self.outputs)
        self.last["instance"] = instance  # loaded with the example's weights: the gradients are checked on it
        return self.judge(example, inputs)

    def shapes_key(self, example: Mapping[str, Any], inputs: Mapping[str, Any]) -> tuple:
        """What a compiled function is specialised on: the layer config and the inputs' shapes."""
        return (tuple(sorted(generate.layer_config(self.spec, example).items())),
                tuple((k, None if v is None else np.shape(v)) for k, v in inputs.items()))

    def in_range(self, example: Mapping[str, Any], weights: Mapping[str, Any], inputs: Mapping[str, Any]) -> bool:
        """Whether these (rounded) arrays keep the example inside the dtype's range rule (`check_range`)."""
        diagnostics: dict[str, float] = {}
        try:
            with np.errstate(all="ignore"):
                self.reference(example, generate.cast(weights, "float64"), generate.cast(inputs, "float64"),
                               diagnostics=diagnostics)
            self.check_range(weights, inputs, diagnostics)
        except OutOfRange:
            return False
        return True

    def call_again(self, example: Mapping[str, Any], weights: Mapping[str, Any],
                   inputs: Mapping[str, Any]) -> Mapping[str, Any] | str:
        """A fresh instance for the example's config (the cell's own where shapes compile), loaded with `weights`,
        on `inputs`: its outputs by name, or the description of what it raised."""
        config = generate.layer_config(self.spec, example)
        instance = self.instance(config) if self.pooled else self.fresh(config)
        try:
            instance.load({k: v.copy() for k, v in weights.items()})
            return named_outputs(instance({k: None if v is None else v.copy() for k, v in inputs.items()}),
                                 self.outputs)
        except NonConformance as e:
            return e.reason
        except Exception as e:
            return _describe_exception(e)

    def other_shape(self, example: Mapping[str, Any]) -> dict[str, Any] | None:
        """An example of the same layer config with other input shapes: where shapes compile, one this cell
        has run; elsewhere each ranged data parameter one step up its domain (down from its top), other seed."""
        config = generate.layer_config(self.spec, example)
        if self.pooled:
            weights, inputs = generate.make_arrays(self.spec, example)
            own = self.shapes_key(example, inputs)
            return next((dict(e) for k, e in self.seen.items()
                         if k != own and generate.layer_config(self.spec, e) == config), None)
        other = point(example)
        for p in self.spec.params.values():
            if p.role == "data" and isinstance(p.domain, range) and len(p.domain) > 1:
                value = example[p.name] + 1
                other[p.name] = value if value in p.domain else example[p.name] - 1
        if other == point(example):
            return None
        other["seed"] = (int(example["seed"]) + 3) % 2**32
        return other

    def sequence(self, example: Mapping[str, Any], weights: Mapping[str, Any], inputs: Mapping[str, Any],
                 then: Mapping[str, Any], repeats: int = 1):
        """The calls of properties.Checks._sequence on one instance (a fresh one, or the cell's where shapes
        compile): yields the example's outputs, the same call's again (the first of up to `repeats` that
        differs, else the last), then for each later call None or why it
        failed: inputs of `then`'s shapes and other inputs of the example's own, both without reloading, then
        the example's inputs after other weights were loaded; last, whether any call changed what it was given."""
        from conformance.properties import _Raised

        config = generate.layer_config(self.spec, example)
        instance = self.instance(config) if self.pooled else self.fresh(config)
        changed: list[str] = []

        def call(x: Mapping[str, Any]) -> Mapping[str, Any]:
            given = {k: None if v is None else v.copy() for k, v in x.items()}
            try:
                got = named_outputs(instance(given), self.outputs)
            except Exception as e:
                raise _Raised(e.reason if isinstance(e, NonConformance) else _describe_exception(e)) from None
            changed.extend(f"input {k!r}" for k, v in x.items()
                           if v is not None and not np.array_equal(v, given[k], equal_nan=True))
            return got

        def judged(what: str, params: Mapping[str, Any], w: Mapping[str, Any], x: Mapping[str, Any]) -> str | None:
            """The call on `x` with the weights the instance holds (`w`), judged as any example is, ledger
            included; why it failed, or None."""
            saved = self.last
            try:
                self.compare(config, params, w, x, instance=instance, load=False)
            except (ConfigUnsupported, KnownDeviation):
                return None
            except NonConformance as e:
                return f"{what}: {e.reason}"
            finally:
                self.last = saved
            return None

        loaded = {k: v.copy() for k, v in weights.items()}
        try:
            instance.load(loaded)
        except Exception as e:
            raise _Raised(_describe_exception(e)) from None
        first = call(inputs)
        yield first
        for _ in range(repeats):  # the same call again, until its outputs differ
            again = call(inputs)
            if any(not np.array_equal(np.asarray(first[k]), np.asarray(again[k]), equal_nan=True) for k in first):
                break
        yield again
        _, x2 = generate.make_arrays(self.spec, then)
        yield judged("then inputs of other shapes, without reloading the weights", {**then, **config}, weights,
                     generate.cast(x2, self.dtype))
        _, x3 = generate.make_arrays(self.spec, {**example, "seed": (int(example["seed"]) + 1) % 2**32})
        yield judged("then other inputs of the example's shapes, without reloading the weights", example, weights,
                     generate.cast(x3, self.dtype))
        w4, _ = generate.make_arrays(self.spec, {**example, "seed": (int(example["seed"]) + 2) % 2**32})
        w4 = generate.cast(w4, self.dtype)
        changed.extend(f"weight {k!r}" for k, v in weights.items() if not np.array_equal(v, loaded[k], equal_nan=True))
        try:
            instance.load({k: v.copy() for k, v in w4.items()})
        except Exception as e:
            raise _Raised(_describe_exception(e)) from None
        yield judged("then other weights loaded and the example's inputs again", example, w4, inputs)
        yield (f"a call changed the arrays it was given: {', '.join(dict.fromkeys(changed))}" if changed else None)

    def targets(self, example: Mapping[str, Any]) -> dict[str, float]:
        """The spec's sensitivity targets (its `constant` table) on the example `check` ran last: quantities
        that rise towards the regions where a changed constant shows, for the search to drive upwards."""
        env = {**example, **self.last.get("diagnostics", {}), **dtype_constants(self.dtype)}
        found = {}
        for expr in dict.fromkeys(s.target for s in self.spec.sensitivity.values() if s.target):
            value = float(evaluate(expr, env))
            if math.isfinite(value):
                found[f"sensitivity: {expr}"] = value
        return found

    def check_range(self, weights: Mapping[str, Any], inputs: Mapping[str, Any],
                    diagnostics: Mapping[str, Any]) -> None:
        """OutOfRange when the example's values, rounded to the cell's dtype, overflow it, or a value its
        budgets scale by exceeds the dtype's largest number over RANGE_HEADROOM."""
        limit = float(finfo(self.dtype).max) / RANGE_HEADROOM
        for group in (weights, inputs):
            for name, value in group.items():
                if isinstance(value, np.ndarray) and generate.is_float(value.dtype) and not np.all(np.isfinite(value)):
                    raise OutOfRange(f"example outside {self.dtype}'s range: {name} overflows it")
        for name in [*self.range_names, *(n for n in diagnostics if n.startswith("largest_"))]:
            value = diagnostics.get(name)
            if isinstance(value, float) and not abs(value) <= limit:
                raise OutOfRange(f"example outside {self.dtype}'s range: {name} = {value:.3g}, above "
                                 f"{limit:.3g} (its largest number / {RANGE_HEADROOM:g})")
        tiny = float(finfo(self.dtype).tiny)
        for name, value in diagnostics.items():  # a value a correct implementation computes below the normal range
            if name.startswith("least_") and isinstance(value, float) and 0 < value < tiny:
                raise OutOfRange(f"example outside {self.dtype}'s range: {name} = {value:.3g}, below its "
                                 f"smallest normal number {tiny:.3g}")

    def judge(self, example: Mapping[str, Any], inputs: Mapping[str, Any], leeway: "Leeway | None" = None) -> Outcome:
        """Check each output of `self.last` by the rules of its row, the float ones against their budgets;
        `leeway`: as far as ledger entries let the example deviate."""
        got, reference = self.last["outputs"], self.last["reference"]
        diagnostics = self.last["diagnostics"]
        if leeway is not None and leeway.reference is not None:
            reference, diagnostics = leeway.reference, leeway.diagnostics
        env = {**example, **diagnostics, **dtype_constants(self.dtype)}
        errors, budgets, tolerance = {}, {}, {}
        # float outputs first: a greedy comparison needs its logits' tolerance
        compared = [o for o in self.spec.outputs.values() if o.name in self.outputs]
        for out in sorted(compared, key=lambda o: o.dtype != "float"):
            value = output_array(got, out)
            check_shape(out, value, self.spec.shape_of(out, example))
            try:
                if out.dtype in ("int", "bool"):
                    check_token_dtype(out, value)
                    check_tokens(out, value, reference[out.name], diagnostics, tolerance)
                    continue
                check_float_dtype(out, value, self.dtype)
                if leeway is not None:
                    value = leeway.outside_region(out.name, value, reference[out.name])
                check_finite(out, value)
                errors[out.name], budgets[out.name], tolerance[out.name] = check_within_budget(
                    out, value, reference[out.name], self.dtype, self.spec.budgets[out.name], env,
                    measure=leeway.dtype if leeway else None, allowed_eps=leeway.eps if leeway else None)
            except NonConformance as e:
                raise self.inside_a_condition(e, example, inputs, value.shape) from None
        return Outcome(errors, budgets)

    def inside_a_condition(self, e: NonConformance, example: Mapping[str, Any], inputs: Mapping[str, Any],
                           shape: tuple[int, ...]) -> NonConformance:
        """A failure confined to the region of one of the spec's conditions (every element that breaks the
        check lies inside it) names that condition's sections (NaN only in fully masked rows: §7.4) instead
        of every section of the output."""
        if e.bad is None or e.output is None:
            return e
        inside = conditions.confining(self.spec, example, inputs, e.output, e.bad)
        if inside:
            e.sections = tuple(dict.fromkeys(s for c in inside for s in c.sections))
            e.reason += "; only where " + " and ".join(f"{c.name} (§{', §'.join(c.sections)})" for c in inside)
            e.inside = True
        return e


# --- the checks of one example's outputs, each a rule of the spec's output table ---------
# Each raises NonConformance naming the output and the sections its row names.

def named_outputs(got: Any, names: tuple[str, ...]) -> Mapping[str, Any]:
    """The call returns a mapping from output names to arrays, or a tuple (or list) of arrays in the order of
    `names` (the implementation's `outputs`, else the spec's output table), or one array where there is one
    name (§4 of every spec: the outputs)."""
    if isinstance(got, Mapping):
        return got
    if isinstance(got, (tuple, list)):
        if len(got) != len(names):
            raise NonConformance(f"returned {len(got)} values, expected {len(names)}: {', '.join(names)}", ("4",))
        return dict(zip(names, got))
    if len(names) == 1 and hasattr(got, "shape"):
        return {names[0]: got}
    raise NonConformance(f"returned {type(got).__name__}, expected a dict or a tuple of outputs {', '.join(names)}",
                         ("4",))


def output_array(got: Mapping[str, Any], out: Tensor) -> np.ndarray:
    """The output is present and array-like."""
    if out.name not in got:
        raise NonConformance(f"output {out.name!r} missing; returned {sorted(got)}", out.sections, out.name)
    try:
        return np.asarray(got[out.name])
    except Exception as e:
        raise NonConformance(f"output {out.name!r} is not array-like: {_describe_exception(e)}",
                             out.sections, out.name) from None


def check_shape(out: Tensor, value: np.ndarray, want: tuple[int, ...]) -> None:
    """The output has the shape its row gives, evaluated for the example."""
    if value.shape != want:
        raise NonConformance(f"output {out.name!r} has shape {value.shape}, expected {want}", out.sections, out.name)


def check_token_dtype(out: Tensor, value: np.ndarray) -> None:
    """An int output has an integer dtype, a bool output bool."""
    if value.dtype.kind not in ("iu" if out.dtype == "int" else "b"):
        expected = "an integer dtype" if out.dtype == "int" else "bool"
        raise NonConformance(f"output {out.name!r} has dtype {value.dtype}, expected {expected}",
                             out.sections, out.name)


def check_float_dtype(out: Tensor, value: np.ndarray, dtype: str) -> None:
    """A float output has the cell's dtype: a layer does not compute in another precision and cast back."""
    if value.dtype != numpy_dtype(dtype):
        raise NonConformance(f"output {out.name!r} has dtype {value.dtype}, expected {dtype}", out.sections, out.name)


def check_finite(out: Tensor, value: np.ndarray) -> None:
    """Every element of a float output is finite (spec/README.md: a float output is finite everywhere)."""
    if not np.all(np.isfinite(value)):
        bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
        raise NonConformance(f"output {out.name!r} has {bad} non-finite values (NaN or Inf) "
                             f"where the spec says finite, the first at index {first}", out.sections, out.name,
                             index=first, bad=~np.isfinite(value), narrow=True)


def check_within_budget(out: Tensor, value: np.ndarray, reference: np.ndarray, dtype: str,
                        budget: tuple[str, str], env: Mapping[str, Any], *, measure: str | None = None,
                        allowed_eps: float | None = None) -> tuple[float, float, float]:
    """The error against the reference, in eps of `dtype` times the output's scale, is within K times its
    growth (the spec's budget table); returns (error in eps, budget in eps, the same budget absolute).

    A ledger entry's bound may measure in the eps of another dtype (`measure`) or allow a number of eps
    in place of the budget (`allowed_eps`)."""
    scale_expr, growth_expr = budget
    dtype = measure or dtype
    scale = np.asarray(evaluate(scale_expr, env), dtype=np.float64)  # one number, or one per element
    ratios = tolerances.errors_in_eps(value, reference, dtype, scale)
    error = float(np.max(ratios)) if ratios.size else 0.0
    allowed = tolerances.K[dtype] * float(evaluate(growth_expr, env))
    if allowed_eps is not None:
        allowed = max(allowed, allowed_eps)
    if not error <= allowed:
        over = ~(ratios <= allowed)  # NaN counts as over
        key = np.where(np.isnan(ratios), np.inf, ratios)
        worst = tuple(int(i) for i in np.unravel_index(int(np.argmax(key)), key.shape))
        raise NonConformance(f"output {out.name!r} differs from the reference by {error:.4g} eps"
                             f"{'' if measure is None else f' of {measure}'}, "
                             f"budget {allowed:.4g} eps (at index {worst}: got {value[worst]!r}, reference "
                             f"{reference[worst]!r})", out.sections, out.name, index=worst, bad=over, narrow=True)
    return error, allowed, allowed * tolerances.EPS[dtype] * float(np.max(scale, initial=0.0))


def check_tokens(out: Tensor, value: np.ndarray, reference: np.ndarray, diagnostics: Mapping[str, Any],
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
                             f"reference {reference[idx]}", out.sections, out.name, index=idx, bad=differs, narrow=True)


def _describe_exception(e: BaseException) -> str:
    frame = traceback.extract_tb(e.__traceback__)[-1:] if e.__traceback__ else []
    where = f" at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def framework_setup(impl: Registered, dtype: str) -> None:
    """Before a build: a plug-in gets its framework set up for the dtype (conformance/plugin.py: setup); ours
    set themselves up, and find torch's default dtype as it is by default."""
    if impl.source != SHIPPED:
        plugin.setup(impl.framework, dtype)
    elif "torch" in sys.modules:
        sys.modules["torch"].set_default_dtype(sys.modules["torch"].float32)


def repro_command(component: str, impl: str, dtype: str, device: str, example: Mapping[str, Any] | None,
                  mode: str = "eager") -> str:
    """The command that replays `example` in one cell; for an implementation the command line cannot name
    (an object whose class has no importable name), a line saying so, with the Python call that replays it."""
    why = unreplayable(impl)
    if why is not None:
        on = "" if device == "cpu" else f", devices=[{device!r}]"
        call = (f"conformance.check({component!r}, obj, dtypes=[{dtype!r}], modes=[{mode!r}]{on}"
                + (f", example={json.dumps(dict(example), separators=(',', ':'))}" if example is not None else "")
                + ")")
        return f"no command replays it ({why}); in Python: {call}"
    parts = ["conformance", "check", component, "--impl", impl, "--dtype", dtype, "--device", device,
             "--mode", mode]
    if example is not None:
        parts += ["--example", json.dumps(dict(example), separators=(",", ":"))]
    return " ".join(shlex.quote(p) for p in parts)


def unreplayable(impl: str) -> str | None:
    """Why `--impl impl` could not load the implementation again, or None where it could (a registered name,
    a plug-in file that exists, a module:attr whose module is found and whose attr is a plain name)."""
    module, sep, attr = impl.rpartition(":")
    if not sep:
        return None
    if "<locals>" in attr:
        return f"{impl} is defined inside a function"
    if module == "__main__":
        return f"{impl} is defined in a script run as __main__"
    if module.endswith(".py") or os.sep in module:
        return None if os.path.isfile(module) else f"there is no file {module}"
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    return None if found is not None else f"no module {module!r}"


def run_cell(spec: Spec, impl: Registered, dtype: str, device: str, mode: str = "eager", *,
             max_examples: int = 100, seed: int = 0, example: Mapping[str, Any] | None = None,
             shrink: bool = True, ledger: list[Deviation] | None = None,
             progress: Progress | None = None) -> CellResult:
    """Run one cell to a verdict. Never raises for anything the implementation does (short of
    ending the process: that is what the worker processes of `conformance.workers` are for).

    `ledger`: the known deviations to apply; the repository's spec/deviations.toml when None.
    `progress`: called as each example starts (see `Event`), so that a watcher can time examples.
    """
    start = time.perf_counter()
    result = CellResult(spec.component, impl.label,
                        impl.framework, None, device, dtype, mode)
    runner, compiled_before = None, {}
    try:
        if impl.unavailable_reason() is None:
            result.backend = impl.backend()
            result.environment = {**machine(), **impl.environment()}
            compiled_before = _compilations(impl)
        verdict, reason = cell_status(impl, dtype, device, mode)
        if verdict is not None:
            result.verdict, result.reason = verdict, reason
            return result
        runner = Runner(spec, impl, dtype, device, mode, deviations.load() if ledger is None else ledger,
                        progress)
        result.outputs_compared = list(runner.outputs)
        result.k = tolerances.K[dtype]
        result.examples_asked = None if example is not None else max_examples
        _run(runner, result, max_examples=max_examples, seed=seed, example=example, shrink=shrink)
    except Exception as e:  # the harness could not run this cell (e.g. the framework failed to import)
        result.verdict, result.reason = Verdict.ERROR, _describe_exception(e)
    finally:
        result.seconds = round(time.perf_counter() - start, 3)
        if runner is not None and runner.pooled:
            result.compile_seconds = round(runner.compile_seconds, 3)
            result.compiles = len(runner.shapes_seen)
        if runner is not None:
            result.framework_compiles = {k: v - compiled_before.get(k, 0) for k, v in _compilations(impl).items()}
    return result


def _compilations(impl: Registered) -> dict[str, int]:
    """The implementation's running compilation counts; {} when it cannot say (a count never costs a verdict)."""
    try:
        return impl.compilations()
    except Exception:
        return {}


def cell_status(impl: Registered, dtype: str, device: str, mode: str) -> tuple[Verdict | None, str | None]:
    """(verdict, reason) for a cell that cannot run here, (None, None) for one that can."""
    missing = impl.unavailable_reason()
    if missing is not None:
        return Verdict.NOT_AVAILABLE, missing
    if dtype not in impl.dtypes:
        return Verdict.UNSUPPORTED, f"dtype {dtype} not supported; supported: {', '.join(impl.dtypes)}"
    if mode not in impl.modes:
        return Verdict.UNSUPPORTED, f"mode {mode} not supported; supported: {', '.join(impl.modes)}"
    present = impl.devices()
    if device not in present:
        return Verdict.NOT_AVAILABLE, (f"device {device} not available on this machine; "
                                       f"{impl.framework} sees: {', '.join(present)}")
    return None, None


class Recorder:
    """What one cell's examples came to, gathered into its CellResult as they run.

    `attempt` runs one example and sorts it: a pass (`record`), an example the
    implementation cannot express (skipped), one a ledger entry covers
    (deviated); a NonConformance passes through to the caller, which ends the
    cell with `fail`. `finish` gives the verdict of a cell that did not fail.
    """

    def __init__(self, runner: Runner, result: CellResult, seed: int):
        self.runner, self.result, self.spec = runner, result, runner.spec
        self.ratios: list[float] = []
        self.errors: dict[str, list[float]] = {}
        self.samples = Samples(seed=seed)
        self.deviated: list[KnownDeviation] = []
        self.skipped: list[str] = []
        self.attempts = 0  # examples run, whatever came of them
        self.properties = properties.Checks(runner)
        self.gradients = gradients.GradientChecks(runner)
        runner.on_stateful = lambda example, reason: self.properties.fail(properties.PropertyFailure(
            Property.STATELESSNESS, f"it fails after other calls on the same instance, and passes on a fresh one: "
                                    f"{reason}", example))

    def attempt(self, run: Callable[[], Outcome], ex: Mapping[str, Any] | None) -> Outcome | str:
        """One example: its outcome, or "skipped" (config unsupported) or "deviated" (as the ledger records)."""
        self.attempts += 1
        try:
            outcome = run()
        except ConfigUnsupported as e:
            self.result.skipped += 1
            self.skipped.append(str(e))
            return "skipped"
        except KnownDeviation as e:
            self.result.known_deviations += 1
            self.deviated.append(e)
            if self.result.counterexample is None and ex is not None:  # the first one the search found, to replay
                self.result.counterexample = dict(ex)
                self.result.evidence = evidence.keep(self.runner.last, self.spec)
            return "deviated"
        self.record(ex, outcome)
        if ex is not None and self.runner.last.get("instance") is not None and self.gradients.due(ex):
            self.gradients.check(ex, self.runner.last["instance"], self.runner.last,
                                 self._repro({**ex, gradients.REPLAY_KEY: True}))
        if ex is not None and (property_named := properties.parse(self.spec, ex)) is not None:
            self.check_properties(ex, only=property_named)
        elif ex is not None and self.properties.due():
            self.check_properties(ex)
        return outcome

    def check_properties(self, ex: Mapping[str, Any], only: Property | None = None) -> None:
        """The example that just passed checks a property too (properties.Checks.check)."""
        last = self.runner.last
        if last.get("outputs") is None:
            return
        self.properties.check(ex, last["weights"], last["inputs"], last["outputs"], last["diagnostics"], only=only)

    def record(self, ex: Mapping[str, Any] | None, outcome: Outcome) -> None:
        result = self.result
        if ex is not None:  # a point in the parameter space; a replay's property and calls are not one
            ex = point(ex)
        result.examples += 1
        self.ratios.append(outcome.ratio)
        if ex is not None:  # worked examples have arrays of their own, not a point in the parameter space
            self.samples.add(ex, outcome.ratio)
        for k, v in outcome.errors.items():
            self.errors.setdefault(k, []).append(v)
            result.max_error[k] = max(result.max_error.get(k, 0.0), v)
            result.output_ratio[k] = max(result.output_ratio.get(k, 0.0), v / outcome.budgets[k])
        if result.max_ratio is None or outcome.ratio > result.max_ratio:
            result.max_ratio, result.worst = outcome.ratio, dict(ex) if ex is not None else None
            result.budget = dict(outcome.budgets)

    def _summarise(self) -> None:
        result = self.result
        result.skip_reason = self.skipped[0] if self.skipped else None
        result.samples = self.samples.to_json()
        for record in self.properties.records.values():
            if record.status == Held.NOT_CHECKED and not record.not_reached and (self.deviated or self.skipped):
                record.not_reached["no example passed the reference comparison to start from: each deviated as "
                                   "the ledger records, or was skipped"] = len(self.deviated) + len(self.skipped)
        result.properties = self.properties.to_json()
        result.gradients = self.gradients.to_json()
        if self.ratios:
            result.p99_ratio = float(np.percentile(self.ratios, 99))
            result.p99_error = {k: float(np.percentile(v, 99)) for k, v in self.errors.items()}

    def _repro(self, ex: Mapping[str, Any] | None) -> str:
        r = self.result
        return repro_command(self.spec.component, r.implementation, r.dtype, r.device, ex, r.mode)

    def fail(self, ex: dict[str, Any] | None, e: NonConformance, what: str,
             arrays: Mapping[str, Any] | None = None) -> None:
        """The cell is non-conformant: `what` failed (the example, a worked example, the ledger) for `e`;
        `arrays`: that example's (`Runner.last`), where it ran."""
        self._summarise()
        result = self.result
        if result.first_failure is None and what != "ledger":
            result.first_failure = self.attempts
        result.verdict, result.reason = Verdict.NON_CONFORMANT, f"{what}: {e.reason}"
        cause = self._likely_cause(ex, e, arrays) if what == "example" else None
        if cause:
            result.reason += f"; likely cause: {cause}"
        result.sections = [f"{self.spec.component} §{s}" for s in e.sections]
        result.counterexample = ex
        result.evidence = evidence.keep(arrays, self.spec) if arrays else None
        result.repro = self._repro(ex)

    def _likely_cause(self, ex: Mapping[str, Any] | None, e: NonConformance,
                      arrays: Mapping[str, Any] | None) -> str | None:
        """conformance/causes.py on the failing example's arrays; None where none fits (or the search for
        one failed: it never changes the verdict)."""
        if ex is None or not arrays or arrays.get("outputs") is None:
            return None
        runner, saved = self.runner, self.runner.last
        runner.last = arrays
        try:
            return causes.likely(runner, ex, e)
        except Exception:
            return None
        finally:
            runner.last = saved

    def finish(self) -> None:
        """Every example ran without failing: stale ledger entries, known deviations, or a pass."""
        self._summarise()
        result = self.result
        stale = self.runner.stale_entries({entry.id for d in self.deviated for entry in d.entries})
        if stale:
            entry, ex = stale[0]
            return self.fail(ex, NonConformance(
                f"ledger entry {entry.id!r} is stale: {self.runner.impl.label} followed the spec on every example "
                f"of this cell where {entry.condition} ({entry.explanation})", entry.sections), "ledger")
        failed = [(name, r) for name, r in self.properties.records.items() if r.status == Held.FAILED]
        if failed:
            name, record = failed[0]
            result.verdict = Verdict.NON_CONFORMANT
            result.reason = f"property {name} ({', '.join(record.sections)}): {record.reason}"
            result.sections = list(record.sections)
            result.counterexample, result.repro = record.counterexample, record.repro
            if result.first_failure is None:
                result.first_failure = self.attempts
            return
        if self.deviated:
            counts: dict[str, list] = {}  # entry id -> [entry, examples it covered that deviated], first seen first
            for d in self.deviated:
                for entry in d.entries:
                    counts.setdefault(entry.id, [entry, 0])[1] += 1
            entries = list(counts.values())
            result.verdict, result.deviation = Verdict.KNOWN_DEVIATION, entries[0][0].id
            named = [f"{entry.id!r} ({n} examples where {entry.condition}, within its bound {entry.bound.text}): "
                     f"{entry.explanation}" for entry, n in entries]
            result.reason = (f"ledger {'entry' if len(named) == 1 else 'entries'} {' '.join(named)} "
                             f"First seen here: {self.deviated[0].reason}")
            result.sections = list(dict.fromkeys(f"{self.spec.component} §{s}" for entry, _ in entries
                                                 for s in entry.sections))
            result.repro = self._repro(result.counterexample)
        elif result.examples == 0 and self.skipped:
            result.verdict, result.reason = Verdict.UNSUPPORTED, f"every example was skipped: {self.skipped[0]}"
        else:
            result.verdict = Verdict.CONFORMANT


@contextlib.contextmanager
def no_local_constants():
    """Hypothesis mixes into its draws, with a small probability, constants it collects from the local modules
    imported so far; which modules a worker has imported depends on the cells it ran before, so the same cell
    and seed would draw differently with one worker or two. Within a cell's search the pool is empty, so a
    cell's examples depend on its seed alone. (Hypothesis has no setting for it; where its internals differ,
    nothing is changed.)"""
    try:
        from hypothesis.internal.conjecture import providers
        original, empty = providers._get_local_constants, providers.Constants()
    except (ImportError, AttributeError, TypeError):
        yield
        return
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = original


def _run(runner: Runner, result: CellResult, *, max_examples: int, seed: int,
         example: Mapping[str, Any] | None, shrink: bool) -> None:
    """A cell's examples: one replayed (`example`), or the search over each stratum, then the worked examples."""
    spec, cell = runner.spec, Recorder(runner, result, seed)

    if example is not None:  # replay exactly one example
        try:
            cell.attempt(lambda: runner.run(example), example)
        except NonConformance as e:
            arrays = runner.last
            return cell.fail(dict(example), narrow_by_parameters(runner, example, e), "example", arrays)
        return cell.finish()

    phases = [Phase.generate, Phase.target] + ([Phase.shrink] if shrink else [])
    strata = generate.strata(spec)
    per_stratum = max(1, math.ceil(max_examples / len(strata)))
    per_region = max(REGION_EXAMPLES, per_stratum // REGION_SHARE)
    rng = np.random.default_rng(seed)
    # each stratum on its own, then each again within each region of the spec's sensitivity table that it reaches
    searches = [(i, fixed, per_stratum) for i, fixed in enumerate(strata)] + [
        (i, {**fixed, **region}, per_region) for region in generate.regions(spec) for i, fixed in enumerate(strata)
        if all(fixed.get(k, v) == v for k, v in region.items())]
    pools: dict[int, list[dict[str, Any]]] = {}  # where shapes compile: each stratum's shapes, its regions' too

    for index, (stratum, fixed, count) in enumerate(searches):
        # each region search draws with a seed of its own: with the cell's, every stratum would repeat the same
        # few draws, and a region needs its few to differ
        search_seed = seed if index < len(strata) else seed * 7919 + index
        groups = None
        if runner.pooled:
            if stratum not in pools:
                def supported(group: dict[str, Any]) -> bool:
                    config = generate.layer_config(spec, group)
                    return runner.impl.unsupported_config(config, dtype=runner.dtype) is None

                pools[stratum] = generate.shape_groups(spec, strata[stratum], max(1, COMPILED_SHAPES // len(strata)),
                                                       rng, accept=supported)
            groups = pools[stratum]
        failure: list[tuple[dict[str, Any], NonConformance, dict[str, Any]]] = []

        @settings(max_examples=count, deadline=None, database=None, phases=phases,
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                  verbosity=Verbosity.quiet)
        @hypothesis_seed(search_seed)
        @given(generate.examples(spec, fixed, groups=groups))
        def search(ex: dict[str, Any]) -> None:
            try:
                outcome = cell.attempt(lambda: runner.run(ex), ex)
            except NonConformance as e:
                if not failure:
                    result.first_failure = cell.attempts
                failure.append((dict(ex), e, runner.last))  # the last one recorded is the shrunk minimum
                raise
            if isinstance(outcome, Outcome):
                target(outcome.ratio, label="error/budget")
                for label, value in runner.targets(ex).items():
                    target(value, label=label)
            elif outcome == "skipped":
                reject()  # not counted towards max_examples: hypothesis draws another in its place

        try:
            with no_local_constants():
                search()
        except Unsatisfiable:  # every example of this stratum had a config the implementation cannot express
            pass
        except NonConformance:
            ex, e, arrays = failure[-1]
            return cell.fail(ex, narrow_by_parameters(runner, ex, e), "example", arrays)
        except Flaky:
            # the smallest failing example passed when hypothesis ran it last, on an instance that had run
            # others since: the failure it recorded stands (a fresh instance repeated it, `Runner.run`)
            if not failure:
                raise
            ex, e, arrays = failure[-1]
            return cell.fail(ex, e, "example", arrays)

    # Then the spec's worked examples, the hand-checked cases (after the search,
    # so that a mistake both would catch is reported with a shrunk example).
    # They check the implementation's logic, which the eager cells cover; each
    # has shapes of its own, so in the compiled mode they would cost a
    # compilation apiece, and they are left to the eager cells. An eager cell
    # that compiles per shape (Keras on JAX) still runs them: the eager cell
    # is where that implementation's logic is checked, a spec has only a few,
    # and their shapes are fixed, so from the second run on their programs
    # come from the persistent compilation cache whatever the seed.
    for worked in spec.examples if runner.mode == "eager" else ():
        try:
            cell.attempt(lambda: runner.run_worked(worked), None)
        except NonConformance as e:
            e.sections = tuple(worked.sections)
            return cell.fail(None, e, f"worked example {worked.name!r}", runner.last)
    cell.finish()


def narrow_by_parameters(runner: Runner, example: Mapping[str, Any], e: NonConformance) -> NonConformance:
    """Name the sections of the parameters a failure needs, where no narrower rule named its own.

    For each parameter the (shrunk) failing example does not hold at its domain's
    first value, the example is run again with that value; if it then passes, the
    failure needs the parameter, and the parameter's row names the rules it
    takes part in (dropout at inference fails only with dropout > 0: §8). The
    reason says which replays passed. A replay that lands in a special case the
    spec's conditions single out, and the failing example did not, is left out:
    there a mistake may vanish for reasons of its own (with d_model = 1 a layer
    norm gives beta whatever came before it). Where none does, the sections stay those
    of the output's row. Only for a failing cell, so its cost (a run apiece) is
    paid once.
    """
    if not e.narrow:
        return e
    spec, needed = runner.spec, []
    special = conditions.special_cases(spec, example, generate.make_arrays(spec, example)[1])
    for param in spec.params.values():
        first = param.domain[0]
        if example.get(param.name, first) == first or not param.sections:
            continue
        trial = {**example, param.name: first}
        try:
            if conditions.special_cases(spec, trial, generate.make_arrays(spec, trial)[1]) - special:
                continue  # a case the spec singles out (d_model = 1, where a layer norm gives beta): no evidence
            runner.run(trial)
        except Exception:  # still fails there, deviates as recorded, or cannot be built: not telling
            continue
        needed.append((param, first))
    if needed:
        found = [s for param, _ in needed for s in param.sections]
        # a region that held the failure still comes first: in a small shrunk example it may hold the
        # failure by chance (the one position that differs is a padded one), so the parameters are added
        e.sections = tuple(dict.fromkeys([*e.sections, *found] if e.inside else found))
        e.reason += "; it passes with " + " or ".join(
            f"{param.name} = {first!r} (§{', §'.join(param.sections)})" for param, first in needed)
    return e


def run_matrix(specs: list[Spec], impls: list[Registered], *, dtypes: list[str] | None = None,
               devices: list[str] | None = None, modes: list[str] | None = None, max_examples: int = 100,
               seed: int = 0, on_result: Callable[[CellResult], None] | None = None,
               ledger: list[Deviation] | None = None) -> list[CellResult]:
    """Every cell of the given specs and implementations; one failing cell never stops the others.

    `ledger`: as for `run_cell`, read once here when None.
    """
    ledger = deviations.load() if ledger is None else ledger
    results = []
    for spec in specs:
        for impl in (i for i in impls if i.component == spec.component):
            for dtype, device, mode in cells_of(dtypes, devices, modes):
                cell = run_cell(spec, impl, dtype, device, mode, max_examples=max_examples, seed=seed,
                                ledger=ledger)
                results.append(cell)
                if on_result:
                    on_result(cell)
    return results


def cells_of(dtypes: list[str] | None = None, devices: list[str] | None = None,
             modes: list[str] | None = None) -> list[tuple[str, str, str]]:
    """The (dtype, device, mode) cells to run: those asked for, else the whole axes.

    Cells an implementation cannot run are still listed; they come out as
    unsupported or not-available, so the matrix has the same shape everywhere.
    """
    return [(d, dev, m) for dev in (devices or DEVICES) for m in (modes or MODES) for d in (dtypes or DTYPES)]
