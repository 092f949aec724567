"""An in-process HTTP server that speaks the Kubernetes API paths inferkit's client uses, driven by
scripted scenarios. The real `kubernetes` client talks to it through a generated kubeconfig.

It keeps RayJobs, pods, pod logs, events, head Services and dashboard job logs, each in its namespace;
after a RayJob is created it plays the scenario's steps (each after a short delay), and serves watches
and followed logs as the state moves. Pod logs honour `container` (a pod's container must be named when
it has several) and `sinceSeconds` (measured on the node's clock, which may be skewed); an HTTPMode
driver log is served by the head's dashboard through the service proxy, which answers as the API server
does for a Service that is missing (404 Status) or has no Running head behind it (503). Events carry the
times their recorder sets. Knobs inject the failures users meet: denied permissions, missing CRDs,
conflicts, 422s, transient 5xx/429, watches and log streams that drop mid-run.
"""

from __future__ import annotations

import copy
import itertools
import json
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

Step = tuple[float, Callable[["FakeKube"], None]]


def now_rfc3339(nanos: bool = False, at: datetime | None = None) -> str:
    stamp = at or datetime.now(timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{stamp.microsecond:06d}{time.perf_counter_ns() % 1000:03d}Z"
                                                  if nanos else "Z")


_SUFFIXES = itertools.count(10_000)


def generated_pod(prefix: str) -> str:
    """A pod name as the API server makes it from generateName: a new suffix for every create, so every
    refused retry names another pod."""
    return f"{prefix}{next(_SUFFIXES):x}"


def pod(name: str, labels: dict, phase: str = "Pending", *, unschedulable: str | None = None,
        waiting: tuple[str, str] | None = None, container: str = "ray-worker", job_uid: str | None = None,
        namespace: str = "default") -> dict:
    conditions = [{"type": "PodScheduled", "status": "False" if unschedulable else "True",
                   "reason": "Unschedulable" if unschedulable else None, "message": unschedulable}]
    state = {"waiting": {"reason": waiting[0], "message": waiting[1]}} if waiting else (
        {"running": {"startedAt": now_rfc3339()}} if phase == "Running" else {})
    statuses = [] if unschedulable else [{"name": container, "image": "img", "imageID": "", "ready": phase == "Running",
                                           "restartCount": 0, "state": state}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "creationTimestamp": now_rfc3339(),
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": labels["job-name"],
                                              "uid": job_uid}] if job_uid else []},
            "spec": {"containers": [{"name": container, "image": "img"}]},
            "status": {"phase": phase, "conditions": conditions, "containerStatuses": statuses}}


class FakeKube:
    def __init__(self, tmp: Path, tls: bool = False):
        """`tls`: serve HTTPS with a self-signed certificate, as a real API server does, behind a kubeconfig
        that sets insecure-skip-tls-verify (as kind and many dev clusters' kubeconfigs do)."""
        self.lock = threading.Condition()
        self.namespaces = {"default", "ml"}
        self.crd_installed = True
        self.denied: set[tuple[str, str]] = set()  # (verb, resource[/subresource]) the caller may not do
        self.nodes: list[dict] = []
        self.deployments: list[dict] = []
        self.rayjobs: dict[str, dict] = {}
        self.history: list[tuple[int, str, dict]] = []  # (resourceVersion, event type, object)
        self.version = 100
        self.pods: dict[str, dict] = {}
        self.logs: dict[str, list[str]] = {}
        self.events: list[dict] = []
        self.requests: list[tuple[str, str, dict]] = []
        self.scenario: list[Step] = []
        self.failures: dict[tuple[str, str], list[int]] = {}  # (method, path suffix) -> statuses to answer first
        self.reject_create: tuple[int, dict] | None = None
        self.lose_create_answer = False  # create the first RayJob, then answer 504 as if the reply was lost
        self.slow_create_answer = 0.0  # seconds between creating a RayJob and answering
        self.drop_watch_after: int | None = None  # close the first watch after this many events
        self.expire_watch_once = False  # answer one watch with 410 Gone
        self.drop_log_after: int | None = None  # close the first followed log stream after this many lines
        self.node_clock_skew = 0.0  # seconds the nodes' clock (log timestamps, sinceSeconds) runs ahead
        self.dashboard_logs: dict[tuple[str, str, str], str] = {}  # (namespace, head service, Ray job id) -> log
        self.services: set[tuple[str, str]] = set()  # (namespace, name) of the RayClusters' head Services
        # The node's kubelet cannot be reached: the API server answers a log read with a 500 that names it.
        self.kubelet_unreachable = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        if tls:
            self.server.socket = _self_signed(tmp).wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.kubeconfig = tmp / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {
                "server": f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_port}",
                **({"insecure-skip-tls-verify": True} if tls else {})}}],
            "users": [{"name": "tester", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester", "namespace": "default"}}],
        }))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- state changes the scenarios use ------------------------------------------------------------

    def _bump(self, kind: str, obj: dict) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.history.append((self.version, kind, copy.deepcopy(obj)))
        self.lock.notify_all()

    def set_status(self, name: str, **status) -> None:
        with self.lock:
            job = self.rayjobs[name]
            job.setdefault("status", {}).update(status)
            self._bump("MODIFIED", job)

    def add_pod(self, obj: dict) -> None:
        with self.lock:
            self.pods[obj["metadata"]["name"]] = obj
            self.logs.setdefault(obj["metadata"]["name"], [])
            self.lock.notify_all()

    def set_pod(self, name: str, **changes) -> None:
        with self.lock:
            self.pods[name]["status"].update(changes)
            self.lock.notify_all()

    def node_now(self) -> datetime:
        return datetime.now(timezone.utc) + timedelta(seconds=self.node_clock_skew)

    def log(self, pod_name: str, *lines: str) -> None:
        """Lines written by the pod's (only or first) container, stamped by the node's clock."""
        with self.lock:
            for line in lines:
                self.logs[pod_name].append(f"{now_rfc3339(nanos=True, at=self.node_now())} {line}")
            self.lock.notify_all()

    def dashboard_log(self, service: str, job_id: str, text: str, namespace: str = "default") -> None:
        """The driver writes `text` into its log on the head (HTTPMode: read through the dashboard)."""
        with self.lock:
            key = (namespace, service, job_id)
            self.dashboard_logs[key] = self.dashboard_logs.get(key, "") + text

    def add_service(self, name: str, namespace: str = "default") -> None:
        with self.lock:
            self.services.add((namespace, name))

    def delete_cluster(self, cluster: str, namespace: str = "default") -> None:
        """The operator deletes a RayCluster (shutdownAfterJobFinishes, a deletion rule): its head Service and
        pods go with it, and the head's dashboard with its job logs."""
        with self.lock:
            self.services.discard((namespace, f"{cluster}-head-svc"))
            for name in [n for n, p in self.pods.items() if p["metadata"]["namespace"] == namespace
                         and p["metadata"]["labels"].get("ray.io/cluster") == cluster]:
                del self.pods[name]
            self.lock.notify_all()

    def event(self, name: str, reason: str, message: str, kind: str = "Pod", namespace: str = "default",
              at: datetime | None = None) -> None:
        """A Warning event about an object, as the kubelet, the scheduler, the Job controller or the KubeRay
        operator records it, at `at` (now by default). The operator records through events.k8s.io
        (controller-runtime's events.EventRecorder), which reads back as a core/v1 event with eventTime and
        no lastTimestamp; the others set firstTimestamp and lastTimestamp."""
        moment = at or datetime.now(timezone.utc)
        if kind in ("RayCluster", "RayJob"):
            times = {"eventTime": moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "firstTimestamp": None,
                     "lastTimestamp": None, "reportingComponent": f"{kind.lower()}-controller"}
        else:
            times = {"firstTimestamp": now_rfc3339(at=moment), "lastTimestamp": now_rfc3339(at=moment)}
        with self.lock:
            self.events.append({"apiVersion": "v1", "kind": "Event",
                                "metadata": {"name": f"{name}.{len(self.events)}", "namespace": namespace,
                                             "creationTimestamp": now_rfc3339(at=moment)},
                                "involvedObject": {"kind": kind, "name": name, "namespace": namespace},
                                "reason": reason, "message": message, "type": "Warning", **times})

    def _play(self) -> None:
        for delay, step in self.scenario:
            time.sleep(delay)
            step(self)

    # -- HTTP ---------------------------------------------------------------------------------------

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code: int, body: dict | str, content_type: str = "application/json") -> None:
                data = body if isinstance(body, str) else json.dumps(body)
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data.encode())))
                self.end_headers()
                self.wfile.write(data.encode())

            def _open_stream(self, content_type: str) -> None:
                """A streamed answer as the API server sends it: chunked, so each line arrives when written
                and a connection cut before the last chunk is an error the client sees."""
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def _chunk(self, data: str) -> None:
                raw = data.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
                self.wfile.flush()

            def _close_stream(self) -> None:
                self.wfile.write(b"0\r\n\r\n")

            def _status(self, code: int, reason: str, message: str, details: dict | None = None) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                  "reason": reason, "message": message, "details": details or {}})

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}") if length else {}
                fake.requests.append((method, url.path, query))
                for (m, suffix), codes in fake.failures.items():
                    if m == method and url.path.endswith(suffix) and codes:
                        code = codes.pop(0)
                        return self._status(code, "Injected", f"injected {code}")
                parts = [unquote(p) for p in url.path.strip("/").split("/")]
                try:
                    return fake._dispatch(self, method, parts, query, body)
                except (BrokenPipeError, ConnectionResetError):
                    return None

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_DELETE(self):
                self._route("DELETE")

        return Handler

    def _dispatch(self, h, method: str, parts: list[str], query: dict, body: dict):
        path = "/".join(parts)
        if path.startswith("api/v1/namespaces/") and len(parts) == 4:
            ns = parts[3]
            if ns in self.namespaces:
                return h._send(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            return h._status(404, "NotFound", f'namespaces "{ns}" not found')
        if path == "apis/apiextensions.k8s.io/v1/customresourcedefinitions/rayjobs.ray.io":
            if not self.crd_installed:
                return h._status(404, "NotFound", 'customresourcedefinitions "rayjobs.ray.io" not found')
            return h._send(200, {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                                 "metadata": {"name": "rayjobs.ray.io"},
                                 "spec": {"group": "ray.io", "scope": "Namespaced",
                                          "names": {"kind": "RayJob", "plural": "rayjobs"},
                                          "versions": [{"name": "v1", "served": True, "storage": True}]}})
        if path == "apis/ray.io/v1":  # API discovery
            if not self.crd_installed:
                return h._status(404, "NotFound", "the server could not find the requested resource")
            return h._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "ray.io/v1",
                                 "resources": [{"name": plural, "singularName": "", "namespaced": True, "kind": kind,
                                                "verbs": ["create", "delete", "get", "list", "watch"]}
                                               for plural, kind in (("rayjobs", "RayJob"),
                                                                    ("rayclusters", "RayCluster"))]})
        if path == "apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            attrs = body["spec"]["resourceAttributes"]
            resource = attrs["resource"] + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
            allowed = (attrs["verb"], resource) not in self.denied
            return h._send(201, {**body, "status": {"allowed": allowed}})
        if path == "apis/apps/v1/deployments":
            return h._send(200, {"apiVersion": "apps/v1", "kind": "DeploymentList", "metadata": {},
                                 "items": self.deployments})
        if path == "api/v1/nodes":
            return h._send(200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": self.nodes})
        if len(parts) >= 6 and parts[:2] == ["apis", "ray.io"] and parts[5] == "rayjobs":
            return self._rayjobs(h, method, parts[4], parts[6] if len(parts) > 6 else None, query, body)
        if len(parts) == 5 and parts[4] == "pods":
            return h._send(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {},
                                 "items": self._select(parts[3], query.get("labelSelector", ""))})
        if len(parts) == 7 and parts[4] == "pods" and parts[6] == "log":
            return self._pod_log(h, parts[3], parts[5], query)
        if len(parts) == 5 and parts[4] == "events":
            with self.lock:
                items = [copy.deepcopy(e) for e in self.events if e["metadata"]["namespace"] == parts[3]]
            return h._send(200, {"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": items})
        if len(parts) > 7 and parts[4] == "services" and parts[6] == "proxy":
            return self._service_proxy(h, parts[3], parts[5], "/".join(parts[7:]))
        return h._status(404, "NotFound", f"no route for {method} /{path}")

    def _service_proxy(self, h, namespace: str, service: str, path: str):
        """The API server's service proxy in front of a head's dashboard: only Ray's job log route."""
        if ("get", "services/proxy") in self.denied:
            return h._status(403, "Forbidden", f'services "{service}" is forbidden: User "tester" cannot get '
                                               f'resource "services/proxy" in the namespace "{namespace}"')
        name, _, port = service.partition(":")
        with self.lock:
            exists = (namespace, name) in self.services
            ready = any(p["metadata"]["namespace"] == namespace and p["status"]["phase"] == "Running"
                        and p["metadata"]["labels"].get("ray.io/node-type") == "head"
                        and p["metadata"]["labels"].get("ray.io/cluster") == name.removesuffix("-head-svc")
                        for p in self.pods.values())
        if not exists:  # the API server's own answers
            return h._status(404, "NotFound", f'services "{name}" not found', {"name": name, "kind": "services"})
        if not ready:
            return h._status(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
        parts = path.split("/")
        if port != "dashboard" or len(parts) != 4 or parts[:2] != ["api", "jobs"] or parts[3] != "logs":
            return h._status(404, "NotFound", f"no route for {path} on {service}")
        with self.lock:
            text = self.dashboard_logs.get((namespace, name, parts[2]))
        if text is None:  # the dashboard's own answer for a job it does not know
            return h._send(404, f"Job {parts[2]} does not exist", content_type="text/plain")
        return h._send(200, {"logs": text})

    def _select(self, namespace: str, selector: str) -> list[dict]:
        wanted = dict(p.split("=", 1) for p in selector.split(",") if "=" in p)
        with self.lock:
            return [copy.deepcopy(p) for p in self.pods.values() if p["metadata"]["namespace"] == namespace
                    and all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]

    def _rayjobs(self, h, method: str, namespace: str, name: str | None, query: dict, body: dict):
        if method == "POST":
            if body["metadata"].get("namespace", namespace) != namespace:
                return h._status(400, "BadRequest", "the namespace of the provided object does not match the "
                                                     "namespace sent on the request")
            if self.reject_create and query.get("dryRun") == "All":
                code, status = self.reject_create
                return h._send(code, status)
            job_name = body["metadata"].get("name") or body["metadata"]["generateName"] + "x1y2z"
            with self.lock:
                if job_name in self.rayjobs:
                    return h._status(409, "AlreadyExists", f'rayjobs.ray.io "{job_name}" already exists')
                if query.get("dryRun") == "All":
                    return h._send(201, body)
                obj = copy.deepcopy(body)
                obj["metadata"]["namespace"] = namespace
                obj["metadata"]["uid"] = f"uid-{self.version}"
                obj["metadata"]["creationTimestamp"] = now_rfc3339()
                obj["status"] = {}
                self.rayjobs[job_name] = obj
                self._bump("ADDED", obj)
            threading.Thread(target=self._play, daemon=True).start()
            time.sleep(self.slow_create_answer)
            if self.lose_create_answer:
                self.lose_create_answer = False
                return h._status(504, "Timeout", "the reply to the create was lost")
            return h._send(201, obj)
        if method == "DELETE":
            with self.lock:
                obj = self._rayjob_in(namespace, name)
                if obj is None:
                    return h._status(404, "NotFound", f'rayjobs.ray.io "{name}" not found')
                self._bump("DELETED", self.rayjobs.pop(name))
            return h._send(200, {"kind": "Status", "status": "Success"})
        if name:
            with self.lock:
                obj = copy.deepcopy(self._rayjob_in(namespace, name))
            return h._send(200, obj) if obj else h._status(404, "NotFound", f'rayjobs.ray.io "{name}" not found')
        if query.get("watch") in ("true", "True", "1"):
            return self._watch(h, namespace, query)
        with self.lock:
            items = [copy.deepcopy(o) for o in self.rayjobs.values()
                     if o["metadata"].get("namespace", "default") == namespace]
        return h._send(200, {"apiVersion": "ray.io/v1", "kind": "RayJobList",
                             "metadata": {"resourceVersion": str(self.version)}, "items": items})

    def _rayjob_in(self, namespace: str, name: str) -> dict | None:
        """The RayJob of that name in that namespace (RayJobs are kept by name: tests use unique names)."""
        obj = self.rayjobs.get(name)
        return obj if obj is not None and obj["metadata"].get("namespace", "default") == namespace else None

    def _watch(self, h, namespace: str, query: dict):
        name = query.get("fieldSelector", "").removeprefix("metadata.name=")
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        h._open_stream("application/json")
        if self.expire_watch_once:
            self.expire_watch_once = False
            h._chunk(json.dumps({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                              "message": "too old resource version"}}) + "\n")
            return h._close_stream()
        sent = 0
        while time.monotonic() < deadline:
            with self.lock:
                pending = [(v, t, o) for v, t, o in self.history if v > since and o["metadata"]["name"] == name
                           and o["metadata"].get("namespace", "default") == namespace]
                if not pending:
                    self.lock.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    continue
            for version, kind, obj in pending:
                h._chunk(json.dumps({"type": kind, "object": obj}) + "\n")
                since = version
                sent += 1
                if self.drop_watch_after is not None and sent >= self.drop_watch_after:
                    self.drop_watch_after = None
                    h.connection.shutdown(2)  # the connection drops mid-watch
                    return
        h._close_stream()

    def _pod_log(self, h, namespace: str, name: str, query: dict):
        if name not in self.pods or self.pods[name]["metadata"]["namespace"] != namespace:
            return h._status(404, "NotFound", f'pods "{name}" not found')
        if self.kubelet_unreachable:  # as a real API server answered for a node without a usable address
            return h._status(500, "InternalError", "no preferred addresses found; known addresses: []")
        containers = [c["name"] for c in self.pods[name]["spec"]["containers"]]
        container = query.get("container")
        if container is None and len(containers) > 1:
            return h._status(400, "BadRequest", f"a container name must be specified for pod {name}, choose one "
                                                f"of: {containers}")
        if container is not None and container not in containers:
            return h._status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        follow = query.get("follow") in ("true", "True", "1")
        # The kubelet keeps the lines stamped within sinceSeconds of its own clock.
        since = query.get("sinceSeconds")
        cutoff = stamp_of(self.node_now() - timedelta(seconds=int(since))) if since else ""
        h._open_stream("text/plain")
        index, sent = 0, 0
        while True:
            with self.lock:
                lines = [line for line in self.logs[name][index:] if line.partition(" ")[0] >= cutoff]
                index = len(self.logs[name])
                finished = self.pods[name]["status"]["phase"] in ("Succeeded", "Failed")
                if not lines and follow and not finished:
                    self.lock.wait(timeout=0.2)
                    continue
            for line in lines:
                h._chunk(line + "\n")
                sent += 1
                if follow and self.drop_log_after is not None and sent >= self.drop_log_after:
                    self.drop_log_after = None
                    h.connection.shutdown(2)  # the log stream drops mid-run
                    return
            if not follow or finished:
                return h._close_stream()


def _self_signed(tmp: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    key, cert = tmp / "fake-kube.key", tmp / "fake-kube.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def stamp_of(moment: datetime) -> str:
    """The RFC 3339 nanosecond stamp `log` writes, for comparing stamps as text."""
    return now_rfc3339(nanos=True, at=moment)[:26] + "000Z"


# ---------------------------------------------------------------------------------------------
# Scenario building blocks


def cluster_labels(name: str) -> dict:
    return {"ray.io/cluster": f"{name}-raycluster", "ray.io/node-type": "worker"}


def happy_path(name: str, lines: list[str], *, final: tuple[str, str, str, str] = ("Complete", "SUCCEEDED", "", ""),
               pending: list[Step] | None = None, namespace: str = "default") -> list[Step]:
    """Initializing -> (pending steps) -> Running with a submitter pod logging `lines` -> final state."""
    cluster = f"{name}-raycluster"
    submitter = f"{name}-submitter"
    steps: list[Step] = [
        (0.1, lambda f: f.set_status(name, jobDeploymentStatus="Initializing", rayClusterName=cluster,
                                     jobId=f"{name}-job", startTime=now_rfc3339())),
        (0.1, lambda f: f.add_pod(pod(f"{cluster}-head", {"ray.io/cluster": cluster, "ray.io/node-type": "head"},
                                      "Running", container="ray-head", namespace=namespace))),
    ]
    steps += pending or []
    steps += [
        (0.1, lambda f: f.set_status(name, jobDeploymentStatus="Running", jobStatus="RUNNING",
                                     dashboardURL=f"{cluster}-head-svc:8265")),
        (0.1, lambda f: f.add_pod(pod(submitter, {"job-name": name}, "Running", container="ray-job-submitter",
                                      namespace=namespace))),
    ]
    for line in lines:
        steps.append((0.05, lambda f, line=line: f.log(submitter, line)))
    deployment, job, reason, message = final
    steps += [
        (0.3, lambda f: f.set_pod(submitter, phase="Succeeded" if job == "SUCCEEDED" else "Failed")),
        (0.1, lambda f: f.set_status(name, jobDeploymentStatus=deployment, jobStatus=job, reason=reason,
                                     message=message, endTime=now_rfc3339())),
    ]
    return steps


def http_mode_path(name: str, chunks: list[str], *, final: tuple[str, str] = ("Complete", "SUCCEEDED"),
                   namespace: str = "default") -> list[Step]:
    """HTTPMode as the operator runs it (rayjob_controller.go): no submitter Job or pod; once the cluster is
    ready the operator submits through the dashboard, and the driver writes `chunks` (text, not whole
    lines) into the job's log on the head, which only the dashboard serves."""
    cluster = f"{name}-raycluster"
    service, job_id = f"{cluster}-head-svc", f"{name}-job"
    steps: list[Step] = [
        (0.1, lambda f: f.set_status(name, jobDeploymentStatus="Initializing", rayClusterName=cluster, jobId=job_id,
                                     startTime=now_rfc3339())),
        (0.1, lambda f: f.add_pod(pod(f"{cluster}-head", {"ray.io/cluster": cluster, "ray.io/node-type": "head"},
                                      "Running", container="ray-head", namespace=namespace))),
        (0.0, lambda f: f.add_service(service, namespace)),
        (0.1, lambda f: f.set_status(name, jobDeploymentStatus="Running", jobStatus="PENDING",
                                     dashboardURL=f"{service}.{namespace}.svc.cluster.local:8265")),
        (0.3, lambda f: f.set_status(name, jobStatus="RUNNING")),
    ]
    for chunk in chunks:
        steps.append((0.3, lambda f, chunk=chunk: f.dashboard_log(service, job_id, chunk, namespace)))
    deployment, job = final
    steps.append((0.3, lambda f: f.set_status(name, jobDeploymentStatus=deployment, jobStatus=job,
                                              endTime=now_rfc3339())))
    return steps


def ray_failure_message(exit_code: int, log_lines: list[str]) -> str:
    """A failed Ray job's message as Ray's job supervisor writes it (ray/dashboard/modules/job/
    job_supervisor.py: the driver's last log lines after a marker) and the operator copies into
    status.message (rayjob_controller.go)."""
    return (f"Job entrypoint command failed with exit code {exit_code}, last available logs (truncated to 20,000 "
            "chars):\n" + "".join(f"{line}\n" for line in log_lines))


def validation_failed(name: str, message: str) -> list[Step]:
    """The operator refuses the spec before it creates anything: ValidationFailed, with no startTime,
    endTime, cluster name or job id (rayjob_controller.go sets only the deployment status, reason and
    message, and stamps endTime only on Complete or Failed)."""
    return [(0.2, lambda f: f.set_status(name, jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
                                         message=message))]
