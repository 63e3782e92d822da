"""What a person sees of a spec's DAG in the Airflow UI: its documentation and its trigger form."""

from __future__ import annotations

from airflow.sdk import Param

from image_factory.parameters import BUILDER_OUTPUTS
from image_factory.spec import LoadedSpec, instance_type

#: The JSON Schema dialect of the trigger form's fields: Airflow checks each field's schema against its
#: dialect's meta-schema when it parses a scheduled DAG, and draft-07's is about half as costly as the default.
FORM_DIALECT = "http://json-schema.org/draft-07/schema#"


def _field(default, title: str, description: str, **schema) -> Param:
    return Param(default, description=description, **{"$schema": FORM_DIALECT, "title": title, **schema})


def trigger_params(spec) -> dict[str, Param]:
    """The trigger form: overrides of the spec (empty means "as the spec says") and its ${NAME} parameters."""
    spec_origin = spec.origin if isinstance(spec.origin, str) else f"newest {spec.origin.name}"
    text = ["null", "string"]
    moves = ("" if not spec.promote else " Its image moves channels only as the spec allows or a person "
             "approves." if not spec.promote.allow_overrides else "")
    overrides = {
        "origin": _field(None, "Origin override", f"Build from another origin: an AMI id, "
                         f"resolve:ssm:<parameter>. Empty: the spec's ({spec_origin}).{moves}", type=text),
        "instance_size": _field(None, "Instance size override", f"small, medium, large or an instance type. "
                                f"Empty: the spec's ({spec.instance_size}).", type=text,
                                examples=["small", "medium", "large"]),
        "server_role": _field(None, "Server role override", "Apply another role. Empty: the spec's "
                              f"({spec.configure.server_role if spec.configure else 'none'}).{moves}", type=text),
        "extra_tags": _field({}, "Extra image tags", "Tags added to the image, as a JSON object of strings.",
                             type="object"),
        "keep_on_failure_hours": _field(None, "Keep a failed builder (hours)", "When configure or test_image "
                                        "fails, keep the instance this many hours (0 to 24) to log in to it: "
                                        "`image-factory ssh BUILD_ID`. Empty: the spec's "
                                        f"({spec.keep_on_failure_hours}).", type=["null", "integer"], minimum=0,
                                        maximum=24),
    }
    # Only the overrides the spec allows; every value is used as it is (never resolved as a ${NAME}).
    form = {name: field for name, field in overrides.items() if name in spec.overrides}
    for name in sorted(spec.parameters() - set(BUILDER_OUTPUTS)):
        form[name] = _field(None, name, f"Value of ${{{name}}} in the spec (else Airflow Variable {name}, else "
                            "the environment)", type=text)
    return form


def dag_doc(loaded: LoadedSpec, steps) -> str:
    """The DAG's documentation: what it builds, from what, and its tasks (``steps``: the DAG's table)."""
    spec = loaded.image
    role = (f"`{spec.configure.server_role}` applied with `{spec.configure.tool}`" if spec.configure
            else "none (a copy of the origin)")
    origin = spec.origin
    origin_text = origin if isinstance(origin, str) else f"newest `{origin.name}` of {origin.owners}"
    return "\n".join([
        f"# {spec.name}",
        spec.description or "",
        "",
        "| | |",
        "|---|---|",
        f"| builds | an AMI named `{spec.name}-<time>-<build id>` in `{spec.region}` |",
        f"| from | `{origin_text}` |",
        f"| server role | {role} |",
        f"| builder instance | `{instance_type(spec.instance_size)}` ({spec.instance_size}) |",
        f"| schedule | `{spec.schedule or 'manual only'}` |",
        f"| spec | `{loaded.path.name}` (sha256 `{loaded.content_hash}`) |",
        "",
        "| task | does |",
        "|---|---|",
        *(f"| `{step.task_id}` | {step.does} |" for step in steps),
    ])
