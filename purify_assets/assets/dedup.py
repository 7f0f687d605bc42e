"""dedup_sets: exact / near / semantic duplicate sets (and conflicts) across every batch."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from purify_assets.assets._report import WAREHOUSE_POOL, metadata_for
from purify_assets.resources import PurifyParams, PurifyWarehouse, embedder_for
from purify_assets.stages.cycle import dedup_rows

@asset(
    deps=["clean_rows", "embeddings"], group_name="cycle", kinds={"duckdb"}, pool=WAREHOUSE_POOL,
    description="Groups of duplicates over all batches with the kept representative, similarity and reason; "
                "non-representative members of exact/near/semantic sets leave the clustering input.",
)
def dedup_sets(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams) -> MaterializeResult:
    pv = params.current()
    model_id = embedder_for(pv.params["embed"]).model_id
    with warehouse.connect() as con:
        report = dedup_rows(con, pv.params.get("dedup") or {}, model_id, log=context.log.info,
                            embedded_text=pv.params["embed"].get("text_template", "instruction"))
    return MaterializeResult(metadata=metadata_for(report, pv, "dedup_sets"))
