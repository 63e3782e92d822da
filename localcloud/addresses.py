"""The local cloud's address plan: everything inside 198.18.0.0/15, and a slot per local cloud on the host.

Up to :data:`SLOTS` local clouds with machines run on one host at a time (two developers' test runs, say),
each in a slot of its own: a /17 of 198.18.0.0/16 for its VPCs and a /17 of 198.19.0.0/16 for its public
addresses, its own bridge ``lcbr<slot>``, namespaces ``lc<slot>-<instance>`` and veths ``lc<slot>h...``. In
slot 0:

* 198.18.0.0/22: the host's block: the bridge address 198.18.0.1 (the provisioner's), 198.18.1.0/24 for
  namespaces tests make, 198.18.2.0/24 for the VPC a build makes of its own (``builder_vpc_cidr``),
  198.18.3.0/24 for the hosts of the Celery deployment (localcloud/deployment.py: its workers);
* 198.18.16.0/20, 198.18.32.0/20, ...: a block per region (7 at most), in the order of ``up --regions`` and
  then in the order regions are first used: its default VPC is the block's first /21 (default subnets: a /26
  per zone), the builder VPC ``up`` makes the second /21 (128 builds' /28 subnets at once: a hundred
  concurrent builds fit);
* 198.19.0.0/17: the public addresses, handed out in turn.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from functools import cached_property

RESERVED = ipaddress.ip_network("198.18.0.0/15")
SLOTS = 2
SLOT_PREFIX = 17
BLOCK_PREFIX = 20
#: The host's own addresses, at the start of the slot's first block (which no region gets).
HOST_PREFIX = 22
_PRIVATE = ipaddress.ip_network("198.18.0.0/16")
_PUBLIC = ipaddress.ip_network("198.19.0.0/16")


@dataclass(frozen=True)
class Plan:
    slot: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.slot < SLOTS:
            raise ValueError(f"slot {self.slot} is not one of 0..{SLOTS - 1}")

    @cached_property
    def private(self) -> ipaddress.IPv4Network:
        return list(_PRIVATE.subnets(new_prefix=SLOT_PREFIX))[self.slot]

    @cached_property
    def public(self) -> ipaddress.IPv4Network:
        return list(_PUBLIC.subnets(new_prefix=SLOT_PREFIX))[self.slot]

    @property
    def host_block(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"{self.private.network_address}/{HOST_PREFIX}")

    @property
    def bridge_address(self) -> ipaddress.IPv4Address:
        return self.private.network_address + 1

    @property
    def bridge_mac(self) -> str:
        """The bridge's own MAC: locally administered, its address's four bytes. Set, it stays; else Linux gives
        a bridge the lowest MAC of its ports, which changes as machines come and go, and every host on the
        bridge then sends to a MAC that is gone until its ARP entry times out (tens of seconds)."""
        return mac_of(self.bridge_address)

    @staticmethod
    def machine_mac(address: str) -> str:
        """A machine's MAC, its address's: the same over a stop and start (as an ENI keeps its MAC) and for a new
        machine given an address again, so that the host's ARP entry for the address stays true. A new MAC
        per boot left the host sending to the old one for seconds (its entry going stale, then failed)."""
        return mac_of(ipaddress.ip_address(address))

    @property
    def probe_network(self) -> ipaddress.IPv4Network:
        """Addresses for namespaces of the tests' own on the bridge."""
        return ipaddress.ip_network(f"{self.private.network_address + 256}/24")

    @property
    def own_vpc(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(f"{self.private.network_address + 512}/24")

    @property
    def hosts_network(self) -> ipaddress.IPv4Network:
        """Addresses of the Celery deployment's hosts (its workers, each a network namespace on the bridge)."""
        return ipaddress.ip_network(f"{self.private.network_address + 768}/24")

    @property
    def bridge(self) -> str:
        return f"lcbr{self.slot}"

    @property
    def netns_prefix(self) -> str:
        return f"lc{self.slot}-"

    @property
    def veth_prefix(self) -> str:
        return f"lc{self.slot}h"

    def netns(self, instance_id: str) -> str:
        return f"{self.netns_prefix}{instance_id}"

    def veth(self, instance_id: str) -> str:
        return self.veth_prefix + hashlib.sha256(instance_id.encode()).hexdigest()[:10]

    def region_block(self, index: int) -> ipaddress.IPv4Network:
        """Block ``index`` (1, 2, ...) of the slot: a region's."""
        count = self.private.num_addresses >> (32 - BLOCK_PREFIX)
        if not 1 <= index < count:
            raise RuntimeError(f"the local cloud has no address block left in {self.private} for one more region "
                               f"({count - 1} at most)")
        return ipaddress.ip_network(f"{self.private.network_address + (index << (32 - BLOCK_PREFIX))}/{BLOCK_PREFIX}")


def builder_vpc_cidr(default_vpc: str) -> str:
    """The builder VPC's range of the region whose default VPC is ``default_vpc``: the same-sized one after it."""
    network = ipaddress.ip_network(default_vpc)
    return f"{network.network_address + network.num_addresses}/{network.prefixlen}"


def mac_of(address: ipaddress.IPv4Address) -> str:
    """A locally administered MAC made of an address's four bytes: one per address, never another's."""
    return "02:00:" + ":".join(f"{byte:02x}" for byte in address.packed)
