"""docker-compose.yaml: the Airflow stack parses (`docker-compose config`) and keeps the project's choices."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"

SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "local-cloud",
    "local-cloud-ssh",
}
AIRFLOW_SERVICES = {name for name in SERVICES if name.startswith("airflow-")}
LOCAL_CLOUD_SERVICES = {"local-cloud", "local-cloud-ssh"}
PROJECT_MOUNTS = {"dags": "/opt/airflow/dags", "plugins": "/opt/airflow/plugins", "include": "/opt/airflow/include"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def docker_compose(*args: str, **env: str) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("the docker-compose binary is not installed (scripts/setup.sh installs it)")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW"))} | env
    return subprocess.run([binary, "-f", "docker-compose.yaml", *args], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("profile_args", [[], ["--profile", "local-cloud"]], ids=["default", "local-cloud"])
def test_compose_config_validates(profile_args):
    secret = secrets.token_urlsafe(64)
    result = docker_compose(*profile_args, "config", AIRFLOW__API_AUTH__JWT_SECRET=secret)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    for name in AIRFLOW_SERVICES:
        assert services[name]["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] == secret, name


def test_the_stack_does_not_start_without_a_jwt_secret_of_its_own():
    """A default in the file would be known to everyone: whoever reaches the api-server could sign tokens."""
    result = docker_compose("config")
    assert result.returncode != 0
    assert "set AIRFLOW__API_AUTH__JWT_SECRET in .env" in result.stderr


def test_services_exist(compose):
    missing = SERVICES - set(compose["services"])
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"
    for name in LOCAL_CLOUD_SERVICES:
        assert compose["services"][name]["profiles"] == ["local-cloud"], name


def test_executor_is_celery(compose):
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name in AIRFLOW_SERVICES:
        assert compose["services"][name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name


def test_project_folders_are_mounted(compose):
    for name in AIRFLOW_SERVICES:
        targets = {}
        for volume in compose["services"][name]["volumes"]:
            # "${AIRFLOW_PROJ_DIR:-.}/dags:/opt/airflow/dags:ro": the source itself may hold a colon.
            source, _, rest = volume.partition(":/")
            targets["/" + rest.split(":")[0]] = source
        for folder, target in PROJECT_MOUNTS.items():
            assert target in targets, f"{name} does not mount ./{folder} on {target}"
            assert targets[target].endswith(f"/{folder}"), (name, targets[target])


def test_published_ports_are_loopback_only(compose):
    published = 0
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name} publishes {port!r}"
    assert published, "no published ports found"


def test_local_cloud_ssh_asks_the_emulator(compose):
    """The SSH server trusts the builds' key pairs as localcloud/cloud.py's sshd does: it asks the emulator."""
    moto, ssh = compose["services"]["local-cloud"], compose["services"]["local-cloud-ssh"]
    port = moto["command"][moto["command"].index("-p") + 1]
    build = ssh["build"]
    dockerfile = REPO / build["dockerfile"]
    assert dockerfile.is_file(), dockerfile
    assert build["args"]["LOCAL_CLOUD_ENDPOINT"] == f"http://local-cloud:{port}"
    assert ssh["depends_on"]["local-cloud"]["condition"] == "service_healthy"
    assert "ports" not in ssh, "the SSH server is for the workers on the compose network only"
    text = dockerfile.read_text()
    assert "COPY localcloud/authorized_keys.py" in text
    assert "AuthorizedKeysCommand " in text and "PasswordAuthentication no" in text
    assert "AllowUsers ${SSH_USERNAME}" in text and build["args"]["SSH_USERNAME"] == "ec2-user"
    # The pinned boto3 the key lookup uses is the project's.
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().split() if "==" in line)
    assert f"boto3=={pins['boto3']}" in text


# --- the same settings as the Celery deployment the tests run (localcloud/deployment.py) -------------------------

def _same(compose_value, ours: str) -> bool:
    """Compose writes booleans as 'true'/'false', Airflow reads either case."""
    return str(compose_value).lower() == ours.lower()


def test_the_deployment_and_compose_share_the_executor_and_components(compose):
    from localcloud.airflow_stack import COMPONENTS
    from localcloud.deployment import EXECUTOR

    assert compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == EXECUTOR
    commands = {compose["services"][name]["command"] for name in AIRFLOW_SERVICES
                if isinstance(compose["services"][name].get("command"), str)}
    # The deployment runs the same components: the four of the stack, the triggerer among them, and workers.
    assert set(COMPONENTS) <= commands and "triggerer" in COMPONENTS
    assert "celery worker" in commands


def test_the_deployment_and_compose_share_the_pool(compose):
    from localcloud.airflow_stack import POOL
    from localcloud.deployment import POOL_SLOTS

    init = "\n".join(compose["services"]["airflow-init"]["command"])
    assert f"airflow pools set {POOL} {POOL_SLOTS} " in init


def test_the_deployment_and_compose_share_plugin_and_scheduler_settings(compose):
    from localcloud.airflow_stack import SHARED_SETTINGS
    from localcloud.runner import PLUGIN_SETTINGS

    environment = compose["x-airflow-common"]["environment"]
    for key, value in {**SHARED_SETTINGS, **PLUGIN_SETTINGS}.items():
        assert key in environment, f"docker-compose.yaml does not set {key}"
        assert _same(environment[key], value), (key, environment[key], value)


def test_the_deployment_and_compose_pass_the_same_image_factory_settings(compose):
    from localcloud.deployment import IMAGE_FACTORY_SETTINGS

    environment = compose["x-airflow-common"]["environment"]
    for name in IMAGE_FACTORY_SETTINGS:
        key = f"AIRFLOW__IMAGE_FACTORY__{name}"
        assert environment.get(key) == f"${{{key}:-}}", f"docker-compose.yaml does not pass {key} on from .env"
    assert "AIRFLOW_CONN_AWS_DEFAULT" in environment
    # Workers reach the api-server's Execution API, the broker and the database by address, as the deployment's.
    assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith("/execution/")
    assert environment["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert environment["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
