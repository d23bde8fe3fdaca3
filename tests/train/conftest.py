"""A tiny BERT 'pretrained' encoder, two fine-tuned classifiers and two word-level tasks whose
labels follow from the words (sentiment: 2 labels; topic: 3), as CSV files for inline tasks."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

SENTIMENT = {"positive": ["good", "great", "fine"], "negative": ["bad", "awful", "poor"]}
TOPIC = {"animal": ["cat", "dog", "bird"], "vehicle": ["car", "bus", "train"],
         "color": ["red", "blue", "green"]}
FILLER = ["the", "a", "is", "very", "movie", "film", "news", "sport", "maybe", "yes", "no"]


def _rows(classes: dict[str, list[str]], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(classes)
    rows = []
    for _ in range(n):
        label = rng.randrange(len(names))
        words = [rng.choice(FILLER) for _ in range(rng.randint(2, 6))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(classes[names[label]]))
        rows.append({"text": " ".join(words), "label": label})
    return rows


def _write(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def _model(path: Path, labels: list[str] | None, seed: int, base_state=None) -> Path:
    import torch
    import transformers

    from prefkit.testing.classifiers import WORDS, save_tiny_tokenizer

    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(
        vocab_size=len(WORDS) + 4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    torch.manual_seed(seed)
    if labels is None:
        model = transformers.BertModel(config)
        state = {f"bert.{k}": v for k, v in model.state_dict().items()}
        from safetensors.torch import save_file

        path.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
        config.architectures = ["BertModel"]
        config.save_pretrained(path)
    else:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {n: i for i, n in enumerate(labels)}
        model = transformers.BertForSequenceClassification(config)
        model.load_state_dict(base_state, strict=False)
        model.save_pretrained(path)
    save_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory):
    """{base, sentiment, topic} model folders and the tasks' CSV files."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("train_zoo")
    base = _model(root / "base", None, 0)
    state = load_file(str(base / "model.safetensors"))
    out = {"root": root, "base": base,
           # the topic model names its labels in an order unlike the dataset's
           "sentiment": _model(root / "sentiment", ["negative", "positive"], 1, state),
           "topic": _model(root / "topic", ["vehicle", "animal", "color"], 2, state)}
    for name, classes, seed in (("sentiment", SENTIMENT, 10), ("topic", TOPIC, 20)):
        for split, n in (("train", 240), ("validation", 60), ("test", 60)):
            out[f"{name}_{split}"] = _write(root / f"{name}_{split}.csv",
                                            _rows(classes, n, seed + len(split)))
    return out


def recipe_text(setup, method: str, *, preference=(0.5, 0.5), heads="per_task", train="",
                evaluate=True, output="out") -> str:
    tasks = ""
    for name, classes in (("sentiment", SENTIMENT), ("topic", TOPIC)):
        tasks += f"""
  {name}:
    dataset: csv
    text_fields: [text]
    label_names: {sorted(classes)}
    splits: {{train: train, validation: validation, test: test}}
    data_files: {{train: {setup[name + '_train']}, validation: {setup[name + '_validation']},
                  test: {setup[name + '_test']}}}"""
    import json

    import yaml

    settings = {"steps": 60, "batch_size": 16, "lr": 0.01, "max_length": 16, "warmup": 0.1,
                "checkpoint_every": 10, "seed": 0, "device": "cpu", "threads": 1}
    settings.update(yaml.safe_load("{" + train + "}") if train else {})
    return f"""merge_method: {method}
base_model: {setup['base']}
models:
  - {{model: {setup['sentiment']}, task: sentiment}}
  - {{model: {setup['topic']}, task: topic}}
preference: {list(preference)}
heads: {heads}
train: {json.dumps(settings)}
{'evaluate: {split: test, batch_size: 64, max_length: 16, device: cpu}' if evaluate else ''}
output: {output}
tasks:{tasks}
"""
