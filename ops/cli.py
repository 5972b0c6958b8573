"""The ``cardline`` command line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from db.engine import open_store
from db.migrate import upgrade
from db.summary import summarise
from ops import config as config_mod
from ops import logging as logging_mod
from ops.config import Settings
from ops.expiry import expiry
from ops.line import DataPaths, LineOptions, open_migrated
from ops.render import summary_json, summary_tables
from producers.certificates import OPERATOR_REASONS
from producers.lifecycle import LOCK_REASONS
from producers.users import EDITABLE
from schemas.errors import CardlineError, ConfigurationError
from schemas.roles import Role

F = TypeVar("F", bound=Callable[..., Any])
# The revocation reasons an operator may give (producers.certificates.OPERATOR_REASONS).
REASONS_CHOICE = click.Choice([r.value for r in OPERATOR_REASONS])
err_console = Console(stderr=True)
out_console = Console()


def data_dir_option(fn: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory (env CARDLINE_DATA_DIR, default ./var).",
    )(fn)


def json_option(fn: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="End with one JSON object on the last line of stdout.",
    )(fn)


def line_options(fn: F) -> F:
    fn = click.option(
        "--stations",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Simulated stations.",
    )(fn)
    fn = click.option(
        "--fault-rate",
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help="Probability that an attempt hits a fault.",
    )(fn)
    fn = click.option(
        "--time-scale",
        type=click.FloatRange(min=0),
        default=0.01,
        show_default=True,
        help="Scale of the simulated device timings.",
    )(fn)
    fn = click.option(
        "--seed", type=int, default=None, help="Seed for simulated faults and serials."
    )(fn)
    return fn


def handle_errors(fn: F) -> F:
    """Turn Cardline's errors into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigurationError as exc:
            err_console.print(f"[bold red]configuration error:[/] {exc}", highlight=False)
            sys.exit(3)
        except CardlineError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]  # functools.wraps keeps the signature


def settings_for(data_dir: Path | None) -> Settings:
    settings = config_mod.load(data_dir)
    logging_mod.configure(
        log_file=DataPaths(settings.data_dir).logs / "cardline.log",
        level=settings.log_level,
        console_level="ERROR",
    )
    return settings


def print_json(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, sort_keys=True, default=str))


@click.group()
@click.version_option(package_name="cardline")
def main() -> None:
    """Cardline: smart card production, from requests to active cards."""


main.add_command(expiry)


# --- the status store --------------------------------------------------------------


@main.group()
def db() -> None:
    """The status store."""


@db.command("upgrade")
@data_dir_option
@handle_errors
def db_upgrade(data_dir: Path | None) -> None:
    """Create or migrate the status store schema to the newest revision."""
    settings = settings_for(data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    revision = upgrade(open_store(settings.db_url))
    click.echo(f"status store at revision {revision}")


@main.command()
@data_dir_option
@json_option
@handle_errors
def status(data_dir: Path | None, as_json: bool) -> None:
    """Counts by state, stations and queue depth (safe while the line runs)."""
    settings = settings_for(data_dir)
    store = open_store(settings.db_url, readonly=True)
    with store.read() as s:
        summary = summarise(s)
    if as_json:
        print_json(summary_json(summary))
        return
    for table in summary_tables(summary):
        out_console.print(table)


@main.group()
def attention() -> None:
    """Work that failed for a reason a retry cannot cure and waits for a person."""


@attention.command("list")
@data_dir_option
@json_option
@handle_errors
def attention_list(data_dir: Path | None, as_json: bool) -> None:
    """Open items: what, which wait, the reason, since when."""
    from db.summary import attention_list as open_attention

    store = open_store(settings_for(data_dir).db_url, readonly=True)
    with store.read() as s:
        items = open_attention(s)
    if as_json:
        print_json({"needs_attention": items})
        return
    if not items:
        click.echo("nothing needs attention")
    for a in items:
        click.echo(f"{a['id']}\t{a['entity']} {a['entity_id']}\t{a['wait']}\t{a['reason']}")


@attention.command("resolve")
@click.argument("attention_id", type=int)
@click.option("--by", required=True, help="Who fixed the cause.")
@data_dir_option
@handle_errors
def attention_resolve(attention_id: int, by: str, data_dir: Path | None) -> None:
    """Mark an item resolved once its cause is fixed; the reconciler then re-drives it."""
    from db import attention as attention_mod

    store = open_store(settings_for(data_dir).db_url)
    with store.tx() as s:
        row = attention_mod.resolve(s, attention_id, by=by)
    click.echo(f"resolved {row.entity} {row.entity_id} ({row.wait}); it will be re-driven")


@main.command()
def waits() -> None:
    """The table of waits: what waits for which message, and how it is re-driven."""
    from workers.waits import markdown_table

    click.echo(markdown_table(), nl=False)


# --- batches ------------------------------------------------------------------------


@main.group()
def batch() -> None:
    """Batch orders: import a CSV of card requests, approve or reject it."""


@batch.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--by",
    "requested_by",
    default="operator",
    show_default=True,
    help="Who requests the cards (may not approve them).",
)
@click.option("--line", default=None, help="Station line to produce on.")
@data_dir_option
@json_option
@handle_errors
def batch_import(
    file: Path, requested_by: str, line: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Import FILE (CSV, UTF-8) as one batch order of card requests."""
    from ops.intake import import_file

    settings = settings_for(data_dir)
    code = import_file(
        settings, file, requested_by=requested_by, line=line, as_json=as_json, console=out_console
    )
    sys.exit(code)


@batch.command("approve")
@click.argument("batch_id", type=int)
@click.option("--by", "approver", required=True, help="The approver (not the requester).")
@data_dir_option
@handle_errors
def batch_approve(batch_id: int, approver: str, data_dir: Path | None) -> None:
    """Approve batch BATCH_ID: every requested card in it goes to production."""
    from producers.approvals import approve_batch

    settings = settings_for(data_dir)
    report = approve_batch(open_migrated(settings), batch_id, by=approver)
    click.echo(f"batch {report.batch_id} approved by {approver}: {report.approved} cards")


@batch.command("reject")
@click.argument("batch_id", type=int)
@click.option("--by", "approver", required=True)
@click.option("--reason", required=True)
@data_dir_option
@handle_errors
def batch_reject(batch_id: int, approver: str, reason: str, data_dir: Path | None) -> None:
    """Reject batch BATCH_ID and every requested card in it."""
    from producers.approvals import reject_batch

    settings = settings_for(data_dir)
    report = reject_batch(open_migrated(settings), batch_id, by=approver, reason=reason)
    click.echo(f"batch {report.batch_id} rejected by {approver}")


# --- the line -----------------------------------------------------------------------


@main.command()
@click.option(
    "--cards",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="Synthetic users (one card each) to generate.",
)
@click.option(
    "--input",
    "input_csv",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Import this CSV instead of generating.",
)
@click.option("--example", is_flag=True, help="Import the bundled example CSV.")
@click.option(
    "--seed-only",
    is_flag=True,
    help="Only seed users and an approved batch into the configured store; "
    "run no line (separate relay/worker/station processes produce it).",
)
@line_options
@data_dir_option
@json_option
@handle_errors
def demo(
    cards: int,
    input_csv: Path | None,
    example: bool,
    seed_only: bool,
    stations: int,
    fault_rate: float,
    time_scale: float,
    seed: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """The main job: a fresh data dir, a batch of users, approval, the line, a summary."""
    from ops.demo import DemoOptions, run_demo, seed_batch

    if seed_only:
        report = seed_batch(
            settings_for(data_dir), cards=cards, input_csv=input_csv, example=example, seed=seed
        )
        if as_json:
            print_json(report)
        else:
            click.echo(f"seeded batch {report['batch_id']}: {report['cards']} approved cards")
        return
    options = DemoOptions(
        cards=cards,
        input_csv=input_csv,
        example=example,
        line=LineOptions(
            stations=stations, fault_rate=fault_rate, time_scale=time_scale, seed=seed
        ),
    )
    settings = config_mod.load(data_dir)
    sys.exit(run_demo(settings, options, as_json=as_json, console=out_console))


@main.command()
@line_options
@data_dir_option
@json_option
@handle_errors
def run(
    stations: int,
    fault_rate: float,
    time_scale: float,
    seed: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Run the embedded line on an existing data dir until it is drained (also resumes
    after a crash)."""
    from ops.demo import run_line

    settings = settings_for(data_dir)
    options = LineOptions(
        stations=stations, fault_rate=fault_rate, time_scale=time_scale, seed=seed
    )
    sys.exit(run_line(settings, options, as_json=as_json, console=out_console))


# --- PKI ------------------------------------------------------------------------------


@main.group()
def pki() -> None:
    """The CA: set-up, export, CRLs."""


@pki.command("init")
@data_dir_option
@handle_errors
def pki_init(data_dir: Path | None) -> None:
    """Create the root and issuing CA ([pki.ca] in CARDLINE_CONFIG); never overwrites."""
    from workers.ca import CertificateAuthority

    settings = settings_for(data_dir)
    paths = DataPaths(settings.data_dir)
    paths.make()
    ca = CertificateAuthority.init(
        paths.ca, settings.secret_box(), settings.pki(), pin=settings.ca_secret_pin()
    )
    click.echo(f"root CA:    {ca.root.subject.rfc4514_string()}")
    click.echo(
        f"issuing CA: {ca.issuing.subject.rfc4514_string()} "
        f"({settings.pki().ca.algorithm}, key in {settings.pki().ca.key_store})"
    )


@pki.command("export")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@data_dir_option
@handle_errors
def pki_export(out: Path, data_dir: Path | None) -> None:
    """Write ca-chain.pem, root.pem, issuing.pem and the current crl.pem to OUT."""
    from ops.pki import export_ca

    for path in export_ca(settings_for(data_dir), out):
        click.echo(str(path))


@pki.command("crl")
@data_dir_option
@handle_errors
def pki_crl(data_dir: Path | None) -> None:
    """Publish a fresh CRL now."""
    from ops.pki import publish_now

    number = publish_now(settings_for(data_dir))
    click.echo(f"published CRL number {number}")


@main.group()
def certs() -> None:
    """Certificates: export, revoke, hold, release."""


@certs.command("export")
@click.option("--status", type=click.Choice(["valid", "hold", "revoked", "expired"]), required=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@data_dir_option
@handle_errors
def certs_export(status: str, out: Path, data_dir: Path | None) -> None:
    """Write every certificate in STATUS to OUT as <serial>.pem."""
    from ops.pki import export_certs

    count = export_certs(settings_for(data_dir), status, out)
    click.echo(f"{count} {status} certificates written to {out}")


@certs.command("revoke")
@click.argument("serial")
@click.option("--reason", required=True, type=REASONS_CHOICE)
@click.option("--by", required=True, help="Who revokes it (audited).")
@data_dir_option
@handle_errors
def certs_revoke(serial: str, reason: str, by: str, data_dir: Path | None) -> None:
    """Revoke the certificate SERIAL (hex); the CRL is re-published."""
    from producers.certificates import revoke
    from schemas.states import RevocationReason

    store = open_migrated(settings_for(data_dir))
    click.echo(revoke(store, serial, reason=RevocationReason(reason), by=by))


@certs.command("hold")
@click.argument("serial")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def certs_hold(serial: str, by: str, data_dir: Path | None) -> None:
    """Put the certificate SERIAL on hold (listed on the CRL as certificateHold)."""
    from producers.certificates import hold

    click.echo(hold(open_migrated(settings_for(data_dir)), serial, by=by))


@certs.command("release")
@click.argument("serial")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def certs_release(serial: str, by: str, data_dir: Path | None) -> None:
    """Release the certificate SERIAL from hold (removed from the next CRL)."""
    from producers.certificates import release

    click.echo(release(open_migrated(settings_for(data_dir)), serial, by=by))


# --- one process per role -------------------------------------------------------------


@main.command()
@click.option(
    "--approved-stall-s",
    type=float,
    default=30.0,
    show_default=True,
    help="Re-publish prepare for cards approved longer ago than this.",
)
@click.option(
    "--ready-stall-s",
    type=float,
    default=120.0,
    show_default=True,
    help="Re-publish produce for cards ready longer ago than this.",
)
@click.option(
    "--reconcile-s",
    type=float,
    default=2.0,
    show_default=True,
    help="How often the reconciler sweeps.",
)
@data_dir_option
@handle_errors
def relay(
    approved_stall_s: float, ready_stall_s: float, reconcile_s: float, data_dir: Path | None
) -> None:
    """Outbox relay and reconciler (several may run at once)."""
    from ops.roles import run_relay, stop_on_signals
    from workers.relay import StallPolicy

    settings = settings_for(data_dir)
    stall = StallPolicy(
        approved_s=approved_stall_s,
        ready_s=ready_stall_s,
        letter_s=approved_stall_s,
        reconcile_s=reconcile_s,
    )
    run_relay(settings, stop_on_signals(), stall=stall)


@main.command()
@click.option(
    "--queues",
    default="prepare,pki,notify",
    show_default=True,
    help="Comma-separated worker queues to consume.",
)
@click.option("--threads", type=click.IntRange(1, 64), default=4, show_default=True)
@data_dir_option
@handle_errors
def worker(queues: str, threads: int, data_dir: Path | None) -> None:
    """The prepare, pki and notify actors."""
    from ops.roles import run_worker, stop_on_signals

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    run_worker(settings_for(data_dir), stop_on_signals(), queues=chosen, threads=threads)


@main.command()
@click.option("--id", "station_id", required=True, help="Unique station id, e.g. ST1.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="CARDLINE_STATIONS",
    default=None,
    help="stations.toml with a [stations.ID] table: drivers and timeouts "
    "(env CARDLINE_STATIONS; default: all drivers simulated).",
)
@click.option("--line", default=None, help="Line queue to consume [default: default].")
@click.option(
    "--lease-s", type=float, default=None, help="Lease on the card in hand [default: 30]."
)
@click.option("--heartbeat-s", type=float, default=None, help="[default: 5]")
@click.option(
    "--cert-timeout-s",
    type=float,
    default=None,
    help="Waiting this long for certificates shows waiting_for_pki [default: 60].",
)
@click.option(
    "--server-wait-s",
    type=float,
    default=None,
    help="Hold a card this long while the PKI or store is away [default: 1800].",
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=None,
    help="Simulated drivers' fault probability [default: 0].",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0),
    default=None,
    help="Simulated drivers' timing scale [default: 0.01].",
)
@click.option("--seed", type=int, default=None)
@data_dir_option
@handle_errors
def station(
    station_id: str,
    config_path: Path | None,
    line: str | None,
    lease_s: float | None,
    heartbeat_s: float | None,
    cert_timeout_s: float | None,
    server_wait_s: float | None,
    fault_rate: float | None,
    time_scale: float | None,
    seed: int | None,
    data_dir: Path | None,
) -> None:
    """One station: consumes its line's queue one card at a time.

    Its drivers come from --config ([stations.ID]); options given here override the
    file's values.
    """
    from ops.roles import run_station, stop_on_signals
    from schemas.station import StationEntry
    from stations.runtime import StationConfig
    from stations.setup import station_entry, with_overrides

    entry = station_entry(config_path, station_id) if config_path else StationEntry()
    entry = with_overrides(
        entry,
        line=line,
        lease_s=lease_s,
        heartbeat_s=heartbeat_s,
        cert_timeout_s=cert_timeout_s,
        server_wait_s=server_wait_s,
        fault_rate=fault_rate,
        time_scale=time_scale,
        seed=seed,
    )
    config = StationConfig(
        station_id=station_id,
        line=entry.line,
        lease_s=entry.lease_s,
        heartbeat_s=entry.heartbeat_s,
        chip_timeout_s=entry.chip_timeout_s,
        cert_timeout_s=entry.cert_timeout_s,
        server_wait_s=entry.server_wait_s,
    )
    run_station(settings_for(data_dir), stop_on_signals(), config=config, entry=entry)


# --- card and user lifecycle ---------------------------------------------------------

LOCK_REASONS_CHOICE = click.Choice([r.value for r in LOCK_REASONS])


@main.group()
def card() -> None:
    """A produced card: deactivate, reactivate, lock (with its certificates)."""


@card.command("deactivate")
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True, help="Who does it (audited).")
@click.option("--reason", default=None)
@data_dir_option
@handle_errors
def card_deactivate(card_ref: str, by: str, reason: str | None, data_dir: Path | None) -> None:
    """Take CARD (number or id) out of use; its certificates go on hold."""
    from producers.lifecycle import deactivate_card

    settings = settings_for(data_dir)
    held = deactivate_card(
        open_migrated(settings),
        card_ref,
        by=by,
        reason=reason,
        reasons=settings.policy().deactivation_reasons,
    )
    click.echo(f"card {card_ref} inactive; {held} certificates on hold")


@card.command("reactivate")
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True, help="Who does it (audited).")
@click.option("--reason", default=None)
@data_dir_option
@handle_errors
def card_reactivate(card_ref: str, by: str, reason: str | None, data_dir: Path | None) -> None:
    """Put CARD back in use; its held certificates are released."""
    from producers.lifecycle import reactivate_card

    settings = settings_for(data_dir)
    done = reactivate_card(
        open_migrated(settings),
        card_ref,
        by=by,
        reason=reason,
        reasons=settings.policy().deactivation_reasons,
    )
    click.echo(f"card {card_ref} active; {done} certificates released")


@card.command("lock")
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True, help="Who does it (audited).")
@click.option("--reason", required=True, type=LOCK_REASONS_CHOICE)
@data_dir_option
@handle_errors
def card_lock(card_ref: str, by: str, reason: str, data_dir: Path | None) -> None:
    """Lock CARD for good; its certificates are revoked with REASON."""
    from producers.lifecycle import lock_card

    revoked = lock_card(open_migrated(settings_for(data_dir)), card_ref, by=by, reason=reason)
    click.echo(f"card {card_ref} locked; {revoked} certificates revoked")


@main.group()
def user() -> None:
    """A card holder: deactivate, reactivate, lock (with their cards and certificates)."""


@user.command("deactivate")
@click.argument("who", metavar="USER")
@click.option("--by", required=True, help="Who does it (audited).")
@click.option("--reason", default=None)
@data_dir_option
@handle_errors
def user_deactivate(who: str, by: str, reason: str | None, data_dir: Path | None) -> None:
    """USER (e-mail or id) inactive: their cards inactive, certificates on hold."""
    from producers.lifecycle import deactivate_user

    settings = settings_for(data_dir)
    held = deactivate_user(
        open_migrated(settings),
        who,
        by=by,
        reason=reason,
        reasons=settings.policy().deactivation_reasons,
    )
    click.echo(f"user {who} inactive; {held} certificates on hold")


@user.command("reactivate")
@click.argument("who", metavar="USER")
@click.option("--by", required=True, help="Who does it (audited).")
@click.option("--reason", default=None)
@data_dir_option
@handle_errors
def user_reactivate(who: str, by: str, reason: str | None, data_dir: Path | None) -> None:
    """USER active again, with what their deactivation put out of use."""
    from producers.lifecycle import reactivate_user

    settings = settings_for(data_dir)
    done = reactivate_user(
        open_migrated(settings),
        who,
        by=by,
        reason=reason,
        reasons=settings.policy().deactivation_reasons,
    )
    click.echo(f"user {who} active; {done} certificates released")


@user.command("lock")
@click.argument("who", metavar="USER")
@click.option("--by", required=True, help="Who does it (audited).")
@click.option("--reason", required=True, type=LOCK_REASONS_CHOICE)
@data_dir_option
@handle_errors
def user_lock(who: str, by: str, reason: str, data_dir: Path | None) -> None:
    """Lock USER: cards locked or cancelled, certificates and soft tokens revoked."""
    from producers.lifecycle import lock_user

    revoked = lock_user(open_migrated(settings_for(data_dir)), who, by=by, reason=reason)
    click.echo(f"user {who} locked; {revoked} certificates revoked")


# --- operators: users, cards, temporary cards, incidents -------------------------------

USER_FIELDS = EDITABLE  # the attributes an operator may set


def _pairs(values: tuple[str, ...]) -> dict[str, str | None]:
    """``name=value`` options as a dict (an empty value clears an optional attribute)."""
    out: dict[str, str | None] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or name not in USER_FIELDS:
            raise click.BadParameter(f"{item!r}: use NAME=VALUE with NAME one of {USER_FIELDS}")
        out[name] = value or None
    return out


def _user_table(items: list[Any], total: int, page: int) -> None:
    from rich.table import Table

    table = Table("id", "state", "email", "name", "organization", "cards", "roles")
    table.title = f"users {len(items)} of {total} (page {page})"
    for u in items:
        table.add_row(
            str(u.id),
            u.state,
            u.email,
            f"{u.first_name} {u.last_name}",
            f"{u.organization} / {u.org_unit}",
            str(u.cards),
            ", ".join(u.roles),
        )
    out_console.print(table)


@user.command("create")
@click.option("--set", "values", multiple=True, required=True, help="NAME=VALUE (repeat).")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def user_create(values: tuple[str, ...], by: str, data_dir: Path | None) -> None:
    """Create one user from NAME=VALUE attributes (the batch CSV's columns)."""
    from producers.users import create_user

    settings = settings_for(data_dir)
    user_id = create_user(open_migrated(settings), _pairs(values), by=by, policy=settings.policy())
    click.echo(f"user {user_id} created")


@user.command("edit")
@click.argument("who", metavar="USER")
@click.option("--set", "values", multiple=True, required=True, help="NAME=VALUE (repeat).")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def user_edit(who: str, values: tuple[str, ...], by: str, data_dir: Path | None) -> None:
    """Change attributes of USER (e-mail or id)."""
    from producers.users import update_user

    settings = settings_for(data_dir)
    changed = update_user(
        open_migrated(settings),
        who,
        _pairs(values),
        by=by,
        unique_email=settings.policy().email_unique,
    )
    click.echo(f"changed: {', '.join(changed) or 'nothing'}")


@user.command("list")
@click.option("--state", default=None)
@click.option("--text", default=None, help="In name, e-mail, organisation or external id.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 500), default=50, show_default=True)
@data_dir_option
@handle_errors
def user_list(
    state: str | None, text: str | None, page: int, per_page: int, data_dir: Path | None
) -> None:
    """Users by id, one page at a time."""
    from producers.users import search_users

    found = search_users(
        open_migrated(settings_for(data_dir)), state=state, text=text, page=page, per_page=per_page
    )
    _user_table(found.items, found.total, found.page)


@user.command("roles")
@click.argument("who", metavar="USER")
@click.option("--role", "roles", multiple=True, help="A role (repeat; none clears them).")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def user_roles(who: str, roles: tuple[str, ...], by: str, data_dir: Path | None) -> None:
    """Replace the roles of USER."""
    from producers.users import set_roles

    chosen = set_roles(open_migrated(settings_for(data_dir)), who, roles, by=by)
    click.echo(f"roles: {', '.join(chosen) or 'none'}")


@user.command("delete")
@click.argument("who", metavar="USER")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def user_delete(who: str, by: str, data_dir: Path | None) -> None:
    """Delete a locked USER."""
    from producers.users import delete_user

    click.echo(delete_user(open_migrated(settings_for(data_dir)), who, by=by))


@user.command("bulk")
@click.argument("action", type=click.Choice(["deactivate", "lock", "delete"]))
@click.option("--state", default=None, help="Only users in this state.")
@click.option("--text", default=None, help="Only users matching this text.")
@click.option("--reason", default=None)
@click.option("--lock-reason", type=LOCK_REASONS_CHOICE, default="privilege_withdrawn")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def user_bulk(
    action: str,
    state: str | None,
    text: str | None,
    reason: str | None,
    lock_reason: str,
    by: str,
    data_dir: Path | None,
) -> None:
    """The multi-user forms: ACTION every user the search finds, one at a time."""
    from rich.progress import Progress

    from producers import lifecycle, users

    settings = settings_for(data_dir)
    store = open_migrated(settings)
    reasons = settings.policy().deactivation_reasons  # read the configuration once
    actions = {
        "deactivate": lambda u: lifecycle.deactivate_user(
            store, u, by=by, reason=reason, reasons=reasons
        ),
        "lock": lambda u: lifecycle.lock_user(store, u, by=by, reason=lock_reason),
        "delete": lambda u: users.delete_user(store, u, by=by, reason=reason),
    }
    with Progress(console=err_console, transient=True) as progress:
        bar = progress.add_task(f"{action} users", total=None)
        report = users.for_each_user(
            store,
            state=state,
            text=text,
            action=actions[action],
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    click.echo(f"{action}: {len(report.done)} done, {len(report.refused)} refused")
    for user_id, why in sorted(report.refused.items()):
        click.echo(f"  user {user_id}: {why}")


def _card_table(items: list[Any], total: int, page: int) -> None:
    from rich.table import Table

    table = Table("id", "kind", "state", "number", "holder", "line", "valid until", "certs")
    table.title = f"cards {len(items)} of {total} (page {page})"
    for c in items:
        valid = sum(1 for state in c.certificates.values() if state == "valid")
        table.add_row(
            str(c.id),
            c.kind,
            c.state,
            c.card_number or "",
            c.user_email or "",
            c.line,
            (c.valid_until or "")[:10],
            f"{valid}/{len(c.certificates)}",
        )
    out_console.print(table)


@card.command("request")
@click.argument("users", nargs=-1, required=True)
@click.option("--by", required=True)
@click.option("--line", default=None)
@data_dir_option
@handle_errors
def card_request(users: tuple[str, ...], by: str, line: str | None, data_dir: Path | None) -> None:
    """Request a card for each USER (e-mail or id); several make one batch order."""
    from producers.cards import request_cards

    settings = settings_for(data_dir)
    ids = request_cards(open_migrated(settings), users, by=by, policy=settings.policy(), line=line)
    click.echo(f"cards requested: {', '.join(map(str, ids))}")


@card.command("issue")
@click.argument("users", nargs=-1, required=True)
@click.option("--by", required=True)
@click.option("--line", default=None)
@data_dir_option
@handle_errors
def card_issue(users: tuple[str, ...], by: str, line: str | None, data_dir: Path | None) -> None:
    """Issue a card for each USER at once (the operator's issuance: no approval step)."""
    from producers.cards import issue_cards

    settings = settings_for(data_dir)
    ids = issue_cards(open_migrated(settings), users, by=by, policy=settings.policy(), line=line)
    click.echo(f"cards issued: {', '.join(map(str, ids))}")


@card.command("decide")
@click.argument("decision", type=click.Choice(["approve", "reject", "postpone"]))
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@click.option("--reason", default=None, help="Required to reject or postpone.")
@click.option("--comment", default=None)
@data_dir_option
@handle_errors
def card_decide(
    decision: str,
    card_ref: str,
    by: str,
    reason: str | None,
    comment: str | None,
    data_dir: Path | None,
) -> None:
    """Approve, reject or postpone the request CARD (never your own)."""
    from producers import cards

    store = open_migrated(settings_for(data_dir))
    if decision == "approve":
        state = cards.approve_card(store, card_ref, by=by, comment=comment)
    elif decision == "reject":
        state = cards.reject_card(store, card_ref, by=by, reason=reason or "", comment=comment)
    else:
        state = cards.postpone_card(store, card_ref, by=by, reason=reason or "")
    click.echo(state)


@card.command("step")
@click.argument("step", type=click.Choice(["cancel", "activate", "renew"]))
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def card_step(step: str, card_ref: str, by: str, data_dir: Path | None) -> None:
    """Cancel a request, activate an issued card, or renew an active card's certificates."""
    from producers import cards

    store = open_migrated(settings_for(data_dir))
    steps = {
        "cancel": lambda: cards.cancel_card(store, card_ref, by=by),
        "activate": lambda: cards.activate_card(store, card_ref, by=by),
        "renew": lambda: cards.renew_card(store, card_ref, by=by),
    }
    click.echo(steps[step]())


@card.command("edit")
@click.argument("card_ref", metavar="CARD")
@click.option("--line", required=True, help="The production line it goes to.")
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def card_edit(card_ref: str, line: str, by: str, data_dir: Path | None) -> None:
    """Move CARD (not yet at a station) to another production line."""
    from producers.cards import edit_card

    settings = settings_for(data_dir)
    changed = edit_card(
        open_migrated(settings), card_ref, by=by, line=line, policy=settings.policy()
    )
    click.echo(f"changed: {', '.join(changed) or 'nothing'}")


@card.command("list")
@click.option("--state", default=None)
@click.option("--kind", type=click.Choice(["card", "temp_card"]), default=None)
@click.option("--user", "who", default=None, help="Only this holder's (e-mail or id).")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--per-page", type=click.IntRange(1, 500), default=50, show_default=True)
@data_dir_option
@handle_errors
def card_list(
    state: str | None,
    kind: str | None,
    who: str | None,
    page: int,
    per_page: int,
    data_dir: Path | None,
) -> None:
    """Cards and temporary cards by id, one page at a time."""
    from producers.cards import search_cards

    found = search_cards(
        open_migrated(settings_for(data_dir)),
        state=state,
        kind=kind,
        user=who,
        page=page,
        per_page=per_page,
    )
    _card_table(found.items, found.total, found.page)


@main.group()
def tempcard() -> None:
    """Temporary cards: stock runs, assign, extend, withdraw, lock."""


@tempcard.command("stock")
@click.argument("count", type=click.IntRange(1, 1000))
@click.option("--by", required=True)
@click.option("--line", default=None)
@data_dir_option
@handle_errors
def tempcard_stock(count: int, by: str, line: str | None, data_dir: Path | None) -> None:
    """A stock run of COUNT temporary cards (a batch order: approve it with batch approve)."""
    from producers.tempcards import request_stock

    settings = settings_for(data_dir)
    batch_id, ids = request_stock(
        open_migrated(settings), count, by=by, policy=settings.policy(), line=line
    )
    click.echo(f"batch {batch_id}: temporary cards {ids[0]}..{ids[-1]}")


@tempcard.command("assign")
@click.argument("card_ref", metavar="CARD")
@click.argument("who", metavar="USER")
@click.option("--by", required=True)
@click.option("--days", type=click.IntRange(1, 366), default=None)
@data_dir_option
@handle_errors
def tempcard_assign(
    card_ref: str, who: str, by: str, days: int | None, data_dir: Path | None
) -> None:
    """Assign the temporary CARD to USER (certificates in their name, PIN letter)."""
    from producers.tempcards import assign

    settings = settings_for(data_dir)
    click.echo(
        assign(open_migrated(settings), card_ref, who, by=by, policy=settings.policy(), days=days)
    )


@tempcard.command("extend")
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@click.option("--days", type=click.IntRange(1, 366), default=None)
@data_dir_option
@handle_errors
def tempcard_extend(card_ref: str, by: str, days: int | None, data_dir: Path | None) -> None:
    """Lengthen the assignment of CARD."""
    from producers.tempcards import extend

    settings = settings_for(data_dir)
    click.echo(
        extend(open_migrated(settings), card_ref, by=by, policy=settings.policy(), days=days)
    )


@tempcard.command("withdraw")
@click.argument("card_ref", metavar="CARD")
@click.option("--by", required=True)
@click.option("--reason", default=None)
@data_dir_option
@handle_errors
def tempcard_withdraw(card_ref: str, by: str, reason: str | None, data_dir: Path | None) -> None:
    """Take CARD back into stock; its holder's certificates are revoked."""
    from producers.tempcards import withdraw

    revoked = withdraw(open_migrated(settings_for(data_dir)), card_ref, by=by, reason=reason)
    click.echo(f"temporary card {card_ref} unassigned; {revoked} certificates revoked")


@main.group()
def incident() -> None:
    """Device incidents: a card forgotten, lost, stolen or damaged, and its replacement."""


@incident.command("declare")
@click.argument("card_ref", metavar="CARD")
@click.option(
    "--kind", required=True, type=click.Choice(["forgotten", "lost", "stolen", "damaged"])
)
@click.option("--temporary/--permanent", default=None, help="The replacement's kind.")
@click.option("--note", default=None)
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def incident_declare(
    card_ref: str,
    kind: str,
    temporary: bool | None,
    note: str | None,
    by: str,
    data_dir: Path | None,
) -> None:
    """Declare an incident on CARD: it goes out of use, a replacement is requested."""
    from producers.incidents import declare

    settings = settings_for(data_dir)
    found = declare(
        open_migrated(settings),
        card_ref,
        kind,
        by=by,
        policy=settings.policy(),
        temporary=temporary,
        note=note,
    )
    replacement = "temporary card" if found.temporary else f"card {found.replacement_id}"
    click.echo(f"incident {found.id} {found.state}; replacement: {replacement}")


@incident.command("approve")
@click.argument("incident_id", type=int)
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def incident_approve(incident_id: int, by: str, data_dir: Path | None) -> None:
    """Approve the replacement of INCIDENT_ID (never your own declaration)."""
    from producers.incidents import approve

    settings = settings_for(data_dir)
    found = approve(open_migrated(settings), incident_id, by=by, policy=settings.policy())
    click.echo(f"incident {found.id} {found.state}; replacement card {found.replacement_id}")


@incident.command("cancel")
@click.argument("incident_id", type=int)
@click.option("--by", required=True)
@click.option("--reason", default=None)
@data_dir_option
@handle_errors
def incident_cancel(incident_id: int, by: str, reason: str | None, data_dir: Path | None) -> None:
    """The card was found: withdraw the replacement request."""
    from producers.incidents import cancel

    found = cancel(open_migrated(settings_for(data_dir)), incident_id, by=by, reason=reason)
    click.echo(f"incident {found.id} {found.state}")


@incident.command("list")
@click.option("--state", default=None)
@data_dir_option
@handle_errors
def incident_list(state: str | None, data_dir: Path | None) -> None:
    """Incidents with their card, kind and replacement."""
    from rich.table import Table

    from producers.incidents import list_incidents

    table = Table("id", "card", "kind", "replacement", "state", "declared by")
    for i in list_incidents(open_migrated(settings_for(data_dir)), state=state):
        kind = "temporary" if i.temporary else "permanent"
        table.add_row(
            str(i.id),
            str(i.card_id),
            i.kind,
            f"{kind} {i.replacement_id or ''}".strip(),
            i.state,
            i.declared_by,
        )
    out_console.print(table)


# --- HTTP API and its tokens -----------------------------------------------------------


@main.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@data_dir_option
@click.pass_context
@handle_errors
def api(ctx: click.Context, host: str, port: int, data_dir: Path | None) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json) until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    from ops.api import serve

    serve(settings_for(data_dir), host=host, port=port)


@api.command("routes")
@click.option("--markdown", is_flag=True, help="A Markdown table (for the README).")
@data_dir_option
@handle_errors
def api_routes(markdown: bool, data_dir: Path | None) -> None:
    """Every endpoint with the roles it allows."""
    from rich.table import Table

    from ops.api import build_app, route_table

    rows = route_table(build_app(settings_for(data_dir)))
    if markdown:
        click.echo("| method | path | roles | what |\n|---|---|---|---|")
        for method, path, roles, what in rows:
            click.echo(f"| {method} | `{path}` | {roles} | {what} |")
        return
    table = Table("method", "path", "roles", "what")
    for row in rows:
        table.add_row(*row)
    out_console.print(table)


@main.group()
def token() -> None:
    """Bearer tokens of the HTTP API."""


@token.command("create")
@click.option("--name", required=True, help="Who uses it (the actor in the audit log).")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]))
@click.option("--by", default="cli", show_default=True, help="Who creates it (audited).")
@data_dir_option
@handle_errors
def token_create(name: str, role: str, by: str, data_dir: Path | None) -> None:
    """Create a token; it is printed once and stored only as a hash."""
    from producers.tokens import create_token

    token_id, secret = create_token(
        open_migrated(settings_for(data_dir)), name=name, role=role, by=by
    )
    err_console.print(f"token {token_id} for {name} ({role}); shown once, keep it safe:")
    click.echo(secret.reveal())


@token.command("list")
@data_dir_option
@handle_errors
def token_list(data_dir: Path | None) -> None:
    """Tokens by id, principal and its roles (never the tokens themselves)."""
    from rich.table import Table

    from producers.tokens import list_tokens

    table = Table("id", "principal", "roles", "created by", "created", "expires", "revoked")
    for v in list_tokens(open_migrated(settings_for(data_dir))):
        table.add_row(
            str(v.id),
            f"{v.name} (#{v.principal_id})",
            v.roles,
            v.created_by,
            v.created_at,
            v.expires_at or "never",
            "yes" if v.revoked else "",
        )
    out_console.print(table)


@token.command("revoke")
@click.argument("token_id", type=int)
@click.option("--by", default="cli", show_default=True)
@data_dir_option
@handle_errors
def token_revoke(token_id: int, by: str, data_dir: Path | None) -> None:
    """Revoke token TOKEN_ID: it stops working at once."""
    from producers.tokens import revoke_token

    revoke_token(open_migrated(settings_for(data_dir)), token_id, by=by)
    click.echo(f"token {token_id} revoked")


# --- soft tokens ---------------------------------------------------------------------


@main.group()
def softtoken() -> None:
    """Software tokens (PKCS#12): request, approve, reject, cancel, revoke, password."""


@softtoken.command("types")
@data_dir_option
@handle_errors
def softtoken_types(data_dir: Path | None) -> None:
    """The soft token types configured in [pki.softtokens]."""
    pki = settings_for(data_dir).pki()
    for name, kind in sorted(pki.softtokens.items()):
        click.echo(f"{name}\t{kind.key_algorithm}\t{kind.description}")


@softtoken.command("request")
@click.option("--user", required=True, help="The holder's e-mail or user id.")
@click.option("--type", "types", multiple=True, required=True, help="A token type (repeat).")
@click.option("--by", required=True, help="Who requests it (audited).")
@data_dir_option
@handle_errors
def softtoken_request(user: str, types: tuple[str, ...], by: str, data_dir: Path | None) -> None:
    """Request one soft token per --type for USER."""
    from producers.softtokens import request_softtokens

    settings = settings_for(data_dir)
    ids = request_softtokens(open_migrated(settings), user, types, by=by, pki=settings.pki())
    state = "requested" if settings.pki().softtoken_approval else "approved"
    for token_id, name in zip(ids, types, strict=True):
        click.echo(f"soft token {token_id} ({name}) {state}")


@softtoken.command("approve")
@click.argument("token_id", type=int)
@click.option("--by", required=True, help="The approver (not the requester).")
@data_dir_option
@handle_errors
def softtoken_approve(token_id: int, by: str, data_dir: Path | None) -> None:
    """Approve soft token TOKEN_ID; the PKI worker issues it."""
    from producers.softtokens import approve

    click.echo(approve(open_migrated(settings_for(data_dir)), token_id, by=by))


@softtoken.command("reject")
@click.argument("token_id", type=int)
@click.option("--by", required=True)
@click.option("--reason", required=True)
@data_dir_option
@handle_errors
def softtoken_reject(token_id: int, by: str, reason: str, data_dir: Path | None) -> None:
    """Reject soft token request TOKEN_ID."""
    from producers.softtokens import reject

    click.echo(reject(open_migrated(settings_for(data_dir)), token_id, by=by, reason=reason))


@softtoken.command("cancel")
@click.argument("token_id", type=int)
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def softtoken_cancel(token_id: int, by: str, data_dir: Path | None) -> None:
    """Cancel soft token TOKEN_ID before it is issued."""
    from producers.softtokens import cancel

    click.echo(cancel(open_migrated(settings_for(data_dir)), token_id, by=by))


@softtoken.command("revoke")
@click.argument("token_id", type=int)
@click.option("--reason", required=True, type=REASONS_CHOICE)
@click.option("--by", required=True)
@data_dir_option
@handle_errors
def softtoken_revoke(token_id: int, reason: str, by: str, data_dir: Path | None) -> None:
    """Revoke soft token TOKEN_ID and its certificate; the CRL is re-published."""
    from producers.softtokens import revoke
    from schemas.states import RevocationReason

    store = open_migrated(settings_for(data_dir))
    click.echo(revoke(store, token_id, by=by, reason=RevocationReason(reason)))


@softtoken.command("password")
@click.argument("token_id", type=int)
@click.option("--by", required=True, help="Who asks; needs the operator or admin role.")
@data_dir_option
@handle_errors
def softtoken_password(token_id: int, by: str, data_dir: Path | None) -> None:
    """Display the passphrase of soft token TOKEN_ID (audited; roles from [roles])."""
    from producers.softtokens import reveal_passphrase

    settings = settings_for(data_dir)
    secret = reveal_passphrase(
        open_migrated(settings),
        settings.secret_box(),
        token_id,
        by=by,
        roles=settings.roles_of(by),
    )
    click.echo(secret.reveal())


@softtoken.command("list")
@click.option("--user", default=None, help="Only this holder's (e-mail or id).")
@click.option("--state", default=None)
@data_dir_option
@handle_errors
def softtoken_list(user: str | None, state: str | None, data_dir: Path | None) -> None:
    """Soft tokens with their state, certificate serial and P12 file."""
    from rich.table import Table

    from producers.softtokens import list_softtokens

    views = list_softtokens(open_migrated(settings_for(data_dir)), user=user, state=state)
    table = Table("id", "user", "type", "state", "requested by", "approved by", "serial", "P12")
    for v in views:
        table.add_row(
            str(v.id),
            v.user_email,
            v.token_type,
            v.state,
            v.requested_by,
            v.approved_by or "",
            v.serial or "",
            v.p12_path or "",
        )
    out_console.print(table)


# --- key escrow ----------------------------------------------------------------------


@main.group()
def escrow() -> None:
    """Escrowed encryption keys: export as PFX, recover onto a new card."""


@escrow.command("export")
@click.argument("card")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--by", required=True, help="Who exports it (audited).")
@data_dir_option
@handle_errors
def escrow_export(card: str, out: Path, by: str, data_dir: Path | None) -> None:
    """Write CARD's escrowed key and certificate to OUT (PFX); print its one-time password."""
    from ops.pki import export_escrow_pfx

    path, password = export_escrow_pfx(settings_for(data_dir), card, out, by=by)
    click.echo(f"PFX written to {path}")
    click.echo(f"one-time password (shown once, stored nowhere): {password.reveal()}")


@escrow.command("recover")
@click.argument("card")
@click.option("--by", required=True, help="Who asks for it (audited).")
@data_dir_option
@handle_errors
def escrow_recover(card: str, by: str, data_dir: Path | None) -> None:
    """Have CARD (not yet produced) also carry its holder's earlier escrowed keys."""
    from producers.escrow import request_key_recovery

    count = request_key_recovery(open_migrated(settings_for(data_dir)), card, by=by)
    click.echo(f"card {card} will carry {count} earlier escrowed keys")


if __name__ == "__main__":
    main()
