"""The sweeper: finds builder resources whose build's teardown never ran, and tears them down.

A build's ``tear_down`` task deletes its builder resources whatever failed, but only when it runs: a killed
worker, a lost scheduler, or a run marked failed by hand (which skips teardowns) leaves them behind. Every
builder resource carries the build's tags (see :mod:`image_factory.build`), so they are found by tag here:

- :func:`find_builds` lists every resource tagged ``image-factory:build-id``, of every kind of the table of
  what builds make (:mod:`image_factory.resources`), grouped by build, with the
  build's spec (its DAG id), its DAG run id and when it started (the oldest ``image-factory:created-at``);
- :func:`orphans` decides which builds are orphans: older than a grace period and whose DAG run is not
  running or queued (a run Airflow does not know counts as not running), or older than a maximum age whatever
  the state of their run (a run left "running" by a scheduler that died); a failed build's instance kept to
  be looked at (``image-factory:keep-until``, keep.py) is kept until that time whatever its age (unless it
  is more than 24 hours ahead: not a time a build sets), and is an orphan once it has passed;
- :func:`sweep` runs the build's own teardown for each orphan (or, in a dry run, logs what it would delete).

Only resources carrying the Image Factory build tag are ever looked at: the EC2 calls filter on the tag key
and an SSM parameter must carry the tag too (resources.py). Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from image_factory import resources
from image_factory.build import TAG_CREATED_AT, TAG_RUN, TAG_SPEC
from image_factory.inventory import builder_resources
from image_factory.keep import MAX_KEEP, keep_until
from image_factory.steps.teardown import tear_down

log = logging.getLogger("image_factory")

#: DAG run states in which the build may still be using its resources.
ACTIVE_RUN_STATES = frozenset({"running", "queued"})
CREATED_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

RunState = Callable[[str, str], "str | None"]


@dataclass
class BuildResources:
    """What one build left in one region, as found by its tags."""

    build_id: str
    spec: str | None = None
    run_id: str | None = None
    #: The oldest ``image-factory:created-at`` among the build's resources (None: no resource has one).
    created_at: datetime | None = None
    #: (kind, id) pairs, with the kinds of :func:`image_factory.inventory.builder_resources`.
    resources: list[tuple[str, str]] = field(default_factory=list)
    #: The latest ``image-factory:keep-until`` among them (None: nothing of the build is kept).
    keep_until: datetime | None = None

    def add(self, kind: str, resource_id: str, tags: Mapping[str, str]) -> None:
        self.resources.append((kind, resource_id))
        until = keep_until(tags)
        if until and (self.keep_until is None or until > self.keep_until):
            self.keep_until = until
        self.spec = self.spec or tags.get(TAG_SPEC) or None
        self.run_id = self.run_id or tags.get(TAG_RUN) or None
        created = parse_created_at(tags.get(TAG_CREATED_AT))
        if created and (self.created_at is None or created < self.created_at):
            self.created_at = created


@dataclass(frozen=True)
class Orphan:
    build: BuildResources
    reason: str

    @property
    def build_id(self) -> str:
        return self.build.build_id


@dataclass
class SweepSummary:
    dry_run: bool
    #: build id -> what teardown deleted (ids and names).
    deleted: dict[str, list[str]] = field(default_factory=dict)
    #: build id -> "kind id" of what a real sweep would delete.
    would_delete: dict[str, list[str]] = field(default_factory=dict)
    #: build id -> why its teardown failed or left something.
    failed: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_created_at(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.strptime(value, CREATED_AT_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


# --- finding ------------------------------------------------------------------------------------------

def find_builds(ec2, ssm) -> dict[str, BuildResources]:
    """Every build that has builder resources in the clients' region, by build id: every kind of the table of
    what builds make (resources.py), found by the build tag. A complete image is an output of its build, never
    a leftover."""
    builds: dict[str, BuildResources] = {}
    for found in resources.find(ec2, ssm):
        builds.setdefault(found.build_id, BuildResources(found.build_id)).add(found.kind, found.id, found.tags)
    return builds


# --- deciding -----------------------------------------------------------------------------------------

def decide(build: BuildResources, now: datetime, grace: timedelta, run_state: RunState,
           max_age: timedelta) -> tuple[bool, str]:
    """Whether to sweep the build, and why (or why not)."""
    if build.keep_until is not None and build.keep_until <= now + MAX_KEEP:  # (further: not a build's own)
        until = build.keep_until.strftime(CREATED_AT_FORMAT)
        if build.keep_until > now:
            return False, f"a failed build kept to be looked at until {until}"
        return True, f"a failed build kept to be looked at until {until}, which has passed"
    age = now - build.created_at if build.created_at else None
    if age is not None and age <= grace:
        return False, f"created {_minutes(age)} ago, within the grace period of {_minutes(grace)}"
    if age is not None and age > max_age:
        return True, f"created {_minutes(age)} ago, older than the maximum age of {_minutes(max_age)}"
    aged = f"created {_minutes(age)} ago" if age is not None else "no created-at tag"
    if not (build.spec and build.run_id):
        return True, f"{aged}, and no DAG run named in its tags"
    try:
        state = run_state(build.spec, build.run_id)
    except Exception as exc:
        # Not knowing is not "not running": keep it until the lookup works, or until max_age.
        return False, f"{aged}, but the state of DAG run {build.spec}/{build.run_id} is unknown ({exc})"
    state = getattr(state, "value", state)
    if state in ACTIVE_RUN_STATES:
        return False, f"{aged}, and its DAG run {build.spec}/{build.run_id} is {state}"
    shown = state or "not known to Airflow"
    return True, f"{aged}, and its DAG run {build.spec}/{build.run_id} is {shown}"


def orphans(builds: Mapping[str, BuildResources] | Iterable[BuildResources], now: datetime, grace: timedelta,
            run_state: RunState, max_age: timedelta) -> list[Orphan]:
    """The builds to sweep.

    A build is an orphan when it was created more than ``grace`` ago and its DAG run is neither running nor
    queued (a run Airflow does not know, ``run_state`` returning None, counts as not running), or when it
    was created more than ``max_age`` ago whatever its run's state. A build without a created-at tag counts
    as older than the grace period but not as older than the maximum age. When ``run_state`` raises, the
    build is kept (until it is older than ``max_age``).
    """
    if grace > max_age:
        raise ValueError(f"the grace period ({grace}) is longer than the maximum age ({max_age})")
    found = builds.values() if isinstance(builds, Mapping) else builds
    chosen = []
    for build in sorted(found, key=lambda b: b.build_id):
        sweep_it, reason = decide(build, now, grace, run_state, max_age)
        log.info("sweeper: build %s (spec %s, %d resources): %s: %s", build.build_id, build.spec,
                 len(build.resources), "orphan" if sweep_it else "kept", reason)
        if sweep_it:
            chosen.append(Orphan(build, reason))
    return chosen


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes:.0f} min" if abs(minutes) < 120 else f"{minutes / 60:.1f} h"


# --- sweeping -----------------------------------------------------------------------------------------

def sweep(ec2, ssm, orphaned: Iterable[Orphan], dry_run: bool, schedule) -> SweepSummary:
    """Tear down each orphan build with the build's own teardown; in a dry run, only say what it would do.

    Every deleted resource is logged (``deleted <kind> <id>``, by the teardown); one build that fails to
    tear down does not stop the others, and is reported in the summary. ``schedule``: of the waits until
    instances are terminated (polling.Schedule, or seconds between polls).
    """
    summary = SweepSummary(dry_run=dry_run)
    for orphan in orphaned:
        build_id = orphan.build_id
        if dry_run:
            planned = [f"{kind} {resource_id}" for kind, resource_id in orphan.build.resources]
            for item in planned:
                log.info("sweeper: dry run: would delete %s (build %s)", item, build_id)
            summary.would_delete[build_id] = planned
            continue
        log.info("sweeper: tearing down build %s (spec %s, run %s): %s", build_id, orphan.build.spec,
                 orphan.build.run_id, orphan.reason)
        try:
            removed = tear_down(ec2, ssm, build_id, schedule)
        except Exception as exc:
            log.exception("sweeper: tearing down build %s failed", build_id)
            summary.failed[build_id] = f"{type(exc).__name__}: {exc}"
            continue
        summary.deleted[build_id] = removed
        log.info("sweeper: build %s: deleted %d resources: %s", build_id, len(removed), ", ".join(removed) or "-")
        left = builder_resources(ec2, ssm, build_id)
        if left:
            shown = ", ".join(f"{kind} {resource_id}" for kind, resource_id in left)
            log.error("sweeper: build %s still has %s after its teardown", build_id, shown)
            summary.failed[build_id] = f"left after teardown: {shown}"
    total = sum(len(v) for v in summary.deleted.values())
    log.info("sweeper: %s", f"dry run: would tear down {len(summary.would_delete)} builds" if dry_run else
             f"deleted {total} resources of {len(summary.deleted)} builds, {len(summary.failed)} failed")
    return summary
