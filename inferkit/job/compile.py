"""Compiled inference (`--compile`): the predictor's models behind torch.compile with inductor.

Shapes are kept fixed so that an actor compiles a handful of times, not once per batch: every call is
padded to the actor's micro-batch (copies of the last row) and texts to a few length buckets (masked
pad tokens); the padding is cut off the outputs before anything reads them, so it never reaches a row.
Compiled code is cached in one folder per node (INFERKIT_COMPILE_CACHE, a volume on KubeRay), so the
second actor of a node and a resumed run load it instead of compiling again: whole graphs where inductor
can store them, else (CPU graphs with frozen oneDNN weights) their C++ kernels, the slow part to build.

A compile error, or compiled results that disagree with eager fp32 on the first batch, leave the
models eager: said once, and the run goes on with every row.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import stat
import sys
import tempfile
import time
from typing import Any

import pyarrow as pa

from inferkit.console import say
from inferkit.job.plan import AGREEMENT_THRESHOLD

CACHE_ENV = "INFERKIT_COMPILE_CACHE"
# Text lengths are padded up to the first of these that fits (never beyond the model's limit).
TEXT_BUCKETS = (32, 64, 128, 256, 512)
TALLY_NAME = "inferkit-compile-tally"
FAULT = "compile-fail"  # INFERKIT_INJECT_FAULT item (see io.faults): every compile raises
_PRIVATE_FOLDER: str | None = None  # this process's compile cache when the node's may not be used


def cache_folder() -> str:
    """Where this node keeps compiled code: a folder of this user's (`uid-<uid>`, 0700) inside
    INFERKIT_COMPILE_CACHE (a volume: its root may belong to root or be open to all, as an emptyDir is),
    else `inferkit-compile-cache-<uid>` in the temp dir. Inductor runs the code it finds there, so a folder
    that is not this user's alone is not used: this process then compiles into a private folder (removed
    at exit), without the node's cache, and says so."""
    chosen = os.environ.get(CACHE_ENV)
    uid = os.getuid()
    folder = (os.path.join(chosen, f"uid-{uid}") if chosen
              else os.path.join(tempfile.gettempdir(), f"inferkit-compile-cache-{uid}"))
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        status = os.lstat(folder)
        private = stat.S_ISDIR(status.st_mode) and status.st_uid == uid and not status.st_mode & 0o022
    except OSError:  # e.g. a file of that name, or a volume this user cannot write to
        private = False
    if private:
        return folder
    global _PRIVATE_FOLDER
    if _PRIVATE_FOLDER is None:
        print(f"[inferkit] not using {folder} as the compile cache: it is not a folder that only this user "
              f"({uid}) can write to; compiling without the node's cache", file=sys.stderr, flush=True)
        _PRIVATE_FOLDER = tempfile.mkdtemp(prefix="inferkit-compile-")
        atexit.register(shutil.rmtree, _PRIVATE_FOLDER, ignore_errors=True)
    return _PRIVATE_FOLDER


def use_node_cache() -> str:
    """Points inductor's code cache and its FX graph cache at the node's folder (before compiling)."""
    import torch._inductor.config as inductor_config

    folder = cache_folder()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True
    return folder


def text_bucket(length: int, limit: int | None) -> int:
    """The padded length of a batch whose longest text has `length` tokens."""
    fitting = [b for b in TEXT_BUCKETS if b >= length]
    bucket = fitting[0] if fitting else length
    return max(length, min(bucket, limit)) if limit else bucket


def _pad(tensor: Any, rows: int, length: int | None, value: int) -> Any:
    """`tensor` grown to `rows` rows (copies of its last row) and, for token inputs, `length` columns of
    `value` (a masked pad token: attention masks and token types pad with 0)."""
    import torch

    if length is not None and tensor.dim() == 2 and tensor.shape[1] < length:
        extra = tensor.new_full((tensor.shape[0], length - tensor.shape[1]), value)
        tensor = torch.cat([tensor, extra], dim=1)
    if tensor.shape[0] < rows:
        # cat of a channels_last batch with its expanded last row comes out contiguous: keep the layout the
        # graph was compiled for (else the padded last batch compiles again, and runs slower)
        layout = (torch.channels_last if tensor.dim() == 4 and not tensor.is_contiguous()
                  and tensor.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)
        tensor = torch.cat([tensor, tensor[-1:].expand(rows - tensor.shape[0], *tensor.shape[1:])])
        tensor = tensor.contiguous(memory_format=layout)
    return tensor


def padded_call(model: Any, inputs: dict[str, Any], rows: int, max_length: int | None, pad_token_id: int) -> Any:
    """model's output for `inputs`, computed on a batch padded to `rows` rows and (texts) a length bucket."""
    count = next(iter(inputs.values())).shape[0]
    length = inputs["input_ids"].shape[1] if "input_ids" in inputs else None
    bucket = text_bucket(length, max_length) if length is not None else None
    padded = {key: _pad(value, max(rows, count), bucket, pad_token_id if key == "input_ids" else 0)
              for key, value in inputs.items()}
    return _cut(model(**padded), count, length)


def _cut(output: Any, rows: int, length: int | None) -> Any:
    """The model output without the padding rows (and token positions); copies, as CUDA graphs reuse
    their output buffers on the next call."""
    cut = {}
    for key, value in output.items():
        if hasattr(value, "shape") and value.dim() >= 1:
            value = value[:rows]
            if length is not None and value.dim() == 3:
                value = value[:, :length]
            value = value.clone()
        cut[key] = value
    return type(output)(**cut)


class CompiledModel:
    """One model behind torch.compile with fixed shapes; counts the graphs it compiles."""

    def __init__(self, model: Any, device: str, max_length: int | None, pad_token_id: int | None, fault: bool):
        import torch

        self.max_length = max_length
        self.pad_token_id = pad_token_id or 0
        self.compilations = 0
        self.compile_seconds = 0.0
        self.fault = fault
        # CPU: freezing folds the weights into the graph as constants (inference only). GPU: CUDA graphs
        # replay the fixed shapes without launch overhead (what mode="reduce-overhead" sets).
        self.patches = {"freezing": True} if device == "cpu" else {"triton.cudagraphs": True}
        self.compiled = torch.compile(model, backend=self._backend, dynamic=False)

    def _patched(self) -> Any:
        """Inductor's config with this model's patches, around each call: dynamo reads `freezing` while it
        traces, before any backend runs, to decide whether parameters become graph constants or inputs
        (is_parameter_freezing in torch/_dynamo/utils.py, used by variables/builder.py; it also needs grad
        off, as the predictor's inference_mode has it). Passed only to compile_fx, or as torch.compile's
        options, it came too late: parameters stayed inputs, nothing was folded, and ResNet-50 ran 32
        images/s compiled instead of 42 (2 CPUs, bf16, batch 16)."""
        import torch._inductor.config as inductor_config

        return inductor_config.patch(self.patches)

    def _backend(self, graph: Any, example_inputs: list) -> Any:
        from torch._inductor.compile_fx import compile_fx

        if self.fault:
            raise RuntimeError("injected compile failure (INFERKIT_INJECT_FAULT compile-fail)")
        self.compilations += 1
        return compile_fx(graph, example_inputs)  # with self.patches: _patched() is around every call

    def __call__(self, inputs: dict[str, Any], rows: int) -> Any:
        started, before = time.perf_counter(), self.compilations
        with self._patched():
            output = padded_call(self.compiled, inputs, rows, self.max_length, self.pad_token_id)
        if self.compilations != before:
            self.compile_seconds += time.perf_counter() - started
        return output


class ActorCompiler:
    """The compiled models of one inference actor; on any compile error they all go back to eager."""

    def __init__(self, models: list, device: str, max_lengths: list[int | None], pad_token_ids: list[int | None],
                 fault: bool):
        use_node_cache()
        self.eager = models
        self.compiled = [CompiledModel(m, device, max_lengths[k] if k < len(max_lengths) else None,
                                       pad_token_ids[k] if k < len(pad_token_ids) else None, fault)
                         for k, m in enumerate(models)]
        self.fallback = ""
        self.reported: dict = {}
        self.announce = True  # the first-batch check has its own message

    def __call__(self, k: int, inputs: dict[str, Any], rows: int) -> Any:
        if self.fallback:
            return self.eager[k](**inputs)
        try:
            output = self.compiled[k](inputs, rows)
        except Exception as e:
            from inferkit.job.tasks import is_out_of_memory

            if is_out_of_memory(e):
                raise  # the predictor halves its micro-batch; a smaller shape compiles once more
            reason = str(e).split("Set TORCHDYNAMO_VERBOSE")[0]  # dynamo's debugging advice is not for users
            self.fallback = f"{type(e).__name__}: {' '.join(reason.split())[:300]}"
            if self.announce:
                print(f"[inferkit] compiling failed, this actor runs eager from now on: {self.fallback}",
                      file=sys.stderr, flush=True)
            output = self.eager[k](**inputs)
        self._report()
        return output

    def stats(self) -> dict:
        """Graphs compiled (each batch shape, each graph break); of the graphs this process compiled, how many
        inductor found whole in the node's cache, how many it did not find, and how many it could not store
        there (a CPU graph whose frozen weights are oneDNN tensors, which do not pickle: its C++ kernels
        still come from the node's cache); the seconds spent; why this actor runs eager if it does."""
        from torch._dynamo.utils import counters

        return {"compilations": sum(m.compilations for m in self.compiled),
                "cache_hits": counters["inductor"]["fxgraph_cache_hit"],
                "cache_misses": counters["inductor"]["fxgraph_cache_miss"],
                "cache_bypasses": counters["inductor"]["fxgraph_cache_bypass"],
                "compile_seconds": round(sum(m.compile_seconds for m in self.compiled), 3),
                "fallback": self.fallback}

    def _report(self) -> None:
        """Tells the run's tally (when there is one) what changed: for the report, per actor."""
        stats = self.stats()
        if stats == self.reported:
            return
        self.reported = stats
        import ray

        if not ray.is_initialized():
            return
        try:
            tally = ray.get_actor(TALLY_NAME)
        except ValueError:  # no tally: a test or the check task
            return
        tally.record.remote(f"{ray.get_runtime_context().get_node_id()[:8]}/{os.getpid()}", stats)


# ---------------------------------------------------------------------------------------------
# On the driver: the first-batch check, and the tally of what each actor compiled


def check_compiled(spec: Any, batch: pa.Table) -> dict:
    """Compiled predictions in the run's precision against eager fp32 on the first batch, compared as the
    bf16 check compares; runs where actors run, so the node's cache holds its compiled kernels (and graphs
    where inductor can store them) before they start."""
    from inferkit.job.tasks import Predictor, results_agreement

    rows, reference = Predictor(dataclasses.replace(spec, precision="fp32", compile=False)).predictions(batch)
    if not rows:
        return {"agreement": 0.0, "rows": 0, "why": f"none of the first {batch.num_rows} rows could be compared "
                                                    "with eager fp32 (all have errors)"}
    candidate = Predictor(spec)
    candidate.compiler.announce = False
    _, results = candidate.predictions(batch)
    stats = candidate.compiler.stats()
    if stats["fallback"]:
        return {"agreement": 0.0, "rows": len(rows), "why": f"compiling failed: {stats['fallback']}", **stats}
    return {"agreement": results_agreement(spec.task, reference, results), "rows": len(rows), **stats}


def settle(sample: pa.Table | None, spec: Any, check: Any) -> tuple[Any, dict]:
    """Compiling stays on only if the first rows (`sample`, None when no row is left) compile and agree
    with eager fp32 in `check` (check_compiled as a Ray task where actors run); says which, once."""
    import ray
    from ray.exceptions import OutOfMemoryError, RayTaskError, WorkerCrashedError

    if not spec.compile:
        return spec, {"on": False}
    if sample is None:  # earlier attempts wrote every row
        return dataclasses.replace(spec, compile=False), {"on": False, "why": "no row left to compute"}
    try:
        result = ray.get(check.remote(spec, sample))
    except (WorkerCrashedError, OutOfMemoryError) as e:  # compiling can kill a process (compiler, memory)
        result = {"agreement": 0.0, "rows": 0, "why": f"the check's worker process died while compiling "
                                                      f"({type(e).__name__})"}
    except RayTaskError as e:  # e.g. two copies of the model do not fit: eager needs only one
        result = {"agreement": 0.0, "rows": 0, "why": f"the check failed: {str(e).strip().splitlines()[-1][:200]}"}
    keep = result["agreement"] >= AGREEMENT_THRESHOLD
    found = result.get("why") or (f"compiled agrees with eager fp32 on {result['agreement']:.1%} of "
                                  f"{result['rows']} rows, {result['compile_seconds']:g} s compiling")
    say(f"compile: {found} -> {'compiled' if keep else 'eager'}")
    return dataclasses.replace(spec, compile=keep), {"on": keep, "check": result}


class Tally:
    """A Ray actor (start_tally) that keeps each inference actor's compile stats for the report."""

    def __init__(self) -> None:
        self.actors: dict[str, dict] = {}

    def record(self, actor: str, stats: dict) -> None:
        self.actors[actor] = stats

    def read(self) -> dict[str, dict]:
        return self.actors


def start_tally() -> Any:
    import ray

    return ray.remote(num_cpus=0)(Tally).options(name=TALLY_NAME).remote()


def read_tally(tally: Any) -> dict[str, dict]:
    import ray

    actors = ray.get(tally.read.remote())
    ray.kill(tally)
    return actors
