"""The demo zoo's folders: cache keys, `prefkit-demo.json`, fingerprints, atomic publication.

A folder whose `prefkit-demo.json` records the current key is complete and reused. A folder is
built under a temporary name (``.<name>.tmp-<pid>``) and renamed when complete; temporary folders
whose process is gone are removed by the next build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from prefkit.api import Task
from prefkit.demo.settings import ZooSettings
from prefkit.errors import CheckpointError
from prefkit.io.ownership import alive

INFO_FILE = "prefkit-demo.json"
FORMAT = 1


def fingerprint(folder: Path) -> str:
    """A cheap content fingerprint of a model folder: config.json, and each safetensors file's
    name, size and header (which holds every tensor's name, dtype, shape and offsets)."""
    h = hashlib.sha256()
    h.update((folder / "config.json").read_bytes())
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder} has no *.safetensors file",
                              hint="the demo zoo reads safetensors checkpoints only")
    for file in files:
        with file.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = fh.read(min(n, 100_000_000))
        h.update(f"{file.name}:{file.stat().st_size}:".encode())
        h.update(header)
    return h.hexdigest()[:16]


def read_zoo_info(folder: str | Path) -> dict[str, Any] | None:
    """A zoo folder's `prefkit-demo.json` (settings, results), or None."""
    path = Path(folder) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_zoo_info(folder: Path, info: dict[str, Any]) -> None:
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def task_key(task: Task, settings: ZooSettings, base_fp: str) -> dict[str, Any]:
    """What a task folder's weights depend on: the task's data, the settings and the base."""
    return {"format": FORMAT, "task": task.name, "dataset": task.dataset,
            "text_fields": list(task.text_fields), "label_names": list(task.label_names),
            "label_field": task.label_field, "train_split": task.splits.get("train"),
            "validation_split": task.splits.get("validation"), "base": base_fp,
            "settings": dataclasses.asdict(settings)}


def is_complete(folder: Path, key: dict[str, Any]) -> bool:
    info = read_zoo_info(folder)
    return (info is not None and info.get("key") == key and (folder / "config.json").is_file()
            and any(folder.glob("*.safetensors")))


def publish(tmp: Path, dest: Path) -> None:
    """Replace `dest` by the finished `tmp` folder (a rename: readers never see half a model)."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)


def remove_stale(root: Path) -> None:
    """Temporary folders left by builds that were interrupted (their process is gone)."""
    for path in [*root.glob(".*.tmp-*"), *root.glob(".*.old-*")]:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid), None):
            shutil.rmtree(path, ignore_errors=True)


def tmp_dir(root: Path, name: str) -> Path:
    """A fresh temporary folder for `root/name`, owned by this process."""
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp
