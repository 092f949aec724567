"""inferkit's real CLI against a real control plane (tests/controlplane.py, scripts/controlplane.sh): the
API server's own validation, the KubeRay operator v1.7.0's own statuses, events and names, the scheduler's
own reasons, and one job end to end through the operator and a real Ray. What a real server cannot be
made to do on demand (dropped watches, 5xx/429, lost replies) stays in tests/test_submit.py."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controlplane import RayHead, kube_args, submit_args, submit_until, wait_until
from inferkit import chart
from inferkit.kuberay import VERSIONS, version_of_crd, version_problems
from shapes import GOLDEN, SHAPES


PRESETS = ("kind", "gke-gpu", "eks-gpu")


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    """Function (autouse): the follower polls every half second."""
    monkeypatch.setattr("inferkit.submit.POLL_SECONDS", 0.5)
    monkeypatch.setattr("inferkit.submit.DASHBOARD_POLL_SECONDS", 0.5)


@pytest.fixture
def namespace(controlplane, request):
    """Function: a new namespace of the control plane, named after the test; deleted after it with what the
    test left there (RayJobs a test stopped following would otherwise keep the one operator busy: their
    status checks all reach the one head, and an HTTPMode job run later waited minutes for its turn)."""
    name = controlplane.new_namespace(request.node.name.removeprefix("test_")[:20].replace("_", "-").rstrip("-"))
    yield name
    controlplane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def render(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "inferkit", "render", *args], capture_output=True, text=True,
                            check=True)
    return result.stdout


# -- the API server's validation ----------------------------------------------------------------------


def _server_dry_run(controlplane, namespace: str, obj: dict) -> subprocess.CompletedProcess:
    where = [] if obj["metadata"].get("namespace") else ["-n", namespace]
    return controlplane.kubectl("apply", "--dry-run=server", *where, "-f", "-", stdin=json.dumps(obj), check=False)


def test_server_dry_run_agrees_with_the_version_table_on_every_golden_and_preset(controlplane, namespace, inferkit):
    """The real API server's CRD validation (strict field validation, CEL rules, formats) with the CRDs of the
    operator the tests run: a golden render that inferkit's version table (inferkit/kuberay.py) says this
    version lacks a field for is refused by the server for exactly those fields, every other one is accepted;
    so are the presets and every shape rendered for this version, by kubectl and by `submit --dry-run`."""
    version = controlplane.kuberay_version
    crd = json.loads(controlplane.kubectl("get", "crd", "rayjobs.ray.io", "-o", "json").stdout)
    assert version_of_crd(crd) == version
    controlplane.kubectl("create", "namespace", "ml-batch", check=False)  # the full-values golden's namespace
    refused_somewhere = False
    for golden in sorted(GOLDEN.glob("*.yaml")):
        obj = yaml.safe_load(golden.read_text())
        applied = _server_dry_run(controlplane, namespace, obj)
        lacking = [problem.split(": ", 1)[0] for problem in version_problems(obj, version)]
        if lacking:
            refused_somewhere = True
            assert applied.returncode == 1, golden.name
            assert sorted(re.findall(r'unknown field "([^"]+)"', applied.stderr)) == sorted(lacking), applied.stderr
        else:
            assert applied.stdout == f"{obj['kind'].lower()}.ray.io/{obj['metadata']['name']} created (server dry run)\n"
            assert applied.stderr == "", golden.name
    assert refused_somewhere == (version == "1.5")  # full-values sets preRunningDeadlineSeconds (1.6 and later)
    for preset in PRESETS:
        applied = controlplane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                                       stdin=render("--preset", preset, "--kuberay-version", version))
        assert applied.stdout == "rayjob.ray.io/inferkit created (server dry run)\n" and applied.stderr == ""
    shapes = [args for shape, args in SHAPES.items() if "--raycluster" not in args]
    for args in shapes + [["--preset", preset] for preset in PRESETS]:
        result = inferkit("submit", "--dry-run", *kube_args(controlplane, namespace), "--kuberay-version", version,
                          *args)
        if version == "1.5" and args is SHAPES["full-values"]:  # refused by render, before the cluster is asked
            assert result.code == 2 and "spec.preRunningDeadlineSeconds: KubeRay 1.5 has no such field" in result.stderr
            continue
        assert result.code == 0, (args, result.stderr)
        name = yaml.safe_load(result.stdout)["metadata"]["name"]
        assert f"dry run: RayJob {name} passed the pre-flight checks and the server-side dry run; nothing " \
               "created" in result.stderr
    assert controlplane.items("rayjobs.ray.io", namespace) == []


def test_submit_stops_on_an_operator_of_another_version(controlplane, namespace, inferkit):
    """The pre-flight reads the installed operator's version from its RayJob CRD and stops, before anything
    is created, when the render is for another one; with the right version it passes."""
    version = controlplane.kuberay_version
    other = next(v for v in reversed(VERSIONS) if v != version)
    result = inferkit("submit", "--dry-run", *kube_args(controlplane, namespace), "--cpu-nodes", "1",
                      "--kuberay-version", other)
    assert result.code == 3 and result.stdout == ""
    assert result.stderr.startswith(f"Error: the cluster runs KubeRay {version} (by its RayJob CRD), and this RayJob "
                                    f"is rendered for KubeRay {other}; pass --kuberay-version {version} (values key "
                                    "kuberayVersion)")
    assert len(result.stderr.splitlines()) == 1
    assert controlplane.items("rayjobs.ray.io", namespace) == []


def test_every_deletion_rules_example_is_what_the_server_says(controlplane, namespace):
    """values.yaml's deletion-rule examples, rendered (for the newest version, as a user copying them would)
    and server-side applied: refused by this operator's CRD for exactly the fields the version table names,
    accepted in the form the comment gives for 1.5."""
    version = controlplane.kuberay_version
    text = (chart.chart_dir() / "values.yaml").read_text()
    examples = re.findall(r"^  # (\[\{condition: .*\])\.?$", text, re.M)
    assert examples
    off = ["--set", "job.shutdownAfterJobFinishes=false", "--set", "job.ttlSecondsAfterFinished=0"]
    for example in examples:
        for rules in (example, example.replace("jobDeploymentStatus: Failed", "jobStatus: FAILED")):
            obj = yaml.safe_load(render(*off, "--set", f"job.deletionRules={rules}"))
            applied = _server_dry_run(controlplane, namespace, obj)
            lacking = [problem.split(": ", 1)[0] for problem in version_problems(obj, version)]
            assert sorted(re.findall(r'unknown field "([^"]+)"', applied.stderr)) == sorted(lacking), applied.stderr
            assert (applied.returncode == 0) == (not lacking), applied.stderr


def test_server_rejects_what_the_crd_forbids(controlplane, namespace):
    """The other way round: the API server refuses a field the CRD does not know (a typo is never
    pruned away silently under kubectl's strict field validation)."""
    obj = yaml.safe_load(render("--cpu-nodes", "1"))
    obj["spec"]["shutdownAfterJobFinish"] = True
    applied = controlplane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(obj),
                                   check=False)
    assert applied.returncode == 1
    assert 'unknown field "spec.shutdownAfterJobFinish"' in applied.stderr


def readme_commands() -> list[list[str]]:
    """The `inferkit render`/`submit` commands of README's code blocks, as render arguments (continuation
    lines joined; the pipe to kubectl and a values file of the user's own, prod.yaml, left out)."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for command in re.findall(r"^inferkit (?:render|submit) .*?(?<!\\)$", block.replace("\\\n", " "), re.M):
            words = shlex.split(command.split("|")[0])[2:]
            if "-f" in words:
                del words[words.index("-f"):words.index("-f") + 2]
            commands.append(words)
    return commands


def test_readme_examples_render_what_the_server_accepts(controlplane, namespace):
    """Every render and submit example in README, rendered for the operator the tests run and server-side
    applied."""
    commands = readme_commands()
    assert len(commands) >= 2, commands
    for words in commands:
        applied = controlplane.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                                       stdin=render(*words, "--kuberay-version", controlplane.kuberay_version))
        assert applied.returncode == 0 and applied.stderr == "", (words, applied.stderr)


# -- the operator's validation --------------------------------------------------------------------------


def test_operator_validation_failed_is_followed_to_its_end(controlplane, namespace, inferkit):
    """A spec the operator refuses (utils/validation.go: rayStartParams labels): inferkit refuses it before
    creating anything, with the operator's own rule; forced in with kubectl, the real operator marks it
    ValidationFailed and inferkit's follower (the one `submit` uses) ends on it with exit 1 and its words."""
    args = ["--name", "refused", "--cpu-nodes", "1", "--set", "cpuWorkers.rayStartParams.labels=team=a"]
    local = inferkit("submit", *submit_args(controlplane, namespace), *args)
    assert local.code == 2 and local.stdout == ""
    assert "rayStartParams.labels: not supported by KubeRay; use the group's labels field" in local.stderr
    assert controlplane.items("rayjobs.ray.io", namespace) == []

    obj = yaml.safe_load(render("--cpu-nodes", "1", "--name", "refused"))
    obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["rayStartParams"]["labels"] = "team=a"
    controlplane.kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(obj))
    result = inferkit("logs", "-f", "refused", "--timeout", "120", *kube_args(controlplane, namespace))
    assert result.code == 1, result.stderr
    assert result.stdout == ""
    assert ("RayJob refused: the operator refused the RayJob, so nothing ran: The RayJob spec is invalid: "
            "rayStartParams['labels'] is not supported for cpu-workers group") in result.stderr
    shown = inferkit("status", "refused", "-o", "json", *kube_args(controlplane, namespace))
    assert json.loads(shown.stdout)["jobDeploymentStatus"] == "ValidationFailed"
    assert controlplane.items("rayclusters.ray.io", namespace) == []


# -- the scheduler, quotas, priority classes ----------------------------------------------------------


def test_unschedulable_gpu_workers_time_out_with_the_schedulers_reason(controlplane, namespace, inferkit):
    """Four 1-GPU workers and two GPU nodes of one GPU each: two workers stay Pending, submit shows the
    scheduler's own reason (followed until both have been shown, then Ctrl-C); delete removes the RayJob
    and its cluster."""
    # The scheduler's own words: the GPU nodes are full, the CPU nodes have no nvidia.com/gpu.
    reason = "0/4 nodes are available: 2 Insufficient memory, 4 Insufficient nvidia.com/gpu."
    code, stderr = submit_until(controlplane, namespace, ["--name", "gpus", "--gpu-nodes", "4"],
                                lambda text: text.count(f": FailedScheduling: {reason}") == 2
                                and text.count(f"cannot be scheduled: {reason}") == 2)
    assert code == 130, stderr
    assert "warning: only 2 of the 4 GPU pods (1 x nvidia.com/gpu each) fit on the nodes that match (any node)" \
        in stderr
    assert "interrupted: stopped following; RayJob gpus keeps running." in stderr
    cluster = controlplane.get("rayjob", "gpus", namespace)["status"]["rayClusterName"]
    pending = [p for p in controlplane.items("pods", namespace, "-l", f"ray.io/cluster={cluster}")
               if p["status"]["phase"] == "Pending"]
    assert len(pending) == 2

    deleted = inferkit("delete", "gpus", "-y", *kube_args(controlplane, namespace))
    assert deleted.code == 0 and deleted.stderr.endswith(f" deleted RayJob gpus in namespace {namespace}\n")
    wait_until(lambda: controlplane.get("rayjob", "gpus", namespace) is None, 60, "the RayJob to go")
    wait_until(lambda: controlplane.get("raycluster", cluster, namespace) is None, 60, "its RayCluster to go")
    wait_until(lambda: not controlplane.items("pods", namespace, "-l", f"ray.io/cluster={cluster}"), 60,
               "its pods to go")


def test_resource_quota_refusal_shows_the_rayclusters_event(controlplane, namespace, inferkit):
    controlplane.kubectl("create", "quota", "two-pods", "--hard=pods=1", "-n", namespace)
    wait_until(lambda: (controlplane.get("resourcequota", "two-pods", namespace).get("status") or {}).get("hard"),
               60, "the quota controller to count the quota")
    code, stderr = submit_until(controlplane, namespace, ["--name", "quota", "--cpu-nodes", "2"],
                                lambda text: "(a ResourceQuota of the namespace is used up" in text)
    assert code == 130, stderr
    assert "FailedToCreateWorkerPod" in stderr
    assert "exceeded quota: two-pods, requested: pods=1, used: pods=1, limited: pods=1" in stderr


def test_missing_priority_class_shows_the_rayclusters_event(controlplane, namespace, inferkit):
    code, stderr = submit_until(controlplane, namespace, ["--name", "prio", "--cpu-nodes", "1", "--set",
                                                          "priorityClassName=no-such-class"],
                                lambda text: "(the PriorityClass does not exist: create it or fix priorityClassName)"
                                in text)
    assert code == 130, stderr
    assert "RayCluster prio-" in stderr and "FailedToCreateHeadPod" in stderr
    assert "no PriorityClass with name no-such-class was found" in stderr


# -- K8sJobMode as far as it goes without containers --------------------------------------------------


def test_k8s_job_mode_creates_cluster_pods_and_submitter_job(controlplane, namespace, inferkit):
    """kwok runs the head and worker pods (Running, Ready) without containers; the operator then
    creates the submitter Job, whose pod kwok completes without running `ray job submit`."""
    result = inferkit("submit", *submit_args(controlplane, namespace), "--name", "k8sjob", "--cpu-nodes", "2",
                      "--detach")
    assert result.code == 0, result.stderr
    assert f"created RayJob k8sjob in namespace {namespace} (context controlplane)" in result.stderr
    job = wait_until(lambda: controlplane.get("job", "k8sjob", namespace), 90, "the submitter Job")
    cluster = controlplane.get("rayjob", "k8sjob", namespace)["status"]["rayClusterName"]
    assert cluster.startswith("k8sjob-")
    pods = controlplane.items("pods", namespace, "-l", f"ray.io/cluster={cluster}")
    assert sorted(p["metadata"]["labels"]["ray.io/node-type"] for p in pods) == ["head", "worker", "worker"]
    assert all(p["status"]["phase"] == "Running" for p in pods)
    assert job["spec"]["template"]["spec"]["containers"][0]["name"] == "ray-job-submitter"

    listed = inferkit("list", *kube_args(controlplane, namespace))
    assert listed.code == 0 and listed.stdout.splitlines()[1].split()[0] == "k8sjob"
    shown = inferkit("status", "k8sjob", "-o", "json", *kube_args(controlplane, namespace))
    assert shown.code == 0 and json.loads(shown.stdout)["rayClusterName"] == cluster


# -- one job end to end through the operator and a real Ray ---------------------------------------------


@pytest.fixture
def ray_head(controlplane, tmp_path):
    """Function: a real `ray start --head` on the pod host (tests/controlplane.py's RayHead)."""
    head = RayHead(controlplane.pod_host, tmp_path).start()
    yield head
    head.stop()


def http_mode_values(tmp_path: Path) -> Path:
    """The output on a "mounted volume" whose path is the same on this machine, where the real Ray runs."""
    values = tmp_path / "http.yaml"
    values.write_text(yaml.safe_dump({
        "volumes": [{"name": "out", "hostPath": {"path": str(tmp_path)}}],
        "volumeMounts": [{"name": "out", "mountPath": str(tmp_path)}],
    }))
    return values


@pytest.fixture
def deletion_gate(controlplane, request):
    """The operator restarted with the RayJobDeletionPolicy feature gate on or off (indirect parameter), and
    with its version's defaults again afterwards."""
    controlplane.restart_operator(f"RayJobDeletionPolicy={request.param}")
    yield request.param
    controlplane.restart_operator()


SHUTDOWN_OFF = ["--set", "job.shutdownAfterJobFinishes=false", "--set", "job.ttlSecondsAfterFinished=0"]
# Deletion rules every supported version takes (jobStatus); the cluster is kept a few seconds after success
# so the follower reads the driver's last lines from the head first.
DELETE_AFTER_SUCCESS = ["--set", "job.deletionRules=[{condition: {jobStatus: SUCCEEDED, ttlSeconds: 5}, policy: "
                        "DeleteCluster}, {condition: {jobStatus: FAILED, ttlSeconds: 600}, policy: DeleteCluster}]"]


@pytest.mark.parametrize("deletion_gate", ["false"], indirect=True)
def test_deletion_rules_with_the_feature_gate_off_are_refused_by_the_operator(controlplane, namespace, inferkit,
                                                                            deletion_gate):
    """With RayJobDeletionPolicy off (1.5's default) the real operator refuses any deletion strategy
    (ValidationFailed, its own words) and the follower ends on it with exit 1; render warned on 1.5."""
    result = inferkit("submit", *submit_args(controlplane, namespace), "--name", "gated", "--cpu-nodes", "1",
                      *SHUTDOWN_OFF, *DELETE_AFTER_SUCCESS, "--timeout", "120")
    assert result.code == 1, result.stderr
    assert ("RayJob gated: the operator refused the RayJob, so nothing ran: RayJobDeletionPolicy feature gate must be "
            "enabled to use DeletionStrategy") in result.stderr
    warned = "RayJobDeletionPolicy feature gate, which is off by default there" in result.stderr
    assert warned == (controlplane.kuberay_version == "1.5")
    assert controlplane.items("rayclusters.ray.io", namespace) == []


@pytest.mark.ray
@pytest.mark.parametrize("deletion_gate", ["true"], indirect=True)
def test_http_mode_job_runs_through_the_operator_on_a_real_ray(controlplane, namespace, inferkit, ray_head, tmp_path,
                                                             deletion_gate):
    """The bundled demo, submitted by the operator to a real Ray, followed to SUCCEEDED; its deletion rule
    (the gate on) then deletes the RayCluster."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    result = inferkit("submit", *submit_args(controlplane, namespace), "--name", "e2e", "--cpu-nodes", "1",
                      "-f", str(http_mode_values(tmp_path)), "--set", "job.submissionMode=HTTPMode",
                      *SHUTDOWN_OFF, *DELETE_AFTER_SUCCESS, "--output", str(out), "--timeout", "600")
    assert result.code == 0, result.stderr
    cluster = controlplane.get("rayjob", "e2e", namespace)["status"]["rayClusterName"]
    wait_until(lambda: controlplane.get("raycluster", cluster, namespace) is None, 120,
               "the deletion rule to delete the RayCluster")
    assert "RayJob e2e: deployment Complete, job SUCCEEDED\n" in result.stderr
    assert "RayJob e2e: the job succeeded" in result.stderr
    # The driver's log, read from the head's dashboard through the API server's service proxy.
    assert "Running entrypoint for job e2e-" in result.stdout and f"inferkit run --output {out}\n" in result.stdout
    assert result.stdout.count("done: 100 rows, 0 with errors (0.00%)") == 1
    assert f"-> {controlplane.pod_host}:8265" in controlplane.log("pod-network")
    assert (out / "_SUCCESS").exists()
    assert sorted(pq.read_table(out, columns=["id"]).column("id").to_pylist()) == sample_ids()


@pytest.mark.ray
def test_http_mode_job_whose_entrypoint_fails_exits_1_with_the_reason(controlplane, namespace, inferkit, ray_head,
                                                                     tmp_path):
    missing = tmp_path / "no-such-input.jsonl"
    result = inferkit("submit", *submit_args(controlplane, namespace), "--name", "broken", "--cpu-nodes", "1",
                      "-f", str(http_mode_values(tmp_path)), "--set", "job.submissionMode=HTTPMode",
                      "--input", str(missing), "--output", str(tmp_path / "out"), "--timeout", "600")
    assert result.code == 1, result.stderr
    refusal = f"Error: --input {missing}: no such file or folder"
    assert result.stdout.count(refusal + "\n") == 1
    assert ("RayJob broken: the job failed (deployment Failed, job FAILED): AppFailed: Job entrypoint command failed "
            "with exit code 2") in result.stderr
    # The operator's message carries the end of the driver's log (Ray's job_supervisor.py): streamed on stdout
    # already, so stderr tells only the reason and where the whole log is.
    assert refusal not in result.stderr
    assert f"; the driver's log: inferkit logs broken -n {namespace}" in result.stderr
    assert not (tmp_path / "out").exists()


def sample_ids() -> list[str]:
    from inferkit.job.run import SAMPLE

    return sorted(json.loads(line)["id"] for line in SAMPLE.read_text().splitlines() if line.strip())


@pytest.mark.parametrize("host", ["10.0.0.1", "127.evil.example", "0.0.0.0"])
def test_the_pod_host_can_only_be_loopback(host, tmp_path):
    """Pod traffic and the operator's head URL go to INFERKIT_POD_HOST: nothing but loopback is accepted."""
    script = Path(__file__).parents[1] / "scripts" / "controlplane.sh"
    done = subprocess.run(["bash", str(script), "env", str(tmp_path)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "INFERKIT_POD_HOST": host})
    assert done.returncode == 2 and "must be a loopback address" in done.stderr, done.stderr
