"""The front's own hooks (localcloud/chain.py): what it does to calls besides moto's fixes (localcloud/moto_fixes.py).

Each owns its state, behind its own lock; localcloud/proxy.py puts them in order.
"""

from __future__ import annotations

import random
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter, deque
from urllib.parse import parse_qs

from localcloud.chain import (
    RESOURCE_ID,
    Answer,
    Call,
    Hook,
    ec2_error,
    json_error,
    made_id,
    parse_params,
    parse_xml,
    parse_xml_naming,
    query_error,
    s3_error,
    xml_bytes,
)

MAX_JOURNAL = 100_000  # calls the journal keeps at most; the oldest are forgotten first
REDACTED = "<redacted>"
#: Parameters whose values the journal never shows: the secrets a call can carry (a query-protocol parameter's
#: name is matched by each of its dotted parts: ``LaunchSpecification.UserData``).
SECRET_PARAMS = frozenset({"UserData", "PublicKeyMaterial", "KeyMaterial", "PrivateKey", "Password",
                           "SecretString", "SecretBinary"})
ERROR_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
JSON_ERROR_TYPE = re.compile(rb'"__type"\s*:\s*"(?:[^"#]*#)?([^"]{1,128})"')


class Count(Hook):
    """``calls``: every AWS API call received, the throttled and refused ones included; ``errors``: the error
    answers of the cloud behind by call and code (``{"ec2:DeleteVpc": {"DependencyViolation": 1}}``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.errors: dict[str, Counter[str]] = {}

    def before(self, call: Call) -> None:
        with self.lock:
            self.calls[call.name] += 1

    def after(self, call: Call, answer: Answer) -> Answer:
        if answer.from_cloud and answer.status >= 400:
            code = error_code(answer)
            with self.lock:
                self.errors.setdefault(call.name, Counter())[code] += 1
        return answer

    def stats(self) -> dict:
        with self.lock:
            return {"calls": dict(sorted(self.calls.items())),
                    "errors": {name: dict(sorted(codes.items())) for name, codes in sorted(self.errors.items())}}

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.errors.clear()


def error_code(answer: Answer) -> str:
    """The AWS error code of an error answer: EC2's XML ``<Code>``, or a JSON service's (SSM's) error type."""
    found = ERROR_CODE.search(answer.body) or JSON_ERROR_TYPE.search(answer.body)
    if found:
        return found.group(1).decode("utf-8", errors="replace")
    return answer.header("x-amzn-ErrorType").split(":")[0] or f"HTTP {answer.status}"


class Throttle(Hook):
    """Config ``{"throttle_rate": 0.3, "throttle_seed": 1}``: answer that share of EC2 and SSM calls with the
    throttling error AWS itself answers with (0 turns it off). The decisions come from
    ``random.Random(throttle_seed)``, re-seeded on every config call, so a run is reproducible. Stats
    ``throttled``: the calls so answered."""

    SERVICES = frozenset({"ec2", "ssm"})
    settings = frozenset({"throttle_rate", "throttle_seed"})

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rate, self.seed = 0.0, 0
        self.random = random.Random(self.seed)  # noqa: S311 reproducible fault injection, not crypto
        self.throttled: Counter[str] = Counter()

    def before(self, call: Call) -> Answer | None:
        if self.rate <= 0 or call.service not in self.SERVICES:
            return None
        with self.lock:
            if self.random.random() >= self.rate:
                return None
            self.throttled[call.name] += 1
        if call.service == "ec2":
            return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
        return json_error(400, "ThrottlingException", "Rate exceeded")

    def configure(self, settings: dict):
        rate = float(settings.get("throttle_rate", self.rate))
        if not 0 <= rate <= 1:
            raise ValueError(f"throttle_rate must be between 0 and 1, not {rate}")
        seed = int(settings.get("throttle_seed", self.seed))

        def apply() -> None:
            with self.lock:
                self.rate, self.seed = rate, seed
                self.random = random.Random(seed)  # noqa: S311 reproducible fault injection, not crypto
        return apply

    def config(self) -> dict:
        return {"throttle_rate": self.rate, "throttle_seed": self.seed}

    def stats(self) -> dict:
        with self.lock:
            return {"throttled": dict(sorted(self.throttled.items()))}

    def reset(self) -> None:
        with self.lock:
            self.throttled.clear()


class Deny(Hook):
    """Config ``{"deny": ["ssm:PutParameter@us-west-2"]}``: answer those calls (a ``service:Action``, in one
    region) with the access-denied error AWS gives when a policy forbids the call (an SCP that closes a region,
    say): fault injection, ``[]`` turns it off."""

    settings = frozenset({"deny"})

    def __init__(self) -> None:
        self.deny: frozenset[str] = frozenset()
        self.shown: list[str] = []  # as configured, in order

    def before(self, call: Call) -> Answer | None:
        if not self.deny or f"{call.name}@{call.region}" not in self.deny:
            return None
        message = f"You are not authorized to perform this operation ({call.name}: denied by the local cloud's config)."
        if call.service == "ec2":
            return ec2_error(403, "UnauthorizedOperation", message)
        if call.service == "s3":  # S3's REST protocol
            return s3_error(403, "AccessDenied", message)
        if call.protocol != "json":  # Auto Scaling, SNS: the query protocol's error document
            return query_error(403, "AccessDenied", message)
        return json_error(400, "AccessDeniedException", message)

    def configure(self, settings: dict):
        deny = settings.get("deny", self.shown)
        if not isinstance(deny, list) or not all(isinstance(d, str) and re.fullmatch(
                r"[a-z0-9-]{1,32}:[A-Za-z0-9]{1,64}@[a-z0-9-]{1,32}", d) for d in deny):
            raise ValueError(f"deny must be a list of 'service:Action@region', not {deny!r}")
        ordered = list(deny)

        def apply() -> None:
            self.deny, self.shown = frozenset(ordered), ordered
        return apply

    def config(self) -> dict:
        return {"deny": list(self.shown)} if self.deny else {}


class InsufficientCapacity(Hook):
    """Config ``{"insufficient_capacity": ["t3.small"]}``: answer RunInstances of those instance types with the
    error EC2 gives when a zone has no capacity for them (``InsufficientInstanceCapacity``, HTTP 500): fault
    injection, ``[]`` turns it off."""

    settings = frozenset({"insufficient_capacity"})

    def __init__(self) -> None:
        self.types: list[str] = []

    def before(self, call: Call) -> Answer | None:
        if not self.types or call.name != "ec2:RunInstances":
            return None
        kind = call.param("InstanceType")
        if kind not in self.types:
            return None
        return ec2_error(500, "InsufficientInstanceCapacity", f"We currently do not have sufficient {kind} capacity "
                         "in the Availability Zone you requested (the local cloud's config refuses it).")

    def configure(self, settings: dict):
        types = settings.get("insufficient_capacity", self.types)
        if not isinstance(types, list) or not all(isinstance(t, str) and re.fullmatch(r"[a-z0-9.-]{1,64}", t)
                                                  for t in types):
            raise ValueError(f"insufficient_capacity must be a list of instance types, not {types!r}")

        def apply() -> None:
            self.types = list(types)
        return apply

    def config(self) -> dict:
        return {"insufficient_capacity": list(self.types)} if self.types else {}


#: latency setting -> (the EC2 actions that start the change, the state moto shows at once, the state shown
#: until the setting's seconds have passed). Instance states carry AWS's codes.
LATENCIES = {
    "instance_running": (("RunInstances", "StartInstances"), ("running", 16), ("pending", 0)),
    "instance_stopped": (("StopInstances",), ("stopped", 80), ("stopping", 64)),
    "instance_terminated": (("TerminateInstances",), ("terminated", 48), ("shutting-down", 32)),
    "image_available": (("CreateImage", "CopyImage"), ("available", None), ("pending", None)),
}
LATENCY_STARTS = {action: kind for kind, (actions, _, _) in LATENCIES.items() for action in actions}
LATENCY_DESCRIBES = frozenset({"DescribeInstances", "DescribeInstanceStatus", "DescribeImages"})
MAX_REMEMBERED = 100_000  # state changes remembered at most; the oldest are forgotten first


class Latency(Hook):
    """Config ``{"latency": {"instance_running": 20, "instance_stopped": 5, "image_available": 30,
    "instance_terminated": 5}}`` (seconds; 0, the default, is instant): emulate the time AWS takes to change
    states, which moto does at once. The hook remembers when RunInstances (or StartInstances), StopInstances,
    TerminateInstances and CreateImage (or CopyImage) were answered, and until that many seconds have passed it
    rewrites DescribeInstances, DescribeInstanceStatus and DescribeImages answers: the instance shows ``pending``
    instead of ``running``, ``stopping`` instead of ``stopped``, ``shutting-down`` instead of ``terminated``, the
    image ``pending`` instead of ``available``. As on AWS, stopping a stopped instance (or terminating a
    terminated one, starting a running one) starts no new change. Keys left out keep their setting; the config
    shows ``latency`` once one is set. With machines, an instance also shows ``pending`` until its machine's sshd
    answers and ``stopping`` until it has shut down. Stats ``changes``: for each remembered change, when it
    started and when it shows done (epoch seconds): benchmarks read the time an image became available without
    polling for it."""

    settings = frozenset({"latency"})

    def __init__(self, machines=None) -> None:
        self.machines = machines
        self.lock = threading.Lock()
        self.latency = dict.fromkeys(LATENCIES, 0.0)
        # resource id -> (latency kind, time.monotonic() answered, time.time() answered)
        self.changes: dict[str, tuple[str, float, float]] = {}

    def after(self, call: Call, answer: Answer) -> Answer:
        if call.service != "ec2" or answer.status != 200:
            return answer
        if call.action in LATENCY_STARTS:
            self.remember_change(call.action, answer.body)
        elif call.action in LATENCY_DESCRIBES:
            live = self.machines is not None and call.action != "DescribeImages"
            answer.body = self.delayed(answer.body, self.machines.not_ready() if live else set(),
                                       self.machines.stopping() if live else set(),
                                       self.machines.failures() if live else {})
        return answer

    def configure(self, settings: dict):
        latency = dict(self.latency)
        given = settings.get("latency", {})
        if not isinstance(given, dict) or set(given) - set(LATENCIES):
            raise ValueError(f"latency must be an object with some of {sorted(LATENCIES)}, not {given!r}")
        for kind, seconds in given.items():
            seconds = float(seconds)
            if not 0 <= seconds <= 86400:
                raise ValueError(f"latency {kind} must be between 0 and 86400 seconds, not {seconds}")
            latency[kind] = seconds

        def apply() -> None:
            self.latency = latency
        return apply

    def config(self) -> dict:
        # shown once set, so that the throttling-only view stays as it was
        return {"latency": dict(self.latency)} if any(self.latency.values()) else {}

    def stats(self) -> dict:
        with self.lock:
            return {"changes": {resource_id: {"kind": kind, "started": wall, "done": wall + self.latency[kind]}
                                for resource_id, (kind, _, wall) in self.changes.items()}}

    def remember_change(self, action: str, response: bytes) -> None:
        """Note when the state change that ``action`` starts was answered, for each id it names."""
        kind = LATENCY_STARTS[action]
        tag = b"imageId" if kind.startswith("image") else b"instanceId"
        ids = {m.group(2).decode() for m in RESOURCE_ID.finditer(response) if m.group(1) == tag}
        ids -= _unchanged(response, LATENCIES[kind][1][0])
        now, wall = time.monotonic(), time.time()
        with self.lock:
            for resource_id in ids:
                self.changes.pop(resource_id, None)  # re-inserted last: the dict stays in answer order
                self.changes[resource_id] = (kind, now, wall)
            while len(self.changes) > MAX_REMEMBERED:
                del self.changes[next(iter(self.changes))]

    def delayed(self, body: bytes, booting: set[str] = frozenset(), stopping: set[str] = frozenset(),
                failed: dict[str, str] | None = None) -> bytes:
        """A describe answer with the states whose emulated change time has not yet passed put back; the
        instances in ``booting`` (machines whose sshd does not answer yet) show pending too, those in
        ``stopping`` (machines still shutting down) stopping, those in ``failed`` (machine -> why it did not
        boot) the state reason EC2 gives a launch that failed: Server.InternalError."""
        now = time.monotonic()
        with self.lock:
            pending = {resource_id: kind for resource_id, (kind, at, _) in self.changes.items()
                       if now - at < self.latency[kind]}
        pending.update(dict.fromkeys(booting, "instance_running"))
        pending.update(dict.fromkeys(stopping, "instance_stopped"))
        failed = failed or {}
        parsed = parse_xml_naming(body, [*pending, *failed])
        if parsed is None:
            return body
        root, namespace = parsed
        changed = False
        for item in root.iter():
            resource_id = item.findtext(namespace + "instanceId")
            if resource_id in failed and item.find(namespace + "instanceState") is not None:
                set_state_reason(item, namespace, "Server.InternalError",
                                 f"Server.InternalError: the machine did not boot: {failed[resource_id]}")
                changed = True
            for id_tag, state_tag in (("instanceId", "instanceState"), ("imageId", "imageState")):
                resource_id = item.findtext(namespace + id_tag)
                state = item.find(namespace + state_tag)
                if resource_id not in pending or state is None:
                    continue
                _, (final, _), (shown, code) = LATENCIES[pending[resource_id]]
                if code is None:  # an image: <imageState>available</imageState>
                    if (state.text or "").strip() == final:
                        state.text, changed = shown, True
                elif (state.findtext(namespace + "name") or "").strip() == final:
                    state.find(namespace + "name").text = shown
                    if state.find(namespace + "code") is not None:
                        state.find(namespace + "code").text = str(code)
                    changed = True
        return xml_bytes(root, namespace) if changed else body


def set_state_reason(item: ET.Element, namespace: str, code: str, message: str) -> None:
    """An instance item's <stateReason> (made if moto gave none) set to ``code`` and ``message``."""
    reason = item.find(namespace + "stateReason")
    if reason is None:
        reason = ET.SubElement(item, namespace + "stateReason")
    for tag, text in (("code", code), ("message", message)):
        element = reason.find(namespace + tag)
        if element is None:
            element = ET.SubElement(reason, namespace + tag)
        element.text = text


def _unchanged(response: bytes, final: str) -> set[str]:
    """The instances of a Stop/Start/TerminateInstances answer that were already in ``final`` state.

    As on AWS, stopping a stopped instance (a step that resumes and stops again) starts no new change, so
    its emulated time is not started over.
    """
    if b"<previousState>" not in response:
        return set()
    parsed = parse_xml(response)
    if parsed is None:
        return set()
    root, namespace = parsed
    return {item.findtext(namespace + "instanceId") for item in root.iter()
            if item.findtext(f"{namespace}previousState/{namespace}name") == final}


MACHINE_ACTIONS = frozenset({
    "RunInstances", "StartInstances", "StopInstances", "TerminateInstances", "CreateImage", "CopyImage",
    "DeregisterImage", "DeleteSnapshot", "AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress", "ModifyInstanceAttribute", "ModifySecurityGroupRules"})


class Machines(Hook):
    """Where boots, stops and images meet the machines (localcloud/machines.py; None: instances are moto's records
    only): what an EC2 call moto answered does to them, before the answer is relayed (a stop, a rule change has
    happened when the client hears of it). ``GET /_localcloud/machines`` shows them."""

    def __init__(self, machines=None) -> None:
        self.machines = machines

    def after(self, call: Call, answer: Answer) -> Answer:
        if self.machines is not None and answer.status == 200 and call.service == "ec2" and (
                call.action in MACHINE_ACTIONS):
            self.machine_call(call, answer)
        return answer

    def machine_call(self, call: Call, answer: Answer) -> None:
        machines, action, region = self.machines, call.action, call.region
        params = parse_qs(call.body.decode("utf-8", errors="replace"))
        instance_ids = [values[0] for key, values in sorted(params.items()) if re.fullmatch(r"InstanceId\.\d+", key)]
        if action == "RunInstances":
            machines.ran(region, answer.body)
        elif action == "StartInstances":
            machines.started(region, instance_ids)
        elif action == "StopInstances":
            machines.stopped(instance_ids)
        elif action == "TerminateInstances":
            machines.terminated(instance_ids)
        elif action == "CreateImage":
            made = made_id(answer)
            if made and params.get("InstanceId"):
                machines.image_created(region, params["InstanceId"][0], made)
        elif action == "CopyImage":
            made = made_id(answer)
            if made and params.get("SourceImageId"):
                machines.image_copied(region, params["SourceImageId"][0], made)
        elif action in ("DeregisterImage", "DeleteSnapshot"):
            if params.get("ImageId"):
                machines.image_deregistered(params["ImageId"][0])
            else:
                machines.collect_layers()
        elif action == "ModifyInstanceAttribute" and params.get("InstanceId"):
            machines.instance_groups_changed(region, params["InstanceId"][0])
        else:
            machines.groups_changed(region)

    def control(self, method: str, name: str, body: bytes) -> tuple[int, object] | None:
        if (method, name) != ("GET", "machines"):
            return None
        return 200, self.machines.snapshot() if self.machines is not None else {"images": {}, "machines": {}}


class Journal(Hook):
    """Every AWS API call the front received, in order (throttled and refused ones too): ``GET
    /_localcloud/calls`` is ``[{"call": "ec2:CreateSubnet", "region": "eu-west-1", "params": {...}}, ...]``, the
    params those of :func:`localcloud.chain.parse_params`, with the values of secrets (EC2's ``UserData``, SSM
    PutParameter's ``Value``, ...) shown ``<redacted>``. ``POST /_localcloud/reset`` clears it. A call is kept
    as it came and parsed when the journal is read: nothing but an append on the way of each call."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: deque[tuple[str, str, str, str, bytes]] = deque(maxlen=MAX_JOURNAL)

    def before(self, call: Call) -> None:
        # Only a body its params are read from is kept (not an S3 object's, say: an SBOM is a few hundred KB).
        body = call.body if call.protocol else b""
        with self.lock:
            self.calls.append((call.name, call.region, call.path, call.protocol, body))

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()

    def control(self, method: str, name: str, body: bytes) -> tuple[int, object] | None:
        if (method, name) != ("GET", "calls"):
            return None
        with self.lock:
            calls = list(self.calls)
        return 200, [{"call": call, "region": region, "params": redacted(call, parse_params(path, protocol, body))}
                     for call, region, path, protocol, body in calls]


def redacted(name: str, params: dict) -> dict:
    """A call's params with the values of secrets replaced."""
    if not isinstance(params, dict):
        return params
    secret = SECRET_PARAMS | {"Value"} if name == "ssm:PutParameter" else SECRET_PARAMS
    return {key: REDACTED if secret.intersection(key.split(".")) else _redacted_json(value, secret)
            for key, value in params.items()}


def _redacted_json(document, secret: frozenset[str]):
    if isinstance(document, dict):
        return {key: REDACTED if key in secret else _redacted_json(value, secret) for key, value in document.items()}
    if isinstance(document, list):
        return [_redacted_json(item, secret) for item in document]
    return document
