"""Tiny Hugging Face models built from configs and saved to disk (the Hub is out of reach here):
real model classes, real tokenizers and image processors, a few kilobytes of random weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

LABELS = {0: "cat", 1: "dog", 2: "bird", 3: "fish"}
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
                        id2label={0: "negative", 1: "neutral", 2: "positive"},
                        label2id={"negative": 0, "neutral": 1, "positive": 2})
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
