"""projections: 2-D and 3-D coordinates per method (PCA, t-SNE, UMAP) with plots."""

from dagster import AssetExecutionContext, MaterializeResult, asset

from purify_assets.assets._report import WAREHOUSE_POOL, metadata_for
from purify_assets.resources import PurifyFiles, PurifyParams, PurifyWarehouse, embedder_for
from purify_assets.stages.cycle import project_rows

@asset(
    deps=["cluster_labels"], group_name="cycle", kinds={"duckdb", "plotly"}, pool=WAREHOUSE_POOL,
    description="Row coordinates in 2-D and 3-D per projection method for the latest cycle; a 2-D PNG per "
                "method in the metadata and an interactive 3-D HTML file beside the warehouse.",
)
def projections(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams,
                files: PurifyFiles) -> MaterializeResult:
    pv = params.current()
    model_id = embedder_for(pv.params["embed"]).model_id
    with warehouse.connect() as con:
        report = project_rows(con, pv.params.get("project") or {}, model_id, files.paths.plots, log=context.log.info)
    return MaterializeResult(metadata=metadata_for(report, pv, "projections"))
