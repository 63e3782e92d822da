"""Notifications (issue 31): one message to the spec's SNS topic per event, sent with the Amazon provider's
SnsNotifier through the build's AWS connection. Real DAG runs on the local cloud (moto serves SNS and SQS
behind the front); each message is read back from an SQS queue subscribed to the topic.
"""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

from image_factory import notify
from image_factory.build import build_id_for
from image_factory.inventory import builder_resources
from image_factory.spec import parse_spec
from image_factory.steps.image import find as find_images
from localcloud.runner import airflow_env, run_dag

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
REGION = "eu-west-1"


def client(cloud, service: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=REGION, aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # noqa: S106 emulator


@pytest.fixture
def topic(local_cloud):
    """A topic with an SQS queue subscribed to it (raw delivery: the queue gets the message itself), made
    through the front, deleted at the end: (topic ARN, a function that reads the queue's messages)."""
    sns, sqs = client(local_cloud, "sns"), client(local_cloud, "sqs")
    name = f"image-builds-{uuid.uuid4().hex[:8]}"
    arn = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    subscription = sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn,
                                 Attributes={"RawMessageDelivery": "true"})["SubscriptionArn"]

    def messages(wait: float = 2.0) -> list[dict]:
        """Every message on the queue (read until it has been empty for ``wait`` seconds)."""
        found, quiet_since = [], time.monotonic()
        while time.monotonic() - quiet_since < wait:
            batch = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                        MessageAttributeNames=["All"]).get("Messages", [])
            for message in batch:
                found.append(message)
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
            if batch:
                quiet_since = time.monotonic()
            else:
                time.sleep(0.2)
        return found

    yield arn, messages
    sns.unsubscribe(SubscriptionArn=subscription)
    sqs.delete_queue(QueueUrl=queue)
    sns.delete_topic(TopicArn=arn)


def write_spec(folder, name: str, body: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(textwrap.dedent(body))


# --- without a cloud -------------------------------------------------------------------------------------------

def spec_with(extra: str = ""):
    return parse_spec(textwrap.dedent("""\
        image:
          name: notify-image
          origin: ami-0123456789abcdef0
          region: eu-west-1
        """) + extra)


def test_the_topic_is_the_specs_else_the_deployments_and_only_for_the_events_asked_for():
    mine, deployment = "arn:aws:sns:eu-west-1:123456789012:mine", "arn:aws:sns:eu-west-1:123456789012:all"
    assert notify.topic_for(spec_with(), "failure") is None  # no topic anywhere: nothing is sent
    assert notify.topic_for(spec_with(), "deadline", deployment) == deployment  # no notify section: all events
    own = spec_with(f"  notify: {{sns_topic_arn: '{mine}', events: [failure, promotion]}}\n")
    assert notify.topic_for(own, "failure", deployment) == mine
    assert notify.topic_for(own, "approval", deployment) is None
    only = spec_with("  notify: {events: [promotion]}\n")
    assert notify.topics_of(only, deployment) == {deployment} and notify.topic_for(only, "failure", deployment) is None


def test_a_message_that_cannot_be_sent_is_logged_and_never_raised(caplog):
    # A connection that does not exist: the notifier fails; the build must not.
    sender = notify.BuildNotifier("failure", "notify-image", "arn:aws:sns:eu-west-1:123456789012:x", "no-such-conn")
    context = {"ti": SimpleNamespace(task_id="configure", run_id="manual__1", try_number=1),
               "exception": RuntimeError("role exited with status 1")}
    sender(context)
    assert "notification not sent to arn:aws:sns:eu-west-1:123456789012:x" in caplog.text


def test_the_failure_message_names_the_spec_run_task_error_and_links_to_the_task(monkeypatch):
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    context = {"ti": SimpleNamespace(task_id="configure", run_id="manual__2026-01-01", try_number=2),
               "exception": RuntimeError("role 'x' exited with status 1\n| about to fail on purpose")}
    subject, message = notify.failure_message("notify-image", context)
    assert subject == "Image build failed: notify-image, task configure"
    assert "failed task: configure" in message and "run: manual__2026-01-01" in message
    assert ("link: https://airflow.example.com/dags/notify-image/runs/manual__2026-01-01/tasks/configure"
            "?try_number=2") in message
    assert "  | about to fail on purpose" in message


def test_a_deadline_is_an_airflow_deadline_alert_from_the_queued_time_with_the_notifier_callback(monkeypatch):
    from datetime import timedelta

    from airflow.sdk.definitions.deadline import DeadlineReference

    from image_factory import settings
    from image_factory.dag import build_dag
    from image_factory.spec import LoadedSpec

    topic = "arn:aws:sns:eu-west-1:123456789012:late"
    spec = spec_with(f"  deadline_minutes: 45\n  notify: {{sns_topic_arn: '{topic}'}}\n")
    dag = build_dag(LoadedSpec(spec, Path("notify-image.yaml"), "0" * 16), settings.Settings())
    [alert] = dag.deadline
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT and alert.interval == timedelta(minutes=45)
    assert alert.callback.path == "image_factory.notify.deadline_missed"
    assert alert.callback.kwargs == {"spec_name": "notify-image", "topic": topic, "aws_conn_id": "aws_default",
                                     "minutes": 45}
    # Without a topic (or without the event), no alert; without deadline_minutes, none either.
    assert build_dag(LoadedSpec(spec_with("  deadline_minutes: 45\n"), Path("notify-image.yaml"), "0" * 16),
                     settings.Settings()).deadline in (None, [])
    # Failures notify through every task's callback; the approval through Airflow's HITL notifiers.
    assert all(isinstance(task.on_failure_callback[0] if isinstance(task.on_failure_callback, list)
                          else task.on_failure_callback, notify.BuildNotifier) for task in dag.tasks)


# --- on the local cloud -----------------------------------------------------------------------------------------

def test_the_deadline_callback_and_the_approval_notifier_each_send_one_message(local_cloud, aws_connection, topic):
    arn, messages = topic
    sent = asyncio.run(notify.deadline_missed("notify-image", arn, aws_connection, 45, context={
        "dag_run": {"run_id": "scheduled__2026-01-01", "state": "running", "queued_at": "2026-01-01T02:00:00Z"}}))
    assert sent
    approval = notify.BuildNotifier("approval", "notify-image", arn, aws_connection)

    class Ti(SimpleNamespace):
        def xcom_pull(self, task_ids):
            return {"image_id": "ami-0123456789abcdef0", "name": "notify-image-20260101"}

    approval({"ti": Ti(task_id="approve_promotion", run_id="manual__1"),
              "task": SimpleNamespace(channels=["production"], assigned_users=[{"id": "7", "name": "ops-lead"}],
                                      response_timeout=None)})
    bodies = sorted(m["Body"] for m in messages())
    assert len(bodies) == 2
    late, asked = (b for b in sorted(bodies, key=lambda b: "approval" in b))
    assert "still running 45 minutes after it was queued" in late and "run: scheduled__2026-01-01" in late
    assert "asked: ops-lead" in asked and "channels: production" in asked
    assert "/dags/notify-image/runs/manual__1/tasks/approve_promotion/required_actions" in asked


def test_a_failed_build_sends_one_message_with_the_failed_task_and_its_error(local_cloud, airflow_home, ec2, ssm,
                                                                            tmp_path, topic):
    arn, messages = topic
    roles = tmp_path / "roles"
    (roles / "failing").mkdir(parents=True)
    (roles / "failing" / "10-fail.sh").write_text("echo 'about to fail on purpose'\nexit 1\n")
    write_spec(tmp_path / "specs", "notify-failing-image", f"""\
        image:
          name: notify-failing-image
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          configure: {{tool: shell, server_role: failing}}
          notify: {{sns_topic_arn: "{arn}"}}
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"), roles_folder=str(roles))
    local_cloud.reset_stats()
    result = run_dag("notify-failing-image", env)

    assert result.state == "failed" and result.task_states["configure"] == "failed", result.output[-5000:]
    assert result.task_states["tear_down"] == "success"
    assert f"notify: SNS topic {arn} is there" in result.task_logs["create_builder_network"]
    [message] = messages()
    body = message["Body"]
    assert "The build of notify-failing-image failed: task configure failed" in body
    assert "failed task: configure" in body and f"run: {result.run_id}" in body
    assert "/dags/notify-failing-image/runs/" in body and "/tasks/configure" in body
    assert "exited with status 1" in body and "about to fail on purpose" in body  # the error, with the role's tail
    calls = local_cloud.stats()["calls"]
    assert calls.get("sns:Publish") == 1 and calls.get("sns:GetTopicAttributes") == 1  # through the front
    assert builder_resources(ec2, ssm, build_id_for("notify-failing-image", result.run_id)) == []


def test_a_promotion_sends_one_message_with_the_image_and_its_channels(local_cloud, airflow_home, ec2, ssm,
                                                                      tmp_path, topic):
    arn, messages = topic
    name = "notify-promoted-image"
    write_spec(tmp_path / "specs", name, f"""\
        image:
          name: {name}
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          configure: {{tool: shell, server_role: appserver}}
          test: {{tool: testinfra, tests: appserver}}
          promote: {{channels: [latest]}}
          notify: {{sns_topic_arn: "{arn}", events: [promotion, failure]}}
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"))
    channel = f"/image-factory/{name}/latest"
    try:
        result = run_dag(name, env)
        assert result.succeeded, result.output[-3000:]
        [image] = find_images(ec2, build_id_for(name, result.run_id))
        [message] = messages()
        body = message["Body"]
        assert f"A new {name} image is promoted: latest now name {image['ImageId']}" in body
        assert f"image: {image['ImageId']} ({image['Name']})" in body
        assert "channels: latest" in body and "regions: eu-west-1" in body
    finally:
        if ssm.get_parameters(Names=[channel])["Parameters"]:
            ssm.delete_parameter(Name=channel)


def test_a_topic_that_does_not_exist_fails_the_first_step_and_nothing_is_made(local_cloud, airflow_home, ec2, ssm,
                                                                             tmp_path):
    missing = f"arn:aws:sns:eu-west-1:123456789012:no-such-topic-{uuid.uuid4().hex[:8]}"
    write_spec(tmp_path / "specs", "notify-missing-image", f"""\
        image:
          name: notify-missing-image
          origin: resolve:ssm:{AL2023}
          region: eu-west-1
          subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
          notify: {{sns_topic_arn: "{missing}"}}
        """)
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(tmp_path / "specs"))
    local_cloud.reset_stats()
    result = run_dag("notify-missing-image", env)

    assert result.state == "failed" and result.task_states["create_builder_network"] == "failed"
    assert "launch_builder_instance" not in result.task_states
    log = result.task_logs["create_builder_network"]
    assert f"notify: SNS topic {missing} does not exist" in log and "Nothing was built" in log
    calls = local_cloud.stats()["calls"]
    assert not {"ec2:CreateSubnet", "ec2:CreateSecurityGroup", "ec2:ImportKeyPair", "ec2:RunInstances"} & set(calls)
    assert builder_resources(ec2, ssm, build_id_for("notify-missing-image", result.run_id)) == []
    # Its failure message has no topic to go to: logged, and the run's outcome is the step's own error.
    assert f"notification not sent to {missing}" in result.output
