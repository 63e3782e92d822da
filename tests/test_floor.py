"""The concurrency benchmark's floor (bench/floor_dags.py) has exactly a build's shape: were a step added or rewired,
the floor would change with it, or this fails. Its bodies do nothing but meet the triggerer as a build does.
And the benchmark's own reading of a run: the settings it is given, where the time of a run goes."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bench import airflow_settings, batches, floor, floor_dags
from image_factory import tasks
from image_factory.dag import build_dag
from image_factory.spec import load_specs
from image_factory.waits.protocol import Deferred, WaitOutcome

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
        assert shape(build_dag(loaded, table=floor_dags.TABLE)) == shape(build_dag(loaded)), loaded.name


class Build:
    def __init__(self, outcome=None):
        self.outcome = outcome


def test_the_floor_tasks_meet_the_triggerer_as_a_builds_do():
    bodies = {step.task_id: step.body for step in floor_dags.TABLE if step.body}
    for task_id in floor_dags.ENDS_IN_TRIGGER:  # the trigger ends the task: its result stored first
        with pytest.raises(Deferred) as wait:
            bodies[task_id](Build())
        assert wait.value.result == floor_dags.NOTHING and wait.value.trigger.end
    for task_id in floor_dags.RESUMES:  # deferred, then run again on a worker, which returns
        with pytest.raises(Deferred) as wait:
            bodies[task_id](Build())
        assert wait.value.result is None and not wait.value.trigger.end
        assert bodies[task_id](Build(outcome=WaitOutcome("at_once", {}))) == floor_dags.NOTHING
    for task_id in set(bodies) - set(floor_dags.ENDS_IN_TRIGGER) - set(floor_dags.RESUMES):
        assert bodies[task_id](Build(), {}, {}) == floor_dags.NOTHING
    assert {tasks.LAUNCH, tasks.TEARDOWN, tasks.REGISTER, tasks.TEST} <= set(bodies)


def test_an_airflow_setting_is_section_key_and_value_or_refused():
    assert airflow_settings.airflow_setting("AIRFLOW__API__WORKERS=2") == ("AIRFLOW__API__WORKERS", "2")
    assert airflow_settings.airflow_setting("AIRFLOW__CORE__X=a=b") == ("AIRFLOW__CORE__X", "a=b")
    for bad in ("AIRFLOW__API__WORKERS", "API__WORKERS=2", "AIRFLOW__WORKERS=2", "airflow__api__workers=2",
                "PATH=/tmp", "AIRFLOW__API__WORKERS;rm=2"):
        with pytest.raises(argparse.ArgumentTypeError):
            airflow_settings.airflow_setting(bad)
    with pytest.raises(SystemExit):  # the command line refuses it before anything starts
        floor.main(["--airflow-setting", "PATH=/tmp"])
    assert "Tuned" in airflow_settings.tuned({"AIRFLOW__API__WORKERS": "2"})
    assert "AIRFLOW__API__WORKERS=2" in airflow_settings.tuned({"AIRFLOW__API__WORKERS": "2"})
    assert "Tuned" not in airflow_settings.tuned({})


def test_where_the_time_goes_is_each_tasks_median_start_end_and_queue_in_start_order():
    t0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    at = lambda s: t0 + timedelta(seconds=s)  # noqa: E731
    rows = [  # dag, run, task, state, try, start, end, queued
        ("d1", "r", "second", "success", 1, at(20), at(25), at(19)),
        ("d2", "r", "second", "success", 1, at(30), at(33), at(27)),
        ("d3", "r", "second", "success", 1, at(40), at(41), at(38)),
        ("d1", "r", "first", "success", 1, at(1), at(5), at(0.5)),
        ("d1", "r", "resumed", "success", 1, at(50), at(90), at(80)),  # met the triggerer: queued not known
        ("d1", "r", "never", "scheduled", 0, None, None, None),
    ]
    steps = batches.steps(rows, t0.timestamp())
    assert list(steps) == ["first", "second", "resumed"]
    assert steps["second"] == (30.0, 33.0, 2.0)
    assert steps["resumed"] == (50.0, 90.0, None)
    table = batches.steps_table({"many": {"steps": steps}, "one": {"steps": {"first": (0.5, 1.0, 0.1)}}})
    assert "| second | 30.0 / 33.0 (2.0) | - |" in table
    assert "| resumed | 50.0 / 90.0 (-) | - |" in table
    assert "| first | 1.0 / 5.0 (0.5) | 0.5 / 1.0 (0.1) |" in table


def test_the_floors_row_alone_and_beside_the_builds():
    batch = lambda seconds, n, starts: {"wall_to_end": seconds, "succeeded": n, "n": n, "task_starts": starts}  # noqa: E731
    measured = {"one": batch(13.0, 1, 9), "many": batch(182.0, 100, 900)}
    alone = floor.floor_row("floor", measured, 100)
    assert (alone.ours, alone.peer) == ("182.0 s", "13.0 s")
    assert alone.note == "100/100 succeeded (one alone: 1/1), 9.0 task starts a run; 100 took 14.00x one"
    builds = {"one": batch(91.0, 1, 9), "many": batch(364.0, 100, 901)}
    beside = floor.floor_row("concurrency", measured, 100, builds=builds)
    assert beside.note == ("100/100 succeeded (one alone: 1/1), 9.0 task starts a run (the builds: 9.0); 100 took "
                           "14.00x one; Airflow alone needs 2.00x one build's wall time for them (the builds: 4.00x)")
