"""cluster_reviews: a verdict per cluster and a global recommendation; may propose the next parameters."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from purify_assets.assets._report import WAREHOUSE_POOL, metadata_for
from purify_assets.resources import PurifyFiles, PurifyParams, PurifyWarehouse, embedder_for
from purify_assets.stages.cycle import review_clusters

@asset(
    deps=["cluster_metrics", "cluster_labels"], group_name="cycle", kinds={"duckdb", "openai"}, pool=WAREHOUSE_POOL,
    description="Per cluster: name, task type, quality 1-5, verdict (keep/clean/drop/split/merge) and reasons; "
                "globally: more or fewer clusters. Recommendations become a new parameter version, which the "
                "feedback sensor turns into the next cycle.",
)
def cluster_reviews(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams,
                    files: PurifyFiles) -> MaterializeResult:
    pv = params.current()
    model_id = embedder_for(pv.params["embed"]).model_id
    with warehouse.connect() as con:
        report = review_clusters(con, pv, params.store(), model_id, files.paths.cache / "reviews", log=context.log.info)
    return MaterializeResult(metadata=metadata_for(report, pv, "cluster_reviews"))
