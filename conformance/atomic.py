"""Writing a file whole or not at all: to a temporary file beside it, then `os.replace`.

Results, merged results, the HTML report and its .npz files are all written
this way, so a reader (or a second run writing at the same moment) sees either
the old file or the complete new one, never a half-written one, and a failure
part-way leaves an existing file as it was. `check_output` checks, before a
run starts, that its output can be written at all.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from conformance.vocabulary import UsageError


def atomic_write(path: Path | str, write: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Call `write(file)` on a temporary file in `path`'s folder, then move it over `path`.

    The file gets the permissions an ordinary `open` would give it (mkstemp's
    0600 would hide results from other users).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def check_output(path: str, flag: str = "--output") -> None:
    """An output file can be written: not a folder, its folder exists or can be made, and takes a file.

    Checked before any work, so that a run never ends unable to write what it found."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise UsageError(f"{flag} {path!r} is a directory; give a file path, e.g. {os.path.join(path, 'results.json')}")
    folder = os.path.dirname(target)
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag} {path!r}: {parent!r} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path!r}: cannot make its folder {folder!r}: {e.strerror or e}") from None
    try:  # a trial file of a megabyte: a read-only or full disk fails here, not after the run
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".probe") as f:
            f.write(b"\0" * (1 << 20))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise UsageError(f"{flag} {path!r} cannot be written: {e.strerror or e} in {folder!r}") from None
