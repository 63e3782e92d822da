"""The SBOMs (plugins/image_factory/sbom.py): what an instance's package listing may hold, Debian's ordering for
``find-package --below``, the document against CycloneDX's schema, and the first step's bucket check in real DAG
runs on the local cloud. (A whole build's SBOM, checked against dpkg-query on an instance of its image, and
find-package over real images: tests/test_build_e2e.py.)"""

from __future__ import annotations

import json

import pytest

from image_factory import sbom
from image_factory.build import TAG_SPEC, build_id_for
from image_factory.inventory import builder_resources
from localcloud.runner import airflow_env, run_dag
from tests.test_build_e2e import AL2023, write_spec

LISTING = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
ID=debian
# a comment

#dpkg
ii \tnginx-light\t1.22.1-9+deb12u1\tall
ii \tlibc6\t2.36-9+deb12u9\tamd64
rc \tremoved-but-configured\t1.0-1\tamd64
ii \tlibstdc++6\t12.2.0-14\tamd64
#rpm
"""


def test_the_listing_is_parsed_into_the_installed_packages_and_os_release():
    os_release, packages = sbom.parse(LISTING)
    assert os_release == {"PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)", "NAME": "Debian GNU/Linux",
                          "VERSION_ID": "12", "ID": "debian"}
    assert [(p.kind, p.name, p.version, p.arch) for p in packages] == [
        ("deb", "nginx-light", "1.22.1-9+deb12u1", "all"), ("deb", "libc6", "2.36-9+deb12u9", "amd64"),
        ("deb", "libstdc++6", "12.2.0-14", "amd64")]  # (only configuration files left: not installed)
    # (An upstream version may hold colons when there is an epoch: Debian policy 5.6.12.)
    assert sbom.parse("#dpkg\nii \tfoo\t1:2.3:4-1\tamd64\n")[1] == [sbom.Package("deb", "foo", "1:2.3:4-1", "amd64")]
    with pytest.raises(sbom.SbomError):
        sbom.parse("#dpkg\nii \tfoo\t2.3:4-1\tamd64\n")
    _, rpms = sbom.parse("ID=amzn\n#dpkg\n#rpm\nbash\t0:5.2.15-1.amzn2023\tx86_64\nopenssl\t1:3.0.8-1\tx86_64\n")
    assert [(p.kind, p.name, p.version) for p in rpms] == [("rpm", "bash", "5.2.15-1.amzn2023"),
                                                          ("rpm", "openssl", "1:3.0.8-1")]


@pytest.mark.parametrize("line", [
    "ii \tnginx\t$(reboot)\tamd64",            # a shell expansion as a version
    "ii \tnginx\t1.0\tamd64\textra",           # a field too many
    "ii \tng inx\t1.0\tamd64",                 # a space in a name
    "ii \tnginx\t1.0\tamd64\x1b[2J",           # a terminal escape
    "ii \t-nginx\t1.0\tamd64",                 # an option as a name
    "ii \tnginx\t1.0;rm -rf /\tamd64",
])
def test_a_line_that_is_not_a_package_is_refused_and_shown_escaped(line):
    with pytest.raises(sbom.SbomError) as refused:
        sbom.parse(f"ID=debian\n#dpkg\n{line}\n#rpm\n")
    message = str(refused.value)
    assert "line 3 of the instance's dpkg listing is not one" in message
    assert "\x1b" not in message and "\n" not in message


def test_an_os_release_id_that_is_not_one_is_refused():
    os_release, packages = sbom.parse('ID="debian; touch /tmp/x"\n#dpkg\n#rpm\n')
    with pytest.raises(sbom.SbomError, match="is not an operating system id"):
        sbom.document(os_release, packages, {})


def test_the_document_validates_against_cyclonedx_1_6_with_package_urls_and_the_builds_metadata():
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    os_release, packages = sbom.parse(LISTING)
    text = sbom.document(os_release, packages, {"spec": "web", "build-id": "b123"})
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    assert document["metadata"]["component"] == {"bom-ref": "operating-system", "type": "operating-system",
                                                 "name": "debian", "version": "12",
                                                 "description": "Debian GNU/Linux 12 (bookworm)"}
    assert document["metadata"]["properties"] == [{"name": "image-factory:build-id", "value": "b123"},
                                                  {"name": "image-factory:spec", "value": "web"}]
    assert sorted(c["purl"] for c in document["components"]) == [
        "pkg:deb/debian/libc6@2.36-9%2Bdeb12u9?arch=amd64&distro=debian-12",
        "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12",
        "pkg:deb/debian/nginx-light@1.22.1-9%2Bdeb12u1?arch=all&distro=debian-12"]
    assert sbom.packages_in(document, "libstdc++6") == [sbom.Package("deb", "libstdc++6", "12.2.0-14", "amd64")]


@pytest.mark.parametrize(("version", "below", "older"), [
    ("1.22.1-9", "1.22.1-9+deb12u1", True),
    ("1.22.1-9+deb12u1", "1.22.1-9", False),
    ("1:1.0", "2.0", False),          # an epoch outweighs any version without one
    ("2.0", "1:1.0", True),
    ("1.0~rc1", "1.0", True),         # a tilde sorts before the release ...
    ("1.0~rc1", "1.0~rc1", False),
    ("1.0", "1.0~", False),           # ... and before nothing at all
    ("1.0~~a", "1.0~", True),
    ("1.10", "1.9", False),           # numbers compare as numbers
    ("3.0.11-1~deb12u2", "3.0.15-1~deb12u1", True),
])
def test_below_orders_versions_as_debian_does(version, below, older):
    assert sbom.older("deb", version, below) is older


def test_below_refuses_an_ordering_it_does_not_know():
    with pytest.raises(sbom.SbomError, match="Debian versions only"):
        sbom.older("rpm", "1.0-1", "2.0-1")


def test_only_an_sbom_of_the_images_own_spec_is_followed():
    good = {TAG_SPEC: "web", sbom.TAG_SBOM: "s3://bucket/sboms/web/ami-0123abcd.cdx.json"}
    assert sbom.uri_of(good) == "s3://bucket/sboms/web/ami-0123abcd.cdx.json"
    assert sbom.uri_of({TAG_SPEC: "web"}) is None
    for uri in ("s3://bucket/sboms/other/ami-0123abcd.cdx.json", "s3://bucket/secrets/key",
                "s3://bucket/sboms/web/../../secrets/ami-1.cdx.json", "https://example.com/x", "s3://bucket"):
        with pytest.raises(sbom.SbomError):
            sbom.uri_of({TAG_SPEC: "web", sbom.TAG_SBOM: uri})


@pytest.mark.parametrize(("setting", "deny", "expected"), [
    ("no-such-sbom-bucket", [], "sbom_bucket 'no-such-sbom-bucket' does not exist: create it"),
    (None, ["s3:PutObject@eu-west-1"], "may not be written: grant the builds' role s3:PutObject"),
])
def test_a_bucket_that_is_missing_or_may_not_be_written_fails_the_first_step_and_nothing_is_made(
        local_cloud, airflow_home, ec2, ssm, tmp_path, setting, deny, expected):
    name = "sbom-bucket-image"
    write_spec(tmp_path / "specs", name, f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"),
                      **({"sbom_bucket": setting} if setting else {}))
    local_cloud.reset_stats()
    local_cloud.configure(deny=deny)
    try:
        result = run_dag(name, env)
    finally:
        local_cloud.configure(deny=[])
    assert result.state == "failed" and result.task_states["create_builder_network"] == "failed"
    assert "launch_builder_instance" not in result.task_states
    log = result.task_logs["create_builder_network"]
    assert expected in log and "Nothing was built" in log
    calls = local_cloud.stats()["calls"]
    assert "s3:PutObject" in calls
    assert not {"ec2:CreateSubnet", "ec2:CreateSecurityGroup", "ec2:ImportKeyPair", "ec2:RunInstances"} & set(calls)
    assert builder_resources(ec2, ssm, build_id_for(name, result.run_id)) == []


def test_a_build_that_registers_no_image_leaves_no_sbom(local_cloud, airflow_home, ec2, ssm, tmp_path):
    """configure wrote the document under the build id; register_image failed for good: the teardown deletes it."""
    from localcloud.cloud import SBOM_BUCKET
    from tests.test_build_e2e import s3_client

    name = "sbom-unregistered-image"
    write_spec(tmp_path / "specs", name, f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          ssh_key: ${{IMAGE_BUILDER_SSH_KEY}}
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"))
    env["IMAGE_FACTORY_FAULTS"] = "after:register"
    local_cloud.reset_stats()
    result = run_dag(name, env)

    assert result.task_states["configure"] == "success" and result.task_states["register_image"] == "failed"
    build_id = build_id_for(name, result.run_id)
    key = sbom.build_key(name, build_id)
    assert f"sbom: written to s3://{SBOM_BUCKET}/{key}" in result.task_logs["configure"]
    assert f"sbom: s3://{SBOM_BUCKET}/{key} deleted" in result.task_logs["tear_down"], result.output[-6000:]
    left = s3_client(local_cloud).list_objects_v2(Bucket=SBOM_BUCKET, Prefix=f"sboms/{name}/").get("Contents", [])
    assert [o["Key"] for o in left] == [f"sboms/{name}/.write-check"]  # (the first step's, the same each build)
    assert builder_resources(ec2, ssm, build_id) == []


def test_a_spec_that_turns_sboms_off_neither_checks_the_bucket_nor_writes_one(local_cloud, airflow_home, tmp_path):
    name = "sbom-off-image"
    write_spec(tmp_path / "specs", name, f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          sbom: false
        """)
    # A bucket that does not exist: with sbom: false, nothing asks for it. (The run stops at the launch.)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"), sbom_bucket="no-such-bucket")
    env["IMAGE_FACTORY_FAULTS"] = "before:launch"
    local_cloud.reset_stats()
    result = run_dag(name, env)
    assert result.task_states["create_builder_network"] == "success", result.output[-5000:]
    assert "fault injected at before:launch" in result.output
    assert not [call for call in local_cloud.stats()["calls"] if call.startswith("s3:")]
