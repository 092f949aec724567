"""`inferkit submit` and friends against an in-process Kubernetes API (tests/fake_kube.py) through the
real `kubernetes` client: scripted scenarios, each checking exit code, stdout (the driver's log, no
line lost or doubled) and stderr."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import urllib3
import yaml

from datetime import datetime, timedelta, timezone

from fake_kube import (FakeKube, cluster_labels, generated_pod, happy_path, http_mode_path, now_rfc3339, pod,
                       ray_failure_message, validation_failed)

LINES = [f"driver line {i}: rows={i * 10}" for i in range(12)]


@pytest.fixture
def fake(tmp_path):
    server = FakeKube(tmp_path)
    yield server
    server.close()


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr("inferkit.submit.POLL_SECONDS", 0.5)
    monkeypatch.setattr("inferkit.k8s.Kube._backoff", staticmethod(lambda attempt, error: 0.01))


def submit(inferkit, fake, *args):
    return inferkit("submit", "--kubeconfig", str(fake.kubeconfig), *args)


def creates(fake) -> list[dict]:
    return [q for m, p, q in fake.requests if m == "POST" and p.endswith("/rayjobs")]


def test_success_streams_every_driver_line_once(inferkit, fake):
    fake.scenario = happy_path("inferkit", LINES)
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == LINES
    for text in ("created RayJob inferkit in namespace default", "deployment Initializing",
                 "deployment Running, job RUNNING", "RayJob inferkit: the job succeeded"):
        assert text in result.stderr
    dry, real = creates(fake)
    assert dry == {"dryRun": "All", "fieldValidation": "Strict"} and real == {"fieldValidation": "Strict"}
    created = fake.rayjobs["inferkit"]
    assert created["metadata"]["namespace"] == "default"  # the context's namespace
    assert created["spec"]["entrypoint"] == "inferkit run"


def test_failure_reports_reason_and_message(inferkit, fake):
    fake.scenario = happy_path("inferkit", LINES[:3], final=("Failed", "FAILED", "AppFailed",
                                                             "Job entrypoint command failed with exit code 1"))
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 1
    assert result.stdout.splitlines() == LINES[:3]
    assert "the job failed (deployment Failed, job FAILED): AppFailed: Job entrypoint command failed with exit code 1" \
        in result.stderr


def test_a_failed_jobs_message_leaves_the_driver_log_to_stdout_and_is_told_once(inferkit, fake):
    """Ray appends the driver's last lines to a failed job's message; they were streamed on stdout already."""
    fake.scenario = happy_path("inferkit", LINES[:3], final=("Failed", "FAILED", "AppFailed",
                                                             ray_failure_message(1, LINES[:3])))
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 1
    assert result.stdout.splitlines() == LINES[:3]
    assert not any(line in result.stderr for line in LINES[:3])
    assert result.stderr.count("failed with exit code 1") == 1
    assert ("AppFailed: Job entrypoint command failed with exit code 1; the driver's log: inferkit logs inferkit "
            "-n default") in result.stderr


def test_an_unverified_tls_context_is_said_once_not_warned_per_request(inferkit, tmp_path):
    """A kubeconfig with insecure-skip-tls-verify: one line says so, urllib3 does not warn on every call."""
    server = FakeKube(tmp_path, tls=True)
    try:
        server.scenario = happy_path("inferkit", LINES[:3])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = submit(inferkit, server, "--cpu-nodes", "1")
    finally:
        server.close()
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == LINES[:3]
    assert [w for w in caught if issubclass(w.category, urllib3.exceptions.InsecureRequestWarning)] == []
    assert result.stderr.count("TLS certificate") == 1
    assert "context fake sets insecure-skip-tls-verify" in result.stderr


def test_pending_on_insufficient_gpu_then_success(inferkit, fake):
    fake.nodes = [{"metadata": {"name": "gpu-1", "labels": {}}, "status": {"allocatable": {"nvidia.com/gpu": "1"}}}]
    worker = "inferkit-raycluster-gpu-workers-abcde"
    reason = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    fake.scenario = happy_path("inferkit", LINES, pending=[
        (0.1, lambda f: f.add_pod(pod(worker, cluster_labels("inferkit"), unschedulable=reason))),
        (0.0, lambda f: f.event(worker, "FailedScheduling", reason)),
        (2.5, lambda f: f.set_pod(worker, phase="Running", conditions=[{"type": "PodScheduled", "status": "True"}])),
    ])
    result = submit(inferkit, fake, "--gpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert result.stderr.count(f"pod {worker} cannot be scheduled: {reason}") == 1
    assert f"pod {worker}: FailedScheduling: {reason}" in result.stderr
    assert result.stdout.splitlines() == LINES


def test_image_pull_errors_are_explained(inferkit, fake):
    head = "inferkit-raycluster-head"
    fake.scenario = [
        (0.1, lambda f: f.set_status("inferkit", jobDeploymentStatus="Initializing",
                                     rayClusterName="inferkit-raycluster")),
        (0.1, lambda f: f.add_pod(pod(head, {"ray.io/cluster": "inferkit-raycluster"}, "Pending", waiting=(
            "ImagePullBackOff", 'Back-off pulling image "ghcr.io/inferkit/inferkit:0.1.0-cpu"')))),
    ]
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--timeout", "4")
    assert result.code == 124
    assert (f'pod {head}, container ray-worker: ImagePullBackOff: Back-off pulling image '
            f'"ghcr.io/inferkit/inferkit:0.1.0-cpu"') in result.stderr


def test_dropped_watch_and_log_stream_lose_and_repeat_nothing(inferkit, fake):
    fake.drop_watch_after = 2
    fake.drop_log_after = 4
    fake.scenario = happy_path("inferkit", LINES) + [(0.0, lambda f: setattr(f, "expire_watch_once", True))]
    fake.scenario.insert(3, (0.0, lambda f: setattr(f, "expire_watch_once", True)))
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == LINES
    logs = [q for m, p, q in fake.requests if p.endswith("/log")]
    watches = [q for m, p, q in fake.requests if q.get("watch")]
    assert len(logs) >= 2 and len(watches) >= 3  # both streams were resumed


def _two_submitter_pods(first_log: list[str], second_log: list[str], same_job: bool) -> list:
    first, second = "inferkit-submitter-a", "inferkit-submitter-b"
    submitter = {"job-name": "inferkit"}
    return happy_path("inferkit", [])[:3] + [
        (0.1, lambda f: f.add_pod(pod(first, submitter, "Running", container="ray-job-submitter", job_uid="j1"))),
        (0.1, lambda f: f.log(first, *first_log)),
        (0.3, lambda f: f.set_pod(first, phase="Failed")),
        (1.1, lambda f: f.add_pod(pod(second, submitter, "Running", container="ray-job-submitter",
                                      job_uid="j1" if same_job else "j2"))),
        (0.1, lambda f: f.log(second, *second_log)),
        (0.5, lambda f: f.set_pod(second, phase="Succeeded")),
        (0.1, lambda f: f.set_status("inferkit", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")),
    ]


def test_a_retried_submitter_pod_replays_the_log_and_nothing_is_shown_twice(inferkit, fake):
    """A submitter pod retried by its Job finds the Ray job submitted and follows its log from the start."""
    submitted = "Job 'inferkit-x' submitted successfully"
    fake.scenario = _two_submitter_pods([submitted] + LINES[:3], LINES, same_job=True)
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [submitted] + LINES
    assert "submitter pod inferkit-submitter-b took over following the driver" in result.stderr


def test_a_retried_submitter_pod_that_submits_again_shows_the_new_run_in_full(inferkit, fake):
    """Ray lost the job (a head restart without GCS fault tolerance): the retried pod submits it again."""
    submitted = "2026-11-23 10:00:00,000\tSUCC cli.py:60 -- Job 'inferkit-x' submitted successfully"
    fake.scenario = _two_submitter_pods([submitted] + LINES[:3], [submitted] + LINES, same_job=True)
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [submitted] + LINES[:3] + [submitted] + LINES
    assert "submitter pod inferkit-submitter-b submitted the job again (Ray had lost it)" in result.stderr


def test_a_new_submitter_job_shows_the_rerun_drivers_log_in_full(inferkit, fake):
    """A RayJob retry (spec.backoffLimit) makes a new submitter Job that runs the driver again."""
    fake.scenario = _two_submitter_pods(LINES[:3], LINES, same_job=False)
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == LINES[:3] + LINES
    assert "a new submitter Job (pod inferkit-submitter-b) runs the driver again" in result.stderr


def test_rayjob_deleted_while_followed_is_an_api_error(inferkit, fake):
    def delete(f):
        with f.lock:
            f._bump("DELETED", f.rayjobs.pop("inferkit"))

    fake.scenario = happy_path("inferkit", [])[:4] + [(0.3, delete)]
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--timeout", "30")
    assert result.code == 3, result.stderr
    assert "RayJob inferkit was deleted from namespace default while it was followed" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_rayjob_deleted_right_after_it_ended_still_reports_its_end(inferkit, fake):
    def finish_and_delete(f):  # the watch sees only the deletion, whose object carries the final status
        with f.lock:
            obj = f.rayjobs.pop("inferkit")
            obj["status"] = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}
            f._bump("DELETED", obj)

    fake.scenario = happy_path("inferkit", LINES[:2])[:6] + [
        (0.3, lambda f: f.set_pod("inferkit-submitter", phase="Succeeded")), (0.1, finish_and_delete)]
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--timeout", "30")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == LINES[:2]
    assert "RayJob inferkit: the job succeeded" in result.stderr


def test_forbidden_lists_what_is_missing(inferkit, fake):
    fake.denied = {("create", "rayjobs"), ("get", "pods/log")}
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 3 and result.stdout == ""
    assert ("you may not create rayjobs.ray.io, get pods/log in namespace default; ask for a Role that allows "
            "them") in result.stderr
    assert creates(fake) == []


def test_missing_crds_say_how_to_install_the_operator(inferkit, fake):
    fake.crd_installed = False
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 3 and result.stdout == ""
    assert "the KubeRay CRDs are not installed in context fake" in result.stderr
    assert "helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0" in result.stderr


OPERATOR_1_5 = [{"metadata": {"name": "kuberay-operator", "namespace": "kuberay"},
                 "spec": {"selector": {}, "template": {"spec": {"containers": [
                     {"name": "kuberay-operator", "image": "quay.io/kuberay/operator:v1.5.0"}]}}}}]


def test_the_operator_image_tells_the_version_where_the_crd_cannot_be_read(inferkit, fake):
    """A namespaced Role: the CRD is unreadable, the operator Deployment (where it may be listed) says 1.5 and the
    render is for 1.7: stopped before anything is created, with the fix; where neither can be read, no check."""
    crd = ("GET", "/customresourcedefinitions/rayjobs.ray.io")
    fake.failures = {crd: [403]}
    fake.deployments = OPERATOR_1_5
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 3 and result.stdout == ""
    assert result.stderr.endswith("Error: the cluster runs KubeRay 1.5 (by the operator image quay.io/kuberay/"
                                  "operator:v1.5.0), and this RayJob is rendered for KubeRay 1.7; pass "
                                  "--kuberay-version 1.5 (values key kuberayVersion)\n")
    assert creates(fake) == []
    fake.failures = {crd: [403], ("GET", "/apis/apps/v1/deployments"): [403]}
    fake.scenario = happy_path("inferkit", LINES[:2])
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert {"fieldValidation": "Strict"} in creates(fake)  # created, not only dry-run


def test_a_namespaced_role_that_cannot_read_crds_or_namespaces_still_submits(inferkit, fake):
    """CRDs and namespaces are cluster-scoped; API discovery tells whether RayJobs are served."""
    fake.failures = {("GET", "/customresourcedefinitions/rayjobs.ray.io"): [403], ("GET", "/namespaces/default"): [403]}
    fake.scenario = happy_path("inferkit", LINES[:2])
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert ("GET", "/apis/ray.io/v1", {}) in fake.requests
    fake.crd_installed = False
    fake.failures = {("GET", "/customresourcedefinitions/rayjobs.ray.io"): [403]}
    missing = submit(inferkit, fake, "--cpu-nodes", "1", "--name", "other")
    assert missing.code == 3 and "the KubeRay CRDs are not installed in context fake" in missing.stderr


def test_a_kubeconfig_that_is_not_one_is_a_clear_error(inferkit, tmp_path):
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nclusters: [unclosed\n")
    result = inferkit("submit", "--kubeconfig", str(broken), "--cpu-nodes", "1")
    assert result.code == 3 and result.stdout == ""
    assert result.stderr.startswith(f"Error: cannot read kubeconfig {broken}: ") and len(result.stderr.splitlines()) == 1


def test_missing_namespace(inferkit, fake):
    result = submit(inferkit, fake, "--cpu-nodes", "1", "-n", "nope")
    assert result.code == 3 and "namespace nope does not exist" in result.stderr


def test_name_conflict_and_replace(inferkit, fake):
    fake.rayjobs["inferkit"] = {"apiVersion": "ray.io/v1", "kind": "RayJob", "status": {"jobStatus": "RUNNING"},
                                "metadata": {"name": "inferkit", "namespace": "default", "resourceVersion": "1"}}
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 3
    assert "a RayJob named inferkit already exists in namespace default (deployment New, job RUNNING); pass " \
           "--replace" in result.stderr
    assert creates(fake) == []
    fake.scenario = happy_path("inferkit", LINES[:2])
    replaced = submit(inferkit, fake, "--cpu-nodes", "1", "--replace")
    assert replaced.code == 0, replaced.stderr
    assert "deleted the existing RayJob inferkit" in replaced.stderr
    assert replaced.stdout.splitlines() == LINES[:2]


def test_timeout_exits_124_with_a_way_back(inferkit, fake):
    fake.scenario = happy_path("inferkit", LINES[:2])[:4]  # reaches Running, never ends
    started = time.monotonic()
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--timeout", "3")
    assert result.code == 124
    assert time.monotonic() - started < 20
    assert "--timeout reached; RayJob inferkit is still deployment Running, job RUNNING" in result.stderr
    assert "inferkit logs -f inferkit -n default" in result.stderr


def test_lines_held_back_in_a_takeover_are_shown_when_the_timeout_ends_following(inferkit, fake):
    """Two replayed lines are not yet a confirmed replay; the stream stays open, so only the timeout's
    ending can show them."""
    fake.scenario = _two_submitter_pods(LINES[:4], LINES[1:3], same_job=True)[:-2]  # the second pod never ends
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--timeout", "6")
    assert result.code == 124, result.stderr
    assert result.stdout.splitlines() == LINES[:4] + LINES[1:3]


def test_transient_errors_are_retried(inferkit, fake):
    fake.failures = {("POST", "/rayjobs"): [500, 429, 503], ("GET", "/namespaces/default"): [502]}
    fake.scenario = happy_path("inferkit", LINES[:2])
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert len(creates(fake)) == 5  # three refused, then the dry run and the real one


def test_a_create_whose_answer_was_lost_is_recognised_as_ours(inferkit, fake):
    fake.lose_create_answer = True
    fake.scenario = happy_path("inferkit", LINES[:2])
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert len(creates(fake)) == 3  # the dry run, the create whose answer was lost, its retry (409)
    assert "inferkit.io/submission" in fake.rayjobs["inferkit"]["metadata"]["annotations"]


def test_a_namesake_created_meanwhile_is_still_a_conflict(inferkit, fake):
    def someone_else_creates(f):
        f.rayjobs["inferkit"] = {"metadata": {"name": "inferkit", "annotations": {"inferkit.io/submission": "x"}}}

    original = fake._rayjobs

    def racing(h, method, namespace, name, query, body):
        if method == "POST" and query.get("dryRun") != "All" and "inferkit" not in fake.rayjobs:
            someone_else_creates(fake)
        return original(h, method, namespace, name, query, body)

    fake._rayjobs = racing
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 3
    assert "a RayJob named inferkit already exists in namespace default" in result.stderr


def test_persistent_server_errors_give_up(inferkit, fake):
    fake.failures = {("POST", "/rayjobs"): [503] * 10}
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 3
    assert "the API server kept failing (503" in result.stderr and "after 5 tries" in result.stderr


def test_validation_error_names_the_field(inferkit, fake):
    fake.reject_create = (422, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                                "reason": "Invalid", "message": "RayJob.ray.io \"inferkit\" is invalid",
                                "details": {"causes": [{"field": "spec.rayClusterSpec.headGroupSpec",
                                                        "message": "Required value"}]}})
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 3
    assert "rejected it (422): spec.rayClusterSpec.headGroupSpec: Required value" in result.stderr


def test_dry_run_creates_nothing(inferkit, fake):
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--dry-run")
    assert result.code == 0, result.stderr
    obj = yaml.safe_load(result.stdout)
    assert obj["kind"] == "RayJob" and obj["metadata"]["namespace"] == "default"
    assert creates(fake) == [{"dryRun": "All", "fieldValidation": "Strict"}]
    assert fake.rayjobs == {}


def test_detach_returns_after_creating(inferkit, fake):
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--detach")
    assert result.code == 0 and "detached; follow it: inferkit logs -f inferkit -n default" in result.stderr
    assert "inferkit" in fake.rayjobs


def test_gpu_capacity_warns_or_fails(inferkit, fake):
    fake.nodes = [{"metadata": {"name": "cpu-1", "labels": {}}, "status": {"allocatable": {"cpu": "8"}}}]
    strict = submit(inferkit, fake, "--gpu-nodes", "2", "--strict-capacity")
    assert strict.code == 3
    assert "only 0 of the 2 GPU pods (1 x nvidia.com/gpu each) fit on the nodes that match (any node)" in strict.stderr
    fake.scenario = happy_path("inferkit", LINES[:1])
    lenient = submit(inferkit, fake, "--gpu-nodes", "2")
    assert lenient.code == 0 and "warning: only 0 of the 2 GPU pods" in lenient.stderr
    # the cluster is Ready only with every pod Running and Ready; the job waits for it, it does not start smaller
    assert ("KubeRay starts the job only once every pod of the cluster is Running and Ready, so it waits until a "
            "node autoscaler adds GPU nodes") in lenient.stderr


def test_cordoned_nodes_do_not_count_and_strict_capacity_needs_to_see_nodes(inferkit, fake):
    gpu_node = {"metadata": {"name": "gpu-1", "labels": {}}, "status": {"allocatable": {"nvidia.com/gpu": "4"}}}
    fake.nodes = [{**gpu_node, "spec": {"unschedulable": True}}]
    cordoned = submit(inferkit, fake, "--gpu-nodes", "1", "--strict-capacity")
    assert cordoned.code == 3 and "only 0 of the 1 GPU pods" in cordoned.stderr
    fake.nodes = [gpu_node]
    fake.failures = {("GET", "/api/v1/nodes"): [403]}
    blind = submit(inferkit, fake, "--gpu-nodes", "1", "--strict-capacity")
    assert blind.code == 3 and "--strict-capacity: you may not list nodes" in blind.stderr


def test_kueue_suspension_is_explained(inferkit, fake):
    fake.scenario = [(0.1, lambda f: f.set_status("inferkit", jobDeploymentStatus="Suspended"))]
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--set", "scheduling.kueueQueue=team-a", "--timeout", "2")
    assert result.code == 124
    assert "deployment Suspended, job - (waiting for Kueue to admit it from queue team-a)" in result.stderr


def test_unreachable_api_server(inferkit, tmp_path):
    config = tmp_path / "kubeconfig"
    config.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}]}))
    result = inferkit("submit", "--kubeconfig", str(config), "--cpu-nodes", "1")
    assert result.code == 3 and result.stdout == ""
    assert "cannot reach the Kubernetes API server at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_context(inferkit, fake):
    result = inferkit("status", "x", "--kubeconfig", str(fake.kubeconfig), "--context", "prod")
    assert result.code == 3 and "--context prod: no such context" in result.stderr


def test_status_list_logs_delete(inferkit, fake):
    fake.scenario = happy_path("inferkit", LINES[:3])
    assert submit(inferkit, fake, "--cpu-nodes", "1").code == 0
    connection = ["--kubeconfig", str(fake.kubeconfig)]
    status = inferkit("status", "inferkit", *connection)
    assert status.code == 0
    assert "jobStatus            SUCCEEDED" in status.stdout and "rayClusterName       inferkit-raycluster" in status.stdout
    as_json = inferkit("status", "inferkit", *connection, "-o", "json")
    assert '"jobDeploymentStatus": "Complete"' in as_json.stdout
    listed = inferkit("list", *connection)
    assert listed.stdout.splitlines()[0].split() == ["name", "jobStatus", "jobDeploymentStatus", "startTime",
                                                     "endTime"]
    assert listed.stdout.splitlines()[1].split()[:3] == ["inferkit", "SUCCEEDED", "Complete"]
    logs = inferkit("logs", "inferkit", *connection)
    assert logs.code == 0 and logs.stdout.splitlines() == LINES[:3]
    followed = inferkit("logs", "inferkit", "-f", *connection)
    assert followed.code == 0 and followed.stdout.splitlines() == LINES[:3]
    refused = inferkit("delete", "inferkit", *connection)
    assert refused.code == 2 and "pass -y" in refused.stderr
    deleted = inferkit("delete", "inferkit", "-y", *connection)
    assert deleted.code == 0 and fake.rayjobs == {}
    missing = inferkit("status", "inferkit", *connection)
    assert missing.code == 3 and "no RayJob named inferkit in namespace default" in missing.stderr


def test_logs_say_at_once_that_the_nodes_kubelet_cannot_be_reached(inferkit, fake):
    """The API server's 500 for a node it cannot reach is no flaky server: retrying does not help."""
    fake.scenario = happy_path("inferkit", LINES[:3])
    assert submit(inferkit, fake, "--cpu-nodes", "1").code == 0
    fake.kubelet_unreachable = True
    before = len(fake.requests)
    result = inferkit("logs", "inferkit", "--kubeconfig", str(fake.kubeconfig))
    assert result.code == 3
    assert result.stderr.startswith("Error: reading the log of pod inferkit-submitter: the API server cannot reach "
                                    "the kubelet of the pod's node") and len(result.stderr.splitlines()) == 1
    assert "no preferred addresses found" in result.stderr
    assert [p for _, p, _ in fake.requests[before:] if p.endswith("/log")] == [
        "/api/v1/namespaces/default/pods/inferkit-submitter/log"]


def test_following_without_leave_to_list_events_still_reaches_the_end(inferkit, fake):
    """`logs -f` runs no pre-flight; events only explain pending pods, so a 403 on them is no failure."""
    fake.scenario = happy_path("inferkit", LINES[:3])
    fake.failures = {("GET", "/events"): [403] * 1000}
    assert submit(inferkit, fake, "--cpu-nodes", "1", "--detach").code == 0
    followed = inferkit("logs", "inferkit", "-f", "--kubeconfig", str(fake.kubeconfig))
    assert followed.code == 0, followed.stderr
    assert followed.stdout.splitlines() == LINES[:3]
    assert any(p.endswith("/events") for _, p, _ in fake.requests)


def _interrupted_submit(fake, ready, *extra: str) -> str:
    """Runs `inferkit submit` as a user would, presses Ctrl-C once `ready(fake)` (an API request the CLI
    makes only past the point under test, so no sleep guesses when it got there), returns its stderr."""
    args = [sys.executable, "-m", "inferkit", "submit", "--kubeconfig", str(fake.kubeconfig), "--cpu-nodes", "1",
            *extra]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while not ready(fake):
        assert time.monotonic() < deadline, "never got ready for Ctrl-C"
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    return stderr


@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_stops_following_and_optionally_cancels(fake, cancel):
    fake.scenario = happy_path("inferkit", LINES[:2])[:4]  # runs forever
    def following_the_driver_log(f) -> bool:
        running = (f.rayjobs.get("inferkit") or {}).get("status", {}).get("jobStatus") == "RUNNING"
        return running and any(path.endswith("/log") for _, path, _ in f.requests)

    stderr = _interrupted_submit(fake, following_the_driver_log, *(["--cancel-on-interrupt"] if cancel else []))
    if cancel:
        assert "interrupted: RayJob inferkit deleted" in stderr and "inferkit" not in fake.rayjobs
    else:
        assert "stopped following; RayJob inferkit keeps running" in stderr and "inferkit" in fake.rayjobs


def test_ctrl_c_while_the_create_is_unanswered_cancels_what_was_created(fake):
    fake.slow_create_answer = 20
    fake.scenario = happy_path("inferkit", LINES[:2])[:4]
    stderr = _interrupted_submit(fake, lambda f: "inferkit" in f.rayjobs, "--cancel-on-interrupt")
    assert "interrupted while creating RayJob inferkit; it may have been created" in stderr
    assert "interrupted: RayJob inferkit deleted" in stderr and "inferkit" not in fake.rayjobs


def test_timestamps_used_for_resume_are_rfc3339():
    from inferkit.submit import _parse_time

    stamp = now_rfc3339(nanos=True)
    assert _parse_time(stamp).year >= 2024


def test_a_pod_log_split_anywhere_keeps_every_line_and_its_unterminated_last_one():
    from inferkit.k8s import stream_lines

    text = "2026-01-01T00:00:01Z héllo\n2026-01-01T00:00:02Z \n2026-01-01T00:00:03Z last words".encode()
    expected = ["2026-01-01T00:00:01Z héllo", "2026-01-01T00:00:02Z ", "2026-01-01T00:00:03Z last words"]
    for cut in range(1, len(text)):
        assert list(stream_lines([text[:cut], text[cut:]])) == expected
    assert list(stream_lines(text[i:i + 1] for i in range(len(text)))) == expected
    assert list(stream_lines([text + b"\n"])) == expected


class _DroppingRayJobApi:
    """Ray's job API as seen through a flaky proxy: the first log stream ends mid-line while the job runs."""

    def __init__(self):
        self.log = "line 1\nline 2\nline 3\n"
        self.streams = 0

    async def tail_job_logs(self, job_id):
        self.streams += 1
        if self.streams == 1:
            yield self.log[:4]
            yield self.log[4:10]
            return
        yield self.log[:3]
        yield self.log[3:]

    def get_job_status(self, job_id):
        return "JobStatus.RUNNING" if self.streams < 2 else "JobStatus.SUCCEEDED"

    def get_job_logs(self, job_id):
        return self.log


def test_ray_job_log_stream_that_drops_is_resumed_without_repeats(monkeypatch, capsys):
    import asyncio

    from inferkit.job import remote

    monkeypatch.setattr(remote, "SETTLE_SECONDS", 0.2)
    api = _DroppingRayJobApi()
    status = asyncio.run(remote.follow_ray_job(api, "job-1", "http://ray:8265"))
    captured = capsys.readouterr()
    assert status == "SUCCEEDED" and api.streams == 2
    assert captured.out == api.log
    assert "reconnecting" in captured.err


class _BreakingRayJobApi(_DroppingRayJobApi):
    """The stream breaks mid-line just as the job ends: the rest comes from the finished job's log."""

    async def tail_job_logs(self, job_id):
        self.streams += 1
        yield self.log[:8]
        raise ConnectionResetError("websocket closed")

    def get_job_status(self, job_id):
        return "JobStatus.FAILED"


def test_ray_job_log_lost_at_the_end_is_read_from_the_finished_job(capsys):
    import asyncio

    from inferkit.job import remote

    api = _BreakingRayJobApi()
    assert asyncio.run(remote.follow_ray_job(api, "job-1", "http://ray:8265")) == "FAILED"
    assert capsys.readouterr().out == api.log and api.streams == 1


class _SilentRayJobApi:
    def get_job_status(self, job_id):
        raise ConnectionRefusedError("connection refused")


def test_a_dashboard_that_stops_answering_is_an_api_error(monkeypatch):
    from inferkit.errors import ApiError
    from inferkit.job import remote

    monkeypatch.setattr(remote, "STATUS_RETRY_SECONDS", 0)
    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    with pytest.raises(ApiError, match="stopped answering about job job-1: connection refused"):
        remote._status(_SilentRayJobApi(), "job-1", "http://ray:8265")


class _StartingRayJobApi:
    """Ray's job API on a cluster that has just started: no job agent for the first tries."""

    def __init__(self, refusals: int, message: str = "No available agent to submit job, please try again later."):
        self.refusals, self.message, self.submitted = refusals, message, []

    def submit_job(self, **kwargs):
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError(f"Request failed with status code 500: {self.message}")
        self.submitted.append(kwargs)


def test_ray_job_submission_waits_for_the_job_agent_then_gives_up_clearly(monkeypatch, capsys):
    from inferkit.errors import ApiError
    from inferkit.job import remote

    monkeypatch.setattr(remote.time, "sleep", lambda seconds: None)
    api = _StartingRayJobApi(refusals=3)
    remote._submit(api, "http://ray:8265", "inferkit run", {}, "job-1")
    assert api.submitted == [{"entrypoint": "inferkit run", "runtime_env": None, "submission_id": "job-1"}]
    assert capsys.readouterr().err.count("has no job agent ready yet") == 1

    monkeypatch.setattr(remote, "AGENT_WAIT_SECONDS", -1)
    with pytest.raises(ApiError, match="has had no job agent for -1 s; its dashboard_agent.log"):
        remote._submit(_StartingRayJobApi(refusals=1), "http://ray:8265", "inferkit run", {}, "job-2")
    with pytest.raises(ApiError, match="refused the job: .*entrypoint is invalid"):
        remote._submit(_StartingRayJobApi(refusals=1, message="entrypoint is invalid"), "http://ray:8265",
                       "inferkit run", {}, "job-3")


# ---------------------------------------------------------------------------------------------
# As the KubeRay v1.7.0 operator behaves (issue 9)


def test_pods_that_are_never_created_are_explained_once_with_the_fix(inferkit, fake):
    """The operator records a Warning on the RayCluster when it cannot create a pod, and on the RayJob when it
    cannot create the RayCluster or the submitter Job; the Job controller records FailedCreate on the Job.
    No pod exists to explain anything. Each retry names a new generated pod; an earlier RayJob of the same
    name left a FailedCreate behind (--replace), which is not this job's."""
    def quota():
        return (f'Failed to create worker Pod for the cluster default/inferkit-raycluster, pods '
                f'"{generated_pod("inferkit-raycluster-cpu-workers-worker-")}" is forbidden: exceeded quota: '
                "cpu-quota, requested: requests.cpu=8, used: requests.cpu=16, limited: requests.cpu=16")

    def account():
        return (f'Error creating: pods "{generated_pod("inferkit-")}" is forbidden: error looking up service account '
                'default/runner: serviceaccount "runner" not found')

    jobs = ('Failed to create new Kubernetes Job default/inferkit: jobs.batch "inferkit" is forbidden: exceeded '
            "quota: objects, requested: count/jobs.batch=1, used: count/jobs.batch=4, limited: count/jobs.batch=4")

    def refusals(f):
        for _ in range(3):  # the operator and the Job controller retry; the events repeat
            f.event("inferkit-raycluster", "FailedToCreateWorkerPod", quota(), kind="RayCluster")
            f.event("inferkit", "FailedCreate", account(), kind="Job")
            f.event("inferkit", "FailedToCreateRayJobSubmitter", jobs, kind="RayJob")

    fake.event("inferkit", "FailedCreate", "Error creating: a namesake's refusal", kind="Job",
               at=datetime.now(timezone.utc) - timedelta(hours=1))
    fake.scenario = happy_path("inferkit", [])[:2] + [(0.1, refusals)]
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--timeout", "4")
    assert result.code == 124, result.stderr
    assert result.stderr.count("RayCluster inferkit-raycluster: FailedToCreateWorkerPod: Failed to create worker "
                               "Pod for the cluster default/inferkit-raycluster, pods") == 1
    assert ("is forbidden: exceeded quota: cpu-quota, requested: requests.cpu=8, used: requests.cpu=16, limited: "
            "requests.cpu=16 (a ResourceQuota of the namespace is used up") in result.stderr
    assert result.stderr.count("submitter Job inferkit: FailedCreate: Error creating: pods") == 1
    assert ('serviceaccount "runner" not found (the ServiceAccount does not exist: create it or fix '
            "serviceAccountName)") in result.stderr
    assert result.stderr.count(f"RayJob inferkit: FailedToCreateRayJobSubmitter: {jobs} (a ResourceQuota caps how "
                               "many jobs.batch the namespace may hold") == 1
    assert "a namesake's refusal" not in result.stderr


def test_http_mode_streams_the_driver_log_from_the_dashboard_in_another_namespace(inferkit, fake):
    """HTTPMode has no submitter pod: the log comes from the head's dashboard through the service proxy."""
    text = "".join(f"{line}\n" for line in LINES)
    chunks = [text[:7], text[7:100], text[100:-5], text[-5:-1]]  # the last line ends without a newline
    fake.scenario = http_mode_path("inferkit", chunks, namespace="ml")
    result = submit(inferkit, fake, "--cpu-nodes", "1", "-n", "ml", "--set", "job.submissionMode=HTTPMode")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == LINES
    assert "created RayJob inferkit in namespace ml" in result.stderr and "the job succeeded" in result.stderr
    assert fake.rayjobs["inferkit"]["metadata"]["namespace"] == "ml"
    proxied = [p for _, p, _ in fake.requests if "/proxy/" in p]
    assert proxied and all(p == "/api/v1/namespaces/ml/services/inferkit-raycluster-head-svc:dashboard/proxy/api/"
                           "jobs/inferkit-job/logs" for p in proxied)
    again = inferkit("logs", "inferkit", "-n", "ml", "--kubeconfig", str(fake.kubeconfig))
    assert again.code == 0 and again.stdout.splitlines() == LINES


def test_http_mode_without_the_service_proxy_says_where_the_log_is(inferkit, fake):
    """The service proxy only streams the HTTPMode log: without it the job still runs, and the log is on the
    head. Pre-flight warns (not with --detach, which streams nothing); `logs` and `logs -f` say where."""
    fake.denied = {("get", "services/proxy")}
    fake.scenario = http_mode_path("inferkit", ["line 1\n"])
    detached = submit(inferkit, fake, "--cpu-nodes", "1", "--set", "job.submissionMode=HTTPMode", "--detach")
    assert detached.code == 0, detached.stderr
    assert "services/proxy" not in detached.stderr
    fake.scenario = http_mode_path("other", ["line 1\n"])
    followed = submit(inferkit, fake, "--cpu-nodes", "1", "--set", "job.submissionMode=HTTPMode", "--name", "other")
    assert followed.code == 0, followed.stderr
    assert followed.stdout == ""
    assert ("warning: you may not get services/proxy in namespace default, so the driver's log will not stream here; "
            "in HTTPMode the driver's log is on the head: kubectl port-forward -n default svc/other-head-svc 8265, "
            "then ray job logs --address http://127.0.0.1:8265 -f $(kubectl get rayjob other -n default -o "
            "jsonpath='{.status.jobId}')") in followed.stderr
    where = ("in HTTPMode the driver's log is on the head: kubectl port-forward -n default "
             "svc/other-raycluster-head-svc 8265, then ray job logs --address http://127.0.0.1:8265 -f other-job")
    assert followed.stderr.count("refused to show the driver log") == 1 and where in followed.stderr
    assert "the job succeeded" in followed.stderr
    shown = inferkit("logs", "other", "--kubeconfig", str(fake.kubeconfig))
    assert shown.code == 3 and "refused to show the driver log" in shown.stderr and where in shown.stderr


@pytest.mark.parametrize("head", ["deleted", "not ready"])
def test_http_mode_log_of_a_finished_job_whose_head_is_gone_says_so(inferkit, fake, head):
    """The HTTPMode log lives only on the head: once the operator deletes the RayCluster (shutdown after the
    job, a deletion rule) the API server answers 404 for its Service; while the head pod goes, 503."""
    fake.scenario = http_mode_path("inferkit", ["line 1\n"])
    assert submit(inferkit, fake, "--cpu-nodes", "1", "--set", "job.submissionMode=HTTPMode").code == 0
    if head == "deleted":
        fake.delete_cluster("inferkit-raycluster")
        why = "service inferkit-raycluster-head-svc does not exist"
    else:
        fake.set_pod("inferkit-raycluster-head", phase="Failed")
        why = ('service inferkit-raycluster-head-svc has no ready head behind it (503: no endpoints available for '
               'service "inferkit-raycluster-head-svc")')
    gone = "an HTTPMode job's driver log lived only on its head, and went with RayCluster inferkit-raycluster"
    shown = inferkit("logs", "inferkit", "--kubeconfig", str(fake.kubeconfig))
    assert shown.code == 3 and shown.stdout == ""
    assert f"RayJob inferkit has ended and {why}: {gone}" in shown.stderr
    assert "it may still be starting" not in shown.stderr
    followed = inferkit("logs", "-f", "inferkit", "--kubeconfig", str(fake.kubeconfig))
    assert followed.code == 0 and followed.stdout == ""
    assert f"RayJob inferkit: {why}: {gone}" in followed.stderr


def test_http_mode_reads_the_log_once_more_at_the_end_however_long_the_wait(inferkit, fake, monkeypatch):
    """The last lines, written just before the RayJob ends, are read when it ends, not a poll later."""
    monkeypatch.setattr("inferkit.submit.DASHBOARD_POLL_SECONDS", 3600)
    fake.scenario = http_mode_path("inferkit", ["line 1\n", "line 2\nline 3"])
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--set", "job.submissionMode=HTTPMode")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == ["line 1", "line 2", "line 3"]


def test_http_mode_says_where_the_last_of_the_log_is_when_the_final_read_fails(inferkit, fake):
    steps = http_mode_path("inferkit", ["line 1\n"])
    fake.scenario = steps[:-1] + [(0.0, lambda f: f.failures.update({("GET", "/logs"): [500] * 1000})), steps[-1]]
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--set", "job.submissionMode=HTTPMode")
    assert result.code == 0, result.stderr
    assert ("RayJob inferkit: could not read the last of the driver's log (reading the driver log of Ray job "
            "inferkit-job: the API server kept failing (500") in result.stderr
    assert ("in HTTPMode the driver's log is on the head: kubectl port-forward -n default "
            "svc/inferkit-raycluster-head-svc 8265") in result.stderr


def test_deadline_exceeded_says_the_driver_may_still_run(inferkit, fake):
    fake.scenario = happy_path("inferkit", LINES[:2], final=(
        "Failed", "RUNNING", "DeadlineExceeded", "The RayJob has passed the activeDeadlineSeconds."))
    result = submit(inferkit, fake, "--cpu-nodes", "1", "--set", "job.activeDeadlineSeconds=60")
    assert result.code == 1
    assert ("DeadlineExceeded: The RayJob has passed the activeDeadlineSeconds.; KubeRay does not stop the Ray job at "
            "the deadline: the cluster and the driver may still run for up to 300 s more, until the RayCluster is "
            "deleted") in result.stderr


def test_a_second_submitter_pod_that_submits_first_is_not_a_resubmission(inferkit, fake):
    waiting = "Waiting for Ray Dashboard GCS to become healthy at http://inferkit-raycluster-head-svc:8265 ..."
    submitted = "Job 'inferkit-job' submitted successfully"
    fake.scenario = _two_submitter_pods([waiting, waiting], [waiting, submitted] + LINES, same_job=True)
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == [waiting] * 3 + [submitted] + LINES
    assert ("submitter pod inferkit-submitter-b submitted the job (the pod before it ended before submitting)"
            in result.stderr)
    assert "Ray had lost it" not in result.stderr


def test_validation_failed_has_no_end_and_says_nothing_ran(inferkit, fake):
    message = "The RayJob spec is invalid: worker group cpu-workers has negative minReplicas -1"
    fake.scenario = validation_failed("inferkit", message)
    result = submit(inferkit, fake, "--cpu-nodes", "1")
    assert result.code == 1
    assert f"the operator refused the RayJob, so nothing ran: {message}; the RayJob stays" in result.stderr
    status = inferkit("status", "inferkit", "--kubeconfig", str(fake.kubeconfig))
    assert "endTime              -" in status.stdout and "startTime            -" in status.stdout


def test_a_job_in_another_namespace_is_followed_there_and_a_resumed_log_loses_no_line(inferkit, fake):
    """The nodes' clock runs a minute ahead of this machine's: a resumed log stream can only ask for
    enough history (sinceSeconds, measured on the node) with a margin. The stream drops, and the pod's log
    cannot be read for a few seconds while the driver goes on writing."""
    fake.node_clock_skew = 60
    fake.drop_log_after = 3
    fake.add_pod(pod("inferkit-submitter", {"job-name": "inferkit"}, "Running", container="ray-job-submitter"))
    fake.log("inferkit-submitter", "a line of a namesake in namespace default")
    steps = happy_path("inferkit", [], namespace="ml")
    submitter = "inferkit-submitter-ml"
    with_sidecar = pod(submitter, {"job-name": "inferkit"}, "Running", container="ray-job-submitter", namespace="ml")
    with_sidecar["spec"]["containers"].append({"name": "istio-proxy", "image": "proxy"})  # the log must name one
    fake.scenario = steps[:3] + [
        (0.1, lambda f: f.add_pod(with_sidecar)),
        (0.1, lambda f: f.log(submitter, *LINES[:3])),  # the stream drops after these
        (0.2, lambda f: f.failures.update({("GET", f"/pods/{submitter}/log"): [500] * 10})),
        (0.0, lambda f: f.log(submitter, *LINES[3:8])),
        (3.5, lambda f: f.log(submitter, *LINES[8:])),
        (0.5, lambda f: f.set_pod(submitter, phase="Succeeded")),
        (0.1, lambda f: f.set_status("inferkit", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")),
    ]
    result = submit(inferkit, fake, "--cpu-nodes", "1", "-n", "ml")
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines() == LINES
    logs = [q for _, p, q in fake.requests if p.endswith(f"/pods/{submitter}/log")]
    assert any(q.get("sinceSeconds") for q in logs) and all(q["container"] == "ray-job-submitter" for q in logs)


@pytest.mark.parametrize("timeout", [None, 60.0])
@pytest.mark.parametrize("cancel", [False, True])
def test_ctrl_c_while_following_a_ray_job_is_130_once_with_or_without_a_timeout(monkeypatch, capsys, timeout,
                                                                               cancel):
    """A real SIGINT while the follower runs: the follower is cancelled and the CLI says so in one line (no
    asyncio traceback, no "exception was never retrieved"), stopping the job only when asked."""
    import asyncio

    from inferkit.job import remote

    stopped = []

    class Client:
        def stop_job(self, job_id):
            stopped.append(job_id)
            return True

    async def follow_until_interrupted(client, job_id, address):
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(30)
        return "SUCCEEDED"

    monkeypatch.setattr(remote, "_client", lambda address: Client())
    monkeypatch.setattr(remote, "_submit", lambda *args: None)
    monkeypatch.setattr(remote, "follow_ray_job", follow_until_interrupted)
    started = time.monotonic()
    code = remote.submit_to_ray("http://ray:8265", "inferkit run", {}, detach=False, timeout=timeout,
                                cancel_on_interrupt=cancel)
    err = capsys.readouterr().err
    assert code == 130 and time.monotonic() - started < 10
    assert "Traceback" not in err and "never retrieved" not in err
    assert ("stopped" if cancel else "keeps running") in err and len(stopped) == int(cancel)
