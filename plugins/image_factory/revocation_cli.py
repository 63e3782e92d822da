"""The ``revoke``, ``restore`` and ``rollback`` commands of ``bin/image-factory`` (cli.py wires them): the
regions and clients of the connection, the caller's identity as ``revoked-by``, and the report printed."""

from __future__ import annotations

import argparse
import functools

from image_factory import revocation
from image_factory.cli import OK, Failure, UsageError, _quiet_airflow, _specs_folder


def _regions(given: str | None) -> list[str]:
    regions = [r.strip() for r in given.split(",") if r.strip()] if given else revocation.spec_regions(_specs_folder())
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


def revoke(args: argparse.Namespace) -> int:
    _quiet_airflow()
    from image_factory.spec import channel_prefix

    regions = _regions(args.regions)
    ec2_in, ssm_in, made = _clients(args.aws_conn_id)

    def action():
        revocation.check_image_id(args.image)
        revocation.check_reason(args.reason)
        # Who: the caller's identity (STS GetCallerIdentity needs no permission).
        by = made(regions[0]).sts.get_caller_identity()["Arn"]
        return revocation.revoke(ec2_in, ssm_in, regions, args.image, args.reason, by, args.descendants,
                                 channel_prefix())

    return _run(f"cannot revoke {args.image}", action)


def restore(args: argparse.Namespace) -> int:
    _quiet_airflow()
    ec2_in, _, _ = _clients(args.aws_conn_id)
    regions = _regions(args.regions)
    return _run(f"cannot restore {args.image}", lambda: revocation.restore(ec2_in, regions, args.image))


def rollback(args: argparse.Namespace) -> int:
    _quiet_airflow()
    from image_factory.spec import channel_prefix

    ec2_in, ssm_in, _ = _clients(args.aws_conn_id)
    regions = _regions(args.regions)
    return _run(f"cannot roll back {args.spec}/{args.channel}", lambda: revocation.rollback(
        ec2_in, ssm_in, regions, args.spec, args.channel, args.to, channel_prefix()))


def add_commands(commands) -> None:
    """The three commands' parsers (cli.parser)."""
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
    command.set_defaults(run=revoke)

    command = commands.add_parser("restore", help="take a revocation back (moves no channel)",
                                  description="Enable IMAGE and its copies again, end their deprecation and "
                                              "remove the revocation tags. No channel moves: see rollback.")
    command.add_argument("image", metavar="IMAGE", help="a revoked AMI id")
    common(command)
    command.set_defaults(run=restore)

    command = commands.add_parser("rollback", help="move a channel back, in every region at once",
                                  description="Move SPEC's CHANNEL, in every region where it exists, to its "
                                              "previous value (the parameter's history) or to --to's build.")
    command.add_argument("spec", metavar="SPEC", help="a spec name")
    command.add_argument("channel", metavar="CHANNEL", help="a channel name (latest, stable, ...)")
    command.add_argument("--to", metavar="AMI", help="a tested, not revoked image of the spec")
    common(command)
    command.set_defaults(run=rollback)
