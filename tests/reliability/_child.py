"""A stage run in its own process, for the fault tests (``python -m tests.reliability._child '<json>'``).

``pause_after``: after that many ``warehouse.insert_frame`` calls the process prints ``IN_TRANSACTION``
and sleeps (it is then inside the stage's write transaction, rows inserted but not committed), so the
parent can SIGKILL it at a known point. ``hold_seconds`` lets the parent release it instead (by
creating ``release_file``). Prints ``OPENED <seconds>`` when its warehouse connection opened and
``DONE <json counts>`` when the stage returned.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    args = json.loads(sys.argv[1])
    from purify_assets.core import warehouse as wh

    real_insert, real_open = wh.insert_frame, wh.open_connection
    calls = {"n": 0}

    def insert_then_pause(con, table, frame):
        n = real_insert(con, table, frame)
        calls["n"] += 1
        if args.get("pause_after") and calls["n"] == args["pause_after"]:
            print(f"IN_TRANSACTION {table}", flush=True)
            deadline = time.monotonic() + float(args.get("hold_seconds", 120))
            release = Path(args["release_file"]) if args.get("release_file") else None
            while time.monotonic() < deadline and not (release and release.exists()):
                time.sleep(0.05)
        return n

    def open_and_report(*a, **kw):
        started = time.monotonic()
        con = real_open(*a, **kw)
        print(f"OPENED {time.monotonic() - started:.2f}", flush=True)
        return con

    wh.insert_frame = insert_then_pause
    wh.open_connection = open_and_report
    print("STARTED", flush=True)
    stage = args["stage"]
    if stage in ("ingest", "clean", "dedup"):
        from purify_assets.core.landing import LandedBatch

        with wh.connect(args["warehouse"], wait_seconds=60) as con:
            if stage == "ingest":
                from purify_assets.stages.batch import ingest_batch

                report = ingest_batch(con, LandedBatch(**args["batch"]), chunk_rows=args.get("chunk_rows", 50_000))
            elif stage == "clean":
                from purify_assets.stages.batch import clean_batch

                report = clean_batch(con, args["batch_id"], {}, "instruction", chunk_rows=args.get("chunk_rows", 50_000))
            else:
                from purify_assets.stages.cycle import dedup_rows

                report = dedup_rows(con, args["dedup"], args["model_id"])
        print("DONE " + json.dumps(report.counts), flush=True)
    elif stage == "materialize":
        # a Dagster run of one batch's raw_rows + clean_rows, recorded in DAGSTER_HOME
        os.environ["DAGSTER_HOME"] = args["dagster_home"]
        from dagster import AssetKey, DagsterInstance, materialize

        from purify_assets.assets import ALL_ASSETS
        from purify_assets.resources import build_resources
        from purify_assets.settings import PurifyPaths

        result = materialize(ALL_ASSETS, selection=[AssetKey(a) for a in ("raw_rows", "quarantine", "clean_rows", "rejected_rows")],
                             partition_key=args["partition_key"], instance=DagsterInstance.get(),
                             resources=build_resources(PurifyPaths(Path(args["home"]))), raise_on_error=False)
        print(f"DONE {json.dumps({'success': result.success})}", flush=True)
    else:
        raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    main()
