"""The sweeper: builds whose teardown never ran are found by tag and torn down; nothing else is touched.

The end-to-end tests are real DAG runs (``airflow dags test``) against the local cloud, and every assertion
about the cloud is read back from the emulator.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from image_factory.build import TAG_BUILD, TAG_CREATED_AT, TAG_KEEP_UNTIL, TAG_RUN, TAG_SPEC, tag_dict
from image_factory.inventory import builder_resources
from image_factory.steps.image import deregister, snapshot_ids
from image_factory.steps.image import find as find_images
from image_factory.steps.teardown import tear_down
from image_factory.sweeper import BuildResources, find_builds, orphans, sweep
from localcloud.runner import AIRFLOW, TASK_START, DagRunResult, airflow_env, migrate, run_dag

PROJECT = Path(__file__).resolve().parents[1]
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
ROLE_STARTED = "sweeper-test: role is running"
SWEEPER = "image_factory_sweeper"
DELETED = re.compile(r"\bdeleted (instance|image|snapshot|key-pair|ssm-parameter|security-group|subnet|vpc) (\S+)")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


# --- helpers ------------------------------------------------------------------------------------------

def write_spec(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        image:
          name: {name}
          platform: aws
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          instance_size: small
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          configure:
            tool: shell
            server_role: waiting
        """))


def write_waiting_role(roles: Path) -> None:
    """A role that says it runs, then waits (at most 300 s) until /tmp/release-<image name> appears on its
    instance (the test makes it over SSH: the role runs on a machine of the local cloud, not on this host)."""
    (roles / "waiting").mkdir(parents=True)
    (roles / "waiting" / "10-wait.sh").write_text(textwrap.dedent(f"""\
        echo "{ROLE_STARTED}"
        for i in $(seq 1 300); do
            [ -e /tmp/release-$IMAGE_FACTORY_IMAGE_NAME ] && break
            sleep 1
        done
        """))


def release(ec2, ssm, image: str) -> None:
    """Let the role of the image's build end: the release file, made on its builder over SSH with its key."""
    import io

    import paramiko

    build = build_of(ec2, ssm, image)
    found = ec2.describe_instances(Filters=[{"Name": f"tag:{TAG_BUILD}", "Values": [build.build_id]},
                                            {"Name": "instance-state-name", "Values": ["running"]}])
    [instance] = [i for r in found["Reservations"] for i in r["Instances"]]
    key = ssm.get_parameter(Name=f"/image-factory/builds/{build.build_id}/ssh-private-key",
                            WithDecryption=True)["Parameter"]["Value"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 (a machine of the test's cloud)
    client.connect(instance["PrivateIpAddress"], username="ec2-user", look_for_keys=False, allow_agent=False,
                   pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(key)), timeout=30)
    try:
        _, stdout, _ = client.exec_command(f"touch /tmp/release-{image}", timeout=30)
        assert stdout.channel.recv_exit_status() == 0
    finally:
        client.close()


def tags(build_id: str, spec: str, created: datetime, run_id: str = "manual__2026-01-01T00:00:00+00:00") -> list:
    return [{"Key": TAG_BUILD, "Value": build_id}, {"Key": TAG_SPEC, "Value": spec},
            {"Key": TAG_RUN, "Value": run_id},
            {"Key": TAG_CREATED_AT, "Value": created.strftime("%Y-%m-%dT%H:%M:%SZ")}]


def fake_leftover_build(ec2, ssm, build_id: str, created: datetime) -> list[tuple[str, str]]:
    """What a build killed right after making its infrastructure leaves: tagged the way builds tag."""
    tag_list = tags(build_id, "fake-leftover-image", created)
    vpc = ec2.create_vpc(CidrBlock="10.214.0.0/24",
                         TagSpecifications=[{"ResourceType": "vpc", "Tags": tag_list}])["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.214.0.0/28", TagSpecifications=[
        {"ResourceType": "subnet", "Tags": tag_list}])["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"image-factory-{build_id}", Description="fake builder", VpcId=vpc,
                                      TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list}])
    ec2.create_key_pair(KeyName=f"image-factory-{build_id}",
                        TagSpecifications=[{"ResourceType": "key-pair", "Tags": tag_list}])
    parameter = f"/image-factory/builds/{build_id}/ssh-private-key"
    ssm.put_parameter(Name=parameter, Type="SecureString", Value="not a key", Tags=tag_list)
    return sorted([("vpc", vpc), ("subnet", subnet), ("security-group", group["GroupId"]),
                   ("key-pair", f"image-factory-{build_id}"), ("ssm-parameter", parameter)])


class Untagged:
    """Resources made by hand: without Image Factory tags, or with unrelated ones."""

    def __init__(self, ec2, ssm, suffix: str):
        self.ec2, self.ssm = ec2, ssm
        vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
        other = [{"Key": "team", "Value": "shopspinner"}, {"Key": "image-factory:note", "Value": "not a build"}]
        self.groups = [
            ec2.create_security_group(GroupName=f"hand-made-{suffix}", Description="no tags", VpcId=vpc)["GroupId"],
            ec2.create_security_group(GroupName=f"hand-made-tagged-{suffix}", Description="other tags", VpcId=vpc,
                                      TagSpecifications=[{"ResourceType": "security-group", "Tags": other}],
                                      )["GroupId"],
        ]
        self.key_pairs = [f"hand-made-{suffix}", f"hand-made-tagged-{suffix}"]
        ec2.create_key_pair(KeyName=self.key_pairs[0])
        ec2.create_key_pair(KeyName=self.key_pairs[1], TagSpecifications=[{"ResourceType": "key-pair",
                                                                           "Tags": other}])
        # In the builds' folder, but not tagged as a build's.
        self.parameter = f"/image-factory/builds/bhandmade{suffix}/ssh-private-key"
        ssm.put_parameter(Name=self.parameter, Type="SecureString", Value="hand made")

    @property
    def ids(self) -> list[str]:
        return [*self.groups, *self.key_pairs, self.parameter]

    def assert_intact(self) -> None:
        assert len(self.ec2.describe_security_groups(GroupIds=self.groups)["SecurityGroups"]) == 2
        assert len(self.ec2.describe_key_pairs(KeyNames=self.key_pairs)["KeyPairs"]) == 2
        assert self.ssm.get_parameter(Name=self.parameter)["Parameter"]["Name"] == self.parameter

    def delete(self) -> None:
        for group in self.groups:
            with contextlib.suppress(Exception):
                self.ec2.delete_security_group(GroupId=group)
        for name in self.key_pairs:
            with contextlib.suppress(Exception):
                self.ec2.delete_key_pair(KeyName=name)
        with contextlib.suppress(Exception):
            self.ssm.delete_parameter(Name=self.parameter)


def deleted_in(log: str) -> set[str]:
    return {m.group(2) for m in DELETED.finditer(log)}


def clean_up(ec2, ssm, *build_ids: str, specs: tuple[str, ...] = ()) -> None:
    """Leave nothing behind: the builds' builder resources and images (given by id, or by their spec)."""
    found = {b.build_id for b in find_builds(ec2, ssm).values() if b.spec in specs}
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": f"tag:{TAG_SPEC}", "Values": list(specs)}],
                                 )["Images"] if specs else []
    found |= {tag_dict(i.get("Tags"))[TAG_BUILD] for i in images}
    for build_id in sorted(set(build_ids) | found):
        tear_down(ec2, ssm, build_id, schedule=1)
        for image in find_images(ec2, build_id):
            deregister(ec2, image)
        assert builder_resources(ec2, ssm, build_id) == []
        assert find_images(ec2, build_id) == []


@pytest.fixture(scope="module")
def sweeper_home(local_cloud, tmp_path_factory) -> Path:
    """The Airflow home of the sweeper runs (and of the build that is still running during one)."""
    home = tmp_path_factory.mktemp("sweeper") / "airflow"
    migrate(airflow_env(local_cloud, home))
    return home


# --- a. a killed build is swept, a running one is not ---------------------------------------------------

class KilledBuild:
    """``airflow dags test`` of a build in a session of its own, so that it can be SIGKILLed as a whole."""

    def __init__(self, dag_id: str, env: dict[str, str]):
        self.process = subprocess.Popen([AIRFLOW, "dags", "test", dag_id], env=env, cwd=PROJECT,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.started = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if ROLE_STARTED in line:
                self.started.set()

    def kill(self) -> None:
        """SIGKILL the process group this test started (its own session), if it is still there."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)

    @property
    def output(self) -> str:
        return "".join(self.lines)


class RunningBuild:
    """``run_dag`` of a build in a thread; ``started`` is set once its role runs."""

    def __init__(self, dag_id: str, env: dict[str, str]):
        self.started = threading.Event()
        self.result: DagRunResult | None = None
        self.thread = threading.Thread(target=self._run, args=(dag_id, env), daemon=True)
        self.thread.start()

    def _run(self, dag_id: str, env: dict[str, str]) -> None:
        def on_line(line: str) -> None:
            if ROLE_STARTED in line:
                self.started.set()

        self.result = run_dag(dag_id, env, on_line=on_line, timeout=600)

    def wait(self, timeout: float) -> DagRunResult:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the running build did not finish"
        assert self.result is not None
        return self.result


def build_of(ec2, ssm, spec: str) -> BuildResources:
    found = [b for b in find_builds(ec2, ssm).values() if b.spec == spec]
    assert len(found) == 1, found
    return found[0]


def test_killed_build_is_swept_and_running_build_is_not(local_cloud, sweeper_home, ec2, ssm, tmp_path):
    specs, roles = tmp_path / "specs", tmp_path / "roles"
    write_spec(specs, "killed-build-image")
    write_spec(specs, "running-build-image")
    write_waiting_role(roles)
    settings = {"specs_folder": str(specs), "roles_folder": str(roles)}
    # Two Airflow homes: the killed build's run stays "running" in its own database forever, and the
    # sweeper's database has never heard of it; the running build runs where the sweeper runs.
    env_killed = {**airflow_env(local_cloud, tmp_path / "airflow-killed", **settings), "PYTHONUNBUFFERED": "1"}
    env_sweeper = {**airflow_env(local_cloud, sweeper_home, **settings), "PYTHONUNBUFFERED": "1"}

    running = RunningBuild("running-build-image", env_sweeper)
    killed = None
    untagged = None
    try:
        migrate(env_killed)  # while the running build starts
        killed = KilledBuild("killed-build-image", env_killed)
        assert killed.started.wait(300), killed.output[-5000:]
        killed.kill()
        assert running.started.wait(300), "the running build's role never started"

        # The kill left everything: the teardown never started, nothing was deleted.
        assert killed.process.returncode == -signal.SIGKILL
        assert "tear_down" not in {m.group(1) for m in TASK_START.finditer(killed.output)}
        assert "configure" in {m.group(1) for m in TASK_START.finditer(killed.output)}
        assert not deleted_in(killed.output)
        killed_build = build_of(ec2, ssm, "killed-build-image")
        running_build = build_of(ec2, ssm, "running-build-image")
        killed_before = builder_resources(ec2, ssm, killed_build.build_id)
        running_before = builder_resources(ec2, ssm, running_build.build_id)
        kinds = {kind for kind, _ in killed_before}
        assert {"instance", "key-pair", "security-group", "subnet", "ssm-parameter"} <= kinds  # (the builder VPC)
        assert sorted(killed_before) == sorted(killed_build.resources)
        assert {kind for kind, _ in running_before} == kinds
        untagged = Untagged(ec2, ssm, "a")

        sweep_run = run_dag(SWEEPER, env_sweeper, conf=json.dumps({"grace_minutes": 0}), timeout=300)

        assert sweep_run.succeeded, sweep_run.output[-5000:]
        log = sweep_run.task_logs["sweep_region"]
        assert builder_resources(ec2, ssm, killed_build.build_id) == []
        assert sorted(builder_resources(ec2, ssm, running_build.build_id)) == sorted(running_before)
        # The log names every resource it deleted, and only those of the killed build.
        assert {resource_id for _, resource_id in killed_before} <= deleted_in(log)
        assert not deleted_in(log) & {resource_id for _, resource_id in running_before}
        assert not deleted_in(log) & set(untagged.ids)
        assert f"DAG run running-build-image/{running_build.run_id} is running" in log
        assert f"DAG run killed-build-image/{killed_build.run_id} is not known to Airflow" in log
        untagged.assert_intact()

        # The running build was not disturbed: it finishes, and its own teardown cleans up.
        release(ec2, ssm, "running-build-image")
        result = running.wait(300)
        assert result.succeeded, result.output[-5000:]
        assert result.task_states["tear_down"] == "success"
        assert builder_resources(ec2, ssm, running_build.build_id) == []
    finally:
        if killed:
            killed.kill()
        if running.thread.is_alive():
            with contextlib.suppress(Exception):
                release(ec2, ssm, "running-build-image")
        running.thread.join(600)
        if untagged:
            untagged.delete()
        clean_up(ec2, ssm, specs=("killed-build-image", "running-build-image"))


# --- b. a dry run deletes nothing ---------------------------------------------------------------------

def test_dry_run_deletes_nothing_and_says_what_it_would_delete(local_cloud, sweeper_home, ec2, ssm, tmp_path):
    build_id = "bdryrun000001"
    made = fake_leftover_build(ec2, ssm, build_id, datetime.now(UTC) - timedelta(hours=3))
    try:
        env = airflow_env(local_cloud, sweeper_home, specs_folder=str(tmp_path / "no-specs"),
                          sweeper_regions="eu-west-1")
        result = run_dag(SWEEPER, env, conf=json.dumps({"dry_run": True}), timeout=300)

        assert result.succeeded, result.output[-5000:]
        log = result.task_logs["sweep_region"]
        for kind, resource_id in made:
            assert f"would delete {kind} {resource_id}" in log
        assert not deleted_in(log)
        assert sorted(builder_resources(ec2, ssm, build_id)) == made
    finally:
        clean_up(ec2, ssm, build_id)


# --- c. resources without Image Factory tags are never touched ------------------------------------------

def test_resources_without_image_factory_tags_survive_a_sweep(ec2, ssm, caplog):
    untagged = Untagged(ec2, ssm, "c")
    build_id, finished_build_id = "buntagged0001", "bfinished0001"
    origin = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    # A hand-made instance, and two images made from it: one half-made by the fake build, and the
    # complete image of another build (an output of that build, never a leftover).
    instance_id = ec2.run_instances(ImageId=origin, InstanceType="t3.micro", MinCount=1, MaxCount=1,
                                    )["Instances"][0]["InstanceId"]
    images = []
    try:
        made = fake_leftover_build(ec2, ssm, build_id, datetime.now(UTC) - timedelta(hours=3))
        half_made = ec2.create_image(InstanceId=instance_id, Name="half-made", TagSpecifications=[
            {"ResourceType": "image", "Tags": tags(build_id, "fake-leftover-image", datetime.now(UTC))}])["ImageId"]
        complete = ec2.create_image(InstanceId=instance_id, Name="complete", TagSpecifications=[
            {"ResourceType": "image", "Tags": [*tags(finished_build_id, "fake-finished-image", datetime.now(UTC)),
                                               {"Key": "image-factory:complete", "Value": "true"}]}])["ImageId"]
        images = [half_made, complete]
        # The half-made image's snapshots are builder resources too (deleted after it); the complete one's not.
        [described] = ec2.describe_images(ImageIds=[half_made])["Images"]
        made = sorted([*made, ("image (incomplete)", half_made),
                       *(("snapshot", snapshot_id) for snapshot_id in snapshot_ids(described))])

        builds = find_builds(ec2, ssm)
        found = {resource_id for build in builds.values() for _, resource_id in build.resources}
        assert not found & {*untagged.ids, instance_id, complete}
        assert finished_build_id not in builds
        assert sorted(builds[build_id].resources) == made
        assert builds[build_id].spec == "fake-leftover-image"

        chosen = [o for o in orphans(builds, datetime.now(UTC), timedelta(0), lambda spec, run: None,
                                     timedelta(hours=12)) if o.build_id == build_id]
        with caplog.at_level("INFO", logger="image_factory"):
            summary = sweep(ec2, ssm, chosen, dry_run=False, schedule=1)

        assert summary.failed == {}
        expected = {resource_id for _, resource_id in made}
        assert expected == set(summary.deleted[build_id])
        assert deleted_in(caplog.text) == set(summary.deleted[build_id])
        assert builder_resources(ec2, ssm, build_id) == []
        untagged.assert_intact()
        # Untouched: not stopped or terminated (a real machine may still be booting: pending).
        assert ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]["State"][
            "Name"] in ("pending", "running")
        assert [i["ImageId"] for i in ec2.describe_images(ImageIds=[complete])["Images"]] == [complete]
    finally:
        untagged.delete()
        for image in ec2.describe_images(Owners=["self"], Filters=[{"Name": "image-id", "Values": images}],
                                         )["Images"] if images else []:
            deregister(ec2, image)
        ec2.terminate_instances(InstanceIds=[instance_id])
        clean_up(ec2, ssm, build_id)


# --- d. the decisions, with plain data ----------------------------------------------------------------

def build(build_id: str, age: timedelta | None, spec: str | None = "some-image",
          run_id: str | None = "manual__1") -> BuildResources:
    return BuildResources(build_id, spec=spec, run_id=run_id, created_at=NOW - age if age is not None else None,
                          resources=[("vpc", f"vpc-{build_id}")])


def decided(builds: list[BuildResources] | dict[str, BuildResources], states: dict,
            grace=timedelta(minutes=60), max_age=timedelta(hours=12)) -> list[str]:
    def run_state(spec: str, run_id: str) -> str | None:
        value = states[run_id]
        if isinstance(value, Exception):
            raise value
        return value

    return [o.build_id for o in orphans(builds, NOW, grace, run_state, max_age)]


@pytest.mark.parametrize(("state", "swept"), [
    ("running", False), ("queued", False), ("success", True), ("failed", True), (None, True),
])
def test_a_build_past_its_grace_is_swept_unless_its_run_is_active(state, swept):
    assert decided([build("b1", timedelta(hours=2))], {"manual__1": state}) == (["b1"] if swept else [])


@pytest.mark.parametrize("state", ["running", "queued", "failed", None])
def test_a_build_within_its_grace_is_never_swept(state):
    assert decided([build("b1", timedelta(minutes=59))], {"manual__1": state}) == []


@pytest.mark.parametrize("state", ["running", "queued", None])
def test_a_build_older_than_max_age_is_swept_whatever_its_run_says(state):
    assert decided([build("b1", timedelta(hours=12, minutes=1))], {"manual__1": state}) == ["b1"]


def test_an_unreadable_run_state_keeps_the_build_until_max_age():
    states = {"manual__1": RuntimeError("API server down")}
    assert decided([build("b1", timedelta(hours=2))], states) == []
    assert decided([build("b1", timedelta(hours=13))], states) == ["b1"]


def test_missing_tags():
    # No created-at: older than the grace period, but not old enough for max_age on its own.
    assert decided([build("b1", None)], {"manual__1": "running"}) == []
    assert decided([build("b1", None)], {"manual__1": None}) == ["b1"]
    # No spec or run named: no run can be running.
    assert decided([build("b1", timedelta(hours=2), spec=None, run_id=None)], {}) == ["b1"]


def test_grace_zero_and_several_builds():
    builds = {b.build_id: b for b in [
        build("b1", timedelta(seconds=5), run_id="r1"),
        build("b2", timedelta(seconds=5), run_id="r2"),
        build("b3", timedelta(days=3), run_id="r3"),
    ]}
    states = {"r1": "running", "r2": "failed", "r3": "running"}
    assert decided(builds, states, grace=timedelta(0)) == ["b2", "b3"]


def test_a_kept_build_is_swept_only_once_its_keep_until_has_passed():
    """keep_on_failure_hours: the keep-until tag protects the build past max_age, whatever its run says; once
    it has passed, it is swept (its run failed: it is over)."""
    kept = build("b1", timedelta(hours=13))
    kept.add("instance", "i-1", {TAG_KEEP_UNTIL: (NOW + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert decided([kept], {"manual__1": "failed"}) == []
    passed = build("b2", timedelta(minutes=61))
    passed.add("instance", "i-2", {TAG_KEEP_UNTIL: (NOW - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")})
    assert decided([passed], {"manual__1": "failed"}) == ["b2"]
    # A keep-until further ahead than a build keeps anything protects nothing: the usual rules decide.
    forever = build("b3", timedelta(minutes=61))
    forever.add("instance", "i-3", {TAG_KEEP_UNTIL: "2099-01-01T00:00:00Z"})
    assert decided([forever], {"manual__1": "failed"}) == ["b3"]
    assert decided([forever], {"manual__1": "running"}) == []


def test_grace_longer_than_max_age_is_refused():
    with pytest.raises(ValueError, match="grace period"):
        orphans([], NOW, timedelta(hours=13), lambda spec, run: None, timedelta(hours=12))


def test_dry_run_lists_without_calling_the_cloud(caplog):
    found = build("b1", timedelta(hours=2))
    chosen = orphans([found], NOW, timedelta(minutes=60), lambda spec, run: None, timedelta(hours=12))
    with caplog.at_level("INFO", logger="image_factory"):
        summary = sweep(None, None, chosen, dry_run=True, schedule=1)
    assert summary.would_delete == {"b1": ["vpc vpc-b1"]}
    assert summary.deleted == {}
    assert "would delete vpc vpc-b1" in caplog.text


# --- the DAG ------------------------------------------------------------------------------------------

def sweeper_module():
    spec = importlib.util.spec_from_file_location("image_factory_sweeper_dag", PROJECT / "dags" / f"{SWEEPER}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sweeper_dag():
    from airflow.dag_processing.dagbag import DagBag
    from airflow.utils.file import might_contain_dag

    path = PROJECT / "dags" / f"{SWEEPER}.py"
    assert might_contain_dag(str(path), safe_mode=True)
    bag = DagBag(str(path))  # as Airflow loads the file (in safe mode too)
    assert bag.import_errors == {}
    assert list(bag.dags) == [SWEEPER]
    dag = bag.dags[SWEEPER]
    assert dag.timetable.expression == "*/30 * * * *"
    assert dag.catchup is False and dag.max_active_runs == 1
    assert set(dag.tags) == {"image-factory", "maintenance"}
    assert "image-build" not in dag.tags  # not an image build
    assert {t.owner for t in dag.tasks} == {"image-factory"}
    assert "would delete" in dag.doc_md
    params = {name: dag.params.get_param(name) for name in dag.params}
    assert {name: p.value for name, p in params.items()} == {"dry_run": False, "grace_minutes": 60,
                                                             "max_age_hours": 12}
    assert {name: p.schema["type"] for name, p in params.items()} == {"dry_run": "boolean",
                                                                      "grace_minutes": "integer",
                                                                      "max_age_hours": "integer"}
    assert all(p.description for p in params.values())


class _Response:
    def __init__(self, status_code):
        self.status_code = status_code


class _Ti:
    def __init__(self, error: Exception | None = None, state="running"):
        self.error, self.state = error, state

    def get_dagrun_state(self, dag_id, run_id):
        if self.error:
            raise self.error
        return self.state


def test_an_unknown_run_reads_as_none_and_other_errors_raise():
    from airflow.sdk.exceptions import AirflowRuntimeError, ErrorType
    from airflow.sdk.execution_time.comms import ErrorResponse

    module = sweeper_module()
    # Under a worker's supervisor: the API's 404 arrives as AirflowRuntimeError(API_SERVER_ERROR).
    not_found = AirflowRuntimeError(ErrorResponse(error=ErrorType.API_SERVER_ERROR,
                                                  detail={"status_code": 404, "message": "Server returned error"}))
    assert module._dagrun_state(_Ti(not_found), "some-image", "manual__1") is None
    # In `airflow dags test`: the API client's own error, with the response.
    in_process = Exception("Server returned error")
    in_process.response = _Response(404)
    assert module._dagrun_state(_Ti(in_process), "some-image", "manual__1") is None
    server_error = AirflowRuntimeError(ErrorResponse(error=ErrorType.API_SERVER_ERROR,
                                                     detail={"status_code": 500, "message": "boom"}))
    with pytest.raises(AirflowRuntimeError):
        module._dagrun_state(_Ti(server_error), "some-image", "manual__1")
    assert module._dagrun_state(_Ti(state="success"), "some-image", "manual__1") == "success"
