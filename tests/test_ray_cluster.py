"""`inferkit run` against real `ray start` clusters reached through RAY_ADDRESS, as inside a RayJob:
a 1-CPU node, and a KubeRay-shaped cluster whose head runs no work (num-cpus 0) beside a worker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter

import pandas as pd
import pytest

import tiny

INFERKIT = [sys.executable, "-m", "inferkit"]


def _run(cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**cluster.env, "RAY_ADDRESS": cluster.address}
    return subprocess.run([*INFERKIT, "run", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_one_cpu_cluster_completes(ray_cluster, tiny_models, tmp_path):
    ray_cluster.start(head_cpus=1)
    rows = [{"id": i, "text": f"the film {i} was good"} for i in range(40)] + [{"id": 40, "text": ""}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = _run(ray_cluster, "--task", "text-classification", "--model", tiny_models["classifier"], "--input",
                  str(tmp_path / "in.jsonl"), "--output", str(out), "--max-error-fraction", "0.05")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"the Ray cluster at {ray_cluster.address}" in result.stderr
    frame = pd.read_parquet(out)
    assert Counter(frame.id) == Counter(range(41))
    report = json.loads((out / "_inferkit_report.json").read_text())
    plan = report["plan"]
    assert plan["num_cpus_per_actor"] + plan["io_task_cpus"] <= 1 and plan["threads_per_actor"] == 1
    assert report["errors"] == 1
    # a connected cluster of one node may grow (KubeRay's head before its workers): a local output is
    # written through the driver, not by workers that may not see it
    assert report["output"]["write"] == "driver"
    assert "may not be seen by workers that join later: writing it from the driver" in result.stderr


def test_head_without_cpus_and_a_worker_node(ray_cluster, tiny_models, tmp_path):
    """As KubeRay renders it: the head has num-cpus 0, the work lands on the worker."""
    ray_cluster.start(head_cpus=0, workers=(2,))
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        (images / f"{i}.png").write_bytes(tiny.image_bytes("RGB", "PNG", seed=i))
    out = tmp_path / "out"
    result = _run(ray_cluster, "--task", "image-classification", "--model", tiny_models["resnet"], "--input",
                  str(images), "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "_inferkit_report.json").read_text())
    assert len(report["cluster"]) == 2
    assert sorted(n["cpus"] for n in report["cluster"]) == [0, 2]
    assert report["output"]["write"] == "distributed"  # both nodes see this folder
    assert Counter(pd.read_parquet(out).path) == Counter(str(p) for p in images.glob("*.png"))


def _submit(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*INFERKIT, "submit", "--ray-address", cluster.dashboard, *args], env=cluster.env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def dashboard_cluster(tmp_path_factory):
    """Module: one 2-CPU head with a dashboard for the jobs submitted with --ray-address that end."""
    from conftest import RayCluster

    cluster = RayCluster(tmp_path_factory.mktemp("dashboard"))
    try:
        yield cluster.start(head_cpus=2, dashboard=True)
    finally:
        cluster.stop()


def test_ray_address_job_succeeds_and_writes_its_output(dashboard_cluster, tiny_models, tmp_path):
    rows = [{"id": i, "text": f"a good day {i}"} for i in range(20)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = _submit(dashboard_cluster, "--model", tiny_models["embedder"], "--input", str(tmp_path / "in.jsonl"),
                     "--output", str(out), "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert "the job succeeded" in result.stderr
    assert f"output: {out}" in result.stdout  # the driver's log, streamed
    assert Counter(pd.read_parquet(out).id) == Counter(range(20))


def test_ray_address_job_that_fails_exits_1(dashboard_cluster, tmp_path):
    result = _submit(dashboard_cluster, "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert "no such file or folder" in result.stdout  # the driver's own error, in its log
    assert "FAILED" in result.stderr and "exit code 2" in result.stderr


def _waiting_job_args(tiny_models, tmp_path) -> list[str]:
    """An `inferkit run` that starts on `busy_cluster` and then waits for a CPU that never comes free."""
    (tmp_path / "in.jsonl").write_text('{"id": 1, "text": "a good day"}\n')
    return ["--model", tiny_models["embedder"], "--input", str(tmp_path / "in.jsonl"), "--output",
            str(tmp_path / "out"), "--precision", "fp32"]


def _job_status(cluster, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(cluster.dashboard).get_job_status(job_id)).rpartition(".")[2]


def _final_status(cluster, job_id: str) -> str:
    """The job's status once it has ended (a stopped job takes a moment to say so)."""
    import time

    deadline = time.monotonic() + 60
    while (status := _job_status(cluster, job_id)) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.monotonic() < deadline, f"Ray job {job_id} is still {status} after a minute"
        time.sleep(0.5)
    return status


def _stop_job(cluster, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    JobSubmissionClient(cluster.dashboard).stop_job(job_id)
    return _final_status(cluster, job_id)


def _job_id(stderr: str) -> str:
    match = re.search(r"submitted Ray job (\S+) to ", stderr)
    assert match, stderr
    return match.group(1)


def test_ray_address_timeout_exits_124_and_leaves_the_job_running(busy_cluster, tiny_models, tmp_path):
    result = _submit(busy_cluster, *_waiting_job_args(tiny_models, tmp_path), "--timeout", "2")
    assert result.returncode == 124, result.stderr[-3000:]
    job_id = _job_id(result.stderr)
    assert re.search(rf"--timeout reached; Ray job {job_id} is still (PENDING|RUNNING)", result.stderr)
    assert _job_status(busy_cluster, job_id) in ("PENDING", "RUNNING")
    assert _stop_job(busy_cluster, job_id) == "STOPPED"


def test_ray_address_detach_exits_0_with_the_job_submitted(busy_cluster, tiny_models, tmp_path):
    result = _submit(busy_cluster, *_waiting_job_args(tiny_models, tmp_path), "--detach")
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = _job_id(result.stderr)
    assert f"detached; follow it: ray job logs --follow {job_id} --address {busy_cluster.dashboard}" in result.stderr
    assert _job_status(busy_cluster, job_id) in ("PENDING", "RUNNING")
    assert _stop_job(busy_cluster, job_id) == "STOPPED"


@pytest.mark.parametrize("cancel", [False, True])
def test_ray_address_ctrl_c_exits_130_and_stops_the_job_only_when_asked(busy_cluster, tiny_models, tmp_path, cancel):
    """Ctrl-C once the CLI says it submitted the job (it is following it then): 130; the job keeps
    running, or with --cancel-on-interrupt is stopped."""
    import signal

    args = [*INFERKIT, "submit", "--ray-address", busy_cluster.dashboard, *_waiting_job_args(tiny_models, tmp_path),
            *(["--cancel-on-interrupt"] if cancel else [])]
    process = subprocess.Popen(args, env={**busy_cluster.env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    said = ""
    while "submitted Ray job" not in said:
        line = process.stderr.readline()
        assert line, f"the CLI ended before submitting: {said}"
        said += line
    job_id = _job_id(said)
    # At once: the follower's event loop exists before "submitted" is said, so no Ctrl-C lands in asyncio.
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    stderr = said + rest
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    if cancel:
        assert f"interrupted: Ray job {job_id} stopped" in stderr
        assert _final_status(busy_cluster, job_id) == "STOPPED"
    else:
        assert f"interrupted: stopped following; Ray job {job_id} keeps running" in stderr
        assert _job_status(busy_cluster, job_id) in ("PENDING", "RUNNING")
        assert _stop_job(busy_cluster, job_id) == "STOPPED"
