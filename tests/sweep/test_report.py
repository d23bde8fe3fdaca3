"""The report from a stored results.jsonl alone: the table against hand-computed values, the
latest line of each point, plots, `prefkit report`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.errors import DataError
from prefkit.sweeps.report import collect, write_report
from prefkit.sweeps.store import append_line, read_results

pytest.importorskip("matplotlib")

# method -> [(preference, (score task x, score task y))]
POINTS = {
    "a": [([1.0, 0.0], (0.8, 0.2)), ([0.5, 0.5], (0.6, 0.6)), ([0.0, 1.0], (0.2, 0.8))],
    "b": [([1.0, 0.0], (0.5, 0.1)), ([0.5, 0.5], (0.4, 0.4)), ([0.0, 1.0], (0.1, 0.5))],
}


def record(method: str, i: int, pref, scores, **extra) -> dict:
    return {"point": f"{method}_{i}", "key": f"k-{method}-{i}", "eval_key": "e", "label": method,
            "merge_method": "ties" if method == "b" else "linear", "parameters": None,
            "train": None, "preference": pref, "tasks": ["x", "y"],
            "evaluate": {"split": "test"}, "status": "ok",
            "results": {t: {"accuracy": s, "macro_f1": s / 2, "n": 10} for t, s in zip("xy", scores)},
            **extra}


@pytest.fixture
def stored(tmp_path) -> Path:
    """A sweep folder holding only results.jsonl: an old line superseded, a failure."""
    out = tmp_path / "sweep"
    out.mkdir()
    append_line(out / "results.jsonl", record("a", 1, [0.5, 0.5], (0.1, 0.1)))  # superseded below
    for method, points in POINTS.items():
        for i, (pref, scores) in enumerate(points):
            append_line(out / "results.jsonl", record(method, i, pref, scores))
    append_line(out / "results.jsonl", {**record("b", 9, [0.3, 0.7], (0, 0)), "status": "failed",
                                        "results": None, "error": "CheckpointError: boom"})
    return out


def test_table_matches_hand_computed_values(stored):
    result = write_report(stored)
    rows = {r["method"]: r for r in result["rows"]}
    # staircases above (0, 0): a = .2*.8 + .4*.6 + .2*.2, b = .1*.5 + .3*.4 + .1*.1
    assert rows["a"]["hypervolume"] == pytest.approx(0.44)
    assert rows["b"]["hypervolume"] == pytest.approx(0.18)
    assert rows["a"]["mean"] == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert rows["b"]["mean"] == pytest.approx((0.3 + 0.4 + 0.3) / 3)
    assert rows["a"]["best"] == pytest.approx({"x": 0.8, "y": 0.8})
    assert rows["a"]["points"] == 3 and rows["a"]["front"] == 3
    # alignment: gains on the scale of all points (min 0.1, max 0.8 on both tasks)
    cosines = []
    for pref, scores in POINTS["a"]:
        gain = (np.array(scores) - 0.1) / 0.7
        cosines.append(gain @ pref / (np.linalg.norm(gain) * np.linalg.norm(pref)))
    assert rows["a"]["alignment"] == pytest.approx(np.mean(cosines))
    # b is dominated but follows each preference exactly: gains (4/7, 0), (3/7, 3/7), (0, 4/7)
    assert rows["b"]["alignment"] == pytest.approx(1.0)
    text = Path(result["report"]).read_text()
    assert "| a | 3 | 3 | 0.4400 | 0.5333 | 0.8000 | 0.8000 |" in text
    assert "| b | 3 | 3 | 0.1800 | 0.3333 | 0.5000 | 0.5000 |" in text
    assert "## Failed points" in text and "CheckpointError: boom" in text
    assert "| a | [0.50, 0.50] | 0.6000 | 0.6000 | 0.6000 |" in text  # the latest line counts
    assert [Path(p).name for p in result["plots"]] == ["front.png", "score_vs_preference.png"]
    for png in result["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_rebuilds_the_same_files(stored):
    cli = build_cli(lambda: None)
    first = CliRunner().invoke(cli, ["report", str(stored), "-q"])
    assert first.exit_code == 0, first.stderr
    files = {p.name: p.read_bytes() for p in stored.iterdir() if p.name != "results.jsonl"}
    assert sorted(files) == ["front.png", "report.md", "score_vs_preference.png"]
    second = CliRunner().invoke(cli, ["report", str(stored)])
    assert second.exit_code == 0
    assert {p.name: p.read_bytes() for p in stored.iterdir() if p.name in files} == files
    out = json.loads(second.stdout)
    assert [r["method"] for r in out["methods"]] == ["a", "b"]
    assert "hypervol" in second.stderr and "wrote" in second.stderr


def test_reference_and_metric_options(stored):
    result = CliRunner().invoke(build_cli(lambda: None),
                                ["report", str(stored), "--reference", "0.1,0.1", "--no-plots",
                                 "--metric", "accuracy", "-q"])
    rows = {r["method"]: r for r in json.loads(result.stdout)["methods"]}
    assert rows["a"]["hypervolume"] == pytest.approx(0.1 * 0.7 + 0.4 * 0.5 + 0.2 * 0.1)
    assert json.loads(result.stdout)["plots"] == []
    half = write_report(stored, metric="macro_f1", plots=False)
    assert {r["method"]: r["hypervolume"] for r in half["rows"]}["a"] == pytest.approx(0.44 / 4)


def test_three_tasks_get_parallel_coordinates(tmp_path):
    out = tmp_path / "sweep3"
    out.mkdir()
    for i, pref in enumerate([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1 / 3, 1 / 3, 1 / 3]]):
        scores = [0.5 + 0.3 * p for p in pref]
        rec = record("a", i, pref, scores[:2])
        rec["tasks"] = ["x", "y", "z"]
        rec["results"] = {t: {"accuracy": s} for t, s in zip("xyz", scores)}
        append_line(out / "results.jsonl", rec)
    result = write_report(out)
    assert [Path(p).name for p in result["plots"]] == ["parallel_a.png", "score_vs_preference.png"]
    # every point gains only where its preference puts weight: perfectly aligned
    assert result["rows"][0]["alignment"] == pytest.approx(1.0)
    # inclusion-exclusion: 3 x .2 + .216 - (3 x .125 + 3 x .15) + 4 x .125 - .125
    assert result["rows"][0]["hypervolume"] == pytest.approx(0.366)


def test_front_figure_draws_each_methods_front(stored):
    from prefkit.sweeps.plots import front_figure

    results = collect(read_results(stored / "results.jsonl"))
    ax = front_figure(results).axes[0]
    fronts = {line.get_label(): line.get_xydata().tolist() for line in ax.lines
              if not line.get_label().startswith("_")}
    assert fronts == {"a": [[0.2, 0.8], [0.6, 0.6], [0.8, 0.2]],
                      "b": [[0.1, 0.5], [0.4, 0.4], [0.5, 0.1]]}
    rays = [line for line in ax.lines if line.get_label().startswith("_")]
    assert len(rays) == 3  # one per preference of the sweep


def test_report_errors_are_one_line(tmp_path, stored):
    result = CliRunner().invoke(build_cli(lambda: None), ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: {tmp_path / 'nothing' / 'results.jsonl'}: no such file "
                                     "(give the output folder of a sweep)")
    with pytest.raises(DataError, match="has no 'f1' for x, y"):
        write_report(stored, metric="f1")
