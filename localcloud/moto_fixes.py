"""Every fix the local cloud makes to moto, in one module: where moto differs from AWS in a way a build notices.

Two kinds. Patches into moto's server process (:func:`install`, called by localcloud/moto_server.py):

* every region's default VPC inside the local cloud's reserved range 198.18.0.0/15. moto makes each region's
  default VPC as 172.31.0.0/16 (``VPCBackend.create_default_vpc`` in moto/ec2/models/vpcs.py) with one /20
  default subnet per availability zone (``create_default_subnet`` in moto/ec2/models/subnets.py), and an
  instance launched without a subnet gets a random 10.x address. Here each region gets a block of the local
  cloud's slot (localcloud/addresses.py): its default VPC is the block's first half, with a default subnet of a
  sixteenth of the block per zone; the second half is left for the builder VPC that ``LocalCloud.up`` makes. An
  instance launched without a subnet goes into its zone's default subnet, as on AWS. Public addresses (an
  instance's public IP, Elastic IPs) come from the slot's public range, one after the other. A new instance's
  private address is one no other live instance has, in any VPC: every machine is on the one bridge;
* terminating a terminated instance changes nothing; image deprecation and DeregisterImage's
  DeleteAssociatedSnapshots (:func:`install_image_lifecycle`); lookups made once (:func:`install_lookup_caches`),
  a resource's tags read by its id (:func:`install_tag_lookup`); one request at a time
  (:func:`install_request_lock`).

And hooks of the front (localcloud/chain.py), for what is easier to fix in the answers, as AWS does and moto
does not:

* :class:`CopyTokens`: CopyImage's ``ClientToken`` makes a repeated call return the first call's copy;
* :class:`ImageNames`: CreateImage and CopyImage are refused (``InvalidAMIName.Duplicate``) for a name already
  in use by an image made through the front in the same region and not deregistered since: a step that runs
  again learns that its image was made;
* :class:`TagSpecifications`: CreateImage's snapshot ``TagSpecifications`` (moto 5.2 raises NotImplementedError)
  and CopyImage's (moto ignores them) tag the new image and its snapshots before the client hears of it;
* :class:`FailedCopies`: config ``{"fail_copies_to": ["us-west-2"]}``: a copy of an image into one of those
  regions fails, as a copy on AWS can: DescribeImages shows it ``failed`` (fault injection; ``[]`` turns it off);
* :class:`CreationDates`: ``POST /_localcloud/creation-dates`` with ``{"ami-...": "2026-01-01T00:00:00.000Z"}``:
  DescribeImages shows that CreationDate for the image from then on (tests of retention age their images so);
* :class:`ConsoleOutput`: GetConsoleOutput shows the instance's own console (its machine's boot output:
  systemd's, and cloud-init's block of the host keys it made) instead of moto's one fixed sample; without
  machines, the sample followed by the host key of the one sshd that stands in for every instance.
"""

from __future__ import annotations

import base64
import copy
import functools
import ipaddress
import json
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, parse_qsl, urlencode

from localcloud.addresses import BLOCK_PREFIX, RESERVED, Plan
from localcloud.chain import Answer, Call, Hook, ec2_error, made_id, parse_xml_naming, xml_bytes

# --- patches into moto's server ------------------------------------------------------------------------------

PLAN = Plan(0)  # set by install()
#: A default subnet per zone, as AWS's default VPC has (a /20 there; a /26 is plenty here).
DEFAULT_SUBNET_PREFIX = 26
_blocks: dict[str, int] = {}
_lock = threading.Lock()
_public = None


def region_block(region: str) -> ipaddress.IPv4Network:
    """The block of ``region``: 1, 2, ... in the order regions are first seen."""
    with _lock:
        if region not in _blocks:
            _blocks[region] = len(_blocks) + 1
        index = _blocks[region]
    return PLAN.region_block(index)


def public_ip() -> str:
    """The next public address (moto draws 54.214.x.y and 127.x.y.z at random instead)."""
    global _public
    with _lock:
        if _public is None:
            _public = iter(PLAN.public.hosts())
        return str(next(_public))


def default_vpc_cidr(region: str) -> ipaddress.IPv4Network:
    return next(region_block(region).subnets(new_prefix=BLOCK_PREFIX + 1))


def install(plan: Plan, regions: list[str]) -> None:
    """Patch moto (in its server's process): addresses from ``plan``, blocks given to ``regions`` first, in order."""
    global PLAN
    PLAN = plan
    for region in regions:
        region_block(region)
    from moto.ec2.exceptions import DefaultVpcAlreadyExists
    from moto.ec2.models.instances import Instance, InstanceBackend
    from moto.ec2.models.subnets import Subnet, SubnetBackend
    from moto.ec2.models.vpcs import VPCBackend

    def create_default_vpc(self):
        if self.describe_vpcs(filters={"is-default": ["true"]}):
            raise DefaultVpcAlreadyExists
        vpc = self.create_vpc(cidr_block=str(default_vpc_cidr(self.region_name)), is_default=True)
        for zone in self.describe_availability_zones():
            self.create_default_subnet(zone.name)
        return vpc

    original_default_subnet = SubnetBackend.create_default_subnet

    def create_default_subnet(self, availability_zone: str):
        default_vpc = self.get_default_vpc()
        if default_vpc is None or not ipaddress.ip_network(default_vpc.cidr_block).subnet_of(RESERVED):
            return original_default_subnet(self, availability_zone)
        default_subnets = self.get_default_subnets()
        if availability_zone in default_subnets:
            return original_default_subnet(self, availability_zone)  # raises moto's own error
        blocks = list(ipaddress.ip_network(default_vpc.cidr_block).subnets(new_prefix=DEFAULT_SUBNET_PREFIX))
        return self.create_subnet(vpc_id=default_vpc.id, cidr_block=str(blocks[len(default_subnets)]),
                                  availability_zone=availability_zone)

    original_run_instances = InstanceBackend.run_instances

    def run_instances(self, image_id, count, user_data, security_group_names, **kwargs):
        # As AWS does in a default VPC (moto gives such an instance a random 10.x address instead): an instance
        # launched without a subnet goes into the default subnet of its zone (or of the region's first zone).
        nics = kwargs.get("nics") or []
        if not kwargs.get("subnet_id") and not any(nic.get("SubnetId") for nic in nics):
            defaults = self.get_default_subnets()
            subnet = defaults.get(kwargs.get("placement")) or next(
                (defaults[zone] for zone in sorted(defaults)), None)
            if subnet is not None:
                if nics:
                    primary = next((nic for nic in nics if str(nic.get("DeviceIndex", "0")) == "0"), nics[0])
                    primary["SubnetId"] = subnet.id
                else:
                    kwargs["subnet_id"] = subnet.id
        return original_run_instances(self, image_id, count, user_data, security_group_names, **kwargs)

    original_subnet_ip = Subnet.get_available_subnet_ip

    def get_available_subnet_ip(self, instance):
        # Every machine of the local cloud is on one bridge, so an address can be one machine's only. Builds that
        # make their own VPC make it of one range, and may pick the same subnet in it: moto gives each subnet's
        # first instance its first address. AWS gives any free address of the subnet: here, one that no live
        # instance of another VPC (or region) has. The skipped ones are moto's to give again afterwards.
        taken = _live_addresses(instance)
        skipped = []
        try:
            while (address := original_subnet_ip(self, instance)) in taken:
                skipped.append(address)
            return address
        finally:
            for address in skipped:
                self.del_subnet_ip(address)

    original_terminate = Instance.terminate

    def terminate(self):
        # As AWS: terminating a terminated instance changes nothing (moto would delete its interfaces again,
        # and fail on the first one it deleted the first time).
        if self._state.name == "terminated":
            return copy.copy(self._state)
        return original_terminate(self)

    install_lookup_caches()
    install_tag_lookup()
    install_request_lock()

    from moto.ec2.models import elastic_ip_addresses, elastic_network_interfaces

    elastic_network_interfaces.random_public_ip = public_ip
    elastic_ip_addresses.random_ip = public_ip
    VPCBackend.create_default_vpc = create_default_vpc
    SubnetBackend.create_default_subnet = create_default_subnet
    Subnet.get_available_subnet_ip = get_available_subnet_ip
    InstanceBackend.run_instances = run_instances
    Instance.terminate = terminate
    install_image_lifecycle()  # (after: it wraps run_instances as patched above)
    install_launch_template_source_version()


def _live_addresses(launching) -> set[str]:
    """The private addresses of every instance not terminated, in every account and region, but ``launching``."""
    from moto.ec2.models import ec2_backends

    return {instance.nics[0].private_ip_address
            for account in ec2_backends.values() for backend in account.values()
            for instance in backend.all_instances()
            if instance is not launching and 0 in instance.nics and instance.state != "terminated"}


def install_lookup_caches() -> None:
    """Two lookups moto's server makes again for every request, made once: its service modules (a directory
    listing, to find the backend of a request's host) and a response class's action methods
    (inspect.getmembers). Neither changes while it runs; together they took a quarter of its CPU per call
    (measured with py-spy: DescribeInstances, DescribeImages and CreateTags against 200 instances)."""
    from moto import backends
    from moto.core import responses

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    responses.method_names_from_class = functools.cache(responses.method_names_from_class)


def install_tag_lookup() -> None:
    """A resource's own tags read from moto's tag table by the resource's id. moto's TaggedEC2Resource.get_tags,
    called for every resource a Describe call filters or answers, asks TagBackend.describe_tags with a
    resource-id filter, which matches a regular expression against every tag of every resource: a DescribeImages
    over 1,000 tagged images took 5 s, nearly all of it there (cProfile), and every Describe slows as a session
    tags more. The same records, in the same form, looked up directly."""
    from moto.ec2.models.core import TaggedEC2Resource
    from moto.ec2.utils import EC2_PREFIX_TO_RESOURCE, get_prefix

    def get_tags(self) -> list[dict[str, str]]:
        if not self.id:
            return []
        kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
        return [{"resource_id": self.id, "key": key, "value": value, "resource_type": kind}
                for key, value in list(self.ec2_backend.tags.get(self.id, {}).items())]

    TaggedEC2Resource.get_tags = get_tags


def install_request_lock() -> None:
    """One request at a time. moto's server answers each request in a thread of its own, and its backends are
    not thread-safe: under 100 builds, a CreateSecurityGroup failed with "dictionary changed size during
    iteration" (moto's lookup of the group's name, while another build's group was added). Its work is
    Python under the GIL anyway, so the lock costs next to no throughput."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    answer = DomainDispatcherApplication.__call__
    lock = threading.Lock()

    def one_at_a_time(self, environ, start_response):
        with lock:
            return answer(self, environ, start_response)

    DomainDispatcherApplication.__call__ = one_at_a_time


def install_image_lifecycle() -> None:
    """What AWS does with old images and moto does not: EnableImageDeprecation / DisableImageDeprecation (the
    time shows as the image's DeprecationTime), DeregisterImage's DeleteAssociatedSnapshots (without it,
    the snapshots stay, as on AWS), and a disabled image (DisableImage, which moto has) is not launched and is
    listed by DescribeImages only with IncludeDisabled."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import InvalidParameterValue, UnvailableAMIIdError
    from moto.ec2.models.instances import InstanceBackend
    from moto.ec2.responses.amis import AmisResponse

    def image(response):
        return response.ec2_backend.describe_images(ami_ids=[response._get_param("ImageId")])[0]

    def enable_image_deprecation(self):
        ami = image(self)
        self.error_on_dryrun()
        at = self._get_param("DeprecateAt")  # moto parses it by the API model: a datetime, or the text
        try:
            at = at if isinstance(at, datetime) else datetime.fromisoformat(str(at).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameterValue("DeprecateAt: expected a time such as 2026-01-01T00:00:00Z") from None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        # As AWS: to the minute, at most 10 years ahead.
        at = at.astimezone(UTC).replace(second=0, microsecond=0)
        if at > datetime.now(UTC) + timedelta(days=3650):
            raise InvalidParameterValue("DeprecateAt: at most 10 years ahead")
        ami.deprecation_time = at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        return ActionResult({"Return": True})

    def disable_image_deprecation(self):
        ami = image(self)
        self.error_on_dryrun()
        ami.deprecation_time = None
        return ActionResult({"Return": True})

    original_deregister = AmisResponse.deregister_image

    def deregister_image(self):
        ami = self.ec2_backend.amis.get(self._get_param("ImageId"))
        snapshot = getattr(ami, "ebs_snapshot", None)  # moto's image has one EBS snapshot
        answer = original_deregister(self)
        if self._get_bool_param("DeleteAssociatedSnapshots", False):
            results = []
            for snapshot_id in [snapshot.id] if snapshot else []:
                try:
                    self.ec2_backend.delete_snapshot(snapshot_id)
                    results.append({"SnapshotId": snapshot_id, "ReturnCode": "success"})
                except Exception:  # AWS reports each snapshot's outcome in the answer
                    results.append({"SnapshotId": snapshot_id, "ReturnCode": "error-generic"})
            return ActionResult({"Return": True, "DeleteSnapshotResults": results})
        return answer

    original_describe = AmisResponse.describe_images

    def describe_images(self):
        answer = original_describe(self)
        if not self._get_bool_param("IncludeDisabled", False):
            answer.result["Images"] = [ami for ami in answer.result["Images"] if ami.state != "disabled"]
        return answer

    original_run = InstanceBackend.run_instances

    def run_instances(self, image_id, *args, **kwargs):
        ami = self.amis.get(image_id)
        if ami is not None and ami.state == "disabled":  # as AWS: no new instance of a disabled image
            raise UnvailableAMIIdError(image_id)
        return original_run(self, image_id, *args, **kwargs)

    AmisResponse.describe_images = describe_images
    InstanceBackend.run_instances = run_instances
    AmisResponse.enable_image_deprecation = enable_image_deprecation
    AmisResponse.disable_image_deprecation = disable_image_deprecation
    AmisResponse.deregister_image = deregister_image


def install_launch_template_source_version() -> None:
    """CreateLaunchTemplateVersion's SourceVersion, which moto ignores: as on AWS, the new version has the
    source version's settings, but for those its LaunchTemplateData gives (a rollout names only the image)."""
    from moto.ec2.responses.launch_templates import LaunchTemplates

    original = LaunchTemplates.create_launch_template_version

    def create_launch_template_version(self):
        source = self._get_param("SourceVersion")
        if source:
            name, template_id = self._get_param("LaunchTemplateName"), self._get_param("LaunchTemplateId")
            template = (self.ec2_backend.get_launch_template_by_name(name) if name
                        else self.ec2_backend.get_launch_template(template_id))
            inherited = copy.deepcopy(template.get_version(source).data)
            given = self._get_param

            def with_source(param, default=None):
                value = given(param, default)
                return {**inherited, **(value or {})} if param == "LaunchTemplateData" else value

            self._get_param = with_source
        return original(self)

    LaunchTemplates.create_launch_template_version = create_launch_template_version


# --- hooks of the front --------------------------------------------------------------------------------------


def released(call: Call, answer: Answer) -> str | None:
    """The image a DeregisterImage that moto answered freed (its name, its copy token), else None."""
    if call.name == "ec2:DeregisterImage" and answer.status == 200:
        return call.param("ImageId")
    return None


class CopyTokens(Hook):
    """CopyImage's ``ClientToken``: a repeated call returns the first call's copy."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.copies: dict[tuple[str, str], str] = {}  # (region, ClientToken) -> the copy that call made

    def before(self, call: Call) -> Answer | None:
        if call.name != "ec2:CopyImage" or not (token := call.param("ClientToken")):
            return None
        with self.lock:
            made = self.copies.get((call.region, token))
        if not made:
            return None
        request_id = str(uuid.uuid4())
        return Answer(200, [("Content-Type", "text/xml;charset=UTF-8")], (
            '<?xml version="1.0" encoding="UTF-8"?>\n<CopyImageResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            f"<requestId>{request_id}</requestId><imageId>{made}</imageId></CopyImageResponse>").encode())

    def after(self, call: Call, answer: Answer) -> Answer:
        if call.name == "ec2:CopyImage" and answer.status == 200 and (token := call.param("ClientToken")):
            if made := made_id(answer):
                with self.lock:
                    self.copies[(call.region, token)] = made
        elif image_id := released(call, answer):
            with self.lock:
                for key in [key for key, known in self.copies.items() if known == image_id]:
                    del self.copies[key]
        return answer


class ImageNames(Hook):
    """CreateImage and CopyImage refused for a name in use by another image of the account in the region."""

    ACTIONS = frozenset({"ec2:CreateImage", "ec2:CopyImage"})

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # (region, image name) -> image id, of the images made through the front and not deregistered since
        self.names: dict[tuple[str, str], str] = {}

    def before(self, call: Call) -> Answer | None:
        if call.name not in self.ACTIONS:
            return None
        name = call.param("Name")
        with self.lock:
            existing = self.names.get((call.region, name))
        if existing:
            return ec2_error(400, "InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI {existing}")
        return None

    def after(self, call: Call, answer: Answer) -> Answer:
        if call.name in self.ACTIONS and answer.status == 200:
            made, name = made_id(answer), call.param("Name")
            if made and name:
                with self.lock:
                    self.names[(call.region, name)] = made
        elif image_id := released(call, answer):
            with self.lock:
                for key in [key for key, known in self.names.items() if known == image_id]:
                    del self.names[key]
        return answer


class TagSpecifications(Hook):
    """The snapshots' ``TagSpecifications`` of CreateImage and CopyImage, and the image's of CopyImage, tag them
    in moto before the client hears of the image (moto refuses the first, ignores the others)."""

    def __init__(self, moto_port: int) -> None:
        self.moto_port = moto_port

    def before(self, call: Call) -> None:
        if call.name == "ec2:CreateImage" and tag_specifications(call.body, "snapshot"):
            call.rewrite(without_tag_specifications(call.body, "snapshot"))

    def after(self, call: Call, answer: Answer) -> Answer:
        if call.name not in ("ec2:CreateImage", "ec2:CopyImage") or answer.status != 200:
            return answer
        made = made_id(answer)
        if made is None:
            return answer
        from localcloud.machines import Moto

        moto = Moto(self.moto_port)
        snapshot_tags = tag_specifications(call.body, "snapshot")
        if snapshot_tags:
            images = moto.query(call.region, "DescribeImages", {"ImageId.1": made})
            snapshots = [s.text for s in images.iter("snapshotId") if s.text]
            if snapshots:
                moto.query(call.region, "CreateTags", tagging(snapshots, snapshot_tags))
        image_tags = tag_specifications(call.body, "image") if call.action == "CopyImage" else {}
        if image_tags:
            moto.query(call.region, "CreateTags", tagging([made], image_tags))
        return answer


def tagging(resource_ids: list[str], tags: dict[str, str]) -> dict[str, str]:
    """CreateTags' parameters."""
    query = {f"ResourceId.{n}": resource_id for n, resource_id in enumerate(resource_ids, start=1)}
    for number, (key, value) in enumerate(tags.items(), start=1):
        query.update({f"Tag.{number}.Key": key, f"Tag.{number}.Value": value})
    return query


def tag_specifications(body: bytes, resource_type: str) -> dict[str, str]:
    """The tags an EC2 query call's ``TagSpecification.N`` of ``resource_type`` gives."""
    if b"TagSpecification" not in body:
        return {}
    params = parse_qs(body.decode("utf-8", errors="replace"))
    tags: dict[str, str] = {}
    for key, values in params.items():
        spec = re.fullmatch(r"TagSpecification\.(\d+)\.Tag\.(\d+)\.Key", key)
        if spec and params.get(f"TagSpecification.{spec.group(1)}.ResourceType", [""])[0] == resource_type:
            tags[values[0]] = params.get(f"TagSpecification.{spec.group(1)}.Tag.{spec.group(2)}.Value", [""])[0]
    return tags


def without_tag_specifications(body: bytes, resource_type: str) -> bytes:
    """``body`` without its ``TagSpecification.N`` of ``resource_type``, the others numbered from 1 again (moto
    reads a list up to its first missing number)."""
    pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    numbers = {m.group(1) for k, v in pairs if (m := re.fullmatch(r"TagSpecification\.(\d+)\.ResourceType", k))
               and v != resource_type}
    renumbered = {old: str(new) for new, old in enumerate(sorted(numbers, key=int), start=1)}
    kept = []
    for key, value in pairs:
        spec = re.match(r"TagSpecification\.(\d+)\.", key)
        if spec is None:
            kept.append((key, value))
        elif spec.group(1) in renumbered:
            kept.append((f"TagSpecification.{renumbered[spec.group(1)]}.{key[spec.end():]}", value))
    return urlencode(kept).encode()


def images_rewritten(body: bytes, field: str, values: dict[str, str]) -> bytes:
    """A DescribeImages answer with ``field`` of each image in ``values`` (image id -> text) set to its value;
    the body as it was when it names none of them."""
    parsed = parse_xml_naming(body, values)
    if parsed is None:
        return body
    root, namespace = parsed
    for item in root.iter():
        element = item.find(namespace + field)
        value = values.get(item.findtext(namespace + "imageId") or "")
        if element is not None and value:
            element.text = value
    return xml_bytes(root, namespace)


class FailedCopies(Hook):
    """Config ``fail_copies_to``: copies into those regions show ``failed`` in DescribeImages."""

    settings = frozenset({"fail_copies_to"})

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.regions: list[str] = []
        self.failed: set[str] = set()

    def after(self, call: Call, answer: Answer) -> Answer:
        if answer.status != 200:
            return answer
        if call.name == "ec2:CopyImage" and call.region in self.regions and (made := made_id(answer)):
            with self.lock:
                self.failed.add(made)
        elif call.name == "ec2:DescribeImages":
            answer.body = self.shown_failed(answer.body)
        return answer

    def shown_failed(self, body: bytes) -> bytes:
        with self.lock:
            failed = {image_id: "failed" for image_id in self.failed}
        return images_rewritten(body, "imageState", failed)

    def configure(self, settings: dict):
        regions = settings.get("fail_copies_to", self.regions)
        if not isinstance(regions, list) or not all(isinstance(r, str) and re.fullmatch(r"[a-z0-9-]{1,32}", r)
                                                    for r in regions):
            raise ValueError(f"fail_copies_to must be a list of regions, not {regions!r}")

        def apply() -> None:
            self.regions = list(regions)
        return apply

    def config(self) -> dict:
        return {"fail_copies_to": list(self.regions)} if self.regions else {}


class CreationDates(Hook):
    """``POST /_localcloud/creation-dates``: the CreationDate DescribeImages shows for an image from then on."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dates: dict[str, str] = {}  # image id -> its CreationDate, as a test set it

    def after(self, call: Call, answer: Answer) -> Answer:
        if call.name == "ec2:DescribeImages" and answer.status == 200:
            answer.body = self.backdated(answer.body)
        return answer

    def backdated(self, body: bytes) -> bytes:
        with self.lock:
            dates = dict(self.dates)
        return images_rewritten(body, "creationDate", dates)

    def control(self, method: str, name: str, body: bytes) -> tuple[int, object] | None:
        if (method, name) != ("POST", "creation-dates"):
            return None
        try:
            dates = json.loads(body or b"{}")
            if not isinstance(dates, dict):
                raise ValueError("a JSON object is expected")
            for image_id, when in dates.items():
                if not re.fullmatch(r"ami-[0-9a-f]+", str(image_id)) or not re.fullmatch(
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", str(when)):
                    raise ValueError(f"expected {{image id: time such as 2026-01-01T00:00:00.000Z}}, not "
                                     f"{image_id!r}: {when!r}")
        except ValueError as exc:
            return 400, {"error": str(exc)}
        with self.lock:
            self.dates.update(dates)
            return 200, {"creation_dates": len(self.dates)}


CONSOLE_OUTPUT = re.compile(rb"<output>([A-Za-z0-9+/=\s]*)</output>")


class ConsoleOutput(Hook):
    """GetConsoleOutput: a machine's own console, or (one sshd for every instance) moto's sample followed by that
    sshd's host key ``shared_key``, as cloud-init prints it."""

    def __init__(self, machines=None, shared_key: str = "") -> None:
        self.machines, self.shared_key = machines, shared_key

    def after(self, call: Call, answer: Answer) -> Answer:
        if call.name != "ec2:GetConsoleOutput" or answer.status != 200:
            return answer
        found = CONSOLE_OUTPUT.search(answer.body)
        if found is None:
            return answer
        console = self.machines.console(call.param("InstanceId")) if self.machines is not None else None
        if console is None and self.shared_key:
            console = base64.b64decode(found.group(1)).decode("utf-8", "replace") + (
                f"-----BEGIN SSH HOST KEY KEYS-----\n{self.shared_key}\n-----END SSH HOST KEY KEYS-----\n")
        if console is not None:
            output = base64.b64encode(console.encode()).decode()
            answer.body = answer.body[:found.start(1)] + output.encode() + answer.body[found.end(1):]
        return answer
