"""Stage throughput and peak memory of one purification cycle on NSMC, at growing sizes.

    python bench/bench_stages.py                                   # 10k and 100k, USE encoder
    python bench/bench_stages.py --sizes 10000,100000,712404,1700000 --runs 3,3,1,1 --standin-above 10000000 \
        --out bench/results/stages                                 # every size, real encoder (~1.5 h here)
    python bench/bench_stages.py --sizes 100000 --runs 3 --standin-above 10000000 --out bench/results/stages_100k
                                                                   # the 100k target alone (run_all prefers the newer file)
    python bench/bench_stages.py --sizes 712404 --runs 1 --standin-above 99999 --out /tmp/probe \
        --baseline bench/results/stages.json                       # a memory probe with stand-in vectors, growth table
    python bench/bench_stages.py --smoke                           # 500 rows, seconds, no model

For each size the rows go through every stage the Dagster assets run, called directly (no Dagster
overhead): ingest -> clean -> embed (per batch, one batch) then dedup -> cluster -> project ->
metrics -> review -> publish (one cycle). Each size (and each run) runs in a fresh subprocess, so
the peak RSS of a size is that process's high-water mark and nothing is shared between sizes.
Per stage: seconds, rows/s and the peak RSS seen while the stage ran (sampled every 50 ms). On
this shared machine a run is stopped when the available memory falls below ``--min-free-mib``
(default 1 GiB) rather than left to the kernel's OOM killer; the stages it finished are still
reported, with the stage it was in.

Data: the first n lines of ../shared/data/nsmc/nsmc_raw_reviews.jsonl (712,404 rows). Above that,
NSMC is repeated with light variation (see ``_common.nsmc_slice``: copy c appends one of a few
short suffixes such as " ㅎㅎ" to every review, so exact dedup cannot collapse the copies).

The encoder is the physical limit (USE, the fastest packaged model, embeds 1,200-1,400 short NSMC
rows/s here). Above ``--standin-above`` rows the embed stage uses a labelled stand-in (hashed
character n-grams times a random projection, same dimension as the real encoder, ~100x faster) so
the other stages can be measured at scale; the real encoder's rate is measured on ``--embed-sample`` rows in its own
process and the table shows the projected full-cycle time with the real encoder next to the
measured one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STAGES = C.BATCH_STAGES + C.CYCLE_STAGES
# Real encoder dimensions, so the stand-in produces vectors of the same size (memory is realistic).
ENCODER_DIMS = {"use": 512, "onnx": 384, "onnx-fp32": 384, "st": 384, "hash": 384}


def bench_params(project_methods: list[str] | None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, except: NSMC has no output column, so the offline reviewer's empty-output rules
    (meant for instruction/answer data) are switched off, or it would drop every cluster and the
    publish stage would have nothing to write. ``extra`` (``--params``) is laid over the result."""
    from purify_assets.core.params import deep_merge

    out: dict[str, Any] = {"review": {"thresholds": {"drop_empty_output": 1.01, "clean_empty_output": 1.01}}}
    if project_methods:
        out["project"] = {"methods": project_methods}
    return deep_merge(out, extra or {})


# ------------------------------------------------------------------------------------ worker side

class _SavedTimings(list):
    """Stage timings that save themselves to ``path`` after every stage, so that a run stopped
    later (killed by the memory guard, a timeout, the OOM killer) still reports what it finished."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def append(self, item: Any) -> None:
        super().append(item)
        if self.path:
            Path(self.path).write_text(json.dumps({"stages": [t.as_dict() for t in self],
                                                   "peak_rss_mb": round(C.peak_rss_mb(), 1)},
                                                  default=C._json_default), "utf-8")


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One size, one run, in this (fresh) process."""
    started = time.perf_counter()
    base_rss = C.rss_mb()
    if cfg["standin"]:
        embedder = C.HashProjectionEmbedder(dim=ENCODER_DIMS.get(cfg["embedder"], 384))
        embedder.embed(["warm-up"])  # sklearn imports outside the timed stages, as a real model's load is
        embed_info = {"backend": embedder.backend, "model_id": embedder.model_id, "standin": True}
    else:
        embedder, embed_info = C.make_bench_embedder(cfg["embedder"])
    load_seconds = time.perf_counter() - started
    home = Path(tempfile.mkdtemp(prefix="stages_", dir=cfg["work_dir"]))
    timings: list[C.StageTiming] = _SavedTimings(cfg.get("partial"))
    try:
        ws = C.Workspace(home, bench_params(cfg.get("project_methods"), cfg.get("params")))
        t0 = time.perf_counter()
        C.run_batch(ws, Path(cfg["file"]), embedder, timings)
        cycle = C.run_cycle(ws, embedder.model_id, timings)
        wall = time.perf_counter() - t0
        warehouse_mb = ws.paths.warehouse.stat().st_size / 2**20
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"n": cfg["n"], "embed": embed_info, "model_load_seconds": round(load_seconds, 2),
            "stages": [t.as_dict() for t in timings], "cycle_wall_seconds": round(wall, 3),
            "failed_stages": cycle["failed"],
            "peak_rss_mb": round(C.peak_rss_mb(), 1), "start_rss_mb": round(base_rss, 1),
            "warehouse_mb": round(warehouse_mb, 1)}


def embed_rate_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """The real encoder's rows/s on ``sample`` NSMC reviews (model load excluded), and its RSS."""
    embedder, info = C.make_bench_embedder(cfg["embedder"])
    texts = []
    with open(cfg["file"], encoding="utf-8") as f:
        for line in f:
            t = (json.loads(line).get("review") or "").strip()
            if t:
                texts.append(t)
            if len(texts) >= cfg["sample"]:
                break
    runs = []
    for _ in range(cfg["runs"]):
        t0 = time.perf_counter()
        embedder.embed(texts)
        runs.append(len(texts) / (time.perf_counter() - t0))
    return {"embed": info, "sample": len(texts), "rows_per_second": C.summarize(runs, 1),
            "peak_rss_mb": round(C.peak_rss_mb(), 1)}


# ------------------------------------------------------------------------------------ parent side

class RunStopped(RuntimeError):
    """A worker that failed or was stopped; ``partial`` holds the stages it finished."""

    def __init__(self, message: str, partial: dict[str, Any] | None = None):
        super().__init__(message)
        self.partial = partial or {}


def mem_available_mib() -> float | None:
    for line in C._read("/proc/meminfo").splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return None


def spawn(mode: str, cfg: dict[str, Any], timeout: float, min_free_mib: float = 0) -> dict[str, Any]:
    """Run ``mode`` in a fresh process. The worker is stopped when it runs past ``timeout`` or when
    the machine's available memory falls below ``min_free_mib`` (this machine is shared: better to
    lose the run than to let the kernel's OOM killer pick another job); the error then carries the
    stages it finished."""
    with tempfile.NamedTemporaryFile("r", suffix=".json", delete=False) as out:
        out_path = out.name
    partial_path = out_path + ".partial"
    cfg = dict(cfg, partial=partial_path)
    cmd = [sys.executable, str(Path(__file__).resolve()), mode, json.dumps(cfg), out_path]
    started = time.perf_counter()
    lowest = None
    try:
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
            why = None
            while proc.poll() is None:
                time.sleep(0.5)
                free = mem_available_mib()
                if free is not None:
                    lowest = free if lowest is None else min(lowest, free)
                if time.perf_counter() - started > timeout:
                    why = f"timed out after {timeout:.0f} s"
                elif min_free_mib and free is not None and free < min_free_mib:
                    why = f"stopped by the memory guard: the machine had {free:,.0f} MiB available (< {min_free_mib:,.0f})"
                if why:
                    proc.kill()
                    proc.wait()
                    break
            err.seek(0)
            tail = "\n".join(line for line in err.read().splitlines()
                             if "leaked" not in line and "nanobind" not in line and not line.startswith(" - "))[-3000:]
        if why or proc.returncode != 0:
            partial = json.loads(Path(partial_path).read_text("utf-8")) if Path(partial_path).exists() else {}
            done = [st["stage"] for st in partial.get("stages", [])]
            running = next((st for st in STAGES if st not in done), None) if mode == "--worker" else None
            msg = why or f"exit {proc.returncode}"
            raise RunStopped(f"{mode} for {cfg.get('n', '')} rows {msg}" + (f" during stage {running}" if running else "")
                             + (f":\n{tail}" if tail.strip() else ""),
                             dict(partial, running_stage=running, lowest_mem_available_mib=lowest))
        result = json.loads(Path(out_path).read_text("utf-8"))
        result["lowest_mem_available_mib"] = round(lowest, 1) if lowest is not None else None
        return result
    finally:
        Path(out_path).unlink(missing_ok=True)
        Path(partial_path).unlink(missing_ok=True)


def aggregate(n: int, runs: list[dict[str, Any]], rate: dict[str, Any] | None) -> dict[str, Any]:
    by_stage: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        items = [next(s for s in r["stages"] if s["stage"] == stage) for r in runs]
        by_stage[stage] = {
            "rows": items[-1]["rows"],
            "seconds": C.summarize([i["seconds"] for i in items]),
            "rows_per_second": C.summarize([i["rows_per_second"] for i in items], 1),
            "peak_rss_mb": C.summarize([i["peak_rss_mb"] for i in items], 1),
            "detail": items[-1]["detail"],
        }
    standin = runs[-1]["embed"].get("standin", False)
    full = C.summarize([sum(s["seconds"] for s in r["stages"]) for r in runs])
    failed = sorted({f for r in runs for f in r.get("failed_stages", [])})
    out = {
        "n": n, "runs": len(runs), "embed": runs[-1]["embed"], "standin_vectors": standin,
        "failed_stages": failed,
        "errors": {s: by_stage[s]["detail"].get("error") for s in failed},
        "stages": by_stage, "full_cycle_seconds": full,
        "peak_rss_mb": C.summarize([r["peak_rss_mb"] for r in runs], 1),
        "warehouse_mb": runs[-1]["warehouse_mb"], "model_load_seconds": runs[-1]["model_load_seconds"],
        "lowest_mem_available_mib": min((r["lowest_mem_available_mib"] for r in runs
                                         if r.get("lowest_mem_available_mib") is not None), default=None),
    }
    if standin and rate:
        real_rate = rate["rows_per_second"]["median"]
        kept = by_stage["embed"]["rows"]
        embed_real = kept / real_rate
        out["projected"] = {
            "embed_seconds_real_encoder": round(embed_real, 1),
            "full_cycle_seconds_real_encoder": round(full["median"] - by_stage["embed"]["seconds"]["median"] + embed_real, 1),
            "encoder": rate["embed"]["model_id"], "encoder_rows_per_second": real_rate,
            "note": "measured full cycle with stand-in vectors, minus the stand-in embed time, plus kept rows / the "
                    "real encoder's measured rows/s",
        }
    return out


def _stage_seconds(s: dict[str, Any], stage: str) -> float | None:
    if stage in s.get("failed_stages", []) or (stage == "full_cycle" and s.get("failed_stages")):
        return None
    sec = s["full_cycle_seconds"]["median"] if stage == "full_cycle" else s["stages"][stage]["seconds"]["median"]
    return sec if sec and sec > 0 else None


def growth(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """How each stage's time grows with n: the log-log slope between the smallest and largest size
    (1.0 = linear), and per step between consecutive sizes (``steps``). The embed stage and the
    full cycle are compared only between sizes that used the same kind of vectors."""
    sizes = sorted(sizes, key=lambda s: s["n"])
    out: dict[str, Any] = {}
    for stage in STAGES + ["full_cycle"]:
        pts = []
        for s in sizes:
            if stage in ("embed", "full_cycle") and s["standin_vectors"] != sizes[-1]["standin_vectors"]:
                continue
            sec = _stage_seconds(s, stage)
            if sec:
                pts.append((s["n"], sec))
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            (n0, t0), (n1, t1) = pts[0], pts[-1]
            steps = [{"from_n": a[0], "to_n": b[0], "exponent": round(math.log(b[1] / a[1]) / math.log(b[0] / a[0]), 2)}
                     for a, b in zip(pts, pts[1:]) if b[0] > a[0]]
            out[stage] = {"exponent": round(math.log(t1 / t0) / math.log(n1 / n0), 2), "from_n": n0, "to_n": n1,
                          "steps": steps}
    return out


def _start_after(detail: dict[str, Any]) -> str | None:
    """'start → after' resident MiB of a stage's last run, when recorded (older results lack it)."""
    a, b = detail.get("rss_at_start_mb"), detail.get("rss_after_mb")
    return None if a is None or b is None else f"{a:,.0f} → {b:,.0f}"


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Stage throughput and peak memory (NSMC)", "", C.machine_markdown(res), "",
             f"- data: {res['data']}",
             f"- encoder: {res['settings']['embedder']}; sizes above {res['settings']['standin_above']:,} rows use "
             "the **stand-in vectors** (hashed character n-grams x random projection, not a language model) for "
             "the embed stage, and the full-cycle time with the real encoder is projected from its measured rate.",
             "- each size ran in a fresh process; runs per size: "
             + ", ".join(f"{s['n']:,}: {s['runs']}" for s in res["sizes"]) + "; figures are medians", ""]
    if res.get("embed_rate"):
        r = res["embed_rate"]
        lines += [f"Real encoder `{r['embed']['model_id']}` alone: {C.fmt(r['rows_per_second']['median'])} rows/s "
                  f"(median of {r['rows_per_second']['runs']}, {r['sample']:,} NSMC reviews), peak RSS {C.fmt(r['peak_rss_mb'])} MiB.", ""]
    rows = []
    for s in res["sizes"]:
        for stage in STAGES:
            st = s["stages"][stage]
            label = stage + (" (stand-in vectors)" if stage == "embed" and s["standin_vectors"] else "")
            if stage in s.get("failed_stages", []):
                label += " **FAILED**"
            rows.append({"n": s["n"], "stage": label, "rows": st["rows"], "seconds": st["seconds"]["median"],
                         "rows/s": st["rows_per_second"]["median"], "peak RSS MiB": st["peak_rss_mb"]["median"],
                         # pages of mapped files (vectors, libraries) the kernel can drop: of the last run
                         "file-backed at peak MiB": st["detail"].get("peak_rss_file_backed_mb"),
                         # resident when the stage started and once it returned (its memory given back)
                         "RSS start → after MiB": _start_after(st["detail"])})
        rows.append({"n": s["n"], "stage": "**full cycle**", "rows": s["stages"]["ingest"]["rows"],
                     "seconds": s["full_cycle_seconds"]["median"],
                     "rows/s": s["stages"]["ingest"]["rows"] / s["full_cycle_seconds"]["median"],
                     "peak RSS MiB": s["peak_rss_mb"]["median"], "file-backed at peak MiB": None,
                     "RSS start → after MiB": None})
        if s.get("projected"):
            p = s["projected"]
            rows.append({"n": s["n"], "stage": f"full cycle, projected with {p['encoder']}", "rows": s["stages"]["ingest"]["rows"],
                         "seconds": p["full_cycle_seconds_real_encoder"],
                         "rows/s": s["stages"]["ingest"]["rows"] / p["full_cycle_seconds_real_encoder"], "peak RSS MiB": None,
                         "file-backed at peak MiB": None, "RSS start → after MiB": None})
    lines += [C.md_table(rows), ""]
    if res.get("growth"):
        step_cols = sorted({(st["from_n"], st["to_n"]) for v in res["growth"].values() for st in v.get("steps", [])})
        table = []
        for k, v in res["growth"].items():
            row = {"stage": k, "exponent": v["exponent"], "from n": v["from_n"], "to n": v["to_n"]}
            by = {(st["from_n"], st["to_n"]): st["exponent"] for st in v.get("steps", [])}
            if len(step_cols) > 1:
                row.update({f"{a:,} → {b:,}": by.get((a, b)) for a, b in step_cols})
            table.append(row)
        lines += ["## Growth with n (time ~ n^exponent between the smallest and largest size measured)", ""]
        if res.get("baseline"):
            lines += [f"Sizes taken from an earlier results file for this table only: {res['baseline']}", ""]
        lines += [C.md_table(table), ""]
    for s in res["sizes"]:
        steps = {k: s["stages"][k]["detail"].get("steps") for k in ("cluster", "project", "metrics", "review")}
        lines.append(f"- sub-steps at {s['n']:,} rows (s): " + "; ".join(f"{k} {v}" for k, v in steps.items() if v))
    for s in res["sizes"]:
        for stage, err in (s.get("errors") or {}).items():
            lines.append(f"- **{stage} failed at {s['n']:,} rows**: `{err}` (the stages after it ran on what the "
                         "warehouse held; their times are still shown)")
    for f in res.get("failed_runs", []):
        lines.append(f"- **run {f['run']} at {f['n']:,} rows failed**: `{f['error'][-400:]}`")
        if f.get("stages"):
            lines += ["", f"Stages it finished (peak RSS of the run so far {C.fmt(f.get('peak_rss_mb'))} MiB; "
                      f"stopped during {f.get('running_stage') or '—'}):", "",
                      C.md_table([{"stage": st["stage"], "rows": st["rows"], "seconds": st["seconds"],
                                   "rows/s": st["rows_per_second"], "peak RSS MiB": st["peak_rss_mb"]}
                                  for st in f["stages"]]), ""]
    if res.get("not_run"):
        lines += ["", "## Not run in this session", ""]
        lines += [f"- {x['n']:,} rows: `{x['command']}` ({x['why']})" for x in res["not_run"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--worker", "--embed-rate"):
        cfg = json.loads(argv[1])
        result = worker(cfg) if argv[0] == "--worker" else embed_rate_worker(cfg)
        Path(argv[2]).write_text(json.dumps(result, default=C._json_default), "utf-8")
        return 0

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated row counts (1.7M: 1700000)")
    ap.add_argument("--runs", default="3,1", help="runs per size, one number or one per size (median reported)")
    ap.add_argument("--embedder", default="use", choices=["use", "onnx", "onnx-fp32", "st", "hash"],
                    help="real encoder (default use: the fastest packaged model)")
    ap.add_argument("--standin-above", type=int, default=100_000,
                    help="sizes above this use stand-in vectors in the embed stage (default 100000)")
    ap.add_argument("--embed-sample", type=int, default=5000, help="rows for measuring the real encoder's rate")
    ap.add_argument("--project-methods", default=None, help="override project.methods, e.g. pca (default: pca,umap)")
    ap.add_argument("--timeout", type=float, default=7200, help="seconds per subprocess")
    ap.add_argument("--min-free-mib", type=float, default=1024,
                    help="stop a run when the machine's available memory falls below this (0: never)")
    ap.add_argument("--params", default=None, help='JSON laid over the parameters, e.g. \'{"dedup": {"semantic": false}}\'')
    ap.add_argument("--smoke", "--quick", action="store_true", dest="smoke", help="500 rows, stand-in vectors, PCA only")
    ap.add_argument("--out", default=str(C.RESULTS / "stages"), help="output path without extension")
    ap.add_argument("--baseline", action="append", default=[],
                    help="an earlier results .json whose sizes (not measured here) join the growth table, e.g. "
                         "bench/results/stages.json when measuring one size alone; repeatable")
    args = ap.parse_args(argv)

    if not C.have_data(C.NSMC):
        print(C.skip_message("bench_stages", C.NSMC))
        return 0
    if args.smoke:
        args.sizes, args.runs, args.embedder, args.standin_above, args.project_methods = "500", "1", "hash", 0, "pca"
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    runs = [int(r) for r in args.runs.split(",")]
    runs = (runs + [runs[-1]] * len(sizes))[:len(sizes)]
    methods = args.project_methods.split(",") if args.project_methods else None
    extra = json.loads(args.params) if args.params else None
    work_dir = C.CACHE / "work"
    work_dir.mkdir(parents=True, exist_ok=True)

    res = C.header("bench_stages", ["bench_stages"] + argv)
    res["settings"] = {"sizes": sizes, "runs": runs, "embedder": args.embedder, "standin_above": args.standin_above,
                       "embed_sample": args.embed_sample, "project_methods": methods or "defaults (pca, umap)",
                       "params_override": bench_params(methods, extra)}
    res["data"] = (f"{C.shown_path(C.NSMC)} (first n lines; above {C.NSMC_ROWS:,} rows repeated with "
                   f"light variation: copy c appends one of {C.VARIANT_SUFFIXES})")
    need_rate = args.embedder != "hash" and any(n > args.standin_above for n in sizes)
    if need_rate:
        sample_file = C.nsmc_slice(max(args.embed_sample, 10_000))
        print(f"measuring {args.embedder} on {args.embed_sample:,} rows ...", flush=True)
        res["embed_rate"] = spawn("--embed-rate", {"embedder": args.embedder, "file": str(sample_file),
                                                   "sample": args.embed_sample, "runs": 2}, args.timeout, args.min_free_mib)
    res["sizes"] = []
    for n, k in zip(sizes, runs):
        file = C.nsmc_slice(n)
        standin = args.embedder == "hash" or n > args.standin_above
        out_runs = []
        for i in range(k):
            print(f"{n:,} rows, run {i + 1}/{k} ({'stand-in vectors' if standin else args.embedder}) ...", flush=True)
            cfg = {"n": n, "file": str(file), "embedder": args.embedder, "standin": standin,
                   "project_methods": methods, "work_dir": str(work_dir), "params": extra}
            try:
                r = spawn("--worker", cfg, args.timeout, args.min_free_mib)
            except RunStopped as exc:
                print(f"  FAILED: {str(exc)[-1500:]}", flush=True)
                res.setdefault("failed_runs", []).append({"n": n, "run": i + 1, "error": str(exc)[-1500:], **exc.partial})
                continue
            steps = ", ".join(f"{s['stage']} {s['seconds']:.1f}s" for s in r["stages"])
            print(f"  full cycle {sum(s['seconds'] for s in r['stages']):.1f}s, peak RSS {r['peak_rss_mb']:.0f} MiB "
                  f"({steps})", flush=True)
            out_runs.append(r)
        if out_runs:
            res["sizes"].append(aggregate(n, out_runs, res.get("embed_rate")))
    # sizes from earlier results files join the growth table (sizes measured here win)
    extra_sizes: list[dict[str, Any]] = []
    labels = []
    for path in args.baseline:
        for s in json.loads(Path(path).read_text("utf-8")).get("sizes", []):
            if s["n"] not in {x["n"] for x in res["sizes"] + extra_sizes}:
                extra_sizes.append(s)
                labels.append(f"{s['n']:,} rows from {path} ({'stand-in' if s['standin_vectors'] else 'real'} vectors)")
    if labels:
        res["baseline"] = "; ".join(labels)
    res["growth"] = growth(res["sizes"] + extra_sizes)
    full_cmd = "python bench/bench_stages.py --sizes 1700000 --runs 1 --standin-above 10000000"
    enc_rate = ((res.get("embed_rate") or {}).get("rows_per_second") or {}).get("median") or 1300
    res["not_run"] = [
        {"n": n, "command": full_cmd.replace("1700000", str(n)), "why": "real encoder at this size takes "
         f"~{n / enc_rate / 60:.0f} min of both cores at ~{enc_rate:,.0f} rows/s; not run on the shared machine"}
        for n in (712_404, 1_700_000) if not any(s["n"] == n and not s["standin_vectors"] for s in res["sizes"])
    ] if not args.smoke else []
    js, md = C.write_results(args.out, res, markdown(res))
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
