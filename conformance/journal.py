"""The journal of a run: each finished cell, appended beside the results file as soon as it ends.

`conformance run` and `conformance check -o` keep `<output>.journal` while they
run: a JSON object per line, first the run's identity (what was asked for: the
cells, examples, seed, ledger), then one line per finished cell. A finished
run replaces it with the results file; an interrupted or killed one leaves it,
and `--resume` runs only the cells it lacks. A last line cut short by a crash
is ignored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from conformance.atomic import atomic_write
from conformance.engine import CellResult
from conformance.vocabulary import UsageError

FORMAT = "conformance-journal/1"


def path_for(output: Path | str) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".journal")


class Journal:
    """Appends finished cells, one line each, flushed to disk before the next cell is reported."""

    def __init__(self, path: Path, identity: Mapping[str, Any], done: Mapping[int, CellResult] | None = None):
        self.path = path
        lines = [{"journal": FORMAT, "run": dict(identity)},
                 *({"index": i, "cell": c.to_json()} for i, c in sorted((done or {}).items()))]
        # a fresh file with what is already known: a torn last line of an old one is not carried on
        atomic_write(path, lambda f: f.writelines(json.dumps(line, allow_nan=True) + "\n" for line in lines))
        self._file = open(path, "a", encoding="utf-8")

    def append(self, index: int, cell: CellResult) -> None:
        self._file.write(json.dumps({"index": index, "cell": cell.to_json()}, allow_nan=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self, remove: bool = False) -> None:
        self._file.close()
        if remove:
            self.path.unlink(missing_ok=True)


def read(path: Path, identity: Mapping[str, Any]) -> dict[int, CellResult]:
    """The finished cells of an earlier run of the same cells, by task index; UsageError if there is none."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"--resume: no journal {str(path)!r} to resume (it is kept only while a run is "
                         f"unfinished); run without --resume") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--resume: cannot read the journal {str(path)!r}: {e}") from None
    entries = []
    for n, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except (json.JSONDecodeError, RecursionError):
            if n == len(lines) - 1:  # the line being written when the run died
                break
            raise UsageError(f"--resume: the journal {str(path)!r} is damaged at line {n + 1}; "
                             f"run without --resume") from None
    if not entries or not isinstance(entries[0], dict) or entries[0].get("journal") != FORMAT:
        raise UsageError(f"--resume: {str(path)!r} is not a journal of this version ({FORMAT}); "
                         f"run without --resume")
    was = entries[0].get("run", {})
    changed = [k for k in sorted(set(identity) | set(was)) if identity.get(k) != was.get(k)]
    if changed:
        raise UsageError(f"--resume: the journal {str(path)!r} is of a different run ({', '.join(changed)} "
                         f"differ); give the same arguments, or run without --resume")
    done = {}
    for entry in entries[1:]:
        try:
            done[int(entry["index"])] = CellResult.from_json(entry["cell"])
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"--resume: the journal {str(path)!r} has a damaged entry; run without --resume") \
                from None
    return done
