"""Synthetic batch files: plausible, clearly fictitious card holders for demos and load
tests. Every address is under example.org (RFC 2606), so none can reach a real person."""

from __future__ import annotations

import csv
import random
import unicodedata
from pathlib import Path

from db.files import atomic_open
from schemas.batch import COLUMNS

FIRST_NAMES = (
    "Zoë", "Łukasz", "José", "Amara", "Björn", "Chloé", "Dmitri", "Émilie", "Farah", "Giulia",
    "Hiroshi", "Ingrid", "Jamal", "Katarzyna", "Liam", "Mei", "Nikolaos", "Oona", "Priya",
    "Quentin", "Rosa", "Søren", "Tomás", "Úrsula", "Vikram", "Wiktoria", "Xavier", "Yasmin",
)  # fmt: skip
LAST_NAMES = (
    "Müller", "Nowak", "García", "Okafor", "Lindqvist", "Dubois", "Ivanova", "Rossi", "Tanaka",
    "Haddad", "O'Brien", "Kowalczyk", "Fernández", "Nguyen", "Jensen", "Papadopoulos", "Singh",
    "Virtanen", "Smith", "Brown", "De Vries", "Łęcka", "Çelik", "Moreau", "Schäfer", "Novák",
)  # fmt: skip
ORG_UNITS = ("Finance", "Engineering", "Operations", "Human Resources", "Sales", "Legal")
TITLES = ("Analyst", "Engineer", "Manager", "Director", "Officer", "Consultant", "Technician")
COUNTRIES = ("GB", "DE", "FR", "ES", "PL", "NL", "SE", "IT", "IE", "DK")

# Letters that Unicode decomposition leaves alone but an email address cannot hold.
_ASCII_FOLD = str.maketrans({"ł": "l", "Ł": "L", "ø": "o", "Ø": "O", "ß": "ss", "æ": "ae"})


def write_users_csv(
    path: Path, count: int, *, seed: int = 0, organization: str = "Cardline Demo Ltd"
) -> Path:
    """Write a batch file of ``count`` users to ``path`` and return ``path``.

    The same seed gives the same file. Emails (first.last.N@example.org, or
    first.last.SEED.N for a non-zero seed; also the UPN) and external ids are unique
    within a file and differ between seeds.
    """
    rng = random.Random(seed)
    # Atomic: a process killed while writing leaves no half file to be imported later.
    with atomic_open(path, mode=0o600, text=True, encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for number in range(1, count + 1):
            writer.writerow(_user(rng, number, seed, organization))
    return path


def _user(rng: random.Random, number: int, seed: int, organization: str) -> list[str]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    # The seed is part of the address (when not 0) so files made with different seeds
    # never name the same person twice.
    serial = f"{seed}.{number}" if seed else f"{number}"
    local = f"{_ascii(first)}.{_ascii(last)}.{serial}"
    email = f"{local}@example.org"
    values = {
        "first_name": first,
        "last_name": last,
        "email": email,
        "upn": email,
        "organization": organization,
        "org_unit": rng.choice(ORG_UNITS),
        "title": rng.choice(TITLES),
        "country": rng.choice(COUNTRIES),
        "username": local,
        "identifier": f"{rng.randrange(10**7):07d}",
        "external_id": f"demo-{seed}-{number:06d}",
        "photo": "",
    }
    return [values[column] for column in COLUMNS]


def _ascii(name: str) -> str:
    """A name as lower-case ASCII letters for an email address: "Łęcka" -> "lecka"."""
    decomposed = unicodedata.normalize("NFKD", name.translate(_ASCII_FOLD))
    return "".join(c for c in decomposed.lower() if c.isascii() and c.isalnum())
