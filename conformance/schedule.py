"""Which cells run first, and which cells a shard runs: estimates of each cell's cost.

A run hands its cells to the workers longest first, so that the last cell to
finish is a short one; `--shard K/N` splits a matrix into N parts of about
equal cost for N machines. Both need a cell's cost before it has run:

- from a previous results file of the same cells, when the run has one (its
  `--output` from an earlier run): the seconds each cell took there. Only for
  the order: it differs between machines;
- otherwise, and always for shards (every machine must split the same way),
  from the committed baseline `reports/baseline/` (eager CPU cells of the
  built-in implementations, scaled to the examples asked for), and for cells it
  lacks, from the per-example and per-compilation seconds below, measured on
  a 2-core CPU machine.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

from conformance.engine import COMPILED_SHAPES
from conformance.workers import CellTask
from conformance.vocabulary import DTYPES, SHIPPED, Slot, UsageError, Verdict
from conformance.components import framework_layer

BASELINE = Path(__file__).resolve().parent.parent / "reports" / "baseline"
#: Examples per cell the baseline was run with (its `--profile dev`).
BASELINE_EXAMPLES = 25
#: Seconds per example of an eager CPU cell, by (framework, Keras backend), where the baseline has none.
PER_EXAMPLE = {("numpy", None): 0.01, ("torch", None): 0.03, ("keras", "tensorflow"): 0.08,
               ("keras", "torch"): 0.03, ("keras", "jax"): 0.1}
#: Seconds per compilation of one shape in the compiled mode.
PER_COMPILE = {("torch", None): 25.0, ("keras", "tensorflow"): 5.0, ("keras", "torch"): 45.0, ("keras", "jax"): 3.0}
#: What a cell that comes out unsupported or not-available costs: starting it.
TRIVIAL = 0.05


@functools.cache
def _baseline() -> dict[tuple, float]:
    """(component, implementation, backend, dtype) -> seconds per example asked for, from reports/baseline/."""
    found: dict[tuple, float] = {}
    for path in sorted(glob.glob(str(BASELINE / "results-*.json"))):
        try:
            cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
        except (OSError, ValueError, KeyError):
            continue
        for c in cells:
            if c.get("mode") == "eager" and c.get("device") == "cpu" and Verdict(c.get("verdict")).ran:
                found[(c["component"], c["implementation"], c["backend"], c["dtype"])] = \
                    c["seconds"] / BASELINE_EXAMPLES
    return found


def _gpu() -> bool:
    return any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/kfd"))


def _runs(task: CellTask) -> bool:
    """Whether the cell will run, as far as is known without importing anything."""
    impl, backend = task.impl, task.backend
    modules = {"torch": ["torch"], "keras": ["keras", backend or "tensorflow"]}.get(impl.framework, [])
    if any(importlib.util.find_spec(m) is None for m in modules):
        return False
    if task.device == "cuda" and not _gpu():
        return False
    if framework_layer(impl.target) is not None and (task.mode != "eager" or task.dtype not in DTYPES[:2]):  # impls.FrameworkLayer's axes
        return False
    return not (impl.source == SHIPPED and impl.framework == "numpy" and task.mode != "eager")


def static_cost(task: CellTask) -> float:
    """A cell's estimated seconds from the committed baseline and the tables above: the same on every machine."""
    if not _runs(task):
        return TRIVIAL
    key = (task.impl.framework, task.backend)
    per_example = _baseline().get((task.spec.component, task.impl.label, task.backend, task.dtype),
                                  PER_EXAMPLE.get(key, 0.1))
    cost = per_example * task.max_examples
    if task.mode != "eager":
        cost += PER_COMPILE.get(key, 10.0) * COMPILED_SHAPES
    return round(cost, 3)


def previous_costs(path: str | None) -> dict[str, float]:
    """Seconds per slot (`CellTask.label`) from an earlier results file, if there is a readable one."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        cells = json.loads(Path(path).read_text(encoding="utf-8"))["cells"]
        return {Slot.of(c).label: float(c["seconds"]) for c in cells}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def longest_first(tasks: Sequence[CellTask], previous: Mapping[str, float] | None = None) -> list[int]:
    """Task indices, the costliest first (ties in the given order)."""
    previous = previous or {}
    cost = [previous.get(t.label, static_cost(t)) for t in tasks]
    return sorted(range(len(tasks)), key=lambda i: -cost[i])


def parse_shard(text: str) -> tuple[int, int]:
    """`K/N` -> (K, N), 1 <= K <= N."""
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 1 <= int(k) <= int(n):
        raise UsageError(f"--shard {text!r} is not K/N with 1 <= K <= N, e.g. 2/3 for the second of three parts")
    return int(k), int(n)


def shard(tasks: Sequence[CellTask], k: int, n: int) -> list[int]:
    """The indices of part k of n (1-based): each cell, costliest first, goes to the part with the least cost
    so far. Deterministic: it depends on the cells and the committed baseline only, so every machine
    given the same command agrees on the split."""
    load = [0.0] * n
    parts: list[list[int]] = [[] for _ in range(n)]
    cost = [static_cost(t) for t in tasks]
    for i in sorted(range(len(tasks)), key=lambda i: (-cost[i], tasks[i].label)):
        part = min(range(n), key=lambda p: (load[p], p))
        load[part] += cost[i]
        parts[part].append(i)
    return sorted(parts[k - 1])
