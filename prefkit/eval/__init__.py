"""Evaluation: task data, label orders, batched inference, metrics, results.json."""
