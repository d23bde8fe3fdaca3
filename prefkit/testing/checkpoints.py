"""Tiny, seeded RoBERTa-style checkpoints (a few thousand parameters) written as sharded
safetensors with a Hugging Face index and a `config.json` that transformers and mergekit load
(`RobertaForSequenceClassification`). Same arguments ⇒ same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# The reference setup's tasks and label counts (AG News 4, IMDB 2, MNLI 3, MRPC 2).
REFERENCE_TASKS: dict[str, int] = {"ag_news": 4, "imdb": 2, "mnli": 3, "mrpc": 2}


def tiny_config(num_labels: int | None = None, *, layers: int = 2, hidden: int = 16,
                intermediate: int = 32, vocab: int = 50, positions: int = 34,
                attention_heads: int = 2) -> dict:
    """A RoBERTa `config.json` of the given size (generic LABEL_i names when `num_labels`)."""
    config = {
        "architectures": ["RobertaForSequenceClassification" if num_labels else "RobertaModel"],
        "model_type": "roberta",
        "attention_probs_dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": positions,
        "num_attention_heads": attention_heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "type_vocab_size": 1,
        "vocab_size": vocab,
        "torch_dtype": "float32",
    }
    if num_labels:
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return config


def _shapes(config: dict, num_labels: int | None) -> dict[str, tuple[int, ...]]:
    h, i = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "roberta.embeddings.word_embeddings.weight": (config["vocab_size"], h),
        "roberta.embeddings.position_embeddings.weight": (config["max_position_embeddings"], h),
        "roberta.embeddings.token_type_embeddings.weight": (config["type_vocab_size"], h),
        "roberta.embeddings.LayerNorm.weight": (h,),
        "roberta.embeddings.LayerNorm.bias": (h,),
    }
    for layer in range(config["num_hidden_layers"]):
        p = f"roberta.encoder.layer.{layer}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"] = (h, h)
            shapes[p + name + ".bias"] = (h,)
        shapes[p + "intermediate.dense.weight"] = (i, h)
        shapes[p + "intermediate.dense.bias"] = (i,)
        shapes[p + "output.dense.weight"] = (h, i)
        shapes[p + "output.dense.bias"] = (h,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + ln + ".weight"] = (h,)
            shapes[p + ln + ".bias"] = (h,)
    if num_labels:
        shapes["classifier.dense.weight"] = (h, h)
        shapes["classifier.dense.bias"] = (h,)
        shapes["classifier.out_proj.weight"] = (num_labels, h)
        shapes["classifier.out_proj.bias"] = (num_labels,)
    return shapes


def _save(path: Path, tensors: dict[str, torch.Tensor], config: dict, shards: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    names = sorted(tensors)
    if shards <= 1:
        save_file({n: tensors[n] for n in names}, str(path / "model.safetensors"))
    else:
        groups = [names[i::shards] for i in range(shards)]
        weight_map = {}
        for i, group in enumerate(groups, 1):
            file = f"model-{i:05d}-of-{shards:05d}.safetensors"
            save_file({n: tensors[n] for n in group}, str(path / file))
            weight_map.update({n: file for n in group})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        (path / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
            indent=2))
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return path


def _init(shape: tuple[int, ...], name: str, gen: torch.Generator) -> torch.Tensor:
    if "LayerNorm.weight" in name:
        return 1.0 + 0.02 * torch.randn(shape, generator=gen)
    return 0.05 * torch.randn(shape, generator=gen)


def make_base(path: str | Path, *, seed: int = 0, num_labels: int | None = None, shards: int = 2,
              dtype: torch.dtype = torch.float32, **config_kw) -> Path:
    """A 'pretrained' model: no classifier unless `num_labels` is given (like roberta-base)."""
    config = tiny_config(num_labels, **config_kw)
    gen = torch.Generator().manual_seed(seed)
    tensors = {n: _init(s, n, gen).to(dtype) for n, s in _shapes(config, num_labels).items()}
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    return _save(Path(path), tensors, config, shards)


def make_finetuned(path: str | Path, base: str | Path, *, seed: int, num_labels: int,
                   scale: float = 0.01, shards: int = 2, dtype: torch.dtype | None = None,
                   drop: tuple[str, ...] = ()) -> Path:
    """base + seeded noise of std `scale` on every tensor, with its own classifier head.

    `drop` leaves the named tensors out (to test missing-tensor errors).
    """
    from safetensors.torch import load_file

    base = Path(base)
    base_config = json.loads((base / "config.json").read_text())
    base_tensors: dict[str, torch.Tensor] = {}
    for file in sorted(base.glob("*.safetensors")):
        base_tensors.update(load_file(str(file)))
    cfg_kw = {k: base_config[v] for k, v in (("layers", "num_hidden_layers"), (
        "hidden", "hidden_size"), ("intermediate", "intermediate_size"), ("vocab", "vocab_size"),
        ("positions", "max_position_embeddings"))}
    config = tiny_config(num_labels, **cfg_kw)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in _shapes(config, num_labels).items():
        if name in drop:
            continue
        if name in base_tensors and tuple(base_tensors[name].shape) == shape:
            ref = base_tensors[name]
            t = ref.float() + scale * torch.randn(shape, generator=gen)
        else:
            t = _init(shape, name, gen)
        tensors[name] = t.to(dtype or next(iter(base_tensors.values())).dtype)
    config["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    return _save(Path(path), tensors, config, shards)


def make_zoo(root: str | Path, *, tasks: dict[str, int] | None = None, seed: int = 0,
             shards: int = 2, base_head: bool = False, **config_kw) -> dict[str, Path]:
    """A base plus one fine-tuned model per task (`root/base`, `root/<task>`).

    With `base_head` the base carries a classifier with the first task's label count (what
    mergekit needs); by default it has none, like roberta-base.
    """
    tasks = tasks or REFERENCE_TASKS
    root = Path(root)
    first = next(iter(tasks.values()))
    out = {"base": make_base(root / "base", seed=seed, shards=shards,
                             num_labels=first if base_head else None, **config_kw)}
    for i, (task, labels) in enumerate(tasks.items(), 1):
        out[task] = make_finetuned(root / task, out["base"], seed=seed * 1000 + i,
                                   num_labels=labels, shards=shards)
    return out
