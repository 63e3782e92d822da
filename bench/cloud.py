"""The local cloud as the build benchmarks (build-latency, lifecycle, concurrency) set it up and read it: AWS-like
state-change times (localcloud/proxy.py emulates them), one region, clients of moto itself (the benchmark's own
reads, not counted by the front), the emulator warmed up before anything is timed, and every resource it holds
(what a run leaves behind)."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import boto3

from localcloud.cloud import LocalCloud

REGION = "eu-west-1"
AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
#: Seconds the local cloud takes to boot, stop, make an image and terminate, as AWS about does.
LATENCY = {"instance_running": 20, "instance_stopped": 5, "image_available": 30, "instance_terminated": 5}
#: No build can have its image sooner: boot, stop, image.
MINIMUM = LATENCY["instance_running"] + LATENCY["instance_stopped"] + LATENCY["image_available"]
#: The poll interval the builds are given where a benchmark fixes one (seconds).
POLL = 2
BUILD_TAG = "image-factory:build-id"
COMPLETE_TAG = "image-factory:complete"
#: The channels (SSM parameters) of promoted images live under it: outputs of a build, not leftovers.
CHANNEL_PREFIX = "/image-factory"


@contextmanager
def fresh_cloud(prefix: str, regions: str = REGION, keep_work: bool = False, **options):
    """A work folder and a local cloud in it (``options`` for LocalCloud), up in ``regions`` only (the local
    sshd's key lookup asks every region at each login): yields (work, cloud). The cloud goes down after; the
    folder goes too once the run succeeded (unless ``keep_work``), and is kept with its logs when it failed."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    cloud = LocalCloud(work / "local-cloud", **options)
    cloud.up(regions=regions)
    try:
        yield work, cloud
    finally:
        cloud.down()
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)


def client(cloud: LocalCloud, service: str, region: str = REGION, counted: bool = False):
    """A client of moto itself, behind the counting front, so that the benchmark's own reads are not counted;
    ``counted``: of the front, as a build's calls are."""
    return boto3.client(service, endpoint_url=cloud.endpoint if counted else cloud.moto_endpoint,
                        region_name=region, aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # noqa: S106 emulator


def warm_up(cloud: LocalCloud) -> str:
    """The origin AMI, resolved in the emulator itself (moto, not counted) before either side is timed, and
    an instance with an encrypted root volume launched and terminated there: the emulator's first-call costs
    (loading its public parameters and images, its first encrypted volume: 0.1-0.3 s) fall on neither side."""
    ec2 = client(cloud, "ec2")
    source_ami = client(cloud, "ssm").get_parameter(Name=AL2023)["Parameter"]["Value"]
    root = ec2.describe_images(ImageIds=[source_ami])["Images"][0]["RootDeviceName"]
    instance = ec2.run_instances(ImageId=source_ami, MinCount=1, MaxCount=1, BlockDeviceMappings=[
        {"DeviceName": root, "Ebs": {"Encrypted": True, "VolumeSize": 8}}])["Instances"][0]["InstanceId"]
    ec2.terminate_instances(InstanceIds=[instance])
    return source_ami


def available_after(cloud: LocalCloud, image_id: str, started_wall: float) -> float:
    """Seconds from the start to the moment the local cloud shows the image available (its CreateImage answer
    plus the emulated image time): the same clock for both sides, whatever their polling."""
    return cloud.stats()["changes"][image_id]["done"] - started_wall


# --- what the cloud holds ------------------------------------------------------------------------------------


def inventory(cloud: LocalCloud) -> dict[str, set[str]]:
    """Every resource of the local cloud, by kind, in every region it serves (read from moto, not counted)."""
    found: dict[str, set[str]] = {}

    def add(kind: str, ids) -> None:
        found.setdefault(kind, set()).update(ids)

    for region in cloud.state().regions.split(","):
        ec2, ssm = client(cloud, "ec2", region), client(cloud, "ssm", region)
        reservations = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": [
            "pending", "running", "stopping", "stopped", "shutting-down"]}])["Reservations"]
        add("instance", (f"{region}/{i['InstanceId']}" for r in reservations for i in r["Instances"]))
        add("vpc", (f"{region}/{v['VpcId']}" for v in ec2.describe_vpcs()["Vpcs"]))
        add("subnet", (f"{region}/{s['SubnetId']}" for s in ec2.describe_subnets()["Subnets"]))
        add("security-group", (f"{region}/{g['GroupId']}" for g in ec2.describe_security_groups()["SecurityGroups"]))
        add("key-pair", (f"{region}/{k['KeyName']}" for k in ec2.describe_key_pairs()["KeyPairs"]))
        # (An instance's interface goes with it: the builds launch it with DeleteOnTermination.)
        add("network-interface", (f"{region}/{n['NetworkInterfaceId']}"
                                  for n in ec2.describe_network_interfaces()["NetworkInterfaces"]))
        add("volume", (f"{region}/{v['VolumeId']}" for v in ec2.describe_volumes()["Volumes"]))
        add("image", (f"{region}/{i['ImageId']}" for i in ec2.describe_images(Owners=["self"])["Images"]))
        add("snapshot", (f"{region}/{s['SnapshotId']}"
                         for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]))
        names: list[str] = []
        for page in ssm.get_paginator("describe_parameters").paginate():
            names += [p["Name"] for p in page["Parameters"]]
        # /aws/... are AWS's public parameters, which moto materializes in a region on their first read.
        add("ssm-parameter", (f"{region}/{n}" for n in names if not n.startswith("/aws/")))
    return found


def products(cloud: LocalCloud, builds: set[str]) -> tuple[set[str], set[str], set[str]]:
    """The complete images of these builds, the snapshots behind them and the channels that name them (what
    builds are meant to leave)."""
    images, snapshots, channels = set(), set(), set()
    for region in cloud.state().regions.split(","):
        ec2, ssm = client(cloud, "ec2", region), client(cloud, "ssm", region)
        made = set()
        for image in ec2.describe_images(Owners=["self"], Filters=[{"Name": "tag-key", "Values": [BUILD_TAG]}])[
                "Images"]:
            tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
            if tags.get(BUILD_TAG) in builds and tags.get(COMPLETE_TAG) == "true":
                made.add(image["ImageId"])
                images.add(f"{region}/{image['ImageId']}")
                snapshots |= {f"{region}/{m['Ebs']['SnapshotId']}" for m in image.get("BlockDeviceMappings", [])
                              if m.get("Ebs", {}).get("SnapshotId")}
        for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=CHANNEL_PREFIX, Recursive=True):
            channels |= {f"{region}/{p['Name']}" for p in page["Parameters"] if p["Value"] in made}
    return images, snapshots, channels


def leftovers(before: dict[str, set[str]], after: dict[str, set[str]], images: set[str],
              snapshots: set[str], channels: set[str] = frozenset()) -> dict[str, list[str]]:
    """What is new in the cloud and is not a build's product, by kind."""
    kept = {"image": images, "snapshot": snapshots, "ssm-parameter": channels}
    left = {kind: sorted(ids - before.get(kind, set()) - kept.get(kind, set())) for kind, ids in after.items()}
    return {kind: ids for kind, ids in left.items() if ids}
