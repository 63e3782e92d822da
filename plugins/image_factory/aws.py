"""AWS clients, always through the Airflow AWS connection (``aws_default`` or the spec's ``aws_conn_id``).

The connection's ``endpoint_url`` extra is how a whole deployment is pointed at an emulator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from botocore.config import Config

#: botocore's standard retry mode: backoff with jitter on throttling and transient errors.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 10})


@dataclass
class Clients:
    ec2: Any
    ssm: Any
    endpoint_url: str | None

    @property
    def emulated(self) -> bool:
        """True when the connection points at an endpoint of its own (an emulator), not at AWS."""
        return bool(self.endpoint_url)


def clients(aws_conn_id: str, region: str) -> Clients:
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

    ec2_hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="ec2", region_name=region, config=RETRY_CONFIG)
    ssm_hook = AwsBaseHook(aws_conn_id=aws_conn_id, client_type="ssm", region_name=region, config=RETRY_CONFIG)
    return Clients(ec2=ec2_hook.conn, ssm=ssm_hook.conn, endpoint_url=ec2_hook.conn_config.endpoint_url)


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return response.get("Error", {}).get("Code", "")
