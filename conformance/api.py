"""Checking an implementation from Python, e.g. inside a project's own pytest suite.

    from conformance import assert_conformant

    def test_my_attention_follows_the_spec():
        assert_conformant("mha", MyAttention(), dtypes=["float32"])
"""

from __future__ import annotations

from typing import Any, Sequence

from conformance.engine import CellResult, cells_of, run_cell
from conformance.results import format_cell, summary_line
from conformance.spec import find_spec_dir, list_components, load_spec
from impls import Registered, UsageError, _describe, resolve


def check(component: str, implementation: Any, *, dtypes: Sequence[str] | None = None,
          devices: Sequence[str] | None = None, modes: Sequence[str] | None = None, examples: int = 100,
          seed: int = 0) -> list[CellResult]:
    """Run every (dtype, device, mode) cell of one implementation; `implementation` is an object
    following the protocol in impls/__init__.py, a registered name, or 'module:attr'.

    Cells it cannot run here come back as unsupported or not-available."""
    if component not in list_components():
        raise UsageError(f"unknown component {component!r}; known: {', '.join(list_components())}")
    spec = load_spec(find_spec_dir() / f"{component}.md")
    if isinstance(implementation, str):
        impl: Registered = resolve(component, implementation)
    else:
        cls = type(implementation)
        # shown as module:attr, which is also what its repro line passes to --impl
        impl = _describe(implementation, f"{cls.__module__}:{cls.__qualname__}", "plugin",
                         default_name=cls.__name__)
    return [run_cell(spec, impl, d, dev, m, max_examples=examples, seed=seed)
            for d, dev, m in cells_of(list(dtypes or []), list(devices or []), list(modes or []))]


def assert_conformant(component: str, implementation: Any, **kwargs: Any) -> list[CellResult]:
    """`check`, raising AssertionError with each failing cell's reason, minimal example and repro line.

    Cells that cannot run here (unsupported, not-available) are returned, not failures;
    at least one cell must have run."""
    cells = check(component, implementation, **kwargs)
    ran = [c for c in cells if c.verdict not in ("unsupported", "not-available")]
    bad = [c for c in ran if c.verdict != "conformant"]
    if bad or not ran:
        raise AssertionError("\n".join(format_cell(c) for c in bad)
                             or f"no cell could run here: {summary_line(cells)}")
    return cells
