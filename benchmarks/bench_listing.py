"""The driver's memory for a large image input (issue 27, point 9): the driver's peak RSS after each step it
takes before any inference, for N empty image files (they list as images do; no image is read):
listing (io.discover, which keeps every file's info and the units), the read tasks' part tables, and
handing them to Ray Data (`ray.data.from_arrow` puts one object per part, 64 images each).

    python benchmarks/bench_listing.py [--counts 100000 1000000] [--keep DIR]

Each count runs in a process of its own (peak RSS is per process). Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def make_files(folder: Path, count: int) -> None:
    """`count` empty .png files, 1,000 to a subfolder (as a bucket's prefixes often hold them)."""
    for i in range(count):
        sub = folder / f"{i // 1000:05d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        os.close(os.open(sub / f"{i:08d}.png", os.O_CREAT | os.O_WRONLY, 0o644))


def child(folder: str) -> None:
    """The driver's steps in this process, its peak RSS after each."""
    from inferkit.job import io

    steps = {"python and inferkit.job.io imported": _peak_mib()}
    started = time.monotonic()
    source = io.discover(folder, "images")
    steps["listed (io.discover)"] = _peak_mib()
    listed = time.monotonic() - started
    parts = [source.part_table(p) for p in range(source.parts)]
    steps["part tables built"] = _peak_mib()
    import ray

    ray.init(address="local", include_dashboard=False, num_cpus=1, log_to_driver=False, logging_level="ERROR")
    dataset = ray.data.from_arrow(parts)
    steps["handed to Ray Data (from_arrow)"] = _peak_mib()
    print(json.dumps({"images": len(source.units), "parts": source.parts, "list_seconds": round(listed, 1),
                      "blocks": dataset.num_blocks(), "peak_mib": steps}))
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", help="make the files here (and keep them) instead of a temporary folder")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="inferkit-listing-"))
    results = []
    for count in args.counts:
        folder = root / f"images-{count}"
        if not folder.exists():
            print(f"making {count:,} empty images ...", file=sys.stderr, flush=True)
            make_files(folder, count)
        run = subprocess.run([sys.executable, __file__, "child", str(folder)], capture_output=True, text=True,
                             timeout=3600)
        if run.returncode != 0:
            raise SystemExit(f"{count:,} images failed:\n{run.stderr[-3000:]}")
        results.append(json.loads(run.stdout.strip().splitlines()[-1]))
    steps = list(results[0]["peak_mib"])
    print("| images | parts | listing | " + " | ".join(steps) + " |")
    print("| ---: | ---: | ---: | " + " | ".join("---:" for _ in steps) + " |")
    for r in results:
        print(f"| {r['images']:,} | {r['parts']:,} | {r['list_seconds']} s | "
              + " | ".join(f"{r['peak_mib'][s]:,.0f} MiB" for s in steps) + " |")
    if len(results) > 1:
        first, last = results[0], results[-1]
        grown = {s: (last["peak_mib"][s] - first["peak_mib"][s]) / (last["images"] - first["images"]) * 2**20
                 for s in steps[1:]}
        print("\nbytes per added image, by step: " + ", ".join(f"{s}: {b:,.0f}" for s, b in grown.items()))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        child(sys.argv[2])
    else:
        main()
