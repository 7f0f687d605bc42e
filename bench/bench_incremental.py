"""Incremental backfill: after a full run on N rows, land 10 % new rows and time the re-run.

    python bench/bench_incremental.py                     # N = 20,000 NSMC rows in 1 batch, +2,000, USE encoder
    python bench/bench_incremental.py --batches 10        # the N rows landed as 10 files
    python bench/bench_incremental.py --smoke             # 500 + 50 rows, stand-in vectors, PCA only

The full run lands the first N NSMC rows (``--batches`` files), runs ingest, clean and embed per
batch, then one cycle (dedup, cluster, project, metrics, review, publish) over every kept row.
The incremental run lands the next ``--new-fraction`` x N rows as one new file and runs what
Dagster would run after it arrives: the three batch assets for the new batch only, then one cycle
(the cycle assets are global: they read all kept rows). Both runs share one process and one
loaded encoder; the figure is incremental seconds / full seconds (target <= 10 %), with the
per-stage split so it is clear what dominates.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
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
        with ws.connect() as con:
            t0 = time.perf_counter()
            for f in files:
                C.run_batch(ws, con, f, embedder, full)
            C.run_cycle(ws, con, embedder.model_id, full)
            full_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            C.run_batch(ws, con, new_file, embedder, incr)
            C.run_cycle(ws, con, embedder.model_id, incr)
            incr_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(home, ignore_errors=True)

    def per_stage(items: list[C.StageTiming]) -> dict[str, float]:
        out: dict[str, float] = {}
        for t in items:
            out[t.stage] = out.get(t.stage, 0.0) + t.seconds
        return out

    return {"full_seconds": full_s, "incremental_seconds": incr_s, "fraction": incr_s / full_s,
            "full_stages": per_stage(full), "incremental_stages": per_stage(incr),
            "incremental_detail": {t.stage: t.detail for t in incr}}


def markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    f = res["fraction"]["median"]
    lines = ["# Incremental backfill", "", C.machine_markdown(res), "",
             f"- full run: {s['rows']:,} NSMC rows in {s['batches']} batch(es); then {s['new_rows']:,} new rows "
             f"({s['new_rows'] / s['rows']:.0%}) landed as one batch; encoder `{res['embed']['model_id']}`"
             + (" (**stand-in vectors**)" if res["embed"].get("standin") else ""),
             f"- runs: {res['fraction']['runs']} (medians)", "",
             f"**Incremental re-run = {f:.1%} of the full run** "
             f"({C.fmt(res['incremental_seconds']['median'])} s vs {C.fmt(res['full_seconds']['median'])} s); "
             f"target <= 10 %: {'met' if f <= 0.10 else 'missed'}.", ""]
    rows = []
    for stage in C.BATCH_STAGES + C.CYCLE_STAGES:
        a, b = res["full_stages"].get(stage), res["incremental_stages"].get(stage)
        share = f"{b / res['incremental_seconds']['median']:.0%}" if b is not None else None
        rows.append({"stage": stage, "full run s": a, "incremental s": b, "share of incremental": share})
    lines += [C.md_table(rows), "", f"Dominant stage of the incremental run: **{res['dominant_stage']}**.", ""]
    if res.get("dedup_mode"):
        lines.append(f"Dedup mode on the re-run: {res['dedup_mode']}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--new-fraction", type=float, default=0.10)
    ap.add_argument("--batches", type=int, default=1, help="files the N base rows are landed as")
    ap.add_argument("--embedder", default="use", choices=["use", "onnx", "onnx-fp32", "st", "hash"])
    ap.add_argument("--project-methods", default=None, help="override project.methods (default: pca, umap)")
    ap.add_argument("--runs", type=int, default=1)
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
    else:
        embedder, info = C.make_bench_embedder(args.embedder)
    work = C.CACHE / "work"
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}: {args.rows:,} rows, then +{new:,} ...", flush=True)
        r = one_run(args.rows, new, args.batches, embedder, methods, work)
        print(f"  full {r['full_seconds']:.1f}s, incremental {r['incremental_seconds']:.1f}s ({r['fraction']:.1%})", flush=True)
        runs.append(r)
    res = C.header("bench_incremental", ["bench_incremental"] + list(argv if argv is not None else sys.argv[1:]))
    res["settings"] = {"rows": args.rows, "new_rows": new, "batches": args.batches, "embedder": args.embedder,
                       "project_methods": methods or "defaults (pca, umap)", "runs": args.runs}
    res["embed"] = info
    res["full_seconds"] = C.summarize([r["full_seconds"] for r in runs])
    res["incremental_seconds"] = C.summarize([r["incremental_seconds"] for r in runs])
    res["fraction"] = C.summarize([r["fraction"] for r in runs], 4)
    stages = runs[0]["full_stages"].keys()
    res["full_stages"] = {s: round(C.median([r["full_stages"][s] for r in runs]), 3) for s in stages}
    res["incremental_stages"] = {s: round(C.median([r["incremental_stages"][s] for r in runs]), 3)
                                 for s in runs[0]["incremental_stages"]}
    res["dominant_stage"] = max(res["incremental_stages"], key=res["incremental_stages"].get)
    res["target"] = {"max_fraction": 0.10, "met": res["fraction"]["median"] <= 0.10}
    res["dedup_mode"] = runs[-1]["incremental_detail"].get("dedup", {}).get("mode")
    js, md = C.write_results(args.out, res, markdown(res))
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
