"""Shared fixtures: one local cloud (moto and its front on 127.0.0.1; its instances real machines, see
localcloud/machines.py) and one Airflow home per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
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

from image_factory import host_keys, remote  # noqa: E402
from image_factory.steps.infrastructure import _new_key  # noqa: E402
from localcloud.cloud import LocalCloud  # noqa: E402
from localcloud.machines import FAILED_BOOTS  # noqa: E402
from localcloud.runner import airflow_env, migrate  # noqa: E402

REGION = "eu-west-1"
_BOOTS_SEEN = pytest.StashKey[int]()


#: Files of minutes each (many builds), about longest first, those running several builds at once (lifecycle,
#: faults, deployment) between the others: `make test` gives them to its two workers first, so that the workers
#: end together instead of one running a long file alone at the end (pytest-xdist hands out files in collection
#: order with --no-loadscope-reorder).
LONG_FILES = ("test_lifecycle.py", "test_browser.py", "test_faults.py", "test_promotion.py", "test_deployment.py",
              "test_distribution.py", "test_sweeper.py", "test_trust.py", "test_build_e2e.py", "test_real_roles.py",
              "test_keep_on_failure.py", "test_operator_experience.py", "test_latency.py", "test_revocation.py",
              "test_rollout.py", "test_sbom.py", "test_ansible.py")


def pytest_collection_modifyitems(items):
    rank = {name: number for number, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests stay together


def _failed_boots() -> Path:
    return _HOME / "local-cloud" / FAILED_BOOTS


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[_BOOTS_SEEN] = _failed_boots().stat().st_size if _failed_boots().exists() else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report shows the boots of this process's local cloud that failed since its setup began,
    each with the end of its console (localcloud/machines.py writes them): a CI run's output is all there is."""
    report = yield
    if report.failed and _failed_boots().exists():
        with _failed_boots().open("rb") as file:
            file.seek(item.stash.get(_BOOTS_SEEN, 0))
            if failed := file.read().decode(errors="replace"):
                report.sections.append(("machines that failed to boot", failed))
    return report


def pytest_sessionfinish(session):
    """This process's home (the local cloud's state and logs, the Airflow homes) goes once its tests passed (after
    the session's fixtures, the local cloud's down); kept, and named, when one failed: what to read."""
    if session.testsfailed:
        print(f"\nthe failed session's local cloud and Airflow homes are kept in {_HOME}")
    else:
        shutil.rmtree(_HOME, ignore_errors=True)


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


@pytest.fixture(scope="module")
def machine(local_cloud, ec2):
    """A running machine of the local cloud that lets SSH in from the provisioner CIDR: (instance id, address,
    the login key)."""
    private_key, public_key = _new_key()
    name = f"ssh-machine-{time.time_ns()}"
    ec2.import_key_pair(KeyName=name, PublicKeyMaterial=public_key.encode())
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group = ec2.create_security_group(GroupName=name, Description="ssh", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": local_cloud.env()["AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR"]}]}])
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, KeyName=name,
                                 SecurityGroupIds=[group])["Instances"][0]
    try:
        remote.wait_until_ready(instance["PrivateIpAddress"], 22, "ec2-user", private_key, timeout=60, interval=0.5)
        # As a build waits: cloud-init prints the host keys it made on the console at the end of the first boot.
        deadline = time.monotonic() + 60
        while not host_keys.from_console(ec2, instance["InstanceId"]):
            assert time.monotonic() < deadline, f"no host keys on the console of {instance['InstanceId']} after 60 s"
            time.sleep(0.2)
        yield instance["InstanceId"], instance["PrivateIpAddress"], private_key
    finally:
        ec2.terminate_instances(InstanceIds=[instance["InstanceId"]])
        ec2.get_waiter("instance_terminated").wait(InstanceIds=[instance["InstanceId"]],
                                                   WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        ec2.delete_security_group(GroupId=group)
        ec2.delete_key_pair(KeyName=name)


def _client(service: str, cloud: LocalCloud):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
