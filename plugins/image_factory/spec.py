"""Image specs: YAML files -> validated models.

A spec is one YAML file with a top-level ``image:`` key, in the shape of the seed's Examples 13-1 to 13-3.
Validation is strict (unknown keys, wrong types and bad values are errors) and every error names the file
and the field. ``${NAME}`` parameters are only recorded here; they are resolved at run time
(see :mod:`image_factory.parameters`).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from image_factory.errors import InvalidValues, PermanentError
from image_factory.parameters import PARAMETER_PATTERN, check_parameters, parameter_names

#: libyaml's safe loader when PyYAML was built with it: ten times faster than the pure-Python one.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: The seed's sizes, mapped to instance types. A literal instance type (``m6i.large``) is accepted as well.
INSTANCE_SIZES = {"small": "t3.small", "medium": "t3.medium", "large": "t3.large"}

AMI_ID = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$")
# DAG ids and AMI names both accept this; AMI names allow 3-128 characters, we keep room for a suffix.
IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,99}$")
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The ansible tool's ``code_repo``: a relative folder path, each part a name like a role's (no '.', '..').
ANSIBLE_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}){0,7}$")
SSM_PREFIX = "resolve:ssm:"
SSM_PARAMETER = re.compile(r"^/[A-Za-z0-9_./-]{1,2047}$")
SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}$")
USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
TAG_KEY = re.compile(r"^(?!aws:)[\w .:/=+@-]{1,128}$")
CRON_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"}
#: The tools that configure the builder instance; ``command`` takes its command line from the spec.
TOOLS = ("shell", "servermaker", "command", "ansible")
#: A channel: one segment of an SSM parameter path (letters, digits, '.', '_', '-').
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
#: Where the tests of include/tests/<tests>/ are, unless AIRFLOW__IMAGE_FACTORY__TESTS_FOLDER says otherwise.
TESTS_DIR = Path(__file__).resolve().parents[2] / "include" / "tests"
DEFAULT_CHANNEL_PREFIX = "/image-factory"
#: The regions EC2 serves (botocore's endpoints of the aws, aws-us-gov and aws-cn partitions): a region a
#: spec distributes to must be one of them. (Here rather than read from botocore: a DAG file's parse imports
#: no botocore.)
KNOWN_REGIONS = frozenset({
    "af-south-1", "ap-east-1", "ap-east-2", "ap-northeast-1", "ap-northeast-2", "ap-northeast-3", "ap-south-1",
    "ap-south-2", "ap-southeast-1", "ap-southeast-2", "ap-southeast-3", "ap-southeast-4", "ap-southeast-5",
    "ap-southeast-6", "ap-southeast-7", "ca-central-1", "ca-west-1", "eu-central-1", "eu-central-2", "eu-north-1",
    "eu-south-1", "eu-south-2", "eu-west-1", "eu-west-2", "eu-west-3", "il-central-1", "me-central-1",
    "me-south-1", "mx-central-1", "sa-east-1", "us-east-1", "us-east-2", "us-west-1", "us-west-2",
    "us-gov-east-1", "us-gov-west-1", "cn-north-1", "cn-northwest-1"})
ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
ORGANIZATION_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:organizations::[0-9]{12}:organization/o-[a-z0-9]{10,32}$")
ORGANIZATIONAL_UNIT_ARN = re.compile(
    r"^arn:aws(-cn|-us-gov)?:organizations::[0-9]{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}$")


def tests_folder() -> Path:
    """The folder of the test suites (a config value, read without Airflow: the CLI validates specs too)."""
    return Path(os.environ.get("AIRFLOW__IMAGE_FACTORY__TESTS_FOLDER") or TESTS_DIR)


def channel_prefix() -> str:
    """The SSM path under which each spec's channels are (``<prefix>/<spec>/<channel>``)."""
    return (os.environ.get("AIRFLOW__IMAGE_FACTORY__CHANNEL_PREFIX") or DEFAULT_CHANNEL_PREFIX).rstrip("/")


def channel_parameter(spec_name: str, channel: str, prefix: str | None = None) -> str:
    return f"{prefix if prefix is not None else channel_prefix()}/{spec_name}/{channel}"


def channel_of(origin: Any) -> tuple[str, str] | None:
    """(spec, channel) when ``origin`` is another spec's channel (resolve:ssm:<prefix>/<spec>/<channel>)."""
    if not isinstance(origin, str) or not origin.startswith(SSM_PREFIX):
        return None
    head, _, rest = origin[len(SSM_PREFIX):].partition(channel_prefix() + "/")
    parts = rest.split("/")
    if head or len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]



class SpecError(PermanentError):
    """A spec that cannot be used; ``str()`` names the file and each bad field."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]):
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {field}: {message}" for field, message in problems))


def _is_parameterised(value: str) -> bool:
    return bool(PARAMETER_PATTERN.search(value))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OriginFilter(_Strict):
    """Newest image whose name matches ``name`` (wildcards allowed) among images owned by ``owners``."""

    name: str = Field(min_length=1, max_length=128, description="Image name pattern; `*` and `?` are wildcards.",
                      examples=["al2023-ami-2023.*-x86_64"])
    owners: list[str] = Field(min_length=1, description="Account ids or aliases (`amazon`, `self`) that own the "
                                                        "image.", examples=[["amazon"]])
    architecture: Literal["x86_64", "arm64"] | None = Field(
        default=None, description="Only images of this architecture (default: any).")


def _origin_kind(value: Any) -> str:
    return "mapping" if isinstance(value, dict | OriginFilter) else "string"


# Only the branch that fits the input is validated, so a mapping is never also reported as "not a string".
# Pydantic puts the branch's tag in error locations; `_field_path` leaves it out.
ORIGIN_TAGS = ("string", "mapping")
Origin = Annotated[
    Annotated[str, Tag("string")] | Annotated[OriginFilter, Tag("mapping")],
    Discriminator(_origin_kind),
]


class Configure(_Strict):
    """How the builder instance is configured: a tool applies a server role."""

    tool: Literal["shell", "servermaker", "command", "ansible"] = Field(
        description="`shell`: run the top-level *.sh scripts of include/roles/<server_role>/ in name order; "
                    "`servermaker`: run the deployment's servermaker command line; `command`: run the command "
                    "line given in `command`; `ansible`: apply <code_repo>/roles/<server_role> of the ansible "
                    "folder with ansible-playbook.")
    server_role: str = Field(description="The role to apply: a folder of include/roles/ for the shell tool, "
                                         "{server_role} in a command template.", examples=["appserver"])
    code_repo: str | None = Field(default=None, description="Where the tool finds its code: {code_repo} in a "
                                                            "command template, a folder of the ansible folder "
                                                            "for ansible.")
    #: Command template for the ``command`` tool (and an override for ``servermaker``);
    #: ``{code_repo}`` and ``{server_role}`` are replaced by shell-quoted values.
    command: str | None = Field(
        default=None, description="Command template for the `command` tool (an override for `servermaker`); "
                                  "{code_repo} and {server_role} are replaced by shell-quoted values.")

    @field_validator("server_role")
    @classmethod
    def _role_name(cls, value: str) -> str:
        if not _is_parameterised(value) and not ROLE_NAME.match(value):
            raise ValueError("expected a role name: letters, digits, '.', '_' or '-', not starting with '.'")
        return value

    @field_validator("code_repo")
    @classmethod
    def _ansible_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        # For ansible, code_repo is a folder under [image_factory] ansible_folder: nothing may lead outside it.
        if (info.data.get("tool") == "ansible" and value is not None and not _is_parameterised(value)
                and not ANSIBLE_SOURCE.match(value)):
            raise ValueError("tool 'ansible' expects a folder under the ansible folder (include/ansible): "
                             "a relative path of names made of letters, digits, '.', '_' or '-', "
                             "none starting with '.'")
        return value

    @model_validator(mode="after")
    def _command_for_tool(self) -> Configure:
        if self.tool == "command" and not self.command:
            raise ValueError("tool 'command' needs a 'command' template")
        if self.tool == "shell" and self.command:
            raise ValueError("tool 'shell' runs the role's scripts; 'command' is not used with it")
        if self.tool == "ansible" and self.command:
            raise ValueError("tool 'ansible' applies the role with ansible-playbook; 'command' is not used with it")
        if self.command:
            unknown = {f for f in re.findall(r"{([^{}]*)}", self.command)} - {"code_repo", "server_role"}
            if unknown:
                raise ValueError(f"command template may use only {{code_repo}} and {{server_role}}, "
                                 f"not {sorted(unknown)}")
        return self


class ImageTests(_Strict):
    """How every new image is tested, on a fresh boot of itself."""

    tool: Literal["testinfra", "shell"] = Field(
        description="`testinfra`: the test_*.py files of include/tests/<tests>/, run with pytest-testinfra over "
                    "SSH; `shell`: its *.sh scripts, each run on the instance (exit 0: passed).")
    tests: str = Field(description="A folder of include/tests/.", examples=["appserver"])
    instance_size: str | None = Field(default=None, description="The test instance (default: the build's "
                                                                "instance_size).")

    @field_validator("tests")
    @classmethod
    def _tests_folder(cls, value: str) -> str:
        if not ROLE_NAME.match(value):
            raise ValueError("expected a folder name: letters, digits, '.', '_' or '-', not starting with '.'")
        folder = tests_folder() / value
        if not folder.is_dir():
            known = sorted(p.name for p in tests_folder().iterdir() if p.is_dir()) if tests_folder().is_dir() else []
            raise ValueError(f"no tests folder {folder} (folders: {', '.join(known) or 'none'})")
        return value

    @field_validator("instance_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is not None and value not in INSTANCE_SIZES and not INSTANCE_TYPE.match(value):
            raise ValueError(f"expected one of {', '.join(INSTANCE_SIZES)} or an instance type such as m6i.large")
        return value

    @model_validator(mode="after")
    def _files_for_tool(self) -> ImageTests:
        pattern = "test_*.py" if self.tool == "testinfra" else "*.sh"
        if not list((tests_folder() / self.tests).glob(pattern)):
            raise ValueError(f"tool {self.tool!r} runs {pattern} files, and {tests_folder() / self.tests} has none")
        return self


class Promote(_Strict):
    """The channels a tested image moves: SSM parameters <prefix>/<name>/<channel> naming the image."""

    channels: list[str] = Field(default_factory=list, description="Moved once the tests pass.",
                                examples=[["latest"]])
    approval: list[str] = Field(default_factory=list, description="Moved only once a person approves, in the "
                                                                  "Airflow UI or through its REST API.",
                                examples=[["production"]])
    approval_timeout_hours: float = Field(default=72, gt=0, le=24 * 30,
                                          description="No answer by then: the approval channels do not move.")
    allow_overrides: bool = Field(
        default=False, description="Let a run whose trigger overrides `origin` or `server_role` move `channels` "
                                   "(by default it builds and tests its image, tags it image-factory:overridden, "
                                   "and only a person's approval moves a channel to it).")

    @field_validator("channels", "approval")
    @classmethod
    def _channel_names(cls, value: list[str]) -> list[str]:
        for channel in value:
            if not CHANNEL_NAME.match(channel):
                raise ValueError(f"channel {channel!r}: expected a parameter path segment of 1-64 letters, "
                                 "digits, '.', '_' or '-'")
        if len(set(value)) != len(value):
            raise ValueError("a channel is named twice")
        return value

    @model_validator(mode="after")
    def _apart(self) -> Promote:
        both = sorted(set(self.channels) & set(self.approval))
        if both:
            raise ValueError(f"{', '.join(both)}: a channel is either moved after the tests (channels) or after "
                             "an approval (approval), not both")
        if not self.channels and not self.approval:
            raise ValueError("name at least one channel in 'channels' or 'approval'")
        return self


class Retention(_Strict):
    """Which of a spec's images the retention DAG (image_factory_retention) deprecates and deletes, per region.
    Never touched, whatever these say: an image a channel names (in any region), one an instance or a launch
    template uses, and the newest ``keep``."""

    keep: int = Field(default=5, ge=1, le=1000, description="The newest complete images kept in each region, "
                                                            "besides the protected ones.")
    deprecate_after_days: int | None = Field(
        default=None, ge=0, le=3650,
        description="Older images beyond `keep` are deprecated (EnableImageDeprecation) once this many days old.")
    delete_after_days: int | None = Field(
        default=None, ge=0, le=3650,
        description="...and deregistered, their snapshots deleted, once this many days old. With neither "
                    "days key, the images beyond `keep` are deleted.")
    keep_failed_hours: float = Field(default=24, ge=0, le=24 * 3650,
                                     description="Images that failed their tests are deleted this many hours "
                                                 "after they were made (they never count towards `keep`).")

    @model_validator(mode="after")
    def _order(self) -> Retention:
        if (self.deprecate_after_days is not None and self.delete_after_days is not None
                and self.delete_after_days <= self.deprecate_after_days):
            raise ValueError(f"delete_after_days ({self.delete_after_days}) must come after deprecate_after_days "
                             f"({self.deprecate_after_days}): an image is deprecated before it is deleted")
        return self


def _no_duplicates(values: list[str], what: str) -> list[str]:
    twice = sorted({value for value in values if values.count(value) > 1})
    if twice:
        raise ValueError(f"{what} {', '.join(map(repr, twice))} named twice")
    return values


class ShareWith(_Strict):
    """Who may launch the image and its copies (launch permissions), in every region; the accounts may also
    make volumes of their snapshots (an organization or unit gets those with the launch permission)."""

    accounts: list[str] = Field(default_factory=list, description="AWS account ids (12 digits).",
                                examples=[["123456789012"]])
    organizations: list[str] = Field(
        default_factory=list, description="Organization ARNs (arn:aws:organizations::<account>:organization/o-...).",
        examples=[["arn:aws:organizations::111122223333:organization/o-exampleorgid"]])
    organizational_units: list[str] = Field(
        default_factory=list, description="Organizational unit ARNs "
                                          "(arn:aws:organizations::<account>:ou/o-.../ou-...).",
        examples=[["arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-abcd-12345678"]])

    @field_validator("accounts")
    @classmethod
    def _accounts(cls, value: list[str]) -> list[str]:
        for account in value:
            if not ACCOUNT_ID.match(account):
                raise ValueError(f"account {account!r}: expected an AWS account id of 12 digits (quote it in YAML)")
        return _no_duplicates(value, "account")

    @field_validator("organizations")
    @classmethod
    def _organizations(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not ORGANIZATION_ARN.match(arn):
                raise ValueError(f"{arn!r}: expected an organization ARN such as "
                                 "arn:aws:organizations::111122223333:organization/o-exampleorgid")
        return _no_duplicates(value, "organization")

    @field_validator("organizational_units")
    @classmethod
    def _units(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not ORGANIZATIONAL_UNIT_ARN.match(arn):
                raise ValueError(f"{arn!r}: expected an organizational unit ARN such as "
                                 "arn:aws:organizations::111122223333:ou/o-exampleorgid/ou-abcd-12345678")
        return _no_duplicates(value, "organizational unit")

    @model_validator(mode="after")
    def _someone(self) -> ShareWith:
        if not (self.accounts or self.organizations or self.organizational_units):
            raise ValueError("name at least one of accounts, organizations or organizational_units")
        return self


class Distribute(_Strict):
    """Where the tested image goes before the channels move: copies in other regions (tagged as the original,
    each with the spec's channels), and the accounts and organizations it is shared with, in every region."""

    regions: list[str] = Field(default_factory=list, max_length=len(KNOWN_REGIONS),
                               description="Regions the image is copied into (not the build's own region); "
                                           "the channels move in each, to its copy.",
                               examples=[["us-east-1", "eu-central-1"]])
    share_with: ShareWith | None = Field(default=None, description="Launch permissions for accounts, "
                                                                   "organizations and organizational units.")

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        for region in value:
            if region not in KNOWN_REGIONS:
                close = difflib.get_close_matches(region, sorted(KNOWN_REGIONS), n=1)
                raise ValueError(f"unknown region {region!r}" + (f" (did you mean {close[0]!r}?)" if close else
                                                                 " (expected an AWS region such as us-east-1)"))
        return _no_duplicates(value, "region")

    @model_validator(mode="after")
    def _something(self) -> Distribute:
        if not self.regions and self.share_with is None:
            raise ValueError("name regions to copy the image into, or share_with, or both")
        return self


class ImageSpec(_Strict):
    """One server image: what it starts from, where it is built and how it is configured."""

    name: str = Field(description="The DAG id and the prefix of the image names: 3-100 letters, digits, '.', "
                                  "'_' or '-', starting with a letter or digit. Unique across specs.")
    platform: Literal["aws"] = Field(default="aws", description="The cloud; only `aws`.")
    origin: Origin = Field(
        description="The image to start from: an AMI id, resolve:ssm:<public parameter name>, or a mapping "
                    "with `name` and `owners` (the newest match wins).",
        examples=["resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"])
    region: str = Field(description="The AWS region the image is built in.", examples=["eu-west-1"])
    instance_size: str = Field(default="small", description="The builder instance: small, medium or large "
                                                            "(t3.*), or an instance type such as m6i.large. "
                                                            "`size` is accepted instead.")
    subnet: str | None = Field(default=None, description="${IMAGE_BUILDER_SUBNET_ID} (the build makes a subnet), "
                                                         "a subnet id, or absent (the default VPC).")
    ssh_key: str | None = Field(default=None, description="${IMAGE_BUILDER_SSH_KEY} or absent: builds always log "
                                                          "in with an ephemeral key pair of their own.")
    ssh_username: str = Field(default="ec2-user", description="The login on the origin image "
                                                              "(Ubuntu: `ubuntu`).")
    schedule: str | None = Field(default=None, description="A cron expression or a preset such as @daily; "
                                                           "absent: manual builds only.",
                                 examples=["0 2 * * *", "@daily"])
    description: str | None = Field(default=None, description="Shown with the DAG.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags added to the image; keys may not start "
                                                                   "with 'aws:' or 'image-factory:'.")
    aws_conn_id: str = Field(default="aws_default", description="The Airflow AWS connection the build uses.")
    #: Let SSH in from 0.0.0.0/0 when the provisioner CIDR says so (refused otherwise).
    allow_ssh_from_anywhere: bool = Field(default=False, description="Let SSH in from 0.0.0.0/0 when the "
                                                                     "provisioner CIDR says so (refused "
                                                                     "otherwise).")
    #: Outbound ports the builder instance may use (TCP; 53 is opened for UDP too).
    egress_ports: list[int] = Field(default_factory=lambda: [53, 80, 443],
                                    description="Outbound TCP ports the builder instance may use (53 is opened "
                                                "for UDP too).")
    #: Give the builder instance a public address (its subnet must route to an internet gateway).
    public_ip: bool = Field(default=False, description="Give the builder instance a public address (its subnet "
                                                       "must route to an internet gateway).")
    #: Also rebuild when the origin resolves to a new image (the origin watcher DAG notices it).
    rebuild_on_origin_change: bool = Field(default=False, description="Also rebuild when the origin resolves to a "
                                                                      "new image (the origin watcher DAG notices "
                                                                      "it).")
    configure: Configure | None = Field(default=None, description="How the instance is configured; absent: the "
                                                                  "image is a copy of its origin.")
    test: ImageTests | None = Field(default=None, description="How each new image is tested on a fresh boot of "
                                                              "itself; absent: images are untested (tagged so).")
    promote: Promote | None = Field(default=None, description="The channels a tested image moves; needs `test`.")
    retention: Retention | None = Field(default=None, description="Which old images are deprecated and deleted "
                                                                  "(the image_factory_retention DAG); absent: "
                                                                  "none ever are.")
    overrides: list[Literal["origin", "instance_size", "server_role", "extra_tags"]] = Field(
        default_factory=lambda: ["origin", "instance_size", "server_role", "extra_tags"],
        description="What a person triggering a build may override in the trigger form (default: all four; "
                    "[] for none). An `origin` or `server_role` override moves no channel unless "
                    "`promote.allow_overrides` says so or a person approves it.")
    distribute: Distribute | None = Field(default=None, description="Copies of the tested image in other "
                                                                    "regions, and who it is shared with; "
                                                                    "absent: the build's region only, "
                                                                    "shared with nobody.")

    @model_validator(mode="before")
    @classmethod
    def _size_alias(cls, data: Any) -> Any:
        # The seed writes both `instance_size:` (13-1, 13-3) and `size:` (13-2).
        if isinstance(data, dict) and "size" in data:
            if "instance_size" in data:
                raise ValueError("give either 'size' or 'instance_size', not both")
            data = {("instance_size" if k == "size" else k): v for k, v in data.items()}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not IMAGE_NAME.match(value):
            raise ValueError("expected 3-100 characters: letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (it becomes the DAG id and the image name)")
        return value

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str | OriginFilter) -> str | OriginFilter:
        if isinstance(value, str) and not _is_parameterised(value):
            if value.startswith(SSM_PREFIX):
                if not SSM_PARAMETER.match(value[len(SSM_PREFIX):]):
                    raise ValueError("expected resolve:ssm:/path/of/a/parameter")
            elif not AMI_ID.match(value):
                raise ValueError("expected an AMI id (ami-0123456789abcdef0), resolve:ssm:<parameter name>, "
                                 "or a mapping with 'name' and 'owners'")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _is_parameterised(value) and not REGION.match(value):
            raise ValueError("expected an AWS region such as eu-west-1")
        return value

    @field_validator("instance_size")
    @classmethod
    def _instance_size(cls, value: str) -> str:
        if value not in INSTANCE_SIZES and not INSTANCE_TYPE.match(value) and not _is_parameterised(value):
            raise ValueError(f"expected one of {', '.join(INSTANCE_SIZES)} "
                             "or an instance type such as m6i.large")
        return value

    @field_validator("ssh_key")
    @classmethod
    def _ssh_key(cls, value: str | None, info: ValidationInfo) -> str | None:
        # The build logs in with an ephemeral key pair whose private half only it holds.
        resolved = bool(info.context and info.context.get("resolved"))
        if value is not None and not resolved and value != "${IMAGE_BUILDER_SSH_KEY}":
            raise ValueError("the builder logs in with the build's ephemeral key: "
                             "write ${IMAGE_BUILDER_SSH_KEY} or leave ssh_key out")
        return value

    @field_validator("subnet")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        if value is not None and not _is_parameterised(value) and not SUBNET_ID.match(value):
            raise ValueError("expected a subnet id (subnet-...) or ${IMAGE_BUILDER_SUBNET_ID}")
        return value

    @field_validator("ssh_username")
    @classmethod
    def _ssh_username(cls, value: str) -> str:
        if not USERNAME.match(value):
            raise ValueError("expected a POSIX user name")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None or value in CRON_PRESETS:
            return value
        from croniter import croniter  # Airflow's own cron parser

        if not croniter.is_valid(value):
            raise ValueError(f"expected a cron expression or one of {', '.join(sorted(CRON_PRESETS))}")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key, tag_value in value.items():
            if not TAG_KEY.match(key) or key.startswith("image-factory:"):
                raise ValueError(f"tag key {key!r}: expected up to 128 characters, not starting with "
                                 "'aws:' or 'image-factory:'")
            if len(tag_value) > 256:
                raise ValueError(f"tag {key!r}: values are at most 256 characters")
        return value

    @field_validator("egress_ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        if any(not 0 < port < 65536 for port in value):
            raise ValueError("expected TCP ports between 1 and 65535")
        return value

    @field_validator("overrides")
    @classmethod
    def _overrides(cls, value: list[str]) -> list[str]:
        return _no_duplicates(value, "override")

    @field_validator("aws_conn_id")
    @classmethod
    def _conn_id(cls, value: str) -> str:
        if not CONN_ID.match(value):
            raise ValueError("expected an Airflow connection id")
        return value

    def with_values(self, data: dict, context: dict | None = None, quote: bool = True) -> ImageSpec:
        """A spec of this model from ``data`` (this one's, changed); raises InvalidValues naming each field
        (``quote``: and the bad values)."""
        try:
            return type(self).model_validate(data, context=context)
        except ValidationError as exc:
            problems = validation_problems(exc, quote)
            raise InvalidValues("; ".join(f"{field}: {message}" for field, message in problems),
                                fields=tuple(field for field, _ in problems)) from None

    def parameters(self) -> set[str]:
        """Every ``${NAME}`` the spec refers to."""
        return parameter_names(self.model_dump(exclude_none=True))

    @property
    def wants_builder_subnet(self) -> bool:
        return "IMAGE_BUILDER_SUBNET_ID" in self.parameters()


def instance_type(size: str) -> str:
    return INSTANCE_SIZES.get(size, size)


@dataclass(frozen=True)
class LoadedSpec:
    """A valid spec and where it came from."""

    image: ImageSpec
    path: Path
    content_hash: str  # sha256 of the file, 16 hex digits: the image's lineage

    @property
    def name(self) -> str:
        return self.image.name


def _field_path(loc: tuple) -> str:
    """``('origin', 'mapping', 'owners')`` -> ``image.origin.owners``,
    ``('egress_ports', 0)`` -> ``image.egress_ports[0]``."""
    path = "image"
    for index, part in enumerate(loc):
        if index == 1 and loc[0] == "origin" and part in ORIGIN_TAGS:
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _suggest(field: str, allowed: set[str]) -> str:
    close = difflib.get_close_matches(field, sorted(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside an annotation such as ``Configure | None`` or the ``Origin`` union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _nested_model(arg))), None)


def _model_fields(loc: tuple) -> set[str]:
    model: type[BaseModel] = ImageSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        nested = _nested_model(field.annotation) if field else None
        if nested is None:
            break
        model = nested
    fields = set(model.model_fields)
    if model is ImageSpec:
        fields.add("size")
    return fields


def validation_problems(error: ValidationError, quote: bool = True) -> list[tuple[str, str]]:
    """(field, what is wrong) for each bad field; ``quote``: with the value given, where it says something."""
    problems: dict[str, str] = {}
    for item in error.errors():
        field = _field_path(item["loc"])
        if item["type"] == "extra_forbidden":
            message = "unknown key" + _suggest(str(item["loc"][-1]), _model_fields(item["loc"]))
        elif item["type"] == "missing":
            message = "required field is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            if not quote:
                pass
            elif item["type"].endswith("_type") or item["type"] in {"literal_error", "model_type"}:
                message += f" (got {type(item['input']).__name__} {item['input']!r})"
            elif not isinstance(item["input"], dict):
                # A field's own value (a model-level check gets the whole mapping, which says nothing).
                message += f" (got {item['input']!r})"
        problems.setdefault(field, message)
    return list(problems.items())


def parse_spec(text: str, path: Path | str = "<spec>") -> ImageSpec:
    """Validate one spec's YAML text; raise :class:`SpecError` naming ``path`` and the fields."""
    try:
        document = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        raise SpecError(path, [(where, f"not valid YAML: {getattr(exc, 'problem', exc)}")]) from None
    if document is None:
        raise SpecError(path, [("image", "the file is empty; "
                                         "expected a mapping with a top-level 'image:' key")])
    if not isinstance(document, dict):
        raise SpecError(path, [("image", f"expected a mapping with a top-level 'image:' key, "
                                         f"got {type(document).__name__}")])
    if "image" not in document:
        found = ", ".join(repr(str(key)) for key in document)
        message = "required top-level key is missing; the image's fields go under 'image:'"
        raise SpecError(path, [("image", message + (f" (found {found})" if found else ""))])
    extra = [key for key in document if key != "image"]
    if extra:
        raise SpecError(path, [(str(key), "unknown top-level key" + _suggest(str(key), {"image"}))
                               for key in extra])
    body = document["image"]
    if not isinstance(body, dict):
        raise SpecError(path, [("image", f"expected a mapping, got {type(body).__name__}")])
    try:
        spec = ImageSpec.model_validate(body)
    except ValidationError as exc:
        raise SpecError(path, validation_problems(exc)) from None
    problems = check_parameters(spec)
    if spec.promote is not None and spec.test is None:
        problems.append(("image.promote", "needs a test section: channels only ever point at tested images"))
    if spec.distribute is not None and spec.region in spec.distribute.regions:
        problems.append(("image.distribute.regions", f"{spec.region} is the build's own region: the image is "
                                                     "there already; name only the regions it is copied into"))
    if problems:
        raise SpecError(path, problems)
    return spec


def load_spec(path: Path) -> LoadedSpec:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(path, [("image", "the file is not UTF-8 text")]) from None
    return LoadedSpec(parse_spec(text, path), path, hashlib.sha256(raw).hexdigest()[:16])


def load_specs(folder: Path, only: str | None = None) -> tuple[list[LoadedSpec], list[SpecError]]:
    """Every valid spec in ``folder`` and an error for each bad one; one bad file never hides the others.

    Two specs with the same name are both rejected: neither may silently replace the other's DAG.
    ``only``: read only the files that mention this name (a task process needs its own spec, not a folder's).
    """
    specs: list[LoadedSpec] = []
    errors: list[SpecError] = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        if only is not None and only.encode() not in path.read_bytes():
            continue  # cannot define it
        try:
            specs.append(load_spec(path))
        except SpecError as exc:
            errors.append(exc)
    by_name: dict[str, list[LoadedSpec]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec)
    unique = []
    for name, same in by_name.items():
        if len(same) == 1:
            unique.append(same[0])
            continue
        files = ", ".join(s.path.name for s in same)
        errors.extend(SpecError(s.path, [("image.name", f"{name!r} is used by several specs ({files})")])
                      for s in same)
    if only is None:  # (a task process reads only its own spec: the dag-processor has checked the others)
        unique, errors = _check_channel_origins(unique, errors)
    return sorted(unique, key=lambda s: s.name), errors


def _check_channel_origins(specs: list[LoadedSpec], errors: list[SpecError]):
    """A spec built on another spec's channel: that spec must exist and promote that channel."""
    by_name = {spec.name: spec for spec in specs}
    good = []
    for spec in specs:
        base = channel_of(spec.image.origin)
        if base is None:
            good.append(spec)
            continue
        name, channel = base
        if name not in by_name:
            problem = f"names channel {channel!r} of spec {name!r}, and no spec of that name is loaded"
        elif channel not in (promoted := _channels(by_name[name].image)):
            problem = (f"names channel {channel!r} of spec {name!r}, which promotes "
                       f"{', '.join(promoted) or 'no channel'}")
        else:
            good.append(spec)
            continue
        errors.append(SpecError(spec.path, [("image.origin", problem)]))
    return good, errors


def _channels(spec: ImageSpec) -> list[str]:
    return [*spec.promote.channels, *spec.promote.approval] if spec.promote else []
