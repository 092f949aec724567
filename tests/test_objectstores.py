"""Inputs and outputs on real S3 and GCS API servers (moto's, fake-gcs-server) on loopback, reached the way
a user reaches a bucket: `inferkit run` in a process of its own with the store's endpoint and keys in its
environment (AWS_ENDPOINT_URL and AWS_* keys; STORAGE_EMULATOR_HOST and GOOGLE_CLOUD_PROJECT). Every input
kind from each store to it, the ledger and resume where nothing renames, the all-or-nothing publish, and
the faults: refusals before Ray in one line, a frozen store ridden out, a lost one failing with its rows kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

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


def _published(server, prefix: str) -> tuple[pa.Table, dict]:
    fs = server.filesystem()
    files = [i for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)) if i.type == pafs.FileType.File]
    names = {f.path.rsplit("/", 1)[1] for f in files}
    assert {"_SUCCESS", "_inferkit_report.json"} <= names, names
    assert not any("_inferkit/" in f.path for f in files), names  # no bookkeeping in a published output
    table = pa.concat_tables(pq.read_table(f.path, filesystem=fs) for f in files if f.path.endswith(".parquet"))
    with fs.open_input_stream(f"{prefix}/_inferkit_report.json") as stream:
        return table, json.loads(stream.read())


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
    table, report = _published(store, f"{bucket}/output/{kind}")
    ids = table.column("path" if kind == "images" else "id").to_pylist()
    assert len(ids) == rows and len(set(ids)) == rows and table.column("error").null_count == rows
    assert report["rows"] == rows and report["output"]["uri"] == f"{store.scheme}://{bucket}/output/{kind}"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
         "nnect"),  # S3: "Could not connect to server", GCS: "does not answer (... Connection refused)"
    ]
    if s == "s3":
        cases += [
            (["--input", good, "--output", f"s3://{bucket}/out"], store.reader_env, "cannot write there"),
            (["--input", good, "--output", str(tmp_path / "o")],
             {"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000", "AWS_SECRET_ACCESS_KEY": "x"}, "cannot list it"),
        ]
    else:  # Google's default credentials where none can be had: no emulator, no key file, no metadata server
        cases.append((["--input", good, "--output", str(tmp_path / "o")],
                       {"STORAGE_EMULATOR_HOST": "", "HOME": str(tmp_path), "GCE_METADATA_ROOT": f"127.0.0.1:{_closed_port()}"},
                       "no Google credentials found: set GOOGLE_APPLICATION_CREDENTIALS"))
    for args, env, said in cases:
        started = time.monotonic()
        result = _run(store, *args, **env)
        line = result.stderr.strip()
        assert result.returncode == 2 and len(line.splitlines()) == 1, (args, env, result.stderr[-2000:])
        assert line.startswith("Error: ") and said in line, (args, env, line)
        assert time.monotonic() - started < 30, (args, env, "took", time.monotonic() - started)
    assert not (tmp_path / "o").exists()
