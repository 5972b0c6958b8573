"""The batch CSV format: one row per card holder who should get a card.

A pure data contract: the columns, the validation of one row and readable error text.
Reading files is ``producers.batch_import``'s job.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from schemas.errors import ValidationFailed

REQUIRED_COLUMNS = ("first_name", "last_name", "email", "upn", "organization", "org_unit")
OPTIONAL_COLUMNS = ("title", "country", "username", "identifier", "external_id", "photo")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

# The same rule as Policy.default_line: a line name becomes part of a queue name.
LINE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = rf"{_ATOM}(?:\.{_ATOM})*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# A practical subset of RFC 5322: dot-atom local part, DNS host name, alphabetic TLD.
# The look-ahead caps the local part at 64 characters (RFC 5321).
EMAIL = re.compile(rf"^(?=[^@]{{1,64}}@){_LOCAL_PART}@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$")
# A user principal name: a name, then a UPN suffix that need not be a public domain.
UPN = re.compile(rf"^{_LOCAL_PART}@{_LABEL}(?:\.{_LABEL})*$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
# Line breaks and other control characters would corrupt a printed card face.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class BatchRow(BaseModel):
    """One valid row: whitespace stripped, empty optional values None, email lower-case,
    country upper-case."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_name: str = Field(min_length=1, max_length=100)
    last_name: str = Field(min_length=1, max_length=100)
    email: str = Field(min_length=1, max_length=254)
    upn: str = Field(min_length=1, max_length=254)
    organization: str = Field(min_length=1, max_length=200)
    org_unit: str = Field(min_length=1, max_length=200)
    title: str | None = Field(None, max_length=100)
    country: str | None = None
    username: str | None = Field(None, max_length=100)
    identifier: str | None = Field(None, max_length=100)
    external_id: str | None = Field(None, max_length=128)
    photo: str | None = Field(None, max_length=500)

    @field_validator("*", mode="before")
    @classmethod
    def _strip(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        value = value.strip()
        if _CONTROL.search(value):
            raise ValueError("contains a line break or another control character")
        if not value and info.field_name in OPTIONAL_COLUMNS:
            return None
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not EMAIL.match(value):
            raise ValueError("is not a valid email address")
        # Mail systems treat addresses case-insensitively; one spelling keeps them unique.
        return value.lower()

    @field_validator("upn")
    @classmethod
    def _upn(cls, value: str) -> str:
        if not UPN.match(value):
            raise ValueError("is not a user principal name like name@domain")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.upper()
        if not COUNTRY.match(value):
            raise ValueError("is not a two-letter country code like GB")
        return value


def header_columns(
    header: Sequence[str], *, ignore: Collection[str] = ()
) -> tuple[str | None, ...]:
    """The column name of each header cell (stripped, lower-case), None for a column
    named in ``ignore`` (names compared the same way): its cells are read and dropped.

    Raises ``ValidationFailed`` (line 1) naming the first column that is missing,
    unknown or repeated, or a column of ours that ``ignore`` names.
    """
    ignored = ignored_columns(ignore)
    names = tuple(cell.strip().lower() for cell in header)
    for name in names:
        if name in ignored:
            continue
        if name not in COLUMNS:
            raise ValidationFailed(
                f"unknown column {name!r}; the columns are: {', '.join(COLUMNS)} "
                "(a column of another system's can be ignored by name)",
                field=name,
                line=1,
            )
        if names.count(name) > 1:
            raise ValidationFailed(f"column {name!r} appears more than once", field=name, line=1)
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        raise ValidationFailed(
            f"required column(s) missing: {', '.join(missing)}", field=missing[0], line=1
        )
    return tuple(None if name in ignored else name for name in names)


def ignored_columns(names: Collection[str]) -> frozenset[str]:
    """Column names to ignore, as ``header_columns`` compares them. A name that is
    empty, longer than 100 characters, or one of ours is refused (``ignore_column``)."""
    ignored = frozenset(name.strip().lower() for name in names)
    for name in sorted(ignored):
        if not name or len(name) > 100:
            raise ValidationFailed(
                "a column to ignore needs a name of 1 to 100 characters", field="ignore_column"
            )
        if name in COLUMNS:
            raise ValidationFailed(
                f"{name!r} is a column of the batch format; it cannot be ignored",
                field="ignore_column",
            )
    return ignored


def describe_errors(error: ValidationError) -> list[tuple[str | None, str]]:
    """Each problem of a rejected row as (column, readable reason), in column order."""
    problems: list[tuple[str | None, str]] = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else None
        problems.append((field, _reason(item["type"], item.get("ctx") or {}, item["msg"])))
    order = {name: index for index, name in enumerate(COLUMNS)}
    return sorted(problems, key=lambda p: order.get(p[0] or "", len(order)))


def _reason(kind: str, ctx: dict[str, Any], message: str) -> str:
    if kind in ("missing", "string_too_short"):
        return "is required"
    if kind == "string_too_long":
        return f"is longer than {ctx['max_length']} characters"
    if kind == "value_error":
        return str(ctx["error"])
    return message
