"""Real roles on real machines (issue 28): whole DAG runs on the local cloud, whose builder and test instances
boot systemd and cloud-init and get Debian's packages through the local cloud's mirror, as the security group
allows.

- An Ansible role as one is written for EC2 (include/ansible/shopspinner/roles/appserver: `become`, the apt
  module, a template, a handler) applied unchanged by the ``ansible`` tool; the image's test boot runs it.
- A spec whose builder may not reach the package mirror (``egress_ports: [443]``) fails in ``configure`` with
  apt's own error, and leaves nothing behind.

Each test has a specs folder of its own; what a run makes is read back from the emulator.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from image_factory.build import TAG_ROLE, build_id_for, tag_dict
from image_factory.inventory import builder_resources
from image_factory.steps.image import find as find_images
from localcloud.runner import airflow_env, run_dag
from tests.test_build_e2e import AL2023, instances_of, write_spec

PROJECT = Path(__file__).resolve().parents[1]
EXAMPLE = PROJECT / "include" / "examples" / "shopspinner-ansible-image.yaml"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local cloud's machines need root")


def test_an_ansible_role_installs_templates_and_restarts_a_service_and_the_image_runs_it(
        local_cloud, airflow_home, ec2, ssm, tmp_path):
    # The example spec as it is shipped, under a name of this test's.
    name = "real-ansible-image"
    text = EXAMPLE.read_text().replace("name: shopspinner-ansible-image", f"name: {name}")
    assert f"name: {name}" in text
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / f"{name}.yaml").write_text(text)
    # The instance is a machine of the local cloud: Debian's own Python 3 (no discovery round trip).
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(specs),
                      ansible_python_interpreter="/usr/bin/python3")
    channel = f"/image-factory/{name}/latest"
    try:
        result = run_dag(name, env, timeout=900)
        (tmp_path / "airflow-output.log").write_text(result.output)  # kept by pytest, for a failure's reader

        assert result.succeeded, result.task_logs.get("configure", result.output)[-8000:] + \
            result.task_logs.get("test_image", "")[-4000:]
        build_id = build_id_for(name, result.run_id)
        configure = result.task_logs["configure"]
        assert "configure: ansible-playbook applies role 'appserver'" in configure
        # The package from Debian's registry (through the mirror), with become; the templates; the handler.
        assert re.search(r"TASK \[[^\]]*appserver : Install the web server from Debian's registry\].*?\n.*?changed: "
                         r"\[builder\]", configure, re.S)
        assert re.search(r"TASK \[[^\]]*appserver : Write the application server's configuration\].*?\n.*?changed: "
                         r"\[builder\]", configure, re.S)
        assert re.search(r"RUNNING HANDLER \[[^\]]*appserver : Restart appserver\]", configure)
        assert "appserver role (ansible): done; port 8080 answers ShopSpinner appserver" in configure
        assert "PLAY RECAP" in configure and "failed=0" in configure

        # The tests on the image's own boot: the service active, its port, the templated configuration's effect.
        tests = result.task_logs["test_image"]
        for test in ("test_nginx_is_installed_from_debian", "test_the_application_server_runs_after_boot",
                     "test_it_answers_with_the_page_the_role_wrote",
                     "test_nginx_runs_the_workers_the_configuration_asks_for", "test_the_configuration_is_in_place"):
            assert re.search(rf"test passed: \S*test_appserver\.py::{test}\b", tests), test
        assert "test FAILED" not in tests
        assert (f"the application server answered on port 8080: ShopSpinner appserver | image {name} | "
                f"build {build_id}") in tests

        [image] = find_images(ec2, build_id)
        tags = tag_dict(image["Tags"])
        assert tags[TAG_ROLE] == "appserver"
        assert (tags["image-factory:tests"], tags["image-factory:tests-failed"]) == ("passed", "0")
        launched = {tag_dict(i["Tags"])["image-factory:instance"]: i for i in instances_of(ec2, build_id)}
        assert sorted(launched) == ["builder", "test"]
        assert launched["test"]["ImageId"] == image["ImageId"]
        assert all(i["State"]["Name"] == "terminated" for i in launched.values())
        assert [p["Value"] for p in ssm.get_parameters(Names=[channel])["Parameters"]] == [image["ImageId"]]
        assert builder_resources(ec2, ssm, build_id) == []
    finally:
        if ssm.get_parameters(Names=[channel])["Parameters"]:
            ssm.delete_parameter(Name=channel)


def test_a_builder_that_may_not_reach_the_mirror_fails_in_configure_with_apts_error_and_leaves_nothing(
        local_cloud, airflow_home, ec2, ssm, tmp_path):
    name = "real-no-mirror-image"
    write_spec(tmp_path / "specs", name, f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          ssh_key: ${{IMAGE_BUILDER_SSH_KEY}}
          egress_ports: [443]
          configure: {{tool: shell, server_role: appserver}}
          test: {{tool: testinfra, tests: appserver}}
        """)
    result = run_dag(name, airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs")),
                     timeout=900)
    (tmp_path / "airflow-output.log").write_text(result.output)  # kept by pytest, for a failure's reader

    assert result.exit_code != 0 and result.state == "failed"
    assert result.task_states["configure"] == "failed", result.output[-5000:]
    configure = result.task_logs["configure"]
    assert "appserver role: configuring" in configure  # the role ran, up to apt-get
    # apt's own errors: the mirror on the bridge, port 80, not reached; then no package to install.
    assert re.search(r"Failed to fetch http://deb\.debian\.org/\S+ +(Could not|Unable to) connect to \S+:80",
                     configure), configure[-5000:]
    assert "Unable to locate package nginx-light" in configure
    assert "appserver role: done" not in configure
    assert "register_image" not in result.task_states and "test_image" not in result.task_states
    assert result.task_states["tear_down"] == "success"
    build_id = build_id_for(name, result.run_id)
    assert find_images(ec2, build_id) == []
    assert [i["State"]["Name"] for i in instances_of(ec2, build_id)] == ["terminated"]
    assert builder_resources(ec2, ssm, build_id) == []
