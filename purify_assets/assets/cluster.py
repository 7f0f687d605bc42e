"""cluster_labels: one cluster per kept row; each materialization opens a new cycle."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from purify_assets.assets._report import WAREHOUSE_POOL, metadata_for
from purify_assets.resources import PurifyParams, PurifyWarehouse, embedder_for
from purify_assets.stages.cycle import cluster_rows

@asset(
    deps=["dedup_sets"], group_name="cycle", kinds={"duckdb", "scikitlearn"}, pool=WAREHOUSE_POOL,
    description="Cycle, row id, cluster (-1 = noise), membership strength, algorithm and parameter hash.",
)
def cluster_labels(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams) -> MaterializeResult:
    pv = params.current()
    model_id = embedder_for(pv.params["embed"]).model_id
    with warehouse.connect() as con:
        report = cluster_rows(con, pv, model_id, log=context.log.info)
    return MaterializeResult(metadata=metadata_for(report, pv, "cluster_labels"))
