"""The poll schedule (waits/schedule.py): priors for a spec's first build, a schedule fitted to its recent builds,
the fixed poll_interval override; and a trigger that polls on a learned schedule, against the local cloud's
emulated state-change times."""

from __future__ import annotations

import itertools
import time

import pytest
from airflow.triggers.base import TaskSuccessEvent

from image_factory.build import Build
from image_factory.settings import Settings
from image_factory.spec import parse_spec
from image_factory.steps.instance import EMULATED_RANGE, InstanceError, address
from image_factory.waits.schedule import HISTORY, PRIORS, Schedule, recorded, remember, schedule_for, window
from image_factory.waits.triggers import Ec2StateTrigger
from tests.test_triggers import first_event, launch, wait

OFF = {"instance_running": 0, "instance_stopped": 0, "image_available": 0, "instance_terminated": 0}


def first(schedule: Schedule, count: int) -> list[float]:
    return [round(t, 2) for t in itertools.islice(schedule.offsets(), count)]


def test_a_first_build_polls_on_the_priors_with_a_lag_of_a_tenth():
    schedule = schedule_for("instance_running")
    low, high = PRIORS["instance_running"]
    moments = first(schedule, 40)
    assert moments[0] == low  # nothing before AWS's quickest
    steps = [b - a for a, b in itertools.pairwise(moments)]
    inside = [(a, step) for a, step in zip(moments, steps, strict=False) if a < high]
    assert all(step <= 0.1 * a + 0.02 for a, step in inside)
    # Past the priors' window it backs off, up to the cap.
    beyond = [step for a, step in zip(moments, steps, strict=False) if a > high]
    assert beyond == sorted(beyond) and max(beyond) <= schedule.cap


def test_a_learned_schedule_starts_at_the_recent_window_and_polls_little():
    history = [[19.8, 20.2], [19.9, 20.3]]
    schedule = schedule_for("instance_running", history)
    moments = first(schedule, 4)
    assert 19.8 < moments[0] <= 20.3  # the first poll falls in the window the change ended in
    assert moments[1] - moments[0] <= 0.5  # and the next one soon after it
    # A wide window (from a build on priors) is crossed in a bounded number of dense polls.
    wide = schedule_for("instance_running", [[12.0, 22.0]])
    assert len([t for t in first(wide, 50) if t <= 22.0 + wide.step]) <= 7


def test_one_wide_window_among_the_recent_ones_does_not_make_the_next_builds_poll_densely():
    # A change that takes 30 s: the first build, on the priors, saw it at its first poll (window from a prior
    # step before); the builds after it saw it within a dense step.
    history = [[27.0, 30.0], [29.7, 30.3], [29.8, 30.4]]
    before = [t for t in first(schedule_for("image_available", history), 50) if t < 30.0]
    assert len(before) <= 1  # at most one "not yet" poll before the change, not one every step from 27 s
    # ... and a change that got slower is still seen within a dense step past the latest window.
    late = schedule_for("image_available", history)
    assert any(30.4 < t <= 30.4 + 2 * late.step for t in first(late, 50))


def test_poll_interval_is_a_fixed_grid_and_the_stop_is_polled_at_half_of_it():
    assert first(schedule_for("image_available", [[1, 2]], poll_interval=15), 3) == [15, 30, 45]
    assert first(schedule_for("instance_stopped", poll_interval=2), 3) == [1, 2, 3]
    with pytest.raises(ValueError, match="above 0"):
        Schedule.every(0)


def test_windows_record_what_the_polls_saw_and_history_keeps_the_recent_ones():
    schedule = Schedule.of({"start": 5, "end": 10, "step": 0.5, "precision": 0, "backoff": 1.5, "cap": 30})
    assert window(schedule, 5.5, 6.0) == [5.5, 6.0]
    assert window(schedule, None, 5.0) == [4.75, 5.0]  # the first poll saw it: from a dense step before
    on_priors = schedule_for("image_available")
    assert window(on_priors, None, 30.0) == [29.4, 30.0]  # not from a prior step (3 s) before
    history = []
    for k in range(HISTORY + 2):
        history = remember(history, [k, k + 1])
    assert history[0] == [2, 3] and len(history) == HISTORY
    # What a task (or the trigger that ends it) records: each wait's recent windows with this build's.
    assert recorded({"instance_running": history, "image_available": [[1, 2]]}, {"instance_running": [9, 10]}) == {
        "instance_running": [*history[1:], [9, 10]]}
    assert Schedule.of(schedule.to_dict()) == schedule


#: How long the emulated instance takes to run: above a real machine's boot under a second test worker's load
#: (about 3 s idle; at 3 s emulated, a boot of 4 s under load made the wait poll five times).
RUNNING = 8


def test_a_learned_wait_sees_the_change_in_one_or_two_polls_and_records_its_window(local_cloud, ec2, ssm,
                                                                                   aws_connection):
    """An instance that takes 8 s to run, waited for with the history of builds that saw it take 8 s: the
    trigger polls once or twice (at the defaults' priors it would poll from 10 s on), within 0.6 s of it."""
    local_cloud.configure(latency={"instance_running": RUNNING})
    history = {"instance_running": [[RUNNING - 0.1, RUNNING + 0.2], [RUNNING - 0.05, RUNNING + 0.1]]}
    try:
        instance_id = launch(ec2, ssm)
        started = time.time()
        local_cloud.reset_stats()
        schedule = schedule_for("instance_running", history["instance_running"])
        trigger = Ec2StateTrigger(wait(aws_connection, "instance_running", {"InstanceIds": [instance_id]},
                                       timeout=30, schedule=schedule, since=started, history=history), finish=True)
        event = first_event(trigger)
        waited = time.time() - started
        polls = local_cloud.stats()["calls"].get("ec2:DescribeInstances", 0)
    finally:
        local_cloud.configure(latency=OFF)
        ec2.terminate_instances(InstanceIds=[instance_id])
    assert isinstance(event, TaskSuccessEvent)
    assert 1 <= polls <= 2
    assert RUNNING <= waited < RUNNING + 0.6
    recorded = event.xcoms["waits"]["instance_running"]
    assert recorded[:2] == history["instance_running"] and len(recorded) == 3
    low, high = recorded[-1]
    assert low < high and RUNNING - 0.5 < high < RUNNING + 0.6


def _build(**settings) -> Build:
    spec = parse_spec("image:\n  name: addr-test\n  origin: ami-0123456789abcdef0\n  region: eu-west-1\n")
    return Build(spec=spec, spec_hash="0" * 16, run_id="r", settings=Settings(provisioner_cidr="198.18.0.1/32",
                                                                                 **settings))


def test_on_an_emulator_a_build_connects_only_inside_the_reserved_range():
    launched = {"instance_id": "i-1", "private_ip": "10.1.2.3"}
    with pytest.raises(InstanceError, match=r"10\.1\.2\.3 is outside 198\.18\.0\.0/15"):
        address(None, launched, _build(), emulated=True)
    inside = {"instance_id": "i-1", "private_ip": "198.18.4.5"}
    assert address(None, inside, _build(), emulated=True) == "198.18.4.5"
    assert address(None, launched, _build(), emulated=False) == "10.1.2.3"  # real AWS: as AWS reports it
    assert address(None, launched, _build(ssh_host="127.0.0.1"), emulated=True) == "127.0.0.1"
    assert str(EMULATED_RANGE) == "198.18.0.0/15"
