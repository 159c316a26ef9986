"""``flask tailnet ...``: the click group registered through the ``flask.commands`` entry point."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import AppGroup

from .extension import GuardState, guard_state
from .secretfile import UnsafeSecretFile

tailnet = AppGroup("tailnet", help="flask-tailnet: the guard's token and state files.")


def _state() -> GuardState:
    state = guard_state(current_app)
    if state is None:
        raise click.ClickException(
            f"the app {current_app.name!r} does not use flask-tailnet; "
            "add `TailnetGuard(app)` (or `guard.init_app(app)`) to its factory"
        )
    return state


@tailnet.command("token")
@click.option("--rotate", is_flag=True, help="Replace the token; running servers use the new one.")
def token_command(rotate: bool) -> None:
    """Print the bearer token, creating it on first use; nothing else goes to stdout."""
    token_file = _state().token_file
    try:
        token = token_file.rotate() if rotate else token_file.ensure()
    except UnsafeSecretFile as exc:
        raise click.ClickException(f"refusing {exc}") from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot write {token_file.path}: {exc.strerror}; check TAILNET_STATE_DIR"
        ) from None
    click.echo(token.decode("ascii", "replace"))
