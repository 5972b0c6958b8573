"""What the ``card`` and ``user`` groups share: the commands that take a card or a user
(with their certificates) out of use, back, or out for good."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app, requires
from schemas.states import LOCK_REASONS

if TYPE_CHECKING:
    from producers.principals import Caller

LOCK_REASONS_CHOICE = click.Choice([r.value for r in LOCK_REASONS])


@dataclass(frozen=True)
class Step:
    """One step: ``producers.lifecycle.<step>_<entity>``, the state it leaves behind and
    what it did to the certificates. A lock takes one of LOCK_REASONS; the others take
    free text or, when ``[policy] deactivation_reasons`` is set, one of those."""

    state: str
    certificates: str
    locks: bool = False


STEPS = {
    "deactivate": Step("inactive", "on hold"),
    "reactivate": Step("active", "released"),
    "lock": Step("locked", "revoked", locks=True),
}


def add_lifecycle_commands(group: click.Group, entity: str, docs: dict[str, str]) -> None:
    """``group STEP REF --reason R`` for each step in ``docs`` (its help), on
    ``entity`` (``card`` or ``user``)."""
    for name, doc in docs.items():
        group.add_command(_step_command(name, STEPS[name], entity, doc))


def _step_command(name: str, step: Step, entity: str, doc: str) -> click.Command:
    def command(app: CliContext, ref: str, reason: str | None, who: Caller) -> None:
        app.perform(
            who,
            f"{entity}.{name}",
            ref,
            {"reason": reason},
            lambda count: f"{entity} {ref} {step.state}; {count} certificates {step.certificates}",
        )

    command.__doc__ = doc
    command.__name__ = f"{entity}_{name}"
    reason = (
        click.option("--reason", required=True, type=LOCK_REASONS_CHOICE)
        if step.locks
        else click.option("--reason", default=None)
    )
    decorated = pass_app(handle_errors(requires(f"{entity}.{name}")(command)))
    for decorator in (
        data_dir_option,
        reason,
        click.argument("ref", metavar=entity.upper()),
    ):
        decorated = decorator(decorated)
    return click.command(name)(decorated)
