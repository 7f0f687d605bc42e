"""One partition per landed batch (file content); see ``purify_assets.core.landing``."""

from dagster import DynamicPartitionsDefinition

BATCHES = "batches"
batch_partitions = DynamicPartitionsDefinition(name=BATCHES)
