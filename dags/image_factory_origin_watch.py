"""Image Factory origin watch: an Airflow DAG that rebuilds specs whose origin image changed.

For every spec with `rebuild_on_origin_change: true`, one task resolves the origin (an SSM public parameter
or a name filter usually moves when the vendor publishes a new image) and compares it with the origin of the
spec's newest complete image. When they differ it emits an event on the spec's origin asset, which the
spec's DAG is scheduled on; otherwise it is skipped and emits nothing. The same new origin is announced once.
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from image_factory import aws
from image_factory.assets import origin_asset
from image_factory.errors import permanent_aws_errors
from image_factory.origin_watch import new_origin
from image_factory.settings import specs_folder
from image_factory.spec import load_specs

specs, _ = load_specs(specs_folder(Path(__file__).resolve().parents[1] / "include" / "specs"))
watched = [s.image for s in specs if s.image.rebuild_on_origin_change]

with DAG(
    dag_id="image_factory_origin_watch",
    description="Rebuild images whose origin changed",
    schedule="@hourly",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["image-factory", "maintenance"],
    doc_md=__doc__,
    default_args={"owner": "image-factory", "retries": 2},
):
    for spec in watched:
        asset = origin_asset(spec.name)

        @task(task_id=f"watch_{spec.name}", inlets=[asset], outlets=[asset])
        def watch(spec=spec, asset=asset) -> str:
            context = get_current_context()
            c = aws.clients(spec.aws_conn_id, spec.region)
            with permanent_aws_errors():
                current = new_origin(c.ec2, c.ssm, spec)
            if current is None:
                raise AirflowSkipException("origin unchanged")
            latest = list(context["inlet_events"][asset].ascending(False).limit(1))
            if latest and latest[0].extra.get("origin") == current:
                raise AirflowSkipException(f"origin {current} was announced already; its build is on its way")
            context["outlet_events"][asset].extra = {"origin": current}
            return current

        watch()
