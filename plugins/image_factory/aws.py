"""AWS clients, always through the Airflow AWS connection (``aws_default`` or the spec's ``aws_conn_id``).

The connection's ``endpoint_url`` extra is how a whole deployment is pointed at an emulator.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("image_factory")


@functools.cache
def retry_config():
    """botocore's standard retry mode: backoff with jitter on throttling and transient errors. (botocore is
    imported on first use: a DAG file's parse needs none of it.)"""
    from botocore.config import Config

    return Config(retries={"mode": "standard", "max_attempts": 10})


#: The services a build calls.
SERVICES = ("ec2", "ssm")


@functools.cache
def service_models():
    """One botocore data loader for the whole process. The provider's hook makes a new session, and so a new
    loader, for every client; reading EC2's API model again takes 0.3 s of CPU each time (in every task and
    every trigger), once with a shared loader."""
    from botocore.loaders import create_loader

    return create_loader()


@functools.cache  # once per process: task processes load the plugins again (the Task SDK's own loader)
def preload() -> None:
    """Read what making the build's clients reads (API models, endpoint rules, retry and waiter definitions)
    now, into the shared loader (see image_factory_plugin.py: processes forked from this one, like the
    executor's task processes, then start with it read). Making a client calls nothing."""
    from botocore.session import get_session

    session = get_session()
    session.register_component("data_loader", service_models())
    for service in SERVICES:
        client = session.create_client(service, region_name="us-east-1", aws_access_key_id="preload",
                                       aws_secret_access_key="preload", config=retry_config())  # noqa: S106
        if service == "ec2":
            client.get_waiter("instance_running")  # the waiter definitions


@functools.cache
def _hook_class() -> type:
    """The provider's AWS hook, its sessions using :func:`service_models` (imported on first use: the
    provider's import costs a DAG file's parse)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    class SharedModelsHook(AwsBaseHook):
        def __init__(self, *args, sessions: dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            #: boto3 sessions by region, shared by the hooks of one :class:`Clients` (a session costs 20 ms of CPU)
            self._sessions = {} if sessions is None else sessions

        def get_session(self, region_name: str | None = None, deferrable: bool = False):
            key = (region_name or self.region_name, deferrable)
            if key not in self._sessions:
                session = super().get_session(region_name=region_name, deferrable=deferrable)
                session._session.register_component("data_loader", service_models())  # boto3 keeps botocore's here
                self._sessions[key] = session
            return self._sessions[key]

        def _get_caller(self, target_function_name: str = "execute") -> str:
            # The "Caller/" part of the user agent. The provider finds it with inspect.stack(), which reads the
            # source of every frame: a fifth of a build task's CPU. Image Factory's clients are its own.
            return "ImageFactory"

    return SharedModelsHook


class Clients:
    """The EC2 and SSM clients of a connection and region, each made on first use."""

    def __init__(self, aws_conn_id: str, region: str):
        self._hook = functools.partial(_hook_class(), aws_conn_id=aws_conn_id, region_name=region,
                                       config=retry_config(), sessions={})
        self._ec2_hook = self._hook(client_type="ec2")
        self.endpoint_url: str | None = self._ec2_hook.conn_config.endpoint_url

    @functools.cached_property
    def ec2(self) -> Any:
        return self._ec2_hook.conn

    @functools.cached_property
    def ssm(self) -> Any:
        hook = self._hook(client_type="ssm")
        # The connection as the EC2 hook read it (a cached property): a task asks the API server for it once;
        # and the same boto3 session (see SharedModelsHook).
        hook.__dict__["conn_config"] = self._ec2_hook.conn_config
        return hook.conn

    @functools.cached_property
    def autoscaling(self) -> Any:
        """Auto Scaling's client (a rollout's instance refreshes)."""
        hook = self._hook(client_type="autoscaling")
        hook.__dict__["conn_config"] = self._ec2_hook.conn_config
        return hook.conn

    def sns_in(self, region: str) -> Any:
        """An SNS client of the connection in ``region`` (a topic's own: notify.py checks the spec's topic)."""
        hook = self._hook(client_type="sns", region_name=region)
        hook.__dict__["conn_config"] = self._ec2_hook.conn_config
        return hook.conn

    @functools.cached_property
    def sts(self) -> Any:
        """Who the connection is (GetCallerIdentity: a revocation's ``revoked-by``)."""
        hook = self._hook(client_type="sts")
        hook.__dict__["conn_config"] = self._ec2_hook.conn_config
        return hook.conn

    @functools.cached_property
    def s3(self) -> Any:
        """An S3 client of the connection (the SBOMs, sbom.py); path-style addressing on an emulator, whose
        endpoint has no bucket subdomains."""
        from botocore.config import Config

        config = retry_config().merge(Config(s3={"addressing_style": "path"})) if self.emulated else None
        hook = self._hook(client_type="s3", **({"config": config} if config else {}))
        hook.__dict__["conn_config"] = self._ec2_hook.conn_config
        return hook.conn

    @property
    def emulated(self) -> bool:
        """True when the connection points at an endpoint of its own (an emulator), not at AWS."""
        return bool(self.endpoint_url)


def clients(aws_conn_id: str, region: str) -> Clients:
    return Clients(aws_conn_id, region)


#: How long :func:`shared_ec2` keeps a client: a connection's new credentials are used after that at the latest.
SHARED_FOR = 600.0
_shared: dict[tuple[str, str], tuple[float, Any]] = {}
_shared_lock = threading.Lock()


def shared_ec2(aws_conn_id: str, region: str, service: str = "ec2") -> Any:
    """An EC2 client (or ``service``'s: Auto Scaling's for a refresh's wait) shared by the callers of one process
    for a while (the triggerer's waits: a client per trigger cost more CPU than its polls); boto3 clients are
    thread-safe."""
    with _shared_lock:
        made, client = _shared.get((aws_conn_id, region, service), (0.0, None))
        if client is None or time.monotonic() - made > SHARED_FOR:
            client = getattr(clients(aws_conn_id, region), service)
            _shared[(aws_conn_id, region, service)] = (time.monotonic(), client)
        return client


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code", "")


#: A bound on the pages read from one listing (each page is up to 1,000 items on AWS).
MAX_PAGES = 200


def all_items(client, operation: str, key: str, **kwargs) -> Iterator[dict]:
    """Every item of a describe or list call, page after page (a bounded number of pages: what is beyond them
    is left for the next run, with a warning)."""
    if not client.can_paginate(operation):
        yield from getattr(client, operation)(**kwargs).get(key, [])
        return
    for number, page in enumerate(client.get_paginator(operation).paginate(**kwargs)):
        if number >= MAX_PAGES:
            log.warning("%s has more than %d pages; the rest is left for the next run", operation, MAX_PAGES)
            return
        yield from page.get(key, [])
