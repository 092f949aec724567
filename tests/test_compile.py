"""Compiled inference (compile.py): padding that never reaches a row, eager fallback on a compile error,
the node's cache reused by a fresh process, and the first-batch check against eager fp32."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import tiny
from inferkit.job.plan import ModelProfile
from tiny import CLASSIFIER_SCHEMA, EMBEDDING_SCHEMA, TEXTS
from tiny import model_spec as _spec
from tiny import text_batch as _batch

RESNET50 = ModelProfile(input_kind="image", parameter_bytes=100 * 2**20, convolutional=True)


def test_text_lengths_are_padded_to_a_few_buckets():
    from inferkit.job.compile import text_bucket

    assert [text_bucket(n, 512) for n in (1, 32, 33, 200, 512)] == [32, 32, 64, 256, 512]
    assert [text_bucket(n, 48) for n in (10, 40, 48)] == [32, 48, 48]  # never past the model's limit
    assert text_bucket(700, None) == 700


def test_padding_keeps_a_channels_last_batch_channels_last():
    """The compiled graph is specialised to its input's layout: a padded last batch in another layout
    would compile again (and run slower)."""
    import torch

    from inferkit.job.compile import padded_call

    seen = []
    images = torch.randn(3, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    padded_call(lambda pixel_values: seen.append(pixel_values) or {"logits": pixel_values[:, 0, 0]},
                {"pixel_values": images}, 8, None, 0)
    assert seen[0].shape[0] == 8 and seen[0].is_contiguous(memory_format=torch.channels_last)
    padded_call(lambda input_ids: seen.append(input_ids) or {"logits": input_ids},
                {"input_ids": torch.ones(3, 5, dtype=torch.long)}, 8, 16, 0)
    assert seen[1].shape == (8, 16) and seen[1].is_contiguous()  # the bucket, within the limit 16


@pytest.mark.parametrize("where", ["default", "volume"])
def test_a_compile_cache_others_can_write_to_is_not_used(tmp_path, monkeypatch, capsys, where):
    """Inductor runs the code it finds in its cache: a cache folder others can write to would let them
    run code in every actor. A chosen volume's root may be open to all (an emptyDir is 0777): the cache
    is this user's own folder inside it."""
    from inferkit.job import compile as compiling

    monkeypatch.setattr(compiling, "_PRIVATE_FOLDER", None)
    if where == "default":
        monkeypatch.delenv(compiling.CACHE_ENV, raising=False)
        monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
        folder = tmp_path / f"inferkit-compile-cache-{os.getuid()}"
    else:
        volume = tmp_path / "volume"
        volume.mkdir()
        volume.chmod(0o777)
        monkeypatch.setenv(compiling.CACHE_ENV, str(volume))
        folder = volume / f"uid-{os.getuid()}"
    assert compiling.cache_folder() == str(folder) and (folder.stat().st_mode & 0o777) == 0o700
    folder.chmod(0o775)  # group-writable: no longer this user's alone
    private = compiling.cache_folder()
    assert private != str(folder) and (Path(private).stat().st_mode & 0o777) == 0o700
    assert compiling.cache_folder() == private  # one private folder per process, not one per call
    assert f"not using {folder} as the compile cache" in capsys.readouterr().err
    folder.rmdir()
    folder.write_text("a file where the folder should be")
    assert compiling.cache_folder() == private


@pytest.mark.parametrize("model", ["embedder", "stripes"])
def test_padding_rows_and_tokens_never_reach_a_result(tiny_models, model):
    """A batch of 3 padded to 8 rows (and texts to a length bucket) gives the same 3 outputs as the batch
    itself: the padding rows are cut off, and pad tokens are masked."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification, AutoTokenizer

    from inferkit.job.compile import padded_call

    path = tiny_models[model]
    if model == "embedder":
        net = AutoModel.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        inputs = dict(tokenizer(TEXTS[:3], padding=True, return_tensors="pt"))
        key, limit, pad = "last_hidden_state", 16, tokenizer.pad_token_id
    else:
        net = AutoModelForImageClassification.from_pretrained(path).eval()
        processor = AutoImageProcessor.from_pretrained(path)
        images = [tiny.stripes_image(label, seed=label) for label in range(3)]
        inputs = {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}
        key, limit, pad = "logits", None, 0
    with torch.inference_mode():
        expected = getattr(net(**inputs), key)
        got = getattr(padded_call(net, inputs, 8, limit, pad), key)
    assert got.shape == expected.shape  # 3 rows (and the texts' own length), not 8
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_cpu_compiling_freezes_the_weights_into_the_graph(tiny_models, tmp_path, monkeypatch):
    """Freezing (what makes compiled CPU inference faster) folds the weights into the compiled code as
    constants: a weight changed after compiling no longer changes the output. Without it the weights stay
    graph inputs and the output follows them (the first version set freezing too late to take effect)."""
    import torch
    from transformers import AutoModelForImageClassification

    from inferkit.job.compile import CompiledModel

    import torch._inductor.compile_fx as inductor

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    graph_inputs = []
    real_compile_fx = inductor.compile_fx
    monkeypatch.setattr(inductor, "compile_fx", lambda graph, inputs: graph_inputs.append(len(inputs))
                        or real_compile_fx(graph, inputs))
    net = AutoModelForImageClassification.from_pretrained(tiny_models["stripes"]).eval()
    compiled = CompiledModel(net, "cpu", None, None, fault=False)
    pixels = {"pixel_values": torch.from_numpy(np.random.default_rng(0).random((4, 3, 32, 32), np.float32))}
    with torch.inference_mode():
        before = compiled(pixels, 4).logits
        for parameter in net.parameters():
            parameter.mul_(0.5)
        after = compiled(pixels, 4).logits
        eager = net(**pixels).logits
    assert not torch.allclose(eager, before, atol=1e-3)  # the change matters to the model...
    assert torch.allclose(after, before)  # ...but not to the frozen graph
    assert compiled.compilations == 1 and graph_inputs == [1]  # the pixels; no parameter is an input


def test_a_compile_error_runs_eager_says_so_once_and_loses_no_row(tiny_models, capsys):
    from inferkit.job.tasks import Predictor

    eager = Predictor(_spec(tiny_models["sentiment"]))
    compiled = Predictor(_spec(tiny_models["sentiment"], compile=True, fault="compile-fail"))
    batch = _batch(TEXTS + [""])
    first, second = compiled(batch), compiled(batch)
    assert first.num_rows == second.num_rows == 6
    assert first.equals(eager(batch))
    stats = compiled.compiler.stats()
    assert stats["compilations"] == 0 and "injected compile failure" in stats["fallback"]
    assert capsys.readouterr().err.count("compiling failed, this actor runs eager") == 1


def test_the_first_batch_check_reports_a_compile_error_as_eager(tiny_models):
    from inferkit.job.compile import check_compiled

    result = check_compiled(_spec(tiny_models["sentiment"], compile=True, fault="compile-fail"), _batch(TEXTS))
    assert result["agreement"] == 0.0 and result["rows"] == 5
    assert result["why"].startswith("compiling failed: ")


# A fresh process compiles the classifier into the cache folder given, and prints what it found.
_COMPILE_ONCE = """
import json, sys
sys.path.insert(0, {tests!r})
from tiny import TEXTS, model_spec as _spec, text_batch as _batch
from inferkit.job.tasks import Predictor
predictor = Predictor(_spec({model!r}, compile=True))
table = predictor(_batch(TEXTS))
print(json.dumps({{"rows": table.num_rows, "labels": table.column("label").to_pylist(),
                   "scores": table.column("score").to_pylist(), **predictor.compiler.stats()}}))
"""


@pytest.mark.slow
def test_compiled_results_agree_and_a_fresh_process_reuses_the_node_cache(tiny_models, tmp_path):
    """The second process finds what the first one compiled in INFERKIT_COMPILE_CACHE, as the second actor
    of a node and a resumed run do: it builds no C++ kernel of its own, and inductor's FX graph cache either
    finds the whole graph or cannot store it (frozen weights packed for oneDNN do not pickle: a bypass)."""
    from inferkit.job.tasks import Predictor

    cache = tmp_path / "compile-cache"
    env = {**os.environ, "INFERKIT_COMPILE_CACHE": str(cache)}
    code = _COMPILE_ONCE.format(tests=str(Path(__file__).parent), model=tiny_models["sentiment"])
    runs, kernels = [], []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        kernels.append(sorted(path.name for path in cache.rglob("*.so")))
    first, second = runs
    assert first["fallback"] == "" and first["compilations"] >= 1 and first["cache_hits"] == 0
    assert kernels[0], "no compiled kernel in the cache folder"
    assert kernels[1] == kernels[0]  # every kernel the second process needed was in the node's cache
    assert second["fallback"] == "" and second["cache_misses"] == 0
    eager = Predictor(_spec(tiny_models["sentiment"]))(_batch(TEXTS))
    assert first["rows"] == second["rows"] == 5
    assert first["labels"] == second["labels"] == eager.column("label").to_pylist()
    assert np.allclose(first["scores"], eager.column("score").to_pylist(), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The plan's decision (pure)


def _plan(rows, nodes: int = 1, gpus: int = 0, cpus: float = 2, compilers: tuple[bool, ...] = (), **changes):
    import dataclasses

    from inferkit.chart import default_run_options
    from inferkit.job.plan import ClusterResources, NodeResources, make_plan

    workers = tuple(NodeResources(f"w{i}", cpus=cpus, memory_bytes=16 * 2**30, gpus=gpus,
                                  cpp_compiler=compilers[i] if i < len(compilers) else True) for i in range(nodes))
    return make_plan(ClusterResources(workers), RESNET50, dataclasses.replace(default_run_options(), **changes), rows)


def _compile_decision(plan) -> str:
    return next(f"{d.value}: {d.why}" for d in plan.decisions if d.what == "compile")


def test_auto_compiles_only_jobs_long_enough_to_repay_compiling():
    from inferkit.job.plan import COMPILE_PAYBACK_MARGIN, ROWS_PER_COMPILE_SECOND, compile_seconds

    demo = _plan(100)
    assert not demo.compile and "100 rows per node are too few to repay" in _compile_decision(demo)
    unknown = _plan(None)
    assert not unknown.compile and "row count is not known" in _compile_decision(unknown)
    long_job = _plan(1_000_000)
    assert long_job.compile and _compile_decision(long_job).startswith("on: 1,000,000 rows per node repay")
    assert not _plan(1_000_000, nodes=1000).compile  # each node compiles: 1,000 rows each do not repay it
    assert not _plan(50_000, gpus=1).compile and _plan(50_000).compile  # a GPU needs more rows to repay it
    # The boundary is the documented estimate (ResNet-50: 40 s of compiling, 95 rows a second) with its margin.
    needed = compile_seconds(RESNET50) * ROWS_PER_COMPILE_SECOND["cpu"] * COMPILE_PAYBACK_MARGIN
    assert needed == pytest.approx(40 * 95 * 2, rel=0.01)
    assert not _plan(math.ceil(needed) - 1).compile and _plan(math.ceil(needed)).compile
    assert "compile" in long_job.table()


def _wall_time_break_even(workload: str) -> float:
    """Rows from which compiled finished sooner than eager in a benchmark run on 2 CPUs: the larger input's
    extra wall seconds, repaid at the steady-state time saved per row."""
    results = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / f"cpu-compile-{workload}.json")
                         .read_text())
    rows = {r["config"]: r for r in results["configs"]}
    eager, compiled = rows["inferkit-eager"], rows["inferkit-compiled"]
    saved = 1 / eager["steady_rows_per_second"] - 1 / compiled["steady_rows_per_second"]
    assert saved > 0  # compiled was faster in that run
    return max(results["sizes"]) + (compiled["seconds"][1] - eager["seconds"][1]) / saved


def test_auto_compiles_a_text_model_on_a_cpu_only_for_jobs_its_size_repays():
    """Measured on 2 CPUs with frozen weights (benchmarks/results): BERT-base 1.26x of eager, MiniLM 1.15x.
    A smaller model saves less per row, so it needs more rows before compiling pays, and auto starts
    compiling only well past where those runs repaid it."""
    import dataclasses

    from inferkit.chart import default_run_options
    from inferkit.job.plan import ClusterResources, NodeResources, compile_rows_needed, make_plan

    # the benchmark's models: a BERT-base-size classifier (109.5M fp32 parameters) and the bundled MiniLM
    bert = ModelProfile(input_kind="text", parameter_bytes=438_000_000, max_length=512, hidden_size=768)
    minilm = dataclasses.replace(bert, parameter_bytes=90_868_376, hidden_size=384)
    def plan(profile, rows, gpus=0, compile="auto", cpus=2):
        node = NodeResources("w", cpus=cpus, memory_bytes=64 * 2**30, gpus=gpus, gpu_memory_bytes=80 * 2**30)
        return make_plan(ClusterResources((node,)), profile,
                         dataclasses.replace(default_run_options(), task="text-classification", compile=compile),
                         rows)

    for profile, workload in ((bert, "bert-base"), (minilm, "minilm")):
        needed = compile_rows_needed(profile, "cpu", 2)
        assert needed > 2 * _wall_time_break_even(workload)
        assert not plan(profile, math.ceil(needed) - 1).compile and plan(profile, math.ceil(needed)).compile
    assert compile_rows_needed(minilm, "cpu", 2) > 3 * compile_rows_needed(bert, "cpu", 2)
    assert "too few to repay" in _compile_decision(plan(bert, 10_000))
    assert plan(bert, 10_000, compile="on").compile and plan(bert, 10**8, gpus=1).compile


def test_a_node_of_more_cpus_needs_more_rows_to_repay_compiling():
    """It runs more rows a second, so each row saves less: 8 CPUs need 4x the rows of the 2 measured."""
    from inferkit.job.plan import compile_rows_needed

    assert compile_rows_needed(RESNET50, "cpu", 8) == pytest.approx(4 * compile_rows_needed(RESNET50, "cpu", 2))
    assert compile_rows_needed(RESNET50, "cpu", 1) == compile_rows_needed(RESNET50, "cpu", 2)
    needed = compile_rows_needed(RESNET50, "cpu", 2)
    assert _plan(math.ceil(needed)).compile and not _plan(math.ceil(needed), cpus=8).compile


def test_compile_on_and_off_are_obeyed_whatever_the_rows():
    assert _plan(1, compile="on").compile and "asked for: inductor, weights frozen" in _compile_decision(
        _plan(1, compile="on"))
    assert "CUDA graphs" in _compile_decision(_plan(1, gpus=1, compile="on"))
    assert not _plan(10**9, compile="off").compile


def test_no_cpu_compiling_where_a_node_has_no_cpp_compiler():
    """Ray's CPU images ship without g++ (ray-project/ray docker/base-deps/Dockerfile removes it): inductor
    could only fail there, so neither auto nor on compiles on CPUs; a GPU's kernels need no C++ compiler."""
    for asked in ("auto", "on"):
        plan = _plan(1_000_000, nodes=2, compilers=(True, False), compile=asked)
        assert not plan.compile and "no C++ compiler on the nodes" in _compile_decision(plan)
    assert _plan(1_000_000, nodes=2, compilers=(True, True)).compile
    assert _plan(1, gpus=1, compilers=(False,), compile="on").compile


def test_the_node_probe_finds_the_compiler_inductor_calls(monkeypatch, tmp_path):
    from inferkit.job.resources import cpp_compiler_present

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert not cpp_compiler_present()
    fake = tmp_path / "c++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert cpp_compiler_present()


# ---------------------------------------------------------------------------------------------
# `inferkit run --compile on` on the embedded Ray


def _run_sentiment(inferkit, tmp_path, model: str, name: str, *flags: str):
    texts = [tiny.sentiment_text(i % 3, seed=200 + i) for i in range(21)]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / name
    result = inferkit("run", "--task", "text-classification", "--model", model, "--input",
                      str(source), "--output", str(out), "--batch-size", "8", "--precision", "fp32", *flags)
    assert result.code == 0, result.stderr
    import pandas as pd

    report = json.loads((out / "_inferkit_report.json").read_text())
    return result, pd.read_parquet(out).sort_values("id").reset_index(drop=True), report


def test_run_compiled_gives_eager_results_and_reports_each_actors_compilations(inferkit, ray_local, tiny_models,
                                                                                tmp_path):
    """21 rows in batches of 8: the last batch is padded to 8 and cut back, every row once; each actor
    reports what it compiled."""
    model = tiny_models["sentiment"]
    _, eager, eager_report = _run_sentiment(inferkit, tmp_path, model, "eager", "--compile", "off")
    result, compiled, report = _run_sentiment(inferkit, tmp_path, model, "compiled", "--compile", "on")
    assert eager_report["compile"] == {"mode": "off", "on": False, "actors": {}}
    assert compiled.id.tolist() == list(range(21)) and compiled.label.tolist() == eager.label.tolist()
    assert np.allclose(compiled.score, eager.score, atol=1e-4)
    assert "compile: compiled agrees with eager fp32 on 100.0% of 21 rows" in result.stderr
    assert report["compile"]["on"] is True and report["compile"]["check"]["agreement"] == 1.0
    actors = report["compile"]["actors"]
    assert actors and all(a["fallback"] == "" and a["compilations"] >= 1 for a in actors.values())


def test_run_with_a_compile_error_goes_on_eager_and_says_so_once(inferkit, ray_local, tiny_models, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("INFERKIT_INJECT_FAULT", "compile-fail")
    result, frame, report = _run_sentiment(inferkit, tmp_path, tiny_models["sentiment"], "out", "--compile", "on")
    assert frame.id.tolist() == list(range(21)) and frame.error.isna().all()
    assert result.stderr.count("compile: compiling failed: ") == 1 and "-> eager" in result.stderr
    assert report["compile"]["on"] is False and report["compile"]["actors"] == {}
