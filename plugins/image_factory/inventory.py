"""What exists of the builds, found by the tags every build puts on it: builder resources, and what an image's
lineage tags say (shared by ``image-factory list`` and the Images page)."""

from __future__ import annotations

from image_factory import resources
from image_factory.build import TAG_TESTS, TAG_TESTS_FAILED, TAG_TESTS_PASSED


def builder_resources(ec2, ssm, build_id: str) -> list[tuple[str, str]]:
    """Every live resource of the build that teardown is meant to delete, as (kind, id) pairs, in the order of
    the table of what builds make (resources.py)."""
    return [(r.kind, r.id) for r in resources.find(ec2, ssm, build_id)]


def tests_summary(tags: dict[str, str]) -> str:
    """An image's test result from its tags: ``passed (3/3)``, ``failed (2/3)``, ``untested`` or ``-``."""
    status = tags.get(TAG_TESTS, "-")
    if status in ("passed", "failed"):
        passed, failed = tags.get(TAG_TESTS_PASSED) or "0", tags.get(TAG_TESTS_FAILED) or "0"
        if passed.isascii() and passed.isdigit() and failed.isascii() and failed.isdigit():
            return f"{status} ({int(passed)}/{int(passed) + int(failed)})"
        # Tags anyone with CreateTags may have written: shown as they are, never an error.
        return f"{status} (tests-passed={passed[:40]!r}, tests-failed={failed[:40]!r})"
    return status


def channel_names(parameters: list[str], spec_name: str, prefix: str) -> list[str]:
    """The channels of ``spec_name`` among channel parameter names (``<prefix>/<spec>/<channel>``)."""
    own = f"{prefix.rstrip('/')}/{spec_name}/"
    return sorted(name[len(own):] for name in parameters if name.startswith(own) and "/" not in name[len(own):])
