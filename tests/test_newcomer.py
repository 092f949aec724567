"""What a new user meets in the first ten minutes (issue 10): errors in the words they typed, a bare
`render` that runs, help that reads well, a plan line that says what it checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------------------------------------
# `inferkit run`: mistakes caught before Ray starts, and a plan without running


def _texts(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "t.jsonl").write_text("".join(json.dumps({"id": i, "text": f"text {i}"}) + "\n" for i in range(5)))
    return folder


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if the run gets as far as connecting to (or starting) Ray."""
    from inferkit.job import run

    def connect(verbose: bool):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(run, "_connect", connect)


@pytest.mark.parametrize(("task", "model", "said"), [
    ("text-classification", "vit", "a 'vit' model cannot do --task text-classification"),
    ("embedding", "resnet", "a 'resnet' model cannot do --task embedding"),
])
def test_a_model_wrong_for_the_task_is_refused_before_ray(inferkit, tiny_models, tmp_path, no_ray, task, model, said):
    result = inferkit("run", "--task", task, "--model", tiny_models[model], "--input", str(_texts(tmp_path / "in")),
                      "--output", str(tmp_path / "out"))
    line = _one_line_error(result, "--model")
    assert said in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("inp", "out", "said"), [
    ("in", "in/out", "is inside the input"),
    ("in", "in", "is the input"),
    ("in", "{tmp}/in/./deeper/out", "is inside the input"),  # relative input, absolute output
    ("in/t.jsonl", "in", "holds the input"),
    ("link", "in/out", "is inside the input"),  # a symlink to the input folder
])
def test_an_output_inside_the_input_or_around_it_is_refused(inferkit, tmp_path, monkeypatch, no_ray, inp, out, said):
    monkeypatch.chdir(tmp_path)
    _texts(tmp_path / "in")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    line = _one_line_error(inferkit("run", "--input", inp, "--output", out.format(tmp=tmp_path)), "--output")
    assert said in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_nested_object_store_paths_are_refused_at_render(inferkit):
    result = inferkit("render", "--input", "s3://bucket/data", "--output", "s3://bucket/data/out")
    _one_line_error(result, "--output: 's3://bucket/data/out' is inside the input 's3://bucket/data'")
    sibling = inferkit("render", "--input", "s3://bucket/data", "--output", "s3://bucket/data-out")
    assert sibling.code == 0, sibling.stderr


def _inferkit(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (env or {})
    return subprocess.run([sys.executable, "-m", "inferkit", *args], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=900)  # a guard only: a loaded machine is slow


def test_device_gpu_on_a_machine_without_one_is_refused_before_ray(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = _inferkit("run", "--device", "gpu", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    line = done.stderr.strip()
    assert line.startswith("Error: --device gpu: this machine has no GPU") and "\n" not in line and len(line) < 300
    assert not list(tmp_path.iterdir())  # no output folder, no Ray session files here


def test_dry_run_prints_the_plan_and_loads_and_writes_nothing(tmp_path, tiny_models):
    # A model folder without weights: a run would fail to load it, the plan needs only its config.
    config_only = tmp_path / "model"
    config_only.mkdir()
    for name in os.listdir(tiny_models["classifier"]):
        if not name.endswith((".safetensors", ".bin")):
            shutil.copy(os.path.join(tiny_models["classifier"], name), config_only)
    inp = _texts(tmp_path / "in")
    work = tmp_path / "work"
    work.mkdir()
    done = _inferkit("run", "--dry-run", "--task", "text-classification", "--model", str(config_only), "--input",
                     str(inp), "--output", str(tmp_path / "out"), cwd=work)
    assert done.returncode == 0, done.stderr
    for expected in (f"input:  {inp} (1 unit(s) of jsonl)", "schema: id int64, text string",
                     f"model:  {config_only}", f"output: {tmp_path / 'out'} (not written: dry run)",
                     "this machine (an embedded Ray would start here)", "actor pool", "batch size"):
        assert expected in done.stdout, done.stdout
    assert not (tmp_path / "out").exists() and not list(work.iterdir())
    demo = _inferkit("run", "--dry-run", cwd=work)
    assert demo.returncode == 0 and "model:  the bundled all-MiniLM-L6-v2 (/" in demo.stdout, demo.stderr
    assert not list(work.iterdir())


# ---------------------------------------------------------------------------------------------
# A whole run as a user sees it: quiet, in rows, naming its model


def _fresh_env(tmp_path: Path) -> dict:
    """A fresh process: no cluster address, its own home (Ray keeps its token there), offline demo weights."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "HF_HUB_OFFLINE": "1"}


def _run_in_a_terminal(args: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    """`inferkit run` with a pseudo-terminal as stdout and stderr, as in an interactive shell."""
    import pty

    leader, follower = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env
    process = subprocess.Popen([sys.executable, "-m", "inferkit", "run", *args], cwd=cwd, env=environment,
                               stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every copy of the terminal's other end is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.ray
@pytest.mark.slow
def test_a_terminal_shows_progress_in_rows_and_the_error_kinds(tmp_path, tiny_models):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [("" if i % 50 == 0 else f"the movie was good {i}") for i in range(300)]  # 6 empty texts
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": list(range(300)), "text": texts}), tmp_path / "in" / "t.parquet")
    code, screen = _run_in_a_terminal(["--model", tiny_models["embedder"], "--input", str(tmp_path / "in"),
                                       "--output", str(tmp_path / "out"), "--max-error-fraction", "0.5",
                                       "--batch-size", "16"], tmp_path, _fresh_env(tmp_path))
    assert code == 0, screen
    shown = screen.replace("\r\x1b[K", "\n").splitlines()
    progress = [i for i, line in enumerate(shown) if re.match(r"^[\d,]+( / 300)? rows, [\d.,]+ rows/s", line)]
    assert progress and re.match(r"^300( / 300)? rows, ", shown[progress[-1]]), screen
    precision = [i for i, line in enumerate(shown) if " precision: " in line]
    assert all(i < progress[0] for i in precision)  # the precision check's sample showed no progress
    for ray_bar in ("Running Dataset", "MapBatches(", "Progress bars", "WARNING"):
        assert ray_bar not in screen, screen
    assert any(line.endswith("errors by kind: 6 empty text") for line in shown), screen


@pytest.mark.ray
@pytest.mark.slow
def test_off_a_terminal_progress_is_a_line_every_few_seconds(tiny_models, tmp_path):
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"id": i, "text": "" if i == 3 else f"w {i}"}) + "\n"
                                              for i in range(40)))
    done = _inferkit("run", "--model", tiny_models["embedder"], "--input", str(tmp_path / "t.jsonl"), "--output",
                     str(tmp_path / "out"), "--max-error-fraction", "0.5", "--batch-size", "8", cwd=tmp_path,
                     env=_fresh_env(tmp_path) | {"INFERKIT_PROGRESS_SECONDS": "0.001"})
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    progress = [line for line in lines if " progress: " in line]
    assert progress and all(re.match(r"^[\d,]+ rows, [\d.,]+ rows/s$", line.split(" progress: ")[1])
                            for line in progress), lines
    assert progress[-1].split(" progress: ")[1].startswith("40 rows, "), progress
    assert "\r" not in done.stderr and "\x1b" not in done.stderr
    assert lines[-1].endswith("errors by kind: 1 empty text")


def test_submit_dry_run_without_a_cluster_points_to_render(inferkit, tmp_path):
    result = inferkit("submit", "--dry-run", "--kubeconfig", str(tmp_path / "none"))
    assert result.code == 3 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and "`inferkit render` with the same flags" in result.stderr


def test_the_progress_line_counts_rows_with_rate_and_time_left():
    import io

    from inferkit.job.terminal import RowProgress

    shown = RowProgress(total=5000, done_before=0, stream=io.StringIO(), now=100.0)
    shown.update(1234, now=130.0)
    assert shown.line(130.0) == "1,234 / 5,000 rows, 41 rows/s, ETA 2 min"
    resumed = RowProgress(total=None, done_before=200, stream=io.StringIO(), now=0.0)
    resumed.update(3, now=2.0)
    assert resumed.line(2.0) == "203 rows, 1.5 rows/s"


def test_ray_native_lines_known_harmless_are_dropped_and_the_rest_pass(tmp_path):
    """What reaches the terminal from fd 2: the C++ line about Ray Data's own object-store arguments is
    dropped; a real C++ error, Python's lines and a progress redraw without a newline pass unchanged."""
    from inferkit.job import terminal

    harmless = (b"[2026-12-01 14:29:12,300 E 4083 4083] core_worker.cc:2465: Actor with class name: "
                b"'MapWorker(MapBatches(Predictor))' and ID: '98' has constructor arguments in the object store "
                b"and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor "
                b"restart will fail.\n")
    real_error = b"[2026-12-01 14:29:13,001 E 4083 4083] core_worker.cc:900: Failed to connect to the GCS\n"
    source_read, source_write = os.pipe()
    sink = tmp_path / "terminal"
    with open(sink, "wb") as out:
        os.write(source_write, b"14:29:12 plan:\n" + harmless + real_error + b"\r\x1b[K12 / 100 rows")
        os.close(source_write)
        terminal._forward(source_read, out.fileno())
    assert sink.read_bytes() == b"14:29:12 plan:\n" + real_error + b"\r\x1b[K12 / 100 rows"


def test_the_gcs_line_about_killing_a_gone_actor_is_kept_off_the_terminal():
    """What Ray's driver prints of the GCS's log (its "ray_print_logs" handler on Ray's real dispatcher):
    the failed KillActor line of a failed run's end is dropped, any other GCS line passes, once wrapped."""
    pytest.importorskip("ray")
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from inferkit.job import terminal

    printed: list[dict] = []
    dispatcher.add_handler("ray_print_logs", printed.append)
    try:
        terminal.quiet_forwarded_gcs_lines()
        terminal.quiet_forwarded_gcs_lines()  # a second run in the same process wraps nothing twice
        gone = ("[2026-12-02 03:55:09,221 E 26681 26681] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill "
                "actor a1d8, return status: Invalid: KillActor RPC failed for actor a1d8: RpcError: Socket closed")
        other = "[2026-12-02 03:55:09,300 E 26681 26681] (gcs_server) gcs_server.cc:100: a real GCS error"
        dispatcher.emit({"pid": "gcs_server", "is_err": True, "lines": [gone]})
        dispatcher.emit({"pid": "gcs_server", "is_err": True, "lines": [gone, other]})
        dispatcher.emit({"pid": 4083, "is_err": True, "lines": ["KillActor RPC failed for actor, from a worker"]})
    finally:
        dispatcher.remove_handler("ray_print_logs")
    assert [d["lines"] for d in printed] == [[other], ["KillActor RPC failed for actor, from a worker"]]


def test_error_kinds_group_messages_by_what_went_wrong():
    from inferkit.job.terminal import error_kinds

    counts = {"empty text": 4, "cannot decode image: UnidentifiedImageError: cannot identify image file 1": 1,
              "cannot decode image: UnidentifiedImageError: cannot identify image file 2": 2}
    assert error_kinds(counts) == "4 empty text, 3 cannot decode image"


def test_the_default_output_counts_inside_the_input_and_only_there(inferkit, tmp_path, monkeypatch, no_ray,
                                                                   tiny_models):
    monkeypatch.chdir(tmp_path)
    _texts(tmp_path)
    line = _one_line_error(inferkit("run", "--input", ".", "--model", tiny_models["embedder"]), "--output")
    assert f"'{tmp_path}/inferkit-output/" in line and f"is inside the input '{tmp_path}'" in line
    _texts(tmp_path / "data")  # a subfolder of the working directory: the default output is beside it
    done = _inferkit("run", "--dry-run", "--input", "data", "--model", tiny_models["embedder"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_an_embedded_ray_gets_token_auth_chosen_so_ray_has_nothing_to_warn_about(tmp_path):
    """Ray warns when it picks token authentication for a new local cluster itself; inferkit chooses it
    (Ray's cached config must see the choice, or the cluster's processes and the driver disagree)."""
    probe = ("import os; from inferkit.job.run import _choose_token_auth; _choose_token_auth(); "
             "from ray._raylet import AuthenticationMode, get_authentication_mode; "
             "print(os.environ['RAY_AUTH_MODE'], get_authentication_mode() == AuthenticationMode.TOKEN)")
    environment = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    done = subprocess.run([sys.executable, "-c", probe], env=environment, capture_output=True, text=True,
                          timeout=900, cwd=tmp_path)
    assert done.stdout.split() == ["token", "True"], done.stderr
    kept = subprocess.run([sys.executable, "-c", probe], env=environment | {"RAY_AUTH_MODE": "disabled"},
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert kept.stdout.split() == ["disabled", "False"], kept.stderr


def test_a_text_model_whose_tokenizer_transformers_does_not_list_may_embed(inferkit, tmp_path, no_ray):
    """llama is in no tokenizer table of transformers (its tokenizer comes from tokenizer_config.json), yet
    llama-based embedders exist: only a model without a vocabulary is refused for embeddings."""
    from transformers import LlamaConfig

    model = tmp_path / "llama"
    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, num_key_value_heads=2).save_pretrained(model)
    result = inferkit("run", "--task", "embedding", "--model", str(model), "--input", str(_texts(tmp_path / "in")),
                      "--output", str(tmp_path / "out"))
    assert "cannot do --task" not in result.stderr
    assert "Ray was started" in result.stderr, result.stderr  # it got past every check before Ray
