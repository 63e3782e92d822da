"""The operator every build task runs as: a plain function (tasks.py) in a PythonOperator that can hand a wait
to the triggerer and then run again to go on, with AWS errors sorted into permanent and transient ones.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import timedelta

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import get_current_context
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from image_factory import links, waiting
from image_factory.errors import PermanentError, permanent_aws_errors
from image_factory.polling import WaitFailed
from image_factory.tasks import remember_resumed

log = logging.getLogger("image_factory")

#: Retrying cannot fix a permanent error: fail the task at once, with its message.
RETRY_POLICY = ExceptionRetryPolicy(rules=[
    RetryRule(exception=PermanentError, action=RetryAction.FAIL, reason="permanent error: retrying cannot help"),
])


def classified(function):
    """Run a task body with AWS errors sorted into permanent (fail now) and transient (retry with backoff),
    and record how long it took (XCom ``step_seconds``, gathered into the build summary)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            with permanent_aws_errors():
                result = function(*args, **kwargs)
        except waiting.WaitDeferred as wait:
            # Hand the wait to the triggerer (defer() raises); the task resumes by running again (waiting.py),
            # or the trigger ends it, and then the result stored here is the task's.
            context = get_current_context()
            if wait.result is not None:
                ti, so_far = context["ti"], round(time.monotonic() - started, 1)
                ti.xcom_push(key="return_value", value=wait.result)
                ti.xcom_push(key="step_seconds", value=so_far)
                wait.trigger.elapsed = so_far  # its step_seconds: this plus the wait
            context["task"].defer(trigger=wait.trigger, method_name="resume",
                                  timeout=timedelta(seconds=wait.timeout + 60))
        get_current_context()["ti"].xcom_push(key="step_seconds", value=round(time.monotonic() - started, 1))
        return result

    return wrapper


class BuildStep(PythonOperator):
    """A build task: a plain function run as a task, which can wait for a cloud state in the triggerer and
    then run again to go on. (Plain operators rather than TaskFlow's: a DAG file of many specs parses faster.)"""

    def resume(self, context, event=None):
        if event == "success":
            # A trigger that ends the task, under `airflow dags test`: it resumes the task with the event's state
            # instead. The wait is over, and the task stored its result before deferring.
            return context["ti"].xcom_pull(task_ids=self.task_id)
        if not event or event.get("status") != "success":
            raise WaitFailed((event or {}).get("message", "the wait ended without a result"))
        log.info("the wait is over (%s polls in the triggerer); going on", event.get("polls"))
        remember_resumed(context["ti"].id, event)  # the task's wait reads it: no second poll
        return self.execute(context)


class InstanceStep(BuildStep):
    """A build task with a link to the builder instance (see links.py)."""

    operator_extra_links = (links.BuilderInstanceLink(),)


class ImageStep(BuildStep):
    """A build task with a link to the image (see links.py)."""

    operator_extra_links = (links.ImageLink(),)
