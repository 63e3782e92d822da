"""Fail points, for the fault-injection tests: ``checkpoint("after:launch")`` raises when the environment
variable ``IMAGE_FACTORY_FAULTS`` names that point. Without the variable (every real deployment) a checkpoint
does nothing.

``IMAGE_FACTORY_FAULTS=after:launch`` fails there every time (a permanent fault);
``IMAGE_FACTORY_FAULTS=after:launch*once`` fails the first time only (a transient fault, retried), remembered
in the folder ``IMAGE_FACTORY_FAULTS_STATE``. Several points are separated by commas.
"""

from __future__ import annotations

import os
from pathlib import Path

from image_factory.errors import PermanentError

ENV = "IMAGE_FACTORY_FAULTS"
STATE_ENV = "IMAGE_FACTORY_FAULTS_STATE"


class InjectedFault(PermanentError):
    pass


class TransientInjectedFault(Exception):
    pass


def checkpoint(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    for item in wanted.split(","):
        point, _, mode = item.strip().partition("*")
        if point != name:
            continue
        if mode != "once":
            raise InjectedFault(f"fault injected at {name}")
        marker = Path(os.environ[STATE_ENV]) / name.replace(":", "_")
        if not marker.exists():
            marker.touch()
            raise TransientInjectedFault(f"transient fault injected at {name}")
