"""One table of what a build makes: for each kind, how it is found by the build's tag, how it is deleted (and
which errors say it is gone already), and what must be gone before it. (As Google's Daisy keeps one registry
per kind of resource and cleans up from it.)

The teardown (steps/teardown.py), the sweeper (sweeper.py), the inventory (inventory.builder_resources: the
Images page's and the benchmark's leak counts) and the plan (``image-factory render``) all go through
:data:`KINDS`: :func:`find` lists what exists of one build (or of every build), :func:`delete` deletes it in
dependency order, :func:`stages` splits it around the instances' termination (what needs the instances gone
waits for it: in the triggerer, as the wait's ``then`` calls, see :func:`calls`).

A complete image (tag ``image-factory:complete``) and its snapshots are outputs of their build, never builder
resources: they are not found here. A copy of the image in another region is found there, as an image of the
build (the kinds marked ``copied``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from image_factory import aws
from image_factory.aws import error_code
from image_factory.build import TAG_BUILD, TAG_COMPLETE, deleted, tag_dict
from image_factory.steps import instance
from image_factory.steps.image import snapshot_ids

log = logging.getLogger("image_factory")

#: Where builds keep their SSM parameters (the private half of their key pair): one folder per build.
PARAMETER_PREFIX = "/image-factory/builds/"
#: The states of an instance that is not gone (terminated) yet: those it is terminated in, and shutting-down.
INSTANCE_STATES = (*instance.LIVE_STATES, "shutting-down")


def parameter_folder(build_id: str) -> str:
    return f"{PARAMETER_PREFIX}{build_id}/"


@dataclass(frozen=True)
class Resource:
    """One resource a build made, as found (or as the setup recorded it)."""

    kind: str
    id: str
    build_id: str
    #: Its tags, as found (empty when found by name, or recorded).
    tags: dict[str, str] = field(default_factory=dict, compare=False)
    #: It as described (empty when recorded).
    data: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Scope:
    """Where to look: one build's resources (``build_id``), or every build's (None)."""

    ec2: object
    ssm: object
    build_id: str | None

    @property
    def tagged(self) -> list[dict]:
        """The EC2 filter on the build tag."""
        if self.build_id:
            return [{"Name": f"tag:{TAG_BUILD}", "Values": [self.build_id]}]
        return [{"Name": "tag-key", "Values": [TAG_BUILD]}]

    def resource(self, kind: str, resource_id: str, tag_list: list[dict] | None, data: dict) -> Resource | None:
        tags = tag_dict(tag_list)
        build_id = tags.get(TAG_BUILD)
        if not build_id or (self.build_id and build_id != self.build_id):
            return None  # the filter guarantees the tag; never act on a resource without it
        return Resource(kind, resource_id, build_id, tags, data)


#: An API call: (operation, arguments), as a wait's ``then`` takes it.
Call = tuple[str, dict]


@dataclass(frozen=True)
class Kind:
    """One kind of resource a build makes: how it is found, how it is deleted, what must be gone first."""

    #: As the inventory, the sweeper and the plan list it.
    name: str
    #: What the plan says of it (``image-factory render``).
    described: str
    #: Its own resources among those found so far (the kinds before it in the table).
    find: Callable[[Scope, list[Resource]], Iterable[Resource]]
    #: The calls that delete the given resources of the kind.
    calls: Callable[[list[Resource]], list[Call]]
    #: The error codes that say it is gone already (it counts as deleted).
    gone: tuple[str, ...]
    #: The kinds whose resources must be gone before these are deleted.
    after: tuple[str, ...] = ()
    service: str = "ec2"
    #: The waiter whose state says that a deleted one is gone (its deletion takes a while): what comes after it
    #: waits for that state.
    settles: str | None = None
    #: Found also in the regions the build's image is copied to (the copies).
    copied: bool = False
    #: As the ``deleted <noun> <id>`` log lines name it.
    noun: str = ""
    #: As the plan names them.
    plural: str = ""
    #: Whether a build of the spec makes it (for the plan).
    made_by: Callable[[object], bool] = field(default=lambda spec: True)

    def __post_init__(self):
        if not self.noun:
            object.__setattr__(self, "noun", self.name)


def _tagged(kind: str, id_key: str, items: Callable[[object, list[dict]], Iterable[dict]]):
    """A kind found by one EC2 describe call (``items``: of the client and the filter on the build tag)."""
    def find(scope: Scope, _found: list[Resource]) -> Iterable[Resource]:
        for item in items(scope.ec2, scope.tagged):
            made = scope.resource(kind, item[id_key], item.get("Tags"), item)
            if made:
                yield made

    return find


def _instances(scope: Scope, _found: list[Resource]) -> Iterable[Resource]:
    ec2 = scope.ec2
    for reservation in aws.all_items(ec2, "describe_instances", "Reservations", Filters=[
            *scope.tagged, {"Name": "instance-state-name", "Values": list(INSTANCE_STATES)}]):
        for item in reservation["Instances"]:
            made = scope.resource("instance", item["InstanceId"], item.get("Tags"), item)
            if made:
                yield made


def _terminate(found: list[Resource]) -> list[Call]:
    """Those shutting down already are only waited for (a recorded one, whose state is not known, is live)."""
    live = [r.id for r in found if r.data.get("State", {}).get("Name", "running") in instance.LIVE_STATES]
    return [("terminate_instances", {"InstanceIds": live})] if live else []


def _complete(tags: dict[str, str]) -> bool:
    return tags.get(TAG_COMPLETE) == "true"


def _incomplete_images(scope: Scope, _found: list[Resource]) -> Iterable[Resource]:
    ec2 = scope.ec2
    for item in aws.all_items(ec2, "describe_images", "Images", Owners=["self"], Filters=scope.tagged):
        made = scope.resource("image (incomplete)", item["ImageId"], item.get("Tags"), item)
        if made and not _complete(made.tags):
            yield made


def _snapshots(scope: Scope, found: list[Resource]) -> Iterable[Resource]:
    """Those the incomplete images found name, and those that carry the build tag but not the complete mark
    (an image deregistered before its snapshots were deleted)."""
    seen: set[str] = set()
    for image in [r for r in found if r.kind == "image (incomplete)"]:
        for snapshot_id in snapshot_ids(image.data):
            seen.add(snapshot_id)
            yield Resource("snapshot", snapshot_id, image.build_id, image.tags)
    ec2 = scope.ec2
    for item in aws.all_items(ec2, "describe_snapshots", "Snapshots", OwnerIds=["self"], Filters=scope.tagged):
        made = scope.resource("snapshot", item["SnapshotId"], item.get("Tags"), item)
        if made and not _complete(made.tags) and made.id not in seen:
            yield made


def _parameters(scope: Scope, _found: list[Resource]) -> Iterable[Resource]:
    """One build's: its folder, by name. Every build's: the builds' folder, and of those, only parameters whose
    tags name the build whose folder they are in (SSM cannot filter on a tag key alone)."""
    ssm = scope.ssm
    if ssm is None:
        return
    folder = parameter_folder(scope.build_id) if scope.build_id else PARAMETER_PREFIX
    for item in aws.all_items(ssm, "describe_parameters", "Parameters", ParameterFilters=[
            {"Key": "Name", "Option": "BeginsWith", "Values": [folder]}]):
        name = item["Name"]
        if scope.build_id:
            yield Resource("ssm-parameter", name, scope.build_id, data=item)
            continue
        tag_list = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name).get("TagList", [])
        made = scope.resource("ssm-parameter", name, tag_list, item)
        if made and name.startswith(parameter_folder(made.build_id)):
            yield made


def _wants_subnet(spec) -> bool:
    return bool(getattr(spec, "wants_builder_subnet", False))


#: What a build makes, in an order in which they can be deleted (:data:`ORDER` checks it against ``after``).
KINDS: tuple[Kind, ...] = (
    Kind("instance", "the builder and test instances (terminated, waited for)", _instances, _terminate,
         gone=("InvalidInstanceID.NotFound",), settles="instance_terminated", plural="instances"),
    Kind("image (incomplete)", "images of the build never marked complete", _incomplete_images,
         lambda found: [("deregister_image", {"ImageId": r.id}) for r in found],
         gone=("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"), copied=True, noun="image"),
    Kind("snapshot", "their snapshots", _snapshots,
         lambda found: [("delete_snapshot", {"SnapshotId": r.id}) for r in found],
         gone=("InvalidSnapshot.NotFound",), after=("image (incomplete)",), copied=True),
    Kind("key-pair", "the key pair",
         _tagged("key-pair", "KeyName", lambda ec2, tagged: aws.all_items(ec2, "describe_key_pairs", "KeyPairs",
                                                                           Filters=tagged)),
         lambda found: [("delete_key_pair", {"KeyName": r.id}) for r in found],  # the emulator ignores KeyPairId
         gone=("InvalidKeyPair.NotFound",)),
    Kind("ssm-parameter", "its SSM parameter (the private key)", _parameters,
         lambda found: [("delete_parameter", {"Name": r.id}) for r in found], gone=("ParameterNotFound",),
         service="ssm"),
    Kind("security-group", "the security group",
         _tagged("security-group", "GroupId",
                 lambda ec2, tagged: aws.all_items(ec2, "describe_security_groups", "SecurityGroups", Filters=tagged)),
         lambda found: [("delete_security_group", {"GroupId": r.id}) for r in found],
         gone=("InvalidGroup.NotFound",), after=("instance",)),
    Kind("subnet", "the subnet",
         _tagged("subnet", "SubnetId", lambda ec2, tagged: aws.all_items(ec2, "describe_subnets", "Subnets",
                                                                          Filters=tagged)),
         lambda found: [("delete_subnet", {"SubnetId": r.id}) for r in found],
         gone=("InvalidSubnetID.NotFound",), after=("instance",), made_by=_wants_subnet),
    Kind("vpc", "the VPC (when the build made one)",
         _tagged("vpc", "VpcId", lambda ec2, tagged: aws.all_items(ec2, "describe_vpcs", "Vpcs", Filters=tagged)),
         lambda found: [("delete_vpc", {"VpcId": r.id}) for r in found],
         gone=("InvalidVpcID.NotFound",), after=("security-group", "subnet"), made_by=_wants_subnet),
)
BY_NAME = {kind.name: kind for kind in KINDS}
#: The kinds found in the regions the image is copied to.
COPIED = tuple(kind.name for kind in KINDS if kind.copied)


def _ordered(kinds: tuple[Kind, ...]) -> tuple[Kind, ...]:
    """The kinds in table order, checked: each after every kind it names in ``after``."""
    seen: set[str] = set()
    for kind in kinds:
        unknown = set(kind.after) - {k.name for k in kinds}
        if unknown:
            raise ValueError(f"kind {kind.name} comes after unknown kinds {sorted(unknown)}")
        late = set(kind.after) - seen
        if late:
            raise ValueError(f"kind {kind.name} must come after {sorted(late)} in the table")
        seen.add(kind.name)
    return kinds


ORDER = _ordered(KINDS)


def _waits_for(kind: Kind) -> str | None:
    """The settling kind whose resources must be gone, before this kind's go (directly or through others)."""
    for name in kind.after:
        before = BY_NAME[name]
        if before.settles:
            return before.name
        if (through := _waits_for(before)) is not None:
            return through
    return None


# --- finding -------------------------------------------------------------------------------------------

def find(ec2, ssm, build_id: str | None = None, kinds: Iterable[str] | None = None) -> list[Resource]:
    """What exists of the build (``build_id``), or of every build (None), in the clients' region, in table
    order; ``kinds``: only these (``ssm`` may be None when none of them is an SSM parameter)."""
    wanted = set(kinds) if kinds is not None else None
    scope = Scope(ec2, ssm, build_id)
    found: list[Resource] = []
    for kind in ORDER:
        if wanted is None or kind.name in wanted:
            found += list(kind.find(scope, found))
    return found


def recorded(build_id: str, record: dict) -> list[Resource]:
    """What the setup, the launch and the test stage recorded they made (infrastructure.BuilderInfrastructure,
    ``instance_id``, ``test_instance_id``), found with no lookups."""
    made = [("instance", record.get("instance_id")), ("instance", record.get("test_instance_id")),
            ("key-pair", record.get("key_name")), ("ssm-parameter", record.get("private_key_parameter")),
            ("security-group", record.get("security_group_id")), ("subnet", record.get("subnet_id")),
            ("vpc", record.get("vpc_id") if record.get("own_vpc") else None)]
    return [Resource(kind, resource_id, build_id) for kind, resource_id in made if resource_id]


# --- deleting ------------------------------------------------------------------------------------------

def in_order(found: Iterable[Resource]) -> list[Resource]:
    rank = {kind.name: number for number, kind in enumerate(ORDER)}
    return sorted(found, key=lambda r: rank[r.kind])


def stages(found: Iterable[Resource]) -> tuple[list[Resource], list[Resource], list[Resource]]:
    """``found`` in deletion order, in three: what goes before the instances are gone (nothing needs them
    gone), the instances, and what must wait until they are (terminated)."""
    before, settling, after = [], [], []
    for resource in in_order(found):
        kind = BY_NAME[resource.kind]
        (settling if kind.settles else after if _waits_for(kind) else before).append(resource)
    return before, settling, after


def calls(found: Iterable[Resource]) -> list[Call]:
    """The EC2 calls that delete ``found``, in dependency order (a wait's ``then``: made once the instances
    are gone)."""
    ordered = in_order(found)
    made: list[Call] = []
    for kind in ORDER:
        mine = [r for r in ordered if r.kind == kind.name]
        if mine:
            if kind.service != "ec2":
                raise ValueError(f"{kind.name} is not deleted by an EC2 call")
            made += kind.calls(mine)
    return made


def delete(ec2, ssm, found: Iterable[Resource], *, attempts: int = 30, delay: float = 2.0) -> list[str]:
    """Delete ``found`` in dependency order; returns the ids deleted (those gone already are not).

    Instances are only asked to terminate (their dependents need them gone: see :func:`stages`). One still in
    use (DependencyViolation: a security group of an instance AWS still shuts down) is retried, within a bound.
    """
    removed: list[str] = []
    ordered = in_order(found)
    for kind in ORDER:
        mine = [r for r in ordered if r.kind == kind.name]
        if not mine:
            continue
        client = ssm if kind.service == "ssm" else ec2
        for operation, arguments in kind.calls(mine):
            if _call(client, kind, operation, arguments, attempts, delay):
                named = [i for v in arguments.values() for i in (v if isinstance(v, list) else [v])]
                for resource_id in named:
                    deleted(kind.noun, resource_id)
                removed += named
    return removed


def _call(client, kind: Kind, operation: str, arguments: dict, attempts: int, delay: float) -> bool:
    """True once the call went through; False when it says the resource is gone already."""
    for attempt in range(1, attempts + 1):
        try:
            getattr(client, operation)(**arguments)
            return True
        except Exception as exc:
            code = error_code(exc)
            if code in kind.gone:
                log.info("%s %s is gone already (%s)", kind.noun, ", ".join(map(str, arguments.values())), code)
                return False
            if code != "DependencyViolation" or attempt == attempts:
                raise
            log.info("still in use (%s), retrying in %.0f s (%d/%d)", code, delay, attempt, attempts)
            time.sleep(delay)
    return False


# --- describing ----------------------------------------------------------------------------------------

def planned(spec, copy_regions: Iterable[str] = ()) -> list[str]:
    """What the teardown of a build of ``spec`` deletes, in its order (``image-factory render``)."""
    regions = list(copy_regions)
    shown = []
    for kind in ORDER:
        if not kind.made_by(spec):
            continue
        text = kind.described
        if (waits_for := _waits_for(kind)) is not None:
            text += f" (once the {BY_NAME[waits_for].plural} are gone)"
        elif kind.copied and regions and kind.name == COPIED[0]:
            text += f" (also the copies never marked complete, in {', '.join(regions)})"
        shown.append(text)
    return shown


def listed() -> str:
    """The kinds, as the sweeper's documentation lists them."""
    return ", ".join(kind.name for kind in ORDER)
