"""`inferkit run`: read the cluster, plan, build the Ray Data pipeline, run it, publish the output.

The order is chosen so that bad input fails in seconds: the input is listed, the models' configs
and the output folder are checked before Ray starts and before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import posixpath
import re
import time
import uuid
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import pyarrow as pa

from inferkit import __version__
from inferkit.config import RunOptions, is_remote_uri, nesting_problem
from inferkit.console import say
from inferkit.errors import EXIT_OK, ConfigError, InferkitError, JobFailed, one_line, stop_on_sigterm
from inferkit.job import io, terminal
from inferkit.job.compile import check_compiled, read_tally, start_tally
from inferkit.job.compile import settle as settle_compile
from inferkit.job.ledger import LEASE_RENEW_SECONDS, Lease, Ledger, Progress, identity, write_through
from inferkit.job.plan import Plan, make_plan, settle_precision
from inferkit.job.quarantine import Rescue
from inferkit.job.tasks import (ERROR, ModelFacts, ModelSpec, Predictor, check_precision, decode_images, demo_model,
                                normalization_of, processor_shape, processor_size, profile_models,
                                read_model_facts)

SAMPLE = Path(__file__).parent / "sample" / "texts.jsonl"
SAMPLE_ROWS = 64  # the first batch the precision and compile checks compare
# Retries of a read, decode, inference or write task whose process died (Ray Data's default is without
# limit): a block that still fails is dropped by Ray Data and finished row by row (quarantine.py).
TASK_RETRIES = 2
# Retries of a task that Ray's memory monitor killed, counted apart from TASK_RETRIES: Ray 2.60 retries
# those without limit (task_oom_retries, -1), so a row whose decoding takes more memory than the node
# has hung the run for ever (seen: a decode task killed and started again for minutes). Bounded, its
# block is dropped and quarantine.py does its rows again one chunk at a time, which is the retry that
# needs the least memory, and finds the row.
OOM_RETRIES = 1
# Ray 2.60 has no named parameter for those retry bounds (dataset.py's named remote parameters stop at
# label_selector ... runtime_env), so they go through ray_remote_args, which warns of its removal in 2.64 on
# every map_batches. Ray is pinned to 2.60; the warning is ours to act on when Ray moves, not the user's.
warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")

# Idle Ray workers an embedded Ray keeps beyond one per CPU. Ray's soft limit (num_workers_soft_limit in
# Ray's ray_config_def.h, default: the CPU count) counts Ray Data's helper actors too, so by default every
# read, decode and write worker is killed after a second idle and started again for the next task:
# measured on 2 CPUs (ResNet-50, 320 images), 13 worker starts instead of 5, and inference 25% slower
# eager, 40% slower compiled, from the CPU those starts took.
EXTRA_IDLE_WORKERS = 8

log = logging.getLogger("inferkit")



# ---------------------------------------------------------------------------------------------
# Checks before any work


def _payload_column(options: RunOptions, source: io.Source) -> str:
    if options.task == "image-classification":
        return "bytes" if source.format == "images" else options.image_column
    return options.text_column


def _check_columns(options: RunOptions, source: io.Source, schema: pa.Schema) -> list[str]:
    names = schema.names
    problems = []
    if options.task != "image-classification" and source.format == "images":
        problems.append(f"--task {options.task} reads text, but --input {source.uri} holds images")
    payload = _payload_column(options, source)
    if payload not in names:
        flag = "--image-column" if options.task == "image-classification" else "--text-column"
        problems.append(f"{flag} {payload!r}: no such column in the input (has: {', '.join(names)})")
    if options.task == "image-classification" and source.format != "images" and payload in names:
        kind = schema.field(payload).type
        if not (_is_binary(kind) or pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
                and _is_binary(kind.field("bytes").type)):
            problems.append(f"--image-column {payload!r} is {kind}; it must hold the image files' bytes (binary, "
                            "or a struct with a binary `bytes` field as Hugging Face datasets write)")
    if options.id_column and options.id_column not in names:
        problems.append(f"--id-column {options.id_column!r}: no such column in the input (has: {', '.join(names)})")
    results = {ERROR} | ({"embedding"} if options.task == "embedding" else {"label", "score"})
    clashes = sorted(results & set(names) - {payload})
    if clashes:
        problems.append(f"input column(s) {', '.join(clashes)} clash with output columns; rename them")
    return problems


def _is_binary(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _check_models(options: RunOptions, facts: list[ModelFacts]) -> list[str]:
    problems = [problem for f in facts if (problem := _architecture_problem(options, f))]
    if len(facts) > 1 and options.task == "embedding":
        problems.append("--model given more than once: ensembles need a classification task")
    if len(facts) > 1 and options.ensemble == "mean":
        if len({tuple(sorted(f.id2label.items())) for f in facts}) > 1:
            problems.append("--ensemble mean needs models with the same labels; use max-confidence")
    return problems


def _architecture_problem(options: RunOptions, facts: ModelFacts) -> str | None:
    """Whether transformers has a class for this model type and task, from the model's config alone, so a
    wrong model fails here and not in the actors after Ray started. Models that bring their own code
    (--trust-remote-code, or a type transformers does not know) are left to loading."""
    from transformers.models.auto import configuration_auto, modeling_auto

    kind = facts.model_type
    if options.trust_remote_code or kind not in configuration_auto.CONFIG_MAPPING_NAMES:
        return None
    if options.task == "text-classification":
        classes = modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    elif options.task == "image-classification":
        classes = modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    else:  # embeddings of text: any base model with a vocabulary (transformers' tokenizer table misses many,
        # e.g. llama, whose tokenizer comes from tokenizer_config.json)
        classes = modeling_auto.MODEL_MAPPING_NAMES if facts.reads_text else {}
    if kind in classes:
        return None
    return (f"--model {facts.model}: a {kind!r} model cannot do --task {options.task} (transformers has no "
            f"class for that); choose a model made for {options.task}")


def _check_nesting(options: RunOptions, output: str) -> None:
    """config's check compares the paths as typed; here local ones are resolved (relative, symlinks), and
    the default output (inferkit-output/<run id> here) counts too: `--input .` would read it next time."""
    def resolved(path: str) -> str:
        return path if is_remote_uri(path) else os.path.realpath(os.path.expanduser(path))

    problem = nesting_problem(resolved(options.input), resolved(output)) if options.input else None
    if problem:
        raise ConfigError([f"--output: {problem}"])


def _check_gpu_here(options: RunOptions) -> None:
    """--device gpu for an embedded Ray: this machine must have a GPU, known before Ray starts."""
    import torch

    if options.device == "gpu" and not os.environ.get("RAY_ADDRESS") and not _ray_connected() \
            and not torch.cuda.is_available():
        raise ConfigError(["--device gpu: this machine has no GPU that torch can use, and with no RAY_ADDRESS the "
                           "run is on this machine; use --device cpu or auto, or set RAY_ADDRESS to a GPU cluster"])


def _output_uri(options: RunOptions, run_id: str) -> str:
    return options.output or os.path.join("inferkit-output", run_id)


def _model_names(options: RunOptions, facts: list[ModelFacts]) -> str:
    names = ", ".join(f.model for f in facts)
    return f"the bundled all-MiniLM-L6-v2 ({names})" if not options.model else names


def _absolute(uri: str) -> str:
    return uri if is_remote_uri(uri) else os.path.abspath(os.path.expanduser(uri))


def _output_schema(options: RunOptions, schema: pa.Schema, passthrough: list[str]) -> pa.Schema:
    fields = []
    for name in passthrough:
        fields.append(schema.field(name))
    if options.task == "embedding":
        fields.append(pa.field("embedding", pa.list_(pa.float32())))
    else:
        fields += [pa.field("label", pa.string()), pa.field("score", pa.float32())]
    return pa.schema(fields + [pa.field(ERROR, pa.string())])


def _passthrough(options: RunOptions, source: io.Source, schema: pa.Schema) -> list[str]:
    payload = _payload_column(options, source)
    names = [n for n in schema.names if n not in (payload, ERROR)]
    first = options.id_column or ("id" if "id" in names else None)
    return ([first] if first else []) + [n for n in names if n != first]


# ---------------------------------------------------------------------------------------------
# Ray


def _connect(verbose: bool) -> tuple[str, bool]:
    """Connects to Ray; says where, and whether it is an embedded Ray this process started (one machine,
    no nodes joining later)."""
    import ray

    address = os.environ.get("RAY_ADDRESS")
    # Read by this process's core worker as it starts, which retries the tasks it submits (Ray Data's); a
    # value the user set is kept. A caller that connected already keeps its own (Ray's default: no bound).
    oom_retries = os.environ.setdefault("RAY_task_oom_retries", str(OOM_RETRIES))
    if not oom_retries.lstrip("-").isdigit():
        raise ConfigError([f"RAY_task_oom_retries={oom_retries!r}: must be a whole number"])
    # Ray's own warnings (advice for Ray developers) only with -v; its errors always.
    level = logging.INFO if verbose else logging.ERROR
    embedded = False
    if ray.is_initialized():  # a caller (a notebook, a test) already connected
        where = "the connected Ray"
    elif address:
        ray.init(address=address, logging_level=level)
        where = f"the Ray cluster at {address}"
    else:
        _choose_token_auth()
        ray.init(address="local", include_dashboard=False, logging_level=level,  # never a stray `ray start`
                 _system_config={"num_workers_soft_limit": (os.cpu_count() or 1) + EXTRA_IDLE_WORKERS,
                                 "task_oom_retries": int(oom_retries)})
        where, embedded = "an embedded Ray", True
    stop_on_sigterm()  # ray.init put its own handler in place of the CLI's
    if not verbose:
        terminal.quiet_native_stderr()
        terminal.quiet_forwarded_gcs_lines()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # inferkit shows progress in rows (terminal.py)
    context.print_on_execution_start = verbose
    terminal.install_progress(context)
    logging.getLogger("ray.data").setLevel(level)
    if not verbose:  # a failing task is reported once, by us, with its root cause; -v shows Ray's traceback
        for name in ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    return where, embedded


def _choose_token_auth() -> None:
    """An embedded Ray uses token authentication, as Ray's default for a new local cluster does; chosen
    here, Ray does not warn about having chosen it. Ray reads the mode into its cached config, so it is
    set as ray.init would (enable_token_auth_by_default in ray/_private/authentication/
    authentication_token_setup.py, less its warning). An explicit RAY_AUTH_MODE is left as it is."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._private.authentication.authentication_token_setup import _enable_token_auth

    _enable_token_auth()


def _visible_everywhere(path: str, node_ids: list[str]) -> bool:
    """Whether a file written by the driver is visible on every node (a shared folder)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0)(os.path.exists)
    futures = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(path)
               for n in node_ids]
    return all(ray.get(futures, timeout=120))


def _prepared(source: io.Source, parts: list[pa.Table], facts: list[ModelFacts], schema: pa.Schema,
              options: RunOptions, plan: Plan, spec: ModelSpec) -> Any:
    """Reading (and for images, decoding) the parts still to do, as Ray tasks on a fraction of a CPU each."""
    import ray

    read, decode = _stage_arguments(source, facts, schema, options, spec)
    reads = ray.data.from_arrow(parts).map_batches(
        io.read_units, fn_kwargs=read, batch_format="pyarrow", batch_size=None, num_cpus=plan.io_task_cpus,
        max_retries=TASK_RETRIES)
    if decode is None:
        return reads
    return reads.map_batches(decode_images, fn_kwargs=decode, batch_format="pyarrow", batch_size=None,
                             num_cpus=plan.io_task_cpus, udf_modifying_row_count=False, max_retries=TASK_RETRIES)


def _stage_arguments(source: io.Source, facts: list[ModelFacts], schema: pa.Schema, options: RunOptions,
                     spec: ModelSpec) -> tuple[dict, dict | None]:
    """The keyword arguments of the read and (for images) decode stages, shared with quarantine.py."""
    read = {"filesystem": source.filesystem, "fmt": source.format, "schema": schema}
    if options.task != "image-classification":
        return read, None
    return read, {"processors": [f.image_processor for f in facts],
                  "shapes": [processor_shape(f.image_processor) for f in facts],
                  "image_column": _payload_column(options, source), "fault": spec.fault,
                  "id_column": spec.passthrough[0] if spec.passthrough else ""}


def _predictions(prepared: Any, spec: ModelSpec, plan: Plan) -> Any:
    """The inference actors: a pool within the planned bounds (fixed on CPUs, autoscaling on GPUs)."""
    import ray

    initial = plan.actors_max if plan.actors_min < plan.actors_max else None
    return prepared.map_batches(
        Predictor, fn_constructor_kwargs={"spec": spec},
        compute=ray.data.ActorPoolStrategy(min_size=plan.actors_min, max_size=plan.actors_max, initial_size=initial),
        num_cpus=plan.num_cpus_per_actor, num_gpus=plan.num_gpus_per_actor or None,
        batch_size=plan.batch_size, batch_format="pyarrow", udf_modifying_row_count=False,
        max_task_retries=TASK_RETRIES)


def _first_rows(prepared: Any) -> pa.Table | None:
    """The first rows still to do, read once for both first-batch checks; None if earlier attempts
    wrote every row."""
    try:
        return prepared.limit(SAMPLE_ROWS).take_batch(SAMPLE_ROWS, batch_format="pyarrow")
    except ValueError:  # Ray Data's "the dataset is empty"
        return None


def _check_task(function: Any, plan: Plan, retries: int) -> Any:
    """`function` as a Ray task shaped like one inference actor, so it runs where actors run, in a process
    of its own that ends after it (max_calls=1; Ray sets it only for tasks declared with GPUs): the models
    it loaded, and on a GPU its CUDA context, leave with it instead of crowding the actors."""
    import ray

    return ray.remote(max_calls=1)(function).options(num_cpus=plan.num_cpus_per_actor, max_retries=retries,
                                                     num_gpus=plan.num_gpus_per_actor or None)


def _settle_precision(sample: pa.Table | None, spec: ModelSpec, plan: Plan) -> tuple[ModelSpec, dict]:
    """bf16 stays only if it agrees with fp32 on the first rows; the check runs where actors run."""
    if not plan.precision_check:
        return spec, {"chosen": spec.precision, "checked": False}
    result = _precision_sample_checked(sample, spec, plan)
    chosen = settle_precision(spec.precision, result["agreement"])
    found = result.get("why") or f"{spec.precision} agrees with fp32 on {result['agreement']:.1%} of {result['rows']} rows"
    say(f"precision: {found} -> {chosen}")
    return dataclasses.replace(spec, precision=chosen), {"chosen": chosen, "checked": True, **result}


def _precision_sample_checked(sample: pa.Table | None, spec: ModelSpec, plan: Plan) -> dict:
    """check_precision on the first rows still to do; none left (earlier attempts wrote them) or a check
    whose process keeps dying compares nothing, so fp32 is kept."""
    import ray
    from ray.exceptions import WorkerCrashedError

    if sample is None:
        return {"agreement": 0.0, "rows": 0, "why": "no row left to compare with fp32"}
    try:
        # eager: compiling, if on, is checked after the precision is chosen (compile.settle), against eager fp32
        task = _check_task(check_precision, plan, TASK_RETRIES)
        return ray.get(task.remote(dataclasses.replace(spec, compile=False), sample))
    except WorkerCrashedError:
        return {"agreement": 0.0, "rows": 0, "why": "the check's worker process died on the first rows"}


def _contain_crashes() -> None:
    """A block that fails after TASK_RETRIES is dropped rather than ending the run: the ledger knows its
    rows are missing and _finish_incomplete_parts does them. No row is lost; see quarantine.py."""
    import ray

    ray.data.DataContext.get_current().max_errored_blocks = -1


def _say_resuming(source: io.Source, progress: Progress, attempts: int) -> None:
    if attempts == 1:
        return
    sizes = [progress.sizes.get(p, source.part_rows(p)) for p in range(source.parts)]
    done = sum(progress.complete(p) for p in range(source.parts))
    total = f" of {sum(sizes)}" if None not in sizes else ""
    parts = f" ({done} of {source.parts} input parts complete)" if not total else ""
    say(f"resuming: {progress.rows}{total} rows already done{parts}; attempt {attempts}")


def _record_precision(ledger: Ledger, history: tuple[dict, list[dict]], precision: str) -> None:
    """Each attempt's precision is kept; the report says when they differ."""
    job, attempts = history
    attempts[-1]["precision"] = precision
    ledger.note_attempt(job, attempts)
    used = sorted({a["precision"] for a in attempts if "precision" in a})
    if len(used) > 1:
        say(f"note: the attempts of this run computed rows in different precisions ({', '.join(used)})")


def _finish_incomplete_parts(ledger: Ledger, source: io.Source, facts: list[ModelFacts], schema: pa.Schema,
                             options: RunOptions, plan: Plan, spec: ModelSpec) -> int:
    """Parts whose blocks Ray Data dropped (their tasks kept dying) are done chunk by chunk in a child
    process; returns the rows that killed it and became error rows."""
    spec = dataclasses.replace(spec, compile=False)  # a process restarted per crash would compile each time
    read, decode = _stage_arguments(source, facts, schema, options, spec)
    rescue = Rescue(ledger, source, spec, {"spec": spec, "read": read, "decode": decode}, plan.batch_size,
                    {"num_cpus": plan.num_cpus_per_actor, "num_gpus": plan.num_gpus_per_actor or None})
    rescue.finish(ledger.load())
    return rescue.crashed_rows


def _write(predictions: Any, output: io.Output, ledger: Ledger, node_ids: list[str], plan: Plan,
           embedded: bool) -> str:
    """Write where the workers are when they all see the output: an object store, an embedded Ray's one
    machine, or a folder every node sees (nodes that join later are assumed to mount what the others
    do). A cluster of one node may grow (KubeRay's head before its workers start), so its local output
    is written through the driver. Either way rows go out in files of the plan's size, each with its ledger
    entry."""
    if not output.local or embedded or (len(node_ids) > 1 and _probe_shared(output, node_ids)):
        write_through(predictions, ledger, plan.rows_per_file, {"num_cpus": plan.io_task_cpus,
                                                                "max_retries": TASK_RETRIES})
        return "distributed"
    why = "is not shared by all nodes" if len(node_ids) > 1 else "may not be seen by workers that join later"
    say(f"{output.uri} {why}: writing it from the driver (keep it on a volume, or use s3:// or gs://, or it "
        "vanishes with this machine)")
    for batch in predictions.iter_batches(batch_format="pyarrow", batch_size=plan.rows_per_file):
        if batch.num_rows:
            ledger.commit(batch)
    return "driver"


def _probe_shared(output: io.Output, node_ids: list[str]) -> bool:
    marker = os.path.join(output.staging, f".probe-{uuid.uuid4().hex}")
    Path(marker).touch()
    try:
        return _visible_everywhere(marker, node_ids)
    finally:
        os.remove(marker)


def _listed_rows(source: io.Source) -> int | None:
    """The input's rows when its listing tells them (parquet footers, images); None for text files."""
    return sum(source.unit_rows) if source.unit_rows and None not in source.unit_rows else None


def _versions() -> dict[str, str]:
    out = {"inferkit": __version__}
    for package in ("ray", "torch", "transformers", "pyarrow"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "missing"
    return out


# ---------------------------------------------------------------------------------------------


def run_job(options: RunOptions, verbose: bool = False, dry_run: bool = False) -> int:
    started = time.time()
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    _check_nesting(options, _output_uri(options, run_id))
    source = io.discover(options.input or str(SAMPLE), options.input_format, options.store_outage_seconds)
    schema = io.sample_schema(source)
    problems = _check_columns(options, source, schema)
    if not options.model and options.task != "embedding":
        problems.append(f"--task {options.task} needs --model: the bundled demo model only makes embeddings")
    if problems:
        raise ConfigError(problems)
    models = options.model or (demo_model(),)
    facts = [read_model_facts(m, options.task, options.trust_remote_code) for m in models]
    problems = _check_models(options, facts)
    if problems:
        raise ConfigError(problems)
    _check_gpu_here(options)
    passthrough = _passthrough(options, source, schema)
    if dry_run:
        return _dry_run(options, run_id, source, schema, facts, verbose)
    output = io.prepare_output(_output_uri(options, run_id), options.overwrite, options.store_outage_seconds)
    lease = Lease(output.filesystem, output.staging, run_id)
    if lease.wait_for_others():  # the run that held the output ended meanwhile, perhaps publishing it: look again
        output = io.prepare_output(output.uri, options.overwrite, options.store_outage_seconds)
    ledger = Ledger(output.filesystem, output.staging)
    job = identity(_absolute(source.uri).rstrip("/"), source, options.task, _payload_column(options, source),
                   [f"{f.model} ({f.version})" for f in facts], options.ensemble,
                   _output_schema(options, schema, passthrough))
    if output.leftover_run and Ledger(output.filesystem, output.leftover_run).holds(job):
        return _finish_cut_off_cleanup(output, options.max_error_fraction)
    if output.leftover_run and not options.overwrite:
        raise io.already_exists(output.uri)
    attempts = ledger.open(job, options.restart, run_id)
    lease.take()
    try:
        return _run(options, verbose, run_id, started, source, schema, facts, passthrough, output, ledger,
                    (job, attempts), lease)
    except io.StoreLost:  # says where the run is kept; the store is not asked again
        lease.release(store_answers=False)
        raise
    except io.PublishInterrupted:  # says where the run is kept
        raise
    except InferkitError:
        _keep_for_resuming(ledger, output, lease)
        raise
    except Exception as e:
        _keep_for_resuming(ledger, output, lease)
        raise JobFailed(f"the run failed: {_root_cause(e)}") from e
    except BaseException:
        _keep_for_resuming(ledger, output, lease)
        raise
    finally:
        lease.release()


def _keep_for_resuming(ledger: Ledger, output: io.Output, lease: Lease) -> None:
    """A run that died or failed on the way (a lost cluster, an I/O error, Ctrl-C, a task that raised)
    keeps what it wrote, for the same command (or a KubeRay retry) to resume once the cause is fixed;
    only a run that wrote nothing leaves nothing."""
    lease.stop(wait=LEASE_RENEW_SECONDS)  # no renewal may write into a folder that is being discarded
    if not lease.held():  # another run took the output over: its folder now, nothing here is touched
        say(f"{lease.lost_to.get('run_id') or 'another run'} holds {output.staging} now; this run leaves it alone")
        return
    try:
        rows = ledger.load().rows
    except Exception:  # noqa: BLE001 - the output's filesystem may be what failed; keep it as it is
        return
    if not rows:
        io.discard(output)
        return
    say(f"{rows} row(s) written so far are kept in {output.staging}: the same command resumes the run "
        "(--restart throws them away)")


_RAISED = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception)): (.+)$", re.MULTILINE)


def _root_cause(error: BaseException) -> str:
    """The innermost error a task raised, without Ray's wrappers: what the user can act on. Ray keeps
    a remote error's cause only as traceback text, so that text is searched when the chain ends in Ray."""
    text = str(error)
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        if inner is None or inner is error:
            break
        error = inner
    if type(error).__module__.startswith("ray."):
        for name, message in _RAISED.findall(text):
            if not name.startswith("ray.") and name not in ("UserCodeException", "RayTaskError"):
                return f"{name}: {message.strip()[:500]}"
    return f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"


def _run(options: RunOptions, verbose: bool, run_id: str, started: float, source: io.Source, schema: pa.Schema,
         facts: list[ModelFacts], passthrough: list[str], output: io.Output, ledger: Ledger,
         history: tuple[dict, list[dict]], lease: Lease) -> int:
    from inferkit.job.resources import read_cluster

    where, embedded = _connect(verbose)
    _contain_crashes()
    cluster = read_cluster()
    progress = ledger.load(compact=True)
    listed = _listed_rows(source)
    todo = [p for p in range(source.parts) if not progress.complete(p)]
    # planned for the rows and parts still to do: a resumed run that has little left does not compile for
    # it, nor start actors that no part is left for
    plan = make_plan(cluster, profile_models(facts, options.task), options,
                     None if listed is None else max(0, listed - progress.rows), len(todo))
    say(f"run {run_id} on {where}: model {_model_names(options, facts)}; {len(source.units)} input unit(s) of "
        f"{source.format} from {_absolute(source.uri)}"
         + (f" ({len(source.skipped)} other file(s) left out)" if source.skipped else ""))
    _say_resuming(source, progress, len(history[1]))
    say("plan:\n" + plan.table())
    spec = ModelSpec(
        task=options.task, models=tuple(f.model for f in facts), ensemble=options.ensemble, device=plan.device,
        precision=plan.precision, threads=plan.threads_per_actor, batch_size=plan.batch_size,
        channels_last=plan.channels_last, trust_remote_code=options.trust_remote_code,
        text_column=options.text_column, passthrough=tuple(passthrough),
        output_schema=_output_schema(options, schema, passthrough),
        normalization=tuple(normalization_of(f.image_processor) for f in facts if f.image_processor),
        labels=tuple(f.id2label for f in facts), fault=os.environ.get("INFERKIT_INJECT_FAULT", ""),
        compile=plan.compile)
    parts = [source.part_table(p, progress.done.get(p, [])) for p in todo]
    node_ids = [n.node_id for n in cluster.nodes]
    execute_started = time.time()
    write_mode, stats, precision = "none: every row was written by earlier attempts", "", {"chosen": spec.precision,
                                                                                         "checked": False}
    compiled, tally = {"on": False}, None
    stores = [("input store", source.filesystem, source.units[0][0]), ("output store", output.filesystem, output.staging)]
    with io.StoreWatch(stores, options.store_outage_seconds):
        if parts:
            prepared = _prepared(source, parts, facts, schema, options, plan, spec)
            sample = _first_rows(prepared) if plan.precision_check or spec.compile else None
            spec, precision = _settle_precision(sample, spec, plan)
            _record_precision(ledger, history, spec.precision)
            spec, compiled = settle_compile(sample, spec, _check_task(check_compiled, plan, retries=0))
            tally = start_tally() if spec.compile else None
            predictions = _predictions(prepared, spec, plan)
            with terminal.row_progress(_listed_rows(source), progress.rows):
                write_mode = _write(predictions, output, ledger, node_ids, plan, embedded)
            stats = predictions.stats()
            # Ray Data releases its actors by dropping its references (actor_pool_map_operator.py): one
            # restarting as the pipeline ended lived on while the pipeline was referenced here, holding the
            # CPUs the rescue's actor needs (the run hung).
            del predictions, prepared
            gc.collect()
        crashed_rows = _finish_incomplete_parts(ledger, source, facts, schema, options, plan, spec)
    files = ledger.files_to_publish(source.parts)  # the pipeline and the rescue are done: no write is left
    execute_seconds = time.time() - execute_started
    rows, errors_by_message = io.count_rows(output, files)
    errors = sum(errors_by_message.values())
    # an unreadable image is an error row of its own, not rows lost with a file
    unreadable = 0 if source.format == "images" else sum(
        n for error, n in errors_by_message.items() if error.startswith(io.UNREADABLE))
    fraction = errors / rows if rows else 0.0
    wall = time.time() - started
    error_counts = dict(errors_by_message.most_common())
    report = {
        "run_id": run_id, "versions": _versions(), "options": dataclasses.asdict(options),
        "models": [f.model for f in facts], "model_versions": [f.version for f in facts],
        "input": {"uri": _absolute(source.uri), "format": source.format, "units": len(source.units),
                  "skipped_files": list(source.skipped[:100]), "skipped_count": len(source.skipped)},
        "output": {"uri": _absolute(output.uri), "write": write_mode, "files": [os.path.basename(f) for f in files]},
        "cluster": [dataclasses.asdict(n) for n in cluster.nodes],
        "plan": {k: v for k, v in dataclasses.asdict(plan).items() if k != "decisions"}
        | {"decisions": [dataclasses.asdict(d) for d in plan.decisions]},
        "precision": precision,
        "compile": {"mode": options.compile, **compiled, "actors": read_tally(tally) if tally else {}},
        "image_size": [processor_size(f.image_processor) for f in facts if f.image_processor],
        "rows": rows, "errors": errors, "unreadable_units": unreadable, "error_fraction": fraction,
        "rows_resumed": progress.rows, "attempts": len(history[1]), "attempt_history": history[1],
        "rows_that_killed_their_worker": crashed_rows,
        "max_error_fraction": options.max_error_fraction,
        "error_examples": dict(list(error_counts.items())[:10]),
        "execute_seconds": round(execute_seconds, 3), "wall_seconds": round(wall, 3),
        "throughput_rows_per_second": round((rows - progress.rows) / execute_seconds, 3) if execute_seconds else None,
        "ray_data_stats": stats,
    }
    lease.check_held()
    lease.stop()  # no renewal may write into the staging folder once it is published
    io.publish(output, report)
    say(f"done: {rows} rows, {errors} with errors ({fraction:.2%}), {report['throughput_rows_per_second']} rows/s, "
         f"{wall:.1f} s in all")
    if error_counts:
        say(f"errors by kind: {terminal.error_kinds(error_counts)}")
    print(f"output: {output.shown}")
    return _outcome(report, options.max_error_fraction)


def _outcome(report: dict[str, Any], max_error_fraction: float) -> int:
    """A published run's exit: unreadable input, or more failed rows than allowed, fail it (output written)."""
    if report["unreadable_units"]:
        raise JobFailed(f"{report['unreadable_units']} input file(s) or row group(s) could not be read, so their rows "
                        f"are missing from the output (written, with one error row for each; see its `{io.ERROR}` "
                        "column)")
    errors, rows, fraction = report["errors"], report["rows"], report["error_fraction"]
    if fraction > max_error_fraction:
        examples = "; ".join(f"{n}x {e}" for e, n in list(report["error_examples"].items())[:3])
        raise JobFailed(f"{errors} of {rows} rows failed ({fraction:.2%} > --max-error-fraction "
                        f"{max_error_fraction:g}); the output is written. E.g.: {examples}")
    return EXIT_OK


def _finish_cut_off_cleanup(output: io.Output, max_error_fraction: float) -> int:
    """A publish stopped before its clean-up (a killed pod) left this job's output complete, with what is left
    of its run beside or in it: remove that and exit as that run would have, computing nothing."""
    try:
        with output.filesystem.open_input_stream(posixpath.join(output.path, io.REPORT)) as stream:
            report = json.loads(stream.read())
    except (OSError, ValueError) as e:
        left = posixpath.join(output.path, io.BOOKKEEPING) if output.renames else output.staging
        raise JobFailed(f"{output.shown} was published by an earlier attempt of this job, but its {io.REPORT} cannot be "
                        f"read ({one_line(e)}); to run the job again, remove {left} and pass --overwrite") from e
    io.finish_cleanup(output)
    say(f"{output.shown} was published by an earlier attempt of this job, stopped before its clean-up: done now")
    print(f"output: {output.shown}")
    return _outcome(report, max_error_fraction)


# ---------------------------------------------------------------------------------------------
# --dry-run


def _dry_run(options: RunOptions, run_id: str, source: io.Source, schema: pa.Schema, facts: list[ModelFacts],
             verbose: bool) -> int:
    """The plan as the run would make it, from the input's listing, the models' configs and the cluster
    (or, for an embedded run, this machine without starting Ray): no weights loaded, nothing written."""
    from inferkit.job.resources import read_cluster

    if os.environ.get("RAY_ADDRESS") or _ray_connected():
        where, _ = _connect(verbose)
        cluster = read_cluster()
    else:
        where, cluster = "this machine (an embedded Ray would start here)", _this_machine()
    plan = make_plan(cluster, profile_models(facts, options.task), options, _listed_rows(source), source.parts)
    output = _absolute(_output_uri(options, run_id))
    skipped = f"; {len(source.skipped)} other file(s) left out" if source.skipped else ""
    print(f"input:  {_absolute(source.uri)} ({len(source.units)} unit(s) of {source.format}{skipped})\n"
          f"schema: {', '.join(f'{f.name} {f.type}' for f in schema)}\n"
          f"model:  {_model_names(options, facts)}\n"
          f"output: {output} (not written: dry run)\n"
          f"on:     {where}: {len(cluster.workers)} worker node(s), {sum(n.usable_cpus for n in cluster.workers):g} "
          f"CPUs, {sum(n.gpus for n in cluster.workers)} GPUs\n"
          f"plan:\n{plan.table()}")
    return EXIT_OK


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


def _this_machine() -> Any:
    """This machine as an embedded Ray would see it: one node, its CPUs, memory and GPUs."""
    from inferkit.job.plan import ClusterResources, NodeResources
    from inferkit.job.resources import probe_node

    facts = probe_node()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = facts["gpus"]
    return ClusterResources((NodeResources(
        node_id="this-machine", cpus=float(os.cpu_count() or 1), real_cpus=facts["real_cpus"],
        memory_bytes=min(memory, facts["memory_limit"] or memory), gpus=len(gpus),
        gpu_type=gpus[0][0] if gpus else "", gpu_memory_bytes=min((g[1] for g in gpus), default=0),
        gpu_bf16=all(g[2] for g in gpus) if gpus else False, cpu_bf16=facts["cpu_bf16"],
        cpp_compiler=facts["cpp_compiler"]),))
