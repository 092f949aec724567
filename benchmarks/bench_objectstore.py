"""Object stores (issue 26): the same image job from folder to folder and from bucket to bucket on moto's S3
server on this machine (tests/objectstores.py starts it, IAM enforced, over loopback), and what one ledger
commit (a parquet file and its entry) costs on S3 against a local disk.

    python benchmarks/bench_objectstore.py [--images 2000] [--commits 50]

Prints the figures (markdown) for BENCHMARKS.md. The model is the tiny ResNet of tests/tiny.py, so the
figures are about I/O and bookkeeping, not inference.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import objectstores  # noqa: E402
import tiny  # noqa: E402

CACHE = Path(os.environ.get("INFERKIT_TEST_CACHE") or Path.home() / ".cache" / "inferkit-tests") / "objectstores"


def timed_run(env: dict, model: str, source: str, output: str) -> float:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "inferkit", "run", "--task", "image-classification", "--model", model,
                             "--input", source, "--output", output, "--compile", "off"],
                            env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"{source} -> {output} failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started


def commit_seconds(filesystem: pafs.FileSystem, staging: str, commits: int) -> float:
    from inferkit.job.io import PART, PART_ROWS, ROW
    from inferkit.job.ledger import Ledger

    ledger = Ledger(filesystem, staging)
    started = time.monotonic()
    for part in range(commits):
        ledger.commit(pa.table({"label": ["cat"] * 100, "error": pa.nulls(100, pa.string()),
                                PART: [part] * 100, ROW: list(range(100)), PART_ROWS: [100] * 100}))
    return (time.monotonic() - started) / commits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=50)
    args = parser.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script, why = objectstores.moto_server(CACHE)
        if script is None:
            raise SystemExit(why)
        server = objectstores.start_s3(script, tmp / "moto.log")
        try:
            model = tiny.resnet(tmp / "resnet")
            images = tmp / "images"
            images.mkdir()
            for i in range(args.images):
                (images / f"{i:05d}.png").write_bytes(tiny.image_bytes("RGB", "PNG", seed=i))
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
            local = timed_run(env, model, str(images), str(tmp / "out"))
            bucket = server.new_bucket()
            server.upload(images, f"{bucket}/images")
            s3 = timed_run({**env, **server.env}, model, f"s3://{bucket}/images", f"s3://{bucket}/out")
            on_s3 = commit_seconds(server.filesystem(), f"{bucket}/ledger", args.commits)
            (tmp / "ledger" / "_inferkit" / "ledger").mkdir(parents=True)  # an object store needs no folders
            on_disk = commit_seconds(pafs.LocalFileSystem(), str(tmp / "ledger"), args.commits)
        finally:
            server.stop()
    print(f"| {args.images:,} images, tiny ResNet, 2 CPUs | wall |\n| --- | ---: |")
    print(f"| folder to folder | {local:.1f} s |\n| bucket to bucket (moto S3 on loopback) | {s3:.1f} s |")
    print(f"\nledger commit (100-row file and its entry), mean of {args.commits}: "
          f"S3 {on_s3 * 1000:.1f} ms, local disk {on_disk * 1000:.1f} ms")


if __name__ == "__main__":
    main()
