"""Training data: each task's examples tokenized once, and a batch order that is a pure function
of (seed, task, step), so a resumed run sees exactly the batches an uninterrupted one would."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from prefkit.api import Task
from prefkit.eval.data import examples, load_split
from prefkit.eval.evaluate import tokenize


@dataclass
class TaskData:
    """A task's tokenized examples and, for each, the model output that means its label."""

    task: Task
    encoded: dict[str, list[list[int]]]
    targets: list[int]

    def __len__(self) -> int:
        return len(self.targets)


def prepare(task: Task, tokenizer, output_order: list[int], split: str, max_length: int,
            limit: int | None = None) -> TaskData:
    """Tokenize a split (the first `limit` examples, or all); `output_order[j]` is the task label
    that model output j means (see `prefkit.eval.labels.label_order`)."""
    dataset = load_split(task, split)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    indices = list(range(n))
    texts, labels = examples(task, dataset, indices)
    encoded = tokenize(tokenizer, task, split, texts, indices, max_length)
    output_of = {label: j for j, label in enumerate(output_order)}
    return TaskData(task, encoded, [output_of[label] for label in labels])


class BatchOrder:
    """Which examples form task batch number `step`: whole shuffled passes over the data, one
    permutation per pass, seeded by (seed, task, pass)."""

    def __init__(self, n: int, batch_size: int, seed: int, task: str):
        if n == 0:
            raise ValueError(f"task {task!r} has no training examples")
        self.n, self.batch_size, self.seed, self.task = n, batch_size, seed, task
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        import torch

        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            digest = hashlib.sha256(f"{self.seed}:{self.task}:{epoch}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            self._perms[epoch] = torch.randperm(self.n, generator=gen).tolist()
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        return [self._perm(k // self.n)[k % self.n] for k in range(start, start + self.batch_size)]

    @cached_property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)


def collate(data: TaskData, rows: list[int], pad_id: int):
    """A padded batch (inputs as tensors) and its target outputs."""
    import torch

    width = max(len(data.encoded["input_ids"][i]) for i in rows)
    batch = {}
    for key, values in data.encoded.items():
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([values[i] + [fill] * (width - len(values[i])) for i in rows])
    return batch, torch.tensor([data.targets[i] for i in rows])
