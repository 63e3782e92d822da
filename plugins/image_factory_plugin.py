"""Registers Image Factory's operator extra links with Airflow (the UI resolves links through plugins)."""

from airflow.plugins_manager import AirflowPlugin

from image_factory.links import BuilderInstanceLink, ImageLink


class ImageFactoryPlugin(AirflowPlugin):
    name = "image_factory"
    operator_extra_links = [BuilderInstanceLink(), ImageLink()]  # noqa: RUF012 (AirflowPlugin's own API)
