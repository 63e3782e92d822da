"""Image Factory's command line: check spec files, show what a build of a spec will do, list its images.

    python -m image_factory validate FILE_OR_FOLDER...       one line per problem; exit 0 only if all are good
    python -m image_factory render SPEC [--param NAME=VALUE]  the build's plan as YAML, no network call
    python -m image_factory list SPEC [--region R]            the spec's images, their tests and channels
    python -m image_factory show IMAGE [--region R]           an image's lineage back to its root origin
    python -m image_factory revoke IMAGE --reason TEXT [--descendants]  take an image out of use (revocation.py)
    python -m image_factory restore IMAGE                     take a revocation back
    python -m image_factory rollback SPEC CHANNEL [--to AMI]  move a channel back, in every region at once
    python -m image_factory ssh BUILD_ID [-- COMMAND]         log in to a failed build's kept instance
    python -m image_factory release BUILD_ID                  tear that instance down now
    python -m image_factory schema                            the JSON Schema of spec files

``SPEC`` is a spec file or, for ``render`` and ``list``, the name of a spec in the specs folder. Exit codes:
0 success, 1 a bad spec or a failed call, 2 a usage error. ``validate`` and ``schema`` import neither Airflow nor
boto3; ``render`` reads the ``[image_factory]`` settings (Airflow's config); ``list`` and ``show`` call EC2 and SSM
through the Airflow AWS connection (``AIRFLOW_CONN_AWS_DEFAULT`` with an ``endpoint_url`` reaches an emulator).

This module parses arguments and prints: the plan is made by :mod:`image_factory.plan` from the steps' own
requests, the images are read by :mod:`image_factory.catalog`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from image_factory import keep, parameters, revocation
from image_factory.errors import PermanentError
from image_factory.spec import (
    IMAGE_NAME,
    LoadedSpec,
    SpecError,
    channel_prefix,
    load_spec,
    load_specs,
)

PROJECT = Path(__file__).resolve().parents[2]
DEFAULT_SPECS = PROJECT / "include" / "specs"

OK, PROBLEMS, USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments: exit code 2."""


class Failure(Exception):
    """The command could not do its job (a bad spec, a refused call): exit code 1."""


def _quiet_airflow() -> None:
    """Airflow logs to stdout, which is this command's output: its informational lines off, and the rest (the
    deprecation warnings of a plugin it loads at its start, say) sent to stderr: Airflow binds its log output
    when it is first imported."""
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    if "airflow" not in sys.modules:
        with contextlib.redirect_stdout(sys.stderr):
            import airflow  # noqa: F401


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

def _parse_params(items: Sequence[str]) -> dict[str, str]:
    given = {}
    for item in items:
        name, separator, value = item.partition("=")
        if not separator or not parameters.NAME.match(name):
            raise UsageError(f"--param {item!r}: expected NAME=VALUE with an upper-case NAME")
        given[name] = value
    return given


def render(argument: str, params: Sequence[str], run_id: str | None) -> int:
    given = _parse_params(params)
    _quiet_airflow()
    loaded = _find_spec(argument)
    if loaded is None:
        raise UsageError(f"no spec named {argument!r} in {_specs_folder()}")
    from image_factory import plan, settings

    try:
        document = plan.plan(loaded, given, dict(os.environ), settings.load(), run_id)
    except PermanentError as exc:  # settings, parameters, the role's files
        raise Failure(str(exc)) from None
    sys.stdout.write(plan.dump(document))
    return OK


# --- list and show --------------------------------------------------------------------------------------

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
    from image_factory import aws, catalog

    try:
        clients = aws.clients(conn_id, region)
        where = clients.ec2.meta.region_name
        images = catalog.spec_images(clients.ec2, clients.ssm, where, name, channel_prefix())
    except Exception as exc:  # the connection, the credentials, the endpoint or the call itself
        raise Failure(f"cannot list the images of {name!r} (connection {conn_id!r}): "
                      f"{type(exc).__name__}: {exc}") from None
    if not images:
        print(f"no images of spec {name!r} in {where}")
        return OK
    rows = [catalog.list_row(image, channels) for image, channels in images]
    columns = catalog.LIST_COLUMNS
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return OK


def show(image_id: str, region: str | None, aws_conn_id: str | None) -> int:
    _quiet_airflow()
    from image_factory import aws, catalog

    conn_id = aws_conn_id or "aws_default"

    def clients_in(name: str | None) -> tuple:
        clients = aws.clients(conn_id, name)
        return clients.ec2, clients.ssm

    try:
        ec2, _ = clients_in(region)
        levels = catalog.lineage(clients_in, ec2.meta.region_name, image_id, channel_prefix())
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


def _regions(given: str | None) -> list[str]:
    if given:
        regions = [region.strip() for region in given.split(",") if region.strip()]
    else:
        regions = revocation.folder_regions(_specs_folder())
    if not regions:
        raise UsageError("no region: give --regions (no spec in the specs folder names one)")
    return regions


def _clients(conn_id: str):
    from image_factory import aws

    made = functools.cache(lambda region: aws.clients(conn_id, region))
    return (lambda region: made(region).ec2), (lambda region: made(region).ssm), made


def _run(what: str, action) -> int:
    try:
        report = action()
    except revocation.RevocationError as exc:
        raise UsageError(str(exc)) from None
    except Exception as exc:  # the connection, the credentials or a refused call
        raise Failure(f"{what}: {type(exc).__name__}: {exc}") from None
    for line in report.lines():
        print(line)
    return OK


def _revoke(args: argparse.Namespace) -> int:
    _quiet_airflow()
    from image_factory.spec import channel_prefix

    regions = _regions(args.regions)
    ec2_in, ssm_in, made = _clients(args.aws_conn_id)

    def action():
        revocation.check_image_id(args.image)
        revocation.check_reason(args.reason)
        # Who: the caller's identity (STS GetCallerIdentity needs no permission).
        by = made(regions[0]).sts.get_caller_identity()["Arn"]
        specs = _specs_by_name()
        report = revocation.revoke(ec2_in, ssm_in, regions, args.image, args.reason, by, args.descendants,
                                   channel_prefix(), specs=specs)
        _notify_revocation(specs.values(), args.image, args.reason, by, report, args.aws_conn_id)
        return report

    return _run(f"cannot revoke {args.image}", action)


def _restore(args: argparse.Namespace) -> int:
    _quiet_airflow()
    ec2_in, _, _ = _clients(args.aws_conn_id)
    regions = _regions(args.regions)
    return _run(f"cannot restore {args.image}", lambda: revocation.restore(ec2_in, regions, args.image))


def _rollback(args: argparse.Namespace) -> int:
    _quiet_airflow()
    from image_factory.spec import channel_prefix

    ec2_in, ssm_in, _ = _clients(args.aws_conn_id)
    regions = _regions(args.regions)
    return _run(f"cannot roll back {args.spec}/{args.channel}", lambda: revocation.rollback(
        ec2_in, ssm_in, regions, args.spec, args.channel, args.to, channel_prefix(), specs=_specs_by_name()))


def _revocation_commands(commands) -> None:
    """revoke, restore and rollback (revocation.py)."""
    where = {"--regions": "comma-separated; default: every region the specs of the specs folder build or "
                          "distribute in",
             "--aws-conn-id": "default: aws_default"}

    def common(command):
        command.add_argument("--regions", help=where["--regions"])
        command.add_argument("--aws-conn-id", default="aws_default", help=where["--aws-conn-id"])

    command = commands.add_parser(
        "revoke", help="take an image out of use: tagged revoked, deprecated, disabled; its channels moved back",
        description="Tag IMAGE and its copies in every region image-factory:revoked (time, reason, who), "
                    "deprecate and disable them (no new instance; running ones keep running), and move every "
                    "channel naming them back to the newest earlier tested image of the spec (deleted if none).")
    command.add_argument("image", metavar="IMAGE", help="an AMI id of an Image Factory image")
    command.add_argument("--reason", required=True, help=f"why (kept in a tag; at most {revocation.MAX_REASON} "
                                                         "characters)")
    command.add_argument("--descendants", action="store_true",
                         help="revoke every image built on it too (its origin-ami, recursively)")
    common(command)
    command.set_defaults(run=_revoke)

    command = commands.add_parser("restore", help="take a revocation back (moves no channel)",
                                  description="Enable IMAGE and its copies again, end their deprecation and "
                                              "remove the revocation tags. No channel moves: see rollback.")
    command.add_argument("image", metavar="IMAGE", help="a revoked AMI id")
    common(command)
    command.set_defaults(run=_restore)

    command = commands.add_parser("rollback", help="move a channel back, in every region at once",
                                  description="Move SPEC's CHANNEL, in every region where it exists, to its "
                                              "previous value (the parameter's history) or to --to's build.")
    command.add_argument("spec", metavar="SPEC", help="a spec name")
    command.add_argument("channel", metavar="CHANNEL", help="a channel name (latest, stable, ...)")
    command.add_argument("--to", metavar="AMI", help="a tested, not revoked image of the spec")
    common(command)
    command.set_defaults(run=_rollback)


def _specs_by_name() -> dict:
    from image_factory.spec import load_specs

    specs, _ = load_specs(_specs_folder())
    return {loaded.image.name: loaded.image for loaded in specs}


def _notify_revocation(specs, image_id: str, reason: str, by: str, report, aws_conn_id: str) -> None:
    from image_factory import notify, settings

    notify.notify_revocation(specs, image_id, reason, by, report, aws_conn_id, settings.load().default_topic())


def _kept(action: str, build_id: str, region: str | None, aws_conn_id: str | None, command: Sequence[str] = (),
          login: str | None = None) -> int:
    """``ssh|release BUILD_ID`` (keep.py, steps/teardown.release): the connection's clients (``aws_conn_id``,
    default aws_default; ``region``, default the connection's) and the ``[image_factory]`` settings."""
    _quiet_airflow()
    from image_factory import aws, settings
    from image_factory.steps.teardown import release

    conn_id = aws_conn_id or "aws_default"
    try:
        clients = aws.clients(conn_id, region)
        deployment = settings.load()
        if action == "ssh":
            return keep.ssh(clients.ec2, clients.ssm, build_id, command, deployment, clients.emulated, login)
        removed = release(clients.ec2, clients.ssm, build_id, deployment.poll_interval or 2.0)
    except Exception as exc:  # the connection, the call, or nothing kept; never the key (it is not in one)
        print(f"image-factory {action}: build {build_id} (connection {conn_id!r}): {type(exc).__name__}: {exc}",
              file=sys.stderr)
        return 1
    print(f"build {build_id}: released, deleted {len(removed)}: {', '.join(removed) or '-'}")
    return 0


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
                                              "in order, the requests they send (made by the steps' own code, "
                                              "tags included; a value only the build knows reads '<at run "
                                              "time: ...>'), the waits and the commands. Parameters not given "
                                              "with --param or the environment are shown as resolved at run time.")
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

    _revocation_commands(commands)
    # A failed build's kept instance (keep_on_failure_hours): keep.py.
    command = commands.add_parser("ssh", help="log in to a failed build's kept instance (or run a command on it)",
                                  description="Log in with OpenSSH to the instance a failed build kept "
                                              "(keep_on_failure_hours), or run COMMAND on it (after --).")
    command.add_argument("build_id", metavar="BUILD_ID")
    command.add_argument("remote_command", nargs="*", metavar="COMMAND", help="after --: run this, not a shell")
    command.add_argument("--user", help="default: the login the build used")
    command.add_argument("--region", help="default: the connection's")
    command.add_argument("--aws-conn-id", help="default: aws_default")
    command.set_defaults(run=lambda a: _kept("ssh", a.build_id, a.region, a.aws_conn_id, a.remote_command,
                                             a.user))
    command = commands.add_parser("release", help="tear down a failed build's kept instance now",
                                  description="Tear down the instance a failed build kept, and what it kept "
                                              "with it.")
    command.add_argument("build_id", metavar="BUILD_ID")
    command.add_argument("--region", help="default: the connection's")
    command.add_argument("--aws-conn-id", help="default: aws_default")
    command.set_defaults(run=lambda a: _kept("release", a.build_id, a.region, a.aws_conn_id))

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
