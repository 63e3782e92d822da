"""Airflow's own floor for a build: DAGs of exactly a build's shape (the same tasks, dependencies, pool,
setup and teardown, XCom hand-offs, and the same meetings with the triggerer) whose task bodies do nothing.
The floor's deployment imports this module (bench/floor.py writes its DAG file); bench/floor.py runs them.

A build on the latency cloud meets the triggerer four times (9 task starts for 7 tasks): launching and the
teardown end in the triggerer (the task does not go back to a worker), registering and testing the image
resume on a worker after their wait. The floor's tasks do the same with a trigger that fires at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from image_factory import tasks
from image_factory.dag import STEPS, build_dags
from image_factory.settings import specs_folder
from image_factory.waits.protocol import Deferred, WaitOutcome

ENDS_IN_TRIGGER = (tasks.LAUNCH, tasks.TEARDOWN)
RESUMES = (tasks.REGISTER, tasks.TEST)
#: What every floor task returns (its XCom, which the next ones are handed).
NOTHING = {"floor": True}


class AtOnce(BaseTrigger):
    """Fires at once: ends the task (``end``), or resumes it on a worker, as a build's waits do."""

    def __init__(self, end: bool = False):
        super().__init__()
        self.end = end

    def serialize(self):
        return f"{type(self).__module__}.{type(self).__qualname__}", {"end": self.end}

    async def run(self):
        yield TaskSuccessEvent() if self.end else TriggerEvent(WaitOutcome("at_once", {}).to_event())


def _nothing(task_id: str):
    def body(build: tasks.BuildTask, *results):
        if task_id in ENDS_IN_TRIGGER:
            raise Deferred(AtOnce(end=True), timeout=60, result=NOTHING)
        if task_id in RESUMES and build.outcome is None:
            raise Deferred(AtOnce(), timeout=60)
        return NOTHING

    body.__name__ = task_id
    return body


#: The build's steps with bodies that do nothing (the approval, Airflow's own operator, as it is).
TABLE = tuple(dataclasses.replace(step, body=_nothing(step.task_id)) if step.body else step for step in STEPS)


def dags() -> dict:
    """A floor DAG for each spec in ``[image_factory] specs_folder``, named as the spec (a task process: its own)."""
    built, errors = build_dags(specs_folder(Path(__file__).resolve().parents[1] / "include" / "specs"), TABLE)
    if errors:
        raise RuntimeError(f"floor specs not loaded: {errors}")
    return built
