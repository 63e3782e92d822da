"""What an operator sees in the Airflow UI: the trigger form, docs, links, and rebuilds on a new origin."""

from __future__ import annotations

import contextlib
import sqlite3
import textwrap
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import ParamValidationError

from image_factory.build import TAG_COMPLETE, TAG_ORIGIN, TAG_SPEC
from image_factory.origin_watch import new_origin
from image_factory.parameters import ParameterError, apply_overrides, trigger_values
from image_factory.spec import load_spec, parse_spec
from localcloud.runner import airflow_env, migrate, run_dag

PROJECT = Path(__file__).resolve().parents[1]
LIVE = PROJECT / "include" / "specs" / "shopspinner-linux-image.yaml"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"


@pytest.fixture(scope="module")
def bag() -> DagBag:
    return DagBag(str(PROJECT / "dags"))


def test_trigger_form_has_typed_described_overrides_that_default_to_the_spec(bag):
    params = bag.dags["shopspinner-linux-image"].params
    for name in ("origin", "instance_size", "server_role", "extra_tags"):
        param = params.get_param(name)
        assert param.description, name
        assert param.schema["title"], name
    assert params.get_param("instance_size").schema["type"] == ["null", "string"]
    assert params.get_param("extra_tags").schema["type"] == "object"
    defaults = params.dump()
    assert defaults["origin"] is None and defaults["instance_size"] is None and defaults["server_role"] is None
    assert defaults["extra_tags"] == {}
    # A trigger with no form input builds exactly what the spec says.
    spec = load_spec(LIVE).image
    overrides, values = trigger_values(spec, defaults)
    assert overrides == {} and values == {}
    assert apply_overrides(spec, overrides) == spec


def test_overrides_change_the_spec_and_bad_ones_are_refused():
    spec = load_spec(LIVE).image
    changed = apply_overrides(spec, {"instance_size": "medium", "server_role": "webserver",
                                     "extra_tags": {"ticket": "OPS-1"}, "origin": "ami-0123456789abcdef0"})
    assert changed.instance_size == "medium"
    assert changed.configure.server_role == "webserver"
    assert changed.tags == {"team": "shopspinner", "ticket": "OPS-1"}
    assert changed.origin == "ami-0123456789abcdef0"
    with pytest.raises(ParameterError, match=r"image\.instance_size"):
        apply_overrides(spec, {"instance_size": "huge"})
    with pytest.raises(ParameterError, match=r"image\.configure\.server_role"):
        apply_overrides(spec, {"server_role": "../etc"})


def test_keep_on_failure_hours_from_the_form_is_a_whole_number_of_hours_0_to_24(bag):
    param = bag.dags["shopspinner-linux-image"].params.get_param("keep_on_failure_hours")
    assert param.resolve(None) is None and param.resolve(3) == 3
    for bad in (25, -1, "3; reboot"):  # the form refuses it (Airflow checks the field's schema)
        with pytest.raises(ParamValidationError, match=r"less than|greater|not of type"):
            param.resolve(bad)
    spec = load_spec(LIVE).image
    assert apply_overrides(spec, {"keep_on_failure_hours": 3}).keep_on_failure_hours == 3
    # The run's conf is not checked by the form: the build refuses it, naming the field.
    with pytest.raises(ParameterError, match=r"image\.keep_on_failure_hours: .*less than or equal to 24"):
        apply_overrides(spec, trigger_values(spec, {"keep_on_failure_hours": 25})[0])
    for bad in ("3", True, 1.5):
        with pytest.raises(ParameterError, match="'keep_on_failure_hours' is a whole number of hours"):
            apply_overrides(spec, trigger_values(spec, {"keep_on_failure_hours": bad})[0])


def test_dag_docs_tags_owner_and_console_links(bag):
    dag = bag.dags["shopspinner-linux-image"]
    assert "`appserver` applied with `shell`" in dag.doc_md
    assert "`0 2 * * *`" in dag.doc_md and "security group" in dag.doc_md
    assert {"image-build", "aws", "role:appserver"} <= set(dag.tags)
    assert {task.owner for task in dag.tasks} == {"image-factory"}
    for task_id, link in (("launch_builder_instance", "Builder instance"), ("register_image", "Image")):
        assert [lk.name for lk in dag.get_task(task_id).operator_extra_links] == [link]
    # The image's events fire when it is promoted (tested), not when it is registered.
    assert dag.get_task("register_image").outlets == []
    assert sorted(o.uri for o in dag.get_task("promote").outlets) == [
        "image-factory://images/shopspinner-linux-image", "image-factory://images/shopspinner-linux-image/latest"]


def write_watched_spec(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          schedule: "@daily"
          rebuild_on_origin_change: true
        """))
    return path


def test_a_spec_can_rebuild_when_its_origin_changes(tmp_path, monkeypatch):
    write_watched_spec(tmp_path / "specs", "watched-image")
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER", str(tmp_path / "specs"))
    bag = DagBag(str(PROJECT / "dags"))
    dag = bag.dags["watched-image"]
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert "image-factory://origins/watched-image" in str(dag.timetable.asset_condition)
    watch = bag.dags["image_factory_origin_watch"]
    assert watch.task_ids == ["watch_watched-image"]


def test_new_origin_compares_with_the_origin_of_the_newest_complete_image(ec2, ssm):
    spec = parse_spec(f"image:\n  name: origin-watch-test\n  origin: resolve:ssm:{AL2023}\n  region: eu-west-1\n")
    current = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    assert new_origin(ec2, ssm, spec) == current  # nothing built yet
    reservation = ec2.run_instances(ImageId=current, MinCount=1, MaxCount=1, InstanceType="t3.small")
    instance_id = reservation["Instances"][0]["InstanceId"]
    image_id = ec2.create_image(InstanceId=instance_id, Name="origin-watch-test-1", TagSpecifications=[{
        "ResourceType": "image", "Tags": [{"Key": TAG_SPEC, "Value": "origin-watch-test"},
                                          {"Key": TAG_ORIGIN, "Value": current},
                                          {"Key": TAG_COMPLETE, "Value": "true"}]}])["ImageId"]
    try:
        assert new_origin(ec2, ssm, spec) is None  # built from the current origin already
        ec2.create_tags(Resources=[image_id], Tags=[{"Key": TAG_ORIGIN, "Value": "ami-00000000000000000"}])
        assert new_origin(ec2, ssm, spec) == current  # the vendor moved the parameter on
    finally:
        ec2.deregister_image(ImageId=image_id)
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_origin_watch_announces_a_new_origin_once(local_cloud, tmp_path):
    write_watched_spec(tmp_path / "specs", "watched-image")
    home = tmp_path / "airflow"
    env = airflow_env(local_cloud, home, specs_folder=str(tmp_path / "specs"))
    migrate(env)

    first = run_dag("image_factory_origin_watch", env)
    second = run_dag("image_factory_origin_watch", env)

    assert first.succeeded and second.succeeded
    db = f"file:{home / 'airflow.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(db, uri=True)) as conn:
        events = conn.execute("SELECT e.extra, e.source_run_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                              "WHERE a.uri = 'image-factory://origins/watched-image'").fetchall()
    assert [run for _, run in events] == [first.run_id]  # the second run saw it announced and stayed quiet
    assert "was announced already" in second.output
