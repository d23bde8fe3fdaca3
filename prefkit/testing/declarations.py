"""What a tensor method's declarations promise, checked by `check_method_contract`.

- `elementwise = True`: the executor may merge a large tensor in slabs of rows (a 1-D tensor: in
  chunks of entries), one `merge` call per slab with `info.rows` set, after `prepare_tensor`;
  and it spreads the chunks of `prefkit.ops.map_chunks` over threads. The check merges seeded
  tensors whole, in slabs (cut as `prefkit.engine.slabs` cuts them: the fewest slabs of nearly
  equal row counts) and, on a tensor of several chunks, over three threads, and compares bytes.
- `takes_numpy = True`: for every compute dtype of `numpy_dtypes` that numpy computes in, the
  check merges the same inputs as numpy arrays and as torch tensors and compares bytes (and
  dtypes), whole, and in slabs for an elementwise method.

Each false declaration is reported once, as one line naming the method, the declaration, the
tensor and where the results first differ.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from prefkit.api import MergeInfo, Params, ScanItem, SlabRows, TensorInfo

MODELS = ("model_a", "model_b", "model_c")
WEIGHTS = (1.0, 0.6, 0.3)
# (name, layer, shape, slab counts): rows cut in 2 and 3 uneven slabs and one row per slab; a
# 1-D tensor in chunks of entries; one tensor of more than one `map_chunks` chunk (2^18 entries)
SMALL = (("model.layers.0.mlp.weight", 0, (25, 10), (2, 3, 25)),
         ("model.layers.0.mlp.bias", 0, (301,), (2, 3, 7)))
LARGE = ("model.embed_tokens.weight", None, (1029, 256), (3,))
DTYPES = ("float32", "bfloat16", "float16")
THREADS = 3


class _Broken(Exception):
    """A merge broke the executor's rules (wrong shape, not an array): the message says how."""


@dataclass(frozen=True)
class _Group:
    """One tensor's seeded inputs, in torch (converted to numpy arrays per merge when asked)."""

    name: str
    layer: int | None
    tensors: tuple[Any, ...]
    base: Any  # None: the method takes no base

    @classmethod
    def seeded(cls, spec: tuple, dtype: str, seed: int, uses_base: bool) -> _Group:
        import torch

        name, layer, shape, _ = spec
        gen = torch.Generator().manual_seed(seed)
        base = torch.randn(shape, generator=gen, dtype=torch.float64)
        tensors = tuple((base + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64))
                        .to(getattr(torch, dtype)) for _ in MODELS)
        return cls(name, layer, tensors, base.to(getattr(torch, dtype)) if uses_base else None)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensors[0].shape)

    def where(self) -> str:
        return f"tensor {self.name!r} ({str(self.tensors[0].dtype).removeprefix('torch.')}" \
               f"{list(self.shape)})"


def slab_rows(rows: int, count: int) -> list[tuple[int, int]]:
    """Rows [0, rows) in `count` slabs as the executor cuts them: ceil(rows / count) rows each,
    the last one shorter."""
    step = math.ceil(rows / count)
    return [(a, min(a + step, rows)) for a in range(0, rows, step)]


def merge_like_executor(method: Any, group: _Group, params: Params,
                        model_params: Sequence[Params], *, slabs: list | None = None,
                        numpy: bool = False, threads: int = 1) -> Any:
    """`group` merged as the executor merges it: `prepare` over the slabs, `prepare_tensor` when
    there are several, then `merge` per slab (fresh input copies every call, `info.rows` set),
    inside the merge's threads; the slab results concatenated along the first dimension."""
    from prefkit.engine.threads import merge_threads
    from prefkit.io import arrays

    units = slabs if slabs and len(slabs) > 1 else [None]
    info = TensorInfo(group.name, group.layer, 0.0, MODELS)
    sizes = [math.prod(group.shape[1:]) * (b - a) if r else math.prod(group.shape)
             for r in units for a, b in [r or (0, 0)]]

    def take(tensor: Any, rows: tuple[int, int] | None) -> Any:
        if tensor is None:
            return None
        part = tensor if rows is None else tensor[rows[0]:rows[1]]
        return part.numpy().copy() if numpy else part.clone()

    def scan(state: Any) -> Callable[[], Iterator[ScanItem]]:
        def items() -> Iterator[ScanItem]:
            for i, rows in enumerate(units):
                yield ScanItem(MergeInfo(info, state, _slab(rows)),
                               [take(t, rows) for t in group.tensors], take(group.base, rows),
                               model_params, sum(sizes[i + 1:]))
        return items

    chunked = bool(getattr(method, "elementwise", False))
    with merge_threads(threads, chunked, uses_torch=not numpy), \
            arrays.quiet() if numpy else contextlib.nullcontext():
        state = method.prepare(scan(None), params)
        tensor_state = None
        if units[0] is not None:
            tensor_state = method.prepare_tensor(scan(state), params=params,
                                                 model_params=model_params,
                                                 info=MergeInfo(info, state))
        results = []
        for rows in units:
            out = method.merge([take(t, rows) for t in group.tensors], base=take(group.base, rows),
                               params=params, model_params=model_params,
                               info=MergeInfo(info, state, _slab(rows, tensor_state)))
            results.append(_owned(out, group, rows, numpy))
    if len(results) == 1:
        return results[0]
    if numpy:
        import numpy as np

        return np.concatenate(results)
    import torch

    return torch.cat(results)


def _owned(out: Any, group: _Group, rows: tuple[int, int] | None, numpy: bool) -> Any:
    """A copy of one merge's result, after checking it is what the executor can write."""
    shape = group.shape if rows is None else (rows[1] - rows[0], *group.shape[1:])
    kind = type(out).__module__.split(".")[0]
    if kind != ("numpy" if numpy else "torch") or not hasattr(out, "shape"):
        wanted = "a numpy array" if numpy else "a torch.Tensor"
        raise _Broken(f"returned {type(out).__name__}, not {wanted}")
    if tuple(out.shape) != shape:
        rows_text = "" if rows is None else f" for rows {rows}"
        raise _Broken(f"returned shape {list(out.shape)}{rows_text}, expected {list(shape)}")
    return out.copy() if numpy else out.clone()


def first_difference(expected: Any, got: Any) -> tuple[list[int], Any, Any] | str | None:
    """None when `got` has the bytes (and dtype) of `expected`; else where they first differ:
    (index, expected value, value got), or a sentence when dtypes or shapes differ."""
    a, b = _host(expected), _host(got)
    if a.dtype != b.dtype:
        return f"dtype {_dtype(got)} instead of {_dtype(expected)}"
    if a.shape != b.shape:
        return f"shape {list(b.shape)} instead of {list(a.shape)}"
    raw = f"u{a.dtype.itemsize}"
    flat = (a.reshape(-1).view(raw) != b.reshape(-1).view(raw)).nonzero()[0]
    if not len(flat):
        return None
    index = _unravel(int(flat[0]), tuple(a.shape))
    return index, float(_value(expected, index)), float(_value(got, index))


def _dtype(x: Any) -> str:
    return str(x.dtype).removeprefix("torch.")


def _host(x: Any) -> Any:
    """A numpy view of `x`'s bytes (bfloat16: as uint16, numpy has no bfloat16)."""
    if type(x).__module__.split(".")[0] != "torch":
        return x
    import torch

    x = x.detach().cpu().contiguous()
    return (x.view(torch.int16).numpy().view("u2") if x.dtype == torch.bfloat16 else x.numpy())


def _value(x: Any, index: list[int]) -> Any:
    return x[tuple(index)] if index else x.reshape(-1)[0]


def _unravel(flat: int, shape: tuple[int, ...]) -> list[int]:
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return index[::-1]


def declaration_problems(method: Any, params: Params,
                         per_model: Callable[[Sequence[float]], list[Params]]) -> list[str]:
    """One line per false declaration (`elementwise`, `takes_numpy`) of `method`."""
    weights = per_model(WEIGHTS) if "weight" in method.ModelParams.model_fields \
        else per_model([1.0] * len(MODELS))
    problems = []
    if getattr(method, "elementwise", False):
        problems += _first(_elementwise_cases(method, params, weights))
    if getattr(method, "takes_numpy", False):
        problems += _first(_numpy_cases(method, params, weights))
    return problems


def _first(problems: Iterator[str | None]) -> list[str]:
    """The first problem a declaration's cases find (they would repeat one another)."""
    for problem in problems:
        if problem is not None:
            return [problem]
    return []


def _compare(method: Any, declared: str, group: _Group, how: tuple[str, str],
             reference: tuple[str, str], expected: Any, merge: Callable[[], Any]) -> str | None:
    """A one-line problem when `merge()` raises or differs from `expected`, else None. `how` and
    `reference`: (phrase, short label) of the merge checked and of the one it must equal."""
    head = f"method {method.name!r} declares {declared} but merging {group.where()} {how[0]}"
    try:
        got = merge()
    except _Broken as exc:
        return f"{head} {exc}"
    except Exception as exc:  # reported beside the other rules, not raised
        return f"{head} raised {type(exc).__name__}: {exc}"
    where = first_difference(expected, got)
    if where is None:
        return None
    if isinstance(where, tuple):
        index, want, have = where
        where = f"at {index}: {want!r} {reference[1]}, {have!r} {how[1]}"
    return f"{head} differs from merging it {reference[0]} (first difference {where})"


def _reference(method: Any, group: _Group, params: Params, weights: Sequence[Params]) -> Any:
    try:
        return merge_like_executor(method, group, params, weights)
    except Exception:
        return None  # the whole merge failing is the basic checks' to report


def _elementwise_cases(method: Any, params: Params, weights: Sequence[Params]) -> Iterator[str | None]:
    declared = "elementwise=True"
    specs = [(spec, dtype) for spec in SMALL for dtype in DTYPES] + [(LARGE, "float32")]
    for seed, (spec, dtype) in enumerate(specs):
        group = _Group.seeded(spec, dtype, 100 + seed, method.base == "required")
        whole = _reference(method, group, params, weights)
        if whole is None:
            continue
        what = ("slabs of rows", "in slabs") if len(group.shape) > 1 else \
            ("chunks of entries", "in chunks")
        for count in spec[3]:
            slabs = slab_rows(group.shape[0], count)
            yield _compare(method, declared, group, (f"in {what[0]} {slabs}", what[1]),
                           ("whole", "whole"), whole, partial(
                               merge_like_executor, method, group, params, weights, slabs=slabs))
        if spec is LARGE:
            yield _compare(method, declared, group,
                           (f"in chunks over {THREADS} threads", f"on {THREADS} threads"),
                           ("on one thread", "on one thread"), whole, partial(
                               merge_like_executor, method, group, params, weights,
                               threads=THREADS))


def _numpy_cases(method: Any, params: Params, weights: Sequence[Params]) -> Iterator[str | None]:
    from prefkit.io import arrays

    declared = "takes_numpy=True"
    dtypes = sorted(arrays.COMPUTABLE & set(getattr(method, "numpy_dtypes", arrays.COMPUTABLE)))
    specs = [(spec, dtype) for dtype in dtypes for spec in SMALL]
    if "float32" in dtypes:
        specs.append((LARGE, "float32"))
    for seed, (spec, dtype) in enumerate(specs):
        group = _Group.seeded(spec, dtype, 200 + seed, method.base == "required")
        merge = partial(merge_like_executor, method, group, params, weights)
        torch_result = _reference(method, group, params, weights)
        if torch_result is None:
            continue
        yield _compare(method, declared, group, ("as numpy arrays", "numpy"),
                       ("as torch tensors", "torch"), torch_result, partial(merge, numpy=True))
        if getattr(method, "elementwise", False):  # numpy slabs against torch slabs
            slabs = slab_rows(group.shape[0], 3)
            try:
                torch_slabs = merge(slabs=slabs)
            except Exception:
                continue  # the elementwise check reports it
            yield _compare(method, declared, group, (f"as numpy arrays in slabs {slabs}", "numpy"),
                           ("as torch tensors in the same slabs", "torch"), torch_slabs,
                           partial(merge, slabs=slabs, numpy=True))


def _slab(rows: tuple[int, int] | None, tensor_state: Any = None) -> SlabRows | None:
    return None if rows is None else SlabRows(rows, tensor_state)
