"""The settings that decide a demo zoo's fine-tuned weights, and the per-task seed."""

from __future__ import annotations

import zlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ZooSettings:
    """Everything that decides a fine-tuned model's weights (part of each folder's cache key).

    Attributes:
        seed: the master seed; each task trains with a seed derived from it and the task name.
        steps: optimiser steps per task.
        batch_size: examples per step.
        max_length: tokens per example (longer ones are truncated; batches are padded to their
            longest example).
        learning_rate: AdamW's peak learning rate (linear warm-up over the first tenth of the
            steps, then linear decay to 0).
        weight_decay: AdamW's weight decay.
        train_layers: how many of the top transformer layers are trained (with the pooler and
            the classifier); 0 trains the head only, None (or ≥ the layer count) everything,
            embeddings included.
        eval_examples: validation examples scored after training (the first ones of the split;
            the same number of training examples give the train accuracy).
        threads: torch's intra-op threads while building. One is the default: results then do
            not depend on the machine's core count, and on a 2-core machine that is busy with
            anything else one thread is several times faster than two (measured: 0.9 s of CPU
            per tweet step alone, versus 4 s of wall time per step for two threads sharing the
            machine with another process).
    """

    seed: int = 0
    steps: int = 120
    batch_size: int = 32
    max_length: int = 48
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    train_layers: int | None = 3
    eval_examples: int = 500
    threads: int = 1


DEFAULTS = ZooSettings()


def task_seed(seed: int, task: str) -> int:
    """A per-task seed, stable across processes and platforms."""
    return zlib.crc32(f"{seed}/{task}".encode())
