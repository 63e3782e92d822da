"""The front's own hooks (localcloud/chain.py): what it does to calls besides moto's fixes (localcloud/moto_fixes.py).

Each owns its state, behind its own lock; localcloud/proxy.py puts them in order.
"""

from __future__ import annotations

import threading
from collections import deque

from localcloud.chain import Call, Hook

MAX_JOURNAL = 100_000  # calls the journal keeps at most; the oldest are forgotten first
REDACTED = "<redacted>"
#: Parameters whose values the journal never keeps: the secrets a call can carry (a query-protocol parameter's
#: name is matched by each of its dotted parts: ``LaunchSpecification.UserData``).
SECRET_PARAMS = frozenset({"UserData", "PublicKeyMaterial", "KeyMaterial", "PrivateKey", "Password",
                           "SecretString", "SecretBinary"})


class Journal(Hook):
    """Every AWS API call the front received, in order (throttled and refused ones too): ``GET
    /_localcloud/calls`` is ``[{"call": "ec2:CreateSubnet", "region": "eu-west-1", "params": {...}}, ...]``, the
    params those of :attr:`Call.params`, with the values of secrets (EC2's ``UserData``, SSM PutParameter's
    ``Value``, ...) shown ``<redacted>``. ``POST /_localcloud/reset`` clears it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: deque[dict] = deque(maxlen=MAX_JOURNAL)

    def before(self, call: Call) -> None:
        entry = {"call": call.name, "region": call.region, "params": redacted(call)}
        with self.lock:
            self.calls.append(entry)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()

    def control(self, method: str, name: str, body: bytes) -> tuple[int, object] | None:
        if (method, name) != ("GET", "calls"):
            return None
        with self.lock:
            return 200, list(self.calls)


def redacted(call: Call) -> dict:
    """The call's params with the values of secrets replaced."""
    params = call.params
    if call.json_protocol:
        secret = SECRET_PARAMS | {"Value"} if call.name == "ssm:PutParameter" else SECRET_PARAMS
        return _redacted_json(params, secret) if isinstance(params, dict) else params
    if not any(part in key for key in params for part in SECRET_PARAMS):  # the common case: nothing to hide
        return params
    return {key: REDACTED if SECRET_PARAMS.intersection(key.split(".")) else value for key, value in params.items()}


def _redacted_json(document, secret: frozenset[str]):
    if isinstance(document, dict):
        return {key: REDACTED if key in secret else _redacted_json(value, secret) for key, value in document.items()}
    if isinstance(document, list):
        return [_redacted_json(item, secret) for item in document]
    return document

