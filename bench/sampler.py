"""The concurrency benchmark's sampler: every half second, while a batch runs, the images of the builds (from the
local cloud's front) and the task instances that are not finished (from Airflow's PostgreSQL): which worker slots
are held while an image is pending."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.cloud import BUILD_TAG, client
from localcloud.cloud import LocalCloud

SAMPLE_EVERY = 0.5
#: Task instance states that are not finished (the sampler reads only these).
LIVE_STATES = ("scheduled", "queued", "running", "deferred", "up_for_retry", "up_for_reschedule", "restarting")


def connect(dsn: str):
    """An autocommit connection to Airflow's PostgreSQL."""
    import psycopg2

    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    return connection


@dataclass
class Sample:
    at: float  # seconds since the batch was triggered
    seconds: float  # since the previous sample (what this sample stands for)
    load1: float
    states: dict[str, int]  # task instances by state (not finished ones)
    running: dict[str, int]  # running task instances by task id
    pending_builds: int  # builds whose image is pending
    held: dict[str, int]  # running task instances of builds whose image is pending, by task id
    held_by_build: dict[str, int]


@dataclass
class Sampler:
    """Images from moto and unfinished task instances from PostgreSQL, every SAMPLE_EVERY s, until stopped."""

    cloud: LocalCloud
    dsn: str
    runs: dict[tuple[str, str], str]  # (dag_id, run_id) -> build id
    started: float  # time.time() of the trigger
    deadline: float  # time.monotonic() after which it stops by itself
    samples: list[Sample] = field(default_factory=list)
    image_created: dict[str, float] = field(default_factory=dict)  # build id -> CreateImage answer, time.time()
    image_available: dict[str, float] = field(default_factory=dict)  # build id -> image shown available
    image_build: dict[str, str] = field(default_factory=dict)  # image id -> build id
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="concurrency-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _loop(self) -> None:
        ec2 = client(self.cloud, "ec2")
        previous = time.time()
        connection = None
        try:
            connection = connect(self.dsn)
            while not self._stop.is_set() and time.monotonic() < self.deadline:
                tick = time.monotonic()
                try:
                    self._sample(ec2, connection, previous)
                    previous = self.samples[-1].at + self.started
                except Exception as exc:  # a failed sample is noted, the next one tries again
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    if len(self.errors) > 100:
                        return
                    with contextlib.suppress(Exception):
                        connection.close()
                    connection = connect(self.dsn)
                self._stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - tick)))
        except Exception as exc:
            self.errors.append(f"sampler stopped: {type(exc).__name__}: {exc}"[:300])
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()

    def _sample(self, ec2, connection, previous: float) -> None:
        # The front's record of each emulated change (its CreateImage answer, and when the image shows
        # available): no polling of moto, which would take CPU from the builds. Each new image's build is read
        # once, from its tags.
        changes = {i: c for i, c in self.cloud.stats()["changes"].items() if c["kind"] == "image_available"}
        new = [i for i in changes if i not in self.image_build]
        if new:
            for image in ec2.describe_images(ImageIds=new)["Images"]:
                tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
                self.image_build[image["ImageId"]] = tags.get(BUILD_TAG, "")
        now = time.time()
        pending: set[str] = set()
        for image_id, build in self.image_build.items():
            if not build:
                continue
            self.image_created.setdefault(build, changes[image_id]["started"])
            if now >= changes[image_id]["done"]:
                self.image_available.setdefault(build, changes[image_id]["done"])
            else:
                pending.add(build)
        with connection.cursor() as cursor:
            cursor.execute("SELECT dag_id, run_id, task_id, state FROM task_instance WHERE state = ANY(%s)",
                           (list(LIVE_STATES),))
            rows = cursor.fetchall()
        states = Counter(state for _, _, _, state in rows)
        running = Counter(task for _, _, task, state in rows if state == "running")
        held: Counter[str] = Counter()
        held_by_build: Counter[str] = Counter()
        for dag_id, run_id, task, state in rows:
            build = self.runs.get((dag_id, run_id))
            if state == "running" and build in pending:
                held[task] += 1
                held_by_build[build] += 1
        self.samples.append(Sample(now - self.started, now - previous, os.getloadavg()[0], dict(states),
                                   dict(running), len(pending), dict(held), dict(held_by_build)))
