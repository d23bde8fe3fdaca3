"""The multi-task model: one shared transformer (a transformers sequence classifier built from the
plan's output config) plus a classifier head per task (`heads: per_task`) or one shared head
zero-padded to the largest label count (`heads: padded`, logits sliced to each task's labels).

Weights come from the plan: the body from `base_model`, each task's head from its fine-tuned
model (a fresh, seeded head when that model has none). Tensor names are the plan's, so the trained
state is written by the same executor as any merge.
"""

from __future__ import annotations

from typing import Any

from prefkit.errors import CheckpointError
from prefkit.io.checkpoint import TensorReader

HEAD_KEY = "heads.{task}.{name}"  # per-task head tensors in the trained state file


def trainable(name: str, layers: int, train_layers: int | None) -> bool:
    """Whether a tensor is trained when only the top `train_layers` layers are (None: all)."""
    if train_layers is None or train_layers >= layers:
        return True
    if ".encoder.layer." in name:
        index = int(name.split(".encoder.layer.")[1].split(".")[0])
        return index >= layers - train_layers
    return ".pooler." in name or not name.startswith(("bert.", "roberta.", "distilbert.",
                                                      "deberta.", "electra.", "xlm_roberta."))


def _config(plan, num_labels: int):
    import transformers

    raw = {k: v for k, v in (plan.out_config or {}).items() if k not in ("id2label", "label2id")}
    if "model_type" not in raw:
        raise CheckpointError(f"{plan.base.label if plan.base else plan.inputs[0].label}: "
                              "config.json has no model_type", hint="trainers need a transformers "
                              "config.json in base_model")
    model_type = raw.pop("model_type")
    return transformers.AutoConfig.for_model(model_type, **raw, num_labels=num_labels)


def _fresh_head(plan, num_labels: int, seed: int, names: list[str]) -> dict[str, Any]:
    """A seeded, freshly initialised head for a task whose model has none."""
    import torch
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForSequenceClassification.from_config(
            _config(plan, num_labels))
    state = model.state_dict()
    return {n: state[n].detach().clone() for n in names}


class MultiTaskModel:
    """The model being trained; `logits(i, batch)` scores a batch of task i."""

    def __init__(self, plan, tasks, *, per_task: bool, seed: int, train_layers: int | None):
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        self.tasks = tasks
        self.per_task = per_task
        self.head_names = list(plan.head_tensors)
        width = max(t.num_labels for t in tasks)
        torch.manual_seed(seed)
        self.model = transformers.AutoModelForSequenceClassification.from_config(
            _config(plan, width))
        state = self.model.state_dict()
        reader = TensorReader()
        try:
            body, heads = self._initial(plan, reader, seed)
        finally:
            reader.close()
        self.fresh = [t.name for t, h in zip(tasks, heads) if h is None]
        heads = [h if h is not None else _fresh_head(plan, t.num_labels, seed + 1 + i, self.head_names)
                 for i, (t, h) in enumerate(zip(tasks, heads))]
        unknown = sorted(set(body) - set(state))
        if unknown:
            raise CheckpointError(f"tensor {unknown[0]!r} of the base is not a parameter of "
                                  f"{type(self.model).__name__}",
                                  hint="the base and fine-tuned models must share one architecture")
        if not per_task:  # one shared head: the mean of the zero-padded task heads
            for name in self.head_names:
                padded = torch.zeros_like(state[name])
                for head in heads:
                    t = head[name]
                    padded[tuple(slice(0, d) for d in t.shape)] += t.to(padded.dtype) / len(heads)
                body[name] = padded
        self.untouched = sorted(set(state) - set(body) - set(self.head_names))
        with torch.no_grad():
            for name, value in body.items():
                state[name].copy_(value)
        layers = getattr(self.model.config, "num_hidden_layers", 0)
        for name, param in self.model.named_parameters():
            in_head = name in self.head_names
            param.requires_grad = (not per_task if in_head else trainable(name, layers, train_layers))
        self.heads: list[dict[str, torch.nn.Parameter]] = []
        if per_task:
            self.heads = [{n: torch.nn.Parameter(h[n].float().clone()) for n in self.head_names}
                          for h in heads]

    def _initial(self, plan, reader: TensorReader, seed: int):
        """The body's tensors (from the base) and each task's own head (or None)."""
        import torch

        body: dict[str, Any] = {}
        heads: list[dict[str, Any] | None] = []
        for tp in plan.tensors:
            if tp.copy or tp.name in self.head_names:
                continue
            if tp.base is not None:
                body[tp.name] = reader.read(tp.base).float()
            else:  # a body tensor the base lacks: the models' mean, as a linear merge would
                values = [reader.read(m).float() for m in tp.sources if m is not None]
                body[tp.name] = torch.stack(values).mean(0)
        by_name = {tp.name: tp for tp in plan.tensors}
        for i, _ in enumerate(self.tasks):
            metas = [by_name[n].sources[i] for n in self.head_names]
            if any(meta is None for meta in metas):
                heads.append(None)
            else:
                heads.append({n: reader.read(meta).float() for n, meta in zip(self.head_names, metas)})
        return body, heads

    # -- training -------------------------------------------------------------------------
    def to(self, device: str) -> MultiTaskModel:
        import torch

        self.model.to(device)
        for head in self.heads:
            for name, param in head.items():
                head[name] = torch.nn.Parameter(param.data.to(device))
        return self

    def shared_parameters(self) -> list[tuple[str, Any]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def head_parameters(self) -> list[tuple[str, Any]]:
        return [(HEAD_KEY.format(task=t.name, name=n), p)
                for t, head in zip(self.tasks, self.heads) for n, p in head.items()]

    def parameters(self) -> list[tuple[str, Any]]:
        """Every trained tensor, in a fixed order (optimizer state is saved in this order)."""
        return self.shared_parameters() + self.head_parameters()

    def logits(self, i: int, batch: dict[str, Any]):
        if self.per_task:
            from torch.func import functional_call

            return functional_call(self.model, self.heads[i], args=(), kwargs=batch).logits
        return self.model(**batch).logits[:, : self.tasks[i].num_labels]

    # -- state ----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything that was trained or loaded, on CPU: plan names plus heads.<task>.<name>."""
        out = {n: t.detach().to("cpu").clone() for n, t in self.model.state_dict().items()
               if n not in self.untouched and (not self.per_task or n not in self.head_names)}
        out.update({n: p.detach().to("cpu").clone() for n, p in self.head_parameters()})
        return out

    def load_state(self, tensors: dict[str, Any]) -> None:
        import torch

        state = self.model.state_dict()
        heads = dict(self.head_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                target = heads.get(name, state.get(name))
                if target is None:
                    raise CheckpointError(f"trained state has an unknown tensor {name!r}")
                target.copy_(value)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
