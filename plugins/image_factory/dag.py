"""One spec -> one Airflow DAG. This module only wires the steps (plain functions) to tasks.

create_builder_infrastructure (setup: the builder's network, key and instance) -> configure -> register_image
-> tear_down (teardown of the setup: runs whatever failed)

Every step retries transient errors with backoff and fails at once on permanent ones (errors.py); a retry
creates nothing twice, because each step first looks for what it would create for this build. The long
waits (instance running, SSH answering, image available, instance terminated) are deferred to the
triggerer (waiting.py, triggers.py): they hold no worker slot, and no pool slot.

Nothing here makes a network call or reads a Variable at parse time: all of that happens inside tasks.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset, Param, Variable, get_current_context
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule
from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable
from airflow.task.trigger_rule import TriggerRule

from image_factory import aws, links, parameters, remote, settings, tools, waiting
from image_factory.build import Build, build_id_for
from image_factory.errors import PermanentError, permanent_aws_errors
from image_factory.spec import BUILDER_OUTPUTS, LoadedSpec, instance_type
from image_factory.steps import image, infrastructure, instance, origin
from image_factory.steps import teardown as teardown_step
from image_factory.triggers import SshReadyTrigger

log = logging.getLogger("image_factory")

START_DATE = pendulum.datetime(2026, 1, 1, tz="UTC")
#: The steps before register_image, whose durations the build summary reports.
BUILD_STEPS = ("create_builder_infrastructure", "configure")
SETUP = BUILD_STEPS[0]


#: Retrying cannot fix a permanent error: fail the task at once, with its message.
RETRY_POLICY = ExceptionRetryPolicy(rules=[
    RetryRule(exception=PermanentError, action=RetryAction.FAIL, reason="permanent error: retrying cannot help"),
])


def classified(function):
    """Run a step with AWS errors sorted into permanent (fail now) and transient (retry with backoff), and
    record how long it took (XCom ``step_seconds``, gathered into the build summary)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            with permanent_aws_errors():
                result = function(*args, **kwargs)
        except waiting.WaitDeferred as wait:
            # Hand the wait to the triggerer (defer() raises); the task resumes by running again (waiting.py),
            # or the trigger ends it, and then the result stored here is the task's.
            if wait.result is not None:
                ti, so_far = get_current_context()["ti"], round(time.monotonic() - started, 1)
                ti.xcom_push(key="return_value", value=wait.result)
                ti.xcom_push(key="step_seconds", value=so_far)
                wait.trigger.elapsed = so_far  # its step_seconds: this plus the wait
            get_current_context()["task"].defer(trigger=wait.trigger, method_name="resume",
                                                timeout=timedelta(seconds=wait.timeout + 60))
        get_current_context()["ti"].xcom_push(key="step_seconds", value=round(time.monotonic() - started, 1))
        return result

    return wrapper


class BuildStep(PythonOperator):
    """A build step: a plain function run as a task, which can wait for a cloud state in the triggerer and
    then run again to go on. (Plain operators rather than TaskFlow's: a DAG file of many specs parses faster.)"""

    def resume(self, context, event=None):
        if event == "success":
            # A trigger that ends the task, under `airflow dags test`: it resumes the task with the event's state
            # instead. The wait is over, and the task stored its result before deferring.
            return context["ti"].xcom_pull(task_ids=self.task_id)
        if not event or event.get("status") != "success":
            raise waiting.WaitFailed((event or {}).get("message", "the wait ended without a result"))
        log.info("the wait is over (%s polls in the triggerer); going on", event.get("polls"))
        _resumed_events[context["ti"].id] = event  # the step's wait reads it: no second poll
        return self.execute(context)


#: Task instance id -> the trigger event it was resumed with (see BuildStep.resume). By id: `airflow dags test`
#: runs every task of a run in one process.
_resumed_events: dict = {}


def _resumed_event() -> dict | None:
    return _resumed_events.get(get_current_context()["ti"].id)


class InstanceStep(BuildStep):
    """A build step with a link to the builder instance (see links.py)."""

    operator_extra_links = (links.BuilderInstanceLink(),)


class ImageStep(BuildStep):
    """A build step with a link to the image (see links.py)."""

    operator_extra_links = (links.ImageLink(),)


def image_asset(spec_name: str) -> Asset:
    """Updated by every successful build of the spec; its events carry the image id and region."""
    return Asset(name=f"image-factory/{spec_name}", uri=f"image-factory://images/{spec_name}")


def origin_asset(spec_name: str) -> Asset:
    """Updated by the origin watcher when the spec's origin resolves to a new image."""
    return Asset(name=f"image-factory/{spec_name}/origin", uri=f"image-factory://origins/{spec_name}")


#: The JSON Schema dialect of the trigger form's fields: Airflow checks each field's schema against its
#: dialect's meta-schema when it parses a scheduled DAG, and draft-07's is about half as costly as the default.
FORM_DIALECT = "http://json-schema.org/draft-07/schema#"


def _field(default, title: str, description: str, **schema) -> Param:
    return Param(default, description=description, **{"$schema": FORM_DIALECT, "title": title, **schema})


def trigger_params(spec) -> dict[str, Param]:
    """The trigger form: overrides of the spec (empty means "as the spec says") and its ${NAME} parameters."""
    spec_origin = spec.origin if isinstance(spec.origin, str) else f"newest {spec.origin.name}"
    text = ["null", "string"]
    form = {
        "origin": _field(None, "Origin override", f"Build from another origin: an AMI id, "
                         f"resolve:ssm:<parameter>. Empty: the spec's ({spec_origin}).", type=text),
        "instance_size": _field(None, "Instance size override", f"small, medium, large or an instance type. "
                                f"Empty: the spec's ({spec.instance_size}).", type=text,
                                examples=["small", "medium", "large"]),
        "server_role": _field(None, "Server role override", "Apply another role. Empty: the spec's "
                              f"({spec.configure.server_role if spec.configure else 'none'}).", type=text),
        "extra_tags": _field({}, "Extra image tags", "Tags added to the image, as a JSON object of strings.",
                             type="object"),
    }
    for name in sorted(spec.parameters() - set(BUILDER_OUTPUTS)):
        form[name] = _field(None, name, f"Value of ${{{name}}} in the spec (else Airflow Variable {name}, else "
                            "the environment)", type=text)
    return form


def _variable(name: str) -> str | None:
    return Variable.get(name, default=None)


class BuildRuntime:
    """Turns a task's context into a :class:`Build` of the spec, its parameters resolved."""

    def __init__(self, loaded: LoadedSpec):
        self.loaded = loaded

    def build(self, outputs: dict[str, str] | None = None, fields: tuple[str, ...] | None = None) -> Build:
        context = get_current_context()
        fresh = context["ti"].try_number == 1 and _resumed_event() is None
        dag_run = context["dag_run"]
        trigger = {**(context.get("params") or {}), **(dag_run.conf or {})}
        lookup = parameters.chain(outputs or {}, trigger, _variable, os.environ)
        spec = parameters.apply_overrides(self.loaded.image, trigger)
        data = spec.model_dump(exclude_none=True)
        if outputs is None and fields is None:
            # Before the builder infrastructure exists, leave the fields that need its outputs for later.
            fields = tuple(k for k, v in data.items() if not parameters.parameter_names(v) & set(BUILDER_OUTPUTS))
        resolved = parameters.resolve(spec, lookup, fields)
        return Build(spec=resolved, spec_hash=self.loaded.content_hash, run_id=dag_run.run_id,
                     settings=settings.load(), build_id=build_id_for(spec.name, dag_run.run_id), fresh=fresh)


def _doc(loaded: LoadedSpec) -> str:
    spec = loaded.image
    role = (f"`{spec.configure.server_role}` applied with `{spec.configure.tool}`" if spec.configure
            else "none (a copy of the origin)")
    origin = spec.origin
    origin_text = origin if isinstance(origin, str) else f"newest `{origin.name}` of {origin.owners}"
    return "\n".join([
        f"# {spec.name}",
        spec.description or "",
        "",
        "| | |",
        "|---|---|",
        f"| builds | an AMI named `{spec.name}-<time>-<build id>` in `{spec.region}` |",
        f"| from | `{origin_text}` |",
        f"| server role | {role} |",
        f"| builder instance | `{instance_type(spec.instance_size)}` ({spec.instance_size}) |",
        f"| schedule | `{spec.schedule or 'manual only'}` |",
        f"| spec | `{loaded.path.name}` (sha256 `{loaded.content_hash}`) |",
        "",
        "Creates for each build, and deletes in `tear_down` whatever happens: "
        + ("a subnet (in the builder VPC, or a VPC of its own), " if spec.wants_builder_subnet else "")
        + "a security group (SSH in from the provisioner only), an ephemeral key pair, the builder instance.",
    ])


def build_dag(loaded: LoadedSpec, deployment: settings.Settings | None = None) -> DAG:
    """The spec's DAG; ``deployment`` (retries, pool) is read from Airflow's config when not given."""
    spec = loaded.image
    runtime = BuildRuntime(loaded)
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
        doc_md=_doc(loaded),
        default_args={
            "owner": "image-factory",
            "retries": deployment.retries,
            "retry_delay": timedelta(seconds=deployment.retry_delay),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=10),
            "retry_policy": RETRY_POLICY,
        },
    )

    def cloud(build: Build) -> aws.Clients:
        return aws.clients(build.spec.aws_conn_id, build.spec.region)

    def deferring(build: Build) -> waiting.Wait:
        return waiting.deferring(build.spec.aws_conn_id, build.region, resumed=_resumed_event())

    def step(operator: type[BuildStep], function, *upstream, **options):
        """A task running ``function`` with the results of the ``upstream`` tasks as its arguments."""
        return operator(task_id=function.__name__, python_callable=classified(function), op_args=list(upstream),
                        **options).output

    with dag:

        def create_builder_infrastructure() -> dict:
            build = runtime.build()
            c = cloud(build)
            origin_image = origin.describe_origin(c.ec2, c.ssm, build.spec.origin, build.region)
            origin_ami = origin_image["ImageId"]
            infra = infrastructure.create(c.ec2, c.ssm, build)
            log.info("builder infrastructure ready: %s", infra.outputs())
            build = runtime.build(infra.outputs())
            instance_id = instance.launch(c.ec2, build, origin_image, infra.security_group_id, infra.key_name,
                                          wait=None)
            links.persist(links.BuilderInstanceLink, get_current_context(), build.region, c.endpoint_url,
                          instance_id=instance_id)
            record = {"origin_ami": origin_ami, **infra.to_dict(), "instance_id": instance_id}
            # Once the instance runs, the trigger ends this task with the record (no second start-up).
            instance.wait_running(c.ec2, build, instance_id, deferring(build), result=record)
            return record

        def with_outputs(infra: dict) -> Build:
            return runtime.build(infrastructure.BuilderInfrastructure.from_dict(infra).outputs())

        def ssh_target(build: Build, c: aws.Clients, instance_id: str) -> tuple[str, int, str]:
            if c.emulated and not build.settings.ssh_host:
                raise settings.SettingsError(
                    "the AWS connection points at an emulator, whose instances' addresses are not reachable: "
                    "set [image_factory] ssh_host (AIRFLOW__IMAGE_FACTORY__SSH_HOST)")
            host = instance.address(c.ec2, instance_id, build)
            return host, build.settings.ssh_port, build.settings.ssh_username or build.spec.ssh_username

        def configure(infra: dict) -> dict:
            build = with_outputs(infra)
            c = cloud(build)
            instance_id = infra["instance_id"]
            if build.spec.configure is None:
                log.info("the spec has no configure section: the image is a copy of its origin")
            else:
                apply_role(build, c, instance_id)
            # Stop now: the stop goes on while register_image starts, whose trigger waits for it.
            return {"stop_requested_at": instance.request_stop(c.ec2, instance_id)}

        def apply_role(build: Build, c: aws.Clients, instance_id: str) -> None:
            host, port, user = ssh_target(build, c, instance_id)
            key = infrastructure.private_key(c.ssm, build)

            def defer() -> None:  # SSH does not answer yet: wait for its banner in the triggerer
                raise waiting.WaitDeferred(SshReadyTrigger(host, port, build.settings.ssh_timeout,
                                                           build.settings.poll_interval), build.settings.ssh_timeout)

            hook = remote.wait_until_ready(host, port, user, key, timeout=build.settings.ssh_timeout,
                                           interval=build.settings.poll_interval,
                                           defer=None if _resumed_event() else defer)
            lines = tools.apply(hook, build.spec.configure, build, remote.SSHTarget(host, port, user, key))
            log.info("configure: role %r applied (%d lines of output)", build.spec.configure.server_role,
                     len(lines))

        def register_image(infra: dict, configured: dict) -> dict:
            build = with_outputs(infra)
            c = cloud(build)
            context = get_current_context()
            logical = context["dag_run"].run_after.strftime("%Y%m%d-%H%M%S")
            resumed = _resumed_event() or {}
            # After the image wait: the image as the triggerer saw it available.
            available = (resumed["answer"]["Images"][0] if resumed.get("waiter_name") == "image_available"
                         else None)
            # The stop, CreateImage and the image's wait: all in the triggerer (no worker slot held meanwhile).
            described = image.register(c.ec2, build, infra["instance_id"], infra["origin_ami"],
                                       image.image_name(build, logical), wait=deferring(build),
                                       stop_requested_at=configured["stop_requested_at"], available=available)
            links.persist(links.ImageLink, context, build.region, c.endpoint_url, image_id=described["ImageId"])
            summary = {
                "image_id": described["ImageId"],
                "name": described["Name"],
                "region": build.region,
                "origin": infra["origin_ami"],
                "server_role": build.spec.configure.server_role if build.spec.configure else None,
                "build_id": build.build_id,
                # float(): a value stored by the triggerer (TaskSuccessEvent) reads back as its JSON text.
                "step_seconds": {step: float(seconds) for step, seconds in zip(BUILD_STEPS, context["ti"].xcom_pull(
                    task_ids=list(BUILD_STEPS), key="step_seconds"), strict=True)},
            }
            # The asset event tells downstream DAGs which image this build made.
            context["outlet_events"][image_asset(spec.name)].extra = {
                "image_id": described["ImageId"], "region": build.region, "name": described["Name"]}
            log.info("build summary: %s", summary)
            return summary

        # The run's state is the build's: a teardown is not a leaf, so its success cannot turn a failed
        # build green (and a failed teardown shows red on its own task; the sweeper catches its leftovers).
        def tear_down() -> list[str]:
            context = get_current_context()
            build_id = build_id_for(spec.name, context["dag_run"].run_id)
            # Only what finds the resources: a parameter the build could not resolve must not stop the cleanup.
            build = runtime.build(fields=parameters.EARLY_FIELDS)
            c = cloud(build)
            ti = context["ti"]
            # The setup's record names what it made, unless this is a retry or a rerun (then: find by tag).
            record = ti.xcom_pull(task_ids=SETUP) if build.fresh else None
            removed = teardown_step.tear_down(c.ec2, c.ssm, build_id, build.settings.poll_interval,
                                              wait=deferring(build), record=record,
                                              image_complete=ti.xcom_pull(task_ids="register_image") is not None)
            log.info("tear_down: deleted %d builder resources of build %s", len(removed), build_id)
            return removed

        pool = deployment.pool
        infra = step(InstanceStep, create_builder_infrastructure, pool=pool)
        configured = step(BuildStep, configure, infra)
        registered = step(ImageStep, register_image, infra, configured, pool=pool, outlets=[image_asset(spec.name)])
        removed = step(BuildStep, tear_down, pool=pool)
        registered >> removed
        removed.as_teardown(setups=infra)
        # Also when the setup itself fails half-way: whatever it made before failing is torn down (a
        # teardown's own rule would skip it when no setup succeeded).
        removed.operator.trigger_rule = TriggerRule.ALL_DONE

    # After the tasks: a DAG's params given earlier are deep-copied into every task made after them.
    dag.params = trigger_params(spec)
    return dag
