"""The re-run's cycle alone, replayed on one prepared warehouse: an A/B tool for the incremental target.

    python bench/bench_rerun_cycle.py prepare --rows 100000 --home bench/.cache/rerun_100k
    python bench/bench_rerun_cycle.py replay --home bench/.cache/rerun_100k --runs 5
    python bench/bench_rerun_cycle.py replay --home bench/.cache/rerun_100k --runs 3 --unchanged   # then a cycle with no new rows
    python bench/bench_rerun_cycle.py prepare --rows 400 --embedder hash --project-methods pca   # seconds
    python bench/bench_rerun_cycle.py profile --home bench/.cache/rerun_100k --out bench/results/rerun_cycle_profile_100k.txt

``prepare`` does what ``bench_incremental.py`` does up to the re-run's cycle: a full run over the
first N NSMC rows (batch stages, then one cycle), then 10 % new rows landed, ingested, cleaned and
embedded with the real encoder. It stops there and keeps the purify home.

``replay`` then times the cycle (dedup, cluster, project, metrics, review, publish) on a fresh copy
of that home, each run in a fresh process. Before its timed cycle, every process runs one small
cycle on stand-in vectors, so that imports and numba compiles are paid as they are in the
benchmark's process (which ran the full run first). The encoder's time is not in it: the cycle
is the part of the re-run the code can still shorten, and the host's speed shifts too much
between two 100k full runs to see a change of a few hundred milliseconds. To compare two commits,
check the older one out with ``git worktree`` and alternate the replays: each run's process imports
``purify_assets`` as its interpreter finds it, so run the worktree's copy of this script with
``PYTHONPATH`` set to the worktree (or give ``--python`` an interpreter that has it installed), and
compare medians.

``profile`` replays the cycle once under pyinstrument (a benchmark extra) and writes its call tree
as text: where the re-run's cycle spends its time, stage by stage, for "What limits the missed
targets" in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_stages import bench_params  # noqa: E402


class ReopenedWorkspace(C.Workspace):
    """A prepared purify home, with the parameters the full run used (version 1), as the
    incremental benchmark's re-run uses them."""

    def __init__(self, home: Path):  # noqa: D107 - no parameters are written, unlike Workspace
        from purify_assets.core.params import ParamsStore
        from purify_assets.settings import PurifyPaths

        self.paths = PurifyPaths(Path(home)).ensure()
        self.store = ParamsStore(self.paths.params)
        self.params = self.store.get(1)


def prepare(rows: int, new_fraction: float, home: Path, embedder_name: str = "use",
            methods: list[str] | None = None) -> dict[str, Any]:
    new = max(1, int(round(rows * new_fraction)))
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    embedder, info = C.make_bench_embedder(embedder_name)
    dim = len(embedder.embed(["x"])[0])
    ws = C.Workspace(home, bench_params(methods))
    timings: list[C.StageTiming] = []
    t0 = time.perf_counter()
    C.run_batch(ws, C.nsmc_slice(rows), embedder, timings)
    C.run_cycle(ws, embedder.model_id, timings)
    full_s = time.perf_counter() - t0
    C.run_batch(ws, C.nsmc_slice(new, start=rows), embedder, timings, prefix="new ")
    if hasattr(embedder, "close"):
        embedder.close()
    out = {"rows": rows, "new_rows": new, "model_id": embedder.model_id, "dim": dim,
           "project_methods": methods, "full_run_s": round(full_s, 2),
           "stages": [t.as_dict() for t in timings], "embed": info}
    (home / "prepared.json").write_text(json.dumps(out, indent=1, default=str), "utf-8")
    return out


def _warm_up(work: Path, dim: int, methods: list[str] | None) -> None:
    """One small cycle on stand-in vectors: imports, numba compiles and first plots paid here."""
    emb = C.HashProjectionEmbedder(dim=dim)
    ws = C.Workspace(work / "warm", bench_params(methods))
    C.run_batch(ws, C.nsmc_slice(600), emb, [])
    C.run_cycle(ws, emb.model_id, [])
    C.run_batch(ws, C.nsmc_slice(60, start=600), emb, [])
    C.run_cycle(ws, emb.model_id, [])


@contextlib.contextmanager
def _warm_copy(home: Path) -> Iterator[tuple[ReopenedWorkspace, dict[str, Any]]]:
    """In this process: one warm-up cycle (``_warm_up``), then a copy of ``home`` to run cycles on,
    with what ``prepare`` recorded about it; the copy is removed afterwards."""
    prepared = json.loads((home / "prepared.json").read_text("utf-8"))
    with tempfile.TemporaryDirectory(prefix="rerun_", dir=C.CACHE) as tmp:
        work = Path(tmp)
        _warm_up(work, int(prepared.get("dim", 512)), prepared.get("project_methods"))
        shutil.copytree(home, work / "home")
        yield ReopenedWorkspace(work / "home"), prepared


def profile_once(home: Path, out: Path, interval: float = 0.002) -> dict[str, Any]:
    """Profile one cycle on a warm copy of ``home`` (pyinstrument, a sample every ``interval`` s) and
    write the call tree, with the stage times on top, to ``out``."""
    from pyinstrument import Profiler

    with _warm_copy(home) as (ws, prepared):
        timings: list[C.StageTiming] = []
        profiler = Profiler(interval=interval)
        profiler.start()
        t0 = time.perf_counter()
        C.run_cycle(ws, prepared["model_id"], timings)
        total = time.perf_counter() - t0
        profiler.stop()
    stages = {t.stage: round(t.seconds, 3) for t in timings}
    head = (f"# The re-run's cycle on {prepared['rows']:,} + {prepared['new_rows']:,} rows, profiled once\n"
            f"# generated {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC by "
            f"`python bench/bench_rerun_cycle.py profile --home {home.name} --out {out.name}`\n"
            f"# cycle {total:.2f} s: " + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()) + "\n\n")
    out.write_text(head + profiler.output_text(unicode=False, color=False, show_all=False), "utf-8")
    return {"cycle_s": round(total, 3), "stages": stages}


def replay_once(home: Path, unchanged: bool = False) -> dict[str, Any]:
    """Time one cycle on a warm copy of ``home``. ``unchanged``: then time a second cycle on the same
    copy, with no new rows: what the cycle costs for every row and in fixed costs alone (the first
    cycle's excess over it comes with the new rows)."""
    with _warm_copy(home) as (ws, prepared):
        out: dict[str, Any] = {}
        for key in ["cycle"] + (["unchanged"] if unchanged else []):
            timings: list[C.StageTiming] = []
            t0 = time.perf_counter()
            C.run_cycle(ws, prepared["model_id"], timings)
            total = time.perf_counter() - t0
            prefix = "" if key == "cycle" else "unchanged_"
            out.update({f"{key}_s": round(total, 3),
                        f"{prefix}stages": {t.stage: round(t.seconds, 3) for t in timings},
                        f"{prefix}steps": {t.stage: t.detail.get("steps") for t in timings if t.detail.get("steps")}})
    return out


def replay(home: Path, runs: int, python: str, unchanged: bool = False) -> list[dict[str, Any]]:
    out = []
    for i in range(runs):
        proc = subprocess.run([python, __file__, "_one", "--home", str(home)] + (["--unchanged"] if unchanged else []),
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"replay run {i + 1} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        out.append(res)
        print(f"run {i + 1}/{runs}: cycle {res['cycle_s']:.2f} s  "
              + "  ".join(f"{k} {v:.2f}" for k, v in res["stages"].items())
              + (f"; then unchanged {res['unchanged_s']:.2f} s" if unchanged else ""), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["prepare", "replay", "profile", "_one"])
    ap.add_argument("--home", default=str(C.CACHE / "rerun_100k"))
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--new-fraction", type=float, default=0.10)
    ap.add_argument("--embedder", default="use", choices=["use", "onnx", "onnx-fp32", "st", "hash"],
                    help="encoder of the prepared home (hash: stand-in vectors, for a smoke run)")
    ap.add_argument("--project-methods", default=None, help="override project.methods (default: pca, umap)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--unchanged", action="store_true",
                    help="after the timed cycle, time a second one with no new rows (the work over every row and the fixed costs)")
    ap.add_argument("--python", default=sys.executable, help="interpreter of the code under test")
    ap.add_argument("--out", default=None,
                    help="replay: write its runs and medians here (JSON); profile: write the call tree here (text)")
    args = ap.parse_args(argv)
    home = Path(args.home).resolve()
    if not C.have_data(C.NSMC):
        print(C.skip_message("bench_rerun_cycle", C.NSMC))
        return 0
    C.CACHE.mkdir(parents=True, exist_ok=True)
    if args.what == "prepare":
        methods = args.project_methods.split(",") if args.project_methods else None
        res = prepare(args.rows, args.new_fraction, home, args.embedder, methods)
        print(f"prepared {home}: {res['rows']:,} + {res['new_rows']:,} rows, full run {res['full_run_s']} s")
    elif args.what == "profile":
        if not args.out:
            ap.error("profile needs --out FILE")
        res = profile_once(home, Path(args.out))
        print(f"profiled cycle {res['cycle_s']:.2f} s -> {args.out}")
    elif args.what == "_one":
        print(json.dumps(replay_once(home, args.unchanged)))
    else:
        runs = replay(home, args.runs, args.python, args.unchanged)
        stages = list(runs[0]["stages"])
        med = {"cycle_s": C.median([r["cycle_s"] for r in runs]),
               "stages": {s: round(C.median([r["stages"][s] for r in runs]), 3) for s in stages}}
        if args.unchanged:
            med["unchanged_s"] = C.median([r["unchanged_s"] for r in runs])
            med["unchanged_stages"] = {s: round(C.median([r["unchanged_stages"][s] for r in runs]), 3) for s in stages}
        print(f"median of {len(runs)}: cycle {med['cycle_s']:.2f} s  "
              + "  ".join(f"{k} {v:.2f}" for k, v in med["stages"].items())
              + (f"; unchanged {med['unchanged_s']:.2f} s  " + "  ".join(f"{k} {v:.2f}" for k, v in med["unchanged_stages"].items())
                 if args.unchanged else ""))
        if args.out:
            Path(args.out).write_text(json.dumps({"runs": runs, "median": med}, indent=1), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
