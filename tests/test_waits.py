"""The wait protocol (plugins/image_factory/waits/): a resumed task gets its wait's outcome from the event Airflow
resumes it with, never from state kept in a module; and a trigger makes exactly the follow-up calls that the
step declared. No cloud: the steps meet a stand-in client that records what they call."""

from __future__ import annotations

import inspect

import pytest

from image_factory import dag, operators, tasks
from image_factory.build import Build
from image_factory.settings import Settings
from image_factory.spec import parse_spec
from image_factory.steps import image, infrastructure, teardown
from image_factory.waits.deferring import Deferring
from image_factory.waits.protocol import Deferred, FollowUp, Wait, WaitFailed, WaitOutcome
from image_factory.waits.schedule import Schedule
from image_factory.waits.triggers import Ec2StateTrigger

REGION = "eu-west-1"


class Recorder:
    """A client that answers every call with nothing and records it."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, operation: str):
        def call(**params):
            self.calls.append((operation, params))
            return {}
        return call


def fresh_build() -> Build:
    spec = parse_spec(f"image:\n  name: waits-test\n  origin: ami-0123456789abcdef0\n  region: {REGION}\n")
    return Build(spec=spec, spec_hash="0" * 16, run_id="r", settings=Settings(provisioner_cidr="198.18.0.1/32"),
                 fresh=True)


def test_no_module_state_carries_a_triggers_event_to_a_task():
    for module in (tasks, operators, dag):
        held = {name: type(value).__name__ for name, value in vars(module).items()
                if isinstance(value, dict | list | set) and not name.startswith("__")}
        assert held == {}, f"{module.__name__} keeps state between tasks: {held}"
    assert not hasattr(tasks, "_resumed_events") and not hasattr(tasks, "remember_resumed")
    # The task body is handed the outcome under the name the operator gives it.
    assert operators.OUTCOME in inspect.signature(dag._run).parameters


def test_a_resumed_task_gets_its_outcome_from_the_event_it_is_resumed_with():
    seen = []

    def body(*results, wait_outcome=None):  # as dag._run takes it
        seen.append((results, wait_outcome))
        return "done"

    step = operators.BuildStep(task_id="resumed", python_callable=operators.classified(body), op_args=[1])
    outcome = WaitOutcome("instance_running", {"InstanceIds": ["i-1"]}, answer={"Reservations": []},
                          windows={"instance_running": [1.0, 1.5]}, polls=2)
    assert step.resume({}, event=outcome.to_event()) == "done"
    assert seen == [((1,), outcome)]
    # Run again without an event (a retry), the task is not resumed: nothing of the last event is left over.
    assert step.execute({}) == "done"
    assert seen[-1] == ((1,), None)
    with pytest.raises(WaitFailed, match="not reached within 60 s"):
        step.resume({}, event={"status": "timeout", "message": "instance_running i-1: not reached within 60 s"})


def test_the_image_trigger_makes_the_call_the_register_step_declares():
    build, ec2 = fresh_build(), Recorder()
    with pytest.raises(Deferred) as deferred:
        image.register(ec2, build, "i-1", "ami-0123456789abcdef0", "waits-test-1", wait=Deferring("conn", REGION),
                       stop_requested_at=100.0)
    trigger = deferred.value.trigger
    declared = image.create_image(build, "i-1", "ami-0123456789abcdef0", "waits-test-1",
                                  image.lineage_tags(build, "ami-0123456789abcdef0"))
    assert trigger.wait.then == (declared,)
    assert (trigger.wait.state, trigger.wait.since, trigger.wait.next.state) == ("instance_stopped", 100.0,
                                                                                "image_available")
    assert (trigger.wait.region, trigger.wait.connection) == (REGION, build.spec.aws_conn_id)
    assert ec2.calls == []  # CreateImage is the trigger's to make, once the instance is stopped
    # As the triggerer gets it back from the database: the same calls.
    classpath, kwargs = trigger.serialize()
    assert classpath == "image_factory.waits.triggers.Ec2StateTrigger"
    assert Ec2StateTrigger(**kwargs).wait.then == (declared,)


def test_the_teardown_trigger_makes_the_deletions_the_teardown_step_declares():
    ec2, ssm = Recorder(), Recorder()
    record = infrastructure.BuilderInfrastructure("vpc-1", "subnet-1", "sg-1", "key-1", "/p", own_vpc=True).to_dict()
    with pytest.raises(Deferred) as deferred:
        teardown.tear_down(ec2, ssm, "b1", 2, wait=Deferring("conn", REGION),
                           record={**record, "instance_id": "i-1"}, image_complete=True)
    trigger = deferred.value.trigger
    assert trigger.wait.then == (FollowUp("ec2", "delete_security_group", {"GroupId": "sg-1"}),
                                 FollowUp("ec2", "delete_subnet", {"SubnetId": "subnet-1"}),
                                 FollowUp("ec2", "delete_vpc", {"VpcId": "vpc-1"}))
    assert trigger.finish and deferred.value.result == ["i-1", "key-1", "/p", "sg-1", "subnet-1", "vpc-1"]
    assert [operation for operation, _ in ec2.calls] == ["terminate_instances", "delete_key_pair"]
    assert Ec2StateTrigger(**trigger.serialize()[1]).wait.then == trigger.wait.then


def test_a_resumed_wait_returns_its_outcome_and_any_other_wait_defers():
    wait = Wait("instance_running", {"InstanceIds": ["i-1"]}, Schedule.every(2), 60)
    outcome = WaitOutcome("instance_running", {"InstanceIds": ["i-1"]}, answer={"x": 1})
    assert Deferring("conn", REGION, outcome)(None, wait) is outcome
    with pytest.raises(Deferred):
        Deferring("conn", REGION, outcome)(None, Wait("instance_running", {"InstanceIds": ["i-2"]},
                                                      Schedule.every(2), 60))


def test_a_follow_up_is_a_call_a_trigger_can_make():
    with pytest.raises(ValueError, match="ec2"):
        FollowUp("ssm", "delete_parameter", {"Name": "/p"})
