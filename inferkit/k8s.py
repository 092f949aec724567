"""Every Kubernetes API call inferkit makes, through one choke point that retries what is worth
retrying (429, 5xx, dropped connections; a bounded number of times, with backoff) and turns API
errors into sentences a user can act on. The only module that imports `kubernetes`.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import quote
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import urllib3
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from inferkit.errors import ApiError, one_line
from inferkit.follow import driver_log_on_head

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
CRD_NAME = "rayjobs.ray.io"
RETRIED_STATUSES = {429, 500, 502, 503, 504}
# Node labels that name the GPU model, by provider (see gpuWorkers.acceleratorLabel).
GPU_LABELS = ("nvidia.com/gpu.product", "cloud.google.com/gke-accelerator", "karpenter.k8s.aws/instance-gpu-name",
              "node.kubernetes.io/instance-type")
ATTEMPTS = 5
INSTALL_OPERATOR = ("install the KubeRay operator: helm repo add kuberay https://ray-project.github.io/kuberay-helm/ "
                    "&& helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0")


# A followed log that stays silent this long is reopened (resuming where it was): a half-open
# connection never hangs the follower.
WATCH_READ_MARGIN = 30  # seconds a watch may be silent past its server-side timeout before it counts as dropped
LOG_READ_TIMEOUT = 300
REQUEST_TIMEOUT = (10, 60)  # connect, read: a dead connection (a laptop that slept, a dropped VPN) must not hang
SUBMISSION_ANNOTATION = "inferkit.io/submission"  # one per `inferkit submit`, to recognise our own create
# A 500 that names no server fault: the API server cannot reach the kubelet of the pod's node, which it needs
# to read a pod's log (the message comes from k8s.io/kubernetes pkg/util/node GetPreferredNodeAddress, via
# the kubelet client's connection-info lookup). Retrying will not help; saying so at once does.
KUBELET_UNREACHABLE = ("no preferred addresses found",)


class LogRefused(ApiError):
    """The driver log may not be read through the service proxy (RBAC on services/proxy, or the
    dashboard's own authentication): retrying will not help; the message says where the log is."""


class HeadUnreachable(ApiError):
    """The head's Service does not exist (the API server's own 404) or has no ready head behind it (503):
    the RayCluster is not up yet, or is gone."""


class WatchInterrupted(Exception):
    """The watch dropped, failed for a while, or its resourceVersion expired (410 Gone): get the
    object again and watch from its resourceVersion."""


def _message(error: ApiException) -> tuple[str, dict]:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):  # a proxied answer may be any JSON
        body = {}
    return body.get("message") or error.reason or "", body


def _kubelet_unreachable(error: ApiException) -> bool:
    return error.status == 500 and any(part in _message(error)[0] for part in KUBELET_UNREACHABLE)


class Kube:
    """A connection to one cluster and namespace."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self._sleep = sleep
        configuration = client.Configuration()
        try:
            contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
            current = active if context is None else next((c for c in contexts if c["name"] == context), None)
            if current is None:
                raise ApiError(f"--context {context}: no such context in {kubeconfig or 'the kubeconfig'} "
                               f"(have: {', '.join(c['name'] for c in contexts)})")
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
            self.context = current["name"]
            default_namespace = current.get("context", {}).get("namespace") or "default"
        except (yaml.YAMLError, TypeError, KeyError, AttributeError, ValueError) as e:  # not a kubeconfig
            raise ApiError(f"cannot read kubeconfig {kubeconfig or '~/.kube/config'}: {type(e).__name__}: "
                           f"{one_line(e)}") from e
        except (ConfigException, OSError) as e:
            if kubeconfig or context:
                raise ApiError(f"cannot use kubeconfig {kubeconfig or '~/.kube/config'}: {e}") from e
            try:
                config.load_incluster_config(client_configuration=configuration)
            except ConfigException:
                raise ApiError("no Kubernetes configuration: set KUBECONFIG, pass --kubeconfig, or run inside a "
                               f"cluster ({e})") from e
            self.context = "in-cluster"
            default_namespace = "default"
        configuration.retries = False  # retries happen in _call, where they are counted and bounded
        # insecure-skip-tls-verify: the caller says so once (tls_unverified); urllib3's warning on every
        # request would bury the output.
        self.tls_unverified = configuration.host.startswith("https:") and not configuration.verify_ssl
        if self.tls_unverified:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self.server = configuration.host
        self.namespace = namespace or default_namespace
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.extensions = client.ApiextensionsV1Api(self.api)
        self.authorization = client.AuthorizationV1Api(self.api)

    # -- the choke point ---------------------------------------------------------------------------

    def _call(self, what: str, function: Callable[..., Any], *args: Any, handled: tuple[int, ...] = (),
              missing: str = "not found", conflict: str = "already exists", **kwargs: Any) -> Any:
        """Run one API call. Statuses in `handled` reach the caller as ApiException; `missing` and
        `conflict` say what a 404 or 409 means here."""
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT)
        for attempt in range(ATTEMPTS):
            try:
                return function(*args, **kwargs)
            except ApiException as e:
                if e.status in RETRIED_STATUSES and not _kubelet_unreachable(e) and attempt < ATTEMPTS - 1:
                    self._sleep(self._backoff(attempt, e))
                    continue
                if e.status in handled:
                    raise
                raise self._translate(what, e, missing, conflict) from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                if attempt < ATTEMPTS - 1:
                    self._sleep(self._backoff(attempt, None))
                    continue
                raise ApiError(f"cannot reach the Kubernetes API server at {self.server} ({type(e).__name__}: "
                               f"{e}); check the cluster is up and the context ({self.context}) is right") from e
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _backoff(attempt: int, error: ApiException | None) -> float:
        retry_after = (error.headers or {}).get("Retry-After") if error is not None else None
        if retry_after and str(retry_after).isdigit():
            return min(float(retry_after), 30.0)
        return min(0.5 * 2**attempt, 8.0)

    def _translate(self, what: str, error: ApiException, missing: str, conflict: str) -> ApiError:
        message, body = _message(error)
        if error.status == 401:
            return ApiError(f"{what}: the API server at {self.server} rejected the credentials (401); refresh them "
                            "(e.g. `gcloud container clusters get-credentials`, `aws eks update-kubeconfig`) or "
                            "check --kubeconfig/--context")
        if error.status == 403:
            return ApiError(f"{what}: forbidden (403): {message}; ask for a Role that allows it in namespace "
                            f"{self.namespace}")
        if error.status == 404:
            return ApiError(f"{what}: {missing} (404)")
        if error.status == 409:
            return ApiError(f"{what}: {conflict} (409)")
        if error.status == 422:
            causes = (body.get("details") or {}).get("causes") or []
            fields = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in causes) or message
            return ApiError(f"{what}: the API server rejected it (422): {fields}")
        if _kubelet_unreachable(error):
            return ApiError(f"{what}: the API server cannot reach the kubelet of the pod's node, which serves pod "
                            f"logs ({error.status}: {message}); check the node is Ready and has an address "
                            "(kubectl get nodes -o wide)")
        if error.status in RETRIED_STATUSES:
            return ApiError(f"{what}: the API server kept failing ({error.status} {error.reason}) after {ATTEMPTS} "
                            f"tries: {message}")
        return ApiError(f"{what}: API error {error.status} {error.reason}: {message}")

    # -- pre-flight ------------------------------------------------------------------------------------

    def namespace_exists(self) -> bool:
        """Whether the namespace exists; assumed when the caller may not read namespaces (a namespaced
        Role), since the access review and the dry run that follow catch a missing one too."""
        try:
            self._call(f"reading namespace {self.namespace}", self.core.read_namespace, self.namespace,
                       handled=(403, 404))
            return True
        except ApiException as e:
            if e.status in (403, 404):
                return e.status == 403
            raise

    def rayjob_crd(self) -> tuple[list[str], dict | None] | None:
        """(versions the installed RayJob CRD serves, the CRD itself), or None when KubeRay is not installed.
        CRDs are cluster-scoped and namespaced Roles cannot read them; API discovery, which everyone may
        read, then tells whether ray.io/v1 serves rayjobs (and the CRD is None)."""
        try:
            crd = self._call("reading the RayJob CRD", self.extensions.read_custom_resource_definition, CRD_NAME,
                             handled=(403, 404))
            return [v.name for v in crd.spec.versions if v.served], self.api.sanitize_for_serialization(crd)
        except ApiException as e:
            if e.status == 404:
                return None
            if e.status != 403:
                raise
        try:
            served = self._call("discovering the ray.io/v1 API", self.custom.get_api_resources, "ray.io", "v1",
                                handled=(404,))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return (["v1"], None) if any(r.name == "rayjobs" for r in served.resources) else None

    def missing_permissions(self, checks: list[tuple[str, str, str, str]]) -> list[str]:
        """Which (verb, group, resource, subresource) the caller may not do here (SelfSubjectAccessReview)."""
        missing = []
        for verb, group, resource, subresource in checks:
            review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=self.namespace, verb=verb, group=group, resource=resource,
                    subresource=subresource or None)))
            result = self._call("checking permissions", self.authorization.create_self_subject_access_review,
                                review)
            if not result.status.allowed:
                name = f"{resource}{'/' + subresource if subresource else ''}{'.' + group if group else ''}"
                missing.append(f"{verb} {name}")
        return missing

    def gpu_pod_slots(self, node_selector: dict[str, str], gpus_per_pod: int) -> int | None:
        """How many pods of `gpus_per_pod` GPUs fit on the schedulable nodes matching the selector, by
        allocatable nvidia.com/gpu (GPUs in use are not subtracted); None when the caller may not list
        nodes."""
        try:
            nodes = self._call("listing nodes", self.core.list_node, handled=(403,))
        except ApiException:
            return None
        slots = 0
        for node in nodes.items:
            labels = node.metadata.labels or {}
            cordoned = bool(node.spec and node.spec.unschedulable)
            if not cordoned and all(labels.get(k) == v for k, v in node_selector.items()):
                allocatable = int((node.status.allocatable or {}).get("nvidia.com/gpu", "0") or 0)
                slots += allocatable // gpus_per_pod
        return slots

    # -- what the cluster offers (inferkit doctor) ------------------------------------------------------

    def operator_images(self, *, forbidden_ok: bool = False) -> list[str] | None:
        """Images of the KubeRay operator deployments (label app.kubernetes.io/name=kuberay-operator, as the
        helm chart sets it); None when the caller may not list deployments cluster-wide and says that is
        fine."""
        apps = client.AppsV1Api(self.api)
        try:
            found = self._call("looking for the KubeRay operator", apps.list_deployment_for_all_namespaces,
                               label_selector="app.kubernetes.io/name=kuberay-operator",
                               handled=(403,) if forbidden_ok else ())
        except ApiException:
            return None
        return [c.image for d in found.items for c in d.spec.template.spec.containers]

    def nodes(self) -> list[dict]:
        """Every node: name, Ready, allocatable CPU, memory and nvidia.com/gpu (as the API gives them), its
        container runtime, GPU labels and taints."""
        nodes = self._call("listing nodes", self.core.list_node)
        out = []
        for node in nodes.items:
            allocatable = node.status.allocatable or {}
            labels = node.metadata.labels or {}
            info = node.status.node_info
            out.append({"name": node.metadata.name,
                        "ready": any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []),
                        "cpu": allocatable.get("cpu", "0"), "memory": allocatable.get("memory", "0"),
                        "gpus": int(allocatable.get("nvidia.com/gpu", "0") or 0),
                        "runtime": info.container_runtime_version if info else "",
                        "labels": {k: v for k, v in labels.items() if k in GPU_LABELS},
                        "taints": [f"{t.key}:{t.effect}" for t in node.spec.taints or []] if node.spec else []})
        return out

    # -- RayJobs ---------------------------------------------------------------------------------------

    def _raw(self, obj: Any) -> dict:
        return obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)

    def create_rayjob(self, obj: dict, dry_run: bool = False) -> dict:
        """Create (or dry-run) a RayJob. A retried create whose first try landed although its answer was
        lost meets a 409: when the existing object carries this submission's annotation, it is ours."""
        name = obj["metadata"].get("name") or obj["metadata"]["generateName"].rstrip("-")
        token = None if dry_run else uuid.uuid4().hex
        if token:
            annotations = {**(obj["metadata"].get("annotations") or {}), SUBMISSION_ANNOTATION: token}
            obj = {**obj, "metadata": {**obj["metadata"], "annotations": annotations}}
        what = f"{'checking (server-side dry run)' if dry_run else 'creating'} RayJob {name}"
        conflict = (f"a RayJob named {name} already exists in namespace {self.namespace}; pass --replace to delete "
                    "and recreate it, or choose another --name")
        try:
            return self._raw(self._call(
                what, self.custom.create_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, obj,
                dry_run="All" if dry_run else None, field_validation="Strict", handled=(409,),
                missing=f"the RayJob CRD is not served in namespace {self.namespace}; {INSTALL_OPERATOR}"))
        except ApiException as e:
            existing = self.get_rayjob(name) if token else None
            if existing and (existing["metadata"].get("annotations") or {}).get(SUBMISSION_ANNOTATION) == token:
                return existing
            raise self._translate(what, e, "not found", conflict) from e

    def get_rayjob(self, name: str) -> dict | None:
        try:
            return self._raw(self._call(f"reading RayJob {name}", self.custom.get_namespaced_custom_object,
                                        GROUP, VERSION, self.namespace, PLURAL, name, handled=(404,)))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def list_rayjobs(self) -> dict:
        return self._raw(self._call(f"listing RayJobs in namespace {self.namespace}",
                                    self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                                    PLURAL, missing=f"RayJobs are not served here; {INSTALL_OPERATOR}"))

    def delete_rayjob(self, name: str) -> bool:
        try:
            self._call(f"deleting RayJob {name}", self.custom.delete_namespaced_custom_object, GROUP, VERSION,
                       self.namespace, PLURAL, name, propagation_policy="Foreground", handled=(404,))
            return True
        except ApiException as e:
            if e.status == 404:
                return False
            raise

    def watch_rayjob(self, name: str, resource_version: str | None, timeout_seconds: int
                     ) -> Iterator[tuple[str, dict]]:
        """(event type, RayJob object) as it changes, for at most `timeout_seconds`. Raises WatchInterrupted
        when the stream drops or expires, and a translated ApiError for what retrying cannot fix."""
        stream = watch.Watch().stream(
            self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
            field_selector=f"metadata.name={name}", resource_version=resource_version,
            timeout_seconds=timeout_seconds, _request_timeout=(10, timeout_seconds + WATCH_READ_MARGIN))
        try:
            for event in stream:  # the client turns ERROR events (410 Gone included) into ApiException
                yield event["type"], event["raw_object"]
        except ApiException as e:
            if e.status == 410 or e.status in RETRIED_STATUSES:
                raise WatchInterrupted(str(e)) from e
            raise self._translate(f"watching RayJob {name}", e, f"RayJob {name} is gone", "conflict") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise WatchInterrupted(str(e)) from e

    # -- pods, logs, events --------------------------------------------------------------------------

    def list_pods(self, label_selector: str) -> list[dict]:
        pods = self._call("listing pods", self.core.list_namespaced_pod, self.namespace, label_selector=label_selector)
        return [self._raw(p) for p in pods.items]

    def pod_log(self, pod: str, container: str | None, follow: bool, since_seconds: int | None = None
                ) -> Iterator[str]:
        """Log lines of a pod, each prefixed by its RFC 3339 timestamp (so a resumed stream can skip
        what was already shown)."""
        response = self._call(f"reading the log of pod {pod}", self.core.read_namespaced_pod_log, pod,
                              self.namespace, container=container, follow=follow, timestamps=True,
                              since_seconds=since_seconds, _preload_content=False,
                              _request_timeout=(10, LOG_READ_TIMEOUT), missing=f"pod {pod} is gone")
        try:
            yield from stream_lines(response.stream(amt=None, decode_content=False))
        finally:
            response.release_conn()

    def dashboard_job_log(self, service: str, job_id: str) -> str | None:
        """The whole driver log of a Ray job from the head's dashboard, reached through the API server's
        service proxy (`GET /api/jobs/<id>/logs` of Ray's job REST API answers `{"logs": "..."}`); None
        while the dashboard does not know the job (its own 404, plain text). This is how the log of an
        HTTPMode RayJob is read: the operator submits through the dashboard, no pod runs `ray job submit`.
        Raises HeadUnreachable when the API server answers for a missing Service (a 404 Status naming
        `services`) or one without endpoints (503, after the usual retries)."""
        ns, svc, job = (quote(part, safe="") for part in (self.namespace, service, job_id))
        path = f"/api/v1/namespaces/{ns}/services/{svc}:dashboard/proxy/api/jobs/{job}/logs"
        try:
            data = self._call(f"reading the driver log of Ray job {job_id}", self._get, path,
                              handled=(401, 403, 404, 503))
        except ApiException as e:
            message, body = _message(e)
            if e.status == 404 and (body.get("details") or {}).get("kind") == "services":
                raise HeadUnreachable(f"service {service} does not exist") from e
            if e.status == 404:
                return None
            if e.status == 503:
                raise HeadUnreachable(f"service {service} has no ready head behind it (503: {message})") from e
            raise LogRefused(f"the API server or the dashboard refused to show the driver log of Ray job {job_id} "
                             f"through service {service} ({e.status}: {message}); "
                             f"{driver_log_on_head(self.namespace, service, job_id)}") from e
        try:
            return str(json.loads(data)["logs"])
        except (ValueError, KeyError, TypeError) as e:
            raise ApiError(f"the dashboard behind service {service} answered no job log ({type(e).__name__})") from e

    def _get(self, path: str, _request_timeout: Any = REQUEST_TIMEOUT) -> bytes:
        """A GET of an already encoded API path (the client's own methods encode `/` in a proxy path)."""
        request = self.api.param_serialize("GET", path, auth_settings=["BearerToken"])
        response = self.api.call_api(*request, _request_timeout=_request_timeout)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return response.data

    def events_for(self, names: set[str]) -> list[dict]:
        """Events of these objects; none when the caller may not list events (they only explain)."""
        try:
            events = self._call("listing events", self.core.list_namespaced_event, self.namespace, handled=(403,))
        except ApiException:
            return []
        return [self._raw(e) for e in events.items if (e.involved_object.name or "") in names]


def stream_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """The lines of a byte stream, the last one too when it ends without a newline (the client's own
    splitter drops it: a driver's last words, printed without a newline, would be lost)."""
    rest = bytearray()
    for chunk in chunks:
        rest += chunk
        if b"\n" not in chunk:  # a long line in many chunks is not split again at each one
            continue
        *lines, tail = rest.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
        rest = bytearray(tail)
    if rest:
        yield rest.decode("utf-8", errors="replace")
