"""Jobs: one partitioned job for a landed batch, one unpartitioned job for a purification cycle."""

from dagster import AssetSelection, define_asset_job

from purify_assets.automation.partitions import batch_partitions

from purify_assets.core.params import GLOBAL_ASSETS

# the per-batch assets, with the side outputs their steps write (quarantine, rejected_rows)
BATCH_ASSET_KEYS = ["raw_rows", "quarantine", "clean_rows", "rejected_rows", "embeddings"]
CYCLE_ASSET_KEYS = list(GLOBAL_ASSETS)

batch_selection = AssetSelection.assets(*BATCH_ASSET_KEYS)
cycle_selection = AssetSelection.assets(*CYCLE_ASSET_KEYS)

ingest_batch_job = define_asset_job(
    "ingest_batch_job", selection=batch_selection, partitions_def=batch_partitions,
    description="Load one landed batch: raw_rows -> clean_rows -> embeddings (one partition per batch).",
)
purification_cycle_job = define_asset_job(
    "purification_cycle_job", selection=cycle_selection,
    description="One purification cycle over every batch: dedup -> cluster -> project/measure -> review -> publish.",
)
