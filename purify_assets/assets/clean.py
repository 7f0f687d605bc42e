"""clean_rows (+ rejected_rows): normalized rows and, for every removed row, its reason code."""

from dagster import AssetCheckSpec, AssetDep, AssetExecutionContext, AssetSpec, MaterializeResult, MetadataValue, multi_asset

from purify_assets.assets._report import WAREHOUSE_POOL, check_results, metadata_for
from purify_assets.automation.partitions import batch_partitions
from purify_assets.resources import PurifyParams, PurifyWarehouse
from purify_assets.stages.batch import clean_batch, flagged_by_review

CLEAN_CHECKS = ["no_empty_text_kept", "rejection_rate_below_threshold", "rows_accounted_for"]

@multi_asset(
    specs=[
        AssetSpec("clean_rows", group_name="per_batch", kinds={"duckdb"}, deps=[AssetDep("raw_rows")],
                  description="Normalized rows that passed every heuristic filter, with the text to embed and its hash."),
        AssetSpec("rejected_rows", group_name="per_batch", kinds={"duckdb"}, deps=[AssetDep("raw_rows")],
                  description="Rows removed by cleaning, each with its reason code(s); nothing disappears silently."),
    ],
    check_specs=[AssetCheckSpec(name, asset="clean_rows") for name in CLEAN_CHECKS],
    partitions_def=batch_partitions,
    pool=WAREHOUSE_POOL,
)
def clean_rows(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams):
    pv = params.current()
    with warehouse.connect() as con:
        report = clean_batch(con, context.partition_key, pv.params.get("clean") or {},
                             pv.params["embed"].get("text_template", "instruction"), log=context.log.info,
                             flagged=flagged_by_review((pv.params.get("review") or {}).get("clean_requests")))
    md = metadata_for(report, pv, "clean_rows")
    md["dagster/row_count"] = MetadataValue.int(report.counts["kept"])
    yield MaterializeResult(asset_key="clean_rows", metadata=md)
    yield MaterializeResult(asset_key="rejected_rows", metadata={
        "dagster/row_count": MetadataValue.int(report.counts["rejected"]),
        "by_reason": MetadataValue.md(report.markdown.get("rejections_by_reason", "_nothing rejected_")),
    })
    yield from check_results(report, asset_key="clean_rows", names=CLEAN_CHECKS)
