"""A wait that polls in the calling process (the CLI, the sweeper, tests): on the wait's schedule from
``since``, else once at once and then on the schedule from now; then its follow-up calls, then its ``next``
wait (polled from when the calls were made)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from image_factory.waits import follow_ups
from image_factory.waits.polls import reached
from image_factory.waits.protocol import Wait, WaitFailed, WaitOutcome, describe, failure, ids
from image_factory.waits.schedule import window

log = logging.getLogger("image_factory")


class Blocking:
    """A :class:`~image_factory.waits.protocol.Waiter` that polls here."""

    def __call__(self, ec2, wait: Wait) -> WaitOutcome:
        windows: dict = {}
        answer, polls = _poll_here(ec2, wait, time.time() if wait.since is None else wait.since,
                                   wait.since is None, windows)
        failed = follow_ups.run(ec2, wait.then)
        if failed:
            raise failure(*failed)
        if wait.next:
            answer, more = _poll_here(ec2, wait.next, time.time(), False, windows)
            polls += more
        last = wait.last
        return WaitOutcome(last.state, last.resources, answer=answer, windows=windows, polls=polls)

    def all(self, ec2_in: Callable[[str], object], waits: Sequence[Wait]) -> WaitOutcome:
        """One region after the other (each on its own schedule from its own ``since``)."""
        outcomes = {wait.region: self(ec2_in(wait.region), wait) for wait in waits}
        return WaitOutcome(waits[0].state, {wait.region: wait.resources for wait in waits},
                           answers={region: outcome.answer for region, outcome in outcomes.items()},
                           windows={region: outcome.windows.get(outcome.state) for region, outcome in
                                    outcomes.items()},
                           polls=sum(outcome.polls for outcome in outcomes.values()))


blocking = Blocking()


def _poll_here(ec2, wait: Wait, since: float, first_now: bool, windows: dict) -> tuple[dict, int]:
    deadline = since + wait.timeout
    previous, polls = None, 0
    while True:
        if not first_now:
            time.sleep(max(0.0, since + wait.schedule.next_after(time.time() - since) - time.time()))
        first_now = False
        polled = time.time() - since
        polls += 1
        answer = reached(ec2, wait.state, wait.resources)
        if answer is not None:
            log.info("%s %s (waited %.1f s)", describe(wait.state), ids(wait.resources), polled)
            windows[wait.state] = window(wait.schedule, previous, polled)
            return answer, polls
        previous = polled
        if time.time() >= deadline:
            raise WaitFailed(f"{describe(wait.state)} {ids(wait.resources)}: not reached within {wait.timeout:.0f} s")
