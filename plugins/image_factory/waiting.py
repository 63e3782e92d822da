"""Waiting for a cloud state (instance running, image available, ...), two ways.

Steps call a ``wait`` function. :func:`blocking` polls in the calling process (tests and the CLI).
:func:`deferring` hands the wait to Airflow's triggerer at once, by raising :class:`WaitDeferred`:
the DAG turns it into a deferral, so that the wait holds no worker slot (triggers.py polls). When the state is
reached, either the trigger ends the task itself (the step gave its ``result``: nothing is left to do after the
wait), or the task runs again from the start; steps are idempotent, so the rerun finds what it made, and the
wait that succeeded is not polled again (:func:`resumed_after`).

Both poll on the wait's ``schedule`` (polling.py) from the moment the change was started (``since``), never
at once (the state cannot have changed yet). A wait can end with EC2 calls that had to wait for the state
(``then``: deleting a security group once its instance is gone; creating the image once the instance is
stopped), and go on to wait for the change those calls started (``next_wait``, on ``next_schedule``). A
failed call goes back to the step: it runs again (the teardown, by tag), or, when the call was to start the
next change, fails, permanent or transient as the AWS error says. Both waits return the last describe
answer; given a ``windows`` dict, they put in it the window each change ended in (by waiter name), which
the next build's schedule starts from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from image_factory.polling import (
    Call,
    Schedule,
    WaitFailed,
    call_after,
    describe,
    failure,
    ids,
    reached,
    window,
)

log = logging.getLogger("image_factory")

Wait = Callable[..., dict]


class WaitDeferred(Exception):
    """Not an error: the state is not reached yet, and the wait moves to the triggerer."""

    def __init__(self, trigger, timeout: float, result=None):
        super().__init__(f"waiting in the triggerer: {trigger!r}")
        self.trigger = trigger
        self.timeout = timeout
        #: The task's result when the trigger ends the task: stored before deferring.
        self.result = result


def blocking(ec2, waiter_name: str, *, timeout: float, schedule: Schedule | float, since: float | None = None,
             then: tuple[Call, ...] = (), next_wait: tuple[str, dict] | None = None,
             next_schedule: Schedule | float | None = None, result=None, history: dict | None = None,
             windows: dict | None = None, **waiter_args) -> dict:
    """Poll here until the state is reached: on the schedule from ``since``, else once now and then on the
    schedule from now; then make the ``then`` calls and wait for ``next_wait`` (from then on, on
    ``next_schedule``, else ``schedule``). Returns the last describe answer; ``windows`` gets each wait's window.
    (``result`` and ``history`` are for :func:`deferring`: ignored here.)"""
    schedule = Schedule.of(schedule)
    first_now = since is None
    answer = _poll_here(ec2, waiter_name, waiter_args, time.time() if first_now else since, timeout, schedule,
                        first_now, windows)
    failed = call_after(ec2, then)
    if failed:
        raise failure(*failed)
    if next_wait:
        later = Schedule.of(next_schedule) if next_schedule is not None else schedule
        answer = _poll_here(ec2, *next_wait, time.time(), timeout, later, False, windows)
    return answer


def _poll_here(ec2, waiter_name: str, waiter_args: dict, since: float, timeout: float, schedule: Schedule,
               first_now: bool, windows: dict | None) -> dict:
    deadline = since + timeout
    previous = None
    while True:
        if not first_now:
            time.sleep(max(0.0, since + schedule.next_after(time.time() - since) - time.time()))
        first_now = False
        polled = time.time() - since
        answer = reached(ec2, waiter_name, waiter_args)
        if answer is not None:
            log.info("%s %s (waited %.1f s)", describe(waiter_name), ids(waiter_args), polled)
            if windows is not None:
                windows[waiter_name] = window(schedule, previous, polled)
            return answer
        previous = polled
        if time.time() >= deadline:
            raise WaitFailed(f"{describe(waiter_name)} {ids(waiter_args)}: not reached within {timeout:.0f} s")


def deferring(aws_conn_id: str, region: str, *, resumed: dict | None = None) -> Wait:
    """A wait that moves to the triggerer (through the AWS connection given) without polling here.

    ``resumed``: the event the task was resumed with; the wait it reports as reached returns at once (and
    gives ``windows`` the windows the trigger saw). A step that gives the wait its ``result`` has nothing
    left to do after it: the trigger ends the task, and pushes the step's ``waits`` (``history`` with this
    build's windows added).
    """
    from image_factory.triggers import Ec2StateTrigger

    def wait(ec2, waiter_name: str, *, timeout: float, schedule: Schedule | float, since: float | None = None,
             then: tuple[Call, ...] = (), next_wait: tuple[str, dict] | None = None,
             next_schedule: Schedule | float | None = None, result=None, history: dict | None = None,
             windows: dict | None = None, **waiter_args) -> dict:
        if next_wait and resumed_after(resumed, waiter_name, waiter_args) and resumed.get("calls_failed"):
            # The calls that were to start the next change failed in the triggerer: nothing to wait for.
            raise failure(resumed["calls_failed"], bool(resumed.get("calls_failed_transient")))
        last_name, last_args = next_wait or (waiter_name, waiter_args)
        if resumed_after(resumed, last_name, last_args):
            log.info("%s %s (in %s polls by the triggerer)", describe(last_name), ids(last_args),
                     resumed.get("polls"))
            if windows is not None:
                windows.update(resumed.get("windows") or {})
            return resumed.get("answer") or {}
        shown = f", then {describe(next_wait[0])}" if next_wait else ""
        schedule = Schedule.of(schedule)
        log.info("waiting for %s %s%s without holding a worker slot (deferred to the triggerer; polls %s)",
                 describe(waiter_name), ids(waiter_args), shown, schedule.describe())
        trigger = Ec2StateTrigger(aws_conn_id, region, waiter_name, waiter_args, timeout, schedule,
                                  finish=result is not None, started=since or time.time(), then=list(then),
                                  next_wait=list(next_wait) if next_wait else None, next_schedule=next_schedule,
                                  history=history)
        raise WaitDeferred(trigger, timeout * (2 if next_wait else 1), result=result)

    return wait


def resumed_after(event: dict | None, waiter_name: str, waiter_args: dict) -> bool:
    """True when ``event`` says that this very wait succeeded."""
    if not event or event.get("status") != "success":
        return False
    return (event.get("waiter_name"), event.get("waiter_args")) == (waiter_name, waiter_args)


#: A wait for one state in several regions at once: (waiter name, {region: waiter args}, timeout=, schedule=,
#: since=) -> {region: the last describe answer there}.
RegionsWait = Callable[..., dict[str, dict]]


def deferring_in_regions(aws_conn_id: str, *, resumed: dict | None = None) -> RegionsWait:
    """Hands the wait in every region to one trigger (triggers.RegionsTrigger): they are polled at once, and
    the task runs again when all are there; ``resumed``: the event it runs again with (the answers)."""
    from image_factory.triggers import RegionsTrigger

    def wait(waiter_name: str, waiter_args: dict[str, dict], *, timeout: float, schedule: Schedule | float,
             since: float | None = None) -> dict[str, dict]:
        if resumed_after(resumed, waiter_name, waiter_args):
            log.info("%s in %s (in %s polls by the triggerer)", describe(waiter_name), ", ".join(waiter_args),
                     resumed.get("polls"))
            return resumed.get("answers") or {}
        schedule = Schedule.of(schedule)
        log.info("waiting for %s in %s at once, without holding a worker slot (deferred to the triggerer; polls "
                 "%s)", describe(waiter_name), ", ".join(f"{ids(a)} in {r}" for r, a in waiter_args.items()),
                 schedule.describe())
        raise WaitDeferred(RegionsTrigger(aws_conn_id, waiter_name, waiter_args, timeout, schedule,
                                          started=since or time.time()), timeout)

    return wait
