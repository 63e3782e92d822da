"""When a wait polls, and what one poll is: shared by the waits in a task (waiting.py) and in the triggerer
(triggers.py), which both import this module and nothing of each other.

**The schedule.** A wait knows when the change it waits for began (``since``); its :class:`Schedule` gives the
moments of its polls as seconds after that. A change is not polled before it has usually been seen to end
(the median of the recent builds' last "not yet"); then densely up to the latest it ended; after that, each
step a half longer than the one before (something is slower than usual), up to a cap. A spec's first builds,
which have no history, use priors that fit AWS (an instance runs 10-40 s after RunInstances, an image is
available minutes after CreateImage), polled at a step of a tenth of the time since the change began.

Every wait reports the window its change ended in: (the last poll that did not see the state, the first that
did), seconds after ``since``; the build records the last :data:`HISTORY` windows of each wait, and the next
build's schedule starts from them (see :func:`schedule_for`).

``[image_factory] poll_interval``, when set, is the old fixed grid instead: every ``poll_interval`` seconds
after ``since`` (the stop before the image at half of it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from image_factory.errors import PermanentError

#: Seconds after the change began between which AWS usually completes it: the schedule of a spec's first build.
PRIORS: dict[str, tuple[float, float]] = {
    "instance_running": (10.0, 40.0),
    "instance_stopped": (5.0, 60.0),
    "image_available": (30.0, 600.0),
    "instance_terminated": (5.0, 90.0),
}
#: Windows of a wait kept per spec: the schedule spans the recent ones, so one slow build does not hide.
HISTORY = 5
#: The densest polling: EC2 describe calls are cheap, but each one counts.
MIN_STEP = 0.25
#: Dense polls across a learned window at most (a wide window from a build on priors narrows the next time).
MAX_DENSE_POLLS = 6
#: Step within a learned window, relative to the time the change took.
LEARNED_PRECISION = 0.02
#: Step relative to the time since the change began, within the priors' window (lag at most a tenth).
PRIOR_PRECISION = 0.1
BACKOFF = 1.5
#: The longest step: past the window a wait still sees its change within this long.
MAX_STEP = 30.0


@dataclass(frozen=True)
class Schedule:
    """Polls at ``start`` seconds after the change began, then every ``max(step, precision * t)`` seconds
    until ``end``, then at steps growing by ``backoff`` up to ``cap``. A fixed grid: ``start == step``,
    ``precision == 0``, ``backoff == 1``."""

    start: float
    end: float
    step: float
    precision: float = 0.0
    backoff: float = BACKOFF
    cap: float = MAX_STEP

    @classmethod
    def every(cls, interval: float) -> Schedule:
        if not interval > 0:
            raise ValueError(f"a fixed poll interval must be above 0 seconds, not {interval!r}")
        return cls(start=interval, end=math.inf, step=interval, backoff=1.0, cap=interval)

    @classmethod
    def of(cls, value: Schedule | dict | float) -> Schedule:
        """A schedule from itself, its :meth:`to_dict` (a trigger's stored arguments) or a fixed interval."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, dict):
            return cls(**{k: (math.inf if v is None else v) for k, v in value.items()})
        return cls.every(float(value))

    def to_dict(self) -> dict:
        return {k: (None if v == math.inf else v) for k, v in asdict(self).items()}  # JSON has no infinity

    def offsets(self):
        """The moments of the polls, in seconds after the change began (endless: the caller's timeout ends it)."""
        moment, step = self.start, self.step
        while True:
            yield moment
            if moment < self.end:
                step = max(self.step, self.precision * moment)
            else:
                step = min(self.cap, max(step * self.backoff, self.step))
            moment += step

    def next_after(self, elapsed: float) -> float:
        """The first poll moment at or after ``elapsed`` seconds (a wait resumed late skips the past polls)."""
        for moment in self.offsets():
            if moment >= elapsed - 1e-9:
                return moment
        raise AssertionError("unreachable")  # offsets() never ends

    def describe(self) -> str:
        if self.precision == 0 and self.backoff == 1.0:
            return f"every {self.step:g} s"
        return (f"from {self.start:.1f} s, densely to {self.end:.1f} s (every {self.step:.2f} s or more), then "
                f"backing off to every {self.cap:g} s")


def schedule_for(waiter_name: str, history: list | None = None, poll_interval: float = 0.0) -> Schedule:
    """The schedule of a wait: the fixed ``poll_interval`` when the deployment sets one (the stop before the
    image at half of it: short, and CreateImage waits for it), else fitted to ``history`` (the spec's recent
    windows of this wait, oldest first), else the wait's priors."""
    if poll_interval:
        return Schedule.every(poll_interval / 2 if waiter_name == "instance_stopped" else poll_interval)
    windows = [(float(lo), float(hi)) for lo, hi in (history or [])[-HISTORY:] if hi >= lo >= 0]
    if not windows:
        low, high = PRIORS.get(waiter_name, (1.0, 60.0))
        return Schedule(start=low, end=high, step=max(MIN_STEP, PRIOR_PRECISION * low),
                        precision=PRIOR_PRECISION)
    # From the median of the recent "not yet" moments, not the earliest: one wide window (a build on the
    # priors, or a fast outlier) would otherwise cost dense polls in each of the next HISTORY builds.
    low, high = sorted(lo for lo, _ in windows)[len(windows) // 2], max(hi for _, hi in windows)
    step = max(dense_step(high), (high - low) / MAX_DENSE_POLLS)
    # Half a step past that moment: usually the first poll sees the change; when it does, the window it
    # records starts a dense step earlier, so a change that got faster is found out, a step a build.
    return Schedule(start=max(MIN_STEP, low + step / 2), end=high + step, step=step)


def remember(history: list | None, window: list | tuple | None) -> list:
    """``history`` with ``window`` (this build's) added, the oldest dropped past :data:`HISTORY`."""
    kept = list(history or [])
    if window:
        kept.append([round(float(window[0]), 2), round(float(window[1]), 2)])
    return kept[-HISTORY:]


def window(schedule: Schedule, previous: float | None, seen: float) -> list[float]:
    """The window a change ended in, in seconds after it began: (the last poll that did not see it, the first
    that did); when the first poll saw it, from a dense step before that poll (see :func:`schedule_for`)."""
    if previous is None:
        # Not the schedule's own step, which on the priors is a tenth of the time: the next build would poll
        # densely across all of it to find out whether the change got faster.
        previous = max(0.0, seen - min(schedule.step, dense_step(seen)))
    return [round(previous, 2), round(seen, 2)]


def dense_step(duration: float) -> float:
    """The step of a learned schedule's polls around a change that takes ``duration`` seconds."""
    return max(MIN_STEP, LEARNED_PRECISION * duration)


# --- one poll -----------------------------------------------------------------------------------------

class WaitFailed(PermanentError):
    pass


class CallFailed(Exception):
    """A call made after a wait failed for a reason that may pass (throttling, a dependency not gone yet, a
    dropped connection): the step runs again (Airflow's retry)."""


def failure(message: str, transient: bool) -> Exception:
    """The error that a failed call after a wait (see :func:`call_after`) fails its step with."""
    return CallFailed(message) if transient else WaitFailed(message)


def reached(ec2, waiter_name: str, waiter_args: dict) -> dict | None:
    """One poll, judged by boto3's waiter definition: the describe call's answer when the state is reached
    (so that nobody needs to describe it again), else None; raises :class:`WaitFailed` when it never will be."""
    config = waiter_config(ec2, waiter_name)
    return judged(config, waiter_name, waiter_args, call(ec2, config.operation, waiter_args))


def call(client, operation: str, arguments: dict) -> dict:
    """The describe call's answer, or the error EC2 answered with (a waiter judges errors too)."""
    from botocore import xform_name
    from botocore.exceptions import ClientError

    try:
        return getattr(client, xform_name(operation))(**arguments)
    except ClientError as exc:
        return exc.response


_waiter_configs: dict[tuple[str, str], object] = {}


def waiter_config(ec2, waiter_name: str):
    """boto3's definition of the waiter (its describe operation, its acceptors); read once per process, as
    ``get_waiter`` makes a waiter model and class each time."""
    key = (ec2.meta.service_model.service_name, waiter_name)
    if key not in _waiter_configs:
        _waiter_configs[key] = ec2.get_waiter(waiter_name).config
    return _waiter_configs[key]


def judged(config, waiter_name: str, waiter_args: dict, answer: dict) -> dict | None:
    """The answer (or error) of one poll, judged by the waiter ``config``: the answer when the state is reached,
    else None; raises :class:`WaitFailed` when it never will be."""
    for acceptor in config.acceptors:
        if acceptor.matcher_func(answer):
            if acceptor.state == "failure":
                raise WaitFailed(f"{waiter_name} {waiter_args}: the waiter reached a terminal failure state "
                                 f"({acceptor.matcher} {acceptor.argument or ''} {acceptor.expected})")
            return answer if acceptor.state == "success" else None
    return None


#: An EC2 call made once a wait is over: (operation name, its arguments), e.g. ("delete_subnet", {...}).
Call = tuple[str, dict]


def call_after(ec2, then: tuple[Call, ...] | list, made: list[str] | None = None) -> tuple[str, bool] | None:
    """Make the calls that waited for the state, in order; a resource gone already counts as deleted, one
    there already (made by an earlier run of the same wait) as created. Returns what failed and whether
    retrying may help (the rest is left undone), else None. ``made`` gets the ids of what the calls created."""
    from image_factory.aws import error_code
    from image_factory.build import created, deleted
    from image_factory.errors import is_transient

    for operation, arguments in then:
        try:
            answer = getattr(ec2, operation)(**arguments)
        except Exception as exc:
            code, done = error_code(exc), ".NotFound" if operation.startswith("delete_") else ".Duplicate"
            if not code.endswith(done):
                return f"{operation} {ids(arguments)}: {exc}", not code or is_transient(code)
            continue  # done already
        kind = operation.split("_", 1)[1].replace("_", "-")  # as the build's log lines name it: security-group
        if operation.startswith("delete_"):
            deleted(kind, ids(arguments))
        elif operation.startswith("create_"):
            new_id = next((v for k, v in answer.items() if k.endswith("Id") and isinstance(v, str)), "")
            created(kind, new_id, **({"name": arguments["Name"]} if "Name" in arguments else {}))
            if made is not None and new_id:
                made.append(new_id)
    return None


def describe(waiter_name: str) -> str:
    return waiter_name.replace("_", " ")


def ids(waiter_args: dict) -> str:
    return ", ".join(str(i) for v in waiter_args.values() for i in (v if isinstance(v, list) else [v]))

