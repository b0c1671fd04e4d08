"""What the commands share about their options: turning the ones given into settings, and
bad options (or a port already taken) into a clean error exit instead of a traceback.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import typer


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _given(**values: Any) -> dict[str, Any] | None:
    """The options given (flag or env var), so unset ones keep the settings' defaults and TOML values."""
    chosen = {k: v for k, v in values.items() if v is not None}
    return chosen or None


def _check_port(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                msg = f"port {port} on {host} is in use; pick another with --port"
                raise _fail(msg) from None
            msg = f"cannot listen on {host}:{port}: {exc.strerror}"
            raise _fail(msg) from None
