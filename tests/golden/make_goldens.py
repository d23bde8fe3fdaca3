#!/usr/bin/env python3
"""Regenerate the golden merge outputs that tests/golden/test_goldens.py checks prefkit against.

The goldens are what mergekit 0.1.5 writes for each recipe in recipes/golden/*.yaml, run on tiny
seeded checkpoints from `prefkit.testing.make_zoo`. mergekit is NOT a dependency of prefkit: this
script installs it into a throwaway virtual environment outside the repository.

How to run (from the repository root, with prefkit's development environment):

    .venv/bin/python tests/golden/make_goldens.py
    .venv/bin/python tests/golden/make_goldens.py --venv /tmp/mk-venv --work /tmp/golden-work

It
1. creates (or reuses) a venv at --venv (default /tmp/prefkit-mergekit-venv) and installs
   torch==2.13.0 first (the local CPU wheel; an unpinned torch would pull a multi-GB CUDA build),
   then mergekit==0.1.5 with a constraints file that keeps torch at 2.13.0;
2. builds the checkpoint zoos of ZOOS below under --work (default: a temporary folder), e.g.
   <work>/zoo/{base,task_a,task_b,task_c};
3. runs `mergekit-yaml <recipe> <out> --no-copy-tokenizer --no-write-model-card --device cpu
   --random-seed 0` for each recipe, with the working directory set to <work> (mergekit resolves
   relative model paths against the working directory; the recipes say `zoo/base`, ...);
4. writes every tensor of mergekit's output to tests/golden/<recipe name>.safetensors and the
   facts the test needs (how each zoo was made and its fingerprint, each recipe's sha256, each
   golden's sha256, tensor count and dtypes, the files mergekit wrote) to tests/golden/manifest.json.

Needs network access to the package index only when the venv is created (~2 minutes). The run
takes ~2.5 minutes (mergekit starts slowly: ~10 s per recipe). Nothing in the repository except
tests/golden/*.safetensors and tests/golden/manifest.json is written. The output is deterministic
(same bytes on every run). Commit the regenerated files with the recipe changes.

One recipe uses a key that mergekit's YAML cannot express: ties_consensus_count.yaml sets prefkit's
`consensus: count`. mergekit 0.1.5's ties method is fixed to sum election and silently ignores that
key, so for that recipe this script runs mergekit's own merge with its registered `ties` method
rebuilt as GeneralizedTaskArithmeticMerge(consensus_method=count) (mergekit's get_mask(method="count")),
see MERGEKIT_OVERRIDES.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN_DIR = Path(__file__).resolve().parent
RECIPE_DIR = REPO / "recipes" / "golden"
MANIFEST = GOLDEN_DIR / "manifest.json"

MERGEKIT_VERSION = "0.1.5"
TORCH_VERSION = "2.13.0"
DEFAULT_VENV = Path("/tmp/prefkit-mergekit-venv")

# The checkpoint zoos the recipes refer to, as keyword arguments of prefkit.testing.make_zoo
# ("dtype" is a torch dtype name). mergekit needs the base to carry the classifier tensors, so the
# base has a head (base_head) and every task has the same label count.
ZOOS: dict[str, dict] = {
    # float32, 4 layers: gradients are read at t = 0, 1/3, 2/3, 1.
    "zoo": {"tasks": {"task_a": 3, "task_b": 3, "task_c": 3}, "seed": 0, "shards": 2,
            "base_head": True, "layers": 4, "dtype": "float32"},
    # bfloat16 checkpoints, 2 layers: dtype / out_dtype handling.
    "zoo_bf16": {"tasks": {"task_a": 3, "task_b": 3, "task_c": 3}, "seed": 1, "shards": 2,
                 "base_head": True, "layers": 2, "dtype": "bfloat16"},
}

# Recipes whose golden needs mergekit's own code reconfigured (its YAML cannot express the key).
# recipe name -> {method name: GeneralizedTaskArithmeticMerge field overrides}
MERGEKIT_OVERRIDES: dict[str, dict[str, dict[str, str]]] = {
    "ties_consensus_count": {"ties": {"consensus_method": "count"}},
}

# Run inside the mergekit venv: mergekit-yaml's entry point, after optional method overrides.
_DRIVER = """\
import dataclasses, json, sys
overrides = json.loads(sys.argv.pop(1))
if overrides:
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.generalized_task_arithmetic import ConsensusMethod
    for name, fields in overrides.items():
        method = registry.get(name)
        fields = {k: ConsensusMethod(v) if k == "consensus_method" else v
                  for k, v in fields.items()}
        registry._METHODS[name] = dataclasses.replace(method, **fields)
from mergekit.scripts.run_yaml import main
sys.argv[0] = "mergekit-yaml"
main()
"""


# -- the throwaway mergekit environment ---------------------------------------------------------

def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _installed_versions(venv: Path) -> dict[str, str] | None:
    python = _venv_python(venv)
    if not python.exists():
        return None
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps({p: m.version(p) for p in ('mergekit', 'torch')}))")
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)


def ensure_venv(venv: Path) -> dict[str, str]:
    """Create the venv with torch==2.13.0 (CPU) and mergekit==0.1.5 unless it already has them."""
    versions = _installed_versions(venv)
    if versions and versions["mergekit"] == MERGEKIT_VERSION and \
            versions["torch"].split("+")[0] == TORCH_VERSION:
        print(f"reusing {venv} (mergekit {versions['mergekit']}, torch {versions['torch']})")
        return versions
    if venv.resolve().is_relative_to(REPO):
        sys.exit(f"refusing to create the mergekit venv inside the repository: {venv}")
    print(f"creating {venv} ...")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(f"torch=={TORCH_VERSION}\n")
    pip = [str(_venv_python(venv)), "-m", "pip", "install", "-q"]
    # torch first, pinned: the local CPU wheel, not a multi-GB CUDA build.
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([*pip, "-c", str(constraints), f"mergekit=={MERGEKIT_VERSION}"], check=True)
    versions = _installed_versions(venv)
    if not versions or versions["mergekit"] != MERGEKIT_VERSION:
        sys.exit(f"mergekit {MERGEKIT_VERSION} did not install into {venv}: {versions}")
    return versions


# -- zoos -------------------------------------------------------------------------------------------

def build_zoo(root: Path, spec: dict) -> dict[str, Path]:
    """make_zoo with a JSON-able spec (the same function the test calls)."""
    import torch

    from prefkit.testing import make_zoo

    kwargs = dict(spec)
    kwargs["dtype"] = getattr(torch, kwargs.pop("dtype", "float32"))
    return make_zoo(root, **kwargs)


def zoo_fingerprint(root: Path) -> str:
    """sha256 of every model's tensors (name, dtype, shape, bytes) and config, in sorted order.

    Independent of how safetensors lays out the files, so only a change in the factory's output
    changes it.
    """
    import torch
    from safetensors import safe_open

    h = hashlib.sha256()
    for model in sorted(p for p in root.iterdir() if p.is_dir()):
        h.update(f"model:{model.name}\n".encode())
        config = json.loads((model / "config.json").read_text())
        h.update(json.dumps(config, sort_keys=True).encode())
        tensors = {}
        for file in sorted(model.glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                for name in f.keys():
                    tensors[name] = f.get_tensor(name)
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            h.update(f"{name}:{str(t.dtype)}:{list(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def recipe_zoo(recipe: Path) -> str:
    """The zoo folder a recipe's model paths start with (one per recipe)."""
    import yaml

    data = yaml.safe_load(recipe.read_text())
    refs = [m["model"] for m in data["models"]]
    if data.get("base_model"):
        refs.append(data["base_model"])
    zoos = {Path(ref).parts[0] for ref in refs}
    if len(zoos) != 1 or not zoos <= set(ZOOS):
        raise SystemExit(f"{recipe.name}: model paths must all start with one of {sorted(ZOOS)}/, "
                         f"got {refs}")
    return zoos.pop()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- running mergekit ----------------------------------------------------------------------------

def run_mergekit(venv: Path, recipe: Path, out: Path, work: Path) -> None:
    overrides = MERGEKIT_OVERRIDES.get(recipe.stem, {})
    args = [str(recipe), str(out), "--no-copy-tokenizer", "--no-write-model-card",
            "--device", "cpu", "--random-seed", "0", "--quiet"]
    cmd = [str(_venv_python(venv)), "-c", _DRIVER, json.dumps(overrides), *args]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"mergekit failed on {recipe.name} (exit {proc.returncode})")


def read_output(out: Path):
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(out.glob("*.safetensors")):
        part = load_file(str(file))
        overlap = set(part) & set(tensors)
        if overlap:
            raise SystemExit(f"{out}: tensor(s) in two shards: {sorted(overlap)}")
        tensors.update(part)
    if not tensors:
        raise SystemExit(f"{out}: mergekit wrote no safetensors")
    return tensors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help=f"the throwaway mergekit venv (default {DEFAULT_VENV})")
    parser.add_argument("--work", type=Path, default=None,
                        help="where to build the zoos and mergekit outputs (default: a temp folder, "
                             "removed afterwards)")
    parser.add_argument("recipes", nargs="*",
                        help="recipe names to regenerate (default: all of recipes/golden)")
    args = parser.parse_args(argv)

    from safetensors.torch import save_file

    versions = ensure_venv(args.venv)
    recipes = sorted(RECIPE_DIR.glob("*.yaml"))
    if args.recipes:
        recipes = [r for r in recipes if r.stem in set(args.recipes)]
        missing = set(args.recipes) - {r.stem for r in recipes}
        if missing:
            raise SystemExit(f"no such recipe(s) in {RECIPE_DIR}: {sorted(missing)}")
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() and args.recipes else {}

    work = args.work or Path(tempfile.mkdtemp(prefix="prefkit-goldens-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        zoos = {}
        for name in sorted({recipe_zoo(r) for r in recipes} | set(ZOOS)):
            root = work / name
            shutil.rmtree(root, ignore_errors=True)
            build_zoo(root, ZOOS[name])
            zoos[name] = {"make_zoo": ZOOS[name], "sha256": zoo_fingerprint(root)}
            print(f"zoo {name}: {zoos[name]['sha256'][:16]}")
        goldens = dict(manifest.get("goldens", {}))
        for recipe in recipes:
            out = work / "mergekit-out" / recipe.stem
            shutil.rmtree(out, ignore_errors=True)
            run_mergekit(args.venv, recipe, out, work)
            tensors = read_output(out)
            target = GOLDEN_DIR / f"{recipe.stem}.safetensors"
            save_file({n: tensors[n].contiguous() for n in sorted(tensors)}, str(target),
                      # one key: safetensors writes metadata in hash order, so more would make
                      # the bytes differ from run to run
                      metadata={"made_by": f"mergekit {MERGEKIT_VERSION} from recipes/golden/"
                                           f"{recipe.name} (tests/golden/make_goldens.py)"})
            goldens[recipe.stem] = {
                "recipe": f"recipes/golden/{recipe.name}",
                "recipe_sha256": sha256_file(recipe),
                "zoo": recipe_zoo(recipe),
                "mergekit_overrides": MERGEKIT_OVERRIDES.get(recipe.stem, {}),
                "mergekit_files": sorted(p.name for p in out.iterdir()),
                "tensor_count": len(tensors),
                "dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}),
                "sha256": sha256_file(target),
            }
            print(f"{recipe.stem}: {len(tensors)} tensors, {target.stat().st_size} bytes")
        manifest = {
            "about": "Made by tests/golden/make_goldens.py; checked by tests/golden/test_goldens.py.",
            "mergekit": versions["mergekit"],
            "torch": versions["torch"],
            "mergekit_args": ["--no-copy-tokenizer", "--no-write-model-card", "--device", "cpu",
                              "--random-seed", "0"],
            "zoos": zoos,
            "goldens": dict(sorted(goldens.items())),
        }
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
        print(f"wrote {MANIFEST.relative_to(REPO)} and {len(recipes)} golden(s)")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
