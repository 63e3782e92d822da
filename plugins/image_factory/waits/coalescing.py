"""Polls that ride one describe call: the triggerer's waits on the instances and images of many builds.

Each wait polls on its own schedule (schedule.py). While a DescribeInstances (or DescribeImages) call of one
connection and region is on its way, the polls of other waits that come due queue, and the next call asks
about all their resources at once; each wait gets the answer cut down to its own resources, as if it had asked
alone. A poll with no call on its way is made at once, so a lone build polls as before; a hundred builds in
one triggerer make a fraction of the calls (and stay further from EC2's request rate limits).

A batch that EC2 answers with an error (one of its resources is not found yet, say) is asked again one wait at
a time, so that each wait gets its own answer or error.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass

from image_factory.waits.polls import call


@dataclass(frozen=True)
class Batchable:
    #: The argument that lists the resources asked about.
    ids_argument: str
    #: The answer's list of resources (for DescribeInstances, each reservation's ``Instances``).
    items: str
    #: A resource's id in its item.
    id_field: str


#: The describe calls that polls share (the waiters' operations); a poll with other arguments asks alone.
BATCHABLE = {
    "DescribeInstances": Batchable("InstanceIds", "Instances", "InstanceId"),
    "DescribeImages": Batchable("ImageIds", "Images", "ImageId"),
}
#: Resources asked about in one call at most (the rest ride the next).
MAX_IDS = 100


def cut(answer: dict, batchable: Batchable, ids: list[str]) -> dict:
    """``answer`` as a call about ``ids`` alone would have had it."""
    wanted = set(ids)
    if "Reservations" in answer:
        reservations = ({**reservation, "Instances": [item for item in reservation["Instances"]
                                                      if item[batchable.id_field] in wanted]}
                        for reservation in answer["Reservations"])
        return {**answer, "Reservations": [reservation for reservation in reservations if reservation["Instances"]]}
    return {**answer, batchable.items: [item for item in answer.get(batchable.items, [])
                                        if item[batchable.id_field] in wanted]}


@dataclass
class _Poll:
    ids: list[str]
    answered: asyncio.Future


class Coalescer:
    """The shared describe calls of one event loop (the triggerer's), by connection, region and operation."""

    def __init__(self):
        self._queued: dict[tuple, list[_Poll]] = {}
        self._draining: dict[tuple, asyncio.Task] = {}
        #: (calls made, polls answered): how much the sharing saved (the tests read them).
        self.calls, self.polls = 0, 0

    async def ask(self, key: tuple, client, operation: str, arguments: dict) -> tuple[dict, int]:
        """The answer to ``operation(**arguments)`` and how many polls shared the call that gave it; ``key``
        names the client's connection and region (a call is shared by polls of the same)."""
        batchable = BATCHABLE.get(operation)
        key = (*key, operation)
        if batchable is None or set(arguments) != {batchable.ids_argument}:
            self.calls, self.polls = self.calls + 1, self.polls + 1
            return await asyncio.to_thread(call, client, operation, arguments), 1
        poll = _Poll(list(arguments[batchable.ids_argument]), asyncio.get_running_loop().create_future())
        self._queued.setdefault(key, []).append(poll)
        if key not in self._draining:
            self._draining[key] = asyncio.create_task(self._drain(key, client, operation, batchable))
        return await poll.answered

    async def _drain(self, key: tuple, client, operation: str, batchable: Batchable) -> None:
        """Ask for every queued poll, a call at a time, until none is left."""
        try:
            while queued := self._queued.pop(key, None):
                batch, rest = _take([poll for poll in queued if not poll.answered.done()])  # cancelled: not asked
                if rest:
                    self._queued[key] = rest + self._queued.get(key, [])
                if batch:
                    await self._answer(batch, client, operation, batchable)
        finally:
            self._draining.pop(key, None)

    async def _answer(self, batch: list[_Poll], client, operation: str, batchable: Batchable) -> None:
        ids = list(dict.fromkeys(resource for poll in batch for resource in poll.ids))
        try:
            answer = await asyncio.to_thread(call, client, operation, {batchable.ids_argument: ids})
            self.calls, self.polls = self.calls + 1, self.polls + len(batch)
            if "Error" in answer and len(batch) > 1:
                # Whose resource EC2 did not find is only in the message: each wait asks alone.
                for poll in batch:
                    alone = await asyncio.to_thread(call, client, operation, {batchable.ids_argument: poll.ids})
                    self.calls += 1
                    _settle(poll, (alone, 1))
                return
        except Exception as exc:  # no answer (the endpoint unreachable, say): each wait's poll fails as alone
            for poll in batch:
                if not poll.answered.done():
                    poll.answered.set_exception(exc)
            return
        for poll in batch:
            _settle(poll, (answer if "Error" in answer else cut(answer, batchable, poll.ids), len(batch)))


def _settle(poll: _Poll, result: tuple[dict, int]) -> None:
    if not poll.answered.done():
        poll.answered.set_result(result)


def _take(queued: list[_Poll]) -> tuple[list[_Poll], list[_Poll]]:
    """The polls of the next call (up to :data:`MAX_IDS` resources), and the rest."""
    count = 0
    for index, poll in enumerate(queued):
        count += len(poll.ids)
        if count > MAX_IDS and index:
            return queued[:index], queued[index:]
    return queued, []


_coalescers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def coalescer() -> Coalescer:
    """The running event loop's :class:`Coalescer` (the triggerer runs every trigger in one loop)."""
    loop = asyncio.get_running_loop()
    if loop not in _coalescers:
        _coalescers[loop] = Coalescer()
    return _coalescers[loop]
