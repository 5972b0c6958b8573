"""Atomic file output shared by every stage: readers see the old file or the whole new one.

Files a person or another process reads while the line runs (faces, PIN letters, reject
reports, CA material) are written to a temporary file beside the target, synced, and
renamed over it; a crash never leaves half a file under the real name. They are the
owner's alone (0600) unless a caller asks for another mode: what the line writes is
personal data or key material, and a data dir is nobody else's to read.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(
    path: Path, *, mode: int = 0o600, text: bool = False, **open_args: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path``.

    ``mode`` is set before any byte is written, so a private file is never readable by
    others, not even half-written. ``open_args`` go to ``open`` (encoding, newline).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w" if text else "wb", **open_args) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str, *, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` atomically with ``mode``; return ``path``."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_open(path, mode=mode) as fh:
        fh.write(raw)
    return path
