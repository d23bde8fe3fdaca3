"""Fixtures for hub tests: a local fake hub (real huggingface_hub client, no internet) holding
tiny checkpoints, a LoRA adapter and a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prefkit.testing import make_zoo
from tests.ecosystem.fake_hub import FakeHub

QUERY = "roberta.encoder.layer.{}.attention.self.query"
DATASET_README = (b"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: test\n"
                  b"    path: data/test.csv\n---\n")


def write_adapter(folder: Path, *, rank: int = 2, alpha: int = 4, hidden: int = 16,
                  seed: int = 5) -> dict[str, torch.Tensor]:
    """A peft-format LoRA adapter on the tiny RoBERTa's query projections (as peft saves one)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(2):
        prefix = "base_model.model." + QUERY.format(layer)
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, hidden, generator=gen)
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(hidden, rank, generator=gen)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["query"],
        "task_type": None}))
    return tensors


def lora_delta(adapter: dict[str, torch.Tensor], layer: int, scale: float = 2.0) -> torch.Tensor:
    prefix = "base_model.model." + QUERY.format(layer)
    return adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"] * scale


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory) -> dict:
    """Folders to publish: a base with a 3-label head, a model at two revisions, an adapter."""
    root = tmp_path_factory.mktemp("hub_files")
    zoo = make_zoo(root / "zoo", tasks={"v1": 3, "main": 3}, base_head=True, shards=1)
    adapter = write_adapter(root / "adapter")
    return {"zoo": zoo, "adapter_dir": root / "adapter", "adapter": adapter}


@pytest.fixture
def fake_hub(tmp_path, hub_files):
    """The fake hub, serving someorg/tiny-base, someorg/tiny-a (revisions main and v1, with
    different weights), someorg/tiny-lora (an adapter), someorg/no-weights and a dataset."""
    with FakeHub(tmp_path / "hub") as hub:
        zoo = hub_files["zoo"]
        hub.add("someorg/tiny-base", {f.name: f for f in zoo["base"].iterdir()})
        hub.add("someorg/tiny-a", {f.name: f for f in zoo["main"].iterdir()})
        hub.add("someorg/tiny-a", {f.name: f for f in zoo["v1"].iterdir()}, revision="v1")
        hub.add("someorg/tiny-lora", {f.name: f for f in hub_files["adapter_dir"].iterdir()})
        hub.add("someorg/no-weights", {"config.json": b"{}"})
        hub.add("someorg/tiny-ds", {"README.md": DATASET_README,
                                    "data/test.csv": b"text,label\ngood film,1\nbad film,0\n"},
                kind="datasets")
        yield hub


@pytest.fixture
def online(fake_hub, tmp_path, monkeypatch):
    """This process talks to the fake hub: offline mode off, endpoint and cache redirected."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("PREFKIT_CACHE", str(tmp_path / "prefkit-cache"))
    return fake_hub
