"""``find-package`` over 1,000 images (issue 30's goal: within 5 s), on the local cloud (moto's records and its S3
through the front; no machines: nobody boots these images).

``python -m bench.run sbom [--sbom-images N]``. Each image carries the tags a build gives it and an SBOM made by
sbom.document from a package list of a Debian server's size (300 packages); one image in ten has nginx-light, at
one of three versions. Timed: :func:`image_factory.sbom.find_package` as ``image-factory find-package`` runs it
(one DescribeImages listing, a GetObject per image, a few at a time), for the package and for the package below a
version; first with an empty cache (every document read), then again (sbom.Cache: the documents never change,
only new images' are read). The peer is the same query reading the documents one after the other and parsing
every one of them (no cache, no quick look at the text first, no concurrent reads).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import boto3
from botocore.config import Config

from bench import Result, Row
from bench.cloud import fresh_cloud
from localcloud.cloud import SBOM_BUCKET, LocalCloud

REGION = "eu-west-1"
SPECS = 10
PACKAGES = 300
VERSIONS = ("1.22.1-9", "1.22.1-9+deb12u1", "1:1.0~rc1")  # of nginx-light, in one image in ten
GOAL_SECONDS = 5.0


def _client(cloud: LocalCloud, service: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=REGION, aws_access_key_id="bench",
                        aws_secret_access_key="bench",  # noqa: S106 the emulator's
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32))


def _documents() -> list[str]:
    """The SBOMs the images get: the base alone, and the base with each version of nginx-light."""
    from image_factory import sbom

    os_release = {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"}
    base = [sbom.Package("deb", f"lib-bench-{n:03d}", f"{n % 7}.{n % 13}.{n}-{n % 3 + 1}", "amd64")
            for n in range(PACKAGES)]
    return [sbom.document(os_release, base + ([sbom.Package("deb", "nginx-light", version, "amd64")]
                                              if version else []), {"spec": "bench"})
            for version in (None, *VERSIONS)]


def _make_images(cloud: LocalCloud, count: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    from image_factory import sbom
    from image_factory.build import TAG_BUILD, TAG_COMPLETE, TAG_SPEC

    ec2, s3 = _client(cloud, "ec2"), _client(cloud, "s3")
    origin = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    instance = ec2.run_instances(ImageId=origin, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.stop_instances(InstanceIds=[instance])
    documents = _documents()
    with_nginx = Counter()

    def make(number: int) -> None:
        spec = f"bench-sbom-{number % SPECS:02d}"
        variant = 1 + (number // 10) % len(VERSIONS) if number % 10 == 0 else 0
        image = ec2.create_image(InstanceId=instance, Name=f"{spec}-{number:05d}", TagSpecifications=[{
            "ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in {
                TAG_SPEC: spec, TAG_BUILD: f"b{number:012d}", TAG_COMPLETE: "true"}.items()]}])["ImageId"]
        key = sbom.key_of(spec, image)
        s3.put_object(Bucket=SBOM_BUCKET, Key=key, Body=documents[variant].encode())
        ec2.create_tags(Resources=[image], Tags=[{"Key": sbom.TAG_SBOM, "Value": sbom.s3_uri(SBOM_BUCKET, key)}])
        if variant:
            with_nginx[VERSIONS[variant - 1]] += 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(make, range(count)))
    return {"images": count, "with_nginx": dict(with_nginx), "bytes": len(documents[0])}


def _peer(ec2, s3, name: str) -> int:
    """The same question, plainly: every document read in turn and parsed."""
    from image_factory import sbom
    from image_factory.aws import all_items
    from image_factory.build import tag_dict

    found = 0
    for image in all_items(ec2, "describe_images", "Images", Owners=["self"],
                           Filters=[{"Name": "tag-key", "Values": [sbom.TAG_SBOM]}]):
        document = json.loads(sbom.read(s3, tag_dict(image["Tags"])[sbom.TAG_SBOM]))
        found += any(p.name == name for p in sbom.packages_in(document))
    return found


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    from image_factory import sbom

    count = getattr(args, "sbom_images", 1000)
    with fresh_cloud("bench-sbom-", machines=False) as (work, cloud):
        made = _make_images(cloud, count)
        ec2, s3, ssm = _client(cloud, "ec2"), _client(cloud, "s3"), _client(cloud, "ssm")
        measured = {}
        cache = sbom.Cache(work / "cache", cloud.endpoint)  # (empty: the first query reads every document)
        for label, below in (("find-package nginx-light, first (cache empty)", None),
                             ("find-package nginx-light, again (cache)", None),
                             ("find-package nginx-light --below 1.22.1-9+deb12u1 (cache)", "1.22.1-9+deb12u1")):
            cloud.reset_stats()
            started = time.monotonic()
            hits = sbom.find_package(ec2, s3, ssm, "nginx-light", below=below, cache=cache)
            measured[label] = (time.monotonic() - started, len(hits), dict(cloud.stats()["calls"]))
            print(f"  {label}: {measured[label][0]:.2f} s, {len(hits)} images, calls {measured[label][2]}",
                  flush=True)
        started = time.monotonic()
        peer_hits = _peer(ec2, s3, "nginx-light")
        peer_seconds = time.monotonic() - started
        print(f"  peer (every document read in turn and parsed): {peer_seconds:.2f} s, {peer_hits} images",
              flush=True)
    everything = sum(made["with_nginx"].values())
    below = made["with_nginx"].get("1.22.1-9", 0)  # (1:1.0~rc1 has an epoch: above; the +deb12u1 is not below)
    first, again, second = measured.values()
    if first[1] != everything or again[1] != everything or peer_hits != everything or second[1] != below:
        raise RuntimeError(f"sbom bench: {made['with_nginx']} images have nginx-light; find-package found "
                           f"{first[1]}, then {again[1]}, with --below {second[1]} (wanted {below}); the peer "
                           f"{peer_hits}")
    rows = [Row("sbom", f"{label}, {count} images of {SPECS} specs", f"{seconds:.2f} s",
                f"{peer_seconds:.2f} s", f"{peer_seconds / seconds:.2f}",
                f"goal {GOAL_SECONDS:.0f} s: {'met' if seconds <= GOAL_SECONDS else 'MISSED'}; {hits} images found; "
                f"{sum(calls.values())} calls")
            for index, (label, (seconds, hits, calls)) in enumerate(measured.items())]
    details = [f"**sbom.** On the local cloud without machines (moto's records, its S3 through the front): {count} "
               f"images of {SPECS} specs, each tagged with an SBOM of {PACKAGES} packages ({made['bytes']} bytes of "
               f"CycloneDX JSON, made by sbom.document); one image in ten also has nginx-light at one of "
               f"{', '.join(VERSIONS)}. Ours: sbom.find_package as the command line runs it (one DescribeImages "
               f"listing, {sbom.READERS} GetObject at a time for the documents not in its cache, only documents whose "
               "text names the package parsed), first with an empty cache, then again. Peer: the same listing, "
               "each document read in turn and parsed."]
    return Result(rows, details)
