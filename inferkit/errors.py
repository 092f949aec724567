"""One error base for everything a user can get wrong or hit, with the exit code it maps to."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable

# Exit codes, documented in `inferkit --help` and README.md.
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_INTERNAL = 70  # a bug in inferkit: neither a job failure nor the user's mistake
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process SIGTERM ended


def one_line(error: BaseException, limit: int | None = None) -> str:
    """An error's message on one line (SDKs and servers write several), cut to `limit` characters."""
    return " ".join(str(error).split())[:limit]


class InferkitError(Exception):
    """An error the CLI reports as `Error: <message>` without a traceback (unless -v)."""

    exit_code = EXIT_USAGE


class ConfigError(InferkitError):
    """Bad usage or configuration; carries every problem found, not only the first."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{len(self.problems)} problems:\n{lines}"
        super().__init__(message)


class ApiError(InferkitError):
    """The Kubernetes or Ray API refused or failed; also failed pre-flight checks."""

    exit_code = EXIT_API


class JobFailed(InferkitError):
    """The job ran and failed (or produced too many error rows)."""

    exit_code = EXIT_JOB_FAILED


class FollowTimeout(InferkitError):
    exit_code = EXIT_TIMEOUT


class Terminated(KeyboardInterrupt):
    """SIGTERM (`docker stop`, a pod's deletion), raised in the main thread: the command stops as on Ctrl-C
    (a run keeps what it wrote, to resume) and exits 143."""


def stop_on_sigterm() -> None:
    """Makes SIGTERM raise Terminated, once. Needed twice over: a container's PID 1 with no handler ignores
    SIGTERM until the engine kills it, and ray.init installs a handler that exits 1 from whatever the main
    thread was doing (ray/_private/worker.py and node.py), so the job calls this again after connecting."""
    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
