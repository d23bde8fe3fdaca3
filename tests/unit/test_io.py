"""Streaming writer round trips, checkpoint index errors, loading outputs with transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from prefkit.engine.executor import execute
from prefkit.errors import CheckpointError
from prefkit.io.checkpoint import Checkpoint
from prefkit.io.writer import OutTensor, ShardWriter, plan_shards
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from tests.helpers import load_tensors, merge, write_recipe


def test_writer_round_trip_all_dtypes(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.bf16": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.f16": torch.randn(2, 2, 2, generator=g).to(torch.float16),
        "d.i64": torch.arange(5),
        "e.empty": torch.zeros(0, 4),
        "f.scalar": torch.tensor(3.5),
    }
    outs = [OutTensor(n, str(t.dtype)[6:], tuple(t.shape)) for n, t in tensors.items()]
    shards = plan_shards(outs, 40)
    writer = ShardWriter(tmp_path, shards, {"k": "v"})
    for n, t in tensors.items():
        writer.write(n, t)
    writer.close()
    assert len(shards) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    for name, t in tensors.items():
        with safe_open(str(tmp_path / index["weight_map"][name]), "pt") as f:
            assert f.metadata() == {"k": "v"}
            assert torch.equal(f.get_tensor(name), t)


def test_writer_rejects_wrong_order_and_shape(tmp_path):
    shards = plan_shards([OutTensor("a", "float32", (2,)), OutTensor("b", "float32", (2,))], 10**9)
    writer = ShardWriter(tmp_path, shards, {})
    with pytest.raises(ValueError, match="expected tensor 'a'"):
        writer.write("b", torch.zeros(2))
    with pytest.raises(ValueError, match=r"planned float32\[2\], got float32\[3\]"):
        writer.write("a", torch.zeros(3))
    writer.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="closed before tensor 'b'"):
        writer.close()


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        Checkpoint.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Checkpoint.open(tmp_path / "empty")
    (tmp_path / "trunc").mkdir()
    (tmp_path / "trunc" / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="truncated safetensors file"):
        Checkpoint.open(tmp_path / "trunc")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="lists shard.* that do not exist: model-1"):
        Checkpoint.open(tmp_path / "idx")


def test_truncated_tensor_data_is_caught_from_header(tmp_path, copy_zoo):
    zoo = copy_zoo()
    shard = sorted((zoo / "imdb").glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="past the end of the file"):
        Checkpoint.open(zoo / "imdb")


def test_pytorch_bin_checkpoints_are_read(tmp_path, workdir, registry):
    ckpt = workdir / "bin_model"
    ckpt.mkdir()
    tensors = load_tensors(workdir / "zoo" / "imdb")
    torch.save(tensors, ckpt / "pytorch_model.bin")
    (ckpt / "config.json").write_text((workdir / "zoo" / "imdb" / "config.json").read_text())
    recipe = write_recipe(workdir, "merge_method: linear\nmodels:\n  - model: bin_model\n"
                          "  - model: zoo/imdb\nparameters: {weight: 1}\n")
    execute(resolve(load_recipe(recipe), registry, workdir / "out", allow_pickle=True))
    out = load_tensors(workdir / "out")
    for name, t in tensors.items():
        torch.testing.assert_close(out[name], t, atol=0, rtol=0)


def test_merged_output_loads_with_transformers(workdir, registry):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    merge(workdir, """\
merge_method: ties
base_model: zoo/base
models:
  - {model: zoo/ag_news, task: ag_news}
  - {model: zoo/imdb, task: imdb}
  - {model: zoo/mnli, task: mnli}
  - {model: zoo/mrpc, task: mrpc}
parameters: {density: 0.3}
preference: [0.4, 0.3, 0.2, 0.1]
""", registry, max_shard_bytes=20_000)
    out = workdir / "out"
    assert (out / "model.safetensors.index.json").exists()
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 4
    state = model.state_dict()
    for name, tensor in load_tensors(out).items():
        assert torch.equal(state[name], tensor), name
    logits = model(input_ids=torch.tensor([[0, 5, 6, 7, 2]])).logits
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


def test_too_many_open_files_is_not_a_full_disk(tmp_path):
    """Both sides of EMFILE / ENFILE: writing the output (write_error) and reading an input."""
    import errno
    import os

    from prefkit.io.jsonfile import os_error
    from prefkit.io.outdir import write_error

    for code, where in ((errno.EMFILE, "this process"), (errno.ENFILE, "the system")):
        exc = OSError(code, os.strerror(code), str(tmp_path / "x" / "tokenizer.json"))
        assert str(write_error(tmp_path / "out", exc)) == (
            f"output {tmp_path / 'out'}: cannot write (tokenizer.json): too many open files (the "
            f"limit of {where} is reached) (raise the limit of open files in the shell that runs "
            "prefkit (`ulimit -n 4096`, or higher) and run again; nothing was left behind)")
    assert "free disk space" in str(write_error(tmp_path / "out", OSError(errno.ENOSPC, "full")))
    assert str(os_error(tmp_path / "a", OSError(errno.ENFILE, "x"))) == (
        f"{tmp_path / 'a'}: cannot open: too many open files on this system (close other "
        "programs' files or raise the system's limit (fs.file-max), then run again)")


def test_json_nesting_is_measured_without_recursion():
    from prefkit.io.jsonfile import MAX_DEPTH, too_deep

    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert too_deep(b'{"a": ' + b"[" * 10**6 + b"}")  # unbalanced, and far past any stack
    # brackets inside strings (escaped quotes and backslashes included) do not count
    text = json.dumps({"a": "[" * 200, 'b"\\': "\\" * 3 + "{" * 200, "c": [[1], [2], {"d": []}]})
    assert not too_deep(text.encode())
    assert not too_deep(b"[" + b"[]," * 1000 + b"[]]")  # wide, not deep
