"""One error base for everything a user can get wrong or hit, with the exit code it maps to."""

from __future__ import annotations

from collections.abc import Iterable

# Exit codes, documented in `inferkit --help` and README.md.
EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_INTERNAL = 70  # a bug in inferkit: neither a job failure nor the user's mistake
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130


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
