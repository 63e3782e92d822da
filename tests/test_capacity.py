"""Instance-type fallback (issue 31): ``instance_size`` may be a list in order of preference; when RunInstances
answers InsufficientInstanceCapacity (or Unsupported), the next type is tried; with every type refused, the build
fails with the capacity error (permanent: no Airflow retries). The local cloud's front refuses chosen types as a
zone without capacity would (``LocalCloud.configure(insufficient_capacity=[...])``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import textwrap

import pytest

from image_factory.build import build_id_for, tag_dict
from image_factory.inventory import builder_resources
from image_factory.parameters import ParameterError, apply_overrides
from image_factory.spec import SpecError, instance_type, instance_types, parse_spec
from localcloud.runner import airflow_env, run_dag

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def spec_text(name: str, sizes: str, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          instance_size: {sizes}
        """) + extra


# --- without a cloud -------------------------------------------------------------------------------------------

def test_a_list_of_sizes_is_tried_in_order_and_bad_lists_are_refused_naming_the_field():
    spec = parse_spec(spec_text("capacity-image", "[small, t3a.small, m6i.large]"))
    assert instance_types(spec.instance_size) == ["t3.small", "t3a.small", "m6i.large"]
    assert instance_type(spec.instance_size) == "t3.small, then t3a.small, then m6i.large"
    for sizes, problem in [("[]", "image.instance_size: expected at least one instance size or type"),
                           ("[small, 'not a type']", "image.instance_size: [1] 'not a type': expected one of small"),
                           ("[small, t3.small]", "image.instance_size: instance type 't3.small' named twice"),
                           ("[small, 3]", "image.instance_size[1]: Input should be a valid string")]:
        with pytest.raises(SpecError) as raised:
            parse_spec(spec_text("capacity-image", sizes))
        assert problem in str(raised.value), str(raised.value)
    tested = parse_spec(spec_text("capacity-image", "small", "  test: {tool: testinfra, tests: appserver, "
                                                            "instance_size: [medium, m6i.large]}\n"))
    assert instance_types(tested.test.instance_size) == ["t3.medium", "m6i.large"]


def test_the_trigger_forms_override_stays_one_value():
    spec = parse_spec(spec_text("capacity-image", "[small, t3a.small]"))
    assert apply_overrides(spec, {"instance_size": "large"}).instance_size == "large"
    with pytest.raises(ParameterError, match="'instance_size' is one size or instance type"):
        apply_overrides(spec, {"instance_size": ["large", "m6i.large"]})


# --- on the local cloud -----------------------------------------------------------------------------------------

def instances_of(ec2, build_id: str) -> list[dict]:
    reservations = ec2.describe_instances(Filters=[{"Name": "tag:image-factory:build-id", "Values": [build_id]}])
    return [i for r in reservations["Reservations"] for i in r["Instances"]]


@pytest.fixture
def no_capacity_for_t3_small(local_cloud):
    local_cloud.configure(insufficient_capacity=["t3.small"])
    try:
        yield
    finally:
        local_cloud.configure(insufficient_capacity=[])


def test_a_refused_type_falls_back_to_the_next_of_the_list(local_cloud, airflow_home, ec2, ssm, tmp_path,
                                                           no_capacity_for_t3_small):
    specs = tmp_path / "specs"
    specs.mkdir()
    name = "capacity-fallback-image"
    (specs / f"{name}.yaml").write_text(spec_text(name, "[small, t3a.small]"))
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(specs))
    local_cloud.reset_stats()
    result = run_dag(name, env)

    assert result.succeeded, result.output[-3000:]
    build_id = build_id_for(name, result.run_id)
    [builder] = instances_of(ec2, build_id)
    assert builder["InstanceType"] == "t3a.small"  # as the emulator has it
    launch_log = result.task_logs["launch_builder_instance"]
    assert "builder instance: t3.small refused (InsufficientInstanceCapacity" in launch_log
    assert "builder instance runs as t3a.small (t3.small refused: t3.small: InsufficientInstanceCapacity)" in launch_log
    # RunInstances was called twice: once refused (no botocore retries of the 500), once launched.
    assert local_cloud.stats()["calls"]["ec2:RunInstances"] == 2
    with contextlib.closing(sqlite3.connect(f"file:{airflow_home / 'airflow.db'}?mode=ro", uri=True)) as db:
        (value,), = db.execute("SELECT value FROM xcom WHERE run_id = ? AND task_id = 'register_image' "
                               "AND key = 'return_value'", (result.run_id,)).fetchall()
    summary = json.loads(value)
    assert summary["instance_type"] == "t3a.small"
    [refused] = summary["instance_types_refused"]
    assert (refused["instance_type"], refused["code"]) == ("t3.small", "InsufficientInstanceCapacity")
    assert tag_dict(builder["Tags"])["image-factory:instance"] == "builder"
    assert builder_resources(ec2, ssm, build_id) == []


def test_every_type_refused_fails_the_build_with_the_capacity_error(local_cloud, airflow_home, ec2, ssm, tmp_path,
                                                                    no_capacity_for_t3_small):
    specs = tmp_path / "specs"
    specs.mkdir()
    name = "capacity-none-image"
    (specs / f"{name}.yaml").write_text(spec_text(name, "[small]"))
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(specs))
    result = run_dag(name, env)

    assert result.state == "failed" and result.task_states["launch_builder_instance"] == "failed"
    assert result.task_states["tear_down"] == "success"
    launch_log = result.task_logs["launch_builder_instance"]
    assert "no capacity for the builder instance: AWS refused every instance type of the spec's list " \
           "(t3.small: InsufficientInstanceCapacity" in launch_log
    assert launch_log.count("CapacityError") >= 1 and "up_for_retry" not in launch_log.lower()
    build_id = build_id_for(name, result.run_id)
    assert instances_of(ec2, build_id) == []
    assert builder_resources(ec2, ssm, build_id) == []
