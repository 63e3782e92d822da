"""The concurrency benchmark's floor (bench/floor.py) has exactly a build's shape: were a step added or rewired,
the floor would change with it, or this fails. Its bodies do nothing but meet the triggerer as a build does."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import floor
from image_factory import tasks
from image_factory.dag import build_dag
from image_factory.spec import load_specs
from image_factory.waiting import WaitDeferred

PROJECT = Path(__file__).resolve().parents[1]


def shape(dag) -> dict:
    return {task.task_id: (type(task).__name__, sorted(task.upstream_task_ids), task.pool, task.trigger_rule,
                           task.is_setup, task.is_teardown, [str(o) for o in getattr(task, "outlets", [])])
            for task in dag.tasks}


def test_the_floor_dags_have_the_build_dags_tasks_edges_pools_and_rules(tmp_path):
    """The shipped spec, and the examples (an approval, copies to other regions) that have more steps."""
    for source in [*(PROJECT / "include" / "specs").glob("*.yaml"), *(PROJECT / "include" / "examples").glob("*.yaml")]:
        (tmp_path / source.name).write_text(source.read_text())
    specs, errors = load_specs(tmp_path)
    assert len(specs) == 4 and not errors
    for loaded in specs:
        assert shape(build_dag(loaded, table=floor.TABLE)) == shape(build_dag(loaded)), loaded.name


class Build:
    def __init__(self, resumed=None):
        self.resumed = resumed


def test_the_floor_tasks_meet_the_triggerer_as_a_builds_do():
    bodies = {step.task_id: step.body for step in floor.TABLE if step.body}
    for task_id in floor.ENDS_IN_TRIGGER:  # the trigger ends the task: its result stored first
        with pytest.raises(WaitDeferred) as wait:
            bodies[task_id](Build())
        assert wait.value.result == floor.NOTHING and wait.value.trigger.end
    for task_id in floor.RESUMES:  # deferred, then run again on a worker, which returns
        with pytest.raises(WaitDeferred) as wait:
            bodies[task_id](Build())
        assert wait.value.result is None and not wait.value.trigger.end
        assert bodies[task_id](Build(resumed={"status": "success"})) == floor.NOTHING
    for task_id in set(bodies) - set(floor.ENDS_IN_TRIGGER) - set(floor.RESUMES):
        assert bodies[task_id](Build(), {}, {}) == floor.NOTHING
    assert {tasks.LAUNCH, tasks.TEARDOWN, tasks.REGISTER, tasks.TEST} <= set(bodies)
