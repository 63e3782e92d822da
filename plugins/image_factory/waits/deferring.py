"""A wait that moves to Airflow's triggerer at once, without polling here: it raises
:class:`~image_factory.waits.protocol.Deferred` with the trigger that watches it (triggers.py), and
operators.classified turns that into Airflow's deferral, so that the wait holds no worker slot.

When the state is reached, either the trigger ends the task itself (the request carries the step's
``result``: nothing is left to do after the wait), or Airflow resumes the task with the trigger's event
(operators.BuildStep.resume), which hands its :class:`~image_factory.waits.protocol.WaitOutcome` to the task
body; the body runs again from the start (steps are idempotent), and the same wait, asked again, returns that
outcome instead of deferring a second time.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence

from image_factory.waits.protocol import Deferred, Wait, WaitOutcome, describe, ids
from image_factory.waits.triggers import Ec2StateTrigger, RegionsTrigger

log = logging.getLogger("image_factory")


class Deferring:
    """A :class:`~image_factory.waits.protocol.Waiter` of one task: its waits poll through ``connection`` in
    ``region`` (unless a wait names its own); ``outcome``: of the wait the task was resumed after."""

    def __init__(self, connection: str, region: str, outcome: WaitOutcome | None = None):
        self.connection = connection
        self.region = region
        self.outcome = outcome

    def __call__(self, ec2, wait: Wait) -> WaitOutcome:
        if self.outcome and wait.next and self.outcome.is_for(wait):
            # The calls that were to start the next change failed in the triggerer: nothing to wait for.
            self.outcome.raise_failed()
        if self.outcome and self.outcome.is_for(wait.last):
            log.info("%s %s (in %s polls by the triggerer)", describe(wait.last.state), ids(wait.last.resources),
                     self.outcome.polls)
            return self.outcome
        log.info("waiting for %s without holding a worker slot (deferred to the triggerer; polls %s)",
                 wait.shown(), wait.schedule.describe())
        placed = dataclasses.replace(wait.placed(self.connection, self.region), since=wait.since or time.time())
        raise Deferred(Ec2StateTrigger(placed, finish=wait.result is not None), wait.total_timeout,
                       result=wait.result)

    def all(self, ec2_in: Callable[[str], object], waits: Sequence[Wait]) -> WaitOutcome:
        """One trigger for all the regions (triggers.RegionsTrigger): they are polled at once, and the task
        runs again when all are there."""
        state, resources = waits[0].state, {wait.region: wait.resources for wait in waits}
        if self.outcome and (self.outcome.state, self.outcome.resources) == (state, resources):
            log.info("%s in %s (in %s polls by the triggerer)", describe(state), ", ".join(resources),
                     self.outcome.polls)
            return self.outcome
        log.info("waiting for %s in %s at once, without holding a worker slot (deferred to the triggerer; polls "
                 "%s)", describe(state), ", ".join(f"{ids(a)} in {r}" for r, a in resources.items()),
                 waits[0].schedule.describe())
        now = time.time()
        placed = [dataclasses.replace(wait.placed(self.connection, self.region), since=wait.since or now)
                  for wait in waits]
        raise Deferred(RegionsTrigger(placed), max(wait.total_timeout for wait in waits))
