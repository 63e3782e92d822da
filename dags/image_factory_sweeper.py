"""The Image Factory sweeper: an Airflow DAG that tears down builder resources whose build's teardown never ran.

The logic is in plugins/image_factory/sweeper.py (no Airflow there); this file only wires it to tasks.
Nothing here makes a network call or reads a Variable at parse time: the specs, the extra regions, the cloud
and the DAG run states are all read inside the tasks.
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task

from image_factory import settings
from image_factory.waits.schedule import schedule_for

log = logging.getLogger("image_factory")

DAG_ID = "image_factory_sweeper"
DEFAULT_SPECS = Path(__file__).resolve().parents[1] / "include" / "specs"
DEFAULT_CONN_ID = "aws_default"
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]$")

DOC = """\
# Image Factory sweeper

Each build's `tear_down` task deletes the build's builder resources (instances, incomplete images and their
snapshots, key pair and its SSM parameter, security group, subnet, VPC: the table of what builds make,
plugins/image_factory/resources.py) whatever failed, but only when it runs. A killed worker, a
lost scheduler, or a run marked failed by hand in the UI (which skips teardowns) leaves them behind. This DAG
finds them by their `image-factory:build-id` tag and runs the same teardown for them.

Every 30 minutes, for each region (and AWS connection) of the image specs (where they build and where they
copy their images to), plus the regions in
`[image_factory] sweeper_regions` (`AIRFLOW__IMAGE_FACTORY__SWEEPER_REGIONS`, comma separated, with the
`aws_default` connection), one `sweep_region` task:

1. lists every resource tagged `image-factory:build-id` of each kind of that table (instances not
   terminated, images not marked complete and their snapshots, key pairs, the builds' SSM parameters,
   security groups, subnets, VPCs), grouped by build;
2. sweeps a build when it was created more than `grace_minutes` ago **and** its DAG run (the spec's DAG,
   the run id in the `image-factory:dag-run-id` tag) is not running or queued (a run this Airflow does not
   know counts as not running), **or** when it was created more than `max_age_hours` ago whatever its run's
   state (a run left "running" by a scheduler that died);
3. tears each such build down with the build's own teardown (in the table's dependency order), logging
   every resource it deletes
   (`deleted <kind> <id>`); with `dry_run` it deletes nothing and logs `would delete <kind> <id>`.

Resources without the Image Factory build tag are never looked at. Completed images are outputs, not
leftovers. A build whose run state cannot be read is kept until it is older than `max_age_hours`.

Run states come from the Airflow API (the Task SDK), never from the metadata database. One sweeper per
Airflow deployment: a build of another deployment sharing the account is unknown here, so it is swept once
it is older than `grace_minutes`.
"""


def _int_param(params: dict, name: str, minimum: int) -> int:
    value = params[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"param {name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _not_found(exc: Exception) -> bool:
    """Whether an error of the Task SDK is the API's 404: no such DAG run.

    Under a worker's supervisor the SDK raises AirflowRuntimeError(API_SERVER_ERROR) with the HTTP status in
    its detail; in ``airflow dags test`` (tasks run in-process) the API client's ServerResponseError, an
    httpx.HTTPStatusError, arrives as it is.
    """
    error = getattr(exc, "error", None)
    detail = getattr(error, "detail", None)
    if isinstance(detail, dict) and detail.get("status_code") == 404:
        return True
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 404


def _dagrun_state(ti, dag_id: str, run_id: str) -> str | None:
    """The state of a DAG run, through the Task SDK (the API server, never the metadata database).

    None when Airflow has no such run: ``get_dagrun_state`` raises for an unknown run id (the API answers
    404), which is the case of a build run by another Airflow, or of a run deleted since.
    """
    try:
        state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
    except Exception as exc:
        if _not_found(exc):
            return None
        raise
    return getattr(state, "value", state)


with DAG(
    dag_id=DAG_ID,
    description="Tear down builder resources left by Image Factory builds whose teardown never ran",
    schedule="*/30 * * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["image-factory", "maintenance"],
    doc_md=DOC,
    params={
        "dry_run": Param(False, type="boolean",
                         description="Only log what would be deleted (`would delete <kind> <id>`); delete nothing."),
        "grace_minutes": Param(60, type="integer", minimum=0,
                               description="Leave builds created less than this many minutes ago alone, "
                                           "whatever the state of their DAG run."),
        "max_age_hours": Param(12, type="integer", minimum=1,
                               description="Sweep builds created more than this many hours ago even when "
                                           "their DAG run still says running or queued."),
    },
    default_args={"owner": "image-factory", "retries": 0},
) as dag:

    @task(task_id="sweep_targets")
    def sweep_targets() -> list[dict]:
        """The (AWS connection, region) pairs to sweep: the specs' ones and [image_factory] sweeper_regions."""
        from airflow.sdk import conf

        from image_factory.spec import load_specs

        specs, errors = load_specs(settings.specs_folder(DEFAULT_SPECS))
        for error in errors:
            log.warning("sweeper: spec not loaded (its region is swept only if listed in sweeper_regions): %s",
                        error)
        targets = set()
        for loaded in specs:
            region = loaded.image.region
            if REGION.match(region):
                targets.add((loaded.image.aws_conn_id, region))
            else:
                log.warning("sweeper: spec %s has region %r, known only at build time: list it in "
                            "[image_factory] sweeper_regions", loaded.name, region)
            # The regions it copies its images into: a copy left half-made there is swept too.
            distribute = loaded.image.distribute
            targets.update((loaded.image.aws_conn_id, r) for r in (distribute.regions if distribute else []))
        extra = conf.get(settings.SECTION, "sweeper_regions", fallback="") or ""
        for region in (r.strip() for r in extra.split(",")):
            if not region:
                continue
            if not REGION.match(region):
                raise ValueError(f"[image_factory] sweeper_regions: {region!r} is not an AWS region")
            targets.add((DEFAULT_CONN_ID, region))
        chosen = [{"aws_conn_id": conn_id, "region": region} for conn_id, region in sorted(targets)]
        log.info("sweeper: sweeping %s", ", ".join(f"{t['region']} ({t['aws_conn_id']})" for t in chosen) or
                 "nothing: no spec and no [image_factory] sweeper_regions")
        return chosen

    # One region at a time (two connections may reach the same account); each sweep bounded in time (a
    # teardown waits up to 15 minutes for instances to terminate): what is left is for the next run.
    @task(task_id="sweep_region", map_index_template="{{ sweep_target }}", max_active_tis_per_dag=1,
          execution_timeout=timedelta(hours=1))
    def sweep_region(target: dict) -> dict:
        from image_factory import aws, sweeper

        context = get_current_context()
        aws_conn_id, region = target["aws_conn_id"], target["region"]
        context["sweep_target"] = f"{region} ({aws_conn_id})"
        params = context["params"]
        dry_run = params["dry_run"]
        if not isinstance(dry_run, bool):
            raise ValueError(f"param dry_run: expected true or false, got {dry_run!r}")
        grace = timedelta(minutes=_int_param(params, "grace_minutes", 0))
        max_age = timedelta(hours=_int_param(params, "max_age_hours", 1))
        ti = context["ti"]

        clients = aws.clients(aws_conn_id, region)
        builds = sweeper.find_builds(clients.ec2, clients.ssm)
        log.info("sweeper: %s: %d builds with builder resources", region, len(builds))
        chosen = sweeper.orphans(builds, datetime.now(UTC), grace,
                                 lambda dag_id, run_id: _dagrun_state(ti, dag_id, run_id), max_age)
        summary = sweeper.sweep(clients.ec2, clients.ssm, chosen, dry_run,
                                schedule_for("instance_terminated", poll_interval=settings.load().poll_interval))
        if summary.failed:
            raise RuntimeError(f"sweeper: {region}: could not tear down {len(summary.failed)} builds: "
                               + "; ".join(f"{b}: {why}" for b, why in summary.failed.items()))
        return {"aws_conn_id": aws_conn_id, "region": region, **summary.to_dict()}

    sweep_region.expand(target=sweep_targets())
