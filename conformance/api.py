"""Checking an implementation from Python, e.g. inside a project's own pytest suite.

    from conformance import assert_conformant

    def test_my_attention_follows_the_spec():
        assert_conformant("mha", MyAttention, dtypes=["float32"])   # a class, an instance, or a name

The cells run in worker processes, as with the `conformance` command: an
implementation that hangs, crashes or exits ends its cell as `error`, and the
calling test process goes on. An object is sent to the worker with
cloudpickle, so a class defined inside a test function works too; what the
implementation does to its own state there is not seen here.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from conformance.engine import CellResult, cells_of
from conformance.results import format_cell, gradients_failed, summary_line
from conformance.spec import find_spec_dir, list_components, load_spec
from conformance.workers import CellTask, ImplRef, Interrupted, Limits, Pool, default_jobs, resolve_ref
from conformance.vocabulary import UsageError, Verdict
from conformance.registry import keras_backend


def check(component: str, implementation: Any, *, dtypes: Sequence[str] | None = None,
          devices: Sequence[str] | None = None, modes: Sequence[str] | None = None, examples: int = 100,
          seed: int = 0, timeout: float = Limits.example, compile_timeout: float = Limits.compile,
          cell_timeout: float | None = None, jobs: int | None = None, example: dict[str, Any] | None = None,
          ledger: Sequence[str] = ()) -> list[CellResult]:
    """Run every (dtype, device, mode) cell of one implementation; `implementation` is what `conformance
    check --impl` takes (a registered name, 'module:attr' or 'file.py:attr'), or an object following the
    protocol in impls/__init__.py, or its class (constructed with no arguments, as the command line does).

    Cells it cannot run here come back as unsupported or not-available; the time limits
    and `jobs` are those of `conformance check` (--timeout, --compile-timeout, --cell-timeout,
    -j: by default as many cells at once as there are CPUs); `example` replays one example (as a
    failure's repro line prints it), and `ledger` adds ledger files to the built-in one ("none" drops it),
    as --ledger does."""
    if component not in list_components():
        raise UsageError(f"unknown component {component!r}; known: {', '.join(list_components())}")
    spec = load_spec(find_spec_dir() / f"{component}.md")
    from conformance.cli import ledgers
    from conformance.generate import parse_example

    entries = ledgers(list(ledger))
    replay = parse_example(spec, json.dumps(example)) if example is not None else None
    with Pool(jobs=jobs or default_jobs(), limits=Limits(timeout, compile_timeout, cell_timeout)) as pool:
        if isinstance(implementation, str):
            impl = resolve_ref(pool, component, implementation)
        else:
            impl = ImplRef.of_object(_constructed(implementation))
            if impl.component != component:
                raise UsageError(f"{impl.target!r} implements {impl.component!r}, not {component!r}")
        env = (("KERAS_BACKEND", keras_backend()),) if impl.framework == "keras" else ()
        tasks = [CellTask(impl, spec, d, dev, m, max_examples=examples, seed=seed, env=env, example=replay,
                          ledger=tuple(entries))
                 for d, dev, m in cells_of(list(dtypes or []), list(devices or []), list(modes or []))]
        try:
            return pool.run(tasks)
        except Interrupted:
            raise KeyboardInterrupt from None


def _constructed(implementation: Any) -> Any:
    """An instance: a class is constructed with no arguments, as `--impl module:Class` is."""
    if not isinstance(implementation, type):
        return implementation
    try:
        return implementation()
    except Exception as e:
        name = f"{implementation.__module__}:{implementation.__qualname__}"
        raise UsageError(f"cannot construct {name} (a class is called with no arguments): "
                         f"{type(e).__name__}: {e}") from None


def assert_conformant(component: str, implementation: Any, **kwargs: Any) -> list[CellResult]:
    """`check`, raising AssertionError with each failing cell's reason, minimal example and repro line (a
    cell whose outputs are not conformant, or whose gradients are non-conformant).

    Cells that cannot run here (unsupported, not-available) are returned, not failures;
    at least one cell must have run."""
    cells = check(component, implementation, **kwargs)
    ran = [c for c in cells if Verdict(c.verdict).ran]
    bad = [c for c in ran if c.verdict != Verdict.CONFORMANT or gradients_failed(c.gradients)]
    if bad or not ran:
        raise AssertionError("\n".join(format_cell(c) for c in bad)
                             or f"no cell could run here: {summary_line(cells)}")
    return cells
