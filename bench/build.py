"""Build latency: image builds end to end on the local cloud with AWS-like state-change times, Image Factory
under a real Airflow scheduler vs HashiCorp Packer (amazon-ebs) measured in the same run: three builds on each
side, one after the other (``--latency-builds``), medians reported (one build varies by about a second: the
scheduler's and the triggerer's loops).

``python -m bench.run build-latency`` (or ``python -m bench.build``, which writes
bench/results/results-build-<date>.md), from the project root with ``PYTHONPATH=plugins:.``.

The local cloud (a fresh one, in a temporary directory) emulates boot 20 s, stop 5 s, image 30 s and
terminate 5 s (localcloud/proxy.py), so a build cannot take less than 20 + 5 + 30 = 55 s to its image.
Two settings, each side measured at both: first the defaults a user gets (Image Factory: no poll_interval, so
each wait polls on the schedule fitted to the spec's recent builds, the first on priors; Packer: no
``AWS_POLL_DELAY_SECONDS``), then both polling every 2 s (Image Factory: ``[image_factory] poll_interval``, and
the stop before the image at half of it; Packer: ``AWS_POLL_DELAY_SECONDS``). The API calls are counted by the
local cloud's front, reset before each build.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench import Result, Row
from bench.cloud import BUILD_TAG, LATENCY, MINIMUM, POLL, REGION, available_after, client, fresh_cloud, warm_up
from bench.report import ratio, run_and_publish, secs
from localcloud.cloud import LocalCloud, free_port
from localcloud.postgres import install_debian_package

PROJECT = Path(__file__).resolve().parents[1]
DAG_ID = "shopspinner-linux-image"
#: The settings measured, in this order: the defaults a user gets (None), then both sides polling every 2 s.
SETTINGS = (None, POLL)
BUILD_TIMEOUT = 900  # seconds one build may take at most
BUILDS = 3  # builds on each side: the table shows medians


def _calls(cloud: LocalCloud) -> dict[str, int]:
    return {name: count for name, count in cloud.stats()["calls"].items()}


# --- Image Factory under a real scheduler ----------------------------------------------------------------------


def spec_copy(folder: Path, lifecycle: bool) -> None:
    """The shipped spec without its nightly schedule (unpausing it then starts no run); without ``lifecycle``
    also without its tests and promotion: the build Packer does too."""
    folder.mkdir()
    lines = (PROJECT / "include/specs" / f"{DAG_ID}.yaml").read_text().splitlines(keepends=True)
    kept, skipping = [], False
    for line in lines:
        key = line.strip().split(":", 1)[0]
        if line.startswith("  ") and not line.startswith("   "):  # a key of image:
            skipping = key == "schedule" or (not lifecycle and key in ("test", "promote"))
        if not skipping:
            kept.append(line)
    (folder / f"{DAG_ID}.yaml").write_text("".join(kept))


@contextlib.contextmanager
def scheduler_stack(cloud: LocalCloud, work: Path, poll: float | None, lifecycle: bool = False):
    """A real Airflow (scheduler, triggerer, api-server, dag-processor, LocalExecutor) on PostgreSQL, building
    the spec copy on ``cloud``, its DAG unpaused."""
    from bench import postgres
    from localcloud.airflow_stack import AirflowStack

    specs = work / "specs"
    spec_copy(specs, lifecycle)

    # The builder subnet goes into the region's default VPC, where Packer's instance goes: a deployment's
    # builder VPC ([image_factory] builder_vpc_id), as in production, rather than a VPC per build.
    default_vpc = client(cloud, "ec2").describe_vpcs(
        Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]

    class Stack(AirflowStack):
        def env(self) -> dict[str, str]:
            env = {**super().env(), "AIRFLOW__IMAGE_FACTORY__SPECS_FOLDER": str(specs),
                   "AIRFLOW__IMAGE_FACTORY__BUILDER_VPC_ID": default_vpc,
                   "AIRFLOW__IMAGE_FACTORY__ROLES_FOLDER": str(PROJECT / "include/roles")}
            env.pop("AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL", None)  # the local cloud's own setting: not a default
            if poll:
                env["AIRFLOW__IMAGE_FACTORY__POLL_INTERVAL"] = str(poll)
            return env

    # Airflow's database on PostgreSQL, as a deployment has it: on SQLite the scheduler starts a new run only
    # once the clock has passed the whole second after its creation (SQLite's now() has no fraction).
    with postgres.server() as pg, Stack(work / "airflow", cloud, port=free_port(), database_url=pg.url,
                                        database_async_url=pg.async_url) as stack:
        stack.wait_until_healthy()
        stack.wait_for_dag(DAG_ID, timeout=300)
        stack.api("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        yield stack


def image_factory(cloud: LocalCloud, work: Path, builds: int, poll: float | None) -> list[dict]:
    """``builds`` builds one after the other, each triggered through the REST API when the one before ended
    (the later ones poll on what the earlier ones saw, unless ``poll`` fixes the interval)."""
    with scheduler_stack(cloud, work, poll) as stack:
        return [_one_build(stack, cloud) for _ in range(builds)]


def _one_build(stack, cloud: LocalCloud) -> dict:
    from image_factory.build import TAG_COMPLETE, build_id_for

    ec2 = client(cloud, "ec2")
    cloud.reset_stats()
    started, started_wall = time.monotonic(), time.time()
    run = stack.api("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": {}})
    build_id = build_id_for(DAG_ID, run["dag_run_id"])
    to_complete = None
    state = run.get("state")
    for _ in range(BUILD_TIMEOUT):
        if to_complete is None:
            images = ec2.describe_images(Owners=["self"], Filters=[
                {"Name": f"tag:{BUILD_TAG}", "Values": [build_id]},
                {"Name": f"tag:{TAG_COMPLETE}", "Values": ["true"]}])["Images"]
            if images:
                to_complete = time.monotonic() - started
                image_id = images[0]["ImageId"]
        state = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}")["state"]
        if state in ("success", "failed") or time.monotonic() - started > BUILD_TIMEOUT:
            break
        time.sleep(1)
    to_end = time.monotonic() - started
    calls = _calls(cloud)
    to_image = available_after(cloud, image_id, started_wall) if to_complete is not None else None
    tasks = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
    steps = {t["task_id"]: (t["state"], t.get("duration")) for t in tasks}
    configured = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/configure/"
                                  "xcomEntries/return_value")["value"]
    configured = json.loads(configured) if isinstance(configured, str) else configured
    # Seconds the run spent between its tasks up to the image (scheduling, task process start-up).
    spans = sorted((datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"]))
                   for t in tasks if t.get("start_date") and t.get("end_date") and t["task_id"] != "tear_down")
    in_tasks = sum((end - start).total_seconds() for start, end in spans)
    if state != "success" or to_image is None:
        raise RuntimeError(f"the Image Factory build did not succeed: run {state}, tasks {steps}; "
                           f"logs in {stack.home}")
    return {"to_image": to_image, "to_complete": to_complete, "to_end": to_end, "calls": calls, "steps": steps,
            "in_tasks": in_tasks, "role": configured.get("role_seconds")}


# --- Packer -----------------------------------------------------------------------------------------------


def packer(cloud: LocalCloud, work: Path, source_ami: str, builds: int, poll: float | None) -> tuple[str, list[dict]]:
    """Packer's version and its ``builds`` builds, one after the other (a failed one ends the series)."""
    binary = shutil.which("packer") or _install_packer()
    if binary is None:
        return "", [{"error": "packer is not installed and could not be (apt-get install -y packer)"}]
    version = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=60).stdout.strip()
    results = []
    for number in range(1, builds + 1):
        results.append(_packer_build(binary, cloud, work / f"packer-{number}", source_ami, poll))
        if "error" in results[-1]:
            break
    return version, results


def _packer_build(binary: str, cloud: LocalCloud, work: Path, source_ami: str, poll: float | None) -> dict:
    work.mkdir()
    ec2 = client(cloud, "ec2", counted=True)
    # A key pair imported here, as the spec's builds are given theirs (Packer 1.6.6 cannot tag a temporary one):
    # the local cloud's machine of the instance trusts its public key, as cloud-init would.
    key = work / "packer-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60)
    key_name = f"packer-bench-{int(time.time())}-{work.name}"
    ec2.import_key_pair(KeyName=key_name, PublicKeyMaterial=(work / "packer-key.pub").read_bytes(),
                        TagSpecifications=[{"ResourceType": "key-pair",
                                            "Tags": [{"Key": BUILD_TAG, "Value": key_name}]}])
    template = {
        "builders": [{
            "type": "amazon-ebs",
            "access_key": "testing", "secret_key": "testing", "region": REGION,
            "custom_endpoint_ec2": cloud.endpoint, "skip_region_validation": True,
            "skip_metadata_api_check": True,
            "source_ami": source_ami, "instance_type": "t3.small", "ami_name": key_name,
            "ssh_keypair_name": key_name, "ssh_private_key_file": str(key), "ssh_username": "ec2-user",
            "ssh_interface": "private_ip", "ssh_timeout": "2m",
            "tags": {"Name": key_name, "team": "shopspinner"},
        }],
        "provisioners": [{
            "type": "shell",
            "scripts": [str(p) for p in sorted((PROJECT / "include/roles/appserver").glob("*.sh"))],
            "environment_vars": ["IMAGE_FACTORY_SERVER_ROLE=appserver", f"IMAGE_FACTORY_IMAGE_NAME={DAG_ID}",
                                 f"IMAGE_FACTORY_BUILD_ID={key_name}"],
        }],
    }
    (work / "packer.json").write_text(json.dumps(template, indent=2))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PACKER_CACHE_DIR": str(work / "packer-cache"),
           "CHECKPOINT_DISABLE": "1", "PACKER_LOG": "1", "PACKER_LOG_PATH": str(work / "packer.log")}
    if poll:  # else Packer's own defaults
        env.update({"AWS_POLL_DELAY_SECONDS": str(poll), "AWS_MAX_ATTEMPTS": "300"})
    cloud.reset_stats()
    started, started_wall = time.monotonic(), time.time()
    try:
        result = subprocess.run([binary, "build", "-machine-readable", str(work / "packer.json")], env=env,
                                cwd=work, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"error": f"packer build did not end within {BUILD_TIMEOUT} s"}
    to_end = time.monotonic() - started
    calls = _calls(cloud)
    (work / "packer.out").write_text(result.stdout + result.stderr)
    to_complete = _packer_image_time(result.stdout, started_wall)
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [key_name]}])["Images"]
    if result.returncode != 0 or not images:
        tail = "\n".join(line for line in result.stdout.splitlines() if ",error," in line or "ui,error" in line)
        return {"error": f"packer build exited {result.returncode}: {tail[-800:] or result.stdout[-800:]}",
                "calls": calls}
    return {"to_image": available_after(cloud, images[0]["ImageId"], started_wall), "to_complete": to_complete,
            "to_end": to_end, "calls": calls}


def _install_packer() -> str | None:
    """Debian's packer, installed when missing."""
    try:
        install_debian_package("packer")
    except RuntimeError as exc:
        print(exc, flush=True)
        return None
    return shutil.which("packer")


def _packer_image_time(machine_readable: str, started_wall: float) -> float | None:
    """Seconds from the start to Packer's first line after its wait for the AMI (machine-readable time stamps,
    whole seconds): "Adding tags to AMI", or the next step when there are no tags."""
    waiting = False
    for line in machine_readable.splitlines():
        stamp = line.split(",", 1)[0]
        if not stamp.isdigit():
            continue
        if "Waiting for AMI to become ready" in line:
            waiting = True
        elif waiting and ",ui,say," in line:
            return max(0.0, int(stamp) - started_wall)
    return None


# --- the table ----------------------------------------------------------------------------------------------


def _ec2(calls: dict[str, int]) -> int:
    return sum(count for action, count in calls.items() if action.startswith("ec2:"))


def measure(builds: int = BUILDS, poll: float | None = POLL) -> tuple[list[dict], str, list[dict]]:
    """Image Factory's builds, Packer's version and its builds, all on one fresh local cloud, both sides at
    ``poll`` (None: each at its defaults)."""
    with fresh_cloud("bench-build-") as (work, cloud):
        cloud.configure(latency=LATENCY)
        print(f"local cloud {cloud.endpoint}, latency {LATENCY}; work in {work}", flush=True)
        source_ami = warm_up(cloud)
        print(f"Image Factory: {builds} {DAG_ID} builds under the scheduler, one after the other ...", flush=True)
        ours = image_factory(cloud, work, builds, poll)
        for build in ours:
            print(f"  {build}", flush=True)
        print(f"Packer: the same build (amazon-ebs), {builds} times ...", flush=True)
        try:
            version, peer = packer(cloud, work, source_ami, builds, poll)
        except Exception as exc:  # a failing peer is a result
            version, peer = "", [{"error": f"{type(exc).__name__}: {exc}"}]
        for build in peer:
            print(f"  {build}", flush=True)
    return ours, version, peer


def _median(builds: list[dict], key: str) -> float | None:
    values = [build[key] for build in builds if build.get(key) is not None]
    return statistics.median(values) if values else None


def _spread(builds: list[dict], key: str) -> str:
    values = sorted(build[key] for build in builds if build.get(key) is not None)
    return f"{values[0]:.1f}-{values[-1]:.1f} s" if values else "-"


def _setting(poll: float | None) -> str:
    return "at the defaults" if poll is None else f"every {poll:g} s"


def result(ours: list[dict], version: str, peer: list[dict], poll: float | None = POLL) -> Result:
    name = f"build-latency {_setting(poll)}"
    note_peer = next((build["error"] for build in peer if "error" in build), "")
    done = [build for build in peer if "error" not in build]
    n = len(ours)
    # The API calls of each side's build that made the most EC2 calls: the goal is "no more than Packer's".
    ours_calls = max((build["calls"] for build in ours), key=_ec2)
    peer_calls = max((build["calls"] for build in done), key=_ec2) if done else None

    def timed(measure: str, key: str, note: str) -> Row:
        mine, theirs = _median(ours, key), _median(done, key)
        return Row(name, f"{measure} (median of {n})", secs(mine), secs(theirs), ratio(theirs, mine),
                   f"{note}; ours {_spread(ours, key)}, Packer {_spread(done, key)}")

    image, peer_image = _median(ours, "to_image"), _median(done, "to_image")
    # No tool makes the image before the emulated AWS times and the role's own work on the instance have passed
    # (the same role on both sides, on the same machines): the role's time as our configure task measured it.
    role = _median(ours, "role") or 0.0
    least = MINIMUM + role
    rows = [
        timed("time to image available", "to_image",
              f"minimum {least:.1f} s (emulated {MINIMUM} s + the role's own {role:.1f} s on the instance); "
              f"ours/minimum {image / least:.2f}" + (f", Packer/minimum {peer_image / least:.2f}" if peer_image else "")
              + f" (against the emulated {MINIMUM} s alone: ours {image / MINIMUM:.2f}"
              + (f", Packer {peer_image / MINIMUM:.2f}" if peer_image else "") + ")"),
        timed("time until the build knows", "to_complete",
              "image tagged complete / Packer's next line after its AMI wait (whole seconds)"),
        timed("time to teardown done", "to_end", "trigger to run success / packer build exit"),
        Row(name, "EC2 API calls (the most in one build)", str(_ec2(ours_calls)),
            str(_ec2(peer_calls)) if peer_calls else "-", ratio(_ec2(peer_calls or {}), _ec2(ours_calls)),
            "the goal's count: no more than Packer's; per build: ours "
            f"{', '.join(str(_ec2(b['calls'])) for b in ours)}, Packer "
            f"{', '.join(str(_ec2(b['calls'])) for b in done) or '-'}"),
        Row(name, "EC2+SSM API calls (the most in one build)", str(sum(ours_calls.values())),
            str(sum(peer_calls.values())) if peer_calls else "-",
            ratio(sum((peer_calls or {}).values()), sum(ours_calls.values())), note_peer[:200]),
    ]
    actions = sorted(set(ours_calls) | set(peer_calls or {}))
    lines = ["| API call | Image Factory | Packer |", "|---|---:|---:|"]
    lines += [f"| {a} | {ours_calls.get(a, 0)} | {peer_calls.get(a, 0) if peer_calls else '-'} |" for a in actions]
    steps = "; ".join(f"build {number}: " + ", ".join(f"{task} {d:.1f} s" for task, (_, d) in build["steps"].items()
                                                     if d is not None)
                      for number, build in enumerate(ours, 1))
    in_tasks = "; ".join(f"{build['in_tasks']:.1f} of {build['to_complete']:.1f} s" for build in ours)
    details = [
        f"**{name}.** {n} `{DAG_ID}` builds on each side, one after the other, on a fresh local cloud "
        f"emulating AWS state-change times (boot {LATENCY['instance_running']} s, stop "
        f"{LATENCY['instance_stopped']} s, image {LATENCY['image_available']} s, terminate "
        f"{LATENCY['instance_terminated']} s: {MINIMUM} s to an image at the least, and the role's own work on the "
        "instance, the same on both sides: apt-get installing nginx-light from the cloud's mirror); medians, and "
        "each side's "
        f"range. {_polling(poll)} Image Factory: "
        "AirflowStack (scheduler, dag-processor, triggerer, api-server, LocalExecutor) on a PostgreSQL server "
        "the benchmark starts (bench/postgres.py), each run created by the REST API once the one before "
        "ended, the end when the run is success. Packer: `packer build` of an amazon-ebs template with "
        "`custom_endpoint_ec2` = the local cloud and a key pair imported beforehand with the "
        "image-factory:build-id tag (Packer 1.6.6 cannot tag its temporary key pair, and the local sshd trusts "
        f"only tagged key pairs). Packer: {version or '?'}. Before either side, the benchmark resolves the origin "
        "AMI and launches and terminates an instance with an encrypted root volume in moto itself (not counted): "
        "the emulator's first-call costs fall on neither side. *Time to image available* is read from the local "
        "cloud for both sides: the moment its CreateImage answer plus the emulated image time have passed (when "
        "DescribeImages first shows the image available), whatever each side's polling. *Time until the build "
        "knows* adds each side's lag in seeing it: Image Factory's image tagged image-factory:complete=true "
        "(read from the emulator every second), Packer's first line after 'Waiting for AMI to become ready' "
        "(its time stamps are whole seconds).",
        f"Image Factory step durations (as the REST API shows them): {steps}. Up to the image tagged complete, "
        f"the time spent inside tasks (deferred waits included), the rest being before the first and between "
        f"tasks (scheduling, task process start-up): {in_tasks}.",
        "Not alike on both sides: Image Factory resolves the origin AMI from SSM, makes and deletes a subnet (in "
        "the default VPC, given as the deployment's builder VPC), a security group with its own ingress and "
        "egress rules, a key pair and an SSM parameter holding its private key, all counted; Packer was given "
        "the AMI id and the key pair (imported before counting), makes only a temporary security group and "
        "uses the default VPC. Image Factory runs each step as an Airflow task (a process each, under the "
        "scheduler), Packer is one process.",
        "API calls by action of each side's build with the most EC2 calls (counted by the local cloud's front, "
        "reset before each build):\n\n" + "\n".join(lines),
        *([_learning(ours)] if poll is None else []),
    ]
    if note_peer:
        details.append(f"Packer did not give a figure: {note_peer}")
    return Result(rows, details)


def _polling(poll: float | None) -> str:
    if poll is None:
        return ("Each side at its defaults: Image Factory with no poll_interval (each wait polls on the schedule "
                "of plugins/image_factory/waits/schedule.py: a spec's first build on priors, the later ones fitted to "
                "the windows the earlier ones saw); Packer with no AWS_POLL_DELAY_SECONDS or AWS_MAX_ATTEMPTS.")
    return (f"Both sides poll every {poll:g} s, but for the stop before the image, which Image Factory polls at "
            f"half its interval (every {poll / 2:g} s: a short wait that CreateImage waits for).")


def _learning(ours: list[dict]) -> str:
    """Per build at the defaults: the figures that show the schedule learning from the builds before."""
    return "Image Factory at the defaults, build by build (the first on priors): " + "; ".join(
        f"build {number}: image {build['to_image']:.1f} s, run done {build['to_end']:.1f} s, "
        f"{_ec2(build['calls'])} EC2 calls ({build['calls'].get('ec2:DescribeInstances', 0)} DescribeInstances, "
        f"{build['calls'].get('ec2:DescribeImages', 0)} DescribeImages)" for number, build in enumerate(ours, 1))


def run(args: argparse.Namespace) -> Result:  # the bench.run signature
    """Both settings, the defaults first: one table, each setting's rows under its own name."""
    rows, details = [], []
    for poll in SETTINGS:
        measured = result(*measure(getattr(args, "latency_builds", BUILDS), poll), poll=poll)
        rows += measured.rows
        details += measured.details
    return Result(rows, details)


def main() -> int:
    run_and_publish(lambda: run(argparse.Namespace(latency_builds=BUILDS)), "`python -m bench.build`", None, "build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
