"""The real control plane of the `controlplane` tests (scripts/controlplane.sh): kube-apiserver, etcd,
kube-controller-manager, kube-scheduler, kwok nodes and the KubeRay operator, started once per session,
and a real `ray start --head` that stands in for head pods (its dashboard listens where the operator
and the API server's service proxy reach every head: the pod host, port 8265)."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "controlplane.sh"
UNAVAILABLE = 3  # scripts/controlplane.sh: nothing to build from here (no Go, no module proxy, no operator source)
# A cold build of every binary takes tens of minutes on two busy cores; a warm start takes seconds.
UP_TIMEOUT = 3600
DASHBOARD_PORT = 8265  # the head Service's dashboard port that KubeRay gives every RayCluster
# A throwaway test Ray gets this long to stop on SIGTERM, then its process group is killed (a clean stop of
# `ray start --block` took 35-50 s on two busy cores; nothing of it is kept).
STOP_GRACE_SECONDS = 10


@dataclass
class ControlPlane:
    state: Path
    kubeconfig: Path
    kubectl_path: str
    pod_host: str
    started_in: float

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.kubectl_path, "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                                capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def get(self, kind: str, name: str, namespace: str) -> dict | None:
        result = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, namespace: str, *selector: str) -> list[dict]:
        return json.loads(self.kubectl("get", kind, "-n", namespace, "-o", "json", *selector).stdout)["items"]

    def new_namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kubectl("create", "namespace", name)
        # Pods need the namespace's default ServiceAccount, which the controller manager creates.
        wait_until(lambda: self.get("serviceaccount", "default", name), 60, f"ServiceAccount default in {name}")
        return name

    def log(self, component: str) -> str:
        return (self.state / f"{component}.log").read_text(errors="replace")

    def restart_operator(self, feature_gates: str = "") -> None:
        """The operator again, with --feature-gates (empty: its version's defaults)."""
        done = subprocess.run(["bash", str(SCRIPT), "restart-operator", str(self.state), feature_gates],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"restarting the operator failed ({done.returncode}):\n{done.stderr[-4000:]}")

    @property
    def pod_gateway(self) -> str:
        """A real node's bridge address on this machine, which its pods reach."""
        return _script_setting(SCRIPT.parent / "node.sh", "NODE_GATEWAY")

    @property
    def pod_cidr(self) -> str:
        """A real node's pod subnet."""
        return _script_setting(SCRIPT.parent / "node.sh", "NODE_POD_CIDR")

    @property
    def kuberay_version(self) -> str:
        """The operator version the script builds (KUBERAY_VERSION=v1.5.0 -> "1.5")."""
        return ".".join(_script_setting(SCRIPT, "KUBERAY_VERSION").removeprefix("v").split(".")[:2])


def _script_setting(script: Path, name: str) -> str:
    """The value of a script's NAME=value line (the control plane's and the node's settings)."""
    line = next(l for l in script.read_text().splitlines() if l.startswith(f"{name}="))
    return line.split("=", 1)[1]


def kube_args(controlplane, namespace) -> list[str]:
    return ["--kubeconfig", str(controlplane.kubeconfig), "-n", namespace]


def submit_args(controlplane, namespace) -> list[str]:
    """submit's connection, rendering for the operator the tests run."""
    return [*kube_args(controlplane, namespace), "--kuberay-version", controlplane.kuberay_version]


def submit_until(controlplane, namespace: str, args: list[str], seen: Callable[[str], bool],
                 limit: float = 180) -> tuple[int, str]:
    """`inferkit submit` in a process of its own, followed until `seen(stderr so far)`, then Ctrl-C (exit 130,
    the RayJob left running): waits on the event itself, not on a fixed --timeout (the 124 path is in
    test_submit.py)."""
    process = subprocess.Popen([sys.executable, "-m", "inferkit", "submit", *submit_args(controlplane, namespace),
                                *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_until(lambda: seen("".join(lines)) or process.poll() is not None, limit, f"submit {' '.join(args)}")
        assert process.poll() is None, f"submit ended ({process.returncode}) first:\n{''.join(lines)}"
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
    return process.returncode, "".join(lines)


def wait_until(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def start_control_plane(state: Path, real_node_images: tuple[str, ...] = ()) -> ControlPlane:
    """`controlplane.sh up`; skips (one line, the script's reason) where Go, the module proxy or the
    operator's source cannot be had. With real_node_images: one real node (scripts/node.sh) in place of the
    kwok nodes, those Docker images loaded into its containerd (IMAGE=ALIAS: also named ALIAS there)."""
    if shutil.which("go") is None:
        pytest.skip("controlplane: no Go toolchain on PATH; the real control plane is built from Go modules "
                    "(scripts/controlplane.sh)")
    began = time.monotonic()
    # A loopback address of this session's own for the pod host, so that two runs on one machine (CI beside a
    # developer's) never share a head's port 8265.
    pod_host = os.environ.get("INFERKIT_POD_HOST") or f"127.{random.randint(1, 254)}.{random.randint(1, 254)}." \
                                                      f"{random.randint(1, 254)}"
    node = {"INFERKIT_NODE": "real", "INFERKIT_NODE_IMAGES": " ".join(real_node_images)} if real_node_images else {}
    up = subprocess.run(["bash", str(SCRIPT), "up", str(state)], capture_output=True, text=True, timeout=UP_TIMEOUT,
                        env={**os.environ, "INFERKIT_POD_HOST": pod_host, **node})
    if up.returncode == UNAVAILABLE:
        pytest.skip(up.stderr.strip().splitlines()[-1])
    if up.returncode != 0:
        raise RuntimeError(f"scripts/controlplane.sh up failed ({up.returncode}):\n{up.stderr[-6000:]}")
    env = dict(line.removeprefix("export ").split("=", 1) for line in subprocess.run(
        ["bash", str(SCRIPT), "env", str(state)], capture_output=True, text=True, check=True).stdout.splitlines())
    kubectl = shutil.which("kubectl", path=env["PATH"].split(":", 1)[0])
    return ControlPlane(state, Path(env["KUBECONFIG"]), kubectl, env["INFERKIT_POD_HOST"], time.monotonic() - began)


def stop_control_plane(state: Path) -> None:
    # A real node's `down` waits up to 60 s for its pods to stop, then stops each process (up to 5 s each).
    subprocess.run(["bash", str(SCRIPT), "down", str(state)], capture_output=True, text=True, timeout=300)


class RayHead:
    """A real `ray start --head` standing in for head pods: its dashboard listens on the pod host at the
    head Service's port, so the operator (HTTPMode submission) and the API server's service proxy (the
    driver's log) reach it. Its own process group, torn down without touching another Ray."""

    def __init__(self, host: str, tmp: Path):
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        # The entrypoint (`inferkit run`) must be on the head's PATH, as in the job image.
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
        self.env.pop("RAY_ADDRESS", None)
        self.host = host
        self.tmp = tmp
        self.ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
        self.process: subprocess.Popen | None = None

    def start(self, cpus: int = 2) -> RayHead:
        from conftest import _free_port

        ports = [_free_port() for _ in range(3)]
        with open(self.tmp / "ray-head.log", "w") as log:
            self.process = subprocess.Popen(
                [self.ray, "start", "--head", "--block", f"--node-ip-address={self.host}", f"--port={ports[0]}",
                 f"--num-cpus={cpus}", "--include-dashboard=true", f"--dashboard-host={self.host}",
                 f"--dashboard-port={DASHBOARD_PORT}", f"--dashboard-agent-listen-port={ports[1]}",
                 f"--ray-client-server-port={ports[2]}", "--object-store-memory=300000000", "--disable-usage-stats"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp)
        wait_until(self._answers, 120, f"the Ray dashboard on {self.host}:{DASHBOARD_PORT} "
                                       f"(log: {self.tmp / 'ray-head.log'})")
        return self

    def _answers(self) -> bool:
        import urllib.request

        if self.process.poll() is not None:
            raise RuntimeError(f"ray start exited: {(self.tmp / 'ray-head.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://{self.host}:{DASHBOARD_PORT}/api/version", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=STOP_GRACE_SECONDS)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
