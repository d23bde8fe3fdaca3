"""What a process that scores many models of one architecture keeps between them (a sweep
worker): tokenizers, each task's tokenized examples (by task, split, subset and max_length), a
model skeleton per config (a transformers model object that merged tensors are loaded into),
and the input models' task heads.

Everything is keyed by content or by the files' sizes and modification times, so a file that
changed between two models is read again. `loads` counts what was built (tests check reuse).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from prefkit.api import Task
from prefkit.eval.evaluate import EvalData, EvalSettings, eval_data, load_tokenizer, tokenizer_key
from prefkit.io.hub import TOKENIZER_FILES


def stamp(paths) -> tuple:
    """(path, size, mtime) of each existing file: a key that changes when a file does."""
    out = []
    for p in paths:
        p = Path(p)
        if p.is_file():
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _data_files(task: Task) -> list[str]:
    files = task.data_files
    if isinstance(files, dict):
        files = list(files.values())
    flat: list[str] = []
    for f in files if isinstance(files, (list, tuple)) else [files]:
        flat.extend(str(x) for x in (f if isinstance(f, (list, tuple)) else [f]) if x)
    return flat


def task_key(task: Task, settings: EvalSettings) -> tuple:
    loader = task.loader
    return (task.name, task.dataset, task.config_name, task.text_fields, task.label_field,
            task.label_names, json.dumps(task.data_files, sort_keys=True, default=str),
            task.splits.get(settings.split), settings.split, settings.num_samples, settings.seed,
            settings.max_length, None if loader is None else (id(loader), repr(loader)),
            stamp(_data_files(task)))


class EvalSession:
    """Kept state for scoring many models in one process (see the module docstring)."""

    def __init__(self) -> None:
        self.loads: Counter[str] = Counter()
        self._root: Path | None = None
        self._folders: dict[tuple, Path] = {}
        self._tokenizers: dict[Path, Any] = {}
        self._data: dict[tuple, EvalData] = {}
        self._skeletons: dict[tuple, Any] = {}
        self._heads: dict[tuple, dict[str, Any]] = {}

    def model_folder(self, config: dict[str, Any], tokenizer_source: Path) -> Path:
        """A folder holding what an output folder holds for loading, but its weights: the
        output's config.json and the tokenizer files the executor copies (same patterns)."""
        files = sorted({f for pattern in TOKENIZER_FILES for f in Path(tokenizer_source).glob(pattern)})
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        key = (text, stamp(files))
        if key not in self._folders:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="prefkit-eval-"))
            folder = self._root / f"model{len(self._folders)}"
            folder.mkdir()
            (folder / "config.json").write_text(text)
            for file in files:
                shutil.copyfile(file, folder / file.name)
            self._folders[key] = folder
        return self._folders[key]

    def tokenizer(self, folder: Path):
        if folder not in self._tokenizers:
            self.loads["tokenizer"] += 1
            self._tokenizers[folder] = load_tokenizer(folder)
        return self._tokenizers[folder]

    def skeleton(self, folder: Path, dtype: str, device: str):
        """The model object for `folder`'s config in `dtype` on `device`, in eval mode (its
        weights are whatever was loaded last: load every tensor before scoring)."""
        key = (folder, dtype, device)
        if key not in self._skeletons:
            import torch
            import transformers

            self.loads["skeleton"] += 1
            config = transformers.AutoConfig.from_pretrained(folder)
            model = transformers.AutoModelForSequenceClassification.from_config(
                config, dtype=getattr(torch, dtype))
            self._skeletons[key] = model.to(device).eval()
        return self._skeletons[key]

    def data(self, tokenizer, task: Task, settings: EvalSettings) -> EvalData:
        key = (tokenizer_key(tokenizer), *task_key(task, settings))
        if key not in self._data:
            self.loads["data"] += 1
            self._data[key] = eval_data(tokenizer, task, settings)
        return self._data[key]

    def task_head(self, checkpoint, names: tuple[str, ...]) -> dict[str, Any]:
        """An input model's own head tensors (those of `names` it has), as the executor saves
        them to heads/<task>.safetensors."""
        from prefkit.io.checkpoint import TensorReader

        metas = {n: checkpoint.tensors[n] for n in names if n in checkpoint.tensors}
        key = tuple(sorted(metas)) + stamp(sorted({str(m.file) for m in metas.values()}))
        if key not in self._heads:
            self.loads["head"] += 1
            reader = TensorReader()
            try:
                self._heads[key] = {n: reader.read(m) for n, m in metas.items()}
            finally:
                reader.close()
        return self._heads[key]

    def close(self) -> None:
        self._skeletons.clear()
        self._data.clear()
        self._tokenizers.clear()
        self._heads.clear()
        self._folders.clear()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

