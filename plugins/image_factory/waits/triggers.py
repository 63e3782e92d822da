"""Triggers: the long waits of a build run in Airflow's triggerer, so that no worker slot is held. A trigger
watches; what it does once the state is reached is the request's follow-up calls (follow_ups.py), which the
step declared.

:class:`Ec2StateTrigger` carries out one :class:`~image_factory.waits.protocol.Wait`: it polls an EC2 state
with the same boto3 waiter definitions as the tasks (or the project's own, polls.WAITERS: an Auto Scaling
instance refresh's, with that service's client; a describe call per poll, in a thread: the Amazon
provider's async waiters need aiobotocore, which this project does not install; the polls of other waits that
come due meanwhile share the next call, see coalescing.py), on the wait's schedule (schedule.py: from when the
change was started; never at once). Then it makes the wait's follow-up calls, and waits for its ``next``. With
``finish``, it ends the task itself (a ``TaskSuccessEvent``; the task stored its result before deferring), so
the task does not go back to a worker only to return a value; a failure, a timeout or a failed call always goes
back to the task: it raises the first two with their message and runs again after the third. A task that runs
again gets the :class:`~image_factory.waits.protocol.WaitOutcome` in the event (the last describe answer, the
windows, the polls).

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
import dataclasses
import json
import time
from typing import Any

from airflow.triggers.base import BaseTrigger, TaskSuccessEvent, TriggerEvent

from image_factory.waits.coalescing import coalescer
from image_factory.waits.polls import judged, service_of, state_reasons, waiter_config
from image_factory.waits.protocol import Wait, WaitFailed, WaitOutcome
from image_factory.waits.schedule import recorded, window


class Ec2StateTrigger(BaseTrigger):
    def __init__(self, wait: Wait | dict, finish: bool = False, elapsed: float | None = None):
        super().__init__()
        wait = Wait.of(wait)
        #: The request, in its region through its connection (deferring.py places it), from when it began.
        self.wait = wait if wait.since else dataclasses.replace(wait, since=time.time())
        self.finish = finish
        #: Seconds the task ran before deferring, for a step the build summary times (with ``finish``: the
        #: step's XCom ``step_seconds`` is this plus the wait; None: not timed, no such XCom).
        self.elapsed = elapsed

    @property
    def started(self) -> float:
        return self.wait.since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("image_factory.waits.triggers.Ec2StateTrigger",
                {"wait": self.wait.to_dict(), "finish": self.finish, "elapsed": self.elapsed})

    def __repr__(self) -> str:
        return f"Ec2StateTrigger({self.wait.shown()})"

    async def run(self):
        from image_factory import aws
        from image_factory.waits import follow_ups

        wait = self.wait
        # (A wait of another service's waiter, an instance refresh's, polls with that service's client.)
        ec2 = await asyncio.to_thread(aws.shared_ec2, wait.connection, wait.region, service_of(wait.state))
        answer, polls, ended, seen = await self._poll(ec2, wait, wait.resources, wait.since)
        if ended:
            yield ended
            return
        windows = {wait.state: seen}
        made: list[str] = []
        failed = await asyncio.to_thread(follow_ups.run, ec2, wait.then, made)
        if failed:
            self.log.warning("left to the task, which runs again: %s", failed[0])
        elif wait.next:
            wait = wait.next
            answer, more, ended, seen = await self._poll(ec2, wait, by_id(wait.state, wait.resources, made),
                                                         time.time())
            polls += more
            if ended:
                yield ended
                return
            windows[wait.state] = seen
        if self.finish and not failed:
            # The task stored its result before deferring; step_seconds feeds the build summary, waits the
            # next build's schedule.
            xcoms = {"waits": recorded(self.wait.history, windows)}
            if self.elapsed is not None:
                xcoms["step_seconds"] = round(self.elapsed + time.time() - self.started, 1)
            yield TaskSuccessEvent(xcoms=xcoms)
        else:
            # The last answer goes back too: the task need not describe again what it waited for.
            shown = {key: value for key, value in answer.items() if key != "ResponseMetadata"}
            answer = json.loads(json.dumps(shown, default=str))
            yield TriggerEvent(WaitOutcome(wait.state, wait.resources, answer=answer, windows=windows, polls=polls,
                                           failed=failed[0] if failed else None,
                                           transient=bool(failed and failed[1])).to_event())

    async def _poll(self, ec2, wait: Wait, resources: dict, since: float):
        """Poll ``resources`` on ``wait``'s schedule from ``since`` until its state is reached: (the answer,
        polls, None, the window it was reached in), or (None, polls, the event that ends the wait: failed or
        timed out, None)."""
        state, schedule = wait.state, wait.schedule
        config = waiter_config(ec2, state)
        deadline = since + wait.timeout
        polls, shared, previous = 0, 0, None
        while True:
            moment = since + schedule.next_after(time.time() - since)
            await asyncio.sleep(max(0.0, min(moment, deadline) - time.time()))
            polls += 1
            polled = time.time() - since
            answer, sharing = await coalescer().ask((wait.connection, wait.region), ec2, config.operation,
                                                    resources)
            shared += sharing > 1
            try:
                answer = judged(config, state, resources, answer)
            except WaitFailed as exc:
                return None, polls, TriggerEvent({"status": "failed", "message": str(exc)}), None
            if answer is not None:
                self.log.info("%s %s after %d polls (%.1f s; %d shared a call with other waits)", state,
                              resources, polls, polled, shared)
                return answer, polls, None, window(schedule, previous, polled)
            previous = polled
            if time.time() >= deadline:
                return None, polls, TriggerEvent({"status": "timeout", "message": f"{state} {resources}: "
                                                  f"not reached within {wait.timeout:.0f} s"}), None


def by_id(state: str, resources: dict, made: list[str]) -> dict:
    """The image that the calls before an image wait made (CreateImage's answer) is polled by its id: a poll
    other waits' polls can share (coalescing.py), and cheaper for AWS than a filter on the name. (The event
    still names the wait as the task asked for it.) An image made by an earlier run keeps ``resources``."""
    images = [resource for resource in made if resource.startswith("ami-")]
    return {"ImageIds": images} if state == "image_available" and len(images) == 1 else resources


#: The state an SSH wait reaches: the server answers (and, when asked, the console shows its host keys).
SSH_READY = "ssh_ready"


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
        return ("image_factory.waits.triggers.SshReadyTrigger", {
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
                yield TriggerEvent(WaitOutcome(SSH_READY, {"address": [f"{self.host}:{self.port}"]},
                                               answer={"host_keys": keys}, polls=polls).to_event())
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
        reason = "; ".join(state_reasons(answer))
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
    def __init__(self, waits: list[Wait | dict]):
        super().__init__()
        #: One state, a wait in each region (each placed: its region, its connection, its since).
        self.waits = [Wait.of(wait) for wait in waits]

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("image_factory.waits.triggers.RegionsTrigger", {"waits": [wait.to_dict() for wait in self.waits]})

    def __repr__(self) -> str:
        return f"RegionsTrigger({', '.join(f'{wait.shown()} in {wait.region}' for wait in self.waits)})"

    async def run(self):
        async def first_event(wait: Wait) -> tuple[str, dict]:
            async for event in Ec2StateTrigger(wait).run():
                return wait.region, event.payload
            return wait.region, {"status": "failed", "message": "the wait ended without an event"}

        state = self.waits[0].state
        waits = [asyncio.create_task(first_event(wait)) for wait in self.waits]
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
                windows[region] = payload["windows"].get(state)
                polls += payload["polls"]
        finally:
            for wait in waits:
                wait.cancel()
        yield TriggerEvent(WaitOutcome(state, {wait.region: wait.resources for wait in self.waits},
                                       answers=answers, windows=windows, polls=polls).to_event())
