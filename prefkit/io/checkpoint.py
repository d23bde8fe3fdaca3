"""Checkpoint index: what a checkpoint folder holds, from headers only.

A checkpoint is a folder with `model.safetensors`, or shards listed by
`model.safetensors.index.json`, plus `config.json`. Only headers are read to build the index
(`prefkit.io.headers`, which checks every header against its file), and the index must name the
shards' real contents. A damaged or lying file is one error naming the file and the tensor.
Tensors are read by `prefkit.io.reader.TensorReader`. TensorMeta, the header readers and
TensorReader stay importable from here.

Pickle weights (`pytorch_model*.bin`) are indexed only when the caller allows it
(`--allow-pickle`); see `prefkit.io.headers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError
from prefkit.io.headers import (
    MAX_HEADER_BYTES,
    PICKLE_HINT,
    PICKLE_SUFFIXES,
    TensorMeta,
    is_pickle,
    read_bin_header,
    read_safetensors_header,
)
from prefkit.io.reader import TensorReader

__all__ = ["MAX_HEADER_BYTES", "PICKLE_HINT", "PICKLE_SUFFIXES", "Checkpoint", "TensorMeta",
           "TensorReader", "is_pickle", "pickle_files", "read_bin_header",
           "read_safetensors_header", "refuse_pickle_only"]


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint folder holds, from headers only."""

    path: Path
    tensors: dict[str, TensorMeta]
    config: dict[str, Any] | None

    @classmethod
    def open(cls, path: Path, *, allow_pickle: bool = False) -> Checkpoint:
        """Index a checkpoint folder. Pickle weights are read only with `allow_pickle`.

        Raises:
            CheckpointError: naming the file (and tensor) that is missing, damaged or refused.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: not a checkpoint folder")
        files, index = _weight_files(path, allow_pickle)
        tensors: dict[str, TensorMeta] = {}
        for file in files:
            metas = read_bin_header(file) if is_pickle(file) else read_safetensors_header(file)
            for meta in metas:
                if meta.name in tensors:
                    raise CheckpointError(
                        f"{path}: tensor {meta.name!r} is in both {tensors[meta.name].file.name} "
                        f"and {file.name}"
                    )
                tensors[meta.name] = meta
        if index is not None:
            _check_index(path, index, tensors)
        return cls(path, tensors, _read_config(path))


def pickle_files(path: Path) -> list[Path]:
    """Pickle weight files in a folder (what `--allow-pickle` is about)."""
    return sorted(f for f in path.iterdir() if f.is_file() and is_pickle(f))


def refuse_pickle_only(path: Path) -> None:
    """Raise if a model folder has no safetensors weights but pickle ones (for loaders that pick
    files themselves, such as transformers' `from_pretrained`)."""
    if any(path.glob("*.safetensors")):
        return
    found = pickle_files(path)
    if found:
        raise CheckpointError(f"{path}: holds only pickle weights "
                              f"({', '.join(f.name for f in found)})", hint=PICKLE_HINT)


def _weight_files(path: Path, allow_pickle: bool) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files to read, and the index's tensor → file map when there is one."""
    index_file = path / "model.safetensors.index.json"
    if index_file.exists():
        weight_map = _read_index(index_file)
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index_file}: lists shard(s) that do not exist: "
                                  f"{', '.join(missing)}", hint="download or copy the missing shards")
        return files, weight_map
    single = path / "model.safetensors"
    if single.exists():
        return [single], None
    shards = sorted(path.glob("*.safetensors"))
    if shards:
        return shards, None
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins and allow_pickle:
        return bins, None
    refuse_pickle_only(path)
    raise CheckpointError(
        f"{path}: no model.safetensors, safetensors index or pytorch_model.bin found",
        hint="point the recipe at a folder saved with save_pretrained()",
    )


def _read_index(file: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(file.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"{file}: not a valid safetensors index ({exc})") from exc
    if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{file}: weight_map must map tensor names to shard file names")
    folder = file.parent.resolve()
    for name, shard in weight_map.items():
        target = (folder / shard).resolve()
        if target.parent != folder or not shard.endswith(".safetensors"):
            raise CheckpointError(f"{file}: tensor {name!r} names shard {shard!r}, which is not a "
                                  ".safetensors file in the checkpoint folder")
    return weight_map


def _check_index(path: Path, weight_map: dict[str, str], tensors: dict[str, TensorMeta]) -> None:
    """The index and the shard headers must agree on which tensor is where."""
    index_file = path / "model.safetensors.index.json"
    for name, shard in sorted(weight_map.items()):
        meta = tensors.get(name)
        if meta is None or meta.file.name != Path(shard).name:
            raise CheckpointError(f"{index_file}: tensor {name!r} is listed in {shard}, "
                                  "which does not hold it", hint="the index and shards do not match")
    extra = sorted(set(tensors) - set(weight_map))
    if extra:
        raise CheckpointError(f"{tensors[extra[0]].file}: tensor {extra[0]!r} is not listed in "
                              f"{index_file.name}", hint="the index and shards do not match")


def _read_config(path: Path) -> dict[str, Any] | None:
    config = path / "config.json"
    if not config.exists():
        return None
    try:
        data = json.loads(config.read_text())
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{config}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{config}: expected a JSON object")
    return data
