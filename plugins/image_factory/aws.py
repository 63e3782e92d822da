"""AWS clients, always through the Airflow AWS connection (``aws_default`` or the spec's ``aws_conn_id``).

The connection's ``endpoint_url`` extra is how a whole deployment is pointed at an emulator.
"""

from __future__ import annotations

import functools
from typing import Any

from botocore.config import Config

#: botocore's standard retry mode: backoff with jitter on throttling and transient errors.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 10})


class Clients:
    """The EC2 and SSM clients of a connection and region, each made on first use (a client costs a few tenths
    of a second to make)."""

    def __init__(self, aws_conn_id: str, region: str):
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        self._hook = functools.partial(AwsBaseHook, aws_conn_id=aws_conn_id, region_name=region, config=RETRY_CONFIG)
        self.endpoint_url: str | None = self._hook(client_type="ec2").conn_config.endpoint_url

    @functools.cached_property
    def ec2(self) -> Any:
        return self._hook(client_type="ec2").conn

    @functools.cached_property
    def ssm(self) -> Any:
        return self._hook(client_type="ssm").conn

    @property
    def emulated(self) -> bool:
        """True when the connection points at an endpoint of its own (an emulator), not at AWS."""
        return bool(self.endpoint_url)


def clients(aws_conn_id: str, region: str) -> Clients:
    return Clients(aws_conn_id, region)


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code", "")
