"""Waiting for a cloud state (instance running, image available, ...), two ways.

Steps call a ``wait`` function. :func:`blocking` polls with boto3's waiter in the calling process (tests,
the CLI). :func:`deferring` checks once and, if the state is not reached yet, raises :class:`WaitDeferred`:
the DAG turns it into an Airflow deferral, so that the wait holds no worker slot (the triggerer polls, see
triggers.py) and the task resumes by running again; steps are idempotent, so the rerun finds what it made
and goes on from there.
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

    def __init__(self, aws_conn_id: str, region: str, waiter_name: str, waiter_args: dict, timeout: float,
                 delay: float):
        super().__init__(f"waiting for {waiter_name} {waiter_args}")
        self.aws_conn_id = aws_conn_id
        self.region = region
        self.waiter_name = waiter_name
        self.waiter_args = waiter_args
        self.timeout = timeout
        self.delay = delay


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
    log.info("%s %s (waited %.1f s)", waiter_name.replace("_", " "), _ids(waiter_args),
             time.monotonic() - started)


def deferring(aws_conn_id: str, region: str) -> Wait:
    """A wait that checks once, then hands the wait to the triggerer (through the AWS connection given)."""

    def wait(ec2, waiter_name: str, *, timeout: float, delay: float, **waiter_args) -> None:
        if reached(ec2, waiter_name, waiter_args):
            log.info("%s %s", waiter_name.replace("_", " "), _ids(waiter_args))
            return
        log.info("waiting for %s %s without holding a worker slot (deferred to the triggerer)",
                 waiter_name.replace("_", " "), _ids(waiter_args))
        raise WaitDeferred(aws_conn_id, region, waiter_name, waiter_args, timeout, delay)

    return wait


def _ids(waiter_args: dict) -> str:
    return ", ".join(str(i) for ids in waiter_args.values() for i in (ids if isinstance(ids, list) else [ids]))
