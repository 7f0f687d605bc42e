"""embeddings: one float32 vector per clean row; text already embedded by the model is reused."""

from dagster import AssetCheckSpec, AssetExecutionContext, MaterializeResult, asset

from purify_assets.assets._report import WAREHOUSE_POOL, check_results, metadata_for
from purify_assets.automation.partitions import batch_partitions
from purify_assets.resources import PurifyParams, PurifyWarehouse, embedder_for
from purify_assets.stages.batch import embed_batch

@asset(
    deps=["clean_rows"], partitions_def=batch_partitions, group_name="per_batch", kinds={"duckdb", "pytorch"},
    pool=WAREHOUSE_POOL, check_specs=[AssetCheckSpec("every_row_has_a_vector", asset="embeddings")],
    description="Row id, model id, text hash and vector (FLOAT[]) per clean row, and (embed.response_vectors) one "
                "vector per response in response_embeddings. Cached by (model, text hash): re-materializing embeds "
                "only text the model has never seen.",
)
def embeddings(context: AssetExecutionContext, warehouse: PurifyWarehouse, params: PurifyParams):
    pv = params.current()
    embedder = embedder_for(pv.params["embed"])
    with warehouse.connect() as con:
        report = embed_batch(con, context.partition_key, embedder, log=context.log.info,
                             response_vectors=bool(pv.params["embed"].get("response_vectors", True)))
    return MaterializeResult(metadata=metadata_for(report, pv, "embeddings"),
                             check_results=check_results(report, names=["every_row_has_a_vector"]))
