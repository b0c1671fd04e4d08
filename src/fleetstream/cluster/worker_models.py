"""The failure predictor in a worker: the embedded engine's prediction, per partition.

Each partition's :class:`~fleetstream.engine.processors.StreamProcessors` holds a
:class:`~fleetstream.engine.prediction.PredictionStage`, as the embedded engine's does; this module
gives it the model and keeps the model current:

- At start the model is the newest round of the model registry in PostgreSQL, or the model shipped
  in the package while the registry is empty (the embedded choice, same threshold rule:
  ``predictor.threshold``, else the round's ``threshold`` metric, else the shipped one).
- A partition gets the model before its checkpoint is restored, so the predictor's features, risks
  and open alerts continue exactly where the partition's last owner stored them.
- Every ``predictor.reload_s`` the registry is read again; a newer round (``POST
  /api/v1/models/train`` on any api instance, or ``fleetstream train``) is swapped into every
  partition between two batches, without a restart.

What the predictors emit travels the embedded path: transitions become ``failure_predicted``
alerts and device events through the rule stage (stored, streamed and announced by the worker as
any alert), and each re-scored device's risk is stored (:mod:`.risks`) in the transaction of the
partition's checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from fleetstream.adapters.store.postgres import PostgresStore
from fleetstream.cluster import risks
from fleetstream.cluster.risks import Risk
from fleetstream.config import PredictorSettings, StreamSettings
from fleetstream.engine.model_control import newest_choice
from fleetstream.engine.prediction import ModelChoice, default_model
from fleetstream.engine.processors import StreamProcessors

log = logging.getLogger(__name__)


class WorkerModels:
    """A worker's failure model; see the module docstring.

    Args:
        store: the shared store (its model registry).
        settings: the predictor's settings.
        stream: the stream settings (the predictor runs only if its window size is one of them).
    """

    def __init__(self, store: PostgresStore, settings: PredictorSettings, stream: StreamSettings) -> None:
        self.store = store
        self.settings = settings
        self.size_us = round(settings.window_s * 1_000_000)
        self.enabled = settings.enabled and self.size_us in stream.window_sizes_us
        self.choice: ModelChoice | None = None
        self._checked = 0.0

    @property
    def threshold(self) -> float:
        """The risk that opens an alert."""
        if self.settings.threshold is not None:
            return self.settings.threshold
        return self.choice.threshold if self.choice is not None else default_model().threshold

    async def start(self) -> None:
        """Create the risk table and choose the model."""
        await risks.create_table(self.store)
        if self.settings.enabled and not self.enabled:
            log.warning(
                "failure prediction is off: it reads %g s windows, not in stream.windows",
                self.settings.window_s,
            )
        if not self.enabled:
            return
        self.choice = await newest_choice(self.store) or default_model()
        self._checked = time.monotonic()
        log.info("failure predictor: model %s (threshold %.2f)", self.choice.version, self.threshold)

    def configure(self, processors: StreamProcessors) -> None:
        """Give a partition's (fresh) processors the model, before their state is restored."""
        if self.choice is None:
            return
        processors.prediction.size_us = self.size_us
        processors.prediction.set_model(self.choice, self.threshold)

    async def reload(self, partitions: Iterable[StreamProcessors], *, force: bool = False) -> bool:
        """Switch every partition to a newer registry round if there is one (at most every
        ``reload_s`` unless forced); whether it switched. Call it under the worker's lock."""
        if self.choice is None:
            return False
        now = time.monotonic()
        if not force and now - self._checked < self.settings.reload_s:
            return False
        self._checked = now
        newest = await newest_choice(self.store)
        if newest is None or newest.round == self.choice.round:
            return False
        self.choice = newest
        for processors in partitions:
            self.configure(processors)
        log.info("failure predictor: now model round %s (threshold %.2f)", newest.round, self.threshold)
        return True

    @staticmethod
    def take(processors: StreamProcessors) -> list[Risk]:
        """The risks the partition's predictor changed since the last call (to store)."""
        return risks.changed_risks(processors.prediction)
