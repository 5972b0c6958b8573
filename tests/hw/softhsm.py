"""SoftHSM2 for tests: one private token directory per pytest process, and blank cards.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the library initialises (and again on every
``reinitialize``), and python-pkcs11 loads the library once per process. So every test
in a process that uses SoftHSM (the CA key, the station's chip) shares one
configuration, set by ``shared_softhsm`` before anything loads the library, and tells
its tokens apart by unique labels (``unique``).

A blank card is a token with a label and the manufacturer's transport key as SO PIN,
whose user PIN is not initialised. ``softhsm2-util --init-token`` always sets a user
PIN, so blanks are made with OpenSC's ``pkcs11-tool --init-token`` on the free slot,
which calls C_InitToken alone (~10 ms each).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE = "/usr/lib/softhsm/libsofthsm2.so"
INSTALL = "apt-get install -y --no-install-recommends softhsm2 opensc"

_FREE_SLOT = re.compile(r"^Slot \d+ \((0x[0-9a-f]+)\):.*\n\s+token state:\s+uninitialized", re.M)


def require_softhsm() -> None:
    """Skip (locally) or fail (CI=true) when SoftHSM2 or OpenSC is not installed."""
    missing = [
        what
        for what, present in (
            (MODULE, Path(MODULE).exists()),
            ("softhsm2-util", shutil.which("softhsm2-util")),
            ("pkcs11-tool", shutil.which("pkcs11-tool")),
        )
        if not present
    ]
    if not missing:
        return
    message = f"SoftHSM2/OpenSC missing ({', '.join(missing)}): {INSTALL}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def unique(prefix: str) -> str:
    """A token label no other test in this process uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class SoftHsm:
    """The process's SoftHSM2 configuration and token directory."""

    conf: Path
    token_dir: Path
    module: str = MODULE

    @property
    def env(self) -> dict[str, str]:
        """What a subprocess needs to see these tokens (on top of ``os.environ``)."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def make_token(self, label: str, *, so_pin: str, pin: str) -> None:
        """An initialised token with a user PIN (a CA token, not a blank card)."""
        subprocess.run(
            [
                *("softhsm2-util", "--init-token", "--free", "--label", label),
                *("--so-pin", so_pin, "--pin", pin),
            ],
            check=True,
            capture_output=True,
            env=self.env,
        )

    def make_blank(self, label: str, transport_pin: str) -> None:
        """A blank card: token ``label``, SO PIN ``transport_pin``, no user PIN yet."""
        if len(label.encode()) > 32:
            raise ValueError(f"token labels hold 32 bytes at most: {label!r}")
        listing = self.tool("--list-slots").stdout
        free = _FREE_SLOT.search(listing)
        if free is None:
            raise RuntimeError(f"SoftHSM2 shows no free slot:\n{listing}")
        slot = free.group(1)
        self.tool("--slot", slot, "--init-token", "--label", label, "--so-pin", transport_pin)

    def tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run OpenSC's ``pkcs11-tool`` on this token directory."""
        return subprocess.run(
            ["pkcs11-tool", "--module", self.module, *args],
            check=check,
            capture_output=True,
            text=True,
            env=self.env,
        )


_shared: SoftHsm | None = None


def shared_softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """The process's SoftHSM2, made on first use: ``SOFTHSM2_CONF`` points at a private
    token directory for the rest of the process (set again on every call, in case some
    code changed it; the directory is kept: a library initialised with it must find it).
    """
    global _shared
    require_softhsm()
    if _shared is None:
        root = tmp_path_factory.mktemp("softhsm")
        token_dir = root / "tokens"
        token_dir.mkdir()
        conf = root / "softhsm2.conf"
        conf.write_text(
            f"directories.tokendir = {token_dir}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        _shared = SoftHsm(conf=conf, token_dir=token_dir)
    if os.environ.get("SOFTHSM2_CONF") != str(_shared.conf):
        os.environ["SOFTHSM2_CONF"] = str(_shared.conf)
        from db import pkcs11 as token_lib

        if MODULE in token_lib._libraries:
            # Loaded already under another configuration: C_Initialize reads it again.
            token_lib.library(MODULE).reinitialize()
    return _shared


def parse_listing(listing: str) -> list[dict[str, str]]:
    """pkcs11-tool's ``--list-objects`` output as one dict per object (``kind`` is its
    first line, e.g. "Private Key Object; EC")."""
    objects: list[dict[str, str]] = []
    for line in listing.splitlines():
        if line and not line.startswith(" "):
            objects.append({"kind": line.strip()})
        elif ":" in line and objects:
            key, _, value = line.strip().partition(":")
            objects[-1][key.strip()] = value.strip()
    return objects
