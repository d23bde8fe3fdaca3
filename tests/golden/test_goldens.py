"""Golden tests: prefkit's merges equal mergekit 0.1.5's, tensor for tensor.

tests/golden/<name>.safetensors holds what mergekit 0.1.5 wrote for recipes/golden/<name>.yaml on
tiny seeded checkpoints (`prefkit.testing.make_zoo`); tests/golden/manifest.json says how each zoo
was made, its fingerprint and each recipe's sha256. Here the same zoos are rebuilt, prefkit runs
each recipe unchanged through its CLI (working directory: the folder holding the zoos, as for
mergekit), and every tensor must match: same names, dtypes and shapes, and values within 1e-6
(rtol 0). Regenerate the goldens with `tests/golden/make_goldens.py` (it needs mergekit, which
prefkit does not depend on) after changing a recipe or the checkpoint factory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors import safe_open

from prefkit.cli import build_cli
from prefkit.testing import make_zoo

GOLDEN_DIR = Path(__file__).resolve().parent
REPO = GOLDEN_DIR.parents[1]
RECIPE_DIR = REPO / "recipes" / "golden"
MANIFEST = json.loads((GOLDEN_DIR / "manifest.json").read_text())
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))
ATOL = 1e-6
REGENERATE = "regenerate with: .venv/bin/python tests/golden/make_goldens.py"

# Keys a plain mergekit 0.1.5 config may use here.
MERGEKIT_KEYS = {"merge_method", "base_model", "models", "parameters", "dtype", "out_dtype"}
MERGEKIT_PARAMETERS = {
    "linear": {"weight", "normalize"},
    "task_arithmetic": {"weight", "normalize", "lambda", "rescale", "int8_mask"},
    "ties": {"weight", "density", "normalize", "lambda", "rescale", "int8_mask"},
}
# Documented exceptions: (recipe, parameter) pairs mergekit's YAML cannot express; the golden was
# made with mergekit's own code reconfigured (see MERGEKIT_OVERRIDES in make_goldens.py).
PREFKIT_ONLY_PARAMETERS = {("ties_consensus_count", "consensus")}

# Tensors one tool writes and the other does not, with the reason: {recipe or "*": {name: why}}.
# None are expected for these recipes (mergekit's optional roberta.embeddings.position_ids is not
# in the zoo, so neither tool writes it).
EXPLAINED_ONLY_IN_MERGEKIT: dict[str, dict[str, str]] = {}
EXPLAINED_ONLY_IN_PREFKIT: dict[str, dict[str, str]] = {}


def _zoo_fingerprint(root: Path) -> str:
    """Must equal make_goldens.zoo_fingerprint (tensors and configs, not file bytes)."""
    h = hashlib.sha256()
    for model in sorted(p for p in root.iterdir() if p.is_dir()):
        h.update(f"model:{model.name}\n".encode())
        config = json.loads((model / "config.json").read_text())
        h.update(json.dumps(config, sort_keys=True).encode())
        tensors = _load_folder(model)
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            h.update(f"{name}:{str(t.dtype)}:{list(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _load(file: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(file), "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}


def _load_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        part = _load(file)
        assert not set(part) & set(tensors), f"{folder}: a tensor is in two shards"
        tensors.update(part)
    return tensors


def _paths(data: dict) -> list[str]:
    return [m["model"] for m in data["models"]] + (
        [data["base_model"]] if data.get("base_model") else [])


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> Path:
    """All zoos of the manifest, rebuilt from their make_zoo arguments and fingerprint-checked."""
    work = tmp_path_factory.mktemp("golden-zoos")
    for name, zoo in MANIFEST["zoos"].items():
        kwargs = dict(zoo["make_zoo"])
        kwargs["dtype"] = getattr(torch, kwargs.pop("dtype", "float32"))
        make_zoo(work / name, **kwargs)
        assert _zoo_fingerprint(work / name) == zoo["sha256"], (
            f"prefkit.testing.make_zoo no longer makes the checkpoints the goldens were made from "
            f"(zoo {name!r}, {zoo['make_zoo']}); if the change is intended, {REGENERATE}")
    return work


def test_every_recipe_has_a_golden_and_back():
    recipes = {r.stem for r in RECIPES}
    goldens = set(MANIFEST["goldens"])
    assert recipes, f"no recipes in {RECIPE_DIR}"
    assert recipes - goldens == set(), f"recipes without a golden; {REGENERATE}"
    assert goldens - recipes == set(), "goldens whose recipe is gone: drop them from the manifest"
    for name in goldens:
        assert (GOLDEN_DIR / f"{name}.safetensors").is_file(), f"{name}.safetensors missing"


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_is_plain_mergekit(recipe: Path):
    """Each recipe runs unchanged in mergekit: only its keys and its method parameters."""
    data = yaml.safe_load(recipe.read_text())
    assert set(data) <= MERGEKIT_KEYS, f"non-mergekit keys: {set(data) - MERGEKIT_KEYS}"
    method = data["merge_method"]
    allowed = MERGEKIT_PARAMETERS[method]
    used = set(data.get("parameters") or {})
    for model in data["models"]:
        assert set(model) <= {"model", "parameters"}, f"non-mergekit model keys in {model}"
        used |= set(model.get("parameters") or {})
    extra = {p for p in used - allowed if (recipe.stem, p) not in PREFKIT_ONLY_PARAMETERS}
    assert not extra, f"parameters mergekit 0.1.5's {method} does not know: {extra}"
    zoos = {Path(p).parts[0] for p in _paths(data)}
    assert len(zoos) == 1 and zoos <= set(MANIFEST["zoos"]), (
        f"model paths must all start with one zoo folder of {sorted(MANIFEST['zoos'])}: {zoos}")


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_prefkit_matches_mergekit(recipe: Path, zoo_dir: Path, tmp_path: Path, monkeypatch):
    entry = MANIFEST["goldens"].get(recipe.stem)
    assert entry is not None, f"no golden for {recipe.name}; {REGENERATE}"
    digest = hashlib.sha256(recipe.read_bytes()).hexdigest()
    assert digest == entry["recipe_sha256"], f"{recipe.name} changed since its golden; {REGENERATE}"
    golden_file = GOLDEN_DIR / f"{recipe.stem}.safetensors"
    assert hashlib.sha256(golden_file.read_bytes()).hexdigest() == entry["sha256"], (
        f"{golden_file.name} does not match the manifest; {REGENERATE}")
    expected = _load(golden_file)
    assert len(expected) == entry["tensor_count"]

    # Like mergekit, run from the folder holding the zoos: the recipe's relative model paths
    # (zoo/base, ...) are not found next to the recipe, so prefkit resolves them against the cwd.
    monkeypatch.chdir(zoo_dir)
    out = tmp_path / "out"
    result = CliRunner().invoke(build_cli(), ["run", str(recipe), "-o", str(out), "-q"])
    assert result.exit_code == 0, (
        f"prefkit run failed ({result.exit_code}):\n{result.output}\n{result.stderr}")
    actual = _load_folder(out)

    only_mk = set(expected) - set(actual)
    only_pk = set(actual) - set(expected)
    explained_mk = {**EXPLAINED_ONLY_IN_MERGEKIT.get("*", {}),
                    **EXPLAINED_ONLY_IN_MERGEKIT.get(recipe.stem, {})}
    explained_pk = {**EXPLAINED_ONLY_IN_PREFKIT.get("*", {}),
                    **EXPLAINED_ONLY_IN_PREFKIT.get(recipe.stem, {})}
    assert only_mk <= set(explained_mk), (
        f"mergekit writes tensors prefkit does not: {sorted(only_mk - set(explained_mk))}")
    assert only_pk <= set(explained_pk), (
        f"prefkit writes tensors mergekit does not: {sorted(only_pk - set(explained_pk))}")

    failures = []
    for name in sorted(set(expected) & set(actual)):
        want, got = expected[name], actual[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            failures.append(f"{name}: prefkit {got.dtype} {list(got.shape)}, "
                            f"mergekit {want.dtype} {list(want.shape)}")
            continue
        try:
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        except AssertionError:
            diff = (got.double() - want.double()).abs()
            failures.append(f"{name}: max abs diff {diff.max().item():.3g} "
                            f"({int((diff > ATOL).sum())} of {diff.numel()} entries > {ATOL})")
    assert not failures, (f"{recipe.name}: prefkit differs from mergekit 0.1.5 on "
                          f"{len(failures)} of {len(expected)} tensors:\n" + "\n".join(failures))
