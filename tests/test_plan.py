"""The planner on synthetic clusters: pure and fast, no Ray, no torch."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferkit.chart import default_run_options
from inferkit.errors import ConfigError
from inferkit.job.plan import (IO_TASK_CPUS, ClusterResources, ModelProfile, NodeResources, cpu_actor_shape,
                               make_plan, settle_precision, top1_agreement)

GiB = 2**30
RESNET50 = ModelProfile(input_kind="image", parameter_bytes=100 * 2**20, convolutional=True)
MINILM = ModelProfile(input_kind="text", parameter_bytes=90 * 2**20, max_length=256, hidden_size=384)
HEAD = NodeResources("head", cpus=0, memory_bytes=8 * GiB)


def cluster(*nodes: NodeResources, head: bool = True) -> ClusterResources:
    return ClusterResources(((HEAD,) if head else ()) + nodes)


def cpu_node(cpus: float, memory_gib: float = 16, real: float | None = None, bf16: bool = False, name: str = "w"):
    return NodeResources(name, cpus=cpus, memory_bytes=int(memory_gib * GiB), real_cpus=real, cpu_bf16=bf16)


def gpu_node(gpus: int = 8, cpus: float = 96, gpu_gib: int = 80, bf16: bool = True, name: str = "g"):
    return NodeResources(name, cpus=cpus, memory_bytes=1024 * GiB, gpus=gpus, gpu_type="NVIDIA H100 80GB HBM3",
                         gpu_memory_bytes=gpu_gib * GiB, gpu_bf16=bf16)


def options(**overrides):
    return dataclasses.replace(default_run_options(), **overrides)


def test_one_cpu_node_leaves_room_for_reading():
    plan = make_plan(cluster(cpu_node(1)), RESNET50, options())
    assert plan.device == "cpu"
    assert plan.num_cpus_per_actor + plan.io_task_cpus <= 1
    assert plan.threads_per_actor == 1
    assert (plan.actors_min, plan.actors_max) == (1, 1)


def test_a_cpu_pool_is_fixed_at_what_fits_and_a_gpu_pool_autoscales():
    """Ray Data shrinks an actor pool to its minimum when the operator's CPU share is below the pool's
    (it keeps CPUs for reading and writing): a 1..2 pool on 2 CPUs ran one actor."""
    plan = make_plan(cluster(cpu_node(2), cpu_node(4)), RESNET50, options())
    assert (plan.actors_min, plan.actors_max) == (6, 6)
    plan = make_plan(cluster(gpu_node(4)), RESNET50, options())
    assert (plan.actors_min, plan.actors_max) == (1, 4)


def test_two_core_node_never_asks_for_every_cpu():
    """The seeds' num_cpus=2 on a 2-core node starves the read tasks and hangs."""
    plan = make_plan(cluster(cpu_node(2)), RESNET50, options())
    assert (plan.num_cpus_per_actor, plan.threads_per_actor, plan.actors_max) == (0.87, 1, 2)
    assert 2 * plan.num_cpus_per_actor + plan.io_task_cpus <= 2


def test_cpu_actors_are_single_threaded_until_memory_allows_fewer():
    """One 1-thread actor per CPU (two such actors beat one of two threads by about 1.3x on 2 CPUs);
    each holds its own weights, so a node whose memory fits fewer runs fewer actors of more threads."""
    plan = make_plan(cluster(cpu_node(16, memory_gib=64)), RESNET50, options())
    assert (plan.actors_max, plan.threads_per_actor) == (14, 1)
    plan = make_plan(cluster(cpu_node(16, memory_gib=4)), RESNET50, options())  # 2 GiB for actors: one fits
    assert (plan.actors_max, plan.threads_per_actor, plan.num_cpus_per_actor) == (1, 14, 14.0)
    big = dataclasses.replace(RESNET50, parameter_bytes=int(1.5 * GiB))  # 3.25 GiB each, 8 GiB for actors
    plan = make_plan(cluster(cpu_node(16, memory_gib=16)), big, options())
    assert (plan.actors_max, plan.threads_per_actor) == (2, 7)
    assert "2 actor(s) of ~3.2 GiB each in half of 16.0 GiB memory" in plan.table()
    plan = make_plan(cluster(cpu_node(2, memory_gib=16), cpu_node(64, memory_gib=16)), RESNET50, options())
    assert plan.actors_max == 2 + 6  # the big node has CPUs for 64 actors, memory for 6


@pytest.mark.parametrize(("nodes", "parts", "actors", "threads", "shaped_by_parts"), [
    ((2,), 1, 1, 2, True),  # one JSON lines file on 2 CPUs: one 2-thread actor, as before single-threaded actors
    ((2,), 20, 2, 1, False),
    ((3,), 2, 2, 1, True),  # 2.62 CPUs for 2 actors: 1.31 each, rounded to 1 thread
    ((16,), 3, 3, 5, True),  # 14 CPUs for inference over 3 actors: 4.66 each
    ((16,), 9, 9, 1, True),  # 1.55 CPUs each, but 9 actors of 2 threads would be 18 threads on 16 CPUs
    ((8,), 100, 7, 1, False),  # more parts than actors fit
    ((8, 8), 4, 4, 4, True),  # 2 a node
    ((8, 8), 3, 3, 4, True),  # actors sized for ceil(3 / 2) a node, and no actor without a part
    ((2, 64), 3, 3, 1, False),  # the big node has CPUs for 64 actors of the small node's size
])
def test_no_more_actors_than_the_input_has_parts(nodes, parts, actors, threads, shaped_by_parts):
    """An actor takes whole blocks and a part is one block: actors beyond the parts would idle while
    the others ran single-threaded, so fewer actors take the CPUs as threads."""
    workers = cluster(*(cpu_node(c, memory_gib=64, name=f"w{i}") for i, c in enumerate(nodes)))
    plan = make_plan(workers, MINILM, options(), parts=parts)
    assert (plan.actors_min, plan.actors_max, plan.threads_per_actor) == (actors, actors, threads)
    assert (f"actor(s) for the input's {parts} part(s)" in plan.table()) == shaped_by_parts
    asked = make_plan(workers, MINILM, options(num_cpus_per_actor=0.5), parts=parts)
    by_memory = int(32 * GiB // (GiB + 1.5 * MINILM.parameter_bytes))  # half of each node's 64 GiB
    assert asked.actors_max == min(parts, sum(min(int((c - IO_TASK_CPUS) / 0.5), by_memory) for c in nodes))


def test_a_pool_asked_for_without_actor_sizes_shares_the_cpus():
    """--actors 1 on a 16-CPU node is one actor of all the node's inference CPUs, not one of 1 CPU."""
    plan = make_plan(cluster(cpu_node(16)), RESNET50, options(actors="1"))
    assert (plan.actors_max, plan.threads_per_actor) == (1, 14)
    assert "1 actor(s) for --actors 1" in plan.table()
    plan = make_plan(cluster(cpu_node(8, name="a"), cpu_node(8, name="b")), RESNET50, options(actors="2:4"))
    assert (plan.actors_min, plan.actors_max, plan.threads_per_actor) == (2, 4, 4)


def test_actors_that_can_land_beyond_what_memory_holds_are_flagged():
    """Ray places actors by CPU alone: where a node has CPUs for more of the pool than its memory holds
    copies of the model, more can start there, and the plan says so."""
    small = cluster(cpu_node(16, memory_gib=4))  # 2 GiB for actors: one fits
    plan = make_plan(small, RESNET50, options(num_cpus_per_actor=1.0, actors="15"))
    assert (plan.actors_min, plan.actors_max) == (1, 15)
    assert "Ray places actors by CPU: 15 can start on a node whose memory holds 1" in plan.table()
    alone = make_plan(small, RESNET50, options(num_cpus_per_actor=1.0))  # the pool is what memory holds
    assert alone.actors_max == 1 and "Ray places actors by CPU" not in alone.table()
    mixed = make_plan(cluster(cpu_node(2, name="a"), cpu_node(64, name="b")), RESNET50, options())
    assert mixed.actors_max == 8 and "8 can start on a node whose memory holds 6" in mixed.table()
    roomy = make_plan(cluster(cpu_node(16, memory_gib=64)), RESNET50, options(num_cpus_per_actor=1.0, actors="15"))
    assert "Ray places actors by CPU" not in roomy.table()


def test_one_asked_actor_keeps_the_threads_of_its_cpus():
    plan = make_plan(cluster(cpu_node(16, memory_gib=64)), RESNET50, options(num_cpus_per_actor=1.6, actors="1"))
    assert plan.threads_per_actor == 2


def test_a_big_node_beside_a_small_one_keeps_its_own_share_for_reading():
    plan = make_plan(cluster(cpu_node(2), cpu_node(64, memory_gib=256)), RESNET50, options())
    assert plan.num_cpus_per_actor == 0.87  # sized for the small node
    on_big = plan.actors_max - 2
    assert on_big == 64  # (64 - 8) // 0.87: keeping only the small node's 0.25 would make it 73
    assert 64 - on_big * plan.num_cpus_per_actor >= 64 / 8  # not 0.25 CPU left to feed 36 actors


def test_an_actor_asked_to_fill_a_node_but_the_reading_share_still_fits():
    plan = make_plan(cluster(cpu_node(4)), RESNET50, options(num_cpus_per_actor=3.75))
    assert (plan.actors_min, plan.actors_max) == (1, 1)


@pytest.mark.parametrize(("cpus", "per_node"), [(8, 7), (16, 14), (32, 28), (64, 56)])
def test_big_cpu_nodes_split_into_several_actors(cpus, per_node):
    plan = make_plan(cluster(cpu_node(cpus, memory_gib=4 * cpus), cpu_node(cpus, memory_gib=4 * cpus)), RESNET50,
                     options())
    assert plan.actors_max == 2 * per_node
    assert plan.threads_per_actor == 1
    assert per_node * plan.num_cpus_per_actor <= cpus - IO_TASK_CPUS


def test_container_limits_win_over_rays_count():
    """Ray sees 16 CPUs but the cgroup allows 2: plan for 2, ask Ray in its own units."""
    plan = make_plan(cluster(cpu_node(16, real=2)), RESNET50, options())
    assert plan.threads_per_actor == 1
    assert plan.actors_max == 2
    assert plan.num_cpus_per_actor == pytest.approx(0.87 * 8)


def test_gpus_get_one_actor_each_and_an_autoscaling_pool():
    plan = make_plan(cluster(gpu_node(8), gpu_node(8)), RESNET50, options())
    assert plan.device == "gpu"
    assert (plan.actors_min, plan.actors_max) == (1, 16)
    assert plan.num_gpus_per_actor == 1
    assert plan.num_cpus_per_actor == 1
    assert plan.precision == "bf16" and plan.precision_check
    assert plan.channels_last


def test_gpu_batch_grows_with_gpu_memory_and_shrinks_with_model_size():
    small = make_plan(cluster(gpu_node(1, gpu_gib=16)), RESNET50, options()).batch_size
    large = make_plan(cluster(gpu_node(1, gpu_gib=80)), RESNET50, options()).batch_size
    huge_model = dataclasses.replace(RESNET50, parameter_bytes=70 * GiB)
    crowded = make_plan(cluster(gpu_node(1, gpu_gib=80)), huge_model, options()).batch_size
    assert small < large
    assert crowded < large
    assert large <= 1024


def test_old_gpus_without_bf16_stay_fp32():
    plan = make_plan(cluster(gpu_node(4, bf16=False)), RESNET50, options())
    assert (plan.precision, plan.precision_check) == ("fp32", False)


def test_cpu_precision_follows_the_cpu():
    assert make_plan(cluster(cpu_node(8, bf16=True)), MINILM, options()).precision == "bf16"
    assert make_plan(cluster(cpu_node(8, bf16=False)), MINILM, options()).precision == "fp32"


def test_every_flag_overrides_the_plan():
    plan = make_plan(cluster(gpu_node(8)), RESNET50, options(
        device="cpu", batch_size=7, actors="2:5", num_cpus_per_actor=3.0, precision="fp16"))
    assert plan.device == "cpu"
    assert (plan.batch_size, plan.actors_min, plan.actors_max) == (7, 2, 5)
    assert plan.num_cpus_per_actor == 3.0 and plan.threads_per_actor == 3
    assert (plan.precision, plan.precision_check) == ("fp16", False)
    gpu = make_plan(cluster(gpu_node(8)), RESNET50, options(num_gpus_per_actor=0.5))
    assert gpu.num_gpus_per_actor == 0.5 and gpu.actors_max == 16


def test_gpu_asked_for_where_there_is_none():
    with pytest.raises(ConfigError, match="--device gpu: the cluster has no GPUs"):
        make_plan(cluster(cpu_node(4)), RESNET50, options(device="gpu"))


def test_cluster_with_only_a_head():
    with pytest.raises(ConfigError, match="no worker joined"):
        make_plan(cluster(), RESNET50, options())


def test_actor_bigger_than_any_node():
    with pytest.raises(ConfigError, match="leaves nodes of 4 CPUs no room for reading and decoding"):
        make_plan(cluster(cpu_node(4)), RESNET50, options(num_cpus_per_actor=8.0))


def test_actor_asking_for_every_cpu_is_refused():
    """num_cpus=2 on a 2-CPU node: the read tasks would never run (the hang of the seeds' advice)."""
    with pytest.raises(ConfigError, match="at most 1.75"):
        make_plan(cluster(cpu_node(2)), RESNET50, options(num_cpus_per_actor=2.0))
    assert make_plan(cluster(cpu_node(2)), RESNET50, options(num_cpus_per_actor=1.75)).actors_max == 1


def test_pool_minimum_never_waits_for_actors_that_cannot_start():
    plan = make_plan(cluster(cpu_node(2)), RESNET50, options(actors="4:6"))
    assert (plan.actors_min, plan.actors_max) == (2, 6)
    assert "MIN lowered to the 2 that fit now" in plan.table()


def test_autoscaling_groups_that_start_at_zero():
    """KubeRay groups with minReplicas 0: no such node at start; the bounds come from render."""
    gpu = make_plan(cluster(cpu_node(4)), RESNET50, options(device="gpu", actors="1:8"))
    assert (gpu.device, gpu.actors_min, gpu.actors_max, gpu.num_gpus_per_actor) == ("gpu", 1, 8, 1.0)
    assert gpu.precision_check  # bf16 is tried, the first batch on a real GPU decides
    cpu = make_plan(cluster(), RESNET50, options(actors="1:5", num_cpus_per_actor=7.0))
    assert (cpu.actors_min, cpu.actors_max, cpu.threads_per_actor) == (1, 5, 7)
    with pytest.raises(ConfigError, match="no CPU workers yet"):
        make_plan(cluster(), RESNET50, options(actors="1:5"))


def test_mixed_cluster_runs_inference_on_gpus():
    plan = make_plan(cluster(cpu_node(32), gpu_node(4, cpus=16)), RESNET50, options())
    assert plan.device == "gpu" and plan.actors_max == 4


def test_plan_table_explains_every_decision():
    table = make_plan(cluster(cpu_node(2)), RESNET50, options()).table()
    for what in ("device", "actor resources", "actor pool", "batch size", "precision", "torch threads"):
        assert what in table


@settings(max_examples=300, deadline=None)
@given(shapes=st.lists(st.tuples(st.floats(0.5, 256), st.one_of(st.none(), st.floats(0.5, 256)),
                                 st.floats(0.5, 2048)), min_size=1, max_size=20), text=st.booleans(),
       parts=st.one_of(st.none(), st.integers(0, 10_000)))
def test_cpu_plans_always_fit_every_node_and_leave_room_for_io(shapes, text, parts):
    workers = tuple(cpu_node(cpus, memory, real, name=f"w{i}") for i, (cpus, real, memory) in enumerate(shapes))
    plan = make_plan(cluster(*workers), MINILM if text else RESNET50, options(), parts=parts)
    smallest = min(workers, key=lambda n: n.usable_cpus)
    scale = smallest.cpus / smallest.usable_cpus
    assert plan.num_cpus_per_actor / scale + plan.io_task_cpus <= smallest.usable_cpus + 1e-6
    assert plan.num_cpus_per_actor + plan.io_task_cpus * scale <= smallest.cpus + 1e-6  # in Ray's units too
    assert plan.threads_per_actor >= 1 and plan.batch_size >= 1
    assert 1 <= plan.actors_min <= plan.actors_max <= (parts or plan.actors_max)
    # the pool fits the nodes at once: each node's actors and reading share within its CPUs, and the
    # actors' working memory (1 GiB + 1.5x the weights each) within half its memory
    profile = MINILM if text else RESNET50
    def fits(n, kept_share=plan.io_task_cpus * scale):
        by_cpus = int((n.cpus - kept_share * max(1.0, n.cpus / smallest.cpus) + 1e-9) // plan.num_cpus_per_actor)
        by_memory = max(1, int(n.memory_bytes / 2 // (GiB + 1.5 * profile.parameter_bytes)))  # one at least
        return max(0, min(by_cpus, by_memory))
    assert plan.actors_max <= max(1, sum(fits(n) for n in workers))
    # no more torch threads on a node than its CPUs, unless one thread is all an actor has (with the
    # node's reading share kept, as the pool is sized)
    placed = max(1, min(fits(smallest, cpu_actor_shape(smallest.usable_cpus)[2] * scale), plan.actors_max))
    assert plan.threads_per_actor == 1 or placed * plan.threads_per_actor <= smallest.usable_cpus + 1e-6


@settings(max_examples=200, deadline=None)
@given(gpus=st.integers(1, 8), nodes=st.integers(1, 1000), gpu_gib=st.sampled_from([16, 24, 40, 80, 141]))
def test_gpu_plans_are_bounded_by_the_gpus(gpus, nodes, gpu_gib):
    workers = tuple(gpu_node(gpus, gpu_gib=gpu_gib, name=f"g{i}") for i in range(nodes))
    plan = make_plan(cluster(*workers), RESNET50, options())
    assert plan.actors_max == gpus * nodes
    assert 1 <= plan.batch_size <= 1024


def test_output_files_are_few_for_big_jobs_and_several_per_actor_for_small_ones():
    """Each file is one ledger entry and what a killed run loses at most per write under way."""
    one_actor = cluster(cpu_node(1))
    small = make_plan(one_actor, MINILM, options(batch_size=8), rows=480)
    assert small.rows_per_file == 30  # 16 files for the one actor
    assert make_plan(cluster(cpu_node(2)), MINILM, options(batch_size=8), rows=480).rows_per_file == 15  # 2 actors
    assert make_plan(one_actor, MINILM, options(batch_size=64), rows=480).rows_per_file == 64  # never under a batch
    huge = make_plan(cluster(*(gpu_node(8, name=f"g{i}") for i in range(4))), RESNET50, options(), rows=10**8)
    assert huge.rows_per_file == 20_000  # 5,000 files for 100M rows, not millions
    unknown = make_plan(one_actor, MINILM, options(batch_size=8), rows=None)
    assert unknown.rows_per_file == 8 * 32
    assert "output files" in small.table() and "30 rows each" in small.table()


def test_precision_falls_back_to_fp32_below_99_percent():
    assert settle_precision("bf16", 0.99) == "bf16"
    assert settle_precision("bf16", 0.989) == "fp32"
    assert settle_precision("bf16", 0.0) == "fp32"


def test_top1_agreement():
    assert top1_agreement([1, 2, 3, 4], [1, 2, 3, 0]) == 0.75
    assert top1_agreement([], []) == 1.0


def test_cpu_batch_fits_what_memory_leaves_beside_the_weights():
    """Half of 0.5 GiB for the one actor, less 1.5x ResNet-50's weights, leaves about 0.11 GiB of
    activations: 4 images of 224x224 in bf16, not the 2 threads' 16."""
    plan = make_plan(cluster(cpu_node(2, memory_gib=0.5, bf16=True)), RESNET50, options())
    assert (plan.actors_max, plan.batch_size) == (1, 4)
    assert "capped by 0.5 GiB memory" in plan.table()
    assert make_plan(cluster(cpu_node(2, memory_gib=16, bf16=True)), RESNET50, options(), parts=1).batch_size == 16
