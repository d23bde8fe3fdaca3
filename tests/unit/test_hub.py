"""Hub references go through huggingface_hub's real cache layout (no network in tests)."""

from __future__ import annotations

import shutil

import pytest
import torch

from prefkit.errors import CheckpointError
from prefkit.io.hub import is_hub_id, resolve_model
from tests.helpers import load_tensors, merge


def _fake_cache(cache, repo, source, revision="0" * 40):
    """Lay out `source` as huggingface_hub's cache stores a downloaded snapshot of `repo`."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    snap = folder / "snapshots" / revision
    snap.mkdir(parents=True)
    for file in source.iterdir():
        shutil.copyfile(file, snap / file.name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    return snap


@pytest.mark.parametrize("ref, hub", [("org/name", True), ("org/name@v1.0", True), ("./zoo/x", False),
                                      ("/abs/path", False), ("name", False), ("a/b/c", False)])
def test_hub_id_shape(ref, hub):
    assert is_hub_id(ref) is hub


def test_cached_hub_model_merges_offline(workdir, registry, tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    _fake_cache(cache, "someorg/tiny-base", workdir / "zoo_same" / "base")
    _fake_cache(cache, "someorg/tiny-a", workdir / "zoo_same" / "a")
    out = merge(workdir, "merge_method: task_arithmetic\nbase_model: someorg/tiny-base\nmodels:\n"
                "  - model: someorg/tiny-a\n  - model: zoo_same/b\nparameters: {weight: 1.0}\n",
                registry)
    a, b, base = (load_tensors(workdir / "zoo_same" / n) for n in ("a", "b", "base"))
    name = "roberta.encoder.layer.0.output.dense.weight"
    torch.testing.assert_close(out[name], a[name] + b[name] - base[name], atol=1e-6, rtol=0)


def test_missing_hub_model_offline_is_one_clear_line(workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(CheckpointError, match=r"model 'someorg/absent' is not a local folder and it "
                       r"is not in the Hugging Face cache, and the hub is offline or unreachable"):
        resolve_model("someorg/absent", workdir)


def test_local_typo_is_not_sent_to_the_hub(workdir):
    with pytest.raises(CheckpointError, match=r"model 'zoo/typo': no such folder"):
        resolve_model("zoo/typo", workdir)
