"""`inferkit submit`, `status`, `logs`, `list`, `delete`: the RayJob lifecycle through the Kubernetes
API. Pre-flight checks, creation, and a follower that shows state changes and why pods wait (stderr),
streams the driver's log (stdout), survives dropped watches and log streams, and ends with an exit
code that tells the truth."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from inferkit.config import Config
from inferkit.console import say
from inferkit.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_TIMEOUT, ApiError
from inferkit.follow import (AGAIN, NEW_RUN, TAKEOVER, DashboardLog, JobState, LogCursor, creation_problems,
                             driver_log_gone, driver_log_on_head, outcome, pod_problems, state_change, submission_of)
from inferkit.kuberay import installed_version, mismatch
from inferkit.render import GPU_RESOURCE, dump

if TYPE_CHECKING:
    from inferkit.k8s import Kube

SUBMITTER_CONTAINER = "ray-job-submitter"
PERMISSIONS = [
    ("create", "ray.io", "rayjobs", ""), ("get", "ray.io", "rayjobs", ""), ("watch", "ray.io", "rayjobs", ""),
    ("list", "", "pods", ""), ("list", "", "events", ""),
]
# Where the driver's log is read from: the submitter pod's log (K8sJobMode), or the dashboard through the
# API server's service proxy (HTTPMode; without it the log is still on the head, only not streamed here).
SUBMITTER_LOG = ("get", "", "pods", "log")
DASHBOARD_PROXY = ("get", "", "services", "proxy")
DELETE = ("delete", "ray.io", "rayjobs", "")
POLL_SECONDS = 2.0  # how often pods are looked at while the RayJob is watched
LOG_MARGIN_SECONDS = 300  # extra history asked for when a log stream resumes (clock skew); the cursor dedupes
DASHBOARD_POLL_SECONDS = 2.0  # the shortest wait before an HTTPMode driver log is read again (longer logs: longer)


@dataclass(frozen=True)
class Connection:
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None

    def open(self) -> Kube:
        from inferkit.k8s import Kube

        kube = Kube(self.kubeconfig, self.context, self.namespace)
        if kube.tls_unverified:
            say(f"warning: context {kube.context} sets insecure-skip-tls-verify: the API server's TLS certificate "
                f"at {kube.server} is not verified")
        return kube


@dataclass(frozen=True)
class FollowOptions:
    timeout: float | None = None
    cancel_on_interrupt: bool = False
    poll_seconds: float | None = None  # None: POLL_SECONDS



def _out(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------------------------
# Pre-flight


def _gpu_group(obj: dict) -> dict | None:
    groups = obj["spec"]["rayClusterSpec"].get("workerGroupSpecs") or []
    for group in groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if GPU_RESOURCE in limits:
            return group
    return None


def preflight(kube: Kube, cfg: Config, obj: dict, *, strict_capacity: bool, needs_delete: bool,
              follows: bool) -> None:
    """Everything that would make the submission fail or hang, checked before anything is created."""
    namespace = kube.namespace
    if not kube.namespace_exists():
        raise ApiError(f"namespace {namespace} does not exist in context {kube.context} "
                       f"(create it: kubectl create namespace {namespace})")
    installed = kube.rayjob_crd()
    if installed is None:
        from inferkit.k8s import INSTALL_OPERATOR

        raise ApiError(f"the KubeRay CRDs are not installed in context {kube.context}; {INSTALL_OPERATOR}")
    versions, crd = installed
    if "v1" not in versions:
        raise ApiError(f"the installed KubeRay serves RayJob {', '.join(versions)}, not v1; upgrade the operator "
                       "to 1.7.0")
    refusal = mismatch(cfg.kuberay_version,
                       installed_version(crd, lambda: kube.operator_images(forbidden_ok=True)))
    if refusal:
        raise ApiError(refusal)
    http_mode = cfg.job.submission_mode == "HTTPMode"
    missing = kube.missing_permissions(PERMISSIONS + ([] if http_mode else [SUBMITTER_LOG])
                                       + ([DELETE] if needs_delete else []))
    if missing:
        raise ApiError(f"you may not {', '.join(missing)} in namespace {namespace}; ask for a Role that "
                       "allows them")
    if http_mode and follows and kube.missing_permissions([DASHBOARD_PROXY]):
        name = obj["metadata"]["name"]
        job_id = f"$(kubectl get rayjob {name} -n {namespace} -o jsonpath='{{.status.jobId}}')"
        say(f"warning: you may not get services/proxy in namespace {namespace}, so the driver's log will not stream "
            f"here; {driver_log_on_head(namespace, f'{name}-head-svc', job_id)}")
    group = _gpu_group(obj)
    if group is None:
        return
    pod = group["template"]["spec"]
    per_pod = int(pod["containers"][0]["resources"]["limits"][GPU_RESOURCE])
    wanted = group["minReplicas"] if group.get("minReplicas") is not None else group["replicas"]
    wanted = max(wanted, 1)
    slots = kube.gpu_pod_slots(pod.get("nodeSelector") or {}, per_pod)
    selector = ", ".join(f"{k}={v}" for k, v in (pod.get("nodeSelector") or {}).items()) or "any node"
    if slots is None:
        if strict_capacity:
            raise ApiError("--strict-capacity: you may not list nodes, so the GPU capacity cannot be checked; ask "
                           "for a ClusterRole that allows `list nodes`, or drop --strict-capacity")
        say("warning: cannot list nodes to check GPU capacity (forbidden); skipped")
    elif slots < wanted:
        message = (f"only {slots} of the {wanted} GPU pods ({per_pod} x {GPU_RESOURCE} each) fit on the nodes "
                   f"that match ({selector}) by allocatable {GPU_RESOURCE}; KubeRay starts the job only once every "
                   "pod of the cluster is Running and Ready, so it waits until a node autoscaler adds GPU nodes")
        if strict_capacity:
            raise ApiError(message + " (--strict-capacity)")
        say(f"warning: {message}")


# ---------------------------------------------------------------------------------------------
# Following


class Follower:
    """Follows one RayJob to its end: state on stderr, driver log on stdout."""

    def __init__(self, kube: Kube, name: str, options: FollowOptions):
        self.kube = kube
        self.name = name
        self.options = options
        self.state: JobState | None = None
        self.problems_shown: set[str | tuple] = set()  # problem lines, and keys of creation problems
        self.finished = threading.Event()
        self.log_thread: threading.Thread | None = None
        self.cursor = LogCursor()
        self.shown = threading.Lock()  # the log thread and an early ending both print what the cursor holds

    def run(self) -> int:
        try:
            return self._follow()
        except KeyboardInterrupt:
            return self.interrupted()

    def _follow(self) -> int:
        from inferkit.k8s import WatchInterrupted

        deadline = time.monotonic() + self.options.timeout if self.options.timeout else None
        obj = self._get()
        version = obj["metadata"].get("resourceVersion")
        self._update(obj)
        self._start_logs()
        while True:
            result = outcome(self.state)
            if result is not None:
                return self._end(result.code, result.summary)
            if deadline is not None and time.monotonic() >= deadline:
                return self._timed_out()
            poll = self.options.poll_seconds or POLL_SECONDS
            wait = poll if deadline is None else max(1, min(poll, deadline - time.monotonic()))
            try:
                for kind, obj in self.kube.watch_rayjob(self.name, version, timeout_seconds=max(1, int(wait))):
                    self._update(obj)
                    if kind == "DELETED":
                        return self._deleted()
                    version = obj["metadata"].get("resourceVersion", version)
                    if outcome(self.state) is not None:
                        break
            except WatchInterrupted:
                obj = self._get()  # the watch dropped or expired: list again and watch from there
                version = obj["metadata"].get("resourceVersion")
                self._update(obj)
            self._show_problems()

    def _get(self) -> dict:
        obj = self.kube.get_rayjob(self.name)
        if obj is None:
            raise ApiError(f"RayJob {self.name} is gone from namespace {self.kube.namespace} (deleted?)")
        return obj

    def _update(self, obj: dict) -> None:
        state = JobState.of(obj)
        line = state_change(self.state, state)
        if line:
            say(f"RayJob {self.name}: {line}")
        self.state = state

    def _pods(self) -> list[dict]:
        pods = self.kube.list_pods(f"job-name={self.name}")
        if self.state and self.state.cluster:
            pods += self.kube.list_pods(f"ray.io/cluster={self.state.cluster}")
        return pods

    def _show_problems(self) -> None:
        """Why pods wait, and why pods that never came were not created (the RayCluster's and the
        submitter Job's Warning events), each once."""
        pods = self._pods()
        waiting = [p for p in pods if (p.get("status") or {}).get("phase") in ("Pending", "Running", "Failed")]
        cluster = self.state.cluster if self.state else ""
        events = self.kube.events_for({p["metadata"]["name"] for p in waiting} | {self.name} | {cluster} - {""})
        problems = [(line, line) for line in pod_problems(waiting, events)]
        for key, line in problems + creation_problems(events, cluster, self.name, self.state.created):
            if key not in self.problems_shown:
                self.problems_shown.add(key)
                say(line)

    # -- the driver's log: the submitter pod's log (K8sJobMode) or the dashboard's (HTTPMode) --------------

    def _start_logs(self) -> None:
        loop = {"K8sJobMode": self._log_loop, "HTTPMode": self._dashboard_log_loop}.get(self.state.mode)
        if loop is None:
            say(f"RayJob {self.name} runs in {self.state.mode}; inferkit shows the driver's log of K8sJobMode and "
                "HTTPMode jobs only")
            return
        self.log_thread = threading.Thread(target=loop, name="inferkit-logs", daemon=True)
        self.log_thread.start()

    def _dashboard_log_loop(self) -> None:
        """HTTPMode: the operator submits through the dashboard and no pod runs the driver's client, so the
        log is read, whole, from the dashboard's job API through the API server's service proxy, and what
        is new is shown; once the RayJob has ended, one last read. A proxy the caller may not use ends the
        reading, saying where the log is; so does a finished job's head that is gone, saying so."""
        from inferkit.k8s import HeadUnreachable, LogRefused

        log = DashboardLog()
        while True:
            ended = self.finished.wait(log.next_read_in(DASHBOARD_POLL_SECONDS))
            state = self.state
            if state.job_id and state.cluster and state.dashboard:
                service = head_service(state.cluster)
                try:
                    text = self.kube.dashboard_job_log(service, state.job_id)
                except LogRefused as e:
                    say(f"RayJob {self.name}: {e}")
                    return
                except HeadUnreachable as e:
                    if state.finished:
                        say(f"RayJob {self.name}: {e}: {driver_log_gone(state.cluster)}")
                        return
                    text = None  # not up yet
                except Exception as e:  # noqa: BLE001 - a dropped read is read again, never fatal
                    if ended:
                        say(f"RayJob {self.name}: could not read the last of the driver's log ({e}); "
                            f"{driver_log_on_head(self.kube.namespace, service, state.job_id)}")
                    text = None
                if text is not None:
                    with self.shown:
                        if log.job_id and log.job_id != state.job_id:
                            say(f"RayJob {self.name}: a new Ray job {state.job_id} runs the driver again; its log "
                                "follows from the start")
                        for line in log.accept(state.job_id, text):
                            _out(line)
            if ended:
                with self.shown:
                    for line in log.flush():
                        _out(line)
                return

    def _log_loop(self) -> None:
        streamed: set[str] = set()
        while True:
            try:
                pod = submitter_pod(self.kube, self.name)
                if pod is not None:
                    name = pod["metadata"]["name"]
                    since = None
                    if name in streamed and self.cursor.last:
                        age = (datetime.now(timezone.utc) - _parse_time(self.cursor.last)).total_seconds()
                        since = int(max(age, 0)) + LOG_MARGIN_SECONDS
                    streamed.add(name)
                    self._show_log(pod, follow=True, since_seconds=since)
            except Exception:  # noqa: BLE001 - a dropped or refused stream is resumed, never fatal
                pass
            if self.finished.wait(1.0) and self._log_complete():
                return

    def _log_complete(self) -> bool:
        """After the end: one last read of the finished submitter pod, then stop."""
        try:
            pod = submitter_pod(self.kube, self.name)
            if pod is not None:
                self._show_log(pod, follow=False)
        except Exception:  # noqa: BLE001 - the end is reported either way
            pass
        return True

    def _show_log(self, pod: dict, follow: bool, since_seconds: int | None = None) -> None:
        name = pod["metadata"]["name"]
        with self.shown:
            kind = self.cursor.resume(name, submission_of(pod))
        if kind == TAKEOVER:
            say(f"RayJob {self.name}: submitter pod {name} took over following the driver; the lines shown "
                "already are not repeated")
        elif kind == NEW_RUN:
            say(f"RayJob {self.name}: a new submitter Job (pod {name}) runs the driver again; its log follows "
                "from the start")
        try:
            for raw in self.kube.pod_log(name, SUBMITTER_CONTAINER, follow=follow, since_seconds=since_seconds):
                with self.shown:
                    for text in self.cursor.accept(raw):
                        _out(text)
                if self.cursor.resubmitted:
                    again = self.cursor.resubmitted == AGAIN
                    self.cursor.resubmitted = ""
                    say(f"RayJob {self.name}: submitter pod {name} submitted the job again (Ray had lost it); the "
                        "driver runs again and its log follows from the start" if again else
                        f"RayJob {self.name}: submitter pod {name} submitted the job (the pod before it ended "
                        "before submitting); the driver's log follows")
        finally:
            self._flush_log()

    def _flush_log(self) -> None:
        with self.shown:
            for text in self.cursor.flush():
                _out(text)

    # -- endings ------------------------------------------------------------------------------------

    def _stop_logs(self, wait: float) -> None:
        self.finished.set()
        if self.log_thread is not None:
            self.log_thread.join(timeout=wait)
        self._flush_log()  # lines held back by a stream still open (timeout, Ctrl-C) are shown, not dropped

    def _end(self, code: int, summary: str) -> int:
        try:
            self._stop_logs(wait=30)
        except KeyboardInterrupt:  # the outcome is known; Ctrl-C only cuts the wait for the log's last lines
            say(f"RayJob {self.name}: stopped waiting for the rest of the driver's log")
        where = f" (dashboard {self.state.dashboard})" if self.state and self.state.dashboard else ""
        say(f"RayJob {self.name}: {summary}{where}")
        return code

    def _deleted(self) -> int:
        """Deleted under us: a job that had ended still reports its end; otherwise an API error."""
        result = outcome(self.state)
        if result is not None:
            return self._end(result.code, result.summary)
        self._stop_logs(wait=5)
        raise ApiError(f"RayJob {self.name} was deleted from namespace {self.kube.namespace} while it was followed")

    def _hint(self) -> str:
        ns = self.kube.namespace
        return (f"follow it again: inferkit logs -f {self.name} -n {ns}; its state: inferkit status {self.name} "
                f"-n {ns}; stop it: inferkit delete {self.name} -n {ns}")

    def _timed_out(self) -> int:
        self._stop_logs(wait=1)
        say(f"--timeout reached; RayJob {self.name} is still {self.state.describe()}. {self._hint()}")
        return EXIT_TIMEOUT

    def interrupted(self) -> int:
        """Ctrl-C: stop following (deleting the RayJob first with --cancel-on-interrupt)."""
        self._stop_logs(wait=1)
        if self.options.cancel_on_interrupt:
            deleted = self.kube.delete_rayjob(self.name)
            say(f"interrupted: RayJob {self.name} {'deleted' if deleted else 'was already gone'}")
        else:
            say(f"interrupted: stopped following; RayJob {self.name} keeps running. {self._hint()}")
        return EXIT_INTERRUPTED


def head_service(cluster: str) -> str:
    """The RayCluster's head Service (common/service.go: `<cluster>-head-svc`, inferkit sets no other name)."""
    return f"{cluster}-head-svc"


def submitter_pod(kube: Kube, name: str) -> dict | None:
    """The newest submitter pod with a log (K8sJobMode: the Job named like the RayJob runs it)."""
    pods = [p for p in kube.list_pods(f"job-name={name}")
            if (p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed")]
    return max(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def _parse_time(stamp: str) -> datetime:
    """RFC 3339 with up to nanoseconds (Kubernetes log timestamps) -> aware datetime."""
    head, _, fraction = stamp.rstrip("Z").partition(".")
    parsed = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return parsed.replace(microsecond=int((fraction + "000000")[:6])) if fraction else parsed


# ---------------------------------------------------------------------------------------------
# Commands


def submit(connection: Connection, cfg: Config, obj: dict, *, dry_run: bool, detach: bool, replace: bool,
           strict_capacity: bool, follow: FollowOptions) -> int:
    kube = connection.open()
    obj["metadata"]["namespace"] = kube.namespace
    name = obj["metadata"]["name"]
    preflight(kube, cfg, obj, strict_capacity=strict_capacity, needs_delete=replace or follow.cancel_on_interrupt,
              follows=not detach)
    existing = kube.get_rayjob(name)
    if existing is not None and not replace:
        raise ApiError(f"a RayJob named {name} already exists in namespace {kube.namespace} "
                       f"({JobState.of(existing).describe()}); pass --replace to delete and recreate it, or "
                       "choose another --name")
    kube.create_rayjob(obj if existing is None else _unnamed(obj), dry_run=True)
    if dry_run:
        say(f"dry run: RayJob {name} passed the pre-flight checks and the server-side dry run; nothing created")
        print(dump(obj, "yaml"), end="")
        return EXIT_OK
    if existing is not None:
        kube.delete_rayjob(name)
        _wait_gone(kube, name)
        say(f"deleted the existing RayJob {name}")
    follower = Follower(kube, name, follow)
    try:
        kube.create_rayjob(obj)
    except KeyboardInterrupt:
        say(f"interrupted while creating RayJob {name}; it may have been created")
        return follower.interrupted()
    say(f"created RayJob {name} in namespace {kube.namespace} (context {kube.context})")
    if detach:
        say(f"detached; follow it: inferkit logs -f {name} -n {kube.namespace}")
        return EXIT_OK
    return follower.run()


def _unnamed(obj: dict) -> dict:
    """A copy for the dry run beside an existing namesake: the server picks a fresh name of the same length
    limit, so validation runs without tripping over the old object."""
    copy = {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "name"}}
    copy["metadata"]["generateName"] = obj["metadata"]["name"][:41] + "-"
    return copy


def _wait_gone(kube: Kube, name: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while kube.get_rayjob(name) is not None:
        if time.monotonic() > deadline:
            raise ApiError(f"RayJob {name} is still being deleted after {timeout:.0f} s")
        time.sleep(1)


def _summary(obj: dict) -> dict[str, Any]:
    state = JobState.of(obj)
    return {"name": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace"),
            "jobDeploymentStatus": state.deployment, "jobStatus": state.job, "reason": state.reason,
            "message": state.message, "rayClusterName": state.cluster, "dashboardURL": state.dashboard,
            "startTime": state.start, "endTime": state.end}


def status(connection: Connection, name: str, output_format: str | None) -> int:
    kube = connection.open()
    obj = kube.get_rayjob(name)
    if obj is None:
        raise ApiError(f"no RayJob named {name} in namespace {kube.namespace}")
    summary = _summary(obj)
    if output_format:
        print(dump(summary, output_format), end="")
    else:
        width = max(map(len, summary))
        for key, value in summary.items():
            print(f"{key:<{width}}  {value if value not in (None, '') else '-'}")
    return EXIT_OK


def list_jobs(connection: Connection, output_format: str | None) -> int:
    kube = connection.open()
    items = [_summary(o) for o in kube.list_rayjobs().get("items", [])]
    if output_format:
        print(dump({"items": items}, output_format), end="")
        return EXIT_OK
    columns = ("name", "jobStatus", "jobDeploymentStatus", "startTime", "endTime")
    rows = [[str(i[c] or "-") for c in columns] for i in items]
    widths = [max([len(c)] + [len(r[n]) for r in rows]) for n, c in enumerate(columns)]
    for row in [list(columns)] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def logs(connection: Connection, name: str, follow: bool, options: FollowOptions) -> int:
    kube = connection.open()
    obj = kube.get_rayjob(name)
    if obj is None:
        raise ApiError(f"no RayJob named {name} in namespace {kube.namespace}")
    if follow:
        return Follower(kube, name, options).run()
    state = JobState.of(obj)
    if state.mode == "HTTPMode":
        from inferkit.k8s import HeadUnreachable

        text, why = None, ""
        if state.job_id and state.cluster:
            try:
                text = kube.dashboard_job_log(head_service(state.cluster), state.job_id)
            except HeadUnreachable as e:
                if state.finished:
                    raise ApiError(f"RayJob {name} has ended and {e}: {driver_log_gone(state.cluster)}") from e
                why = f": {e}"
        if text is None:
            raise ApiError(f"RayJob {name} (HTTPMode) has no driver log on its dashboard yet (it may still be "
                           f"starting{why})")
        log = DashboardLog()
        for line in log.accept(state.job_id, text) + log.flush():
            _out(line)
        return EXIT_OK
    pod = submitter_pod(kube, name)
    if pod is None:
        raise ApiError(f"RayJob {name} has no submitter pod with a log yet (it may still be starting)")
    for raw in kube.pod_log(pod["metadata"]["name"], SUBMITTER_CONTAINER, follow=False):
        _out(raw.partition(" ")[2])  # one stream of one pod: nothing to skip, only the timestamp to drop
    return EXIT_OK


def delete(connection: Connection, name: str) -> int:
    kube = connection.open()
    if not kube.delete_rayjob(name):
        raise ApiError(f"no RayJob named {name} in namespace {kube.namespace}")
    say(f"deleted RayJob {name} in namespace {kube.namespace}")
    return EXIT_OK
