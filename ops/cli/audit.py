"""``cardline audit verify``: the audit chain checked against its signed checkpoints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, json_option, pass_app

if TYPE_CHECKING:
    from db.checkpoints import AuditReport, Seal

# The last checkpoint a verification proved, kept outside the store: deleting newer
# checkpoints from the database then shows (``db.checkpoints``).
REMEMBERED = "audit-checkpoint.json"


@click.group()
def audit() -> None:
    """The audit log (hash-chained, sealed by checkpoints under the master key)."""


@audit.command("verify")
@click.option(
    "--full", is_flag=True, help="Recompute from the first event, not the last verified checkpoint."
)
@data_dir_option
@json_option
@pass_app
@handle_errors
def audit_verify(app: CliContext, full: bool, as_json: bool) -> None:
    """Check every checkpoint's MAC and recompute the chain through each checkpoint to
    the head, from the last verified checkpoint (or from the first event: --full); name
    the first broken event or bad checkpoint. Exit 0 when intact, 1 when broken. It
    needs the store and the master key, which only the host's administrator holds."""
    from db import checkpoints
    from db.checkpoints import CheckpointKey
    from ops.store import master_key_check

    store = app.store()
    master_key_check(app.settings, store)
    key = CheckpointKey.from_box(app.settings.secret_box())
    path = app.settings.data_dir / REMEMBERED
    remembered = _remembered(path)
    # Read-only, so a long verification never holds the line's write lock; only the
    # mark on the checkpoint it proved is written.
    with store.read() as s:
        report = checkpoints.verify(s, key, full=full, remembered=remembered)
    if report.ok and report.proved_seq:
        with store.tx(audited=False) as s:
            checkpoints.mark_verified(s, report)
            sealed = checkpoints.sealed_at(s, report.proved_seq)
        if sealed is not None:
            _remember(path, sealed)
    if as_json:
        from ops.cli.context import print_json

        print_json({"audit": report.as_dict()})
    else:
        click.echo(_describe(report))
    if not report.ok:
        sys.exit(1)


def _remembered(path: Path) -> Seal | None:
    import json

    from db.checkpoints import Seal
    from schemas.errors import ConfigurationError

    if not path.exists():
        return None
    try:
        return Seal.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"{path} is not a remembered checkpoint: {exc}") from None


def _remember(path: Path, sealed: Seal) -> None:
    import json

    from db.files import atomic_write

    atomic_write(path, json.dumps(sealed.as_dict(), sort_keys=True) + "\n")


def _describe(report: AuditReport) -> str:
    since = f"after event {report.from_seq}" if report.from_seq else "from the first event"
    read = f"{report.events_read} events recomputed {since}, {report.checkpoints} checkpoint MACs"
    if not report.ok:
        where = [f"first broken event {report.first_bad_seq}"] if report.first_bad_seq else []
        if report.bad_checkpoint is not None:
            where.append(f"checkpoint {report.bad_checkpoint}")
        return f"audit chain BROKEN: {report.problem} ({', '.join(where)}; {read})"
    proved = (
        f"sealed through event {report.proved_seq}" if report.proved_seq else "no checkpoint yet"
    )
    return f"audit chain intact: {report.head_seq} events, {proved} ({read})"


COMMANDS = (audit,)
