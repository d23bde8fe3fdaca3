"""The demo's comparison table, from stored results.json files."""

from __future__ import annotations

import json

from prefkit.demo import report


def _results(folder, scores, majority=0.5):
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({
        "settings": {"split": "test", "num_samples": 10, "max_length": 64, "seed": 0},
        "tasks": {t: {"accuracy": a, "majority": majority, "n": 10} for t, a in scores.items()}}))
    return folder


def test_table_lists_majority_finetuned_base_and_merges(tmp_path, monkeypatch):
    base = _results(tmp_path / "demo_base", {"x": 0.5, "y": 0.25})
    ties = _results(tmp_path / "demo_ties", {"x": 0.75, "y": 0.5})
    monkeypatch.setattr(report, "finetuned_results",
                        lambda zoo, task, settings, registry: {"accuracy": {"x": 0.9, "y": 0.8}[task]})
    text = report.table(tmp_path / "zoo", [base, ties], registry=None)
    assert text.splitlines() == [
        "accuracy on test, 10 examples per task",
        "task  majority  fine-tuned  base   demo_ties",
        "x     0.500     0.900       0.500  0.750",
        "y     0.500     0.800       0.250  0.500",
        "mean            0.850       0.375  0.625",
    ]  # no trailing spaces
