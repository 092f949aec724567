"""`inferkit doctor` here (no cluster) and against the in-process Kubernetes API."""

from __future__ import annotations

import json

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


def test_doctor_reads_the_cluster(inferkit, tmp_path):
    fake = FakeKube(tmp_path)
    try:
        fake.deployments = [{"metadata": {"name": "kuberay-operator", "namespace": "kuberay"},
                             "spec": {"selector": {}, "template": {"spec": {"containers": [
                                 {"name": "op", "image": "quay.io/kuberay/operator:v1.7.0"}]}}}}]
        fake.nodes = [{"metadata": {"name": "gpu-a", "labels": {"cloud.google.com/gke-accelerator": "nvidia-l4"}},
                       "spec": {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]},
                       "status": {"allocatable": {"nvidia.com/gpu": "2"}}}]
        result = inferkit("doctor", "--kubeconfig", str(fake.kubeconfig))
    finally:
        fake.close()
    assert result.code == 0, result.stderr
    lines = {" ".join(line.split()[:3]) for line in result.stdout.splitlines()}
    for expected in ("[ok] kuberay crds", "[ok] kuberay operator", "[ok] gpu nodes", "[ok] inferkit submit"):
        assert expected in lines, result.stdout
    assert "quay.io/kuberay/operator:v1.7.0" in result.stdout
    assert ("gpu-a: 2 GPU {'cloud.google.com/gke-accelerator': 'nvidia-l4'} taints ['nvidia.com/gpu:NoSchedule']"
            in result.stdout)
