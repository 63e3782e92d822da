"""``${NAME}`` parameters in spec values, resolved at run time, never at parse time.

Sources, first match wins: the builder-infrastructure outputs, the trigger's fields for the spec's declared
parameters, Airflow Variables, the environment. A value found in a Variable or the environment may itself hold
``${OTHER}``; a name that refers back to itself, directly or through others, is an error. A value from the
trigger is data: it may not hold ``${`` at all (:func:`trigger_values`), and an error never quotes a resolved
value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from image_factory.errors import InvalidValues, PermanentError

PARAMETER_PATTERN = re.compile(r"\$\{([^}]*)\}")
NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")  # (\Z: '$' would take a name ending in a newline)
#: A value may name parameters whose values name parameters...: at most this many levels deep.
MAX_DEPTH = 10
#: A field's value, all its parameters resolved, is at most this long (so is each parameter's value).
MAX_RESOLVED = 4096

#: Parameters produced by the builder-network step.
BUILDER_OUTPUTS = ("IMAGE_BUILDER_SUBNET_ID", "IMAGE_BUILDER_SSH_KEY", "IMAGE_BUILDER_SECURITY_GROUP_ID")

#: Fields read before the builder network exists: they cannot use its outputs.
EARLY_FIELDS = ("origin", "region", "aws_conn_id")

Lookup = Callable[[str], "str | None"]


class ParameterError(PermanentError):
    """A parameter that cannot be resolved; names the spec, the field and the parameter."""


class ImageSpec(Protocol):
    """What this module uses of a spec (image_factory.spec.ImageSpec, which imports this module to check its
    parameters when it is parsed: a Protocol here, not an import back)."""

    name: str
    overrides: list[str]

    def model_dump(self, **options) -> dict: ...

    def with_values(self, data: dict, context: dict | None = None, quote: bool = True) -> ImageSpec: ...

    def parameters(self) -> set[str]: ...


def _strings(value: Any, path: str = ""):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


def parameter_names(data: Any) -> set[str]:
    return {m for _, text in _strings(data) for m in PARAMETER_PATTERN.findall(text)}


def check_parameters(data: dict) -> list[tuple[str, str]]:
    """Parse-time checks of a spec's values (``data``): well-formed names, and no builder output where it cannot
    exist yet."""
    problems = []
    for path, text in _strings(data):
        for name in PARAMETER_PATTERN.findall(text):
            if not NAME.match(name):
                shown = name if len(name) <= 40 else name[:37] + "..."
                problems.append((f"image.{path}", f"parameter ${{{shown}}}: names are upper-case letters, "
                                                  "digits and '_'"))
            elif name in BUILDER_OUTPUTS and path.split(".")[0] in EARLY_FIELDS:
                problems.append((f"image.{path}", f"${{{name}}} is made by the builder-infrastructure step, "
                                                  "which runs after this field is needed"))
        if "${" in PARAMETER_PATTERN.sub("", text):
            problems.append((f"image.{path}", "unterminated '${' (write parameters as ${NAME})"))
    return problems


def chain(*sources: Mapping[str, Any] | Lookup) -> Lookup:
    """One lookup over several sources; a source is a mapping or a function returning None when unset."""

    def lookup(name: str) -> str | None:
        for source in sources:
            value = source(name) if callable(source) else source.get(name)
            if value not in (None, ""):
                return str(value)
        return None

    return lookup


def resolve_text(text: str, lookup: Lookup, *, spec_name: str, field: str,
                 _seen: tuple[str, ...] = ()) -> str:
    """``text`` with each ``${NAME}`` replaced by its value, itself resolved: at most MAX_DEPTH levels deep, at
    most MAX_RESOLVED characters in all. An error names the spec, the field and the parameters, never a value
    (a value may come from a Variable or the environment)."""
    where = f"spec {spec_name!r}, field image.{field}"

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if _seen and not NAME.match(name):  # (a spec's own names are checked when it is parsed)
            raise ParameterError(f"{where}: the value of parameter ${{{_seen[-1]}}} holds a malformed '${{...}}' "
                                 "(parameter names are upper-case letters, digits and '_')")
        if name in _seen:
            cycle = " -> ".join((*_seen, name))
            raise ParameterError(f"{where}: parameter ${{{name}}} refers to itself ({cycle})")
        if len(_seen) >= MAX_DEPTH:
            raise ParameterError(f"{where}: parameter ${{{name}}} is reached through {' -> '.join(_seen)}: "
                                 f"parameters nested deeper than {MAX_DEPTH} levels are refused")
        value = lookup(name)
        if value is None:
            raise ParameterError(
                f"{where}: parameter ${{{name}}} is not set (looked in the "
                "builder-infrastructure outputs, the trigger params, Airflow Variables and the environment)")
        if len(value) > MAX_RESOLVED:
            raise ParameterError(f"{where}: the value of parameter ${{{name}}} is longer than "
                                 f"{MAX_RESOLVED // 1024} KiB")
        return resolve_text(value, lookup, spec_name=spec_name, field=field, _seen=(*_seen, name))

    # By hand rather than with re.sub: the size is checked as the value is made, not once it is all made.
    parts: list[str] = []
    size = position = 0
    for match in PARAMETER_PATTERN.finditer(text):
        value = substitute(match)
        parts += [text[position:match.start()], value]
        size += match.start() - position + len(value)
        position = match.end()
        if size > MAX_RESOLVED:
            raise ParameterError(f"{where}: with parameter ${{{match.group(1)}}} resolved, the value is longer "
                                 f"than {MAX_RESOLVED // 1024} KiB")
    parts.append(text[position:])
    return "".join(parts)


def resolve(spec: ImageSpec, lookup: Lookup, fields: tuple[str, ...] | None = None) -> ImageSpec:
    """A copy of ``spec`` with every parameter in ``fields`` (default: all) replaced by its value."""
    found: list[str] = []

    def remembered(name: str) -> str | None:
        value = lookup(name)
        if value:
            found.append(value)
        return value

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            return resolve_text(value, remembered, spec_name=spec.name, field=path)
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    data = spec.model_dump(exclude_none=True)
    resolved = {k: (walk(v, k) if fields is None or k in fields else v) for k, v in data.items()}
    # Re-validate: a parameter's value obeys the same rules as a literal would. The error says what is wrong but
    # never shows a value: it may come from a Variable or the environment (a secret).
    try:
        return spec.with_values(resolved, context={"resolved": True}, quote=False)
    except InvalidValues as exc:
        message = str(exc)
        for value in sorted(found, key=len, reverse=True):
            message = message.replace(value, "<hidden>")
        raise ParameterError(f"spec {spec.name!r}: a parameter's value is not valid (values not shown): "
                             f"{message}") from None


#: Trigger-form fields that override the spec; empty means "as the spec says".
OVERRIDES = ("origin", "instance_size", "server_role", "extra_tags", "keep_on_failure_hours")
#: The overrides that change what goes into the image: a run with one of them moves no channel on its own.
CONTENT_OVERRIDES = ("origin", "server_role")


def _refuse_parameters(field: str, value: Any) -> None:
    """A trigger value is data: ``${...}`` in it is never resolved, so it is refused. The error names the field,
    never the value (it may have been written to make the factory print a secret)."""
    keys = [(f"{field} (a key)", str(key)) for key in value] if isinstance(value, dict) else []
    for path, text in [*_strings(value, field), *keys]:
        if "${" in text:
            raise ParameterError(f"trigger field {path!r}: '${{' is not allowed in a value given when a build is "
                                 "triggered (trigger values are used as they are, never resolved as parameters)")


def trigger_values(spec: ImageSpec, trigger: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """A trigger's (form or run conf) overrides given, and its values of the spec's declared ${NAME} parameters;
    both checked to be data. Other keys of the trigger are not used."""
    overrides = {k: trigger[k] for k in OVERRIDES if trigger.get(k) not in (None, "", {})}
    declared = spec.parameters() - set(BUILDER_OUTPUTS)
    values = {k: trigger[k] for k in declared if trigger.get(k) not in (None, "")}
    for field, value in {**overrides, **values}.items():
        _refuse_parameters(field, value)
    return overrides, {k: str(v) for k, v in values.items()}


def apply_overrides(spec: ImageSpec, given: Mapping[str, Any]) -> ImageSpec:
    """The spec with the trigger's overrides (from :func:`trigger_values`) applied, validated like the spec
    itself; an override the spec does not allow (``overrides:``) is refused."""
    refused = sorted(set(given) - set(spec.overrides))
    if refused:
        raise ParameterError(f"spec {spec.name!r} does not let a trigger override {', '.join(refused)} "
                             f"(its overrides: {', '.join(spec.overrides) or 'none'})")
    if not given:
        return spec
    if "instance_size" in given and not isinstance(given["instance_size"], str):
        raise ParameterError(f"spec {spec.name!r}: the trigger field 'instance_size' is one size or instance type "
                             "(a list of fallbacks is the spec's to give)")
    data = spec.model_dump(exclude_none=True)
    if "keep_on_failure_hours" in given and (isinstance(given["keep_on_failure_hours"], bool)
                                             or not isinstance(given["keep_on_failure_hours"], int)):
        raise ParameterError(f"spec {spec.name!r}: the trigger field 'keep_on_failure_hours' is a whole number of "
                             "hours, 0 to 24")
    for key in ("origin", "instance_size", "keep_on_failure_hours"):
        if key in given:
            data[key] = given[key]
    if "server_role" in given:
        if "configure" not in data:
            raise ParameterError(f"spec {spec.name!r} has no configure section: the server_role override "
                                 "has no role to replace")
        data["configure"]["server_role"] = given["server_role"]
    if "extra_tags" in given:
        if not isinstance(given["extra_tags"], dict):
            raise ParameterError(f"spec {spec.name!r}: the trigger field 'extra_tags' must be a JSON object of "
                                 "strings")
        data["tags"] = {**data.get("tags", {}), **given["extra_tags"]}
    try:
        return spec.with_values(data)
    except InvalidValues as exc:
        raise ParameterError(f"spec {spec.name!r}: a trigger param overrides it with a bad value: "
                             f"{exc}") from None
