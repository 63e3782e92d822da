"""One poll, judged by boto3's waiter definition (its describe operation and acceptors): the same in a task and
in the triggerer."""

from __future__ import annotations

from image_factory.waits.protocol import WaitFailed


def reached(ec2, state: str, resources: dict) -> dict | None:
    """One poll: the describe call's answer when ``state`` is reached (so that nobody needs to describe it
    again), else None; raises :class:`WaitFailed` when it never will be."""
    config = waiter_config(ec2, state)
    return judged(config, state, resources, call(ec2, config.operation, resources))


def call(client, operation: str, arguments: dict) -> dict:
    """The describe call's answer, or the error EC2 answered with (a waiter judges errors too)."""
    from botocore import xform_name
    from botocore.exceptions import ClientError

    try:
        return getattr(client, xform_name(operation))(**arguments)
    except ClientError as exc:
        return exc.response


#: How an Auto Scaling instance refresh can end.
REFRESH_ENDS = ("Successful", "Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed")
#: Waiters boto3 does not define, in its own waiter format: {name: (the service polled, the definition)}.
#: An instance refresh is over: the waiter ends on every end (the step judges it: a failed refresh names
#: its reason); a refresh that does not exist (any more) is a failure.
WAITERS = {
    "instance_refresh_finished": ("autoscaling", {
        "operation": "DescribeInstanceRefreshes", "delay": 15, "maxAttempts": 1440,
        "acceptors": [*({"matcher": "path", "argument": "InstanceRefreshes[0].Status", "expected": status,
                         "state": "success"}
                        for status in REFRESH_ENDS),
                      {"matcher": "path", "argument": "length(InstanceRefreshes) == `0`", "expected": True,
                       "state": "failure"}]}),
}


def service_of(state: str) -> str:
    """The service whose client polls ``state`` (EC2's, but for :data:`WAITERS`)."""
    return WAITERS[state][0] if state in WAITERS else "ec2"


_waiter_configs: dict[tuple[str, str], object] = {}


def waiter_config(client, state: str):
    """boto3's definition of the waiter (its describe operation, its acceptors), or :data:`WAITERS`'s; read once
    per process, as ``get_waiter`` makes a waiter model and class each time."""
    key = (client.meta.service_model.service_name, state)
    if key not in _waiter_configs:
        if state in WAITERS:
            from botocore.waiter import WaiterModel

            _waiter_configs[key] = WaiterModel({"version": 2, "waiters": {state: WAITERS[state][1]}}
                                               ).get_waiter(state)
        else:
            _waiter_configs[key] = client.get_waiter(state).config
    return _waiter_configs[key]


def judged(config, state: str, resources: dict, answer: dict) -> dict | None:
    """The answer (or error) of one poll, judged by the waiter ``config``: the answer when the state is reached,
    else None; raises :class:`WaitFailed` when it never will be."""
    for acceptor in config.acceptors:
        if acceptor.matcher_func(answer):
            if acceptor.state == "failure":
                reasons = "".join(f"; {reason}" for reason in state_reasons(answer))
                raise WaitFailed(f"{state} {resources}: the waiter reached a terminal failure state "
                                 f"({acceptor.matcher} {acceptor.argument or ''} {acceptor.expected}){reasons}")
            return answer if acceptor.state == "success" else None
    return None


def state_reasons(answer: dict) -> list[str]:
    """What EC2 says of why each instance or image is in its state (a failed launch, a failed image)."""
    found = [*(i for r in answer.get("Reservations", []) for i in r.get("Instances", [])), *answer.get("Images", [])]
    return [item["StateReason"]["Message"] for item in found if item.get("StateReason", {}).get("Message")]
