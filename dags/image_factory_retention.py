"""The Image Factory retention DAG: deprecates and deletes old images of the specs that have a ``retention``
section, never one that is used. The rules are in plugins/image_factory/retention.py (no Airflow there); this
file only wires them to a task. Parsing reads the spec files only: no network call, no Variable.
"""

from __future__ import annotations

import functools
import logging
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task
from airflow.sdk.definitions.timetables.assets import AssetOrTimeSchedule
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

from image_factory import settings
from image_factory.assets import image_asset
from image_factory.spec import load_specs

log = logging.getLogger("image_factory")

DAG_ID = "image_factory_retention"
DAILY = "0 3 * * *"
DEFAULT_SPECS = Path(__file__).resolve().parents[1] / "include" / "specs"

DOC = """\
# Image Factory retention

Every day at 03:00 UTC, and after each promotion of a spec that has a `retention` section, one
`retire_images` task looks at every image of those specs, in each region they are built or distributed in:

- **never touched**: an image a channel names (in any region: the build's original and copies with it), an
  image used by an instance that is pending, running, stopping or stopped, an image named by the default or
  latest version of a launch template (directly or through an SSM parameter), an image not yet complete, and
  anything without Image Factory's `image-factory:spec` tag (never even listed);
- **kept**: the newest `keep` complete images of the region besides those, and failed images younger than
  `keep_failed_hours`;
- **deprecated** (EnableImageDeprecation) beyond `keep` once `deprecate_after_days` old; **deleted**
  (deregistered, its snapshots with it) once `delete_after_days` old, or at once beyond `keep` when the spec
  gives neither; failed images once `keep_failed_hours` old.

Every verdict is logged with its reason (`keep ...: a channel names it: ...`, `deprecated ...`, `deleted
...`); with `dry_run` nothing changes and the log says `would deprecate` / `would delete`. A summary per spec
ends the log. A region costs four listings (images, instances, launch template versions, channels) whatever
the number of images.
"""


def _rules() -> tuple[list, list]:
    specs, errors = load_specs(settings.specs_folder(DEFAULT_SPECS))
    return [s.image for s in specs if s.image.retention is not None], errors


def _schedule(kept: list):
    if not kept:
        return DAILY
    promoted = functools.reduce(lambda left, right: left | right, [image_asset(spec.name) for spec in kept])
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(DAILY, timezone="UTC"), assets=promoted)


with DAG(
    dag_id=DAG_ID,
    description="Deprecate and delete old images that nothing uses",
    schedule=_schedule(_rules()[0]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["image-factory", "maintenance"],
    doc_md=DOC,
    params={"dry_run": Param(False, type="boolean", description="Only log what would be deprecated or deleted "
                                                                 "(`would deprecate`, `would delete`).")},
    default_args={"owner": "image-factory", "retries": 1, "retry_delay": timedelta(minutes=5)},
) as dag:

    @task(task_id="retire_images", execution_timeout=timedelta(hours=1))
    def retire_images() -> dict:
        from image_factory import aws, retention
        from image_factory.spec import channel_prefix

        dry_run = get_current_context()["params"]["dry_run"]
        if not isinstance(dry_run, bool):
            raise ValueError(f"param dry_run: expected true or false, got {dry_run!r}")
        specs, errors = _rules()
        for error in errors:
            log.warning("retention: spec not loaded, its images are left alone: %s", error)
        if not specs:
            log.info("retention: no spec has a retention section: nothing to do")
            return {"dry_run": dry_run, "specs": {}, "failed": {}, "calls": {}}
        summary, calls = {"dry_run": dry_run, "specs": {}, "failed": {}}, {}
        for conn_id in sorted({spec.aws_conn_id for spec in specs}):
            mine = [spec for spec in specs if spec.aws_conn_id == conn_id]
            clients = {region: aws.clients(conn_id, region)
                       for region in sorted({r for spec in mine for r in retention.regions_of(spec)})}
            surveys = [retention.survey(c.ec2, c.ssm, region, channel_prefix()) for region, c in clients.items()]
            verdicts = retention.judge(surveys, {spec.name: spec.retention for spec in mine})
            ec2_of = {region: c.ec2 for region, c in clients.items()}.__getitem__
            outcome = retention.carry_out(ec2_of, verdicts, dry_run).summary()
            summary["specs"].update(outcome["specs"])
            summary["failed"].update(outcome["failed"])
            calls.update({f"{s.region} ({conn_id})": dict(s.calls) for s in surveys})
        log.info("retention: describe calls by region: %s", calls)
        if summary["failed"]:
            raise RuntimeError(f"retention: {len(summary['failed'])} actions failed: {summary['failed']}")
        return {**summary, "calls": calls}

    retire_images()
