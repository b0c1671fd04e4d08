"""Logging a store outage once, not at every retry.

The worker's loops poll the store several times a second; while PostgreSQL is away (a restart, a
failover) each poll fails the same way. One warning when the outage starts and one line when the
store answers again say everything; a traceback per poll would bury the rest of the log.
"""

from __future__ import annotations

import logging


class OutageLog:
    """The state of one polling loop's view of the store: reachable or not."""

    def __init__(self, log: logging.Logger, what: str) -> None:
        """Args:
        log: where to write.
        what: the loop, as the log lines name it (``"worker w-1: rule changes and commands"``).
        """
        self.log = log
        self.what = what
        self.failures = 0

    def failed(self, exc: Exception) -> None:
        """A poll failed because the store is unreachable: say so on the first failure only."""
        if self.failures == 0:
            self.log.warning("%s wait for the store, retrying: %s", self.what, exc)
        self.failures += 1

    def succeeded(self) -> None:
        """A poll succeeded: if the store was away, say it is back and how many polls failed."""
        if self.failures:
            self.log.info(
                "%s resume: the store answers again after %d failed polls", self.what, self.failures
            )
            self.failures = 0
