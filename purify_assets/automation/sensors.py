"""Sensors: the landing sensor (new files -> batches) and the feedback sensor (new parameters -> cycle).

Neither opens the warehouse: the landing sensor touches only the landing and archive folders, the
feedback sensor only the parameter store (SQLite).
"""


import json

from dagster import (
    AssetKey, DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, SkipReason, sensor,
)

from purify_assets.automation.jobs import BATCH_ASSET_KEYS, CYCLE_ASSET_KEYS, ingest_batch_job
from purify_assets.automation.partitions import BATCHES, batch_partitions
from purify_assets.core.landing import refused_candidates, scan_landing
from purify_assets.core.params import DEFAULT_PARAMS, affected_assets
from purify_assets.resources import PurifyFiles, PurifyParams

PARAMS_VERSION_TAG = "purify/params_version"


@sensor(job=ingest_batch_job, minimum_interval_seconds=15, default_status=DefaultSensorStatus.RUNNING,
        description="Watches PURIFY_HOME/landing. Each new file content is archived unchanged, becomes one "
                    "partition of the batch assets, and gets one run. Re-landed content is ignored.")
def landing_sensor(context: SensorEvaluationContext, files: PurifyFiles):
    seen = json.loads(context.cursor) if context.cursor else {}
    paths = files.paths
    new, seen = scan_landing(paths.landing, paths.archive, seen)
    keys = [b.batch_key for b in new if not context.instance.has_dynamic_partition(BATCHES, b.batch_key)]
    for path in refused_candidates(paths.landing):
        context.log.warning(f"refused {path}: it points outside the landing folder {paths.landing}")
    for batch in new:
        context.log.info(f"landed {batch.original_name} as batch {batch.batch_key} ({batch.bytes:,} bytes)")
    if not keys:
        return SensorResult(skip_reason=SkipReason("no new file content in the landing folder"), cursor=json.dumps(seen))
    return SensorResult(
        run_requests=[RunRequest(partition_key=k, run_key=f"batch-{k}", tags={"purify/batch": k}) for k in keys],
        dynamic_partitions_requests=[batch_partitions.build_add_request(keys)],
        cursor=json.dumps(seen),
    )


def feedback_run_requests(old_params: dict, new_params: dict, version: int, partition_keys: list[str]) -> list[RunRequest]:
    """Runs for exactly the assets a parameter change affects. Batch-level changes get one run per batch,
    queued before the cycle run (the run queue admits one run at a time, in order)."""
    assets = affected_assets(old_params, new_params)
    tags = {PARAMS_VERSION_TAG: str(version)}
    requests = []
    companions = {"quarantine": "raw_rows", "rejected_rows": "clean_rows"}  # written by the same step
    batch_assets = [a for a in BATCH_ASSET_KEYS if a in assets or companions.get(a) in assets]
    if batch_assets:
        for key in partition_keys:
            requests.append(RunRequest(run_key=f"params-v{version}-{key}", partition_key=key, tags=tags,
                                       asset_selection=[AssetKey(a) for a in batch_assets]))
    cycle_assets = [a for a in CYCLE_ASSET_KEYS if a in assets]
    if cycle_assets:
        requests.append(RunRequest(run_key=f"params-v{version}", tags=tags,
                                   asset_selection=[AssetKey(a) for a in cycle_assets]))
    return requests


@sensor(target=[*BATCH_ASSET_KEYS, *CYCLE_ASSET_KEYS], minimum_interval_seconds=15,
        default_status=DefaultSensorStatus.RUNNING,
        description="Watches the parameter store. A newly approved version (from a review or `purify params set`) "
                    "requests runs of the assets it affects: the next purification cycle.")
def feedback_sensor(context: SensorEvaluationContext, params: PurifyParams):
    store = params.store()
    latest = store.latest_approved_version()
    if context.cursor is None:
        return SensorResult(skip_reason=SkipReason(f"started at parameter version {latest}"), cursor=str(latest))
    seen = int(context.cursor)
    if latest <= seen:
        return SkipReason(f"parameter version {latest} already handled")
    old = store.get(seen).params if seen > 0 else DEFAULT_PARAMS
    new = store.get(latest)
    keys = context.instance.get_dynamic_partitions(BATCHES)
    requests = feedback_run_requests(old, new.params, latest, list(keys))
    context.log.info(f"parameter version {seen} -> {latest} ({new.source}: {new.reason}); {len(requests)} run(s)")
    if not requests:
        return SensorResult(skip_reason=SkipReason(f"version {latest} changes nothing that needs a re-run"), cursor=str(latest))
    return SensorResult(run_requests=requests, cursor=str(latest))
