"""Tracking and logs: W&B in offline mode, log formats and the log file."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from prefkit.cli import build_cli
from tests.sweep.conftest import by_key, copy_sweep


@pytest.fixture
def hermetic_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)


def test_wandb_offline_run_holds_the_points_and_the_summary(finished, tmp_path, sweep_registry,
                                                            hermetic_wandb):
    path = copy_sweep(finished, tmp_path)
    path.write_text(path.read_text() + "wandb: {mode: offline, project: prefkit-test, "
                    "group: demo-group, tags: [sweep-test]}\n")
    result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                ["run", str(path), "--workers", "0", "-q"])
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    data = runs[0].read_bytes()
    for text in ("prefkit-test", "demo-group", "sweep-test", "accuracy/toy_a", "preference/toy_b",
                 "linear/hypervolume", "ties/alignment"):
        assert text.encode() in data, text
    # the logged values are the sweep's own (W&B stores them JSON-encoded)
    score = next(iter(by_key(tmp_path / "out").values()))["results"]["toy_a"]["accuracy"]
    hv = {r["method"]: r["hypervolume"] for r in line["methods"]}["linear"]
    assert json.dumps(score).encode() in data and json.dumps(hv).encode() in data


def test_disabled_wandb_writes_nothing(finished, tmp_path, sweep_registry):
    path = copy_sweep(finished, tmp_path)
    path.write_text(path.read_text() + "wandb: {mode: disabled, project: p}\n")
    result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                ["run", str(path), "--workers", "0", "-q"])
    assert result.exit_code == 0 and not (tmp_path / "out" / "wandb").exists()


def test_json_logs_on_stderr_and_in_a_file(finished, tmp_path, sweep_registry):
    path = copy_sweep(finished, tmp_path)
    log = tmp_path / "logs" / "sweep.jsonl"
    result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                ["run", str(path), "--workers", "0", "--log-format", "json",
                                 "--log-file", str(log)])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(x) for x in log.read_text().splitlines()]
    cached = [r for r in records if r["message"].startswith("cached")]
    assert len(cached) == 6
    assert {r["logger"] for r in cached} == {"prefkit.sweeps.run"}
    assert all(r["level"] == "info" and r["cached"] is True and r["status"] == "ok" for r in cached)
    assert sorted(r["point"] for r in cached) == sorted(
        r["point"] for r in by_key(tmp_path / "out").values())
    stderr_json = [json.loads(x) for x in result.stderr.splitlines() if x.startswith("{")]
    assert [r["message"] for r in stderr_json] == [r["message"] for r in records]


def test_recipe_logging_block_sets_level_and_format(finished, tmp_path, sweep_registry):
    path = copy_sweep(finished, tmp_path)
    log = tmp_path / "detailed.log"
    path.write_text(path.read_text() + f"logging: {{level: warning, format: detailed, file: {log}}}\n")
    result = CliRunner().invoke(build_cli(lambda: sweep_registry), ["run", str(path), "--workers", "0"])
    assert result.exit_code == 0
    assert "INFO" not in result.stderr and "cached  linear" not in result.stderr
    assert log.read_text() == ""
    result = CliRunner().invoke(build_cli(lambda: sweep_registry),
                                ["run", str(path), "--workers", "0", "--log-level", "info"])
    lines = [x for x in log.read_text().splitlines() if " cached " in x]
    assert len(lines) == 6
    # detailed: time, level, logger, process, message
    parts = lines[0].split(" ", 5)
    assert parts[2:4] == ["INFO", "prefkit.sweeps.run"] and parts[4] == "[MainProcess]"
