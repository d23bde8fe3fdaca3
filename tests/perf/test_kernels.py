"""TIES's fused C loops (`prefkit.plugins.ties.kernels`) give the eager path's bits, and really run.

Every TIES merge below runs twice, with `PREFKIT_KERNELS=torch` (eager) and with the kernels,
on tensors of several chunks (so chunks run on two threads) with zeros, ties at the cut-off,
negative zeros, infinities and NaNs; the outputs must be equal bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from prefkit.plugins.ties import TiesMethod, TiesModelParams, TiesParams, kernels
from prefkit.plugins.ties.cut import MagnitudeCut, task_vector_cut_point
from prefkit.plugins.ties.fused import kernels_enabled, kernels_for
from prefkit.plugins.ties.histograms import high_histogram, low_histogram
from prefkit.plugins.ties.selection import PREDICT_MIN, MagnitudeSelection

from prefkit import ops
from prefkit.api import MergeInfo, TensorInfo

N = 3 * ops.CHUNK + 12_345  # several chunks, the last one short
INFO = MergeInfo(TensorInfo("layer.0.weight", 0, 0.0, ("a", "b", "c")))


def _inputs(seed: int, special: bool):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(N, generator=g) * 0.05
    models = [base + torch.randn(N, generator=g) * 1e-3 for _ in range(3)]
    models[1][::5] = base[::5]  # exact zeros in one task vector
    models[2][::9] = base[::9] + 2.0 ** -10  # many entries equal in magnitude: ties at the cut
    models[2][1::9] = base[1::9] - 2.0 ** -10
    if special:
        models[0][7::1000] = float("inf")
        models[1][11::1000] = -float("inf")
        models[0][13::997] = float("nan")
        base[17::1000] = -0.0
        models[2][17::1000] = -0.0
    return base, models


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit (so -0 ≠ +0), except that a NaN's sign and payload are free: which
    operand's NaN a product returns is the compiler's choice, in torch's loops as in ours."""
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a.view(torch.int32)[~nan],
                                                       b.view(torch.int32)[~nan])


def _merge(base, models, params: TiesParams, model_params, threads: int) -> torch.Tensor:
    with ops.merge_threads(threads):
        return TiesMethod().merge([m.clone() for m in models], base=base.clone(), params=params,
                                  model_params=model_params, info=INFO)


CASES = {
    "sum": (dict(), [0.2, 0.2, 0.2]),
    "count, no normalize, lambda": (dict(consensus="count", normalize=False, **{"lambda": 0.7}),
                                    [0.3, 0.1, 0.5]),
    "keep all / keep nothing / ties": (dict(), [1.0, 0.0, 0.111]),
    "rescale": (dict(rescale=True), [0.25, 0.5, 0.05]),
}


@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf-nan"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_merge_gives_the_eager_bits(case, special, monkeypatch):
    params_dict, densities = CASES[case]
    params = TiesParams(**params_dict)
    weights = [0.5, -0.3, 1.7]  # a negative weight flips its votes
    model_params = [TiesModelParams(weight=w, density=d) for w, d in zip(weights, densities)]
    base, models = _inputs(seed=len(case), special=special)

    monkeypatch.setenv("PREFKIT_KERNELS", "torch")
    eager = _merge(base, models, params, model_params, threads=2)
    monkeypatch.delenv("PREFKIT_KERNELS")
    assert kernels_for(base) is kernels
    calls = []
    chunk = kernels.TiesChunk.__call__
    monkeypatch.setattr(kernels.TiesChunk, "__call__",
                        lambda self, *a, **k: calls.append(1) or chunk(self, *a, **k))
    fused = _merge(base, models, params, model_params, threads=2)

    assert len(calls) == 4  # every chunk went through the kernels
    assert _same_bits(fused, eager)
    assert not _same_bits(fused, base)  # the merge did something


def test_a_cut_that_splits_its_ties_spends_them_in_flat_order(monkeypatch):
    """Every entry ties: the cut keeps the lowest flat indices, trimmed chunk after chunk before
    the fused merge (float32) or the eager one (float64, where the kernels never run)."""
    base = torch.zeros(N)
    models = [torch.full((N,), 0.5), torch.full((N,), -0.25)]
    params = [TiesModelParams(weight=1.0, density=0.5), TiesModelParams(weight=1.0, density=0.5)]
    merged = _merge(base, models, TiesParams(), params, threads=2)
    half = N // 2  # where both remain, +0.5 wins the vote; past half, nothing is kept
    assert torch.equal(merged[:half], torch.full((half,), 0.5))
    assert torch.equal(merged[half:], torch.zeros(N - half))

    monkeypatch.setattr(kernels.TiesChunk, "__call__", lambda *a, **k: pytest.fail("fused"))
    doubles = _merge(base.double(), [m.double() for m in models], TiesParams(), params, threads=2)
    assert torch.equal(doubles, merged.double())


def _special_values(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    values = torch.randn(n, generator=g) * 1e-2
    values[::3] = -values[::3]
    values[::101] = float("inf")
    values[::103] = -0.0
    return values


def test_fused_histograms_equal_bincount():
    values = _special_values(N)
    bits = ops.magnitude_bits(values)
    high_bin = int(ops.bin_of_kth_largest(high_histogram(bits), N // 5)[0])
    lo, hi = (high_bin - 2) << 16, (high_bin + 3) << 16
    counts, near = kernels.high_counts(values, window=(lo, hi))
    assert torch.equal(counts, high_histogram(bits))
    assert torch.equal(near, bits[(bits >= lo) & (bits < hi)])  # in order, every one of them
    assert torch.equal(kernels.low_counts(values, high_bin), low_histogram(bits, high_bin))
    assert int(counts.sum()) == N and 0 < near.numel() < N // kernels.KEPT_ROOM


def test_fused_task_vector_and_overflowing_window():
    """With `base`, the values become τ = values − base in the same pass (torch's sub_ bits);
    a window that holds more than 1/KEPT_ROOM of the values keeps nothing."""
    values, base = _special_values(N), torch.full((N,), 0.25)
    tau = values - base
    got = values.clone()
    counts, near = kernels.high_counts(got, base, window=(0, 0x7F800000))  # every finite |τ|
    assert torch.equal(got.view(torch.int32), tau.view(torch.int32))
    assert torch.equal(counts, high_histogram(ops.magnitude_bits(tau)))
    assert near is None


def test_the_predicted_window_spares_the_second_round(monkeypatch):
    """A tensor's cut-off from one fused pass (round 1 kept what lay near the prediction), and
    from two when the prediction misses; both equal a sort."""
    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    g = torch.Generator().manual_seed(5)
    base = torch.randn(PREDICT_MIN + 999, generator=g)
    tensor = base + torch.randn(base.numel(), generator=g) * 1e-3
    k = base.numel() // 5
    tau = tensor - base
    mag = tau.abs()
    want_threshold = float(torch.sort(mag, descending=True).values[k - 1])
    want = (want_threshold, int((mag > want_threshold).sum()), int((mag == want_threshold).sum()))

    selection = MagnitudeSelection(top_fraction=0.2)
    selection.add_task_vector(tensor.clone(), base)
    assert selection.choose(k) is False  # found among the kept patterns
    assert selection.result() == want

    misled = MagnitudeSelection(top_fraction=0.9)  # predicts far below the cut-off
    moved = tensor.clone()
    misled.add_task_vector(moved, base)
    assert misled.choose(k) is True
    misled.add(moved)
    assert misled.result() == want
    assert task_vector_cut_point(tensor.clone(), base, k) == want
    late = tensor.clone()
    selection.add_task_vector(late, base)  # after the last round: ignored, but τ is formed
    assert torch.equal(late, tau) and selection.result() == want


def test_streamed_pieces_keep_little_and_stay_exact(monkeypatch):
    """Slabs of one tensor (`streamed`): the first slab's exact cut-off predicts the window, so
    well that 3 bins suffice (under 1% of the values kept until the last slab); a first slab
    unlike the rest misleads it, and the second round answers."""
    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    g = torch.Generator().manual_seed(6)
    rows, width = 4000, 768  # 3.1M values in slabs of 300 rows (230k values each)
    base = torch.randn(rows, width, generator=g)
    tensor = base + torch.randn(rows, width, generator=g) * 1e-3
    k = int(0.2 * tensor.numel())

    def streamed(tensor):
        selection = MagnitudeSelection(top_fraction=0.2, streamed=True)
        kept = []
        for start in range(0, rows, 300):
            selection.add_task_vector(tensor[start:start + 300], base[start:start + 300])
            kept.append(sum(n.numel() for n in selection._near or []))
        second_round = selection.choose(k)
        if second_round:
            for start in range(0, rows, 300):
                selection.add(tensor[start:start + 300])
        return selection.result(), second_round, kept[-1]

    tau = (tensor - base).abs().reshape(-1)
    threshold = float(torch.sort(tau, descending=True).values[k - 1])
    want = (threshold, int((tau > threshold).sum()), int((tau == threshold).sum()))
    found, second_round, kept = streamed(tensor.clone())
    assert (found, second_round) == (want, False)
    assert 0 < kept < tensor.numel() // 100

    unlike = tensor.clone()
    unlike[:300] = base[:300] + torch.randn(300, width, generator=g) * 1e-1  # a louder first slab
    tau = (unlike - base).abs().reshape(-1)
    threshold = float(torch.sort(tau, descending=True).values[k - 1])
    want = (threshold, int((tau > threshold).sum()), int((tau == threshold).sum()))
    found, second_round, _ = streamed(unlike)
    assert (found, second_round) == (want, True)


def test_which_tensors_take_the_kernels(monkeypatch):
    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    assert kernels_for(torch.zeros(2)) is kernels  # built by the install (`make setup`)
    assert kernels_for(torch.zeros(2), torch.zeros(2, dtype=torch.float64)) is None
    assert kernels_for(torch.zeros(2, dtype=torch.bfloat16)) is None
    assert kernels_for(torch.zeros(2, device="meta")) is None
    monkeypatch.setenv("PREFKIT_KERNELS", "torch")
    assert kernels_for(torch.zeros(2)) is None


def test_without_the_extension_merges_take_the_eager_path(monkeypatch):
    """An install without a C compiler skips the (optional) extension: the TIES plugin's
    `kernels` then fails to import, `fused.kernels_for` answers None and TIES takes torch
    tensors; its merges take the eager path and give the same bits."""
    import importlib
    import sys

    import prefkit.plugins.ties as ties

    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    base, models = _inputs(seed=1, special=True)
    params = [TiesModelParams(weight=w, density=0.2) for w in (0.5, -0.3, 1.7)]
    with_kernels = _merge(base, models, TiesParams(), params, threads=2)
    monkeypatch.delattr(ties, "kernels")
    monkeypatch.setitem(sys.modules, "prefkit.plugins.ties.kernels", None)  # as if it failed
    assert kernels_for(torch.zeros(2)) is None and not kernels_enabled()
    assert not TiesMethod().takes_numpy
    assert _same_bits(_merge(base, models, TiesParams(), params, threads=2), with_kernels)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.delitem(sys.modules, "prefkit.plugins.ties.kernels")
    with pytest.raises(ImportError, match="not built"):
        importlib.import_module("prefkit.plugins.ties.kernels")


def _sorted_cut(pieces, k):
    mag = torch.cat([p.reshape(-1) for p in pieces]).abs()
    threshold = float(torch.sort(mag, descending=True).values[k - 1])
    return threshold, int((mag > threshold).sum()), int((mag == threshold).sum())


def _mixed_selection(taus, bases, *, total, numpy: bool = False):
    """A whole task vector's pieces through a `mixed` selection (round 2 over the first `rescan`
    pieces only, as the TIES plugin's `_cuts` does): the result, and `rescan` (-1: no second round).
    `numpy`: the pieces as numpy arrays (TIES on numpy)."""
    n = sum(t.numel() for t in taus)
    k = int(0.2 * n)
    if numpy:
        taus, bases = [t.numpy() for t in taus], [b.numpy() for b in bases]
    selection = MagnitudeSelection(top_fraction=0.2, mixed=True, total=total)
    for tau, base in zip(taus, bases):
        selection.add_task_vector(tau + base, base)
    if not selection.choose(k):
        return selection.result(), -1
    for tau in taus[:selection.rescan]:
        selection.add(tau.copy() if numpy else tau.clone())
    return selection.result(), selection.rescan


def _task_vectors(g, sizes, scales):
    """Bases and task vectors τ such that (τ + base) − base is τ (as the selection forms it)."""
    bases = [torch.randn(s, generator=g) for s in sizes]
    taus = [(torch.randn(s, generator=g) * c + b) - b for s, c, b in zip(sizes, scales, bases)]
    return taus, bases


def _loud_head_first(seed):
    """A loud head first, then tensors of another spread with tiny ones between them."""
    g = torch.Generator().manual_seed(seed)
    sizes = [768, 1 << 17, 768] + [1 << 18, 768, 768] * 12
    return _task_vectors(g, sizes, [1e-1, 1e-1, 1e-3] + [1e-3] * 36)


def test_mixed_pieces_are_exact_and_mostly_one_round(monkeypatch):
    """The pieces of a whole task vector (`mixed`): the window follows the predicted cut-off, so
    the second round needs only the first few pieces; with no `total` (the prediction is then
    the cut-off of what was counted so far, which the head leads astray for longer) more; on
    the eager path all of them. Every answer equals a sort."""
    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    taus, bases = _loud_head_first(7)
    total = sum(t.numel() for t in taus)
    want = _sorted_cut(taus, int(0.2 * total))

    found, rescan = _mixed_selection(taus, bases, total=total)
    assert found == want and 0 <= rescan < 8 < len(taus)
    found, rescan_without_total = _mixed_selection(taus, bases, total=None)
    assert found == want and rescan_without_total > 3 * rescan
    monkeypatch.setenv("PREFKIT_KERNELS", "torch")
    found, rescan = _mixed_selection(taus, bases, total=total)
    assert found == want and rescan is None


def test_mixed_pieces_that_move_the_cut_off_late_stay_exact(monkeypatch):
    """A last piece that moves the cut-off far from where the others had it: the window never
    held its bin, and the second round runs over every piece. A caller that re-adds every piece
    (not only the first `rescan`) gets the same answer: the rest is ignored."""
    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    g = torch.Generator().manual_seed(8)
    sizes = [1 << 18] * 6 + [1 << 20]
    taus, bases = _task_vectors(g, sizes, [1e-3] * 6 + [1.0])
    k = int(0.2 * sum(sizes))
    found, rescan = _mixed_selection(taus, bases, total=sum(sizes) // 2)  # a wrong total, too
    assert found == _sorted_cut(taus, k) and rescan is None

    taus, bases = _loud_head_first(9)
    total = sum(t.numel() for t in taus)
    selection = MagnitudeSelection(top_fraction=0.2, mixed=True, total=total)
    for tau, base in zip(taus, bases):
        selection.add_task_vector(tau + base, base)
    assert selection.choose(int(0.2 * total)) and 0 < selection.rescan < len(taus)
    for tau in taus:
        selection.add(tau.clone())
    assert selection.result() == _sorted_cut(taus, int(0.2 * total))


def test_a_piece_crowding_the_window_restarts_its_counts(monkeypatch):
    """A piece that puts more than half its values in the window (they are not all kept): the
    window's counts start again after it, and the second round covers it. Exact all the same."""
    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    g = torch.Generator().manual_seed(10)
    first = torch.randn(1 << 18, generator=g) * 1e-3
    near_cut = float(torch.quantile(first.abs()[:1 << 16], 0.8))
    crowd = near_cut * (1 + 1e-3 * torch.randn(1 << 18, generator=g)) * torch.randn(
        1 << 18, generator=g).sign()
    rest = torch.randn(1 << 18, generator=g) * 1e-3
    bases = [torch.randn(1 << 18, generator=g) for _ in range(3)]
    taus = [(t + b) - b for t, b in zip((first, crowd, rest), bases)]
    found, rescan = _mixed_selection(taus, bases, total=3 << 18)
    assert found == _sorted_cut(taus, int(0.2 * (3 << 18))) and rescan == 2


@pytest.mark.parametrize("path", ["fused", "eager"])
def test_split_off_gives_a_tensor_its_ties_or_none(path, monkeypatch):
    """An ordered cut (3 of 5 entries tied at the threshold are kept) meets tensors one by one:
    one holding 2 ties gets all of them (an order-free cut) and spends them; the next, holding
    2 ties with 1 left, gets None (trim it in flat order)."""
    if path == "eager":
        monkeypatch.setenv("PREFKIT_KERNELS", "torch")
    else:
        monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    t = 2.0 ** -7
    two, more = torch.zeros(N), torch.zeros(N)
    two[[5, N - 1]] = torch.tensor([t, -t])
    more[[0, ops.CHUNK + 1]] = torch.tensor([-t, t])
    more[7] = t * 1.5  # above the threshold: not a tie
    cut = MagnitudeCut(t, 3, 5)
    assert cut.ordered(torch.float32)
    own = cut.split_off(two)
    assert (own.threshold, own.ties, own.equal) == (t, 2, 2) and not own.ordered(torch.float32)
    assert (cut.ties, cut.equal) == (1, 3)
    assert cut.split_off(more) is None and (cut.ties, cut.equal) == (1, 3)
