"""Files of a training run, all in `train.cache_dir` (default checkpoints/training/):

    <method>_<hash>.safetensors   the trained tensors (plan names, per-task heads as
                                  heads.<task>.<name>); metadata: the cache key and a summary
    <method>_<hash>.jsonl         the training log (per-task losses, weights α, evaluations)
    <method>_<hash>.resume.safetensors   the last resumable state while training runs

`<hash>` is the content hash of everything that decides the trained weights (the cache key).
Every file is written to a temporary name and renamed, so a crash never leaves a file that looks
complete; the resumable state is one file (tensors plus a JSON header), so it is never half new.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1


def cache_hash(key: dict[str, Any]) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunFiles:
    folder: Path
    stem: str  # <method>_<hash>

    @property
    def model(self) -> Path:
        return self.folder / f"{self.stem}.safetensors"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.stem}.jsonl"

    @property
    def resume(self) -> Path:
        return self.folder / f"{self.stem}.resume.safetensors"


def _atomic_save(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _load(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def save_model(files: RunFiles, tensors: dict[str, Any], key: dict[str, Any],
               summary: dict[str, Any], log: list[dict[str, Any]]) -> None:
    """Publish the trained model (and its log); the resumable state is no longer needed."""
    tmp_log = files.log.with_name(f".{files.log.name}.tmp{os.getpid()}")
    files.folder.mkdir(parents=True, exist_ok=True)
    tmp_log.write_text("".join(json.dumps(row) + "\n" for row in log))
    os.replace(tmp_log, files.log)
    _atomic_save(tensors, files.model, {"format": "pt", "prefkit_key": json.dumps(key, sort_keys=True),
                                        "prefkit_summary": json.dumps(summary)})
    files.resume.unlink(missing_ok=True)


def load_model(files: RunFiles) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trained tensors and the run summary."""
    tensors, meta = _load(files.model)
    return tensors, json.loads(meta.get("prefkit_summary", "{}"))


def save_resume(files: RunFiles, tensors: dict[str, Any], header: dict[str, Any]) -> None:
    _atomic_save(tensors, files.resume, {"prefkit_resume": json.dumps(header)})


def load_resume(files: RunFiles) -> tuple[dict[str, Any], dict[str, Any]] | None:
    if not files.resume.is_file():
        return None
    tensors, meta = _load(files.resume)
    return tensors, json.loads(meta["prefkit_resume"])
