"""LoRA / PEFT adapters as merge inputs: a base model plus an adapter is read as one more model.

A recipe names one as mergekit does, `model: org/base+org/adapter` (each part a folder or hub id,
`@revision` allowed), or as `{model: org/base, lora: org/adapter}`. For every module the adapter
targets, the adapted weight is W + ΔW with ΔW = B·A·scale (transposed for `fan_in_fan_out` and
embedding layers), where scale = alpha / r, or alpha / √r with `use_rslora`, and r and alpha come
from the adapter's `rank_pattern` / `alpha_pattern` as peft resolves them; a `lora_bias` adds
B's bias·scale; modules the adapter saves whole (`modules_to_save`, e.g. a classifier) replace the
base's. This is exactly what peft's `merge_and_unload()` computes, so merging that input alone
with weight 1 gives peft's merged model, and its task vector against the base is ΔW.

The adapted tensors are computed once, one tensor at a time, and written to a content-addressed
cache (`$PREFKIT_CACHE/lora/<key>/`, default ~/.cache/prefkit); every other tensor is read from the
base's own files. The input is then streamed by the executor like any checkpoint. peft itself
(the `lora` extra) parses `adapter_config.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError
from prefkit.io.checkpoint import (
    PICKLE_HINT,
    Checkpoint,
    TensorMeta,
    TensorReader,
    read_bin_header,
    read_safetensors_header,
)
from prefkit.io.hub import TOKENIZER_FILES, resolve_local, resolve_model

FORMAT = "prefkit-lora-1"  # bump when the cached files' meaning changes
PEFT_PREFIX = "base_model.model."
_LORA_PARTS = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_embedding_A": "A",
               ".lora_embedding_B": "B", ".lora_B.bias": "bias"}
_UNSUPPORTED = {  # adapter_config.json settings whose merge is not plain B·A·scale
    "use_dora": "DoRA adapters", "layer_replication": "layer replication",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "trainable_token_indices": "trainable token indices",
}


def split_reference(ref: str, recipe_dir: Path) -> tuple[str, str | None]:
    """mergekit's `base+adapter` → (base, adapter); a local folder whose name has '+' stays whole."""
    if "+" not in ref or resolve_local(ref, recipe_dir) is not None:
        return ref, None
    model, _, adapter = ref.partition("+")
    if not model or not adapter or "+" in adapter:
        raise CheckpointError(f"model {ref!r}: write one base and one adapter, `base+adapter`",
                              hint="or give {model: base, lora: adapter}")
    return model, adapter


def open_input(ref: str, recipe_dir: Path, lora: str | None = None, *,
               allow_pickle: bool = False) -> tuple[Path, Checkpoint]:
    """The folder and checkpoint of a recipe's model, with its LoRA adapter applied if it has one.
    Pickle weights (`.bin`) are read only with `allow_pickle`."""
    model, adapter = split_reference(ref, recipe_dir)
    if adapter is not None and lora is not None:
        raise CheckpointError(f"model {ref!r} already names an adapter after '+', and lora: "
                              f"names {lora!r}", hint="give the adapter one way only")
    adapter = adapter or lora
    base_path = resolve_model(model, recipe_dir, allow_pickle)
    base = Checkpoint.open(base_path, allow_pickle=allow_pickle)
    if adapter is None:
        return base_path, base
    folder = resolve_model(adapter, recipe_dir, allow_pickle, kind="adapter")
    return apply_adapter(base, folder, allow_pickle=allow_pickle)


@dataclass
class _Module:
    """One adapted module: its low-rank factors (TensorMeta) and how to apply them."""

    name: str
    A: TensorMeta | None = None
    B: TensorMeta | None = None
    bias: TensorMeta | None = None
    embedding: bool = False


@dataclass(frozen=True)
class Adapter:
    folder: Path
    config: Any  # peft.LoraConfig
    weights: Path
    modules: dict[str, _Module]  # module name → its factors
    replaced: dict[str, TensorMeta]  # modules_to_save: base tensor name → adapter tensor

    def scale(self, module: str) -> float:
        """peft's scaling for one module: its alpha over its rank (or √rank with rsLoRA)."""
        from peft.utils.other import get_pattern_key

        c = self.config
        r = c.rank_pattern.get(get_pattern_key(c.rank_pattern.keys(), module), c.r)
        alpha = c.alpha_pattern.get(get_pattern_key(c.alpha_pattern.keys(), module), c.lora_alpha)
        return alpha / math.sqrt(r) if c.use_rslora else alpha / r


def read_adapter(folder: Path, *, allow_pickle: bool = False) -> Adapter:
    """Parse an adapter folder (peft's `save_pretrained` layout) from its config and headers."""
    try:
        from peft import PeftConfig
    except ImportError as exc:
        raise CheckpointError(f"adapter {folder}: reading LoRA adapters needs peft",
                              hint="pip install 'prefkit[lora]'") from exc
    if not (folder / "adapter_config.json").exists():
        raise CheckpointError(f"adapter {folder}: no adapter_config.json",
                              hint="give a folder saved with peft's save_pretrained()")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except Exception as exc:
        raise CheckpointError(f"{folder / 'adapter_config.json'}: peft cannot read it "
                              f"({type(exc).__name__}: {exc})") from exc
    if str(getattr(config, "peft_type", "")).rsplit(".", 1)[-1] != "LORA":
        raise CheckpointError(f"adapter {folder}: peft type {config.peft_type} is not LoRA",
                              hint="only LoRA adapters can be turned into task vectors")
    for key, what in _UNSUPPORTED.items():
        if getattr(config, key, None):
            raise CheckpointError(f"adapter {folder}: {what} ({key}) cannot be merged as B·A·scale",
                                  hint="merge it with peft's merge_and_unload() and give the result")
    weights = folder / "adapter_model.safetensors"
    if not weights.exists() and (folder / "adapter_model.bin").exists():
        if not allow_pickle:
            raise CheckpointError(f"adapter {folder}: only adapter_model.bin (a pickle)",
                                  hint=PICKLE_HINT)
        weights = folder / "adapter_model.bin"
    if not weights.exists():
        raise CheckpointError(f"adapter {folder}: no adapter_model.safetensors")
    metas = read_bin_header(weights) if weights.suffix == ".bin" else read_safetensors_header(weights)
    modules: dict[str, _Module] = {}
    replaced: dict[str, TensorMeta] = {}
    for meta in metas:
        name = meta.name.removeprefix(PEFT_PREFIX)
        part = next((p for p in _LORA_PARTS if name.endswith(p)), None)
        if part is None:
            if ".lora_" in name:
                raise CheckpointError(f"{weights}: tensor {meta.name!r} is a LoRA variant prefkit "
                                      "cannot merge as B·A·scale")
            replaced[name] = meta
            continue
        module = modules.setdefault(name[:-len(part)], _Module(name[:-len(part)]))
        setattr(module, _LORA_PARTS[part], meta)
        module.embedding = module.embedding or "embedding" in part
    for module in modules.values():
        if module.A is None or module.B is None:
            raise CheckpointError(f"{weights}: module {module.name!r} lacks lora_A or lora_B")
        if len(module.A.shape) != 2:
            raise CheckpointError(f"{weights}: module {module.name!r} is not a Linear or Embedding "
                                  f"LoRA (lora_A has shape {list(module.A.shape)})")
    return Adapter(folder, config, weights, modules, replaced)


def apply_adapter(base: Checkpoint, folder: Path, *,
                  allow_pickle: bool = False) -> tuple[Path, Checkpoint]:
    """The base with the adapter applied: (cache folder, checkpoint whose adapted tensors live in
    the cache and all others in the base's files)."""
    adapter = read_adapter(folder, allow_pickle=allow_pickle)
    targets = _targets(base, adapter)
    if not targets:
        raise CheckpointError(f"adapter {folder}: {adapter.weights.name} holds no LoRA tensors")
    out = _cache_root() / "lora" / _cache_key(base, adapter)
    if not (out / "adapted.safetensors").exists():
        _write(out, base, adapter, targets)
    tensors = dict(base.tensors)
    tensors.update({m.name: m for m in read_safetensors_header(out / "adapted.safetensors")})
    return out, Checkpoint(out, tensors, base.config)


def _targets(base: Checkpoint, adapter: Adapter) -> dict[str, Any]:
    """Every base tensor the adapter changes (as writer OutTensors), checked against the base's
    names and shapes."""
    from prefkit.io.writer import OutTensor  # imports torch: only when an adapter is used

    targets = {}
    for module in adapter.modules.values():
        weight = base.tensors.get(f"{module.name}.weight")
        if weight is None:
            raise CheckpointError(f"adapter {adapter.folder}: targets module {module.name!r}, but "
                                  f"the base {base.path} has no tensor {module.name}.weight",
                                  hint="is this adapter trained on this base model?")
        rows, cols = module.B.shape[0], module.A.shape[1]
        expected = (cols, rows) if module.embedding or adapter.config.fan_in_fan_out else (rows, cols)
        if weight.shape != expected:
            raise CheckpointError(f"adapter {adapter.folder}: B·A for {module.name!r} has shape "
                                  f"{list(expected)}, the base's weight {list(weight.shape)}",
                                  hint="is this adapter trained on this base model?")
        targets[weight.name] = OutTensor(weight.name, weight.dtype, weight.shape)
        if module.bias is not None:
            bias = base.tensors.get(f"{module.name}.bias")
            if bias is None:
                raise CheckpointError(f"adapter {adapter.folder}: has a lora_bias for "
                                      f"{module.name!r}, whose base layer has no bias")
            targets[bias.name] = OutTensor(bias.name, bias.dtype, bias.shape)
    for name, meta in adapter.replaced.items():
        targets[name] = OutTensor(name, meta.dtype, meta.shape)
    return dict(sorted(targets.items()))


def _write(out: Path, base: Checkpoint, adapter: Adapter, targets: dict[str, Any]) -> None:
    """Compute the adapted tensors one at a time into a hidden sibling, then rename it into place."""
    from prefkit.io.writer import ShardWriter

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    writer = ShardWriter(tmp, [list(targets.values())], {"format": "pt", "prefkit": FORMAT})
    reader = TensorReader()
    by_tensor = {f"{m.name}.weight": m for m in adapter.modules.values()}
    biases = {f"{m.name}.bias": m for m in adapter.modules.values() if m.bias is not None}
    try:
        for name in targets:
            if name in adapter.replaced:
                tensor = reader.read(adapter.replaced[name])
            elif name in by_tensor:
                tensor = _adapted_weight(reader, base.tensors[name], by_tensor[name], adapter)
            else:
                module = biases[name]
                tensor = reader.read(base.tensors[name])
                tensor += (reader.read(module.bias) * adapter.scale(module.name)).to(tensor.dtype)
            writer.write(name, tensor)
        writer.close()
        # not model.safetensors: the folder alone is not a whole model (the rest is the base's)
        (tmp / "model.safetensors").rename(tmp / "adapted.safetensors")
        _copy_side_files(base.path, adapter.folder, tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process finished the same adapter first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        writer.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        reader.close()


def _adapted_weight(reader: TensorReader, meta: TensorMeta, module: _Module, adapter: Adapter):
    """W + B·A·scale as peft merges it: the product in float32 for half dtypes (peft's CPU path),
    cast to W's dtype, then added."""
    import torch

    weight = reader.read(meta)
    work = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
    delta = reader.read(module.B).to(work) @ reader.read(module.A).to(work)
    if module.embedding or adapter.config.fan_in_fan_out:
        delta = delta.T
    weight += (delta * adapter.scale(module.name)).to(weight.dtype)
    return weight


def _copy_side_files(base: Path, adapter: Path, out: Path) -> None:
    """config.json from the base; tokenizer files from the adapter if it has any, else the base."""
    if (base / "config.json").exists():
        shutil.copyfile(base / "config.json", out / "config.json")
    source = adapter if any(any(adapter.glob(p)) for p in TOKENIZER_FILES) else base
    for pattern in TOKENIZER_FILES:
        for file in sorted(source.glob(pattern)):
            shutil.copyfile(file, out / file.name)


def _cache_root() -> Path:
    """prefkit's cache (evaluation keeps its token cache there too)."""
    return Path(os.environ.get("PREFKIT_CACHE", Path.home() / ".cache" / "prefkit"))


def _cache_key(base: Checkpoint, adapter: Adapter) -> str:
    """Hash of the base's tensor index and file stamps, and the adapter's files' bytes."""
    h = hashlib.sha256(FORMAT.encode())
    for name in sorted(base.tensors):
        meta = base.tensors[name]
        stat = meta.file.stat()
        h.update(f"{name}:{meta.dtype}:{meta.shape}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    h.update(json.dumps(adapter.config.to_dict(), sort_keys=True, default=str).encode())
    with open(adapter.weights, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]
