"""Slab merging equals whole-tensor merging, byte for byte, and stays within its memory budget.

The executor cuts a large tensor of an `elementwise` method into slabs of rows (prefkit.engine.slabs).
Here the slab budget is shrunk until every tensor with two or more rows is cut, and every output
byte must equal the merge of whole tensors: per-tensor and global TIES (whose cut-offs span the
tensor), ties at the cut-off (which keep the lowest flat indices, across slab boundaries), rescale
norms, zero-padded heads, dtype casts.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

import prefkit.engine.executor as executor
from prefkit.engine.slabs import Slab, slabs_of
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from tests.helpers import quantized_zoo, write_recipe

RECIPE = """\
merge_method: {method}
{base}models:
{models}
parameters: {params}
{extra}"""
ZOO_MODELS = ("ag_news", "imdb", "mnli", "mrpc")

CASES = {
    "linear": ("linear", "{weight: 0.7, normalize: true}", ""),
    "linear_nonorm": ("linear", "{weight: 0.3, normalize: false}", ""),
    "task_arithmetic": ("task_arithmetic", "{weight: 0.6, lambda: 0.8, normalize: true}", ""),
    "ties": ("ties", "{weight: 1, density: 0.3}", ""),
    "ties_count_nonorm": ("ties", "{weight: 0.8, density: 0.5, consensus: count, normalize: false}",
                          ""),
    "ties_global": ("ties", "{weight: 1, density: 0.2, trim: global, lambda: 0.9}", ""),
    "ties_rescale": ("ties", "{weight: 1, density: 0.4, rescale: true}", ""),
    "ties_global_rescale": ("ties", "{weight: 1, density: 0.25, trim: global, rescale: true}", ""),
    "ties_extremes": ("ties", "[{filter: mlp, value: 0}, {filter: embed, value: 1}, "
                      "{value: 0.1}]", ""),
    "ties_bf16_out": ("ties", "{weight: 1, density: 0.3}", "dtype: float32\nout_dtype: bfloat16\n"),
}


def _models(zoo: str, names=ZOO_MODELS) -> str:
    return "\n".join(f"  - model: {zoo}/{name}" for name in names)


def _recipe(case: str, zoo: str = "zoo") -> str:
    method, params, extra = CASES[case]
    if case == "ties_extremes":  # density per tensor filter: 0 (keep nothing) and 1 (keep all)
        params = f"{{weight: 1, density: {params}}}"
    base = "" if method == "linear" else f"base_model: {zoo}/base\n"  # linear would merge it too
    return RECIPE.format(method=method, base=base, models=_models(zoo), params=params, extra=extra)


def _run(folder, text, registry, output, *, budget=None, monkeypatch=None, **kw):
    if budget is not None:
        monkeypatch.setattr(executor, "DEFAULT_BUDGET", budget)
    plan = resolve(load_recipe(write_recipe(folder, text, f"{output}.yaml")), registry, folder / output)
    executor.execute(plan, executor.ExecuteOptions(force=True, **kw))
    if budget is not None:
        monkeypatch.undo()
    return folder / output


def _digests(folder) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.glob("*.safetensors"))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_slabs_equal_whole_tensors(case, workdir, registry, monkeypatch):
    whole = _run(workdir, _recipe(case), registry, "whole", max_shard_bytes=10_000)
    slabbed = _run(workdir, _recipe(case), registry, "slabs", budget=1, monkeypatch=monkeypatch,
                   max_shard_bytes=10_000)
    assert len(_digests(whole)) > 1 and _digests(slabbed) == _digests(whole)
    assert (slabbed / "model.safetensors.index.json").read_text() == \
        (whole / "model.safetensors.index.json").read_text()


@pytest.mark.parametrize("case", ["linear", "ties", "ties_global", "ties_rescale"])
def test_reading_ahead_mixed_slab_sizes(case, workdir, registry, monkeypatch):
    """Slabs over 300 bytes take turns in the two large buffer sets, smaller ones in the ring
    that is read further ahead; TIES's per-tensor scans re-read slabs in between. Reused buffers
    must never be read into while in use."""
    from prefkit.engine import slabs

    whole = _run(workdir, _recipe(case), registry, "whole")
    monkeypatch.setattr(slabs, "SMALL_SLAB", 300)  # one embedding row of 5 inputs: 320 bytes
    slabbed = _run(workdir, _recipe(case), registry, "slabs", budget=1, monkeypatch=monkeypatch)
    assert _digests(slabbed) == _digests(whole)


@pytest.mark.parametrize("case", ["ties", "ties_global", "ties_rescale", "ties_count_nonorm"])
def test_ties_at_the_cutoff_across_slabs(case, workdir, registry, monkeypatch, _zoo_cache):
    quantized_zoo(_zoo_cache / "zoo", workdir / "qzoo")
    whole = _run(workdir, _recipe(case, "qzoo"), registry, "whole")
    slabbed = _run(workdir, _recipe(case, "qzoo"), registry, "slabs", budget=1,
                   monkeypatch=monkeypatch)
    assert _digests(slabbed) == _digests(whole)


def test_quantized_zoo_really_ties_at_the_cutoff(workdir, _zoo_cache):
    """The data above is what makes the tie test bite: at the per-tensor cut-off many entries
    share the k-th largest magnitude, and only some of them may be kept."""
    from prefkit.ops import kth_largest_magnitude

    zoo = quantized_zoo(_zoo_cache / "zoo", workdir / "qzoo")
    name = "roberta.encoder.layer.0.intermediate.dense.weight"
    base, tuned = (next(load_file(str(f))[name] for f in (zoo / m).glob("*.safetensors")
                        if name in load_file(str(f))) for m in ("base", "imdb"))
    delta = tuned - base
    k = int(0.3 * delta.numel())
    threshold, greater = kth_largest_magnitude(delta, k)
    equal = int((delta.abs() == threshold).sum())
    assert greater < k < greater + equal


def test_slab_shapes_cover_the_tensor_in_order(workdir, registry):
    plan = resolve(load_recipe(write_recipe(workdir, _recipe("linear"))), registry, workdir / "o")
    embedding = next(t for t in plan.tensors if t.name.endswith("word_embeddings.weight"))
    rows, width = embedding.shape
    budget = 4 * width * 4 * 7  # 7 rows of 4 float32 inputs
    slabs = slabs_of(embedding, 4, budget, split=True)
    assert [s.rows for s in slabs] == [(a, min(a + 7, rows)) for a in range(0, rows, 7)]
    assert all(s.count == len(slabs) and s.index == i for i, s in enumerate(slabs))
    assert slabs_of(embedding, 4, budget, split=False)[0].rows is None
    assert slabs_of(embedding, 4, 4 * rows * width * 4, split=True)[0].rows is None  # fits whole
    assert isinstance(slabs[0], Slab) and slabs[-1].last


def test_peak_buffers_stay_within_two_slab_budgets(workdir, registry, monkeypatch):
    """With a budget far below the group size, the reused buffers never outgrow two slabs (plus
    the output slab): memory does not grow with the tensor."""
    from prefkit.engine import slabs

    sizes: list[int] = []
    take = slabs.BufferPool.take

    def spy(self, key, nbytes):
        out = take(self, key, nbytes)
        sizes.append(sum(len(b) for b in self._buffers.values()))  # bytes: torch or numpy
        return out

    monkeypatch.setattr(slabs.BufferPool, "take", spy)
    monkeypatch.setattr(slabs, "SMALL_SLAB", 300)  # a slab of over 300 bytes counts as large
    budget = 5 * 16 * 4 * 3  # three embedding rows (16 wide, float32) of 5 inputs
    _run(workdir, _recipe("ties"), registry, "small", budget=budget, monkeypatch=monkeypatch)
    embedding = 5 * 50 * 16 * 4  # the whole embedding group: 4 models and the base
    # two large sets (the slab being merged, the one being read) and the ring of results being
    # written, a ring of small sets read ahead, raw bytes of padded heads
    ring = slabs.RESULT_RING * budget // 5  # results waiting to be written: one input's slab each
    small = (slabs.LOOKAHEAD + 2) * 300
    assert 0 < max(sizes) <= 2 * budget + ring + small + budget < embedding


def test_writer_refuses_slabs_out_of_order(tmp_path):
    from prefkit.io.writer import OutTensor, ShardWriter

    writer = ShardWriter(tmp_path, [[OutTensor("w", "float32", (4, 2))]], {})
    writer.write("w", torch.ones(3, 2))
    with pytest.raises(ValueError, match=r"planned float32\[4, 2\], got float32\[2, 2\] after 3 rows"):
        writer.write("w", torch.ones(2, 2))
    writer.write("w", torch.full((1, 2), 2.0))
    writer.close()
    out = load_file(str(tmp_path / "model.safetensors"))["w"]
    assert torch.equal(out, torch.tensor([[1.0, 1], [1, 1], [1, 1], [2, 2]]))


def test_prefkit_json_records_the_same_merge(workdir, registry, monkeypatch):
    slabbed = _run(workdir, _recipe("ties"), registry, "slabs", budget=1, monkeypatch=monkeypatch)
    provenance = json.loads((slabbed / "prefkit.json").read_text())
    assert provenance["method"] == "ties"
