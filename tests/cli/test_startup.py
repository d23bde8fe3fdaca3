"""`prefkit --help` and `prefkit validate` never import torch (they must start in well under a
second), nor do linear, task-arithmetic and float32 TIES merges on the CPU (numpy arrays,
`takes_numpy`); the other merge commands import it when they need it."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from prefkit.cli import main
try:
    main({args!r})
except SystemExit as exc:
    code = exc.code
print("TORCH_LOADED" if "torch._C" in sys.modules else "TORCH_NOT_LOADED", file=sys.stderr)
"""


def _loaded(args, cwd) -> str:
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=args)], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["--help"], ["methods", "--json"], ["validate", "r.yaml"]])
def test_light_commands_do_not_import_torch(tmp_path, args):
    (tmp_path / "r.yaml").write_text(
        "merge_method: ties\nbase_model: b\nmodels: [{model: m1}, {model: m2}]\n"
        "parameters: {density: 0.2}\npreference: [0.7, 0.3]\n")
    assert _loaded(args, tmp_path) == "TORCH_NOT_LOADED"


@pytest.mark.parametrize("method,params,loaded", [
    ("linear", "{weight: 0.5}", "TORCH_NOT_LOADED"),
    ("task_arithmetic", "{weight: 0.5, lambda: 0.8}", "TORCH_NOT_LOADED"),
    ("ties", "{weight: 1, density: 0.5}", "TORCH_NOT_LOADED"),
    # float16 TIES merges torch tensors: the probe sees torch when it is used
    ("ties", "{weight: 1, density: 0.5}\ndtype: float16", "TORCH_LOADED"),
])
def test_which_merges_import_torch(workdir, method, params, loaded):
    base = "" if method == "linear" else "base_model: zoo/base\n"  # linear would merge it too
    (workdir / "r.yaml").write_text(f"merge_method: {method}\n{base}models: [{{model: zoo/imdb}}, "
                                    f"{{model: zoo/mrpc}}]\nparameters: {params}\n")
    assert _loaded(["run", "-q", "r.yaml", "-o", "out"], workdir) == loaded
    assert (workdir / "out" / "model.safetensors").exists()
