"""Dagster assets, one module per stage. Each is thin: load -> call the stage runner -> report."""

from purify_assets.assets.ingest import raw_rows
from purify_assets.assets.clean import clean_rows
from purify_assets.assets.embed import embeddings
from purify_assets.assets.dedup import dedup_sets
from purify_assets.assets.cluster import cluster_labels
from purify_assets.assets.project import projections
from purify_assets.assets.measure import cluster_metrics
from purify_assets.assets.review import cluster_reviews
from purify_assets.assets.publish import purified_dataset

PER_BATCH_ASSETS = [raw_rows, clean_rows, embeddings]
GLOBAL_ASSETS = [dedup_sets, cluster_labels, projections, cluster_metrics, cluster_reviews, purified_dataset]
ALL_ASSETS = PER_BATCH_ASSETS + GLOBAL_ASSETS
