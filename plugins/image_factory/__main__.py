"""``python -m image_factory``: the command line (see :mod:`image_factory.cli`)."""

# Airflow's plugin manager imports each .py file under plugins/ by its bare name ("__main__" for this one)
# unless plugins/.airflowignore leaves it out: run only when Python runs the package, `python -m image_factory`.
if __name__ == "__main__" and __spec__ is not None and __spec__.name == "image_factory.__main__":
    from image_factory.cli import main

    raise SystemExit(main())
