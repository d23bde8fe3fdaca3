"""What every tensor method (kind "tensor") must satisfy, checked on tiny seeded tensors.

`check_method_contract(method)` runs the method the way the streaming executor does (fresh input
buffers per call, the base only for `base = "required"` methods, `prepare` before `merge`) and
collects every broken rule into one AssertionError, so a plugin author sees all problems at once::

    from prefkit.testing import check_method_contract

    def test_contract():
        check_method_contract(MyMethod())

It also checks what the method declares (`prefkit.testing.declarations`): an `elementwise`
method must give the same bytes merged whole, in slabs of rows (a 1-D tensor: in chunks of
entries), with `info.rows` and `prepare_tensor` as the executor passes them, and over several
`map_chunks` threads; a `takes_numpy` method must give the torch path's bytes and dtype on numpy
arrays, in every dtype of its `numpy_dtypes` that numpy computes in. A false declaration is one
line: "method 'x' declares elementwise=True but merging tensor 'model.layers.0.mlp.weight'
(float32[25, 10]) in slabs of rows [(0, 13), (13, 25)] differs from merging it whole (first
difference at [0, 0]: 0.72 whole, 0.78 in slabs)".

Trainer methods (kind "trainer") are trained, not merged tensor by tensor: this check refuses them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from prefkit.api import MergeInfo, Params, ScanItem, TensorInfo
from prefkit.testing.declarations import declaration_problems

_SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
MODELS = ("model_a", "model_b", "model_c")
SHAPES = ((7, 5), (3,))
DTYPES = ("float32", "bfloat16", "float16")


def check_method_contract(method: Any, *, params: Params | None = None,
                          model_params: dict[str, Any] | None = None) -> None:
    """Check a tensor method against the contract of `prefkit.api.TensorMethod`.

    Rules: a snake_case `name` (and aliases), a one-line `summary`, an http(s) `reference_url`,
    `base` "required" or "input", `Params` / `ModelParams` subclasses of `prefkit.api.Params`
    (unknown keys rejected) whose fields are described, `param_aliases` naming real parameters;
    `merge` returns a floating-point tensor of the inputs' shape for float32, bfloat16 and float16
    inputs, leaves `base` unchanged, gives the same bytes for the same inputs, and, for weighted
    methods, a model of weight 0 has no influence while the weights change the result; what
    `elementwise` and `takes_numpy` declare holds (see the module's docstring).

    Args:
        method: the method object, as registered.
        params: shared parameters to merge with (default: `method.Params()`).
        model_params: values for the per-model parameters besides `weight` (default: none; each
            model's `weight` is set by the check).

    Raises:
        AssertionError: listing every broken rule.
        TypeError: `method` is not a tensor method.
    """
    kind = getattr(method, "kind", None)
    if kind != "tensor":
        raise TypeError(f"check_method_contract checks tensor methods (kind 'tensor'); "
                        f"{method!r} has kind {kind!r}")
    problems = _metadata_problems(method)
    if not problems:
        problems += _merge_problems(method, params, model_params or {})
    if problems:
        name = getattr(method, "name", repr(method))
        raise AssertionError(f"method {name!r} breaks the tensor method contract:\n- "
                             + "\n- ".join(problems))


def _metadata_problems(method: Any) -> list[str]:
    problems = []
    name = getattr(method, "name", None)
    if not isinstance(name, str) or not _SNAKE.match(name):
        problems.append(f"name must be a snake_case string, not {name!r}")
    aliases = getattr(method, "aliases", ())
    if not isinstance(aliases, tuple) or not all(isinstance(a, str) and _SNAKE.match(a)
                                                 for a in aliases):
        problems.append(f"aliases must be a tuple of snake_case names, not {aliases!r}")
    elif name in aliases:
        problems.append(f"aliases repeat the name {name!r}")
    summary = getattr(method, "summary", "")
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary:
        problems.append("summary must be one non-empty line (shown by `prefkit methods`)")
    url = getattr(method, "reference_url", "")
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        problems.append(f"reference_url must be the paper's http(s) address, not {url!r}")
    if getattr(method, "base", None) not in ("required", "input"):
        problems.append(f"base must be 'required' or 'input', not {getattr(method, 'base', None)!r}")
    for attr in ("Params", "ModelParams"):
        problems += _params_problems(attr, getattr(method, attr, None))
    if not callable(getattr(method, "merge", None)):
        problems.append("merge must be a method")
    known = set()
    for attr in ("Params", "ModelParams"):
        cls = getattr(method, attr, None)
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            known |= {info.alias or field for field, info in cls.model_fields.items()}
    for alias, target in getattr(method, "param_aliases", {}).items():
        if target not in known:
            problems.append(f"param_aliases maps {alias!r} to {target!r}, which is no parameter")
    return problems


def _params_problems(attr: str, cls: Any) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, Params)):
        return [f"{attr} must be a subclass of prefkit.api.Params, not {cls!r}"]
    problems = []
    if cls.model_config.get("extra") != "forbid":
        problems.append(f"{attr} must reject unknown keys (model_config extra='forbid')")
    for field, info in cls.model_fields.items():
        if not info.description:
            problems.append(f"{attr}.{field} has no description (Field(description=...))")
    return problems


class _Case:
    """Seeded inputs for one shape and dtype; every `run` gets fresh copies, as the executor does."""

    def __init__(self, method: Any, shape: tuple[int, ...], dtype: str, seed: int):
        import torch

        self.method = method
        self.dtype = getattr(torch, dtype)
        gen = torch.Generator().manual_seed(seed)
        base = torch.randn(shape, generator=gen)
        self.base = base.to(self.dtype)
        self.inputs = [(base + 0.1 * torch.randn(shape, generator=gen)).to(self.dtype)
                       for _ in MODELS]
        self.uses_base = method.base == "required"
        self.info = TensorInfo("model.layers.0.mlp.weight", 0, 0.0, MODELS)

    def run(self, params: Params, model_params: Sequence[Params],
            inputs: Sequence[Any] | None = None, base: Any = None) -> Any:
        inputs = [t.clone() for t in (inputs if inputs is not None else self.inputs)]
        base = (self.base if base is None else base) if self.uses_base else None

        def scan() -> Iterator[ScanItem]:
            copies = [t.clone() for t in inputs]
            yield ScanItem(MergeInfo(self.info), copies, None if base is None else base.clone(), model_params)

        state = self.method.prepare(scan, params)
        info = MergeInfo(self.info, state)
        return self.method.merge(inputs, base=base, params=params, model_params=model_params,
                                 info=info)


def _merge_problems(method: Any, params: Params | None, extra: dict[str, Any]) -> list[str]:
    import torch

    try:
        shared = params if params is not None else method.Params()
    except ValidationError as exc:
        return [f"Params() needs a value for {_field(exc)!r}; pass params= to the check"]
    weighted = "weight" in method.ModelParams.model_fields

    def per_model(weights: Sequence[float]) -> list[Params]:
        values = [dict(extra, weight=w) if weighted else dict(extra) for w in weights]
        return [method.ModelParams.model_validate(v) for v in values]

    try:
        uniform = per_model([1.0] * len(MODELS))
    except ValidationError as exc:
        return [f"ModelParams needs a value for {_field(exc)!r}; pass model_params= to the check"]
    problems: list[str] = []
    for seed, (shape, dtype) in enumerate((s, d) for s in SHAPES for d in DTYPES):
        case = _Case(method, shape, dtype, seed)
        where = f"{dtype}{list(shape)}"
        base_before = case.base.clone()
        result = _guarded(problems, where, lambda case=case: case.run(shared, uniform))
        if result is None:
            continue
        if not isinstance(result, torch.Tensor):
            problems.append(f"{where}: merge returned {type(result).__name__}, not a torch.Tensor")
            continue
        if tuple(result.shape) != shape:
            problems.append(f"{where}: merge returned shape {list(result.shape)}")
        if not result.dtype.is_floating_point:
            problems.append(f"{where}: merge returned dtype {result.dtype}, not floating point")
        if case.uses_base and not torch.equal(case.base, base_before):
            problems.append(f"{where}: merge modified the base tensor (it must stay unchanged)")
        again = _guarded(problems, where, lambda case=case: case.run(shared, uniform))
        if again is not None and not torch.equal(result, again):
            problems.append(f"{where}: two merges of the same inputs differ (must be deterministic)")
        if weighted and dtype == "float32":
            problems += _weight_problems(case, shared, per_model, result, where)
    return problems + declaration_problems(method, shared, per_model)


def _weight_problems(case: _Case, shared: Params, per_model: Callable, uniform_result: Any,
                     where: str) -> list[str]:
    """A weight-0 model has no influence (its task's preference is 0); other weights matter."""
    import torch

    problems = []
    zeroed = per_model([1.0, 0.0, 0.5])
    first = case.run(shared, zeroed)
    changed = list(case.inputs)
    changed[1] = changed[1] + 1.0
    second = case.run(shared, zeroed, inputs=changed)
    if not torch.equal(first, second):
        problems.append(f"{where}: a model with weight 0 changed the result")
    if torch.equal(case.run(shared, per_model([3.0, 1.0, 1.0])), uniform_result):
        problems.append(f"{where}: changing the weights did not change the result")
    return problems


def _field(exc: ValidationError) -> str:
    return ".".join(str(p) for p in exc.errors()[0]["loc"])


def _guarded(problems: list[str], where: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # report it as a broken rule, beside the others
        problems.append(f"{where}: merge raised {type(exc).__name__}: {exc}")
        return None
