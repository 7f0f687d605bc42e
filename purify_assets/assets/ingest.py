"""raw_rows (+ quarantine): every parsed row of one landed batch, untouched, with its original record."""

from dagster import AssetExecutionContext, AssetSpec, Failure, MaterializeResult, MetadataValue, multi_asset

from purify_assets.assets._report import WAREHOUSE_POOL, metadata_for
from purify_assets.automation.partitions import batch_partitions
from purify_assets.core.landing import LandingError, find_batch
from purify_assets.resources import PurifyFiles, PurifyParams, PurifyWarehouse
from purify_assets.stages.batch import IngestError, ingest_batch

@multi_asset(
    specs=[
        AssetSpec("raw_rows", group_name="per_batch", kinds={"duckdb"},
                  description="Every parsed row of a landed batch as it arrived: source file, line number, the "
                              "original record as JSON, and the mapped instruction / input / output."),
        AssetSpec("quarantine", group_name="per_batch", kinds={"duckdb"},
                  description="Lines of a landed batch that could not be parsed: file, line number, error, raw text."),
    ],
    partitions_def=batch_partitions,
    pool=WAREHOUSE_POOL,
)
def raw_rows(context: AssetExecutionContext, warehouse: PurifyWarehouse, files: PurifyFiles, params: PurifyParams):
    try:
        batch = find_batch(files.paths.archive, context.partition_key)
    except LandingError as exc:
        raise Failure(description=str(exc)) from exc
    pv = params.current()
    try:
        with warehouse.connect() as con:
            report = ingest_batch(con, batch, (pv.params.get("ingest") or {}).get("mapping"), log=context.log.info)
    except IngestError as exc:
        raise Failure(description=str(exc)) from exc
    md = metadata_for(report, pv, "raw_rows")
    md["archived_file"] = MetadataValue.path(batch.archived_path)
    yield MaterializeResult(asset_key="raw_rows", metadata=md)
    qmd = {"dagster/row_count": MetadataValue.int(report.counts["quarantined"]),
           "source_file": MetadataValue.text(batch.original_name)}
    if "quarantine_preview" in report.markdown:
        qmd["preview"] = MetadataValue.md(report.markdown["quarantine_preview"])
    yield MaterializeResult(asset_key="quarantine", metadata=qmd)
