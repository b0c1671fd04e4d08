"""The ``fleetstream`` command.

Every option also reads an environment variable, shown in ``--help``; the
settings tree is built here once and passed down. Each command group lives in
its own module (``cli_up``, with ``cli_serve`` and ``cli_options``; ``cli_simulate``),
registered on :data:`app` here; ``train`` and ``version`` are short enough to stay.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from fleetstream import __version__

# _check_port, _fail and _Server are re-exported: cluster mode's commands import them from here.
from fleetstream.cli_options import _check_port as _check_port
from fleetstream.cli_options import _fail as _fail
from fleetstream.cli_serve import _Server as _Server
from fleetstream.cli_simulate import simulate
from fleetstream.cli_up import up
from fleetstream.errors import FleetstreamError

app = typer.Typer(
    name="fleetstream",
    help="Device telemetry: simulate a fleet, ingest, validate, process, store, query and watch it live.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Registered here, in the order --help lists them; each command lives in its own module.
app.command()(up)
app.command()(simulate)


@app.command()
def train(
    store: Annotated[
        str, typer.Option(envvar="FLEETSTREAM_TRAIN_STORE", help="the DuckDB file (or store URL)")
    ],
    failures: Annotated[
        Path,
        typer.Option(envvar="FLEETSTREAM_TRAIN_FAILURES", help="ground truth: `simulate --failures FILE`"),
    ],
    sites: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_SITES", help="sites (device id hash)")] = 4,
    rounds: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_ROUNDS", help="federated rounds")] = 10,
    epochs: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_EPOCHS", help="steps per round")] = 10,
    window: Annotated[int, typer.Option(envvar="FLEETSTREAM_TRAIN_WINDOW", help="window size, seconds")] = 60,
    site_map: Annotated[
        Path | None, typer.Option(envvar="FLEETSTREAM_TRAIN_SITE_MAP", help="CSV: device_id,site")
    ] = None,
) -> None:
    """Train the failure predictor by federated rounds on a store's windows; store each round.

    See docs/prediction.md. The rounds are then listed by GET /api/v1/models.
    """
    from fleetstream.predictor_training import format_rounds, run_training

    options = {"sites": sites, "rounds": rounds, "epochs": epochs, "size_us": window * 1_000_000}
    try:
        saved = asyncio.run(run_training(store, failures, site_map=site_map, **options))
    except FleetstreamError as exc:
        raise _fail(str(exc)) from None
    typer.echo(format_rounds(saved))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"fleetstream {__version__}")


def main() -> None:
    """Entry point of the ``fleetstream`` script."""
    app()


# cluster mode (gateway, worker) registers its commands on ``app``
from fleetstream.cluster import commands as _cluster_commands  # noqa: E402, F401
