"""`inferkit doctor` here (no cluster) and against the in-process Kubernetes API."""

from __future__ import annotations

import json
import os

import pytest
from fake_kube import FakeKube


def test_doctor_without_a_cluster_says_what_is_missing(inferkit, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    result = inferkit("doctor", "-o", "json")
    assert result.code == 0, result.stderr
    findings = {f["what"]: f for f in json.loads(result.stdout)}
    assert findings["inferkit render"]["ok"] is True
    assert findings["ray"]["detail"] == "2.60.0" and findings["ray"]["ok"]
    assert findings["kube context"]["ok"] is False
    assert not findings["inferkit submit"]["ok"] and "kube context" in findings["inferkit submit"]["detail"]
    assert isinstance(findings["cpu bf16"]["ok"], bool)


# V1NodeSystemInfo's required fields (the client refuses a node without them).
NODE_INFO = ("architecture", "bootID", "containerRuntimeVersion", "kernelVersion", "kubeProxyVersion",
             "kubeletVersion", "machineID", "operatingSystem", "osImage", "systemUUID")


def test_doctor_reads_the_cluster(inferkit, tmp_path):
    fake = FakeKube(tmp_path)
    try:
        fake.deployments = [{"metadata": {"name": "kuberay-operator", "namespace": "kuberay"},
                             "spec": {"selector": {}, "template": {"spec": {"containers": [
                                 {"name": "op", "image": "quay.io/kuberay/operator:v1.7.0"}]}}}}]
        fake.nodes = [{"metadata": {"name": "gpu-a", "labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
                       "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
                       "status": {"allocatable": {"nvidia.com/gpu": "2", "cpu": "8", "memory": "32Gi"},
                                  "conditions": [{"type": "Ready", "status": "True"}],
                                  "nodeInfo": {**dict.fromkeys(NODE_INFO, ""),
                                               "containerRuntimeVersion": "containerd://2.1.4"}}},
                      {"metadata": {"name": "cpu-a"}, "spec": {},
                       "status": {"allocatable": {"cpu": "3500m", "memory": "16279124Ki"},
                                  "conditions": [{"type": "Ready", "status": "False"}]}}]
        result = inferkit("doctor", "--kubeconfig", str(fake.kubeconfig))
    finally:
        fake.close()
    assert result.code == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    for expected in ("[ok] kuberay crds ", "[ok] kuberay operator ", "[ok] nodes ", "[ok] gpu nodes ",
                     "[ok] inferkit submit "):
        assert any(line.startswith(expected) for line in lines), result.stdout
    assert "quay.io/kuberay/operator:v1.7.0" in result.stdout
    assert ("1 of 2 ready: gpu-a: 8 CPU, 32.0 GiB allocatable, containerd://2.1.4; "
            "cpu-a: 3500m CPU, 15.5 GiB allocatable, ? (not ready)") in result.stdout
    assert ("gpu-a: 2 GPU {'cloud.google.com/gke-accelerator': 'nvidia-l4'} taints ['nvidia.com/gpu:NoSchedule']"
            in result.stdout)


def test_torch_gpu_problem_names_the_cause():
    from inferkit.doctor import torch_gpu_problem

    cpu_only = torch_gpu_problem("2.13.0+cpu", None, "570.86.10")
    assert "CPU-only build" in cpu_only and "pip install torch==2.13.0 --index-url" in cpu_only
    assert cpu_only.endswith("/whl/cu128 (CUDA 12.8, driver R525 or newer)")
    old_driver = torch_gpu_problem("2.13.0", "13.0", "535.183.01")
    assert "CUDA 13.0, which needs an NVIDIA driver 580.65.06 or newer; this machine has 535.183.01" in old_driver
    # a driver new enough (numerically, not as text: 1000 > 580) leaves the container's GPU access as the cause
    for driver in ("580.65.06", "1000.1.1"):
        assert "CUDA_VISIBLE_DEVICES" in torch_gpu_problem("2.13.0", "13.0", driver)
    assert "CUDA_VISIBLE_DEVICES" in torch_gpu_problem("2.13.0+cu128", "12.8", "535.183.01")


def test_doctor_on_a_gpu_node_says_why_torch_cannot_use_it(inferkit, tmp_path, monkeypatch):
    """A machine whose nvidia-smi shows a GPU and an old driver, with this checkout's torch."""
    import torch

    from inferkit.doctor import torch_gpu_problem

    smi = tmp_path / "nvidia-smi"  # the real probes run it: a GPU, and an old driver
    smi.write_text('#!/bin/sh\ncase "$*" in *driver_version*) echo 535.183.01;; '
                   '*) echo "NVIDIA L4, 23034, 8.9";; esac\n')
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    result = inferkit("doctor", "-o", "json")
    assert result.code == 0, result.stderr
    findings = {f["what"]: f for f in json.loads(result.stdout)}
    assert findings["gpus"]["ok"] and findings["gpus"]["detail"] == "NVIDIA L4 (22 GiB, bf16)"
    if torch.cuda.is_available():
        pytest.skip("this machine's torch really sees a GPU")
    # here torch is a CPU-only build or PyPI's CUDA 13 build, which that driver cannot run
    assert findings["torch cuda"] == {"area": "machine", "what": "torch cuda", "ok": False,
                                      "detail": torch_gpu_problem(torch.__version__, torch.version.cuda, "535.183.01")}
    assert ("CPU-only build" in findings["torch cuda"]["detail"]) is (torch.version.cuda is None)
