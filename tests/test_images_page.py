"""The Images page: Airflow's own api-server app (create_app, the project's plugin loaded from plugins/) in a
FastAPI TestClient, its auth manager's tokens, and images made in the local cloud with the project's tags.

What it must show: per spec and region, each image with its tests, channels, launch permissions, deprecation
and retention status (retention's own verdict), links to its DAG run and the console; the spec and status
filters; nothing without Airflow's authentication; tag values escaped. And the reading cost: a region's
listings, plus one DescribeImageAttribute per image shown.
"""

from __future__ import annotations

import os
import re
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import quote

import pytest

from image_factory import sbom
from image_factory.build import (
    TAG_BUILD,
    TAG_COMPLETE,
    TAG_ORIGIN,
    TAG_ROLE,
    TAG_RUN,
    TAG_SPEC,
    TAG_TESTS,
    TAG_TESTS_FAILED,
    TAG_TESTS_PASSED,
)
from image_factory.spec import Retention, channel_parameter
from localcloud.cloud import SBOM_BUCKET
from tests.test_build_e2e import s3_client

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SUFFIX = uuid.uuid4().hex[:6]
KEPT = f"page-kept-{SUFFIX}"      # has a retention section: keep 1, deprecate after 30 days, delete after 60
PLAIN = f"page-plain-{SUFFIX}"    # has none
SHARED_WITH = "123456789012"
HOSTILE = '<script>alert("x")</script>&'
CREATED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d UTC$")


class Rows(HTMLParser):
    """The page's image rows: image id -> {column: text}, the links of each row, the section of each row."""

    COLUMNS = ("image", "created", "origin", "role", "tests", "channels", "shared", "deprecation", "retention",
               "links")

    def __init__(self, page: str):
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.links: dict[str, dict[str, str]] = {}
        self.where: dict[str, tuple[str, str]] = {}
        self._spec = self._region = self._image = None
        self._cell = -1
        self._link = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._spec = attrs.get("data-spec")
        elif tag == "table":
            self._region = attrs.get("data-region")
        elif tag == "tr" and "data-image" in attrs:
            self._image, self._cell = attrs["data-image"], -1
            self.rows[self._image], self.links[self._image] = {}, {}
            self.where[self._image] = (self._spec, self._region)
        elif tag == "td" and self._image:
            self._cell += 1
            self.rows[self._image][self.COLUMNS[self._cell]] = ""
        elif tag == "a" and self._image:
            self._link = attrs.get("href")
        elif tag == "br" and self._image and self._cell >= 0:
            self.rows[self._image][self.COLUMNS[self._cell]] += "\n"

    def handle_endtag(self, tag):
        if tag == "tr":
            self._image = None
        elif tag == "a":
            self._link = None

    def handle_data(self, data):
        if self._image and self._cell >= 0:
            column = self.COLUMNS[self._cell]
            self.rows[self._image][column] += data if not self.rows[self._image][column] else f" {data}"
            if self._link:
                self.links[self._image][data.strip()] = self._link


@pytest.fixture(scope="module")
def images(local_cloud, ec2, ssm):
    """Images of the two specs in the local cloud, with the tags builds give them (ids by role in the test)."""
    origin = ssm.get_parameter(Name=AL2023)["Parameter"]["Value"]
    instance_id = ec2.run_instances(ImageId=origin, MinCount=1, MaxCount=1, InstanceType="t3.micro")[
        "Instances"][0]["InstanceId"]
    made: dict[str, str] = {}
    parameters = []

    def make(key: str, spec: str, tests: str | None, complete: bool = True, **extra: str) -> str:
        build_id = f"b{SUFFIX}{len(made):06d}"
        tags = {TAG_SPEC: spec, TAG_BUILD: build_id, TAG_RUN: f"manual__2026-01-0{len(made) + 1}T00:00:00+00:00",
                TAG_ORIGIN: origin, TAG_ROLE: "appserver", **extra}
        if complete:
            tags[TAG_COMPLETE] = "true"
        if tests in ("passed", "failed"):
            tags.update({TAG_TESTS: tests, TAG_TESTS_PASSED: "3" if tests == "passed" else "2",
                         TAG_TESTS_FAILED: "0" if tests == "passed" else "1"})
        elif tests:
            tags[TAG_TESTS] = tests
        made[key] = ec2.create_image(InstanceId=instance_id, Name=f"{spec}-{key}-{build_id}", TagSpecifications=[{
            "ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["ImageId"]
        return made[key]

    try:
        promoted = make("promoted", KEPT, "passed")
        make("recent", KEPT, "passed")
        make("failed", KEPT, "failed")
        make("old", KEPT, "passed")
        make("hostile", KEPT, None, complete=False, **{TAG_ROLE: HOSTILE})
        make("untested", PLAIN, "untested")
        now = datetime.now(UTC)
        local_cloud.backdate_images({made["promoted"]: now - timedelta(days=10),
                                     made["recent"]: now - timedelta(days=2),
                                     made["failed"]: now - timedelta(days=5),
                                     made["old"]: now - timedelta(days=40),
                                     made["hostile"]: now - timedelta(hours=1),
                                     made["untested"]: now - timedelta(days=1)})
        parameter = channel_parameter(KEPT, "latest")
        ssm.put_parameter(Name=parameter, Value=promoted, Type="String", DataType="aws:ec2:image", Overwrite=True)
        parameters.append(parameter)
        ec2.modify_image_attribute(ImageId=promoted, LaunchPermission={"Add": [{"UserId": SHARED_WITH}]})
        ec2.enable_image_deprecation(ImageId=made["untested"], DeprecateAt=now + timedelta(days=3))
        # The promoted image's SBOM, as a build stores and tags it; a tag pointing elsewhere on another.
        os_release, packages = sbom.parse("ID=debian\nVERSION_ID=12\n#dpkg\nii \tnginx-light\t1.22.1-9\tamd64\n"
                                          "ii \tlibc6\t2.36-9\tamd64\n#rpm\n")
        s3 = s3_client(local_cloud)
        key = sbom.key_of(KEPT, promoted)
        sbom.store(s3, SBOM_BUCKET, key, sbom.document(os_release, packages, {"spec": KEPT}))
        ec2.create_tags(Resources=[promoted], Tags=[{"Key": sbom.TAG_SBOM, "Value": sbom.s3_uri(SBOM_BUCKET, key)},
                                                    {"Key": sbom.TAG_SBOM_PACKAGES, "Value": "2"}])
        ec2.create_tags(Resources=[made["recent"]], Tags=[{"Key": sbom.TAG_SBOM,
                                                           "Value": f"s3://{SBOM_BUCKET}/elsewhere/secret"}])
        yield made
    finally:
        s3_client(local_cloud).delete_object(Bucket=SBOM_BUCKET, Key=sbom.key_of(KEPT, made.get("promoted", "-")))
        for parameter in parameters:
            ssm.delete_parameter(Name=parameter)
        for image_id in made.values():
            ec2.deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
        ec2.terminate_instances(InstanceIds=[instance_id])


@pytest.fixture(scope="module")
def specs_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page-specs")
    for name, extra in ((KEPT, "retention: {keep: 1, deprecate_after_days: 30, delete_after_days: 60}"),
                        (PLAIN, "")):
        (folder / f"{name}.yaml").write_text(textwrap.dedent(f"""\
            image:
              name: {name}
              origin: resolve:ssm:{AL2023}
              region: eu-west-1
            """) + (f"  {extra}\n" if extra else ""))
    return folder


@pytest.fixture(scope="module")
def client(local_cloud, specs_folder):
    """Airflow's api-server app, with this project's plugins, the local cloud's connection and the specs; its
    metadata database (revoked tokens) is this test process's own."""
    from fastapi.testclient import TestClient

    from localcloud.runner import migrate

    migrate(dict(os.environ))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in local_cloud.env().items():
            if key.startswith(("AIRFLOW_CONN_", "AIRFLOW__IMAGE_FACTORY__")):
                patch.setenv(key, value)
        patch.setenv("AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER", str(specs_folder))
        patch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "images-page-test-" + uuid.uuid4().hex * 2)
        patch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                     "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
        from airflow.api_fastapi.app import create_app

        with TestClient(create_app("core")) as test_client:
            yield test_client


def token(role: str | None) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=f"{role}-user", role=role))


def page(client, **params) -> Rows:
    answer = client.get("/image-factory/images", params=params,
                        headers={"Authorization": f"Bearer {token('viewer')}"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    return Rows(answer.text)


def test_nothing_without_airflow_authentication(client, images):
    assert client.get("/image-factory/images").status_code == 401
    assert client.get("/image-factory/images", headers={"Authorization": "Bearer not-a-token"}).status_code in (
        401, 403)
    assert client.get("/image-factory/images", headers={"Cookie": "_token=forged"}).status_code in (401, 403)
    # Authenticated, but with no role: may read no DAG, so no image.
    assert client.get("/image-factory/images",
                      headers={"Authorization": f"Bearer {token(None)}"}).status_code == 403
    # The UI's session cookie is enough, as for the REST API.
    answer = client.get("/image-factory/images", headers={"Cookie": f"_token={token('viewer')}"})
    assert answer.status_code == 200 and images["promoted"] in answer.text
    # No API documentation of the app is served to anyone.
    assert client.get("/image-factory/docs").status_code == 404
    assert client.get("/image-factory/openapi.json").status_code == 404


def test_every_image_per_spec_and_region_with_what_a_person_needs(client, images, local_cloud):
    shown = page(client)
    rows = {key: shown.rows[image_id] for key, image_id in images.items()}
    assert {key: shown.where[image_id] for key, image_id in images.items()} == {
        **{key: (KEPT, "eu-west-1") for key in ("promoted", "recent", "failed", "old", "hostile")},
        "untested": (PLAIN, "eu-west-1")}
    ours = [image_id for image_id in shown.rows if shown.where[image_id][0] == KEPT]
    assert ours == [images[k] for k in ("hostile", "recent", "failed", "promoted", "old")]  # newest first

    promoted = rows["promoted"]
    assert CREATED.match(promoted["created"]), promoted
    assert promoted["tests"] == "passed (3/3)"
    assert promoted["channels"] == "latest"
    assert promoted["shared"] == f"account {SHARED_WITH}"
    assert promoted["role"] == "appserver" and promoted["origin"].startswith("ami-")
    assert promoted["retention"].startswith("keep a channel names it: /image-factory/")
    assert "promoted" in promoted["image"] and "passed" in promoted["image"]

    assert rows["recent"]["retention"] == "keep one of the newest 1 (1 of 1)"
    assert rows["failed"]["tests"] == "failed (2/3)"
    assert rows["failed"]["retention"].startswith("will delete failed its tests 5 days ago")
    assert rows["failed"]["shared"] == "not shared" and rows["failed"]["channels"] == "-"
    assert rows["old"]["retention"].startswith("will deprecate beyond the newest 1, 40 days old")
    assert rows["hostile"]["retention"].startswith("keep not complete")
    assert "incomplete" in rows["hostile"]["image"]
    assert rows["untested"]["deprecation"].startswith("deprecates at ")
    assert rows["untested"]["retention"] == "keep the spec has no retention section: never retired"

    run_id = "manual__2026-01-01T00:00:00+00:00"
    assert shown.links[images["promoted"]]["DAG run"] == f"/dags/{KEPT}/runs/{quote(run_id, safe='')}"
    # On the local cloud the console link opens the emulator's dashboard (as the tasks' Image links do).
    assert shown.links[images["promoted"]]["console"] == f"{local_cloud.endpoint}/moto-api/"


def test_each_image_links_its_sbom_with_its_package_count_served_to_those_who_may_see_the_page(client, images):
    shown = page(client)
    assert re.search(r"SBOM\s+\(2 packages\)", shown.rows[images["promoted"]]["links"])
    assert "SBOM" not in shown.rows[images["failed"]]["links"]
    link = shown.links[images["promoted"]]["SBOM"]
    assert link == f"sbom?region=eu-west-1&image={images['promoted']}"
    url = f"/image-factory/{link}"
    viewer = {"Authorization": f"Bearer {token('viewer')}"}
    answer = client.get(url, headers=viewer)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/vnd.cyclonedx+json"
    document = answer.json()
    assert document["specVersion"] == "1.6"
    assert sorted(c["purl"] for c in document["components"]) == [
        "pkg:deb/debian/libc6@2.36-9?arch=amd64&distro=debian-12",
        "pkg:deb/debian/nginx-light@1.22.1-9?arch=amd64&distro=debian-12"]
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": f"Bearer {token(None)}"}).status_code == 403
    # No SBOM; a tag pointing at another object is not followed; no such image; not an image id at all.
    assert client.get(f"/image-factory/sbom?region=eu-west-1&image={images['failed']}", headers=viewer
                      ).status_code == 404
    refused = client.get(f"/image-factory/sbom?region=eu-west-1&image={images['recent']}", headers=viewer)
    assert refused.status_code == 409 and "elsewhere/secret" in refused.json()["detail"]
    assert client.get("/image-factory/sbom?region=eu-west-1&image=ami-0000000000", headers=viewer
                      ).status_code == 404
    assert client.get("/image-factory/sbom?region=eu-west-1&image=../etc", headers=viewer).status_code == 422


def test_filters_by_spec_and_status(client, images):
    assert set(page(client, spec=PLAIN).rows) == {images["untested"]}
    kept = page(client, spec=KEPT).rows
    assert set(kept) == {images[k] for k in ("promoted", "recent", "failed", "old", "hostile")}
    assert set(page(client, spec=KEPT, status="failed").rows) == {images["failed"]}
    assert set(page(client, spec=KEPT, status="promoted").rows) == {images["promoted"]}
    assert set(page(client, spec=KEPT, status="retiring").rows) == {images["failed"], images["old"]}
    assert set(page(client, spec=KEPT, status="incomplete").rows) == {images["hostile"]}
    assert images["untested"] in page(client, status="untested").rows
    assert page(client, spec="no-such-spec").rows == {}
    refused = client.get("/image-factory/images", params={"status": "bogus"},
                         headers={"Authorization": f"Bearer {token('viewer')}"})
    assert refused.status_code == 400 and "unknown status" in refused.text


def test_tag_values_are_escaped(client, images):
    answer = client.get("/image-factory/images", params={"spec": KEPT},
                        headers={"Authorization": f"Bearer {token('viewer')}"})
    assert '<script>alert("x")</script>' not in answer.text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in answer.text
    assert Rows(answer.text).rows[images["hostile"]]["role"] == HOSTILE
    # Values typed into the filters come back escaped too.
    answer = client.get("/image-factory/images", params={"spec": '"><img src=x onerror=alert(1)>'},
                        headers={"Authorization": f"Bearer {token('viewer')}"})
    assert "<img src=x" not in answer.text and "&quot;&gt;&lt;img src=x" in answer.text


def test_copies_in_other_regions_appear_and_calls_grow_with_regions_not_images(local_cloud, images, ec2):
    """A spec distributed to another region (the other branch's ``distribute``): a copy there, tagged as the
    original, shows under that region; a region costs its four listings, and each image shown one
    DescribeImageAttribute."""
    import boto3

    from image_factory import aws, catalog

    east = boto3.client("ec2", endpoint_url=local_cloud.endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")  # noqa: S106 emulator
    copy = east.copy_image(SourceImageId=images["promoted"], SourceRegion="eu-west-1",
                           Name=f"{KEPT}-copy-{SUFFIX}")["ImageId"]
    try:
        tags = ec2.describe_images(ImageIds=[images["promoted"]])["Images"][0]["Tags"]
        east.create_tags(Resources=[copy], Tags=tags)
        spec = SimpleNamespace(name=KEPT, region="eu-west-1", aws_conn_id="aws_default", retention=Retention(
            keep=1, deprecate_after_days=30, delete_after_days=60), distribute=SimpleNamespace(regions=["us-east-1"]))
        with pytest.MonkeyPatch.context() as patch:
            for key, value in local_cloud.env().items():
                if key.startswith("AIRFLOW_CONN_"):
                    patch.setenv(key, value)
            found = catalog.gather([spec], channel_prefix="/image-factory", spec=KEPT, clients_of=aws.clients)
            assert [r.region for r in found.rows].count("us-east-1") == 1
            row = next(r for r in found.rows if r.region == "us-east-1")
            assert row.image_id == copy and row.build_id == next(
                r.build_id for r in found.rows if r.image_id == images["promoted"])
            # The original's channel protects its copies (retention's rule for a build's images).
            assert row.retention[0] == "keep" and "a channel names an image of its build" in row.retention[1]
            assert found.regions == ["eu-west-1", "us-east-1"]
            listings = {k: v for k, v in found.calls.items() if k != "ec2:DescribeImageAttribute"}
            assert listings["ec2:DescribeImages"] == 2 and max(listings.values()) == 2, found.calls
            assert found.calls["ec2:DescribeImageAttribute"] == len(found.rows) == 6
            one = catalog.gather([spec], channel_prefix="/image-factory", spec=KEPT, limit=1, clients_of=aws.clients)
            assert one.matched == 6 and len(one.rows) == 1 and one.calls["ec2:DescribeImageAttribute"] == 1
            assert {k: v for k, v in one.calls.items() if k != "ec2:DescribeImageAttribute"} == listings
            # Once its deprecation time has passed, an image is deprecated (the status filter finds it).
            plain = SimpleNamespace(name=PLAIN, region="eu-west-1", aws_conn_id="aws_default", retention=None)
            later = catalog.gather([plain], channel_prefix="/image-factory", spec=PLAIN, status="deprecated",
                                   clients_of=aws.clients, now=datetime.now(UTC) + timedelta(days=4))
            assert [r.image_id for r in later.rows] == [images["untested"]]
            assert later.rows[0].deprecation.startswith("deprecated since ")
    finally:
        east.deregister_image(ImageId=copy)


def test_the_plugin_puts_the_page_in_the_navigation_without_importing_the_web_stack():
    import subprocess
    import sys

    from localcloud.cloud import PROJECT

    probe = ("import sys, image_factory_plugin as p; "
             "assert 'airflow.api_fastapi.core_api.security' not in sys.modules; "
             "plugin = p.ImageFactoryPlugin(); "
             "print('PAGE', plugin.external_views[0]['href'], plugin.fastapi_apps[0]['url_prefix'])")
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "plugins")}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    answer = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("PAGE ")]
    assert answer == [["/image-factory/images", "/image-factory"]], result.stdout[-2000:]


def test_a_revoked_image_shows_its_revocation_escaped(client, images, ec2, ssm):
    from image_factory import revocation

    old = images["old"]
    revocation.revoke(lambda _: ec2, lambda _: ssm, ["eu-west-1"], old, "CVE-2026-0001 <b>openssl</b>",
                      "<script>alice</script>", False, "/image-factory")
    try:
        answer = client.get("/image-factory/images", params={"spec": KEPT, "status": "revoked"},
                            headers={"Authorization": f"Bearer {token('viewer')}"})
        assert set(Rows(answer.text).rows) == {old}
        shown = Rows(answer.text).rows[old]["image"]
        assert "revoked at " in shown and "by <script>alice</script>: CVE-2026-0001 <b>openssl</b>" in shown
        assert "<script>alice" not in answer.text and "&lt;script&gt;alice&lt;/script&gt;" in answer.text
        assert Rows(answer.text).rows[old]["retention"].startswith("keep")  # (kept keep_revoked_days)
    finally:
        revocation.restore(lambda _: ec2, ["eu-west-1"], old)
