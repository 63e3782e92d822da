"""What the Images page and the command line's ``list`` and ``show`` show: the images of the specs, per spec and
region, read from the cloud when asked.

A region is read with retention's own :func:`~image_factory.retention.survey` (its images of every spec, the
instances and launch templates using them, the channels naming them: four listings, whatever the number of
images), and each image's retention status is :func:`~image_factory.retention.judge`'s verdict, as the
``image_factory_retention`` DAG would give it now. The only call per image is DescribeImageAttribute
(``launchPermission``: who the image is shared with), and only for the images shown (``limit`` at most).
The regions of a spec are :func:`~image_factory.retention.regions_of`: where it is built and distributed, so
copies appear once they exist. ``image-factory list`` reads a spec's images in one region, ``image-factory show``
an image's lineage, with the same survey. Nothing here imports Airflow's web stack; clients come from the Airflow
AWS connection (image_factory.aws).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from image_factory import retention
from image_factory.aws import error_code
from image_factory.build import (
    TAG_BUILD,
    TAG_COMPLETE,
    TAG_ORIGIN,
    TAG_ORIGIN_SPEC,
    TAG_OVERRIDDEN,
    TAG_REVOKED,
    TAG_ROLE,
    TAG_RUN,
    TAG_SOURCE_IMAGE,
    TAG_SOURCE_REGION,
    TAG_SPEC,
    TAG_SPEC_HASH,
    TAG_TESTS,
    tag_dict,
)
from image_factory.inventory import channel_names, tests_summary
from image_factory.revocation import revocation
from image_factory.spec import ImageSpec

log = logging.getLogger("image_factory")

#: The statuses an image can have (several at once), and what each means: the page's status filter.
STATUSES = {
    "promoted": "a channel names it",
    "passed": "its tests passed",
    "failed": "its tests failed",
    "untested": "not tested",
    "overridden": "its build's trigger overrode its origin or server role",
    "revoked": "revoked (image-factory revoke): disabled, its channels moved back",
    "incomplete": "being built, or left by a failed build",
    "deprecated": "its deprecation time has passed",
    "retiring": "retention will deprecate or delete it",
}
#: Threads reading launch permissions: the calls of one page load overlap, without a burst at the API.
PERMISSION_READERS = 8


@dataclass
class ImageRow:
    spec: str
    region: str
    image_id: str
    name: str
    state: str
    created: str
    tags: dict[str, str]
    channels: list[str]
    #: What retention would do now, and why ("keep", "a channel names it: ...").
    retention: tuple[str, str]
    deprecation: str = ""
    statuses: list[str] = field(default_factory=list)
    #: Who may launch it (accounts, organizations, units, "public"); None: not read (see ``shared_error``).
    shared_with: list[str] | None = None
    shared_error: str = ""
    console_url: str = ""

    @property
    def tests(self) -> str:
        return tests_summary(self.tags)

    @property
    def origin(self) -> str:
        origin = self.tags.get(TAG_ORIGIN, "-")
        return f"{origin} ({self.tags[TAG_ORIGIN_SPEC]})" if TAG_ORIGIN_SPEC in self.tags else origin

    @property
    def role(self) -> str:
        return self.tags.get(TAG_ROLE, "-")

    @property
    def overridden(self) -> str:
        """What its build's trigger overrode (``origin,server_role``), or ``""``."""
        return self.tags.get(TAG_OVERRIDDEN, "")

    @property
    def revoked(self) -> str:
        """Its revocation, when, by whom and why, or ``""``."""
        return revocation(self.tags)

    @property
    def build_id(self) -> str:
        return self.tags.get(TAG_BUILD, "")

    @property
    def run_id(self) -> str:
        return self.tags.get(TAG_RUN, "")

    @property
    def sbom_packages(self) -> str:
        """How many packages its SBOM lists (``""``: it has no SBOM)."""
        from image_factory.sbom import TAG_SBOM, TAG_SBOM_PACKAGES

        return self.tags.get(TAG_SBOM_PACKAGES, "?") if TAG_SBOM in self.tags else ""


@dataclass
class Catalog:
    """One page load's answer: the rows to show, and what the reading cost or missed."""

    rows: list[ImageRow]
    #: How many images matched the filters (``rows`` holds the first ``limit`` of them).
    matched: int
    #: Every spec known: from the spec files, and from the images' tags.
    specs: list[str]
    regions: list[str]
    #: region (connection) -> why it could not be read.
    errors: dict[str, str] = field(default_factory=dict)
    #: API calls made, by "service:Operation".
    calls: Counter = field(default_factory=Counter)


def _when(value: str | None) -> str:
    return value.replace("T", " ").split(".")[0].rstrip("Z")[:16] + " UTC" if value else ""


def _deprecation(image: dict, now: datetime) -> tuple[str, bool]:
    """("deprecated since ..." or "deprecates at ...", whether it is deprecated now)."""
    when = retention.deprecated_at(image)
    if when is None:
        return "", False
    if when <= now:
        return f"deprecated since {_when(image['DeprecationTime'])}", True
    return f"deprecates at {_when(image['DeprecationTime'])}", False


def _retention_status(verdict: retention.Verdict) -> tuple[str, str]:
    if verdict.action == retention.KEEP:
        return "keep", verdict.reason
    if not verdict.pending:
        return "deprecated", verdict.reason
    return f"will {verdict.action}", verdict.reason


def _statuses(tags: dict[str, str], channels: list[str], deprecated: bool, action: str) -> list[str]:
    found = []
    if channels:
        found.append("promoted")
    tests = tags.get(TAG_TESTS)
    found.append(tests if tests in ("passed", "failed") else "untested")
    if tags.get(TAG_OVERRIDDEN):
        found.append("overridden")
    if TAG_REVOKED in tags:
        found.append("revoked")
    if tags.get(TAG_COMPLETE) != "true":
        found.append("incomplete")
    if deprecated:
        found.append("deprecated")
    if action.startswith("will "):
        found.append("retiring")
    return found


def describe_sharing(permissions: Iterable[dict]) -> list[str]:
    """DescribeImageAttribute's LaunchPermissions, as a person reads them."""
    shown = []
    for permission in permissions:
        if permission.get("Group") == "all":
            shown.append("public")
        elif "UserId" in permission:
            shown.append(f"account {permission['UserId']}")
        elif "OrganizationArn" in permission:
            shown.append(f"organization {permission['OrganizationArn'].rsplit('/', 1)[-1]}")
        elif "OrganizationalUnitArn" in permission:
            shown.append(f"OU {permission['OrganizationalUnitArn'].rsplit('/', 1)[-1]}")
    return shown


def gather(specs: Iterable[ImageSpec], *, channel_prefix: str, spec: str = "", status: str = "",
           limit: int = 100, allowed: Callable[[str], bool] = lambda name: True, clients_of=None,
           console_url: Callable[[str, str, str | None], str] | None = None, now: datetime | None = None
           ) -> Catalog:
    """The images of ``specs`` (all, or the one named ``spec``) that have ``status``, newest first per spec and
    region; only those of specs ``allowed`` (the user may read their DAG). ``clients_of(conn_id, region)``:
    image_factory.aws.clients by default."""
    if clients_of is None:
        from image_factory.aws import clients as clients_of
    now = now or datetime.now(UTC)
    specs = [s for s in specs if allowed(s.name)]
    # (A spec only the images' tags name, its file gone: every region is read to find its images.)
    chosen = [s for s in specs if s.name == spec] or specs
    regions_by_conn: dict[str, set[str]] = defaultdict(set)
    rules: dict[str, dict] = defaultdict(dict)
    for s in chosen:
        regions_by_conn[s.aws_conn_id].update(retention.regions_of(s))
    for s in specs:
        if s.retention is not None and s.aws_conn_id in regions_by_conn:
            rules[s.aws_conn_id][s.name] = s.retention
    known = {s.name for s in specs}

    catalog = Catalog(rows=[], matched=0, specs=[], regions=[])
    client_of_region: dict[str, object] = {}
    rows: list[ImageRow] = []
    for conn_id, regions in sorted(regions_by_conn.items()):
        surveys, endpoints = [], {}
        for region in sorted(regions):
            try:
                clients = clients_of(conn_id, region)
                endpoints[region] = clients.endpoint_url
                surveys.append(retention.survey(clients.ec2, clients.ssm, region, channel_prefix))
                client_of_region[region] = clients.ec2
            except Exception as exc:  # the connection, the credentials, the endpoint or a call
                log.warning("images page: cannot read %s (connection %s): %s", region, conn_id, exc)
                catalog.errors[f"{region} ({conn_id})"] = f"{type(exc).__name__}: {exc}"
        verdicts = {(v.region, v.image_id): v for v in retention.judge(surveys, rules[conn_id], now)}
        for found in surveys:
            catalog.regions.append(found.region)
            catalog.calls.update(found.calls)
            for image in found.images:
                tags = tag_dict(image.get("Tags"))
                name = tags.get(TAG_SPEC, "")
                if not allowed(name):
                    continue
                channels = channel_names(found.channels.get(image["ImageId"], []), name, channel_prefix)
                verdict = verdicts.get((found.region, image["ImageId"]))
                if verdict is not None:
                    action, reason = _retention_status(verdict)
                elif name in known:
                    action, reason = "keep", "the spec has no retention section: never retired"
                else:
                    action, reason = "keep", "no spec file names it: never retired"
                deprecation, deprecated = _deprecation(image, now)
                rows.append(ImageRow(
                    spec=name, region=found.region, image_id=image["ImageId"], name=image.get("Name", ""),
                    state=image.get("State", ""), created=_when(image.get("CreationDate")), tags=tags,
                    channels=channels, retention=(action, reason), deprecation=deprecation,
                    statuses=_statuses(tags, channels, deprecated, action),
                    console_url=console_url(found.region, image["ImageId"], endpoints.get(found.region))
                    if console_url else ""))

    catalog.specs = sorted(known | {row.spec for row in rows})
    rows = [r for r in rows if (not spec or r.spec == spec) and (not status or status in r.statuses)]
    # Per spec, the build's region first, then the others; newest first in each.
    home = {s.name: s.region for s in specs}
    rows.sort(key=lambda r: r.created, reverse=True)
    rows.sort(key=lambda r: (r.spec, r.region != home.get(r.spec), r.region))
    catalog.matched = len(rows)
    catalog.rows = rows[:limit]
    _read_sharing(catalog, client_of_region)
    catalog.regions = sorted(set(catalog.regions))
    return catalog


def _read_sharing(catalog: Catalog, client_of_region: dict) -> None:
    """Each shown image's launch permissions (one DescribeImageAttribute each, a few at a time)."""
    def read(row: ImageRow) -> None:
        try:
            ec2 = client_of_region[row.region]
            answer = ec2.describe_image_attribute(ImageId=row.image_id, Attribute="launchPermission")
            row.shared_with = describe_sharing(answer.get("LaunchPermissions", []))
        except Exception as exc:
            row.shared_error = f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=PERMISSION_READERS) as pool:
        list(pool.map(read, catalog.rows))
    if catalog.rows:
        catalog.calls["ec2:DescribeImageAttribute"] += len(catalog.rows)


# --- the command line's list and show ----------------------------------------------------------------

#: The columns of ``image-factory list``, one row per image (:func:`list_row`).
LIST_COLUMNS = ("IMAGE ID", "NAME", "STATE", "CREATED", "ORIGIN AMI", "SERVER ROLE", "SPEC HASH", "BUILD ID",
                "COMPLETE", "TESTS", "OVERRIDDEN", "COPY OF", "CHANNELS")


def copy_of(tags: dict[str, str]) -> str:
    """``ami-...@region`` for a copy made by distribute_image (its source image and region), else ``-``."""
    source = tags.get(TAG_SOURCE_IMAGE)
    return f"{source}@{tags.get(TAG_SOURCE_REGION, '?')}" if source else "-"


def list_row(image: dict, channels: list[str]) -> tuple[str, ...]:
    tags = tag_dict(image.get("Tags"))
    return (image["ImageId"], image.get("Name", ""), image.get("State", ""), image.get("CreationDate", ""),
            tags.get(TAG_ORIGIN, "-"), tags.get(TAG_ROLE, "-"), tags.get(TAG_SPEC_HASH, "-"),
            tags.get(TAG_BUILD, "-"), "yes" if tags.get(TAG_COMPLETE) == "true" else "no", tests_summary(tags),
            tags.get(TAG_OVERRIDDEN) or "-", copy_of(tags), ",".join(channels) or "-")


def spec_images(ec2, ssm, region: str, spec_name: str, channel_prefix: str) -> list[tuple[dict, list[str]]]:
    """The images of spec ``spec_name`` in ``region``, newest first, each with the spec's channels naming it
    (read with retention's survey of the region)."""
    found = retention.survey(ec2, ssm, region, channel_prefix)
    images = sorted((i for i in found.images if tag_dict(i.get("Tags")).get(TAG_SPEC) == spec_name),
                    key=lambda i: i.get("CreationDate", ""), reverse=True)
    return [(i, channel_names(found.channels.get(i["ImageId"], []), spec_name, channel_prefix)) for i in images]


def lineage(clients_in: Callable[[str], tuple], region: str, image_id: str, channel_prefix: str,
            limit: int = 20) -> list[dict]:
    """The image and its origins back to the root origin (the first image Image Factory did not build). A copy
    (distribute_image) leads to the image it is a copy of, in that image's region; each image's origin is in its
    own region. ``clients_in(region)``: that region's (ec2, ssm) clients; each region is surveyed once."""
    surveys: dict[str, tuple] = {}

    def surveyed(name: str) -> tuple:
        if name not in surveys:
            ec2, ssm = clients_in(name)
            surveys[name] = (ec2, retention.survey(ec2, ssm, name, channel_prefix))
        return surveys[name]

    levels: list[dict] = []
    while image_id and len(levels) < limit:
        ec2, found = surveyed(region)
        image = next((i for i in found.images if i["ImageId"] == image_id), None)
        if image is None:  # not an image of a spec: the root origin, or gone
            image = _described(ec2, image_id)
        if image is None:
            levels.append({"image": image_id, "missing": "no such image (deregistered?)"})
            break
        tags = tag_dict(image.get("Tags"))
        level = {"image": image_id, "name": image.get("Name", ""), "created": image.get("CreationDate", "")}
        if TAG_SPEC not in tags:
            levels.append({**level, "root origin": f"owner {image.get('OwnerId', '?')}"})
            break
        channels = channel_names(found.channels.get(image_id, []), tags[TAG_SPEC], channel_prefix)
        level.update(spec=tags[TAG_SPEC], build=tags.get(TAG_BUILD, "-"), role=tags.get(TAG_ROLE, "-"),
                     **({"overridden": f"{tags[TAG_OVERRIDDEN]} (by the trigger of its build)"}
                        if tags.get(TAG_OVERRIDDEN) else {}),
                     **({"copy of": copy} if (copy := copy_of(tags)) != "-" else {}),
                     **({"revoked": revoked} if (revoked := revocation(tags)) else {}),
                     origin=tags.get(TAG_ORIGIN, "-"), tests=tests_summary(tags), channels=",".join(channels) or "-")
        levels.append(level)
        if tags.get(TAG_SOURCE_IMAGE) and tags.get(TAG_SOURCE_REGION):
            region, image_id = tags[TAG_SOURCE_REGION], tags[TAG_SOURCE_IMAGE]
        else:
            image_id = tags.get(TAG_ORIGIN)
    return levels


def _described(ec2, image_id: str) -> dict | None:
    try:
        found = ec2.describe_images(ImageIds=[image_id], IncludeDisabled=True)["Images"]  # (revoked: disabled)
    except Exception as exc:
        if error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            return None
        raise
    return found[0] if found else None
