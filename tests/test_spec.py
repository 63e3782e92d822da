"""Image specs: the seed's examples load with their real values, and every bad spec gets a clear error."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from image_factory.spec import OriginFilter, SpecError, instance_type, load_spec, load_specs, parse_spec

FIXTURES = Path(__file__).parent / "fixtures"
SEED = FIXTURES / "seed"
BAD_SPECS = sorted((FIXTURES / "bad_specs").glob("*.yaml"))
LIVE_SPEC = Path(__file__).parents[1] / "include" / "specs" / "shopspinner-linux-image.yaml"
EXPECT = re.compile(r"^# expect: (?P<field>.+?) \| (?P<substring>.+)$")


def spec_text(name: str = "shopspinner-linux-image", **fields: str) -> str:
    body = {"name": name, "origin": "ami-0123456789abcdef0", "region": "eu-west-1", **fields}
    return "image:\n" + "".join(f"  {key}: {value}\n" for key, value in body.items())


# The seed's examples


def test_example_13_1_is_a_plain_image_of_an_origin():
    loaded = load_spec(SEED / "example-13-1.yaml")
    spec = loaded.image
    assert loaded.name == "shopspinner-linux-image"
    assert spec.platform == "aws"
    assert spec.origin == "ami-0123456789abcdef0"
    assert spec.region == "eu-west-1"
    assert spec.instance_size == "small"
    assert instance_type(spec.instance_size) == "t3.small"
    assert spec.subnet is None
    assert spec.ssh_key is None
    assert spec.configure is None
    assert spec.parameters() == set()
    assert not spec.wants_builder_subnet


def test_example_13_2_size_becomes_instance_size():
    path = SEED / "example-13-2.yaml"
    text = path.read_text()
    assert "  size: small" in text and "instance_size" not in text  # the seed's own spelling
    spec = load_spec(path).image
    assert spec.name == "shopspinner-linux-image"
    assert spec.platform == "aws"  # the seed gives no platform
    assert spec.origin == "ami-0123456789abcdef0"
    assert spec.region == "eu-west-1"
    assert spec.instance_size == "small"
    assert spec.subnet == "${IMAGE_BUILDER_SUBNET_ID}"
    assert spec.ssh_key == "${IMAGE_BUILDER_SSH_KEY}"
    assert spec.parameters() == {"IMAGE_BUILDER_SUBNET_ID", "IMAGE_BUILDER_SSH_KEY"}
    assert spec.wants_builder_subnet


def test_example_13_3_configures_a_server_role():
    spec = load_spec(SEED / "example-13-3.yaml").image
    assert spec.name == "shopspinner-linux-image"
    assert spec.region == "eu-west-1"
    assert spec.instance_size == "small"
    assert spec.subnet == "${IMAGE_BUILDER_SUBNET_ID}"
    assert spec.ssh_key is None
    assert spec.configure is not None
    assert spec.configure.tool == "servermaker"
    assert spec.configure.code_repo == "servermaker.shopspinner.xyz"
    assert spec.configure.server_role == "appserver"
    assert spec.configure.command is None
    assert spec.parameters() == {"IMAGE_BUILDER_SUBNET_ID"}


def test_live_spec_loads():
    loaded = load_spec(LIVE_SPEC)
    spec = loaded.image
    assert loaded.path == LIVE_SPEC
    assert loaded.name == "shopspinner-linux-image"
    assert spec.region == "eu-west-1"
    assert spec.origin.startswith("resolve:ssm:/aws/service/")
    assert spec.configure is not None
    assert (spec.configure.tool, spec.configure.server_role) == ("shell", "appserver")
    assert spec.schedule == "0 2 * * *"
    assert spec.tags == {"team": "shopspinner"}
    assert re.fullmatch(r"[0-9a-f]{16}", loaded.content_hash)


def test_content_hash_follows_the_file(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(spec_text())
    second.write_text(spec_text(instance_size="medium"))
    assert load_spec(first).content_hash == load_spec(first).content_hash
    assert load_spec(first).content_hash != load_spec(second).content_hash


@pytest.mark.parametrize("origin", [
    "ami-0123456789abcdef0",
    "ami-12345678",
    "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    "${ORIGIN_AMI}",
])
def test_origin_as_text(origin):
    assert parse_spec(spec_text(origin=f'"{origin}"')).origin == origin


def test_origin_as_a_name_and_owners():
    spec = parse_spec(spec_text(origin="{name: al2023-ami-2023.*-x86_64, owners: [amazon, '137112412989']}"))
    assert isinstance(spec.origin, OriginFilter)
    assert spec.origin.name == "al2023-ami-2023.*-x86_64"
    assert spec.origin.owners == ["amazon", "137112412989"]
    assert spec.origin.architecture is None


def test_origin_mapping_with_architecture():
    spec = parse_spec(spec_text(origin="{name: al2023-ami-*, owners: [amazon], architecture: arm64}"))
    assert isinstance(spec.origin, OriginFilter)
    assert spec.origin.architecture == "arm64"


def test_instance_type_passes_literal_types_through():
    spec = parse_spec(spec_text(instance_size="m6i.large"))
    assert instance_type(spec.instance_size) == "m6i.large"
    assert instance_type("large") == "t3.large"


# Bad specs: one file each, its first line says which field and what message to expect


def expectation(path: Path) -> tuple[str, str]:
    first_line = path.read_bytes().split(b"\n", 1)[0].decode()
    match = EXPECT.match(first_line)
    assert match, f"{path.name}: the first line must be '# expect: <field> | <substring of message>'"
    return match["field"], match["substring"]


def test_bad_spec_corpus_is_large_enough():
    assert len(BAD_SPECS) >= 35


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_is_rejected_naming_file_field_and_problem(path):
    field, substring = expectation(path)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    error = caught.value
    assert error.path == str(path)
    lines = str(error).splitlines()
    assert lines and all(line.startswith(f"{path}: ") for line in lines)
    wanted = [line for line in lines if line.startswith(f"{path}: {field}: ")]
    assert wanted, f"no problem reported for {field!r}:\n{error}"
    assert any(substring in line for line in wanted), f"{substring!r} not in:\n{error}"


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec_fields_show_no_pydantic_internals(path):
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    for field, _ in caught.value.problems:
        assert "function-" not in field
        assert not {"str", "string", "mapping", "OriginFilter"} & set(re.split(r"[.\[\]]", field)), field


def test_typo_in_an_image_key_suggests_the_right_one():
    with pytest.raises(SpecError) as caught:
        parse_spec("image:\n  name: shopspinner-linux-image\n  origin: ami-0123456789abcdef0\n"
                   "  regoin: eu-west-1\n", "typo.yaml")
    assert "typo.yaml: image.regoin: unknown key (did you mean 'region'?)" in str(caught.value).splitlines()


def test_an_origin_mapping_is_not_also_reported_as_a_bad_string():
    with pytest.raises(SpecError) as caught:
        parse_spec(spec_text(origin="{name: al2023-ami-*}"))
    assert caught.value.problems == [("image.origin.owners", "required field is missing")]


# A folder of specs


def test_load_specs_keeps_good_specs_and_reports_each_bad_file(tmp_path):
    for path in BAD_SPECS:
        shutil.copy(path, tmp_path / path.name)
    shutil.copy(SEED / "example-13-1.yaml", tmp_path / "good-linux.yaml")
    (tmp_path / "good-db.yaml").write_text(
        (SEED / "example-13-3.yaml").read_text().replace("shopspinner-linux-image", "shopspinner-db-image"))

    specs, errors = load_specs(tmp_path)

    assert [(s.name, s.path.name) for s in specs] == [
        ("shopspinner-db-image", "good-db.yaml"),
        ("shopspinner-linux-image", "good-linux.yaml"),
    ]
    assert sorted(Path(e.path).name for e in errors) == sorted(p.name for p in BAD_SPECS)
    for error in errors:
        assert Path(error.path).parent == tmp_path
        assert all(line.startswith(f"{error.path}: ") for line in str(error).splitlines())


def test_two_specs_with_the_same_name_are_both_rejected(tmp_path):
    (tmp_path / "first.yaml").write_text(spec_text("shopspinner-linux-image"))
    (tmp_path / "second.yml").write_text(spec_text("shopspinner-linux-image", instance_size="large"))
    (tmp_path / "other.yaml").write_text(spec_text("shopspinner-db-image"))

    specs, errors = load_specs(tmp_path)

    assert [s.name for s in specs] == ["shopspinner-db-image"]
    assert sorted(Path(e.path).name for e in errors) == ["first.yaml", "second.yml"]
    for error in errors:
        [(field, message)] = error.problems
        assert field == "image.name"
        assert "'shopspinner-linux-image'" in message
        assert "first.yaml" in message and "second.yml" in message
        assert str(error).startswith(f"{error.path}: image.name: ")


def test_an_origin_naming_a_channel_needs_that_spec_and_that_channel(tmp_path):
    base = LIVE_SPEC.read_text()
    layered = (LIVE_SPEC.parents[1] / "examples" / "shopspinner-webapp-image.yaml").read_text()
    (tmp_path / "webapp.yaml").write_text(layered)
    specs, errors = load_specs(tmp_path)
    assert specs == []
    assert [str(e) for e in errors] == [f"{tmp_path / 'webapp.yaml'}: image.origin: names channel 'latest' of spec "
                                        "'shopspinner-linux-image', and no spec of that name is loaded"]
    (tmp_path / "base.yaml").write_text(base.replace("[latest]", "[stable]"))
    specs, errors = load_specs(tmp_path)
    assert [s.name for s in specs] == ["shopspinner-linux-image"]
    assert "which promotes stable" in str(errors[0])
    (tmp_path / "base.yaml").write_text(base)
    specs, errors = load_specs(tmp_path)
    assert [s.name for s in specs] == ["shopspinner-linux-image", "shopspinner-webapp-image"] and errors == []
