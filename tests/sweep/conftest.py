"""A tiny sweep setting: a base and two seeded BERT classifiers with a word-level tokenizer, two
csv tasks defined inline, and sweep recipes over averaging, task arithmetic and TIES. Paths in
the recipes are absolute, so a sweep runs from any working directory (and any process)."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from prefkit.recipe import load_recipe  # noqa: E402
from prefkit.registry import load_registry  # noqa: E402
from prefkit.sweeps import SweepOptions  # noqa: E402
from prefkit.sweeps.run import run_sweep  # noqa: E402
from prefkit.sweeps.store import read_results  # noqa: E402
from prefkit.testing.classifiers import WORDS, make_tiny_classifier  # noqa: E402
from tests.conftest import builtin_plugins  # noqa: E402


def _rows(n: int, seed: int, labels: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))), rng.randrange(labels))
            for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep_zoo")
    make_tiny_classifier(root / "base", ["x", "y"], seed=0)
    make_tiny_classifier(root / "ta", ["a", "b", "c"], seed=1)
    make_tiny_classifier(root / "tb", ["neg", "pos"], seed=2)
    for name, labels, seed in (("a", 3, 4), ("b", 2, 5)):
        with open(root / f"{name}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(_rows(24, seed, labels))
    return root


METHODS = """\
  - {merge_method: linear}
  - {merge_method: task_arithmetic, parameters: {lambda: 0.8}}
  - {merge_method: ties, parameters: {density: 0.5}}
"""

SWEEP = """\
base_model: {zoo}/base
models:
  - {{model: {zoo}/ta, task: toy_a}}
  - {{model: {zoo}/tb, task: toy_b}}
heads: per_task
tasks:
  toy_a: {{dataset: csv, text_fields: [text], label_names: [a, b, c], splits: {{test: test}},
          data_files: {{test: {zoo}/a.csv}}}}
  toy_b: {{dataset: csv, text_fields: [text], label_names: [neg, pos], splits: {{test: test}},
          data_files: {{test: {zoo}/b.csv}}}}
evaluate: {{batch_size: 8, max_length: 16}}
preferences: {preferences}
methods:
{methods}output: {output}
{extra}"""


def write_sweep(folder: Path, zoo: Path, *, preferences: str = "{grid: simplex, steps: 2}",
                methods: str = METHODS, extra: str = "", name: str = "sweep.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(SWEEP.format(zoo=zoo, preferences=preferences, methods=methods,
                                 output=folder / "out", extra=extra))
    return path


@pytest.fixture(scope="session")
def sweep_registry():
    return load_registry(entry_points=False, plugins=builtin_plugins())


@pytest.fixture(autouse=True)
def _token_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one thread is faster, and much faster on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


IN_PROCESS = SweepOptions(workers=0)
TWO_METHODS = ("  - {merge_method: linear}\n"
               "  - {merge_method: ties, parameters: {density: 0.5}}\n")


def by_key(out: Path) -> dict[str, dict]:
    """The results.jsonl records of a sweep output, by model key (the last of each)."""
    return {r["key"]: r for r in read_results(out / "results.jsonl")}


@pytest.fixture(scope="session")
def finished(tiny_zoo, tmp_path_factory, sweep_registry):
    """A finished 2-method x 3-preference sweep, run in this process (read it; copy it to
    change it). Returns (folder, result line)."""
    import torch

    folder = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFKIT_CACHE", str(folder / "cache"))
        torch.set_num_threads(1)
        path = write_sweep(folder, tiny_zoo, methods=TWO_METHODS)
        line = run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
        torch.set_num_threads(threads)
    return folder, line


def copy_sweep(finished, tmp_path: Path) -> Path:
    """The finished sweep's output under tmp_path, and its recipe pointing there."""
    import shutil

    folder, _ = finished
    shutil.copytree(folder / "out", tmp_path / "out")
    path = tmp_path / "sweep.yaml"
    path.write_text((folder / "sweep.yaml").read_text().replace(str(folder / "out"),
                                                               str(tmp_path / "out")))
    return path
