"""The multi-task training loop shared by every trainer method.

Each step draws one batch of every task, computes the per-task losses L_i (cross-entropy) and asks
the method for task weights α; the update is θ ← θ − lr·Σ α_i ∇L_i with AdamW (or SGD), a linear
warm-up then linear / cosine / constant learning rate, and the update's norm clipped.

* Scalarizations (linear, Chebyshev) need only the loss values: α is computed from them, then
  Σ α_i L_i is back-propagated once (the same gradient as back-propagating the scalarization).
* Gradient-based methods (EPO, `uses_gradients`) need the Gram matrix G = J·Jᵀ of the per-task
  gradients. Each task's graph is back-propagated (and freed) right after its forward pass, so only
  one activation graph lives at a time; its gradient is kept, G is accumulated tensor by tensor
  (never concatenating J), and the update Σ α_i g_i is written tensor by tensor into `.grad`.
  The m per-task gradients of the trained parameters are the memory this costs (m × trained
  parameters); a variant keeping only G would need m more forward passes per step.

A resumable state (weights, optimizer, RNG, method state, log) is saved every `checkpoint_every`
steps; batches are a pure function of (seed, task, step) and the learning rate of the step, so a
resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefkit.errors import PrefkitError
from prefkit.train.data import BatchOrder, TaskData, collate
from prefkit.train.state import RunFiles, load_resume, save_resume


class TrainingError(PrefkitError):
    """Training could not go on (e.g. a non-finite loss)."""


@dataclass
class TrainResult:
    state: dict[str, Any]  # the trained tensors, on CPU
    steps: int
    log: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int | None = None


def learning_rate(step: int, total: int, peak: float, warmup: float, schedule: str) -> float:
    """The learning rate of step `step` (0-based) of `total`."""
    warm = int(round(warmup * total))
    if step < warm:
        return peak * (step + 1) / warm
    if schedule == "constant":
        return peak
    progress = (step - warm) / max(1, total - warm)
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * max(0.0, 1 - progress)


def total_steps(settings, data: list[TaskData]) -> int:
    if settings.steps is not None:
        return settings.steps
    if settings.epochs is not None:
        largest = max(len(d) for d in data)
        return max(1, math.ceil(settings.epochs * largest / settings.batch_size))
    return 100


def _optimizer(model, settings):
    import torch

    params = model.parameters()
    decay = [p for _, p in params if p.ndim > 1]
    no_decay = [p for _, p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=settings.lr)


def _optimizer_state(optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors and JSON of an optimizer's state_dict (safetensors, no pickle)."""
    import torch

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").clone()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_optimizer_state(optimizer, tensors: dict[str, Any], header: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for name, value in header["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": header["param_groups"]})


def _rng_state() -> dict[str, Any]:
    import torch

    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def _set_rng_state(tensors: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(tensors["rng.cpu"])
    cuda = sorted(k for k in tensors if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


def train(model, data: list[TaskData], method, settings, preference, *, files: RunFiles,
          device: str, bf16: bool, pad_id: int, reporter, evaluate: Callable | None = None,
          on_step: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Train `model` (a MultiTaskModel, already on `device`) and return the trained state.

    `evaluate(step)` (optional) returns per-task validation metrics every `eval_every` steps;
    `on_step(step, row)` is called after each step (tests use it to interrupt a run).
    """
    import torch

    started = time.perf_counter()
    m = len(data)
    total = total_steps(settings, data)
    orders = [BatchOrder(len(d), settings.batch_size, settings.seed, d.task.name) for d in data]
    params = model.parameters()
    optimizer = _optimizer(model, settings)
    pref = torch.as_tensor(preference, dtype=torch.float64)
    method_state = method.start(pref, settings)
    log: list[dict[str, Any]] = []
    first, resumed = 0, None
    torch.manual_seed(settings.seed + 1)  # dropout
    saved = _resume(files, model, optimizer)
    if saved is not None:
        first, method_state, log = saved
        resumed = first
        reporter.note(f"{method.name}: resuming at step {first} of {total} ({files.resume})")
    model.train()
    reporter.start(total, total, f"{method.name}: training {m} tasks")
    for _ in range(first):
        reporter.advance("", 1)
    try:
        for step in range(first, total):
            lr = learning_rate(step, total, settings.lr, settings.warmup, settings.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            row = _step(model, data, orders, method, settings, pref, method_state, step, device,
                        bf16, pad_id, params)
            _update(optimizer, params, settings, row)
            row["lr"] = lr
            done = step + 1
            if evaluate is not None and settings.eval_every and (
                    done % settings.eval_every == 0 or done == total):
                model.train(False)
                row["eval"] = evaluate(done)
                model.train()
            log.append(row)
            reporter.advance("", 1)
            if done % settings.log_every == 0 or done == total:
                reporter.note(_describe(row, data))
            if done % settings.checkpoint_every == 0 and done < total:
                _save(files, model, optimizer, done, method_state, log)
            if on_step is not None:
                on_step(done, row)
    finally:
        reporter.finish()
    model.train(False)
    return TrainResult(model.state(), total, log, time.perf_counter() - started, resumed)


def _resume(files: RunFiles, model, optimizer) -> tuple[int, Any, list[dict[str, Any]]] | None:
    """Restore the saved state (weights, optimizer, RNG) if there is one; returns its step,
    method state and log, or None when the run starts afresh."""
    saved = load_resume(files)
    if saved is None:
        return None
    tensors, header = saved
    model.load_state({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    _load_optimizer_state(optimizer, tensors, header["optimizer"])
    _set_rng_state(tensors)
    return header["step"], header["method_state"], header["log"]


def _update(optimizer, params, settings, row: dict[str, Any]) -> None:
    """Clip the update's norm (recorded in `row`) when asked, step, and clear the gradients."""
    import torch

    if settings.max_grad_norm is not None:
        row["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
            [p for _, p in params], settings.max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _save(files, model, optimizer, step, method_state, log) -> None:
    tensors, header = _optimizer_state(optimizer)
    tensors.update({f"model.{k}": v for k, v in model.state().items()})
    tensors.update(_rng_state())
    save_resume(files, tensors, {"step": step, "optimizer": header, "method_state": method_state,
                                 "log": log})


def _losses(model, data, orders, step, device, bf16, pad_id, i):
    import torch
    import torch.nn.functional as F

    batch, targets = collate(data[i], orders[i].indices(step), pad_id)
    batch = {k: v.to(device) for k, v in batch.items()}
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        logits = model.logits(i, batch)
    return F.cross_entropy(logits.float(), targets.to(device))


def _step(model, data, orders, method, settings, pref, method_state, step, device, bf16, pad_id,
          params) -> dict[str, Any]:
    import torch

    m = len(data)
    tensors = [p for _, p in params]
    if method.uses_gradients:
        losses, grads = [], []
        for i in range(m):
            loss = _losses(model, data, orders, step, device, bf16, pad_id, i)
            grads.append(torch.autograd.grad(loss, tensors, allow_unused=True))
            losses.append(loss.detach())
        values = _checked(torch.stack(losses).double().cpu(), step, data)
        gram = torch.zeros(m, m, dtype=torch.float64)
        for k in range(len(tensors)):  # G accumulated tensor by tensor
            rows = [g[k] for g in grads]
            for i in range(m):
                for j in range(i, m):
                    if rows[i] is not None and rows[j] is not None:
                        dot = torch.sum(rows[i].double() * rows[j].double()).cpu()
                        gram[i, j] += dot
                        if i != j:
                            gram[j, i] += dot
        alpha = torch.as_tensor(method.task_weights(values, preference=pref, settings=settings,
                                                    state=method_state, gram=gram),
                                dtype=torch.float64)
        for k, p in enumerate(tensors):
            update = None
            for i in range(m):
                g = grads[i][k]
                if g is not None and alpha[i] != 0:
                    term = g * float(alpha[i])
                    update = term if update is None else update.add_(term)
            p.grad = update
        del grads
    else:
        losses = [_losses(model, data, orders, step, device, bf16, pad_id, i) for i in range(m)]
        values = _checked(torch.stack([x.detach() for x in losses]).double().cpu(), step, data)
        alpha = torch.as_tensor(method.task_weights(values, preference=pref, settings=settings,
                                                    state=method_state), dtype=torch.float64)
        sum(float(a) * loss for a, loss in zip(alpha, losses)).backward()
    out = {"step": step + 1, "losses": [round(float(x), 6) for x in values],
           "alpha": [round(float(a), 6) for a in alpha]}
    for key in ("mode", "non_uniformity", "lp_success", "ideal"):
        if key in method_state:
            out[key] = method_state[key]
    return out


def _checked(values, step: int, data) -> Any:
    import torch

    bad = [d.task.name for d, v in zip(data, values) if not torch.isfinite(v)]
    if bad:
        raise TrainingError(f"step {step + 1}: the loss of task {bad[0]!r} is not finite",
                            hint="lower train.lr, or set train.max_grad_norm")
    return values


def _describe(row: dict[str, Any], data) -> str:
    losses = ", ".join(f"{d.task.name} {x:.4f}" for d, x in zip(data, row["losses"]))
    alpha = ", ".join(f"{a:.3f}" for a in row["alpha"])
    text = f"step {row['step']}: loss {losses}; α [{alpha}]"
    if "eval" in row:
        text += "; eval " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in row["eval"].items())
    return text
