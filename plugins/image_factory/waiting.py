"""Waiting for a cloud state (instance running, image available, ...), two ways.

Steps call a ``wait`` function. :func:`blocking` polls in the calling process (tests and the CLI).
:func:`deferring` hands the wait to Airflow's triggerer at once, by raising :class:`WaitDeferred`:
the DAG turns it into a deferral, so that the wait holds no worker slot (triggers.py polls). When the state is
reached, either the trigger ends the task itself (the step gave its ``result``: nothing is left to do after the
wait), or the task runs again from the start; steps are idempotent, so the rerun finds what it made, and the
wait that succeeded is not polled again (:func:`resumed_after`).

Both poll on a fixed grid from the moment the change was started (``since``): every ``delay`` seconds after
it, never at once (the state cannot have changed yet), and without drifting by the time each poll takes.
A wait can end with EC2 calls that had to wait for the state (``then``: deleting a security group once its
instance is gone; creating the image once the instance is stopped), and go on to wait for the change those
calls started (``next_wait``: the image available, polled every ``next_delay`` seconds). A failed call goes
back to the step: it runs again (the teardown, by tag), or, when the call was to start the next change,
fails, permanent or transient as the AWS error says (:func:`failure`). Both waits return the last describe
answer.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from image_factory.errors import PermanentError

log = logging.getLogger("image_factory")

Wait = Callable[..., dict]

#: An EC2 call made once a wait is over: (operation name, its arguments), e.g. ("delete_subnet", {...}).
Call = tuple[str, dict]


class WaitFailed(PermanentError):
    pass


class CallFailed(Exception):
    """A call made after a wait failed for a reason that may pass (throttling, a dependency not gone yet, a
    dropped connection): the step runs again (Airflow's retry)."""


def failure(message: str, transient: bool) -> Exception:
    """The error that a failed call after a wait (see :func:`call_after`) fails its step with."""
    return CallFailed(message) if transient else WaitFailed(message)


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
    from botocore import xform_name
    from botocore.exceptions import ClientError

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
             then: tuple[Call, ...] = (), next_wait: tuple[str, dict] | None = None,
             next_delay: float | None = None, result=None, **waiter_args) -> dict:
    """Poll here until the state is reached: on the grid from ``since``, else once now and then on the grid
    from now; then make the ``then`` calls and wait for ``next_wait`` (from then on, on its own grid, every
    ``next_delay`` seconds: ``delay`` when not given). Returns the last describe answer (``result`` is for
    :func:`deferring`: ignored here)."""
    first_now = since is None
    answer = _poll_here(ec2, waiter_name, waiter_args, time.time() if first_now else since, timeout, delay,
                        first_now)
    failed = call_after(ec2, then)
    if failed:
        raise failure(*failed)
    if next_wait:
        answer = _poll_here(ec2, *next_wait, time.time(), timeout, next_delay or delay, first_now=False)
    return answer


def _poll_here(ec2, waiter_name: str, waiter_args: dict, since: float, timeout: float, delay: float,
               first_now: bool) -> dict:
    deadline = since + timeout
    while True:
        if not first_now:
            time.sleep(max(0.0, next_poll(since, delay, time.time()) - time.time()))
        first_now = False
        answer = reached(ec2, waiter_name, waiter_args)
        if answer is not None:
            log.info("%s %s (waited %.1f s)", describe(waiter_name), ids(waiter_args), time.time() - since)
            return answer
        if time.time() >= deadline:
            raise WaitFailed(f"{describe(waiter_name)} {ids(waiter_args)}: not reached within {timeout:.0f} s")


def call_after(ec2, then: tuple[Call, ...] | list) -> tuple[str, bool] | None:
    """Make the calls that waited for the state, in order; a resource gone already counts as deleted, one
    there already (made by an earlier run of the same wait) as created. Returns what failed and whether
    retrying may help (the rest is left undone), else None."""
    from image_factory.aws import error_code
    from image_factory.build import created, deleted
    from image_factory.errors import is_transient

    for operation, arguments in then:
        try:
            answer = getattr(ec2, operation)(**arguments)
        except Exception as exc:
            code, done = error_code(exc), ".NotFound" if operation.startswith("delete_") else ".Duplicate"
            if not code.endswith(done):
                return f"{operation} {ids(arguments)}: {exc}", not code or is_transient(code)
            continue  # done already
        kind = operation.split("_", 1)[1].replace("_", "-")  # as the build's log lines name it: security-group
        if operation.startswith("delete_"):
            deleted(kind, ids(arguments))
        elif operation.startswith("create_"):
            made = next((v for k, v in answer.items() if k.endswith("Id") and isinstance(v, str)), "")
            created(kind, made, **({"name": arguments["Name"]} if "Name" in arguments else {}))
    return None


def deferring(aws_conn_id: str, region: str, *, resumed: dict | None = None) -> Wait:
    """A wait that moves to the triggerer (through the AWS connection given) without polling here.

    ``resumed``: the event the task was resumed with; the wait it reports as reached returns at once.
    A step that gives the wait its ``result`` has nothing left to do after it: the trigger ends the task.
    """
    from image_factory.triggers import Ec2StateTrigger

    def wait(ec2, waiter_name: str, *, timeout: float, delay: float, since: float | None = None,
             then: tuple[Call, ...] = (), next_wait: tuple[str, dict] | None = None,
             next_delay: float | None = None, result=None, **waiter_args) -> dict:
        if next_wait and resumed_after(resumed, waiter_name, waiter_args) and resumed.get("calls_failed"):
            # The calls that were to start the next change failed in the triggerer: nothing to wait for.
            raise failure(resumed["calls_failed"], bool(resumed.get("calls_failed_transient")))
        last_name, last_args = next_wait or (waiter_name, waiter_args)
        if resumed_after(resumed, last_name, last_args):
            log.info("%s %s (in %s polls by the triggerer)", describe(last_name), ids(last_args),
                     resumed.get("polls"))
            return resumed.get("answer") or {}
        shown = f", then {describe(next_wait[0])}" if next_wait else ""
        log.info("waiting for %s %s%s without holding a worker slot (deferred to the triggerer)",
                 describe(waiter_name), ids(waiter_args), shown)
        trigger = Ec2StateTrigger(aws_conn_id, region, waiter_name, waiter_args, timeout, delay,
                                  finish=result is not None, started=since or time.time(), then=list(then),
                                  next_wait=list(next_wait) if next_wait else None, next_delay=next_delay)
        raise WaitDeferred(trigger, timeout * (2 if next_wait else 1), result=result)

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
