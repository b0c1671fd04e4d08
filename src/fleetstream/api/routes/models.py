"""The model registry: ``GET /api/v1/models`` and ``GET /api/v1/models/{round}``.

Each federated training round of the failure predictor (``fleetstream train``,
docs/prediction.md) is stored with its averaged model and its metrics.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from fleetstream.api.deps import StoreDep
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.errors import NotFound

router = APIRouter(tags=["prediction"])


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
