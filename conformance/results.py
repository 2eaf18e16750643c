"""Results files (versioned JSON, written whole or not at all) and the terminal summary."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any, Iterable

from conformance.atomic import atomic_write
from conformance.engine import CellResult, machine
from conformance.vocabulary import impl_label, Verdict

#: The format of results files: conformance/results.schema.json describes it,
#: reports/README.md in prose. /3 added the list of environments (one per run a
#: file's cells come from) and each cell's `env`, `samples` and `output_ratio`;
#: /4 each cell's `evidence`: the arrays of the example a non-conformant cell
#: failed on (or a known deviation first deviated on), at most 4096 elements,
#: from which the report draws and writes its .npz files (conformance/evidence.py);
#: /5 each cell's `first_failure`, the examples run up to the first that failed;
#: /6 each cell's `properties`: what each of the spec's properties came to (conformance/properties.py);
#: /7 each cell's `gradients`: what its vjp came to against the reference's backward pass, judged apart
#: from its verdict, with a failure's example, command and arrays (conformance/gradients.py).
SCHEMA = "conformance-results/7"
_PACKAGES = ("numpy", "ml_dtypes", "hypothesis", "torch", "keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib")


def environment() -> dict[str, Any]:
    """Where the results came from: interpreter, machine, and framework versions."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return {**machine(), "machine": platform.machine(), "packages": versions,
            "keras_backend": os.environ.get("KERAS_BACKEND")}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_results(path: Path | str, cells: Iterable[CellResult], command: list[str] | None = None,
                  incomplete: dict[str, Any] | None = None) -> Path:
    """Write one run's results file atomically: a reader sees the old file or the whole new one.

    A run has one environment, index 0, which every cell points to; `conformance
    merge` combines files from several runs and renumbers them. `incomplete`:
    for a run that was interrupted, {"reason": ..., "missing": [the slots not run]}.
    """
    command = list(command if command is not None else sys.argv)
    created = now()
    document = {
        "schema": SCHEMA,
        "created": created,
        "command": command,
        "environments": [{"created": created, "command": command, **environment()}],
        "cells": [{**c.to_json(), "env": 0} for c in cells],
    }
    if incomplete is not None:
        document["incomplete"] = incomplete
    return write_document(path, document)


def write_document(path: Path | str, data: dict[str, Any]) -> Path:
    """Write a whole results document (a run's or a merge's) as strict JSON, atomically."""
    def dump(f: IO[str]) -> None:
        json.dump(_finite_floats(data), f, indent=1, allow_nan=False, default=_finite)
        f.write("\n")

    return atomic_write(path, dump)


def _finite_floats(value: Any) -> Any:
    """Non-finite floats (an infinite error) as strings, so the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_floats(v) for v in value]
    return value


def _finite(value: Any) -> Any:
    raise TypeError(f"cannot write {type(value).__name__} to a results file")


def format_cell(c: CellResult, width: int = 24) -> str:
    """One line per cell (more when it fails); `width` is the implementation column's. The gradients, where
    they were checked, end the first line; their failure adds its own lines after the cell's."""
    impl = impl_label(c.implementation, c.backend)
    ratio = "-" if c.max_ratio is None else f"{c.max_ratio:.3g}"
    time = f"{c.seconds:>7.1f}s" + (f" (compile {c.compile_seconds:.1f}s)" if c.compile_seconds else "")
    head = (f"{c.component:<15} {impl:<{width}} {c.device:<5} {c.mode:<8} {c.dtype:<8} {c.verdict:<14} "
            f"{c.examples:>5} {ratio:>9} {time}")
    clause, failure = _gradients(c.gradients)
    head += clause
    if c.skipped:
        head += f"  ({c.skipped} skipped)"
    asked = getattr(c, "examples_asked", None)
    ran = c.examples + (c.known_deviations or 0)  # an example that deviated as the ledger records ran too
    if asked and ran < asked and c.verdict in (Verdict.CONFORMANT, Verdict.KNOWN_DEVIATION):
        why = f"; {c.skipped} draws were skipped: {c.skip_reason}" if c.skipped else ""
        failure = [f"    warning: {ran} of the {asked} examples asked for ran{why}", *failure]
    if c.verdict in (Verdict.CONFORMANT, Verdict.UNSUPPORTED, Verdict.NOT_AVAILABLE):  # the reason of the latter two is in the file
        return "\n".join([head, *failure])
    lines = [head, f"    {c.reason}"]
    if c.sections:
        lines.append(f"    spec: {', '.join(c.sections)}")
    if c.counterexample:
        what = ("first example that deviated" if c.verdict == Verdict.KNOWN_DEVIATION
                else "example that breaks it" if {"property", "after"} & set(c.counterexample) else "minimal example")
        lines.append(f"    {what}: {json.dumps(c.counterexample)}")
    if c.repro:
        lines.append(f"    reproduce: {c.repro}")
    return "\n".join([*lines, *failure])


def gradient_verdict(gradients: dict[str, Any]) -> str | None:
    """A cell's gradient verdict (conformance/gradients.py); None where the cell did not run."""
    return gradients.get("verdict") if gradients else None


def gradients_failed(gradients: dict[str, Any]) -> bool:
    """Whether a cell's gradients are non-conformant: a failure, as a non-conformant verdict is."""
    return gradient_verdict(gradients) == Verdict.NON_CONFORMANT


def failed_gradient(gradients: dict[str, Any]) -> str | None:
    """The name of the gradient a failure names (`gradient 'W_1' differs ...`); None where none failed, and
    where the failure names none (a vjp that raised)."""
    named = re.match(r"gradient '([^']*)'", gradients.get("reason") or "") if gradients_failed(gradients) else None
    return named[1] if named else None


def _gradients(gradients: dict[str, Any]) -> tuple[str, list[str]]:
    """The end of a cell's first line where its gradients were checked (`  gradients: conformant 0.0531`, the
    largest error / budget; `  gradients: non-conformant (W_1)`, the gradient that failed), and a failure's
    lines: its reason, spec sections and command."""
    verdict = gradient_verdict(gradients)
    if verdict == Verdict.CONFORMANT:
        ratio = gradients.get("max_ratio")
        skipped = gradients.get("skipped") or 0  # examples outside the dtype's range for the gradients
        return (f"  gradients: conformant {'-' if ratio is None else f'{ratio:.3g}'}"
                f"{f' ({skipped} out of range)' if skipped else ''}", [])
    if verdict == Verdict.KNOWN_DEVIATION:
        return f"  gradients: known-deviation ({gradients.get('deviation')})", []
    if verdict != Verdict.NON_CONFORMANT:  # unsupported or not checked: the file says why
        return "", []
    named = failed_gradient(gradients)
    lines = [f"    gradients: {gradients.get('reason')}"]
    if gradients.get("sections"):
        lines.append(f"    gradients spec: {', '.join(gradients['sections'])}")
    if gradients.get("repro"):
        lines.append(f"    reproduce the gradients: {gradients['repro']}")
    return f"  gradients: non-conformant{f' ({named})' if named else ''}", lines


def header(width: int = 24) -> str:
    return (f"{'component':<15} {'implementation':<{width}} {'dev.':<5} {'mode':<8} {'dtype':<8} {'verdict':<14} "
            f"{'ex.':>5} {'err/bdgt':>9} {'time':>8}")



def summary_line(cells: list[CellResult]) -> str:
    counts = {v: sum(c.verdict == v for c in cells) for v in Verdict}
    line = ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no cells"
    failed = sum(gradients_failed(c.gradients) for c in cells)
    return line + (f"; {failed} with non-conformant gradients" if failed else "")
