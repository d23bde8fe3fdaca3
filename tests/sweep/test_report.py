"""The study report from a stored results.jsonl (and the points' examples.npz): its tables against
the statistics functions and hand-computed values, the summary, the figures, the HTML, old records
without the new fields, `prefkit report`."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from prefkit.errors import DataError
from prefkit.moo.stats import (
    bootstrap_ci,
    gain_non_uniformity,
    hypervolume_ci,
    mean_ci,
    normalised_gain,
    paired_bootstrap,
    ray_angle,
)
from prefkit.sweeps.report import collect, write_report
from prefkit.sweeps.store import append_line, read_results

pytest.importorskip("matplotlib")

# method -> [(preference, (score task x, score task y))]
POINTS = {
    "a": [([1.0, 0.0], (0.8, 0.2)), ([0.5, 0.5], (0.6, 0.6)), ([0.0, 1.0], (0.2, 0.8))],
    "b": [([1.0, 0.0], (0.5, 0.1)), ([0.5, 0.5], (0.4, 0.4)), ([0.0, 1.0], (0.1, 0.5))],
}


def record(method: str, i: int, pref, scores, **extra) -> dict:
    """An old-style record: no seed, grid, cost, examples, majority."""
    return {"point": f"{method}_{i}", "key": f"k-{method}-{i}", "eval_key": "e", "label": method,
            "merge_method": "ties" if method == "b" else "linear", "parameters": None,
            "train": None, "preference": pref, "tasks": ["x", "y"],
            "evaluate": {"split": "test"}, "status": "ok", "seconds": 2.0 if method == "a" else 1.0,
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


# ---- a realistic synthetic study: 3 tasks, 6 preferences, seeds, examples, cost, λ, a grid

TASKS = ("sent", "topic", "rel")
MAJORITY = {"sent": 0.5, "topic": 0.3, "rel": 0.6}
PREFS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5],
         [0.0, 0.5, 0.5]]
N = 300
# label -> (family, grid, quality, seeds, wall seconds, merge method)
METHODS = {
    "task_arithmetic": ("task_arithmetic", None, 0.35, [0, 1, 2], 3.0, "task_arithmetic"),
    "ties": ("ties", None, 0.45, [0, 1, 2], 4.0, "ties"),
    "adamerging": ("adamerging", None, 0.55, [0], 40.0, "adamerging"),
    "chebyshev steps=20": ("chebyshev", {"train.steps": 20}, 0.50, [0], 60.0, "chebyshev"),
    "chebyshev steps=60": ("chebyshev", {"train.steps": 60}, 0.70, [0], 150.0, "chebyshev"),
}
LAYERS = [f"layer.{i}" for i in range(6)] + ["embeddings", "pooler"]


def _indices(seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(100 + seed).choice(2000, N, replace=False))


def _difficulty(task: str) -> np.ndarray:
    return np.random.default_rng(sum(map(ord, task))).random(2000)  # per dataset index, shared


def _study_point(out: Path, label: str, j: int, pref, seed: int) -> dict:
    family, grid, quality, _, wall, method = METHODS[label]
    rng = np.random.default_rng([j, seed, len(label)])
    name = f"{re.sub('[^a-z0-9]+', '_', label)}_p{j}_s{seed}"
    folder = out / "points" / name
    folder.mkdir(parents=True)
    arrays, results = {}, {}
    for t, w in zip(TASKS, pref):
        target = MAJORITY[t] + (1 - MAJORITY[t]) * quality * (0.35 + 0.65 * w) + rng.normal(0, 0.02)
        index = _indices(seed)
        correct = _difficulty(t)[index] < target
        arrays.update({f"{t}.index": index, f"{t}.correct": correct,
                       f"{t}.loss": rng.random(N).astype(np.float32)})
        results[t] = {"accuracy": float(correct.mean()), "macro_f1": float(correct.mean()) * 0.9,
                      "n": N, "majority": MAJORITY[t], "split": "test", "loss": 1.0 - correct.mean()}
    np.savez(folder / "examples.npz", **arrays)
    train_s = 0.0 if grid is None and method != "adamerging" else wall - 3.0  # tensor methods: 0
    rec = {"point": name, "key": f"k-{name}", "eval_key": "e", "label": label, "family": family,
           "grid": grid, "seed": seed, "merge_method": method, "parameters": None,
           "train": {"seed": seed, **({"steps": grid["train.steps"]} if grid else {})},
           "preference": pref, "tasks": list(TASKS), "status": "ok", "results": results,
           "evaluate": {"split": "test", "num_samples": N, "seed": seed}, "examples": "examples.npz",
           "seconds": wall, "cost": {"wall_s": wall * (1 + 0.1 * seed), "cpu_s": 1.8 * wall,
                                     "merge_s": 1.0, "eval_s": 2.0, "train_s": train_s,
                                     "train_cached": False, "device": "cpu", "threads": 2}}
    if method == "adamerging":
        base = np.linspace(0.2, 0.4, len(LAYERS))
        rec["learned"] = {"lambda": {t: {g: float(base[k] + 0.3 * w) for k, g in enumerate(LAYERS)}
                                     for t, w in zip(TASKS, pref)}}
    return rec


def make_study(out: Path) -> Path:
    out.mkdir(parents=True)
    zoo = out.parent / "zoo"
    for t in TASKS:
        (zoo / t).mkdir(parents=True)
        (zoo / t / "prefkit-demo.json").write_text(json.dumps({"results": {"train_seconds": 100.0}}))
    for label, (_, _, _, seeds, _, _) in METHODS.items():
        for j, pref in enumerate(PREFS):
            for seed in seeds:
                rec = _study_point(out, label, j, pref, seed)
                append_line(out / "results.jsonl", rec)
    first = next((out / "points").iterdir())
    (first / "recipe.yaml").write_text("models:\n" + "".join(
        f"  - {{model: {zoo / t}, task: {t}}}\n" for t in TASKS))
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict]:
    out = make_study(tmp_path_factory.mktemp("study") / "out")
    return out, write_report(out)


def _png_size(path) -> tuple[int, int]:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _points(out: Path, method: str):

    return [p for p in collect(read_results(out / "results.jsonl")).points if p.method == method]


def _examples(out: Path, point) -> dict[str, np.ndarray]:
    with np.load(out / "points" / point.record["point"] / "examples.npz") as data:
        return {t: data[f"{t}.correct"] for t in TASKS}


# ---- old records (no seed, cost, examples, majority): hand-computed values


def test_old_records_give_a_report_with_hand_computed_values(stored):
    result = write_report(stored)
    rows = {r["method"]: r for r in result["rows"]}
    # staircases above (0, 0): a = .2*.8 + .4*.6 + .2*.2, b = .1*.5 + .3*.4 + .1*.1
    assert rows["a"]["hypervolume"] == pytest.approx(0.44)
    assert rows["b"]["hypervolume"] == pytest.approx(0.18)
    assert rows["a"]["mean"] == pytest.approx((0.5 + 0.6 + 0.5) / 3)
    assert rows["b"]["mean"] == pytest.approx((0.3 + 0.4 + 0.3) / 3)
    assert rows["a"]["best"] == pytest.approx({"x": 0.8, "y": 0.8})
    assert rows["a"]["points"] == 3 and rows["a"]["front"] == 3 and rows["a"]["seeds"] == 1
    # one seed, no per-example results, no majority: no interval, no preference following
    assert rows["a"]["hypervolume_ci"] is None and rows["a"]["interval"] is None
    assert rows["a"]["ray_angle"] is None and rows["a"]["alignment"] is None
    assert rows["a"]["cost"]["wall_s"] == 2.0 and rows["b"]["cost"]["total_wall_s"] == 3.0
    text = Path(result["report"]).read_text()
    assert "| a | 3 | 1 | 3 | 0.4400 | 0.5333 | – | – | 2.00 |" in text
    assert "| b | 3 | 1 | 3 | 0.1800 | 0.3333 | – | – | 1.00 |" in text
    assert "**a** has the highest hypervolume, 0.4400; next is b's 0.1800" in text
    assert "- a vs b: not tested (3 common preferences" in text
    assert "## Failed points" in text and "CheckpointError: boom" in text
    assert "| a | [0.50, 0.50] | – | 0.6000 | 0.6000 | 0.6000 |" in text  # the latest line counts
    assert "not recorded (0 model folders found" in text
    assert [Path(p).name for p in result["plots"]] == ["fronts.png", "score_vs_preference.png",
                                                       "cost_quality.png"]
    for png in result["plots"]:
        _png_size(png)


def test_report_command_rebuilds_the_same_files(stored):
    cli = build_cli(lambda: None)
    first = CliRunner().invoke(cli, ["report", str(stored), "-q"])
    assert first.exit_code == 0, first.stderr
    files = {p.name: p.read_bytes() for p in stored.iterdir() if p.name != "results.jsonl"}
    assert sorted(files) == ["cost_quality.png", "fronts.png", "report.md", "score_vs_preference.png"]
    second = CliRunner().invoke(cli, ["report", str(stored)])
    assert second.exit_code == 0
    assert {p.name: p.read_bytes() for p in stored.iterdir() if p.name in files} == files
    out = json.loads(second.stdout)
    assert [r["method"] for r in out["methods"]] == ["a", "b"] and "html" not in out
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


def test_fronts_figure_draws_each_methods_front(stored):
    from prefkit.sweeps.figures import fronts_figure
    from prefkit.sweeps.report import analyse

    found = analyse(stored)
    fig = fronts_figure(found["study"], found["groups"])
    ax = fig.axes[0]
    fronts = {line.get_label()[len("_front "):]: line.get_xydata().tolist() for line in ax.lines
              if line.get_label().startswith("_front ")}
    assert fronts == {"a": [[0.2, 0.8], [0.6, 0.6], [0.8, 0.2]],
                      "b": [[0.1, 0.5], [0.4, 0.4], [0.5, 0.1]]}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    assert ax.get_xlabel() == "x (accuracy)" and ax.get_ylabel() == "y (accuracy)"


def test_report_errors_are_one_line(tmp_path, stored):
    result = CliRunner().invoke(build_cli(lambda: None), ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert result.stderr.strip() == (f"Error: {tmp_path / 'nothing' / 'results.jsonl'}: no such file "
                                     "(give the output folder of a sweep)")
    with pytest.raises(DataError, match="has no 'f1' for x, y"):
        write_report(stored, metric="f1")


# ---- the synthetic study: tables against the statistics functions


def test_methods_table_equals_the_statistics(study):
    from prefkit.moo import hypervolume

    out, result = study
    rows = {r["method"]: r for r in result["rows"]}
    ties = _points(out, "ties")
    per_seed = [hypervolume(np.array([p.scores for p in ties if p.seed == s]), [0, 0, 0])
                for s in (0, 1, 2)]
    mean, low, high = mean_ci(per_seed)
    assert rows["ties"]["hypervolume"] == pytest.approx(mean)
    assert rows["ties"]["hypervolume_ci"] == pytest.approx([low, high])
    assert rows["ties"]["interval"] == "t over seeds" and rows["ties"]["seeds"] == 3
    ada = _points(out, "adamerging")
    loaded = [_examples(out, p) for p in ada]
    examples = {t: np.stack([e[t] for e in loaded]) for t in TASKS}
    expected = hypervolume_ci([np.array([p.scores for p in ada])], examples=examples)
    assert rows["adamerging"]["interval"] == "bootstrap over examples"
    assert rows["adamerging"]["hypervolume"] == pytest.approx(expected[0])
    assert rows["adamerging"]["hypervolume_ci"] == pytest.approx(list(expected[1:]))
    text = Path(result["report"]).read_text()
    r = rows["adamerging"]
    assert (f"| adamerging | 6 | 1 | {r['front']} | {r['hypervolume']:.4f} "
            f"[{r['hypervolume_ci'][0]:.4f}, {r['hypervolume_ci'][1]:.4f}] |") in text
    angles = []
    for p in ada:
        gain = normalised_gain([p.record["results"][t]["accuracy"] for t in TASKS],
                               [MAJORITY[t] for t in TASKS])
        angles.append(ray_angle(gain, p.preference))
    assert r["ray_angle"] == pytest.approx(np.mean(angles))
    assert r["alignment"] == pytest.approx(np.mean(np.cos(np.radians(angles))))


def test_per_task_table_equals_the_statistics(study):
    out, result = study
    groups = {(g["method"], tuple(g["preference"])): g for g in result["groups"]}
    vertex = (1.0, 0.0, 0.0)
    ada = next(p for p in _points(out, "adamerging") if tuple(p.preference) == vertex)
    correct = _examples(out, ada)
    est, low, high = bootstrap_ci(lambda s: np.array([np.mean(s[t]) for t in TASKS]), correct)
    cell = groups[("adamerging", vertex)]["tasks"]
    for j, t in enumerate(TASKS):
        assert cell[t]["mean"] == pytest.approx(est[j])
        assert cell[t]["ci"] == pytest.approx([low[j], high[j]])
    ties = [p for p in _points(out, "ties") if tuple(p.preference) == (0.5, 0.5, 0.0)]
    g = groups[("ties", (0.5, 0.5, 0.0))]
    for j, t in enumerate(TASKS):
        m, lo, hi = mean_ci([p.scores[j] for p in ties])
        assert g["tasks"][t]["mean"] == pytest.approx(m) and g["tasks"][t]["ci"] == pytest.approx([lo, hi])
    weighted = [0.5 * p.scores[0] + 0.5 * p.scores[1] for p in ties]
    assert g["weighted"]["mean"] == pytest.approx(np.mean(weighted))
    expected_nu = [gain_non_uniformity(normalised_gain([p.record["results"][t]["accuracy"]
                                                        for t in TASKS], [MAJORITY[t] for t in TASKS]),
                                       p.preference) for p in ties]
    assert g["non_uniformity"] == pytest.approx(np.mean(expected_nu))
    text = Path(result["report"]).read_text()
    c = cell["sent"]
    cell_text = f"{c['mean']:.3f} [{c['ci'][0]:.3f}, {c['ci'][1]:.3f}]"
    assert f"| adamerging | [1.00, 0.00, 0.00] | 1 | {cell_text} |" in text


def test_paired_comparisons_equal_the_statistics(study):
    out, result = study
    pairs = {(c["a"], c["b"]): c for c in result["comparisons"]}
    pref = (0.5, 0.5, 0.0)
    ada = next(p for p in _points(out, "adamerging") if tuple(p.preference) == pref)
    ties0 = next(p for p in _points(out, "ties") if tuple(p.preference) == pref and p.seed == 0)
    expected = paired_bootstrap(_examples(out, ada), _examples(out, ties0), dict(zip(TASKS, pref)))
    detail = next(d for d in pairs[("adamerging", "ties")]["details"] if tuple(d["preference"]) == pref)
    assert detail["test"] == "paired bootstrap" and detail["difference"] == pytest.approx(expected.difference)
    assert detail["p_value"] == pytest.approx(expected.p_value)
    accs = {m: [{t: p.record["results"][t]["accuracy"] for t in TASKS} for p in _points(out, m)
                if tuple(p.preference) == pref] for m in ("task_arithmetic", "ties")}
    t_test = paired_bootstrap(accs["task_arithmetic"], accs["ties"], dict(zip(TASKS, pref)))
    detail = next(d for d in pairs[("task_arithmetic", "ties")]["details"]
                  if tuple(d["preference"]) == pref)
    assert detail["test"] == "paired t-test" and detail["p_value"] == pytest.approx(t_test.p_value)
    text = Path(result["report"]).read_text()
    for (a, b), c in pairs.items():
        assert c["tested"] == 6
        wins = sum(d["p_value"] < 0.05 and d["difference"] > 0 for d in c["details"])
        losses = sum(d["p_value"] < 0.05 and d["difference"] < 0 for d in c["details"])
        assert (c["a_better"], c["b_better"]) == (wins, losses)
        assert (f"- {a} better than {b} at p<0.05 on {wins} of 6 preferences ({b} better on "
                f"{losses})") in text


def test_summary_cost_budget_and_lambda(study):
    out, result = study
    rows = {r["method"]: r for r in result["rows"]}
    best = max(rows.values(), key=lambda r: r["hypervolume"])["method"]
    assert best == "chebyshev steps=60"  # the synthetic study's strongest method
    text = Path(result["report"]).read_text()
    summary = text.split("## What this shows")[1].split("## Methods")[0]
    assert f"**{best}** has the highest hypervolume" in summary
    cheapest = min(rows.values(), key=lambda r: r["cost"]["wall_s"])
    ratio = rows[best]["cost"]["wall_s"] / cheapest["cost"]["wall_s"]
    assert cheapest["method"] == "task_arithmetic" and f"takes {ratio:.1f}× the wall time" in summary
    assert rows["ties"]["cost"]["wall_s"] == pytest.approx(4.0 * 1.1)  # seeds 0, 1, 2: × 1, 1.1, 1.2
    assert rows["ties"]["cost"]["total_wall_s"] == pytest.approx(6 * 4.0 * 3.3)
    assert rows["ties"]["cost"]["train_s"] is None and rows["ties"]["cost"]["trained"] == 0
    assert rows["chebyshev steps=60"]["cost"]["train_s"] == pytest.approx(147.0)
    assert result["zoo"]["total_s"] == 300.0 and result["zoo"]["known"] == 3
    assert "fine-tuning 3 of 3 input models took 300.0 s" in text
    budget = [g for g in result["grid"] if g["setting"] == "train.steps"]
    assert [(g["value"], g["method"]) for g in budget] == [(20, "chebyshev steps=20"),
                                                           (60, "chebyshev steps=60")]
    assert budget[1]["hypervolume"] == rows["chebyshev steps=60"]["hypervolume"]
    assert "| chebyshev | train.steps | 60 | chebyshev steps=60 | 1 |" in text
    lam = {tuple(r["preference"]): r for r in result["lambdas"]}
    assert lam[(1.0, 0.0, 0.0)]["granularity"] == "layer" and len(lam[(1.0, 0.0, 0.0)]["groups"]) == 8
    assert lam[(1.0, 0.0, 0.0)]["tasks"]["sent"] == pytest.approx(0.3 + 0.3)
    assert lam[(1.0, 0.0, 0.0)]["range"]["topic"] == pytest.approx([0.2, 0.4])
    assert "## Learned coefficients (AdaMerging λ)" in text and "0.600 (0.500–0.700)" in text


def test_figures_are_written_with_sensible_sizes(study):
    out, result = study
    names = [Path(p).name for p in result["plots"]]
    assert names == ["fronts.png", "ternary.png", "score_vs_preference.png", "cost_quality.png",
                     "lambda_adamerging.png", "budget.png"]
    for png in result["plots"]:
        width, height = _png_size(png)
        assert 500 <= width <= 2200 and 350 <= height <= 1600, (png, width, height)
        assert f"![{Path(png).stem}]({Path(png).name})" in Path(result["report"]).read_text()


def test_html_is_self_contained(study):
    from prefkit.sweeps.html import write_html

    out, result = study
    page = write_html(out)
    assert page == out / "report.html"
    text = page.read_text()
    assert "http" not in text and "<link" not in text and "<script" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == len(result["plots"]) and all(s.startswith("data:image/png;base64,")
                                                         for s in sources)
    for s in sources:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<h2>What this shows</h2>" in text and text.count("<table>") >= 6
    assert "<td>chebyshev steps=60</td>" in text


def test_other_grid_keys_get_their_own_rows(tmp_path):
    out = tmp_path / "mu"
    out.mkdir()
    for i, (mu, pref, scores) in enumerate([(0.1, [1.0, 0.0], (0.7, 0.3)), (0.1, [0.0, 1.0], (0.3, 0.7)),
                                            (0.5, [1.0, 0.0], (0.6, 0.4)), (0.5, [0.0, 1.0], (0.4, 0.6))]):
        rec = record(f"epo mu={mu}", i, pref, scores, family="epo", grid={"train.mu": mu}, seed=None)
        append_line(out / "results.jsonl", rec)
    result = write_report(out, plots=False)
    assert [(g["setting"], g["value"], g["hypervolume"]) for g in result["grid"]] == [
        ("train.mu", 0.1, pytest.approx(0.7 * 0.3 + 0.3 * 0.4)),
        ("train.mu", 0.5, pytest.approx(0.6 * 0.4 + 0.4 * 0.2))]
    text = Path(result["report"]).read_text()
    assert "## Budget and swept settings" in text and "| epo | train.mu | 0.1 | epo mu=0.1 |" in text


def test_ray_angle_tells_vertex_points_apart_in_the_report(tmp_path):
    out = tmp_path / "vertex"
    out.mkdir()
    for i, scores in enumerate([(0.8, 0.55), (0.8, 0.9)]):  # both at [1, 0]; majority 0.5
        rec = record(f"m{i}", i, [1.0, 0.0], scores)
        for t in rec["results"]:
            rec["results"][t]["majority"] = 0.5
        append_line(out / "results.jsonl", rec)
    points = {r["method"]: r for r in write_report(out, plots=False)["points"]}
    # gains (0.6, 0.1) and (0.6, 0.8): angles atan(0.1/0.6) and atan(0.8/0.6)
    assert points["m0"]["ray_angle"] == pytest.approx(math.degrees(math.atan2(0.1, 0.6)))
    assert points["m1"]["ray_angle"] == pytest.approx(math.degrees(math.atan2(0.8, 0.6)))
    assert points["m0"]["non_uniformity"] == points["m1"]["non_uniformity"] == 0.0


def test_report_command_writes_html(study):
    out, _ = study
    ran = CliRunner().invoke(build_cli(lambda: None), ["report", str(out), "--html"])
    assert ran.exit_code == 0, ran.stderr
    page = Path(json.loads(ran.stdout)["html"])
    assert page == out / "report.html" and f"wrote {page}" in ran.stderr
    assert page.read_text().count('src="data:image/png;base64,') == 6
