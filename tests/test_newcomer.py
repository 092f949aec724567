"""What a new user meets in the first ten minutes (issue 10): errors in the words they typed, a bare
`render` that runs, help that reads well, a plan line that says what it checks."""

from __future__ import annotations

import yaml

from inferkit import chart
from inferkit.job.plan import ClusterResources, ModelProfile, NodeResources, make_plan


def _one_line_error(result, flag: str) -> str:
    assert result.code == 2 and result.stdout == ""
    line = result.stderr.strip()
    assert line.startswith("Error: ") and "\n" not in line and len(line) < 300, result.stderr
    assert flag in line, line
    return line


def test_job_flag_errors_name_the_flag_typed(inferkit):
    for args, flag in ((["--batch-size", "0"], "--batch-size: must be at least 1"),
                       (["--actors", "0"], "--actors: '0': need 1 <= MIN <= MAX"),
                       (["--max-error-fraction", "1.5"], "--max-error-fraction: must be between 0 and 1"),
                       (["--num-gpus-per-actor", "-1"], "--num-gpus-per-actor: must be greater than 0")):
        line = _one_line_error(inferkit("run", *args), flag)
        assert "run." not in line
        _one_line_error(inferkit("render", *args), flag)


def test_values_file_and_set_errors_keep_the_key_path(inferkit, tmp_path):
    values = tmp_path / "v.yaml"
    values.write_text("run:\n  batchSize: 0\n")
    assert "run.batchSize: must be at least 1" in inferkit("render", "-f", str(values)).stderr
    assert "run.actors: '0': need" in inferkit("render", "--set", "run.actors=0").stderr


def _worker_groups(text: str) -> dict[str, int]:
    spec = yaml.safe_load(text)["spec"]["rayClusterSpec"]
    return {g["groupName"]: g["replicas"] for g in spec["workerGroupSpecs"]}


def test_a_bare_render_has_one_cpu_worker_and_gpu_nodes_alone_have_none(inferkit):
    bare = inferkit("render")
    assert bare.code == 0, bare.stderr
    assert _worker_groups(bare.stdout) == {"cpu-workers": 1}
    assert chart.default_values()["cpuWorkers"]["replicas"] == 1  # the default users see in values.yaml
    gpu = inferkit("render", "--gpu-nodes", "2")
    assert _worker_groups(gpu.stdout) == {"gpu-workers": 2}
    both = inferkit("render", "--gpu-nodes", "2", "--set", "cpuWorkers.replicas=1")
    assert _worker_groups(both.stdout) == {"cpu-workers": 1, "gpu-workers": 2}
    assert "no worker nodes" in inferkit("render", "--cpu-nodes", "0").stderr


def test_help_lists_commands_whole_and_render_flags_by_section(inferkit, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    top = inferkit("--help").stdout
    commands = top.split("Commands:\n")[1].split("\n\n")[0].splitlines()
    assert all(line.startswith("  ") and not line.startswith("   ") for line in commands), commands  # none wrapped
    assert not any(line.endswith("...") for line in commands), commands
    help_text = inferkit("render", "--help").stdout
    sections = [help_text.index(s) for s in ("--raycluster", "Cluster options:", "--gpu-nodes", "Job options",
                                             "--batch-size")]
    assert sections == sorted(sections)
    assert "--actors N|MIN:MAX" in help_text and "--actors N|MIN:MAX" in inferkit("run", "--help").stdout


def test_the_precision_line_says_cosine_for_embeddings():
    cluster = ClusterResources((NodeResources("n", cpus=8, memory_bytes=32 * 2**30, cpu_bf16=True),))
    profile = ModelProfile(input_kind="text", parameter_bytes=2**20)

    def why(task: str) -> str:
        plan = make_plan(cluster, profile, chart.load_run_options({"task": task}))
        return next(d.why for d in plan.decisions if d.what == "precision")

    assert "cosine similarity" in why("embedding") and "top-1" not in why("embedding")
    assert "top-1 label" in why("text-classification")
