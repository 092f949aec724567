"""The object-store servers of the `objectstore` tests, real API servers on loopback (or, for pods, on a real
node's pod gateway), built from registries
into the test cache: moto's S3 server (PyPI) in a virtualenv of its own, so that its python-dateutil pin
never meets the `kubernetes` client's, and fake-gcs-server (the Go module proxy) for GCS. Each server is
a process the fixture starts on a free port and stops; `freeze` and `kill` make the outages the fault
tests need (SIGSTOP for ten seconds, SIGKILL for good), and `ReadOnlyGcs` a read-only GCS bucket (a fault
stand-in in front of fake-gcs-server, which checks no permissions)."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

MOTO_VERSION = "5.2.6"
FAKE_GCS_MODULE, FAKE_GCS_VERSION = "github.com/fsouza/fake-gcs-server", "v1.56.1"
BUILD_TIMEOUT = 1200
S3_REGION = "us-east-1"
# moto checks keys and IAM policies once this many requests have set up its users (IAM_SETUP below):
# a key of `admin` may do anything in S3, one of `reader` may only read, an unknown key nothing.
NO_AUTH_REQUESTS = 6
IAM_SETUP = """
import boto3, json, sys
iam = boto3.client("iam", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="setup",
                   aws_secret_access_key="setup")
keys = {}
for user, actions in (("admin", ["s3:*"]), ("reader", ["s3:Get*", "s3:List*", "s3:Head*"])):
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({"Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
print(json.dumps(keys))
"""
GCS_PROJECT = "inferkit-test"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def moto_server(cache: Path) -> tuple[Path | None, str]:
    """moto's server script in its own venv under the cache (built once), or None and why not."""
    venv = cache / f"moto-{MOTO_VERSION}"
    done = venv / "inferkit-installed"  # a venv's scripts name their interpreter's path: built in place
    if not done.exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode == 0:
            made = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"moto[server]=={MOTO_VERSION}"],
                                  capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if made.returncode != 0:
            return None, f"moto[server]=={MOTO_VERSION} could not be installed: {made.stderr.strip()[-300:]}"
        done.touch()
    return venv / "bin" / "moto_server", ""


def fake_gcs_server(cache: Path) -> tuple[Path | None, str]:
    """fake-gcs-server built from the Go module proxy under the cache (once), or None and why not."""
    binary = cache / f"fake-gcs-server-{FAKE_GCS_VERSION}" / "fake-gcs-server"
    if not binary.exists():
        if not any((Path(p) / "go").exists() for p in os.environ.get("PATH", "").split(os.pathsep)):
            return None, "Go is not installed: fake-gcs-server is built from the Go module proxy"
        tmp = binary.parent.with_name(binary.parent.name + ".tmp")
        built = subprocess.run(["go", "install", "-trimpath", "-ldflags=-s -w", f"{FAKE_GCS_MODULE}@{FAKE_GCS_VERSION}"],
                               capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                               env={**os.environ, "GOBIN": str(tmp), "GOFLAGS": ""}, cwd=cache)
        if built.returncode != 0:
            return None, f"{FAKE_GCS_MODULE}@{FAKE_GCS_VERSION} could not be built: {built.stderr.strip()[-300:]}"
        tmp.rename(binary.parent)
    return binary, ""


@dataclass
class Server:
    """One object-store server on loopback, and the environment a client needs to use it."""

    scheme: str  # "s3" or "gs"
    endpoint: str
    env: dict[str, str]
    process: subprocess.Popen
    log: Path
    reader_env: dict[str, str] | None = None  # keys that may read but not write (S3 only)

    def filesystem(self):
        """A pyarrow filesystem on this server for the test's own set-up and checks (explicit options, so the
        test process's environment is never what the product under test reads)."""
        import pyarrow.fs as pafs

        if self.scheme == "s3":
            return pafs.S3FileSystem(access_key=self.env["AWS_ACCESS_KEY_ID"], secret_key=self.env["AWS_SECRET_ACCESS_KEY"],
                                     region=S3_REGION, endpoint_override=self.endpoint,
                                     allow_bucket_creation=True, allow_bucket_deletion=True)
        return pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=self.endpoint.split("://")[1],
                                  project_id=GCS_PROJECT)

    def new_bucket(self) -> str:
        name = f"inferkit-{uuid.uuid4().hex[:10]}"
        self.filesystem().create_dir(name)
        return name

    def upload(self, local: Path, target: str) -> None:
        """A local file or folder (recursively) to bucket/path `target`."""
        import pyarrow.fs as pafs

        pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.filesystem())

    def published(self, prefix: str):
        """The rows and the run report of a finished output at bucket/path `prefix`, checked to be published:
        `_SUCCESS` there and none of the run's bookkeeping left."""
        import pyarrow as pa
        import pyarrow.fs as pafs
        import pyarrow.parquet as pq

        fs = self.filesystem()
        files = [i for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)) if i.type == pafs.FileType.File]
        names = {f.path.rsplit("/", 1)[1] for f in files}
        assert {"_SUCCESS", "_inferkit_report.json"} <= names, names
        assert not any("_inferkit/" in f.path for f in files), names
        table = pa.concat_tables(pq.read_table(f.path, filesystem=fs) for f in files if f.path.endswith(".parquet"))
        with fs.open_input_stream(f"{prefix}/_inferkit_report.json") as stream:
            return table, json.loads(stream.read())

    def freeze(self, seconds: float) -> None:
        """The server stops answering for `seconds` (its connections stay open), then goes on."""
        os.kill(self.process.pid, signal.SIGSTOP)
        time.sleep(seconds)
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Gone for good: the process killed, nothing answers on its port."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url}: the server exited ({process.returncode}):\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url}: no answer in 60 s:\n{log.read_text()[-2000:]}")


def start_s3(script: Path, log: Path, host: str = "127.0.0.1") -> Server:
    """On loopback, or on `host` (a real node's pod gateway, where its pods reach it)."""
    port = free_port(host)
    with open(log, "w") as out:
        process = subprocess.Popen([str(script), "-H", host, "-p", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(NO_AUTH_REQUESTS)})
    endpoint = f"http://{host}:{port}"
    _wait_until_up(endpoint + "/moto-api/", process, log)
    keys = json.loads(subprocess.run([str(script.parent / "python"), "-c", IAM_SETUP, endpoint], check=True,
                                     capture_output=True, text=True, timeout=60).stdout)
    # AWS_EC2_METADATA_DISABLED: a client that finds no keys must not ask 169.254.169.254 (off this machine)
    common = {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": S3_REGION, "AWS_EC2_METADATA_DISABLED": "true"}
    return Server("s3", endpoint, {**common, **keys["admin"]}, process, log, reader_env={**common, **keys["reader"]})


def start_gcs(binary: Path, log: Path, root: Path | None = None, port: int | None = None) -> Server:
    """In memory, or kept in folder `root` (a server started again on it and its port finds it all)."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    backend = ["-backend", "filesystem", "-filesystem-root", str(root)] if root else ["-backend", "memory"]
    with open(log, "a") as out:
        process = subprocess.Popen([str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                                    *backend, "-external-url", endpoint, "-public-host",
                                    f"127.0.0.1:{port}", "-log-level", "warn"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_until_up(endpoint + "/storage/v1/b", process, log)
    return Server("gs", endpoint, {"STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": GCS_PROJECT},
                  process, log)


class _ReadOnlyHandler(http.server.BaseHTTPRequestHandler):
    """Passes reads to the server behind it; answers every write as Google answers a caller without
    storage.objects.create: 403 and GCS's JSON error."""

    upstream = ""  # set on the subclass each proxy makes

    def do_GET(self) -> None:
        self._forward()

    def do_HEAD(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._deny()

    do_PUT = do_PATCH = do_DELETE = do_POST

    def _deny(self) -> None:
        self._read_body()
        message = "anonymous caller does not have storage.objects.create access to the Google Cloud Storage " \
                  "object. Permission 'storage.objects.create' denied on resource (or it may not exist)."
        self._answer(403, {"Content-Type": "application/json"}, json.dumps({"error": {
            "code": 403, "message": message, "errors": [{"message": message, "domain": "global",
                                                          "reason": "forbidden"}]}}).encode())

    def _forward(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        request = urllib.request.Request(self.upstream + self.path, method=self.command, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, answer, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as e:
            status, answer, data = e.code, e.headers, e.read()
        self._answer(status, {k: v for k, v in answer.items()
                              if k.lower() not in ("transfer-encoding", "connection", "content-length")}, data)

    def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _read_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                self.rfile.read(size + 2)
            self.rfile.readline()
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *args) -> None:  # quiet: the test says what failed
        pass


class ReadOnlyGcs:
    """A read-only bucket on GCS, which fake-gcs-server cannot make (it checks no permissions): a fault
    stand-in on loopback in front of the real server, reads passed through and writes refused as Google
    refuses them. Point STORAGE_EMULATOR_HOST at `endpoint`."""

    def __init__(self, server: Server):
        handler = type("Handler", (_ReadOnlyHandler,), {"upstream": server.endpoint})
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"

    def __enter__(self) -> ReadOnlyGcs:
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._http.shutdown()
        self._http.server_close()
