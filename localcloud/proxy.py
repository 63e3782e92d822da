"""The front of the local cloud's AWS endpoint: an HTTP proxy before moto that counts and can throttle API calls.

``python -m localcloud.proxy --listen-port P --upstream-port M`` listens on 127.0.0.1:P and forwards every
request (any method, path, query, headers and body) to moto on 127.0.0.1:M, relaying status, headers and body
(hop-by-hop headers dropped). Standard library only. Its own endpoints, never forwarded:

* ``GET /_localcloud/stats``: ``{"calls": {"ec2:RunInstances": 1, ...}, "throttled": {...}, "config": {...},
  "errors": {...}, "changes": {...}}``. ``calls`` counts every AWS API call received, the throttled ones
  included; ``throttled`` counts those answered with a throttling error instead of being forwarded; ``errors``
  counts the error answers of the cloud behind by call and code (``{"ec2:DeleteVpc": {"DependencyViolation":
  1}}``); ``changes`` tells, for each
  remembered state change (see latency below), when it started and when it shows done (epoch seconds).
* ``POST /_localcloud/reset``: zero the counters.
* ``POST /_localcloud/config`` with ``{"throttle_rate": 0.3, "throttle_seed": 1}``: answer that share of EC2
  and SSM API calls with the throttling error AWS itself answers with (0 turns it off). The decisions come
  from ``random.Random(throttle_seed)``, re-seeded on every config call, so a run is reproducible.
  ``GET /_localcloud/config`` shows the current settings.
* ``POST /_localcloud/config`` with ``{"latency": {"instance_running": 20, "instance_stopped": 5,
  "image_available": 30, "instance_terminated": 5}}`` (seconds; 0, the default, is instant): emulate the time
  AWS takes to change states, which moto does at once. The front remembers when it answered RunInstances (or
  StartInstances), StopInstances, TerminateInstances and CreateImage, and until that many seconds have passed
  it rewrites DescribeInstances, DescribeInstanceStatus and DescribeImages answers: the instance shows
  ``pending`` instead of ``running``, ``stopping`` instead of ``stopped``, ``shutting-down`` instead of
  ``terminated``, the image ``pending`` instead of ``available``. As on AWS, stopping a stopped instance (or
  terminating a terminated one, starting a running one) starts no new change. Keys left out keep their setting; the
  config shows ``latency`` once one is set.

* ``POST /_localcloud/creation-dates`` with ``{"ami-...": "2026-01-01T00:00:00.000Z"}``: DescribeImages shows
  that CreationDate for the image from then on (tests of retention age their images so).

* ``POST /_localcloud/config`` with ``{"fail_copies_to": ["us-west-2"]}``: a copy of an image into one of those
  regions fails, as a copy on AWS can: DescribeImages shows it ``failed`` (fault injection; ``[]`` turns it off).

* ``POST /_localcloud/config`` with ``{"insufficient_capacity": ["t3.small"]}``: answer RunInstances of those
  instance types with the error EC2 gives when a zone has no capacity for them (``InsufficientInstanceCapacity``,
  HTTP 500): fault injection, ``[]`` turns it off. Refused calls are counted, not forwarded.

* ``POST /_localcloud/config`` with ``{"deny": ["ssm:PutParameter@us-west-2"]}``: answer those calls (a
  ``service:Action``, in one region) with the access-denied error AWS gives when a policy forbids the call (an
  SCP that closes a region, say): fault injection, ``[]`` turns it off. Denied calls are counted, not forwarded.

GetConsoleOutput, as on AWS: the instance's own console (its machine's boot output: systemd's, and cloud-init's
block of the host keys it made) instead of moto's one fixed sample; without machines, the sample followed
by the host key of the one sshd that stands in for every instance (``--console-host-key``).

CopyImage, as AWS does and moto does not: its ``TagSpecifications`` tag the copy (moto ignores them; the front
tags the new image in moto before it answers), its ``ClientToken`` makes a repeated call return the first
call's copy, and its name is refused in a region where it is in use, as CreateImage's is.

As AWS does and moto does not, CreateImage is refused (``InvalidAMIName.Duplicate``) for a name already in use
by an image made through the front in the same region and not deregistered since: a step that runs again
learns that its image was made.

Calls are named ``service:Action``: the service is the signing name in the SigV4 credential scope
(``Credential=AKID/20240101/eu-west-1/ec2/aws4_request``); the action is the query protocol's ``Action``
parameter (EC2) or the JSON protocol's ``X-Amz-Target`` (``AmazonSSM.GetParameter``); S3's REST calls by
method and path (:func:`s3_operation`: ``s3:PutObject``, ``s3:HeadBucket``). Requests that carry
no AWS signature (moto's own ``/moto-api/``) are forwarded but neither counted nor throttled.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import re
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, parse_qsl, unquote_plus, urlencode, urlsplit
from xml.sax.saxutils import escape

LOOPBACK = "127.0.0.1"
CONTROL_PREFIX = "/_localcloud/"
THROTTLED_SERVICES = frozenset({"ec2", "ssm"})
#: Connection-level headers (RFC 9110 7.6.1) are the proxy's own business on each side, never relayed.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})
MAX_BODY = 256 * 1024 * 1024
MAX_CHUNKS = 100_000
CLIENT_IDLE_TIMEOUT = 300  # seconds an idle client connection (and its thread) is kept
UPSTREAM_TIMEOUT = 300  # seconds one forwarded request may take
CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]*/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")
QUERY_ACTION = re.compile(rb"(?:^|&)Action=([^&]*)")
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
CONSOLE_OUTPUT = re.compile(rb"<output>([A-Za-z0-9+/=\s]*)</output>")
RESOURCE_ID = re.compile(rb"<(instanceId|imageId)>((?:i|ami)-[0-9a-zA-Z]+)</\1>")
MAX_REMEMBERED = 100_000  # state changes remembered at most; the oldest are forgotten first


def call_name(method: str, target: str, headers, body: bytes) -> str | None:
    """``service:Action`` of an AWS API call, or None for a request without an AWS signature."""
    query = urlsplit(target).query
    scope = CREDENTIAL_SCOPE.search(headers.get("Authorization", ""))
    if scope is None:  # a presigned request carries its credential in the query string
        scope = CREDENTIAL_SCOPE.search("Credential=" + unquote_plus(_param(query.encode(), b"X-Amz-Credential")))
    if scope is None:
        return None
    service = scope.group(2)
    amz_target = headers.get("X-Amz-Target", "")
    if service == "s3":
        return f"s3:{s3_operation(method, target, headers)}"
    if amz_target:
        action = amz_target.rpartition(".")[2]
    else:
        action = _param(query.encode(), b"Action")
        if not action and "x-www-form-urlencoded" in headers.get("Content-Type", ""):
            action = _param(body, b"Action")
    return f"{service}:{action or method.upper()}"


def s3_operation(method: str, target: str, headers) -> str:
    """S3's REST protocol has no Action: the operation of a path-style request, by its method and whether it
    names a bucket or an object (the method itself for what Image Factory does not call)."""
    parts = urlsplit(target)
    is_object = "/" in parts.path.strip("/")
    method = method.upper()
    if is_object:
        if method == "PUT":
            return "CopyObject" if headers.get("x-amz-copy-source") else "PutObject"
        return {"GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, method)
    if method == "GET":
        return "ListObjectsV2" if "list-type=2" in parts.query else "ListObjects"
    return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, method)


def _region(headers) -> str:
    scope = CREDENTIAL_SCOPE.search(headers.get("Authorization", ""))
    return scope.group(1) if scope else ""


def _param(data: bytes, name: bytes) -> str:
    pattern = QUERY_ACTION if name == b"Action" else re.compile(rb"(?:^|&)" + re.escape(name) + rb"=([^&]*)")
    match = pattern.search(data)
    return unquote_plus(match.group(1).decode("utf-8", errors="replace")) if match else ""


def tag_specifications(body: bytes, resource_type: str) -> dict[str, str]:
    """The tags an EC2 query call's ``TagSpecification.N`` of ``resource_type`` gives."""
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


def ec2_error(status: int, code: str, message: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """An error as EC2's query protocol answers it."""
    request_id = str(uuid.uuid4())
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>"
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>").encode()
    return status, [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", request_id)], body


def throttling_error(service: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer AWS gives a throttled call: EC2's query-protocol XML, or SSM's JSON-protocol error."""
    if service == "ec2":
        return ec2_error(503, "RequestLimitExceeded", "Request limit exceeded.")
    request_id = str(uuid.uuid4())
    body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"}).encode()
    return 400, [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", request_id),
                 ("x-amzn-ErrorType", "ThrottlingException")], body


def access_denied(service: str, name: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer AWS gives a call that a policy denies."""
    message = f"You are not authorized to perform this operation ({name}: denied by the local cloud's config)."
    if service == "ec2":
        return ec2_error(403, "UnauthorizedOperation", message)
    if service == "s3":  # S3's REST protocol: XML, 403
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code><Message>{escape(message)}" \
               f"</Message><RequestId>{uuid.uuid4()}</RequestId></Error>"
        return 403, [("Content-Type", "application/xml")], body.encode()
    request_id = str(uuid.uuid4())
    body = json.dumps({"__type": "AccessDeniedException", "message": message}).encode()
    return 400, [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", request_id),
                 ("x-amzn-ErrorType", "AccessDeniedException")], body


ERROR_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
JSON_ERROR_TYPE = re.compile(rb'"__type"\s*:\s*"(?:[^"#]*#)?([^"]{1,128})"')


def error_code(response) -> str:
    """The AWS error code of an error answer: EC2's XML ``<Code>``, or a JSON service's (SSM's) error type."""
    found = ERROR_CODE.search(response.body or b"") or JSON_ERROR_TYPE.search(response.body or b"")
    if found:
        return found.group(1).decode("utf-8", errors="replace")
    header = response.getheader("x-amzn-ErrorType") or ""
    return header.split(":")[0] or f"HTTP {response.status}"


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Stats:
    """Call counters and throttling settings, shared by all request threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.throttled: Counter[str] = Counter()
        # "service:Action" -> error code -> how many of its calls the cloud answered with that error
        self.errors: dict[str, Counter[str]] = {}
        self.throttle_rate = 0.0
        self.throttle_seed = 0
        self.random = random.Random(self.throttle_seed)  # noqa: S311 reproducible fault injection, not crypto
        self.latency = dict.fromkeys(LATENCIES, 0.0)
        # resource id -> (latency kind, time.monotonic() answered, time.time() answered)
        self.changes: dict[str, tuple[str, float, float]] = {}
        # (region, image name) -> image id, of the images made through the front and not deregistered since
        self.image_names: dict[tuple[str, str], str] = {}
        # image id -> the CreationDate DescribeImages shows for it (set by a test: an image made "days ago")
        self.creation_dates: dict[str, str] = {}
        # (region, CopyImage's ClientToken) -> the copy that call made
        self.copy_tokens: dict[tuple[str, str], str] = {}
        # regions whose copies fail (fault injection), and the copies failed so
        self.fail_copies_to: list[str] = []
        self.failed_copies: set[str] = set()
        # "service:Action@region" answered access denied (fault injection)
        self.deny: list[str] = []
        # instance types RunInstances is refused for, as a zone without capacity for them (fault injection)
        self.insufficient_capacity: list[str] = []

    def record(self, name: str) -> bool:
        """Count one call; True when it is to be throttled."""
        service = name.partition(":")[0]
        with self.lock:
            self.calls[name] += 1
            throttle = (service in THROTTLED_SERVICES and self.throttle_rate > 0
                        and self.random.random() < self.throttle_rate)
            if throttle:
                self.throttled[name] += 1
            return throttle

    def record_error(self, name: str, code: str) -> None:
        with self.lock:
            self.errors.setdefault(name, Counter())[code] += 1

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
            self.throttled.clear()
            self.errors.clear()

    def configure(self, settings: dict) -> None:
        unknown = set(settings) - {"throttle_rate", "throttle_seed", "latency", "fail_copies_to", "deny",
                                   "insufficient_capacity"}
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        latency = dict(self.latency)
        given = settings.get("latency", {})
        if not isinstance(given, dict) or set(given) - set(LATENCIES):
            raise ValueError(f"latency must be an object with some of {sorted(LATENCIES)}, not {given!r}")
        for kind, seconds in given.items():
            seconds = float(seconds)
            if not 0 <= seconds <= 86400:
                raise ValueError(f"latency {kind} must be between 0 and 86400 seconds, not {seconds}")
            latency[kind] = seconds
        failing = settings.get("fail_copies_to", self.fail_copies_to)
        if not isinstance(failing, list) or not all(isinstance(r, str) and re.fullmatch(r"[a-z0-9-]{1,32}", r)
                                                    for r in failing):
            raise ValueError(f"fail_copies_to must be a list of regions, not {failing!r}")
        deny = settings.get("deny", self.deny)
        if not isinstance(deny, list) or not all(isinstance(d, str) and re.fullmatch(
                r"[a-z0-9-]{1,32}:[A-Za-z0-9]{1,64}@[a-z0-9-]{1,32}", d) for d in deny):
            raise ValueError(f"deny must be a list of 'service:Action@region', not {deny!r}")
        capacity = settings.get("insufficient_capacity", self.insufficient_capacity)
        if not isinstance(capacity, list) or not all(isinstance(t, str) and re.fullmatch(r"[a-z0-9.-]{1,64}", t)
                                                     for t in capacity):
            raise ValueError(f"insufficient_capacity must be a list of instance types, not {capacity!r}")
        with self.lock:
            self.fail_copies_to = list(failing)
            self.deny = list(deny)
            self.insufficient_capacity = list(capacity)
            self.latency = latency
            rate = float(settings.get("throttle_rate", self.throttle_rate))
            if not 0 <= rate <= 1:
                raise ValueError(f"throttle_rate must be between 0 and 1, not {rate}")
            self.throttle_rate = rate
            self.throttle_seed = int(settings.get("throttle_seed", self.throttle_seed))
            self.random = random.Random(self.throttle_seed)  # noqa: S311 reproducible fault injection, not crypto

    def config(self) -> dict:
        config = {"throttle_rate": self.throttle_rate, "throttle_seed": self.throttle_seed}
        if any(self.latency.values()):  # shown once set, so that the throttling-only view stays as it was
            config["latency"] = dict(self.latency)
        if self.fail_copies_to:
            config["fail_copies_to"] = list(self.fail_copies_to)
        if self.deny:
            config["deny"] = list(self.deny)
        if self.insufficient_capacity:
            config["insufficient_capacity"] = list(self.insufficient_capacity)
        return config

    # --- emulated state-change times ---------------------------------------------------------------

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

    def delayed(self, body: bytes, booting: set[str] = frozenset(), stopping: set[str] = frozenset()) -> bytes:
        """A describe answer with the states whose emulated change time has not yet passed put back; the
        instances in ``booting`` (machines whose sshd does not answer yet) show pending too, those in
        ``stopping`` (machines still shutting down) stopping."""
        now = time.monotonic()
        with self.lock:
            pending = {resource_id: kind for resource_id, (kind, at, _) in self.changes.items()
                       if now - at < self.latency[kind]}
        pending.update(dict.fromkeys(booting, "instance_running"))
        pending.update(dict.fromkeys(stopping, "instance_stopped"))
        if not pending or not any(resource_id.encode() in body for resource_id in pending):
            return body
        try:
            root = ET.fromstring(body)  # noqa: S314 moto's own answer, on loopback
        except ET.ParseError:
            return body
        namespace = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        changed = False
        for item in root.iter():
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
        if not changed:
            return body
        if namespace:
            ET.register_namespace("", namespace[1:-1])
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def shown_failed(self, body: bytes) -> bytes:
        """A DescribeImages answer with the copies failed by ``fail_copies_to`` shown ``failed``."""
        with self.lock:
            failed = set(self.failed_copies)
        if not failed or not any(image_id.encode() in body for image_id in failed):
            return body
        root = ET.fromstring(body)  # noqa: S314 moto's own answer, on loopback
        namespace = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        for item in root.iter():
            state = item.find(namespace + "imageState")
            if state is not None and item.findtext(namespace + "imageId") in failed:
                state.text = "failed"
        if namespace:
            ET.register_namespace("", namespace[1:-1])
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def backdate(self, dates: dict) -> None:
        for image_id, when in dates.items():
            if not re.fullmatch(r"ami-[0-9a-f]+", str(image_id)) or not re.fullmatch(
                    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z", str(when)):
                raise ValueError(f"expected {{image id: time such as 2026-01-01T00:00:00.000Z}}, not {image_id!r}: "
                                 f"{when!r}")
        with self.lock:
            self.creation_dates.update(dates)

    def backdated(self, body: bytes) -> bytes:
        """A DescribeImages answer with the creation dates set by :meth:`backdate`."""
        with self.lock:
            dates = dict(self.creation_dates)
        if not dates or not any(image_id.encode() in body for image_id in dates):
            return body
        try:
            root = ET.fromstring(body)  # noqa: S314 moto's own answer, on loopback
        except ET.ParseError:
            return body
        namespace = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
        for item in root.iter():
            created = item.find(namespace + "creationDate")
            when = dates.get(item.findtext(namespace + "imageId") or "")
            if created is not None and when:
                created.text = when
        if namespace:
            ET.register_namespace("", namespace[1:-1])
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)

    def snapshot(self) -> dict:
        with self.lock:
            return {"calls": dict(sorted(self.calls.items())), "throttled": dict(sorted(self.throttled.items())),
                    "errors": {name: dict(sorted(codes.items())) for name, codes in sorted(self.errors.items())},
                    "config": self.config(), "changes": self.changes_shown()}

    def changes_shown(self) -> dict:
        """When each emulated change started and when it shows done (epoch seconds): benchmarks read the time
        an image became available without polling for it."""
        return {resource_id: {"kind": kind, "started": wall, "done": wall + self.latency[kind]}
                for resource_id, (kind, _, wall) in self.changes.items()}


def _unchanged(response: bytes, final: str) -> set[str]:
    """The instances of a Stop/Start/TerminateInstances answer that were already in ``final`` state.

    As on AWS, stopping a stopped instance (a step that resumes and stops again) starts no new change, so
    its emulated time is not started over.
    """
    if b"<previousState>" not in response:
        return set()
    try:
        root = ET.fromstring(response)  # noqa: S314 moto's own answer, on loopback
    except ET.ParseError:
        return set()
    namespace = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    return {item.findtext(namespace + "instanceId") for item in root.iter()
            if item.findtext(f"{namespace}previousState/{namespace}name") == final}


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive towards the clients
    timeout = CLIENT_IDLE_TIMEOUT
    # Status line, headers and body leave in one write, without Nagle: written apart (http.server's default), a
    # small body waits for the client's delayed ACK, some 40 ms per call.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True
    server: FrontServer

    def setup(self) -> None:
        super().setup()
        self.upstream: http.client.HTTPConnection | None = None  # one keep-alive connection per client connection
        self.upstream_used = False

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()

    def __getattr__(self, name: str):
        # Every method (GET, POST, PUT, DELETE, HEAD, PATCH, OPTIONS, ...) is handled, and handled alike.
        if name.startswith("do_"):
            return self.handle_request
        raise AttributeError(name)

    def handle_request(self) -> None:
        try:
            body = self.read_body()
        except BadRequest as exc:
            self.close_connection = True  # the rest of the stream cannot be trusted to start a request
            self.reply(exc.status, [("Content-Type", "text/plain")], f"{exc}\n".encode())
            return
        path = urlsplit(self.path).path
        if path.startswith(CONTROL_PREFIX):
            self.control(path[len(CONTROL_PREFIX):], body)
            return
        name = call_name(self.command, self.path, self.headers, body)
        if name is not None and self.server.stats.record(name):
            self.reply(*throttling_error(name.partition(":")[0]))
            return
        if name is not None and f"{name}@{_region(self.headers)}" in self.server.stats.deny:
            self.reply(*access_denied(name.partition(":")[0], name))
            return
        if name == "ec2:RunInstances" and _param(body, b"InstanceType") in self.server.stats.insufficient_capacity:
            kind = _param(body, b"InstanceType")
            self.reply(*ec2_error(500, "InsufficientInstanceCapacity",
                                  f"We currently do not have sufficient {kind} capacity in the Availability Zone "
                                  "you requested (the local cloud's config refuses it)."))
            return
        if name == "ec2:CreateImage":
            self.create_image(body)
            return
        if name == "ec2:CopyImage" and self.copy_answered(body):
            return
        response = self.forward(body, name)
        if name == "ec2:DeregisterImage" and response is not None and response.status == 200:
            image_id = _param(body, b"ImageId")
            with self.server.stats.lock:
                names = self.server.stats.image_names
                for key in [key for key, known in names.items() if known == image_id]:
                    del names[key]
                tokens = self.server.stats.copy_tokens
                for key in [key for key, known in tokens.items() if known == image_id]:
                    del tokens[key]

    def create_image(self, body: bytes) -> None:
        """As AWS does (moto does not): refuse a name in use by another image of the account in the region."""
        stats, key = self.server.stats, (_region(self.headers), _param(body, b"Name"))
        with stats.lock:
            existing = stats.image_names.get(key)
        if existing:
            self.reply(*ec2_error(400, "InvalidAMIName.Duplicate",
                                  f"AMI name {key[1]} is already in use by AMI {existing}"))
            return
        # As AWS does (moto 5.2 raises NotImplementedError instead): the snapshots' TagSpecifications tag the
        # image's snapshots, before the client hears of the image.
        snapshot_tags = tag_specifications(body, "snapshot")
        response = self.forward(without_tag_specifications(body, "snapshot") if snapshot_tags else body,
                                "ec2:CreateImage", after=lambda answer: self.tag_snapshots(answer, snapshot_tags))
        made = RESOURCE_ID.search(response.body) if response is not None and response.status == 200 else None
        if made:
            with stats.lock:
                stats.image_names[key] = made.group(2).decode()

    def tag_snapshots(self, answer: bytes, tags: dict[str, str]) -> None:
        """Tags the snapshots of the image that ``answer`` (CreateImage's, CopyImage's) names."""
        made = RESOURCE_ID.search(answer)
        if not made or not tags:
            return
        from localcloud.machines import Moto

        moto, region = Moto(self.server.upstream_port), _region(self.headers)
        images = moto.query(region, "DescribeImages", {"ImageId.1": made.group(2).decode()})
        snapshots = [s.text for s in images.iter("snapshotId") if s.text]
        if snapshots:
            query = {f"ResourceId.{n}": snapshot for n, snapshot in enumerate(snapshots, start=1)}
            for number, (key, value) in enumerate(tags.items(), start=1):
                query.update({f"Tag.{number}.Key": key, f"Tag.{number}.Value": value})
            moto.query(region, "CreateTags", query)

    def copy_answered(self, body: bytes) -> bool:
        """Answers a CopyImage whose ClientToken made a copy already (with that copy), or whose name is in use in
        the region (refused); False: the call goes to moto."""
        stats, region = self.server.stats, _region(self.headers)
        token, name = _param(body, b"ClientToken"), _param(body, b"Name")
        with stats.lock:
            made = stats.copy_tokens.get((region, token)) if token else None
            existing = stats.image_names.get((region, name))
        if made:
            request_id = str(uuid.uuid4())
            self.reply(200, [("Content-Type", "text/xml;charset=UTF-8")], (
                '<?xml version="1.0" encoding="UTF-8"?>\n<CopyImageResponse '
                'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                f"<requestId>{request_id}</requestId><imageId>{made}</imageId></CopyImageResponse>").encode())
            return True
        if existing:
            self.reply(*ec2_error(400, "InvalidAMIName.Duplicate", f"AMI name {name} is already in use by AMI "
                                                                   f"{existing}"))
            return True
        return False

    def copied(self, body: bytes, answer: bytes) -> None:
        """moto made a copy: tag it as its TagSpecifications say (before the client hears of it), remember its
        token and name, and fail it when its region is in ``fail_copies_to``."""
        made = RESOURCE_ID.search(answer)
        if not made:
            return
        copy_id, region, stats = made.group(2).decode(), _region(self.headers), self.server.stats
        tags = tag_specifications(body, "image")
        self.tag_snapshots(answer, tag_specifications(body, "snapshot"))
        if tags:
            from localcloud.machines import Moto

            query = {"ResourceId.1": copy_id}
            for number, (key, value) in enumerate(tags.items(), start=1):
                query.update({f"Tag.{number}.Key": key, f"Tag.{number}.Value": value})
            Moto(self.server.upstream_port).query(region, "CreateTags", query)
        token, name = _param(body, b"ClientToken"), _param(body, b"Name")
        with stats.lock:
            if token:
                stats.copy_tokens[(region, token)] = copy_id
            if name:
                stats.image_names[(region, name)] = copy_id
            if region in stats.fail_copies_to:
                stats.failed_copies.add(copy_id)

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self.read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise BadRequest(400, f"bad Content-Length {length!r}") from None
        if not 0 <= size <= MAX_BODY:
            raise BadRequest(413, f"request body of {size} bytes refused")
        return self.rfile.read(size)

    def read_chunked(self) -> bytes:
        parts, total = [], 0
        for _ in range(MAX_CHUNKS):
            line = self.rfile.readline(1026)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BadRequest(400, f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                for _ in range(1000):  # trailer section, up to the empty line
                    if self.rfile.readline(65537) in (b"\r\n", b"\n", b""):
                        break
                return b"".join(parts)
            total += size
            if total > MAX_BODY:
                raise BadRequest(413, f"request body of over {MAX_BODY} bytes refused")
            parts.append(self.rfile.read(size))
            self.rfile.readline(3)  # the CRLF after each chunk
        raise BadRequest(413, f"request body of over {MAX_CHUNKS} chunks refused")

    # --- forwarding -------------------------------------------------------------------------------

    def forward(self, body: bytes, name: str | None = None, after=None) -> http.client.HTTPResponse | None:
        """Forward to moto and relay its answer; returns that answer (None when moto failed). ``after``: called
        with a successful answer's body before it is relayed."""
        # As HTTP clients do, a reused keep-alive connection that fails before any answer (closed by the upstream
        # while idle) gets one more try on a fresh one. With moto it never comes to that: werkzeug's server sends
        # "Connection: close" on every response, so each forwarded request has a fresh connection.
        for attempt in range(2):
            reused = self.upstream is not None and self.upstream_used
            try:
                response = self.send_upstream(body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.drop_upstream()
                if reused and attempt == 0:
                    continue
                self.upstream_failed(exc)
                return None
            except (OSError, http.client.HTTPException) as exc:
                self.drop_upstream()
                self.upstream_failed(exc)
                return None
            break
        self.upstream_used = True
        if response.will_close:
            self.drop_upstream()
        service, _, action = (name or "").partition(":")
        if name is not None and response.status >= 400:
            self.server.stats.record_error(name, error_code(response))
        if service == "ec2" and response.status == 200:
            machines = self.server.machines
            if action == "CopyImage":
                try:
                    self.copied(body, response.body)
                except Exception as exc:
                    self.log_message("CopyImage: tagging the copy failed: %r", exc)
            if action in LATENCY_STARTS:
                self.server.stats.remember_change(action, response.body)
            elif action in LATENCY_DESCRIBES:
                live = machines is not None and action != "DescribeImages"
                response.body = self.server.stats.delayed(response.body, machines.not_ready() if live else set(),
                                                          machines.stopping() if live else set())
                if action == "DescribeImages":
                    response.body = self.server.stats.shown_failed(self.server.stats.backdated(response.body))
            if action == "GetConsoleOutput":
                response.body = self.console_output(body, response.body)
            if machines is not None and action in MACHINE_ACTIONS:
                try:  # before the answer is relayed: a stop, a rule change has happened when the client hears
                    machine_call(machines, action, _region(self.headers), body, response.body)
                except Exception as exc:
                    self.log_message("machines: %s failed: %r", action, exc)
        if after is not None and response.status == 200:
            try:
                after(response.body)
            except Exception as exc:
                self.log_message("%s: the front's own part failed: %r", name, exc)
        self.relay(response)
        return response

    def console_output(self, body: bytes, answer: bytes) -> bytes:
        """The instance's console instead of moto's fixed sample: a machine's own, or (one sshd for every
        instance) the sample followed by that sshd's host key, as cloud-init prints it."""
        found = CONSOLE_OUTPUT.search(answer)
        if found is None:
            return answer
        machines, shared_key = self.server.machines, self.server.console_host_key
        console = machines.console(_param(body, b"InstanceId")) if machines is not None else None
        if console is None and shared_key:
            console = base64.b64decode(found.group(1)).decode("utf-8", "replace") + (
                f"-----BEGIN SSH HOST KEY KEYS-----\n{shared_key}\n-----END SSH HOST KEY KEYS-----\n")
        if console is None:
            return answer
        output = base64.b64encode(console.encode()).decode()
        return answer[:found.start(1)] + output.encode() + answer[found.end(1):]

    def send_upstream(self, body: bytes) -> http.client.HTTPResponse:
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(LOOPBACK, self.server.upstream_port, timeout=UPSTREAM_TIMEOUT)
            self.upstream_used = False
        connection = self.upstream
        connection.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        hop = _connection_tokens(self.headers)
        for key, value in self.headers.items():
            lower = key.lower()
            if lower in hop or lower in ("content-length", "expect"):  # the body was read here: no 100-continue
                continue
            connection.putheader(key, value)
        if body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        response.body = response.read()  # whole, so the connection is free for the next request
        return response

    def relay(self, response: http.client.HTTPResponse) -> None:
        # The body was read whole (and de-chunked): its length is sent, except where a response has no body,
        # where the upstream's own Content-Length (a HEAD's) is relayed as it is.
        bodiless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        hop = _connection_tokens(response.msg)
        headers = [(k, v) for k, v in response.getheaders()
                   if k.lower() not in hop and (bodiless or k.lower() != "content-length")]
        self.reply(response.status, headers, response.body, reason=response.reason, bodiless=bodiless)

    def drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
        self.upstream = None

    def upstream_failed(self, exc: Exception) -> None:
        self.log_message("moto on port %s failed: %r", self.server.upstream_port, exc)
        self.reply(502, [("Content-Type", "text/plain")], f"local cloud front: moto failed: {exc!r}\n".encode())

    def reply(self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None,
              bodiless: bool = False) -> None:
        # Not send_response: the upstream's own Server and Date headers are relayed, not replaced.
        self.log_request(status)
        self.send_response_only(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        if not bodiless:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not bodiless and self.command != "HEAD":
            self.wfile.write(body)

    # --- the front's own endpoints --------------------------------------------------------------

    def control(self, name: str, body: bytes) -> None:
        stats = self.server.stats
        if name == "stats" and self.command == "GET":
            self.reply_json(200, stats.snapshot())
        elif name == "machines" and self.command == "GET":
            machines = self.server.machines
            self.reply_json(200, machines.snapshot() if machines is not None else {"images": {}, "machines": {}})
        elif name == "reset" and self.command == "POST":
            stats.reset()
            self.reply_json(200, stats.snapshot())
        elif name == "creation-dates" and self.command == "POST":
            try:
                dates = json.loads(body or b"{}")
                if not isinstance(dates, dict):
                    raise ValueError("a JSON object is expected")
                stats.backdate(dates)
            except (ValueError, TypeError) as exc:
                self.reply_json(400, {"error": str(exc)})
                return
            self.reply_json(200, {"creation_dates": len(stats.creation_dates)})
        elif name == "config" and self.command == "GET":
            self.reply_json(200, stats.config())
        elif name == "config" and self.command == "POST":
            try:
                settings = json.loads(body or b"{}")
                if not isinstance(settings, dict):
                    raise ValueError("a JSON object is expected")
                stats.configure(settings)
            except (ValueError, TypeError) as exc:
                self.reply_json(400, {"error": str(exc)})
                return
            self.reply_json(200, stats.config())
        else:
            self.reply_json(404, {"error": f"no {self.command} {CONTROL_PREFIX}{name}; there are GET stats, "
                                           "POST reset, GET/POST config, GET machines, POST creation-dates"})

    def reply_json(self, status: int, document: dict) -> None:
        self.reply(status, [("Content-Type", "application/json")], json.dumps(document).encode() + b"\n")

    def log_request(self, code="-", size="-") -> None:
        if self.server.verbose:
            super().log_request(code, size)


MACHINE_ACTIONS = frozenset({
    "RunInstances", "StartInstances", "StopInstances", "TerminateInstances", "CreateImage", "CopyImage",
    "DeregisterImage",
    "DeleteSnapshot", "AuthorizeSecurityGroupIngress", "AuthorizeSecurityGroupEgress", "RevokeSecurityGroupIngress",
    "RevokeSecurityGroupEgress", "ModifyInstanceAttribute", "ModifySecurityGroupRules"})


def machine_call(machines, action: str, region: str, body: bytes, answer: bytes) -> None:
    """What a call moto answered does to the machines (localcloud/machines.py)."""
    params = parse_qs(body.decode("utf-8", errors="replace"))
    instance_ids = [values[0] for key, values in sorted(params.items()) if re.fullmatch(r"InstanceId\.\d+", key)]
    if action == "RunInstances":
        machines.ran(region, answer)
    elif action == "StartInstances":
        machines.started(region, instance_ids)
    elif action == "StopInstances":
        machines.stopped(instance_ids)
    elif action == "TerminateInstances":
        machines.terminated(instance_ids)
    elif action == "CreateImage":
        made = RESOURCE_ID.search(answer)
        if made and params.get("InstanceId"):
            machines.image_created(region, params["InstanceId"][0], made.group(2).decode())
    elif action == "CopyImage":
        made = RESOURCE_ID.search(answer)
        if made and params.get("SourceImageId"):
            machines.image_copied(region, params["SourceImageId"][0], made.group(2).decode())
    elif action in ("DeregisterImage", "DeleteSnapshot"):
        if params.get("ImageId"):
            machines.image_deregistered(params["ImageId"][0])
        else:
            machines.collect_layers()
    elif action == "ModifyInstanceAttribute" and params.get("InstanceId"):
        machines.instance_groups_changed(region, params["InstanceId"][0])
    else:
        machines.groups_changed(region)


def _connection_tokens(headers) -> set[str]:
    """The hop-by-hop header names: the fixed ones and any that a Connection header names."""
    named = {token.strip().lower() for value in headers.get_all("Connection", []) for token in value.split(",")}
    return HOP_BY_HOP | (named - {""})


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, upstream_port: int, verbose: bool = False, machines=None, host: str = LOOPBACK,
                 stats: Stats | None = None, console_host_key: str = ""):
        super().__init__((host, port), FrontHandler)
        self.upstream_port = upstream_port
        self.stats = stats or Stats()
        self.verbose = verbose
        self.machines = machines  # localcloud.machines.Machines, or None: instances are records only
        #: Without machines: the host key of the one sshd that stands in for every instance, shown on consoles.
        self.console_host_key = console_host_key


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud.proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen-port", type=int, required=True, help="port on 127.0.0.1 the clients use")
    parser.add_argument("--upstream-port", type=int, required=True, help="moto's port on 127.0.0.1")
    parser.add_argument("--state-dir", help="the local cloud's state directory (informational)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--machines", metavar="BASE", help="make a real machine of every instance, booting "
                        "images from this origin root filesystem (localcloud/machines.py; needs root)")
    parser.add_argument("--slot", type=int, default=0, help="the machines' address slot (localcloud/addresses.py)")
    parser.add_argument("--init", default="systemd", choices=("systemd", "sshd"), help="a machine's PID 1: its "
                        "image's systemd, with cloud-init (the default), or sshd alone (the light model)")
    parser.add_argument("--console-host-key", metavar="FILE", help="without machines: the public host key of the "
                        "sshd that stands in for every instance, shown on their consoles (GetConsoleOutput)")
    parser.add_argument("--also-listen", metavar="ADDRESS", help="listen on this address too, same port and "
                        "counters (the bridge's: hosts of the Celery deployment reach the cloud API there)")
    args = parser.parse_args()
    from pathlib import Path

    machines = None
    if args.machines:
        from localcloud.addresses import Plan
        from localcloud.machines import Machines, Moto

        machines = Machines(Path(args.state_dir), Path(args.machines), Moto(args.upstream_port), Plan(args.slot),
                            init=args.init)
    shared_key = ""
    if args.console_host_key:
        shared_key = " ".join(Path(args.console_host_key).read_text().split()[:2])
    server = FrontServer(args.listen_port, args.upstream_port, args.verbose, machines,
                         console_host_key=shared_key)
    if args.also_listen:
        import threading

        second = FrontServer(args.listen_port, args.upstream_port, args.verbose, machines, args.also_listen,
                             server.stats)
        threading.Thread(target=second.serve_forever, name="front-bridge", daemon=True).start()
    print(f"local cloud front on {LOOPBACK}:{server.server_address[1]}"
          f"{f' and {args.also_listen}' if args.also_listen else ''} -> moto on {LOOPBACK}:{args.upstream_port}",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
