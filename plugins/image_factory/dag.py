"""One spec -> one Airflow DAG. This module only wires: :data:`STEPS` is the table of the build's tasks, and
:func:`build_dag` makes them into a DAG. The task bodies are in tasks.py; ``render`` (cli.py) prints the plan
from the same table, so the DAG and the plan cannot drift apart.

create_builder_network (setup) -> launch_builder_instance -> configure -> register_image -> tear_down
(the teardown of the setup: runs whatever failed)

Every task retries transient errors with backoff and fails at once on permanent ones (operators.py); a retry
creates nothing twice. The waits (instance running, SSH answering, image available, instance terminated) are
deferred to the triggerer: they hold no worker slot, and no pool slot. Nothing here makes a network call or
reads a Variable at parse time: all of that happens inside tasks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import pendulum
from airflow.sdk import DAG
from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable
from airflow.task.trigger_rule import TriggerRule

from image_factory import settings, tasks
from image_factory.assets import image_asset, origin_asset
from image_factory.operators import RETRY_POLICY, BuildStep, ImageStep, InstanceStep, classified
from image_factory.spec import LoadedSpec
from image_factory.ui import dag_doc, trigger_params

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")


@dataclass(frozen=True)
class Step:
    """One task of every build."""

    task_id: str
    #: tasks.<task_id>: called with the task (tasks.BuildTask) and the results of ``inputs``.
    body: Callable
    #: The tasks whose results it is given: it runs after them.
    inputs: tuple[str, ...] = ()
    #: Tasks it runs after without their results.
    after: tuple[str, ...] = ()
    operator: type[BuildStep] = BuildStep
    #: Calls the cloud API: runs in the deployment's pool (which bounds the builds calling it at once).
    pool: bool = True
    #: What it does, in a line: the DAG's documentation and ``render`` show it.
    does: str = ""
    #: The Airflow assets whose events it emits, made from the spec's name.
    outlets: Callable[[str], list] | None = None


STEPS: tuple[Step, ...] = (
    Step(tasks.NETWORK, tasks.create_builder_network,
         does="resolves the origin, creates the build's subnet, security group and key pair (the setup)"),
    Step(tasks.LAUNCH, tasks.launch_builder_instance, inputs=(tasks.NETWORK,), operator=InstanceStep,
         does="launches the builder instance; the triggerer waits until it runs, then ends the task"),
    Step(tasks.CONFIGURE, tasks.configure, inputs=(tasks.NETWORK, tasks.LAUNCH), pool=False,
         does="waits until SSH answers, applies the server role over SSH, then asks the instance to stop"),
    Step(tasks.REGISTER, tasks.register_image, inputs=(tasks.NETWORK, tasks.LAUNCH, tasks.CONFIGURE),
         operator=ImageStep, outlets=lambda name: [image_asset(name)],
         does="in the triggerer: waits for the stop, creates the image, waits until it is available; then "
              "marks it complete and returns the build summary"),
    Step(tasks.TEARDOWN, tasks.tear_down, after=(tasks.REGISTER,),
         does="the teardown of the setup, whatever failed: terminates the instance, deletes a half-made image, "
              "the key pair, the security group and the subnet"),
)
SETUP, TEARDOWN = STEPS[0].task_id, STEPS[-1].task_id


def _run(body: Callable, loaded: LoadedSpec, *results):
    return body(tasks.BuildTask(loaded), *results)


def build_dag(loaded: LoadedSpec, deployment: settings.Settings | None = None) -> DAG:
    """The spec's DAG; ``deployment`` (retries, pool) is read from Airflow's config when not given."""
    spec = loaded.image
    deployment = deployment or settings.load()  # config values only: no network, no Variable
    schedule = spec.schedule
    if spec.rebuild_on_origin_change:
        schedule = (AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone="UTC"),
                                        assets=origin_asset(spec.name))
                    if spec.schedule else origin_asset(spec.name))
    dag = DAG(
        dag_id=spec.name,
        description=f"Build the {spec.name} image in {spec.region}",
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["image-build", spec.platform] + ([f"role:{spec.configure.server_role}"] if spec.configure else []),
        doc_md=dag_doc(loaded, STEPS),
        default_args={
            "owner": "image-factory",
            "retries": deployment.retries,
            "retry_delay": timedelta(seconds=deployment.retry_delay),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=10),
            "retry_policy": RETRY_POLICY,
        },
    )
    with dag:
        made = {}
        for step in STEPS:
            options = {"pool": deployment.pool} if step.pool else {}
            if step.outlets:
                options["outlets"] = step.outlets(spec.name)
            made[step.task_id] = step.operator(
                task_id=step.task_id, python_callable=classified(functools.partial(_run, step.body, loaded)),
                op_args=[made[name].output for name in step.inputs], doc=step.does, **options)
            for name in step.after:
                made[name] >> made[step.task_id]
        teardown = made[TEARDOWN]
        teardown.as_teardown(setups=made[SETUP])
        # Also when the setup itself fails half-way: whatever it made before failing is torn down (a
        # teardown's own rule would skip it when no setup succeeded). The run's state is the build's: a
        # teardown is not a leaf, so its success cannot turn a failed build green.
        teardown.trigger_rule = TriggerRule.ALL_DONE
    # After the tasks: a DAG's params given earlier are deep-copied into every task made after them.
    dag.params = trigger_params(spec)
    return dag
