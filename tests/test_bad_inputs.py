"""Every bad input: exit code 2, one clear `Error:` on stderr, nothing on stdout, no traceback."""

from __future__ import annotations

import pytest

LONG_47 = "a" * 47

# (id, arguments, text the error must contain). Values files are written by the test from VALUES.
CASES = [
    ("no-workers", ["--cpu-nodes", "0"], "no worker nodes"),
    ("negative-gpu-nodes", ["--gpu-nodes", "-1"], "gpuWorkers.replicas: must not be negative"),
    ("gpu-nodes-not-a-number", ["--gpu-nodes", "x"], "--gpu-nodes 'x' is not N or MIN:MAX with whole numbers"),
    ("gpu-nodes-loose-number", ["--gpu-nodes", "1_0"], "--gpu-nodes '1_0' is not N or MIN:MAX with whole numbers"),
    ("empty-out-dir", ["--cpu-nodes", "1", "--out-dir", ""], "Invalid value for --out-dir: must name a folder"),
    ("gpu-nodes-range-reversed", ["--gpu-nodes", "8:2"], "need minReplicas <= replicas <= maxReplicas"),
    ("zero-gpus-per-node", ["--gpu-nodes", "1", "--gpus-per-node", "0"], "gpuWorkers.gpusPerNode: must be at least 1"),
    ("empty-image", ["--cpu-nodes", "1", "--image", ""], "image.cpu: must not be empty"),
    ("bad-cpu-quantity", ["--cpu-nodes", "1", "--cpus-per-node", "2x"], "'2x' is not a Kubernetes quantity"),
    ("negative-memory", ["--cpu-nodes", "1", "--memory-per-node", "-4Gi"], "cpuWorkers.memory: '-4Gi' is too small"),
    ("memory-in-millis", ["--cpu-nodes", "1", "--memory-per-node", "500m"],
     "cpuWorkers.memory: '500m' is too small (memory takes Mi or Gi"),
    ("zero-cpu", ["--cpu-nodes", "1", "--cpus-per-node", "0"], "cpuWorkers.cpu: '0' is too small; at least 1m"),
    ("env-value-not-string", ["--cpu-nodes", "1", "--set", "env=[{name: WORKERS, value: 4}]"],
     "env[0] (WORKERS): value must be a string, not 4 (quote it)"),
    ("list-item-blamed-on-its-file", ["--cpu-nodes", "1", "-f", "{bad_toleration}"],
     "head.tolerations[0]: must be a map, not 5 [values file"),
    ("store-uri-options", ["--cpu-nodes", "1", "--set", "run.output=s3://b/out?region=eu-west-1"],
     "run.output: 's3://b/out?region=eu-west-1': options in a store's URI are not taken"),
    ("name-not-dns", ["--cpu-nodes", "1", "--name", "Bad_Name"], "is not a DNS-1035 label"),
    ("name-starts-with-digit", ["--cpu-nodes", "1", "--name", "1job"], "is not a DNS-1035 label"),
    ("rayjob-name-too-long", ["--cpu-nodes", "1", "--name", LONG_47 + "b"], "a RayJob name may have at most 47"),
    ("raycluster-name-too-long", ["--cpu-nodes", "1", "--raycluster", "--name", "c" * 54],
     "a RayCluster name may have at most 53"),
    ("bad-namespace", ["--cpu-nodes", "1", "-n", "Team_A"], "namespace: 'Team_A' is not a valid namespace"),
    ("unknown-set-key", ["--cpu-nodes", "1", "--set", "nosuch=1"], "nosuch: unknown key [--set]"),
    ("set-typo-suggests", ["--cpu-nodes", "1", "--set", "gpuWorkers.replica=1"], "did you mean 'replicas'?"),
    ("set-not-into-scalar", ["--cpu-nodes", "1", "--set", "name.x=1"], "name is not a map"),
    ("set-without-equals", ["--cpu-nodes", "1", "--set", "cpuWorkers.replicas"], "expected key.path=value"),
    ("set-wrong-type", ["--gpu-nodes", "1", "--set", "cpuWorkers.replicas=two"],
     "cpuWorkers.replicas: must be a whole number, not 'two' [--set]"),
    ("set-bool-wrong-type", ["--cpu-nodes", "1", "--set", "job.suspend=maybe"], "job.suspend: must be true or false"),
    ("set-bad-yaml", ["--cpu-nodes", "1", "--set", "head.tolerations=[a"], "value is not valid YAML"),
    ("set-bad-enum", ["--cpu-nodes", "1", "--set", "job.submissionMode=Batch"], "must be one of 'K8sJobMode'"),
    ("ttl-needs-shutdown", ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false"],
     "ttlSecondsAfterFinished: needs shutdownAfterJobFinishes: true"),
    ("suspend-needs-shutdown", ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false",
                                "--set", "job.ttlSecondsAfterFinished=0", "--set", "job.suspend=true"],
     "can be suspended (Kueue) only with shutdownAfterJobFinishes: true"),
    ("ray-resources-twice", ["--cpu-nodes", "1", "--set", "cpuWorkers.rayStartParams.memory=1000",
                             "--set", "cpuWorkers.rayResources.memory=1000"], "set in both rayStartParams and resources"),
    ("ray-gpus-by-hand", ["--cpu-nodes", "1", "--set", "cpuWorkers.rayStartParams.num-gpus=1"],
     "cpuWorkers.rayStartParams.num-gpus: KubeRay takes it from the container's nvidia.com/gpu limit"),
    ("sidecar-mode", ["--cpu-nodes", "1", "--set", "job.submissionMode=SidecarMode"],
     "job.submissionMode: SidecarMode makes KubeRay add a submitter sidecar whose requests are below its limits"),
    ("secret-in-runtime-env", ["--cpu-nodes", "1", "--set", "job.runtimeEnv.env_vars.HF_TOKEN=hf_abc"],
     "job.runtimeEnv.env_vars.HF_TOKEN: a credential must not be inlined"),
    ("gpu-device-without-gpus", ["--cpu-nodes", "1", "--device", "gpu"], "--device: 'gpu' needs GPU workers"),
    ("actor-bigger-than-a-node", ["--gpu-nodes", "1", "--gpus-per-node", "2", "--num-gpus-per-actor", "3"],
     "--num-gpus-per-actor: 3 is more than a GPU node has (2)"),
    ("infinite-cpus", ["--cpu-nodes", "1", "--num-cpus-per-actor", "inf"], "--num-cpus-per-actor: must be a finite number, not inf"),
    ("int32-overflow", ["--cpu-nodes", "3000000000"],
     "cpuWorkers.replicas: must be between -2147483648 and 2147483647, not 3000000000"),
    ("queue-not-a-label", ["--cpu-nodes", "1", "--set", "scheduling.kueueQueue=team queue"],
     "metadata.labels.kueue.x-k8s.io/queue-name: 'team queue': a label value has at most 63"),
    ("gpu-type-not-a-label", ["--gpu-nodes", "1", "--gpu-type", "NVIDIA A100 80GB"],
     "nodeSelector.nvidia.com/gpu.product: 'NVIDIA A100 80GB': a label value"),
    ("service-account-not-dns", ["--cpu-nodes", "1", "--set", "serviceAccountName=Bad_SA"],
     "serviceAccountName: 'Bad_SA' is not a DNS subdomain"),
    ("head-must-run-no-work", ["--cpu-nodes", "1", "--set", "head.rayStartParams.num-cpus=2"],
     "the head runs no work"),
    ("ray-start-labels", ["--cpu-nodes", "1", "--set", "cpuWorkers.rayStartParams.labels=a=b"],
     "rayStartParams.labels: not supported by KubeRay"),
    ("negative-ttl", ["--cpu-nodes", "1", "--set", "job.ttlSecondsAfterFinished=-5"],
     "job.ttlSecondsAfterFinished: must not be negative"),
    ("zero-deadline", ["--cpu-nodes", "1", "--set", "job.activeDeadlineSeconds=0"],
     "job.activeDeadlineSeconds: must be greater than 0"),
    ("negative-backoff", ["--cpu-nodes", "1", "--set", "job.backoffLimit=-1"], "job.backoffLimit: must not be negative"),
    ("deletion-rules-need-no-shutdown", ["--cpu-nodes", "1", "--set",
                                         "job.deletionRules=[{condition: {jobStatus: FAILED}, policy: DeleteCluster}]"],
     "set job.shutdownAfterJobFinishes to false to use deletion rules"),
    ("deletion-rule-two-conditions", ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false",
                                      "--set", "job.ttlSecondsAfterFinished=0", "--set",
                                      "job.deletionRules=[{condition: {jobStatus: FAILED, jobDeploymentStatus: Failed},"
                                      " policy: DeleteCluster}]"],
     "needs exactly one of jobStatus and jobDeploymentStatus"),
    ("deletion-rule-ttl-as-text", ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false",
                                   "--set", "job.ttlSecondsAfterFinished=0", "--set",
                                   "job.deletionRules=[{condition: {jobStatus: FAILED, ttlSeconds: '600'}, "
                                   "policy: DeleteCluster}]"],
     "condition.ttlSeconds: must be a whole number of seconds, not '600'"),
    ("deletion-rule-not-a-map", ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false",
                                 "--set", "job.ttlSecondsAfterFinished=0", "--set",
                                 "job.deletionRules=[{condition: FAILED, policy: DeleteCluster}]"],
     "deletionRules[0]: needs a `condition` map and a `policy`"),
    ("inlined-secret", ["--cpu-nodes", "1", "--set", "env=[{name: HF_TOKEN, value: hf_abc}]"],
     "env[0] (HF_TOKEN): a credential must not be inlined"),
    ("inlined-aws-key", ["--cpu-nodes", "1", "--set", "env=[{name: AWS_SECRET_ACCESS_KEY, value: x}]"],
     "a credential must not be inlined"),
    ("bad-label-key", ["--cpu-nodes", "1", "--set", "labels.bad key=v"], "labels: key 'bad key' is invalid"),
    ("bad-label-value", ["--cpu-nodes", "1", "--set", "labels.team=-bad-"], "labels.team: '-bad-' is invalid"),
    ("label-value-not-string", ["--cpu-nodes", "1", "-f", "{label_number}"], "labels.version: must be a string"),
    ("two-queues", ["--cpu-nodes", "1", "--set", "scheduling.kueueQueue=q", "--set", "scheduling.volcanoQueue=v"],
     "choose one queueing system"),
    ("gpu-type-without-label", ["--gpu-nodes", "1", "--gpu-type", "nvidia-l4", "--set", "gpuWorkers.acceleratorLabel="],
     "gpuWorkers.acceleratorLabel: must name the node label"),
    ("unknown-preset", ["--preset", "nope"], "--preset 'nope': no such preset (have: eks-gpu, gke-gpu, kind)"),
    ("input-without-output", ["--cpu-nodes", "1", "--input", "s3://bucket/in"], "run.output: required with --input"),
    ("output-inside-pod", ["--cpu-nodes", "1", "--output", "/tmp/out"], "would vanish with them"),
    ("zero-batch", ["--cpu-nodes", "1", "--batch-size", "0"], "--batch-size: must be at least 1"),
    ("actors-reversed", ["--cpu-nodes", "1", "--actors", "3:1"], "--actors: '3:1': need 1 <= MIN <= MAX"),
    ("actors-garbage", ["--cpu-nodes", "1", "--actors", "many"], "--actors: 'many' is not N or MIN:MAX"),
    ("error-fraction-above-one", ["--cpu-nodes", "1", "--max-error-fraction", "2"], "--max-error-fraction: must be between 0 and 1"),
    ("zero-cpus-per-actor", ["--cpu-nodes", "1", "--num-cpus-per-actor", "0"], "--num-cpus-per-actor: must be greater than 0"),
    ("empty-model", ["--cpu-nodes", "1", "--model", " "], "--model: is empty"),
    ("bad-task", ["--cpu-nodes", "1", "--task", "translation"], "Invalid value for '--task'"),
    ("job-args-on-raycluster", ["--cpu-nodes", "1", "--raycluster", "--task", "image-classification"],
     "job arguments need a RayJob"),
    ("unknown-flag", ["--gpu-node", "2"], "No such option '--gpu-node'"),
    ("bad-format", ["--cpu-nodes", "1", "-o", "xml"], "Invalid value for '-o' / '--format'"),
    ("missing-values-file", ["--cpu-nodes", "1", "-f", "/nonexistent/values.yaml"],
     "values file /nonexistent/values.yaml: cannot read"),
    ("values-file-not-yaml", ["-f", "{not_yaml}"], "line 3: expected the node content"),
    ("values-file-a-list", ["-f", "{a_list}"], "must be a map of keys to values"),
    ("values-file-unknown-key", ["-f", "{unknown_key}"], "gpuWorker: unknown key (did you mean 'gpuWorkers'?)"),
    ("values-file-wrong-type", ["-f", "{wrong_type}"], "cpuWorkers.replicas: must be a whole number, not '3'"),
    ("values-file-nul", ["--cpu-nodes", "1", "-f", "{nul}"], "run.output: contains a NUL character"),
    ("missing-crd-dir", ["--cpu-nodes", "1", "--crd-dir", "/nonexistent/crds"], "--crd-dir /nonexistent/crds: no such"),
    ("crd-dir-without-crds", ["--cpu-nodes", "1", "--crd-dir", "{a_list}"], "no ray.io v1 CustomResourceDefinition"),
    # What the KubeRay v1.7.0 operator (utils/validation.go, rayjob_controller.go) or Kueue would refuse or
    # never finish, refused at render time.
    ("interactive-mode", ["--cpu-nodes", "1", "--set", "job.submissionMode=InteractiveMode"],
     "spec.submissionMode: InteractiveMode never runs the entrypoint"),
    ("deletion-ttls-out-of-order", ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false",
                                    "--set", "job.ttlSecondsAfterFinished=0", "--set",
                                    "job.deletionRules=[{condition: {jobStatus: FAILED, ttlSeconds: 600}, policy: "
                                    "DeleteCluster}, {condition: {jobStatus: FAILED, ttlSeconds: 60}, policy: DeleteSelf}]"],
     "deletionRules[1].condition.ttlSeconds: DeleteSelf on FAILED after 60 s comes before DeleteCluster after 600 s"),
    ("redis-username-in-env-even-with-gcs-ft", ["--cpu-nodes", "1", "--set", "env=[{name: REDIS_USERNAME, value: ray}]",
                                                "--set", "annotations.ray\\.io/ft-enabled=true"],
     "KubeRay refuses a Redis user name in env (REDIS_USERNAME) or rayStartParams (redis-username), with or without "
     "GCS fault tolerance"),
    ("redis-address-without-gcs-ft", ["--cpu-nodes", "1", "--set", "env=[{name: RAY_REDIS_ADDRESS, value: r:6379}]"],
     "env RAY_REDIS_ADDRESS turns on GCS fault tolerance, which KubeRay refuses unless it is enabled: add the "
     'annotation ray.io/ft-enabled: "true" (annotations value)'),
    ("kueue-with-autoscaling", ["--gpu-nodes", "1:4", "--set", "scheduling.kueueQueue=team-a"],
     "Kueue refuses a RayJob with autoscaling"),
    ("runtime-env-expanded-by-the-shell", ["--cpu-nodes", "1", "--set", "job.runtimeEnv.env_vars.DIR=$HOME/x"],
     "job.runtimeEnv.env_vars.DIR: '$HOME/x' holds '$', which the K8sJobMode submitter's shell would expand"),
    ("label-hides-the-head-from-its-service", ["--cpu-nodes", "1", "--set", "labels.app\\.kubernetes\\.io/name=x"],
     "labels.app.kubernetes.io/name: 'x' overrides KubeRay's 'kuberay'"),
]

CRD_CASES = [
    ("crd-unknown-field", ["--cpu-nodes", "1", "--set", "head.affinity={nodeAffinty: {}}"],
     "unknown field 'nodeAffinty' (did you mean 'nodeAffinity'?); the API server would silently drop it"),
    ("crd-env-typo", ["--cpu-nodes", "1", "--set", "env=[{name: A, valu: b}]"], "unknown field 'valu'"),
    ("crd-int64-overflow", ["--cpu-nodes", "1", "--set",
                            "cpuWorkers.tolerations=[{key: a, operator: Exists, tolerationSeconds: 99999999999999999999}]"],
     "tolerationSeconds: 99999999999999999999 is greater than the maximum of 9223372036854775807"),
    ("crd-wrong-toleration-type", ["--cpu-nodes", "1", "--set", "cpuWorkers.tolerations=[{key: 1}]"],
     "1 is not of type 'string'"),
    ("crd-bad-deletion-policy", ["--cpu-nodes", "1", "--set", "job.shutdownAfterJobFinishes=false",
                                 "--set", "job.ttlSecondsAfterFinished=0",
                                 "--set", "job.deletionRules=[{condition: {jobStatus: FAILED}, policy: Delete}]"],
     "'Delete' is not one of"),
]

VALUES = {
    "not_yaml": "name: ok\ncpuWorkers: [\n",
    "a_list": "- 1\n- 2\n",
    "unknown_key": "gpuWorker:\n  replicas: 1\n",
    "wrong_type": "cpuWorkers:\n  replicas: '3'\n",
    "label_number": "labels:\n  version: 1.10\n",
    "nul": 'run:\n  output: "s3://b/a\\0b"\n',
    "bad_toleration": "head:\n  tolerations: [5]\n",
}


def _expand(args: list[str], tmp_path) -> list[str]:
    out = []
    for arg in args:
        if arg.startswith("{") and arg.endswith("}") and arg[1:-1] in VALUES:
            path = tmp_path / f"{arg[1:-1]}.yaml"
            path.write_text(VALUES[arg[1:-1]], encoding="utf-8")
            arg = str(path)
        out.append(arg)
    return out


def _assert_clean_failure(result, message: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_cleanly(inferkit, tmp_path, args, message):
    _assert_clean_failure(inferkit("render", *_expand(args, tmp_path)), message)


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in CRD_CASES], ids=[c[0] for c in CRD_CASES])
def test_crd_schema_rejects(inferkit, crd_dir, args, message):
    _assert_clean_failure(inferkit("render", "--crd-dir", crd_dir, *args), message)


def test_all_problems_are_reported_together(inferkit, tmp_path):
    result = inferkit("render", "--gpu-nodes", "-1", "--name", "X", "--set", "nosuch=1", "--batch-size", "0")
    _assert_clean_failure(result, "4 problems:")
    for part in ("gpuWorkers.replicas", "name: 'X'", "nosuch: unknown key", "--batch-size: must be at least 1"):
        assert part in result.stderr


def test_single_problem_is_one_line(inferkit):
    result = inferkit("render", "--gpu-nodes", "1", "--gpus-per-node", "0")
    _assert_clean_failure(result, "gpusPerNode")
    assert result.stderr.count("\n") == 1


def test_verbose_shows_traceback(inferkit):
    result = inferkit("-v", "render", "--gpu-nodes", "1", "--gpus-per-node", "0")
    assert result.code == 2 and "Traceback" in result.stderr and result.stdout == ""


def test_files_that_are_not_text_or_not_crds_are_clean_errors(inferkit, tmp_path):
    binary = tmp_path / "values.yaml"
    binary.write_bytes(b"\xff\xfe")
    _assert_clean_failure(inferkit("render", "--cpu-nodes", "1", "-f", str(binary)), "is not UTF-8 text (byte 0)")
    crds = tmp_path / "crds"
    crds.mkdir()
    (crds / "rayjob.yaml").write_text("kind: CustomResourceDefinition\nspec: {group: ray.io, versions: [{name: v1}]}\n")
    _assert_clean_failure(inferkit("render", "--cpu-nodes", "1", "--crd-dir", str(crds)),
                          "a ray.io CustomResourceDefinition in it is malformed")
