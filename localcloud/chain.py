"""The front's chain of hooks (localcloud/proxy.py): what an AWS API call is, what answers it, and the order.

A :class:`Call` is one AWS API call the front received; an :class:`Answer` what the client hears. A :class:`Hook`
sees each call twice: ``before`` it goes on (returning an Answer answers the call there: the later hooks and the
cloud behind never see it) and ``after`` the answer came back (returning it, rewritten or not). :class:`Chain`
runs the ``before`` of each hook in order until one answers, then the ``after`` of the hooks it passed, in
reverse order, so the first hook sees the call first and the answer last. Each hook owns its state and lock.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from urllib.parse import parse_qsl, unquote_plus, urlsplit
from xml.sax.saxutils import escape

CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]*/\d{8}/([^/,\s]+)/([^/,\s]+)/aws4_request")


def call_name(method: str, target: str, headers, body: bytes) -> str | None:
    """``service:Action`` of an AWS API call, or None for a request without an AWS signature (see :meth:`Call.of`)."""
    call = Call.of(method, target, headers, body)
    return call.name if call is not None else None


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


@functools.cache
def _param_pattern(name: str) -> re.Pattern:
    return re.compile(rb"(?:^|&)" + re.escape(name.encode()) + rb"=([^&]*)")


def param(data: bytes, name: str) -> str:
    """One parameter of a query string or form body, without parsing the rest."""
    match = _param_pattern(name).search(data)
    return unquote_plus(match.group(1).decode("utf-8", errors="replace")) if match else ""


def parse_params(path: str, protocol: str, body: bytes) -> dict:
    """A call's parameters: a query-protocol call's (``protocol`` "form", or "" for one with its parameters in the
    query string only) flat query and form parameters (``{"TagSpecification.1.Tag.1.Key": "Name", ...}``, without
    ``Action`` and ``Version``, which its name and the API tell, nor a presigned request's ``X-Amz-*``), or a
    JSON-protocol call's (``protocol`` "json") JSON body."""
    if protocol == "json":
        try:
            return json.loads(body or b"{}")
        except ValueError:
            return {}
    pairs = parse_qsl(urlsplit(path).query, keep_blank_values=True)
    if protocol == "form":
        pairs += parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {key: value for key, value in pairs if key not in ("Action", "Version") and not key.startswith("X-Amz-")}


class Call:
    """One AWS API call: ``name`` is ``service:Action``, ``body`` the body as received, ``sent`` the body that goes
    on to the cloud behind (the same, unless a hook rewrote it with :meth:`rewrite`); ``protocol`` "json" (a JSON
    protocol's, SSM's), "form" (the query protocol's, EC2's, in a form body), or "" (any other)."""

    __slots__ = ("_params", "action", "body", "headers", "method", "name", "path", "protocol", "region", "sent",
                 "service")

    def __init__(self, method: str, path: str, headers, body: bytes, name: str, region: str = "",
                 protocol: str = "form"):
        self.method, self.path, self.headers, self.body, self.sent = method, path, headers, body, body
        self.name, self.region, self.protocol = name, region, protocol
        self.service, _, self.action = name.partition(":")
        self._params: dict | None = None

    @classmethod
    def of(cls, method: str, path: str, headers, body: bytes) -> Call | None:
        """The call a request makes, or None for a request without an AWS signature (moto's own /moto-api/).

        The service is the signing name in the SigV4 credential scope (``Credential=AKID/20240101/eu-west-1/ec2/
        aws4_request``), the region the scope's; the action is the query protocol's ``Action`` parameter (EC2),
        the JSON protocol's ``X-Amz-Target`` (``AmazonSSM.GetParameter``), or S3's REST call by method and path
        (:func:`s3_operation`: ``s3:PutObject``, ``s3:HeadBucket``).
        """
        scope = CREDENTIAL_SCOPE.search(headers.get("Authorization", ""))
        region = scope.group(1) if scope else ""
        if scope is None:  # a presigned request carries its credential in the query string
            query = urlsplit(path).query.encode()
            scope = CREDENTIAL_SCOPE.search("Credential=" + param(query, "X-Amz-Credential"))
            if scope is None:
                return None
        amz_target = headers.get("X-Amz-Target", "")
        if scope.group(2) == "s3":  # S3's REST protocol: no Action
            action, protocol = s3_operation(method, path, headers), ""
        elif amz_target:
            action, protocol = amz_target.rpartition(".")[2], "json"
        else:
            form = "x-www-form-urlencoded" in headers.get("Content-Type", "")
            action, protocol = param(urlsplit(path).query.encode(), "Action"), "form" if form else ""
            if not action and form:
                action = param(body, "Action")
        return cls(method, path, headers, body, f"{scope.group(2)}:{action or method.upper()}", region, protocol)

    def param(self, name: str) -> str:
        """One parameter of a query-protocol call (EC2's): ``call.param("InstanceType")``."""
        return param(self.body, name)

    @property
    def params(self) -> dict:
        """The call's parameters (:func:`parse_params`), parsed once."""
        if self._params is None:
            self._params = parse_params(self.path, self.protocol, self.body)
        return self._params

    def rewrite(self, body: bytes) -> None:
        """Send ``body`` on instead of the call's own (``body`` and ``params`` stay those received)."""
        self.sent = body


class Answer:
    """What the client hears: an answer of the cloud behind (``from_cloud``) or of a hook."""

    __slots__ = ("body", "from_cloud", "headers", "reason", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None,
                 from_cloud: bool = False):
        self.status, self.headers, self.body, self.reason, self.from_cloud = status, headers, body, reason, from_cloud

    def header(self, name: str) -> str:
        lower = name.lower()
        return next((value for key, value in self.headers if key.lower() == lower), "")


class Hook:
    """One concern of the front. ``settings``: the config keys it owns (``POST /_localcloud/config``)."""

    settings: frozenset[str] = frozenset()

    def before(self, call: Call) -> Answer | None:
        """Answer the call here, or None to let it go on (possibly rewritten)."""
        return None

    def after(self, call: Call, answer: Answer) -> Answer:
        """The answer as the client is to hear it."""
        return answer

    def configure(self, settings: dict) -> Callable[[], None]:
        """Check ``settings`` (only this hook's keys, maybe none) and return what applies them; raises
        ValueError for a bad value, before anything is applied."""
        return lambda: None

    def config(self) -> dict:
        """The hook's current settings, as ``GET /_localcloud/config`` shows them."""
        return {}

    def stats(self) -> dict:
        """The hook's part of ``GET /_localcloud/stats``."""
        return {}

    def reset(self) -> None:
        """``POST /_localcloud/reset``: forget what was counted."""

    def control(self, method: str, name: str, body: bytes) -> tuple[int, object] | None:
        """An endpoint ``/_localcloud/<name>`` of the hook's own: (HTTP status, JSON document), or None."""
        return None


class Chain:
    def __init__(self, hooks: list[Hook], log: Callable[..., None] = lambda *args: None):
        self.hooks = hooks
        self.log = log
        self.settings = frozenset().union(*(hook.settings for hook in hooks))

    def answer(self, call: Call, forward: Callable[[Call], Answer]) -> Answer:
        """Run the call through the hooks; ``forward`` sends it to the cloud behind when no hook answered."""
        passed = 0
        answer = None
        for hook in self.hooks:
            answer = hook.before(call)
            if answer is not None:
                break
            passed += 1
        if answer is None:
            answer = forward(call)
        for hook in reversed(self.hooks[:passed]):
            try:
                answer = hook.after(call, answer)
            except Exception as exc:  # a fix that failed leaves the answer as it was, and says so
                self.log("%s: %s failed: %r", call.name, type(hook).__name__, exc)
        return answer

    def configure(self, settings: dict) -> None:
        """All or nothing: every key checked by its hook before any is applied; ValueError for an unknown key."""
        unknown = set(settings) - self.settings
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        applies = [hook.configure({key: value for key, value in settings.items() if key in hook.settings})
                   for hook in self.hooks]
        for apply in applies:
            apply()

    def config(self) -> dict:
        return {key: value for hook in self.hooks for key, value in hook.config().items()}

    def stats(self) -> dict:
        return {key: value for hook in self.hooks for key, value in hook.stats().items()}

    def reset(self) -> None:
        for hook in self.hooks:
            hook.reset()

    def control(self, method: str, name: str, body: bytes) -> tuple[int, object] | None:
        for hook in self.hooks:
            answered = hook.control(method, name, body)
            if answered is not None:
                return answered
        return None


def ec2_error(status: int, code: str, message: str) -> Answer:
    """An error as EC2's query protocol answers it."""
    request_id = str(uuid.uuid4())
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>"
            f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>").encode()
    return Answer(status, [("Content-Type", "text/xml;charset=UTF-8"), ("x-amzn-RequestId", request_id)], body)


def query_error(status: int, code: str, message: str) -> Answer:
    """An error as the query protocol's other services (Auto Scaling, SNS) answer it."""
    request_id = str(uuid.uuid4())
    body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{escape(code)}</Code><Message>{escape(message)}"
            f"</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>").encode()
    return Answer(status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)], body)


def s3_error(status: int, code: str, message: str) -> Answer:
    """An error as S3's REST protocol answers it."""
    request_id = str(uuid.uuid4())
    body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{escape(code)}</Code><Message>{escape(message)}"
            f"</Message><RequestId>{request_id}</RequestId></Error>").encode()
    return Answer(status, [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)], body)


def json_error(status: int, error_type: str, message: str) -> Answer:
    """An error as a JSON-protocol service (SSM) answers it."""
    request_id = str(uuid.uuid4())
    body = json.dumps({"__type": error_type, "message": message}).encode()
    return Answer(status, [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-RequestId", request_id),
                           ("x-amzn-ErrorType", error_type)], body)


RESOURCE_ID = re.compile(rb"<(instanceId|imageId)>((?:i|ami)-[0-9a-zA-Z]+)</\1>")


def made_id(answer: Answer) -> str | None:
    """The instance or image id an EC2 answer (RunInstances', CreateImage's, CopyImage's) names first."""
    found = RESOURCE_ID.search(answer.body)
    return found.group(2).decode() if found else None


def parse_xml(body: bytes) -> tuple[ET.Element, str] | None:
    """An EC2 answer's XML root and namespace (``{http://ec2...}``), or None when it is not XML."""
    try:
        root = ET.fromstring(body)  # noqa: S314 moto's own answer, on loopback
    except ET.ParseError:
        return None
    return root, root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""


def parse_xml_naming(body: bytes, resource_ids) -> tuple[ET.Element, str] | None:
    """``parse_xml`` of an answer that names one of ``resource_ids``; None (unparsed: parsing costs) otherwise."""
    if not resource_ids or not any(resource_id.encode() in body for resource_id in resource_ids):
        return None
    return parse_xml(body)


def xml_bytes(root: ET.Element, namespace: str) -> bytes:
    if namespace:
        ET.register_namespace("", namespace[1:-1])
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)
