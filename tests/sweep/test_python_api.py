"""The Python API: `prefkit.run` and `prefkit.sweep` do what `prefkit run` does, from a path or a
mapping, and raise PrefkitErrors carrying the line the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import prefkit
from prefkit.cli import build_cli
from prefkit.errors import OutputError, RecipeError
from prefkit.sweeps.report import write_report
from tests.sweep.conftest import TWO_METHODS, write_sweep

RECIPE = """\
merge_method: ties
base_model: {zoo}/base
models:
  - {{model: {zoo}/ta, task: toy_a}}
  - {{model: {zoo}/tb, task: toy_b}}
parameters: {{density: 0.5}}
preference: [3, 1]
heads: per_task
tasks:
  toy_a: {{dataset: csv, text_fields: [text], label_names: [a, b, c], splits: {{test: test}},
          data_files: {{test: {zoo}/a.csv}}}}
  toy_b: {{dataset: csv, text_fields: [text], label_names: [neg, pos], splits: {{test: test}},
          data_files: {{test: {zoo}/b.csv}}}}
evaluate: {{batch_size: 8, max_length: 16}}
"""


def _write(folder: Path, zoo: Path) -> Path:
    path = folder / "ties.yaml"
    path.write_text(RECIPE.format(zoo=zoo))
    return path


def _model_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob("*.safetensors")))


def _tensor_bytes(folder: Path) -> dict[str, bytes]:
    """Tensor data by name (the header's recipe_sha256 differs when the recipe text does)."""
    from tests.helpers import load_tensors

    return {n: t.numpy().tobytes() for n, t in load_tensors(folder).items()}


def test_run_gives_the_cli_result(tiny_zoo, tmp_path, sweep_registry):
    recipe = _write(tmp_path, tiny_zoo)
    result = prefkit.run(recipe, output=tmp_path / "api", registry=sweep_registry, quiet=True)
    assert result.output == tmp_path / "api" and result.method == "ties"
    assert result.preference == (0.75, 0.25)  # normalised: 3/4, 1/4
    assert set(result.scores) == {"toy_a", "toy_b"}
    assert all(0.0 <= s["accuracy"] <= 1.0 and s["n"] == 24 for s in result.scores.values())
    assert result.seconds is not None and result.seconds >= 0
    cli = CliRunner().invoke(build_cli(lambda: sweep_registry),
                             ["run", str(recipe), "-o", str(tmp_path / "cli"), "--quiet"])
    assert cli.exit_code == 0, cli.output
    line = json.loads(cli.stdout.strip().splitlines()[-1])
    assert line["results"] == result.scores == result.line["results"]
    assert _model_bytes(tmp_path / "api") == _model_bytes(tmp_path / "cli")
    provenance = json.loads((tmp_path / "api" / "prefkit.json").read_text())
    assert provenance["preference"] == [3.0, 1.0] and provenance["heads"] == "per_task"


def test_a_mapping_runs_as_its_file_would(tiny_zoo, tmp_path, sweep_registry, monkeypatch):
    recipe = _write(tmp_path, tiny_zoo)
    data = yaml.safe_load(recipe.read_text())
    given = json.dumps(data, sort_keys=True)
    from_file = prefkit.run(recipe, output=tmp_path / "file", registry=sweep_registry, quiet=True)
    monkeypatch.chdir(tmp_path)
    data["output"] = "mapped"  # relative paths are read from the working folder
    mapped = prefkit.run(data, registry=sweep_registry, quiet=True,
                         overrides=["parameters.density=0.5"])
    assert mapped.output == Path("mapped") and (tmp_path / "mapped" / "prefkit.json").is_file()
    assert _tensor_bytes(tmp_path / "mapped") == _tensor_bytes(tmp_path / "file")
    assert mapped.scores == from_file.scores
    del data["output"]
    assert json.dumps(data, sort_keys=True) == given  # the caller's mapping is left as it was


def test_errors_carry_the_cli_line(tiny_zoo, tmp_path, sweep_registry):
    recipe = _write(tmp_path, tiny_zoo)
    prefkit.run(recipe, output=tmp_path / "out", registry=sweep_registry, quiet=True)
    with pytest.raises(OutputError) as caught:
        prefkit.run(recipe, output=tmp_path / "out", registry=sweep_registry, quiet=True)
    cli = CliRunner().invoke(build_cli(lambda: sweep_registry),
                             ["run", str(recipe), "-o", str(tmp_path / "out"), "--quiet"])
    assert cli.exit_code == int(caught.value.exit_code) == 2
    assert f"Error: {caught.value}" in cli.stderr.splitlines()
    assert isinstance(caught.value, prefkit.PrefkitError) and "\n" not in str(caught.value)

    data = yaml.safe_load(recipe.read_text())
    with pytest.raises(RecipeError, match=r"^<mapping>: output: a recipe given as a mapping needs"):
        prefkit.run(data, registry=sweep_registry)
    data["parameters"] = {"densty": 0.5}
    with pytest.raises(RecipeError, match=r"^<mapping>: parameters.densty: unknown parameter"):
        prefkit.run(data, output=tmp_path / "typo", registry=sweep_registry)
    assert not (tmp_path / "typo").exists()
    with pytest.raises(TypeError, match="unknown option.*treads"):
        prefkit.run(recipe, output=tmp_path / "x", registry=sweep_registry, treads=2)


def test_run_and_sweep_tell_a_sweep_from_a_recipe(tiny_zoo, tmp_path, sweep_registry):
    sweep = write_sweep(tmp_path, tiny_zoo, methods=TWO_METHODS)
    with pytest.raises(RecipeError, match=r"is a sweep \(preferences: or methods:\).*prefkit\.sweep"):
        prefkit.run(sweep, registry=sweep_registry)
    with pytest.raises(RecipeError, match=r"is not a sweep.*prefkit\.run"):
        prefkit.sweep(_write(tmp_path, tiny_zoo), registry=sweep_registry)


def test_sweep_points_and_fronts(tiny_zoo, tmp_path, sweep_registry):
    path = write_sweep(tmp_path, tiny_zoo, methods=TWO_METHODS)
    result = prefkit.sweep(path, registry=sweep_registry, quiet=True, workers=0)
    assert result.output == tmp_path / "out" and result.report == tmp_path / "out" / "report.md"
    assert len(result.points) == 6 and all(p["status"] == "ok" for p in result.points)
    assert sorted((p["label"], tuple(p["preference"])) for p in result.points) == sorted(
        (m, q) for m in ("linear", "ties") for q in ((1.0, 0.0), (0.5, 0.5), (0.0, 1.0)))
    rows = {r["method"]: r for r in write_report(tmp_path / "out", plots=False)["rows"]}
    for method in ("linear", "ties"):
        assert result.hypervolume(method) == pytest.approx(rows[method]["hypervolume"], abs=0)
        front = result.front(method)
        assert len(front) == rows[method]["front"] and front.shape[1] == 2
        scores = [[p["results"][t]["accuracy"] for t in ("toy_a", "toy_b")]
                  for p in result.points if p["label"] == method]
        assert all(list(f) in scores for f in front)  # front rows are the method's own points
    again = prefkit.sweep(path, registry=sweep_registry, quiet=True, workers=0)
    assert (again.line["cached"], again.line["ran"]) == (6, 0)
