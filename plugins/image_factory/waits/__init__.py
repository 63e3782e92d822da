"""Waiting for a cloud state (an instance running, an image available, ...): one protocol.

A step asks for a wait with a :class:`~.protocol.Wait` (the state, the resources, the schedule, the timeout, the
:class:`~.protocol.FollowUp` calls the state allows and the wait after them) and gets a
:class:`~.protocol.WaitOutcome` back (the last describe answer, the windows each change ended in, the polls),
from a waiter: :mod:`.blocking` polls in the calling process, :mod:`.deferring` hands the wait to Airflow's
triggerer (:mod:`.triggers`, whose polls of many waits share calls: :mod:`.coalescing`); a resumed task gets
the outcome from the trigger's event. When to poll: :mod:`.schedule`; one poll: :mod:`.polls`; the follow-up
calls: :mod:`.follow_ups`.
"""
