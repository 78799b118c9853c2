"""User errors found inside Ray Train workers end the run: they are never retried.

Ray Train retries every worker error up to `FailureConfig.max_failures` (forever at -1), and its
failure policy cannot be replaced through a public API. But an error raised by a `UserCallback`
on the controller is a controller error, which the default policy never retries. So the callback
below re-raises a worker's InputError/ConfigError there: bad data found by a worker fails once,
and the driver turns it into the CLI's one line (`user_error`), with no advice to resume.
"""

from __future__ import annotations

import ray.train

from chimed_ray.config import ConfigError
from chimed_ray.utils.files import InputError

USER_ERRORS = (InputError, ConfigError)


class UserErrorsAreFatal(ray.train.UserCallback):
    """Runs on the Ray Train controller after a poll that found worker errors."""

    def after_exception(self, run_context, worker_exceptions: dict[int, Exception]) -> None:
        for rank in sorted(worker_exceptions):
            error = worker_exceptions[rank]
            if isinstance(error, USER_ERRORS):
                raise InputError(str(error).strip())


def user_error(exc: BaseException) -> str | None:
    """The user error message a failed `trainer.fit()` carries, if the cause was one."""
    failure = getattr(exc, "controller_failure", None)
    if isinstance(failure, USER_ERRORS):
        return str(failure).strip()
    return None
