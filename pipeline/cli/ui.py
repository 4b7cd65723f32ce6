"""``fitstream ui``: the read-only web dashboard."""

from __future__ import annotations

import ipaddress
import os

import click

from pipeline.config import get_settings
from pipeline.errors import ConfigurationError

TOKEN_VARIABLE = "FITSTREAM_UI_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback needs a token.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option(
    "--token", default=None, help=f"Require this token on every request (default ${TOKEN_VARIABLE})."
)
def ui(host: str, port: int, token: str | None) -> None:
    """Serve the dashboard: runs, a run's curves (live), comparisons, models.

    \b
    Examples:
      fitstream ui                                   # http://127.0.0.1:8765/
      FITSTREAM_UI_TOKEN=$(openssl rand -hex 16) fitstream ui --host 0.0.0.0
    """
    import uvicorn

    from pipeline.ui.app import create_app

    token = token or os.environ.get(TOKEN_VARIABLE) or None
    if not is_loopback(host) and not token:
        raise ConfigurationError(
            f"binding {host} lets other machines read the training history: give a token with --token or {TOKEN_VARIABLE} "
            "(clients send it as 'Authorization: Bearer <token>' or ?token=)"
        )
    app = create_app(get_settings(), token=token)
    click.echo(
        f"Fitstream dashboard on http://{host}:{port}/" + ("  (token required)" if token else ""), err=True
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
