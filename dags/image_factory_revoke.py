"""The Image Factory revoke and restore DAGs: ``bin/image-factory revoke`` and ``restore`` from the UI, with their
history and log in Airflow.

The logic is in plugins/image_factory/revocation.py (no Airflow there); this file wires it to a task each. The
trigger form's values are data: checked against the params' schema by Airflow, and again by the task.
Parsing makes no network call and reads no Variable.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param, get_current_context, task

from image_factory import settings

log = logging.getLogger("image_factory")

DAG_ID = "image_factory_revoke"
RESTORE_DAG_ID = "image_factory_restore"
DEFAULT_SPECS = Path(__file__).resolve().parents[1] / "include" / "specs"
DEFAULT_CONN_ID = "aws_default"

DOC = """\
# Image Factory revoke

Takes an image found bad (a vulnerable package, a leaked key) out of use. Trigger it with the form: the
image, the reason, and whether the images built on it are revoked too. One `revoke` task, in every region
the specs build or distribute in (connection `aws_default`):

- the image and its copies are tagged `image-factory:revoked` (the time), `image-factory:revoked-reason` and
  `image-factory:revoked-by` (the user who triggered this run), deprecated now and disabled (no new instance;
  running ones keep running);
- with **descendants**, every image whose `image-factory:origin-ami` leads to it (recursively, across specs
  and regions) is revoked too, its reason "descendant of ami-...";
- every channel naming a revoked image moves back to the newest earlier image of its spec that passed its
  tests and is not revoked, in every region at once; with none, the channel is deleted.

The log lists each image revoked and each channel moved or deleted; the specs' SNS topics get one message
(their `revocation` event). Builds then refuse a revoked origin;
retention keeps a revoked image `keep_revoked_days`. `bin/image-factory restore AMI` takes a revocation back.
"""

def maintenance_dag(dag_id: str, description: str, doc: str, params: dict) -> DAG:
    """A DAG run by hand from its trigger form, one run at a time."""
    return DAG(dag_id=dag_id, description=description, schedule=None,
               start_date=pendulum.datetime(2026, 1, 1, tz="UTC"), catchup=False, max_active_runs=1,
               tags=["image-factory", "maintenance"], doc_md=doc, params=params,
               default_args={"owner": "image-factory", "retries": 0})


def image_param(what: str) -> Param:
    return Param(type="string", pattern=r"^ami-[0-9a-f]{8,17}$", title="Image", description=f"The AMI id of {what}.")


with maintenance_dag(
    DAG_ID, "Revoke an image (and what is built on it): tagged, deprecated, disabled; channels moved back", DOC,
    params={
        "image": image_param("the Image Factory image to revoke"),
        "reason": Param(type="string", minLength=1, maxLength=200, pattern=r"^(?!.*\$\{)[^\x00-\x1f\x7f]+$",
                        title="Reason", description="Why (kept in its tags): one line, at most 200 characters."),
        "descendants": Param(False, type="boolean", title="Descendants",
                             description="Revoke every image built on it too (its lineage, recursively)."),
    },
) as dag:

    @task(task_id="revoke")
    def revoke() -> dict:
        from image_factory import aws, notify, revocation
        from image_factory.spec import channel_prefix, load_specs

        context = get_current_context()
        params = context["params"]
        image = revocation.check_image_id(params["image"])
        reason = revocation.check_reason(params["reason"])
        if not isinstance(params["descendants"], bool):
            raise revocation.RevocationError(f"param descendants: expected true or false, got "
                                             f"{str(params['descendants'])[:20]!r}")
        by = f"airflow:{context['dag_run'].triggering_user_name or 'unknown'}"
        specs, _ = load_specs(settings.specs_folder(DEFAULT_SPECS))
        regions = revocation.spec_regions(specs)
        made = {region: aws.clients(DEFAULT_CONN_ID, region) for region in regions}
        log.info("revoke %s (descendants: %s) in %s, by %s: %s", image, params["descendants"], ", ".join(regions),
                 by, reason)
        by_name = {loaded.image.name: loaded.image for loaded in specs}
        report = revocation.revoke(lambda r: made[r].ec2, lambda r: made[r].ssm, regions, image, reason, by,
                                   params["descendants"], channel_prefix(), specs=by_name)
        for line in report.lines():
            log.info("%s", line)
        # One message to each topic of the revoked images' specs: their `revocation` event.
        notify.notify_revocation(by_name.values(), image, reason, by, report, DEFAULT_CONN_ID,
                                 settings.load().default_topic())
        return {"revoked": report.revoked, "channels": report.channels}

    revoke()


RESTORE_DOC = """\
# Image Factory restore

Takes a revocation back (`bin/image-factory restore AMI` from the UI): the image and its copies, in every region
the specs build or distribute in, are enabled again, no longer deprecated, and their revocation tags removed.
No channel moves (`bin/image-factory rollback SPEC CHANNEL` moves one); images revoked as its descendants stay
revoked until each is restored. The log lists each image restored.
"""

with maintenance_dag(
    RESTORE_DAG_ID, "Take a revocation back: the image and its copies enabled, not deprecated, the tags gone",
    RESTORE_DOC, params={"image": image_param("the revoked Image Factory image to restore")},
) as restore_dag:

    @task(task_id="restore")
    def restore() -> dict:
        from image_factory import aws, revocation

        image = revocation.check_image_id(get_current_context()["params"]["image"])
        regions = revocation.folder_regions(settings.specs_folder(DEFAULT_SPECS))
        made = {region: aws.clients(DEFAULT_CONN_ID, region) for region in regions}
        report = revocation.restore(lambda r: made[r].ec2, regions, image)
        for line in report.lines():
            log.info("%s", line)
        return {"restored": report.restored}

    restore()
