"""Revocation on the local cloud: a three-level lineage (base -> webapp built on base's channel -> api built on
webapp's) in two regions, its images tagged exactly as builds tag them (the build's own tag functions), its
channels set as promotions set them. Revoking the base with descendants revokes all of them and their copies,
rolls every channel back to the previous tested image (or deletes it); ``restore`` takes it back; ``rollback``
moves a channel along its history. The same through the image_factory_revoke DAG (a real DAG run), and a real
build of webapp that refuses the revoked base in its first step. Bad input changes nothing."""

from __future__ import annotations

import contextlib
import json
import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from image_factory import cli, retention, revocation
from image_factory.build import (
    TAG_COMPLETE,
    TAG_REVOKED,
    TAG_REVOKED_BY,
    TAG_REVOKED_REASON,
    Build,
    tag_dict,
)
from image_factory.settings import Settings
from image_factory.spec import OriginFilter, Retention, channel_parameter, parse_spec
from image_factory.steps import channels, testing
from image_factory.steps.distribution import copy_tags
from image_factory.steps.image import lineage_tags
from image_factory.steps.origin import OriginError, resolve_origin
from image_factory.steps.rollout import TAG_ROLLOUT
from localcloud.runner import airflow_env, run_dag

HOME, COPIES = "eu-west-1", "us-east-1"
REGIONS = [HOME, COPIES]
PREFIX = "/image-factory"
REVOKED_TAGS = (TAG_REVOKED, TAG_REVOKED_REASON, TAG_REVOKED_BY)


def _spec_text(name: str, origin: str) -> str:
    return textwrap.dedent(f"""\
        image:
          name: {name}
          origin: {origin}
          region: {HOME}
          distribute:
            regions: [{COPIES}]
        """)


def _client(cloud, service: str, region: str):
    return boto3.client(service, endpoint_url=cloud.endpoint, region_name=region, aws_access_key_id="testing",
                        aws_secret_access_key="testing")  # noqa: S106 the emulator's


class Lineage:
    """Images made as builds make them: registered with the build's lineage tags, tested, copied to the other
    region with the copy's tags; promoted with steps/channels.py."""

    def __init__(self, cloud):
        self.cloud = cloud
        self.ec2 = {r: _client(cloud, "ec2", r) for r in REGIONS}
        self.ssm = {r: _client(cloud, "ssm", r) for r in REGIONS}
        self.images: list[tuple[str, str]] = []  # (region, image id)
        self.parameters: set[tuple[str, str]] = set()
        #: The root origin: not an Image Factory image.
        self.root = self.ec2[HOME].describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        self.instance = self.ec2[HOME].run_instances(ImageId=self.root, MinCount=1, MaxCount=1)["Instances"][0][
            "InstanceId"]
        self.ec2[HOME].stop_instances(InstanceIds=[self.instance])

    def build(self, spec: str, origin: str, origin_spec: str | None, created: datetime,
              tests: str = "passed") -> dict[str, str]:
        """One build's image in HOME and its copy in COPIES: {region: image id}."""
        build = Build(spec=parse_spec(_spec_text(spec, origin)), spec_hash="0" * 16,
                      run_id=f"revocation-{uuid.uuid4()}", settings=Settings())
        tags = lineage_tags(build, origin, {"spec": origin_spec, "build_id": "bearlier"} if origin_spec else None)
        tags[TAG_COMPLETE] = "true"
        ec2 = self.ec2[HOME]
        image_id = ec2.create_image(InstanceId=self.instance, Name=f"{spec}-{build.build_id}", TagSpecifications=[
            {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])["ImageId"]
        self.images.append((HOME, image_id))
        testing.record(ec2, image_id, {"status": tests, "passed": 3, "failed": 0 if tests == "passed" else 1})
        source = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        copy = self.ec2[COPIES].copy_image(SourceImageId=image_id, SourceRegion=HOME, Name=source["Name"])["ImageId"]
        self.images.append((COPIES, copy))
        self.ec2[COPIES].create_tags(Resources=[copy], Tags=[
            {"Key": k, "Value": v} for k, v in {**copy_tags(source, HOME), TAG_COMPLETE: "true"}.items()])
        self.cloud.backdate_images({image_id: created, copy: created + timedelta(minutes=5)})
        return {HOME: image_id, COPIES: copy}

    def promote(self, spec: str, images: dict[str, str], channel: str = "latest") -> None:
        channels.move_everywhere(self.ssm.__getitem__, spec, [channel], images, {"status": "passed"}, PREFIX)
        self.parameters |= {(r, channel_parameter(spec, channel, PREFIX)) for r in images}

    def channel(self, spec: str, channel: str = "latest") -> dict[str, str | None]:
        return {r: channels.current(self.ssm[r], spec, [channel], PREFIX).get(channel) for r in REGIONS}

    def described(self, image_id: str, region: str = HOME) -> dict:
        return self.ec2[region].describe_images(ImageIds=[image_id], IncludeDisabled=True)["Images"][0]

    def clean(self) -> None:
        for region, name in self.parameters:
            with contextlib.suppress(Exception):  # (deleted by a revocation already)
                self.ssm[region].delete_parameter(Name=name)
        for region, image_id in self.images:
            self.ec2[region].deregister_image(ImageId=image_id, DeleteAssociatedSnapshots=True)
        self.ec2[HOME].terminate_instances(InstanceIds=[self.instance])


@pytest.fixture(scope="module")
def lineage(local_cloud):
    """base (old, new), webapp (old on old base, new on new base), api (on new webapp, its only build): the
    new ones named by the latest channels, in both regions."""
    made = Lineage(local_cloud)
    try:
        day = datetime.now(UTC) - timedelta(days=3)
        base_old = made.build("rv-base", made.root, None, day)
        base_new = made.build("rv-base", made.root, None, day + timedelta(hours=1))
        failed = made.build("rv-base", made.root, None, day + timedelta(minutes=30), tests="failed")
        web_old = made.build("rv-webapp", base_old[HOME], "rv-base", day + timedelta(hours=2))
        web_new = made.build("rv-webapp", base_new[HOME], "rv-base", day + timedelta(hours=3))
        api = made.build("rv-api", web_new[HOME], "rv-webapp", day + timedelta(hours=4))
        yield made, {"base_old": base_old, "base_new": base_new, "failed": failed, "web_old": web_old,
                     "web_new": web_new, "api": api}
    finally:
        made.clean()


def _promote_new(made: Lineage, ids: dict) -> None:
    for spec, images in (("rv-base", ids["base_new"]), ("rv-webapp", ids["web_new"]), ("rv-api", ids["api"])):
        made.promote(spec, images)


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_revoked(made: Lineage, ids: dict, by: str) -> None:
    for key, reason in (("base_new", "CVE-2026-0001 in openssl"), ("web_new", f"descendant of {ids['base_new'][HOME]}"),
                        ("api", f"descendant of {ids['base_new'][HOME]}")):
        for region, image_id in ids[key].items():
            image = made.described(image_id, region)
            tags = tag_dict(image["Tags"])
            assert image["State"] == "disabled" and image.get("DeprecationTime"), (key, region, image)
            assert tags[TAG_REVOKED_REASON] == reason and tags[TAG_REVOKED_BY] == by, (key, region, tags)
            # Hidden from a plain listing, and no new instance of it (running ones are not touched).
            assert not made.ec2[region].describe_images(ImageIds=[image_id])["Images"]
            with pytest.raises(Exception, match=r"InvalidAMIID\.Unavailable"):
                made.ec2[region].run_instances(ImageId=image_id, MinCount=1, MaxCount=1)
    for key in ("base_old", "web_old"):
        assert all(TAG_REVOKED not in tag_dict(made.described(i, r)["Tags"]) for r, i in ids[key].items())
    # Every channel back to the previous tested image (the failed base build is skipped), or deleted.
    assert made.channel("rv-base") == ids["base_old"]
    assert made.channel("rv-webapp") == ids["web_old"]
    assert made.channel("rv-api") == {HOME: None, COPIES: None}


def test_revoke_with_descendants_restore_and_rollback_from_the_command_line(lineage, aws_connection, capsys):
    made, ids = lineage
    _promote_new(made, ids)
    base = ids["base_new"][HOME]
    running = made.ec2[HOME].run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    try:
        made.ec2[HOME].get_waiter("instance_running").wait(InstanceIds=[running], WaiterConfig={"Delay": 1})
        code, out, err = _cli(capsys, "revoke", base, "--reason", "CVE-2026-0001 in openssl", "--descendants",
                              "--regions", ",".join(REGIONS))
        assert code == 0, err
        # An instance of it keeps running (DisableImage stops new launches only).
        state = made.ec2[HOME].describe_instances(InstanceIds=[running])["Reservations"][0]["Instances"][0]["State"]
        assert state["Name"] == "running"
    finally:
        made.ec2[HOME].terminate_instances(InstanceIds=[running])
        made.ec2[HOME].get_waiter("instance_terminated").wait(InstanceIds=[running], WaiterConfig={"Delay": 1})
    by = _client(made.cloud, "sts", HOME).get_caller_identity()["Arn"]  # the caller, as the command saw it
    _assert_revoked(made, ids, by)
    assert f"channel rv-api/latest deleted (it named {HOME} {ids['api'][HOME]}, {COPIES} {ids['api'][COPIES]})" in out
    assert f"channel rv-webapp/latest: {HOME} {ids['web_new'][HOME]}" in out
    assert out.count("revoked ami-") == 6

    # A revocation again (say, the first one was interrupted before DisableImage): the first tags stay, the
    # image is disabled again, no channel moves.
    made.ec2[HOME].enable_image(ImageId=base)
    code, out, err = _cli(capsys, "revoke", base, "--reason", "another reason", "--regions", ",".join(REGIONS))
    assert code == 0 and "channel" not in out, (out, err)
    _assert_revoked(made, ids, by)

    # show prints the revocations along the lineage.
    code, out, err = _cli(capsys, "show", ids["api"][HOME], "--region", HOME)
    assert out.count("revoked: revoked at ") == 3, (out, err)

    # A build refuses the revoked origin, by id and through a name filter (the filter skips it).
    with pytest.raises(OriginError, match=r"is revoked at .* CVE-2026-0001 in openssl"):
        resolve_origin(made.ec2[HOME], made.ssm[HOME], base, HOME)
    name = made.described(base)["Name"]
    with pytest.raises(OriginError, match="no available image named"):
        resolve_origin(made.ec2[HOME], made.ssm[HOME], OriginFilter(name=name, owners=["self"]), HOME)

    # Retention keeps a revoked image keep_revoked_days after its revocation, then judges it as any other.
    found = retention.survey(made.ec2[HOME], made.ssm[HOME], HOME, PREFIX)
    rules = {"rv-base": Retention(keep=1, keep_revoked_days=30)}
    verdict = {v.image_id: v for v in retention.judge([found], rules)}[base]
    assert verdict.action == retention.KEEP and verdict.reason.startswith("revoked 0.0 hours ago"), verdict
    later = {v.image_id: v for v in retention.judge([found], rules, datetime.now(UTC) + timedelta(days=31))}
    assert later[base].reason == "one of the newest 1 (1 of 1)"  # (no longer for its revocation)

    # restore: enabled, no longer deprecated, the tags gone; no channel moves.
    code, out, err = _cli(capsys, "restore", ids["web_new"][HOME], "--regions", ",".join(REGIONS))
    assert code == 0, err
    for region, image_id in ids["web_new"].items():
        image = made.described(image_id, region)
        assert image["State"] == "available" and "DeprecationTime" not in image
        assert not set(REVOKED_TAGS) & set(tag_dict(image["Tags"]))
    assert made.channel("rv-webapp") == ids["web_old"]

    # rollback: to the channel's previous value (its history), in both regions; then to a named image.
    code, out, err = _cli(capsys, "rollback", "rv-webapp", "latest", "--regions", ",".join(REGIONS))
    assert code == 0, err
    assert made.channel("rv-webapp") == ids["web_new"]
    code, out, err = _cli(capsys, "rollback", "rv-webapp", "latest", "--to", ids["web_old"][HOME],
                          "--regions", ",".join(REGIONS))
    assert code == 0, err
    assert made.channel("rv-webapp") == ids["web_old"]
    # Not to a revoked image.
    code, _, err = _cli(capsys, "rollback", "rv-base", "latest", "--to", base, "--regions", ",".join(REGIONS))
    assert code == 2 and "is revoked at" in err and made.channel("rv-base") == ids["base_old"]
    for key in ("base_new", "api"):  # (each with its copy)
        assert _cli(capsys, "restore", ids[key][HOME], "--regions", ",".join(REGIONS))[0] == 0


def test_bad_input_is_refused_and_changes_nothing(lineage, aws_connection, capsys):
    made, ids = lineage
    regions = ("--regions", ",".join(REGIONS))
    foreign = made.ec2[HOME].create_image(InstanceId=made.instance, Name=f"not-the-factory-{uuid.uuid4()}")[
        "ImageId"]
    made.images.append((HOME, foreign))
    before = {i: made.described(i, r) for key in ids for r, i in ids[key].items()}
    channels_before = {spec: made.channel(spec) for spec in ("rv-base", "rv-webapp", "rv-api")}
    cases = [
        (("revoke", foreign, "--reason", "bad"), "is not an Image Factory image (it has no image-factory:spec tag)"),
        (("revoke", "ami-0123456789abcdef0", "--reason", "bad"), "no image ami-0123456789abcdef0 in"),
        (("revoke", ids["base_old"][HOME], "--reason", "  "), "the reason is empty"),
        (("revoke", ids["base_old"][HOME], "--reason", "x" * 201), "at most 200"),
        (("revoke", ids["base_old"][HOME], "--reason", "${AWS_SECRET_ACCESS_KEY}"), "without '${'"),
        (("revoke", "ami-$(reboot)", "--reason", "bad"), "is not an AMI id"),
        (("restore", ids["base_old"][HOME]), "is not revoked"),
        (("rollback", "rv-webapp", "no-such-channel"), "channel /image-factory/rv-webapp/no-such-channel does not "
                                                       "exist in eu-west-1, us-east-1"),
    ]
    for argv, message in cases:
        code, _, err = _cli(capsys, *argv, *regions)
        assert code == 2 and message in err, (argv, err)
    assert {i: made.described(i, r) for key in ids for r, i in ids[key].items()} == before
    assert {spec: made.channel(spec) for spec in channels_before} == channels_before
    assert TAG_REVOKED not in tag_dict(made.described(foreign).get("Tags"))


def test_the_revoke_dag_and_a_build_that_refuses_the_revoked_base(lineage, local_cloud, airflow_home, tmp_path):
    made, ids = lineage
    _promote_new(made, ids)
    specs = tmp_path / "specs"
    specs.mkdir()
    base = ids["base_new"][HOME]
    # webapp's spec sends its events to a topic (an SQS queue subscribed to it reads them).
    sns, sqs = _client(local_cloud, "sns", HOME), _client(local_cloud, "sqs", HOME)
    name = f"revocations-{uuid.uuid4().hex[:8]}"
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn, Attributes={"RawMessageDelivery": "true"})
    (specs / "rv-webapp.yaml").write_text(_spec_text("rv-webapp", base) + f"  notify: {{sns_topic_arn: {topic}}}\n")
    env = airflow_env(local_cloud, airflow_home, specs_folder=str(specs))
    try:
        run = run_dag("image_factory_revoke", env, conf=json.dumps(
            {"image": base, "reason": "CVE-2026-0001 in openssl", "descendants": True}))
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=2)
        assert run.succeeded, run.output[-3000:]
        log = run.task_logs["revoke"]
        _assert_revoked(made, ids, "airflow:dag_test")  # (airflow dags test's triggering user)
        for key in ("base_new", "web_new", "api"):
            for region, image_id in ids[key].items():
                assert f"revoked {image_id} " in log and region in log
        assert "channel rv-api/latest deleted" in log and f"channel rv-base/latest: {HOME} {base}" in log
        # One message (the only spec of the folder with a topic is webapp, one of the revoked): who, why, what.
        [message] = messages.get("Messages", [])
        assert message["Body"].startswith(f"{base} is revoked by airflow:dag_test: CVE-2026-0001 in openssl")
        assert f"revoked {ids['web_new'][HOME]} (rv-webapp) in {HOME}" in message["Body"]
        assert "channel rv-api/latest deleted" in message["Body"]

        build = run_dag("rv-webapp", env)  # (its first step checks the topic, then refuses the origin)
    finally:
        sqs.delete_queue(QueueUrl=queue)
        sns.delete_topic(TopicArn=topic)
    assert build.state == "failed"
    first = build.task_logs["create_builder_network"]
    assert f"origin image {base} in {HOME} is revoked at" in first and "CVE-2026-0001 in openssl" in first
    assert "launch_builder_instance" not in build.task_states or build.task_states[
        "launch_builder_instance"] != "success"

    # The restore DAG takes the revocation back: base and its copy enabled, not deprecated, the tags gone.
    restored = run_dag("image_factory_restore", env, conf=json.dumps({"image": base}))
    assert restored.succeeded, restored.output[-3000:]
    for region, image_id in ids["base_new"].items():
        image = made.described(image_id, region)
        assert image["State"] == "available" and not image.get("DeprecationTime"), image
        assert not set(REVOKED_TAGS) & set(tag_dict(image["Tags"]))
        assert f"restored {image_id} (rv-base) in {region}" in restored.task_logs["restore"]


@pytest.fixture(scope="module")
def revoke_form():
    """The revoke DAG's params, as Airflow loads the DAG file."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(str(Path(cli.PROJECT) / "dags" / "image_factory_revoke.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["image_factory_revoke"].params


@pytest.mark.parametrize("conf, refused", [
    ({"image": "ami-0123456789abcdef0", "reason": "${AWS_SECRET_ACCESS_KEY}"}, "reason"),
    ({"image": "ami-0123456789abcdef0", "reason": "line one\nline two"}, "reason"),
    ({"image": "ami-0123456789abcdef0", "reason": ""}, "reason"),
    ({"image": "ami-0123456789abcdef0", "reason": "x" * 201}, "reason"),
    ({"image": "ami-0123; reboot", "reason": "bad"}, "image"),
    ({"image": "ami-0123456789abcdef0", "reason": "bad", "descendants": "yes"}, "descendants"),
])
def test_the_revoke_dags_trigger_form_takes_values_as_data(revoke_form, conf, refused):
    import copy

    from airflow.sdk.definitions.param import ParamValidationError

    params = copy.deepcopy(revoke_form)
    params.update({"image": "ami-0123456789abcdef0", "reason": "CVE-2026-0001", "descendants": True})
    assert params.validate()["reason"] == "CVE-2026-0001"
    params = copy.deepcopy(revoke_form)
    with pytest.raises(ParamValidationError, match=f"param {refused}"):
        params.update(conf)
        params.validate()


def test_a_rollback_rolls_the_launch_templates_of_the_channel_back_too(lineage):
    """A spec that rolls `latest` out to a launch template: moving the channel back (as a revocation does too)
    gives the template, in each region, a default version naming the channel's image again."""
    made, _ = lineage
    day = datetime.now(UTC) - timedelta(days=1)
    first = made.build("rv-fleet", made.root, None, day)
    second = made.build("rv-fleet", made.root, None, day + timedelta(hours=1))
    made.promote("rv-fleet", first)
    made.promote("rv-fleet", second)
    template = f"rv-fleet-lt-{uuid.uuid4().hex[:8]}"
    spec = parse_spec(_spec_text("rv-fleet", made.root) + textwrap.indent(textwrap.dedent(f"""\
        test: {{tool: testinfra, tests: appserver}}
        promote: {{channels: [latest]}}
        rollout:
          - {{channel: latest, launch_templates: [{template}]}}
        """), "  "))
    for region in REGIONS:  # (as the rollout of `second` left it: its default names `second`)
        made.ec2[region].create_launch_template(
            LaunchTemplateName=template, LaunchTemplateData={"ImageId": second[region], "InstanceType": "t3.micro"},
            TagSpecifications=[{"ResourceType": "launch-template",
                                "Tags": [{"Key": TAG_ROLLOUT, "Value": "rv-fleet"}]}])
    try:
        report = revocation.rollback(made.ec2.__getitem__, made.ssm.__getitem__, REGIONS, "rv-fleet", "latest",
                                     None, PREFIX, specs={"rv-fleet": spec})
        assert made.channel("rv-fleet") == first
        for region in REGIONS:
            [default] = made.ec2[region].describe_launch_template_versions(
                LaunchTemplateName=template, Versions=["$Default"])["LaunchTemplateVersions"]
            assert default["LaunchTemplateData"]["ImageId"] == first[region]
            assert default["LaunchTemplateData"]["InstanceType"] == "t3.micro"  # its other settings kept
            assert f"launch template {template} in {region}: version 2 names {first[region]} (its default)" \
                in report.lines()
    finally:
        for region in REGIONS:
            made.ec2[region].delete_launch_template(LaunchTemplateName=template)
