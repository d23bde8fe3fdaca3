"""A tiny BERT base and two classifiers really fine-tuned from it (so their task vectors are not
zero) on two word-level binary tasks built alike: the same generator, sizes, steps and learning
rate, different words. The setup is symmetric up to which words each task uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train.conftest import SENTIMENT, _model, _rows, _write

KIND = {"animal": ["cat", "dog", "bird"], "vehicle": ["car", "bus", "train"]}
TASKS = {"sentiment": SENTIMENT, "kind": KIND}


def _finetune(path: Path, rows: list[dict], seed: int) -> Path:
    """A few AdamW steps on every weight: a real fine-tuned model with a non-zero task vector."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.BertForSequenceClassification.from_pretrained(path).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    torch.manual_seed(seed)
    for step in range(100):
        batch = [rows[(step * 16 + j) % len(rows)] for j in range(16)]
        inputs = tokenizer([r["text"] for r in batch], padding=True, return_tensors="pt")
        loss = model(**inputs, labels=torch.tensor([r["label"] for r in batch])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert float(loss.detach()) < 0.05, f"{path.name} did not learn its task"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tuned(tmp_path_factory):
    """{base, sentiment, kind} model folders and the tasks' CSV files (train/validation/test)."""
    import torch
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("adamerging_zoo")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster, and results fixed
    base = _model(root / "base", None, 0)
    state = load_file(str(base / "model.safetensors"))
    out = {"root": root, "base": base}
    for name, seed in (("sentiment", 10), ("kind", 20)):
        classes = TASKS[name]
        for split, n in (("train", 240), ("validation", 80), ("test", 60)):
            out[f"{name}_{split}"] = _write(root / f"{name}_{split}.csv",
                                            _rows(classes, n, seed + len(split)))
        train = _rows(classes, 240, seed + len("train"))
        out[name] = _finetune(_model(root / name, sorted(classes), 1, state), train, seed=0)
    torch.set_num_threads(threads)
    return out


def recipe_text(setup, *, preference=(0.5, 0.5), train=None, heads="per_task",
                evaluate="{split: test, batch_size: 64, max_length: 16, device: cpu}",
                models=("sentiment", "kind"), dtype=None, splits=None, output="out") -> str:
    """An adamerging recipe on the tuned models; `train` entries override the test defaults."""
    settings = {"steps": 20, "batch_size": 16, "lr": 0.05, "max_length": 16, "seed": 0,
                "device": "cpu", "threads": 1, "split": "validation"}
    settings.update(train or {})
    tasks = ""
    for name in TASKS:
        files = {s: setup[f"{name}_{s}"] for s in ("train", "validation", "test")}
        tasks += (f"\n  {name}: {{dataset: csv, text_fields: [text], label_names: "
                  f"{sorted(TASKS[name])}, splits: {json.dumps(splits or {s: s for s in files})}, "
                  f"data_files: {json.dumps(files)}}}")
    lines = [
        "merge_method: adamerging",
        f"base_model: {setup['base']}",
        "models:",
        *[f"  - {{model: {setup[m]}, task: {m}}}" for m in models],
        f"preference: {list(preference)}",
        f"heads: {heads}",
        f"train: {json.dumps(settings)}",
        *([f"evaluate: {evaluate}"] if evaluate else []),
        *([f"dtype: {dtype}"] if dtype else []),
        f"output: {output}",
        f"tasks:{tasks}",
    ]
    return "\n".join(lines) + "\n"
