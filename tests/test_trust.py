"""A trigger user changes inputs, never code: trigger values are data, and an override of what goes into the
image (origin, server role) moves no channel on its own. Each test is an attack that worked before.

The DAG runs are real (`airflow dags test` on the local cloud); what they left is read back from the emulator
and from every file of the Airflow home (task logs, the metadata database with its XComs and rendered fields).
"""

from __future__ import annotations

import json
import secrets
import textwrap
from pathlib import Path

import pytest

from image_factory import approval, inventory
from image_factory.build import TAG_OVERRIDDEN, TAG_TESTS, build_id_for, tag_dict
from image_factory.catalog import _statuses
from image_factory.inventory import builder_resources
from image_factory.parameters import ParameterError, apply_overrides, resolve, trigger_values
from image_factory.spec import parse_spec
from image_factory.steps.image import find as find_images
from image_factory.ui import trigger_params
from localcloud.runner import airflow_env, migrate, run_dag

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


def spec_text(name: str, *extra: str, promote: str = "promote: {channels: [latest]}") -> str:
    return textwrap.dedent(f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          ssh_key: ${{IMAGE_BUILDER_SSH_KEY}}
          configure: {{tool: shell, server_role: appserver}}
          test: {{tool: testinfra, tests: appserver}}
          {promote}
        """) + "".join(f"  {line}\n" for line in extra)


# --- trigger values are data ------------------------------------------------------------------------------

@pytest.mark.parametrize(("trigger", "field"), [
    ({"extra_tags": {"x": "${AIRFLOW__CORE__FERNET_KEY}"}}, "extra_tags.x"),
    ({"extra_tags": {"${AIRFLOW__CORE__FERNET_KEY}": "x"}}, "extra_tags (a key)"),
    ({"server_role": "${AIRFLOW__CORE__FERNET_KEY}"}, "server_role"),
    ({"origin": "${AIRFLOW__CORE__FERNET_KEY}"}, "origin"),
    ({"instance_size": "${AIRFLOW__CORE__FERNET_KEY}"}, "instance_size"),
    ({"ROLE": "${AIRFLOW__CORE__FERNET_KEY}"}, "ROLE"),  # a declared parameter's field
])
def test_a_trigger_value_is_never_resolved_and_the_error_names_the_field_not_the_value(trigger, field):
    spec = parse_spec(spec_text("trust-image").replace("server_role: appserver", "server_role: '${ROLE}'"))
    with pytest.raises(ParameterError) as raised:
        trigger_values(spec, trigger)
    assert f"trigger field {field!r}" in str(raised.value)
    assert "FERNET" not in str(raised.value)


def test_a_spec_parameter_still_resolves_from_the_trigger_variables_and_the_environment():
    spec = parse_spec(spec_text("trust-image").replace("server_role: appserver", "server_role: '${ROLE}'"))
    overrides, values = trigger_values(spec, {"ROLE": "webapp", "NOT_DECLARED": "x", "instance_size": None})
    assert overrides == {} and values == {"ROLE": "webapp"}  # a key the spec does not declare is not taken
    assert resolve(spec, values.get, ("configure",)).configure.server_role == "webapp"
    assert resolve(spec, {"ROLE": "from-the-environment"}.get, ("configure",)).configure.server_role == (
        "from-the-environment")


def test_a_resolved_value_is_never_quoted_in_an_error():
    spec = parse_spec(spec_text("trust-image").replace("region: eu-west-1", "region: ${REGION}"))
    secret = "s3cr3t-" + secrets.token_hex(8)
    with pytest.raises(ParameterError) as raised:
        resolve(spec, {"REGION": secret}.get, ("region",))
    assert "image.region" in str(raised.value) and "expected an AWS region" in str(raised.value)
    assert secret not in str(raised.value)


def test_a_spec_may_restrict_overrides_and_the_form_offers_only_those():
    spec = parse_spec(spec_text("trust-image", "overrides: [instance_size]"))
    assert set(trigger_params(spec)) == {"instance_size"}
    assert apply_overrides(spec, {"instance_size": "medium"}).instance_size == "medium"
    with pytest.raises(ParameterError, match="does not let a trigger override origin, server_role"):
        apply_overrides(spec, trigger_values(spec, {"origin": "ami-0123456789abcdef0", "server_role": "x"})[0])
    everything = parse_spec(spec_text("trust-image"))
    assert set(trigger_params(everything)) == {"origin", "instance_size", "server_role", "extra_tags",
                                               "keep_on_failure_hours"}


# --- what a person sees of an overridden image -------------------------------------------------------------

def test_the_approval_shows_the_override_in_bold():
    text = approval.text(["production"], {"image_id": "ami-1", "overridden": {"origin": "ami-0123456789abcdef0"}},
                         {"status": "passed", "passed": 3}, None, None)
    assert "| **overridden by the trigger** | **origin `ami-0123456789abcdef0` (not the spec's)** |" in text
    assert "overridden" not in approval.text(["production"], {"image_id": "ami-1"}, {}, None, None)


def test_overridden_images_and_tags_that_do_not_parse_are_shown_as_they_are():
    tags = {TAG_TESTS: "passed", "image-factory:tests-passed": "lots", TAG_OVERRIDDEN: "origin"}
    assert inventory.tests_summary(tags) == "passed (tests-passed='lots', tests-failed='0')"
    assert "overridden" in _statuses(tags, [], False, "keep")
    assert inventory.tests_summary({TAG_TESTS: "passed", "image-factory:tests-passed": "3"}) == "passed (3/3)"


# --- real DAG runs -------------------------------------------------------------------------------------------

def everything_written(home: Path) -> bytes:
    """Every byte the Airflow home holds: task logs, the metadata database (XComs, rendered fields, runs)."""
    return b"".join(path.read_bytes() for path in sorted(home.rglob("*")) if path.is_file())


def all_tags(ec2) -> list[str]:
    found = []
    for page in ec2.get_paginator("describe_tags").paginate():
        found += [f"{t['Key']}={t['Value']}" for t in page["Tags"]]
    return found


@pytest.fixture
def specs_home(local_cloud, tmp_path):
    specs = tmp_path / "specs"
    specs.mkdir()
    home = tmp_path / "airflow"
    return specs, home


def test_a_trigger_that_names_a_worker_secret_leaks_it_nowhere(local_cloud, specs_home, ec2, ssm):
    specs, home = specs_home
    (specs / "trust-secret-image.yaml").write_text(spec_text("trust-secret-image"))
    secret = "worker-secret-" + secrets.token_hex(12)
    env = {**airflow_env(local_cloud, home, specs_folder=str(specs)), "IF_TRUST_SECRET": secret}
    migrate(env)

    runs = [run_dag("trust-secret-image", env, conf=json.dumps(conf)) for conf in (
        {"extra_tags": {"x": "${IF_TRUST_SECRET}"}}, {"server_role": "${IF_TRUST_SECRET}"},
        {"origin": "${IF_TRUST_SECRET}"})]

    for run, field in zip(runs, ("extra_tags.x", "server_role", "origin"), strict=True):
        assert not run.succeeded
        assert run.task_states.get("create_builder_network") == "failed"
        assert f"trigger field {field!r}: '${{' is not allowed" in run.task_logs["create_builder_network"]
        assert secret not in run.output
        assert builder_resources(ec2, ssm, build_id_for("trust-secret-image", run.run_id)) == []
    assert secret.encode() not in everything_written(home)
    assert not [tag for tag in all_tags(ec2) if secret in tag]


@pytest.mark.parametrize("allowed", [False, True], ids=["channel-stays", "spec-allows-overrides"])
def test_an_origin_override_moves_no_channel_unless_the_spec_allows_it(local_cloud, specs_home, ec2, ssm,
                                                                       allowed):
    specs, home = specs_home
    name = f"trust-override-{'allowed' if allowed else 'refused'}"
    promote = "promote: {channels: [latest], allow_overrides: true}" if allowed else "promote: {channels: [latest]}"
    (specs / f"{name}.yaml").write_text(spec_text(name, promote=promote))
    env = airflow_env(local_cloud, home, specs_folder=str(specs))
    migrate(env)
    # An image of the trigger user's choosing that passes the spec's tests: here, the origin itself by its id.
    chosen = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    channel = f"/image-factory/{name}/latest"
    try:
        run = run_dag(name, env, conf=json.dumps({"origin": chosen}))

        assert run.succeeded, run.output[-3000:]
        assert run.task_states["test_image"] == "success"
        build_id = build_id_for(name, run.run_id)
        [image] = find_images(ec2, build_id)
        tags = tag_dict(image["Tags"])
        assert tags[TAG_OVERRIDDEN] == "origin" and tags["image-factory:origin-ami"] == chosen
        parameter = ssm.get_parameters(Names=[channel])["Parameters"]
        if allowed:
            assert [p["Value"] for p in parameter] == [image["ImageId"]]
        else:
            assert parameter == []
            assert "no channel moves: this run's trigger overrode origin" in run.output
    finally:
        if ssm.get_parameters(Names=[channel])["Parameters"]:
            ssm.delete_parameter(Name=channel)
