"""The HTTP API: ``cardline api`` serves it, ``cardline api routes`` lists it."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, data_dir_option, handle_errors, pass_app


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@data_dir_option
@click.pass_context
@handle_errors
def api(ctx: click.Context, host: str, port: int) -> None:
    """Serve the HTTP API (OpenAPI at /openapi.json) until interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    from ops.api import serve

    serve(ctx.ensure_object(CliContext).settings, host=host, port=port)


@api.command("routes")
@click.option("--markdown", is_flag=True, help="A Markdown table (for the README).")
@data_dir_option
@pass_app
@handle_errors
def api_routes(app: CliContext, markdown: bool) -> None:
    """Every endpoint with the roles it allows."""
    from rich.table import Table

    from ops.api import build_app, route_table

    rows = route_table(build_app(app.settings))
    if markdown:
        click.echo("| method | path | roles | what |\n|---|---|---|---|")
        for method, path, roles, what in rows:
            click.echo(f"| {method} | `{path}` | {roles} | {what} |")
        return
    table = Table("method", "path", "roles", "what")
    for row in rows:
        table.add_row(*row)
    app.out.print(table)


COMMANDS = (api,)
