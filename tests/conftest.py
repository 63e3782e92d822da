"""Shared fixtures: one local cloud (moto and its front on 127.0.0.1; its instances real machines, see
localcloud/machines.py) and one Airflow home per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import boto3
import pytest

PROJECT = Path(__file__).resolve().parents[1]

# Airflow reads its configuration when first imported: give this process a home of its own before that.
_HOME = Path(tempfile.mkdtemp(prefix="image-factory-tests-"))
os.environ["AIRFLOW_HOME"] = str(_HOME / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"

from localcloud.cloud import LocalCloud  # noqa: E402
from localcloud.runner import airflow_env, migrate  # noqa: E402

REGION = "eu-west-1"


@pytest.fixture(scope="session")
def local_cloud():
    cloud = LocalCloud(_HOME / "local-cloud")
    cloud.up()
    yield cloud
    cloud.down()


@pytest.fixture(scope="session")
def airflow_home(local_cloud) -> Path:
    home = _HOME / "airflow-runs"
    migrate(airflow_env(local_cloud, home))
    return home


@pytest.fixture
def aws_connection(local_cloud, monkeypatch):
    """The local cloud's Airflow AWS connection, as the triggerer process has it."""
    for key, value in local_cloud.env().items():
        if key.startswith("AIRFLOW_CONN_"):
            monkeypatch.setenv(key, value)
    return "aws_default"


@pytest.fixture(scope="session")
def ec2(local_cloud):
    return _client("ec2", local_cloud)


@pytest.fixture(scope="session")
def ssm(local_cloud):
    return _client("ssm", local_cloud)


def _client(service: str, cloud: LocalCloud):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
