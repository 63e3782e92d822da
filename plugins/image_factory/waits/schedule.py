"""When a wait polls: its schedule, and the windows its change was seen to end in.

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

#: Seconds after the change began between which AWS usually completes it: the schedule of a spec's first build.
PRIORS: dict[str, tuple[float, float]] = {
    "instance_running": (10.0, 40.0),
    "instance_stopped": (5.0, 60.0),
    "image_available": (30.0, 600.0),
    "instance_terminated": (5.0, 90.0),
    "instance_refresh_finished": (60.0, 3600.0),
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


def recorded(history: dict, windows: dict) -> dict:
    """What a task records of its waits (XCom ``waits``): for each wait in ``windows`` (this build's, by state),
    the spec's recent windows (``history``) with this build's added."""
    return {state: remember(history.get(state), seen) for state, seen in windows.items()}


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
