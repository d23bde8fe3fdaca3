"""Merges on numpy arrays (no torch import) write the same bytes as merges on torch tensors.

Linear, task arithmetic and float32 TIES declare `takes_numpy`: on the CPU the executor then
reads, converts, merges and writes numpy arrays and never imports torch (1-2.5 s of start-up).
Every byte must equal the torch path's, for every dtype the numpy path takes (bfloat16 only
converted), with padded heads, slabs, five or more models (whose weight sum torch would
regroup), half-precision scalars, and TIES's every selection mode: tensors sorted directly,
fused windows, slabs (`streamed`), whole task vectors (`mixed`), ties at the cut-off.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from prefkit.plugins.ties.cut import MagnitudeCut, magnitude_cut_point, task_vector_cut_point
from safetensors.torch import load_file, save_file

import prefkit.engine.executor as executor
from prefkit import ops
from prefkit.errors import CheckpointError
from prefkit.io import arrays
from prefkit.io.checkpoint import TensorReader
from prefkit.io.writer import OutTensor, ShardWriter
from prefkit.recipe import load_recipe
from prefkit.recipe.resolve import resolve
from prefkit.testing.checkpoints import make_zoo
from tests.helpers import quantized_zoo, write_recipe

MODELS = ("ag_news", "imdb", "mnli", "mrpc")


def _cast_zoo(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    shutil.copytree(src, dst)
    for file in dst.rglob("*.safetensors"):
        tensors = load_file(str(file))
        save_file({n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()},
                  str(file))
    return dst


@pytest.fixture(scope="module")
def zoos(_zoo_cache, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dtypes")
    out = {"float32": _zoo_cache / "zoo"}
    for name in ("float16", "bfloat16", "float64", "float8_e4m3fn"):
        out[name] = _cast_zoo(out["float32"], root / name, getattr(torch, name))
    # six fine-tunes: torch's sum of six weights regroups them, `weight_sum` must not
    out["six"] = root / "six"
    make_zoo(out["six"], tasks={f"t{i}": 3 for i in range(6)}, seed=3)
    # tensors above MagnitudeSelection's SMALL and PREDICT_MIN (a 6000x64 embedding, 64x4096
    # FFN matrices): TIES's windows, predictions and mixed counts, not only direct sorts
    out["wide"] = root / "wide"
    make_zoo(out["wide"], seed=4, vocab=6000, hidden=64, intermediate=4096)
    out["wide_quantized"] = quantized_zoo(out["wide"], root / "wide_quantized")  # ties at the cut
    return out


def _recipe(method: str, zoo: Path, params: str, extra: str = "", models=MODELS) -> str:
    base = "" if method == "linear" else f"base_model: {zoo}/base\n"
    lines = "\n".join(f"  - model: {zoo}/{m}" for m in models)
    return f"merge_method: {method}\n{base}models:\n{lines}\nparameters: {params}\n{extra}"


def _merge(folder: Path, text: str, registry, name: str, monkeypatch, *, numpy: bool,
           budget: int | None = None) -> dict[str, str]:
    """Merge on the numpy or the torch path; the output files' digests."""
    with monkeypatch.context() as patch:
        if not numpy:
            patch.setattr(executor, "numpy_merge", lambda plan: False)
        if budget is not None:
            patch.setattr(executor, "DEFAULT_BUDGET", budget)
        seen = []
        real = executor.numpy_merge
        patch.setattr(executor, "numpy_merge", lambda plan: seen.append(real(plan)) or seen[-1])
        plan = resolve(load_recipe(write_recipe(folder, text, f"{name}.yaml")), registry,
                       folder / name)
        executor.execute(plan, executor.ExecuteOptions(force=True, max_shard_bytes=5_000))
    assert seen == [numpy]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted((folder / name).glob("*.safetensors"))}


CASES = {  # id: (method, zoo, parameters, extra recipe lines)
    "linear": ("linear", "float32", "{weight: 0.7, normalize: true}", ""),
    "linear_weights": ("linear", "float32", "{weight: [{filter: attention, value: 0.37}, "
                       "{value: 1.3}], normalize: true}", ""),
    "linear_nonorm": ("linear", "float32", "{weight: 0.3, normalize: false}", ""),
    "linear_f16": ("linear", "float16", "{weight: 0.7, normalize: true}", ""),
    "linear_f64": ("linear", "float64", "{weight: 0.41, normalize: true}", ""),
    "linear_bf16_in_f32": ("linear", "bfloat16", "{weight: 0.7}", "dtype: float32\n"),
    "linear_bf16_out": ("linear", "float32", "{weight: 0.7}", "out_dtype: bfloat16\n"),
    "linear_f16_out": ("linear", "float32", "{weight: 0.9}", "out_dtype: float16\n"),
    "linear_float8": ("linear", "float8_e4m3fn", "{weight: 0.7}", ""),
    "linear_six": ("linear", "six", "{weight: 0.37, normalize: true}", ""),
    "ta": ("task_arithmetic", "float32", "{weight: 0.6, lambda: 0.8, normalize: true}", ""),
    "ta_f16": ("task_arithmetic", "float16", "{weight: 0.6, lambda: 0.7, normalize: true}", ""),
    "ta_f64": ("task_arithmetic", "float64", "{weight: 0.3, lambda: 1.1}", ""),
    "ta_bf16_in_f32_out_bf16": ("task_arithmetic", "bfloat16", "{weight: 0.45, lambda: 0.9}",
                                "dtype: float32\nout_dtype: bfloat16\n"),
    "ta_six": ("task_arithmetic", "six", "{weight: 0.37, normalize: true}", ""),
    "ties": ("ties", "float32", "{weight: 1, density: 0.3}", ""),
    "ties_count_nonorm": ("ties", "float32", "{weight: 0.8, density: 0.5, consensus: count, "
                          "normalize: false}", ""),
    "ties_global": ("ties", "float32", "{weight: 1, density: 0.2, trim: global, lambda: 0.9}", ""),
    "ties_rescale": ("ties", "float32", "{weight: 1, density: 0.4, rescale: true}", ""),
    "ties_extremes": ("ties", "float32", "{weight: 1, density: [{filter: mlp, value: 0}, "
                      "{filter: embed, value: 1}, {value: 0.1}]}", ""),
    "ties_bf16_in_f32": ("ties", "bfloat16", "{weight: 1, density: 0.3}",
                         "dtype: float32\nout_dtype: bfloat16\n"),
    "ties_wide": ("ties", "wide", "{weight: 0.8, density: 0.2}", ""),
    "ties_wide_global": ("ties", "wide", "{weight: 1, density: 0.2, trim: global}", ""),
    "ties_wide_global_rescale": ("ties", "wide", "{weight: 1, density: 0.3, trim: global, "
                                 "rescale: true}", ""),
    "ties_wide_quantized": ("ties", "wide_quantized", "{weight: 1, density: 0.3}", ""),
    "ties_wide_quantized_global": ("ties", "wide_quantized", "{weight: 1, density: 0.25, "
                                   "trim: global}", ""),
}


@pytest.mark.parametrize("slabs", [False, True], ids=["whole", "slabs"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_numpy_merge_writes_the_torch_bytes(case, slabs, zoos, tmp_path, registry, monkeypatch):
    method, zoo, params, extra = CASES[case]
    # slabs: every tensor of two rows or more cut (the wide zoo: the large ones, in a few slabs)
    budget = None if not slabs else 1 if not zoo.startswith("wide") else 1 << 20
    models = [f"t{i}" for i in range(6)] if zoo == "six" else MODELS
    text = _recipe(method, zoos[zoo], params, extra, models)
    on_numpy = _merge(tmp_path, text, registry, "numpy", monkeypatch, numpy=True, budget=budget)
    on_torch = _merge(tmp_path, text, registry, "torch", monkeypatch, numpy=False, budget=budget)
    assert len(on_numpy) > 1 and on_numpy == on_torch  # sharded, and every shard's bytes equal
    index = json.loads((tmp_path / "numpy" / "model.safetensors.index.json").read_text())
    assert index == json.loads((tmp_path / "torch" / "model.safetensors.index.json").read_text())


@pytest.mark.parametrize("zoo,extra,expected", [
    ("float32", "", True),
    ("bfloat16", "", False),  # numpy cannot compute in bfloat16: torch keeps it
    ("bfloat16", "dtype: float32\n", True),
    ("float32", "dtype: bfloat16\n", False),
    ("float8_e4m3fn", "", True),  # float8 tensors are copied, not merged: their bits pass through
])
def test_which_merges_run_on_numpy(zoo, extra, expected, zoos, tmp_path, registry):
    text = _recipe("linear", zoos[zoo], "{weight: 1}", extra)
    plan = resolve(load_recipe(write_recipe(tmp_path, text)), registry, tmp_path / "out")
    assert executor.numpy_merge(plan) is expected
    for dtype, on_numpy in (("float32", True), ("float16", False), ("float64", False)):
        # TIES takes numpy arrays only in float32, the dtype of its C loops
        ties = _recipe("ties", zoos["float32"], "{weight: 1, density: 0.5}", f"dtype: {dtype}\n")
        plan = resolve(load_recipe(write_recipe(tmp_path, ties, "t.yaml")), registry, tmp_path / "t")
        assert executor.numpy_merge(plan) is on_numpy


def test_pickle_inputs_keep_torch(zoos, tmp_path, registry):
    pickled = tmp_path / "pickled"
    shutil.copytree(zoos["float32"] / "mrpc", pickled)
    tensors = {}
    for file in sorted(pickled.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
        file.unlink()
    (pickled / "model.safetensors.index.json").unlink()
    torch.save(tensors, pickled / "pytorch_model.bin")
    text = (f"merge_method: linear\nmodels:\n  - model: {zoos['float32']}/imdb\n"
            f"  - model: {pickled}\nparameters: {{weight: 1}}\n")
    plan = resolve(load_recipe(write_recipe(tmp_path, text)), registry, tmp_path / "out",
                        allow_pickle=True)
    assert executor.numpy_merge(plan) is False


# the conversions and checks the numpy path does itself, against torch's


def _specials_f32() -> np.ndarray:
    rng = np.random.default_rng(0)
    scales = 10.0 ** rng.integers(-40, 38, 50_000).astype(np.float64)
    values = np.concatenate([
        (rng.standard_normal(50_000) * scales).clip(-3e38, 3e38).astype(np.float32),
        rng.integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array([0.0, -0.0, np.inf, -np.inf, 3.4028235e38, -3.4028235e38, 1e-45, 65504.0,
                  65520.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -9], np.float32),
    ])
    # exact ties of the bfloat16 rounding: the low 16 bits are 0x8000
    ties = (rng.integers(0, 2**16, 1000, dtype=np.uint32) << 16) | 0x8000
    return np.concatenate([values, ties.astype(np.uint32).view(np.float32)])


def test_float32_to_bfloat16_rounds_as_torch():
    values = _specials_f32()
    out = arrays.convert(values, "float32", np.empty(values.shape, np.uint16), "bfloat16")
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    finite = ~np.isnan(values)
    assert np.array_equal(out[finite], expected[finite])
    assert np.all(out[~finite] == arrays.BF16_NAN) and (~finite).sum() > 100


@pytest.mark.parametrize("source,target", [("float32", "float16"), ("float64", "float32"),
                                           ("float16", "float32"), ("float32", "float64"),
                                           ("float64", "bfloat16"), ("float16", "bfloat16")])
def test_float_conversions_equal_torch(source, target):
    with np.errstate(all="ignore"):  # the random bit patterns include signalling NaNs
        values = _specials_f32().astype(np.float64) * 1.000001
        values = values[np.isfinite(values)].astype(source)
    out = arrays.convert(values, source, arrays.empty(target, values.shape), target)
    expected = torch.from_numpy(values).to(getattr(torch, target))
    assert not torch.isfinite(expected).all()  # overflows and underflows are in the test
    expected = expected.view(torch.int16).numpy().view(np.uint16) if target == "bfloat16" else \
        expected.numpy()
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("target", ["float32", "float64", "float16"])
def test_bfloat16_to_float_equals_torch(target):
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)  # every bfloat16
    out = arrays.convert(bits, "bfloat16", arrays.empty(target, bits.shape), target)
    expected = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(getattr(torch, target))
    same = (out == expected.numpy()) | (np.isnan(out) & np.isnan(expected.numpy()))
    assert same.all()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16", "float8_e4m3fn",
                                   "float8_e5m2"])
def test_nonfinite_counts_equal_torch(dtype):
    values = torch.randn(10_000, generator=torch.Generator().manual_seed(1)) * 100
    values[::97] = float("nan")
    values[5::89] = float("inf")
    values[7::83] = -float("inf")
    tensor = values.to(getattr(torch, dtype))
    expected = int((~torch.isfinite(tensor.float())).sum())
    held = tensor.view(torch.uint8 if tensor.element_size() == 1 else torch.int16).numpy() \
        if dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2") else tensor.numpy()
    assert arrays.nonfinite(held.view(arrays.STORAGE[dtype]), dtype) == expected > 100
    finite = torch.randn(1000).to(getattr(torch, dtype))
    held = finite.view(torch.uint8 if finite.element_size() == 1 else torch.int16).numpy() \
        if dtype in ("bfloat16", "float8_e4m3fn", "float8_e5m2") else finite.numpy()
    assert arrays.nonfinite(held.view(arrays.STORAGE[dtype]), dtype) == 0


def test_finite_values_whose_sum_overflows_pass(tmp_path):
    big = torch.full((64,), 3e38)
    save_file({"w": big}, str(tmp_path / "model.safetensors"))
    from prefkit.io.checkpoint import Checkpoint

    reader = TensorReader()
    try:
        meta = Checkpoint.open(tmp_path).tensors["w"]
        assert np.array_equal(reader.read_array(meta), big.numpy())
        big[3] = float("nan")
        (tmp_path / "bad").mkdir()
        save_file({"w": big}, str(tmp_path / "bad" / "model.safetensors"))
        meta = Checkpoint.open(tmp_path / "bad").tensors["w"]
        with pytest.raises(CheckpointError, match="holds 1 NaN/Inf"):
            reader.read_array(meta)
    finally:
        reader.close()


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_ops_helpers_give_torch_bits_on_numpy(dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(100_000, generator=gen).to(getattr(torch, dtype))
    y = torch.randn(100_000, generator=gen).to(getattr(torch, dtype))
    weights = [0.37, 1.3, 0.11, 0.7, 0.05, 2.9, 0.6]
    for n in range(1, len(weights) + 1):
        total_np = ops.weight_sum(weights[:n], x.numpy())
        assert ops.weight_sum(weights[:n], x).numpy().tobytes() == np.asarray(total_np).tobytes()
    # the numpy sum is in order, in float32 for half (checked against a float64 reference)
    wide = np.float32 if dtype == "float16" else getattr(np, dtype)
    total = wide(0)
    for w in weights:
        total = wide(total + wide(getattr(np, dtype)(w)))
    assert ops.weight_sum(weights, x.numpy()) == getattr(np, dtype)(total)

    for fn in (lambda a: ops.mul_scalar_(a, 0.7), lambda a: ops.scale_(a, 0.3),
               lambda a: ops.task_vectors_([a], y if isinstance(a, torch.Tensor) else y.numpy()),
               lambda a: ops.add_product_(ops.accumulator(a), a, 0.37)):
        on_torch, on_numpy = x.clone(), x.numpy().copy()
        a, b = fn(on_torch), fn(on_numpy)
        a = a[0] if isinstance(a, list) else a
        b = b[0] if isinstance(b, list) else b
        assert a.numpy().tobytes() == np.asarray(b).tobytes()


def test_writer_takes_numpy_arrays_with_their_dtype(tmp_path):
    values = torch.randn(6, 4)
    bits = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    writer = ShardWriter(tmp_path, [[OutTensor("a", "bfloat16", (6, 4)),
                                     OutTensor("b", "float32", (6, 4))]], {"format": "pt"})
    writer.write("a", bits[:2], "bfloat16")  # slabs of rows, as the executor writes them
    writer.write("a", bits[2:], "bfloat16")
    with pytest.raises(ValueError, match="cannot hold float32"):
        writer.write("b", bits, "float32")
    writer.write("b", values.numpy(), "float32")
    writer.close()
    out = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(out["a"], values.to(torch.bfloat16)) and torch.equal(out["b"], values)


def test_linear_keeps_torch_without_the_c_extension(zoos, tmp_path, registry, monkeypatch):
    """numpy has no fused multiply-add: without the C loop, linear would not give addcmul_'s
    bits, so it merges torch tensors; TIES's float32 work is C loops too (and its eager path is
    torch's). Task arithmetic needs neither and stays on numpy. `PREFKIT_KERNELS=torch` too."""
    import sys

    import prefkit.plugins.ties as ties

    from prefkit.engine import clib

    def plan_of(method):
        params = "{weight: 0.5, density: 0.5}" if method == "ties" else "{weight: 0.5}"
        text = _recipe(method, zoos["float32"], params)
        return resolve(load_recipe(write_recipe(tmp_path, text, f"{method}.yaml")), registry,
                       tmp_path / method)

    assert executor.numpy_merge(plan_of("ties")) is True
    monkeypatch.setenv("PREFKIT_KERNELS", "torch")  # the eager path asked for: torch's
    assert executor.numpy_merge(plan_of("ties")) is False
    monkeypatch.delenv("PREFKIT_KERNELS")
    monkeypatch.setattr(clib, "library", lambda module, signatures: None)  # no prefkit.engine._fma
    monkeypatch.delattr(ties, "kernels")  # and no TIES loops: their wrappers' import fails
    monkeypatch.setitem(sys.modules, "prefkit.plugins.ties.kernels", None)
    for method, expected in (("linear", False), ("task_arithmetic", True), ("ties", False)):
        assert executor.numpy_merge(plan_of(method)) is expected


# TIES's exact selection on numpy arrays: the same answers as on torch tensors, on every path


@pytest.mark.parametrize("density", [1e-5, 0.2, 0.5, 0.97])
def test_cut_points_on_numpy_equal_a_sort(density):
    from tests.perf.test_selection import _reference, _tensors

    for name, delta in _tensors():
        if delta.dtype != torch.float32:
            continue  # TIES takes numpy arrays in float32 only
        k = max(1, int(density * delta.numel()))
        want = _reference(delta, k)
        assert magnitude_cut_point(delta.numpy().copy(), k) == want, name
        assert ops.kth_largest_magnitude(delta.numpy().copy(), k) == want[:2], name
        base = np.linspace(-1, 1, delta.numel(), dtype=np.float32)
        tau = (delta.numpy() + base) - base
        assert task_vector_cut_point(tau + base, base, k) == _reference(torch.from_numpy(tau), k)


def test_mixed_selections_on_numpy_equal_torch(monkeypatch):
    """A whole task vector's pieces (`mixed`): a loud head first, a late piece that moves the
    cut-off, a piece crowding the window: the same cut-offs and second rounds as on torch."""
    from tests.perf import test_kernels as kernels_tests

    monkeypatch.delenv("PREFKIT_KERNELS", raising=False)
    g = torch.Generator().manual_seed(8)
    late = kernels_tests._task_vectors(g, [1 << 18] * 6 + [1 << 20], [1e-3] * 6 + [1.0])
    head = kernels_tests._loud_head_first(7)
    for (taus, bases), total in ((head, sum(t.numel() for t in head[0])), (head, None),
                                 (late, (6 << 18) + (1 << 20))):
        on_torch = kernels_tests._mixed_selection(taus, bases, total=total)
        assert kernels_tests._mixed_selection(taus, bases, total=total, numpy=True) == on_torch
        assert on_torch[0] == kernels_tests._sorted_cut(taus, int(0.2 * sum(t.numel() for t in taus)))


def test_split_off_and_ordered_trims_on_numpy():
    """An ordered cut (3 of 5 tied entries kept) over numpy pieces spends its ties as on torch."""
    pieces = [torch.tensor([0.5, -0.25, 0.25, 0.125]), torch.tensor([0.25, 0.0, -0.25, 0.375]),
              torch.tensor([0.25, 0.875])]
    results = []
    for library in ("torch", "numpy"):
        cut = MagnitudeCut(0.25, 3, 5)
        kept = []
        for piece in pieces:
            piece = piece.clone() if library == "torch" else piece.numpy().copy()
            own = cut.split_off(piece)
            (own or cut).trim_(piece)
            kept.append(np.asarray(piece).tolist())
        results.append((kept, cut.ties, cut.equal))
    assert results[0] == results[1]
    # the first piece takes two ties (split off), the second the last one (in flat order; the
    # dropped tie is multiplied by the mask: -0.0), the third none
    assert results[1][:2] == ([[0.5, -0.25, 0.25, 0.0], [0.25, 0.0, -0.0, 0.375], [0.0, 0.875]], 0)
    assert str(results[1][0][1][2]) == "-0.0"
