"""Waiting for a cloud state (instance running, image available, ...), two ways.

Steps call a ``wait`` function. :func:`blocking` polls with boto3's waiter in the calling process (tests,
the CLI, and the short stop wait). :func:`deferring` hands the wait to Airflow's triggerer at once, by
raising :class:`WaitDeferred`: the DAG turns it into a deferral, so that the wait holds no worker slot
(triggers.py polls). When the state is reached, the trigger either ends the task itself (``finish``: nothing
is left to do after the wait) or the task runs again from the start; steps are idempotent, so the rerun finds
what it made, and the wait that succeeded is not polled again (:func:`resumed_after`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from botocore.exceptions import WaiterError

from image_factory.errors import PermanentError

log = logging.getLogger("image_factory")

Wait = Callable[..., None]


class WaitFailed(PermanentError):
    pass


class WaitDeferred(Exception):
    """Not an error: the state is not reached yet, and the wait moves to the triggerer."""

    def __init__(self, trigger, timeout: float, result=None):
        super().__init__(f"waiting in the triggerer: {trigger!r}")
        self.trigger = trigger
        self.timeout = timeout
        #: The task's result when the trigger ends the task (``finish``): stored before deferring.
        self.result = result


def reached(ec2, waiter_name: str, waiter_args: dict) -> bool:
    """One poll: True when the state is reached; raises :class:`WaitFailed` when it never will be."""
    try:
        ec2.get_waiter(waiter_name).wait(**waiter_args, WaiterConfig={"Delay": 1, "MaxAttempts": 1})
        return True
    except WaiterError as exc:
        if "terminal failure state" in str(exc):
            raise WaitFailed(f"{waiter_name} {waiter_args}: {exc}") from None
        return False


def blocking(ec2, waiter_name: str, *, timeout: float, delay: float, **waiter_args) -> None:
    started = time.monotonic()
    delay = max(1, round(delay))
    ec2.get_waiter(waiter_name).wait(**waiter_args, WaiterConfig={
        "Delay": delay, "MaxAttempts": max(1, int(timeout // delay) + 1)})
    log.info("%s %s (waited %.1f s)", describe(waiter_name), ids(waiter_args), time.monotonic() - started)


def deferring(aws_conn_id: str, region: str, *, resumed: dict | None = None, finish: bool = False) -> Wait:
    """A wait that moves to the triggerer (through the AWS connection given) without polling here.

    ``resumed``: the event the task was resumed with; the wait it reports as reached returns at once.
    ``finish``: the trigger ends the task when the state is reached; the waited-for id is the task's result.
    """
    from image_factory.triggers import Ec2StateTrigger

    def wait(ec2, waiter_name: str, *, timeout: float, delay: float, **waiter_args) -> None:
        if resumed_after(resumed, waiter_name, waiter_args):
            log.info("%s %s (in %s polls by the triggerer)", describe(waiter_name), ids(waiter_args),
                     resumed.get("polls"))
            return
        log.info("waiting for %s %s without holding a worker slot (deferred to the triggerer)",
                 describe(waiter_name), ids(waiter_args))
        trigger = Ec2StateTrigger(aws_conn_id, region, waiter_name, waiter_args, timeout, delay, finish=finish,
                                  started=time.time())
        raise WaitDeferred(trigger, timeout, result=next(iter(waiter_args.values()))[0] if finish else None)

    return wait


def resumed_after(event: dict | None, waiter_name: str, waiter_args: dict) -> bool:
    """True when ``event`` says that this very wait succeeded."""
    if not event or event.get("status") != "success":
        return False
    return event.get("any_wait") or (event.get("waiter_name"), event.get("waiter_args")) == (waiter_name, waiter_args)


def describe(waiter_name: str) -> str:
    return waiter_name.replace("_", " ")


def ids(waiter_args: dict) -> str:
    return ", ".join(str(i) for v in waiter_args.values() for i in (v if isinstance(v, list) else [v]))
