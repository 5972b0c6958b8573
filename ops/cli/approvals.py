"""What waits for an approver: ``cardline approvals`` (list), and the held lifecycle
requests' ``approve``, ``reject``, ``cancel`` and ``requests``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from ops.cli.context import (
    CliContext,
    data_dir_option,
    handle_errors,
    json_option,
    pass_app,
    print_json,
    requires,
)

if TYPE_CHECKING:
    from producers.principals import Caller


@click.group(invoke_without_command=True)
@click.pass_context
def approvals(ctx: click.Context) -> None:
    """Everything waiting for an approver (alone: the same as `approvals list`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(approvals_list)


@approvals.command("list")
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("approvals.read")
def approvals_list(app: CliContext, who: Caller, as_json: bool = False) -> None:
    """What waits for whom, oldest first: held requests, batches, card and soft token
    requests, replacements. None may be decided by whoever requested it."""
    from dataclasses import asdict

    from rich.table import Table

    from producers.pending import waiting

    found = waiting(app.store())
    if as_json:
        print_json({"waiting": [asdict(w) for w in found]})
        return
    if not found:
        click.echo("nothing waits for an approver")
        return
    table = Table("kind", "id", "what", "requested by", "since", "decided with")
    for w in found:
        table.add_row(w.kind, str(w.id), w.what, w.requested_by, w.requested_at[:19], w.decide)
    app.out.print(table)


@approvals.command("requests")
@click.option(
    "--state",
    type=click.Choice(["pending", "approved", "rejected", "failed", "cancelled"]),
    default=None,
)
@data_dir_option
@json_option
@pass_app
@handle_errors
@requires("approvals.read")
def approvals_requests(app: CliContext, state: str | None, as_json: bool, who: Caller) -> None:
    """Held lifecycle requests, newest first, with their decisions."""
    from rich.table import Table

    from producers.pending import requests

    rows = requests(app.store(), state=state)
    if as_json:
        print_json({"requests": rows})
        return
    table = Table("id", "state", "what", "requested by", "decided by", "outcome")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["state"],
            r["summary"],
            r["requested_by"],
            r["decided_by"] or "",
            r["outcome"] or "",
        )
    app.out.print(table)


@approvals.command("approve")
@click.argument("request_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("request.decide")
def approvals_approve(app: CliContext, request_id: int, who: Caller) -> None:
    """Approve held request REQUEST_ID (never your own) and carry it out."""
    from producers.pending import approve

    decision = approve(app.store(), request_id, by=who.actor, policy=app.settings.policy)
    click.echo(f"request {request_id} {decision.state}: {decision.outcome}")
    if decision.state == "failed":
        raise SystemExit(2)


@approvals.command("reject")
@click.argument("request_id", type=int)
@click.option("--reason", required=True)
@data_dir_option
@pass_app
@handle_errors
@requires("request.decide")
def approvals_reject(app: CliContext, request_id: int, reason: str, who: Caller) -> None:
    """Reject held request REQUEST_ID (never your own) with REASON."""
    from producers.pending import reject

    decision = reject(app.store(), request_id, by=who.actor, reason=reason)
    click.echo(f"request {request_id} {decision.state}")


@approvals.command("cancel")
@click.argument("request_id", type=int)
@data_dir_option
@pass_app
@handle_errors
@requires("request.cancel")
def approvals_cancel(app: CliContext, request_id: int, who: Caller) -> None:
    """Withdraw your own held request REQUEST_ID."""
    from producers.pending import cancel

    decision = cancel(app.store(), request_id, by=who.actor)
    click.echo(f"request {request_id} {decision.state}")


COMMANDS = (approvals,)
