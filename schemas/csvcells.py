"""Cells a spreadsheet opens safely (OWASP "CSV injection").

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` as a formula
(``=cmd|' /C calc'!A0``, ``=HYPERLINK(...)``), and some also one that starts with a tab
or a carriage return. Every CSV Cardline writes passes each cell through ``safe_cell``,
which puts a single quote before such a cell, as OWASP recommends: the spreadsheet shows
the text, the quote is visible, nothing runs. What the store keeps is never changed;
only the copy written to a file is.
"""

from __future__ import annotations

from collections.abc import Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: object) -> str:
    """``value`` as a CSV cell no spreadsheet runs as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def safe_row(values: Iterable[object]) -> list[str]:
    return [safe_cell(v) for v in values]
