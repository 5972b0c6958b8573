"""The simulated chips of produced cards, kept in the data dir so a card can come back.

A real card carries its keys, certificates, PIN and PUK in its chip; a simulated one
keeps them here, one file per chip serial (ICCSN): ``<data dir>/chips/<serial>.chip``.
The content is sealed with the line's master key (``db.secrets.SecretBox``, bound to
the serial), so the file shows nothing of the keys or the PIN to whoever reads the
disk, and the folder and files are readable by the owner only. A station saves a
card's chip when it has made it; an update desk loads it when the card is inserted
and saves it after every change it makes, as a chip keeps every write it accepted.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

from db.files import atomic_write
from db.secrets import SecretBox

_SERIAL = re.compile(r"^[0-9A-Za-z]{1,64}$")


def _context(serial: str) -> str:
    return f"chip:{serial}"


class SimChipStore:
    """Sealed chip contents by serial. Thread-safe: one line's station and desk threads
    may share it."""

    def __init__(self, directory: Path, box: SecretBox) -> None:
        self.directory = directory
        self._box = box
        self._lock = threading.Lock()

    def _path(self, serial: str) -> Path:
        if not _SERIAL.match(serial):
            raise ValueError(f"not a chip serial: {serial!r}")
        return self.directory / f"{serial}.chip"

    def save(self, serial: str, content: dict[str, Any]) -> None:
        sealed = self._box.seal(json.dumps(content, sort_keys=True), context=_context(serial))
        with self._lock:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self._path(serial), sealed.encode(), mode=0o600)

    def load(self, serial: str) -> dict[str, Any] | None:
        path = self._path(serial)
        with self._lock:
            if not path.exists():
                return None
            sealed = path.read_text()
        content: dict[str, Any] = json.loads(
            self._box.open(sealed, context=_context(serial)).reveal()
        )
        return content

    def exists(self, serial: str) -> bool:
        return self._path(serial).exists()

    def serials(self) -> list[str]:
        if not self.directory.exists():
            return []
        return sorted(p.stem for p in self.directory.glob("*.chip"))
