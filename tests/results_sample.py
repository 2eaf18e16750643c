"""Small real results, for the tests of results files, merge, compare and the report.

Real `run_cell` calls on the NumPy implementation (a few examples each), one
cell of every verdict but error, and a deliberately wrong plug-in, so that the
files under test are the ones the suite writes.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from conformance.engine import CellResult, run_cell
from conformance.results import write_results
from conformance.spec import load_spec
from conformance.registry import find_shipped, resolve

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WRONG = f"{TESTS / 'wrong_mha.py'}:InvertedMask"


@functools.cache
def _cells() -> tuple[CellResult, ...]:
    mha, ffn = load_spec(ROOT / "spec" / "mha.md"), load_spec(ROOT / "spec" / "ffn.md")
    numpy_mha = find_shipped("mha", "numpy")
    return (
        run_cell(mha, numpy_mha, "float64", "cpu", max_examples=8),
        run_cell(mha, numpy_mha, "float32", "cpu", max_examples=8),
        run_cell(mha, numpy_mha, "float32", "cpu", "compiled"),  # unsupported: NumPy has no compiled mode
        run_cell(mha, numpy_mha, "float32", "cuda"),  # not-available
        run_cell(ffn, find_shipped("ffn", "numpy"), "float32", "cpu", max_examples=8),
        run_cell(mha, resolve("mha", WRONG), "float32", "cpu", max_examples=20),  # non-conformant
    )


def cells() -> list[CellResult]:
    """Fresh copies: a test may change them."""
    return [copy.deepcopy(c) for c in _cells()]


def write(path: Path, command: list[str] | None = None) -> Path:
    return write_results(path, cells(), command=command or ["conformance", "run", "--test"])


def read(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def save(path: Path, data: dict[str, Any]) -> Path:
    Path(path).write_text(json.dumps(data, indent=1))
    return Path(path)


def find(data: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """The one cell of a document with these field values."""
    found = [c for c in data["cells"] if all(c[k] == v for k, v in fields.items())]
    assert len(found) == 1, f"{len(found)} cells match {fields}"
    return found[0]
