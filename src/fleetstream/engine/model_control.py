"""Which failure model the running engine scores with, and training while it runs.

At start the engine scores with the newest round of the store's model registry, or,
while the registry is empty, with the model shipped in the package
(``fleetstream/models/default_failure_model.json``, docs/prediction.md). Every
``predictor.reload_s`` the registry is checked again: a newer round (from
``POST /api/v1/models/train``, or ``fleetstream train`` against a shared PostgreSQL store)
is swapped in between two batches, without a restart. The alert threshold is
``predictor.threshold`` when set, else the round's ``threshold`` metric when it has one,
else the shipped model's validated threshold.

Training runs as one background task at a time (:meth:`ModelControl.train`): it reads the
stored windows and the ground truth it is given, stores each round, then reloads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetstream.config import PredictorSettings
from fleetstream.domain.failure_truth import Outage
from fleetstream.domain.features import HOST_SENSORS, FeatureExtractor
from fleetstream.domain.federated import ModelRound
from fleetstream.domain.timeutil import us_to_iso
from fleetstream.engine.prediction import ModelChoice, default_model
from fleetstream.errors import Conflict, FleetstreamError

if TYPE_CHECKING:
    from fleetstream.engine.pipeline import Engine
    from fleetstream.engine.processors import StreamProcessors
    from fleetstream.ports import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TrainingJob:
    """One training run started through the API."""

    id: int
    state: str = "running"  # running, done, failed
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    rounds: list[int] = field(default_factory=list)
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class ModelControl:
    """The engine's failure model: choose, reload, train; see the module docstring."""

    def __init__(self, engine: Engine, settings: PredictorSettings | None = None) -> None:
        self.engine = engine
        self.settings = settings or PredictorSettings()
        self.size_us = round(self.settings.window_s * 1_000_000)
        self.enabled = self.settings.enabled and self.size_us in engine.stream.window_sizes_us
        self.choice: ModelChoice | None = None
        self.job: TrainingJob | None = None
        self._task: asyncio.Task[None] | None = None
        self._checked = 0.0

    async def load(self) -> None:
        """Choose the model (registry's newest round, else the shipped one) and give it to the processors."""
        if self.settings.enabled and not self.enabled:
            log.warning(
                "failure prediction is off: it reads %g s windows, not in stream.windows",
                self.settings.window_s,
            )
        if not self.enabled:
            return
        self.choice = await self._newest() or default_model()
        self._checked = time.monotonic()
        self.configure(self.engine.processors)
        log.info("failure predictor: model %s (threshold %.2f)", self.choice.version, self.threshold)

    @property
    def threshold(self) -> float:
        """The risk that opens an alert."""
        if self.settings.threshold is not None:
            return self.settings.threshold
        return self.choice.threshold if self.choice is not None else default_model().threshold

    def configure(self, processors: StreamProcessors) -> None:
        """Give (fresh) processors the model, before their state is restored."""
        if self.choice is None:
            return
        processors.prediction.size_us = self.size_us
        processors.prediction.set_model(self.choice, self.threshold)

    async def reload(self, *, force: bool = False) -> bool:
        """Switch to a newer registry round if there is one (at most every ``reload_s``); True if switched."""
        if self.choice is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked < self.settings.reload_s:
            return False
        self._checked = now
        newest = await self._newest()
        if newest is None or newest.round == self.choice.round:
            return False
        self.choice = newest
        self.configure(self.engine.processors)
        log.info("failure predictor: now model round %s (threshold %.2f)", newest.round, self.threshold)
        return True

    async def _newest(self) -> ModelChoice | None:
        return await newest_choice(self.engine.store)

    async def risk(self, device_id: str) -> dict[str, Any] | None:
        """The device's current failure risk as its twin shows it (None: not scored)."""
        return risk_json(self.engine.processors.prediction.risk(device_id))

    async def scores(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` highest risks: device_id, score, alert (an open alert), at; highest first."""
        stage = self.engine.processors.prediction
        active = stage.predictor.active() if stage.predictor is not None else {}
        ranked = sorted(stage.scores().items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        rows = []
        for device_id, _ in ranked:
            risk = risk_json(stage.risk(device_id)) or {}
            rows.append(
                {
                    "device_id": device_id,
                    "score": risk.get("score"),
                    "alert": device_id in active,
                    "at": risk.get("at"),
                }
            )
        return rows

    def status(self) -> dict[str, Any]:
        """The predictor's model and the last training job, for the API."""
        c = self.choice
        job = self.job
        return {
            "enabled": c is not None,
            "model": None if c is None else {"round": c.round, "version": c.version},
            "threshold": None if c is None else self.threshold,
            "window_s": self.settings.window_s,
            "training": None if job is None else _job_json(job),
        }

    def train(self, truth: dict[str, list[Outage]], options: dict[str, Any]) -> TrainingJob:
        """Start training in the background on the stored windows and ``truth``.

        Raises:
            Conflict: a training run is still going.
        """
        if self.job is not None and self.job.state == "running":
            msg = f"training run {self.job.id} is still running (GET /api/v1/models/train)"
            raise Conflict(msg)
        self.job = TrainingJob((self.job.id + 1) if self.job else 1, options=dict(options))
        self._task = asyncio.create_task(self._train(self.job, truth), name="fleetstream-training")
        return self.job

    async def _train(self, job: TrainingJob, truth: dict[str, list[Outage]]) -> None:
        from fleetstream.predictor_training import train_from_store  # numpy-heavy: only when used

        try:
            await self._before_training()
            rounds = await train_from_store(self.engine.store, truth, size_us=self.size_us, **job.options)
            job.rounds = [r.round for r in rounds]
            job.state = "done"
            await self.reload(force=True)
        except FleetstreamError as exc:
            job.state, job.error = "failed", exc.message
        except Exception as exc:  # reported through the status endpoint, never lost
            log.exception("training failed")
            job.state, job.error = "failed", f"training failed: {exc}"
        finally:
            job.finished_at = time.time()

    async def _before_training(self) -> None:
        await self.engine.flush()  # the newest windows are stored before they are read

    async def stop(self) -> None:
        """Cancel a training run in progress (at shutdown)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def newest_choice(store: Store) -> ModelChoice | None:
    """The newest usable round of the store's model registry (None: none is)."""
    rounds = await store.list_model_rounds()
    for r in reversed(rounds):
        try:
            return _choice(r)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("model round %d is skipped: %s", r.round, exc)
    return None


def risk_json(risk: dict[str, Any] | None) -> dict[str, Any] | None:
    """A :meth:`PredictionStage.risk` as the API shows it (``at_us`` as ISO 8601 ``at``)."""
    if risk is None:
        return None
    body = dict(risk)
    at = body.pop("at_us")
    return {**body, "at": us_to_iso(at)}


def _choice(r: ModelRound) -> ModelChoice:
    threshold = r.metrics.get("threshold")
    base = default_model().threshold if threshold is None else float(threshold)
    if not 0.0 < base <= 1.0:
        msg = f"its threshold metric {base} is not in (0, 1]"
        raise ValueError(msg)
    model = r.model()
    if model.features != FeatureExtractor(HOST_SENSORS).names:
        msg = "its features are not the host features the predictor computes"
        raise ValueError(msg)
    return ModelChoice(model, base, r.round, r.version)


def _job_json(job: TrainingJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "state": job.state,
        "started_at": us_to_iso(round(job.started_at * 1_000_000)),
        "finished_at": None if job.finished_at is None else us_to_iso(round(job.finished_at * 1_000_000)),
        "rounds": job.rounds,
        "error": job.error,
        "options": job.options,
    }
