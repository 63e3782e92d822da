"""Registers Image Factory's operator extra links and its Images page with Airflow (the UI finds both through
plugins), and readies what every build task needs.

With ``[core] lazy_load_plugins = False`` (as the project's stacks set it) every Airflow process loads this at
its start, so the processes that fork task processes (the LocalExecutor's workers, a Celery worker) fork them
with the build's modules imported and the AWS API models read: a task starts in tenths of a second less CPU.
"""

import functools

import airflow.sdk.execution_time.supervisor  # noqa: F401 (each executor worker imported it at its first task)
import jinja2.ext  # noqa: F401 (each task process imported it for its template environment)
import paramiko  # noqa: F401 (configure's SSH)
from airflow.plugins_manager import AirflowPlugin
from airflow.sdk.api import client as execution_api

import image_factory.dag  # noqa: F401 (imported for the task processes forked from this one)
from image_factory import aws
from image_factory.assets import image_asset
from image_factory.links import BuilderInstanceLink, ImageLink

aws.preload()
# A process's first Asset loads every provider's asset URI handlers (the Amazon one imports the S3 hook): a
# tenth of a second of CPU that each task process would otherwise pay when it parses its DAG.
image_asset("preload")
# The Execution API client's TLS context (certifi's CA bundle read: 0.13 s of CPU), cached per process: read once
# here rather than at the first task of each executor worker. A private helper of the Task SDK: should an upgrade
# rename it, only this preload is lost, not the plugin (and its links).
ssl_context = getattr(execution_api.Client, "_get_ssl_context_cached", None)
if ssl_context is not None:
    ssl_context(execution_api.API_SSL_CA_FILE_PATH, execution_api.API_SSL_CERT_PATH)


class ImageFactoryPlugin(AirflowPlugin):
    name = "image_factory"
    operator_extra_links = [BuilderInstanceLink(), ImageLink()]  # noqa: RUF012 (AirflowPlugin's own API)
    # "Images" at the top of the UI's navigation: the page below, in the UI's frame at /plugin/images.
    external_views = [{"name": "Images", "href": "/image-factory/images", "destination": "nav",  # noqa: RUF012
                       "url_route": "images", "nav_top_level": True}]

    @functools.cached_property
    def fastapi_apps(self) -> list[dict]:
        """The Images page's app, made when the api-server asks for it: the other processes load this plugin
        too, and FastAPI with Airflow's security module costs nearly a second of CPU to import."""
        from image_factory.images_page import URL_PREFIX, app

        return [{"app": app, "url_prefix": URL_PREFIX, "name": "Image Factory: Images page"}]
