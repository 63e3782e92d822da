"""The python_callables of the dag-factory side of the parse benchmark (bench/parse.py).

dag-factory imports them by dotted path (``bench.dagfactory_steps.configure``) when it builds each
PythonOperator. They are never run: the benchmark only parses the DAGs.
"""

from __future__ import annotations


def create_builder_network(**context) -> None:
    pass


def launch_builder_instance(**context) -> None:
    pass


def configure(**context) -> None:
    pass


def register_image(**context) -> None:
    pass


def tear_down(**context) -> None:
    pass
