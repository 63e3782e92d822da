"""Auto Scaling instance refreshes, which moto does not emulate: StartInstanceRefresh, DescribeInstanceRefreshes
and CancelInstanceRefresh, answered by a hook of the front's chain (localcloud/chain.py) in the query protocol's
XML, as AWS does.

A refresh of a group that exists in moto (DescribeAutoScalingGroups, asked of moto) moves from ``Pending`` to
``InProgress`` to ``Successful`` over ``instance_refresh_seconds`` (the front's config; 3 s by default): a fifth
of it pending, the rest in progress, its PercentageComplete growing. As on AWS, a group has one refresh under
way at most (another start is refused: ``InstanceRefreshInProgress``), and a cancelled one ends ``Cancelled``.
The group's instances are records in moto whose image cannot be changed: they are left as they are.

Fault injection: ``{"fail_instance_refreshes": ["web-asg"]}`` ends those groups' refreshes ``Failed`` (with a
StatusReason saying why) instead of ``Successful``; ``[]`` turns it off.

Standard library only. A hook: ``before`` answers those three calls (the others go on to moto); ``configure``
takes the settings of :data:`CONFIG_KEYS`; ``reset`` forgets every refresh.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from urllib.parse import urlencode
from xml.sax.saxutils import escape

from localcloud.chain import Answer, Call, Hook

NAMESPACE = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
CALLS = ("autoscaling:StartInstanceRefresh", "autoscaling:DescribeInstanceRefreshes",
         "autoscaling:CancelInstanceRefresh")
#: The settings of the front's config that are this emulation's.
CONFIG_KEYS = frozenset({"fail_instance_refreshes", "instance_refresh_seconds"})
#: A refresh is pending for this share of its time, then in progress.
PENDING_SHARE = 0.2
ACTIVE = ("Pending", "InProgress", "Cancelling")
GROUP_NAME = re.compile(r"[^\x00-\x1f]{1,255}")


class InstanceRefreshes(Hook):
    settings = CONFIG_KEYS

    def __init__(self, upstream_host: str, upstream_port: int, seconds: float = 3.0):
        self.upstream = (upstream_host, upstream_port)
        self.lock = threading.Lock()
        self.seconds = seconds
        self.failing: list[str] = []
        #: {(region, group): [refresh, newest first]}; a refresh: its fields and when it started.
        self.refreshes: dict[tuple[str, str], list[dict]] = {}

    # --- the hook ------------------------------------------------------------------------------------

    def before(self, call: Call) -> Answer | None:
        if call.name not in CALLS:
            return None
        region, params = call.region, call.params
        group = params.get("AutoScalingGroupName", "")
        if not GROUP_NAME.fullmatch(group):
            return _error(400, "ValidationError", "1 validation error detected: Value at 'autoScalingGroupName' "
                                                  "failed to satisfy constraint")
        if call.action == "StartInstanceRefresh":
            return self._start(region, group, params)
        if call.action == "DescribeInstanceRefreshes":
            return self._describe(region, group, params)
        return self._cancel(region, group)

    def configure(self, settings: dict):
        failing = settings.get("fail_instance_refreshes", self.failing)
        if not isinstance(failing, list) or not all(isinstance(g, str) and GROUP_NAME.fullmatch(g) for g in failing):
            raise ValueError(f"fail_instance_refreshes must be a list of Auto Scaling group names, not {failing!r}")
        seconds = float(settings.get("instance_refresh_seconds", self.seconds))
        if not 0 <= seconds <= 3600:
            raise ValueError(f"instance_refresh_seconds must be between 0 and 3600, not {seconds}")

        def apply() -> None:
            with self.lock:
                self.failing, self.seconds = list(failing), seconds
        return apply

    def config(self) -> dict:
        with self.lock:
            return {"fail_instance_refreshes": list(self.failing)} if self.failing else {}

    def reset(self) -> None:
        with self.lock:
            self.refreshes.clear()

    # --- the calls -----------------------------------------------------------------------------------

    def _start(self, region: str, group: str, params: dict[str, str]) -> Answer:
        if not self._group_exists(region, group):
            return _error(400, "ValidationError", f"AutoScalingGroup name not found - {group}")
        with self.lock:
            known = self.refreshes.setdefault((region, group), [])
            if any(self._status(refresh)[0] in ACTIVE for refresh in known):
                return _error(400, "InstanceRefreshInProgress", "An Instance Refresh is already in progress and "
                                                                "blocks the execution of this Instance Refresh.")
            refresh = {"id": str(uuid.uuid4()), "group": group, "started": time.time(), "seconds": self.seconds,
                       "fails": group in self.failing, "cancelled": None,
                       "min_healthy": params.get("Preferences.MinHealthyPercentage", "90")}
            known.insert(0, refresh)
        return _ok("StartInstanceRefresh", f"<InstanceRefreshId>{refresh['id']}</InstanceRefreshId>")

    def _describe(self, region: str, group: str, params: dict[str, str]) -> Answer:
        wanted = {value for key, value in params.items() if key.startswith("InstanceRefreshIds.member.")}
        limit = int(params.get("MaxRecords") or 50)
        with self.lock:
            shown = [refresh for refresh in self.refreshes.get((region, group), [])
                     if not wanted or refresh["id"] in wanted][:limit]
            members = "".join(self._member(refresh) for refresh in shown)
        return _ok("DescribeInstanceRefreshes", f"<InstanceRefreshes>{members}</InstanceRefreshes>")

    def _cancel(self, region: str, group: str) -> Answer:
        with self.lock:
            active = [refresh for refresh in self.refreshes.get((region, group), [])
                      if self._status(refresh)[0] in ACTIVE]
            if not active:
                return _error(400, "ActiveInstanceRefreshNotFound", "No in progress or pending Instance Refresh "
                                                                    f"found for Auto Scaling group {group}")
            active[0]["cancelled"] = time.time()
        return _ok("CancelInstanceRefresh", f"<InstanceRefreshId>{active[0]['id']}</InstanceRefreshId>")

    # --- state ---------------------------------------------------------------------------------------

    @staticmethod
    def _status(refresh: dict, now: float | None = None) -> tuple[str, int, float | None]:
        """(status, percentage complete, when it ended) of ``refresh`` at ``now``."""
        now = time.time() if now is None else now
        if refresh["cancelled"] is not None:
            return "Cancelled", 0, refresh["cancelled"]
        elapsed, seconds = now - refresh["started"], refresh["seconds"]
        if elapsed >= seconds:
            return ("Failed", 0, refresh["started"] + seconds) if refresh["fails"] else \
                ("Successful", 100, refresh["started"] + seconds)
        if elapsed < PENDING_SHARE * seconds:
            return "Pending", 0, None
        return "InProgress", int(100 * elapsed / seconds), None

    def _member(self, refresh: dict) -> str:
        status, percentage, ended = self._status(refresh)
        reason = {"Failed": "The local cloud's config fails this group's instance refreshes "
                            "(fail_instance_refreshes).",
                  "Cancelled": "The instance refresh was cancelled."}.get(status)
        return ("<member>"
                f"<InstanceRefreshId>{refresh['id']}</InstanceRefreshId>"
                f"<AutoScalingGroupName>{escape(refresh['group'])}</AutoScalingGroupName>"
                f"<Status>{status}</Status>"
                + (f"<StatusReason>{escape(reason)}</StatusReason>" if reason else "")
                + f"<StartTime>{_timestamp(refresh['started'])}</StartTime>"
                + (f"<EndTime>{_timestamp(ended)}</EndTime>" if ended else "")
                + f"<PercentageComplete>{percentage}</PercentageComplete>"
                f"<InstancesToUpdate>0</InstancesToUpdate>"
                f"<Preferences><MinHealthyPercentage>{escape(refresh['min_healthy'])}</MinHealthyPercentage>"
                "</Preferences></member>")

    def _group_exists(self, region: str, group: str) -> bool:
        """Asked of moto (DescribeAutoScalingGroups in ``region``)."""
        body = urlencode({"Action": "DescribeAutoScalingGroups", "Version": "2011-01-01",
                          "AutoScalingGroupNames.member.1": group})
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            # moto reads the region (and the account: the default one) from the credential scope; it checks no
            # signature.
            connection.request("POST", "/", body, {
                "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
                "Authorization": f"AWS4-HMAC-SHA256 Credential=localcloud/20260101/{region}/autoscaling/"
                                 "aws4_request, SignedHeaders=host, Signature=0"})
            answer = connection.getresponse().read()
        finally:
            connection.close()
        names = ET.fromstring(answer).iter(f"{{{NAMESPACE}}}AutoScalingGroupName")  # noqa: S314 moto's own answer, on loopback
        return any(name.text == group for name in names)


def _timestamp(moment: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"


def _ok(action: str, result: str) -> Answer:
    body = (f'<{action}Response xmlns="{NAMESPACE}"><{action}Result>{result}</{action}Result>'
            f"<ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata></{action}Response>")
    return Answer(200, [("Content-Type", "text/xml")], body.encode())


def _error(status: int, code: str, message: str) -> Answer:
    body = (f'<ErrorResponse xmlns="{NAMESPACE}"><Error><Type>Sender</Type><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>")
    return Answer(status, [("Content-Type", "text/xml")], body.encode())
