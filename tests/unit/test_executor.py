"""Executor and plan behaviour on tiny checkpoints: heads, dtypes, global trim, safety."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from prefkit.engine.executor import ExecuteOptions, execute
from prefkit.errors import CheckpointError, MergeError, PrefkitError
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from tests.helpers import load_tensors, merge, quantized_zoo, write_recipe

REF = """\
merge_method: {method}
base_model: zoo/base
models:
  - model: zoo/ag_news
  - model: zoo/imdb
  - model: zoo/mnli
  - model: zoo/mrpc
parameters: {params}
"""


def _zoo(workdir):
    return {n: load_tensors(workdir / "zoo" / n) for n in ("base", "ag_news", "imdb", "mnli", "mrpc")}


def test_task_arithmetic_on_zoo_with_padded_heads(workdir, registry):
    out = merge(workdir, REF.format(method="task_arithmetic",
                                    params="{weight: 0.5, lambda: 0.8}"), registry)
    z = _zoo(workdir)
    models = ["ag_news", "imdb", "mnli", "mrpc"]
    name = "roberta.encoder.layer.1.output.dense.weight"
    want = z["base"][name] + 0.8 * sum(0.5 * (z[m][name] - z["base"][name]) for m in models)
    torch.testing.assert_close(out[name], want, atol=1e-6, rtol=0)
    # the base has no classifier: each head is its own task vector, zero-padded to 4 labels
    head = torch.zeros(4, 16)
    for m in models:
        w = z[m]["classifier.out_proj.weight"]
        head[: w.shape[0]] += 0.8 * 0.5 * w
    torch.testing.assert_close(out["classifier.out_proj.weight"], head, atol=1e-6, rtol=0)
    assert set(out) == set(z["ag_news"])  # tensors only in the base are not written


def test_preference_sets_weights(workdir, registry):
    pref = merge(workdir, REF.format(method="task_arithmetic", params="{}")
                 + "preference: [0.4, 0.3, 0.2, 0.1]\n", registry, output="p")
    explicit = merge(workdir, REF.format(method="task_arithmetic", params="{}").replace(
        "parameters: {}", "").replace("zoo/ag_news", "zoo/ag_news\n    parameters: {weight: 1.6}")
        .replace("zoo/imdb", "zoo/imdb\n    parameters: {weight: 1.2}")
        .replace("zoo/mnli", "zoo/mnli\n    parameters: {weight: 0.8}")
        .replace("zoo/mrpc", "zoo/mrpc\n    parameters: {weight: 0.4}"), registry, output="e")
    for name in pref:
        torch.testing.assert_close(pref[name], explicit[name], atol=1e-6, rtol=0)


def test_output_dtype_and_compute_dtype(workdir, registry):
    out = merge(workdir, REF.format(method="ties", params="{weight: 1, density: 0.5}")
                + "dtype: float32\nout_dtype: bfloat16\n", registry)
    assert {t.dtype for t in out.values()} == {torch.bfloat16}
    config = json.loads((workdir / "out" / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"


def test_same_recipe_same_bytes(workdir, registry):
    text = REF.format(method="ties", params="{weight: 1, density: 0.3}")
    merge(workdir, text, registry, output="a")
    merge(workdir, text, registry, output="b")

    def digest(folder):
        return hashlib.sha256((workdir / folder / "model.safetensors").read_bytes()).hexdigest()

    assert digest("a") == digest("b")


@pytest.mark.parametrize("quantized", [False, True])
def test_global_trim_keeps_top_k_of_whole_task_vector(quantized, workdir, registry, _zoo_cache):
    """Against a stable sort of each whole task vector. Quantized, many entries in several
    tensors tie at each model's cut-off and only the first ones (in tensor order) are kept: the
    tensors before the one holding the last kept tie keep all theirs, those after it none."""
    density = 0.1
    if quantized:
        (workdir / "zoo").unlink()
        quantized_zoo(_zoo_cache / "zoo", workdir / "zoo")
    out = merge(workdir, REF.format(
        method="ties", params=f"{{weight: 1, density: {density}, trim: global, lambda: 1.0}}"),
        registry)
    z = _zoo(workdir)
    models = ["ag_news", "imdb", "mnli", "mrpc"]
    names = sorted(out)
    # Reference: trim each model's concatenated task vector with a full sort, then TIES per tensor.
    width = {n: out[n].shape for n in names}
    kept, ties_in = {}, {}
    sizes = [out[n].numel() for n in names]
    for m in models:
        parts = []
        for n in names:
            base = z["base"].get(n, torch.zeros(z[m][n].shape))
            delta = torch.zeros(width[n])
            delta[tuple(slice(0, d) for d in z[m][n].shape)] = z[m][n] - (
                base if base.shape == z[m][n].shape else torch.zeros(z[m][n].shape))
            parts.append(delta.flatten())
        flat = torch.cat(parts)
        k = max(1, int(density * flat.numel()))
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[torch.sort(flat.abs(), descending=True, stable=True).indices[:k]] = True
        kept[m] = keep
        assert int(keep.sum()) == k
        threshold = torch.sort(flat.abs(), descending=True).values[k - 1]
        tied = flat.abs() == threshold
        split = bool(keep[tied].any()) and not bool(keep[tied].all())
        ties_in[m] = (split, sum(bool(t.any()) for t in torch.split(tied, sizes)))
    offset = 0
    for n in names:
        size = out[n].numel()
        deltas = []
        for m in models:
            base = z["base"].get(n)
            padded = torch.zeros(width[n])
            src = z[m][n] - (base if base is not None and base.shape == z[m][n].shape else 0)
            padded[tuple(slice(0, d) for d in z[m][n].shape)] = src
            deltas.append(padded.flatten() * kept[m][offset: offset + size])
        offset += size
        d = torch.stack(deltas)
        sign = torch.where(d.sum(0) >= 0, 1.0, -1.0)
        agree = d.sign() == sign
        merged = (d * agree).sum(0) / torch.clamp(agree.sum(0), min=1)
        base = z["base"].get(n)
        base = base.flatten() if base is not None and base.shape == out[n].shape else 0
        torch.testing.assert_close(out[n].flatten(), base + merged, atol=1e-6, rtol=0)
    # quantized: some model's cut keeps some of its ties, which lie in three tensors or more
    assert any(split and spread >= 3 for split, spread in ties_in.values()) == quantized


def test_missing_tensor_is_named(copy_zoo, workdir, registry):
    from prefkit.testing import make_finetuned

    make_finetuned(workdir / "broken", workdir / "zoo" / "base", seed=9, num_labels=2,
                   drop=("roberta.encoder.layer.1.output.dense.bias",))
    recipe = write_recipe(workdir, REF.format(method="task_arithmetic", params="{weight: 1}")
                          .replace("zoo/mrpc", "broken"))
    with pytest.raises(CheckpointError, match=r"tensor 'roberta.encoder.layer.1.output.dense.bias' "
                       r"is in zoo/ag_news, zoo/imdb, zoo/mnli but missing from broken"):
        resolve(load_recipe(recipe), registry, workdir / "out")


def test_shape_mismatch_outside_heads_is_an_error(workdir, registry):
    from prefkit.testing import make_base, make_finetuned

    make_base(workdir / "wide", hidden=24, intermediate=32)
    make_finetuned(workdir / "wide_ft", workdir / "wide", seed=3, num_labels=2)
    recipe = write_recipe(workdir, REF.format(method="task_arithmetic", params="{weight: 1}")
                          .replace("zoo/mrpc", "wide_ft"))
    with pytest.raises(PrefkitError, match=r"different shapes: \[16\] in zoo/ag_news; .*"
                       r"\[24\] in wide_ft"):
        resolve(load_recipe(recipe), registry, workdir / "out")


def test_failing_method_leaves_nothing(workdir, registry, monkeypatch):
    recipe = write_recipe(workdir, REF.format(method="ties", params="{weight: 1}"))
    plan = resolve(load_recipe(recipe), registry, workdir / "out")
    calls = []

    def broken(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return a[0][0]

    monkeypatch.setattr(plan.method.method, "merge", broken)
    with pytest.raises(MergeError, match=r"method 'ties' \(plugin 'ties'\) failed on tensor '.*': "
                       r"RuntimeError: boom"):
        execute(plan)
    assert sorted(p.name for p in workdir.iterdir() if "out" in p.name) == []


def test_force_replaces_only_when_complete(workdir, registry, monkeypatch):
    recipe = write_recipe(workdir, REF.format(method="ties", params="{weight: 1}"))
    plan = resolve(load_recipe(recipe), registry, workdir / "out")
    execute(plan)
    before = (workdir / "out" / "model.safetensors").read_bytes()
    monkeypatch.setattr(plan.method.method, "merge", lambda *a, **k: 1 / 0)
    with pytest.raises(MergeError):
        execute(plan, ExecuteOptions(force=True))
    assert (workdir / "out" / "model.safetensors").read_bytes() == before


def test_mixed_input_dtypes_are_cast_to_compute_dtype(workdir, registry):
    from prefkit.testing import make_finetuned

    make_finetuned(workdir / "half", workdir / "zoo" / "base", seed=5, num_labels=2,
                   dtype=torch.float16)
    out = merge(workdir, REF.format(method="linear", params="{weight: 1}").replace(
        "base_model: zoo/base\n", "").replace("zoo/mrpc", "half").replace(
        "  - model: zoo/ag_news\n", "").replace("  - model: zoo/mnli\n", ""), registry)
    z_imdb = load_tensors(workdir / "zoo" / "imdb")
    half = load_tensors(workdir / "half")
    name = "roberta.embeddings.LayerNorm.weight"
    assert out[name].dtype == torch.float32  # the first model's dtype
    torch.testing.assert_close(out[name], (z_imdb[name] + half[name].float()) / 2, atol=1e-6, rtol=0)


def test_linear_base_model_is_an_input_like_mergekit_unless_preference(workdir, registry):
    z = _zoo(workdir)
    name = "roberta.encoder.layer.0.attention.self.key.weight"
    text = ("merge_method: linear\nbase_model: zoo_same/base\nmodels:\n  - model: zoo_same/a\n"
            "  - model: zoo_same/b\n")
    z = {n: load_tensors(workdir / "zoo_same" / n) for n in ("base", "a", "b")}
    with_base = merge(workdir, text + "parameters: {weight: 1.0}\n", registry, output="w")
    torch.testing.assert_close(with_base[name], (z["a"][name] + z["b"][name] + z["base"][name]) / 3,
                               atol=1e-6, rtol=0)
    pref = merge(workdir, text + "preference: [0.75, 0.25]\n", registry, output="p")
    torch.testing.assert_close(pref[name], 0.75 * z["a"][name] + 0.25 * z["b"][name],
                               atol=1e-6, rtol=0)


def test_bare_encoder_base_serves_prefixed_model_names(workdir, registry, tmp_path):
    from safetensors.torch import save_file

    bare = tmp_path / "bare"
    bare.mkdir()
    tensors = load_tensors(workdir / "zoo_same" / "base")
    save_file({n.removeprefix("roberta."): t for n, t in tensors.items()
               if n.startswith("roberta.")}, str(bare / "model.safetensors"))
    (bare / "config.json").write_text((workdir / "zoo_same" / "base" / "config.json").read_text())
    text = ("merge_method: task_arithmetic\nbase_model: {}\nmodels:\n  - model: zoo_same/a\n"
            "  - model: zoo_same/b\nparameters: {{weight: 1.0, lambda: 0.0}}\n")
    out = merge(workdir, text.format(bare), registry)
    name = "roberta.encoder.layer.1.attention.self.value.weight"
    assert torch.equal(out[name], tensors[name])  # lambda 0: exactly the base


@pytest.mark.parametrize("atomic", [True, False], ids=["renameat2", "check-then-rename"])
def test_rename_noreplace_never_replaces(tmp_path, monkeypatch, atomic):
    """os.rename would replace an empty folder silently; the no-replace rename refuses, and so
    does its fallback (no renameat2), leaving both where they were."""
    from prefkit.io import ownership

    if not atomic:
        monkeypatch.setattr(ownership, "_renameat2", lambda: None)
    else:
        assert ownership._renameat2() is not None  # Linux with glibc 2.28+: the atomic call
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "x").write_text("new")
    (tmp_path / "there").mkdir()
    with pytest.raises(FileExistsError):
        ownership.rename_noreplace(tmp_path / "new", tmp_path / "there")
    assert (tmp_path / "new" / "x").read_text() == "new" and not any((tmp_path / "there").iterdir())
    ownership.rename_noreplace(tmp_path / "new", tmp_path / "moved")
    assert (tmp_path / "moved" / "x").read_text() == "new" and not (tmp_path / "new").exists()


def test_output_lock_is_reentrant_and_removed(tmp_path):
    """A solver holds the lock while learning and the executor takes it again: one process,
    one lock; the file goes when the outermost holder is done."""
    import os

    from prefkit.io.ownership import hold_output, lock_path, process_start

    out = tmp_path / "sub" / "out"
    with hold_output(out):
        with hold_output(out):
            assert lock_path(out).read_text() == f"{os.getpid()} {process_start(os.getpid())}\n"
        assert lock_path(out).exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_kept_result_is_never_taken_for_stale(tmp_path):
    from prefkit.io.outdir import KEPT, recover_interrupted

    out = tmp_path / "out"
    kept, stale = tmp_path / ".out.prefkit-tmp-1-99999999999", tmp_path / ".out.prefkit-tmp-2-99999999999"
    for folder in (kept, stale):
        folder.mkdir()
    (kept / KEPT).write_text("kept\n")
    assert recover_interrupted(out, locked=True) == [
        f"{out}: removed {stale.name} left by an interrupted run"]
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]


def test_a_slab_that_overflows_is_named_with_its_rows():
    """Large tensors are checked slab by slab: the error says which rows it counted."""
    from types import SimpleNamespace

    import numpy as np

    from prefkit.io.finite import check_result

    tp = SimpleNamespace(name="big.weight", out_dtype="float16", shape=(8, 2), params=None,
                         model_params=(), sources=(), base=None)
    slab = np.array([[1.0, np.inf], [-np.inf, 2.0]], np.float16)
    check_result(tp, None, slab[:, :0], True, True, (0, 2))  # no entries: nothing to say
    with pytest.raises(MergeError) as caught:
        check_result(tp, None, slab, True, True, (2, 4))
    assert str(caught.value) == (
        "tensor 'big.weight': the merge gave 2 non-finite value(s) (rows 2-4 of 8) from finite "
        "inputs: lower the parameters that scale it; nothing was written")
    with pytest.raises(MergeError):  # --allow-nonfinite checks it too: its inputs hold none
        check_result(tp, None, slab, True, False, (2, 4))


def test_another_thread_of_this_process_is_refused(tmp_path):
    import os
    import threading

    from prefkit.errors import OutputError
    from prefkit.io.ownership import hold_output

    out, errors = tmp_path / "out", []

    def second():
        try:
            with hold_output(out):
                pass
        except OutputError as exc:
            errors.append(str(exc))

    with hold_output(out):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert errors == [f"output {out} is in use by another prefkit run (pid {os.getpid()}) (wait "
                      "for it to finish, or choose another -o)"]
