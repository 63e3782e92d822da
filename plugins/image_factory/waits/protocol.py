"""The wait protocol's types: what a step asks for (:class:`Wait`, with the :class:`FollowUp` calls its state
allows), what it gets back (:class:`WaitOutcome`), and how a wait ends otherwise (:class:`WaitFailed`,
:class:`CallFailed`, and :class:`Deferred`: not an error, the wait moved to the triggerer).

A :class:`Waiter` carries a request out: :mod:`~image_factory.waits.blocking` polls in the calling process (the
CLI, the sweeper, tests), :mod:`~image_factory.waits.deferring` hands it to Airflow's triggerer. Both return
the same :class:`WaitOutcome`; a trigger sends it back to the task in its event (:meth:`WaitOutcome.to_event`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from image_factory.errors import PermanentError
from image_factory.waits.schedule import Schedule

#: The services whose calls a wait can make after its state (a trigger has a client of these).
FOLLOW_UP_SERVICES = ("ec2",)


@dataclass(frozen=True)
class FollowUp:
    """A call that had to wait for the state (CreateImage once the instance is stopped; deleting a security
    group once its instance is gone): ``service``'s client method ``operation``, called with ``params``."""

    service: str
    operation: str
    params: dict

    def __post_init__(self):
        if self.service not in FOLLOW_UP_SERVICES:
            raise ValueError(f"a wait's follow-up calls are calls of {', '.join(FOLLOW_UP_SERVICES)}, "
                             f"not {self.service}")

    def to_list(self) -> list:
        return [self.service, self.operation, self.params]


@dataclass(frozen=True)
class Wait:
    """One wait: until ``resources`` (the boto3 waiter's arguments, e.g. ``{"InstanceIds": [...]}``) reach the
    state ``state`` (the waiter's name, e.g. ``instance_running``), polled on ``schedule`` from ``since`` (when
    the change began; None: now, and a blocking wait polls once at once), for ``timeout`` seconds at most.

    Then the ``then`` calls are made, in order, and ``next`` is waited for (the change they started). With a
    ``result`` (the step's, when the wait is its last act), a trigger ends the task itself: no worker comes
    back for it; ``history`` (the spec's recent windows of these waits, by state) is what its XCom ``waits``
    then holds with this build's added. ``region`` and ``connection``: where to poll (None: the waiter's)."""

    state: str
    resources: dict
    schedule: Schedule
    timeout: float
    since: float | None = None
    then: tuple[FollowUp, ...] = ()
    next: Wait | None = None
    result: Any = field(default=None, compare=False)
    history: dict = field(default_factory=dict)
    region: str | None = None
    connection: str | None = None

    @property
    def last(self) -> Wait:
        """The wait whose state ends the whole (``next``'s, if any)."""
        return self.next.last if self.next else self

    @property
    def total_timeout(self) -> float:
        return self.timeout + (self.next.total_timeout if self.next else 0.0)

    def placed(self, connection: str, region: str) -> Wait:
        """This wait, and its ``next``, in ``region`` through ``connection`` where it names none."""
        return dataclasses.replace(self, connection=self.connection or connection, region=self.region or region,
                                   next=self.next.placed(connection, region) if self.next else None)

    def shown(self) -> str:
        """As a log line says it: ``instance stopped i-1, then image available``."""
        return f"{describe(self.state)} {ids(self.resources)}" + (f", then {describe(self.next.state)}"
                                                                  if self.next else "")

    def to_dict(self) -> dict:
        """JSON-safe (a trigger's stored arguments): all but the ``result``, which the task stores itself."""
        return {"state": self.state, "resources": self.resources, "schedule": self.schedule.to_dict(),
                "timeout": self.timeout, "since": self.since, "then": [call.to_list() for call in self.then],
                "next": self.next.to_dict() if self.next else None, "history": self.history,
                "region": self.region, "connection": self.connection}

    @classmethod
    def of(cls, value: Wait | dict) -> Wait:
        """A wait from itself or its :meth:`to_dict`."""
        if isinstance(value, Wait):
            return value
        return cls(state=value["state"], resources=value["resources"], schedule=Schedule.of(value["schedule"]),
                   timeout=value["timeout"], since=value.get("since"),
                   then=tuple(FollowUp(*call) for call in value.get("then") or ()),
                   next=cls.of(value["next"]) if value.get("next") else None, history=value.get("history") or {},
                   region=value.get("region"), connection=value.get("connection"))


@dataclass(frozen=True)
class WaitOutcome:
    """How a wait ended, reached: the ``state`` it waited for last and its ``resources`` (as the request named
    them), the last describe ``answer`` (what was waited for, as the poll saw it: no need to describe it again;
    a wait for SSH: its ``host_keys``), or for a wait in several regions the ``answers`` by region, the
    ``windows`` each change ended in (by state; several regions: by region) and the ``polls`` made.

    ``failed``: a follow-up call failed (and why; the rest were left undone), and ``transient``: whether
    retrying may help. The outcome is then the first wait's, whose state was reached."""

    state: str
    resources: dict
    answer: dict = field(default_factory=dict)
    answers: dict = field(default_factory=dict)
    windows: dict = field(default_factory=dict)
    polls: int = 0
    failed: str | None = None
    transient: bool = False

    def is_for(self, wait: Wait) -> bool:
        """Whether this is the outcome of that very wait (its state, its resources)."""
        return (self.state, self.resources) == (wait.state, wait.resources)

    def raise_failed(self) -> None:
        """The error a step fails with when a follow-up call failed (permanent or transient, as AWS said)."""
        if self.failed:
            raise failure(self.failed, self.transient)

    def to_event(self) -> dict:
        """A trigger's event payload (JSON-safe when the answers are)."""
        return {"status": "success", **dataclasses.asdict(self)}

    @classmethod
    def from_event(cls, event: dict | None) -> WaitOutcome:
        """The outcome a trigger's event carries; raises :class:`WaitFailed` for a wait that failed or timed out."""
        if not event or event.get("status") != "success":
            raise WaitFailed((event or {}).get("message", "the wait ended without a result"))
        return cls(**{f.name: event[f.name] for f in dataclasses.fields(cls) if f.name in event})


class Waiter(Protocol):
    """Carries waits out: :class:`~image_factory.waits.blocking.Blocking` or
    :class:`~image_factory.waits.deferring.Deferring`."""

    def __call__(self, ec2, wait: Wait) -> WaitOutcome:
        """``wait`` (``ec2``: a client of its region, for a wait that polls here)."""

    def all(self, ec2_in: Callable[[str], Any], waits: Sequence[Wait]) -> WaitOutcome:
        """``waits`` (one state, each in its own region) at once; the outcome's ``answers`` are by region."""


class WaitFailed(PermanentError):
    pass


class CallFailed(Exception):
    """A call made after a wait failed for a reason that may pass (throttling, a dependency not gone yet, a
    dropped connection): the step runs again (Airflow's retry)."""


def failure(message: str, transient: bool) -> Exception:
    """The error that a failed follow-up call fails its step with."""
    return CallFailed(message) if transient else WaitFailed(message)


class Deferred(Exception):
    """Not an error: the state is not reached yet, and the wait moves to the triggerer (``trigger``).
    operators.classified turns it into Airflow's deferral."""

    def __init__(self, trigger, timeout: float, result=None):
        super().__init__(f"waiting in the triggerer: {trigger!r}")
        self.trigger = trigger
        self.timeout = timeout
        #: The task's result when the trigger ends the task: stored before deferring.
        self.result = result


def describe(state: str) -> str:
    return state.replace("_", " ")


def ids(resources: dict) -> str:
    return ", ".join(str(i) for v in resources.values() for i in (v if isinstance(v, list) else [v]))
