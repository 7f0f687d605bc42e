"""purified_dataset: the kept rows with their cluster / task type, exported per cluster, with a card."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from purify_assets.assets._report import WAREHOUSE_POOL, check_results, metadata_for
from purify_assets.resources import PurifyFiles, PurifyParams, PurifyWarehouse
from purify_assets.stages.cycle import publish_dataset

@asset(
    deps=["cluster_reviews"], group_name="cycle", kinds={"duckdb", "parquet"}, pool=WAREHOUSE_POOL,
    description="Rows of the latest cycle outside dropped clusters, with cluster name and original record; "
                "exported as JSONL and Parquet per cluster under PURIFY_HOME/exports with a dataset card.",
)
def purified_dataset(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams,
                     files: PurifyFiles) -> MaterializeResult:
    pv = params.current()
    with warehouse.connect() as con:
        report = publish_dataset(con, files.paths.exports, files.paths.plots, log=context.log.info)
    return MaterializeResult(metadata=metadata_for(report, pv, "purified_dataset"))
