"""The model registry (``GET /api/v1/models``, ``GET /api/v1/models/{round}``), training while
the server runs (``POST /api/v1/models/train``, ``GET /api/v1/models/train``) and the running
predictor's scores (``GET /api/v1/models/scores``).

Each federated training round of the failure predictor (``fleetstream train``,
docs/prediction.md) is stored with its averaged model and its metrics.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from fleetstream.api.deps import EngineDep, RuntimeDep, StoreDep
from fleetstream.domain.failure_truth import Outage
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.engine.pipeline import Engine
from fleetstream.errors import ConfigError, InvalidDefinition, NotFound
from fleetstream.simulator.failures import fleet_outages

router = APIRouter(tags=["prediction"])


class TrainingRefused(InvalidDefinition):
    """A training request that cannot run as given (422)."""

    code = "invalid_training"


class TrainRequest(BaseModel):
    """What to train: federated rounds over sites, and where the ground truth comes from."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(10, ge=1, le=200, description="federated rounds")
    sites: int = Field(4, ge=1, le=1000, description="devices hashed into this many sites")
    epochs: int = Field(10, ge=1, le=1000, description="local gradient steps per round")
    failures: str | None = Field(
        None,
        description="failures file on the server (JSON lines or .csv); default: the built-in simulator's",
    )


async def failure_risk(engine: Engine, device_id: str) -> dict[str, Any] | None:
    """The device's current failure risk as its twin shows it (None: not scored)."""
    return await engine.models.risk(device_id)


def _simulator_truth(runtime: Any) -> dict[str, list[Outage]] | None:
    simulator = runtime.info.get("simulator")
    if simulator is None:
        return None
    return fleet_outages(simulator.fleet)


@router.post(
    "/api/v1/models/train",
    status_code=202,
    summary="Train the failure predictor on the stored windows now (in the background)",
    responses={
        409: {"description": "A training run is still going."},
        422: {"description": "No ground truth."},
    },
)
async def train(body: TrainRequest, engine: EngineDep, runtime: RuntimeDep) -> dict[str, Any]:
    """Starts federated training on the windows stored so far, labelled with the built-in
    simulator's failures (or the `failures` file given), and answers 202 at once. Each round is
    stored in the registry; the running predictor switches to the newest when training ends.
    Follow it with `GET /api/v1/models/train`."""
    if not engine.models.enabled:
        msg = "failure prediction is off (--no-predictor, or its window size is not in stream.windows)"
        raise TrainingRefused(msg)
    if body.failures is not None:
        from fleetstream.predictor_training import load_outages

        try:
            truth = load_outages(FilePath(body.failures))
        except ConfigError as exc:
            raise TrainingRefused(exc.message) from None
    else:
        found = _simulator_truth(runtime)
        if found is None:
            msg = "no ground truth: give `failures` (a failures file on the server) or run the simulator"
            raise TrainingRefused(msg)
        truth = found
    job = engine.models.train(truth, {"rounds": body.rounds, "sites": body.sites, "epochs": body.epochs})
    return {"training": engine.models.status()["training"], "status": "/api/v1/models/train", "id": job.id}


@router.get("/api/v1/models/train", summary="The running predictor's model and the last training run")
async def training_status(engine: EngineDep) -> dict[str, Any]:
    """`enabled`, `model` (`round`: null for the model shipped in the package, `version`),
    `threshold`, `window_s`, and `training`: `state` (running, done, failed), `rounds` stored,
    `error`."""
    return engine.models.status()


@router.get("/api/v1/models/scores", summary="Failure risk of every scored device, highest first")
async def scores(
    engine: EngineDep, limit: Annotated[int, Query(ge=1, le=100_000, description="most devices")] = 100
) -> Response:
    """`{"model", "threshold", "devices": [{"device_id", "score", "alert", "at"}]}`: `alert` is
    true while the device has an open `failure_predicted` alert."""
    rows = await engine.models.scores(limit)
    status = engine.models.status()
    body = {"model": status["model"], "threshold": status["threshold"], "devices": rows}
    return Response(msgspec.json.encode(body), media_type="application/json")


@router.get("/api/v1/models", summary="Training rounds of the failure predictor, with their metrics")
async def list_models(store: StoreDep) -> dict[str, Any]:
    """Every stored round, oldest first: `round`, `version`, `created_at`, `n_sites`,
    `n_samples` (feature rows behind the average) and `metrics` (`log_loss`, `auc`, `rows` on
    the validation devices). The model's parameters are in `GET /api/v1/models/{round}`."""
    rounds = await store.list_model_rounds()
    return {"models": [_summary(r) for r in rounds], "latest": rounds[-1].round if rounds else None}


@router.get("/api/v1/models/{round}", summary="One training round, its model parameters included")
async def get_model(
    store: StoreDep, round: Annotated[int, Path(ge=1, description="the round number")]
) -> dict[str, Any]:
    """The round's summary and `params`: the logistic model (`features`, the standardisation
    `mean` and `scale`, `coef`, `intercept`). 404 when no such round is stored."""
    for r in await store.list_model_rounds():
        if r.round == round:
            return {**_summary(r), "params": r.params}
    msg = f"no model round {round} is stored (GET /api/v1/models lists them)"
    raise NotFound(msg)


def _summary(r: ModelRound) -> dict[str, Any]:
    return {
        "round": r.round,
        "version": r.version,
        "created_at": us_to_iso(r.created_at),
        "n_sites": r.n_sites,
        "n_samples": r.n_samples,
        "metrics": r.metrics,
    }
