"""Image Factory's command line: check spec files, show what a build of a spec will do, list its images.

    python -m image_factory validate FILE_OR_FOLDER...       one line per problem; exit 0 only if all are good
    python -m image_factory render SPEC [--param NAME=VALUE]  the build's plan as YAML, no network call
    python -m image_factory list SPEC [--region R]            the spec's images, their tests and channels
    python -m image_factory show IMAGE [--region R]           an image's lineage back to its root origin
    python -m image_factory revoke IMAGE --reason TEXT [--descendants]  take an image out of use (revocation.py)
    python -m image_factory restore IMAGE                     take a revocation back
    python -m image_factory rollback SPEC CHANNEL [--to AMI]  move a channel back, in every region at once
    python -m image_factory schema                            the JSON Schema of spec files

``SPEC`` is a spec file or, for ``render`` and ``list``, the name of a spec in the specs folder. Exit codes:
0 success, 1 a bad spec or a failed call, 2 a usage error. ``validate`` and ``schema`` import neither Airflow
nor boto3; ``render`` reads the ``[image_factory]`` settings (Airflow's config); ``list`` calls EC2 through
the Airflow AWS connection (``AIRFLOW_CONN_AWS_DEFAULT`` with an ``endpoint_url`` reaches an emulator).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from image_factory import parameters
from image_factory.errors import PermanentError
from image_factory.parameters import BUILDER_OUTPUTS
from image_factory.spec import (
    IMAGE_NAME,
    SSM_PREFIX,
    LoadedSpec,
    OriginFilter,
    SpecError,
    instance_type,
    load_spec,
    load_specs,
)

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_SPECS = PROJECT / "include" / "specs"

OK, PROBLEMS, USAGE = 0, 1, 2
MADE_BY_INFRASTRUCTURE = "<made by create_builder_network>"
MADE_BY_ORIGIN = "<resolved by create_builder_network>"
AT_RUN_TIME = "(resolved at run time)"


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class Failure(Exception):
    """The command could not do its job (a bad spec, a refused call): exit code 1."""


def _quiet_airflow() -> None:
    # Airflow logs to stdout; keep its informational lines out of this command's output.
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")


# --- validate -----------------------------------------------------------------------------------------

def _spec_files(arguments: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted([*path.glob("*.yaml"), *path.glob("*.yml")])
            if not found:
                raise UsageError(f"{path}: no *.yaml or *.yml files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    unique: dict[Path, Path] = {}
    for path in files:
        unique.setdefault(path.resolve(), path)  # a file given twice is validated once
    return list(unique.values())


def _load(path: Path) -> LoadedSpec:
    try:
        return load_spec(path)
    except OSError as exc:
        raise SpecError(path, [("image", f"cannot read the file: {exc.strerror or exc}")]) from None


def validate(arguments: Sequence[str]) -> int:
    """Print ``path: ok`` or one ``path: field: message`` line per problem for each file."""
    files = _spec_files(arguments)
    loaded: dict[Path, LoadedSpec] = {}
    errors: dict[Path, SpecError] = {}
    for path in files:
        try:
            loaded[path] = _load(path)
        except SpecError as exc:
            errors[path] = exc
    # As in the specs folder: two specs with the same name are both rejected (each would be the same DAG).
    by_name: dict[str, list[LoadedSpec]] = {}
    for spec in loaded.values():
        by_name.setdefault(spec.name, []).append(spec)
    for name, same in by_name.items():
        if len(same) > 1:
            others = ", ".join(str(s.path) for s in same)
            for spec in same:
                errors[spec.path] = SpecError(spec.path, [("image.name", f"{name!r} is used by several specs "
                                                                         f"({others})")])
    for path in files:
        print(errors.get(path, f"{path}: ok"))
    return PROBLEMS if errors else OK


# --- finding one spec -----------------------------------------------------------------------------------

def _is_file_argument(argument: str) -> bool:
    return Path(argument).is_file() or argument.endswith((".yaml", ".yml")) or "/" in argument


def _specs_folder() -> Path:
    from image_factory.settings import specs_folder

    return specs_folder(DEFAULT_SPECS)


def _find_spec(argument: str) -> LoadedSpec | None:
    """The spec file ``argument``, or the spec named ``argument`` in the specs folder (None if there is none)."""
    if _is_file_argument(argument):
        if not Path(argument).is_file():
            raise UsageError(f"{argument}: no such file")
        try:
            return _load(Path(argument))
        except SpecError as exc:
            raise Failure(str(exc)) from None
    if not IMAGE_NAME.match(argument):
        raise UsageError(f"{argument!r} is neither a spec file nor a spec name")
    folder = _specs_folder()
    specs, _ = load_specs(folder) if folder.is_dir() else ([], [])
    return next((s for s in specs if s.name == argument), None)


# --- render ---------------------------------------------------------------------------------------------

class Command(str):
    """A command line, dumped as a literal block so that it reads exactly as it will run."""


class _PlanDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_command(dumper: yaml.SafeDumper, data: Command) -> yaml.ScalarNode:
    # As it is when YAML needs no quotes, else a literal block: never quoted, never escaped.
    plain = dumper.analyze_scalar(str(data)).allow_block_plain and "\n" not in data
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=None if plain else "|")


_PlanDumper.add_representer(Command, _represent_command)


def _parse_params(items: Sequence[str]) -> dict[str, str]:
    given = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not parameters.NAME.match(name):
            raise UsageError(f"--param {item!r}: expected NAME=VALUE with an upper-case NAME")
        given[name] = value
    return given


class _Parameters:
    """The values known at render time (``--param``, then the environment) and how to show the others."""

    def __init__(self, loaded: LoadedSpec, given: dict[str, str], environment: dict[str, str]):
        self.spec = loaded.image
        lookup = parameters.chain(given, environment)
        self.values: dict[str, str] = {}
        for name in sorted(self.spec.parameters() - set(BUILDER_OUTPUTS)):
            if lookup(name) is None:
                continue
            try:
                self.values[name] = parameters.resolve_text(f"${{{name}}}", lookup, spec_name=self.spec.name,
                                                            field=name)
            except parameters.ParameterError:
                continue  # refers to a parameter known only at run time

    def resolved_spec(self):
        """The spec with every field whose parameters are all known resolved, and validated like a build does."""
        data = self.spec.model_dump(exclude_none=True)
        fields = tuple(k for k, v in data.items() if parameters.parameter_names(v) <= set(self.values))
        try:
            return parameters.resolve(self.spec, parameters.chain(self.values), fields)
        except parameters.ParameterError as exc:
            raise Failure(str(exc)) from None

    def table(self) -> dict[str, str]:
        """Each parameter's value, or itself (which :meth:`show` marks)."""
        return {name: self.values.get(name, f"${{{name}}}") for name in sorted(self.spec.parameters())}

    def unresolved(self, text: str) -> list[str]:
        return [n for n in parameters.PARAMETER_PATTERN.findall(text) if n not in self.values]

    def show(self, value: Any) -> Any:
        """``value`` with the parameters left in it marked (commands are left exactly as they will run)."""
        if isinstance(value, Command):
            return value
        if isinstance(value, str):
            def mark(match) -> str:
                name = match.group(1)
                return MADE_BY_INFRASTRUCTURE if name in BUILDER_OUTPUTS else f"{match.group(0)} {AT_RUN_TIME}"

            return parameters.PARAMETER_PATTERN.sub(mark, value)
        if isinstance(value, dict):
            return {self.show(k): self.show(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.show(v) for v in value]
        return value


def _shown_path(path: Path) -> str:
    """Relative to the project when it is inside it."""
    return str(path.relative_to(PROJECT)) if path.resolve().is_relative_to(PROJECT) else str(path)


def _origin(spec) -> dict:
    origin = spec.origin
    if isinstance(origin, OriginFilter):
        how = (f"DescribeImages owned by {', '.join(origin.owners)}, name {origin.name!r}, state available"
               + (f", architecture {origin.architecture}" if origin.architecture else "")
               + "; the newest image wins")
        shown: Any = origin.model_dump(exclude_none=True)
    elif origin.startswith(SSM_PREFIX):
        how = f"reads the SSM parameter {origin[len(SSM_PREFIX):]}, then checks that its AMI is available"
        shown = origin
    else:
        how, shown = "checks that the AMI is available", origin
    return {"does": f"resolves the origin to an AMI id in {spec.region}: {how}", "origin": shown}


def _network_task(spec, build, settings, warnings: list[str]) -> dict:
    from image_factory.settings import SettingsError
    from image_factory.steps.infrastructure import private_key_parameter

    creates: list[dict] = []
    outputs = {}
    if spec.wants_builder_subnet:
        if settings.builder_vpc_id:
            vpc = settings.builder_vpc_id
            subnet = {"vpc": vpc, "cidr": f"the first free /28 of VPC {vpc}"}
        else:
            network = ipaddress.ip_network(settings.builder_vpc_cidr)
            first = next(network.subnets(new_prefix=max(28, network.prefixlen)))
            creates.append({"vpc": {"cidr": str(network)}})
            vpc = "the new VPC"
            subnet = {"vpc": vpc, "cidr": str(first)}
        creates.append({"subnet": subnet})
        outputs["IMAGE_BUILDER_SUBNET_ID"] = "the subnet's id"
        placement = f"the build's subnet in {vpc}"
    elif spec.subnet:
        placement = f"subnet {spec.subnet} (given by the spec; not created)"
    else:
        placement = f"the default VPC of {spec.region} (not created)"
    try:
        cidr = settings.cidr(spec.allow_ssh_from_anywhere)
    except SettingsError as exc:
        warnings.append(str(exc))
        cidr = "<[image_factory] provisioner_cidr: see warnings>"
    egress = [f"tcp {port} to 0.0.0.0/0" for port in sorted(set(spec.egress_ports))]
    if 53 in spec.egress_ports:
        egress.append("udp 53 to 0.0.0.0/0")
    creates.append({"security_group": {
        "name": build.resource_name, "in": placement,
        "ingress": [f"tcp 22 from {cidr}"],
        "egress": egress or ["none (the default allow-all rule is revoked)"],
    }})
    creates.append({"key_pair": {
        "name": build.resource_name, "type": "ed25519, made for this build",
        "private_key": f"kept only in the SSM SecureString parameter {private_key_parameter(build)}",
    }})
    outputs["IMAGE_BUILDER_SECURITY_GROUP_ID"] = "the security group's id"
    outputs["IMAGE_BUILDER_SSH_KEY"] = build.resource_name
    return {"setup": "an Airflow setup task: tear_down is its teardown",
            "origin": _origin(spec), "creates": creates, "outputs": outputs,
            "tagged": "each resource with the builder tags (below), in its create call"}


def _launch_task(spec, build) -> dict:
    if spec.wants_builder_subnet or spec.subnet:
        subnet = spec.subnet
    else:
        subnet = f"the default subnet of the default VPC of {spec.region}"
    return {"instance": {
                "image": MADE_BY_ORIGIN,
                "instance_type": f"{instance_type(spec.instance_size)}"
                                 + (f" ({spec.instance_size})" if spec.instance_size != instance_type(
                                     spec.instance_size) else ""),
                "subnet": subnet,
                "security_group": MADE_BY_INFRASTRUCTURE,
                "key_pair": build.resource_name,
                "public_ip": spec.public_ip,
                "metadata": "IMDSv2 required (HttpTokens=required, hop limit 1)",
                "root_volume": "the origin's root volume, encrypted, deleted with the instance",
                "shutdown_behaviour": "terminate",
            },
            "waits": f"until it runs: {_polls(build, 'instance_running')}"}


def _polls(build, waiter_name: str) -> str:
    return f"polled {build.schedule(waiter_name).describe()} after the change began (a first build's priors; "\
           "later builds fit the polls to the spec's recent ones)" if not build.settings.poll_interval else \
        f"polled {build.schedule(waiter_name).describe()} ([image_factory] poll_interval)"


def _ssh(spec, settings, build, warnings: list[str]) -> dict:
    from image_factory.settings import SettingsError

    host = settings.ssh_host or ("the instance's public address" if spec.public_ip
                                 else "the instance's private address")
    try:
        host_key = ("the one the instance's console shows (GetConsoleOutput; the wait includes it), any other "
                    "refused" if settings.checks_host_key() else "not checked ([image_factory] host_key_check = off)")
    except SettingsError as exc:
        warnings.append(str(exc))
        host_key = "<[image_factory] host_key_check: see warnings>"
    return {"does": f"waits until SSH accepts the build's key (in the triggerer while SSH does not answer; "
                    f"every {build.ssh_poll_interval:g} s, at most {settings.ssh_timeout:g} s)",
            "user": settings.ssh_username or spec.ssh_username, "host": host, "port": settings.ssh_port,
            "host_key": host_key}


def _configure_task(spec, build, settings, known: _Parameters, warnings: list[str]) -> dict:
    task: dict[str, Any] = {}
    configure = spec.configure
    if configure is None:
        task["how"] = ("stops the instance: the spec has no configure section, the image is a copy of its "
                        "origin")
        return task
    task["ssh"] = _ssh(spec, settings, build, warnings)
    task.update(tool=configure.tool, server_role=configure.server_role)
    role_unknown = known.unresolved(configure.server_role)
    if configure.tool == "shell":
        from image_factory.tools.shell import ROLES_DIR, role_files

        roles_dir = Path(settings.roles_folder) if settings.roles_folder else ROLES_DIR
        task["how"] = ("copies the role's folder over SFTP to a fresh private directory on the instance "
                        "(/tmp/image-factory-role.<random>), runs its top-level *.sh scripts there in name order "
                        "with bash (the first failure stops the role), then removes the directory")
        task["role_folder"] = _shown_path(roles_dir / configure.server_role)
        if role_unknown:
            task["commands"] = "bash ./<script> for each top-level *.sh script of the role named at run time"
        else:
            try:
                files = role_files(configure.server_role, roles_dir)
            except PermanentError as exc:
                raise Failure(str(exc)) from None
            task["files"] = [f.as_posix() for f in files]
            task["environment"] = {"IMAGE_FACTORY_SERVER_ROLE": configure.server_role,
                                   "IMAGE_FACTORY_IMAGE_NAME": spec.name,
                                   "IMAGE_FACTORY_BUILD_ID": build.build_id}
            task["commands"] = [Command(f"bash ./{f.name}") for f in files if f.suffix == ".sh" and len(f.parts) == 1]
    elif configure.tool == "ansible":
        task["how"] = (f"ansible-playbook on the worker applies role {configure.server_role!r} of the playbook "
                        "source to the builder instance over SSH with the build's key")
        task["role_folder"] = _ansible_source(configure, settings, warnings)
    else:
        from image_factory.tools.command import render

        template = configure.command or settings.servermaker_command
        origin = ("the spec's configure.command" if configure.command
                  else "[image_factory] servermaker_command")
        task["how"] = f"runs one command line on the instance, from {origin}; its values are shell-quoted"
        task["template"] = template
        task["commands"] = [Command(render(template, configure.code_repo, configure.server_role))]
        unknown = known.unresolved(configure.code_repo or "") + role_unknown
        if unknown:
            task["note"] = ", ".join(f"${{{n}}}" for n in dict.fromkeys(unknown)) + ": the value replaces it " \
                                                                                   "before quoting"
    task["timeout"] = f"{settings.configure_timeout:g} s"
    task["then"] = "asks the instance to stop (register_image waits for it)"
    return task


def _test_task(spec, build, settings) -> dict:
    if spec.test is None:
        return {"tests": "none: the image is tagged image-factory:tests=untested and moves no channel"}
    from image_factory.spec import tests_folder

    folder = (Path(settings.tests_folder) if settings.tests_folder else tests_folder()) / spec.test.tests
    pattern = "test_*.py" if spec.test.tool == "testinfra" else "*.sh"
    return {"tool": spec.test.tool, "tests_folder": _shown_path(folder),
            "files": sorted(p.name for p in folder.glob(pattern)),
            "test_instance": f"{instance_type(spec.test.instance_size or spec.instance_size)} from the new image, "
                             "in the build's subnet, security group and key",
            "waits": f"until it runs: {_polls(build, 'instance_running')}",
            "tags": "image-factory:tests (passed/failed), tests-passed, tests-failed, tested-at"}


def _distribute_task(spec, build) -> dict:
    from image_factory.build import TAG_SOURCE_IMAGE, TAG_SOURCE_REGION

    distribute = spec.distribute
    shared = distribute.share_with
    return {
        "copies": {region: f"CopyImage from {spec.region}, tagged as the image (below) plus {TAG_SOURCE_IMAGE}, "
                           f"{TAG_SOURCE_REGION}={spec.region}; then its snapshots, and complete"
                   for region in distribute.regions} or "none: the image stays in its region",
        **({"waits": f"every copy at once, in the triggerer: {_polls(build, 'image_available')}"}
           if distribute.regions else {}),
        "shared_with": ({"accounts": list(shared.accounts), "organizations": list(shared.organizations),
                         "organizational_units": list(shared.organizational_units),
                         "in": [spec.region, *distribute.regions],
                         "permissions": "launch (ModifyImageAttribute) on the image and each copy; create-volume "
                                        "(ModifySnapshotAttribute) on their snapshots, for the accounts"}
                        if shared else "nobody"),
    }


def _promote_task(spec, settings, channels: list[str]) -> dict:
    from image_factory.spec import channel_parameter

    regions = [spec.region, *(spec.distribute.regions if spec.distribute else [])]
    return {"channels": {channel: channel_parameter(spec.name, channel, settings.channel_prefix)
                         for channel in channels},
            **({"regions": regions} if len(regions) > 1 else {}),
            "parameter": "SSM String, DataType aws:ec2:image, in each region the image is in (naming that region's "
                         "image or copy); its versions are the history",
            "events": [f"image-factory://images/{spec.name}",
                       *(f"image-factory://images/{spec.name}/{channel}" for channel in channels)]}


def _ansible_source(configure, settings, warnings: list[str]) -> str:
    try:
        from image_factory.tools import ansible
    except ImportError as exc:  # pragma: no cover - the tool ships with the package
        warnings.append(f"the ansible tool cannot be loaded: {exc}")
        return "?"
    folder = Path(getattr(settings, "ansible_folder", "") or ansible.ANSIBLE_DIR)
    try:
        source = ansible.playbook_source(configure.code_repo, folder)
        return _shown_path(ansible.role_folder(source, configure.server_role))
    except PermanentError as exc:
        raise Failure(str(exc)) from None


def plan(loaded: LoadedSpec, given: dict[str, str], environment: dict[str, str], settings,
         run_id: str | None = None) -> dict:
    """What a build of ``loaded`` will do: its tasks, the resources they create, its tags and commands."""
    from image_factory.build import TAG_CREATED_AT, TAG_RUN, Build, build_id_for
    from image_factory.steps.image import image_name, lineage_tags

    known = _Parameters(loaded, given, environment)
    spec = known.resolved_spec()
    build = Build(spec=spec, spec_hash=loaded.content_hash, run_id=run_id or "<run id>", settings=settings,
                  build_id=build_id_for(spec.name, run_id) if run_id else "<build id>")
    warnings: list[str] = []
    builder_tags = build.tags()
    builder_tags[TAG_CREATED_AT] = "<when the build starts, UTC>"
    image_tags = lineage_tags(build, MADE_BY_ORIGIN)
    image_tags[TAG_CREATED_AT] = builder_tags[TAG_CREATED_AT]
    image_tags[TAG_RUN] = builder_tags[TAG_RUN]
    schedule = spec.schedule or "none: manual builds only"
    if getattr(spec, "rebuild_on_origin_change", False):
        schedule += ", and when the origin resolves to a new image"
    from image_factory import dag, resources

    details = {
        "create_builder_network": lambda: _network_task(spec, build, settings, warnings),
        "launch_builder_instance": lambda: _launch_task(spec, build),
        "configure": lambda: _configure_task(spec, build, settings, known, warnings),
        "register_image": lambda: {
            "image_name": image_name(build, "<run time, YYYYmmdd-HHMMSS>"), "tags": "the image tags (below)",
            "waits": {"stop": _polls(build, "instance_stopped"), "image": _polls(build, "image_available")}},
        "test_image": lambda: _test_task(spec, build, settings),
        "distribute_image": lambda: _distribute_task(spec, build),
        "promote": lambda: _promote_task(spec, settings, spec.promote.channels),
        "approve_promotion": lambda: {
            "approvers": "a person, in the Airflow UI (Required Actions) or PATCH .../hitlDetails",
            "timeout": f"{spec.promote.approval_timeout_hours:g} h: no answer by then is a rejection"},
        "promote_approved": lambda: _promote_task(spec, settings, spec.promote.approval),
        "tear_down": lambda: {
            "teardown_of": dag.SETUP, "runs": "whether the build succeeded or failed, the setup included",
            "finds": "what the setup and the launch recorded, or on a retry or when they failed, what is tagged "
                     f"image-factory:build-id={build.build_id}; what needs the instance gone is deleted by the "
                     "triggerer once it is",
            "deletes": resources.planned(spec, spec.distribute.regions if spec.distribute else ())},
    }
    steps = dag.steps_of(spec)
    present = {step.task_id for step in steps}
    tasks = [{"task_id": step.task_id, "does": step.does,
              **({"after": after} if (after := [t for t in step.inputs + step.after if t in present]) else {}),
              **details.get(step.task_id, dict)()} for step in steps]
    document = {
        "spec": str(loaded.path),
        "spec_hash": loaded.content_hash,
        "dag_id": spec.name,
        **({"description": spec.description} if spec.description else {}),
        "schedule": schedule,
        "region": spec.region,
        "aws_conn_id": spec.aws_conn_id,
        "build_id": build.build_id,
        **({"warnings": warnings} if warnings else {}),
        "parameters": known.table(),
        "tasks": tasks,
        "tags": {"builder": builder_tags, "image": image_tags},
    }
    return known.show(document)


def render(argument: str, params: Sequence[str], run_id: str | None) -> int:
    given = _parse_params(params)
    _quiet_airflow()
    loaded = _find_spec(argument)
    if loaded is None:
        raise UsageError(f"no spec named {argument!r} in {_specs_folder()}")
    from image_factory import settings as settings_module

    try:
        settings = settings_module.load()
    except PermanentError as exc:
        raise Failure(str(exc)) from None
    document = plan(loaded, given, dict(os.environ), settings, run_id)
    sys.stdout.write(yaml.dump(document, Dumper=_PlanDumper, sort_keys=False, width=1000, allow_unicode=True))
    return OK


# --- list -----------------------------------------------------------------------------------------------

COLUMNS = ("IMAGE ID", "NAME", "STATE", "CREATED", "ORIGIN AMI", "SERVER ROLE", "SPEC HASH", "BUILD ID", "COMPLETE",
           "TESTS", "OVERRIDDEN", "COPY OF", "CHANNELS")


def _tests(tags: dict[str, str]) -> str:
    from image_factory.inventory import tests_summary

    return tests_summary(tags)


def _image_row(image: dict, channels: dict[str, list[str]]) -> tuple[str, ...]:
    from image_factory.build import (
        TAG_BUILD,
        TAG_COMPLETE,
        TAG_ORIGIN,
        TAG_OVERRIDDEN,
        TAG_ROLE,
        TAG_SPEC_HASH,
        tag_dict,
    )

    tags = tag_dict(image.get("Tags"))
    return (image["ImageId"], image.get("Name", ""), image.get("State", ""), image.get("CreationDate", ""),
            tags.get(TAG_ORIGIN, "-"), tags.get(TAG_ROLE, "-"), tags.get(TAG_SPEC_HASH, "-"),
            tags.get(TAG_BUILD, "-"), "yes" if tags.get(TAG_COMPLETE) == "true" else "no", _tests(tags),
            tags.get(TAG_OVERRIDDEN) or "-", _copy_of(tags), ",".join(channels.get(image["ImageId"], [])) or "-")


def _copy_of(tags: dict[str, str]) -> str:
    """``ami-...@region`` for a copy made by distribute_image (its source image and region), else ``-``."""
    from image_factory.build import TAG_SOURCE_IMAGE, TAG_SOURCE_REGION

    source = tags.get(TAG_SOURCE_IMAGE)
    return f"{source}@{tags.get(TAG_SOURCE_REGION, '?')}" if source else "-"


def _channels_by_image(ssm, spec_name: str) -> dict[str, list[str]]:
    """Image id -> the spec's channels that name it (one read of the spec's channel parameters)."""
    from image_factory.spec import channel_prefix

    path = f"{channel_prefix()}/{spec_name}"
    found: dict[str, list[str]] = {}
    for page in ssm.get_paginator("get_parameters_by_path").paginate(Path=path, Recursive=False):
        for parameter in page["Parameters"]:
            found.setdefault(parameter["Value"], []).append(parameter["Name"].rsplit("/", 1)[1])
    return {image: sorted(names) for image, names in found.items()}


def list_images(argument: str, region: str | None, aws_conn_id: str | None) -> int:
    _quiet_airflow()
    loaded = _find_spec(argument)
    name = loaded.name if loaded else argument
    if region is None and loaded is not None:
        region = loaded.image.region
        if parameters.PARAMETER_PATTERN.search(region):
            try:
                region = parameters.resolve_text(region, parameters.chain(os.environ), spec_name=name,
                                                 field="region")
            except parameters.ParameterError as exc:
                raise UsageError(f"{exc}; give --region") from None
    conn_id = aws_conn_id or (loaded.image.aws_conn_id if loaded else "aws_default")
    from image_factory import aws
    from image_factory.build import TAG_SPEC

    try:
        clients = aws.clients(conn_id, region)
        where = clients.ec2.meta.region_name
        paginator = clients.ec2.get_paginator("describe_images")
        images = [image for page in paginator.paginate(
            Owners=["self"], Filters=[{"Name": f"tag:{TAG_SPEC}", "Values": [name]}]) for image in page["Images"]]
        channels = _channels_by_image(clients.ssm, name) if images else {}
    except Exception as exc:  # the connection, the credentials, the endpoint or the call itself
        raise Failure(f"cannot list the images of {name!r} (connection {conn_id!r}): "
                      f"{type(exc).__name__}: {exc}") from None
    if not images:
        print(f"no images of spec {name!r} in {where}")
        return OK
    rows = [_image_row(image, channels)
            for image in sorted(images, key=lambda i: i.get("CreationDate", ""), reverse=True)]
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    for row in [COLUMNS, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return OK


def lineage(ec2, ssm, image_id: str, limit: int = 20, in_region=None) -> list[dict]:
    """The image and its origins back to the root origin (the first image Image Factory did not build). A copy
    (distribute_image) leads to the image it is a copy of, in its region, when ``in_region`` (a region ->
    (ec2, ssm) clients) is given; its origin is in that region."""
    from image_factory.build import (
        TAG_BUILD,
        TAG_ORIGIN,
        TAG_OVERRIDDEN,
        TAG_ROLE,
        TAG_SOURCE_IMAGE,
        TAG_SOURCE_REGION,
        TAG_SPEC,
        tag_dict,
    )
    from image_factory.revocation import revocation

    levels: list[dict] = []
    while image_id and len(levels) < limit:
        found = ec2.describe_images(ImageIds=[image_id], IncludeDisabled=True)["Images"]  # (revoked: disabled)
        if not found:
            levels.append({"image": image_id, "missing": "no such image (deregistered?)"})
            break
        image = found[0]
        tags = tag_dict(image.get("Tags"))
        level = {"image": image_id, "name": image.get("Name", ""), "created": image.get("CreationDate", "")}
        if TAG_SPEC not in tags:
            levels.append({**level, "root origin": f"owner {image.get('OwnerId', '?')}"})
            break
        level.update(spec=tags[TAG_SPEC], build=tags.get(TAG_BUILD, "-"), role=tags.get(TAG_ROLE, "-"),
                     **({"overridden": f"{tags[TAG_OVERRIDDEN]} (by the trigger of its build)"}
                        if tags.get(TAG_OVERRIDDEN) else {}),
                     **({"copy of": copy} if (copy := _copy_of(tags)) != "-" else {}),
                     **({"revoked": revocation(tags)} if revocation(tags) else {}),
                     origin=tags.get(TAG_ORIGIN, "-"), tests=_tests(tags),
                     channels=",".join(_channels_by_image(ssm, tags[TAG_SPEC]).get(image_id, [])) or "-")
        levels.append(level)
        if tags.get(TAG_SOURCE_IMAGE) and tags.get(TAG_SOURCE_REGION) and in_region is not None:
            ec2, ssm = in_region(tags[TAG_SOURCE_REGION])
            image_id = tags[TAG_SOURCE_IMAGE]
        else:
            image_id = tags.get(TAG_ORIGIN)
    return levels


def show(image_id: str, region: str | None, aws_conn_id: str | None) -> int:
    _quiet_airflow()
    from image_factory import aws

    conn_id = aws_conn_id or "aws_default"
    try:
        clients = aws.clients(conn_id, region)
        def in_region(name: str):
            other = aws.clients(conn_id, name)
            return other.ec2, other.ssm

        levels = lineage(clients.ec2, clients.ssm, image_id, in_region=in_region)
    except Exception as exc:
        raise Failure(f"cannot show image {image_id!r} (connection {conn_id!r}): {type(exc).__name__}: {exc}") from None
    for depth, level in enumerate(levels):
        indent = "  " * depth
        heading = "image" if depth == 0 else "copy of" if "copy of" in levels[depth - 1] else "built from"
        print(f"{indent}{heading} {level['image']} {level.get('name', '')}".rstrip())
        for key in ("spec", "build", "role", "overridden", "revoked", "copy of", "origin", "tests", "channels",
                    "created", "root origin", "missing"):
            if key in level:
                print(f"{indent}  {key}: {level[key]}")
    return OK if "missing" not in levels[-1] else PROBLEMS


# --- schema and main ------------------------------------------------------------------------------------

def schema() -> int:
    from image_factory.schema import schema_text

    sys.stdout.write(schema_text())
    return OK


def _sbom():
    _quiet_airflow()
    from image_factory import sbom

    return sbom


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(
        prog="image-factory", description="Check spec files, show what a build will do, list a spec's images.")
    commands = main_parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    command = commands.add_parser("validate", help="check spec files and folders of specs",
                                  description="Print 'PATH: ok' for each good spec and 'PATH: FIELD: MESSAGE' "
                                              "for each problem; exit 1 if any spec is bad.")
    command.add_argument("paths", nargs="+", metavar="FILE_OR_FOLDER")
    command.set_defaults(run=lambda a: validate(a.paths))

    command = commands.add_parser("render", help="print the plan of a build of a spec (no network call)",
                                  description="Print as YAML what a build of SPEC will do: the DAG, its tasks "
                                              "in order, the resources they create, the tags and the commands. "
                                              "Parameters not given with --param or the environment are shown "
                                              "as resolved at run time.")
    command.add_argument("spec", metavar="SPEC", help="a spec file, or the name of a spec in the specs folder")
    command.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="a value for ${NAME} (repeatable)")
    command.add_argument("--run-id", help="show the build id and tags of this DAG run id")
    command.set_defaults(run=lambda a: render(a.spec, a.param, a.run_id))

    command = commands.add_parser("list", help="list the images built for a spec",
                                  description="List the images whose lineage tags name the spec "
                                              "(image-factory:spec), newest first.")
    command.add_argument("spec", metavar="SPEC", help="a spec file, or a spec name")
    command.add_argument("--region", help="default: the spec's region, else the connection's")
    command.add_argument("--aws-conn-id", help="default: the spec's aws_conn_id, else aws_default")
    command.set_defaults(run=lambda a: list_images(a.spec, a.region, a.aws_conn_id))

    command = commands.add_parser("show", help="print an image's lineage back to its root origin",
                                  description="Print IMAGE and each image it was built from, back to the first "
                                              "one Image Factory did not build: spec, build, role, origin, tests "
                                              "and channels at each level.")
    command.add_argument("image", metavar="IMAGE", help="an AMI id")
    command.add_argument("--region", help="default: the connection's")
    command.add_argument("--aws-conn-id", help="default: aws_default")
    command.set_defaults(run=lambda a: show(a.image, a.region, a.aws_conn_id))

    command = commands.add_parser("sbom", help="print an image's SBOM (CycloneDX JSON)",
                                  description="Print the CycloneDX SBOM that IMAGE's image-factory:sbom tag "
                                              "points to: its operating system and every package.")
    command.add_argument("image", metavar="AMI", help="an AMI id")
    command.add_argument("--region", help="default: the connection's")
    command.add_argument("--aws-conn-id", help="default: aws_default")
    command.set_defaults(run=lambda a: _sbom().print_sbom(a.image, a.region, a.aws_conn_id))

    command = commands.add_parser("find-package", help="list the images whose SBOM has a package",
                                  description="List every image with an SBOM that has package NAME (below "
                                              "VERSION in the package format's own ordering, with --below), "
                                              "newest first, with the version found and the channels naming "
                                              "each image. Exit 1 when no image has it.")
    command.add_argument("name", metavar="NAME", help="a package name, as the package database writes it")
    command.add_argument("--below", metavar="VERSION", help="only versions before this one (Debian's ordering)")
    command.add_argument("--spec", help="only the images of this spec")
    command.add_argument("--region", help="default: the connection's")
    command.add_argument("--aws-conn-id", help="default: aws_default")
    command.set_defaults(run=lambda a: _sbom().print_find_package(a.name, a.below, a.spec, a.region,
                                                                   a.aws_conn_id))

    from image_factory import revocation_cli

    revocation_cli.add_commands(commands)  # revoke, restore, rollback

    command = commands.add_parser("schema", help="print the JSON Schema of spec files")
    command.set_defaults(run=lambda a: schema())
    return main_parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = arguments.run
    try:
        return run(arguments)
    except UsageError as exc:
        print(f"image-factory {arguments.command}: {exc}", file=sys.stderr)
        return USAGE
    except Failure as exc:
        print(exc, file=sys.stderr)
        return PROBLEMS
