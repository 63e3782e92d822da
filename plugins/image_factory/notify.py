"""Notifications: one message to an SNS topic for each event of a spec's builds, sent with the Amazon provider's
own notifier (``SnsNotifier``) through the spec's AWS connection.

The events (a spec's ``notify.events``, default all five):

* ``failure``: a task of a build failed for good (after its retries): the spec, the run, the task, the last
  lines of its log where the worker's log file can be read (else the error), a link to it in the UI;
* ``promotion``: channels moved to a tested image: the image, the channels, the regions;
* ``approval``: a promotion waits for a person: who is asked, a link;
* ``deadline``: a build still runs ``deadline_minutes`` after it was queued (Airflow's deadline alerts, run by
  the scheduler; the message is sent from the triggerer);
* ``revocation``: an image of the spec was revoked (``image-factory revoke`` or the revoke DAG): by whom, why,
  what was revoked and the channels moved back or deleted.

The topic is the spec's ``notify.sns_topic_arn``, else the deployment's ``[image_factory] sns_topic_arn``; with
neither, nothing is sent. A message that cannot be sent is logged and never fails the build. The first step of
every build checks that the topic exists and may be read (``sns:GetTopicAttributes``) before anything is made.

Messages are composed here and sent as they are: never rendered as templates (they quote a task's error, which
may quote a role's output).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

from airflow.sdk.bases.notifier import BaseNotifier

from image_factory.errors import PermanentError
from image_factory.spec import NOTIFY_EVENTS, ImageSpec

log = logging.getLogger("image_factory")

#: The log lines a failure message quotes at most, and its size at most (SNS takes 256 KiB; mail readers less).
LOG_LINES = 20
MAX_MESSAGE = 16 * 1024
#: SNS subjects: ASCII, no line breaks, under 100 characters.
MAX_SUBJECT = 99


class NotifyError(PermanentError):
    pass


def topic_for(spec: ImageSpec, event: str, deployment_topic: str = "") -> str | None:
    """The topic ``event`` of ``spec``'s builds goes to, or None: the spec's topic, else the deployment's (a spec
    without a notify section gets all five events there)."""
    notify = spec.notify
    if notify is not None and event not in notify.events:
        return None
    return (notify.sns_topic_arn if notify is not None else None) or deployment_topic or None


def topics_of(spec: ImageSpec, deployment_topic: str = "") -> set[str]:
    """Every topic the spec's builds may send to."""
    return {topic for event in NOTIFY_EVENTS if (topic := topic_for(spec, event, deployment_topic))}


def region_of(topic: str) -> str:
    return topic.split(":")[3]


def ui_url(path: str) -> str:
    """A page of the Airflow UI: ``[api] base_url`` and ``path``."""
    from airflow.sdk import conf

    base = conf.get("api", "base_url", fallback="") or "http://localhost:8080/"
    return base.rstrip("/") + path


def run_url(dag_id: str, run_id: str) -> str:
    return ui_url(f"/dags/{quote(dag_id, safe='')}/runs/{quote(str(run_id), safe='')}")


def task_url(dag_id: str, run_id: str, task_id: str, try_number: int | None = None) -> str:
    return run_url(dag_id, run_id) + f"/tasks/{quote(task_id, safe='')}" + (
        f"?try_number={try_number}" if try_number else "")


def _subject(text: str) -> str:
    ascii_only = "".join(c if 32 <= ord(c) < 127 else "?" for c in text)
    return ascii_only if len(ascii_only) <= MAX_SUBJECT else ascii_only[:MAX_SUBJECT - 3] + "..."


def _cut(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[:limit - 40] + f"\n... ({len(text) - limit + 40} characters cut)"


def publish(topic: str, aws_conn_id: str, subject: str, message: str) -> bool:
    """One message to ``topic`` with the provider's SnsNotifier (its hook's boto3 retries); a message that cannot
    be sent is logged, never raised. True when it was sent."""
    from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

    try:
        notifier = SnsNotifier(aws_conn_id=aws_conn_id, target_arn=topic, subject=_subject(subject),
                               message=_cut(message), region_name=region_of(topic))
        notifier.notify({})  # (not notifier(context): that would render the message as a template)
    except Exception as exc:
        log.warning("notification not sent to %s (%s: %s); the build goes on", topic, type(exc).__name__, exc)
        return False
    log.info("notification sent to %s: %s", topic, _subject(subject))
    return True


def check_topic(sns, topic: str) -> None:
    """The topic exists and the build's credentials may read it (``sns:GetTopicAttributes``); else NotifyError
    naming the topic and what to grant."""
    from botocore.exceptions import ClientError

    try:
        sns.get_topic_attributes(TopicArn=topic)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NotFound", "NotFoundException"):
            raise NotifyError(f"notify: SNS topic {topic} does not exist (GetTopicAttributes: {code}); create it, "
                              "or fix notify.sns_topic_arn in the spec ([image_factory] sns_topic_arn for the "
                              "deployment's topic). Nothing was built") from None
        if code in ("AuthorizationError", "AccessDenied", "AccessDeniedException", "InvalidClientTokenId"):
            raise NotifyError(f"notify: SNS topic {topic} may not be used by the build's credentials ({code}); "
                              f"grant sns:GetTopicAttributes and sns:Publish on {topic} (the role's policy, and "
                              "the topic's own access policy). Nothing was built") from None
        raise


# --- what each event says ------------------------------------------------------------------------------------

def _log_tail(ti) -> list[str] | None:
    """The last lines of the task's log file on this worker, as Airflow's file task handler writes it
    (``[logging] base_log_folder`` / ``log_filename_template``); None when there is none to read."""
    try:
        import jinja2
        from airflow.sdk import conf

        folder = conf.get("logging", "base_log_folder", fallback="")
        template = conf.get("logging", "log_filename_template", fallback="")
        if not folder or not template:
            return None
        name = jinja2.Template(template).render(ti=ti, try_number=ti.try_number)
        path = Path(folder) / name
        if not path.is_file():
            return None
        with path.open("rb") as file:
            start = max(0, path.stat().st_size - 64 * 1024)
            file.seek(start)
            raw = file.read().decode("utf-8", "replace").splitlines()[1 if start else 0:]
    except Exception as exc:  # (any reason: the message quotes the error instead)
        log.info("the task's log could not be read for the message (%s); it quotes the error", exc)
        return None
    lines = []
    for line in raw:
        try:  # the supervisor writes JSON lines: {"timestamp", "level", "event", ...}
            record = json.loads(line)
            text = f"{record.get('level', '')} {record.get('event', '')}".strip() if isinstance(record, dict) else line
        except ValueError:
            text = line
        lines.extend(text.splitlines())
    return lines[-LOG_LINES:] or None


def failure_message(spec_name: str, context) -> tuple[str, str]:
    ti = context.get("ti") or context.get("task_instance")
    task_id, run_id = getattr(ti, "task_id", "?"), getattr(ti, "run_id", None) or context.get("run_id", "?")
    try_number = getattr(ti, "try_number", None)
    exception = context.get("exception")
    tail = _log_tail(ti) if ti is not None else None
    lines = [f"The build of {spec_name} failed: task {task_id} failed"
             + (f" on try {try_number}" if try_number else "") + ".",
             "", f"spec: {spec_name}", f"run: {run_id}", f"failed task: {task_id}",
             f"link: {task_url(spec_name, run_id, task_id, try_number)}", ""]
    if tail:
        lines += ["The last lines of its log:", *(f"  {line}" for line in tail)]
        if exception is not None:
            lines += ["", f"error: {type(exception).__name__}: {exception}"]
    else:
        lines += ["error:" if exception is not None else "error: (none given)",
                  *(f"  {line}" for line in f"{type(exception).__name__}: {exception}".splitlines()
                    if exception is not None)]
    return f"Image build failed: {spec_name}, task {task_id}", "\n".join(lines) + "\n"


def promotion_message(spec_name: str, run_id: str, extra: dict, approved: bool = False) -> tuple[str, str]:
    channels = ", ".join(extra.get("channels", []))
    regions = extra.get("regions") or [extra.get("region")]
    lines = [f"A new {spec_name} image is promoted" + (" (approved by a person)" if approved else "")
             + f": {channels} now name {extra.get('image_id')}.", "",
             f"spec: {spec_name}", f"image: {extra.get('image_id')} ({extra.get('name')})",
             f"channels: {channels}", f"regions: {', '.join(r for r in regions if r)}"]
    lines += [f"  copy in {region}: {copy}" for region, copy in sorted((extra.get("copies") or {}).items())]
    lines += [f"run: {run_id}", f"link: {run_url(spec_name, run_id)}"]
    return f"Image promoted: {spec_name} to {channels}", "\n".join(lines) + "\n"


def revocation_message(image_id: str, reason: str, by: str, report) -> tuple[str, str]:
    """``report``: revocation.Report (what was revoked, the channels moved back or deleted)."""
    lines = [f"{image_id} is revoked by {by}: {reason}",
             "No new instance can be launched from the revoked images; running ones keep running.", "",
             *report.lines()]
    return f"Image revoked: {image_id}", "\n".join(lines) + "\n"


def notify_revocation(specs: Iterable[ImageSpec], image_id: str, reason: str, by: str, report, aws_conn_id: str,
                      deployment_topic: str = "") -> int:
    """One message to each topic the specs of the revoked images send their ``revocation`` event to (a spec no
    longer in the folder: the deployment's topic); never raises. The number of messages sent."""
    revoked = {entry["spec"] for entry in report.revoked}
    known = {spec.name: spec for spec in specs}
    topics = {topic for name in revoked
              if (topic := topic_for(known[name], "revocation", deployment_topic) if name in known
                  else deployment_topic or None)}
    subject, message = revocation_message(image_id, reason, by, report)
    return sum(publish(topic, aws_conn_id, subject, message) for topic in sorted(topics))


def approval_message(spec_name: str, context) -> tuple[str, str]:
    ti = context.get("ti") or context.get("task_instance")
    task = context.get("task")
    channels = ", ".join(getattr(task, "channels", []) or [])
    assigned = getattr(task, "assigned_users", None) or []
    who = ", ".join(user.get("name") or user.get("id") or "?" for user in assigned) if assigned else (
        "anyone who may act on this DAG's Required Actions")
    registered = {}
    if ti is not None:
        try:
            registered = ti.xcom_pull(task_ids="register_image") or {}
        except Exception:
            registered = {}
    url = task_url(spec_name, ti.run_id, ti.task_id) + "/required_actions" if ti is not None else ui_url(
        "/required_actions")
    timeout = getattr(task, "response_timeout", None)
    lines = [f"A new {spec_name} image waits for a person's approval to move {channels}.", "",
             f"spec: {spec_name}", f"image: {registered.get('image_id', '?')} ({registered.get('name', '?')})",
             f"channels: {channels}", f"asked: {who}", f"run: {getattr(ti, 'run_id', '?')}",
             f"link: {url}"]
    if timeout:
        lines.append(f"no answer within {timeout} is a rejection")
    return f"Approval wanted: {spec_name} to {channels}", "\n".join(lines) + "\n"


def deadline_message(spec_name: str, minutes: int, context: dict | None) -> tuple[str, str]:
    dag_run = (context or {}).get("dag_run") or {}
    run_id = dag_run.get("run_id") or dag_run.get("dag_run_id") or "?"
    lines = [f"A build of {spec_name} is still running {minutes} minutes after it was queued.", "",
             f"spec: {spec_name}", f"run: {run_id}", f"queued at: {dag_run.get('queued_at', '?')}",
             f"state: {dag_run.get('state', '?')}",
             f"link: {run_url(spec_name, run_id)}"]
    return f"Image build late: {spec_name}, {minutes} minutes", "\n".join(lines) + "\n"


class BuildNotifier(BaseNotifier):
    """An Airflow notifier of one event of a spec's builds (a task's ``on_failure_callback``, an approval's
    ``notifiers``): composes the message from the context and sends it with SnsNotifier; never raises, and
    renders nothing as a template."""

    template_fields = ()

    def __init__(self, event: str, spec_name: str, topic: str, aws_conn_id: str):
        super().__init__()
        if event not in ("failure", "approval"):
            raise ValueError(f"BuildNotifier sends failure and approval messages, not {event!r}")
        self.event, self.spec_name, self.topic, self.aws_conn_id = event, spec_name, topic, aws_conn_id

    def notify(self, context) -> None:
        try:
            compose = failure_message if self.event == "failure" else approval_message
            subject, message = compose(self.spec_name, context)
        except Exception as exc:  # (a message that cannot be made is logged, as one that cannot be sent)
            log.warning("%s notification of %s not made (%s: %s)", self.event, self.spec_name,
                        type(exc).__name__, exc)
            return
        publish(self.topic, self.aws_conn_id, subject, message)

    def __call__(self, *args) -> None:
        self.notify(args[0] if len(args) == 1 else {})


def notifier(spec: ImageSpec, event: str, deployment_topic: str = "") -> BuildNotifier | None:
    topic = topic_for(spec, event, deployment_topic)
    return BuildNotifier(event, spec.name, topic, spec.aws_conn_id) if topic else None


async def deadline_missed(spec_name: str, topic: str, aws_conn_id: str, minutes: int, context=None) -> bool:
    """A deadline alert's callback (the triggerer runs it when a build is still running ``minutes`` after it was
    queued): one message; never raises."""
    try:
        subject, message = deadline_message(spec_name, minutes, context)
    except Exception as exc:
        log.warning("deadline notification of %s not made (%s: %s)", spec_name, type(exc).__name__, exc)
        return False
    # The hook is synchronous (the provider's async one needs aiobotocore): in a thread, not in the event loop.
    return await asyncio.to_thread(publish, topic, aws_conn_id, subject, message)


def deadline_alert(spec: ImageSpec, deployment_topic: str = ""):
    """The DAG's deadline alert, or None: ``deadline_minutes`` after a run was queued, the ``deadline`` message."""
    topic = topic_for(spec, "deadline", deployment_topic)
    if spec.deadline_minutes is None or topic is None:
        return None
    from datetime import timedelta

    from airflow.sdk.definitions.callback import AsyncCallback
    from airflow.sdk.definitions.deadline import DeadlineAlert, DeadlineReference

    callback = AsyncCallback(deadline_missed, kwargs={"spec_name": spec.name, "topic": topic,
                                                      "aws_conn_id": spec.aws_conn_id,
                                                      "minutes": spec.deadline_minutes})
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                         interval=timedelta(minutes=spec.deadline_minutes), callback=callback,
                         name=f"{spec.name}-deadline")
