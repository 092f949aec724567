"""Shared fixtures: the CLI in-process, the KubeRay CRD schemas from ../shared, tiny models."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO.parent / "shared" / "kuberay-crds" / "v1.7.0"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def inferkit(capsys, monkeypatch):
    """Run the CLI in this process, as a user would from a shell; returns exit code, stdout, stderr."""
    from inferkit.cli import main

    monkeypatch.delenv("INFERKIT_CRD_DIR", raising=False)

    def run(*args: str) -> Result:
        capsys.readouterr()
        _point_ray_logs_at(sys.stderr)
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def _point_ray_logs_at(stream) -> None:
    """Ray's console handlers keep the stderr they were made with; under pytest that is an earlier test's
    capture, closed by now, and a Ray warning would print a logging traceback instead of the warning."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.split(".")[0] == "ray" and isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if type(handler).__name__ == "PlainRayHandler":
                    handler.stream = stream


@pytest.fixture(scope="session")
def crd_dir() -> str:
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}: this clone has no ../shared beside it (CI has)")
    return str(CRD_DIR)


@pytest.fixture(scope="session")
def crd_schemas(crd_dir):
    from inferkit.crds import load_crd_schemas

    return load_crd_schemas(crd_dir)


@pytest.fixture(scope="session")
def update_golden() -> bool:
    return os.environ.get("INFERKIT_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="session")
def ray_local():
    """One embedded 2-CPU Ray for the in-process job tests (`inferkit run` reuses a connected Ray)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    import tiny

    root = tmp_path_factory.mktemp("models")
    return {
        "classifier": tiny.bert(root / "classifier", classifier=True),
        # A smaller vocabulary: token ids past its end would crash a model fed the other tokenizer's ids.
        "classifier_other_vocabulary": tiny.bert(root / "classifier2", classifier=True, seed=1,
                                                 words=tuple(reversed(tiny.WORDS))[:20]),
        "embedder": tiny.bert(root / "embedder", classifier=False, max_positions=16),
        "resnet": tiny.resnet(root / "resnet"),
        "vit": tiny.vit(root / "vit"),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    """A real `ray start` cluster (head and optional worker nodes) in its own process groups, so that
    tearing it down never touches another Ray on the machine. Token auth is off, as in the brief."""

    def __init__(self, tmp: Path):
        import shutil

        # The job's entrypoint (`inferkit run`) must be on the cluster's PATH, as in the job image.
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
        self.env.pop("RAY_ADDRESS", None)
        self.ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
        self.tmp = tmp
        self.processes: list = []
        ports = [_free_port() for _ in range(4)]
        # Ports of their own: the embedded Ray of other tests may still hold Ray's fixed defaults (the job
        # agent's 52365, the client server's 10001), and a job agent that cannot bind takes no jobs.
        self.port, self.dashboard_port, self.agent_port, self.client_port = ports
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str]) -> None:
        import subprocess

        log = open(self.tmp / f"ray-{len(self.processes)}.log", "w")
        self.processes.append(subprocess.Popen([self.ray, "start", "--block", "--object-store-memory=300000000",
                                                *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def start(self, head_cpus: float, workers: tuple[float, ...] = (), dashboard: bool = False) -> RayCluster:
        self._start(["--head", f"--port={self.port}", f"--num-cpus={head_cpus}", "--node-ip-address=127.0.0.1",
                     f"--include-dashboard={str(dashboard).lower()}", f"--dashboard-port={self.dashboard_port}",
                     f"--dashboard-agent-listen-port={self.agent_port}", f"--ray-client-server-port={self.client_port}",
                     "--dashboard-host=127.0.0.1", "--disable-usage-stats"])
        self.wait_for_nodes(1)
        for cpus in workers:
            self._start([f"--address={self.address}", f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1",
                         f"--dashboard-agent-listen-port={_free_port()}"])
        self.wait_for_nodes(1 + len(workers))
        return self

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        import subprocess
        import time

        probe = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
                 "print(sum(n['Alive'] for n in ray.nodes()))")
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = subprocess.run([sys.executable, "-c", probe, self.address], env=self.env, capture_output=True,
                                 text=True)
            if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        logs = "\n".join(p.read_text()[-2000:] for p in sorted(self.tmp.glob("ray-*.log")))
        raise RuntimeError(f"the Ray cluster did not reach {count} node(s):\n{logs}")

    def stop(self) -> None:
        import signal

        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
            except (ProcessLookupError, OSError):
                pass
            except Exception:  # noqa: BLE001 - a stuck node must not stop the teardown of the others
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def ray_cluster(tmp_path):
    cluster = RayCluster(tmp_path)
    yield cluster
    cluster.stop()
