"""Shows broken image specs in the Airflow UI.

Airflow lists a DAG file that fails to import, with its error, at the top of the UI ("Dag Import Errors").
This file loads the same specs as image_builds.py and fails with one line per problem (file, field, what was
expected) when any spec is broken, while image_builds.py still builds a DAG for every good spec. It defines no
dag of its own.
"""

from pathlib import Path

from image_factory.settings import specs_folder
from image_factory.spec import load_specs

_, errors = load_specs(specs_folder(Path(__file__).resolve().parents[1] / "include" / "specs"))
if errors:
    problems = "\n".join(str(error) for error in errors)
    raise ValueError(f"{len(errors)} image spec(s) not loaded; their DAGs are missing:\n{problems}")
