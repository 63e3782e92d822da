"""moto's server with every region's default VPC inside the local cloud's reserved range 198.18.0.0/15.

``python -m localcloud.moto_server --slot 0 --regions eu-west-1,us-east-1 -H 127.0.0.1 -p PORT``

moto makes each region's default VPC as 172.31.0.0/16 (``VPCBackend.create_default_vpc`` in
moto/ec2/models/vpcs.py) with one /20 default subnet per availability zone (``create_default_subnet`` in
moto/ec2/models/subnets.py), and an instance launched without a subnet gets a random 10.x address. Here each
region gets a block of the local cloud's slot (``--slot``, localcloud/addresses.py): its default VPC is the
block's first half, with a default subnet of a sixteenth of the block per zone; the second half is left for
the builder VPC that ``LocalCloud.up`` makes. An instance launched without a subnet goes into its zone's default
subnet, as on AWS. Public addresses (an instance's public IP, Elastic IPs) come from the slot's public range,
one after the other.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import sys
import threading
from datetime import UTC, datetime, timedelta

from localcloud.addresses import BLOCK_PREFIX, RESERVED, Plan

PLAN = Plan(0)  # set by --slot
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


def install() -> None:
    """Patch moto's default VPC and default subnets into the reserved range."""
    from moto.ec2.exceptions import DefaultVpcAlreadyExists
    from moto.ec2.models.instances import Instance, InstanceBackend
    from moto.ec2.models.subnets import SubnetBackend
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

    original_terminate = Instance.terminate

    def terminate(self):
        # As AWS: terminating a terminated instance changes nothing (moto would delete its interfaces again,
        # and fail on the first one it deleted the first time).
        if self._state.name == "terminated":
            return copy.copy(self._state)
        return original_terminate(self)

    install_lookup_caches()
    install_request_lock()

    from moto.ec2.models import elastic_ip_addresses, elastic_network_interfaces

    elastic_network_interfaces.random_public_ip = public_ip
    elastic_ip_addresses.random_ip = public_ip
    VPCBackend.create_default_vpc = create_default_vpc
    SubnetBackend.create_default_subnet = create_default_subnet
    InstanceBackend.run_instances = run_instances
    Instance.terminate = terminate
    install_image_lifecycle()  # (after: it wraps run_instances as patched above)


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


def main(argv: list[str]) -> int:
    global PLAN
    if "--slot" in argv:
        at = argv.index("--slot")
        PLAN = Plan(int(argv[at + 1]))
        argv = argv[:at] + argv[at + 2:]
    if "--regions" in argv:
        at = argv.index("--regions")
        for region in filter(None, argv[at + 1].split(",")):
            region_block(region)
        argv = argv[:at] + argv[at + 2:]
    host = argv[argv.index("-H") + 1] if "-H" in argv else ""
    if host not in ("127.0.0.1", "localhost"):
        print("localcloud.moto_server: moto binds loopback only: pass -H 127.0.0.1", file=sys.stderr)
        return 2
    install()
    from moto.server import main as moto_main

    moto_main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
