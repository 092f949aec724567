"""RayJobs in real pods (marked `node`): the control plane with one real node (scripts/node.sh: the kubelet,
containerd, CNI bridge, CoreDNS and kube-proxy), every pod from the job image built on the stand-in base,
`inferkit submit` and the real KubeRay operator in K8sJobMode: its submitter pod runs `ray job submit`
against the head Service, and the follower streams that pod's log from the kubelet."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

import images
import tiny
from controlplane import REPO, submit_until, wait_until

IMAGES = 2000
SUBMIT_TIMEOUT = 900  # seconds, beyond submit's own --timeout (12m)


@pytest.fixture(scope="module", autouse=True)
def kind_data_folder(real_node):
    """Module (autouse; after the node, so that a machine without one skips for that reason): /inferkit-data
    on this machine, the hostPath the kind preset and the ready kind manifest mount at /data (kind's config
    makes it on its node), made for these tests and removed after them; a folder the tests did not make is
    left alone and the tests skip."""
    data = Path("/inferkit-data")
    mark = data / ".made-by-inferkit-tests"  # so that a folder a killed run left is known as the tests' own
    if data.exists() and not mark.exists():
        pytest.skip("/inferkit-data exists on this machine and is not the tests' (someone's kind data): left alone")
    data.mkdir(exist_ok=True)
    mark.touch()
    data.chmod(0o777)
    yield data
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def namespace(real_node, request):
    """Function: a namespace of the real-node control plane, deleted (with its pods) after the test."""
    name = real_node.new_namespace(request.node.name.removeprefix("test_")[:20].replace("_", "-").rstrip("-"))
    yield name
    real_node.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def host_folder(tmp_path):
    """Function: a folder of this machine that the pods mount at /data (a hostPath volume on the real node),
    writable by the image's user (uid 1000)."""
    folder = tmp_path / "data"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


def _values(tmp_path: Path, host_folder: Path) -> Path:
    """A values file that mounts host_folder at /data in every Ray container."""
    path = tmp_path / "node-values.yaml"
    path.write_text(yaml.safe_dump({
        "volumes": [{"name": "data", "hostPath": {"path": str(host_folder), "type": "Directory"}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}))
    return path


def _inferkit(real_node, *args: str, timeout: float = SUBMIT_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferkit", *args, "--kubeconfig", str(real_node.kubeconfig)],
                          capture_output=True, text=True, timeout=timeout)


def _submit_command(real_node, namespace: str, image: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "inferkit", "submit", "--kubeconfig", str(real_node.kubeconfig), "-n", namespace,
            "--kuberay-version", real_node.kuberay_version, "--preset", "kind", "--image", image,
            "--timeout", "12m", *args]


def _submit(real_node, namespace: str, image: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(_submit_command(real_node, namespace, image, *args), capture_output=True, text=True,
                          timeout=SUBMIT_TIMEOUT)


def test_the_bundled_demo_runs_in_real_pods(real_node, job_image, namespace):
    """The default path of every user: head, worker and the submitter, all from the built image, on a real
    node; the real submitter's log streamed; status, list, logs after the job, and delete."""
    result = _submit(real_node, namespace, job_image, "--name", "demo", "--cpu-nodes", "1")
    assert result.returncode == 0, result.stderr[-5000:] + result.stdout[-3000:]
    assert "job SUCCEEDED" in result.stderr and "the job succeeded" in result.stderr
    # The driver's log came from the submitter pod (kubelet), the run's own lines and `ray job submit`'s.
    assert "done: 100 rows, 0 with errors" in result.stdout
    assert "Job 'demo-" in result.stdout and "' succeeded" in result.stdout  # `ray job submit`'s last words
    pods = real_node.items("pods", namespace)
    submitters = [p for p in pods if p["metadata"].get("labels", {}).get("job-name") == "demo"]
    assert submitters and submitters[0]["status"]["phase"] == "Succeeded", [p["metadata"]["name"] for p in pods]
    ran = {s["imageID"] for p in submitters for s in p["status"]["containerStatuses"]}
    assert ran == {images.docker("image", "inspect", "-f", "{{.Id}}", job_image, check=True).stdout.strip()}, ran

    status = _inferkit(real_node, "status", "demo", "-n", namespace, timeout=60)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout, status.stdout + status.stderr
    listed = _inferkit(real_node, "list", "-n", namespace, timeout=60)
    assert listed.returncode == 0 and "demo" in listed.stdout and "SUCCEEDED" in listed.stdout, listed.stdout
    logs = _inferkit(real_node, "logs", "demo", "-n", namespace, timeout=60)  # after the job: the pod's log
    assert logs.returncode == 0 and "done: 100 rows" in logs.stdout, logs.stdout[-2000:] + logs.stderr

    deleted = _inferkit(real_node, "delete", "demo", "-n", namespace, "-y", timeout=120)
    assert deleted.returncode == 0, deleted.stderr
    wait_until(lambda: not real_node.items("pods", namespace), 120, "the demo's pods to go")
    assert real_node.get("rayjob", "demo", namespace) is None


def test_a_2000_image_job_survives_a_worker_pod_deleted_and_resumes_after_its_head_is_killed(
        real_node, job_image, namespace, tiny_models, host_folder, tmp_path):
    """A ResNet-style image job (a tiny model made here) on head + 2 workers in real pods, with
    `backoffLimit: 1`. One worker pod is deleted once the first output file is written (KubeRay puts a new one
    in its place); the head pod is killed (force-deleted) once more files are written, which ends that
    attempt's driver, and the retry (the RayJob's on a new RayCluster, or the submitter Job's on the restarted
    head: either resumes) resumes from the rows on the volume. SUCCEEDED, every image exactly once
    on the hostPath volume, the run report beside the rows saying how many were resumed."""
    shutil.copytree(tiny_models["resnet"], host_folder / "model")
    folder = host_folder / "images"
    folder.mkdir()
    names = []
    for i in range(IMAGES):
        name = f"img{i:04d}.png"
        (folder / name).write_bytes(tiny.image_bytes("RGB", "PNG", size=(32, 32), seed=i))
        names.append(f"/data/images/{name}")
    for path in host_folder.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    submit = subprocess.Popen(
        _submit_command(real_node, namespace, job_image, "--name", "images", "-f", str(_values(tmp_path, host_folder)),
                        "--cpu-nodes", "2", "--cpus-per-node", "500m", "--set", "job.backoffLimit=1",
                        "--task", "image-classification", "--model", "/data/model", "--input", "/data/images",
                        "--output", "/data/out"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staged = host_folder / "out.inferkit-unfinished"

    def written(at_least: int) -> bool:  # output files, or the job ended first
        return files() >= at_least or submit.poll() is not None

    def files() -> int:
        return len(list(staged.glob("**/part-*.parquet")))

    def pods(kind: str) -> list[str]:
        return [p["metadata"]["name"] for p in real_node.items("pods", namespace, "-l", f"ray.io/node-type={kind}")]

    try:
        wait_until(lambda: written(1), 600, "the job's first output file")
        assert submit.poll() is None, "the job ended before a worker could be deleted"
        workers = pods("worker")
        assert len(workers) == 2, workers
        real_node.kubectl("delete", "pod", workers[0], "-n", namespace, "--wait=false")
        before = files()
        wait_until(lambda: written(before + 3), 600, "more output files after the worker's deletion")
        assert submit.poll() is None, "the job ended before its head could be killed"
        heads = pods("head")
        assert len(heads) == 1, heads
        real_node.kubectl("delete", "pod", heads[0], "-n", namespace, "--grace-period=0", "--force")
        stdout, stderr = submit.communicate(timeout=SUBMIT_TIMEOUT)
    finally:
        if submit.poll() is None:
            submit.kill()
    assert submit.returncode == 0, stderr[-5000:] + stdout[-3000:]
    assert f"done: {IMAGES} rows, 0 with errors" in stdout, stdout[-3000:]
    out = host_folder / "out"
    assert (out / "_SUCCESS").exists() and not (out / "_inferkit").exists()
    frame = pd.read_parquet(out)
    counts = Counter(frame["path"])
    assert set(counts) == set(names) and max(counts.values()) == 1
    assert frame["error"].isna().all() and set(frame["label"]) <= set(tiny.LABELS.values())
    report = json.loads((out / "_inferkit_report.json").read_text())
    assert 0 < report["rows_resumed"] < IMAGES, report
    assert report["plan"]["actors_max"] >= 2, report["plan"]


def test_a_job_reads_and_writes_s3_with_its_keys_from_a_secret(real_node, job_image, namespace, s3_server_for_pods,
                                                               tmp_path):
    """The way a cluster user reaches a bucket: the endpoint and keys in a Secret that every Ray container gets
    through `envFrom` (values file), the input read from moto's S3 and the output published there. moto
    enforces IAM, so no key but the Secret's would do; every row once, nothing staged left behind."""
    server, rows = s3_server_for_pods, 200
    bucket = server.new_bucket()
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": f"{tiny.TEXTS[i % 5]} {i}"}) + "\n"
                                               for i in range(rows)))
    server.upload(tmp_path / "in.jsonl", f"{bucket}/input/in.jsonl")
    real_node.kubectl("create", "secret", "generic", "s3-access", "-n", namespace,
                      *(f"--from-literal={name}={value}" for name, value in server.env.items()))
    values = tmp_path / "s3-values.yaml"
    values.write_text(yaml.safe_dump({"envFrom": [{"secretRef": {"name": "s3-access"}}]}))
    result = _submit(real_node, namespace, job_image, "--name", "s3", "--cpu-nodes", "1", "-f", str(values),
                     "--input", f"s3://{bucket}/input", "--output", f"s3://{bucket}/output")
    assert result.returncode == 0, result.stderr[-5000:] + result.stdout[-3000:]
    assert f"done: {rows} rows, 0 with errors" in result.stdout, result.stdout[-3000:]
    table, report = server.published(f"{bucket}/output")
    counts = Counter(table.column("id").to_pylist())
    assert set(counts) == {f"r{i}" for i in range(rows)} and max(counts.values()) == 1
    assert report["rows_resumed"] == 0, report


def test_the_ready_kind_manifest_applied_with_kubectl_and_followed_with_logs(real_node, namespace,
                                                                            kind_data_folder):
    """README's way in without inferkit on the cluster side: `kubectl apply -f` of the ready manifest as it
    is (its image the built one under the name it gives), then `inferkit logs -f` to SUCCEEDED."""
    data = kind_data_folder
    try:
        real_node.kubectl("apply", "-n", namespace, "-f", str(REPO / "manifests" / "kind" / "inferkit-rayjob.yaml"))
        logs = _inferkit(real_node, "logs", "inferkit", "-n", namespace, "-f", "--timeout", "10m")
        assert logs.returncode == 0, logs.stderr[-4000:] + logs.stdout[-2000:]
        assert "done: 100 rows, 0 with errors" in logs.stdout and "job SUCCEEDED" in logs.stderr, logs.stderr[-3000:]
        assert (data / "inferkit-output" / "_SUCCESS").exists()
        assert len(pd.read_parquet(data / "inferkit-output")) == 100
    finally:
        shutil.rmtree(data / "inferkit-output", ignore_errors=True)


def test_an_image_that_does_not_exist_is_explained_and_ctrl_c_leaves_nothing(real_node, namespace):
    """A typo'd image on a real kubelet: the follower names ErrImagePull or ImagePullBackOff and the image;
    Ctrl-C with --cancel-on-interrupt exits 130 and takes the RayJob and its pods with it. The registry is a
    closed port on loopback, so the pull fails here and sends nothing elsewhere."""
    image = "127.0.0.1:9/inferkit/no-such-image:1"

    def named(said: str) -> list[str]:
        # The container's status names the image; a Warning event of the same pull ("Error: ErrImagePull")
        # may come first and does not.
        return [line for line in said.splitlines() if image in line and ", container " in line
                and ("ErrImagePull" in line or "ImagePullBackOff" in line)]

    code, stderr = submit_until(real_node, namespace, ["--name", "typo", "--preset", "kind", "--cpu-nodes", "1",
                                                       "--image", image, "--cancel-on-interrupt"],
                                lambda said: bool(named(said)))
    assert code == 130, stderr
    # The first container to fail may be KubeRay's wait-gcs-ready init container: the same image.
    assert named(stderr), stderr
    # Deleted (the operator's finalizer goes first), and the pods with it.
    wait_until(lambda: real_node.get("rayjob", "typo", namespace) is None, 120, "the typo RayJob to go")
    wait_until(lambda: not real_node.items("pods", namespace), 120, "the typo job's pods to go")


def test_a_worker_whose_memory_limit_is_too_small_ends_the_job_saying_so(real_node, job_image, namespace):
    """A worker pod whose memory limit (320Mi: Ray itself refuses less than about 250Mi) its Ray processes and
    the demo's model outgrow. Ray's memory monitor kills the actor before the kernel does: the run fails with
    Ray's out-of-memory error in the driver's log and submit exits 1. Where the kernel is first (a
    burst between the monitor's looks), the follower names OOMKilled; either way nothing hangs."""
    result = _submit(real_node, namespace, job_image, "--name", "small", "--cpu-nodes", "1",
                     "--memory-per-node", "320Mi", "--timeout", "6m")
    if result.returncode == 124:  # the kernel's kill: the pod restarts, and the follower said why
        assert "OOMKilled (give it more memory)" in result.stderr, result.stderr[-4000:]
        return
    assert result.returncode == 1, result.stderr[-4000:] + result.stdout[-3000:]
    assert "the job failed" in result.stderr, result.stderr[-3000:]
    assert "OutOfMemoryError" in result.stdout and "the run failed" in result.stdout, result.stdout[-4000:]


def test_a_submitter_that_cannot_reach_the_head_fails_the_job_saying_why(real_node, job_image, namespace):
    """The node's firewall refuses pods' connections to port 8265, the head's dashboard, which the submitter's
    `ray job submit` must reach (a rule in the CNI firewall plugin's admin chain; the operator, a process on this
    machine, and the workers, on the GCS port, still reach the head). KubeRay's submitter Job fails its three
    pods; submit exits 1 and says the submission failed, with the submitter's own error."""
    cidr = real_node.pod_cidr
    rule = ["CNI-ADMIN", "-s", cidr, "-d", cidr, "-p", "tcp", "--dport", "8265", "-j", "REJECT",
            "--reject-with", "tcp-reset"]
    subprocess.run(["iptables", "-N", "CNI-ADMIN"], capture_output=True)  # made by the plugin's first pod
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        result = _submit(real_node, namespace, job_image, "--name", "cut", "--cpu-nodes", "1", "--timeout", "6m")
    finally:
        removed = subprocess.run(["iptables", "-D", *rule], capture_output=True, text=True)
    assert removed.returncode == 0, removed.stderr
    assert result.returncode == 1, result.stderr[-4000:] + result.stdout[-3000:]
    assert "the job failed" in result.stderr, result.stderr[-3000:]
    said = result.stdout + result.stderr
    assert "Failed to connect to Ray" in said or "Connection refused" in said, said[-4000:]


def test_doctor_tells_what_the_cluster_has(real_node):
    """`doctor` against the real node: one Ready node with its allocatable CPU and memory and its runtime, no
    GPU; the operator here is a process on this machine, not a Deployment, so doctor says it finds none."""
    result = _inferkit(real_node, "doctor", timeout=120)
    assert result.returncode == 0, result.stderr
    nodes = next(line for line in result.stdout.splitlines() if line.strip().startswith("[ok] nodes "))
    assert re.search(rf"1 of 1 ready: inferkit-node: {os.cpu_count()} CPU, [0-9.]+ GiB allocatable, containerd://\d",
                     nodes), result.stdout
    assert re.search(r"\[--\] gpu nodes +none", result.stdout), result.stdout
    assert re.search(r"\[--\] kuberay operator +no deployment", result.stdout), result.stdout


def test_pods_have_routes_to_their_subnet_and_the_services_only(real_node, job_image, namespace):
    """Nothing a pod sends can leave this machine: its routing table (read in a pod of the job image) holds
    the pod subnet and the Service range, and no default route."""
    real_node.kubectl("run", "routes", "-n", namespace, "--image", job_image, "--image-pull-policy", "IfNotPresent",
                      "--restart", "Never", "--command", "--", "cat", "/proc/net/route")
    wait_until(lambda: (real_node.get("pod", "routes", namespace) or {}).get("status", {}).get("phase")
               in ("Succeeded", "Failed"), 120, "the routes pod to end")
    table = real_node.kubectl("logs", "routes", "-n", namespace).stdout.splitlines()[1:]
    # /proc/net/route: destination and mask as little-endian hex
    routes = {(socket.inet_ntoa(struct.pack("<L", int(f[1], 16))), socket.inet_ntoa(struct.pack("<L", int(f[7], 16))))
              for f in (line.split() for line in table)}
    assert routes == {("10.244.0.0", "255.255.255.0"), ("10.96.0.0", "255.255.0.0")}, routes
