"""The ``purify`` command: what users do outside the Dagster UI.

Runs started here go through Dagster (``materialize`` against the instance in ``DAGSTER_HOME``), so
they show up in the UI with their metadata and lineage, exactly like runs the daemon launches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from purify_assets.core import warehouse as wh
from purify_assets.settings import PurifyPaths

STATUS_TABLES = wh.ASSET_TABLES + wh.REJECTED_INPUT_TABLES


class CliError(Exception):
    pass


# ----------------------------------------------------------------------------------------- plumbing
def _instance(paths: PurifyPaths):
    from dagster import DagsterInstance

    if not os.environ.get("DAGSTER_HOME"):
        local = Path.cwd() / "dagster.yaml"
        home = Path.cwd() if local.exists() else paths.home / "dagster_home"
        home.mkdir(parents=True, exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)
    return DagsterInstance.get()


def _run(paths: PurifyPaths, instance: Any, selection: Sequence[str], partition_key: str | None = None,
         tags: dict[str, str] | None = None) -> Any:
    """Materialize ``selection`` in this process, recorded in the Dagster instance."""
    from dagster import AssetKey, materialize

    from purify_assets.assets import ALL_ASSETS
    from purify_assets.resources import build_resources

    result = materialize(ALL_ASSETS, selection=[AssetKey(a) for a in selection], partition_key=partition_key,
                         instance=instance, resources=build_resources(paths), tags=tags or {},
                         raise_on_error=False)
    if not result.success:
        failures = [e for e in result.all_events if e.is_failure]
        detail = "; ".join(str(e.event_specific_data.error.message).strip() if getattr(e.event_specific_data, "error", None)
                           else e.message or "" for e in failures)
        raise CliError(f"run {result.run_id} failed: {detail or 'see the Dagster UI'}")
    return result


def _connect(paths: PurifyPaths, read_only: bool = True):


    return wh.connect(paths.warehouse, read_only=read_only, wait_seconds=60)


def _land(paths: PurifyPaths, instance: Any, files: Sequence[str], run: bool = True) -> list[str]:
    from purify_assets.automation.jobs import BATCH_ASSET_KEYS
    from purify_assets.automation.partitions import BATCHES
    from purify_assets.core.landing import archive_file

    keys = []
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise CliError(f"{name}: no such file")
        batch, created = archive_file(path, paths.archive)
        known = instance.has_dynamic_partition(BATCHES, batch.batch_key)
        if not created and known:
            print(f"{name}: same content as batch {batch.batch_key}, already landed; skipped")
            continue
        if not known:
            instance.add_dynamic_partitions(BATCHES, [batch.batch_key])
        keys.append(batch.batch_key)
        print(f"{name}: batch {batch.batch_key} ({batch.bytes:,} bytes, sha256 {batch.sha256[:16]}…)")
    if run:
        for key in keys:
            started = time.perf_counter()
            _run(paths, instance, BATCH_ASSET_KEYS, partition_key=key, tags={"purify/batch": key})
            print(f"  materialized raw_rows, clean_rows, embeddings for {key} in {time.perf_counter() - started:.1f}s")
    return keys


def _cycle(paths: PurifyPaths, instance: Any, cycles: int) -> None:
    """Run one cycle, then follow the feedback sensor for up to ``cycles - 1`` more."""
    from dagster import build_sensor_context

    from purify_assets.automation.jobs import CYCLE_ASSET_KEYS
    from purify_assets.automation.sensors import feedback_sensor
    from purify_assets.core.params import ParamsStore
    from purify_assets.resources import build_resources

    store = ParamsStore(paths.params)
    version = store.current().version
    started = time.perf_counter()
    _run(paths, instance, CYCLE_ASSET_KEYS, tags={"purify/params_version": str(version)})
    print(f"cycle with parameter version {version} done in {time.perf_counter() - started:.1f}s")
    for _ in range(cycles - 1):
        context = build_sensor_context(instance=instance, cursor=str(version), resources=build_resources(paths))
        outcome = feedback_sensor(context)
        requests = list(getattr(outcome, "run_requests", None) or [])
        if not requests:
            print("feedback sensor: no new approved parameters, the cycle has settled")
            break
        version = int(getattr(outcome, "cursor", version))
        print(f"feedback sensor: parameter version {version} approved; re-running "
              f"{', '.join(sorted({k.to_user_string() for r in requests for k in (r.asset_selection or [])}))}")
        for request in requests:
            started = time.perf_counter()
            _run(paths, instance, [k.to_user_string() for k in request.asset_selection or []],
                 partition_key=request.partition_key, tags=dict(request.tags))
        print(f"cycle with parameter version {version} done in {time.perf_counter() - started:.1f}s")


def status_dict(paths: PurifyPaths) -> dict[str, Any]:
    from purify_assets.core.params import ParamsStore

    tables = {t: 0 for t in STATUS_TABLES}
    cycles = 0
    if paths.warehouse.exists():
        with _connect(paths) as con:
            for t in STATUS_TABLES:
                tables[t] = int(wh.scalar(con, f"SELECT count(*) FROM {t}"))
            cycles = int(wh.scalar(con, "SELECT count(*) FROM cycles"))
    versions = len(ParamsStore(paths.params).history()) if paths.params.exists() else 0
    return {"purify_home": str(paths.home), "tables": tables, "params_versions": versions, "cycles": cycles}


# ------------------------------------------------------------------------------------------ commands
def cmd_demo(args: argparse.Namespace, paths: PurifyPaths) -> int:
    from purify_assets.core.demo import write_demo_batches
    from purify_assets.core.params import ParamsStore

    paths.ensure()
    instance = _instance(paths)
    store = ParamsStore(paths.params)
    if not store.history():
        store.write({"cluster": {"k": args.k}, "cycle": {"max_cycles": args.cycles + 1}},
                    source="user", reason="demo starting parameters")
    files = write_demo_batches(paths.landing / "demo", seed=args.seed)
    print(f"demo data: {len(files)} files in {paths.landing / 'demo'}")
    t0 = time.perf_counter()
    _land(paths, instance, [str(f) for f in files])
    _cycle(paths, instance, args.cycles)
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s\n")
    _print_status(paths)
    print(f"\nwarehouse: {paths.warehouse}\nexports:   {paths.exports / 'latest'}\nplots:     {paths.plots}\n"
          f"Dagster:   DAGSTER_HOME={os.environ['DAGSTER_HOME']} dagster dev -w workspace.yaml -h 127.0.0.1")
    return 0


def cmd_land(args: argparse.Namespace, paths: PurifyPaths) -> int:
    paths.ensure()
    instance = _instance(paths)
    keys = _land(paths, instance, args.files, run=not args.no_run)
    if args.cycle and keys:
        _cycle(paths, instance, args.cycles)
    elif keys and not args.no_run:
        print("run `purify run` to start a purification cycle over every batch")
    return 0


def cmd_run(args: argparse.Namespace, paths: PurifyPaths) -> int:
    paths.ensure()
    _cycle(paths, _instance(paths), args.cycles)
    _print_status(paths)
    return 0


def cmd_status(args: argparse.Namespace, paths: PurifyPaths) -> int:
    if args.json:
        print(json.dumps(status_dict(paths), indent=2))
    else:
        _print_status(paths)
    return 0


def _print_status(paths: PurifyPaths) -> None:
    status = status_dict(paths)
    print(f"PURIFY_HOME {status['purify_home']}")
    for table, n in status["tables"].items():
        print(f"  {table:<18} {n:>10,}")
    print(f"  parameter versions {status['params_versions']}, cycles {status['cycles']}")


def cmd_cycles(args: argparse.Namespace, paths: PurifyPaths) -> int:
    from purify_assets.stages.cycle import cycle_history

    if not paths.warehouse.exists():
        print("no cycles yet")
        return 0
    with _connect(paths) as con:
        frame = cycle_history(con)
    if args.json:
        print(json.dumps(frame.to_dicts(), indent=2, default=str))
    else:
        import polars as pl

        with pl.Config(tbl_rows=100, tbl_cols=20, fmt_str_lengths=60):
            print(frame)
    return 0


def cmd_params(args: argparse.Namespace, paths: PurifyPaths) -> int:
    from purify_assets.core.params import ParamsStore, diff, parse_value, set_path

    store = ParamsStore(paths.params)
    if args.action == "show":
        pv = store.get(args.version) if args.version else store.current()
        print(json.dumps(pv.as_dict(), indent=2, ensure_ascii=False))
    elif args.action == "history":
        for pv in store.history():
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(pv.created_at))
            print(f"v{pv.version:<4} {pv.status:<9} {pv.source:<8} {when}  {pv.hash}  parent={pv.parent}  {pv.reason}")
            if pv.parent:
                for path, (a, b) in diff(store.get(pv.parent).params, pv.params).items():
                    print(f"        {path}: {json.dumps(a, ensure_ascii=False)} -> {json.dumps(b, ensure_ascii=False)}")
    elif args.action == "diff":
        a, b = store.get(args.a), store.get(args.b)
        changes = diff(a.params, b.params)
        for path, (x, y) in changes.items():
            print(f"{path}: {json.dumps(x, ensure_ascii=False)} -> {json.dumps(y, ensure_ascii=False)}")
        if not changes:
            print("no differences")
    elif args.action == "set":
        current = store.current()
        params = current.params
        for item in args.assignments:
            if "=" not in item:
                raise CliError(f"{item!r}: expected section.key=value, e.g. cluster.k=6")
            key, value = item.split("=", 1)
            params = set_path(params, key.strip(), parse_value(value))
        if not diff(current.params, params):
            print("no change")
            return 0
        pv = store.write(params, source="user", reason=args.reason or "set from the command line", parent=current.version)
        print(f"wrote parameter version {pv.version} (hash {pv.hash}); the feedback sensor re-runs what it affects, "
              "or run `purify run`")
    elif args.action in ("approve", "reject"):
        pv = store.set_status(args.version, "approved" if args.action == "approve" else "rejected")
        print(f"version {pv.version} is now {pv.status}")
    return 0


def cmd_retract(args: argparse.Namespace, paths: PurifyPaths) -> int:
    from purify_assets.automation.partitions import BATCHES


    instance = _instance(paths)
    with _connect(paths, read_only=False) as con, wh.transaction(con):
        counts = {}
        for table in ("raw_rows", "quarantine", "clean_rows", "rejected_rows", "embeddings", "response_embeddings", "batches"):
            counts[table] = wh.scalar(con, f"DELETE FROM {table} WHERE batch_id = ?", [args.batch])
    if instance.has_dynamic_partition(BATCHES, args.batch):
        instance.delete_dynamic_partition(BATCHES, args.batch)
    print(f"retracted batch {args.batch}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    print("run `purify run` so dedup, clusters and exports forget it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="purify", description="Purify raw LLM fine-tuning data with Dagster assets.")
    parser.add_argument("--home", help="workspace folder (default: $PURIFY_HOME or ./data)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="generate the demo data, land it and run cycles with feedback")
    p.add_argument("--cycles", type=int, default=2, help="cycles to run, following the feedback sensor (default 2)")
    p.add_argument("--k", type=int, default=4, help="starting number of clusters (default 4)")
    p.add_argument("--seed", type=int, default=0, help="demo data seed (default 0)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("land", help="land files as new batches and materialize their batch assets")
    p.add_argument("files", nargs="+", help="JSONL / JSON / CSV / TSV / Parquet files (optionally .gz / .zst)")
    p.add_argument("--no-run", action="store_true", help="only archive and register the batches")
    p.add_argument("--cycle", action="store_true", help="run a purification cycle afterwards")
    p.add_argument("--cycles", type=int, default=1, help="with --cycle: cycles to run (default 1)")
    p.set_defaults(func=cmd_land)

    p = sub.add_parser("run", help="materialize the global assets: one purification cycle")
    p.add_argument("--cycles", type=int, default=1, help="follow the feedback sensor for this many cycles (default 1)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="row counts per table, parameter versions, cycles")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("cycles", help="history of cycles: metrics, recommendation, state")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_cycles)

    p = sub.add_parser("params", help="show, set, diff, approve and reject parameter versions")
    psub = p.add_subparsers(dest="action", required=True)
    q = psub.add_parser("show", help="print the current (or a given) parameter version")
    q.add_argument("--version", type=int)
    psub.add_parser("history", help="every version with its source, status, reason and changes")
    q = psub.add_parser("set", help="write a new version with section.key=value changes")
    q.add_argument("assignments", nargs="+", help="e.g. cluster.k=6 dedup.near=true")
    q.add_argument("--reason", help="why (kept in the history)")
    q = psub.add_parser("diff", help="differences between two versions")
    q.add_argument("a", type=int)
    q.add_argument("b", type=int)
    for action in ("approve", "reject"):
        q = psub.add_parser(action, help=f"{action} a proposed version")
        q.add_argument("version", type=int)
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("retract", help="remove a batch and its rows everywhere; the next cycle forgets it")
    p.add_argument("batch", help="batch key, as listed by the UI or `purify status`")
    p.set_defaults(func=cmd_retract)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = PurifyPaths.from_env(args.home)
    try:
        return args.func(args, paths)
    except CliError as exc:
        print(f"purify: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a clear one-line message first; the traceback only on request
        from purify_assets.core.params import ParamsError
        from purify_assets.core.warehouse import WarehouseError

        import duckdb

        if isinstance(exc, (ParamsError, WarehouseError, ValueError, OSError, duckdb.Error)) and not os.environ.get("PURIFY_DEBUG"):
            print(f"purify: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
