"""Pure following logic: RayJob and pod snapshots -> state lines, reasons pods wait, the final exit
code; and a log cursor that makes resumed and retried log streams lose nothing and repeat what it can
tell was shown. No I/O: unit-tested as is."""

from __future__ import annotations

import re
from array import array
from bisect import bisect_left
from dataclasses import dataclass, field

from inferkit.errors import EXIT_JOB_FAILED, EXIT_OK
from inferkit.validate import cluster_removal_ttl

TERMINAL_DEPLOYMENT = {"Complete", "Failed", "ValidationFailed"}
IMAGE_PROBLEMS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CONTAINER_PROBLEMS = IMAGE_PROBLEMS | {"CreateContainerConfigError", "CreateContainerError", "CrashLoopBackOff",
                                       "RunContainerError"}
EVENT_PROBLEMS = {"FailedScheduling", "FailedMount", "FailedAttachVolume", "FailedCreatePodSandBox", "Failed",
                  "BackOff", "FailedCreate"}
# Warnings that explain pods that never exist: the operator records them on the RayCluster when it cannot
# create a pod (ray-operator/controllers/ray/raycluster_controller.go: createHeadPod, createWorkerPod,
# reconcileAutoscalerServiceAccount) and on the RayJob when it cannot create the RayCluster, the submitter
# Job or the RayJob's head Service (rayjob_controller.go); the Job controller on the submitter Job.
OBJECT_PROBLEMS = {
    "RayCluster": {"FailedToCreateHeadPod", "FailedToCreateWorkerPod", "AutoscalerServiceAccountNotFound"},
    "RayJob": {"FailedToCreateRayCluster", "FailedToCreateRayJobSubmitter", "FailedToCreateService"},
    "Job": {"FailedCreate"},
}
OBJECT_NAMES = {"RayCluster": "RayCluster", "RayJob": "RayJob", "Job": "submitter Job"}
GENERATED_POD = re.compile(r'\bpods "[^"]*"')  # the API server names the pod it refused; each retry has a new name
# An object-count quota (ResourceQuota count/<resource>) names the resource it counts where it was exceeded.
COUNTED = re.compile(r"exceeded quota: .*\bcount/([a-z0-9.-]+)=")
# What the API server's refusal means and what fixes it, by a telling part of its message.
_MISSING_ACCOUNT = "the ServiceAccount does not exist: create it or fix serviceAccountName"
REFUSAL_HINTS = (  # (lowercase part of the message, hint)
    ("exceeded quota", "a ResourceQuota of the namespace is used up: free or raise the quota, or ask for fewer or "
                       "smaller pods"),
    ("no priorityclass", "the PriorityClass does not exist: create it or fix priorityClassName"),
    ("service account", _MISSING_ACCOUNT),
    ("serviceaccount", _MISSING_ACCOUNT),
    ("violates podsecurity", "the namespace's Pod Security level refuses the pod: relax the namespace's "
                             "pod-security.kubernetes.io/enforce label or tighten the pod's securityContext"),
)
DEADLINE_EXCEEDED = "DeadlineExceeded"
# Ray's job supervisor (ray/dashboard/modules/job/job_supervisor.py) ends a failed job's message with the
# driver's last log lines after this marker, and the operator copies it into status.message
# (rayjob_controller.go); those lines were streamed already and `inferkit logs` shows them all.
RAY_LOG_TAIL = re.compile(r",?\s*last available logs \(truncated[^)]*\):")
DASHBOARD_READ_RATE = 512 * 1024  # characters a second an HTTPMode log may be re-read at (a 1 MiB log: every 2 s)
DASHBOARD_LONGEST_WAIT = 30.0  # seconds: the longest wait between two reads of an HTTPMode log


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
    mode: str = "K8sJobMode"
    job_id: str = ""
    cluster_kept_for: int | None = None  # seconds a finished job's RayCluster outlives its end; None: until deleted
    created: str = ""  # the RayJob's creationTimestamp
    name: str = ""
    namespace: str = ""

    @classmethod
    def of(cls, obj: dict) -> JobState:
        status = obj.get("status") or {}
        spec = obj.get("spec") or {}
        metadata = obj.get("metadata") or {}
        labels = metadata.get("labels") or {}
        deployment = status.get("jobDeploymentStatus") or ""
        job = status.get("jobStatus") or ""
        return cls(
            deployment=deployment, job=job,
            reason=status.get("reason") or "", message=status.get("message") or "",
            cluster=status.get("rayClusterName") or "", dashboard=status.get("dashboardURL") or "",
            start=status.get("startTime") or "", end=status.get("endTime") or "",
            suspended=bool(spec.get("suspend")),
            queue=labels.get("kueue.x-k8s.io/queue-name", ""),
            mode=spec.get("submissionMode") or "K8sJobMode", job_id=status.get("jobId") or "",
            cluster_kept_for=cluster_removal_ttl(spec, deployment, job),
            created=metadata.get("creationTimestamp") or "",
            name=metadata.get("name") or "", namespace=metadata.get("namespace") or "",
        )

    @property
    def finished(self) -> bool:
        return self.deployment in TERMINAL_DEPLOYMENT

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
    line = current.describe()  # a terminal state's message is the outcome's to tell, once
    if current.suspended and current.deployment in ("Suspended", "Suspending", ""):
        line += f" (waiting for Kueue to admit it{f' from queue {current.queue}' if current.queue else ''})"
    return line


@dataclass(frozen=True)
class Outcome:
    code: int
    summary: str


def outcome(state: JobState) -> Outcome | None:
    """The end of the job and the exit code that tells the truth, or None while it is not over."""
    if not state.finished:
        return None
    if state.deployment == "Complete" and state.job == "SUCCEEDED":
        return Outcome(EXIT_OK, "the job succeeded")
    if state.deployment == "ValidationFailed":
        # The operator refused the spec before creating anything, and sets no startTime or endTime
        # (rayjob_controller.go: ValidationFailed is not a terminal state it stamps).
        return Outcome(EXIT_JOB_FAILED, f"the operator refused the RayJob, so nothing ran: {state.message or '-'}; "
                                        "the RayJob stays until you delete it or submit again with --replace")
    message, had_log = without_log_tail(state.message)
    detail = ": ".join(p for p in (state.reason, message) if p) or "no reason given"
    summary = (f"the job {'failed' if state.job != 'STOPPED' else 'was stopped'} "
               f"(deployment {state.deployment}, job {state.job or '-'}): {detail}")
    if had_log:
        namespace = f" -n {state.namespace}" if state.namespace else ""
        summary += f"; the driver's log: inferkit logs {state.name or 'NAME'}{namespace}"
    if state.reason == DEADLINE_EXCEEDED:
        summary += "; " + _after_deadline(state)
    return Outcome(EXIT_JOB_FAILED, summary)


def without_log_tail(message: str) -> tuple[str, bool]:
    """A job's message without the driver's log lines Ray appends to it, and whether it had them."""
    cut = RAY_LOG_TAIL.search(message)
    return (message[:cut.start()], True) if cut else (message, False)


def _after_deadline(state: JobState) -> str:
    """On DeadlineExceeded the operator only marks the RayJob Failed; it does not stop the Ray job
    (rayjob_controller.go, checkActiveDeadlineAndUpdateStatusIfNeeded), so the driver runs on until the
    RayCluster is deleted."""
    kept = ("until the RayJob is deleted (shutdownAfterJobFinishes is off and no deletion rule removes the "
            "cluster)" if state.cluster_kept_for is None
            else f"for up to {state.cluster_kept_for} s more, until the RayCluster is deleted")
    return f"KubeRay does not stop the Ray job at the deadline: the cluster and the driver may still run {kept}"


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
        involved = event.get("involvedObject") or {}
        if (event.get("type") == "Warning" and event.get("reason") in EVENT_PROBLEMS
                and involved.get("kind", "Pod") == "Pod" and involved.get("name") in names):
            problems.append(f"pod {involved.get('name')}: {event.get('reason')}: {event.get('message', '').strip()}")
    return problems


def creation_problems(events: list[dict], cluster: str, rayjob: str, created: str) -> list[tuple[tuple, str]]:
    """Why pods were never created: the operator's Warning events on the RayCluster and the RayJob and the
    Job controller's on the submitter Job, each with what will likely fix it, as (key, line) pairs: one key
    for every retry of one refusal (the pod names the API server generated are left out of it). Events last
    seen before the RayJob was created are an earlier namesake's (after --replace) and left out."""
    problems = []
    for event in events:
        involved = event.get("involvedObject") or {}
        kind, name = involved.get("kind"), involved.get("name")
        if (event.get("type") != "Warning" or event.get("reason") not in OBJECT_PROBLEMS.get(kind, ())
                or name != (cluster if kind == "RayCluster" else rayjob)):
            continue
        seen = last_seen(event)
        if seen and created and stamp_key(seen) < stamp_key(created):
            continue
        message = " ".join(str(event.get("message") or "").split())
        hint = refusal_hint(message)
        key = (kind, name, event["reason"], GENERATED_POD.sub('pods "…"', message))
        problems.append((key, f"{OBJECT_NAMES[kind]} {name}: {event['reason']}: {message}"
                              + (f" ({hint})" if hint else "")))
    return problems


def last_seen(event: dict) -> str:
    """When an event last happened: core/v1 events carry lastTimestamp; those recorded through events.k8s.io
    (the KubeRay operator's) carry eventTime and, once repeated, series.lastObservedTime."""
    stamps = [(event.get("series") or {}).get("lastObservedTime"), event.get("lastTimestamp"), event.get("eventTime"),
              event.get("firstTimestamp"), (event.get("metadata") or {}).get("creationTimestamp")]
    return max((s for s in stamps if s), key=stamp_key, default="")


def refusal_hint(message: str) -> str:
    """What likely fixes the API server's refusal in `message`, or ''."""
    lower = message.lower()
    counted = COUNTED.search(lower)
    if counted:
        return (f"a ResourceQuota caps how many {counted[1]} the namespace may hold: delete those no longer needed "
                f"(inferkit delete removes a finished RayJob with its RayCluster and submitter Job) or raise its "
                f"count/{counted[1]}")
    return next((h for part, h in REFUSAL_HINTS if part in lower), "")


FIRST_POD, SAME_POD, TAKEOVER, NEW_RUN = "first pod", "same pod", "takeover", "new run"
CONFIRM_LINES = 3  # lines of a takeover pod that must match in a row before they count as its replay
GIVE_UP_LINES = 1000  # new lines after which a takeover pod's log is no longer matched against the old
RESUBMITTED = re.compile(r"Job '[^']+' submitted successfully")  # `ray job submit`: the driver runs again
AGAIN, LATE = "again", "late"  # a takeover pod submitted the job: Ray lost it, or the pods before never submitted


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
    is a new run: a submission again when an earlier pod had submitted it (Ray lost it), else the first
    (the pods before it ended before submitting)."""

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
    submitted: bool = False  # a line of this submission said the job was submitted
    resubmitted: str = ""  # set by a takeover pod's submission: AGAIN (Ray lost the job) or LATE; the caller resets it

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
        if kind in (FIRST_POD, NEW_RUN):
            self.submitted = False
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
            self.resubmitted = AGAIN if self.submitted else LATE
            self.log, self.before, self.places, self.at = array("q"), array("q"), {}, None
            return [*shown, self._show(text)]
        return self._match(text)

    def flush(self) -> list[str]:
        """The held lines, to show now: call it when a stream ends."""
        held, self.held = self.held, []
        return [self._show(text) for text in held]

    def _show(self, text: str) -> str:
        self.log.append(hash(text))
        self.submitted = self.submitted or bool(RESUBMITTED.search(text))
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


def driver_log_on_head(namespace: str, service: str, job_id: str) -> str:
    """Where an HTTPMode driver log is when inferkit cannot read it: only on the head, behind its dashboard."""
    return (f"in HTTPMode the driver's log is on the head: kubectl port-forward -n {namespace} svc/{service} 8265, "
            f"then ray job logs --address http://127.0.0.1:8265 -f {job_id}")


def driver_log_gone(cluster: str) -> str:
    """Why a finished HTTPMode job has no log to show: no pod kept it, the head did, and the head went."""
    return f"an HTTPMode job's driver log lived only on its head, and went with RayCluster {cluster}"


@dataclass
class DashboardLog:
    """An HTTPMode driver log, read whole from the dashboard each time (Ray's job REST API has no offset):
    the complete lines not shown yet; a line still being written waits for its newline or the end. A new
    Ray job (a RayJob retry) or a shorter log starts over. A longer log is read less often."""

    job_id: str = ""
    text: str = ""
    shown: int = 0  # characters of `text` shown, always up to a newline

    def accept(self, job_id: str, text: str) -> list[str]:
        if job_id != self.job_id or len(text) < self.shown:
            self.job_id, self.shown = job_id, 0
        self.text = text
        end = text.rfind("\n", self.shown) + 1
        if end <= self.shown:
            return []
        lines = text[self.shown:end - 1].split("\n")
        self.shown = end
        return lines

    def flush(self) -> list[str]:
        """The last line, when the log ends without a newline."""
        rest, self.shown = self.text[self.shown:], len(self.text)
        return [rest] if rest else []

    def next_read_in(self, shortest: float) -> float:
        """Seconds until the next read: each read fetches the whole log, so at most DASHBOARD_READ_RATE
        characters a second are read, and never less often than every DASHBOARD_LONGEST_WAIT seconds."""
        return min(DASHBOARD_LONGEST_WAIT, max(shortest, len(self.text) / DASHBOARD_READ_RATE))
