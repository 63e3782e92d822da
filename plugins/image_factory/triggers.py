"""The trigger that waits for an EC2 state in Airflow's triggerer, so that no worker slot is held.

It polls with the same boto3 waiter definitions as the tasks (one describe call per poll, in a thread: the
Amazon provider's async waiters need aiobotocore, which this project does not install).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class Ec2StateTrigger(BaseTrigger):
    def __init__(self, aws_conn_id: str, region: str, waiter_name: str, waiter_args: dict, timeout: float,
                 delay: float):
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.region = region
        self.waiter_name = waiter_name
        self.waiter_args = waiter_args
        self.timeout = timeout
        self.delay = delay

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("image_factory.triggers.Ec2StateTrigger", {
            "aws_conn_id": self.aws_conn_id, "region": self.region, "waiter_name": self.waiter_name,
            "waiter_args": self.waiter_args, "timeout": self.timeout, "delay": self.delay})

    async def run(self):
        from image_factory import aws
        from image_factory.waiting import WaitFailed, reached

        ec2 = (await asyncio.to_thread(aws.clients, self.aws_conn_id, self.region)).ec2
        deadline = time.monotonic() + self.timeout
        polls = 0
        while True:
            polls += 1
            try:
                if await asyncio.to_thread(reached, ec2, self.waiter_name, self.waiter_args):
                    yield TriggerEvent({"status": "success", "polls": polls})
                    return
            except WaitFailed as exc:
                yield TriggerEvent({"status": "failed", "message": str(exc)})
                return
            if time.monotonic() >= deadline:
                yield TriggerEvent({"status": "timeout", "message": f"{self.waiter_name} {self.waiter_args}: "
                                                                   f"not reached within {self.timeout:.0f} s"})
                return
            await asyncio.sleep(self.delay)
