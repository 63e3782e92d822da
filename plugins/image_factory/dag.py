"""One spec -> one Airflow DAG. This module only wires: :data:`STEPS` is the table of the build's tasks, and
:func:`build_dag` makes them into a DAG. The task bodies are in tasks.py; ``render`` (cli.py) prints the plan
from the same table, so the DAG and the plan cannot drift apart.

create_builder_network (setup) -> launch_builder_instance -> configure -> register_image -> test_image
-> distribute_image -> promote -> approve_promotion -> promote_approved -> roll_out (test_image as the spec's
``test`` asks, distribute_image as its ``distribute`` does, the promotions as its ``promote`` does, roll_out as
its ``rollout`` does), and tear_down after them
(the teardown of the setup: runs whatever failed; an approval never holds it up)

Every task retries transient errors with backoff and fails at once on permanent ones (operators.py); a retry
creates nothing twice. The waits (instance running, SSH answering, image available, copies available in all
their regions at once, instance terminated) are deferred to the triggerer: they hold no worker slot, and no
pool slot. Nothing here makes a network call or reads a Variable at parse time: all of that happens inside
tasks.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, get_parsing_context
from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable
from airflow.task.trigger_rule import TriggerRule

from image_factory import notify, settings, tasks
from image_factory.assets import channel_asset, origin_asset, promotion_assets
from image_factory.operators import RETRY_POLICY, BuildStep, ImageApproval, ImageStep, InstanceStep, classified
from image_factory.spec import ImageSpec, LoadedSpec, SpecError, channel_of, load_specs
from image_factory.ui import dag_doc, trigger_params
from image_factory.waits.protocol import WaitOutcome

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
    operator: type = BuildStep
    #: Calls the cloud API: runs in the deployment's pool (which bounds the builds calling it at once).
    pool: bool = True
    #: What it does, in a line: the DAG's documentation and ``render`` show it.
    does: str = ""
    #: The Airflow assets whose events it emits, made from the spec.
    outlets: Callable[[ImageSpec], list] | None = None
    #: Whether a spec's DAG has this task (default: every spec's).
    when: Callable[[ImageSpec], bool] | None = None
    #: When it runs (default: once every upstream succeeded).
    trigger_rule: TriggerRule = TriggerRule.ALL_SUCCESS


STEPS: tuple[Step, ...] = (
    Step(tasks.NETWORK, tasks.create_builder_network,
         does="resolves the origin, creates the build's subnet, security group and key pair (the setup)"),
    Step(tasks.LAUNCH, tasks.launch_builder_instance, inputs=(tasks.NETWORK,), operator=InstanceStep,
         does="launches the builder instance; the triggerer waits until it runs, then ends the task"),
    Step(tasks.CONFIGURE, tasks.configure, inputs=(tasks.NETWORK, tasks.LAUNCH), pool=False,
         does="waits until SSH answers, applies the server role over SSH, then asks the instance to stop"),
    Step(tasks.REGISTER, tasks.register_image, inputs=(tasks.NETWORK, tasks.LAUNCH, tasks.CONFIGURE),
         operator=ImageStep,
         does="in the triggerer: waits for the stop, creates the image, waits until it is available; then "
              "marks it complete and returns the build summary"),
    Step(tasks.TEST, tasks.test_image, inputs=(tasks.NETWORK, tasks.LAUNCH, tasks.REGISTER),
         when=lambda spec: spec.test is not None,
         does="boots a test instance of the new image and runs the spec's tests on it over SSH; the result is "
              "tagged on the image, and failed tests fail the run (no channel moves)"),
    Step(tasks.DISTRIBUTE, tasks.distribute_image, inputs=(tasks.NETWORK, tasks.REGISTER), after=(tasks.TEST,),
         when=lambda spec: spec.distribute is not None,
         does="copies the tested image into the spec's other regions, all at once (the triggerer waits until "
              "every copy is available), tags each copy as the original plus its source, marks it complete, "
              "and shares the image and its copies as share_with says, in every region"),
    Step(tasks.PROMOTE, tasks.promote, inputs=(tasks.NETWORK, tasks.REGISTER, tasks.TEST), after=(tasks.DISTRIBUTE,),
         when=lambda spec: bool(spec.promote and spec.promote.channels),
         outlets=lambda spec: promotion_assets(spec.name, spec.promote.channels),
         does="moves the spec's channels (SSM parameters) to the tested image, in every region the image is in "
              "(to each region's copy), and emits its promotion event"),
    # (Also after a skipped promote: an image of an overridden origin or role moves a channel only if approved.)
    Step(tasks.APPROVE, None, after=(tasks.TEST, tasks.DISTRIBUTE, tasks.PROMOTE), operator=ImageApproval, pool=False,
         when=lambda spec: bool(spec.promote and spec.promote.approval), trigger_rule=TriggerRule.NONE_FAILED,
         does="asks a person to approve the approval channels (Airflow's human-in-the-loop: no slot held); no "
              "answer before the timeout is a rejection"),
    Step(tasks.PROMOTE_APPROVED, tasks.promote_approved, inputs=(tasks.NETWORK, tasks.REGISTER, tasks.TEST),
         after=(tasks.APPROVE,), when=lambda spec: bool(spec.promote and spec.promote.approval),
         outlets=lambda spec: promotion_assets(spec.name, spec.promote.approval),
         does="once approved: moves the approval channels to the image (in every region it is in) and emits its "
              "promotion event"),
    # After whichever promotion moved its channels: also when promote is skipped and the approval path promotes.
    Step(tasks.ROLL_OUT, tasks.roll_out, after=(tasks.PROMOTE, tasks.PROMOTE_APPROVED),
         when=lambda spec: bool(spec.rollout), trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
         does="rolls the channels that moved out to the fleet, in every region they moved in: a new launch "
              "template version naming the image (made the default), then an instance refresh of each Auto "
              "Scaling group, followed to its end in the triggerer (no slot held); a refresh that fails fails "
              "the task, and the channel stays"),
    Step(tasks.TEARDOWN, tasks.tear_down, after=(tasks.REGISTER, tasks.TEST, tasks.DISTRIBUTE),
         does="the teardown of the setup, whatever failed: terminates the builder and test instances, deletes a "
              "half-made image and half-made copies, the key pair, the security group and the subnet (a failed "
              "configure or test_image keeps its instance and what it needs, as keep_on_failure_hours says)"),
)
SETUP, TEARDOWN = STEPS[0].task_id, STEPS[-1].task_id


def _run(body: Callable, loaded: LoadedSpec, *results, wait_outcome: WaitOutcome | None = None):
    """``wait_outcome``: of the wait the task was resumed after (operators.BuildStep.resume gives it)."""
    return body(tasks.BuildTask(loaded, outcome=wait_outcome), *results)


def steps_of(spec: ImageSpec, table: tuple[Step, ...] = STEPS) -> list[Step]:
    """The tasks of ``spec``'s DAG, in order."""
    return [step for step in table if step.when is None or step.when(spec)]


def _schedule(spec: ImageSpec):
    """The spec's cron schedule, or-ed with the assets it is rebuilt on: its origin's new images (the origin
    watcher's), and the promotions of the channel it is built on (images built on images)."""
    assets = []
    if spec.rebuild_on_origin_change:
        assets.append(origin_asset(spec.name))
    if base := channel_of(spec.origin):
        assets.append(channel_asset(*base))
    if not assets:
        return spec.schedule
    condition = functools.reduce(lambda left, right: left | right, assets)
    if not spec.schedule:
        return condition
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(spec.schedule, timezone="UTC"), assets=condition)


def build_dag(loaded: LoadedSpec, deployment: settings.Settings | None = None,
              table: tuple[Step, ...] = STEPS) -> DAG:
    """The spec's DAG; ``deployment`` (retries, pool) is read from Airflow's config when not given. (``table``:
    the steps, for a benchmark that gives them other bodies: bench/floor_dags.py.)"""
    spec = loaded.image
    deployment = deployment or settings.load()  # config values only: no network, no Variable
    steps = steps_of(spec, table)
    # Messages (notify.py): a failed task, an approval asked for, a build past its deadline. (Config values only.)
    topic = deployment.sns_topic_arn
    on_failure = notify.notifier(spec, "failure", topic)
    deadline = notify.deadline_alert(spec, topic)
    dag = DAG(
        dag_id=spec.name,
        description=f"Build the {spec.name} image in {spec.region}",
        schedule=_schedule(spec),
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["image-build", spec.platform] + ([f"role:{spec.configure.server_role}"] if spec.configure else []),
        doc_md=dag_doc(loaded, steps),
        default_args={
            "owner": "image-factory",
            "retries": deployment.retries,
            "retry_delay": timedelta(seconds=deployment.retry_delay),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=10),
            "retry_policy": RETRY_POLICY,
            **({"on_failure_callback": on_failure} if on_failure else {}),
        },
        **({"deadline": deadline} if deadline else {}),
    )
    with dag:
        made = {}
        for step in steps:
            options = {"pool": deployment.pool} if step.pool else {}
            if step.trigger_rule != TriggerRule.ALL_SUCCESS:
                options["trigger_rule"] = step.trigger_rule
            if step.outlets:
                options["outlets"] = step.outlets(spec)
            if step.body is None:  # the approval: Airflow's own operator, no task body of ours
                if asking := notify.notifier(spec, "approval", topic):
                    options["notifiers"] = [asking]
                made[step.task_id] = step.operator(task_id=step.task_id, spec=spec, doc=step.does, **options)
            else:
                made[step.task_id] = step.operator(
                    task_id=step.task_id, python_callable=classified(functools.partial(_run, step.body, loaded),
                                                      timed=step.task_id in tasks.TIMED),
                    op_args=[made[name].output for name in step.inputs], doc=step.does, **options)
            for name in step.after:
                if name in made:  # (a task this spec's DAG has)
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


def build_dags(folder: Path, table: tuple[Step, ...] = STEPS) -> tuple[dict[str, DAG], list[SpecError]]:
    """The DAG of each valid spec in ``folder`` by its id, and the errors of the others (a bad spec costs only
    its own DAG). A task process needs only its own DAG, which Airflow names in the parsing context: then only
    the spec files that name it are read; the dag-processor gets all."""
    wanted = get_parsing_context().dag_id
    specs, errors = load_specs(folder, only=wanted)
    deployment = settings.load()  # once per folder, not once per DAG
    # The DAGs are all kept: collecting garbage while they are made only costs time (about a tenth of it).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return {loaded.name: build_dag(loaded, deployment, table) for loaded in specs
                if wanted is None or loaded.name == wanted}, errors
    finally:
        if collecting:
            gc.enable()
