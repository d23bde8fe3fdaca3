#!/usr/bin/env python3
"""Regenerate mergekit_golden.safetensors: mergekit 0.1.5's own dare_linear / dare_ties on seeded
tensors, with its global torch generator seeded per tensor as prefkit-dare seeds its own.

Run it with a Python that has mergekit 0.1.5 (not a dependency of prefkit or prefkit-dare; see
prefkit's tests/golden/make_goldens.py for a throwaway venv), from this folder:

    /tmp/prefkit-mergekit-venv/bin/python tests/make_mergekit_golden.py

It writes tests/mergekit_golden.safetensors: the inputs (`<dtype>/<tensor>/base`, `.../model_i`)
and mergekit's result per case (`<case>/<dtype>/<tensor>`); CASES below are read by the test.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from mergekit.merge_methods.base import TensorGroup
from mergekit.merge_methods.registry import get
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
TENSORS = {"model.layers.0.mlp.weight": (32, 24), "model.layers.0.mlp.bias": (24,)}
DTYPES = ("float32", "bfloat16")
WEIGHTS = (1.0, 0.5, 2.0)
DENSITIES = (0.5, 0.3, 1.0)  # the last model keeps everything and draws no mask
CASES = {  # name: (method, shared parameters beyond mergekit's defaults, seed)
    "linear_default": ("dare_linear", {}, 0),
    "linear_norm_lambda": ("dare_linear", {"normalize": True, "lambda": 0.7}, 3),
    "linear_no_rescale": ("dare_linear", {"rescale": False}, 1),
    "ties_default": ("dare_ties", {}, 0),
    "ties_norm": ("dare_ties", {"normalize": True}, 5),
}


def tensor_seed(seed: int, name: str) -> int:
    """prefkit_dare.tensor_seed, repeated here because this venv has no prefkit (the test fails
    if the two ever disagree)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def main() -> None:
    gen = torch.Generator().manual_seed(1234)
    out: dict[str, torch.Tensor] = {}
    for name, shape in TENSORS.items():
        base = torch.randn(shape, generator=gen) * 0.05
        models = [base + 0.01 * torch.randn(shape, generator=gen) for _ in WEIGHTS]
        for dtype in DTYPES:
            out[f"{dtype}/{name}/base"] = base.to(getattr(torch, dtype))
            for i, m in enumerate(models):
                out[f"{dtype}/{name}/model_{i}"] = m.to(getattr(torch, dtype))
    for case, (method_name, shared, seed) in CASES.items():
        method = get(method_name)
        params = {"int8_mask": False, "normalize": False, "rescale": True, "lambda": 1.0, **shared,
                  "weight": dict(enumerate(WEIGHTS)), "density": dict(enumerate(DENSITIES))}
        for dtype in DTYPES:
            for name in TENSORS:
                tensors = [out[f"{dtype}/{name}/base"].clone()]
                tensors += [out[f"{dtype}/{name}/model_{i}"].clone() for i in range(len(WEIGHTS))]
                group = TensorGroup.from_tensors(tensors, ids=["base", 0, 1, 2], base_index=0,
                                                 name=name)
                torch.manual_seed(tensor_seed(seed, name))
                out[f"{case}/{dtype}/{name}"] = method.merge_group(group, **params).contiguous()
    save_file(out, str(HERE / "mergekit_golden.safetensors"),
              metadata={"cases": json.dumps(CASES), "weights": json.dumps(WEIGHTS),
                        "densities": json.dumps(DENSITIES), "mergekit": "0.1.5"})


if __name__ == "__main__":
    main()
