"""Soak test: land many batches in a row while the sensors run; nothing lost, memory bounded.

    python bench/soak.py                 # 50 batches
    python bench/soak.py --batches 20
    python bench/soak.py --quick         # 5 batches, seconds after the model loads

Not part of the test suite. Everything runs in one process against a persistent Dagster instance in
a temporary DAGSTER_HOME (the project's dagster.yaml copied in) and a temporary PURIFY_HOME:

1. for each batch, a small generated JSONL file (rows on a few topics, ``--bad`` broken lines
   planted, every 7th row an exact repeat, one row with an empty output) is dropped into the landing folder (written under a
   temporary name, then renamed, as a careful uploader does);
2. the landing sensor is evaluated with ``build_sensor_context`` (what the daemon does on a tick);
   its dynamic-partition request is applied to the instance and each RunRequest is executed
   in-process with ``dagster.materialize`` (raw_rows, quarantine, clean_rows, rejected_rows,
   embeddings with the project's default embedder), exactly as ``purify land`` does;
3. the feedback sensor is evaluated on the same tick (no parameter change: it must skip);
4. after each batch the process RSS is sampled.

At the end every batch must be materialized (a successful run per partition, a materialization of
each batch asset per partition) and the counts must add up per batch: raw = kept + rejected,
quarantine = planted bad lines, one embedding per kept row. The RSS slope (MB per batch, least
squares) over the second half says whether memory keeps growing once the model is loaded.
Results: bench/results/soak.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "bench" / "results"
TOPICS = ["cooking pasta", "repairing bicycles", "tax returns", "learning piano", "planting tomatoes",
          "writing poems", "saving money", "training a puppy"]


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0..n-1."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx = (n - 1) / 2
    my = sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


def batch_file(i: int, rows: int, bad: int) -> bytes:
    lines = []
    bad_at = set(range(3, 3 + bad * 5, 5))
    n = 0
    while len(lines) < rows + bad:
        if len(lines) in bad_at:
            lines.append('{"instruction": "broken line of batch %d' % i)
            continue
        j = n - 1 if n % 7 == 6 else n
        topic = TOPICS[(i + j) % len(TOPICS)]
        output = "" if n == 10 else (f"For {topic}, practise a little every day, note what went wrong "
                                     f"and fix one thing at a time (batch {i}, answer {j}).")  # row 11: rejected
        lines.append(json.dumps({"instruction": f"Batch {i}, question {j}: how do I get better at {topic}?",
                                 "output": output}))
        n += 1
    return ("\n".join(lines) + "\n").encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--rows", type=int, default=40, help="good rows per batch (default 40)")
    ap.add_argument("--bad", type=int, default=2, help="broken lines planted per batch (default 2)")
    ap.add_argument("--quick", action="store_true", help="5 batches")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace")
    args = ap.parse_args()
    n_batches = 5 if args.quick else args.batches

    root = Path(tempfile.mkdtemp(prefix="purify-soak-"))
    dagster_home = root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT / "dagster.yaml", dagster_home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ["PURIFY_HOME"] = str(root / "home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from dagster import AssetKey, DagsterInstance, SensorResult, build_sensor_context, materialize

    from purify_assets.assets import ALL_ASSETS
    from purify_assets.automation.jobs import BATCH_ASSET_KEYS
    from purify_assets.automation.partitions import BATCHES
    from purify_assets.automation.sensors import feedback_sensor, landing_sensor
    from purify_assets.core import warehouse as wh
    from purify_assets.resources import build_resources
    from purify_assets.settings import PurifyPaths

    paths = PurifyPaths.from_env().ensure()
    instance = DagsterInstance.get()
    resources = build_resources(paths)
    from purify_assets.core.params import ParamsStore
    from purify_assets.resources import embedder_for

    model_id = embedder_for(ParamsStore(paths.params).current().params["embed"]).model_id  # the project default
    landing_cursor: str | None = None
    feedback_cursor: str | None = None
    per_batch: list[dict] = []
    failures: list[str] = []
    started = time.perf_counter()
    rss_start = rss_mb()
    for i in range(n_batches):
        t0 = time.perf_counter()
        name = f"soak_{i:03d}.jsonl"
        tmp = paths.landing / f".{name}.tmp"
        tmp.write_bytes(batch_file(i, args.rows, args.bad))
        tmp.rename(paths.landing / name)
        # one sensor tick
        result = landing_sensor(build_sensor_context(instance=instance, cursor=landing_cursor, resources=resources))
        assert isinstance(result, SensorResult)
        landing_cursor = result.cursor
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(BATCHES, list(request.partition_keys))
        requests = list(result.run_requests or [])
        if len(requests) != 1:
            failures.append(f"batch {i}: the landing sensor requested {len(requests)} runs, expected 1")
        for request in requests:
            run = materialize(ALL_ASSETS, selection=[AssetKey(a) for a in BATCH_ASSET_KEYS],
                              partition_key=request.partition_key, instance=instance, resources=resources,
                              tags=dict(request.tags), raise_on_error=False)
            if not run.success:
                failures.append(f"batch {i} ({request.partition_key}): run {run.run_id} failed")
        fb = feedback_sensor(build_sensor_context(instance=instance, cursor=feedback_cursor, resources=resources))
        feedback_cursor = getattr(fb, "cursor", None) or feedback_cursor
        if getattr(fb, "run_requests", None):
            failures.append(f"batch {i}: the feedback sensor requested runs without a parameter change")
        per_batch.append({"batch": i, "key": requests[0].partition_key if requests else None,
                          "seconds": round(time.perf_counter() - t0, 2), "rss_mb": round(rss_mb(), 1)})
        print(f"batch {i + 1:>3}/{n_batches}: {per_batch[-1]['key']} in {per_batch[-1]['seconds']:.2f}s, "
              f"RSS {per_batch[-1]['rss_mb']:.0f} MB", flush=True)
    total = time.perf_counter() - started

    # ---- verification
    keys = [b["key"] for b in per_batch if b["key"]]
    runs = instance.get_runs()
    ok_runs = {r.tags.get("dagster/partition") for r in runs if r.is_success}
    missing_runs = [k for k in keys if k not in ok_runs]
    unmaterialized = {}
    for asset in BATCH_ASSET_KEYS:
        done = instance.get_materialized_partitions(AssetKey(asset))
        lacking = [k for k in keys if k not in done]
        if lacking:
            unmaterialized[asset] = lacking
    counts: list[dict] = []
    with wh.connect(paths.warehouse, read_only=True) as con:
        for k in keys:
            c = {t: int(wh.scalar(con, f"SELECT count(*) FROM {t} WHERE batch_id = ?", [k]))
                 for t in ("raw_rows", "quarantine", "clean_rows", "rejected_rows", "embeddings")}
            c["key"] = k
            counts.append(c)
        duplicated_ids = int(wh.scalar(con, "SELECT count(*) - count(DISTINCT row_id) FROM raw_rows"))
    bad_accounting = [c for c in counts if c["raw_rows"] != c["clean_rows"] + c["rejected_rows"]]
    bad_quarantine = [c for c in counts if c["quarantine"] != args.bad]
    bad_raw = [c for c in counts if c["raw_rows"] != args.rows]
    bad_embed = [c for c in counts if c["embeddings"] != c["clean_rows"]]
    rss = [b["rss_mb"] for b in per_batch]
    half = rss[len(rss) // 2:]
    summary = {
        "batches": n_batches, "rows_per_batch": args.rows, "bad_lines_per_batch": args.bad,
        "seconds_total": round(total, 1), "seconds_per_batch_median": sorted(b["seconds"] for b in per_batch)[len(per_batch) // 2],
        "runs_succeeded": len([k for k in keys if k in ok_runs]), "runs_missing_or_failed": missing_runs,
        "unmaterialized_partitions": unmaterialized,
        "raw_rows": sum(c["raw_rows"] for c in counts), "clean_rows": sum(c["clean_rows"] for c in counts),
        "rejected_rows": sum(c["rejected_rows"] for c in counts), "quarantine": sum(c["quarantine"] for c in counts),
        "planted_bad_lines": args.bad * n_batches, "embeddings": sum(c["embeddings"] for c in counts),
        "duplicated_row_ids": duplicated_ids,
        "batches_where_raw_ne_kept_plus_rejected": len(bad_accounting),
        "batches_where_quarantine_ne_planted": len(bad_quarantine), "batches_with_wrong_raw_count": len(bad_raw),
        "batches_where_embeddings_ne_kept": len(bad_embed),
        "rss_mb_before": round(rss_start, 1), "rss_mb_after_first_batch": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None, "rss_mb_max": max(rss) if rss else None,
        "rss_slope_mb_per_batch_all": round(slope(rss), 3), "rss_slope_mb_per_batch_second_half": round(slope(half), 3),
        "embed_model": model_id, "failures": failures, "python": platform.python_version(), "cpus": os.cpu_count(),
    }
    summary["ok"] = not (failures or missing_runs or unmaterialized or bad_accounting or bad_quarantine or bad_raw
                         or bad_embed or duplicated_ids)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "soak_quick" if args.quick else "soak"
    (RESULTS / f"{name}.json").write_text(json.dumps({"summary": summary, "per_batch": per_batch}, indent=1), "utf-8")
    md = [f"# Soak: {n_batches} batches landed in a row while the sensors run", "",
          f"Generated by `python bench/soak.py{' --quick' if args.quick else f' --batches {n_batches}'}` on "
          f"{os.cpu_count()} CPUs (shared with other work: timings are noisy). Each batch: {args.rows} good rows "
          f"(every 7th an exact repeat, one with an empty output), {args.bad} planted broken lines; embedded with `{model_id}` (the project "
          "default embedder).", "",
          f"**Result: {'OK' if summary['ok'] else 'PROBLEMS'}**", "",
          "| what | value |", "|---|---|"]
    for key in ("batches", "runs_succeeded", "raw_rows", "clean_rows", "rejected_rows", "quarantine", "planted_bad_lines",
                "embeddings", "duplicated_row_ids", "batches_where_raw_ne_kept_plus_rejected",
                "batches_where_quarantine_ne_planted", "batches_where_embeddings_ne_kept", "seconds_total",
                "seconds_per_batch_median", "rss_mb_before", "rss_mb_after_first_batch", "rss_mb_last", "rss_mb_max",
                "rss_slope_mb_per_batch_all", "rss_slope_mb_per_batch_second_half"):
        md.append(f"| {key} | {summary[key]} |")
    if failures or missing_runs or unmaterialized:
        md += ["", "## Problems", ""] + [f"- {f}" for f in failures + [f"no successful run: {k}" for k in missing_runs]]
        md += [f"- {a} not materialized for {v}" for a, v in unmaterialized.items()]
    md += ["", "RSS per batch (MB): " + ", ".join(f"{r:.0f}" for r in rss)]
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n", "utf-8")
    print(json.dumps(summary, indent=1))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"workspace kept at {root}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
