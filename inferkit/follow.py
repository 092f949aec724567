"""Pure following logic: RayJob and pod snapshots -> state lines, reasons pods wait, the final exit
code; and a log cursor that makes resumed log streams repeat nothing. No I/O: unit-tested as is."""

from __future__ import annotations

from dataclasses import dataclass

from inferkit.errors import EXIT_JOB_FAILED, EXIT_OK

TERMINAL_DEPLOYMENT = {"Complete", "Failed", "ValidationFailed"}
IMAGE_PROBLEMS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CONTAINER_PROBLEMS = IMAGE_PROBLEMS | {"CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff",
                                       "RunContainerError"}
EVENT_PROBLEMS = {"FailedScheduling", "FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox", "Failed",
                  "BackOff", "FailedCreate"}


@dataclass(frozen=True)
class JobState:
    deployment: str = ""
    job: str = ""
    reason: str = ""
    message: str = ""
    cluster: str = ""
    dashboard: str = ""
    start: str = ""
    end: str = ""
    suspended: bool = False
    queue: str = ""

    @classmethod
    def of(cls, obj: dict) -> JobState:
        status = obj.get("status") or {}
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return cls(
            deployment=status.get("jobDeploymentStatus") or "", job=status.get("jobStatus") or "",
            reason=status.get("reason") or "", message=status.get("message") or "",
            cluster=status.get("rayClusterName") or "", dashboard=status.get("dashboardURL") or "",
            start=status.get("startTime") or "", end=status.get("endTime") or "",
            suspended=bool((obj.get("spec") or {}).get("suspend")),
            queue=labels.get("kueue.x-k8s.io/queue-name", ""),
        )

    def describe(self) -> str:
        parts = [f"deployment {self.deployment or 'New'}", f"job {self.job or '-'}"]
        if self.reason:
            parts.append(f"reason {self.reason}")
        return ", ".join(parts)


def state_change(previous: JobState | None, current: JobState) -> str | None:
    """A line for the user when the RayJob's phase changed, else None."""
    key = (current.deployment, current.job, current.reason)
    if previous is not None and key == (previous.deployment, previous.job, previous.reason):
        return None
    line = current.describe()
    if current.suspended and current.deployment in ("Suspended", "Suspending", ""):
        line += f" (waiting for Kueue to admit it{f' from queue {current.queue}' if current.queue else ''})"
    if current.message and current.deployment in TERMINAL_DEPLOYMENT:
        line += f": {current.message}"
    return line


@dataclass(frozen=True)
class Outcome:
    code: int
    summary: str


def outcome(state: JobState) -> Outcome | None:
    """The end of the job and the exit code that tells the truth, or None while it is not over."""
    if state.deployment not in TERMINAL_DEPLOYMENT:
        return None
    if state.deployment == "Complete" and state.job == "SUCCEEDED":
        return Outcome(EXIT_OK, "the job succeeded")
    detail = ": ".join(p for p in (state.reason, state.message) if p) or "no reason given"
    return Outcome(EXIT_JOB_FAILED, f"the job {'failed' if state.job != 'STOPPED' else 'was stopped'} "
                                    f"(deployment {state.deployment}, job {state.job or '-'}): {detail}")


def _condition(pod: dict, kind: str) -> dict:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def pod_problems(pods: list[dict], events: list[dict]) -> list[str]:
    """Why pods are not running: unschedulable (e.g. insufficient nvidia.com/gpu), image pulls,
    crashing or killed containers, and the matching Warning events."""
    problems = []
    for pod in pods:
        name = (pod.get("metadata") or {}).get("name", "?")
        status = pod.get("status") or {}
        scheduled = _condition(pod, "PodScheduled")
        if status.get("phase") == "Pending" and scheduled.get("status") == "False":
            problems.append(f"pod {name} cannot be scheduled: {scheduled.get('message') or scheduled.get('reason')}")
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        for container in statuses:
            state = container.get("state") or {}
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in CONTAINER_PROBLEMS:
                detail = f": {waiting['message']}" if waiting.get("message") else ""
                problems.append(f"pod {name}, container {container.get('name')}: {waiting['reason']}{detail}")
            last = (container.get("lastState") or {}).get("terminated") or state.get("terminated") or {}
            if last.get("reason") == "OOMKilled":
                problems.append(f"pod {name}, container {container.get('name')}: OOMKilled (give it more memory)")
    names = {(p.get("metadata") or {}).get("name") for p in pods}
    for event in events:
        involved = (event.get("involvedObject") or {}).get("name")
        if event.get("type") == "Warning" and event.get("reason") in EVENT_PROBLEMS and involved in names:
            problems.append(f"pod {involved}: {event.get('reason')}: {event.get('message', '').strip()}")
    return problems


@dataclass
class LogCursor:
    """What of the driver's log was shown. Lines come with their RFC 3339 timestamp; a resumed stream
    of the same pod skips lines older than the last shown and as many of the same instant as were
    shown. A new submitter pod (a retry) runs the driver again, so its log is shown in full."""

    pod: str = ""
    last: str = ""
    shown_at_last: int = 0
    replaying: bool = False
    replayed: int = 0

    def resume(self, pod: str) -> bool:
        """Call before each (re)opened stream; True when it is a different pod than the one shown so far."""
        new_pod = bool(self.pod) and pod != self.pod
        if pod != self.pod:
            self.pod, self.last, self.shown_at_last = pod, "", 0
        self.replaying, self.replayed = True, 0
        return new_pod

    def accept(self, raw: str) -> str | None:
        """The text to show for a raw log line, or None when it was shown already."""
        stamp, _, text = raw.partition(" ")
        shown = stamp_key(self.last)
        if stamp_key(stamp) < shown:
            return None
        if stamp_key(stamp) == shown:
            if self.replaying and self.replayed < self.shown_at_last:
                self.replayed += 1
                return None
            self.shown_at_last += 1
        else:
            self.last, self.shown_at_last = stamp, 1
        self.replaying = False
        return text


def stamp_key(stamp: str) -> tuple[str, str]:
    """An RFC 3339 timestamp as a key that sorts in time order even when fractions differ in length."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, fraction.ljust(9, "0")
