"""purify: a Dagster asset platform that purifies raw LLM fine-tuning data."""

__version__ = "0.1.0"
