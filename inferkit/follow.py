"""Pure following logic: RayJob and pod snapshots -> state lines, reasons pods wait, the final exit
code; and a log cursor that makes resumed log streams repeat nothing. No I/O: unit-tested as is."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

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


FIRST_POD, SAME_POD, TAKEOVER, NEW_RUN = "first pod", "same pod", "takeover", "new run"


def submission_of(pod: dict) -> str:
    """The Kubernetes Job a submitter pod belongs to. Pods of one Job replay one Ray job's log (a retried
    submitter finds the job submitted already and follows its log from the start); a RayJob retry
    (spec.backoffLimit) makes a new Job, which runs the driver again."""
    metadata = pod.get("metadata") or {}
    owner = next((o.get("uid") for o in metadata.get("ownerReferences") or [] if o.get("kind") == "Job"), None)
    labels = metadata.get("labels") or {}
    return owner or labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid") or ""


@dataclass
class LogCursor:
    """What of the driver's log was shown, so that no line is shown twice or lost.

    A resumed stream of the same pod skips lines older than the last shown (by the RFC 3339 timestamp
    each line carries) and as many of the same instant as were shown. A new pod of the same submission
    replays the whole log: its lines are matched in order against those shown and skipped while they
    match; lines it adds (the CLI's own notes) and everything after the replay are shown."""

    pod: str = ""
    submission: str = ""
    last: str = ""
    shown_at_last: int = 0
    replaying: bool = False
    replayed: int = 0
    shown: array = field(default_factory=lambda: array("q"))  # hashes of the lines shown for this submission
    echo: int | None = None  # while a takeover pod replays: how far into `shown` its replay has come
    echo_end: int = 0  # the lines shown before the takeover: the most its replay can repeat

    def resume(self, pod: str, submission: str = "") -> str:
        """Call before each (re)opened stream: FIRST_POD, SAME_POD, TAKEOVER (a new pod of the same
        submission) or NEW_RUN (a pod of a new submission)."""
        if pod == self.pod:
            kind = SAME_POD
        elif self.pod and submission == self.submission:
            kind, self.echo, self.echo_end = TAKEOVER, (0 if self.shown else None), len(self.shown)
        else:
            kind, self.echo, self.shown = (NEW_RUN if self.pod else FIRST_POD), None, array("q")
        if kind != SAME_POD:
            self.pod, self.submission, self.last, self.shown_at_last = pod, submission, "", 0
        self.replaying, self.replayed = True, 0
        return kind

    def accept(self, raw: str) -> str | None:
        """The text to show for a raw log line, or None when it was shown already."""
        stamp, _, text = raw.partition(" ")
        if not self._new_in_stream(stamp) or self._echoed(text):
            return None
        self.shown.append(hash(text))
        return text

    def _new_in_stream(self, stamp: str) -> bool:
        shown = stamp_key(self.last)
        if stamp_key(stamp) < shown:
            return False
        if stamp_key(stamp) == shown:
            if self.replaying and self.replayed < self.shown_at_last:
                self.replayed += 1
                return False
            self.shown_at_last += 1
        else:
            self.last, self.shown_at_last = stamp, 1
        self.replaying = False
        return True

    def _echoed(self, text: str) -> bool:
        if self.echo is None:
            return False
        try:
            found = self.shown.index(hash(text), self.echo, self.echo_end)
        except ValueError:
            return False
        self.echo = found + 1 if found + 1 < self.echo_end else None
        return True


def stamp_key(stamp: str) -> tuple[str, str]:
    """An RFC 3339 timestamp as a key that sorts in time order even when fractions differ in length."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, fraction.ljust(9, "0")
