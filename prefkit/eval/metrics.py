"""Classification metrics on integer label arrays (no scikit-learn needed)."""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    if not labels:
        return float("nan")
    return sum(int(a == b) for a, b in zip(labels, predictions)) / len(labels)


def macro_f1(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> float:
    """Unweighted mean over classes of F1 = 2·TP / (2·TP + FP + FN); a class absent from both
    labels and predictions scores 0 (scikit-learn's `zero_division=0`, over all labels)."""
    if not labels:
        return float("nan")
    scores = []
    for c in range(num_labels):
        tp = sum(1 for a, b in zip(labels, predictions) if a == c and b == c)
        fp = sum(1 for a, b in zip(labels, predictions) if a != c and b == c)
        fn = sum(1 for a, b in zip(labels, predictions) if a == c and b != c)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / num_labels


def majority(labels: Sequence[int]) -> float:
    """Accuracy of always predicting the most frequent label."""
    if not labels:
        return float("nan")
    counts: dict[int, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return max(counts.values()) / len(labels)


METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}
