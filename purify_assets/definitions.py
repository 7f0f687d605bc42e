"""The Dagster code location: assets, checks, jobs, sensors, schedule, resources, executor.

Runs execute in one process (``in_process_executor``) and dagster.yaml admits one run at a time and
one step per pool: DuckDB has a single writer.
"""

from __future__ import annotations

from pathlib import Path

from dagster import Definitions, in_process_executor

from purify_assets.assets import ALL_ASSETS
from purify_assets.automation.jobs import ingest_batch_job, purification_cycle_job
from purify_assets.automation.schedules import daily_cycle_schedule
from purify_assets.automation.sensors import feedback_sensor, landing_sensor
from purify_assets.resources import build_resources
from purify_assets.settings import PurifyPaths


def build_definitions(home: str | Path | None = None) -> Definitions:
    paths = PurifyPaths.from_env(home)
    return Definitions(
        assets=ALL_ASSETS,
        jobs=[ingest_batch_job, purification_cycle_job],
        sensors=[landing_sensor, feedback_sensor],
        schedules=[daily_cycle_schedule],
        resources=build_resources(paths),
        executor=in_process_executor,
    )


defs = build_definitions()
