"""A revocation with descendants: its API calls and time, on the local cloud (moto's records, no machines).

``python -m bench.run revocation``. A three-level lineage (base -> webapp built on base -> api built on webapp),
each spec with two tested builds, each build an image in eu-west-1 and its copy in us-east-1, the newest of
each named by its ``latest`` channel in both regions. Revoking the newest base with descendants revokes six
images and moves three channels back. The same revocation runs in an account that also holds
``OTHER_IMAGES`` images of other specs: the claim is that the calls grow with what is revoked and the
channels moved, not with the account's images (one DescribeImages listing per region finds the lineage).
Calls are counted by the local cloud's front (every page is a call).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import boto3

from bench import Result, Row
from bench.cloud import fresh_cloud
from localcloud.cloud import LocalCloud

REGIONS = ("eu-west-1", "us-east-1")
PREFIX = "/image-factory"
SPECS = ("bench-base", "bench-webapp", "bench-api")
OTHER_IMAGES = 300  # per region, of 30 other specs


def _client(cloud: LocalCloud, service: str, region: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=region, aws_access_key_id="bench",
                        aws_secret_access_key="bench")  # noqa: S106 the emulator's


def _make(cloud: LocalCloud, others: int) -> str:
    """The lineage (and ``others`` images per region of other specs); returns the newest base image's id."""
    from image_factory.build import TAG_BUILD, TAG_COMPLETE, TAG_ORIGIN, TAG_SOURCE_IMAGE, TAG_SPEC, TAG_TESTS
    from image_factory.steps import channels

    ec2 = {r: _client(cloud, "ec2", r) for r in REGIONS}
    ssm = {r: _client(cloud, "ssm", r) for r in REGIONS}
    instance = {}
    for region in REGIONS:
        origin = ec2[region].describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        instance[region] = ec2[region].run_instances(ImageId=origin, MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"]
        ec2[region].stop_instances(InstanceIds=[instance[region]])

    def image(region: str, tags: dict) -> str:
        return ec2[region].create_image(InstanceId=instance[region], Name=f"{tags[TAG_BUILD]}-{region}",
                                        TagSpecifications=[{"ResourceType": "image", "Tags": [
                                            {"Key": k, "Value": v} for k, v in tags.items()]}])["ImageId"]

    started, dates, origins = datetime.now(UTC) - timedelta(days=2), {}, ["ami-00000000", "ami-00000000"]
    for level, spec in enumerate(SPECS):
        for number in range(2):  # an old build on the level below's old one, then a new one on its new one
            tags = {TAG_SPEC: spec, TAG_BUILD: f"b{level}{number}", TAG_COMPLETE: "true", TAG_TESTS: "passed",
                    TAG_ORIGIN: origins[number]}
            made = {REGIONS[0]: image(REGIONS[0], tags)}
            made[REGIONS[1]] = image(REGIONS[1], {**tags, TAG_SOURCE_IMAGE: made[REGIONS[0]]})
            dates.update({i: started + timedelta(hours=level * 2 + number) for i in made.values()})
            origins[number] = made[REGIONS[0]]
        channels.move_everywhere(ssm.__getitem__, spec, ["latest"], made, {"status": "passed"}, PREFIX)
        if level == 0:
            newest_base = made[REGIONS[0]]
    for region in REGIONS:
        for number in range(others):
            image(region, {TAG_SPEC: f"bench-other-{number % 30:02d}", TAG_BUILD: f"o{number:04d}",
                           TAG_COMPLETE: "true", TAG_TESTS: "passed", TAG_ORIGIN: "ami-00000000"})
    cloud.backdate_images(dates)
    return newest_base


def _revoke(cloud: LocalCloud, image_id: str) -> dict:
    from image_factory import revocation

    ec2 = {r: _client(cloud, "ec2", r) for r in REGIONS}
    ssm = {r: _client(cloud, "ssm", r) for r in REGIONS}
    cloud.reset_stats()
    started = time.monotonic()
    report = revocation.revoke(ec2.__getitem__, ssm.__getitem__, list(REGIONS), image_id, "bench", "bench", True,
                               PREFIX)
    seconds = time.monotonic() - started
    calls = Counter(cloud.stats()["calls"])
    if len(report.revoked) != 6 or len(report.channels) != 3:
        raise RuntimeError(f"revocation bench: {len(report.revoked)} images revoked, {len(report.channels)} "
                           "channels moved (expected 6 and 3)")
    return {"seconds": seconds, "calls": dict(calls), "total": sum(calls.values())}


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    measured = {}
    for others in (0, OTHER_IMAGES):
        with fresh_cloud("bench-revocation-", ",".join(REGIONS), machines=False) as (_, cloud):
            measured[others] = _revoke(cloud, _make(cloud, others))
        print(f"  {others} other images per region: {measured[others]}", flush=True)
    alone, crowded = measured[0], measured[OTHER_IMAGES]
    rows = [Row("revocation", "revoke with descendants (6 images, 3 channels, 2 regions): API calls",
                str(alone["total"]), f"{crowded['total']} (with {OTHER_IMAGES} other images per region)",
                f"{crowded['total'] / alone['total']:.2f}",
                f"{alone['seconds']:.2f} s alone, {crowded['seconds']:.2f} s among the others"),
            ]
    shown = ", ".join(f"{name} {count}" for name, count in sorted(alone["calls"].items()))
    details = ["**revocation.** On the local cloud's moto records (no machines), in eu-west-1 and us-east-1: a "
               "three-level lineage, two tested builds per spec, each an image and its copy, the newest named by "
               "the `latest` channel in both regions; the newest base is revoked with its descendants (six "
               "images revoked, three channels moved back). Calls counted by the local cloud's front (each page a "
               f"call): {shown}. The peer column is the same revocation in an account holding {OTHER_IMAGES} "
               "more images per region (of other specs): the DescribeImages listing may take more pages; nothing "
               "else grows. Per revoked image: CreateTags, EnableImageDeprecation, DisableImage; per channel and "
               "region: GetParametersByPath (per spec), GetParameter, PutParameter."]
    return Result(rows, details)
