"""The two kinds of failure a build step can have.

A :class:`PermanentError` (a bad spec, a missing origin, a role that exits non-zero, an AWS error that says
the request itself is wrong) fails the task at once: retrying cannot help. Anything else (throttling, a
resource not yet visible, a dropped connection) is retried by Airflow with backoff.
"""

from __future__ import annotations

from contextlib import contextmanager

#: AWS error codes that say "try again later", not "this request is wrong".
TRANSIENT_CODES = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable", "RequestTimeout",
    "InsufficientInstanceCapacity", "DependencyViolation", "IncorrectState", "IncorrectInstanceState",
}


class InvalidValues(ValueError):
    """Values that a spec's model refuses: the message lists each field and what is wrong with it; ``fields``
    names them alone (for a message that must not quote the values)."""

    def __init__(self, message: str, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.fields = fields


class PermanentError(Exception):
    """A failure that a retry of the same step cannot fix."""


class PermanentAwsError(PermanentError):
    pass


def is_transient(code: str) -> bool:
    # `*.NotFound` right after a create is AWS's eventual consistency: the resource shows up a moment later.
    return code in TRANSIENT_CODES or code.endswith(".NotFound") or code.endswith("NotFoundException")


@contextmanager
def permanent_aws_errors():
    """Turn AWS errors that retrying cannot fix into :class:`PermanentAwsError`."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if is_transient(code):
            raise
        raise PermanentAwsError(f"AWS refused the request ({code}): {exc}") from exc
