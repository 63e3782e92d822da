"""The calls a wait makes once its state is reached (:class:`~image_factory.waits.protocol.FollowUp`), declared
by the step that asks for the wait (steps/image.py: CreateImage once the instance is stopped; steps/teardown.py:
the deletions once the instances are gone), made here: by the trigger that waited (no task comes back for them),
or by a blocking wait."""

from __future__ import annotations

from collections.abc import Sequence

from image_factory.aws import error_code
from image_factory.build import created, deleted
from image_factory.errors import is_transient
from image_factory.waits.protocol import FollowUp, ids


def run(ec2, follow_ups: Sequence[FollowUp], made: list[str] | None = None) -> tuple[str, bool] | None:
    """Make the calls in order; a resource gone already counts as deleted, one there already (made by an earlier
    run of the same wait) as created. Returns what failed and whether retrying may help (the rest is left
    undone), else None. ``made`` gets the ids of what the calls created."""
    clients = {"ec2": ec2}
    for call in follow_ups:
        operation, arguments = call.operation, call.params
        try:
            answer = getattr(clients[call.service], operation)(**arguments)
        except Exception as exc:
            code, done = error_code(exc), ".NotFound" if operation.startswith("delete_") else ".Duplicate"
            if not code.endswith(done):
                return f"{operation} {ids(arguments)}: {exc}", not code or is_transient(code)
            continue  # done already
        kind = operation.split("_", 1)[1].replace("_", "-")  # as the build's log lines name it: security-group
        if operation.startswith("delete_"):
            deleted(kind, ids(arguments))
        elif operation.startswith("create_"):
            new_id = next((v for k, v in answer.items() if k.endswith("Id") and isinstance(v, str)), "")
            created(kind, new_id, **({"name": arguments["Name"]} if "Name" in arguments else {}))
            if made is not None and new_id:
                made.append(new_id)
    return None
