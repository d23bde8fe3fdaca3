"""`--threads` and `--device`: the output bytes do not depend on how many threads merge them, and
a GPU that is not there is one clear error.

The zoo here is larger than the shared one (a 3000×64 embedding, 64×256 feed-forward matrices) so
that torch's elementwise kernels really split across threads (they do above 32768 elements).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from click.testing import CliRunner

import prefkit.engine.executor as executor
from prefkit.cli import build_cli
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from prefkit.testing import make_zoo
from tests.conftest import builtin_plugins
from tests.helpers import write_recipe

RECIPE = """\
merge_method: {method}
base_model: big/base
models:
  - model: big/ag_news
  - model: big/imdb
  - model: big/mnli
  - model: big/mrpc
parameters: {params}
"""
CASES = {
    "task_arithmetic": ("task_arithmetic", "{weight: 0.6, lambda: 0.8}"),
    "ties": ("ties", "{weight: 1, density: 0.2}"),
    "ties_count_rescale": ("ties", "{weight: 0.7, density: 0.3, consensus: count, rescale: true}"),
    "ties_global": ("ties", "{weight: 1, density: 0.2, trim: global}"),
}


@pytest.fixture(scope="module")
def big_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    make_zoo(root / "big", hidden=64, intermediate=256, vocab=3000, positions=130, seed=5)
    return root


@pytest.fixture
def threads():
    """Restore torch's thread count: `execute(threads=...)` sets it for the process."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _digest(folder) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("budget", [None, 200_000])  # whole tensors, and the embedding in slabs
def test_same_bytes_with_one_or_three_threads(case, budget, big_zoo, registry, threads,
                                             monkeypatch):
    if budget is not None:
        monkeypatch.setattr(executor, "DEFAULT_BUDGET", budget)
    method, params = CASES[case]
    recipe = write_recipe(big_zoo, RECIPE.format(method=method, params=params), f"{case}.yaml")
    digests = {}
    before = torch.get_num_threads()
    for n in (1, 3):
        plan = resolve(load_recipe(recipe), registry, big_zoo / f"out-{case}-{n}")
        executor.execute(plan, executor.ExecuteOptions(force=True, threads=n))
        assert torch.get_num_threads() == before  # the merge's setting does not leak out
        digests[n] = _digest(big_zoo / f"out-{case}-{n}")
    assert digests[1] == digests[3]


def test_chunks_are_spread_over_the_threads(big_zoo, registry, monkeypatch):
    """With threads > 1 an elementwise method's chunks run on the merge's worker threads."""
    import threading

    from prefkit import ops

    seen: set[str] = set()
    original = ops.map_chunks

    def spy(fn, n, size=None):
        def named(part):
            seen.add(threading.current_thread().name)
            return fn(part)
        return original(named, n, 4096)  # many chunks per tensor

    monkeypatch.setattr(ops, "map_chunks", spy)
    for module in ("linear", "task_arithmetic", "ties"):
        monkeypatch.setattr(f"prefkit.plugins.{module}.map_chunks", spy)
    recipe = write_recipe(big_zoo, RECIPE.format(method="ties", params="{weight: 1}"), "spread.yaml")
    executor.execute(resolve(load_recipe(recipe), registry, big_zoo / "spread"),
                     executor.ExecuteOptions(force=True, threads=3))
    workers = {name for name in seen if name.startswith("prefkit-merge")}
    assert len(workers) >= 2  # (a tensor of one chunk runs on the calling thread)


def test_cli_threads_and_device_cpu(big_zoo, threads, monkeypatch):
    monkeypatch.chdir(big_zoo)
    write_recipe(big_zoo, RECIPE.format(method="ties", params="{weight: 1, density: 0.3}"))
    cli = build_cli(lambda: _registry())
    outs = {}
    for args in (["--threads", "1"], ["--threads", "2", "--device", "cpu"]):
        out = f"cli-{args[1]}"
        result = CliRunner().invoke(cli, ["run", "recipe.yaml", "-o", out, "-q", "--force", *args])
        assert result.exit_code == 0, result.stderr
        outs[args[1]] = _digest(big_zoo / out)
    assert outs["1"] == outs["2"]


def test_cuda_without_a_gpu_is_one_line(big_zoo, monkeypatch):
    """On this CPU-only machine `--device cuda` stops before any recipe runs; where a GPU is
    visible it merges, within float32 rounding of the CPU result."""
    monkeypatch.chdir(big_zoo)
    write_recipe(big_zoo, RECIPE.format(method="task_arithmetic", params="{weight: 0.5}"))
    cli = build_cli(lambda: _registry())
    result = CliRunner().invoke(cli, ["run", "recipe.yaml", "-o", "gpu", "-q", "--device", "cuda"])
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.stderr
        cpu = CliRunner().invoke(cli, ["run", "recipe.yaml", "-o", "cpu", "-q"])
        assert cpu.exit_code == 0
        from tests.helpers import load_tensors

        gpu_tensors, cpu_tensors = load_tensors(big_zoo / "gpu"), load_tensors(big_zoo / "cpu")
        for name, value in cpu_tensors.items():
            torch.testing.assert_close(gpu_tensors[name], value, rtol=0, atol=1e-6)
    else:
        assert result.exit_code == 1
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            "Error: --device cuda: CUDA is not available here (torch ")
        assert "run with --device cpu" in lines[0] and "Traceback" not in result.output
        assert result.stdout == "" and not (big_zoo / "gpu").exists()


def _registry():
    from prefkit.registry import load_registry

    return load_registry(entry_points=False, plugins=builtin_plugins())
