"""The table of what a build makes (plugins/image_factory/resources.py), against half-made estates.

A build is stopped after each of its create calls in turn (a fail point, faults.py), driven step by step against
the local cloud. What it leaves is what the table finds, and the teardown, and the sweeper, each remove all of
it in the table's dependency order: no call answered DependencyViolation (or any other error), and no deletion
was made twice.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from image_factory import resources
from image_factory.build import Build
from image_factory.faults import ENV, InjectedFault
from image_factory.settings import Settings
from image_factory.spec import parse_spec
from image_factory.steps import image, infrastructure, instance, origin, teardown
from image_factory.sweeper import find_builds, orphans, sweep

AL2023 = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
SPEC = f"""
image:
  name: half-made-image
  origin: resolve:ssm:{AL2023}
  region: eu-west-1
  subnet: ${{IMAGE_BUILDER_SUBNET_ID}}
  egress_ports: [443]
"""
#: The fail point after each create call of a build, in the order the build makes them, and the kind of what
#: that call made (the image's register also makes its snapshots).
STOPS = [
    ("after:vpc", ["vpc"]),
    ("after:subnet", ["subnet"]),
    ("after:security-group", ["security-group"]),
    ("after:key-parameter", ["ssm-parameter"]),
    ("after:key-pair", ["key-pair"]),
    ("after:launch", ["instance"]),
    ("after:register", ["image (incomplete)", "snapshot"]),
]
CREATED = re.compile(r"^created (\S+) (\S+)")


def _camel(operation: str) -> str:
    return "".join(part.title() for part in operation.split("_"))


#: The API call that deletes each kind, as the table makes it (DeleteSecurityGroup: security-group, ...).
DELETED_BY = {_camel(operation): kind.name for kind in resources.KINDS
              for operation, _ in kind.calls([resources.Resource(kind.name, "x", "b")])}


def make_build(env: dict[str, str]) -> Build:
    settings = Settings(provisioner_cidr=env["AIRFLOW__IMAGE_FACTORY__PROVISIONER_CIDR"],
                        builder_vpc_cidr=env["AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_CIDR"], poll_interval=1)
    return Build(spec=parse_spec(SPEC), spec_hash="0" * 16, run_id=f"half-made-{uuid.uuid4()}", settings=settings)


@dataclasses.dataclass
class Estate:
    """What a build stopped at ``stop`` left: its build, the ids its create calls logged, and the record a
    setup that went through leaves (None when it failed)."""

    stop: str
    build: Build
    created: set[str]
    record: dict | None = None


def half_made(ec2, ssm, env, stop: str, monkeypatch, caplog) -> Estate:
    """A build run step by step (the DAG's steps, with waits in this process) until the fail point ``stop``."""
    build = make_build(env)
    estate = Estate(stop, build, set())
    caplog.clear()
    monkeypatch.setenv(ENV, stop)
    with caplog.at_level(logging.INFO, logger="image_factory"), pytest.raises(InjectedFault, match=stop):
        origin_image = origin.describe_origin(ec2, ssm, build.spec.origin, build.region)
        infra = infrastructure.create(ec2, ssm, build)
        estate.record = infra.to_dict()
        launched = dataclasses.replace(build, spec=build.spec.model_copy(update={"subnet": infra.subnet_id}))
        instance_id = instance.launch(ec2, launched, instance.launch_view(origin_image), infra.security_group_id,
                                      infra.key_name)["instance_id"]
        estate.record["instance_id"] = instance_id
        image.register(ec2, launched, instance_id, origin_image["ImageId"], f"half-made-{build.build_id}")
    monkeypatch.delenv(ENV)
    if stop != "after:register":
        estate.record = None  # the setup, or the launch, failed: the teardown has no record of it
    estate.created = {m.group(2) for r in caplog.records if (m := CREATED.match(r.getMessage()))}
    return estate


@contextmanager
def recording(*clients):
    """The calls the clients make, in order: (operation, arguments); restored on exit."""
    calls: list[tuple[str, dict]] = []

    def record(params, model, **_):
        calls.append((model.name, dict(params)))

    for client in clients:
        client.meta.events.register("provide-client-params", record, unique_id="test-resources-recording")
    try:
        yield calls
    finally:
        for client in clients:
            client.meta.events.unregister("provide-client-params", unique_id="test-resources-recording")


def deleted_ids(operation: str, arguments: dict) -> list[str]:
    return [i for v in arguments.values() for i in (v if isinstance(v, list) else [v]) if isinstance(i, str)]


def assert_in_dependency_order(calls: list[tuple[str, dict]], found: list[resources.Resource]) -> None:
    """Every kind's deletion came after the deletion of every kind it must come after (through others too),
    among the calls that named ``found``; each resource was deleted by exactly one call."""
    kind_of = {r.id: r.kind for r in found}
    order: list[str] = []  # the kind of each deletion call naming these resources, in order
    times: dict[str, int] = {}
    for operation, arguments in calls:
        if operation not in DELETED_BY:
            continue
        named = [i for i in deleted_ids(operation, arguments) if i in kind_of]
        if not named:
            continue
        assert {kind_of[i] for i in named} == {DELETED_BY[operation]}, (operation, arguments)
        for resource_id in named:
            times[resource_id] = times.get(resource_id, 0) + 1
        order.append(DELETED_BY[operation])
    assert times == dict.fromkeys(kind_of, 1), f"deleted more or less than once: {times}"

    def must_precede(kind: str) -> set[str]:
        direct = set(resources.BY_NAME[kind].after)
        return direct.union(*(must_precede(k) for k in direct)) if direct else set()

    for position, kind in enumerate(order):
        for earlier in must_precede(kind):
            assert earlier not in order[position:], f"{kind} deleted before {earlier}: {order}"
    terminate = [i for i, (operation, arguments) in enumerate(calls) if operation == "TerminateInstances"
                 and set(deleted_ids(operation, arguments)) & set(kind_of)]
    needing = [i for i, (operation, arguments) in enumerate(calls) if operation in DELETED_BY
               and set(deleted_ids(operation, arguments)) & set(kind_of)
               and "instance" in must_precede(DELETED_BY[operation])]
    if terminate and needing:  # what needs the instances gone waited until they were: a describe between
        assert any(operation == "DescribeInstances" for operation, _ in calls[terminate[-1]:needing[0]])


def assert_no_errors(local_cloud) -> None:
    errors = local_cloud.stats()["errors"]
    assert not any("DependencyViolation" in codes for codes in errors.values()), errors
    assert {name: codes for name, codes in errors.items() if name.split(":")[1] in DELETED_BY} == {}, errors


@pytest.fixture
def estates(local_cloud, ec2, ssm, monkeypatch, caplog):
    """One half-made build per fail point; whatever a test leaves of them is torn down after it."""
    env = local_cloud.env()
    made = [half_made(ec2, ssm, env, stop, monkeypatch, caplog) for stop, _ in STOPS]
    yield made
    for estate in made:
        teardown.tear_down(ec2, ssm, estate.build.build_id, 1)


def check_found(ec2, ssm, made: list[Estate]) -> dict[str, list[resources.Resource]]:
    """What the table finds of each estate: what its create calls made (and the image's snapshots), no more."""
    found = {}
    expected: list[str] = []
    for estate, (_, kinds) in zip(made, STOPS, strict=True):
        expected += kinds
        found[estate.build.build_id] = resources.find(ec2, ssm, estate.build.build_id)
        assert sorted(r.kind for r in found[estate.build.build_id]) == sorted(expected), estate.stop
        assert estate.created <= {r.id for r in found[estate.build.build_id]}, estate.stop
    return found


def test_the_table_lists_every_kind_after_what_must_go_first():
    names = [kind.name for kind in resources.ORDER]
    assert names == ["instance", "image (incomplete)", "snapshot", "key-pair", "ssm-parameter", "security-group",
                     "subnet", "vpc"]
    for kind in resources.ORDER:
        assert all(names.index(before) < names.index(kind.name) for before in kind.after)
    with pytest.raises(ValueError, match="must come after"):
        resources._ordered(tuple(reversed(resources.KINDS)))


def test_teardown_removes_each_half_made_estate_in_dependency_order(local_cloud, ec2, ssm, estates):
    found = check_found(ec2, ssm, estates)
    for estate in estates:
        build_id = estate.build.build_id
        local_cloud.reset_stats()
        with recording(ec2, ssm) as calls:
            removed = teardown.tear_down(ec2, ssm, build_id, 1, record=estate.record)
        assert_no_errors(local_cloud)
        assert_in_dependency_order(calls, found[build_id])
        assert set(removed) == {r.id for r in found[build_id]}, estate.stop
        assert resources.find(ec2, ssm, build_id) == [], estate.stop


def test_sweeper_removes_each_half_made_estate_in_dependency_order(local_cloud, ec2, ssm, estates, caplog):
    found = check_found(ec2, ssm, estates)
    ours = {estate.build.build_id for estate in estates}
    builds = {build_id: b for build_id, b in find_builds(ec2, ssm).items() if build_id in ours}
    for build_id, build in builds.items():  # the sweeper finds what the table finds
        assert sorted(build.resources) == sorted((r.kind, r.id) for r in found[build_id])
    chosen = orphans(builds, datetime.now(UTC), timedelta(0), lambda spec, run: None, timedelta(hours=12))
    assert {o.build_id for o in chosen} == ours
    local_cloud.reset_stats()
    with recording(ec2, ssm) as calls, caplog.at_level(logging.INFO, logger="image_factory"):
        summary = sweep(ec2, ssm, chosen, dry_run=False, schedule=1)
    assert summary.failed == {}
    assert_no_errors(local_cloud)
    assert "still in use" not in caplog.text
    for build_id in ours:
        assert_in_dependency_order(calls, found[build_id])
        assert set(summary.deleted[build_id]) == {r.id for r in found[build_id]}
        assert resources.find(ec2, ssm, build_id) == []
