"""Image specs: YAML files -> validated models.

A spec is one YAML file with a top-level ``image:`` key, in the shape of the seed's Examples 13-1 to 13-3.
Validation is strict (unknown keys, wrong types and bad values are errors) and every error names the file
and the field. ``${NAME}`` parameters are only recorded here; they are resolved at run time
(see :mod:`image_factory.parameters`). A file's bytes and YAML are read by :mod:`image_factory.spec_file`.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import re
import unicodedata
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

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
from image_factory.spec_file import QUOTE_LENGTH, FileProblem, cut, read_bytes, read_yaml, shown

#: The seed's sizes, mapped to instance types. A literal instance type (``m6i.large``) is accepted as well.
INSTANCE_SIZES = {"small": "t3.small", "medium": "t3.medium", "large": "t3.large"}

AMI_ID = re.compile(r"^ami-[0-9a-f]{8}([0-9a-f]{9})?\Z")
INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+\Z")
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]\Z")
#: The build names its image ``<name>-<YYYYmmdd-HHMMSS>-b<12 hex digits>`` (steps/image.py image_name, with
#: build.build_id_for), and AWS allows 128 characters: 30 are the build's.
MAX_NAME_LENGTH = 128 - len("-20250101-000000-b0123456789ab")
# DAG ids and AMI names both accept this (the patterns end in \Z: '$' would let a final newline through).
IMAGE_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{2,{MAX_NAME_LENGTH - 1}}}\Z")
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
#: The ansible tool's ``code_repo``: a relative folder path, each part a name like a role's (no '.', '..').
ANSIBLE_SOURCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}){0,7}\Z")
SSM_PREFIX = "resolve:ssm:"
SSM_PARAMETER = re.compile(r"^/[A-Za-z0-9_./-]{1,2047}\Z")
SUBNET_ID = re.compile(r"^subnet-[0-9a-f]{8,17}\Z")
USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\Z")
CONN_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}\Z")
TAG_KEY = re.compile(r"^(?!aws:)[\w .:/=+@-]{1,128}\Z")
CRON_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"}
#: The tools that configure the builder instance; ``command`` takes its command line from the spec.
TOOLS = ("shell", "servermaker", "command", "ansible")
#: A channel: one segment of an SSM parameter path (letters, digits, '.', '_', '-').
CHANNEL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
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
ACCOUNT_ID = re.compile(r"^[0-9]{12}\Z")
ORGANIZATION_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:organizations::[0-9]{12}:organization/o-[a-z0-9]{10,32}\Z")
ORGANIZATIONAL_UNIT_ARN = re.compile(
    r"^arn:aws(-cn|-us-gov)?:organizations::[0-9]{12}:ou/o-[a-z0-9]{10,32}/ou-[a-z0-9]{4,32}-[a-z0-9]{8,32}\Z")
#: The tags the factory puts on an image (Name and build.py's TAG_* but TAG_INSTANCE, TAG_KEEP_UNTIL and TAG_LOGIN,
#: which are on a build's instances and what a failed one keeps; the SBOM's and a revocation's included): AWS
#: allows 50 on a resource; the rest are the spec's (with a trigger's extra_tags).
FACTORY_IMAGE_TAGS = 21
MAX_SPEC_TAGS = 50 - FACTORY_IMAGE_TAGS
MAX_TAG_VALUE = 256
#: Tag key prefixes AWS or the factory reserve (compared with a key's look-alike skeleton, see _tag_skeleton).
RESERVED_TAG_PREFIXES = ("aws:", "image-factory:")
MAX_DESCRIPTION = 1000
#: Free-text values (a command template, a code_repo for the command tools, an origin owner).
MAX_TEXT = 4096
#: Problems listed for one file; the rest are counted.
MAX_PROBLEMS = 20
#: An SNS topic's ARN (topic names: 1-256 letters, digits, '_' or '-'; a FIFO topic's ends in .fifo).
SNS_TOPIC_ARN = re.compile(r"^arn:aws(-cn|-us-gov)?:sns:[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]:[0-9]{12}:"
                           r"[A-Za-z0-9_-]{1,256}(\.fifo)?\Z")
#: What a spec's notify section may be told about.
NOTIFY_EVENTS = ("failure", "promotion", "approval", "deadline", "revocation")
#: Instance types a spec may name in its list of fallbacks.
MAX_INSTANCE_TYPES = 10
#: Where public AMI parameters are (the only SSM parameters an origin names, besides the factory's channels).
PUBLIC_PARAMETERS = "/aws/service/"
#: A launch template's name (AWS: 3-128 of these), an Auto Scaling group's (AWS allows more; these suffice).
LAUNCH_TEMPLATE_NAME = re.compile(r"^[A-Za-z0-9().\-/_]{3,128}\Z")
AUTO_SCALING_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:/@=+-]{0,254}\Z")


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


#: Letters of other scripts that look like the Latin ones of the reserved prefixes, and dashes and colons that
#: look like '-' and ':' (NFKD already maps the fullwidth and compatibility forms).
_LOOK_ALIKES = str.maketrans({
    **dict.fromkeys("\u0430\u03b1\u0251", "a"), **dict.fromkeys("\u0441\u03f2", "c"),
    **dict.fromkeys("\u0435\u0454", "e"), **dict.fromkeys("\u0261\u0581", "g"),
    **dict.fromkeys("\u0456\u03b9\u0131\u04cf\u0269\u0457", "i"), **dict.fromkeys("\u043e\u03bf\u0585", "o"),
    **dict.fromkeys("\u0433", "r"), **dict.fromkeys("\u0455", "s"), **dict.fromkeys("\u0442\u03c4", "t"),
    **dict.fromkeys("\u051d\u03c9\u0461", "w"), **dict.fromkeys("\u0443\u04af", "y"),
    **dict.fromkeys("\u043c", "m"), **dict.fromkeys("\u0493", "f"),
    **dict.fromkeys("\u02d0\u02f8\u2236\ua789\u0589\u05c3\u16ec\ufe13", ":"),
})


def _tag_skeleton(key: str) -> str:
    """What a tag key looks like to a person: compatibility forms folded (NFKD), accents, invisible characters
    and case dropped, look-alike letters of other scripts read as Latin, and only letters, digits and ':' kept
    (``Image_Factory :spec``, and the same in fullwidth letters or with a Cyrillic i, are all
    ``imagefactory:spec``)."""
    text = unicodedata.normalize("NFKD", key).casefold().translate(_LOOK_ALIKES)
    return "".join(c for c in text if c == ":" or (c.isalnum() and not unicodedata.combining(c)))


_RESERVED_SKELETONS = tuple(_tag_skeleton(prefix) for prefix in RESERVED_TAG_PREFIXES)


def _tag_key_problem(key: str) -> str | None:
    if _tag_skeleton(key).startswith(_RESERVED_SKELETONS):
        return (f"tag key {shown(key)}: expected a key not starting with "
                f"{' or '.join(map(repr, RESERVED_TAG_PREFIXES))}, in any case or in characters that look like "
                "them (those are reserved)")
    if not TAG_KEY.match(key):
        return (f"tag key {shown(key)}: expected 1-128 characters, each a letter, a digit, a space or one of "
                "_ . : / = + - @")
    return None


def _origin_parameter_problem(name: str) -> str | None:
    """Why ``resolve:ssm:<name>`` may not be an origin (None: it may)."""
    allowed = (f"an origin may name only a public AMI parameter ({PUBLIC_PARAMETERS}...) or a spec's channel "
               f"({channel_prefix()}/<spec>/<channel>)")
    if not SSM_PARAMETER.match(name):
        return f"expected resolve:ssm:/path/of/a/parameter; {allowed}"
    segments = name.split("/")[1:]
    if name.startswith(PUBLIC_PARAMETERS) and len(segments) > 2 and all(p not in ("", ".", "..") for p in segments):
        return None
    head, _, rest = name.partition(channel_prefix() + "/")
    parts = rest.split("/")
    if not head and len(parts) == 2 and IMAGE_NAME.match(parts[0]) and CHANNEL_NAME.match(parts[1]) \
            and parts[1] not in (".", ".."):
        return None
    return allowed


def _walk_tests_folder(folder: Path) -> tuple[Path | None, list[str]]:
    """The first symbolic link found in ``folder`` or below it (relative to it; links are not followed), and the
    names in ``folder`` itself (one pass for both)."""
    names: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        with os.scandir(current) as entries:
            for entry in entries:
                if entry.is_symlink():
                    return Path(entry.path).relative_to(folder), names
                if current == folder:
                    names.append(entry.name)
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
    return None, names


def _size_problem(value: str) -> str | None:
    if value in INSTANCE_SIZES or INSTANCE_TYPE.match(value) or _is_parameterised(value):
        return None
    return f"expected one of {', '.join(INSTANCE_SIZES)} or an instance type such as m6i.large"


def _check_sizes(value: str | list[str]) -> str | list[str]:
    """A size, or a list of sizes in order of preference (the next is tried when AWS has no capacity for one)."""
    if isinstance(value, str):
        problem = _size_problem(value)
        if problem:
            raise ValueError(problem)
        return value
    if not value:
        raise ValueError("expected at least one instance size or type (a list is tried in order)")
    if len(value) > MAX_INSTANCE_TYPES:
        raise ValueError(f"{len(value)} instance types; at most {MAX_INSTANCE_TYPES} are tried")
    for index, size in enumerate(value):
        problem = _size_problem(size)
        if problem:
            raise ValueError(f"[{index}] {shown(size)}: {problem}")
    types = [instance_type(size) for size in value]
    _no_duplicates(types, "instance type")
    return value


def _size_kind(value: Any) -> str:
    return "list" if isinstance(value, list | tuple) else "string"


#: ``instance_size``: one size, or a list tried in order (tags left out of error locations, as the origin's).
SIZE_TAGS = ("string", "list")
InstanceSize = Annotated[
    Annotated[str, Tag("string")] | Annotated[list[str], Tag("list")],
    Discriminator(_size_kind),
]


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
    instance_size: InstanceSize | None = Field(
        default=None, description="The test instance: a size or a list tried in order, as the build's "
                                  "(default: the build's instance_size).")

    @field_validator("tests")
    @classmethod
    def _tests_folder(cls, value: str) -> str:
        if not ROLE_NAME.match(value):
            raise ValueError("expected a folder name: letters, digits, '.', '_' or '-', not starting with '.'")
        folder = tests_folder() / value
        # As a role's: the tests copied to the test instance are the folder's own plain files.
        if folder.is_symlink():
            raise ValueError(f"{folder} is a symbolic link; a tests folder holds plain files")
        try:
            if not folder.is_dir():
                known = sorted(p.name for p in tests_folder().iterdir()
                               if p.is_dir() and not p.is_symlink()) if tests_folder().is_dir() else []
                raise ValueError(f"no tests folder {folder} (folders: {', '.join(known) or 'none'})")
        except OSError as exc:
            raise ValueError(f"cannot read the tests folder {folder}: {exc.strerror or exc}") from None
        return value

    @field_validator("instance_size")
    @classmethod
    def _size(cls, value: str | list[str] | None) -> str | list[str] | None:
        return None if value is None else _check_sizes(value)

    @model_validator(mode="after")
    def _files_for_tool(self) -> ImageTests:
        pattern = "test_*.py" if self.tool == "testinfra" else "*.sh"
        folder = tests_folder() / self.tests
        try:
            linked, names = _walk_tests_folder(folder)
        except OSError as exc:
            raise ValueError(f"cannot read the tests folder {folder}: {exc.strerror or exc}") from None
        if linked is not None:
            raise ValueError(f"{linked} in {folder} is a symbolic link; a tests folder holds plain files")
        if not fnmatch.filter(names, pattern):
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
                raise ValueError(f"channel {shown(channel)}: expected a parameter path segment of 1-64 letters, "
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
    keep_revoked_days: int = Field(default=30, ge=0, le=3650,
                                   description="A revoked image (`image-factory revoke`) is never deleted before "
                                               "this many days after its revocation: the evidence stays.")

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
        raise ValueError(f"{what} {', '.join(map(shown, twice[:5]))} named twice")
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
                raise ValueError(f"account {shown(account)}: expected an AWS account id of 12 digits "
                                 "(quote it in YAML)")
        return _no_duplicates(value, "account")

    @field_validator("organizations")
    @classmethod
    def _organizations(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not ORGANIZATION_ARN.match(arn):
                raise ValueError(f"{shown(arn)}: expected an organization ARN such as "
                                 "arn:aws:organizations::111122223333:organization/o-exampleorgid")
        return _no_duplicates(value, "organization")

    @field_validator("organizational_units")
    @classmethod
    def _units(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not ORGANIZATIONAL_UNIT_ARN.match(arn):
                raise ValueError(f"{shown(arn)}: expected an organizational unit ARN such as "
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
                raise ValueError(f"unknown region {shown(region)}" + (f" (did you mean {close[0]!r}?)" if close else
                                                                 " (expected an AWS region such as us-east-1)"))
        return _no_duplicates(value, "region")

    @model_validator(mode="after")
    def _something(self) -> Distribute:
        if not self.regions and self.share_with is None:
            raise ValueError("name regions to copy the image into, or share_with, or both")
        return self


class Notify(_Strict):
    """Messages to an SNS topic, sent with the Amazon provider's notifier through the spec's AWS connection."""

    sns_topic_arn: str | None = Field(
        default=None, description="The topic (arn:aws:sns:<region>:<account>:<name>); absent: the deployment's "
                                  "[image_factory] sns_topic_arn.",
        examples=["arn:aws:sns:eu-west-1:123456789012:image-builds"])
    events: list[Literal["failure", "promotion", "approval", "deadline", "revocation"]] = Field(
        default_factory=lambda: list(NOTIFY_EVENTS),
        description="What is sent: `failure` (a failed task of a build: the task, its error, a link), `promotion` "
                    "(channels moved: the image, channels, regions), `approval` (a promotion waiting for a "
                    "person: who is asked, a link), `deadline` (a build running past `deadline_minutes`), "
                    "`revocation` (an image of the spec revoked: by whom, why, the channels moved back). "
                    "Default: all five.")

    @field_validator("sns_topic_arn")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not SNS_TOPIC_ARN.match(value):
            raise ValueError("expected an SNS topic ARN: arn:aws:sns:<region>:<12-digit account>:<topic name>")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return _no_duplicates(value, "event")


class Rollout(_Strict):
    """After a promotion: the channel's new image in launch templates, and instance refreshes of the Auto
    Scaling groups that use them, in every region the channel moves in."""

    channel: str = Field(description="A channel of `promote` (`channels` or `approval`): once it moves, this "
                                     "entry rolls its new image out.", examples=["latest"])
    launch_templates: list[str] = Field(min_length=1, description="Launch templates (by name) that get a new "
                                        "version naming the image, their other settings as in their default "
                                        "version.", examples=[["web-lt"]])
    set_default: bool = Field(default=True, description="Make the new version each template's default version.")
    auto_scaling_groups: list[str] = Field(default_factory=list, description="Auto Scaling groups (by name) "
                                           "whose instances are replaced by an instance refresh once the templates "
                                           "name the image; the build follows each refresh to its end.",
                                           examples=[["web-asg"]])
    min_healthy_percentage: int = Field(default=90, ge=0, le=100, description="The share of each group's "
                                        "capacity kept in service during its refresh.")

    @field_validator("launch_templates")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        for name in value:
            if not LAUNCH_TEMPLATE_NAME.match(name):
                raise ValueError(f"launch template {shown(name)}: expected 3-128 letters, digits or ().-/_")
        return _no_duplicates(value, "launch template")

    @field_validator("auto_scaling_groups")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for name in value:
            if not AUTO_SCALING_GROUP_NAME.match(name):
                raise ValueError(f"Auto Scaling group {shown(name)}: expected a group's name (1-255 letters, "
                                 "digits, spaces or ._:/@=+-)")
        return _no_duplicates(value, "Auto Scaling group")


class ImageSpec(_Strict):
    """One server image: what it starts from, where it is built and how it is configured."""

    name: str = Field(description=f"The DAG id and the prefix of the image names: 3-{MAX_NAME_LENGTH} letters, "
                                  "digits, '.', '_' or '-', starting with a letter or digit. Unique across specs.")
    platform: Literal["aws"] = Field(default="aws", description="The cloud; only `aws`.")
    origin: Origin = Field(
        description="The image to start from: an AMI id, resolve:ssm:<public parameter name>, or a mapping "
                    "with `name` and `owners` (the newest match wins).",
        examples=["resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"])
    region: str = Field(description="The AWS region the image is built in.", examples=["eu-west-1"])
    instance_size: InstanceSize = Field(
        default="small", description="The builder instance: small, medium or large (t3.*), or an instance type "
                                     "such as m6i.large; or a list of them in order of preference, the next tried "
                                     "when AWS has no capacity for one (or does not offer it in the zone). `size` "
                                     "is accepted instead.")
    subnet: str | None = Field(default=None, description="${IMAGE_BUILDER_SUBNET_ID} (the build makes a subnet), "
                                                         "a subnet id, or absent (the default VPC).")
    ssh_key: str | None = Field(default=None, description="${IMAGE_BUILDER_SSH_KEY} or absent: builds always log "
                                                          "in with an ephemeral key pair of their own.")
    ssh_username: str = Field(default="ec2-user", description="The login on the origin image "
                                                              "(Ubuntu: `ubuntu`).")
    schedule: str | None = Field(default=None, description="A cron expression or a preset such as @daily; "
                                                           "absent: manual builds only.",
                                 examples=["0 2 * * *", "@daily"])
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION, description="Shown with the DAG.")
    tags: dict[str, str] = Field(default_factory=dict, description=f"Tags added to the image, at most "
                                                                   f"{MAX_SPEC_TAGS}; keys may not start with "
                                                                   "'aws:' or 'image-factory:' (in any case).")
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
    overrides: list[Literal["origin", "instance_size", "server_role", "extra_tags", "keep_on_failure_hours"]] = Field(
        default_factory=lambda: ["origin", "instance_size", "server_role", "extra_tags", "keep_on_failure_hours"],
        description="What a person triggering a build may override in the trigger form (default: all five; "
                    "[] for none). An `origin` or `server_role` override moves no channel unless "
                    "`promote.allow_overrides` says so or a person approves it.")
    distribute: Distribute | None = Field(default=None, description="Copies of the tested image in other "
                                                                    "regions, and who it is shared with; "
                                                                    "absent: the build's region only, "
                                                                    "shared with nobody.")
    notify: Notify | None = Field(default=None, description="Messages about the builds to an SNS topic; absent: "
                                                            "to the deployment's [image_factory] sns_topic_arn, if "
                                                            "set, about all five events.")
    keep_on_failure_hours: int = Field(default=0, ge=0, le=24,
                                       description="When `configure` or `test_image` fails, the instance it ran "
                                                   "on stays this many hours (with its security group, subnet, "
                                                   "key pair and the key's parameter) to be looked at: "
                                                   "`image-factory ssh BUILD_ID`, `image-factory release "
                                                   "BUILD_ID`; the sweeper tears it down after. 0: nothing "
                                                   "stays.")
    rollout: list[Rollout] | None = Field(
        default=None, description="After a promotion, per channel: a new version of launch templates naming the "
                                  "image, and instance refreshes of Auto Scaling groups, followed to their end "
                                  "(task roll_out); absent: nothing is rolled out.")
    sbom: bool = Field(default=True, description="Write the image's CycloneDX SBOM (its operating system and "
                                                 "every package) to the deployment's [image_factory] sbom_bucket, "
                                                 "tagged on the image (image-factory:sbom); false: none.")
    deadline_minutes: int | None = Field(default=None, ge=1, le=7 * 24 * 60,
                                         description="A build still running this many minutes after it was "
                                                     "queued is reported (notify event `deadline`; Airflow's "
                                                     "deadline alerts). Absent: no deadline.")

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
            raise ValueError(f"expected 3-{MAX_NAME_LENGTH} characters: letters, digits, '.', '_' or '-', "
                             "starting with a letter or digit (it becomes the DAG id and, with the build's "
                             "date and id, the 128-character image name)")
        return value

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str | OriginFilter) -> str | OriginFilter:
        if isinstance(value, str) and not _is_parameterised(value):
            if value.startswith(SSM_PREFIX):
                problem = _origin_parameter_problem(value[len(SSM_PREFIX):])
                if problem:
                    raise ValueError(problem)
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
    def _instance_size(cls, value: str | list[str]) -> str | list[str]:
        return _check_sizes(value)

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
        if len(value) > MAX_SPEC_TAGS:
            raise ValueError(f"{len(value)} tags; a spec gives at most {MAX_SPEC_TAGS} tags (an image has at most "
                             f"50, and the factory adds up to {FACTORY_IMAGE_TAGS} of its own; a trigger's "
                             "extra_tags count here too)")
        for key, tag_value in value.items():
            problem = _tag_key_problem(key)
            if problem:
                raise ValueError(problem)
            if len(tag_value) > MAX_TAG_VALUE:
                raise ValueError(f"tag {shown(key)}: values are at most {MAX_TAG_VALUE} characters")
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


def instance_type(size: str | list[str]) -> str:
    """The instance type of a size (``small`` -> ``t3.small``); of a list, its types in order, as people read
    them (``t3.small, then t3a.small``)."""
    if isinstance(size, list | tuple):
        return ", then ".join(instance_types(size))
    return INSTANCE_SIZES.get(size, size)


def instance_types(size: str | list[str]) -> list[str]:
    """The instance types to try, in order: one for a size, each of a list's."""
    return [INSTANCE_SIZES.get(s, s) for s in ([size] if isinstance(size, str) else size)]


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
        if index == 1 and loc[0] == "instance_size" and part in SIZE_TAGS:
            continue
        if index == 2 and loc[:2] == ("test", "instance_size") and part in SIZE_TAGS:
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{cut(str(part))}"
    return path


def _suggest(field: str, allowed: set[str]) -> str:
    if len(field) > QUOTE_LENGTH:
        return ""
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
                message += f" (got {type(item['input']).__name__} {shown(item['input'])})"
            elif not isinstance(item["input"], dict):
                # A field's own value (a model-level check gets the whole mapping, which says nothing).
                message += f" (got {shown(item['input'])})"
        problems.setdefault(field, message)
    listed = list(problems.items())
    if len(listed) > MAX_PROBLEMS:  # (a list of ten thousand bad items is not ten thousand lines)
        listed = [*listed[:MAX_PROBLEMS], ("image", f"and {len(listed) - MAX_PROBLEMS} more problems")]
    return listed


def parse_spec(text: str, path: Path | str = "<spec>") -> ImageSpec:
    """Validate one spec's YAML text; raise :class:`SpecError` naming ``path`` and the fields."""
    with _as_spec_error(path):
        document = read_yaml(text)
    if document is None:
        raise SpecError(path, [("image", "the file is empty; "
                                         "expected a mapping with a top-level 'image:' key")])
    if not isinstance(document, dict):
        raise SpecError(path, [("image", f"expected a mapping with a top-level 'image:' key, "
                                         f"got {type(document).__name__}")])
    if "image" not in document:
        found = ", ".join(shown(str(key)) for key in list(document)[:5]) + (", ..." * (len(document) > 5))
        message = "required top-level key is missing; the image's fields go under 'image:'"
        raise SpecError(path, [("image", message + (f" (found {found})" if found else ""))])
    extra = [key for key in document if key != "image"]
    if extra:
        raise SpecError(path, [(cut(str(key)), "unknown top-level key" + _suggest(str(key), {"image"}))
                               for key in extra[:MAX_PROBLEMS]])
    body = document["image"]
    if not isinstance(body, dict):
        raise SpecError(path, [("image", f"expected a mapping, got {type(body).__name__}")])
    try:
        spec = ImageSpec.model_validate(body)
    except ValidationError as exc:
        raise SpecError(path, validation_problems(exc)) from None
    problems = check_parameters(spec.model_dump(exclude_none=True))
    if spec.promote is not None and spec.test is None:
        problems.append(("image.promote", "needs a test section: channels only ever point at tested images"))
    moved = _channels(spec)
    for index, entry in enumerate(spec.rollout or []):
        if entry.channel not in moved:
            problems.append((f"image.rollout[{index}].channel",
                             f"{shown(entry.channel)} is not a channel of promote (it promotes "
                             f"{', '.join(moved) or 'no channel'}): only a channel that moves is rolled out"))
    if len({entry.channel for entry in spec.rollout or []}) < len(spec.rollout or []):
        problems.append(("image.rollout", "a channel has two entries: give each channel one"))
    if spec.distribute is not None and spec.region in spec.distribute.regions:
        problems.append(("image.distribute.regions", f"{spec.region} is the build's own region: the image is "
                                                     "there already; name only the regions it is copied into"))
    if problems:
        raise SpecError(path, problems)
    return spec


@contextmanager
def _as_spec_error(path: Path | str):
    """A problem :mod:`image_factory.spec_file` found, as the file's SpecError."""
    try:
        yield
    except FileProblem as problem:
        raise SpecError(path, [(problem.where, problem.message)]) from None


def read_spec_file(path: Path) -> bytes:
    with _as_spec_error(path):
        return read_bytes(path)


def _loaded(path: Path, raw: bytes) -> LoadedSpec:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(path, [("image", "the file is not UTF-8 text")]) from None
    return LoadedSpec(parse_spec(text, path), path, hashlib.sha256(raw).hexdigest()[:16])


def load_spec(path: Path) -> LoadedSpec:
    return _loaded(path, read_spec_file(path))


def load_specs(folder: Path, only: str | None = None) -> tuple[list[LoadedSpec], list[SpecError]]:
    """Every valid spec in ``folder`` and an error for each bad one; one bad file never hides the others.

    Two specs with the same name are both rejected: neither may silently replace the other's DAG.
    ``only``: read only the files that mention this name (a task process needs its own spec, not a folder's).
    """
    specs: list[LoadedSpec] = []
    errors: list[SpecError] = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        # Whatever is wrong with one entry (a folder, a link to nothing, a file nobody may read, a value
        # nothing foresaw) is that entry's error: never an exception that hides the other specs.
        try:
            raw = read_spec_file(path)
            if only is not None and only.encode() not in raw:
                continue  # cannot define it
            specs.append(_loaded(path, raw))
        except SpecError as exc:
            errors.append(exc)
        except Exception as exc:  # (reported as the file's error)
            errors.append(SpecError(path, [("image", f"could not be loaded: {type(exc).__name__}: "
                                                     f"{cut(str(exc), 200)}")]))
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
