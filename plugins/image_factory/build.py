"""One build of one spec: its id, the tags on everything it creates, and how it reports what it did.

Every resource a build creates is tagged in its create call with the spec name and the build id, so that
teardown and the sweeper find it by tag even when the step that made it died before recording it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from image_factory.settings import Settings
from image_factory.spec import ImageSpec
from image_factory.waits.protocol import FollowUp, Wait
from image_factory.waits.schedule import Schedule, schedule_for

log = logging.getLogger("image_factory")

#: Seconds between SSH attempts when the deployment sets no poll_interval.
SSH_POLL_INTERVAL = 1.0

TAG_SPEC = "image-factory:spec"
TAG_BUILD = "image-factory:build-id"
TAG_RUN = "image-factory:dag-run-id"
TAG_CREATED_AT = "image-factory:created-at"
# Lineage, on images only.
TAG_SPEC_HASH = "image-factory:spec-hash"
TAG_ORIGIN = "image-factory:origin-ami"
TAG_ROLE = "image-factory:server-role"
#: Set on an image once it is available; teardown deregisters an image of a build that lacks it.
TAG_COMPLETE = "image-factory:complete"
#: What an instance of a build is for: ``builder`` (the role is applied to it) or ``test`` (a new image's).
TAG_INSTANCE = "image-factory:instance"
#: The tests of an image: ``passed``, ``failed`` or ``untested``; the counts and the time in the tags below.
TAG_TESTS = "image-factory:tests"
TAG_TESTS_PASSED = "image-factory:tests-passed"
TAG_TESTS_FAILED = "image-factory:tests-failed"
TAG_TESTED_AT = "image-factory:tested-at"
#: The origin's own spec and build, when the origin is an Image Factory image (images built on images).
TAG_ORIGIN_SPEC = "image-factory:origin-spec"
TAG_ORIGIN_BUILD = "image-factory:origin-build-id"
#: On an image whose run's trigger overrode what goes into it (``origin``, ``server_role``, comma-separated): no
#: channel moves to it unless the spec allows overrides or a person approves it.
TAG_OVERRIDDEN = "image-factory:overridden"
#: On a copy of an image in another region (distribute): the image it is a copy of, and that image's region.
TAG_SOURCE_IMAGE = "image-factory:source-image"
TAG_SOURCE_REGION = "image-factory:source-region"
#: On a revoked image and its copies (revocation.py): when (its value), why and by whom; the image is deprecated
#: and disabled as well. ``restore`` removes the three.
TAG_REVOKED = "image-factory:revoked"
TAG_REVOKED_REASON = "image-factory:revoked-reason"
TAG_REVOKED_BY = "image-factory:revoked-by"


def build_id_for(dag_id: str, run_id: str) -> str:
    """A short id, the same for every task and every try of one DAG run."""
    return "b" + hashlib.sha256(f"{dag_id}\n{run_id}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Build:
    spec: ImageSpec
    spec_hash: str
    run_id: str
    settings: Settings
    build_id: str = field(default="")
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: The first try of a step, not resumed: what the step creates cannot exist yet, so it does not look for
    #: it first (those lookups are what make a retry create nothing twice).
    fresh: bool = False
    #: The spec's recent windows of each wait (waits/schedule.py), by waiter name: what this build's polls start from.
    history: dict = field(default_factory=dict)
    #: What the trigger overrode of what goes into the image (parameters.CONTENT_OVERRIDES), by field.
    overridden: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.build_id:
            object.__setattr__(self, "build_id", build_id_for(self.spec.name, self.run_id))

    @property
    def region(self) -> str:
        return self.spec.region

    @property
    def resource_name(self) -> str:
        """Prefix of the names of this build's resources (security group, key pair, ...)."""
        return f"image-factory-{self.build_id}"

    def schedule(self, waiter_name: str) -> Schedule:
        """When this build polls for ``waiter_name``'s state (the deployment's fixed poll_interval, if set)."""
        return schedule_for(waiter_name, self.history.get(waiter_name), self.settings.poll_interval)

    def wait_for(self, state: str, resources: dict, *, timeout: float, since: float | None = None,
                 then: tuple[FollowUp, ...] = (), next: Wait | None = None, result=None,
                 region: str | None = None) -> Wait:
        """A wait of this build, through its connection in ``region`` (its own, if None), polled on the build's
        schedule for ``state``."""
        names = (state, *((next.state,) if next else ()))
        return Wait(state, resources, self.schedule(state), timeout, since=since, then=then, next=next, result=result,
                    history={name: self.history[name] for name in names if name in self.history},
                    region=region or self.region, connection=self.spec.aws_conn_id)

    @property
    def ssh_poll_interval(self) -> float:
        """Seconds between SSH attempts (a banner read: no cloud API call)."""
        return self.settings.poll_interval or SSH_POLL_INTERVAL

    def tags(self, **extra: str) -> dict[str, str]:
        return {
            "Name": f"{self.spec.name} builder {self.build_id}",
            TAG_SPEC: self.spec.name,
            TAG_BUILD: self.build_id,
            TAG_RUN: self.run_id,
            TAG_CREATED_AT: self.started_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **extra,
        }

    def tag_specifications(self, *resource_types: str, tags: dict[str, str] | None = None) -> list[dict]:
        tag_list = [{"Key": k, "Value": v} for k, v in (tags or self.tags()).items()]
        return [{"ResourceType": rt, "Tags": tag_list} for rt in resource_types]

    def build_filter(self) -> list[dict]:
        """The EC2 filter that finds this build's resources."""
        return [{"Name": f"tag:{TAG_BUILD}", "Values": [self.build_id]}]


def created(kind: str, resource_id: str, **details) -> None:
    extra = "".join(f" {k}={v}" for k, v in details.items())
    log.info("created %s %s%s", kind, resource_id, extra)


def deleted(kind: str, resource_id: str) -> None:
    log.info("deleted %s %s", kind, resource_id)


def tag_dict(tags: list[dict] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}
