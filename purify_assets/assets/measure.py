"""cluster_metrics: global and per-cluster quality figures for the latest cycle."""

from dagster import AssetCheckSpec, AssetExecutionContext, MaterializeResult, asset

from purify_assets.assets._report import WAREHOUSE_POOL, check_results, metadata_for
from purify_assets.resources import PurifyParams, PurifyWarehouse, embedder_for
from purify_assets.stages.cycle import measure_clusters

METRIC_CHECKS = ["silhouette_above_minimum", "noise_fraction_below_maximum"]

@asset(
    deps=["cluster_labels"], group_name="cycle", kinds={"duckdb"}, pool=WAREHOUSE_POOL,
    check_specs=[AssetCheckSpec(name, asset="cluster_metrics") for name in METRIC_CHECKS],
    description="Silhouette (sampled), Davies-Bouldin, Calinski-Harabasz, noise and balance per cycle, and "
                "per-cluster size, silhouette and nearest neighbour; a k sweep when measure.k_sweep is set.",
)
def cluster_metrics(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams) -> MaterializeResult:
    pv = params.current()
    model_id = embedder_for(pv.params["embed"]).model_id
    with warehouse.connect() as con:
        report = measure_clusters(con, pv.params.get("measure") or {}, model_id, log=context.log.info)
    return MaterializeResult(metadata=metadata_for(report, pv, "cluster_metrics"),
                             check_results=check_results(report, names=METRIC_CHECKS))
