"""The JSON Schema of spec files: generated from the model, committed, and in step with what the model accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from pydantic import Field, create_model

from image_factory.schema import REGENERATE, SCHEMA_PATH, schema_text, spec_schema
from image_factory.spec import ImageSpec, SpecError, parse_spec

PROJECT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
GOOD_SPECS = sorted([*(PROJECT / "include" / "specs").glob("*.y*ml"),
                     *(PROJECT / "include" / "examples").glob("*.y*ml"),
                     *(FIXTURES / "seed").glob("*.yaml")])
BAD_SPECS = sorted((FIXTURES / "bad_specs").glob("*.yaml"))
#: Bad specs whose rule a JSON Schema cannot state (simply): the model alone refuses them.
BEYOND_A_SCHEMA = {
    "not-utf8": "not YAML text at all",
    "yaml-syntax-error": "not YAML at all",
    "schedule-every-night": "cron syntax",
    "parameter-unterminated": "a malformed ${ in free text",
    "test-folder-missing": "a folder on disk",
    "test-tool-without-files": "the files in a folder on disk",
    "promote-approval-also-a-channel": "a value in two lists at once",
    "promote-without-tests": "one key needing another",
    "promote-channel-with-slash": "a check of each list item (the model's validator)",
    "retention-delete-before-deprecate": "one value bounded by another",
    "distribute-own-region": "one value compared with another (the build's region)",
}


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return Draft202012Validator(spec_schema())


def problems(validator: Draft202012Validator, document) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(document)]


# The committed schema is the model's


def test_the_committed_schema_is_generated_from_the_model():
    committed = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
    assert committed == schema_text(), (
        f"{SCHEMA_PATH.relative_to(PROJECT)} is not the spec model's schema any more: regenerate it with\n"
        f"    {REGENERATE}")


def test_a_changed_validator_pattern_makes_the_sync_check_fail(monkeypatch):
    monkeypatch.setattr("image_factory.spec.REGION", re.compile(r"^[a-z]{2}-[a-z]+-[0-9]$"))
    assert schema_text() != SCHEMA_PATH.read_text()


def test_a_model_change_makes_the_sync_check_fail():
    """The check above is not vacuous: a field added to the model changes the generated schema."""
    changed = create_model("ImageSpec", __base__=ImageSpec,
                           owner_team=(str | None, Field(default=None, description="Who answers for the image.")))
    assert schema_text(changed) != SCHEMA_PATH.read_text()
    assert "owner_team" in spec_schema(changed)["properties"]["image"]["properties"]
    assert "owner_team" not in json.loads(SCHEMA_PATH.read_text())["properties"]["image"]["properties"]


def test_the_schema_is_a_valid_draft_2020_12_schema_of_a_closed_top_level_object():
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] and schema["title"]
    assert schema["required"] == ["image"]
    assert schema["additionalProperties"] is False
    image = schema["properties"]["image"]
    assert image["additionalProperties"] is False
    assert set(image["required"]) == {"name", "origin", "region"}


def test_every_field_of_the_model_is_in_the_schema_with_a_description():
    image = spec_schema()["properties"]["image"]
    assert set(image["properties"]) == set(ImageSpec.model_fields) | {"size"}
    sections = [image, *spec_schema()["$defs"].values()]
    undescribed = [f"{section['title']}.{name}" for section in sections
                   for name, field in section["properties"].items() if not field.get("description")]
    assert not undescribed, f"add Field(description=...) in image_factory/spec.py for {undescribed}"


def test_the_spec_files_point_editors_at_the_schema():
    for path in sorted((PROJECT / "include" / "specs").glob("*.y*ml")):
        first_line = path.read_text().splitlines()[0]
        assert first_line == "# yaml-language-server: $schema=../schema/image-spec.schema.json", path.name
        assert (path.parent / "../schema/image-spec.schema.json").resolve() == SCHEMA_PATH


# What the schema accepts


@pytest.mark.parametrize("path", GOOD_SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_shipped_specs_and_the_seed_examples_are_valid(validator, path):
    assert problems(validator, yaml.safe_load(path.read_text())) == []


@pytest.mark.parametrize("body", [
    {"origin": "${ORIGIN_AMI}", "region": "${BUILD_REGION}"},
    {"origin": "ami-12345678", "size": "medium"},
    {"origin": {"name": "al2023-ami-*", "owners": ["amazon", "137112412989"], "architecture": "arm64"}},
    {"instance_size": "m6i.large", "subnet": "subnet-0123abcd", "ssh_username": "ubuntu"},
    {"instance_size": "${SIZE}", "subnet": None, "ssh_key": None, "configure": None, "schedule": "@daily"},
    {"tags": {"équipe": "shopspinner", "cost centre": "x" * 256}, "egress_ports": [1, 65535]},
    {"configure": {"tool": "command", "server_role": "${ROLE}", "command": "run {code_repo} {server_role}"}},
    {"configure": {"tool": "servermaker", "server_role": "appserver", "command": "sm --repo={code_repo}"}},
    {"configure": {"tool": "shell", "server_role": "appserver", "command": ""}},
    {"configure": {"tool": "ansible", "server_role": "appserver", "code_repo": "shopspinner/site"}},
    {"aws_conn_id": "aws_eu.builds", "public_ip": True, "allow_ssh_from_anywhere": True},
], ids=lambda body: ",".join(body))
def test_what_the_model_accepts_the_schema_accepts(validator, body):
    document = {"image": {"name": "shopspinner-linux-image", "origin": "ami-0123456789abcdef0",
                          "region": "eu-west-1", **body}}
    parse_spec(yaml.safe_dump(document))  # the model accepts it
    assert problems(validator, document) == []


# What the schema refuses


def test_the_corpus_exceptions_are_real_bad_specs():
    assert set(BEYOND_A_SCHEMA) <= {path.stem for path in BAD_SPECS}


@pytest.mark.parametrize("path", BAD_SPECS, ids=lambda p: p.stem)
def test_the_schema_refuses_the_bad_specs_it_can_describe(validator, path):
    with pytest.raises(SpecError):
        parse_spec(path.read_bytes().decode("utf-8", "replace"), path)  # the model refuses it
    if path.stem in BEYOND_A_SCHEMA:
        pytest.skip(f"the model alone refuses it: {BEYOND_A_SCHEMA[path.stem]}")
    assert problems(validator, yaml.safe_load(path.read_text())), f"the schema accepts {path.name}"


@pytest.mark.parametrize(("body", "where"), [
    ({"regoin": "eu-west-1"}, "image: Additional properties are not allowed ('regoin' was unexpected)"),
    ({"ssh_username": 3}, "image/ssh_username: 3 is not of type 'string'"),
    ({"region": "europe"}, "image/region: 'europe' does not match"),
    ({"egress_ports": [443, 70000]}, "image/egress_ports/1: 70000 is greater than the maximum of 65535"),
    ({"public_ip": "yes"}, "image/public_ip: 'yes' is not of type 'boolean'"),
], ids=["unknown-key", "wrong-type", "bad-region", "port-range", "yes-string"])
def test_the_schema_names_the_field(validator, body, where):
    document = {"image": {"name": "shopspinner-linux-image", "origin": "ami-0123456789abcdef0",
                          "region": "eu-west-1", **body}}
    assert any(problem.startswith(where) for problem in problems(validator, document)), problems(validator, document)


def test_a_missing_origin_is_reported():
    found = problems(Draft202012Validator(spec_schema()), {"image": {"name": "abc", "region": "eu-west-1"}})
    assert found == ["image: 'origin' is a required property"]


def test_the_patterns_are_the_validators_own():
    """Each pattern is built from spec.py's regular expressions, so a change there changes the schema."""
    image = spec_schema()["properties"]["image"]["properties"]
    region = image["region"]["pattern"]
    assert re.search(region, "eu-west-1") and re.search(region, "us-gov-west-1")
    assert not re.search(region, "europe") and not re.search(region, "${IMAGE_BUILDER_SUBNET_ID}")
    assert re.search(region, "${BUILD_REGION}")
    origin = next(b for b in image["origin"]["oneOf"] if b.get("type") == "string")["pattern"]
    for good in ("ami-12345678", "ami-0123456789abcdef0", "resolve:ssm:/aws/service/x", "${ORIGIN}"):
        assert re.search(origin, good), good
    for bad in ("ami-12345", "fci-12345678", "resolve:ssm:al2023", "${lower}"):
        assert not re.search(origin, bad), bad
