"""``${NAME}`` parameters: where values come from, nesting, cycles, and re-validation of what they resolve to."""

from __future__ import annotations

import pytest

from image_factory.parameters import EARLY_FIELDS, ParameterError, chain, resolve
from image_factory.spec import OriginFilter, parse_spec

SPEC = """
image:
  name: shopspinner-linux-image
  origin: ami-0123456789abcdef0
  region: ${AWS_REGION}
  subnet: ${IMAGE_BUILDER_SUBNET_ID}
  ssh_key: ${IMAGE_BUILDER_SSH_KEY}
  description: built by ${TEAM} from ${GIT_SHA}
  configure:
    tool: servermaker
    code_repo: servermaker.shopspinner.xyz
    server_role: ${SERVER_ROLE}
"""

VALUES = {
    "AWS_REGION": "eu-west-1",
    "IMAGE_BUILDER_SUBNET_ID": "subnet-0123456789abcdef0",
    "IMAGE_BUILDER_SSH_KEY": "image-factory-build-1",
    "TEAM": "shopspinner",
    "GIT_SHA": "abc123",
    "SERVER_ROLE": "appserver",
}


def lookup_of(values: dict[str, str]):
    return chain(values)


def error_of(spec, values, fields=None) -> str:
    with pytest.raises(ParameterError) as caught:
        resolve(spec, lookup_of(values), fields)
    return str(caught.value)


@pytest.fixture
def spec():
    return parse_spec(SPEC, "spec.yaml")


def test_every_parameter_is_replaced(spec):
    resolved = resolve(spec, lookup_of(VALUES))
    assert resolved.region == "eu-west-1"
    assert resolved.subnet == "subnet-0123456789abcdef0"
    assert resolved.ssh_key == "image-factory-build-1"
    assert resolved.description == "built by shopspinner from abc123"
    assert resolved.configure.server_role == "appserver"
    assert resolved.parameters() == set()
    assert spec.region == "${AWS_REGION}"  # the spec itself is left as it was


# Where values come from: outputs > trigger params > Variables > environment


def sources(name: str, *holders: str):
    """The four sources in their order; each holder in ``holders`` has its own value for ``name``."""
    outputs = {name: "from-outputs"} if "outputs" in holders else {}
    trigger = {name: "from-trigger"} if "trigger" in holders else {}
    variables = {name: "from-variables"} if "variables" in holders else {}
    environment = {name: "from-environment"} if "environment" in holders else {}
    return chain(outputs, trigger, variables.get, environment)


@pytest.mark.parametrize(("holders", "expected"), [
    (("outputs", "trigger", "variables", "environment"), "from-outputs"),
    (("trigger", "variables", "environment"), "from-trigger"),
    (("variables", "environment"), "from-variables"),
    (("environment",), "from-environment"),
    ((), None),
])
def test_chain_takes_the_first_source_that_has_the_value(holders, expected):
    assert sources("TEAM", *holders)("TEAM") == expected


def test_chain_treats_an_empty_value_as_unset():
    assert chain({"TEAM": ""}, {"TEAM": "shopspinner"})("TEAM") == "shopspinner"


def test_chain_calls_a_variables_like_function_only_when_earlier_sources_miss():
    asked = []

    def variables(name: str) -> str | None:
        asked.append(name)
        return {"GIT_SHA": "from-variables"}.get(name)

    lookup = chain({"TEAM": "from-outputs"}, {}, variables, {"GIT_SHA": "from-environment"})
    assert lookup("TEAM") == "from-outputs"
    assert lookup("GIT_SHA") == "from-variables"
    assert asked == ["GIT_SHA"]


def test_resolve_uses_the_source_order(spec):
    outputs = {"IMAGE_BUILDER_SUBNET_ID": "subnet-000000000000000aa"}
    trigger = {"IMAGE_BUILDER_SUBNET_ID": "subnet-000000000000000bb", "AWS_REGION": "eu-central-1"}
    variables = {"AWS_REGION": "us-east-1", "TEAM": "platform"}
    environment = {**VALUES, "TEAM": "from-environment", "GIT_SHA": "def456"}
    resolved = resolve(spec, chain(outputs, trigger, variables.get, environment))
    assert resolved.subnet == "subnet-000000000000000aa"
    assert resolved.region == "eu-central-1"
    assert resolved.description == "built by platform from def456"


# Nesting and cycles


def test_a_value_may_refer_to_another_parameter(spec):
    values = {**VALUES, "AWS_REGION": "${HOME_REGION}", "HOME_REGION": "${DR_REGION}", "DR_REGION": "eu-north-1"}
    assert resolve(spec, lookup_of(values)).region == "eu-north-1"


def test_a_parameter_that_refers_to_itself_is_an_error(spec):
    message = error_of(spec, {**VALUES, "TEAM": "team ${TEAM}"})
    assert "'shopspinner-linux-image'" in message
    assert "image.description" in message
    assert "${TEAM}" in message
    assert "TEAM -> TEAM" in message


def test_a_cycle_through_two_parameters_is_an_error(spec):
    message = error_of(spec, {**VALUES, "SERVER_ROLE": "${ROLE_A}", "ROLE_A": "${ROLE_B}", "ROLE_B": "${ROLE_A}"})
    assert "'shopspinner-linux-image'" in message
    assert "image.configure.server_role" in message
    assert "${ROLE_A}" in message
    assert "ROLE_A -> ROLE_B -> ROLE_A" in message


def test_the_same_parameter_twice_in_one_value_is_no_cycle(spec):
    values = {**VALUES, "TEAM": "${GIT_SHA}-${GIT_SHA}"}
    assert resolve(spec, lookup_of(values)).description == "built by abc123-abc123 from abc123"


# Unset parameters


def test_an_unset_parameter_names_spec_field_and_parameter(spec):
    values = {k: v for k, v in VALUES.items() if k != "IMAGE_BUILDER_SUBNET_ID"}
    message = error_of(spec, values)
    assert "'shopspinner-linux-image'" in message
    assert "image.subnet" in message
    assert "${IMAGE_BUILDER_SUBNET_ID} is not set" in message


def test_an_unset_parameter_inside_a_nested_value_names_its_path():
    spec = parse_spec(SPEC.replace("  origin: ami-0123456789abcdef0",
                                   "  origin:\n    name: ${AMI_NAME}\n    owners: [amazon]"))
    message = error_of(spec, VALUES)
    assert "image.origin.name" in message
    assert "${AMI_NAME} is not set" in message


def test_an_unset_parameter_reached_through_another_is_named(spec):
    message = error_of(spec, {**VALUES, "AWS_REGION": "${HOME_REGION}"})
    assert "image.region" in message
    assert "${HOME_REGION} is not set" in message


# Resolved values obey the same rules as literal ones


def test_a_resolved_value_is_validated_again(spec):
    message = error_of(spec, {**VALUES, "AWS_REGION": "europe"})
    assert "'shopspinner-linux-image'" in message
    assert "image.region: expected an AWS region such as eu-west-1" in message
    # A resolved value may come from a Variable or the environment: never shown.
    assert "europe" not in message


@pytest.mark.parametrize(("name", "value", "field"), [
    ("IMAGE_BUILDER_SUBNET_ID", "my-subnet", "image.subnet"),
    ("SERVER_ROLE", "../etc", "image.configure.server_role"),
])
def test_other_resolved_values_are_validated_again(spec, name, value, field):
    message = error_of(spec, {**VALUES, name: value})
    assert f"{field}: expected" in message
    assert value not in message


def test_an_origin_mapping_survives_resolution():
    spec = parse_spec(SPEC.replace("  origin: ami-0123456789abcdef0",
                                   "  origin:\n    name: ${AMI_NAME}\n    owners: [amazon]"))
    resolved = resolve(spec, lookup_of({**VALUES, "AMI_NAME": "al2023-ami-*"}))
    assert resolved.origin == OriginFilter(name="al2023-ami-*", owners=["amazon"])


# fields= limits what is resolved


def test_early_fields_resolve_before_the_builder_outputs_exist(spec):
    before = {k: v for k, v in VALUES.items() if not k.startswith("IMAGE_BUILDER_")}
    resolved = resolve(spec, lookup_of(before), fields=EARLY_FIELDS)
    assert resolved.region == "eu-west-1"
    assert resolved.subnet == "${IMAGE_BUILDER_SUBNET_ID}"
    assert resolved.ssh_key == "${IMAGE_BUILDER_SSH_KEY}"
    assert resolved.description == "built by ${TEAM} from ${GIT_SHA}"


def test_fields_outside_the_list_are_not_looked_up(spec):
    resolved = resolve(spec, lookup_of({"TEAM": "shopspinner", "GIT_SHA": "abc123"}), fields=("description",))
    assert resolved.description == "built by shopspinner from abc123"
    assert resolved.region == "${AWS_REGION}"
    assert resolved.configure.server_role == "${SERVER_ROLE}"


def test_a_listed_field_with_an_unset_parameter_still_fails(spec):
    message = error_of(spec, {}, fields=("region",))
    assert "image.region" in message
    assert "${AWS_REGION} is not set" in message
