"""The plan of a build (``image-factory render``): the requests its steps will send, made by the steps' own request
functions, and the little that is not a request (waits, SSH, the role's commands, the tests).

No network call: what only the build can know (the VPC's id, the origin's AMI, the time it starts) is a
:class:`RunTime` placeholder in the request, so that the plan shows each request as the step sends it, with
that value left open.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

from image_factory import parameters
from image_factory.errors import PermanentError
from image_factory.parameters import BUILDER_OUTPUTS
from image_factory.spec import SSM_PREFIX, LoadedSpec, OriginFilter, instance_types

PROJECT = Path(__file__).resolve().parents[2]
MADE_BY_INFRASTRUCTURE = "<made by create_builder_network>"
AT_RUN_TIME = "(resolved at run time)"


class PlanError(PermanentError):
    """The plan cannot be made (a parameter that does not resolve, a role that is not there)."""


class RunTime(str):
    """A value of a request that only the build knows: ``<at run time: what it is>``."""

    def __new__(cls, what: str) -> RunTime:
        return super().__new__(cls, f"<at run time: {what}>")


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


def dump(document: dict) -> str:
    """The plan as YAML, in its own order."""
    return yaml.dump(document, Dumper=_PlanDumper, sort_keys=False, width=1000, allow_unicode=True)


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
        return parameters.resolve(self.spec, parameters.chain(self.values), fields)

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

            return parameters.PARAMETER_PATTERN.sub(mark, str(value))
        if isinstance(value, dict):
            return {self.show(k): self.show(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.show(v) for v in value]
        return value


def _shown_path(path: Path) -> str:
    """Relative to the project when it is inside it."""
    return str(path.relative_to(PROJECT)) if path.resolve().is_relative_to(PROJECT) else str(path)


def _call(operation: str, request: dict, note: str = "") -> dict:
    """One request as the step sends it (``service:Operation``, its parameters); tag lists read as mappings."""
    shown = {key: _tags_as_mapping(value) if key in ("TagSpecifications", "Tags") else value
             for key, value in request.items()}
    if isinstance(shown.get("PublicKeyMaterial"), bytes):
        shown["PublicKeyMaterial"] = shown["PublicKeyMaterial"].decode()
    return {"call": operation, "request": shown, **({"note": note} if note else {})}


def _tags_as_mapping(value: list[dict]) -> list[dict] | dict:
    if value and "ResourceType" in value[0]:
        return [{**spec, "Tags": _tags_as_mapping(spec["Tags"])} for spec in value]
    return {tag["Key"]: tag["Value"] for tag in value}


def _image_at_run_time(whose: str) -> dict:
    """An image as launch_view gives it, each value known at run time only."""
    root = RunTime(f"{whose}'s root device")
    return {"ImageId": RunTime(f"{whose}'s AMI id"), "RootDeviceName": root, "BlockDeviceMappings": [
        {"DeviceName": root, "Ebs": {"SnapshotId": RunTime(f"{whose}'s root snapshot"),
                                     "VolumeSize": RunTime(f"{whose}'s root volume size"),
                                     "VolumeType": RunTime(f"{whose}'s root volume type")}}]}


def _polls(build, waiter_name: str) -> str:
    return f"polled {build.schedule(waiter_name).describe()} after the change began (a first build's priors; "\
           "later builds fit the polls to the spec's recent ones)" if not build.settings.poll_interval else \
        f"polled {build.schedule(waiter_name).describe()} ([image_factory] poll_interval)"


# --- the tasks ------------------------------------------------------------------------------------------

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


def _subnet_call(build, settings, vpc_id: str) -> dict:
    from image_factory.steps.infrastructure import subnet_candidates, subnet_request

    moves_on = "a block another subnet has taken meanwhile is skipped for the next one"
    if settings.builder_vpc_id:
        cidr = RunTime(f"the free /28 blocks of VPC {vpc_id}, from the build's own offset (by its build id)")
        note = moves_on
    elif build.build_id.startswith("<"):
        network = ipaddress.ip_network(settings.builder_vpc_cidr)
        cidr = RunTime(f"a /28 of {network} chosen by the build id (give --run-id to see it)")
        note = moves_on
    else:
        cidr = subnet_candidates(build, ipaddress.ip_network(settings.builder_vpc_cidr))[0]
        note = f"the first /28 this build tries (by its build id); {moves_on}"
    return _call("ec2:CreateSubnet", subnet_request(build, vpc_id, cidr), note)


def _network_task(spec, build, settings, warnings: list[str]) -> dict:
    from image_factory.settings import SettingsError
    from image_factory.steps import infrastructure as network

    calls: list[dict] = []
    if spec.wants_builder_subnet:
        if settings.builder_vpc_id:
            vpc_id = settings.builder_vpc_id
        else:
            calls.append(_call("ec2:CreateVpc", network.vpc_request(build)))
            vpc_id = RunTime("the new VPC's id")
        calls.append(_subnet_call(build, settings, vpc_id))
    elif spec.subnet:
        vpc_id = RunTime(f"the VPC of subnet {spec.subnet} (given by the spec; not created)")
    else:
        vpc_id = RunTime(f"the default VPC of {spec.region} (not created)")
    try:
        cidr = settings.cidr(spec.allow_ssh_from_anywhere)
    except SettingsError as exc:
        warnings.append(str(exc))
        cidr = "<[image_factory] provisioner_cidr: see warnings>"
    group_id = RunTime("the security group's id")
    egress = network.egress_request(build, group_id)
    calls += [
        _call("ec2:CreateSecurityGroup", network.security_group_request(build, vpc_id)),
        _call("ec2:AuthorizeSecurityGroupIngress", network.ingress_request(group_id, cidr)),
        _call("ec2:RevokeSecurityGroupEgress", network.revoke_default_egress_request(group_id)),
        *([_call("ec2:AuthorizeSecurityGroupEgress", egress)] if egress else []),
        _call("ssm:PutParameter", network.key_parameter_request(
            build, RunTime("a new ed25519 private key, kept only here"))),
        _call("ec2:ImportKeyPair", network.key_pair_request(build, RunTime("its public key"))),
    ]
    outputs = {"IMAGE_BUILDER_SECURITY_GROUP_ID": "the security group's id", "IMAGE_BUILDER_SSH_KEY":
               build.resource_name}
    if spec.wants_builder_subnet:
        outputs["IMAGE_BUILDER_SUBNET_ID"] = "the subnet's id"
    return {"setup": "an Airflow setup task: tear_down is its teardown", "origin": _origin(spec),
            "requests": calls, "outputs": outputs}


def _launch_call(build, size, image: dict, purpose: str) -> dict:
    from image_factory.steps.instance import run_instances_request

    types = instance_types(size)
    request = run_instances_request(build, image, MADE_BY_INFRASTRUCTURE, build.resource_name, types[0], purpose)
    note = f"instance_size {size}" if types[0] != size else ""
    if len(types) > 1:
        note = f"each next type of {', '.join(types)} (a token of its own) while AWS refuses one for capacity"
    return _call("ec2:RunInstances", request, note)


def _launch_task(spec, build) -> dict:
    return {"requests": [_launch_call(build, spec.instance_size, _image_at_run_time("the origin"), "builder")],
            "waits": f"until it runs: {_polls(build, 'instance_running')}"}


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
    stop = _call("ec2:StopInstances", {"InstanceIds": [RunTime("the builder instance's id")]},
                 "register_image waits for the stop")
    if configure is None:
        task["how"] = "nothing to run: the spec has no configure section, the image is a copy of its origin"
        task["requests"] = [stop]
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
            files = role_files(configure.server_role, roles_dir)
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
    task["requests"] = [stop]
    return task


def _ansible_source(configure, settings, warnings: list[str]) -> str:
    try:
        from image_factory.tools import ansible
    except ImportError as exc:  # pragma: no cover - the tool ships with the package
        warnings.append(f"the ansible tool cannot be loaded: {exc}")
        return "?"
    folder = Path(getattr(settings, "ansible_folder", "") or ansible.ANSIBLE_DIR)
    source = ansible.playbook_source(configure.code_repo, folder)
    return _shown_path(ansible.role_folder(source, configure.server_role))


def _create_image_request(build) -> dict:
    from image_factory.steps.image import create_image_request, image_name, lineage_tags

    origin = RunTime("the origin's AMI id")
    name = image_name(build, RunTime("the run's logical date, YYYYmmdd-HHMMSS"))
    return create_image_request(build, RunTime("the builder instance's id"), origin, name,
                                lineage_tags(build, origin))


def _register_task(build) -> dict:
    request = _create_image_request(build)
    return {"requests": [_call("ec2:CreateImage", request, "once the instance is stopped")],
            "then": "tags the image and its snapshots image-factory:complete=true once it is available"
                    + ("" if build.spec.test else ", and image-factory:tests=untested"),
            "waits": {"stop": _polls(build, "instance_stopped"), "image": _polls(build, "image_available")}}


def _test_task(spec, build, settings) -> dict:
    if spec.test is None:
        return {"tests": "none: the image is tagged image-factory:tests=untested and moves no channel"}
    from image_factory.spec import tests_folder

    folder = (Path(settings.tests_folder) if settings.tests_folder else tests_folder()) / spec.test.tests
    pattern = "test_*.py" if spec.test.tool == "testinfra" else "*.sh"
    size = spec.test.instance_size or spec.instance_size
    return {"tool": spec.test.tool, "tests_folder": _shown_path(folder),
            "files": sorted(p.name for p in folder.glob(pattern)),
            "requests": [_launch_call(build, size, _image_at_run_time("the new image"), "test")],
            "waits": f"until it runs: {_polls(build, 'instance_running')}",
            "tags": "image-factory:tests (passed/failed), tests-passed, tests-failed, tested-at"}


def _distribute_task(spec, build) -> dict:
    from image_factory.steps.distribution import copy_image_request

    distribute = spec.distribute
    shared = distribute.share_with
    from image_factory.build import TAG_TESTED_AT, TAG_TESTS, TAG_TESTS_FAILED, TAG_TESTS_PASSED

    # The new image as register_image made it and test_image tagged it.
    made = _create_image_request(build)
    tests = ({TAG_TESTS: "passed", TAG_TESTS_PASSED: RunTime("how many tests passed"),
              TAG_TESTS_FAILED: RunTime("how many failed"), TAG_TESTED_AT: RunTime("when they ran, UTC")}
             if spec.test else {TAG_TESTS: "untested"})
    source = {"ImageId": RunTime("the new image's id"), "Name": made["Name"], "Description": made["Description"],
              "Tags": made["TagSpecifications"][0]["Tags"] + [{"Key": k, "Value": v} for k, v in tests.items()]}
    return {
        "requests": [{**_call("ec2:CopyImage", copy_image_request(build, source, region)), "region": region}
                     for region in distribute.regions],
        **({"waits": f"every copy at once, in the triggerer: {_polls(build, 'image_available')}"}
           if distribute.regions else {"copies": "none: the image stays in its region"}),
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


class _StartTime:
    """The time a build starts, as its tags show it (Build.tags formats it)."""

    def strftime(self, _format: str) -> str:
        return RunTime("when the build starts, UTC")


def _rollout_task(spec) -> dict:
    from image_factory.steps.rollout import TAG_ROLLOUT

    return {"regions": [spec.region, *(spec.distribute.regions if spec.distribute else [])],
            "channels": {entry.channel: {
                "launch_templates": entry.launch_templates, "set_default": entry.set_default,
                "auto_scaling_groups": entry.auto_scaling_groups,
                "min_healthy_percentage": entry.min_healthy_percentage} for entry in spec.rollout},
            "requires": f"each template and group tagged {TAG_ROLLOUT}={spec.name} (checked by "
                        "create_builder_network before anything is built)"}


def plan(loaded: LoadedSpec, given: dict[str, str], environment: dict[str, str], settings,
         run_id: str | None = None) -> dict:
    """What a build of ``loaded`` will do: its tasks and the requests they send, the role's commands."""
    from image_factory import dag, resources
    from image_factory.build import Build, build_id_for

    known = _Parameters(loaded, given, environment)
    try:
        spec = known.resolved_spec()
        build = Build(spec=spec, spec_hash=loaded.content_hash, run_id=run_id or RunTime("the DAG run's id"),
                      settings=settings, build_id=build_id_for(spec.name, run_id) if run_id else "<build id>",
                      started_at=_StartTime())
    except PermanentError as exc:
        raise PlanError(str(exc)) from None
    warnings: list[str] = []
    schedule = spec.schedule or "none: manual builds only"
    if getattr(spec, "rebuild_on_origin_change", False):
        schedule += ", and when the origin resolves to a new image"

    details = {
        "create_builder_network": lambda: _network_task(spec, build, settings, warnings),
        "launch_builder_instance": lambda: _launch_task(spec, build),
        "configure": lambda: _configure_task(spec, build, settings, known, warnings),
        "register_image": lambda: _register_task(build),
        "test_image": lambda: _test_task(spec, build, settings),
        "distribute_image": lambda: _distribute_task(spec, build),
        "promote": lambda: _promote_task(spec, settings, spec.promote.channels),
        "approve_promotion": lambda: {
            "approvers": "a person, in the Airflow UI (Required Actions) or PATCH .../hitlDetails",
            "timeout": f"{spec.promote.approval_timeout_hours:g} h: no answer by then is a rejection"},
        "promote_approved": lambda: _promote_task(spec, settings, spec.promote.approval),
        "roll_out": lambda: _rollout_task(spec),
        "tear_down": lambda: {
            "teardown_of": dag.SETUP, "runs": "whether the build succeeded or failed, the setup included",
            "finds": "what the setup and the launch recorded, or on a retry or when they failed, what is tagged "
                     f"image-factory:build-id={build.build_id}; what needs the instance gone is deleted by the "
                     "triggerer once it is",
            "deletes": resources.planned(spec, spec.distribute.regions if spec.distribute else ())},
    }
    steps = dag.steps_of(spec)
    present = {step.task_id for step in steps}
    try:
        tasks = [{"task_id": step.task_id, "does": step.does,
                  **({"after": after} if (after := [t for t in step.inputs + step.after if t in present]) else {}),
                  **details.get(step.task_id, dict)()} for step in steps]
    except PermanentError as exc:
        raise PlanError(str(exc)) from None
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
    }
    return known.show(document)
