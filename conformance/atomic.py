"""Writing a file whole or not at all: to a temporary file beside it, then `os.replace`.

Results, merged results, the HTML report and its .npz files are all written
this way, so a reader (or a second run writing at the same moment) sees either
the old file or the complete new one, never a half-written one, and a failure
part-way leaves an existing file as it was.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


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
