"""Merged results are checked finite before they are written.

Inputs are checked finite when read (unless --allow-nonfinite), so NaN/Inf in a merged slab
means the merge's arithmetic overflowed: a weight or lambda that is finite (and within whatever
bounds the recipe schema sets) times values that are large enough. That is an error naming the
tensor and the numbers that scale it, and nothing is written. The check is one pass over each
output slab: a sum, which is NaN/Inf whenever an entry is (the entries are counted only then).
"""

from __future__ import annotations

from typing import Any

from prefkit.errors import MergeError
from prefkit.io import arrays
from prefkit.io.checkpoint import TensorReader, is_pickle


def check_result(tp: Any, preference: Any, written, numpy: bool, inputs_checked: bool,
                 rows: tuple[int, int] | None = None) -> None:
    """Raise MergeError when the merged slab `written` (`rows` of the planned tensor `tp`, a
    TensorPlan; None: all of it) holds NaN/Inf. `inputs_checked`: the inputs were checked when
    read; otherwise (--allow-nonfinite) a tensor whose inputs hold NaN/Inf is not checked.
    `preference`: the plan's (or None), named in the error."""
    bad = count_nonfinite(written, tp.out_dtype, numpy)
    if not bad or (not inputs_checked and _inputs_nonfinite_once(tp)):
        return
    scaling = _scaling(tp, preference)
    lower = " / ".join(n for n, _ in scaling if n != "preference") or "the parameters that scale it"
    given = ", ".join(f"{name} {value}" for name, value in scaling)
    part = "" if rows is None else f" (rows {rows[0]}-{rows[1]} of {tp.shape[0]})"
    raise MergeError(f"tensor {tp.name!r}: the merge gave {bad} non-finite value(s){part} from "
                     f"finite inputs{f' ({given})' if given else ''}: lower {lower}; nothing was "
                     "written")


_last: list = [None, False]  # the tensor plan last judged by inputs_nonfinite, and its answer


def _inputs_nonfinite_once(tp: Any) -> bool:
    """`inputs_nonfinite`, read once per tensor however many of its slabs are judged."""
    if _last[0] is not tp:
        _last[:] = [tp, inputs_nonfinite(tp)]
    return _last[1]


def count_nonfinite(tensor, dtype: str, numpy: bool) -> int:
    """NaN/±Inf entries of a float host array (numpy) or tensor (torch) of `dtype`."""
    if numpy:
        return arrays.nonfinite(tensor, dtype)
    import torch

    probe = tensor.float() if dtype.startswith("float8") else tensor
    if torch.isfinite(probe.sum(dtype=torch.float64 if dtype == "float64" else torch.float32)):
        return 0
    return int((~torch.isfinite(probe)).sum())


def inputs_nonfinite(tp: Any) -> bool:
    """Whether any input of the tensor (whole, as stored) holds NaN/Inf: read again, which only
    happens when its merge gave NaN/Inf with --allow-nonfinite."""
    reader = TensorReader(check_finite=False)
    try:
        for meta in (m for m in (*tp.sources, tp.base) if m is not None):
            if is_pickle(meta.file):
                if count_nonfinite(reader.read(meta), meta.dtype, False):
                    return True
            elif count_nonfinite(reader.read_array(meta), meta.dtype, True):
                return True
    finally:
        reader.close()
    return False


def _scaling(tp: Any, preference: Any) -> list[tuple[str, str]]:
    """The numbers that scale a merge, as recipes name them: the preference, then each numeric
    per-model parameter (one value per model) and each numeric shared one."""
    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    found = []
    if preference is not None:
        found.append(("preference", _numbers(preference.given)))
    per_model = [m.model_dump(by_alias=True) for m in tp.model_params]
    for key in per_model[0] if per_model else ():
        values = [p.get(key) for p in per_model]
        if all(number(v) for v in values):
            found.append((key, _numbers(values)))
    shared = tp.params.model_dump(by_alias=True) if tp.params is not None else {}
    found += [(key, f"{value:g}") for key, value in shared.items() if number(value)]
    return found


def _numbers(values) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
