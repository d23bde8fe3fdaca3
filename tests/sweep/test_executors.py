"""The same points on a local process pool and on a local Ray cluster: the same results and the
same cache as in this process; a failed point is reported and the others go on."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.recipe import load_recipe
from prefkit.sweeps import SweepOptions
from prefkit.sweeps.run import run_sweep
from prefkit.sweeps.store import read_results
from tests.sweep.conftest import IN_PROCESS, by_key, write_sweep

LINEAR = "  - {merge_method: linear}\n"
CORNERS = "[[1, 0], [0, 1]]"


def _same_as_in_process(out, finished) -> None:
    """Every point of `out` has the results the in-process run gave the same point (same key)."""
    reference = by_key(finished[0] / "out")
    records = by_key(out)
    assert len(records) == 2 and set(records) <= set(reference)
    for key, record in records.items():
        assert record["status"] == "ok"
        assert record["results"] == reference[key]["results"]


@pytest.mark.slow  # spawned workers import torch and transformers: ~45 s on 2 busy cores
def test_process_pool_gives_the_in_process_results(tmp_path, tiny_zoo, finished, sweep_registry):
    path = write_sweep(tmp_path, tiny_zoo, preferences=CORNERS, methods=LINEAR)
    result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                ["run", str(path), "--workers", "2", "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["ran"] == 2
    _same_as_in_process(tmp_path / "out", finished)


@pytest.mark.slow  # a local Ray cluster and its workers: ~60 s on 2 busy cores
def test_ray_gives_the_same_results_and_cache(tmp_path, tiny_zoo, finished, sweep_registry):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        path = write_sweep(tmp_path, tiny_zoo, preferences=CORNERS, methods=LINEAR)
        options = SweepOptions(executor="ray", workers=2)
        line = run_sweep(load_recipe(path), sweep_registry, options=options)
        assert (line["ran"], line["failed"]) == (2, 0)
        _same_as_in_process(tmp_path / "out", finished)
        # a point whose stored model is gone fails on Ray; the other is re-scored
        records = read_results(tmp_path / "out" / "results.jsonl")
        shutil.rmtree(tmp_path / "out" / "points" / records[0]["point"] / "model")
        result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                    ["run", str(path), "--executor", "ray", "--workers", "2",
                                     "--evaluate-only", "-q"])
        assert result.exit_code == 1 and "1 of 2 points failed" in result.stderr
        last = read_results(tmp_path / "out" / "results.jsonl")[2:]
        assert sorted(r["status"] for r in last) == ["failed", "ok"]
    finally:
        ray.shutdown()
    # the cache Ray filled is the local one: nothing to do in this process
    line = run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    assert (line["cached"], line["ran"]) == (2, 0)
