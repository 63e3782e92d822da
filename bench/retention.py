"""Retention's API calls: a run over 1,000 images of 100 specs in two regions against one over 100 images of
10 specs, on the local cloud (moto's records: no machines needed for images that nobody boots).

``python -m bench.run retention``. The calls are counted by the local cloud's front (every page is a call),
for a dry run and for the real run that follows (which adds one call per image it deprecates or deletes). The
claim (issue 15): the describe calls of a run grow with the regions, not with the number of images; the ratio
column is the 100-image run's describe calls over the 1,000-image run's (1.00: no growth).
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
IMAGES_PER_SPEC_AND_REGION = 5
SIZES = (10, 100)  # specs: 100 and 1,000 images over the two regions
PREFIX = "/image-factory"


def _client(cloud: LocalCloud, service: str, region: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=region, aws_access_key_id="bench",
                        aws_secret_access_key="bench")  # noqa: S106 the emulator's


def _make_images(cloud: LocalCloud, specs: int) -> dict:
    """``specs`` specs' images in each region, all but the newest two of each spec 40 days old; a channel on
    each spec's newest."""
    from image_factory.build import TAG_BUILD, TAG_COMPLETE, TAG_SPEC, TAG_TESTS
    from image_factory.spec import channel_parameter

    old, made = datetime.now(UTC) - timedelta(days=40), 0
    for region in REGIONS:
        ec2, ssm = _client(cloud, "ec2", region), _client(cloud, "ssm", region)
        origin = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=origin, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        ec2.stop_instances(InstanceIds=[instance])
        aged = {}
        for spec in range(specs):
            name = f"bench-spec-{spec:03d}"
            for number in range(IMAGES_PER_SPEC_AND_REGION):
                tags = {TAG_SPEC: name, TAG_BUILD: f"b{spec:03d}{number:02d}{region[:2]}", TAG_COMPLETE: "true",
                        TAG_TESTS: "passed"}
                image = ec2.create_image(InstanceId=instance, Name=f"{name}-{region}-{number}", TagSpecifications=[
                    {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["ImageId"]
                made += 1
                if number >= 2:
                    aged[image] = old
                else:
                    ssm.put_parameter(Name=channel_parameter(name, "latest", PREFIX), Value=image, Type="String",
                                      DataType="aws:ec2:image", Overwrite=True)
        cloud.backdate_images(aged)
    return {"images": made}


def _run(cloud: LocalCloud, specs: int, dry_run: bool) -> dict:
    from image_factory import retention
    from image_factory.spec import Retention

    rules = {f"bench-spec-{spec:03d}": Retention(keep=1, deprecate_after_days=30, delete_after_days=90)
             for spec in range(specs)}
    clients = {region: (_client(cloud, "ec2", region), _client(cloud, "ssm", region)) for region in REGIONS}
    cloud.reset_stats()
    started = time.monotonic()
    surveys = [retention.survey(ec2, ssm, region, PREFIX) for region, (ec2, ssm) in clients.items()]
    verdicts = retention.judge(surveys, rules)
    outcome = retention.carry_out(lambda region: clients[region][0], verdicts, dry_run)
    seconds = time.monotonic() - started
    calls = Counter(cloud.stats()["calls"])
    actions = {"ec2:EnableImageDeprecation", "ec2:DeregisterImage"}
    return {"seconds": seconds, "verdicts": len(verdicts), "describe": sum(n for k, n in calls.items()
                                                                           if k not in actions),
            "actions": sum(calls[k] for k in actions), "calls": dict(calls), "summary": outcome.summary()}


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    rows, details = [], []
    measured = {}
    for specs in SIZES:
        with fresh_cloud("bench-retention-", ",".join(REGIONS), machines=False) as (_, cloud):
            made = _make_images(cloud, specs)
            dry = _run(cloud, specs, dry_run=True)
            real = _run(cloud, specs, dry_run=False)
        if dry["verdicts"] != made["images"] or real["actions"] != made["images"] * 3 // 5:
            raise RuntimeError(f"retention bench: {made['images']} images, {dry['verdicts']} verdicts, "
                               f"{real['actions']} actions (3 of 5 images of each spec are old and unprotected)")
        measured[specs] = (made, dry, real)
        print(f"  {made['images']} images: dry run {dry}\n  real run {real}", flush=True)
    small, large = measured[SIZES[0]], measured[SIZES[-1]]
    for label, index in (("dry run", 1), ("real run", 2)):
        ratio = small[index]["describe"] / large[index]["describe"]
        rows.append(Row("retention", f"{label}: describe calls, {large[0]['images']} images of {SIZES[-1]} specs in "
                        f"{len(REGIONS)} regions", str(large[index]["describe"]),
                        f"{small[index]['describe']} ({small[0]['images']} images of {SIZES[0]} specs)",
                        f"{ratio:.2f}", f"peer: the same run over a tenth of the images; {large[index]['actions']} "
                        f"deprecations and deletions besides; {large[index]['seconds']:.1f} s"))
    details.append("**retention.** On the local cloud's moto records (no machines), in eu-west-1 and us-east-1: "
                   f"{IMAGES_PER_SPEC_AND_REGION} images per spec and region, the newest two of each spec made "
                   "now (the newest named by the spec's latest channel), the other three 40 days old; rules keep 1, "
                   "deprecate after 30 days, delete after 90. Calls counted by the local cloud's front (each page "
                   "a call): the survey's listings, and in the real run one EnableImageDeprecation per old image. "
                   "The ratio column is the small run's describe calls over the large run's. The EC2 listings "
                   "(DescribeImages, DescribeInstances, DescribeLaunchTemplateVersions) are the same in both runs; "
                   "GetParametersByPath returns ten channels a page (SSM's limit): its pages grow with the "
                   "specs' channels (here one per spec and region), not with the images.")
    return Result(rows, details)
