"""Step 2: the builder infrastructure, created for one build (and deleted after it: resources.py, teardown.py).

What it creates, each tagged with the build in its create call and looked up by tag before it is created
(so a retry creates nothing twice):
- a VPC of its own, when no builder VPC is configured and the spec asks for ``${IMAGE_BUILDER_SUBNET_ID}``;
- a subnet, when the spec asks for ``${IMAGE_BUILDER_SUBNET_ID}``;
- a security group that lets in only SSH from the provisioner's CIDR and lets out only the spec's ports;
- an ephemeral key pair, whose private half is kept only in an SSM SecureString parameter of the build.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
from dataclasses import asdict, dataclass, fields

from image_factory.aws import error_code
from image_factory.build import Build, created
from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.resources import parameter_folder

log = logging.getLogger("image_factory")


class InfrastructureError(PermanentError):
    pass


@dataclass
class BuilderInfrastructure:
    vpc_id: str
    subnet_id: str | None
    security_group_id: str
    key_name: str
    private_key_parameter: str
    #: True when the VPC was made for this build (and goes with it).
    own_vpc: bool = False

    def outputs(self) -> dict[str, str]:
        """The ``${NAME}`` parameters this step provides to the spec."""
        values = {"IMAGE_BUILDER_SECURITY_GROUP_ID": self.security_group_id, "IMAGE_BUILDER_SSH_KEY": self.key_name}
        if self.subnet_id:
            values["IMAGE_BUILDER_SUBNET_ID"] = self.subnet_id
        return values

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BuilderInfrastructure:
        """From :meth:`to_dict`'s output, which may carry more (the DAG adds the origin to it)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def private_key_parameter(build: Build) -> str:
    return f"{parameter_folder(build.build_id)}ssh-private-key"


def create(ec2, ssm, build: Build) -> BuilderInfrastructure:
    spec, settings = build.spec, build.settings
    cidr = settings.cidr(spec.allow_ssh_from_anywhere)
    checkpoint("before:infrastructure")
    own_vpc = False
    if spec.wants_builder_subnet:
        own_vpc = not settings.builder_vpc_id
        vpc_id = settings.builder_vpc_id or _ensure_vpc(ec2, build)
        subnet_id = _ensure_subnet(ec2, build, vpc_id)
    elif spec.subnet:
        subnet_id = None
        vpc_id = _vpc_of_subnet(ec2, spec.subnet)
    else:
        subnet_id = None
        vpc_id = _default_vpc(ec2, build)
    security_group_id = _ensure_security_group(ec2, build, vpc_id, cidr)
    key_name, parameter = _ensure_key_pair(ec2, ssm, build)
    checkpoint("after:infrastructure")
    return BuilderInfrastructure(vpc_id, subnet_id, security_group_id, key_name, parameter, own_vpc)


def _find(items: list[dict], key: str) -> str | None:
    return items[0][key] if items else None


def _existing(build: Build, describe, key: str, id_key: str) -> str | None:
    """This build's resource of a kind, looked up by tag (not on a fresh try: it cannot exist yet)."""
    return None if build.fresh else _find(describe(Filters=build.build_filter())[key], id_key)


# The requests this step sends, as pure functions of the build (and of what is known only at run time): the
# step sends them unchanged, and ``render`` (plan.py) shows them.

def vpc_request(build: Build) -> dict:
    return {"CidrBlock": build.settings.builder_vpc_cidr, "TagSpecifications": build.tag_specifications("vpc")}


def subnet_candidates(build: Build, network, taken=()) -> list:
    """The /28 blocks of ``network`` not overlapping ``taken``, in the order the build tries them.

    Builds share a configured VPC. Each starts at a free /28 of its own (by its build id), then takes the next
    ones on a race: builds started together rarely try the same block (from the first free one, the n-th of
    them would try n blocks)."""
    free = [candidate for candidate in network.subnets(new_prefix=max(28, network.prefixlen))
            if not any(candidate.overlaps(t) for t in taken)]
    first = int(hashlib.sha256(build.build_id.encode()).hexdigest(), 16) % max(1, len(free))
    return free[first:] + free[:first]


def subnet_request(build: Build, vpc_id: str, cidr: str) -> dict:
    return {"VpcId": vpc_id, "CidrBlock": str(cidr), "TagSpecifications": build.tag_specifications("subnet")}


def security_group_request(build: Build, vpc_id: str) -> dict:
    return {"GroupName": build.resource_name, "VpcId": vpc_id,
            "Description": f"Image Factory builder for {build.spec.name}, build {build.build_id}: SSH in from the "
                           "provisioner only",
            "TagSpecifications": build.tag_specifications("security-group")}


def ingress_request(group_id: str, cidr: str) -> dict:
    return {"GroupId": group_id, "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": cidr, "Description": "SSH from the provisioner"}]}]}


def revoke_default_egress_request(group_id: str) -> dict:
    """The default allow-all egress rule, replaced by the ports the role needs."""
    return {"GroupId": group_id, "IpPermissions": [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}


def egress_request(build: Build, group_id: str) -> dict | None:
    """The spec's egress ports out to anywhere (DNS over UDP too when it asks for 53); None: no port."""
    ports = sorted(set(build.spec.egress_ports))
    rules = [{"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
             for port in ports]
    if 53 in ports:
        rules.append({"IpProtocol": "udp", "FromPort": 53, "ToPort": 53, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})
    return {"GroupId": group_id, "IpPermissions": rules} if rules else None


def key_parameter_request(build: Build, private_key: str) -> dict:
    return {"Name": private_key_parameter(build), "Type": "SecureString", "Value": private_key,
            "Description": f"Ephemeral SSH key of Image Factory build {build.build_id}",
            "Tags": [{"Key": k, "Value": v} for k, v in build.tags().items()]}


def key_pair_request(build: Build, public_key: str) -> dict:
    return {"KeyName": build.resource_name, "PublicKeyMaterial": public_key.encode(),
            "TagSpecifications": build.tag_specifications("key-pair")}


# --- VPC and subnet -----------------------------------------------------------------------------------

def _ensure_vpc(ec2, build: Build) -> str:
    existing = _existing(build, ec2.describe_vpcs, "Vpcs", "VpcId")
    if existing:
        log.info("VPC %s of this build exists already", existing)
        return existing
    vpc_id = ec2.create_vpc(**vpc_request(build))["Vpc"]["VpcId"]
    created("vpc", vpc_id, cidr=build.settings.builder_vpc_cidr)
    checkpoint("after:vpc")
    return vpc_id


def _ensure_subnet(ec2, build: Build, vpc_id: str) -> str:
    existing = _existing(build, ec2.describe_subnets, "Subnets", "SubnetId")
    if existing:
        log.info("subnet %s of this build exists already", existing)
        return existing
    vpc = ec2.describe_vpcs(VpcIds=[vpc_id])["Vpcs"][0]
    taken = [ipaddress.ip_network(s["CidrBlock"])
             for s in ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["Subnets"]]
    network = ipaddress.ip_network(vpc["CidrBlock"])
    for candidate in subnet_candidates(build, network, taken):
        try:
            subnet_id = ec2.create_subnet(**subnet_request(build, vpc_id, candidate))["Subnet"]["SubnetId"]
        except Exception as exc:
            if error_code(exc) == "InvalidSubnet.Conflict":
                continue
            raise
        created("subnet", subnet_id, vpc=vpc_id, cidr=candidate)
        checkpoint("after:subnet")
        return subnet_id
    raise InfrastructureError(f"VPC {vpc_id} ({network}) has no free /28 left for a builder subnet")


def _vpc_of_subnet(ec2, subnet_id: str) -> str:
    try:
        return ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"][0]["VpcId"]
    except Exception as exc:
        if error_code(exc) == "InvalidSubnetID.NotFound":
            raise InfrastructureError(f"subnet {subnet_id} (image.subnet) does not exist") from None
        raise


def _default_vpc(ec2, build: Build) -> str:
    vpc_id = _find(ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"], "VpcId")
    if not vpc_id:
        raise InfrastructureError(f"region {build.region} has no default VPC: set image.subnet to a subnet id "
                                  "or to ${IMAGE_BUILDER_SUBNET_ID}")
    return vpc_id


# --- security group -----------------------------------------------------------------------------------

def _ensure_security_group(ec2, build: Build, vpc_id: str, cidr: str) -> str:
    existing = _existing(build, ec2.describe_security_groups, "SecurityGroups", "GroupId")
    if existing:
        log.info("security group %s of this build exists already", existing)
        return existing
    group_id = ec2.create_security_group(**security_group_request(build, vpc_id))["GroupId"]
    created("security-group", group_id, vpc=vpc_id, ssh_from=cidr)
    checkpoint("after:security-group")
    with rules_as_asked():
        ec2.authorize_security_group_ingress(**ingress_request(group_id, cidr))
    with rules_as_asked():
        ec2.revoke_security_group_egress(**revoke_default_egress_request(group_id))
    egress = egress_request(build, group_id)
    if egress:
        with rules_as_asked():
            ec2.authorize_security_group_egress(**egress)
    return group_id


@contextlib.contextmanager
def rules_as_asked():
    """Security group rules authorized or revoked: rules already as asked count as done (botocore re-sends a call
    whose answer was lost, and the second answer is InvalidPermission.Duplicate or .NotFound)."""
    try:
        yield
    except Exception as exc:
        if error_code(exc) not in ("InvalidPermission.Duplicate", "InvalidPermission.NotFound"):
            raise
        log.info("security group rules as asked already (%s)", error_code(exc))


# --- key pair -----------------------------------------------------------------------------------------

def _new_key() -> tuple[str, str]:
    """A fresh ed25519 key: (private key in OpenSSH format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def _public_of(private: str) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private.encode(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH).decode()


def _stored_private_key(ssm, name: str) -> str | None:
    try:
        return ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except Exception as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise


def _ensure_key_pair(ec2, ssm, build: Build) -> tuple[str, str]:
    parameter = private_key_parameter(build)
    private = None if build.fresh else _stored_private_key(ssm, parameter)
    if private is None:
        private, _ = _new_key()
        ssm.put_parameter(**key_parameter_request(build, private))
        created("ssm-parameter", parameter)
        checkpoint("after:key-parameter")
    else:
        log.info("private key parameter %s of this build exists already", parameter)
    existing = _existing(build, ec2.describe_key_pairs, "KeyPairs", "KeyName")
    if existing:
        log.info("key pair %s of this build exists already", existing)
        return existing, parameter
    request = key_pair_request(build, _public_of(private))
    key_name = request["KeyName"]
    ec2.import_key_pair(**request)
    created("key-pair", key_name)
    checkpoint("after:key-pair")
    return key_name, parameter


def private_key(ssm, build: Build) -> str:
    private = _stored_private_key(ssm, private_key_parameter(build))
    if private is None:
        raise InfrastructureError(f"the private key of build {build.build_id} is gone "
                                  f"({private_key_parameter(build)}); was the build torn down?")
    return private
