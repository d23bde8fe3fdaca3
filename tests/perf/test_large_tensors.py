"""Merges of tensors that span several of the executor's chunks, against a naive reference.

The fast paths (chunked radix selection of TIES's cut-off, reused scratch buffers, chunks spread
over worker threads, slabs) only differ from a straightforward implementation once a tensor is
larger than one chunk (`prefkit.ops.CHUNK`, 2^18 entries). The golden tests use small tensors, so
here the zoo's embedding spans 4 chunks and its feed-forward matrices 2, and every merged tensor
must equal TIES / task arithmetic written the obvious way (a sort for the top-k, masks for the
election) to float32 rounding. A cut-off found from the wrong histogram moves about half the
entries of a tensor by ~1e-2, far outside the tolerance.
"""

from __future__ import annotations

import pytest
import torch
from prefkit.plugins.ties.cut import magnitude_cut_point
from prefkit.plugins.ties.selection import MagnitudeSelection

import prefkit.engine.executor as executor
from prefkit.ops import CHUNK, kth_largest_magnitude
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from prefkit.testing import make_zoo
from tests.helpers import load_tensors, write_recipe

MODELS = ("ag_news", "imdb", "mnli", "mrpc")
WEIGHTS = (1.0, 0.7, 0.5, 0.3)
RECIPE = """\
merge_method: {method}
base_model: large/base
models:
{models}
parameters: {params}
"""
CASES = {
    "ties": ("ties", "{density: 0.2}"),
    "ties_count_nonorm": ("ties", "{density: 0.35, consensus: count, normalize: false, lambda: 0.9}"),
    "ties_global": ("ties", "{density: 0.2, trim: global}"),
    "task_arithmetic": ("task_arithmetic", "{lambda: 0.8}"),
}


@pytest.fixture(scope="module")
def large_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("large")
    # embedding 13000×64 = 832,000 entries (4 chunks), feed-forward 64×4200 = 268,800 (2 chunks)
    make_zoo(root / "large", hidden=64, intermediate=4200, vocab=13000, positions=130, seed=11)
    return root


def _top_k_mask(delta: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest |δ|, ties at the cut-off kept lowest flat index first (a stable sort)."""
    order = torch.sort(delta.abs().reshape(-1), descending=True, stable=True).indices
    mask = torch.zeros(delta.numel(), dtype=torch.bool)
    mask[order[:k]] = True
    return mask.reshape(delta.shape)


def _padded(base: dict, models: list[dict]) -> tuple[dict, list[dict]]:
    """`heads: padded`: every model's head zero-padded to the largest, over a zero base head."""
    base, models = dict(base), [dict(m) for m in models]
    for name in sorted(set().union(*models) - set(base)):
        shape = [max(m[name].shape[d] for m in models) for d in range(models[0][name].dim())]
        base[name] = torch.zeros(shape)
        for m in models:
            m[name] = torch.nn.functional.pad(
                m[name], [p for d in reversed(range(len(shape))) for p in (0, shape[d] - m[name].shape[d])])
    return base, models


def _reference(method: str, params: dict, base: dict, models: list[dict]) -> dict:
    base, models = _padded(base, models)
    names = sorted(base)
    deltas = {n: [m[n] - base[n] for m in models] for n in names}
    if method == "task_arithmetic":
        return {n: base[n] + params["lambda"] * sum(w * d for w, d in zip(WEIGHTS, deltas[n]))
                for n in names}
    density = params["density"]
    if params.get("trim") == "global":  # one cut-off per model over its whole task vector
        for i in range(len(models)):
            whole = torch.cat([deltas[n][i].reshape(-1) for n in names])
            mask = _top_k_mask(whole, max(1, int(density * whole.numel())))
            for n, piece in zip(names, mask.split([base[n].numel() for n in names])):
                deltas[n][i] = deltas[n][i] * piece.reshape(base[n].shape)
    else:
        for n in names:
            deltas[n] = [d * _top_k_mask(d, max(1, int(density * d.numel()))) for d in deltas[n]]
    out = {}
    for n in names:
        weighted = torch.stack([w * d for w, d in zip(WEIGHTS, deltas[n])])
        if params.get("consensus") == "count":
            elected = torch.where(torch.sign(weighted).sum(0) >= 0, 1.0, -1.0)
        else:
            elected = torch.where(weighted.sum(0) >= 0, 1.0, -1.0)
        agrees = (torch.sign(weighted) == elected) & (weighted != 0)
        mixed = (weighted * agrees).sum(0)
        if params.get("normalize", True):
            divisor = (torch.tensor(WEIGHTS).reshape(-1, *[1] * base[n].dim()) * agrees).sum(0)
            mixed = mixed / torch.where(divisor == 0, 1.0, divisor)
        out[n] = base[n] + params.get("lambda", 1.0) * mixed
    return out


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("budget", [None, 6_000_000])  # whole tensors; slabs of > 1 chunk each
@pytest.mark.parametrize("case", sorted(CASES))
def test_multi_chunk_tensors_equal_the_naive_merge(case, budget, threads, large_zoo, registry,
                                                    monkeypatch):
    if budget is not None:
        monkeypatch.setattr(executor, "DEFAULT_BUDGET", budget)
    method, params_text = CASES[case]
    models = "\n".join(f"  - {{model: large/{m}, parameters: {{weight: {w}}}}}"
                       for m, w in zip(MODELS, WEIGHTS))
    recipe = write_recipe(large_zoo, RECIPE.format(method=method, models=models,
                                                   params=params_text), f"{case}.yaml")
    out = large_zoo / f"out-{case}-{budget}-{threads}"
    before = torch.get_num_threads()
    try:
        executor.execute(resolve(load_recipe(recipe), registry, out),
                         executor.ExecuteOptions(force=True, threads=threads))
    finally:
        torch.set_num_threads(before)

    import yaml

    params = yaml.safe_load(params_text)
    base = load_tensors(large_zoo / "large" / "base")
    inputs = [load_tensors(large_zoo / "large" / m) for m in MODELS]
    expected = _reference(method, params, base, inputs)
    merged = load_tensors(out)
    assert max(t.numel() for t in expected.values()) > 3 * CHUNK  # the point of this test
    for name, want in expected.items():
        torch.testing.assert_close(merged[name], want, rtol=0, atol=2e-6, msg=name)


@pytest.mark.parametrize("n", [CHUNK + 1, 3 * CHUNK + 17])
def test_cut_off_of_a_tensor_of_several_chunks_equals_a_sort(n):
    gen = torch.Generator().manual_seed(n)
    delta = torch.randn(n, generator=gen) * 1e-2
    delta[:: 7] = torch.round(delta[:: 7] * 64) / 64  # many ties, some of them at the cut-off
    magnitudes = torch.sort(delta.abs(), descending=True).values
    for density in (1e-5, 0.2, 0.5, 0.97):
        k = max(1, int(density * n))
        threshold = float(magnitudes[k - 1])
        greater = int((magnitudes > threshold).sum())
        assert kth_largest_magnitude(delta, k) == (threshold, greater), density
        assert magnitude_cut_point(delta, k)[:2] == (threshold, greater), density  # TIES's
        selection = MagnitudeSelection()  # streamed in pieces larger than a chunk
        for piece in delta.split(CHUNK + 1001):
            selection.add(piece)
        if selection.choose(k):
            for piece in delta.split(2 * CHUNK + 3):
                selection.add(piece)
        assert selection.result() == (threshold, greater, int((magnitudes == threshold).sum()))
