"""Turn a ``StageReport`` into Dagster metadata and check results."""

import base64
from typing import Any, Iterable

from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

from purify_assets.core.params import ParamsVersion
from purify_assets.stages import StageReport

WAREHOUSE_POOL = "duckdb_warehouse"  # every asset writes the one DuckDB file: one at a time

def metadata_for(report: StageReport, params: ParamsVersion | None = None, table: str | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {}
    # plots and tables first: they are what a person reads in the UI; then counts, values, timings
    for name, png in report.images.items():
        encoded = base64.b64encode(png).decode("ascii")
        md[f"plot.{name}"] = MetadataValue.md(f"![{name}](data:image/png;base64,{encoded})")
    for name, text in report.markdown.items():
        md[name] = MetadataValue.md(text)
    for name, value in report.counts.items():
        md[name] = MetadataValue.int(int(value))
    for name, value in report.values.items():
        if isinstance(value, bool):
            md[name] = MetadataValue.bool(value)
        elif isinstance(value, int):
            md[name] = MetadataValue.int(value)
        elif isinstance(value, float):
            md[name] = MetadataValue.float(value)
        elif value is not None:
            md[name] = MetadataValue.text(str(value))
    for name, seconds in report.timings.items():
        md[f"seconds.{name}"] = MetadataValue.float(round(float(seconds), 3))
    for name, path in report.files.items():
        md[name] = MetadataValue.path(path)
    if params is not None:
        md["params_version"] = MetadataValue.int(params.version)
        md["params_hash"] = MetadataValue.text(params.hash)
    if table:
        md["dagster/table_name"] = MetadataValue.text(f"warehouse.main.{table}")
    if "rows" in report.counts and "dagster/row_count" not in md:
        md["dagster/row_count"] = MetadataValue.int(int(report.counts["rows"]))
    return md

def check_results(report: StageReport, asset_key: Any = None, names: Iterable[str] | None = None) -> list[AssetCheckResult]:
    out = []
    for name in names or report.checks:
        passed, description = report.checks.get(name, (True, "not evaluated"))
        out.append(AssetCheckResult(check_name=name, passed=bool(passed), asset_key=asset_key,
                                    severity=AssetCheckSeverity.WARN,
                                    metadata={"detail": MetadataValue.text(description)}))
    return out
