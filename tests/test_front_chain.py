"""The front's chain of hooks (localcloud/chain.py): the order hooks see a call and its answer, and all-or-nothing
config through the running front."""

from __future__ import annotations

import http.client

import pytest

from localcloud.chain import Answer, Call, Chain, Hook
from localcloud.cloud import LocalCloudError


class Recording(Hook):
    """Notes each call it sees in ``seen``; answers with ``answer`` when given one."""

    def __init__(self, label: str, seen: list, answer: Answer | None = None):
        self.label, self.seen, self.answer = label, seen, answer

    def before(self, call: Call) -> Answer | None:
        self.seen.append(f"before {self.label}")
        return self.answer

    def after(self, call: Call, answer: Answer) -> Answer:
        self.seen.append(f"after {self.label}")
        answer.body += self.label.encode()
        return answer


def a_call() -> Call:
    return Call("POST", "/", http.client.HTTPMessage(), b"Action=DescribeVpcs", "ec2:DescribeVpcs", "eu-west-1")


def test_hooks_see_the_call_in_order_and_its_answer_in_reverse_order():
    seen: list[str] = []
    chain = Chain([Recording("a", seen), Recording("b", seen)])

    def forward(call: Call) -> Answer:
        seen.append("forwarded")
        return Answer(200, [], b"moto:", from_cloud=True)

    answer = chain.answer(a_call(), forward)
    assert seen == ["before a", "before b", "forwarded", "after b", "after a"]
    assert answer.body == b"moto:ba"


def test_a_hook_that_answers_stops_the_later_hooks_and_the_relay():
    seen: list[str] = []
    refused = Answer(503, [], b"refused:")
    chain = Chain([Recording("a", seen), Recording("b", seen, answer=refused), Recording("c", seen)])

    def forward(call: Call) -> Answer:
        raise AssertionError("a call answered by a hook is not forwarded")

    answer = chain.answer(a_call(), forward)
    assert seen == ["before a", "before b", "after a"]
    assert (answer.status, answer.body) == (503, b"refused:a")


def test_a_failing_after_hook_leaves_the_answer_to_the_others():
    seen: list[str] = []

    class Failing(Hook):
        def after(self, call: Call, answer: Answer) -> Answer:
            raise RuntimeError("broken fix")

    logged = []
    chain = Chain([Recording("a", seen), Failing()], log=lambda *args: logged.append(args))
    answer = chain.answer(a_call(), lambda call: Answer(200, [], b"moto:", from_cloud=True))
    assert answer.body == b"moto:a"
    assert "Failing" in logged[0]


@pytest.fixture
def untouched_config(local_cloud):
    before = local_cloud.configure()
    yield before
    local_cloud.configure(throttle_rate=0, throttle_seed=0, latency=dict.fromkeys(before.get("latency", {}), 0),
                          deny=[], fail_copies_to=[], insufficient_capacity=[])


@pytest.mark.parametrize("settings", [
    {"throttle_rate": 0.5, "deny": ["not a call"]},  # the bad key after a good one
    {"deny": ["ec2:RunInstances@eu-west-1"], "latency": {"instance_running": -1}},
    {"fail_copies_to": ["us-west-2"], "insufficient_capacity": ["t3.small"], "no_such_setting": 1},
    {"latency": {"image_available": 30}, "throttle_rate": 2},
])
def test_a_config_with_one_bad_key_changes_nothing(local_cloud, untouched_config, settings):
    with pytest.raises(LocalCloudError, match="400"):
        local_cloud._control("POST", "config", settings)
    assert local_cloud.configure() == untouched_config
    assert local_cloud.stats()["config"] == untouched_config
