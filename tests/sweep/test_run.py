"""Running sweeps in this process: every point stored as an ordinary recipe, cache hits, resume
after a crash, --evaluate-only, keep_models: false, failed points."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

import prefkit.runner as runner
from prefkit.cli import build_cli
from prefkit.recipe import load_recipe
from prefkit.sweeps import SweepOptions, is_sweep
from prefkit.sweeps.run import run_sweep
from prefkit.sweeps.store import read_results
from tests.sweep.conftest import IN_PROCESS, TWO_METHODS, by_key, copy_sweep, write_sweep


@pytest.fixture
def counted(monkeypatch):
    """Counts merges (run_recipe) and scorings (evaluate_output) in this process."""
    calls = {"merge": 0, "score": 0}
    merge, score = runner.run_recipe, runner.evaluate_output

    def counting_merge(*args, **kw):
        calls["merge"] += 1
        return merge(*args, **kw)

    def counting_score(*args, **kw):
        calls["score"] += 1
        return score(*args, **kw)

    monkeypatch.setattr(runner, "run_recipe", counting_merge)
    monkeypatch.setattr(runner, "evaluate_output", counting_score)
    return calls


def test_every_point_is_an_ordinary_stored_recipe(finished, sweep_registry, tmp_path):
    folder, line = finished
    out = folder / "out"
    assert (line["points"], line["ran"], line["cached"], line["failed"]) == (6, 6, 0, 0)
    records = read_results(out / "results.jsonl")
    assert len(records) == 6 and all(r["status"] == "ok" and r["merged"] for r in records)
    assert sorted((r["label"], tuple(r["preference"])) for r in records) == sorted(
        (m, p) for m in ("linear", "ties") for p in ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0)))
    for record in records:
        point = out / "points" / record["point"]
        assert json.loads((point / "result.json").read_text()) == record
        assert set(record["results"]) == {"toy_a", "toy_b"}
        assert (point / "model" / "prefkit.json").is_file()
    # a point's recipe runs on its own and scores the same
    record = records[4]
    recipe = load_recipe(out / "points" / record["point"] / "recipe.yaml")
    assert not is_sweep(recipe) and recipe.recipe.preference == record["preference"]
    alone = runner.run_recipe(recipe, sweep_registry, output=tmp_path / "alone",
                              options=runner.RunOptions(quiet=True))
    assert alone.scores == record["results"]
    assert (out / "report.md").is_file() and (out / "sweep.yaml").is_file()


def test_rerun_of_a_finished_sweep_does_no_work(finished, tmp_path, sweep_registry, counted):
    path = copy_sweep(finished, tmp_path)
    before = (tmp_path / "out" / "results.jsonl").read_text()
    line = run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    assert (line["cached"], line["ran"]) == (6, 0)
    assert counted == {"merge": 0, "score": 0}
    assert (tmp_path / "out" / "results.jsonl").read_text() == before  # nothing appended
    # a lost results.jsonl is rebuilt from the points' result.json files, still without work
    (tmp_path / "out" / "results.jsonl").unlink()
    run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    assert counted == {"merge": 0, "score": 0}
    rebuilt = by_key(tmp_path / "out")
    assert all(r["cached"] for r in rebuilt.values())
    assert {k: r["results"] for k, r in rebuilt.items()} == {
        k: r["results"] for k, r in by_key(finished[0] / "out").items()}


def test_resume_after_a_simulated_crash(finished, tmp_path, tiny_zoo, sweep_registry, monkeypatch):
    path = write_sweep(tmp_path, tiny_zoo, methods=TWO_METHODS)
    score, merge = runner.evaluate_output, runner.run_recipe
    calls = {"merge": 0, "score": 0, "crash": True}

    def crash_on_third(*args, **kw):  # the process dies after merging the third point
        calls["score"] += 1
        if calls["crash"] and calls["score"] == 3:
            raise KeyboardInterrupt
        return score(*args, **kw)

    def counting_merge(*args, **kw):
        calls["merge"] += 1
        return merge(*args, **kw)

    monkeypatch.setattr(runner, "evaluate_output", crash_on_third)
    monkeypatch.setattr(runner, "run_recipe", counting_merge)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    out = tmp_path / "out"
    assert len(read_results(out / "results.jsonl")) == 2
    points = [p for p in (out / "points").iterdir() if (p / "recipe.yaml").is_file()]
    assert sum((p / "result.json").is_file() for p in points) == 2
    assert sum((p / "model" / "prefkit.json").is_file() for p in points) == 3
    assert not list(out.rglob(".*prefkit-tmp*"))  # no half-written model anywhere
    # resume: the merged-but-unscored point is only scored, the other three merged and scored
    calls.update(merge=0, score=0, crash=False)
    line = run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    assert (line["cached"], line["ran"], calls["merge"], calls["score"]) == (2, 4, 3, 4)
    records = by_key(out)
    assert sorted(r["merged"] for r in records.values()) == [False, True, True, True, True, True]
    assert {k: r["results"] for k, r in records.items()} == {
        k: r["results"] for k, r in by_key(finished[0] / "out").items()}


def test_evaluate_only_rescores_stored_models(finished, tmp_path, sweep_registry, counted):
    path = copy_sweep(finished, tmp_path)
    path.write_text(path.read_text().replace("max_length: 16", "max_length: 12"))
    options = SweepOptions(workers=0, evaluate_only=True)
    line = run_sweep(load_recipe(path), sweep_registry, options=options)
    assert (line["ran"], counted["merge"], counted["score"]) == (6, 0, 6)
    records = read_results(tmp_path / "out" / "results.jsonl")
    assert len(records) == 12
    old = {r["key"]: r["eval_key"] for r in records[:6]}
    assert sorted(old) == sorted(r["key"] for r in records[6:])  # the same models...
    assert all(old[r["key"]] != r["eval_key"] for r in records[6:])  # ...scored anew
    assert [r["evaluate"]["max_length"] for r in records[6:]] == [12] * 6
    # a point whose model is gone fails; the others are re-scored; the sweep says so
    gone = records[7]["point"]
    shutil.rmtree(tmp_path / "out" / "points" / gone / "model")
    result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                ["run", str(path), "--evaluate-only", "--workers", "0", "-q"])
    assert result.exit_code == 1
    assert f"{tmp_path / 'out'}: 1 of 6 points failed" in result.stderr
    assert json.loads(result.stdout)["status"] == "failed"
    last = read_results(tmp_path / "out" / "results.jsonl")[12:]
    assert sorted(r["status"] for r in last) == ["failed"] + ["ok"] * 5
    failed = next(r for r in last if r["status"] == "failed")
    assert failed["point"] == gone and "no stored model to re-score" in failed["error"]
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failed points" in report and "no stored model to re-score" in report


def test_keep_models_false_keeps_only_results(tmp_path, tiny_zoo, sweep_registry, counted):
    path = write_sweep(tmp_path, tiny_zoo, preferences="[[1, 3], [3, 1]]",
                       methods="  - {merge_method: linear}\n", extra="keep_models: false\n")
    """An unkept tensor merge is merged and scored in memory (no run_recipe, no model folder
    written: tests/sweep/test_fast_points.py shows the scores equal the on-disk path's)."""
    line = run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    assert line["ran"] == 2 and counted == {"merge": 0, "score": 0}
    points = list((tmp_path / "out" / "points").iterdir())
    assert len(points) == 2
    for point in points:
        assert sorted(p.name for p in point.iterdir()) == ["examples.npz", "recipe.yaml",
                                                           "result.json"]
        assert json.loads((point / "result.json").read_text())["model"] is None
    line = run_sweep(load_recipe(path), sweep_registry, options=IN_PROCESS)
    assert line["cached"] == 2 and counted == {"merge": 0, "score": 0}


def test_force_runs_every_point_again(finished, tmp_path, sweep_registry, counted):
    path = copy_sweep(finished, tmp_path)
    result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                ["run", str(path), "--force", "--workers", "0", "-q"])
    assert result.exit_code == 0, result.stderr
    assert counted == {"merge": 6, "score": 6}
    assert json.loads(result.stdout)["ran"] == 6
