"""Shared fixtures, each saying its scope: the CLI in-process, the KubeRay CRD schemas from ../shared, tiny
models, an embedded Ray and `ray start` clusters; the test cache root; marks by cost."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO.parent / "shared" / "kuberay-crds" / "v1.7.0"
# Everything the tests keep between runs, outside temp folders, keyed by version: controlplane/<component>-
# <version> (scripts/controlplane.sh's binaries), compile/torch-<version> (inductor's kernels),
# objectstores/ (moto's venv, fake-gcs-server). Images live in Docker's own store (tests/images.py).
TEST_CACHE = Path(os.environ.get("INFERKIT_TEST_CACHE") or Path.home() / ".cache" / "inferkit-tests")


@pytest.fixture(scope="session", autouse=True)
def compile_cache() -> Path:
    """Session (autouse): the compile cache every run of this session uses (in-process and in the processes the tests
    start), under the test cache root, so it is as warm in CI on a machine as on a developer's; a test that
    needs a cold one sets INFERKIT_COMPILE_CACHE itself."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch = version("torch")
    except PackageNotFoundError:  # the pure tests run without the job extra
        torch = "none"
    folder = TEST_CACHE / "compile" / f"torch-{torch}"
    folder.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("INFERKIT_COMPILE_CACHE")
    os.environ["INFERKIT_COMPILE_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("INFERKIT_COMPILE_CACHE", None)
    else:
        os.environ["INFERKIT_COMPILE_CACHE"] = previous


# Marks follow cost, per test: a test that asks for one of these fixtures starts a real Ray (or the control
# plane) and is marked so here; a test that starts Ray in a subprocess says so with its own marks.
# `pytest -m "not slow"` is then every pure test and every refusal that stops before Ray.
RAY_FIXTURES = {"ray_local", "ray_cluster", "busy_cluster", "dashboard_cluster", "ray_head"}
CONTROLPLANE_FIXTURES = {"controlplane"}
DOCKER_FIXTURES = {"job_image"}
OBJECTSTORE_FIXTURES = {"s3_server", "gcs_server", "store"}


def pytest_configure(config) -> None:
    """A suite started in the background of a script (`... &`, as `nohup`-style CI launchers do) inherits SIGINT
    ignored, and so would every process it starts: the Ctrl-C tests' SIGINT would do nothing (Python gives a
    process its KeyboardInterrupt only if SIGINT is not ignored when it starts). A handler here is reset to the
    default in each child at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by the marks
def pytest_collection_modifyitems(items: list) -> None:
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if uses & RAY_FIXTURES:
            item.add_marker(pytest.mark.ray)
            item.add_marker(pytest.mark.slow)
        if uses & CONTROLPLANE_FIXTURES:
            item.add_marker(pytest.mark.controlplane)
            item.add_marker(pytest.mark.slow)
        if uses & DOCKER_FIXTURES:
            item.add_marker(pytest.mark.docker)
            item.add_marker(pytest.mark.slow)
        if "real_node" in uses:  # not `controlplane`: `-m controlplane` stays the kwok plane's tests
            item.add_marker(pytest.mark.node)
            item.add_marker(pytest.mark.slow)
        if uses & OBJECTSTORE_FIXTURES:  # a server to start (and on a new machine, to build)
            item.add_marker(pytest.mark.objectstore)
            item.add_marker(pytest.mark.slow)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def inferkit(capsys, monkeypatch):
    """Function: run the CLI in this process, as a user would from a shell; returns code, stdout, stderr."""
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
    """Session: the v1.7.0 KubeRay CRD folder in ../shared (skips where the clone has none beside it)."""
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRD_DIR}: this clone has no ../shared beside it (CI has)")
    return str(CRD_DIR)


@pytest.fixture(scope="session")
def crd_schemas(crd_dir):
    """Session: those CRDs' strict v1 schemas by kind."""
    from inferkit.crds import load_crd_schemas

    return load_crd_schemas(crd_dir)


@pytest.fixture(scope="session")
def update_golden() -> bool:
    """Session: INFERKIT_UPDATE_GOLDEN=1 rewrites the golden renders instead of comparing."""
    return os.environ.get("INFERKIT_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="session")
def ray_local() -> Path:
    """Session: one embedded 2-CPU Ray for the in-process job tests (`inferkit run` reuses a connected Ray),
    with the idle-worker soft limit the product gives its own embedded Ray (workers are not killed and
    started again, re-importing torch, between tasks); yields its session folder, whose logs/ holds what
    each worker printed."""
    ray = pytest.importorskip("ray")
    from inferkit.job.run import EXTRA_IDLE_WORKERS

    context = ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
                       _system_config={"num_workers_soft_limit": 2 + EXTRA_IDLE_WORKERS})
    yield Path(context.address_info["session_dir"])
    ray.shutdown()


def _control_plane(tmp_path_factory, name: str, real_node_images: tuple[str, ...] = ()):
    """A control plane (tests/controlplane.py) up until the generator closes, torn down also when set-up
    fails."""
    from controlplane import start_control_plane, stop_control_plane

    state = tmp_path_factory.mktemp(name)
    try:
        plane = start_control_plane(state, real_node_images)
    except BaseException:
        stop_control_plane(state)
        raise
    print(f"\n{name} up in {plane.started_in:.1f} s", file=sys.stderr)
    yield plane
    stop_control_plane(state)


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory):
    """Session: the real control plane with kwok nodes, up once."""
    yield from _control_plane(tmp_path_factory, "controlplane")


@pytest.fixture(scope="module")
def real_node(tmp_path_factory, job_image):
    """Module (the node tests are one module; its kubelet, containerd and pods go when they end): a second
    control plane whose one node is real (scripts/node.sh), pods running in containers from the job image,
    also named as the ready manifests name it (manifests/, values.yaml's image.cpu), as a user who built it
    would tag it. Skips, saying why, where a real node cannot be had (not root, no containerd or CNI plugins)."""
    from inferkit import __version__

    named = f"ghcr.io/inferkit/inferkit:{__version__}-cpu"
    yield from _control_plane(tmp_path_factory, "realnode", (f"{job_image}={named}",))


@pytest.fixture(scope="session")
def job_image() -> str:
    """Session: the CPU job image built on the stand-in base (tests/images.py); skips, saying why, only
    where no Docker engine answers or the stand-in cannot be made."""
    import images

    if reason := images.unavailable():
        pytest.skip(reason)
    tag, seconds = images.build_job_image("cpu")
    print(f"\njob image {tag} ready in {seconds:.1f} s", file=sys.stderr)
    return tag


def _object_store(kind: str, tmp_path_factory, host: str = "127.0.0.1"):
    import objectstores

    cache = TEST_CACHE / "objectstores"
    cache.mkdir(parents=True, exist_ok=True)
    built, why = objectstores.moto_server(cache) if kind == "s3" else objectstores.fake_gcs_server(cache)
    if built is None:
        pytest.skip(why)
    log = tmp_path_factory.mktemp(f"{kind}-server") / "server.log"
    server = objectstores.start_s3(built, log, host) if kind == "s3" else objectstores.start_gcs(built, log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Session: moto's S3 server on loopback (tests/objectstores.py)."""
    yield from _object_store("s3", tmp_path_factory)


@pytest.fixture(scope="module")
def s3_server_for_pods(real_node, tmp_path_factory):
    """Module (with the real node, stopped before it): moto's S3 server on the node's pod gateway, the one
    address of this machine its pods reach."""
    yield from _object_store("s3", tmp_path_factory, real_node.pod_gateway)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """Session: fake-gcs-server on loopback (tests/objectstores.py)."""
    yield from _object_store("gs", tmp_path_factory)


@pytest.fixture(params=["s3", "gs"])
def store(request):
    """Per test, once for each store: the S3 or the GCS server."""
    return request.getfixturevalue("s3_server" if request.param == "s3" else "gcs_server")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Session: the tiny models of tests/tiny.py, saved once, by name."""
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
        "stripes": tiny.trained_cnn(root / "stripes"),
        "sentiment": tiny.trained_bert(root / "sentiment"),
    }


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ClusterDied(RuntimeError):
    """A node's `ray start` exited: most likely a port taken between choosing and binding it."""


class RayCluster:
    """A real `ray start` cluster (head and optional worker nodes) in its own process groups, so that
    tearing it down never touches another Ray on the machine. Token auth is off, as in the brief.

    Ray picks its own free ports (GCS, dashboard, job agents: port 0), so the embedded Ray of other
    tests cannot hold them; the one it cannot pick, the Ray client server's, comes from the OS and a
    head that dies on it is started again with another. Addresses are read from what `ray start` says."""

    START_TRIES = 3
    READY = "This command will now block forever"

    def __init__(self, tmp: Path):
        import shutil

        # The job's entrypoint (`inferkit run`) must be on the cluster's PATH, as in the job image.
        path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": path}
        self.env.pop("RAY_ADDRESS", None)
        self.ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or "ray"
        self.tmp = tmp
        self.processes: list = []
        self.logs: list[Path] = []
        self.address = ""  # 127.0.0.1:<GCS port>
        self.dashboard = ""  # http://127.0.0.1:<port>, with dashboard=True

    def _start(self, args: list[str]) -> str:
        """Starts one node; returns what `ray start` printed once the node is up."""
        import time

        log = self.tmp / f"ray-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "w") as out:
            process = subprocess.Popen([self.ray, "start", "--block", "--object-store-memory=300000000",
                                        "--node-ip-address=127.0.0.1", "--dashboard-agent-listen-port=0", *args],
                                       env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + 120
        while self.READY not in (text := log.read_text()):
            if process.poll() is not None:
                raise ClusterDied(f"`ray start` exited with {process.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"`ray start` did not come up in 120 s:\n{text[-3000:]}")
            time.sleep(0.2)
        return text

    def start(self, head_cpus: float, workers: tuple[float, ...] = (), dashboard: bool = False) -> RayCluster:
        import re

        for attempt in range(self.START_TRIES):
            try:
                said = self._start(["--head", "--port=0", f"--num-cpus={head_cpus}", "--dashboard-port=0",
                                    f"--include-dashboard={str(dashboard).lower()}", "--dashboard-host=127.0.0.1",
                                    f"--ray-client-server-port={_free_port()}", "--disable-usage-stats"])
                self.address = "127.0.0.1:" + re.search(r"ray start --address='[^']*:(\d+)'", said).group(1)
                if dashboard:
                    self.dashboard = re.search(r"RAY_API_SERVER_ADDRESS='(http://[^']+)'", said).group(1)
                self.wait_for_nodes(1)
                break
            except ClusterDied:
                self.stop()
                if attempt + 1 == self.START_TRIES:
                    raise
        for cpus in workers:
            self._start([f"--address={self.address}", f"--num-cpus={cpus}"])
        self.wait_for_nodes(1 + len(workers))
        return self

    def wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        import time

        # One Python that connects once and polls (a new one per poll spent ~2 s importing Ray each time).
        probe = ("import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR')\n"
                 "while sum(n['Alive'] for n in ray.nodes()) != int(sys.argv[2]): time.sleep(0.2)")
        waiter = subprocess.Popen([sys.executable, "-c", probe, self.address, str(count)], env=self.env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + timeout
        try:
            while waiter.poll() is None:
                if dead := [p for p in self.processes if p.poll() is not None]:
                    raise ClusterDied(f"{len(dead)} `ray start` process(es) exited:\n{self._log_tails()}")
                if time.time() > deadline:
                    raise RuntimeError(f"the Ray cluster did not reach {count} node(s):\n{self._log_tails()}")
                time.sleep(0.2)
        finally:
            if waiter.poll() is None:
                waiter.kill()
            waiter.wait()
        if waiter.returncode != 0:
            raise RuntimeError(f"connecting to {self.address} failed:\n{waiter.stderr.read()[-3000:]}")

    def _log_tails(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in self.logs)

    def stop(self) -> None:
        """Each node's whole process group: SIGTERM, up to 10 s for `ray start` to stop its processes,
        then SIGKILL for any that linger (nothing of a test cluster is kept)."""
        import signal

        for process in reversed(self.processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.processes = []


@pytest.fixture
def ray_cluster(tmp_path):
    """Function: a `ray start` cluster of the test's own shape (call .start); stopped after the test."""
    cluster = RayCluster(tmp_path)
    yield cluster
    cluster.stop()


# A driver that takes every CPU of the cluster and keeps it until its stdin closes.
_HOLD_CPUS = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")

@ray.remote
class Holder:
    def ready(self):
        return True

holder = Holder.options(num_cpus=float(sys.argv[2])).remote()
ray.get(holder.ready.remote())
print("holding", flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def busy_cluster(tmp_path_factory):
    """Module: a 1-CPU Ray cluster with a dashboard whose CPU another driver holds: an `inferkit run` submitted
    to it starts, then waits for a CPU until stopped. A job that cannot end makes --timeout, Ctrl-C and
    --detach deterministic: no race with a job that ends first, no sleeps."""

    cluster = RayCluster(tmp_path_factory.mktemp("busy")).start(head_cpus=1, dashboard=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_CPUS, cluster.address, "1"], env=cluster.env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding", "the CPU holder did not start"
        yield cluster
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
        cluster.stop()


@pytest.fixture
def mounted_output(tmp_path):
    """Function: a real tmpfs mounted at tmp_path/out, as a pod's volume is mounted at --output (needs root:
    skips, saying so, where mounting is not allowed)."""
    out = tmp_path / "out"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(out)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}): needs root")
    yield out
    subprocess.run(["umount", "-l", str(out)], check=True)
