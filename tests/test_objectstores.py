"""Inputs and outputs on real S3 and GCS API servers (moto's, fake-gcs-server) on loopback, reached the way
a user reaches a bucket: `inferkit run` in a process of its own with the store's endpoint and keys in its
environment (AWS_ENDPOINT_URL and AWS_* keys; STORAGE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT). Every input
kind from each store to it, the ledger and resume where nothing renames, the all-or-nothing publish, and
the faults: refusals before Ray in one line, a frozen store ridden out, a lost one failing with its rows kept."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import objectstores
import tiny

RUN_TIMEOUT = 600


def _env(server, **extra: str) -> dict[str, str]:
    """This process's environment without any store settings of its own, plus the server's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "STORAGE_EMULATOR", "GOOGLE_", "RAY_ADDRESS"))}
    return {**env, **server.env, **extra}


def _run(server, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inferkit", "run", *args], env=_env(server, **extra),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def _texts(rows: int) -> pa.Table:
    return pa.table({"id": [f"r{i}" for i in range(rows)],
                     "text": [tiny.TEXTS[i % len(tiny.TEXTS)] + f" {i}" for i in range(rows)]})


def _write_kind(kind: str, folder: Path, rows: int) -> None:
    folder.mkdir(parents=True)
    table = _texts(rows)
    if kind == "parquet":
        pq.write_table(table, folder / "in.parquet", row_group_size=4)
    elif kind == "jsonl":
        (folder / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    elif kind == "csv":
        pa_csv.write_csv(table, folder / "in.csv")
    else:
        for i in range(rows):
            (folder / f"img{i:03d}.png").write_bytes(tiny.image_bytes("RGB", "PNG", seed=i))


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("kind", ["parquet", "jsonl", "csv", "images"])
def test_every_input_kind_from_the_store_to_the_store(store, tiny_models, tmp_path, kind):
    bucket = store.new_bucket()
    rows = 12
    _write_kind(kind, tmp_path / "in", rows)
    store.upload(tmp_path / "in", f"{bucket}/input/{kind}")
    model, task = ((tiny_models["resnet"], "image-classification") if kind == "images"
                   else (tiny_models["classifier"], "text-classification"))
    result = _run(store, "--task", task, "--model", model, "--input", f"{store.scheme}://{bucket}/input/{kind}",
                  "--output", f"{store.scheme}://{bucket}/output/{kind}", "--batch-size", "4", "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    table, report = store.published(f"{bucket}/output/{kind}")
    ids = table.column("path" if kind == "images" else "id").to_pylist()
    assert len(ids) == rows and len(set(ids)) == rows and table.column("error").null_count == rows
    assert report["rows"] == rows and report["output"]["uri"] == f"{store.scheme}://{bucket}/output/{kind}"


def _closed_port() -> int:
    from objectstores import free_port

    return free_port()


def test_s3_filesystems_reach_ray_workers_with_their_retries(s3_server, monkeypatch):
    """pyarrow pickles an S3 filesystem without its retry strategy: the reads and writes in Ray's workers
    would give up after the SDK's three attempts. The filesystem inferkit opens unpickles with its own."""
    import pickle

    from ray import cloudpickle

    from inferkit.job import io

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    filesystem, path = io.open_filesystem(f"s3://{s3_server.new_bucket()}/x")
    sent = cloudpickle.dumps(filesystem)
    assert b"s3_with_attempts" in sent
    assert pickle.loads(sent).get_file_info(path.split("/")[0]).type == pafs.FileType.Directory


def test_the_store_watch_ends_a_block_whose_store_is_gone_and_only_then():
    """Against a GCS endpoint where nothing listens (each check fails at once): the block is ended with
    StoreLost once the outage is long enough; a block that ends first is never interrupted afterwards."""
    from datetime import timedelta

    from inferkit.job import io

    gone = pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=f"127.0.0.1:{_closed_port()}",
                              retry_time_limit=timedelta(seconds=0))
    started = time.monotonic()
    with pytest.raises(io.StoreLost, match="the output store stopped answering"):
        with io.StoreWatch([("output store", gone, "bucket/out")], outage_seconds=0.3):
            time.sleep(60)
    assert time.monotonic() - started < 30
    with io.StoreWatch([("output store", gone, "bucket/out")], outage_seconds=0.3):
        pass
    time.sleep(1)  # nothing is raised here: the watch ended with its block
    with io.StoreWatch([("output store", pafs.LocalFileSystem(), "/")]) as local:
        time.sleep(0.2)
    assert not local.stores and local.failure is None  # a local filesystem is not watched


def test_bad_buckets_endpoints_and_keys_are_refused_in_one_line_before_ray(store, tmp_path):
    bucket = store.new_bucket()
    _write_kind("jsonl", tmp_path / "in", 3)
    store.upload(tmp_path / "in", f"{bucket}/in")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "_SUCCESS").write_text("")
    store.upload(tmp_path / "done", f"{bucket}/done")
    s, good = store.scheme, f"{store.scheme}://{bucket}/in"
    endpoint = {"s3": "AWS_ENDPOINT_URL", "gs": "STORAGE_EMULATOR_HOST"}[s]
    cases = [
        (["--input", f"{s}://no-such-bucket-here/in", "--output", str(tmp_path / "o")], {},
         "no bucket 'no-such-bucket-here'"),
        (["--input", good, "--output", f"{s}://no-such-bucket-here/out"], {}, "no bucket 'no-such-bucket-here'"),
        (["--input", f"{s}://{bucket}/nothing-here", "--output", str(tmp_path / "o")], {}, "no such file or folder"),
        (["--input", good, "--output", f"{s}://{bucket}/done"], {}, "already exists; pass --overwrite"),
        (["--input", good, "--output", str(tmp_path / "o")], {endpoint: f"http://127.0.0.1:{_closed_port()}"},
         "does not answer"),
    ]
    # a bucket the caller may read but not write: moto's IAM on S3, a fault stand-in on GCS (tests/objectstores.py)
    read_only = objectstores.ReadOnlyGcs(store) if s == "gs" else contextlib.nullcontext()
    if s == "s3":
        cases += [
            (["--input", good, "--output", f"s3://{bucket}/out"], store.reader_env, "cannot write there"),
            (["--input", good, "--output", str(tmp_path / "o")],
             {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000", "AWS_SECRET_ACCESS_KEY": "x"}, "cannot list it"),
        ]
    else:
        cases += [
            (["--input", good, "--output", f"gs://{bucket}/out"], {"STORAGE_EMULATOR_HOST": read_only.endpoint},
             "cannot write there"),
            # Google's default credentials where none can be had: no emulator, no key file, no metadata server
            (["--input", good, "--output", str(tmp_path / "o")],
             {"STORAGE_EMULATOR_HOST": "", "HOME": str(tmp_path), "GCE_METADATA_ROOT": f"127.0.0.1:{_closed_port()}"},
             "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS"),
        ]
    with read_only:
        for args, env, said in cases:
            started = time.monotonic()
            result = _run(store, *args, **env)
            line = result.stderr.strip()
            assert result.returncode == 2 and len(line.splitlines()) == 1, (args, env, result.stderr[-2000:])
            assert line.startswith("Error: ") and said in line, (args, env, line)
            assert time.monotonic() - started < 30, (args, env, "took", time.monotonic() - started)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# Resume, outages and loss, on a run long enough to be interrupted (INFERKIT_INJECT_FAULT slows its batches)

ROWS = 480


def _long_job(store, tmp_path) -> tuple[str, list[str]]:
    """A bucket holding ROWS rows of parquet (40 row groups), and the run's arguments for it."""
    bucket = store.new_bucket()
    (tmp_path / "in").mkdir()
    pq.write_table(_texts(ROWS), tmp_path / "in" / "in.parquet", row_group_size=12)
    store.upload(tmp_path / "in", f"{bucket}/in")
    return bucket, ["--input", f"{store.scheme}://{bucket}/in", "--output", f"{store.scheme}://{bucket}/out",
                    "--batch-size", "8", "--precision", "fp32", "--compile", "off"]


def _ledger_rows(store, bucket: str) -> int:
    from inferkit.job.ledger import Ledger

    return Ledger(store.filesystem(), f"{bucket}/out.inferkit-unfinished").load().rows


def _start(store, model: str, args: list[str], log: Path, **extra: str) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "inferkit", "run", "--task", "text-classification", "--model",
                                 model, *args], env=_env(store, **extra), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _wait_for_rows(store, bucket: str, process: subprocess.Popen, log: Path, rows: int) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while _ledger_rows(store, bucket) < rows:
        assert process.poll() is None, f"the run ended first:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


def _every_row_once(store, bucket: str) -> dict:
    table, report = store.published(f"{bucket}/out")
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(ROWS)) and table.column("error").null_count == ROWS
    staging = store.filesystem().get_file_info(f"{bucket}/out.inferkit-unfinished")
    assert staging.type == pafs.FileType.NotFound, "the staging prefix outlived the publish"
    return report


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_run_resumes_on_the_store_and_rides_out_a_frozen_store(store, tiny_models, tmp_path):
    """The first attempt loses an inference actor (crash-once) and then its whole process group to SIGKILL
    (a lost node) at ~40%; the same command resumes, and the store freezes for ten seconds under it, which
    it rides out: every row once, the rest computed, where the store has no rename (ledger entries and the
    publish copy objects)."""
    bucket, args = _long_job(store, tmp_path)
    marker = tmp_path / "crashed"
    first = _start(store, tiny_models["classifier"], args, tmp_path / "first.log",
                   INFERKIT_INJECT_FAULT=f"slow:0.05,crash-once:{marker}")
    _wait_for_rows(store, bucket, first, tmp_path / "first.log", int(ROWS * 0.4))
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert marker.exists(), "the actor did not crash: the crash proved nothing"
    kept = _ledger_rows(store, bucket)
    log = tmp_path / "second.log"
    second = _start(store, tiny_models["classifier"], args, log, INFERKIT_INJECT_FAULT="slow:0.1")
    deadline = time.monotonic() + RUN_TIMEOUT
    while "output files" not in log.read_text():  # the plan's last line: the pipeline starts next
        assert second.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    # Frozen while it reads and writes; waiting for a row beyond `kept` (a listing of every entry on each
    # poll) missed the short rest of the run on a loaded machine: it had ended first.
    store.freeze(10)
    assert second.poll() is None, "the run ended before the store came back: the freeze proved nothing"
    assert second.wait(timeout=RUN_TIMEOUT) == 0, log.read_text()[-3000:]
    # A write the killed run had under way may still land after the kill (the server finishes a request it
    # has): the resumed run keeps those rows too, never fewer than were counted after the kill.
    resumed = int(log.read_text().split("resuming: ")[1].split(f" of {ROWS} rows already done")[0])
    report = _every_row_once(store, bucket)
    assert report["rows_resumed"] == resumed >= kept > 0 and report["attempts"] == 2
    assert report["output"]["write"] == "distributed"


@pytest.mark.slow
@pytest.mark.ray
def test_a_store_gone_for_good_fails_the_run_and_the_rows_written_stay(tiny_models, tmp_path, gcs_server):
    """fake-gcs-server keeping its objects in a folder, killed mid-run: the run fails (after
    --store-outage-seconds, not google-cloud-cpp's 15 minutes) in one line, exit 1; started again on the same
    folder, the same command resumes from what was written before the loss."""
    import objectstores

    from inferkit.job.io import STORE_OUTAGE_SECONDS

    outage = 12
    binary = Path(gcs_server.process.args[0])
    root, log = tmp_path / "objects", tmp_path / "server.log"
    root.mkdir()
    server = objectstores.start_gcs(binary, log, root=root)
    try:
        bucket, args = _long_job(server, tmp_path)
        run_log = tmp_path / "run.log"
        process = _start(server, tiny_models["classifier"], [*args, "--store-outage-seconds", str(outage)], run_log,
                         INFERKIT_INJECT_FAULT="slow:0.1")
        _wait_for_rows(server, bucket, process, run_log, ROWS // 4)
        kept = _ledger_rows(server, bucket)
        server.kill()
        lost = time.monotonic()
        assert process.wait(timeout=RUN_TIMEOUT) == 1, run_log.read_text()[-3000:]
        took = time.monotonic() - lost
        errors = [line for line in run_log.read_text().splitlines() if line.startswith("Error: ")]
        assert len(errors) == 1 and "store stopped answering for" in errors[0], run_log.read_text()[-3000:]
        said = int(errors[0].split("stopped answering for ")[1].split(" s ")[0])
        assert outage <= said < STORE_OUTAGE_SECONDS, errors[0]  # the flag's outage, not the default's
        server = objectstores.start_gcs(binary, log, root=root, port=int(server.endpoint.rsplit(":", 1)[1]))
        assert _ledger_rows(server, bucket) >= kept > 0
        again = _run(server, "--task", "text-classification", "--model", tiny_models["classifier"], *args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _every_row_once(server, bucket)["rows_resumed"] >= kept
        print(f"\nthe run failed {took:.0f} s after the store went away")
    finally:
        server.stop()
