"""Tiny Hugging Face models built from configs and saved to disk (the Hub is out of reach here):
real model classes, real tokenizers and image processors, a few kilobytes of weights. Most are random;
`trained_cnn` and `trained_bert` are trained for about a second on generated data so that their
predictions vary with the input and a wrong preprocessing changes them (a random model predicts
nearly the same class for everything, so agreeing with it proves nothing)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa

LABELS = {0: "cat", 1: "dog", 2: "bird", 3: "fish"}
SENTIMENT_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
WORDS = ("the a an is was and or not very good bad great terrible movie film book plot actor love hate "
         "boring fun day night cat dog bird fish red blue green i you we they it this that").split()


def save_tokenizer(folder: Path, model_max_length: int | None = None, words: tuple[str, ...] = WORDS) -> None:
    from transformers import BertTokenizer

    tokens = dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz"])
    kwargs = {"model_max_length": model_max_length} if model_max_length else {}
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, **kwargs)
    assert len(tokenizer) == len(tokens), "the tokenizer did not take the vocabulary"
    tokenizer.save_pretrained(folder)


def bert(folder: Path, *, classifier: bool, max_positions: int = 64, tokenizer_limit: int | None = None,
         seed: int = 0, words: tuple[str, ...] = WORDS) -> str:
    """A 2-layer BERT; `words` sets its vocabulary (another order gives other token ids)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder, tokenizer_limit, words)
    config = BertConfig(vocab_size=len(words) + 31, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=max_positions, num_labels=3,
                        id2label=SENTIMENT_LABELS, label2id={v: k for k, v in SENTIMENT_LABELS.items()})
    model = BertForSequenceClassification(config) if classifier else BertModel(config)
    model.save_pretrained(folder)
    return str(folder)


def resnet(folder: Path, seed: int = 0) -> str:
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=4, id2label=LABELS,
                          label2id={v: k for k, v in LABELS.items()})
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    return str(folder)


def vit(folder: Path, seed: int = 0) -> str:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    torch.manual_seed(seed)
    config = ViTConfig(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=4, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 24, "width": 24}).save_pretrained(folder)
    return str(folder)


def image_bytes(mode: str, fmt: str, size: tuple[int, int] = (40, 30), seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
        if fmt == "PNG":
            image.info["transparency"] = 0
    else:
        image = rgb.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Trained tiny models: predictions that depend on the input


STRIPES = {0: "red-horizontal", 1: "red-vertical", 2: "blue-horizontal", 3: "blue-vertical"}
_COLOURS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}
# Each sentiment has words of its own; the other words are filler that says nothing.
SENTIMENT_WORDS = {0: ("bad", "terrible", "boring", "hate"), 1: ("red", "blue", "green", "day"),
                   2: ("good", "great", "love", "fun")}
_FILLER = tuple(w for w in WORDS if w not in sum(SENTIMENT_WORDS.values(), ()))


def stripes_image(label: int, seed: int):
    """A PIL image of class `label` of STRIPES, of random size, stripe period, brightness and noise:
    its colour says red or blue (so swapped channels flip it) and its stripes horizontal or vertical
    (so a transposed image flips it)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colour, orientation = STRIPES[label].split("-")
    width, height = int(rng.integers(36, 72)), int(rng.integers(36, 72))
    period = int(rng.integers(6, 12))
    along = np.arange(height)[:, None] if orientation == "horizontal" else np.arange(width)[None, :]
    on = np.broadcast_to((along + int(rng.integers(0, period))) % period < period // 2, (height, width))
    tint = np.array(_COLOURS[colour])
    background = rng.uniform(30, 110, (height, width, 1)) + rng.normal(0, 12, (height, width, 3))
    stripe = background * (1 - tint) * 0.4 + rng.uniform(150, 255) * tint + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.where(on[..., None], stripe, background), 0, 255).astype(np.uint8))


def stripes_png(label: int, seed: int) -> bytes:
    out = io.BytesIO()
    stripes_image(label, seed).save(out, format="PNG")
    return out.getvalue()


def trained_cnn(folder: Path, seed: int = 0) -> str:
    """A tiny ResNet trained for about a second on `stripes_image`: every class right on fresh images."""
    import torch
    from transformers import ConvNextImageProcessorPil, ResNetConfig, ResNetForImageClassification

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(STRIPES), 256)
    processor = ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875)
    pixels = processor([stripes_image(int(label), seed * 1000 + i) for i, label in enumerate(labels)],
                       return_tensors="pt")["pixel_values"]
    torch.manual_seed(seed)
    model = ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=len(STRIPES), id2label=STRIPES,
        label2id={v: k for k, v in STRIPES.items()}))
    _train(model, {"pixel_values": pixels}, torch.from_numpy(labels), steps=80, batch=64)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def sentiment_text(label: int, seed: int) -> str:
    """A few filler words with one or two words of sentiment `label` among them."""
    rng = np.random.default_rng(seed)
    words = [str(w) for w in rng.choice(_FILLER, int(rng.integers(3, 9)))]
    for word in rng.choice(SENTIMENT_WORDS[label], int(rng.integers(1, 3))):
        words.insert(int(rng.integers(0, len(words) + 1)), str(word))
    return " ".join(words)


def trained_bert(folder: Path, seed: int = 0) -> str:
    """The 2-layer BERT of `bert`, trained for about a second on `sentiment_text`."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    bert(folder, classifier=True, seed=seed)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(SENTIMENT_LABELS), 384)
    texts = [sentiment_text(int(label), seed * 1000 + i) for i, label in enumerate(labels)]
    inputs = dict(AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt"))
    model = BertForSequenceClassification.from_pretrained(folder)
    _train(model, inputs, torch.from_numpy(labels), steps=150, batch=32)
    model.save_pretrained(folder)
    return str(folder)


def _train(model, inputs: dict, labels, *, steps: int, batch: int) -> None:
    import torch

    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(labels), (batch,))
        loss = torch.nn.functional.cross_entropy(model(**{k: v[rows] for k, v in inputs.items()}).logits,
                                                 labels[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


# -- what a predictor is given (tests/test_compile.py, also in the fresh processes it starts) --

CLASSIFIER_SCHEMA = pa.schema([("label", pa.string()), ("score", pa.float32()), ("error", pa.string())])
EMBEDDING_SCHEMA = pa.schema([("embedding", pa.list_(pa.float32())), ("error", pa.string())])
TEXTS = [" ".join(WORDS[i:i + 3 + i % 4]) for i in range(5)]  # five texts of different lengths


def model_spec(model: str, **changes):
    """A text classifier's ModelSpec as the plan would make it for one CPU, with `changes` laid over."""
    from inferkit.job.tasks import ModelSpec

    fields = {"task": "text-classification", "models": (model,), "ensemble": "mean", "device": "cpu",
              "precision": "fp32", "threads": 1, "batch_size": 8, "channels_last": False,
              "trust_remote_code": False, "text_column": "text", "passthrough": (),
              "output_schema": CLASSIFIER_SCHEMA, **changes}
    return ModelSpec(**fields)


def text_batch(texts: list[str]) -> pa.Table:
    return pa.table({"text": texts, "error": pa.nulls(len(texts), pa.string())})
