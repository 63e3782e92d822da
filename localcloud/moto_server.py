"""moto's server with every region's default VPC inside the local cloud's reserved range 198.18.0.0/15.

``python -m localcloud.moto_server --regions eu-west-1,us-east-1 -H 127.0.0.1 -p PORT``

moto makes each region's default VPC as 172.31.0.0/16 (``VPCBackend.create_default_vpc`` in
moto/ec2/models/vpcs.py) with one /20 default subnet per availability zone (``create_default_subnet`` in
moto/ec2/models/subnets.py). Here each region gets a /21 of 198.18.0.0/15 of its own (see
:func:`region_block`): its default VPC is the block's first /22 (default subnets: /25s of it, eight at most;
us-east-1 has six zones) and the second /22 is left for the builder VPC that ``LocalCloud.up`` makes. The
regions named by ``--regions`` get the first blocks in that order; any other region gets the next free block
when moto first sets it up. Block 0 is the host's own (the bridge address, the test namespaces). Public
addresses (an instance's public IP, Elastic IPs) come from 198.19.0.0/16, one after the other; a machine holds
its public address beside its private one.
"""

from __future__ import annotations

import ipaddress
import sys
import threading

RESERVED = ipaddress.ip_network("198.18.0.0/15")
#: the VPCs: 198.18.0.0/16 (block 0 the host's, then a /21 per region: 31 regions at most)
PRIVATE = ipaddress.ip_network("198.18.0.0/16")
#: the public addresses moto hands out (instances' public IPs, Elastic IPs): 198.19.0.0/16, in turn, so that a
#: client that SSHes to an instance's "public" address stays inside the reserved range too
PUBLIC = ipaddress.ip_network("198.19.0.0/16")
BLOCK_PREFIX = 21
#: block 0: the host side (bridge 198.18.0.1) and the namespaces tests make
HOST_BLOCK = next(RESERVED.subnets(new_prefix=BLOCK_PREFIX))
BRIDGE_ADDRESS = HOST_BLOCK.network_address + 1
#: the VPC a build makes of its own when no builder VPC is set ([image_factory] builder_vpc_cidr)
OWN_VPC_CIDR = ipaddress.ip_network("198.18.4.0/24")

_blocks: dict[str, int] = {}
_lock = threading.Lock()


def region_block(region: str) -> ipaddress.IPv4Network:
    """The /21 of ``region``: blocks 1, 2, ... in the order regions are first seen."""
    with _lock:
        if region not in _blocks:
            _blocks[region] = len(_blocks) + 1
        index = _blocks[region]
    blocks = PRIVATE.num_addresses >> (32 - BLOCK_PREFIX)
    if index >= blocks:
        raise RuntimeError(f"the local cloud has no address block left in {PRIVATE} for region {region}")
    return ipaddress.ip_network(f"{PRIVATE.network_address + index * (1 << (32 - BLOCK_PREFIX))}/{BLOCK_PREFIX}")


_public = iter(PUBLIC.hosts())


def public_ip() -> str:
    """The next public address (moto draws 54.214.x.y and 127.x.y.z at random instead)."""
    with _lock:
        return str(next(_public))


def default_vpc_cidr(region: str) -> ipaddress.IPv4Network:
    return next(region_block(region).subnets(new_prefix=BLOCK_PREFIX + 1))


def builder_vpc_cidr(default_vpc: str) -> str:
    """The builder VPC's range of the region whose default VPC is ``default_vpc``: the /22 after it."""
    network = ipaddress.ip_network(default_vpc)
    return f"{network.network_address + network.num_addresses}/{network.prefixlen}"


def install() -> None:
    """Patch moto's default VPC and default subnets into the reserved range."""
    from moto.ec2.exceptions import DefaultVpcAlreadyExists
    from moto.ec2.models.instances import InstanceBackend
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
        blocks = list(ipaddress.ip_network(default_vpc.cidr_block).subnets(new_prefix=BLOCK_PREFIX + 4))
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

    from moto.ec2.models import elastic_ip_addresses, elastic_network_interfaces

    elastic_network_interfaces.random_public_ip = public_ip
    elastic_ip_addresses.random_ip = public_ip
    VPCBackend.create_default_vpc = create_default_vpc
    SubnetBackend.create_default_subnet = create_default_subnet
    InstanceBackend.run_instances = run_instances


def main(argv: list[str]) -> int:
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
