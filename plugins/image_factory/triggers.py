"""Triggers: the long waits of a build run in Airflow's triggerer, so that no worker slot is held.

:class:`Ec2StateTrigger` polls an EC2 state with the same boto3 waiter definitions as the tasks (a describe
call per poll, in a thread: the Amazon provider's async waiters need aiobotocore, which this project does not
install; the polls of other waits that come due meanwhile share the next call, see coalescing.py), on the
schedule of polling.py (from when the change was started; never at once). Then it makes
the EC2 calls that waited for the state (``then``). With ``finish``, it ends the task itself (a
``TaskSuccessEvent``; the task stored its result before deferring), so the task does not go back to a worker
only to return a value; a failure, a timeout or a failed call always goes back to the task: it raises the
first two with their message and runs again after the third. A task that runs again gets the last describe
answer in the event.

:class:`RegionsTrigger` waits for one state in several regions at once (an image's copies): an
:class:`Ec2StateTrigger` per region, all polling together; the first region that fails or times out ends the
wait (the others are cancelled), else it ends when every region has reached the state, with each region's last
answer.

:class:`SshReadyTrigger` waits until the builder's SSH server answers with its banner (no login: a trigger's
arguments are stored in the database, so it gets no key); it ends at once, failed, when the instance stops or
goes away meanwhile (SSH would never answer: it would wait until its timeout).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from image_factory.polling import Schedule, remember


class Ec2StateTrigger(BaseTrigger):
    def __init__(self, aws_conn_id: str, region: str, waiter_name: str, waiter_args: dict, timeout: float,
                 schedule: Schedule | dict | float, finish: bool = False, started: float | None = None,
                 then: list | None = None, elapsed: float | None = None, next_wait: list | None = None,
                 next_schedule: Schedule | dict | float | None = None, history: dict | None = None):
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.region = region
        self.waiter_name = waiter_name
        self.waiter_args = waiter_args
        self.timeout = timeout
        #: When to poll, from ``started`` (polling.py).
        self.schedule = Schedule.of(schedule)
        self.finish = finish
        self.started = started or time.time()
        self.then = [list(call) for call in then or []]
        #: Seconds the task ran before deferring, for a step the build summary times (with ``finish``: the
        #: step's XCom ``step_seconds`` is this plus the wait; None: not timed, no such XCom).
        self.elapsed = elapsed
        #: [waiter name, waiter args]: a second wait, from when the ``then`` calls are made (they start the
        #: change it waits for: the image that CreateImage makes once the instance is stopped).
        self.next_wait = list(next_wait) if next_wait else None
        self.next_schedule = Schedule.of(next_schedule) if next_schedule is not None else self.schedule
        #: With ``finish``: the spec's recent windows of this wait, which the task's XCom ``waits`` then holds
        #: with this build's window added (the next build's schedule starts from them).
        self.history = history or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("image_factory.triggers.Ec2StateTrigger", {
            "aws_conn_id": self.aws_conn_id, "region": self.region, "waiter_name": self.waiter_name,
            "waiter_args": self.waiter_args, "timeout": self.timeout, "schedule": self.schedule.to_dict(),
            "finish": self.finish, "started": self.started, "then": self.then, "elapsed": self.elapsed,
            "next_wait": self.next_wait, "next_schedule": self.next_schedule.to_dict(), "history": self.history})

    def __repr__(self) -> str:
        shown = f" then {self.next_wait[0]}" if self.next_wait else ""
        return f"Ec2StateTrigger({self.waiter_name} {self.waiter_args}{shown})"

    async def run(self):
        from image_factory import aws
        from image_factory.polling import call_after

        ec2 = await asyncio.to_thread(aws.shared_ec2, self.aws_conn_id, self.region)
        waiter_name, waiter_args = self.waiter_name, self.waiter_args
        answer, polls, ended, seen = await self._poll(ec2, waiter_name, waiter_args, self.started, self.schedule)
        if ended:
            yield ended
            return
        windows = {waiter_name: seen}
        made: list[str] = []
        failed = await asyncio.to_thread(call_after, ec2, self.then, made)
        if failed:
            self.log.warning("left to the task, which runs again: %s", failed[0])
        elif self.next_wait:
            waiter_name, waiter_args = self.next_wait
            answer, more, ended, seen = await self._poll(ec2, waiter_name, by_id(waiter_name, waiter_args, made),
                                                         time.time(), self.next_schedule)
            polls += more
            if ended:
                yield ended
                return
            windows[waiter_name] = seen
        if self.finish and not failed:
            # The task stored its result before deferring; step_seconds feeds the build summary, waits the
            # next build's schedule.
            xcoms = {"waits": {name: remember(self.history.get(name), seen) for name, seen in windows.items()}}
            if self.elapsed is not None:
                xcoms["step_seconds"] = round(self.elapsed + time.time() - self.started, 1)
            yield TaskSuccessEvent(xcoms=xcoms)
        else:
            # The last answer goes back too: the task need not describe again what it waited for.
            shown = {key: value for key, value in answer.items() if key != "ResponseMetadata"}
            yield TriggerEvent({"status": "success", "polls": polls, "waiter_name": waiter_name,
                                "waiter_args": waiter_args, "calls_failed": failed[0] if failed else None,
                                "calls_failed_transient": failed[1] if failed else None, "windows": windows,
                                "answer": json.loads(json.dumps(shown, default=str))})

    async def _poll(self, ec2, waiter_name: str, waiter_args: dict, since: float, schedule: Schedule):
        """Poll on ``schedule`` from ``since`` until the state is reached: (the answer, polls, None, the
        window it was reached in), or (None, polls, the event that ends the wait: failed or timed out, None)."""
        from image_factory.coalescing import coalescer
        from image_factory.polling import WaitFailed, judged, waiter_config, window

        config = waiter_config(ec2, waiter_name)
        deadline = since + self.timeout
        polls, shared, previous = 0, 0, None
        while True:
            moment = since + schedule.next_after(time.time() - since)
            await asyncio.sleep(max(0.0, min(moment, deadline) - time.time()))
            polls += 1
            polled = time.time() - since
            answer, sharing = await coalescer().ask((self.aws_conn_id, self.region), ec2, config.operation,
                                                    waiter_args)
            shared += sharing > 1
            try:
                answer = judged(config, waiter_name, waiter_args, answer)
            except WaitFailed as exc:
                return None, polls, TriggerEvent({"status": "failed", "message": str(exc)}), None
            if answer is not None:
                self.log.info("%s %s after %d polls (%.1f s; %d shared a call with other waits)", waiter_name,
                              waiter_args, polls, polled, shared)
                return answer, polls, None, window(schedule, previous, polled)
            previous = polled
            if time.time() >= deadline:
                return None, polls, TriggerEvent({"status": "timeout", "message": f"{waiter_name} {waiter_args}: "
                                                  f"not reached within {self.timeout:.0f} s"}), None


def by_id(waiter_name: str, waiter_args: dict, made: list[str]) -> dict:
    """The image that the calls before an image wait made (CreateImage's answer) is polled by its id: a poll
    other waits' polls can share (coalescing.py), and cheaper for AWS than a filter on the name. (The event
    still names the wait as the task asked for it.) An image made by an earlier run keeps ``waiter_args``."""
    images = [resource for resource in made if resource.startswith("ami-")]
    return {"ImageIds": images} if waiter_name == "image_available" and len(images) == 1 else waiter_args


class SshReadyTrigger(BaseTrigger):
    #: While SSH does not answer, how often the instance's state is looked at (seconds; the first look after a
    #: third of it): an instance that stopped or went away will never answer, and the wait ends at once.
    STATE_EVERY = 15.0

    def __init__(self, host: str, port: int, timeout: float, delay: float, started: float | None = None,
                 instance: dict | None = None, console: bool = False):
        super().__init__()
        self.host = host
        self.port = port
        self.timeout = timeout
        self.delay = delay
        self.started = started or time.time()
        #: {"aws_conn_id", "region", "instance_id"}: the instance SSH is waited for, whose state is checked.
        self.instance = instance
        #: Wait for the instance's console to show its SSH host keys too (host_keys.py); the event carries them.
        self.console = console

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("image_factory.triggers.SshReadyTrigger", {
            "host": self.host, "port": self.port, "timeout": self.timeout, "delay": self.delay,
            "started": self.started, "instance": self.instance, "console": self.console})

    def __repr__(self) -> str:
        return f"SshReadyTrigger({self.host}:{self.port})"

    async def run(self):
        from image_factory.host_keys import HostKeyError

        polls, next_look, answered = 0, self.started + self.STATE_EVERY / 3, False
        while True:
            await asyncio.sleep(self.delay)  # the task's own attempt has just failed
            polls += 1
            answered = answered or await self._banner()
            try:
                keys = await self._console_keys() if answered and self.console else []
            except HostKeyError as exc:
                yield TriggerEvent({"status": "failed", "message": str(exc)})
                return
            if answered and (keys or not self.console):
                yield TriggerEvent({"status": "success", "polls": polls, "waiter_name": "ssh_ready",
                                    "waiter_args": {"address": [f"{self.host}:{self.port}"]}, "host_keys": keys})
                return
            if self.instance and time.time() >= next_look:
                next_look = time.time() + self.STATE_EVERY
                if gone := await self._instance_gone():
                    yield TriggerEvent({"status": "failed", "message": gone})
                    return
            if time.time() - self.started >= self.timeout:
                yield TriggerEvent({"status": "timeout", "message": self._timed_out(answered)})
                return

    def _timed_out(self, answered: bool) -> str:
        if not answered:
            return f"SSH on {self.host}:{self.port} did not answer within {self.timeout:.0f} s"
        return (f"SSH on {self.host}:{self.port} answers, but the console of instance "
                f"{self.instance['instance_id']} showed no SSH host key within {self.timeout:.0f} s (cloud-init "
                "prints them at the first boot); for an origin image without cloud-init, set "
                "[image_factory] host_key_check = off")

    async def _console_keys(self) -> list[str]:
        """The host keys on the instance's console; [] while it shows none (or could not be read this time)."""
        from image_factory import aws, host_keys

        conn_id, region, instance_id = (self.instance[k] for k in ("aws_conn_id", "region", "instance_id"))
        try:
            ec2 = await asyncio.to_thread(aws.shared_ec2, conn_id, region)
            return await asyncio.to_thread(host_keys.from_console, ec2, instance_id)
        except host_keys.HostKeyError:
            raise
        except Exception as exc:  # throttled, not visible yet: the next poll asks again
            self.log.warning("the console of instance %s could not be read (%s); asking again", instance_id, exc)
            return []

    async def _instance_gone(self) -> str | None:
        """Why SSH will never answer (the instance is neither pending nor running), else None."""
        from image_factory import aws
        from image_factory.coalescing import coalescer

        conn_id, region, instance_id = (self.instance[k] for k in ("aws_conn_id", "region", "instance_id"))
        try:
            ec2 = await asyncio.to_thread(aws.shared_ec2, conn_id, region)
            answer, _ = await coalescer().ask((conn_id, region), ec2, "DescribeInstances",
                                              {"InstanceIds": [instance_id]})
        except Exception as exc:  # the look is a shortcut: without an answer, the SSH wait goes on as it would
            self.log.warning("the state of instance %s is not known (%s); waiting for SSH on", instance_id, exc)
            return None
        found = [item for reservation in answer.get("Reservations", []) for item in reservation["Instances"]]
        if not found or found[0]["State"]["Name"] in ("pending", "running"):
            return None  # (not found: not known yet, as AWS may say just after a launch; the timeout decides)
        reason = found[0].get("StateReason", {}).get("Message")
        return (f"instance {instance_id} is {found[0]['State']['Name']}{f' ({reason})' if reason else ''}: SSH on "
                f"{self.host}:{self.port} will not answer")

    async def _banner(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 10)
        except (OSError, TimeoutError):
            return False
        try:
            return (await asyncio.wait_for(reader.readline(), 10)).startswith(b"SSH-")
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()


class RegionsTrigger(BaseTrigger):
    def __init__(self, aws_conn_id: str, waiter_name: str, waiter_args: dict[str, dict], timeout: float,
                 schedule: Schedule | dict | float, started: float | None = None):
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.waiter_name = waiter_name
        #: region -> the waiter's arguments there.
        self.waiter_args = waiter_args
        self.timeout = timeout
        self.schedule = Schedule.of(schedule)
        self.started = started or time.time()

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("image_factory.triggers.RegionsTrigger", {
            "aws_conn_id": self.aws_conn_id, "waiter_name": self.waiter_name, "waiter_args": self.waiter_args,
            "timeout": self.timeout, "schedule": self.schedule.to_dict(), "started": self.started})

    def __repr__(self) -> str:
        return f"RegionsTrigger({self.waiter_name} {self.waiter_args})"

    async def run(self):
        async def first_event(region: str, trigger: Ec2StateTrigger) -> tuple[str, dict]:
            async for event in trigger.run():
                return region, event.payload
            return region, {"status": "failed", "message": "the wait ended without an event"}

        waits = [asyncio.create_task(first_event(region, Ec2StateTrigger(
            self.aws_conn_id, region, self.waiter_name, args, self.timeout, self.schedule, started=self.started)))
            for region, args in self.waiter_args.items()]
        answers, windows, polls = {}, {}, 0
        try:
            for finished in asyncio.as_completed(waits):
                region, payload = await finished
                if payload.get("status") != "success":
                    # One region's failure is the wait's: the others need not be waited for.
                    yield TriggerEvent({"status": payload.get("status", "failed"),
                                        "message": f"{region}: {payload.get('message', 'failed')}"})
                    return
                answers[region] = payload["answer"]
                windows[region] = payload["windows"].get(self.waiter_name)
                polls += payload["polls"]
        finally:
            for wait in waits:
                wait.cancel()
        yield TriggerEvent({"status": "success", "polls": polls, "waiter_name": self.waiter_name,
                            "waiter_args": self.waiter_args, "windows": windows, "answers": answers})
