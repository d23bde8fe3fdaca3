"""Checkpoint index: what a checkpoint folder holds, from headers only.

A checkpoint is a folder with `model.safetensors`, or shards listed by
`model.safetensors.index.json`, plus `config.json`. Only headers are read to build the index
(`prefkit.io.headers`, which checks every header against its file), and the index must name the
shards' real contents. The index and `config.json` are bounded JSON (`prefkit.io.jsonfile`:
at most MAX_INDEX_BYTES / MAX_CONFIG_BYTES, MAX_DEPTH levels); the index's shard names must be
plain file names of the folder (no folder part, `..`, NUL or control characters; a shard may be
a symlink, as the Hugging Face cache's are). A damaged, lying or unreadable file is one
CheckpointFileError naming the file and the tensor; a folder that is no checkpoint at all is a
plain CheckpointError. Tensors are read by `prefkit.io.reader.TensorReader`. TensorMeta, the
header readers and TensorReader stay importable from here.

Pickle weights (`pytorch_model*.bin`) are indexed only when the caller allows it
(`--allow-pickle`); see `prefkit.io.headers`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefkit.errors import CheckpointError
from prefkit.io.damage import CheckpointFileError
from prefkit.io.headers import (
    MAX_HEADER_BYTES,
    PICKLE_HINT,
    PICKLE_SUFFIXES,
    TensorMeta,
    check_name,
    is_pickle,
    read_bin_header,
    read_safetensors_header,
)
from prefkit.io.jsonfile import MAX_CONFIG_BYTES, MAX_INDEX_BYTES, os_error, plain_text, read_json
from prefkit.io.reader import TensorReader

INDEX = "model.safetensors.index.json"
REWRITE_INDEX = "the index is damaged: download or copy the checkpoint again"

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
                    raise CheckpointFileError(
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
    index_file = path / INDEX
    if os.path.lexists(index_file):
        weight_map = _read_index(index_file)
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not _present(index_file, f)]
        if missing:
            raise CheckpointFileError(f"{index_file}: lists shard(s) that do not exist: "
                                      f"{', '.join(missing)}", hint="download or copy the missing shards")
        return files, weight_map
    single = path / "model.safetensors"
    if os.path.lexists(single):
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


def _present(index_file: Path, shard: Path) -> bool:
    """Whether a listed shard exists; a symlink loop or an unreadable folder is an error."""
    try:
        os.stat(shard)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise os_error(shard, exc, "open") from exc
    return True


def _read_index(file: Path) -> dict[str, str]:
    index = read_json(file, MAX_INDEX_BYTES, "safetensors index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointFileError(f"{file}: not a valid safetensors index (weight_map must map tensor "
                                  "names to shard file names)", hint=REWRITE_INDEX)
    for name, shard in weight_map.items():
        check_name(file, name)
        if not _plain_shard_name(shard):
            raise CheckpointFileError(f"{file}: tensor {name!r} names shard {shard!r}, which is not a "
                                      ".safetensors file in the checkpoint folder", hint=REWRITE_INDEX)
    return weight_map


def _plain_shard_name(shard: str) -> bool:
    """A file name of the checkpoint folder itself: no folder part, no `..`, nothing odd. (The
    file may be a symlink, as in the Hugging Face cache, whose files link to its blobs.)"""
    return (0 < len(shard) <= 255 and plain_text(shard) and "/" not in shard and "\\" not in shard
            and shard.endswith(".safetensors"))


def _check_index(path: Path, weight_map: dict[str, str], tensors: dict[str, TensorMeta]) -> None:
    """The index and the shard headers must agree on which tensor is where."""
    index_file = path / INDEX
    for name, shard in sorted(weight_map.items()):
        meta = tensors.get(name)
        if meta is None or meta.file.name != Path(shard).name:
            raise CheckpointFileError(f"{index_file}: tensor {name!r} is listed in {shard}, "
                                      "which does not hold it", hint="the index and shards do not match")
    extra = sorted(set(tensors) - set(weight_map))
    if extra:
        raise CheckpointFileError(f"{tensors[extra[0]].file}: tensor {extra[0]!r} is not listed in "
                                  f"{index_file.name}", hint="the index and shards do not match")


def _read_config(path: Path) -> dict[str, Any] | None:
    config = path / "config.json"
    if not os.path.lexists(config):
        return None
    data = read_json(config, MAX_CONFIG_BYTES, "config.json")
    if not isinstance(data, dict):
        raise CheckpointFileError(f"{config}: expected a JSON object",
                                  hint="restore config.json from the model's source")
    return data
