"""The builder instance: launched locked down, reached over SSH, stopped for its image, terminated at teardown."""

from __future__ import annotations

import ipaddress
import logging
import time

from image_factory.build import TAG_BUILD, TAG_INSTANCE, Build, created, deleted
from image_factory.errors import PermanentError
from image_factory.faults import checkpoint
from image_factory.spec import instance_types
from image_factory.waits.blocking import blocking
from image_factory.waits.protocol import Wait, Waiter, WaitOutcome
from image_factory.waits.schedule import Schedule

log = logging.getLogger("image_factory")

LIVE_STATES = ["pending", "running", "stopping", "stopped"]
#: The addresses of an emulated cloud's machines (the local cloud's, RFC 2544's benchmarking range: never
#: routed): when the AWS connection points at an emulator, builds SSH to nothing else (or to ssh_host).
EMULATED_RANGE = ipaddress.ip_network("198.18.0.0/15")


class InstanceError(PermanentError):
    pass


#: RunInstances' answers that say "not this type here, now": the next type of the spec's list is tried.
#: (InsufficientInstanceCapacity comes with HTTP 500, which botocore would retry ten times first: see
#: :func:`_no_capacity_retries`.)
CAPACITY_CODES = frozenset({"InsufficientInstanceCapacity", "Unsupported"})


class CapacityError(InstanceError):
    """Every instance type of the spec's list was refused: permanent, so the build fails with AWS's reasons
    rather than retrying (a zone's capacity seldom comes back within a task's retries; name more types)."""


def _capacity_refusal(exc: Exception) -> str | None:
    """AWS's code when ``exc`` says there is no capacity for (or no offer of) the instance type."""
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code", "")
    return code if code in CAPACITY_CODES else None


def _no_capacity_retries(ec2) -> None:
    """botocore retries a 5xx answer, and EC2 answers InsufficientInstanceCapacity with a 500: on this client,
    RunInstances raises it at once instead (the next instance type is the retry)."""
    from botocore.exceptions import ClientError

    events = getattr(getattr(ec2, "meta", None), "events", None)
    if events is None:  # (not a botocore client)
        return

    def raise_capacity(response=None, operation=None, **_):
        parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else None
        if isinstance(parsed, dict) and parsed.get("Error", {}).get("Code") in CAPACITY_CODES:
            raise ClientError(parsed, operation.name if operation is not None else "RunInstances")

    events.register_first("needs-retry.ec2.RunInstances", raise_capacity, unique_id="image-factory-capacity")


def find(ec2, build_id: str, states=LIVE_STATES, purpose: str | None = None) -> list[dict]:
    """The build's instances in ``states``; ``purpose``: only its builder, or only its test instance."""
    filters = [{"Name": f"tag:{TAG_BUILD}", "Values": [build_id]},
               {"Name": "instance-state-name", "Values": list(states)}]
    if purpose:
        filters.append({"Name": f"tag:{TAG_INSTANCE}", "Values": [purpose]})
    reservations = ec2.describe_instances(Filters=filters)["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def launch_view(image: dict) -> dict:
    """What :func:`launch` needs of the origin image (as origin.describe_origin gives it)."""
    return {k: image[k] for k in ("ImageId", "RootDeviceName", "BlockDeviceMappings") if k in image}


def run_instances_request(build: Build, origin_image: dict, security_group_id: str, key_name: str,
                          instance_type: str, purpose: str = "builder", number: int = 0) -> dict:
    """RunInstances of the build's ``purpose`` instance from ``origin_image`` (:func:`launch_view`), as the
    ``number``-th instance type of the spec's list (each type is tried with a client token of its own)."""
    spec = build.spec
    # Its interface goes with it, said outright: an interface made at launch without it may outlive the
    # instance (moto keeps it), and nothing of a build may outlive its teardown.
    interface = {"DeviceIndex": 0, "Groups": [security_group_id], "AssociatePublicIpAddress": spec.public_ip,
                 "DeleteOnTermination": True}
    if spec.subnet:
        interface["SubnetId"] = spec.subnet
    # A token of its own for each type: a call with the same token and other values is refused by AWS.
    token = f"{build.build_id}-{'launch' if purpose == 'builder' else purpose}" + (f"-{number}" if number else "")
    return {
        "ImageId": origin_image["ImageId"],
        "InstanceType": instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": key_name,
        "NetworkInterfaces": [interface],
        # IMDSv2 only: a role's commands cannot be tricked into leaking credentials over plain HTTP.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 1},
        "BlockDeviceMappings": [_encrypted_root(origin_image)],
        "InstanceInitiatedShutdownBehavior": "terminate",
        "TagSpecifications": build.tag_specifications("instance", "volume", "network-interface",
                                                      tags=build.tags(**{TAG_INSTANCE: purpose})),
        "ClientToken": token,
    }


def launch(ec2, build: Build, origin_image: dict, security_group_id: str, key_name: str,
           wait: Waiter | None = blocking, purpose: str = "builder", size: str | None = None,
           outcome: WaitOutcome | None = None) -> dict:
    """Launch (or find) the build's ``purpose`` instance (``builder``, or ``test``: of the new image) from
    ``origin_image`` (:func:`launch_view`) and wait until it is running (``wait=None``: do not wait, see
    :func:`wait_running`). Returns ``instance_id`` and ``private_ip`` (AWS gives the private address in
    RunInstances' answer already), and its ``state`` as found. ``outcome``: of the wait the task was resumed
    after; when it was this instance's wait until it runs, the instance as described then is not looked up
    again."""
    spec = build.spec
    size = size or spec.instance_size
    known = running(outcome)
    existing = [known] if known else [] if build.fresh else find(ec2, build.build_id, purpose=purpose)
    if existing:
        found = existing[0]
        log.info("instance %s of this build exists already (%s)", found["InstanceId"], found["State"]["Name"])
    else:
        checkpoint("before:launch" if purpose == "builder" else f"before:{purpose}-launch")
        origin_ami = origin_image["ImageId"]

        def run(kind: str, number: int) -> dict:
            return ec2.run_instances(**run_instances_request(build, origin_image, security_group_id, key_name,
                                                             kind, purpose, number))

        _no_capacity_retries(ec2)
        found, refused = _first_offered(size, purpose, run)
        created("instance", found["InstanceId"], type=found.get("InstanceType"), image=origin_ami,
                address=found.get("PrivateIpAddress"), purpose=purpose)
        checkpoint("after:launch" if purpose == "builder" else f"after:{purpose}-launch")
    launched = {"instance_id": found["InstanceId"], "private_ip": found.get("PrivateIpAddress"),
                "state": found.get("State", {}).get("Name", "pending"), "instance_type": found.get("InstanceType")}
    if not existing:
        launched["refused"] = refused  # the types tried first, and why AWS said no
    if wait is not None:
        wait_running(ec2, build, launched["instance_id"], wait)
    return launched


def _first_offered(size, purpose: str, run) -> tuple[dict, list[dict]]:
    """``run`` (RunInstances of a type, the ``number``-th of the list) with each instance type of ``size`` in turn
    until one is not refused for capacity (or as not offered in the zone); returns the instance and the refusals.
    All refused: :class:`CapacityError`."""
    types = instance_types(size)
    refused: list[dict] = []
    for number, kind in enumerate(types):
        try:
            response = run(kind, number)
        except Exception as exc:
            code = _capacity_refusal(exc)
            if code is None:
                raise
            message = (getattr(exc, "response", None) or {}).get("Error", {}).get("Message", "")
            refused.append({"instance_type": kind, "code": code, "message": message})
            following = f"trying {types[number + 1]}" if number + 1 < len(types) else "no type is left to try"
            log.warning("%s instance: %s refused (%s: %s); %s", purpose, kind, code, message, following)
            continue
        found = response["Instances"][0]
        if refused:
            log.info("%s instance runs as %s (%s refused: %s)", purpose, kind,
                     ", ".join(r["instance_type"] for r in refused),
                     "; ".join(f"{r['instance_type']}: {r['code']}" for r in refused))
        return found, refused
    raise CapacityError(
        f"no capacity for the {purpose} instance: AWS refused every instance type of the spec's list ("
        + "; ".join(f"{r['instance_type']}: {r['code']}" + (f" ({r['message']})" if r["message"] else "")
                    for r in refused)
        + "). Add more types to instance_size (a list is tried in order), or try again later")


def wait_running(ec2, build: Build, instance_id: str, wait: Waiter = blocking, result=None) -> WaitOutcome:
    """``result``: the step's, when the wait is its last act (see waits/deferring.py)."""
    return wait(ec2, build.wait_for("instance_running", {"InstanceIds": [instance_id]},
                                    timeout=build.settings.ssh_timeout, result=result))


def running(outcome: WaitOutcome | None) -> dict | None:
    """The instance as the wait until it runs described it running (None: ``outcome`` is not of that wait)."""
    if outcome is None or outcome.state != "instance_running":
        return None
    return outcome.answer["Reservations"][0]["Instances"][0]


def _encrypted_root(image: dict) -> dict:
    """The image's root volume, encrypted and deleted with the instance."""
    root = image.get("RootDeviceName", "/dev/xvda")
    source = next((m.get("Ebs", {}) for m in image.get("BlockDeviceMappings", []) if m.get("DeviceName") == root), {})
    ebs = {k: source[k] for k in ("SnapshotId", "VolumeSize", "VolumeType") if k in source}
    return {"DeviceName": root, "Ebs": {**ebs, "Encrypted": True, "DeleteOnTermination": True}}


def address(ec2, launched: dict, build: Build, emulated: bool = False) -> str:
    """The address builds SSH to: the deployment's ssh_host, else the instance's own address (the private
    one as launch recorded it; the public one, given later, as described now). On an emulated cloud
    (``emulated``), only an address of :data:`EMULATED_RANGE`: never one that could be somebody else's."""
    if build.settings.ssh_host:
        return build.settings.ssh_host
    instance_id = launched["instance_id"]
    host = None if build.spec.public_ip else launched.get("private_ip")
    if not host:
        instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        host = instance.get("PublicIpAddress") if build.spec.public_ip else instance.get("PrivateIpAddress")
    if not host:
        raise InstanceError(f"instance {instance_id} has no {'public' if build.spec.public_ip else 'private'} "
                            "address to reach it by")
    if emulated and ipaddress.ip_address(host) not in EMULATED_RANGE:
        raise InstanceError(
            f"instance {instance_id}'s address {host} is outside {EMULATED_RANGE}, the range of an emulated "
            "cloud's machines: the AWS connection points at an emulator, so the build refuses to connect there "
            "(set [image_factory] ssh_host, AIRFLOW__IMAGE_FACTORY__SSH_HOST, for an emulator whose "
            "instances are reached some other way)")
    return host


def request_stop(ec2, instance_id: str) -> float:
    """Ask for the stop without waiting; returns when AWS took it (epoch seconds): the start of the wait's
    grid, so that no poll comes before the change can be over."""
    ec2.stop_instances(InstanceIds=[instance_id])
    log.info("stopping instance %s", instance_id)
    return time.time()


def terminate(ec2, build_id: str, schedule: Schedule | float, timeout: float = 900, wait: Waiter = blocking,
              found: list[dict] | None = None) -> list[str]:
    """Terminate every instance of the build and wait until they are gone (a rerun only waits); ``found``: the
    build's instances, as described (resources.find's), not looked up again."""
    found = find(ec2, build_id, [*LIVE_STATES, "shutting-down"]) if found is None else found
    live = [i["InstanceId"] for i in found if i["State"]["Name"] in LIVE_STATES]
    if live:
        ec2.terminate_instances(InstanceIds=live)
        for instance_id in live:
            deleted("instance", instance_id)
    going = [i["InstanceId"] for i in found]
    if going:
        wait(ec2, Wait("instance_terminated", {"InstanceIds": going}, Schedule.of(schedule), timeout))
    return live
