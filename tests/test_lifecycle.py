"""The image's lifecycle, part 1, in real DAG runs on the local cloud's machines: every new image tested on a
fresh boot of itself, then promoted to its channels; a failed test moves none and leaves nothing behind but
the test instance its trigger asked to keep (keep_on_failure_hours), until released; the test stage's faults
leak nothing, and a retry makes no second test instance.
"""

from __future__ import annotations

import contextlib
import json
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from image_factory.build import TAG_INSTANCE, TAG_TESTS, TAG_TESTS_FAILED, TAG_TESTS_PASSED, build_id_for, tag_dict
from image_factory.inventory import builder_resources
from image_factory.steps.image import find as find_images
from image_factory.steps.teardown import release
from localcloud.runner import airflow_env, migrate, run_dag
from tests.test_rollout import client, make_fleet, refreshes, remove_fleet

PROJECT = Path(__file__).resolve().parents[1]
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
LATEST = "/image-factory/lifecycle-image/latest"


def instances_of(ec2, build_id: str) -> list[dict]:
    found = ec2.describe_instances(Filters=[{"Name": "tag:image-factory:build-id", "Values": [build_id]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


def spec_folder(tmp_path: Path, tests: str, name: str = "lifecycle-image",
                fleet: tuple[str, str] | None = None) -> Path:
    """``fleet``: (launch template, Auto Scaling group) that a promotion rolls out to."""
    specs = tmp_path / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    rollout = (f"  rollout: [{{channel: latest, launch_templates: [{fleet[0]}], auto_scaling_groups: [{fleet[1]}], "
               "min_healthy_percentage: 50}]\n" if fleet else "")
    (specs / f"{name}.yaml").write_text(textwrap.dedent(f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          configure: {{tool: shell, server_role: appserver}}
          test: {{tool: testinfra, tests: {tests}}}
          promote: {{channels: [latest]}}
        """) + rollout)
    return specs


#: The shipped appserver tests (none is parametrized): one test each.
APPSERVER_TESTS = (PROJECT / "include" / "tests" / "appserver" / "test_appserver.py").read_text().count("\ndef test_")


def write_tests_folder(tmp_path: Path) -> Path:
    """The project's test suites, and one that checks for a file the appserver role never writes."""
    folder = tmp_path / "tests"
    (folder / "appserver").mkdir(parents=True)
    source = PROJECT / "include" / "tests" / "appserver" / "test_appserver.py"
    (folder / "appserver" / source.name).write_text(source.read_text())
    (folder / "missing-file").mkdir()
    (folder / "missing-file" / "test_missing.py").write_text(textwrap.dedent("""\
        def test_the_role_wrote_its_release_notes(host):
            assert host.file("/etc/shopspinner/RELEASE-NOTES").exists

        def test_the_configuration_is_there(host):
            assert host.file("/etc/shopspinner/appserver.conf").is_file
        """))
    return folder


def channel(ssm) -> tuple[str, int] | None:
    try:
        parameter = ssm.get_parameter(Name=LATEST)["Parameter"]
    except ssm.exceptions.ParameterNotFound:
        return None
    assert parameter["DataType"] == "aws:ec2:image"
    return parameter["Value"], parameter["Version"]


def template_versions(ec2, template: str) -> list[dict]:
    return sorted(ec2.describe_launch_template_versions(LaunchTemplateName=template)["LaunchTemplateVersions"],
                  key=lambda version: version["VersionNumber"])


@pytest.fixture(scope="module")
def lifecycle(local_cloud, airflow_home, tmp_path_factory, ec2, ssm):
    """Two runs of one spec that rolls `latest` out to a launch template and an Auto Scaling group: the first
    passes its tests and moves `latest`, the second fails them (its trigger asks to keep the failed instance an
    hour). (Also: the template's versions after each.)"""
    tmp_path = tmp_path_factory.mktemp("lifecycle")
    tests = write_tests_folder(tmp_path)
    autoscaling = client(local_cloud, "autoscaling")
    fleet = make_fleet(ec2, autoscaling, spec="lifecycle-image")
    try:
        passing = run_dag("lifecycle-image", airflow_env(
            local_cloud, airflow_home, tests_folder=str(tests),
            specs_folder=str(spec_folder(tmp_path, "appserver", fleet=fleet[:2]))))
        after_passing = channel(ssm)
        passing.template_versions = template_versions(ec2, fleet[0])
        passing.refreshes = refreshes(autoscaling, fleet[1])
        failing = run_dag("lifecycle-image", airflow_env(
            local_cloud, airflow_home, tests_folder=str(tests),
            specs_folder=str(spec_folder(tmp_path, "missing-file", fleet=fleet[:2]))),
            conf=json.dumps({"keep_on_failure_hours": 1}))
        failing.template_versions = template_versions(ec2, fleet[0])
        failing.refreshes = refreshes(autoscaling, fleet[1])
        yield passing, after_passing, failing, channel(ssm)
    finally:
        remove_fleet(ec2, autoscaling, *fleet[:2])
        with contextlib.suppress(ssm.exceptions.ParameterNotFound):
            ssm.delete_parameter(Name=LATEST)


def test_a_passing_build_tests_its_image_tags_the_result_and_moves_latest(lifecycle, ec2, ssm):
    passing, moved, _, _ = lifecycle
    assert passing.succeeded, passing.output[-5000:]
    build_id = build_id_for("lifecycle-image", passing.run_id)
    [image] = find_images(ec2, build_id)
    tags = tag_dict(image["Tags"])
    assert (tags[TAG_TESTS], tags[TAG_TESTS_PASSED], tags[TAG_TESTS_FAILED]) == ("passed", str(APPSERVER_TESTS), "0")
    assert moved == (image["ImageId"], 1)
    log = passing.task_logs["test_image"]
    assert "test passed: " in log and "test_the_service_is_installed_and_enabled" in log
    assert f"channel {LATEST}: (new) -> {image['ImageId']}" in passing.task_logs["promote"]
    # Rolled out: the template's new version names the image (its other settings kept) and is its default; the
    # group's instance refresh was started after that and followed to its end, in the triggerer.
    first, made = passing.template_versions
    assert made["LaunchTemplateData"] == {**first["LaunchTemplateData"], "ImageId": image["ImageId"]}
    assert made["DefaultVersion"] and not first["DefaultVersion"]
    [refresh] = passing.refreshes
    assert refresh["Status"] == "Successful" and refresh["StartTime"] >= made["CreateTime"].replace(microsecond=0)
    assert refresh["Preferences"]["MinHealthyPercentage"] == 50
    log = passing.task_logs["roll_out"]
    assert "without holding a worker slot (deferred to the triggerer" in log
    assert f"instance refresh {refresh['InstanceRefreshId']} Successful" in log
    # The test instance was a fresh boot of the new image, in the build's own subnet, and is gone.
    made = instances_of(ec2, build_id)
    test_instance = next(i for i in made if tag_dict(i["Tags"])[TAG_INSTANCE] == "test")
    builder = next(i for i in made if tag_dict(i["Tags"])[TAG_INSTANCE] == "builder")
    assert test_instance["ImageId"] == image["ImageId"] and test_instance["SubnetId"] == builder["SubnetId"]
    assert {i["State"]["Name"] for i in made} == {"terminated"}
    assert builder_resources(ec2, ssm, build_id) == []


def test_a_failing_test_fails_the_run_moves_no_channel_and_keeps_only_the_test_instance(lifecycle, ec2, ssm):
    passing, moved, failing, after = lifecycle
    assert failing.state == "failed"
    assert failing.task_states["test_image"] == "failed"
    assert "promote" not in failing.task_states and failing.task_states["tear_down"] == "success"
    assert "test FAILED: " in failing.task_logs["test_image"] and "RELEASE-NOTES" in failing.task_logs["test_image"]
    assert "1 of 2 tests failed" in failing.task_logs["test_image"]
    assert after == moved  # the previous latest, as it was (same image, same version)
    assert "roll_out" not in failing.task_states  # and the template and group as they were:
    assert failing.template_versions == passing.template_versions and len(failing.refreshes) == 1
    build_id = build_id_for("lifecycle-image", failing.run_id)
    [image] = find_images(ec2, build_id)  # it stays, for a look, tagged failed
    assert tag_dict(image["Tags"])[TAG_TESTS] == "failed"
    # The trigger asked to keep the failed instance: the test instance, as the tests found it, runs on (tagged
    # keep-until, with what it needs); the builder is gone.
    states = {tag_dict(i["Tags"])[TAG_INSTANCE]: i["State"]["Name"] for i in instances_of(ec2, build_id)}
    assert states == {"builder": "terminated", "test": "running"}
    assert sorted(kind for kind, _ in builder_resources(ec2, ssm, build_id)) == [
        "instance", "key-pair", "security-group", "ssm-parameter", "subnet"]
    assert f"bin/image-factory release {build_id}" in failing.task_logs["tear_down"]
    # Released, nothing is left.
    release(ec2, ssm, build_id, schedule=1)
    assert {i["State"]["Name"] for i in instances_of(ec2, build_id)} == {"terminated"}
    assert builder_resources(ec2, ssm, build_id) == []
    ec2.deregister_image(ImageId=image["ImageId"])


def test_a_refresh_that_fails_fails_the_rollout_and_the_channel_stays(local_cloud, airflow_home, ec2, ssm, tmp_path):
    name = "refresh-failing-image"
    autoscaling = client(local_cloud, "autoscaling")
    template, group, _ = make_fleet(ec2, autoscaling, spec=name)
    local_cloud.configure(fail_instance_refreshes=[group])
    try:
        specs = spec_folder(tmp_path, "appserver", name, fleet=(template, group))
        result = run_dag(name, airflow_env(local_cloud, airflow_home, tests_folder=str(write_tests_folder(tmp_path)),
                                           specs_folder=str(specs)))
        [refresh] = refreshes(autoscaling, group)
    finally:
        local_cloud.configure(fail_instance_refreshes=[])
        remove_fleet(ec2, autoscaling, template, group)
    assert result.state == "failed" and result.task_states["roll_out"] == "failed"
    assert result.task_states["promote"] == "success" and result.task_states["tear_down"] == "success"
    [image] = find_images(ec2, build_id_for(name, result.run_id))
    latest = f"/image-factory/{name}/latest"
    assert ssm.get_parameter(Name=latest)["Parameter"]["Value"] == image["ImageId"]  # it passed its tests: it stays
    assert refresh["Status"] == "Failed"
    assert (f"rollout failed: Auto Scaling group {group}: instance refresh {refresh['InstanceRefreshId']} Failed"
            in result.task_logs["roll_out"])
    ssm.delete_parameter(Name=latest)
    ec2.deregister_image(ImageId=image["ImageId"])


def test_a_spec_without_tests_builds_an_untested_image_and_says_so(local_cloud, airflow_home, ec2, ssm, tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "untested.yaml").write_text(f"image:\n  name: untested-image\n  origin: resolve:ssm:{AL2023}\n"
                                         "  region: eu-west-1\n")
    result = run_dag("untested-image", airflow_env(local_cloud, airflow_home, specs_folder=str(specs)))
    assert result.succeeded, result.output[-5000:]
    assert "promote" not in result.task_states and "test_image" not in result.task_states
    assert "the spec has no test section" in result.task_logs["register_image"]
    build_id = build_id_for("untested-image", result.run_id)
    [image] = find_images(ec2, build_id)
    assert tag_dict(image["Tags"])[TAG_TESTS] == "untested"
    assert [tag_dict(i["Tags"])[TAG_INSTANCE] for i in instances_of(ec2, build_id)] == ["builder"]
    assert builder_resources(ec2, ssm, build_id) == []
    ec2.deregister_image(ImageId=image["ImageId"])


#: The test stage's fail points: its launch, the boot's wait, SSH, the tests, the result's tags, the channel.
TEST_STAGE_FAULTS = ["before:test-launch", "after:test-launch", "before:test-ssh", "after:test-ssh", "after:tests",
                     "before:test-record", "before:channel", "after:channel"]


def test_transient_faults_in_the_test_stage_are_retried_with_one_test_instance(local_cloud, airflow_home, ec2, ssm,
                                                                               tmp_path):
    """Every fail point of the test stage once (each retried): the run succeeds with one test instance, and the
    channel moves to the tested image."""
    env = airflow_env(local_cloud, airflow_home, tests_folder=str(write_tests_folder(tmp_path)), retry_delay="1",
                      retries=str(len(TEST_STAGE_FAULTS) + 1),
                      specs_folder=str(spec_folder(tmp_path, "appserver", name="flaky-image")))
    env.update(IMAGE_FACTORY_FAULTS=",".join(f"{point}*once" for point in TEST_STAGE_FAULTS),
               IMAGE_FACTORY_FAULTS_STATE=str(tmp_path))
    local_cloud.reset_stats()
    result = run_dag("flaky-image", env)
    assert result.succeeded, result.output[-5000:]
    for point in TEST_STAGE_FAULTS:
        assert f"transient fault injected at {point}" in result.output
    build_id = build_id_for("flaky-image", result.run_id)
    [image] = find_images(ec2, build_id)
    assert sorted(tag_dict(i["Tags"])[TAG_INSTANCE] for i in instances_of(ec2, build_id)) == ["builder", "test"]
    assert local_cloud.stats()["calls"]["ec2:RunInstances"] == 2
    latest = ssm.get_parameter(Name="/image-factory/flaky-image/latest")["Parameter"]
    assert latest["Value"] == image["ImageId"] and tag_dict(image["Tags"])[TAG_TESTS] == "passed"
    assert builder_resources(ec2, ssm, build_id) == []
    ssm.delete_parameter(Name="/image-factory/flaky-image/latest")
    ec2.deregister_image(ImageId=image["ImageId"])


def test_permanent_faults_in_the_test_stage_leak_nothing_and_never_move_a_channel_to_an_untested_image(
        local_cloud, tmp_path_factory, ec2, ssm):
    homes = [tmp_path_factory.mktemp(f"airflow-lifecycle-{i}") for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda home: migrate(airflow_env(local_cloud, home)), homes))
    work = tmp_path_factory.mktemp("faults")
    tests = write_tests_folder(work)

    def run(job):
        number, point = job
        name = f"faulty-image-{number}"
        env = airflow_env(local_cloud, homes[number % 3], tests_folder=str(tests),
                          specs_folder=str(spec_folder(work / name, "appserver", name=name)))
        env["IMAGE_FACTORY_FAULTS"] = point
        return point, name, run_dag(name, env)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(run, enumerate(TEST_STAGE_FAULTS)))
    problems = []
    for point, name, result in results:
        build_id = build_id_for(name, result.run_id)
        left = builder_resources(ec2, ssm, build_id)
        parameter = f"/image-factory/{name}/latest"
        try:
            moved = ssm.get_parameter(Name=parameter)["Parameter"]["Value"]
        except ssm.exceptions.ParameterNotFound:
            moved = None
        images = {i["ImageId"]: tag_dict(i["Tags"]).get(TAG_TESTS) for i in find_images(ec2, build_id)}
        if result.state != "failed" or f"fault injected at {point}" not in result.output:
            problems.append(f"{point}: run {result.state}, fault fired: {'fault injected' in result.output}")
        if left:
            problems.append(f"{point}: left {left}")
        if moved and (point != "after:channel" or images.get(moved) != "passed"):
            problems.append(f"{point}: {parameter} moved to {moved} ({images.get(moved)})")
        for image_id in images:
            ec2.deregister_image(ImageId=image_id)
        if moved:
            ssm.delete_parameter(Name=parameter)
    leaked = sum(len(builder_resources(ec2, ssm, build_id_for(n, r.run_id))) for _, n, r in results)
    print(f"\ntest-stage faults: {len(results)} injected, {leaked} builder resources left, no channel on an "
          "untested image")
    assert problems == []


def test_the_command_line_shows_tests_channels_and_the_lineage(lifecycle, local_cloud, ec2):
    from tests.test_cli import cli_env, run_cli

    _, (image_id, _), _, _ = lifecycle
    env = cli_env(AIRFLOW_CONN_AWS_DEFAULT=local_cloud.env()["AIRFLOW_CONN_AWS_DEFAULT"])
    listed = run_cli("list", "lifecycle-image", "--region", "eu-west-1", env=env)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if line.startswith(image_id)]
    assert f"passed ({APPSERVER_TESTS}/{APPSERVER_TESTS})" in row and row.rstrip().endswith("latest")
    shown = run_cli("show", image_id, "--region", "eu-west-1", env=env)
    assert shown.returncode == 0, shown.stderr
    origin = tag_dict(ec2.describe_images(ImageIds=[image_id])["Images"][0]["Tags"])["image-factory:origin-ami"]
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"image {image_id}")
    assert "  spec: lifecycle-image" in lines and f"  tests: passed ({APPSERVER_TESTS}/{APPSERVER_TESTS})" in lines
    assert "  channels: latest" in lines
    assert any(line.startswith(f"  built from {origin}") for line in lines)
    assert any("root origin: owner" in line for line in lines)  # moto's own image: not built by Image Factory
