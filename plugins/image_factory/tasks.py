"""The task bodies of an image build: plain functions of the task (:class:`BuildTask`: the spec and the task's
Airflow context) and of the results of the tasks they follow. dag.py wires them into a DAG; the cloud work
itself is in steps/ (Airflow-free), the waits in waits/.

Each body is safe to run again (a retry, a resumed wait): a step first looks for what it would create for
this build, except on its first try, when nothing of it can exist yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from types import MappingProxyType

from airflow.sdk import Variable, get_current_context
from airflow.sdk.exceptions import AirflowSkipException

from image_factory import aws, host_keys, keep, links, notify, parameters, remote, sbom, settings, tools
from image_factory.assets import channel_asset, image_asset
from image_factory.build import TAG_BUILD, TAG_SPEC, Build, build_id_for, tag_dict
from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.spec import LoadedSpec, tests_folder
from image_factory.steps import channels, distribution, image, infrastructure, instance, origin, rollout, testing
from image_factory.steps import teardown as teardown_step
from image_factory.tools import tests as test_tools
from image_factory.waits.deferring import Deferring
from image_factory.waits.protocol import Deferred, WaitOutcome
from image_factory.waits.schedule import recorded, schedule_for
from image_factory.waits.triggers import SSH_READY, SshReadyTrigger

log = logging.getLogger("image_factory")

NETWORK, LAUNCH, CONFIGURE, REGISTER, TEST, DISTRIBUTE, PROMOTE, APPROVE, PROMOTE_APPROVED, ROLL_OUT, TEARDOWN = (
    "create_builder_network", "launch_builder_instance", "configure", "register_image", "test_image",
    "distribute_image", "promote", "approve_promotion", "promote_approved", "roll_out", "tear_down")
#: The tasks whose failure keeps the instance they ran on (keep_on_failure_hours), and which instance.
KEPT_ON_FAILURE = MappingProxyType({CONFIGURE: "builder", TEST: testing.PURPOSE})
#: The tasks whose durations the build summary reports.
TIMED = (NETWORK, LAUNCH, CONFIGURE)
#: The tasks that record the windows their waits ended in (XCom ``waits``), and what they wait for.
WAITING = MappingProxyType({LAUNCH: ("instance_running",), REGISTER: ("instance_stopped", "image_available"),
                            TEARDOWN: ("instance_terminated",)})


class BuildTask:
    """One task of one build: the spec, the task's context, the outcome of the wait it was resumed after (None:
    not resumed; operators.BuildStep.resume hands it over from the trigger's event), and what follows."""

    def __init__(self, loaded: LoadedSpec, context=None, outcome: WaitOutcome | None = None):
        self.loaded = loaded
        self.context = context if context is not None else get_current_context()
        self.ti = self.context["ti"]
        self.dag_run = self.context["dag_run"]
        self.outcome = outcome

    @property
    def build_id(self) -> str:
        return build_id_for(self.loaded.name, self.dag_run.run_id)

    def build(self, network: dict | None = None, fields: tuple[str, ...] | None = None) -> Build:
        """The :class:`Build` of this run, its parameters resolved (``network``: the builder network's record,
        whose outputs are parameters too; without it, the fields that need them stay unresolved)."""
        fresh = self.ti.try_number == 1 and self.outcome is None
        trigger = {**(self.context.get("params") or {}), **(self.dag_run.conf or {})}
        overrides, values = parameters.trigger_values(self.loaded.image, trigger)
        outputs = infrastructure.BuilderInfrastructure.from_dict(network).outputs() if network else {}
        lookup = parameters.chain(outputs, values, _variable, os.environ)
        spec = parameters.apply_overrides(self.loaded.image, overrides)
        if network is None and fields is None:
            data = spec.model_dump(exclude_none=True)
            fields = tuple(k for k, v in data.items()
                           if not parameters.parameter_names(v) & set(parameters.BUILDER_OUTPUTS))
        resolved = parameters.resolve(spec, lookup, fields)
        return Build(spec=resolved, spec_hash=self.loaded.content_hash, run_id=self.dag_run.run_id,
                     settings=settings.load(), build_id=self.build_id, fresh=fresh,
                     history=(network or {}).get("history", {}),
                     overridden={k: str(v) for k, v in overrides.items() if k in parameters.CONTENT_OVERRIDES})

    def clients(self, build: Build) -> aws.Clients:
        return aws.clients(build.spec.aws_conn_id, build.spec.region)

    def wait(self, build: Build) -> Deferring:
        """Waits in the triggerer (this task resumes after them, or the trigger ends it)."""
        return Deferring(build.spec.aws_conn_id, build.region, self.outcome)

    def clients_in(self, build: Build):
        """A region's clients, made once per region and task (distribution works in several)."""
        made: dict[str, aws.Clients] = {}

        def clients_of(region: str) -> aws.Clients:
            if region not in made:
                made[region] = aws.clients(build.spec.aws_conn_id, region)
            return made[region]

        return clients_of

    def pull(self, task_id: str, key: str = "return_value"):
        return self.ti.xcom_pull(task_ids=task_id, key=key)

    def recent_waits(self) -> dict:
        """The windows of each wait in the spec's recent builds (XCom ``waits`` of the waiting tasks, each
        holding the last few): one read per task, of its latest value in this DAG's runs up to this one."""
        history: dict = {}
        for task_id in WAITING:
            # map_indexes=-1: the latest value (without it, the Task SDK returns a list of every run's)
            history.update(_windows(self.ti.xcom_pull(task_ids=task_id, key="waits", include_prior_dates=True,
                                                      map_indexes=-1)))
        return history

    def with_waits_of(self, build: Build, task_id: str) -> Build:
        """``build`` polling on the windows ``task_id`` recorded in this run: the spec's recent ones and this
        build's own."""
        return dataclasses.replace(build, history={**build.history, **_windows(self.pull(task_id, key="waits"))})

    def record_waits(self, build: Build, windows: dict) -> None:
        """XCom ``waits``: the spec's recent windows with this build's added (for the next build's polls)."""
        if windows:
            self.ti.xcom_push(key="waits", value=recorded(build.history, windows))


def _windows(value) -> dict:
    """A task's XCom ``waits``: {waiter name: windows}."""
    if isinstance(value, str):  # pushed by the triggerer (TaskSuccessEvent): it reads back as JSON text
        value = json.loads(value)
    return {k: v for k, v in value.items() if isinstance(v, list)} if isinstance(value, dict) else {}


def _variable(name: str) -> str | None:
    return Variable.get(name, default=None)


# --- the tasks --------------------------------------------------------------------------------------------

def create_builder_network(task: BuildTask) -> dict:
    """The setup: the origin resolved, then the subnet, the security group and the key pair of the build."""
    build = task.build()
    c = task.clients(build)
    # Before anything is made: the topics the build's messages go to exist and may be used.
    for topic in sorted(notify.topics_of(task.loaded.image, build.settings.default_topic())):
        notify.check_topic(c.sns_in(notify.region_of(topic)), topic)
        log.info("notify: SNS topic %s is there", topic)
    if build.spec.rollout:  # the templates and groups a promotion rolls out to, in each region it moves in
        clients_in = task.clients_in(build)
        for region in [build.region, *(build.spec.distribute.regions if build.spec.distribute else [])]:
            rollout.check(clients_in(region).ec2, clients_in(region).autoscaling, build.spec.name,
                          build.spec.rollout, region)
            log.info("rollout: launch templates and Auto Scaling groups ready in %s", region)
    if bucket := _sbom_bucket(task, build):
        sbom.check_bucket(c.s3, bucket, build.spec.name)
        log.info("sbom: bucket %s is there and may be written", bucket)
    origin_image = origin.describe_origin(c.ec2, c.ssm, build.spec.origin, build.region)
    network = infrastructure.create(c.ec2, c.ssm, build)
    log.info("builder network ready: %s", network.outputs())
    history = task.recent_waits()
    log.info("polls: %s", "; ".join(f"{name} {build.schedule(name).describe()}"
                                    for name in ("instance_running", "instance_stopped", "image_available",
                                                 "instance_terminated")
                                    ) if not history else f"fitted to the spec's recent builds: {history}")
    # An origin built by Image Factory names its own spec and build: the new image's lineage goes through it.
    made_by = tag_dict(origin_image.get("Tags"))
    lineage = {"spec": made_by[TAG_SPEC], "build_id": made_by[TAG_BUILD]} if TAG_BUILD in made_by else None
    return {"origin_ami": origin_image["ImageId"], "origin_image": instance.launch_view(origin_image),
            "origin_lineage": lineage, **network.to_dict(), "history": history}


def launch_builder_instance(task: BuildTask, network: dict) -> dict:
    """RunInstances (or the instance a try before made); the triggerer ends the task once it runs."""
    build = task.build(network)
    c = task.clients(build)
    launched = instance.launch(c.ec2, build, network["origin_image"], network["security_group_id"],
                               network["key_name"], wait=None)
    links.persist(links.BuilderInstanceLink, task.context, build.region, c.endpoint_url,
                  instance_id=launched["instance_id"])
    instance.wait_running(c.ec2, build, launched["instance_id"], task.wait(build), result=launched)
    return launched


def configure(task: BuildTask, network: dict, launched: dict) -> dict:
    """The wait for SSH, the server role over SSH, then the stop (it goes on while register_image starts)."""
    build = task.build(network)
    c = task.clients(build)
    instance_id = launched["instance_id"]
    hook, role_seconds = None, None
    if build.spec.configure is None:
        log.info("the spec has no configure section: the image is a copy of its origin")
    else:
        hook, role_seconds = _apply_role(task, build, c, launched)
    bucket = _sbom_bucket(task, build)
    if bucket:  # the last look at the instance: its packages are read now (sbom.py)
        hook = hook or _ssh(task, build, c, launched)[0]
        os_release, packages = sbom.read_instance(hook)
    stop_requested_at = instance.request_stop(c.ec2, instance_id)
    # The document is made and stored (under the build id) while the instance stops: off the critical path.
    written = _write_sbom(build, c, bucket, os_release, packages, network["origin_ami"]) if bucket else None
    return {"stop_requested_at": stop_requested_at, "sbom": written, "role_seconds": role_seconds}


def _sbom_bucket(task: BuildTask, build: Build) -> str:
    """The bucket of this build's SBOM; empty: the spec turned SBOMs off, or the deployment set no bucket."""
    if not task.loaded.image.sbom:
        return ""
    if not build.settings.sbom_bucket:
        log.info("sbom: none ([image_factory] sbom_bucket is not set)")
    return build.settings.sbom_bucket


def _write_sbom(build: Build, c: aws.Clients, bucket: str, os_release: dict[str, str], packages: list,
                origin_ami: str) -> dict:
    """XCom gets the key and the count, never the document."""
    role = build.spec.configure.server_role if build.spec.configure else ""
    text = sbom.document(os_release, packages, {"spec": build.spec.name, "spec-hash": build.spec_hash,
                                                "build-id": build.build_id, "server-role": role or "-",
                                                "origin-ami": origin_ami})
    key = sbom.build_key(build.spec.name, build.build_id)
    sbom.store(c.s3, bucket, key, text)
    log.info("sbom: %d packages of %s", len(packages), remote.printable(os_release.get("PRETTY_NAME", "?"), limit=200))
    return {"bucket": bucket, "key": key, "packages": len(packages)}


def _ssh(task: BuildTask, build: Build, c: aws.Clients, launched: dict, stage: str = "ssh"):
    """Logged in to ``launched`` with the build's key, once SSH answers (while it does not, the wait is in the
    triggerer): the hook and the target."""
    host = instance.address(c.ec2, launched, build, emulated=c.emulated)
    port, user = build.settings.ssh_port, build.settings.ssh_username or build.spec.ssh_username
    key = infrastructure.private_key(c.ssm, build)
    interval = build.ssh_poll_interval

    check = build.settings.checks_host_key()

    def defer() -> None:  # SSH does not answer yet (or the console shows no host key): wait in the triggerer
        instance_of = {"aws_conn_id": build.spec.aws_conn_id, "region": build.region,
                       "instance_id": launched["instance_id"]}
        raise Deferred(SshReadyTrigger(host, port, build.settings.ssh_timeout, interval, instance=instance_of,
                                       console=check), build.settings.ssh_timeout)

    resumed = task.outcome if task.outcome and task.outcome.state == SSH_READY else None
    keys = []
    if check:
        keys = (resumed.answer.get("host_keys") if resumed else None) or host_keys.from_console(
            c.ec2, launched["instance_id"])
        if not keys:
            defer()  # its first boot has not printed them yet
        log.info("host key of %s (from its console): %s", launched["instance_id"], host_keys.fingerprint(keys[0]))
    hook = remote.wait_until_ready(host, port, user, key, timeout=build.settings.ssh_timeout, interval=interval,
                                   defer=None if resumed else defer, stage=stage, host_keys=keys)
    return hook, remote.SSHTarget(host, port, user, key, tuple(keys))


def _apply_role(task: BuildTask, build: Build, c: aws.Clients, launched: dict):
    """The hook, and the seconds the role took (its own work on the instance, which no tool can save)."""
    hook, target = _ssh(task, build, c, launched)
    started = time.monotonic()
    lines = tools.apply(hook, build.spec.configure, build, target)
    seconds = round(time.monotonic() - started, 1)
    log.info("configure: role %r applied in %.1f s (%d lines of output)", build.spec.configure.server_role, seconds,
             len(lines))
    return hook, seconds


def register_image(task: BuildTask, network: dict, launched: dict, configured: dict) -> dict:
    """In the triggerer: the stop, CreateImage and the image's wait; then the image is marked complete.
    Returns the build summary."""
    build = task.build(network)
    c = task.clients(build)
    logical = task.dag_run.run_after.strftime("%Y%m%d-%H%M%S")
    described = image.register(c.ec2, build, launched["instance_id"], network["origin_ami"],
                               image.image_name(build, logical), wait=task.wait(build),
                               stop_requested_at=configured["stop_requested_at"], outcome=task.outcome,
                               origin_lineage=network.get("origin_lineage"),
                               more_tags=_sbom_tags(build, c, configured.get("sbom")))
    # The windows the stop and the image were seen in (the task resumed after their wait).
    windows = dict(task.outcome.windows) if task.outcome else {}
    links.persist(links.ImageLink, task.context, build.region, c.endpoint_url, image_id=described["ImageId"])
    task.record_waits(build, windows)
    task.ti.xcom_push(key="image", value=instance.launch_view(described))  # what the test instance boots
    summary = {
        "image_id": described["ImageId"],
        "name": described["Name"],
        "region": build.region,
        "origin": network["origin_ami"],
        "server_role": build.spec.configure.server_role if build.spec.configure else None,
        "build_id": build.build_id,
        # Which type the builder ran as, and the types of the spec's list AWS refused before it (and why).
        "instance_type": launched.get("instance_type"),
        "instance_types_refused": launched.get("refused") or [],
        # What the trigger overrode of what went into the image: the approval shows it, promote refuses it.
        "overridden": build.overridden,
        # float(): a value stored by the triggerer (TaskSuccessEvent) reads back as its JSON text.
        "step_seconds": {step: float(seconds) for step, seconds in zip(TIMED, task.ti.xcom_pull(
            task_ids=list(TIMED), key="step_seconds"), strict=True)},
        # Seconds after each change began: (last poll that did not see it done, first that did).
        "waits": windows,
    }
    log.info("build summary: %s", summary)
    return summary


def _sbom_tags(build: Build, c: aws.Clients, written: dict | None):
    """Once the image has its id: its SBOM moved to the image's key, and the tags that point to it."""
    if not written:
        return None

    def tags(image_id: str) -> dict[str, str]:
        key = sbom.publish(c.s3, written["bucket"], build.spec.name, build.build_id, image_id)
        return {sbom.TAG_SBOM: sbom.s3_uri(written["bucket"], key), sbom.TAG_SBOM_PACKAGES: str(written["packages"])}

    return tags


class TestsFailed(PermanentError):
    pass


def test_image(task: BuildTask, network: dict, launched: dict, registered: dict) -> dict:
    """A fresh instance of the new image, the spec's tests run on it over SSH, the result tagged on the image.
    Failed tests fail the task: the image stays, tagged failed, and no channel moves. (A spec without tests
    has no such task: register_image tags its image untested.)"""
    # The test instance boots as the builder did minutes ago: its wait polls on the builder's windows too.
    build = task.with_waits_of(task.build(network), LAUNCH)
    c = task.clients(build)
    image_id = registered["image_id"]
    tests = build.spec.test
    test_instance = testing.launch(c.ec2, build, task.pull(REGISTER, key="image"), network["security_group_id"],
                                   network["key_name"], task.wait(build), outcome=task.outcome)
    hook, target = _ssh(task, build, c, test_instance, stage="test-ssh")
    folder = (tests_folder() if not build.settings.tests_folder else Path(build.settings.tests_folder)) / tests.tests
    log.info("testing image %s on instance %s: %s tests of %s", image_id, test_instance["instance_id"], tests.tool,
             folder)
    outcome = test_tools.run(tests, folder, hook, target).summary()
    checkpoint("after:tests")
    testing.record(c.ec2, image_id, outcome)
    if outcome["status"] == "passed" or not build.spec.keep_on_failure_hours:  # (else kept by the teardown)
        testing.finish(c.ec2, test_instance)
    result = {"image_id": image_id, **outcome, "instance_id": test_instance["instance_id"],
              "instance_type": test_instance.get("instance_type")}
    if outcome["status"] != "passed":
        shown = ", ".join(outcome["failed_tests"]) or "none ran"
        raise TestsFailed(f"image {image_id}: {outcome['failed']} of {outcome['passed'] + outcome['failed']} tests "
                          f"failed ({shown}); it stays, tagged image-factory:tests=failed, and no channel moves")
    log.info("image %s passed its %d tests", image_id, outcome["passed"])
    return result


def distribute_image(task: BuildTask, network: dict, registered: dict) -> dict:
    """The tested image copied into the spec's distribute regions, all at once (the triggerer waits until
    every copy is available, then this task runs again to finish), the copies tagged as the original plus
    their source and marked complete, and the image and the copies shared as ``share_with`` says."""
    build = task.build(network)
    clients_in = task.clients_in(build)
    [source] = clients_in(build.region).ec2.describe_images(ImageIds=[registered["image_id"]])["Images"]
    done = distribution.distribute(lambda region: clients_in(region).ec2, build, source,
                                   wait=task.wait(build), outcome=task.outcome)
    log.info("image %s distributed: %s", source["ImageId"],
             ", ".join(f"{copy} in {region}" for region, copy in done["copies"].items()) or "no copies")
    return {"image_id": source["ImageId"], "region": build.region, **done}


def _move(task: BuildTask, network: dict, registered: dict, tested: dict, wanted: list[str]) -> dict:
    """Moves ``wanted`` in every region the image is in (the build's, and each copy's, to its copy: the
    copies' regions first, the build's own last; all or none), and sets the promotion events' extra."""
    build = task.build(network)
    clients_in = task.clients_in(build)
    distributed = task.pull(DISTRIBUTE) or {}
    images = {**distributed.get("copies", {}), build.region: registered["image_id"]}
    moved = channels.move_everywhere(lambda region: clients_in(region).ssm, build.spec.name, wanted, images, tested,
                                     build.settings.channel_prefix)
    versions = moved[build.region]
    extra = {"image_id": registered["image_id"], "region": build.region, "name": registered["name"],
             "channels": sorted(versions), "build_id": build.build_id,
             **({"copies": distributed["copies"], "regions": sorted(images)} if distributed.get("copies") else {})}
    log.info("promotion event: %s", json.dumps(extra, sort_keys=True))
    # Downstream DAGs follow tested images only: these events fire on a promotion, never on a registration.
    events = task.context["outlet_events"]
    events[image_asset(build.spec.name)].extra = extra
    for channel in versions:
        events[channel_asset(build.spec.name, channel)].extra = extra
    if topic := notify.topic_for(task.loaded.image, "promotion", build.settings.sns_topic_arn):
        notify.publish(topic, build.spec.aws_conn_id,
                       *notify.promotion_message(build.spec.name, build.run_id, extra,
                                                 approved=task.ti.task_id == PROMOTE_APPROVED))
    return {"image_id": registered["image_id"], "channels": versions,
            **({"regions": {region: {"image_id": images[region], "channels": moved[region]} for region in images}}
               if len(images) > 1 else {})}


class OverriddenImage(AirflowSkipException):
    """The run overrode what goes into the image: its channels do not move on their own."""


def promote(task: BuildTask, network: dict, registered: dict, tested: dict) -> dict:
    """Move ``promote.channels`` to the tested image; not an image built from a trigger's ``origin`` or
    ``server_role`` (the task is skipped: no channel moves, no promotion event), unless the spec allows it."""
    spec = task.loaded.image
    overridden = registered.get("overridden") or {}
    if overridden and not spec.promote.allow_overrides:
        raise OverriddenImage(
            f"no channel moves: this run's trigger overrode {', '.join(sorted(overridden))}, and the spec does not "
            f"allow overridden images to move {', '.join(spec.promote.channels)} (promote.allow_overrides); the "
            f"image {registered['image_id']} is tagged image-factory:overridden"
            + (" and waits for a person's approval" if spec.promote.approval else ""))
    return _move(task, network, registered, tested, spec.promote.channels)


def promote_approved(task: BuildTask, network: dict, registered: dict, tested: dict) -> dict:
    """Move ``promote.approval``'s channels to the image a person approved."""
    spec = task.loaded.image
    return _move(task, network, registered, tested, spec.promote.approval)


def roll_out(task: BuildTask) -> dict:
    """The channels that moved in this run (promote's, promote_approved's) rolled out as ``rollout`` says, in each
    region they moved in: template versions naming the image, then instance refreshes, followed to their end in
    the triggerer. A refresh that does not succeed fails the task; the channel stays. (Not a task after the setup
    itself: Airflow lets only ALL_SUCCESS tasks follow a setup, and this one runs after either promotion.)"""
    build = task.build()
    moved: dict[str, dict[str, str]] = {}  # {channel: {region: image}}
    for promotion in filter(None, (task.pull(PROMOTE), task.pull(PROMOTE_APPROVED))):
        regions = promotion.get("regions") or {build.region: {"image_id": promotion["image_id"],
                                                              "channels": promotion["channels"]}}
        for region, there in regions.items():
            for channel in there["channels"]:
                moved.setdefault(channel, {})[region] = there["image_id"]
    entries = [entry for entry in build.spec.rollout if entry.channel in moved]
    if not entries:
        raise AirflowSkipException(f"nothing to roll out: {', '.join(e.channel for e in build.spec.rollout)} did "
                                   "not move in this run")
    clients_in, wait = task.clients_in(build), task.wait(build)
    regions = sorted({region for entry in entries for region in moved[entry.channel]},
                     key=lambda region: (region != build.region, region))
    refreshes = []
    for region in regions:  # every template first, in every region: then the refreshes, which take long
        c = clients_in(region)
        for entry in entries:
            if region not in moved[entry.channel]:
                continue
            image_id = moved[entry.channel][region]
            versions = rollout.point_templates(c.ec2, entry, image_id, f"Image Factory: {build.spec.name} "
                                               f"{entry.channel} {image_id} (build {build.build_id})")
            since = max(version["CreateTime"] for version in versions.values())
            refreshes += [(region, group, refresh_id) for group, refresh_id
                          in rollout.start_refreshes(c.autoscaling, entry, since).items()]
    done = {}
    for region, group, refresh_id in refreshes:  # one after the other: they all run meanwhile
        ended = rollout.follow(clients_in(region).autoscaling, group, refresh_id, wait,
                               lambda state, resources, region=region: build.wait_for(
                                   state, resources, timeout=rollout.REFRESH_TIMEOUT, region=region))
        done.setdefault(region, {})[group] = {"refresh_id": refresh_id, "status": ended["Status"]}
    return {"channels": {entry.channel: moved[entry.channel] for entry in entries}, "refreshes": done}


def tear_down(task: BuildTask) -> list[str]:
    """The teardown of the builder network: also when a task failed, the setup included (half-way or not)."""
    # Only what finds the resources: a parameter the build could not resolve must not stop the cleanup.
    build = task.build(fields=parameters.EARLY_FIELDS)
    c = task.clients(build)
    network, launched, tested = task.pull(NETWORK), task.pull(LAUNCH), task.pull(TEST)
    # What the setup, the launch and the test stage recorded names what they made, unless this is a retry or a
    # rerun, or one of them has no record (it failed, perhaps after RunInstances): then, what carries the
    # build's tag.
    tested_as_planned = tested is not None or build.spec.test is None  # (no tests: no test instance to find)
    record = ({**network, **launched, "test_instance_id": (tested or {}).get("instance_id")}
              if build.fresh and network and launched and tested_as_planned else None)
    history = (network or {}).get("history", {})
    schedule = schedule_for("instance_terminated", history.get("instance_terminated"), build.settings.poll_interval)
    removed = []
    if build.spec.distribute and build.spec.distribute.regions and task.pull(DISTRIBUTE) is None:
        # The copies did not all become complete: those that did not are deregistered, in their regions.
        clients_in = task.clients_in(build)
        removed += distribution.remove_incomplete(lambda region: clients_in(region).ec2,
                                                  build.spec.distribute.regions, build.build_id)
    # No image to be the SBOM of: the build's document goes too (before the wait for the instances: the task may
    # end in the triggerer).
    written = (task.pull(CONFIGURE) or {}).get("sbom")
    if written and task.pull(REGISTER) is None:
        sbom.discard(c.s3, written["bucket"], written["key"])
    removed = teardown_step.tear_down(c.ec2, c.ssm, build.build_id, schedule, wait=task.wait(build),
                                      removed_before=removed, keeping=_keeping(task, build),
                                      record=record, image_complete=task.pull(REGISTER) is not None,
                                      history=history)
    log.info("tear_down: deleted %d builder resources of build %s", len(removed), build.build_id)
    return removed


def _keeping(task: BuildTask, build: Build) -> keep.Keeping | None:
    """What a failed build keeps to be looked at: the instance of the task that failed (configure's builder, or
    test_image's test instance), if the spec or the trigger asks (keep_on_failure_hours)."""
    hours = build.spec.keep_on_failure_hours
    if not hours:
        return None
    run_id = task.dag_run.run_id
    states = task.ti.get_task_states(dag_id=task.dag_run.dag_id, run_ids=[run_id],
                                     task_ids=list(KEPT_ON_FAILURE)).get(run_id, {})
    purpose = keep.failed(states, KEPT_ON_FAILURE)
    login = build.settings.ssh_username or build.spec.ssh_username
    return keep.Keeping.of(purpose, hours, login) if purpose else None
