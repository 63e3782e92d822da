"""The operator every build task runs as: a plain function (tasks.py) in a PythonOperator that can hand a wait
to the triggerer and then run again to go on, with AWS errors sorted into permanent and transient ones.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import timedelta

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import get_current_context
from airflow.sdk.definitions.retry_policy import ExceptionRetryPolicy, RetryAction, RetryRule

from image_factory import links
from image_factory.errors import PermanentError, permanent_aws_errors
from image_factory.waits.protocol import Deferred, WaitOutcome

log = logging.getLogger("image_factory")

#: Retrying cannot fix a permanent error: fail the task at once, with its message.
RETRY_POLICY = ExceptionRetryPolicy(rules=[
    RetryRule(exception=PermanentError, action=RetryAction.FAIL, reason="permanent error: retrying cannot help"),
])


def classified(function, timed: bool = False):
    """Run a task body with AWS errors sorted into permanent (fail now) and transient (retry with backoff);
    ``timed``: and record how long it took (XCom ``step_seconds``, which the build summary gathers)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        try:
            with permanent_aws_errors():
                result = function(*args, **kwargs)
        except Deferred as wait:
            # Hand the wait to the triggerer (defer() raises); the task resumes by running again (resume below),
            # or the trigger ends it, and then the result stored here is the task's.
            context = get_current_context()
            if wait.result is not None:
                ti, so_far = context["ti"], round(time.monotonic() - started, 1)
                ti.xcom_push(key="return_value", value=wait.result)
                if timed:  # (also here: `airflow dags test` resumes the task instead of taking the trigger's XComs)
                    ti.xcom_push(key="step_seconds", value=so_far)
                    wait.trigger.elapsed = so_far  # the trigger's step_seconds: this plus the wait
            context["task"].defer(trigger=wait.trigger, method_name="resume",
                                  timeout=timedelta(seconds=wait.timeout + 60))
        if timed:  # (an XCom write is an API call: only for the steps the summary reports)
            get_current_context()["ti"].xcom_push(key="step_seconds", value=round(time.monotonic() - started, 1))
        return result

    return wrapper


#: The name the task body (dag._run) is handed a resumed task's wait outcome under.
OUTCOME = "wait_outcome"


class BuildStep(PythonOperator):
    """A build task: a plain function run as a task, which can wait for a cloud state in the triggerer and
    then run again to go on. (Plain operators rather than TaskFlow's: a DAG file of many specs parses faster.)"""

    def resume(self, context, event=None):
        if event == "success":
            # A trigger that ends the task, under `airflow dags test`: it resumes the task with the event's state
            # instead. The wait is over, and the task stored its result before deferring.
            return context["ti"].xcom_pull(task_ids=self.task_id)
        outcome = WaitOutcome.from_event(event)  # (a failed or timed-out wait raises)
        log.info("the wait is over (%s polls in the triggerer); going on", outcome.polls)
        # The task body is given the outcome (its parameter of that name, filled from the context as Airflow
        # fills a callable's): the step's wait, asked again, returns it instead of polling a second time.
        return self.execute({**context, OUTCOME: outcome})


class InstanceStep(BuildStep):
    """A build task with a link to the builder instance (see links.py)."""

    operator_extra_links = (links.BuilderInstanceLink(),)


class ImageStep(BuildStep):
    """A build task with a link to the image (see links.py)."""

    operator_extra_links = (links.ImageLink(),)


class ImageApproval(ApprovalOperator):
    """A person approves moving the spec's approval channels to the new, tested image (Airflow's
    human-in-the-loop: on Airflow 3.3 the task waits in ``awaiting_input``, holding no worker, pool or
    triggerer slot). Its text shows the image, its lineage and its test results; no answer before the timeout
    counts as a rejection. Approve: ``promote_approved`` moves the channels. Reject: it is skipped, and this
    task's log says why."""

    def __init__(self, *, spec, **kwargs):
        promote = spec.promote
        self.channels = list(promote.approval)
        super().__init__(
            subject=f"Promote a new {spec.name} image to {', '.join(self.channels)}?",
            body="(the image, its lineage and its tests are filled in when the task runs)",
            defaults=ApprovalOperator.REJECT, response_timeout=timedelta(hours=promote.approval_timeout_hours),
            **kwargs)

    def execute(self, context):
        from image_factory import approval

        ti = context["ti"]
        self.body = approval.text(self.channels, ti.xcom_pull(task_ids="register_image"),
                                  ti.xcom_pull(task_ids="test_image"), ti.xcom_pull(task_ids="promote"),
                                  ti.xcom_pull(task_ids="create_builder_network"))
        return super().execute(context)

    def execute_complete(self, context, event):
        if "error" in event and event.get("error_type") == "timeout":
            log.warning("no answer before the timeout: %s not moved", ", ".join(self.channels))
        result = super().execute_complete(context, event)
        chosen = result["chosen_options"][0]
        who = result.get("responded_by_user") or {}
        if chosen == self.APPROVE:
            log.info("approved by %s: %s moves to the image", who.get("name") or who, ", ".join(self.channels))
        else:
            log.warning("%s by %s: %s not moved", "rejected" if who else "no answer before the timeout (rejected "
                        "by default)", who.get("name") or "nobody", ", ".join(self.channels))
        return result
