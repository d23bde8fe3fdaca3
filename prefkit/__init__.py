"""prefkit: merge fine-tuned models for a preference over tasks."""

__version__ = "0.1.0"
