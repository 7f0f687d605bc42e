"""Incremental backfill: after a full run on N rows, land 10 % new rows and time the re-run.

    python bench/bench_incremental.py                     # N = 20,000 NSMC rows in 1 batch, +2,000, USE encoder
    python bench/bench_incremental.py --batches 10        # the N rows landed as 10 files
    python bench/bench_incremental.py --smoke             # 500 + 50 rows, stand-in vectors, PCA only
    python bench/bench_incremental.py --threads 1         # every library on one thread (steadier on busy cores)

The full run lands the first N NSMC rows (``--batches`` files), runs ingest, clean and embed per
batch, then one cycle (dedup, cluster, project, metrics, review, publish) over every kept row.
The incremental run lands the next ``--new-fraction`` x N rows as one new file and runs what
Dagster would run after it arrives: the three batch assets for the new batch only, then one cycle
(the cycle assets are global: they read all kept rows). Both runs share one process and one
loaded encoder; the figure is incremental seconds / full seconds (target <= 10 %), with the
per-stage split so it is clear what dominates.

The re-run's cycle keeps what still holds: the projection fit of the first cycle (only the new rows
are placed onto it, ``project.refit_share``) and its k sweep (``measure.sweep_refit_share``); the
results say whether it did. The load average is sampled while the runs go on: others' jobs on the
same cores make every figure slower, the full run's more than the re-run's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from bench_stages import ENCODER_DIMS, bench_params  # noqa: E402


def split_file(src: Path, parts: int, dest: Path, tag: str) -> list[Path]:
    """``src`` cut into ``parts`` files of (nearly) equal line counts."""
    lines = src.read_text("utf-8").splitlines(keepends=True)
    size = -(-len(lines) // parts)
    out = []
    for i in range(parts):
        chunk = lines[i * size:(i + 1) * size]
        if chunk:
            p = dest / f"{tag}_{i:02d}.jsonl"
            p.write_text("".join(chunk), "utf-8")
            out.append(p)
    return out


def one_run(n: int, new: int, batches: int, embedder: Any, methods: list[str] | None, work: Path) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="incr_", dir=work))
    try:
        files = split_file(C.nsmc_slice(n), batches, home, "base")
        new_file = C.nsmc_slice(new, start=n)
        ws = C.Workspace(home / "purify", bench_params(methods))
        full: list[C.StageTiming] = []
        incr: list[C.StageTiming] = []
        # no connection is held across the stages: each opens and closes its own (see C.run_batch)
        t0 = time.perf_counter()
        for f in files:
            C.run_batch(ws, f, embedder, full)
        C.run_cycle(ws, embedder.model_id, full)
        full_s = time.perf_counter() - t0
        with ws.connect() as con:
            chars_before = text_volume(con)  # outside the timed runs
        t0 = time.perf_counter()
        C.run_batch(ws, new_file, embedder, incr)
        C.run_cycle(ws, embedder.model_id, incr)
        incr_s = time.perf_counter() - t0
        with ws.connect() as con:
            reuse = reuse_on_rerun(con)
            chars_after = text_volume(con)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    def per_stage(items: list[C.StageTiming]) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in items:
            out[t.stage] = out.get(t.stage, 0.0) + t.seconds
        return out

    return {"full_seconds": full_s, "incremental_seconds": incr_s, "fraction": incr_s / full_s,
            "full_stages": per_stage(full), "incremental_stages": per_stage(incr),
            "full_detail": {t.stage: t.detail for t in full},
            "incremental_detail": {t.stage: t.detail for t in incr}, "reuse": reuse,
            "new_text_share": (chars_after - chars_before) / chars_before if chars_before else None}


def text_volume(con: Any) -> int:
    """Characters of every kept row's embedded text: the encoder's work is linear in them, so the
    new batch's share of them is the share of the full run's embedding it costs."""
    from purify_assets.core import warehouse as wh

    return int(wh.scalar(con, "SELECT coalesce(sum(length(text)), 0) FROM clean_rows") or 0)


def reuse_on_rerun(con: Any) -> dict[str, Any]:
    """What the re-run's cycle kept from the first one, read from the warehouse it wrote."""
    from purify_assets.core import warehouse as wh

    cycle = wh.current_cycle(con)
    fit = wh.run(con, "SELECT any_value(fit_cycle), count(*) FILTER (WHERE since_fit) FROM fit_state WHERE stage = 'projections'")
    sweep = wh.scalar(con, "SELECT max(value) FROM cluster_metrics WHERE cycle = ? AND scope = 'global' "
                           "AND metric = 'sweep_from_cycle'", [cycle])
    fit_cycle, placed = fit[0] if fit else (None, 0)
    return {"cycle": cycle, "projection": "reused" if fit_cycle is not None and fit_cycle < cycle else "refit",
            "projection_fit_cycle": fit_cycle, "rows_placed_onto_fit": int(placed or 0),
            "k_sweep": "reused" if sweep is not None and int(sweep) < cycle else "computed",
            "k_sweep_from_cycle": None if sweep is None else int(sweep)}


class LoadSampler:
    """The 1-minute load average every few seconds while the runs go on (other jobs share the cores)."""

    def __init__(self, every: float = 5.0):
        self.every, self.samples = every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(round(os.getloadavg()[0], 2))
            except OSError:
                return
            self._stop.wait(self.every)

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        s = self.samples
        return {"samples": len(s), "min": min(s, default=None), "median": C.median(s) if s else None,
                "max": max(s, default=None)}


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    f = res["fraction"]["median"]
    lines = ["# Incremental backfill", "", C.machine_markdown(res), "",
             f"- full run: {s['rows']:,} NSMC rows in {s['batches']} batch(es); then {s['new_rows']:,} new rows "
             f"({s['new_rows'] / s['rows']:.0%}) landed as one batch; encoder `{res['embed']['model_id']}`"
             + (" (**stand-in vectors**)" if res["embed"].get("standin") else ""),
             f"- runs: {res['fraction']['runs']} (medians); threads: {s.get('threads', 'library defaults')}", "",
             f"**Incremental re-run = {f:.1%} of the full run** "
             f"({C.fmt(res['incremental_seconds']['median'])} s vs {C.fmt(res['full_seconds']['median'])} s); "
             f"target <= 10 %: {'met' if f <= 0.10 else 'missed'}.", ""]
    rows = []
    for stage in C.BATCH_STAGES + C.CYCLE_STAGES:
        a, b = res["full_stages"].get(stage), res["incremental_stages"].get(stage)
        share = f"{b / res['incremental_seconds']['median']:.0%}" if b is not None else None
        rows.append({"stage": stage, "full run s": a, "incremental s": b, "share of incremental": share})
    lines += [C.md_table(rows), "", f"Dominant stage of the incremental run: **{res['dominant_stage']}**.", ""]
    sp = res.get("split") or {}
    if sp.get("batch_stages_fraction") is not None:
        text = (f" The new rows hold {sp['new_text_share']:.1%} of the kept rows' text before them (the encoder's "
                "work is linear in it)." if sp.get("new_text_share") is not None else "")
        lines += [f"Batch stages (ingest, clean, embed): {C.fmt(sp['incremental_batch_stages_s'])} s of the full run's "
                  f"{C.fmt(sp['full_batch_stages_s'])} s ({sp['batch_stages_fraction']:.1%}).{text} Cycle: "
                  f"{C.fmt(sp['incremental_cycle_s'])} s of {C.fmt(sp['full_cycle_s'])} s; the target leaves the "
                  f"re-run's cycle {C.fmt(sp['cycle_budget_s'])} s.", ""]
    if res.get("dedup_mode"):
        lines.append(f"Dedup mode on the re-run: {res['dedup_mode']}.")
    if len(res.get("per_run") or []) > 1:
        lines.append("Each run: " + "; ".join(
            f"{i + 1}. full {C.fmt(r['full_seconds'])} s, incremental {C.fmt(r['incremental_seconds'])} s ({r['fraction']:.1%})"
            for i, r in enumerate(res["per_run"])) + ". The first run in the process pays one-off costs "
            "(UMAP's numba compile: each Dagster run is a fresh process and pays it too); later runs do not.")
    r = res.get("reuse") or {}
    if r:
        lines.append(f"Projection on the re-run: {r['projection']}"
                     + (f" (fit of cycle {r['projection_fit_cycle']}, {r['rows_placed_onto_fit']:,} rows placed onto it)"
                        if r["projection"] == "reused" else "")
                     + f"; k sweep: {r['k_sweep']}"
                     + (f" (from cycle {r['k_sweep_from_cycle']})" if r["k_sweep"] == "reused" else "") + ".")
    load = res.get("load_average_during_runs") or {}
    if load.get("samples"):
        lines.append(f"1-minute load average while the runs went on (this process included, 2 cores): "
                     f"min {load['min']}, median {load['median']}, max {load['max']} ({load['samples']} samples).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--new-fraction", type=float, default=0.10)
    ap.add_argument("--batches", type=int, default=1, help="files the N base rows are landed as")
    ap.add_argument("--embedder", default="use", choices=["use", "onnx", "onnx-fp32", "st", "hash"])
    ap.add_argument("--project-methods", default=None, help="override project.methods (default: pca, umap)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="cap BLAS/OpenMP threads and the encoder's threads for both runs (default: the libraries' own)")
    ap.add_argument("--smoke", "--quick", action="store_true", dest="smoke", help="500 + 50 rows, stand-in, PCA")
    ap.add_argument("--out", default=str(C.RESULTS / "incremental"))
    args = ap.parse_args(argv)
    if not C.have_data(C.NSMC):
        print(C.skip_message("bench_incremental", C.NSMC))
        return 0
    if args.smoke:
        args.rows, args.embedder, args.project_methods, args.runs = 500, "hash", "pca", 1
    new = max(1, int(round(args.rows * args.new_fraction)))
    methods = args.project_methods.split(",") if args.project_methods else None
    if args.embedder == "hash":
        embedder = C.HashProjectionEmbedder(dim=ENCODER_DIMS["use"])
        embedder.embed(["warm-up"])
        info = {"backend": embedder.backend, "model_id": embedder.model_id, "standin": True}
    elif args.threads and args.embedder == "use":
        from purify_assets.core.embedders import make_embedder

        embedder = make_embedder({"backend": "use", "threads": args.threads})
        embedder.embed(["warm-up 준비 运行"])
        info = {"backend": "use", "threads": args.threads, "model_id": embedder.model_id, "standin": False}
    else:
        embedder, info = C.make_bench_embedder(args.embedder)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)  # for the rest of this process
    work = C.CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    with LoadSampler() as load:
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}: {args.rows:,} rows, then +{new:,} ...", flush=True)
            r = one_run(args.rows, new, args.batches, embedder, methods, work)
            print(f"  full {r['full_seconds']:.1f}s, incremental {r['incremental_seconds']:.1f}s ({r['fraction']:.1%}); "
                  f"re-run: {r['reuse']}", flush=True)
            runs.append(r)
    if hasattr(embedder, "close"):
        # stop the encoder's worker processes now: left to interpreter exit, CPython's executor
        # shutdown can race its own wake-up pipe and print "Exception ignored ... Bad file descriptor"
        embedder.close()
    res = C.header("bench_incremental", ["bench_incremental"] + list(argv if argv is not None else sys.argv[1:]))
    res["settings"] = {"rows": args.rows, "new_rows": new, "batches": args.batches, "embedder": args.embedder,
                       "project_methods": methods or "defaults (pca, umap)", "runs": args.runs,
                       "threads": args.threads or "library defaults"}
    res["embed"] = info
    res["full_seconds"] = C.summarize([r["full_seconds"] for r in runs])
    res["incremental_seconds"] = C.summarize([r["incremental_seconds"] for r in runs])
    res["fraction"] = C.summarize([r["fraction"] for r in runs], 4)
    stages = runs[0]["full_stages"].keys()
    res["full_stages"] = {s: round(C.median([r["full_stages"][s] for r in runs]), 3) for s in stages}
    res["incremental_stages"] = {s: round(C.median([r["incremental_stages"][s] for r in runs]), 3)
                                 for s in runs[0]["incremental_stages"]}
    batch = [s for s in C.BATCH_STAGES if s in res["full_stages"]]
    full_batch, incr_batch = (sum(res[k][s] for s in batch) for k in ("full_stages", "incremental_stages"))
    shares = [r["new_text_share"] for r in runs if r.get("new_text_share") is not None]
    res["split"] = {
        "new_text_share": round(C.median(shares), 4) if shares else None,
        "full_batch_stages_s": round(full_batch, 3), "incremental_batch_stages_s": round(incr_batch, 3),
        "batch_stages_fraction": round(incr_batch / full_batch, 4) if full_batch else None,
        "full_cycle_s": round(sum(res["full_stages"].values()) - full_batch, 3),
        "incremental_cycle_s": round(sum(res["incremental_stages"].values()) - incr_batch, 3),
        # what the target leaves the re-run's cycle once its batch stages are paid
        "cycle_budget_s": round(0.10 * res["full_seconds"]["median"] - incr_batch, 3),
    }
    res["dominant_stage"] = max(res["incremental_stages"], key=res["incremental_stages"].get)
    res["target"] = {"max_fraction": 0.10, "met": res["fraction"]["median"] <= 0.10}
    res["dedup_mode"] = runs[-1]["incremental_detail"].get("dedup", {}).get("mode")
    res["reuse"] = runs[-1]["reuse"]
    # every run on its own: the first one in the process also pays one-off costs (UMAP's numba compile)
    res["per_run"] = [{k: r[k] for k in ("full_seconds", "incremental_seconds", "fraction", "full_stages",
                                         "incremental_stages")} for r in runs]
    # sub-step seconds of the last run (e.g. project: umap_2d / plots / store), to see what each stage spent
    res["full_steps"] = {k: v.get("steps") for k, v in runs[-1]["full_detail"].items() if v.get("steps")}
    res["incremental_steps"] = {k: v.get("steps") for k, v in runs[-1]["incremental_detail"].items() if v.get("steps")}
    res["load_average_during_runs"] = load.summary()
    js, md = C.write_results(args.out, res, markdown(res))
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
