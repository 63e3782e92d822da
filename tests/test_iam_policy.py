"""The IAM policy of include/iam/image-factory-policy.json: linted with parliament, and attacked statement by statement
with a small evaluator of its conditions (no cloud needed).

The evaluator follows IAM's rules for what the policy uses: a request is allowed when some Allow statement matches
its action, resource and conditions and no Deny statement does; condition operators are ANDed, the values of one key
ORed; a key absent from the request makes every operator but ``Null`` false.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest

PROJECT = Path(__file__).resolve().parents[1]
POLICY_PATH = PROJECT / "include" / "iam" / "image-factory-policy.json"
PARLIAMENT_CONFIG = PROJECT / "include" / "iam" / "parliament.yaml"
BUILD_TAG = "image-factory:build-id"
SEVERITIES = ["MUTE", "INFO", "LOW", "MEDIUM", "HIGH", "CRITICAL"]

#: The create calls the code makes with TagSpecifications: the only ones tags may come with.
CREATE_CALLS = {"CreateVpc", "CreateSubnet", "CreateSecurityGroup", "ImportKeyPair", "RunInstances", "CreateImage",
                "CopyImage"}

ARN = {
    "instance": "arn:aws:ec2:eu-west-1:111122223333:instance/i-0123456789abcdef0",
    "volume": "arn:aws:ec2:eu-west-1:111122223333:volume/vol-0123456789abcdef0",
    "network-interface": "arn:aws:ec2:eu-west-1:111122223333:network-interface/eni-0123456789abcdef0",
    "security-group": "arn:aws:ec2:eu-west-1:111122223333:security-group/sg-0123456789abcdef0",
    "key-pair": "arn:aws:ec2:eu-west-1:111122223333:key-pair/image-factory-web-1",
    "subnet": "arn:aws:ec2:eu-west-1:111122223333:subnet/subnet-0123456789abcdef0",
    "vpc": "arn:aws:ec2:eu-west-1:111122223333:vpc/vpc-0123456789abcdef0",
    "image": "arn:aws:ec2:eu-west-1::image/ami-0123456789abcdef0",
    "snapshot": "arn:aws:ec2:eu-west-1::snapshot/snap-0123456789abcdef0",
}
TAGGED = {f"aws:ResourceTag/{BUILD_TAG}": "web-1"}
TAGGING = {f"aws:RequestTag/{BUILD_TAG}": "web-1"}
#: What a failed build's kept resources are tagged with after creation (keep.py).
KEEP_TAGS = ["image-factory:keep-until", "image-factory:login"]


def load_policy(path: Path = POLICY_PATH) -> dict:
    return json.loads(path.read_text())


def _list(value) -> list:
    return value if isinstance(value, list) else [value]


def _condition_holds(operator: str, key: str, wanted, context: dict) -> bool:
    wanted, present = [str(w) for w in _list(wanted)], key in context
    if operator == "Null":
        return (not present) == (wanted[0] == "true")
    if operator == "ForAllValues:StringEquals":  # (true for an absent key, as IAM: pair it with Null)
        return all(str(v) in wanted for v in _list(context.get(key, [])))
    if not present:
        return operator.startswith("ForAllValues:")  # (IAM: true of no values at all; the policy adds a Null)
    values = [str(v) for v in _list(context[key])]
    if operator == "StringEquals":
        return any(v in wanted for v in values)
    if operator == "ForAllValues:StringEquals":  # (every value of the request's among those wanted)
        return all(v in wanted for v in values)
    if operator == "Bool":
        return any(v.lower() in [w.lower() for w in wanted] for v in values)
    raise AssertionError(f"the evaluator does not know condition operator {operator} (teach it before using it)")


def _matches(statement: dict, action: str, resource: str, context: dict) -> bool:
    if not any(fnmatch.fnmatchcase(action, a) for a in _list(statement["Action"])):
        return False
    if not any(fnmatch.fnmatchcase(resource, r) for r in _list(statement["Resource"])):
        return False
    return all(_condition_holds(operator, key, wanted, context)
               for operator, keys in statement.get("Condition", {}).items() for key, wanted in keys.items())


def decision(policy: dict, action: str, resource: str, **context) -> str:
    """``allow``, ``deny`` (an explicit Deny matched) or ``implicit`` (no Allow matched) for one resource of a
    request; ``context``: its condition keys (``ec2_CreateAction="RunInstances"`` for ``ec2:CreateAction``; tag keys
    through the TAGGED and TAGGING dicts)."""
    keys = {key.replace("_", ":", 1) if not key.startswith("aws:") else key: value for key, value in context.items()}
    statements = policy["Statement"]
    if any(s["Effect"] == "Deny" and _matches(s, action, resource, keys) for s in statements):
        return "deny"
    return "allow" if any(s["Effect"] == "Allow" and _matches(s, action, resource, keys) for s in statements) \
        else "implicit"


def allowed(policy: dict, action: str, resource: str, context: dict | None = None, **more) -> bool:
    return decision(policy, action, resource, **{**(context or {}), **more}) == "allow"


@pytest.fixture(scope="module")
def policy() -> dict:
    return load_policy()


# --- parliament -----------------------------------------------------------------------------------------------

def _ignored(finding, ignore_locations) -> bool:
    """parliament's ``ignore_locations`` rule (parliament.cli.is_finding_filtered): an entry ignores a finding when
    each of its fields fully matches (a regular expression, case-insensitive) the finding's location field of that
    name. Applied here because parliament 1.6.4's own filter drops values read from a YAML file (misc.make_list
    only takes jsoncfg nodes), so that a config file's ignores never match."""
    for entry in ignore_locations or []:
        if all(any(re.fullmatch(str(pattern).lower(), str(finding.location.get(field, "")).lower())
                   for pattern in _list(patterns)) for field, patterns in entry.items()):
            return True
    return False


def parliament_findings(path: Path) -> list:
    import parliament

    parliament.override_config(str(PARLIAMENT_CONFIG))
    analyzed = parliament.analyze_policy_string(path.read_text(), filepath=str(path))
    findings = [parliament.enhance_finding(finding) for finding in analyzed.findings]
    return [f for f in findings if SEVERITIES.index(f.severity) >= SEVERITIES.index("MEDIUM")
            and not _ignored(f, f.ignore_locations)]


def test_parliament_finds_nothing_of_medium_severity_or_more():
    findings = parliament_findings(POLICY_PATH)
    assert [(f.severity, f.issue, f.detail, f.location) for f in findings] == []


def test_the_statements_of_each_action_together_grant_every_resource_it_requires(policy):
    """What parliament's ignored RESOURCE_MISMATCH would check statement by statement, checked as IAM authorizes:
    each resource type an action requires (per parliament's copy of AWS's reference) is granted by some statement."""
    from parliament.statement import get_privilege_info

    missing = []
    for action in sorted({a for s in policy["Statement"] if s["Effect"] == "Allow" for a in _list(s["Action"])}):
        service, name = action.split(":")
        required = [r["resource_type"].rstrip("*") for r in get_privilege_info(service, name)["resource_types"]
                    if r["resource_type"].endswith("*")]
        resources = [r for s in policy["Statement"] if s["Effect"] == "Allow" and action in _list(s["Action"])
                     for r in _list(s["Resource"])]
        for kind in required:
            # (An SNS topic's ARN has no resource type in it: arn:aws:sns:REGION:ACCOUNT:NAME; nor has an S3
            # object's: arn:aws:s3:::BUCKET/KEY.)
            # (An Auto Scaling group's ARN: ...:autoScalingGroup:UUID:autoScalingGroupName/NAME.)
            if not any(r == "*" or r.split(":", 5)[-1].startswith((f"{kind}/", f"{kind}:"))
                       or ((service, kind) == ("sns", "topic") and r.startswith("arn:aws:sns:"))
                       or ((service, kind) == ("s3", "object") and r.startswith("arn:aws:s3:::") and "/" in r)
                       for r in resources):
                missing.append((action, kind))
    assert missing == []


# --- tags ----------------------------------------------------------------------------------------------------

def test_tags_on_an_existing_resource_only_where_the_build_tag_is_already(policy):
    # An attacker's way in: tag anything of the account as a build's, then delete or share it as the build's.
    for kind, arn in ARN.items():
        assert not allowed(policy, "ec2:CreateTags", arn, TAGGING), kind
    # What the build does after creation: marks its images (and their snapshots) complete, tested, copied.
    for kind in ("image", "snapshot"):
        assert allowed(policy, "ec2:CreateTags", ARN[kind], {**TAGGING, **TAGGED}), kind
    # Nothing else is retagged after creation, even with the build tag on it ...
    for kind in ("instance", "volume", "vpc", "subnet", "security-group", "key-pair"):
        assert not allowed(policy, "ec2:CreateTags", ARN[kind], {**TAGGING, **TAGGED}), kind
    # ... but with the tags of a failed build's kept instance (keep_on_failure_hours), and those alone.
    keep = KEEP_TAGS
    for kind in ("instance", "vpc", "subnet", "security-group", "key-pair"):
        assert allowed(policy, "ec2:CreateTags", ARN[kind], {**TAGGED, "aws:TagKeys": keep}), kind
        assert not allowed(policy, "ec2:CreateTags", ARN[kind], {"aws:TagKeys": keep}), f"{kind}: not a build's"
        assert not allowed(policy, "ec2:CreateTags", ARN[kind], {**TAGGED, "aws:TagKeys": [*keep, BUILD_TAG]}), kind
        assert not allowed(policy, "ec2:CreateTags", ARN[kind], TAGGED), f"{kind}: no tag keys"
    assert not allowed(policy, "ec2:CreateTags", ARN["volume"], {**TAGGED, "aws:TagKeys": keep})


def test_tags_in_a_create_call_only_in_the_calls_the_code_makes_and_with_the_build_tag(policy):
    created_by = {"CreateVpc": "vpc", "CreateSubnet": "subnet", "CreateSecurityGroup": "security-group",
                  "ImportKeyPair": "key-pair", "RunInstances": "instance", "CreateImage": "image", "CopyImage": "image"}
    for call, kind in created_by.items():
        assert allowed(policy, "ec2:CreateTags", ARN[kind], TAGGING, ec2_CreateAction=call), call
        assert not allowed(policy, "ec2:CreateTags", ARN[kind], ec2_CreateAction=call), f"{call} without the tag"
    for call in ("CreateVolume", "CreateSnapshot", "CreateLaunchTemplate", "CreateNetworkInterface", "CreateKeyPair",
                 "CreateInternetGateway", "CreateTags"):
        for kind, arn in ARN.items():
            assert not allowed(policy, "ec2:CreateTags", arn, TAGGING, ec2_CreateAction=call), (call, kind)
    statements = [s for s in policy["Statement"] if s["Effect"] == "Allow" and "ec2:CreateTags" in _list(s["Action"])]
    for statement in statements:
        condition = statement["Condition"]
        if "ec2:CreateAction" in condition.get("StringEquals", {}):
            assert set(_list(condition["StringEquals"]["ec2:CreateAction"])) == CREATE_CALLS
        else:  # the other kind: no create action in the request, the build tag on the resource
            expected = {"ec2:CreateAction": "true", f"aws:ResourceTag/{BUILD_TAG}": "false"}
            if "ForAllValues:StringEquals" in condition:  # (only the keep tags, and some tag keys given)
                assert condition["ForAllValues:StringEquals"] == {"aws:TagKeys": KEEP_TAGS}
                expected["aws:TagKeys"] = "false"
            assert condition["Null"] == expected


def test_the_create_calls_allowed_to_tag_are_those_the_code_makes_with_tag_specifications():
    """Each request the steps make with TagSpecifications is a function ``..._request`` (plan.py only shows
    them); the call it is sent with is the client method (or the wait's follow-up) given that function's result."""
    ec2 = boto3.client("ec2", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")  # noqa: S106
    sources = {path: path.read_text() for path in (PROJECT / "plugins").rglob("*.py") if path.name != "plan.py"}
    code = "\n".join(sources.values())
    calls = set()
    for path, text in sources.items():
        for found in re.finditer(r"TagSpecifications", text):
            functions = list(re.finditer(r"^def ([a-z_]+_request)\(", text[:found.start()], re.MULTILINE))
            assert functions, f"{path}: TagSpecifications outside a request function"
            function = functions[-1].group(1)
            sent = re.findall(rf"\bec2(?:_in\([^)]*\))?\.([a-z_]+)\(\*\*{function}\("
                              rf"|FollowUp\(\"ec2\", \"([a-z_]+)\", {function}\("
                              rf"|request = {function}\([^\n]*\n(?:[^\n]*\n){{0,3}}?\s*ec2\.([a-z_]+)\(\*\*request\)",
                              code)
            assert sent, f"{function} ({path.name}) is sent by no call found"
            calls.update(ec2.meta.method_to_api_mapping[next(m for m in match if m)] for match in sent)
    assert calls == CREATE_CALLS


# --- RunInstances, CreateImage, CopyImage ----------------------------------------------------------------------

def test_run_instances_only_tagged_with_imds_v2_and_encrypted_tagged_volumes(policy):
    launch = {"instance": {**TAGGING, "ec2:MetadataHttpTokens": "required"},
              "volume": {**TAGGING, "ec2:Encrypted": "true"},
              "network-interface": TAGGING,
              "security-group": TAGGED, "key-pair": TAGGED, "image": {}, "snapshot": {}, "subnet": {}}
    for kind, context in launch.items():  # what the build sends: every resource of it allowed
        assert allowed(policy, "ec2:RunInstances", ARN[kind], context), kind
    refused = {
        "instance": [TAGGING, {**TAGGING, "ec2:MetadataHttpTokens": "optional"},
                     {"ec2:MetadataHttpTokens": "required"}],
        "volume": [TAGGING, {**TAGGING, "ec2:Encrypted": "false"}, {"ec2:Encrypted": "true"}],
        "network-interface": [{}],
        "security-group": [{}, TAGGING],  # somebody else's security group, or the default one
        "key-pair": [{}, TAGGING],
    }
    for kind, contexts in refused.items():
        for context in contexts:
            assert not allowed(policy, "ec2:RunInstances", ARN[kind], context), (kind, context)


def test_create_image_only_of_an_instance_the_build_tagged_into_a_tagged_image(policy):
    assert allowed(policy, "ec2:CreateImage", ARN["instance"], {**TAGGED, **TAGGING})
    assert not allowed(policy, "ec2:CreateImage", ARN["instance"], TAGGING)  # any other instance of the account
    assert allowed(policy, "ec2:CreateImage", ARN["image"], TAGGING)
    assert not allowed(policy, "ec2:CreateImage", ARN["image"])
    assert allowed(policy, "ec2:CopyImage", ARN["image"], TAGGING)
    assert not allowed(policy, "ec2:CopyImage", ARN["image"])


# --- sharing and the rest ------------------------------------------------------------------------------------

def test_nothing_is_made_public(policy):
    """Snapshots: ``ec2:Add/group`` is a documented condition key of ModifySnapshotAttribute, and an explicit Deny
    on ``all`` wins over any Allow.

    Images: ModifyImageAttribute has no condition key for the launch permission being added (AWS's reference, as
    parliament carries it, lists only ec2:Attribute, ec2:Attribute/${AttributeName}, ec2:ImageID, ec2:ImageType,
    ec2:Owner, ec2:Public, ec2:ResourceTag and ec2:RootDeviceType), so a Deny on ``ec2:Add/group`` would never
    match. An image is kept private so: the role may change only the images its builds tagged; the code adds launch
    permissions for accounts, organizations and organizational units only (distribution.share, tested below); and
    the account's block public access for AMIs (``aws ec2 enable-image-block-public-access``) refuses a public launch
    permission whatever the caller's policy, a setting this role has no permission to turn off."""
    from parliament.statement import get_privilege_info

    tagged_snapshot = ARN["snapshot"]
    assert decision(policy, "ec2:ModifySnapshotAttribute", tagged_snapshot, **TAGGED, **{"ec2:Add/group": "all"}) \
        == "deny"
    assert allowed(policy, "ec2:ModifySnapshotAttribute", tagged_snapshot, TAGGED, **{"ec2:Add/userId": "444455556666"})
    assert not allowed(policy, "ec2:ModifySnapshotAttribute", tagged_snapshot, **{"ec2:Add/userId": "444455556666"})

    image_keys = {key for r in get_privilege_info("ec2", "ModifyImageAttribute")["resource_types"]
                  for key in r["condition_keys"]}
    assert "ec2:Add/group" not in image_keys, "AWS has a key for it now: deny ec2:Add/group=all on images too"
    assert allowed(policy, "ec2:ModifyImageAttribute", ARN["image"], TAGGED)
    assert not allowed(policy, "ec2:ModifyImageAttribute", ARN["image"])  # an image no build of ours made
    assert not [s for s in policy["Statement"] if s["Effect"] == "Allow"
                and {"ec2:*", "ec2:DisableImageBlockPublicAccess"} & set(_list(s["Action"]))]


def test_distribution_shares_with_accounts_organizations_and_units_never_with_all():
    from image_factory.steps import distribution

    calls = []

    class Ec2:
        def modify_image_attribute(self, **kwargs):
            calls.append(("image", kwargs))

        def modify_snapshot_attribute(self, **kwargs):
            calls.append(("snapshot", kwargs))

    share_with = SimpleNamespace(accounts=["444455556666"], organizations=["arn:aws:organizations::1:organization/o-1"],
                                 organizational_units=["arn:aws:organizations::1:ou/o-1/ou-1"])
    build = SimpleNamespace(spec=SimpleNamespace(distribute=SimpleNamespace(share_with=share_with)))
    image = {"ImageId": "ami-1", "BlockDeviceMappings": [{"Ebs": {"SnapshotId": "snap-1"}}]}
    distribution.share(lambda region: Ec2(), build, {"eu-west-1": image})
    assert calls
    for kind, kwargs in calls:
        if kind == "image":
            assert all("Group" not in p for p in kwargs["LaunchPermission"]["Add"])
            assert "UserGroups" not in kwargs
        else:
            assert "GroupNames" not in kwargs and kwargs["UserIds"] == ["444455556666"]


def test_notifications_only_read_and_publish_to_topics(policy):
    topic = "arn:aws:sns:eu-west-1:111122223333:image-builds"
    assert allowed(policy, "sns:Publish", topic) and allowed(policy, "sns:GetTopicAttributes", topic)
    sns = [s for s in policy["Statement"] if any(a.startswith("sns:") for a in _list(s["Action"]))]
    assert [sorted(_list(s["Action"])) for s in sns] == [["sns:GetTopicAttributes", "sns:Publish"]]
    assert all(r.startswith("arn:aws:sns:") for s in sns for r in _list(s["Resource"]))  # topics only
    for action in ("sns:Subscribe", "sns:SetTopicAttributes", "sns:DeleteTopic", "sns:CreateTopic"):
        assert not allowed(policy, action, topic), action


def test_rollout_changes_only_templates_and_groups_tagged_for_it(policy):
    template = "arn:aws:ec2:eu-west-1:111122223333:launch-template/lt-0123456789abcdef0"
    group = ("arn:aws:autoscaling:eu-west-1:111122223333:autoScalingGroup:6d3e1e3b-0000-0000-0000-000000000000:"
             "autoScalingGroupName/web-asg")
    tagged = {"aws:ResourceTag/image-factory:rollout": "web"}
    for action, arn in (("ec2:CreateLaunchTemplateVersion", template), ("ec2:ModifyLaunchTemplate", template),
                        ("autoscaling:StartInstanceRefresh", group)):
        assert allowed(policy, action, arn, tagged), action
        assert not allowed(policy, action, arn), f"{action} of an untagged resource"
        assert not allowed(policy, action, arn, TAGGED), f"{action} of a builder resource"
    # Only these: no other change to a template or group (deleting, updating a group, cancelling a refresh).
    for action, arn in (("ec2:DeleteLaunchTemplate", template), ("autoscaling:UpdateAutoScalingGroup", group),
                        ("autoscaling:CancelInstanceRefresh", group), ("autoscaling:SetDesiredCapacity", group)):
        assert not allowed(policy, action, arn, tagged), action


def test_console_output_only_of_the_builds_instances(policy):
    assert allowed(policy, "ec2:GetConsoleOutput", ARN["instance"], TAGGED)
    assert not allowed(policy, "ec2:GetConsoleOutput", ARN["instance"])


def test_revocation_only_disables_enables_and_untags_image_factory_images(policy):
    image, spec = ARN["image"], {"aws:ResourceTag/image-factory:spec": "webapp"}
    for action in ("ec2:DisableImage", "ec2:EnableImage", "ec2:DisableImageDeprecation"):
        assert allowed(policy, action, image, spec), action
        assert not allowed(policy, action, image), action  # an image that is not the factory's
        assert not allowed(policy, action, ARN["snapshot"], spec), action
    revocation_tags = ["image-factory:revoked", "image-factory:revoked-reason", "image-factory:revoked-by"]
    assert allowed(policy, "ec2:DeleteTags", image, spec, **{"aws:TagKeys": revocation_tags})
    assert not allowed(policy, "ec2:DeleteTags", image, spec, **{"aws:TagKeys": ["image-factory:tests"]})
    assert not allowed(policy, "ec2:DeleteTags", image, spec)  # no keys given: every tag would go
    assert not allowed(policy, "ec2:DeleteTags", image, **{"aws:TagKeys": revocation_tags})
    channel = "arn:aws:ssm:eu-west-1:111122223333:parameter/image-factory/webapp/latest"
    for action in ("ssm:GetParameterHistory", "ssm:DeleteParameter"):
        assert allowed(policy, action, channel), action
        assert not allowed(policy, action, "arn:aws:ssm:eu-west-1:111122223333:parameter/other/x"), action


def test_deleting_and_changing_only_what_the_builds_tagged(policy):
    for action in ("ec2:TerminateInstances", "ec2:DeregisterImage", "ec2:DeleteSnapshot", "ec2:DeleteSecurityGroup",
                   "ec2:DeleteKeyPair", "ec2:DeleteSubnet", "ec2:DeleteVpc", "ec2:StopInstances"):
        assert not allowed(policy, action, "arn:aws:ec2:eu-west-1:111122223333:anything/x-1"), action
        assert allowed(policy, action, "arn:aws:ec2:eu-west-1:111122223333:anything/x-1", TAGGED), action


def test_sboms_only_written_read_and_deleted_under_sboms(policy):
    """The SBOMs (sbom.py): objects under sboms/ of a bucket, nothing else of S3: no listing, no bucket
    settings, no other key."""
    s3 = [s for s in policy["Statement"] if any(a.startswith("s3:") for a in _list(s["Action"]))]
    assert [sorted(_list(s["Action"])) for s in s3] == [["s3:DeleteObject", "s3:GetObject", "s3:PutObject"]]
    for action in ("s3:PutObject", "s3:GetObject", "s3:DeleteObject"):
        assert allowed(policy, action, "arn:aws:s3:::image-factory-sboms/sboms/web/ami-0123.cdx.json")
        assert not allowed(policy, action, "arn:aws:s3:::image-factory-sboms/other/key")
    for action in ("s3:ListBucket", "s3:PutBucketPolicy", "s3:PutObjectAcl", "s3:CreateBucket"):
        assert not allowed(policy, action, "arn:aws:s3:::image-factory-sboms")
