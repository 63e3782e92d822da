"""The JSON Schema of a spec file, generated from the spec model (:mod:`image_factory.spec`).

Editors use it to complete and check spec files: the committed copy is ``include/schema/image-spec.schema.json``
(``python -m image_factory schema`` prints it), and ``tests/test_schema.py`` fails when the two disagree.

The model stays the authority. The schema is pydantic's schema of :class:`~image_factory.spec.ImageSpec` under
a top-level ``image:`` key, plus only the rules a JSON Schema states simply: the validators' patterns (built
from the same regular expressions), the ``size`` alias, the port range, the tag key prefixes and the
``configure`` tool rules. Every spec the model accepts, the schema accepts; the model may refuse more (a cron
expression, a parameter named where it cannot be resolved yet, ...).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from image_factory import spec as model
from image_factory.parameters import BUILDER_OUTPUTS
from image_factory.parameters import NAME as PARAMETER_NAME

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:image-factory:schema:image-spec"
#: The committed copy, referred to by the specs' ``# yaml-language-server: $schema=...`` line.
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "include" / "schema" / "image-spec.schema.json"
REGENERATE = "PYTHONPATH=plugins python -m image_factory schema > include/schema/image-spec.schema.json"

#: Tools whose ``configure.command`` is not used (the model refuses one).
TOOLS_WITHOUT_COMMAND = ("shell", "ansible")
#: Placeholders a command template may use.
TEMPLATE_FIELDS = ("code_repo", "server_role")


class SchemaError(Exception):
    """The model no longer has a field or shape this module adds rules to: update this module."""


def _body(regex: re.Pattern) -> str:
    """A fully anchored expression without its anchors (``^...\\Z`` in the model: a JSON Schema's ``$`` is
    already the very end)."""
    pattern = regex.pattern
    if not pattern.startswith("^") or not pattern.endswith(("$", r"\Z")):
        raise SchemaError(f"expected an anchored pattern, got {pattern!r}")
    return pattern[1:].removesuffix("$").removesuffix(r"\Z")


#: A well-formed ``${NAME}`` somewhere in the value: the validators leave such values to run time.
PARAMETER = r"\$\{" + _body(PARAMETER_NAME) + r"\}"
#: The same, for fields needed before the builder infrastructure exists (its outputs are refused there).
EARLY_PARAMETER = (r"\$\{(?!(?:" + "|".join(BUILDER_OUTPUTS) + r")\})" + _body(PARAMETER_NAME) + r"\}")


def _pattern(*alternatives: str, parameter: str | None = PARAMETER) -> str:
    """Matches a value that is one of ``alternatives`` exactly, or (if given) holds a ``parameter``."""
    parts = [f"^(?:{alternative})$" for alternative in alternatives]
    return "|".join([*parts, parameter] if parameter else parts)


def _property(schema: dict, name: str) -> dict:
    try:
        return schema["properties"][name]
    except KeyError:
        raise SchemaError(f"the model has no field {name!r} any more: update image_factory/schema.py") from None


def _string_form(prop: dict) -> dict:
    """The schema of the string form of a field typed ``str``, ``str | None`` or a union with a string."""
    if prop.get("type") == "string":
        return prop
    for branch in prop.get("anyOf", []) + prop.get("oneOf", []):
        if branch.get("type") == "string":
            return branch
    raise SchemaError(f"expected a string field, got {prop}")


def _add_defaults(schema: dict, model_class: type[BaseModel]) -> None:
    """Pydantic leaves out the defaults made by a factory; editors show them."""
    for name, field in model_class.model_fields.items():
        if field.default_factory is not None:
            _property(schema, name)["default"] = field.get_default(call_default_factory=True)


def _image_rules(image: dict) -> None:
    _string_form(_property(image, "name"))["pattern"] = _pattern(_body(model.IMAGE_NAME), parameter=None)
    ssm = re.escape(model.SSM_PREFIX) + _body(model.SSM_PARAMETER)
    _string_form(_property(image, "origin"))["pattern"] = _pattern(_body(model.AMI_ID), ssm,
                                                                   parameter=EARLY_PARAMETER)
    _string_form(_property(image, "region"))["pattern"] = _pattern(_body(model.REGION), parameter=EARLY_PARAMETER)
    _size_rules(_property(image, "instance_size"))
    _string_form(_property(image, "subnet"))["pattern"] = _pattern(_body(model.SUBNET_ID))
    _string_form(_property(image, "ssh_key"))["const"] = "${IMAGE_BUILDER_SSH_KEY}"
    _string_form(_property(image, "ssh_username"))["pattern"] = _pattern(_body(model.USERNAME), parameter=None)
    _string_form(_property(image, "aws_conn_id"))["pattern"] = _pattern(_body(model.CONN_ID), parameter=None)
    tags = _property(image, "tags")
    # Keys: the model's own pattern uses Python's Unicode \w, which a JavaScript editor would read as ASCII only.
    # The reserved prefixes in any case (the model also refuses look-alike characters, which a pattern cannot).
    reserved = "|".join("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in prefix)
                        for prefix in model.RESERVED_TAG_PREFIXES)
    tags["propertyNames"] = {"minLength": 1, "maxLength": 128, "not": {"pattern": f"^(?:{reserved})"}}
    tags["additionalProperties"] = {**tags.get("additionalProperties", {}), "maxLength": model.MAX_TAG_VALUE}
    tags["maxProperties"] = model.MAX_SPEC_TAGS
    _property(image, "egress_ports")["items"].update({"minimum": 1, "maximum": 65535})
    # The seed's Example 13-2 writes `size:`; the model takes it for `instance_size`, never both.
    alias = copy.deepcopy(_property(image, "instance_size"))
    alias.pop("default", None)
    alias["title"] = "Size"
    alias["description"] = "Same as `instance_size` (the spelling of the seed's Example 13-2); give one of them."
    image["properties"]["size"] = alias
    image["dependentSchemas"] = {"size": {"not": {"required": ["instance_size"]}}}


def _size_rules(prop: dict) -> None:
    """A size (or instance type), or a non-empty list of them without repeats, tried in order."""
    one = [{"enum": list(model.INSTANCE_SIZES)}, {"pattern": _pattern(_body(model.INSTANCE_TYPE))}]
    nested = [branch for branch in prop.get("anyOf", []) if "oneOf" in branch]
    if nested:  # (a field that may also be null)
        _size_rules(nested[0])
        return
    _string_form(prop)["anyOf"] = one
    for branch in prop.get("anyOf", []) + prop.get("oneOf", []):
        if branch.get("type") == "array":
            branch.update({"minItems": 1, "maxItems": model.MAX_INSTANCE_TYPES, "uniqueItems": True})
            branch["items"] = {"type": "string", "anyOf": copy.deepcopy(one)}
            return
    raise SchemaError(f"expected instance_size to be a string or a list, got {prop}")


def _configure_rules(configure: dict) -> None:
    tools = _property(configure, "tool").get("enum", [])
    missing = [tool for tool in ("command", *TOOLS_WITHOUT_COMMAND) if tool not in tools]
    if missing:
        raise SchemaError(f"configure.tool no longer offers {missing}: update image_factory/schema.py")
    _string_form(_property(configure, "server_role"))["pattern"] = _pattern(_body(model.ROLE_NAME))
    # Any {field} other than the template's fields (the model's re.findall(r"{([^{}]*)}", ...)).
    unknown = r"\{(?!(?:" + "|".join(TEMPLATE_FIELDS) + r")\})[^{}]*\}"
    _string_form(_property(configure, "command"))["not"] = {"pattern": unknown}

    def when(tool: str | list[str], then: dict) -> dict:
        condition = {"enum": tool} if isinstance(tool, list) else {"const": tool}
        return {"if": {"properties": {"tool": condition}, "required": ["tool"]}, "then": then}

    rules = [
        when("command", {"required": ["command"], "properties": {"command": {"type": "string", "minLength": 1}}}),
        when(list(TOOLS_WITHOUT_COMMAND), {"properties": {"command": {"not": {"type": "string", "minLength": 1}}}}),
        # For ansible, code_repo is a folder of the ansible folder.
        when("ansible", {"properties": {"code_repo": {
            "anyOf": [{"type": "null"}, {"type": "string", "pattern": _pattern(_body(model.ANSIBLE_SOURCE))}]}}}),
    ]
    configure["allOf"] = rules


def _distribute_rules(distribute: dict, share_with: dict) -> None:
    regions = _property(distribute, "regions")
    regions["items"] = {"type": "string", "enum": sorted(model.KNOWN_REGIONS)}
    regions["uniqueItems"] = True
    distribute["anyOf"] = [{"required": ["regions"]}, {"required": ["share_with"]}]
    for name, regex in (("accounts", model.ACCOUNT_ID), ("organizations", model.ORGANIZATION_ARN),
                        ("organizational_units", model.ORGANIZATIONAL_UNIT_ARN)):
        field = _property(share_with, name)
        field["items"] = {"type": "string", "pattern": _pattern(_body(regex), parameter=None)}
        field["uniqueItems"] = True
    share_with["minProperties"] = 1


def spec_schema(image_model: type[BaseModel] = model.ImageSpec) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a spec file: ``{"image": <the model>}``, nothing else."""
    image = image_model.model_json_schema()
    definitions = image.pop("$defs", {})
    _add_defaults(image, image_model)
    _image_rules(image)
    configure = definitions.get("Configure")
    if configure is None:
        raise SchemaError("the model has no Configure section any more: update image_factory/schema.py")
    _add_defaults(configure, model.Configure)
    _configure_rules(configure)
    if "Distribute" not in definitions or "ShareWith" not in definitions:
        raise SchemaError("the model has no Distribute section any more: update image_factory/schema.py")
    for name in ("ImageTests", "Notify"):
        if name not in definitions:
            raise SchemaError(f"the model has no {name} section any more: update image_factory/schema.py")
    _size_rules(_property(definitions["ImageTests"], "instance_size"))
    _add_defaults(definitions["Notify"], model.Notify)
    _string_form(_property(definitions["Notify"], "sns_topic_arn"))["pattern"] = _pattern(
        _body(model.SNS_TOPIC_ARN), parameter=None)
    _property(definitions["Notify"], "events")["uniqueItems"] = True
    _add_defaults(definitions["Distribute"], model.Distribute)
    _add_defaults(definitions["ShareWith"], model.ShareWith)
    _distribute_rules(definitions["Distribute"], definitions["ShareWith"])
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": SCHEMA_ID,
        "title": "Image Factory image spec",
        "description": "One server image built as code: a YAML file with a top-level `image:` key "
                       "(include/specs/, one Airflow DAG each).",
        "type": "object",
        "required": ["image"],
        "additionalProperties": False,
        "properties": {"image": image},
        "$defs": definitions,
    }


def schema_text(image_model: type[BaseModel] = model.ImageSpec) -> str:
    """The schema as committed: sorted keys, two-space indents, a final newline."""
    return json.dumps(spec_schema(image_model), indent=2, sort_keys=True) + "\n"
