"""Waiting for a cloud state (instance running, image available, ...), two ways.

Steps call a ``wait`` function. :func:`blocking` polls in the calling process (tests, the CLI, and the short
stop wait). :func:`deferring` hands the wait to Airflow's triggerer at once, by raising :class:`WaitDeferred`:
the DAG turns it into a deferral, so that the wait holds no worker slot (triggers.py polls). When the state is
reached, either the trigger ends the task itself (the step gave its ``result``: nothing is left to do after the
wait), or the task runs again from the start; steps are idempotent, so the rerun finds what it made, and the
wait that succeeded is not polled again (:func:`resumed_after`).

Both poll on a fixed grid from the moment the change was started (``since``): every ``delay`` seconds after
it, never at once (the state cannot have changed yet), and without drifting by the time each poll takes.
A wait can end with EC2 calls that had to wait for the state (``then``: deleting a security group once its
instance is gone); a failed one is logged and left to the step, which then runs again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from botocore import xform_name
from botocore.exceptions import ClientError

from image_factory.errors import PermanentError

log = logging.getLogger("image_factory")

Wait = Callable[..., None]

#: An EC2 call made once a wait is over: (operation name, its arguments), e.g. ("delete_subnet", {...}).
Call = tuple[str, dict]


class WaitFailed(PermanentError):
    pass


class WaitDeferred(Exception):
    """Not an error: the state is not reached yet, and the wait moves to the triggerer."""

    def __init__(self, trigger, timeout: float, result=None):
        super().__init__(f"waiting in the triggerer: {trigger!r}")
        self.trigger = trigger
        self.timeout = timeout
        #: The task's result when the trigger ends the task: stored before deferring.
        self.result = result


def reached(ec2, waiter_name: str, waiter_args: dict) -> dict | None:
    """One poll, judged by boto3's waiter definition: the describe call's answer when the state is reached
    (so that nobody needs to describe it again), else None; raises :class:`WaitFailed` when it never will be."""
    config = ec2.get_waiter(waiter_name).config
    try:
        answer = getattr(ec2, xform_name(config.operation))(**waiter_args)
    except ClientError as exc:
        answer = exc.response  # some answers are errors the waiter expects (not found yet: retry)
    for acceptor in config.acceptors:
        if acceptor.matcher_func(answer):
            if acceptor.state == "failure":
                raise WaitFailed(f"{waiter_name} {waiter_args}: the waiter reached a terminal failure state "
                                 f"({acceptor.matcher} {acceptor.argument or ''} {acceptor.expected})")
            return answer if acceptor.state == "success" else None
    return None


def next_poll(since: float, delay: float, now: float) -> float:
    """The first moment of the poll grid (``since`` + k * ``delay``, k >= 1) that is not in the past."""
    return since + delay * max(1, math.ceil((now - since) / delay))


def blocking(ec2, waiter_name: str, *, timeout: float, delay: float, since: float | None = None,
             then: tuple[Call, ...] = (), result=None, **waiter_args) -> None:
    """Poll here until the state is reached: on the grid from ``since``, else once now and then on the grid
    from now (``result`` is for :func:`deferring`: ignored here)."""
    started = time.time()
    first_now = since is None
    since = started if since is None else since
    deadline = since + timeout
    while True:
        if not first_now:
            time.sleep(max(0.0, next_poll(since, delay, time.time()) - time.time()))
        first_now = False
        if reached(ec2, waiter_name, waiter_args):
            break
        if time.time() >= deadline:
            raise WaitFailed(f"{describe(waiter_name)} {ids(waiter_args)}: not reached within {timeout:.0f} s")
    log.info("%s %s (waited %.1f s)", describe(waiter_name), ids(waiter_args), time.time() - since)
    failed = call_after(ec2, then)
    if failed:
        raise WaitFailed(failed)


def call_after(ec2, then: tuple[Call, ...] | list) -> str | None:
    """Make the calls that waited for the state, in order; a resource gone already counts as done. Returns
    what failed (the rest is left undone), else None."""
    from image_factory.aws import error_code
    from image_factory.build import deleted

    for operation, arguments in then:
        try:
            getattr(ec2, operation)(**arguments)
        except Exception as exc:
            if not error_code(exc).endswith(".NotFound"):
                return f"{operation} {ids(arguments)}: {exc}"
            continue  # gone already
        if operation.startswith("delete_"):
            deleted(KINDS.get(operation, operation[len("delete_"):]), ids(arguments))
    return None


#: The resource kind of a delete call, as the build's log lines name it (see build.deleted).
KINDS = {"delete_security_group": "security-group", "delete_subnet": "subnet", "delete_vpc": "vpc"}


def deferring(aws_conn_id: str, region: str, *, resumed: dict | None = None) -> Wait:
    """A wait that moves to the triggerer (through the AWS connection given) without polling here.

    ``resumed``: the event the task was resumed with; the wait it reports as reached returns at once.
    A step that gives the wait its ``result`` has nothing left to do after it: the trigger ends the task.
    """
    from image_factory.triggers import Ec2StateTrigger

    def wait(ec2, waiter_name: str, *, timeout: float, delay: float, since: float | None = None,
             then: tuple[Call, ...] = (), result=None, **waiter_args) -> None:
        if resumed_after(resumed, waiter_name, waiter_args):
            log.info("%s %s (in %s polls by the triggerer)", describe(waiter_name), ids(waiter_args),
                     resumed.get("polls"))
            return
        log.info("waiting for %s %s without holding a worker slot (deferred to the triggerer)",
                 describe(waiter_name), ids(waiter_args))
        trigger = Ec2StateTrigger(aws_conn_id, region, waiter_name, waiter_args, timeout, delay,
                                  finish=result is not None, started=since or time.time(), then=list(then))
        raise WaitDeferred(trigger, timeout, result=result)

    return wait


def resumed_after(event: dict | None, waiter_name: str, waiter_args: dict) -> bool:
    """True when ``event`` says that this very wait succeeded."""
    if not event or event.get("status") != "success":
        return False
    return (event.get("waiter_name"), event.get("waiter_args")) == (waiter_name, waiter_args)


def describe(waiter_name: str) -> str:
    return waiter_name.replace("_", " ")


def ids(waiter_args: dict) -> str:
    return ", ".join(str(i) for v in waiter_args.values() for i in (v if isinstance(v, list) else [v]))
