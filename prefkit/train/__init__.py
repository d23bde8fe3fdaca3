"""One multi-task training loop shared by the trainer methods (Chebyshev, EPO, ...).

`train_plan(plan, registry, reporter=...)` trains the model a trainer recipe describes (or reuses
the cached one) and returns the tensors the executor writes as the output folder.
"""

from prefkit.train.run import Trained, train_plan

__all__ = ["Trained", "train_plan"]
