"""AdaMerging: learn the merge coefficients λ of task arithmetic on unlabeled data.

Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR 2024,
https://arxiv.org/abs/2310.02575. The merged body is θ = θ_0 + Σ_k λ_k τ_k with τ_k = θ_k − θ_0
(or TIES-trimmed, sign-elected τ̃_k: "AdaMerging++"); λ minimise the prediction entropy of each
task's own head on unlabeled batches of that task, combined by the preference (Σ_i p_i·H_i, or
the weighted Chebyshev max_i p_i·(H_i − z_i) of `prefkit.moo`).

* Coefficients: one per model (`task`), per model and transformer block (`layer`: embeddings and
  the tensors outside the blocks are groups of their own) or per model and tensor (`tensor`, what
  the paper calls layer-wise). Groups whose task vectors are all zero ("inert") keep their
  initial value: they multiply zeros.
* Memory: the task vectors are held once (m × the body, float32) beside the base in the model; the
  forward runs `torch.func.functional_call` on base + Σ λ τ, so about (m + 2) × the model.
* Heads are not merged with λ. With `heads: per_task` each task's logits come from its own
  fine-tuned head (the output keeps those heads); with `heads: padded` from the one head the output
  holds, the mean of the zero-padded task heads, sliced to the task's labels. Either way the
  output's head tensors are that mean, as the trainers write them.
* Clamping keeps λ in [0, 1] by projecting after each Adam step. Clamping inside the forward pass
  (as the reference code does) zeroes the gradient of a coefficient past a bound, which then never
  comes back; a projected one moves off the bound as soon as its gradient points inwards.

`learn(context)` returns the solution the `adamerging` plugin's `merge` applies with `apply`.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from prefkit.api import Solution, SolveContext, SolverSettings, Task
from prefkit.errors import DataError, PrefkitError

FORMAT = 1


class AdaMergingSettings(SolverSettings):
    """The `train:` block of `adamerging` (data, steps and device settings: SolverSettings)."""

    granularity: Literal["task", "layer", "tensor"] = Field(
        "task", description="One λ per model (task), per model and transformer block (layer), "
        "or per model and tensor (tensor: the paper's layer-wise AdaMerging).")
    vectors: Literal["plain", "ties"] = Field(
        "plain", description="Task vectors as they are, or TIES-trimmed and sign-elected "
        "(AdaMerging++).")
    density: float = Field(0.2, gt=0, le=1, description="vectors: ties: fraction of each task "
                           "vector's entries kept (per tensor).")
    objective: Literal["linear", "chebyshev"] = Field(
        "linear", description="Σ p_i·H_i, or the weighted Chebyshev max_i p_i·(H_i − z_i).")
    ideal: Literal["zero", "min"] | list[float] = Field(
        "zero", description="chebyshev: the ideal entropies z: zero, the running minimum of each "
        "task's entropy (min), or one number per task.")
    mu: float | None = Field(None, gt=0, description="chebyshev: smooth form with this "
                             "temperature; null: the hard max.")
    init: float = Field(0.3, description="Initial value of every λ (the paper's 0.3).")
    clamp: bool = Field(True, description="Keep λ in [0, 1] (projected after each step).")
    lr: float = Field(1e-3, gt=0, alias="learning_rate", description="Adam's learning rate.")

    @model_validator(mode="after")
    def _consistent(self):
        given = self.model_fields_set
        if "density" in given and self.vectors != "ties":
            raise ValueError("density applies to vectors: ties")
        if given & {"ideal", "mu"} and self.objective != "chebyshev":
            raise ValueError("ideal and mu apply to objective: chebyshev")
        if self.clamp and not 0 <= self.init <= 1:
            raise ValueError(f"init {self.init} is outside [0, 1], where clamp: true keeps λ")
        return self


# -- what the streaming merge applies (also used while learning, so both agree) -------------

def group_of(name: str, layer: int | None, granularity: str) -> str:
    """The coefficient group of a tensor: `all`, `embeddings` / `layer.N` / `other`, or its name."""
    if granularity == "task":
        return "all"
    if granularity == "tensor":
        return name
    if layer is not None:
        return f"layer.{layer}"
    return "embeddings" if "embeddings." in name else "other"


def task_vectors(tensors: list, base, vectors: str, density: float) -> list:
    """τ_k = θ_k − θ_0 in place in the given buffers; `ties`: each trimmed to its
    k = max(1, ⌊density·n⌋) largest magnitudes (ties at the cut-off: lowest flat index first), then
    the entries disagreeing with the elected sign of Σ_k τ̂_k zeroed (AdaMerging++)."""
    from prefkit.ops import agrees, elected_positive, task_vectors_, topk_mask

    deltas = task_vectors_(tensors, base)
    if vectors == "plain":
        return deltas
    for delta in deltas:
        delta.mul_(topk_mask(delta, max(1, int(density * delta.numel()))))
    positive = elected_positive(deltas, "sum")
    return [delta.mul_(agrees(delta, positive)) for delta in deltas]


def apply(tensors: list, base, name: str, layer: int | None, state: dict[str, Any]):
    """One output tensor from a solution: θ_0 + Σ_k λ_k τ_k, or for the `fixed` tensors (heads
    and tensors the base lacks) the mean of the models' (zero-padded) tensors."""
    if name in state["fixed"]:
        out = tensors[0]
        for tensor in tensors[1:]:
            out.add_(tensor)
        return out.div_(len(tensors))
    deltas = task_vectors(tensors, base, state["vectors"], state["density"])
    group = group_of(name, layer, state["granularity"])
    lambdas = [model["lambda"][group] for model in state["models"]]
    out = deltas[0].mul_(lambdas[0])
    for delta, lam in zip(deltas[1:], lambdas[1:]):
        out.add_(delta, alpha=lam)
    return out.add_(base)


# -- the pieces of the learning loop -----------------------------------------------------------

def entropy(logits):
    """Mean Shannon entropy (nats) of the softmax predictions of a batch of logits."""
    import torch

    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


class Coefficients:
    """λ (models × groups) optimised with Adam; `clamp` projects onto [0, 1] after each step."""

    def __init__(self, m: int, groups: int, *, init: float, lr: float, clamp: bool,
                 dtype=None, device: str = "cpu"):
        import torch

        self.value = torch.full((m, groups), float(init), dtype=dtype or torch.float32,
                                device=device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.value], lr=lr)
        self.clamp = clamp

    def step(self, loss) -> None:
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        if not loss.requires_grad:  # every group is inert (all task vectors zero): λ stays
            return
        loss.backward()
        self.optimizer.step()
        if self.clamp:
            with torch.no_grad():
                self.value.clamp_(0.0, 1.0)


class Objective:
    """Σ_i p_i·H_i (`linear`) or max_i p_i·(H_i − z_i) (`chebyshev`, smooth with `mu`), with z zero,
    the running minimum of each H_i (`min`) or given."""

    def __init__(self, settings, preference):
        self.settings, self.preference = settings, preference
        self.ideal = None if isinstance(settings.ideal, str) else list(settings.ideal)

    def __call__(self, entropies):
        import torch

        from prefkit.moo import chebyshev_scalarization, linear_scalarization

        if self.settings.objective == "linear":
            return linear_scalarization(entropies, self.preference)
        if self.settings.ideal == "min":
            now = entropies.detach().tolist()
            self.ideal = now if self.ideal is None else [min(a, b) for a, b in zip(self.ideal, now)]
        ideal = None if self.ideal is None else torch.tensor(self.ideal, dtype=entropies.dtype)
        return chebyshev_scalarization(entropies, self.preference, ideal=ideal, mu=self.settings.mu)


class MergedClassifier:
    """base + Σ λ τ as the parameters of one transformers classifier (`functional_call`)."""

    def __init__(self, plan, tasks: list[Task], settings, *, dtype, device: str):
        import torch

        from prefkit.io.checkpoint import TensorReader
        from prefkit.train.model import MultiTaskModel

        self.per_task = plan.heads == "per_task"
        self.tasks = tasks
        net = MultiTaskModel(plan, tasks, per_task=self.per_task, seed=settings.seed,
                             train_layers=None)
        if net.fresh:
            raise DataError(f"adamerging: the model for task {net.fresh[0]!r} has no classifier "
                            "head", hint="AdaMerging scores each task with its fine-tuned head")
        self.model = net.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.heads = [{n: p.detach().to(device=device, dtype=dtype) for n, p in head.items()}
                      for head in net.heads]
        self.fixed = sorted({*plan.head_tensors,
                             *(tp.name for tp in plan.tensors if not tp.copy and tp.base is None)})
        body = [tp for tp in plan.tensors if not tp.copy and tp.name not in self.fixed]
        self.groups = list(dict.fromkeys(group_of(tp.name, tp.info.layer, settings.granularity)
                                         for tp in body))
        index = {g: i for i, g in enumerate(self.groups)}
        state = self.model.state_dict()
        self.vectors: dict[str, tuple[int, Any, Any]] = {}  # name → (group, θ_0, stacked τ_k)
        reader = TensorReader()
        try:
            for tp in body:
                base = reader.read(tp.base).to(dtype)
                deltas = task_vectors([reader.read(m).to(dtype) for m in tp.sources], base,
                                      settings.vectors, settings.density)
                if any(bool(d.any()) for d in deltas):
                    group = index[group_of(tp.name, tp.info.layer, settings.granularity)]
                    self.vectors[tp.name] = (group, state[tp.name], torch.stack(deltas).to(device))
        finally:
            reader.close()
        active = {self.groups[g] for g, _, _ in self.vectors.values()}
        self.inert = [g for g in self.groups if g not in active]

    def merged(self, lambdas) -> dict[str, Any]:
        import torch

        return {name: base + torch.tensordot(lambdas[:, group], stacked, dims=1)
                for name, (group, base, stacked) in self.vectors.items()}

    def entropies(self, lambdas, batches: list[dict[str, Any]]):
        """H_i of each task's batch under the merged body (a 1-D tensor, differentiable in λ)."""
        import torch
        from torch.func import functional_call

        params = self.merged(lambdas)
        out = []
        for i, (task, batch) in enumerate(zip(self.tasks, batches)):
            given = {**params, **self.heads[i]} if self.per_task else params
            logits = functional_call(self.model, given, args=(), kwargs=batch).logits
            out.append(entropy(logits[:, : task.num_labels]))
        return torch.stack(out)


# -- data ------------------------------------------------------------------------------------

def unlabeled(context: SolveContext, tokenizer) -> list[Any]:
    """Each task's token ids (labels dropped): its `split`, or one corpus shared by every task."""
    from prefkit.eval.data import load_split, subset_indices
    from prefkit.eval.evaluate import tokenize
    from prefkit.train.data import TaskData

    settings = context.settings
    out = []
    corpus = None
    for task in context.tasks:
        if settings.corpus is not None:
            if corpus is None:
                texts = _corpus(settings.corpus, context.plan.source.path.parent)
                keep = subset_indices(len(texts), settings.num_samples, settings.seed)
                corpus = dict(tokenizer([texts[i] for i in keep], truncation=True,
                                        max_length=settings.max_length))
            encoded = corpus
        else:
            dataset = load_split(task, settings.split)
            keep = subset_indices(len(dataset), settings.num_samples, settings.seed)
            rows = dataset.select(keep) if len(keep) != len(dataset) else dataset
            texts = list(zip(*(rows[f] for f in task.text_fields)))
            encoded = tokenize(tokenizer, task, settings.split, texts, keep, settings.max_length)
        n = len(encoded["input_ids"])
        if n == 0:
            raise DataError(f"adamerging: no unlabeled examples for task {task.name!r}")
        out.append(TaskData(task, encoded, targets=[-1] * n))  # -1: no label, never read
    return out


def _corpus(corpus, recipe_dir: Path) -> list[str]:
    files = corpus.data_files
    if files is not None:  # relative to the recipe, like model paths
        files = [str(recipe_dir / f) if (recipe_dir / f).exists() else f
                 for f in ([files] if isinstance(files, str) else files)]
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        kwargs = {"data_files": files} if files else {}
        data = datasets.load_dataset(corpus.dataset, corpus.config_name, split=corpus.split, **kwargs)
        column = data[corpus.field]
    except Exception as exc:
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise DataError(f"train.corpus: cannot load {corpus.dataset!r} split {corpus.split!r} "
                        f"field {corpus.field!r} ({type(exc).__name__}: {text})",
                        hint="offline, the corpus must be local files or in the datasets cache"
                        ) from exc
    return [t for t in column if isinstance(t, str) and t.strip()]


# -- the loop --------------------------------------------------------------------------------

@contextlib.contextmanager
def _torch_settings(threads: int | None, deterministic: bool):
    import torch

    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def learn(context: SolveContext) -> Solution:
    """Learn λ for the context's plan; the solution's state is what `apply` needs."""
    import torch

    from prefkit.eval.evaluate import resolve_device
    from prefkit.train.data import BatchOrder
    from prefkit.train.run import _quiet_transformers

    settings, plan, tasks = context.settings, context.plan, list(context.tasks)
    if isinstance(settings.ideal, list) and len(settings.ideal) != len(tasks):
        raise PrefkitError(f"train.ideal has {len(settings.ideal)} entries for {len(tasks)} tasks",
                           hint="give one ideal entropy per model, in the order of models:")
    device = resolve_device(settings.device)
    dtype = torch.float64 if {tp.compute_dtype for tp in plan.tensors} == {"float64"} else torch.float32
    started = time.perf_counter()
    with _torch_settings(settings.threads, deterministic=device == "cpu"):
        torch.manual_seed(settings.seed)
        tokenizer = _quiet_transformers().AutoTokenizer.from_pretrained(plan.tokenizer_source)
        data = unlabeled(context, tokenizer)
        model = MergedClassifier(plan, tasks, settings, dtype=dtype, device=device)
        lambdas = Coefficients(len(tasks), len(model.groups), init=settings.init, lr=settings.lr,
                               clamp=settings.clamp, dtype=dtype, device=device)
        objective = Objective(settings, context.preference)
        orders = [BatchOrder(len(d), settings.batch_size, settings.seed, t.name)
                  for d, t in zip(data, tasks)]
        pad = tokenizer.pad_token_id or 0
        curve = _loop(context, model, lambdas, objective, data, orders, pad, device)
    table = lambdas.value.detach().to("cpu", torch.float32)
    models = [{"model": m.label, "task": t.name,
               "lambda": {g: float(v) for g, v in zip(model.groups, row.tolist())}}
              for m, t, row in zip(plan.inputs, tasks, table)]
    state = {"format": FORMAT, "method": "adamerging", "granularity": settings.granularity,
             "vectors": settings.vectors, "density": settings.density, "groups": model.groups,
             "inert": model.inert, "fixed": model.fixed, "models": models,
             "objective": settings.objective, "preference": list(context.preference),
             "steps": settings.steps, "curve": curve}
    return Solution(state, _summary(state, settings, time.perf_counter() - started, device))


def _loop(context, model, lambdas, objective, data, orders, pad: int, device: str) -> list[dict]:
    """The Adam steps; returns the entropy curve (every `log_every` steps and the last)."""
    from prefkit.train.data import collate

    settings, reporter = context.settings, context.reporter
    names = [t.name for t in model.tasks]
    curve = []
    reporter.start(settings.steps, settings.steps, f"adamerging: learning λ on {len(names)} tasks")
    try:
        for step in range(settings.steps):
            batches = [{k: v.to(device) for k, v in collate(d, o.indices(step), pad)[0].items()}
                       for d, o in zip(data, orders)]
            entropies = model.entropies(lambdas.value, batches)
            loss = objective(entropies)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise PrefkitError(f"adamerging: the objective is {value} at step {step}",
                                   hint="lower train.lr, or check the models' heads")
            lambdas.step(loss)
            reporter.advance("", 1)
            if step % settings.log_every == 0 or step == settings.steps - 1:
                row = {"step": step, "objective": round(value, 6), "entropy": {
                    n: round(h, 6) for n, h in zip(names, entropies.detach().tolist())}}
                curve.append(row)
                reporter.note(f"adamerging step {step}: " + ", ".join(
                    f"H({n})={h:.4f}" for n, h in row["entropy"].items()))
    finally:
        reporter.finish()
    return curve


def _summary(state, settings, seconds: float, device: str) -> dict[str, Any]:
    """The result line's digest: λ per task (per group for task/layer; their mean for tensor)."""
    out = {"steps": settings.steps, "seconds": round(seconds, 3), "device": device,
           "granularity": settings.granularity, "vectors": settings.vectors,
           "final_entropy": state["curve"][-1]["entropy"] if state["curve"] else None}
    for model in state["models"]:
        values = model["lambda"]
        if settings.granularity == "task":
            out.setdefault("lambda", {})[model["task"]] = round(values["all"], 6)
        elif settings.granularity == "layer":
            out.setdefault("lambda", {})[model["task"]] = {g: round(v, 6) for g, v in values.items()}
        else:
            out.setdefault("lambda_mean", {})[model["task"]] = round(
                sum(values.values()) / len(values), 6)
    return out
