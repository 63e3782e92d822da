"""``--airflow-setting AIRFLOW__SECTION__KEY=VALUE``: an Airflow setting the benchmark's deployments get beyond
their own (the concurrency benchmark and the floor), from the command line to the sentence of the results that
says a run was tuned."""

from __future__ import annotations

import argparse
import re

#: An Airflow setting as an environment variable (``--airflow-setting``).
AIRFLOW_SETTING = re.compile(r"AIRFLOW__[A-Z0-9_]+__[A-Z0-9_]+")


def airflow_setting(text: str) -> tuple[str, str]:
    """``AIRFLOW__SECTION__KEY=VALUE`` (an argparse type): a setting the benchmark's deployments get beyond
    their own, to measure what it does."""
    key, sep, value = text.partition("=")
    if not sep or not AIRFLOW_SETTING.fullmatch(key):
        raise argparse.ArgumentTypeError(f"{text!r}: expected AIRFLOW__SECTION__KEY=VALUE")
    return key, value


def add_airflow_setting(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """The ``--airflow-setting`` option (``benchmark``: the help's prefix where a command runs several)."""
    parser.add_argument("--airflow-setting", type=airflow_setting, action="append", metavar="AIRFLOW__S__K=V",
                        help=f"{benchmark}an Airflow setting the benchmark's deployments get beyond their own "
                             "(repeat; the results then say the run was tuned and list it)")


def tuned(settings: dict[str, str] | None) -> str:
    """The sentence that says which settings a run had beyond the deployment's own."""
    if not settings:
        return "Airflow settings: the deployment's own, nothing added."
    return ("**Tuned**: Airflow settings added to the deployment's own (compare with a run without them): "
            + ", ".join(f"`{key}={value}`" for key, value in settings.items()) + ".")
