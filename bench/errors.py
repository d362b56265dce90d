"""Errors shown to users as one line, and the exit codes of ``mtlbench``."""

from __future__ import annotations

import signal

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigError",
    "Interrupted",
    "SweepError",
    "error_summary",
]

EXIT_OK = 0  # every trial ok (or, for `check`, the gate passed)
EXIT_FAILED = 1  # some trial failed (diverged, timeout, oom, error); `check`: a regression
EXIT_USAGE = 2  # unusable input: sweep file, override, argument, run directory
# An interruption exits with 128 + the signal's number: 130 (SIGINT), 143 (SIGTERM).


class ConfigError(ValueError):
    """Invalid user input (sweep file, override, CLI argument); the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class SweepError(RuntimeError):
    """The sweep cannot go on (e.g. worker processes cannot start); the message is one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class Interrupted(BaseException):
    """A termination signal (SIGTERM, SIGHUP) arrived; raised in the main thread by the
    handler that ``mtlbench run`` installs. A BaseException, so that no ``except
    Exception`` (a trial's fault handling) swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def error_summary(error: object, limit: int = 200) -> str:
    """The line of a trial's ``error`` that says what went wrong: its first line, or the
    last one when it holds a whole traceback (whose first line names nothing)."""
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line[:limit]
