"""Pure planning: what the cluster has + what the model is -> how to run it.

No Ray, no torch: the inputs are plain records read elsewhere (see resources.py), so every decision
is unit-tested on synthetic clusters, from one 1-CPU node to a thousand 8-GPU nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from inferkit.config import RunOptions, parse_actor_bounds
from inferkit.errors import ConfigError

GiB = 2**30
# CPU threads per inference actor: one, and as many actors as CPUs, when the input has a part for each
# (Ray Data gives an actor whole blocks, and a part is one block). Measured on 2 CPUs (ResNet-50,
# bench_inference.py compile, BENCHMARKS.md): two 1-thread actors ran 27.6 images/s eager and 38.8 compiled;
# one 2-thread actor, on the day before, 20.8-22 and 28.8-28.9 (results/cpu-compile-resnet50-2026-12-01.json).
# An actor's threads meet at every parallel region, so one that loses its core to decoding, the driver or
# Ray's daemons stalls the others; separate processes wait on no one. Each actor holds its own weights, so
# memory bounds the count too (ACTOR_BASE_BYTES); fewer actors get more threads.
THREADS_PER_CPU_ACTOR = 1
# Threads per actor where the input is not known when actors are shaped (render, for a cluster that may
# start at zero workers): an input of one big part still gets 8 threads, several parts more actors.
THREADS_PER_CPU_ACTOR_INPUT_UNSEEN = 8
# A CPU inference actor's memory before its weights (a Ray worker with torch and transformers loaded,
# about 1 GiB resident measured), and its weights counted 1.5 times (loading, a frozen compiled copy).
ACTOR_BASE_BYTES = 2**30
# CPUs per node kept for reading, decoding and writing (Ray Data's tasks) beside inference actors;
# an actor that takes every CPU of a node starves them and the job hangs.
MIN_IO_CPUS = 0.25
IO_CPU_SHARE = 0.125
# Fractional CPUs each read/decode/write task asks for, so they fit next to the actors.
IO_TASK_CPUS = 0.25
GPU_MEMORY_USABLE = 0.7
UNKNOWN_GPU_MEMORY = 16 * GiB
MAX_BATCH = 1024
# Transient activation bytes per fp32 element of one input row; rough, the OOM fallback corrects it.
ACTIVATION_FACTOR_IMAGE = 64
ACTIVATION_FACTOR_TEXT = 24
AGREEMENT_THRESHOLD = 0.99
# Compile-cost estimate for --compile auto. Measured (bench_inference.py compile, ResNet-50 of 0.1 GiB on 2
# CPUs, two 1-thread actors): the first-batch check's compile and then each actor's, from the node's cache,
# cost about 39 s of wall (320 images took 35 s longer than eager, computing them 3 s faster), after which
# the node ran 38.8 instead of 27.6 images/s: each row saved 0.0105 s, so about 95 rows repay a second.
# GPUs run each row far faster, so repaying takes more rows (a guess, unmeasured).
COMPILE_SECONDS_BASE = 35.0
COMPILE_SECONDS_PER_GIB = 50.0
TEXT_COMPILE_SHAPES = 3  # length buckets a text job typically meets, each compiled once
ROWS_PER_COMPILE_SECOND = {"cpu": 95, "gpu": 1600}
# A text model on a CPU saves less per row the smaller it is, so the rows a second of compiling repays,
# times the weights' GiB. Measured (bench_inference.py compile, weights frozen, one 2-thread actor on 2
# CPUs): BERT-base (0.41 GiB) ran 21.7 -> 27.5 rows/s, 104 rows a second of compiling, 42 in these units;
# MiniLM (0.085 GiB) 115.2 -> 132.5, 885 rows, 75. The larger is kept: no text model compiles too soon.
TEXT_CPU_ROWS_GIB_PER_COMPILE_SECOND = 75
# auto compiles only for jobs this many times longer than the break-even, so it never slows a short one.
COMPILE_PAYBACK_MARGIN = 2
# The CPU figures above were measured on a node of this many CPUs. A node of more CPUs runs more rows a
# second, so each row of its share saves less time: the rows that repay compiling grow with its CPUs.
COMPILE_MEASURED_NODE_CPUS = 2
# Output files (each one ledger entry, the unit a killed run loses or keeps): large enough that 100M rows
# make thousands of files, not millions; small enough that a short job still writes several per actor,
# so a run killed midway keeps most of what it computed.
MAX_ROWS_PER_FILE = 20_000
FILES_PER_ACTOR = 16
BATCHES_PER_FILE_UNKNOWN_ROWS = 32


@dataclass(frozen=True)
class NodeResources:
    """One Ray node as the planner sees it."""

    node_id: str
    cpus: float  # Ray's logical CPUs
    memory_bytes: int
    gpus: int = 0
    real_cpus: float | None = None  # what the container may really use (cgroup quota, cpuset); None = as Ray says
    object_store_bytes: int = 0
    gpu_type: str = ""
    gpu_memory_bytes: int = 0
    gpu_bf16: bool = False
    cpu_bf16: bool = False
    cpp_compiler: bool = True  # inductor on CPU builds C++ kernels (Ray's CPU images have no compiler)

    @property
    def usable_cpus(self) -> float:
        return self.cpus if self.real_cpus is None else min(self.cpus, self.real_cpus)


@dataclass(frozen=True)
class ClusterResources:
    nodes: tuple[NodeResources, ...]

    @property
    def workers(self) -> tuple[NodeResources, ...]:
        """Nodes that can run work (a KubeRay head has num-cpus 0 and no GPUs)."""
        return tuple(n for n in self.nodes if n.cpus > 0 or n.gpus > 0)


@dataclass(frozen=True)
class ModelProfile:
    """What the planner needs to know about the model(s), read from their configs."""

    input_kind: Literal["image", "text"]
    parameter_bytes: int  # fp32 bytes of all models' weights together
    convolutional: bool = False
    image_size: int = 224
    max_length: int = 512
    hidden_size: int = 768


@dataclass(frozen=True)
class Decision:
    what: str
    value: str
    why: str


@dataclass(frozen=True)
class Plan:
    device: Literal["cpu", "gpu"]
    actors_min: int
    actors_max: int
    num_cpus_per_actor: float
    num_gpus_per_actor: float
    threads_per_actor: int
    batch_size: int
    io_task_cpus: float
    precision: str  # fp32, bf16 or fp16; with precision_check, bf16 only if the first batch agrees
    precision_check: bool
    channels_last: bool
    compile: bool = False
    rows_per_file: int = MAX_ROWS_PER_FILE
    decisions: tuple[Decision, ...] = field(default=())

    def table(self) -> str:
        width = max(len(d.what) for d in self.decisions)
        vwidth = max(len(d.value) for d in self.decisions)
        return "\n".join(f"  {d.what:<{width}}  {d.value:<{vwidth}}  {d.why}" for d in self.decisions)


def _pow2_floor(value: float) -> int:
    return 1 if value < 1 else 2 ** int(math.log2(value))


def _row_bytes(profile: ModelProfile, element_bytes: int) -> int:
    """Rough peak activation bytes for one row during a forward pass."""
    if profile.input_kind == "image":
        return profile.image_size**2 * 3 * element_bytes * ACTIVATION_FACTOR_IMAGE
    return profile.max_length * profile.hidden_size * element_bytes * ACTIVATION_FACTOR_TEXT


def cpu_actor_shape(usable_cpus: float, most_actors: int | None = None,
                    threads: int = THREADS_PER_CPU_ACTOR) -> tuple[int, float, float]:
    """(actors per node, CPUs per actor, CPUs kept for reading and decoding) on a node with this many
    usable CPUs: `threads` threads an actor, as many actors as that makes, unless memory or the input
    allow only `most_actors` (then fewer actors with more threads each)."""
    io_cpus = min(usable_cpus / 2, max(MIN_IO_CPUS, IO_CPU_SHARE * usable_cpus))
    inference = usable_cpus - io_cpus
    per_node = max(1, min(math.ceil(inference / threads), most_actors or math.inf))
    return per_node, math.floor(inference / per_node * 100) / 100, io_cpus


def actor_memory_bytes(weight_bytes: int) -> float:
    """What one CPU inference actor holds: its worker and its weights, counted 1.5 times."""
    return ACTOR_BASE_BYTES + weight_bytes * 1.5


def actors_by_memory(node_memory_bytes: int, weight_bytes: int) -> int:
    """CPU inference actors whose weights and working memory fit in half the node's memory."""
    return max(1, int(node_memory_bytes * 0.5 // actor_memory_bytes(weight_bytes)))


def _resolve_device(cluster: ClusterResources, options: RunOptions) -> tuple[str, str]:
    gpus = sum(n.gpus for n in cluster.workers)
    if options.device == "gpu":
        if not gpus and not options.actors:
            raise ConfigError(["--device gpu: the cluster has no GPUs (Ray sees none on any node); for a GPU group "
                               "that autoscales from zero, give --actors MIN:MAX (render does)"])
        return "gpu", "asked for" if gpus else "asked for; no GPU node yet, the autoscaler adds them"
    if options.device == "cpu":
        return "cpu", "asked for"
    if gpus:
        return "gpu", f"{gpus} GPUs in the cluster"
    return "cpu", "no GPUs in the cluster"


def _gpu_plan(cluster: ClusterResources, profile: ModelProfile, options: RunOptions, decisions: list) -> dict:
    gpu_nodes = [n for n in cluster.workers if n.gpus > 0]
    per_actor = options.num_gpus_per_actor or 1.0
    capacity = sum(int(n.gpus / per_actor + 1e-9) for n in gpu_nodes)
    if gpu_nodes and capacity < 1:
        raise ConfigError([f"--num-gpus-per-actor {per_actor:g}: no node has that many GPUs"])
    # The rest of a GPU node's CPUs decode and preprocess, so the GPU never waits on PIL.
    cpus_per_gpu = min((n.usable_cpus / n.gpus for n in gpu_nodes), default=8.0)
    num_cpus = options.num_cpus_per_actor or (1.0 if cpus_per_gpu >= 2 else max(0.25, cpus_per_gpu / 2))
    decisions.append(Decision("actor resources", f"{per_actor:g} GPU, {num_cpus:g} CPU",
                              "asked for" if options.num_gpus_per_actor else "one inference actor per GPU"))
    # GPUs not seen yet (an autoscaling group at zero): try bf16, the first-batch check decides.
    bf16 = all(n.gpu_bf16 for n in gpu_nodes) if gpu_nodes else True
    precision, check, why = _precision(options, bf16, "GPU")
    element_bytes = 4 if precision == "fp32" else 2
    memory = min((n.gpu_memory_bytes or UNKNOWN_GPU_MEMORY) for n in gpu_nodes) if gpu_nodes else UNKNOWN_GPU_MEMORY
    memory *= min(per_actor, 1.0)
    weights = profile.parameter_bytes * element_bytes / 4
    budget = memory * GPU_MEMORY_USABLE - weights * 1.2
    batch = min(MAX_BATCH, _pow2_floor(budget / _row_bytes(profile, element_bytes)))
    batch_why = f"{memory / GiB:.0f} GiB GPU memory, {weights / GiB:.2f} GiB weights; halves on out-of-memory"
    return {"capacity": capacity, "num_cpus": num_cpus, "num_gpus": per_actor,
            "threads": max(1, math.floor(num_cpus + 0.5)), "batch": max(1, batch), "batch_why": batch_why,
            "precision": (precision, check, why), "pool": capacity,
            "pool_why": f"autoscaling, bounded by {capacity} GPU slots"}


def _cpu_plan(cluster: ClusterResources, profile: ModelProfile, options: RunOptions, decisions: list,
              parts: int | None) -> dict:
    nodes = [n for n in cluster.workers if n.cpus > 0]
    if not nodes and not (options.num_cpus_per_actor and options.actors):
        raise ConfigError(["the cluster has no CPU workers yet; for a group that autoscales from zero give "
                           "--num-cpus-per-actor and --actors MIN:MAX (render does)"])
    # Size actors for the node with the fewest usable CPUs, so that one fits on it (and on every node
    # whose Ray CPU count is no further from its container's than that node's).
    smallest = min(nodes, key=lambda n: n.usable_cpus, default=None)
    usable = smallest.usable_cpus if smallest else options.num_cpus_per_actor + IO_TASK_CPUS
    # Ray schedules by its logical CPU count; when the container really has fewer, ask for the same
    # share of Ray's count so no more actors land on a node than its real CPUs can run.
    scale = smallest.cpus / usable if smallest and usable else 1.0
    if options.num_cpus_per_actor:
        ray_cpus = options.num_cpus_per_actor  # in Ray's units, as the user sees them in `ray status`
        if smallest and ray_cpus + IO_TASK_CPUS * scale > smallest.cpus + 1e-9:
            raise ConfigError([f"--num-cpus-per-actor {ray_cpus:g}: leaves nodes of {smallest.cpus:g} CPUs no room "
                               f"for reading and decoding (at most {smallest.cpus - IO_TASK_CPUS * scale:g})"])
        io_ray = max(IO_TASK_CPUS * scale, 0.0)
        why = "asked for"
    else:
        # Fewer actors of more threads where memory holds fewer model copies, where the input has fewer
        # parts than actors (a part is one block, and an actor takes whole blocks: the rest would idle), or
        # where --actors asks for fewer: each node shares its CPUs among its share of them.
        limits = {"memory": actors_by_memory(smallest.memory_bytes, profile.parameter_bytes),
                  "parts": math.ceil(parts / len(nodes)) if parts else None,
                  "asked": math.ceil(parse_actor_bounds(options.actors)[1] / len(nodes)) if options.actors else None}
        per_node, num_cpus, io_cpus = cpu_actor_shape(usable, min(v for v in limits.values() if v))
        ray_cpus = math.floor(num_cpus * scale * 10**4) / 10**4  # Ray's resolution; rounding up could overbook
        io_ray = io_cpus * scale
        bound = "single-threaded actors"
        if per_node < cpu_actor_shape(usable)[0]:
            need = actor_memory_bytes(profile.parameter_bytes) / GiB
            bound = {"memory": f"{per_node} actor(s) of ~{need:.1f} GiB each in half of "
                               f"{smallest.memory_bytes / GiB:.1f} GiB memory",
                     "parts": f"{per_node} actor(s) for the input's {parts} part(s)",
                     "asked": f"{per_node} actor(s) for --actors {options.actors}"}[
                next(k for k, v in limits.items() if v == per_node)]
        why = f"{usable:g} usable CPUs per node, {io_cpus:g} kept for reading and decoding; {bound}"
    def by_cpus(node: NodeResources) -> int:
        """Actors Ray places on this node (it places by CPUs); a bigger node keeps for reading and
        decoding what the sizing node keeps, in proportion to its CPUs."""
        kept = io_ray * max(1.0, node.cpus / smallest.cpus) if smallest else io_ray
        return max(0, int((node.cpus - kept + 1e-9) // ray_cpus))

    def fitting(node: NodeResources) -> int:
        """Actors on this node, as many as its CPUs and its memory hold."""
        return min(by_cpus(node), actors_by_memory(node.memory_bytes, profile.parameter_bytes))

    capacity = sum(fitting(n) for n in nodes)
    pool_why = f"{fitting(smallest) if smallest else 0} per node on {len(nodes)} node(s)"
    pool = capacity
    if parts and parts < capacity:
        pool, pool_why = parts, f"{pool_why}; the input's {parts} part(s) keep {parts} busy"
    # The CPUs an actor holds, rounded, but never more threads on a node than its usable CPUs: 9 actors
    # of 1.55 CPUs on 16 CPUs run one thread each, not 18 threads in all.
    most = parse_actor_bounds(options.actors)[1] if options.actors else pool
    actors_here = max(1, min(by_cpus(smallest), most)) if smallest else 1
    threads = max(1, min(math.floor(ray_cpus / scale + 0.5), math.floor(usable / actors_here)))
    threads_text = f"{threads} thread{'s' if threads > 1 else ''}"
    decisions.append(Decision("actor resources", f"{ray_cpus:g} CPU, {threads_text}", why))
    precision, check, pwhy = _precision(options, all(n.cpu_bf16 for n in nodes) if nodes else False, "CPU")
    element_bytes = 4 if precision == "fp32" else 2
    # Convolutions on CPU run best on small batches that stay in cache (ResNet-50, 2 cores: 16 beats 32).
    base = 8 if profile.input_kind == "image" else 32
    batch = min(128 if profile.input_kind == "image" else 512, _pow2_floor(base * threads))
    batch_why = threads_text
    if smallest:
        actors_here = max(1, fitting(smallest))
        # A batch's activations share the actor's slice of half the node with its weights. The worker's
        # own 1 GiB, which the actor count reserves, is not taken off: activations are transient, a
        # 2 GiB node would get batch 1, and on out-of-memory the actor halves its batch.
        memory_budget = smallest.memory_bytes * 0.5 / actors_here - profile.parameter_bytes * 1.5
        by_memory = _pow2_floor(memory_budget / _row_bytes(profile, element_bytes)) if memory_budget > 0 else 1
        if by_memory < batch:
            batch, batch_why = by_memory, f"{threads_text}, capped by {smallest.memory_bytes / GiB:.1f} GiB memory"
    return {"capacity": capacity, "pool": pool, "num_cpus": ray_cpus, "num_gpus": 0.0, "threads": threads,
            "batch": max(1, batch), "batch_why": batch_why, "precision": (precision, check, pwhy),
            "pool_why": pool_why, "placement": [(by_cpus(n), fitting(n)) for n in nodes]}


def _precision(options: RunOptions, hardware_bf16: bool, device: str) -> tuple[str, bool, str]:
    if options.precision != "auto":
        return options.precision, False, "asked for"
    if hardware_bf16:
        agrees = (f"an embedding's cosine similarity to fp32's is >= {AGREEMENT_THRESHOLD:g}" if options.task == "embedding"
                  else "the top-1 label agrees with fp32")
        return "bf16", True, f"{device} has bf16; kept if {agrees} on >= {AGREEMENT_THRESHOLD:.0%} of the first batch"
    return "fp32", False, f"{device} has no native bf16"


def compile_seconds(profile: ModelProfile) -> float:
    """Rough seconds one node spends compiling the model(s). Its other actors reuse the compiled kernels
    but still trace and lower the model, in parallel with the first (about 19 s each, ResNet-50, 2 CPUs)."""
    seconds = COMPILE_SECONDS_BASE + COMPILE_SECONDS_PER_GIB * profile.parameter_bytes / GiB
    return seconds * (TEXT_COMPILE_SHAPES if profile.input_kind == "text" else 1)


def rows_per_compile_second(profile: ModelProfile, device: str) -> float:
    """Rows whose saved time repays one second of compiling, by the measurements above."""
    if device == "cpu" and profile.input_kind == "text":
        return TEXT_CPU_ROWS_GIB_PER_COMPILE_SECOND / max(profile.parameter_bytes / GiB, 0.01)
    return ROWS_PER_COMPILE_SECOND[device]


def compile_rows_needed(profile: ModelProfile, device: str, node_cpus: float) -> float:
    """Rows per node from which `auto` compiles: the estimated break-even, with its margin."""
    per_cpu = max(1.0, node_cpus / COMPILE_MEASURED_NODE_CPUS) if device == "cpu" else 1.0
    return compile_seconds(profile) * rows_per_compile_second(profile, device) * per_cpu * COMPILE_PAYBACK_MARGIN


def _compile(options: RunOptions, profile: ModelProfile, device: str, rows: int | None,
             nodes: int, node_cpus: float, compiler: bool = True) -> tuple[bool, str]:
    how = "inductor, weights frozen" if device == "cpu" else "inductor with CUDA graphs"
    checked = "; eager if the first batch disagrees with eager fp32"
    if not compiler and options.compile != "off":
        return False, "no C++ compiler on the nodes: inductor on CPU needs g++ (or $CXX) in the image"
    if options.compile != "auto":
        return options.compile == "on", (f"asked for: {how}{checked}" if options.compile == "on" else "asked for")
    if rows is None:
        return False, "the input's row count is not known before reading: eager never pays for compiling"
    seconds = compile_seconds(profile)
    needed = compile_rows_needed(profile, device, node_cpus)
    per_node = rows / max(1, nodes)
    if per_node < needed:
        on = f" on {node_cpus:g} CPUs" if device == "cpu" else ""
        return False, (f"{per_node:,.0f} rows per node are too few to repay ~{seconds:.0f} s of compiling{on} "
                       f"(compiles from {needed:,.0f}, twice the estimated break-even)")
    return True, f"{per_node:,.0f} rows per node repay ~{seconds:.0f} s of compiling ({how}){checked}"


def output_file_rows(rows: int | None, batch: int, actors: int) -> tuple[int, str]:
    """Rows per output file for `rows` still to do (None: unknown) and the reason, for the plan table."""
    lost = "a run killed midway loses at most the file each write has under way"
    if rows is None:
        size = min(MAX_ROWS_PER_FILE, batch * BATCHES_PER_FILE_UNKNOWN_ROWS)
        return size, f"{BATCHES_PER_FILE_UNKNOWN_ROWS} batches (row count unknown before reading); {lost}"
    size = min(MAX_ROWS_PER_FILE, max(batch, rows // (FILES_PER_ACTOR * actors)))
    return size, f"~{FILES_PER_ACTOR} files per actor, at most {MAX_ROWS_PER_FILE:,} rows; {lost}"


def make_plan(cluster: ClusterResources, profile: ModelProfile, options: RunOptions,
              rows: int | None = None, parts: int | None = None) -> Plan:
    """Actor resources, pool bounds, batch size, threads, precision, compiling and output files for this
    cluster, model and number of input rows and parts still to do (None: not known); every flag the user
    gave wins over the planned value."""
    decisions: list[Decision] = []
    if not cluster.workers and not options.actors:
        raise ConfigError(["the cluster has no CPUs or GPUs for work yet (the head runs none; no worker joined)"])
    device, device_why = _resolve_device(cluster, options)
    decisions.append(Decision("device", device, device_why))
    planned = (_gpu_plan(cluster, profile, options, decisions) if device == "gpu"
               else _cpu_plan(cluster, profile, options, decisions, parts))
    capacity, pool_why = planned["capacity"], planned["pool_why"]
    # CPU actors: a fixed pool of what fits (and has parts to do). Ray Data scales a pool down to its minimum
    # whenever the operator's share of the CPUs (it keeps some for the other operators) is below what the
    # pool holds (ray/data/_internal/actor_autoscaler/default_actor_autoscaler.py): a 1..2 pool on 2 CPUs
    # ran one actor.
    high = max(1, planned["pool"])
    low = high if device == "cpu" else 1
    if options.actors:
        low, high = parse_actor_bounds(options.actors)
        pool_why = "asked for"
        if capacity and low > capacity:
            # Ray Data would wait for actors that cannot start: begin with what fits, grow towards MAX.
            low, pool_why = capacity, f"asked for; MIN lowered to the {capacity} that fit now"
        elif high > capacity:
            pool_why += f"; {capacity} fit now, the rest wait for the autoscaler"
    # Actors ask Ray for CPUs only (a memory request that Ray's node memory cannot meet would hang the job
    # instead), so where a node has CPUs for more of the pool than its memory holds, more can land there.
    over = [(min(cpus, high), held) for cpus, held in planned.get("placement", ()) if min(cpus, high) > held]
    if over:
        pool_why += (f"; Ray places actors by CPU: {over[0][0]} can start on a node whose memory holds "
                     f"{over[0][1]} (raise --num-cpus-per-actor if they run out of memory)")
    decisions.append(Decision("actor pool", f"{low}..{high}" if low != high else str(high), pool_why))
    batch = options.batch_size or planned["batch"]
    decisions.append(Decision("batch size", str(batch), "asked for" if options.batch_size else planned["batch_why"]))
    precision, check, precision_why = planned["precision"]
    decisions.append(Decision("precision", precision + (" (checked)" if check else ""), precision_why))
    channels_last = profile.convolutional
    if channels_last:
        decisions.append(Decision("memory format", "channels_last", "convolutional model"))
    decisions.append(Decision("torch threads", str(planned["threads"]),
                              "the CPUs each actor holds, rounded; no more in all than a node's CPUs"))
    nodes = sum(1 for n in cluster.workers if (n.gpus if device == "gpu" else n.cpus) > 0)
    # the biggest node's CPUs: it saves the least per row, so it needs the most rows to repay compiling
    node_cpus = max((n.usable_cpus for n in cluster.workers if n.cpus > 0), default=COMPILE_MEASURED_NODE_CPUS)
    compiler = device == "gpu" or all(n.cpp_compiler for n in cluster.workers if n.cpus > 0)
    compiled, compile_why = _compile(options, profile, device, rows, nodes, node_cpus, compiler)
    decisions.append(Decision("compile", "on" if compiled else "off", compile_why))
    rows_per_file, file_why = output_file_rows(rows, batch, high)
    decisions.append(Decision("output files", f"{rows_per_file:,} rows each", file_why))
    return Plan(
        device=device, actors_min=low, actors_max=high, num_cpus_per_actor=planned["num_cpus"],
        num_gpus_per_actor=planned["num_gpus"], threads_per_actor=planned["threads"], batch_size=batch,
        io_task_cpus=IO_TASK_CPUS, precision=precision, precision_check=check, channels_last=channels_last,
        compile=compiled, rows_per_file=rows_per_file, decisions=tuple(decisions),
    )


def settle_precision(candidate: str, agreement: float) -> str:
    """The checked precision if it agreed with fp32 on enough of the first batch, else fp32."""
    return candidate if agreement >= AGREEMENT_THRESHOLD else "fp32"


def top1_agreement(reference: list[int], candidate: list[int]) -> float:
    if not reference:
        return 1.0
    return sum(a == b for a, b in zip(reference, candidate, strict=True)) / len(reference)
