"""`inferkit render`: golden renders of the main shapes, and what every render must be."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from inferkit import RAY_VERSION
from inferkit.validate import kuberay_rules, schema_problems
from shapes import FULL_VALUES, GOLDEN, SHAPES

def _containers(obj: dict):
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec", spec)
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster.get("workerGroupSpecs", [])]
    if "submitterPodTemplate" in spec:
        pods.append(spec["submitterPodTemplate"])
    for pod in pods:
        yield pod, pod["spec"]["containers"]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_golden_render(shape, inferkit, update_golden):
    result = inferkit("render", *SHAPES[shape])
    assert result.code == 0, result.stderr
    golden = GOLDEN / f"{shape}.yaml"
    if update_golden:
        golden.write_text(result.stdout, encoding="utf-8")
    assert result.stdout == golden.read_text(encoding="utf-8"), "render changed; INFERKIT_UPDATE_GOLDEN=1 to accept"
    assert kuberay_rules(yaml.safe_load(result.stdout)) == []


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_golden_render_fits_the_crd_schema(shape, crd_schemas):
    """The only part that needs the KubeRay CRDs from ../shared (skipped, saying why, without them)."""
    assert schema_problems(yaml.safe_load((GOLDEN / f"{shape}.yaml").read_text(encoding="utf-8")), crd_schemas) == []


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_container_requests_equal_limits_and_runs_as_non_root(shape, inferkit):
    obj = yaml.safe_load(inferkit("render", *SHAPES[shape]).stdout)
    for pod, containers in _containers(obj):
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in containers:
            resources = container["resources"]
            assert resources["requests"] == resources["limits"], container["name"]
            assert {"cpu", "memory"} <= set(resources["limits"])
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    cluster = obj["spec"].get("rayClusterSpec", obj["spec"])
    if cluster.get("enableInTreeAutoscaling"):
        autoscaler = cluster["autoscalerOptions"]["resources"]
        assert autoscaler["requests"] == autoscaler["limits"]


def test_gpu_nodes_give_a_pinned_gpu_group_with_toleration(inferkit):
    obj = yaml.safe_load(inferkit("render", "--gpu-nodes", "4", "--gpus-per-node", "2").stdout)
    cluster = obj["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == RAY_VERSION
    (group,) = cluster["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (4, 4, 4)
    assert "enableInTreeAutoscaling" not in cluster
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "nodeSelector" not in pod  # no GPU type asked for: any GPU node


@pytest.mark.parametrize(("args", "label", "value"), [
    (["--gpu-type", "NVIDIA-A100-SXM4-80GB"], "nvidia.com/gpu.product", "NVIDIA-A100-SXM4-80GB"),
    (["--preset", "gke-gpu"], "cloud.google.com/gke-accelerator", "nvidia-l4"),
    (["--preset", "gke-gpu", "--gpu-type", "nvidia-tesla-t4"], "cloud.google.com/gke-accelerator", "nvidia-tesla-t4"),
    (["--preset", "eks-gpu"], "karpenter.k8s.aws/instance-gpu-name", "a10g"),
])
def test_gpu_type_selects_the_accelerator_label(inferkit, args, label, value):
    obj = yaml.safe_load(inferkit("render", "--gpu-nodes", "1", *args).stdout)
    pod = obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["nodeSelector"] == {label: value}


def test_cpu_only_render_mentions_no_gpu(inferkit):
    for args in (["--cpu-nodes", "3"], ["--preset", "kind"], ["--cpu-nodes", "1:5", "--raycluster"]):
        result = inferkit("render", *args)
        assert result.code == 0
        assert "nvidia.com/gpu" not in result.stdout
        assert "gpu-workers" not in result.stdout


def test_cpu_and_gpu_groups_coexist_with_autoscaling(inferkit):
    obj = yaml.safe_load(inferkit("render", "--cpu-nodes", "2", "--gpu-nodes", "0:6").stdout)
    cluster = obj["spec"]["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert (groups["cpu-workers"]["minReplicas"], groups["cpu-workers"]["maxReplicas"]) == (2, 2)
    assert (groups["gpu-workers"]["replicas"], groups["gpu-workers"]["minReplicas"],
            groups["gpu-workers"]["maxReplicas"]) == (0, 0, 6)


@pytest.mark.parametrize(("args", "entrypoint"), [
    (["--gpu-nodes", "0:4"], "inferkit run --device gpu --actors 1:4"),
    (["--gpu-nodes", "2:8", "--gpus-per-node", "2", "--cpu-nodes", "1"], "inferkit run --device gpu --actors 4:16"),
    (["--cpu-nodes", "1:5", "--cpus-per-node", "16"], "inferkit run --actors 2:10 --num-cpus-per-actor 7"),
    # half of 2Gi holds one actor's worker (1 GiB), so one actor of every inference CPU a pod
    (["--cpu-nodes", "1:5", "--cpus-per-node", "16", "--memory-per-node", "2Gi"],
     "inferkit run --actors 1:5 --num-cpus-per-actor 14"),
    (["--cpu-nodes", "1:5", "--actors", "3:4"], "inferkit run --actors 3:4"),
    (["--gpu-nodes", "4"], "inferkit run"),
])
def test_autoscaling_bounds_reach_the_job(inferkit, args, entrypoint):
    """The job's actor pool must be allowed to outgrow the pods present, or the autoscaler never adds any."""
    obj = yaml.safe_load(inferkit("render", *args).stdout)
    assert obj["spec"]["entrypoint"] == entrypoint


def test_head_runs_no_work(inferkit):
    obj = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--set", "head.rayStartParams.dashboard-host=0.0.0.0").stdout)
    params = obj["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert params == {"dashboard-host": "0.0.0.0", "num-cpus": "0"}


def test_rayjob_lifecycle_settings(inferkit):
    obj = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--set", "job.ttlSecondsAfterFinished=30",
                                  "--set", "job.activeDeadlineSeconds=3600", "--set", "job.backoffLimit=2").stdout)
    spec = obj["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert (spec["ttlSecondsAfterFinished"], spec["activeDeadlineSeconds"], spec["backoffLimit"]) == (30, 3600, 2)
    assert spec["entrypoint"] == "inferkit run"
    assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


def test_raycluster_has_no_job_fields(inferkit):
    obj = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--raycluster", "--name", "c" * 53).stdout)
    assert obj["kind"] == "RayCluster"
    assert "entrypoint" not in obj["spec"] and "rayClusterSpec" not in obj["spec"]
    assert obj["metadata"]["name"] == "c" * 53


def test_secrets_are_referenced_never_inlined(inferkit):
    obj = yaml.safe_load(inferkit("render", "-f", FULL_VALUES).stdout)
    for _pod, containers in _containers(obj):
        for container in containers:
            for var in container.get("env", []):
                if var["name"] == "HF_TOKEN":
                    assert "value" not in var
                    assert var["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_queue_and_gang_labels(inferkit):
    kueue = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--set", "scheduling.kueueQueue=team-a").stdout)
    assert kueue["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert kueue["spec"]["suspend"] is True
    volcano = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--set", "scheduling.volcanoQueue=q",
                                      "--set", "scheduling.gangScheduling=true").stdout)
    labels = volcano["metadata"]["labels"]
    assert labels["volcano.sh/queue-name"] == "q" and labels["ray.io/gang-scheduling-enabled"] == "true"
    yunikorn = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--name", "nightly",
                                       "--set", "scheduling.yunikornQueue=root.ml").stdout)
    labels = yunikorn["metadata"]["labels"]
    assert labels["yunikorn.apache.org/queue"] == "root.ml"
    # YuniKorn gangs one job's pods by app id, copied from the RayCluster (whose labels are the RayJob's)
    assert labels["yunikorn.apache.org/app-id"] == "nightly"
    # KubeRay 1.7 takes the scheduler from the operator's --batch-scheduler; it reads no per-job label
    for obj in (kueue, volcano, yunikorn):
        assert "ray.io/scheduler-name" not in obj["metadata"]["labels"]


def _kuberay_pod_labels(cluster: str, node_type: str, template_labels: dict) -> dict:
    """The labels the operator gives a Ray pod (common/pod.go, labelPod): its own, then the template's
    on top, except the three it never lets a template change."""
    labels = {"ray.io/is-ray-node": "yes", "ray.io/cluster": cluster, "ray.io/node-type": node_type,
              "ray.io/identifier": f"{cluster}-{node_type}", "app.kubernetes.io/name": "kuberay",
              "app.kubernetes.io/created-by": "kuberay-operator"}
    kept = ("ray.io/node-type", "ray.io/group", "ray.io/cluster")
    return labels | {k: v for k, v in template_labels.items() if k not in kept}


@pytest.mark.parametrize("shape", sorted(s for s in SHAPES if s != "eks-raycluster"))
def test_the_rayjobs_head_service_selects_the_head_pod(shape, inferkit):
    """`<rayjob>-head-svc` selects KubeRay's default head labels (common/job.go, BuildHeadServiceForRayJob;
    common/service.go, HeadServiceLabels): the head pod must still carry them, or the Service has no
    endpoints and `kubectl port-forward svc/<rayjob>-head-svc` fails."""
    obj = yaml.safe_load(inferkit("render", *SHAPES[shape]).stdout)
    cluster = obj["metadata"]["name"] + "-abcde"
    selector = {"ray.io/cluster": cluster, "ray.io/node-type": "head", "ray.io/identifier": f"{cluster}-head",
                "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"}
    template = obj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["metadata"]["labels"]
    head = _kuberay_pod_labels(cluster, "head", template)
    assert selector.items() <= head.items()
    assert template["app.kubernetes.io/part-of"] == "inferkit"
    assert template["inferkit.dev/job"] == obj["metadata"]["name"]


def test_runtime_env_reaches_the_job_unchanged_or_is_refused(inferkit):
    """In K8sJobMode the operator quotes the runtime env for `ray job submit` and runs it under `bash -c`
    (common/job.go, BuildJobSubmitCommand): quotes and backslashes arrive unchanged, `$` and backticks
    would be expanded, so render refuses them there. HTTPMode sends JSON over HTTP: no shell."""
    quoted = 'say "hi" \\ done'
    obj = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--set",
                                  f"job.runtimeEnv.env_vars.GREETING={quoted}").stdout)
    assert yaml.safe_load(obj["spec"]["runtimeEnvYAML"]) == {"env_vars": {"GREETING": 'say "hi" \\ done'}}
    refused = inferkit("render", "--cpu-nodes", "1", "--set", "job.runtimeEnv.env_vars.GREETING=$HOME `echo x` \"q\"")
    assert refused.code == 2 and refused.stdout == ""
    assert "job.runtimeEnv.env_vars.GREETING: '$HOME `echo x` \"q\"' holds '$' and '`'" in refused.stderr
    http = inferkit("render", "--cpu-nodes", "1", "--set", "job.submissionMode=HTTPMode",
                    "--set", "job.runtimeEnv.env_vars.GREETING=$HOME")  # sent as JSON over HTTP: no shell
    assert http.code == 0, http.stderr


def test_redis_settings_are_refused_as_the_operator_does(inferkit):
    """utils/validation.go, ValidateRayClusterSpec: RAY_REDIS_ADDRESS needs GCS fault tolerance, and the
    fix render names (the ray.io/ft-enabled annotation) passes; with gcsFaultToleranceOptions (even empty)
    the same env is refused, and so is the annotation beside it."""
    obj = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", "--set", "env=[{name: RAY_REDIS_ADDRESS, value: r}]",
                                  "--set", "annotations.ray\\.io/ft-enabled=TRUE").stdout)
    assert kuberay_rules(obj) == []
    obj["spec"]["rayClusterSpec"]["gcsFaultToleranceOptions"] = {}
    assert kuberay_rules(obj) == [
        "spec.rayClusterSpec.gcsFaultToleranceOptions: KubeRay refuses it together with the ray.io/ft-enabled "
        "annotation; use only one of them",
        "spec.rayClusterSpec.headGroupSpec: KubeRay refuses env RAY_REDIS_ADDRESS together with "
        "gcsFaultToleranceOptions (set them in gcsFaultToleranceOptions instead)"]
    del obj["metadata"]["annotations"]["ray.io/ft-enabled"]  # the empty options alone turn fault tolerance on
    assert [p.split(": ")[1] for p in kuberay_rules(obj)] == ["KubeRay refuses env RAY_REDIS_ADDRESS together with "
                                                              "gcsFaultToleranceOptions (set them in "
                                                              "gcsFaultToleranceOptions instead)"]
    obj["metadata"]["annotations"]["ray.io/ft-enabled"] = "false"
    del obj["spec"]["rayClusterSpec"]["gcsFaultToleranceOptions"]
    assert [p.split(": ")[1] for p in kuberay_rules(obj)] == ["env RAY_REDIS_ADDRESS turns on GCS fault tolerance, "
                                                              "which KubeRay refuses unless it is enabled"]


def _deletion_values(rules: str) -> list[str]:
    return ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false", "--set", "job.ttlSecondsAfterFinished=0",
            "--set", f"job.deletionRules={rules}"]


def test_deletion_rules_that_keep_a_finished_cluster_warn(inferkit):
    failed_only = inferkit("render", *_deletion_values("[{condition: {jobStatus: FAILED, ttlSeconds: 600}, "
                                                       "policy: DeleteCluster}]"))
    assert failed_only.code == 0 and failed_only.stdout.startswith("apiVersion: ray.io/v1")
    assert "warning: job.deletionRules: no DeleteCluster or DeleteSelf rule covers a job that succeeds" in \
        failed_only.stderr
    assert "covers jobDeploymentStatus Failed (a jobStatus FAILED rule misses DeadlineExceeded" in failed_only.stderr


def test_the_documented_deletion_rules_example_removes_every_finished_cluster(inferkit):
    values = (Path(__file__).parents[1] / "charts" / "inferkit" / "values.yaml").read_text()
    example = re.search(r"^ *# (\[\{condition.*\}\])\.$", values, re.MULTILINE).group(1)
    result = inferkit("render", *_deletion_values(example))
    assert result.code == 0, result.stderr
    assert "warning" not in result.stderr


def test_layers_override_in_order(inferkit, tmp_path):
    """defaults < preset < values files < --set < flags, checked one layer at a time."""
    first = tmp_path / "a.yaml"
    first.write_text("cpuWorkers: {cpu: '3'}\n")
    second = tmp_path / "b.yaml"
    second.write_text("cpuWorkers: {cpu: '4'}\n")

    def worker_cpu(*args: str) -> str:
        obj = yaml.safe_load(inferkit("render", "--cpu-nodes", "1", *args).stdout)
        return obj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
            "resources"]["limits"]["cpu"]

    assert worker_cpu() == "8"
    assert worker_cpu("--preset", "kind") == "1"
    assert worker_cpu("--preset", "kind", "-f", str(first)) == "3"
    assert worker_cpu("--preset", "kind", "-f", str(first), "-f", str(second)) == "4"
    assert worker_cpu("--preset", "kind", "-f", str(second), "--set", "cpuWorkers.cpu=5") == "5"
    assert worker_cpu("--preset", "kind", "-f", str(second), "--set", "cpuWorkers.cpu=5", "--cpus-per-node", "6") == "6"


def test_json_output_is_the_same_object(inferkit):
    as_yaml = yaml.safe_load(inferkit("render", "--gpu-nodes", "2").stdout)
    as_json = json.loads(inferkit("render", "--gpu-nodes", "2", "-o", "json").stdout)
    assert as_json == as_yaml


def test_out_dir_writes_a_file_headed_by_its_command(inferkit, tmp_path):
    result = inferkit("render", "--gpu-nodes", "4", "--out-dir", str(tmp_path))
    assert result.code == 0 and result.stdout == ""
    written = (tmp_path / "inferkit-rayjob.yaml").read_text()
    assert written.splitlines()[1] == f"#   inferkit render --gpu-nodes 4 --out-dir {tmp_path}"
    assert yaml.safe_load(written) == yaml.safe_load(inferkit("render", "--gpu-nodes", "4").stdout)


def test_entrypoint_carries_job_arguments(inferkit):
    obj = yaml.safe_load(inferkit("render", *SHAPES["full-values"]).stdout)
    assert obj["spec"]["entrypoint"] == (
        "inferkit run --task image-classification --model google/vit-base-patch16-224 --model microsoft/resnet-50 "
        "--input s3://bucket/images --output s3://bucket/out --batch-size 64 --max-error-fraction 0.05")


def test_crd_dir_from_environment(inferkit, crd_dir, monkeypatch, capsys):
    monkeypatch.setenv("INFERKIT_CRD_DIR", crd_dir)
    from inferkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["render", "--cpu-nodes", "1", "--set", "head.affinity={nodeAfinity: {}}"])
    assert exit_info.value.code == 2
    assert "unknown field 'nodeAfinity'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "value"), [
    ("500m", "0.5"), ("2", "2"), ("1.5Gi", str(3 * 2**29)), ("1Ei", str(2**60)), ("1E", str(10**18)),
    ("1e3", "1000"), ("2E2", "200"), ("100n", "1E-7"), ("5u", "0.000005"), ("16k", "16000"),
])
def test_every_kubernetes_quantity_suffix(text, value):
    from decimal import Decimal

    from inferkit.config import parse_quantity

    assert parse_quantity(text) == Decimal(value)


def test_dates_in_free_form_values_stay_text(inferkit):
    result = inferkit("render", "--cpu-nodes", "1", "-o", "json",
                      "--set", "cpuWorkers.tolerations=[{key: since, operator: Equal, value: 2020-01-01}]")
    assert result.code == 0, result.stderr
    group = json.loads(result.stdout)["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert {"key": "since", "operator": "Equal", "value": "2020-01-01"} in group["template"]["spec"]["tolerations"]
