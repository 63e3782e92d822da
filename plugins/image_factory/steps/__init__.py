"""The build's steps: plain functions over boto3 clients and a :class:`~image_factory.build.Build`.

Each module holds what one step creates and how to undo it; none of them imports Airflow.
"""
