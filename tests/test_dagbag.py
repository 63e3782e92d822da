"""The DAG folder, loaded the way Airflow loads it."""

from __future__ import annotations

import itertools
from pathlib import Path

from airflow.dag_processing.dagbag import DagBag

from image_factory.spec import load_specs

PROJECT = Path(__file__).resolve().parents[1]
STEPS = ["create_builder_network", "launch_builder_instance", "configure", "register_image", "tear_down"]


def image_build_dags(bag: DagBag) -> list[str]:
    return sorted(dag_id for dag_id, dag in bag.dags.items() if "image-build" in dag.tags)


def test_one_dag_per_live_spec_with_the_five_steps_in_order():
    bag = DagBag(str(PROJECT / "dags"))
    assert bag.import_errors == {}
    specs, errors = load_specs(PROJECT / "include" / "specs")
    assert errors == []
    assert image_build_dags(bag) == sorted(s.name for s in specs)
    assert "shopspinner-linux-image" in bag.dag_ids
    for dag_id in image_build_dags(bag):
        dag = bag.dags[dag_id]
        # The brief's five steps in their order; the image's lifecycle after register_image.
        assert [t.task_id for t in dag.tasks if t.task_id in STEPS] == STEPS
        assert [t.task_id for t in dag.tasks] == [*STEPS[:4], "test_image", "promote", "tear_down"]
        setup_task, teardown_task = dag.get_task("create_builder_network"), dag.get_task("tear_down")
        assert setup_task.is_setup and not setup_task.is_teardown
        assert teardown_task.is_teardown
        assert setup_task.task_id in teardown_task.upstream_task_ids  # tied to its setup
        assert [t.task_id for t in dag.tasks if t.is_setup] == ["create_builder_network"]
        # The teardown also runs when the setup fails half-way (a teardown's own rule would skip it).
        assert teardown_task.trigger_rule == "all_done"
        assert [t.task_id for t in dag.tasks if t.is_teardown] == ["tear_down"]
        # The order of the steps: each step's downstream chain reaches the next one.
        for earlier, later in itertools.pairwise(STEPS):
            assert later in dag.get_task(earlier).get_flat_relative_ids(upstream=False)
        # The teardown waits for the test instance, not for the promotion (nor an approval, see below).
        assert teardown_task.upstream_task_ids == {"register_image", "test_image", "create_builder_network"}
        assert "tear_down" not in dag.get_task("promote").get_flat_relative_ids(upstream=False)
        # A failing step fails the run: the teardown does not count for the run's state.
        assert not teardown_task.on_failure_fail_dagrun


def test_spec_schedule_and_tags_reach_the_dag():
    bag = DagBag(str(PROJECT / "dags"))
    dag = bag.dags["shopspinner-linux-image"]
    assert dag.timetable.expression == "0 2 * * *"
    assert {"image-build", "aws", "role:appserver"} <= set(dag.tags)
    assert dag.catchup is False


def test_broken_specs_show_as_import_errors_and_good_specs_still_load(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    good = (PROJECT / "include" / "specs" / "shopspinner-linux-image.yaml").read_text()
    (specs / "good.yaml").write_text(good)
    typo = good.replace("shopspinner-linux-image", "typo-image").replace("region:", "regoin:")
    (specs / "typo.yaml").write_text(typo)
    (specs / "broken.yaml").write_text("image: [unclosed\n")
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER", str(specs))

    bag = DagBag(str(PROJECT / "dags"))

    assert image_build_dags(bag) == ["shopspinner-linux-image"]
    assert list(bag.import_errors) == [str(PROJECT / "dags" / "image_spec_errors.py")]
    shown = next(iter(bag.import_errors.values()))
    assert "2 image spec(s) not loaded" in shown
    assert f"{specs / 'typo.yaml'}: image.regoin: unknown key (did you mean 'region'?)" in shown
    assert f"{specs / 'broken.yaml'}: line 2" in shown


def test_a_folder_or_a_broken_link_named_like_a_spec_costs_only_itself(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "good.yaml").write_text((PROJECT / "include" / "specs" / "shopspinner-linux-image.yaml").read_text())
    (specs / "folder.yaml").mkdir()
    (specs / "dangling.yml").symlink_to(specs / "nowhere.yaml")
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER", str(specs))

    bag = DagBag(str(PROJECT / "dags"))

    assert image_build_dags(bag) == ["shopspinner-linux-image"]
    assert list(bag.import_errors) == [str(PROJECT / "dags" / "image_spec_errors.py")]
    shown = next(iter(bag.import_errors.values()))
    assert "2 image spec(s) not loaded" in shown
    assert f"{specs / 'folder.yaml'}: image: a folder" in shown
    assert f"{specs / 'dangling.yml'}: image: a symbolic link" in shown


def test_an_approval_and_a_base_image_shape_the_dag(tmp_path, monkeypatch):
    """The example built on another spec's channel, with an approval: scheduled on that channel's promotions,
    the approval between the two promotions, the teardown held up by neither."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    specs = tmp_path / "specs"
    specs.mkdir()
    for source in (PROJECT / "include" / "specs" / "shopspinner-linux-image.yaml",
                   PROJECT / "include" / "examples" / "shopspinner-webapp-image.yaml"):
        (specs / source.name).write_text(source.read_text())
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER", str(specs))
    bag = DagBag(str(PROJECT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["shopspinner-webapp-image"]
    assert [t.task_id for t in dag.tasks] == [*STEPS[:4], "test_image", "promote", "approve_promotion",
                                              "promote_approved", "tear_down"]
    approval = dag.get_task("approve_promotion")
    assert isinstance(approval, ApprovalOperator)
    assert approval.upstream_task_ids == {"test_image", "promote"}
    assert approval.response_timeout.total_seconds() == 72 * 3600 and approval.defaults == ["Reject"]
    assert dag.get_task("promote_approved").upstream_task_ids >= {"approve_promotion"}
    assert dag.get_task("tear_down").upstream_task_ids == {"register_image", "test_image", "create_builder_network"}
    # Rebuilt when the base spec's `latest` moves: an asset event, no polling.
    assert dag.timetable.asset_condition.uri == "image-factory://images/shopspinner-linux-image/latest"
    outlets = {t.task_id: sorted(a.uri for a in t.outlets) for t in dag.tasks if t.outlets}
    assert outlets == {"promote": ["image-factory://images/shopspinner-webapp-image",
                                   "image-factory://images/shopspinner-webapp-image/latest"],
                       "promote_approved": ["image-factory://images/shopspinner-webapp-image",
                                            "image-factory://images/shopspinner-webapp-image/production"]}


def test_a_spec_without_tests_has_exactly_the_five_steps(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "plain.yaml").write_text("image:\n  name: plain-image\n  origin: ami-0123456789abcdef0\n"
                                      "  region: eu-west-1\n  subnet: ${IMAGE_BUILDER_SUBNET_ID}\n")
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER", str(specs))
    bag = DagBag(str(PROJECT / "dags"))
    dag = bag.dags["plain-image"]
    assert [t.task_id for t in dag.tasks] == STEPS
    assert dag.get_task("tear_down").upstream_task_ids == {"register_image", "create_builder_network"}


def test_retention_runs_daily_and_after_each_promotion_of_a_spec_with_retention():
    bag = DagBag(str(PROJECT / "dags"))
    dag = bag.dags["image_factory_retention"]
    assert [t.task_id for t in dag.tasks] == ["retire_images"]
    assert dag.timetable.timetable.expression == "0 3 * * *"
    # The shipped spec, the only one, has a retention section: its promotions (its image asset) start a run too.
    assert dag.timetable.asset_condition.uri == "image-factory://images/shopspinner-linux-image"


def test_a_distributing_spec_copies_after_the_tests_and_before_the_channels(tmp_path, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    source = PROJECT / "include" / "examples" / "shopspinner-global-image.yaml"
    (specs / source.name).write_text(source.read_text())
    monkeypatch.setenv("AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER", str(specs))
    bag = DagBag(str(PROJECT / "dags"))
    assert bag.import_errors == {}
    dag = bag.dags["shopspinner-global-image"]
    assert [t.task_id for t in dag.tasks] == [*STEPS[:4], "test_image", "distribute_image", "promote", "tear_down"]
    assert dag.get_task("distribute_image").upstream_task_ids == {"create_builder_network", "register_image",
                                                                  "test_image"}
    assert "distribute_image" in dag.get_task("promote").upstream_task_ids
    # The teardown waits for the copies: it removes those left half-made.
    assert dag.get_task("tear_down").upstream_task_ids == {"register_image", "test_image", "distribute_image",
                                                           "create_builder_network"}
