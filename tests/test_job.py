"""`inferkit run` end to end on a real (embedded) Ray with tiny models built and saved by the tests:
every task and input format, awkward data, injected crash and out-of-memory, exactly-once output."""

from __future__ import annotations

import io
import json
import subprocess
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tiny
from inferkit.errors import ConfigError


def _report(out: Path) -> dict:
    return json.loads((out / "_inferkit_report.json").read_text())


def _assert_published(out: Path) -> pd.DataFrame:
    assert (out / "_SUCCESS").exists() and (out / "_inferkit_report.json").exists()
    assert not list(out.parent.glob(f"{out.name}.inferkit-*")), "staging folder left behind"
    schemas = {pq.read_schema(f) for f in out.glob("*.parquet")}
    assert len(schemas) == 1, "every output file has the same schema"
    return pd.read_parquet(out)


def _exactly_once(frame: pd.DataFrame, column: str, expected) -> None:
    counts = Counter(frame[column])
    assert set(counts) == set(expected)
    assert max(counts.values()) == 1


@pytest.fixture
def text_input(tmp_path):
    rows = [{"id": f"t{i}", "text": text, "lang": "en"} for i, text in enumerate([
        "the movie was very good", "terrible boring plot", "", "   ", None, "ünïcødé ✓ 🚀 text",
        " ".join(["word"] * 500), "a", "i love this film", "we hate it"])]
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, rows


def test_text_classification_keeps_every_row_and_flags_empty_texts(inferkit, ray_local, tiny_models, text_input,
                                                                     tmp_path, monkeypatch):
    path, rows = text_input
    out = tmp_path / "out"
    monkeypatch.chdir(Path(tiny_models["classifier"]).parent)  # a model folder given relative to here
    result = inferkit("run", "--task", "text-classification", "--model", "classifier", "--input",
                      str(path), "--output", str(out), "--max-error-fraction", "0.5", "--batch-size", "4")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == f"output: {out}"
    frame = _assert_published(out)
    _exactly_once(frame, "id", [r["id"] for r in rows])
    assert list(frame.columns) == ["id", "lang", "label", "score", "error"]
    frame = frame.set_index("id")
    assert frame.loc[["t2", "t3", "t4"], "error"].tolist() == ["empty text"] * 3
    ok = frame[frame.error.isna()]
    assert len(ok) == 7 and set(ok.label) <= {"negative", "neutral", "positive"}
    assert ((ok.score > 0) & (ok.score <= 1)).all()
    report = _report(out)
    assert (report["rows"], report["errors"]) == (10, 3)
    assert report["error_examples"] == {"empty text": 3}
    assert report["plan"]["batch_size"] == 4 and "ray_data_stats" in report


def test_embedding_from_csv_keeps_text_ids_and_normalises(inferkit, ray_local, tiny_models, tmp_path):
    csv = tmp_path / "in.csv"
    csv.write_text('id,text,score_hint\n007,"the cat, the dog",1.10\n008,a day and a night,2\n009,"",3\n')
    out = tmp_path / "out"
    result = inferkit("run", "--model", tiny_models["embedder"], "--input", str(csv), "--output", str(out),
                      "--precision", "fp32", "--max-error-fraction", "0.5")
    assert result.code == 0, result.stderr
    frame = _assert_published(out).set_index("id")
    assert frame.index.tolist() == ["007", "008", "009"]  # CSV text stays text: no 007 -> 7
    assert frame.loc["007", "score_hint"] == "1.10"
    vectors = np.stack(frame.loc[["007", "008"], "embedding"].to_numpy())
    assert vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert frame.loc["009", "error"] == "empty text" and frame.loc["009", "embedding"] is None


def _image_folder(root: Path) -> list[str]:
    (root / "nested" / "deeper").mkdir(parents=True)
    paths = []
    cases = [("RGB", "JPEG", "jpg"), ("RGB", "PNG", "png"), ("RGBA", "PNG", "png"), ("L", "JPEG", "jpeg"),
             ("P", "PNG", "png"), ("P", "GIF", "gif"), ("RGB", "WEBP", "webp"), ("RGBA", "WEBP", "webp"),
             ("L", "BMP", "bmp")]
    for i, (mode, fmt, ext) in enumerate(cases):
        folder = [root, root / "nested", root / "nested" / "deeper"][i % 3]
        path = folder / f"img{i}_{mode}.{ext}"
        path.write_bytes(tiny.image_bytes(mode, fmt, size=(20 + 7 * i, 50 - 3 * i), seed=i))
        paths.append(str(path))
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "truncated.png").write_bytes(tiny.image_bytes("RGB", "PNG")[:60])
    (root / "empty.webp").write_bytes(b"")
    (root / "README.txt").write_text("not an image")
    return paths + [str(root / n) for n in ("corrupt.jpg", "truncated.png", "empty.webp")]


def test_image_folder_with_awkward_images(inferkit, ray_local, tiny_models, tmp_path):
    paths = _image_folder(tmp_path / "images")
    out = tmp_path / "out"
    result = inferkit("run", "--task", "image-classification", "--model", tiny_models["resnet"], "--input",
                      str(tmp_path / "images"), "--output", str(out), "--max-error-fraction", "0.3")
    assert result.code == 0, result.stderr
    frame = _assert_published(out)
    _exactly_once(frame, "path", paths)
    frame = frame.set_index("path")
    broken = [p for p in paths if Path(p).name in ("corrupt.jpg", "truncated.png", "empty.webp")]
    assert frame.loc[broken, "error"].notna().all()
    assert frame.loc[str(tmp_path / "images" / "empty.webp"), "error"] == "empty file"
    good = frame.drop(index=broken)
    assert good.error.isna().all() and set(good.label) <= set(tiny.LABELS.values())
    report = _report(out)
    assert report["input"]["skipped_count"] == 1 and report["plan"]["channels_last"] is True


@pytest.mark.parametrize("ensemble", ["max-confidence", "mean"])
def test_parquet_image_bytes_with_an_ensemble(inferkit, ray_local, tiny_models, tmp_path, ensemble):
    images = [tiny.image_bytes("RGB", "PNG", seed=i) for i in range(6)] + [b"junk"]
    pq.write_table(pa.table({"id": list(range(7)), "image": images, "split": ["a"] * 7}), tmp_path / "in.parquet",
                   row_group_size=3)
    out = tmp_path / "out"
    result = inferkit("run", "--task", "image-classification", "--model", tiny_models["resnet"], "--model",
                      tiny_models["vit"], "--ensemble", ensemble, "--input", str(tmp_path / "in.parquet"),
                      "--output", str(out), "--max-error-fraction", "0.2", "--precision", "fp32")
    assert result.code == 0, result.stderr
    frame = _assert_published(out)
    _exactly_once(frame, "id", range(7))
    assert list(frame.columns) == ["id", "split", "label", "score", "error"]
    assert frame.set_index("id").loc[6, "error"].startswith("cannot decode image")
    assert _report(out)["input"]["units"] == 3  # one read task per row group


def _pil(blob: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(blob)).convert("RGB")


def _reference_probabilities(model: str, blobs: list[bytes]) -> np.ndarray:
    """`model`'s softmax on the images, preprocessed by its Hugging Face image processor called directly:
    a reference that shares none of inferkit's decoding, resizing, rescaling or normalising code."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model, backend="pil")
    classifier = AutoModelForImageClassification.from_pretrained(model).eval()
    with torch.inference_mode():
        return classifier(**processor([_pil(b) for b in blobs], return_tensors="pt")).logits.softmax(-1).numpy()


def _decoded(models: list[str], blobs: list[bytes]):
    """inferkit's CPU stage on the images: each model's facts, and the decoded table its actors receive."""
    from inferkit.job.tasks import decode_images, processor_shape, read_model_facts

    facts = [read_model_facts(m, "image-classification", False) for m in models]
    processors = [f.image_processor for f in facts]
    table = pa.table({"bytes": blobs, "error": pa.nulls(len(blobs), pa.string())})
    return facts, decode_images(table, processors=processors, shapes=[processor_shape(p) for p in processors],
                                image_column="bytes")


def _images(tiny_models, rows: int = 8):
    """Both random image models' inputs as inferkit decodes them, and each one's reference probabilities."""
    blobs = [tiny.image_bytes("RGB", "PNG", seed=i) for i in range(rows)]
    facts, decoded = _decoded([tiny_models["resnet"], tiny_models["vit"]], blobs)
    return facts, decoded, [_reference_probabilities(f.model, blobs) for f in facts]


def _predictor(facts, ensemble: str, normalization=None):
    """inferkit's predictor for image models; `normalization` overrides what their processors say."""
    from inferkit.job.tasks import ModelSpec, Predictor, normalization_of

    schema = pa.schema([("label", pa.string()), ("score", pa.float32()), ("error", pa.string())])
    return Predictor(ModelSpec(
        task="image-classification", models=tuple(f.model for f in facts), ensemble=ensemble, device="cpu",
        precision="fp32", threads=1, batch_size=8, channels_last=False, trust_remote_code=False, text_column="text",
        passthrough=(), output_schema=schema,
        normalization=normalization or tuple(normalization_of(f.image_processor) for f in facts),
        labels=tuple(f.id2label for f in facts)))


def test_max_confidence_takes_the_surest_model(tiny_models):
    facts, decoded, (first, second) = _images(tiny_models)
    out = _predictor(facts, "max-confidence")(decoded).to_pandas()
    for i in range(len(out)):
        best = first[i] if first[i].max() >= second[i].max() else second[i]
        assert out.label[i] == tiny.LABELS[int(best.argmax())]
        assert out.score[i] == pytest.approx(best.max(), rel=1e-4)


def test_mean_ensemble_averages_probabilities(tiny_models):
    facts, decoded, (first, second) = _images(tiny_models)
    out = _predictor(facts, "mean")(decoded).to_pandas()
    mean = (first + second) / 2
    assert out.label.tolist() == [tiny.LABELS[int(i)] for i in mean.argmax(-1)]
    assert np.allclose(out.score, mean.max(-1), rtol=1e-4)


def _stripes(rows: int = 24) -> tuple[list[str], list[bytes]]:
    """Fresh images of every class of the trained CNN (it never saw these): true labels and PNG bytes."""
    truth = [i % len(tiny.STRIPES) for i in range(rows)]
    return [tiny.STRIPES[t] for t in truth], [tiny.stripes_png(t, seed=100 + i) for i, t in enumerate(truth)]


def _reference_labels(model: str, blobs: list[bytes]) -> list[str]:
    return [tiny.STRIPES[int(i)] for i in _reference_probabilities(model, blobs).argmax(-1)]


def test_agreement_with_the_processor_called_directly_catches_wrong_preprocessing(tiny_models):
    """The trained CNN's labels follow colour and stripe direction, so agreeing with it means something:
    inferkit's preprocessing agrees with the processor's own, and swapped channels or a missing
    normalisation fall below the agreement threshold (with a random model all of them scored 100%)."""
    from ray.data.extensions import ArrowTensorArray

    from inferkit.job.plan import AGREEMENT_THRESHOLD, top1_agreement

    truth, blobs = _stripes()
    reference = _reference_labels(tiny_models["stripes"], blobs)
    assert set(reference) == set(tiny.STRIPES.values()) and top1_agreement(truth, reference) >= 0.9
    facts, decoded = _decoded([tiny_models["stripes"]], blobs)

    def labels(table: pa.Table, normalization=None) -> list[str]:
        return _predictor(facts, "mean", normalization)(table).column("label").to_pylist()

    assert top1_agreement(reference, labels(decoded)) >= AGREEMENT_THRESHOLD
    pixels = np.stack(decoded.column("pixels_0").to_pylist())
    swapped = decoded.set_column(decoded.schema.get_field_index("pixels_0"), "pixels_0",
                                 ArrowTensorArray.from_numpy(np.ascontiguousarray(pixels[:, ::-1])))
    rescale = facts[0].image_processor.rescale_factor
    wrong = {"channels swapped (BGR)": labels(swapped), "rescaled, not normalised": labels(decoded, ((None, None, rescale),)),
             "raw pixels": labels(decoded, ((None, None, None),))}
    for name, candidate in wrong.items():
        assert top1_agreement(reference, candidate) < AGREEMENT_THRESHOLD, name


def test_image_classification_run_agrees_with_the_processor_called_directly(inferkit, ray_local, tiny_models,
                                                                            tmp_path):
    """The whole run (decoding tasks, actors in channels_last, bf16 where the CPU has it) against the
    trained CNN with its processor called directly."""
    from inferkit.job.plan import AGREEMENT_THRESHOLD, top1_agreement

    _, blobs = _stripes()
    folder = tmp_path / "images"
    folder.mkdir()
    paths = [folder / f"{i:02d}.png" for i in range(len(blobs))]
    for path, blob in zip(paths, blobs, strict=True):
        path.write_bytes(blob)
    out = tmp_path / "out"
    result = inferkit("run", "--task", "image-classification", "--model", tiny_models["stripes"], "--input",
                      str(folder), "--output", str(out), "--batch-size", "8")
    assert result.code == 0, result.stderr
    labels = _assert_published(out).set_index("path").label
    reference = _reference_labels(tiny_models["stripes"], blobs)
    assert top1_agreement(reference, [labels[str(p)] for p in paths]) >= AGREEMENT_THRESHOLD
    assert _report(out)["plan"]["channels_last"] is True


def _text_labels(model: str, texts: list[str]) -> list[str]:
    """`model`'s labels with its tokenizer and model called directly, in fp32."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    classifier = AutoModelForSequenceClassification.from_pretrained(model).eval()
    with torch.inference_mode():
        logits = classifier(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return [tiny.SENTIMENT_LABELS[int(i)] for i in logits.argmax(-1)]


def test_text_classification_agrees_with_the_tokenizer_called_directly(inferkit, ray_local, tiny_models, tmp_path):
    """The trained BERT's labels follow its sentiment words: the run agrees with the tokenizer and model
    called directly, and the same weights reading another vocabulary's token ids do not."""
    import shutil

    from inferkit.job.plan import AGREEMENT_THRESHOLD, top1_agreement

    truth = [tiny.SENTIMENT_LABELS[i % 3] for i in range(30)]
    texts = [tiny.sentiment_text(i % 3, seed=100 + i) for i in range(30)]
    reference = _text_labels(tiny_models["sentiment"], texts)
    assert set(reference) == set(truth) and top1_agreement(truth, reference) >= 0.9
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "out"
    result = inferkit("run", "--task", "text-classification", "--model", tiny_models["sentiment"], "--input",
                      str(tmp_path / "in.jsonl"), "--output", str(out), "--batch-size", "8")
    assert result.code == 0, result.stderr
    labels = _assert_published(out).set_index("id").label
    assert top1_agreement(reference, [labels[i] for i in range(30)]) >= AGREEMENT_THRESHOLD

    misread = tmp_path / "other-vocabulary"
    shutil.copytree(tiny_models["sentiment"], misread)
    tiny.save_tokenizer(misread, words=tuple(reversed(tiny.WORDS)))
    assert top1_agreement(reference, _text_labels(str(misread), texts)) < AGREEMENT_THRESHOLD


def test_text_ensemble_gives_each_model_its_own_tokenizer(inferkit, ray_local, tiny_models, tmp_path):
    """Two classifiers with different vocabularies: each must read its own token ids. "z" and "that" have
    ids past the end of the smaller vocabulary, so the other tokenizer's ids would fail every row."""
    rows = [{"id": i, "text": f"the film {i} was good, z that"} for i in range(6)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = inferkit("run", "--task", "text-classification", "--model", tiny_models["classifier"], "--model",
                      tiny_models["classifier_other_vocabulary"], "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(out), "--precision", "fp32")
    assert result.code == 0, result.stderr
    frame = _assert_published(out)
    _exactly_once(frame, "id", range(6))
    assert frame.error.isna().all() and set(frame.label) <= {"negative", "neutral", "positive"}


def test_precision_check_compares_with_true_fp32(tiny_models, tmp_path):
    """A classifier whose two leading labels differ by less than bf16 can tell apart: every bf16 prediction
    flips. A check that compared bf16 with itself would report full agreement."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from inferkit.job.tasks import ModelSpec, check_precision

    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["classifier"])
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([1.0, 1.001, 0.0]))  # bf16 rounds both to 1.0: a tie, label 0
    model.save_pretrained(tmp_path / "tied")
    AutoTokenizer.from_pretrained(tiny_models["classifier"]).save_pretrained(tmp_path / "tied")

    schema = pa.schema([("label", pa.string()), ("score", pa.float32()), ("error", pa.string())])
    texts = [" ".join(tiny.WORDS[i:i + 5]) for i in range(10)]  # ten different inputs
    batch = pa.table({"text": texts + [""], "error": pa.nulls(11, pa.string())})
    results = {}
    for name, path in (("original", tiny_models["classifier"]), ("tied", str(tmp_path / "tied"))):
        spec = ModelSpec(task="text-classification", models=(path,), ensemble="mean", device="cpu",
                         precision="bf16", threads=1, batch_size=8, channels_last=False, trust_remote_code=False,
                         text_column="text", passthrough=(), output_schema=schema)
        results[name] = check_precision(spec, batch)
    assert results["original"] == {"agreement": 1.0, "rows": 10}  # the empty text is not compared
    assert results["tied"] == {"agreement": 0.0, "rows": 10}


def test_a_first_batch_without_a_comparable_row_keeps_fp32(tiny_models):
    from inferkit.job.plan import settle_precision
    from inferkit.job.tasks import ModelSpec, check_precision

    schema = pa.schema([("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    spec = ModelSpec(task="embedding", models=(tiny_models["embedder"],), ensemble="mean", device="cpu",
                     precision="bf16", threads=1, batch_size=8, channels_last=False, trust_remote_code=False,
                     text_column="text", passthrough=(), output_schema=schema)
    result = check_precision(spec, pa.table({"text": ["", "  "], "error": pa.nulls(2, pa.string())}))
    assert result["rows"] == 0 and "none of the first 2 rows could be compared" in result["why"]
    assert settle_precision("bf16", result["agreement"]) == "fp32"


def test_hugging_face_image_structs_are_decoded_and_odd_values_are_row_errors(tiny_models):
    from inferkit.job.tasks import decode_images, processor_shape, read_model_facts

    processor = read_model_facts(tiny_models["resnet"], "image-classification", False).image_processor
    good = tiny.image_bytes("RGB", "PNG")
    images = pa.array([{"bytes": good, "path": "a.png"}, {"bytes": b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "path": None}])
    decoded = decode_images(pa.table({"image": images, "error": pa.nulls(2, pa.string())}), processors=[processor],
                            shapes=[processor_shape(processor)], image_column="image")
    errors = decoded.column("error").to_pylist()
    assert errors[0] is None and errors[1].startswith("cannot decode image")
    assert decoded.num_rows == 2


def test_empty_and_strict_parquet_files_lose_no_row(inferkit, ray_local, tiny_models, tmp_path):
    """Spark writes required columns and empty files; a later file may lack a column (nulls then)."""
    folder = tmp_path / "in"
    folder.mkdir()
    strict = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("text", pa.string(), nullable=False),
                        pa.field("source", pa.string(), nullable=False)])
    pq.write_table(pa.table({"id": [1, 2], "text": ["good", "bad"], "source": ["x", "y"]}, schema=strict),
                   folder / "a.parquet")
    pq.ParquetWriter(folder / "b.parquet", strict).close()  # no row group at all
    pq.write_table(pa.table({"id": [3], "text": ["fine"]}), folder / "c.parquet")
    out = tmp_path / "out"
    result = inferkit("run", "--model", tiny_models["embedder"], "--input", str(folder), "--output", str(out),
                      "--precision", "fp32")
    assert result.code == 0, result.stderr
    frame = _assert_published(out).set_index("id")
    assert sorted(frame.index) == [1, 2, 3] and frame.error.isna().all()
    assert pd.isna(frame.loc[3, "source"]) and frame.loc[1, "source"] == "x"


def test_existing_output_is_kept_unless_overwrite(inferkit, ray_local, tiny_models, text_input, tmp_path):
    path, _ = text_input
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = ["run", "--model", tiny_models["embedder"], "--input", str(path), "--output", str(out),
            "--precision", "fp32", "--max-error-fraction", "1"]
    refused = inferkit(*args)
    assert refused.code == 2 and "already exists; pass --overwrite" in refused.stderr
    assert (out / "precious.txt").read_text() == "keep me"
    replaced = inferkit(*args, "--overwrite")
    assert replaced.code == 0, replaced.stderr
    assert not (out / "precious.txt").exists() and (out / "_SUCCESS").exists()


def test_too_many_errors_fail_after_writing(inferkit, ray_local, tiny_models, text_input, tmp_path):
    path, rows = text_input
    out = tmp_path / "out"
    result = inferkit("run", "--model", tiny_models["embedder"], "--input", str(path), "--output", str(out),
                      "--precision", "fp32", "--max-error-fraction", "0.1")
    assert result.code == 1
    assert "3 of 10 rows failed (30.00% > --max-error-fraction 0.1); the output is written" in result.stderr
    _exactly_once(_assert_published(out), "id", [r["id"] for r in rows])


def test_injected_actor_crash_loses_and_repeats_nothing(inferkit, ray_local, tiny_models, tmp_path, monkeypatch):
    rows = [{"id": i, "text": f"the film {i} was good"} for i in range(60)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    marker = tmp_path / "crashed"
    monkeypatch.setenv("INFERKIT_INJECT_FAULT", f"crash-once:{marker}")
    out = tmp_path / "out"
    result = inferkit("run", "--model", tiny_models["classifier"], "--task", "text-classification", "--input",
                      str(tmp_path / "in.jsonl"), "--output", str(out), "--batch-size", "8", "--precision", "fp32")
    assert result.code == 0, result.stderr
    assert marker.exists(), "the actor did crash"
    frame = _assert_published(out)
    _exactly_once(frame, "id", range(60))
    assert frame.error.isna().all()


def test_injected_out_of_memory_halves_the_batch_and_loses_and_repeats_nothing(inferkit, ray_local, tiny_models,
                                                                              tmp_path, monkeypatch):
    rows = [{"id": i, "text": f"a day {i}"} for i in range(50)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("INFERKIT_INJECT_FAULT", "oom-above:3")
    out = tmp_path / "out"
    result = inferkit("run", "--model", tiny_models["embedder"], "--input", str(tmp_path / "in.jsonl"),
                      "--output", str(out), "--batch-size", "16", "--precision", "fp32")
    assert result.code == 0, result.stderr
    frame = _assert_published(out)
    _exactly_once(frame, "id", range(50))
    assert frame.error.isna().all() and frame.embedding.notna().all()
    # The actors said so in their logs: out of memory on 16 rows, halved down to 2 (no other test injects it).
    said = {line.split("] ", 1)[1] for log in (ray_local / "logs").glob("worker-*.err")
            for line in log.read_text().splitlines() if line.startswith("[inferkit] out of memory")}
    assert said == {f"out of memory on {n} rows: retrying them {n // 2} at a time" for n in (16, 8, 4)}


def test_out_of_memory_halves_the_batch_for_good(tiny_models):
    """The actor keeps the smaller micro-batch for later batches instead of failing again."""
    from inferkit.job.tasks import ModelSpec, Predictor

    schema = pa.schema([("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    spec = ModelSpec(task="embedding", models=(tiny_models["embedder"],), ensemble="mean", device="cpu",
                     precision="fp32", threads=1, batch_size=16, channels_last=False, trust_remote_code=False,
                     text_column="text", passthrough=(), output_schema=schema, fault="oom-above:3")
    predictor = Predictor(spec)
    batch = pa.table({"text": [f"a day {i}" for i in range(10)], "error": pa.nulls(10, pa.string())})
    first = predictor(batch)
    assert (predictor.micro_batch, predictor.oom_halvings) == (2, 3)
    second = predictor(batch)
    assert (predictor.micro_batch, predictor.oom_halvings) == (2, 3)
    assert first.num_rows == second.num_rows == 10
    reference = Predictor(spec.__class__(**{**spec.__dict__, "fault": ""}))(batch)
    assert np.allclose(np.stack(first.column("embedding").to_pylist()),
                       np.stack(reference.column("embedding").to_pylist()), atol=1e-5)


def test_text_longer_than_the_model_is_truncated(tiny_models):
    """The tokenizer here has no limit; the model has 16 positions: texts are cut to 16 tokens."""
    from inferkit.job.tasks import ModelSpec, Predictor, text_max_length

    assert text_max_length(None, 512) == 512 and text_max_length(10**30, 16) == 16 and text_max_length(8, 16) == 8
    schema = pa.schema([("embedding", pa.list_(pa.float32())), ("error", pa.string())])
    spec = ModelSpec(task="embedding", models=(tiny_models["embedder"],), ensemble="mean", device="cpu",
                     precision="fp32", threads=1, batch_size=4, channels_last=False, trust_remote_code=False,
                     text_column="text", passthrough=(), output_schema=schema)
    predictor = Predictor(spec)
    assert predictor.max_lengths == [16]
    out = predictor(pa.table({"text": ["good " * 300], "error": pa.nulls(1, pa.string())}))
    assert out.column("error").null_count == 1


def test_unreadable_file_fails_the_run_after_writing_what_it_read(inferkit, ray_local, tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1, 2], "text": ["a good film", "a bad film"]}), folder / "a.parquet")
    (folder / "b.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    for hidden in ("_temporary", ".cache"):  # bookkeeping folders of other tools are not input
        (folder / hidden).mkdir()
        pq.write_table(pa.table({"id": [9], "text": ["left out"]}), folder / hidden / "part.parquet")
    out = tmp_path / "out"
    result = inferkit("run", "--model", tiny_models["embedder"], "--input", str(folder), "--output", str(out),
                      "--precision", "fp32", "--max-error-fraction", "0.5")
    assert result.code == 1, result.stderr
    assert "1 input file(s) or row group(s) could not be read, so their rows are missing" in result.stderr
    frame = _assert_published(out)
    assert sorted(frame.id.dropna()) == [1, 2]
    assert frame.error.notna().sum() == 1 and str(folder / "b.parquet") in frame.error.dropna().iloc[0]
    assert json.loads((out / "_inferkit_report.json").read_text())["unreadable_units"] == 1


def copies_cut_off_after(base: type, limit: int) -> type:
    """A pyarrow filesystem class whose copies fail after the first `limit` (a connection lost mid-publish)."""
    class CutOff(base):
        made = 0

        def copy_file(self, source, target):
            CutOff.made += 1
            if CutOff.made > CutOff.limit:
                raise OSError("connection reset")
            super().copy_file(source, target)

    CutOff.limit = limit
    return CutOff


def test_object_store_publish_never_leaves_a_complete_looking_mix(tmp_path):
    """The copy-based publish of s3:// and gs://, run on a local filesystem: stale files go, `_SUCCESS`
    comes last, and a failed copy leaves the output without `_SUCCESS`."""
    import dataclasses

    import pyarrow.fs as pafs

    from inferkit.job import io

    def staged(run_id: str, names: list[str]) -> io.Output:
        output = io.Output(uri="s3://bucket/out", filesystem=pafs.LocalFileSystem(), path=str(tmp_path / "out"),
                           staging=str(tmp_path / f"out.inferkit-{run_id}"), local=False)
        Path(output.staging).mkdir()
        for name in names:
            (Path(output.staging) / name).write_text(run_id)
        return output

    io.publish(staged("one", ["part-00000.parquet", "part-00001.parquet"]), {"run": "one"})
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_inferkit_report.json", "part-00000.parquet",
                                                     "part-00001.parquet"]
    io.publish(staged("two", ["part-00000.parquet"]), {"run": "two"})
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "_inferkit_report.json", "part-00000.parquet"]
    assert (out / "part-00000.parquet").read_text() == "two" and not (tmp_path / "out.inferkit-two").exists()

    output = dataclasses.replace(staged("three", ["part-00000.parquet", "part-00001.parquet"]),
                                 filesystem=copies_cut_off_after(pafs.LocalFileSystem, 1)())
    with pytest.raises(io.PublishInterrupted, match=f"the complete run is kept at {output.staging} and the "
                                                     "output has no _SUCCESS"):
        io.publish(output, {"run": "three"})
    assert not (out / "_SUCCESS").exists() and Path(output.staging).exists()


def test_an_output_that_is_a_mount_point_is_staged_and_published_inside_it(mounted_output):
    """A mount point cannot be renamed, and beside it is another filesystem (the container's own disk, lost
    with the pod): the run is staged inside the mount and moved in file by file, `_SUCCESS` last; the
    staging folder does not make the output count as existing."""
    from inferkit.job import io

    output = io.prepare_output(str(mounted_output), overwrite=False)
    assert output.staged_inside and output.staging == str(mounted_output / io.UNFINISHED)
    staging = Path(output.staging)
    (staging / io.BOOKKEEPING).mkdir(parents=True)
    (staging / io.BOOKKEEPING / "job.json").write_text("{}")
    for name in ("part-00000.parquet", "part-00001.parquet"):
        (staging / name).write_text(name)
    assert io.prepare_output(str(mounted_output), overwrite=False).staging == output.staging  # resumable
    io.publish(output, {"run": "one"})
    assert sorted(p.name for p in mounted_output.iterdir()) == ["_SUCCESS", "_inferkit_report.json",
                                                               "part-00000.parquet", "part-00001.parquet"]
    assert (mounted_output / "part-00001.parquet").read_text() == "part-00001.parquet"
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        io.prepare_output(str(mounted_output), overwrite=False)


def test_a_run_into_a_mounted_volume_publishes_there(inferkit, ray_local, tiny_models, text_input, mounted_output):
    """The whole path with --output at a mount point (it ended 'Device or resource busy', exit 1, after
    computing every row, with nothing in the mount)."""
    path, rows = text_input
    result = inferkit("run", "--model", tiny_models["embedder"], "--input", str(path), "--output",
                      str(mounted_output), "--precision", "fp32", "--max-error-fraction", "0.5")
    assert result.code == 0, result.stderr
    frame = _assert_published(mounted_output)
    _exactly_once(frame, "id", [r["id"] for r in rows])
    assert sorted(p.name for p in mounted_output.iterdir() if not p.name.endswith(".parquet")) == [
        "_SUCCESS", "_inferkit_report.json"]


def test_a_publish_cut_off_midway_is_finished_by_the_same_command(tmp_path):
    """A publish to an object store cut off after some files were copied leaves them and no `_SUCCESS`: the
    same command is let through to take the staged run up and publish it (it was refused as 'already exists'
    for ever, and so was every KubeRay retry); files beside a staged run that never began publishing (a run
    that died computing) are still refused."""
    import pyarrow.fs as pafs

    from inferkit.job import io

    root = tmp_path / "bucket"
    root.mkdir()
    uri = "s3://bucket/out"

    cut_off = copies_cut_off_after(pafs.SubTreeFileSystem, 1)
    store = cut_off(str(root), pafs.LocalFileSystem())

    def prepare() -> io.Output:
        with mock.patch.object(io, "open_filesystem", return_value=(store, "out")):
            return io.prepare_output(uri, overwrite=False)

    output = prepare()
    staging = root / output.staging
    (staging / io.BOOKKEEPING).mkdir(parents=True)
    (staging / io.BOOKKEEPING / "job.json").write_text("{}")
    for name in ("part-00000.parquet", "part-00001.parquet"):
        (staging / name).write_text(name)
    (root / "out").mkdir()
    (root / "out" / "stray.parquet").write_text("a file of the user's")
    with pytest.raises(ConfigError, match="already exists"):  # a run that died computing: nothing published yet
        prepare()
    (root / "out" / "stray.parquet").unlink()
    with pytest.raises(io.PublishInterrupted, match="has no _SUCCESS \\(the same command finishes publishing it\\)"):
        io.publish(output, {"run": "one"})
    assert not (root / "out" / "_SUCCESS").exists() and len(list((root / "out").iterdir())) == 1  # one copy made
    assert sorted(p.name for p in staging.glob("part-*")) == ["part-00000.parquet", "part-00001.parquet"]
    again = prepare()  # the cut-off publish is let through, and finishes
    cut_off.limit = 100
    io.publish(again, {"run": "one"})
    assert sorted(p.name for p in (root / "out").iterdir()) == ["_SUCCESS", "_inferkit_report.json",
                                                              "part-00000.parquet", "part-00001.parquet"]
    assert not staging.exists()


def test_a_local_publish_that_fails_puts_the_old_output_back_and_keeps_the_run(tmp_path):
    import pyarrow.fs as pafs

    from inferkit.job import io

    class RefusesTheStagedFolder(pafs.LocalFileSystem):
        def move(self, source, target):
            if source.endswith("inferkit-new"):
                raise OSError("read-only file system")
            super().move(source, target)

    out, staging = tmp_path / "out", tmp_path / "out.inferkit-new"
    out.mkdir()
    (out / "part-00000.parquet").write_text("old")
    staging.mkdir()
    (staging / "part-00000.parquet").write_text("new")
    output = io.Output(uri=str(out), filesystem=RefusesTheStagedFolder(), path=str(out), staging=str(staging),
                       local=True)
    with pytest.raises(io.PublishInterrupted, match="read-only file system.*kept at .*out.inferkit-new and the "
                                                     "output is as it was"):
        io.publish(output, {"run": "new"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.inferkit-new"]
    assert (out / "part-00000.parquet").read_text() == "old"
    assert (staging / "part-00000.parquet").read_text() == "new" and (staging / "_SUCCESS").exists()


@pytest.mark.parametrize("failure", ["publish", "run"])
def test_a_failed_publish_keeps_the_staged_run_and_a_failed_run_leaves_nothing(failure, monkeypatch, tiny_models,
                                                                               text_input, tmp_path):
    import dataclasses

    from inferkit.chart import default_run_options
    from inferkit.errors import JobFailed
    from inferkit.job import io, run

    def fails(*args):
        raise io.PublishInterrupted("publishing failed") if failure == "publish" else RuntimeError("boom")

    monkeypatch.setattr(run, "_run", fails)
    options = dataclasses.replace(default_run_options(), model=(tiny_models["embedder"],),
                                  input=str(text_input[0]), output=str(tmp_path / "out"))
    with pytest.raises(JobFailed):
        run.run_job(options)
    staged = [p.name for p in tmp_path.iterdir() if p.name.startswith("out.inferkit-")]
    assert len(staged) == (1 if failure == "publish" else 0)


def test_files_that_disagree_on_columns_stop_the_run_cleanly(inferkit, ray_local, tiny_models, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_text('{"id": 1, "text": "good"}\n')
    (folder / "b.jsonl").write_text('{"id": "x", "text": "bad"}\n')
    out = tmp_path / "out"
    result = inferkit("run", "--model", tiny_models["embedder"], "--input", str(folder), "--output", str(out),
                      "--precision", "fp32")
    assert result.code == 1 and result.stdout == ""
    assert "column 'id' is string, but int64 in the first input file" in result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        line for line in result.stderr.splitlines() if "Error" in line]
    # What was written before the bad file is kept for a resume (the input must change, so a rerun is
    # refused as another job and --restart throws it away); nothing is published.
    assert not out.exists() and "written so far are kept in" in result.stderr


NO_MODEL = "(no --model)"


@pytest.mark.parametrize(("make", "args", "message"), [
    (None, ["--input", "/nonexistent/data"], "--input /nonexistent/data: no such file or folder"),
    ("mixed", [], "found images, jsonl; name one with --input-format"),
    ("texts", ["--text-column", "body"], "--text-column 'body': no such column in the input (has: id, text)"),
    ("texts", ["--id-column", "key"], "--id-column 'key': no such column"),
    ("clash", ["--task", "text-classification", "--model", "{classifier}"],
     "input column(s) label clash with output columns"),
    ("texts", ["--task", "text-classification", NO_MODEL], "--task text-classification needs --model"),
    ("path-images", ["--task", "image-classification", "--model", "{resnet}"],
     "--image-column 'image' is string; it must hold the image files' bytes"),
    ("byte-images", ["--task", "image-classification", "--model", "{embedder}"],
     "cannot load its image processor, so it cannot classify images"),
    ("texts", ["--task", "image-classification"], "--image-column 'image': no such column"),
    ("images", [], "--task embedding reads text, but --input"),
    ("texts", ["--model", "/nonexistent/model"], "--model /nonexistent/model: cannot load its config"),
    ("texts", ["--model", "{embedder}", "--model", "{embedder}"], "ensembles need a classification task"),
    ("texts", ["--batch-size", "0"], "--batch-size: must be at least 1"),
])
def test_run_rejects_bad_input_before_starting_ray(inferkit, tiny_models, tmp_path, make, args, message):
    given = args
    folder = tmp_path / "in"
    folder.mkdir()
    if make in ("texts", "mixed", "clash"):
        row = {"id": 1, "text": "hi"} | ({"label": "x"} if make == "clash" else {})
        (folder / "t.jsonl").write_text(json.dumps(row) + "\n")
    if make in ("images", "mixed"):
        (folder / "i.png").write_bytes(tiny.image_bytes("RGB", "PNG"))
    if make == "path-images":
        pq.write_table(pa.table({"id": [1], "image": ["i.png"]}), folder / "t.parquet")
    if make == "byte-images":
        pq.write_table(pa.table({"id": [1], "image": [tiny.image_bytes("RGB", "PNG")]}), folder / "t.parquet")
    args = [a.format(**tiny_models) for a in args if a != NO_MODEL]
    if make:
        args = ["--input", str(folder), *args]
    if "--model" not in args and NO_MODEL not in given:
        args += ["--model", tiny_models["embedder"]]
    result = inferkit("run", *args, "--output", str(tmp_path / "out"))
    assert result.code == 2 and result.stdout == ""
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_readme_first_command_runs_the_demo_offline_on_an_embedded_ray(tmp_path):
    """README's first command, `inferkit run`, in a fresh process (its own home, no Ray around, offline): it
    starts an embedded Ray and its workers write the output (in-process tests reuse a connected Ray instead);
    it prints nothing alarming and names its model; the report holds absolute paths."""
    import os
    import sys

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"HF_HUB_OFFLINE": "1", "HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "inferkit", "run"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=900)  # a guard only: a loaded machine is slow
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on an embedded Ray" in result.stderr
    for noise in ("WARNING", "Warning", "core_worker", "Progress bars", "Traceback"):
        assert noise not in result.stderr, result.stderr
    start = next(line for line in result.stderr.splitlines() if " run " in line and "model" in line)
    assert "model the bundled all-MiniLM-L6-v2 (/" in start and "from /" in start
    out = Path(result.stdout.strip().removeprefix("output: "))
    assert out.parent == work / "inferkit-output"
    report = _report(out)
    assert report["output"]["write"] == "distributed" and report["output"]["uri"] == str(out)
    assert report["models"][0].startswith("/") and report["models"][0].endswith("model")
    assert report["input"]["uri"].startswith("/")
    frame = _assert_published(out).set_index("id")
    assert len(frame) == 100 and frame.error.isna().all()
    vectors = {i: np.asarray(v) for i, v in frame.embedding.items()}
    assert len(vectors["sample-001"]) == 384
    # Real all-MiniLM-L6-v2 weights: two weather reports are closer than weather and a recipe.
    weather = vectors["sample-011"] @ vectors["sample-012"]
    unrelated = vectors["sample-011"] @ vectors["sample-036"]
    assert weather > unrelated + 0.1
    precision = _report(out)["precision"]
    from inferkit.job.resources import cpu_has_bf16

    assert precision["checked"] is cpu_has_bf16()
    if precision["checked"]:
        assert precision["agreement"] >= 0.99 and precision["chosen"] == "bf16"


def test_a_parquet_footer_unreadable_at_listing_loses_no_row_group(tmp_path, monkeypatch):
    """A 120-row file of three row groups whose footer read fails while listing (a 503, a file still being
    written): read again, all three row groups are listed; still unreadable, the file is one unit read whole
    when its task runs (it was taken for row group 0 alone: 40 rows and no error); unreadable then too, it
    is one error row that names it."""
    import pyarrow.fs as pafs

    from inferkit.job import io

    monkeypatch.setattr(io, "FOOTER_RETRY_SECONDS", (0.0, 0.0))
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(120)), "text": ["x"] * 120}), path, row_group_size=40)

    class Flaky(pafs.LocalFileSystem):
        failures = 0

        def open_input_file(self, source):
            if Flaky.failures:
                Flaky.failures -= 1
                raise OSError("503 Service Unavailable")
            return super().open_input_file(source)

    def listed_then_read(failures_at_listing: int, failures_at_reading: int) -> tuple[io.Source, pa.Table]:
        Flaky.failures = failures_at_listing
        with mock.patch.object(io, "open_filesystem", return_value=(Flaky(), str(path))):
            source = io.discover(str(path), "auto")
        Flaky.failures = failures_at_reading
        schema = pa.schema([("id", pa.int64()), ("text", pa.string())])
        tables = [io.read_units(source.part_table(part), filesystem=Flaky(), fmt="parquet", schema=schema)
                  for part in range(source.parts)]
        return source, pa.concat_tables(tables)

    source, table = listed_then_read(1, 0)
    assert source.units == tuple((str(path), g) for g in range(3)) and source.unit_rows == (40, 40, 40)
    assert sorted(table.column("id").to_pylist()) == list(range(120))
    source, table = listed_then_read(3, 0)
    assert source.units == ((str(path), io.WHOLE_FILE),)
    assert sorted(table.column("id").to_pylist()) == list(range(120))
    assert table.column(io.ERROR).null_count == 120
    _, table = listed_then_read(3, 1)
    assert table.num_rows == 1 and table.column(io.ERROR)[0].as_py().startswith(f"{io.UNREADABLE}{path}: ")
