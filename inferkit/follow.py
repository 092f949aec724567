"""Pure following logic: RayJob and pod snapshots -> state lines, reasons pods wait, the final exit
code; and a log cursor that makes resumed and retried log streams lose nothing and repeat what it can
tell was shown. No I/O: unit-tested as is."""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
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
CONFIRM_LINES = 3  # lines of a takeover pod that must match in a row before they count as its replay
GIVE_UP_LINES = 1000  # new lines after which a takeover pod's log is no longer matched against the old
RESUBMITTED = re.compile(r"Job '[^']+' submitted successfully")  # `ray job submit`: the driver runs again


def submission_of(pod: dict) -> str:
    """The Kubernetes Job a submitter pod belongs to. Pods of one Job replay one Ray job's log (a retried
    submitter finds the job submitted already and follows its log from the start, unless Ray lost it);
    a RayJob retry (spec.backoffLimit) makes a new Job, which runs the driver again."""
    metadata = pod.get("metadata") or {}
    owner = next((o.get("uid") for o in metadata.get("ownerReferences") or [] if o.get("kind") == "Job"), None)
    labels = metadata.get("labels") or {}
    return owner or labels.get("batch.kubernetes.io/controller-uid") or labels.get("controller-uid") or ""


@dataclass
class LogCursor:
    """What of the driver's log was shown, so that no line is lost and, as far as can be told, none is
    shown twice.

    A resumed stream of the same pod skips, until its first new line, lines older than the last shown
    (by the RFC 3339 timestamp each line carries) and as many of the same instant as were shown; after
    that every line is new, even one stamped a little out of order. A takeover pod (a new pod of the
    same submission) replays the log from the start: its lines are matched in order against the log
    shown before it, only ever forward, and held back until CONFIRM_LINES of them match in a row (or
    they are exactly the rest of that log); matched lines are skipped, and from a mismatch on lines are
    shown until they match again. Held lines are shown, not dropped, when they stop matching or the
    stream ends, so a doubt costs a repeated line, never a lost one. A takeover pod that submits the job
    again (Ray lost it) is a new run."""

    pod: str = ""
    submission: str = ""
    last: str = ""
    shown_at_last: int = 0
    replaying: bool = False
    replayed: int = 0
    log: array = field(default_factory=lambda: array("q"))  # hashes of this pod's lines, shown or matched
    before: array = field(default_factory=lambda: array("q"))  # the log shown before this pod took over
    places: dict[int, list[int]] = field(default_factory=dict)  # where each line hash stands in `before`
    at: int | None = None  # while this pod replays `before`: where its replay stands
    aligned: bool = False
    held: list[str] = field(default_factory=list)
    unmatched: int = 0
    resubmitted: bool = False  # set when a takeover pod submitted the job again; the caller resets it

    def resume(self, pod: str, submission: str = "") -> str:
        """Call before each (re)opened stream, after `flush`: FIRST_POD, SAME_POD, TAKEOVER (a new pod of
        the same submission) or NEW_RUN (a pod of a new submission)."""
        if pod == self.pod:
            kind = SAME_POD
        elif self.pod and submission == self.submission:
            kind = TAKEOVER
            # what the user saw: this pod's log, and what it had not replayed yet of the one before
            self.before = self.log + (self.before[self.at:] if self.at is not None else array("q"))
        else:
            kind, self.before = (NEW_RUN if self.pod else FIRST_POD), array("q")
        if kind != SAME_POD:
            self.places = {}
            for place, line in enumerate(self.before):
                self.places.setdefault(line, []).append(place)
            self.pod, self.submission, self.last, self.shown_at_last = pod, submission, "", 0
            self.log, self.at, self.aligned, self.unmatched = array("q"), (0 if self.before else None), False, 0
        self.replaying, self.replayed = True, 0
        return kind

    def accept(self, raw: str) -> list[str]:
        """The texts to show for a raw log line: none when it was shown already or is held back, several
        when held lines turn out to be new."""
        stamp, _, text = raw.partition(" ")
        if not self._new_in_stream(stamp):
            return []
        if self.at is None:
            return [self._show(text)]
        if RESUBMITTED.search(text):
            shown = self.flush()
            self.log, self.before, self.places, self.at, self.resubmitted = array("q"), array("q"), {}, None, True
            return [*shown, self._show(text)]
        return self._match(text)

    def flush(self) -> list[str]:
        """The held lines, to show now: call it when a stream ends."""
        held, self.held = self.held, []
        return [self._show(text) for text in held]

    def _show(self, text: str) -> str:
        self.log.append(hash(text))
        return text

    def _new_in_stream(self, stamp: str) -> bool:
        key, shown = stamp_key(stamp), stamp_key(self.last)
        if self.replaying:
            if key < shown:
                return False
            if key == shown and self.replayed < self.shown_at_last:
                self.replayed += 1
                return False
            self.replaying = False
        if key > shown:
            self.last, self.shown_at_last = stamp, 1
        elif key == shown:
            self.shown_at_last += 1
        return True

    def _match(self, text: str) -> list[str]:
        if self.aligned:
            if self.before[self.at] == hash(text):
                self.log.append(hash(text))
                self._advance(1)
                return []
            self.aligned = False
        self.held.append(text)
        shown, start = [], None
        while self.held and (start := self._find(self.held)) is None:
            shown.append(self._show(self.held.pop(0)))
            self.unmatched += 1
        if self.held and (len(self.held) >= CONFIRM_LINES
                          or start == self.at and start + len(self.held) == len(self.before)):
            self.log.extend(hash(t) for t in self.held)
            self.at, self.aligned, lines, self.held = start, True, len(self.held), []
            self._advance(lines)
        if self.unmatched > GIVE_UP_LINES:  # not a replay of what was shown: stop matching
            shown += self.flush()
            self.at = None
        return shown

    def _advance(self, lines: int) -> None:
        self.at += lines
        if self.at >= len(self.before):  # the replay caught up: what follows is new
            self.at, self.aligned = None, False

    def _find(self, texts: list[str]) -> int | None:
        """The first place at or after `at` where the log shown before holds `texts` in a row. Only the
        places of the rarest of the texts are tried, so a common line (an empty one) costs little."""
        hashes = [hash(text) for text in texts]
        candidates = []
        for offset, line in enumerate(hashes):
            places = self.places.get(line, [])
            first = bisect_left(places, self.at + offset)
            candidates.append((len(places) - first, offset, places, first))
        _, offset, places, first = min(candidates)
        last_start = len(self.before) - len(hashes)
        for index in range(first, len(places)):
            start = places[index] - offset
            if start > last_start:
                return None
            if all(self.before[start + i] == line for i, line in enumerate(hashes)):
                return start
        return None


def stamp_key(stamp: str) -> tuple[str, str]:
    """An RFC 3339 timestamp as a key that sorts in time order even when fractions differ in length."""
    seconds, _, fraction = stamp.rstrip("Z").partition(".")
    return seconds, fraction.ljust(9, "0")
