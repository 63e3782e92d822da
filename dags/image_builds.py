"""One Airflow DAG per image spec in include/specs/ (see plugins/image_factory).

Airflow only parses files that mention both "airflow" and "dag" (safe mode): this docstring does.
"""

import gc
import logging
from pathlib import Path

from airflow.sdk import get_parsing_context

from image_factory.dag import build_dag
from image_factory.settings import load as load_settings
from image_factory.settings import specs_folder
from image_factory.spec import load_specs

# A task process needs only its own DAG (Airflow names it in the parsing context); the dag-processor, all.
wanted = get_parsing_context().dag_id
specs, errors = load_specs(specs_folder(Path(__file__).resolve().parents[1] / "include" / "specs"), only=wanted)
for error in errors:
    # A bad spec costs only its own DAG; every other spec still loads.
    logging.getLogger("image_factory").error("spec not loaded: %s", error)
deployment = load_settings()  # once per file, not once per DAG
# The DAGs are all kept: collecting garbage while they are made only costs time (about a tenth of it).
collecting = gc.isenabled()
gc.disable()
try:
    for loaded in specs:
        if wanted is None or loaded.name == wanted:
            globals()[loaded.name] = build_dag(loaded, deployment)
finally:
    if collecting:
        gc.enable()
