"""`prefkit fetch RECIPE`: download what a recipe needs from a (fake) hub, then merge with no
network at all. The end-to-end test runs each step as a real `prefkit` process, as on a cluster
(fetch on the login node, run offline on a compute node): `datasets` and `huggingface_hub` read
their endpoint and offline settings when imported, so only a fresh process sees them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from prefkit.cli import build_cli
from tests.ecosystem.hub_fixtures import lora_delta
from tests.helpers import load_tensors

RECIPE = """merge_method: task_arithmetic
base_model: someorg/tiny-base
models:
  - model: someorg/tiny-a@v1
    task: tiny
  - {model: someorg/tiny-base, lora: someorg/tiny-lora, task: tiny}
parameters: {weight: 0.5}
tasks:
  tiny: {dataset: someorg/tiny-ds, text_fields: [text], label_names: [neg, pos], splits: {test: test}}
"""
BAD = """merge_method: task_arithmetic
base_model: someorg/absent
models:
  - model: someorg/tiny-a@v9
parameters: {weight: 0.5}
"""


def _prefkit(args, cwd, env):
    code = "from prefkit.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=300)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, lines, done.stderr


def test_offline_fetch_lists_everything_missing(online, tmp_path, registry):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    cli = build_cli(lambda: registry)
    result = CliRunner().invoke(cli, ["--offline", "fetch", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 1 and online.requests == []
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["kind"], x["ref"], x["status"]) for x in lines] == [
        ("model", "someorg/tiny-base", "failed"), ("model", "someorg/tiny-a@v1", "failed"),
        ("adapter", "someorg/tiny-lora", "failed"), ("dataset", "someorg/tiny-ds", "failed")]
    assert ("recipe.yaml:2:1: base_model: model 'someorg/tiny-base' is not a local folder and it is "
            "not in the Hugging Face cache") in result.stderr
    assert "recipe.yaml:6:32: models[1].lora: adapter 'someorg/tiny-lora'" in result.stderr
    assert "Traceback" not in result.stderr

    result = CliRunner().invoke(cli, ["fetch", "--no-datasets", str(tmp_path / "recipe.yaml")])
    assert result.exit_code == 0, result.stderr
    assert [json.loads(line)["status"] for line in result.stdout.splitlines()] == ["fetched"] * 3


@pytest.mark.slow  # three prefkit processes that import torch, peft and datasets: ~50 s here
def test_fetch_then_merge_offline(fake_hub, hub_files, tmp_path):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    (tmp_path / "bad.yaml").write_text(BAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PREFKIT_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_ENDPOINT=fake_hub.url,
               PREFKIT_CACHE=str(tmp_path / "prefkit-cache"), PREFKIT_LOAD_PLUGINS="task_arithmetic")

    code, lines, err = _prefkit(["fetch", "recipe.yaml", "bad.yaml"], tmp_path, env)
    assert code == 1, err  # bad.yaml fails; recipe.yaml is fetched all the same
    assert [(x["recipe"], x["ref"], x["status"]) for x in lines] == [
        ("recipe.yaml", "someorg/tiny-base", "fetched"), ("recipe.yaml", "someorg/tiny-a@v1", "fetched"),
        ("recipe.yaml", "someorg/tiny-lora", "fetched"), ("recipe.yaml", "someorg/tiny-ds", "fetched"),
        ("bad.yaml", "someorg/absent", "failed"), ("bad.yaml", "someorg/tiny-a@v9", "failed")]
    assert "the Hugging Face hub has no repository 'someorg/absent'" in err
    assert "the hub repository 'someorg/tiny-a' has no revision 'v9'" in err

    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # from here on, nothing answers
    code, lines, err = _prefkit(["--offline", "fetch", "recipe.yaml"], tmp_path, env)
    assert code == 0, err
    assert [x["status"] for x in lines] == ["cached"] * 4
    code, lines, err = _prefkit(["--offline", "run", "recipe.yaml", "-o", "out", "-q"], tmp_path, env)
    assert code == 0, err
    assert lines[0]["status"] == "ok"

    out = load_tensors(tmp_path / "out")
    base, v1 = load_tensors(hub_files["zoo"]["base"]), load_tensors(hub_files["zoo"]["v1"])
    name = "roberta.encoder.layer.0.attention.self.query.weight"
    expected = base[name] + 0.5 * (v1[name] - base[name]) + 0.5 * lora_delta(hub_files["adapter"], 0)
    torch.testing.assert_close(out[name], expected, rtol=0, atol=1e-6)
