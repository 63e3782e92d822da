"""One Airflow DAG per image spec in include/specs/ (see plugins/image_factory).

Airflow only parses files that mention both "airflow" and "dag" (safe mode): this docstring does.
"""

import logging
from pathlib import Path

from image_factory.dag import build_dags
from image_factory.settings import specs_folder

dags, errors = build_dags(specs_folder(Path(__file__).resolve().parents[1] / "include" / "specs"))
for error in errors:
    # A bad spec costs only its own DAG; every other spec still loads.
    logging.getLogger("image_factory").error("spec not loaded: %s", error)
globals().update(dags)
