"""Combining results from several runs, and reading one verdict per matrix slot out of them.

A merged file has the format of a run's file (results.schema.json): the
environments of all its inputs in one list, each cell pointing to the one it
came from. Merging is idempotent: an environment or a cell that is already
there (the same file merged twice, or a merged file merged with one of its
sources) is kept once, so merged files can be merged again.

Two environments may both have run the same slot, i.e. the same (component,
implementation, backend, device, mode, dtype): the NumPy cells of a CPU and a
GPU machine, say. Where one verdict per slot is needed (the report's matrix,
`compare`) it is the worst of those that ran; see `representative`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Iterable, Sequence

from conformance.results import SCHEMA, gradients_failed, now
from conformance.vocabulary import SEVERITY, Slot, UsageError

#: Which cell of a slot speaks for it: failures first, then the largest error; a cell that
#: could not run only when no environment ran the slot (unsupported says more than not-available).
_RANK = {v: i for i, v in enumerate(SEVERITY)}


def _identity(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def merge_documents(inputs: Sequence[tuple[str, dict[str, Any]]], command: list[str]) -> dict[str, Any]:
    """One document from (source name, document) pairs, as `schema.load_results` returns them.

    Each environment records the file it first came from as `source`; that is
    not part of its identity, so a file named two ways is still merged once.
    """
    environments: list[dict[str, Any]] = []
    env_index: dict[str, int] = {}
    cells: list[dict[str, Any]] = []
    seen: set[str] = set()
    verdicts: dict[tuple[int, Slot], tuple[str, str]] = {}  # (environment, slot) -> (verdict, file)
    for source, doc in inputs:
        renumber = {}
        for i, env in enumerate(doc["environments"]):
            identity = _identity({k: v for k, v in env.items() if k != "source"})
            if identity not in env_index:
                env_index[identity] = len(environments)
                environments.append({**env, "source": env.get("source", source)})
            renumber[i] = env_index[identity]
        for cell in doc["cells"]:
            cell = {**cell, "env": renumber[cell["env"]]}
            slot = Slot.of(cell)
            verdict, first = verdicts.setdefault((cell["env"], slot), (cell["verdict"], source))
            if verdict != cell["verdict"]:
                raise UsageError(f"{slot.label}: {first} says {verdict} and {source} says "
                                 f"{cell['verdict']} for the same environment; one run cannot give a slot "
                                 f"two verdicts, so one of the files is not what it seems")
            identity = _identity(cell)
            if identity not in seen:
                seen.add(identity)
                cells.append(cell)
    merged = {"schema": SCHEMA, "created": now(), "command": list(command), "environments": environments,
              "cells": cells}
    incomplete = _incomplete(inputs, cells)
    if incomplete:
        merged["incomplete"] = incomplete
    return merged


def _incomplete(inputs: Sequence[tuple[str, dict[str, Any]]], cells: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The slots that interrupted inputs did not run and no other input has; None when there are none."""
    present = {Slot.of(c).label for c in cells}
    missing, reasons = [], []
    for source, doc in inputs:
        if doc.get("incomplete"):
            reasons.append(f"{source}: {doc['incomplete']['reason']}")
            missing += [m for m in doc["incomplete"]["missing"] if m not in present and m not in missing]
    return {"reason": "; ".join(reasons), "missing": missing} if missing else None


def by_slot(cells: Iterable[dict[str, Any]]) -> dict[Slot, list[dict[str, Any]]]:
    """Cells grouped by slot, each group in the order of the input."""
    slots: dict[Slot, list[dict[str, Any]]] = defaultdict(list)
    for cell in cells:
        slots[Slot.of(cell)].append(cell)
    return dict(slots)


def representative(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The cell that speaks for a slot run in several environments: the worst of those that ran (by verdict,
    then non-conformant gradients before any others, then the largest error / budget)."""
    def badness(cell: dict[str, Any]) -> tuple[int, int, float]:
        ratio = cell["max_ratio"]
        return (_RANK.get(cell["verdict"], 0), 0 if gradients_failed(cell.get("gradients") or {}) else 1,
                -(ratio if ratio is not None and ratio == ratio else 0.0))

    return min(cells, key=badness)


def slots(doc: dict[str, Any]) -> dict[Slot, dict[str, Any]]:
    """One cell per slot of a document."""
    return {key: representative(cells) for key, cells in by_slot(doc["cells"]).items()}
