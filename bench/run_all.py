"""Run the standard benchmark set and write bench/results/summary.{md,json}.

    python bench/run_all.py                    # the standard set (long: see BENCHMARKS.md for timings)
    python bench/run_all.py --smoke            # tiny versions of every benchmark (seconds; CI runs this)
    python bench/run_all.py --only stages,incremental
    python bench/run_all.py --collect          # no runs: rebuild the summary from the results files

Benchmarks (one script each, every one runnable on its own):
- stages       bench_stages.py       stage rows/s and peak RSS on NSMC at growing n, full-cycle wall time
- bertopic     bench_bertopic.py     purify's clustering vs BERTopic's default pipeline (ARI/NMI, time)
- incremental  bench_incremental.py  re-run after landing 10 % new rows, as a fraction of the full run
- embed        bench_embed.py        embedding backends (another module's script; run with its own flags)
- dedup        bench_dedup.py        dedup vs datasketch (another module's script)
- cluster      bench_cluster.py      clustering (another module's script), skipped when absent
- conflicts    bench_conflicts.py    conflicting responses on kor_chatbot: MinHash vs response vectors

``--smoke`` writes into bench/results/smoke/ so it never overwrites the real figures, runs every
script in its smallest mode with one BLAS/OpenMP thread (fast and steady on a shared machine), in
two lanes side by side (``SMOKE_LANE`` and the rest), and exits 0 with a SKIP line when
../shared/data is absent. A script that fails makes run_all
exit 1; one that exceeds its time limit is reported and does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


# name -> (script, full-mode args, smoke-mode args, results stem)
BENCHES: dict[str, tuple[str, list[str], list[str], str]] = {
    # every size with the real encoder, each in a fresh process: about 70 minutes here, 1.7M rows ~45 of them
    "stages": ("bench_stages.py", ["--sizes", "10000,100000,712404,1700000", "--runs", "1",
                                   "--standin-above", "10000000"], ["--smoke"], "stages"),
    "bertopic": ("bench_bertopic.py", ["--runs", "2"], ["--smoke"], "bertopic"),
    "incremental": ("bench_incremental.py", ["--rows", "10000", "--runs", "2"], ["--smoke"], "incremental"),
    "embed": ("bench_embed.py", ["--ari"], ["--smoke"], "embed"),
    "dedup": ("bench_dedup.py", [], ["--smoke"], "dedup"),
    "cluster": ("bench_cluster.py", [], ["--smoke"], "cluster"),
    "conflicts": ("bench_conflicts.py", [], ["--smoke"], "conflicts"),
}
OWN = ("stages", "bertopic", "incremental", "conflicts")
#: smoke mode: these run one after another in one lane, every other script in a second lane beside it
SMOKE_LANE = ("stages", "incremental", "conflicts")


def supports(script: Path, flag: str) -> bool:
    return flag in script.read_text("utf-8", errors="replace")


def run_bench(name: str, smoke: bool, out_dir: Path, timeout: float) -> dict[str, Any]:
    script_name, full_args, smoke_args, stem = BENCHES[name]
    script = C.BENCH / script_name
    if not script.exists():
        return {"name": name, "status": "missing", "note": f"{script_name} does not exist yet; skipped"}
    args = list(smoke_args if smoke else full_args)
    if smoke and name not in OWN and not supports(script, args[0]):
        return {"name": name, "status": "skipped", "note": f"{script_name} has no {args[0]} mode"}
    out = out_dir / stem
    cmd = [sys.executable, str(script), *args, "--out", str(out)]
    env = dict(os.environ)
    if smoke:
        # One BLAS / OpenMP thread: on a busy 2-core machine multithreaded OpenBLAS spins on tiny
        # matrices (a 500 x 384 SVD took 4 s with 2 threads vs 0.03 s with 1 while other jobs ran).
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True, cwd=str(C.ROOT))
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-800:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-800:]
        return {"name": name, "status": "timeout", "seconds": round(time.perf_counter() - t0, 1),
                "command": " ".join(cmd[1:]), "note": f"exceeded {timeout:.0f} s", "output_tail": str(tail)}
    seconds = round(time.perf_counter() - t0, 1)
    sys.stdout.write(proc.stdout[-2000:])
    status = "ok" if proc.returncode == 0 else "failed"
    if proc.returncode == 0 and "SKIP" in proc.stdout and not out.with_suffix(".json").exists():
        status = "skipped"
    item = {"name": name, "status": status, "seconds": seconds, "command": "python " + " ".join(
        str(Path(c).relative_to(C.ROOT)) if c.startswith(str(C.ROOT)) else c for c in cmd[1:]),
        "json": str(out.with_suffix(".json")), "md": str(out.with_suffix(".md"))}
    if status == "failed":
        item["stderr_tail"] = proc.stderr[-3000:]
        print(proc.stderr[-3000:], file=sys.stderr)
    return item


# ------------------------------------------------------------------------------------------- targets

def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def is_smoke(res: dict[str, Any] | None) -> bool:
    """True for a results file written by a smoke run: its settings say mode "smoke ..." or its
    command has --smoke. Its figures check a script; they are never reported as measurements."""
    if not res:
        return False
    settings = res.get("settings")
    mode = str(settings.get("mode", "")) if isinstance(settings, dict) else ""
    return mode.startswith("smoke") or "--smoke" in str(res.get("command", "")).split()


def _size(stages: dict[str, Any] | None, n: int, real: bool | None = None) -> dict[str, Any] | None:
    for s in (stages or {}).get("sizes", []):
        if s["n"] == n and (real is None or s["standin_vectors"] != real):
            return s
    return None


def _newest(results: dict[str, dict[str, Any] | None], n: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(size entry, results file) of the newest measurement of ``n`` rows among ``stages`` and the
    ``stages_*`` files of single sizes run later (real-encoder runs before stand-in ones)."""
    best: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
    for key in sorted(k for k in results if k == "stages" or k.startswith("stages_")):
        source = results[key]
        if is_smoke(source):
            continue
        found = _size(source, n, real=True) or _size(source, n)
        if not found:
            continue
        rank = (not found["standin_vectors"], source.get("generated_utc", ""))
        if best[0] is None or rank > (not best[0]["standin_vectors"], best[1].get("generated_utc", "")):
            best = (found, source)
    return best


def targets(results: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    st, bt, inc = results.get("stages"), results.get("bertopic"), results.get("incremental")
    rows: list[dict[str, Any]] = []

    def when(source: dict[str, Any] | None) -> str:
        return f", {source['generated_utc']} UTC" if source and source.get("generated_utc") else ""

    # 1. 1.7M rows, one full cycle, <= 60 min and <= 8 GiB
    s17, st17 = _newest(results, 1_700_000)
    if s17 and not s17["standin_vectors"]:
        secs, mem = s17["full_cycle_seconds"]["median"], s17["peak_rss_mb"]["median"]
        rows.append({"target": "1.7M rows, one full cycle: <= 60 min, <= 8 GiB",
                     "measured": f"{secs / 60:.1f} min, {mem / 1024:.1f} GiB",
                     "status": "met" if secs <= 3600 and mem <= 8192 else "missed", "basis": "measured" + when(st17)})
    else:
        est = project_17m(st)
        rows.append({"target": "1.7M rows, one full cycle: <= 60 min, <= 8 GiB",
                     "measured": est["text"] if est else "not run",
                     "status": (f"not run (projection: {'would meet' if est['ok'] else 'would miss'})" if est else "not run"),
                     "basis": est["basis"] if est else "run `python bench/bench_stages.py --sizes 1700000 --runs 1 --standin-above 10000000`"})
    # 2. 100k full cycle <= 5 min
    s100, st100 = _newest(results, 100_000)
    if s100:
        failed = s100.get("failed_stages") or []
        note = f"; {', '.join(failed)} FAILED" if failed else ""
        if not s100["standin_vectors"]:
            secs = s100["full_cycle_seconds"]["median"]
            measured, basis = (f"{secs / 60:.1f} min (embed {s100['stages']['embed']['seconds']['median'] / 60:.1f} min){note}",
                               f"measured, {s100['embed']['model_id']}, median of {s100.get('runs', 1)} run(s)"
                               + when(st100))
        else:
            p = s100.get("projected") or {}
            secs = p.get("full_cycle_seconds_real_encoder", s100["full_cycle_seconds"]["median"])
            measured = (f"{secs / 60:.1f} min projected with {p.get('encoder', 'the real encoder')} "
                        f"({s100['full_cycle_seconds']['median'] / 60:.1f} min measured with stand-in vectors){note}")
            basis = "measured with stand-in vectors; embed time projected from the encoder's measured rate"
        rows.append({"target": "full cycle on 100k rows <= 5 min", "measured": measured,
                     "status": "met" if secs <= 300 and not failed else "missed", "basis": basis})
    else:
        rows.append({"target": "full cycle on 100k rows <= 5 min", "measured": "not run", "status": "not run", "basis": ""})
    # 3. clustering >= 3x faster than BERTopic at >= ARI
    if is_smoke(bt):
        rows.append({"target": "clustering >= 3x faster than BERTopic default at >= ARI", "measured": "smoke run only",
                     "status": "not run", "basis": "smoke mode replaces UMAP by PCA; not a measurement"})
    elif bt and bt.get("sets") and "not importable" not in bt.get("bertopic", ""):
        parts, met_all = [], True
        for key, s in bt["sets"].items():
            m = s["methods"].get("purify-kmeans")
            if m and "speedup_vs_bertopic_default" in m:
                parts.append(f"{key.split(' / ')[0]}: {m['speedup_vs_bertopic_default']:.1f}x, ARI "
                             f"{m['ari']['median']:.2f} vs {s['methods']['bertopic-default']['ari']['median']:.2f}")
                met_all &= bool(m.get("target_met"))
        rows.append({"target": "clustering >= 3x faster than BERTopic default at >= ARI (purify K-means path)",
                     "measured": "; ".join(parts), "status": "met" if met_all and parts else "missed",
                     "basis": f"measured, {bt['settings']['embedders']} vectors, median of {bt['settings']['runs']}"})
    else:
        rows.append({"target": "clustering >= 3x faster than BERTopic default at >= ARI", "measured": "not run",
                     "status": "not run", "basis": "needs `pip install bertopic`"})
    # 4. incremental <= 10 %, at every size measured (bench_incremental --rows N --out incremental_*)
    incs = [r for r in [inc] + [v for k, v in sorted(results.items()) if k.startswith("incremental_")] if r]
    runs = sorted((r for r in incs if not is_smoke(r)), key=lambda r: r["settings"]["rows"])
    if incs and not runs:
        rows.append({"target": "incremental batch (+10 % rows) <= 10 % of a full run", "measured": "smoke run only",
                     "status": "not run", "basis": "smoke mode: a few hundred rows, stand-in vectors; not a measurement"})
    elif runs:
        parts = [f"{r['fraction']['median']:.1%} at {r['settings']['rows']:,} + {r['settings']['new_rows']:,} rows "
                 f"(dominant: {r['dominant_stage']})" for r in runs]
        met = [r["fraction"]["median"] <= 0.10 for r in runs]
        status = "met" if all(met) else "missed" if not any(met) else \
            "met at " + ", ".join(f"{r['settings']['rows']:,}" for r, m in zip(runs, met) if m) + \
            "; missed at " + ", ".join(f"{r['settings']['rows']:,}" for r, m in zip(runs, met) if not m)
        rows.append({"target": "incremental batch (+10 % rows) <= 10 % of a full run", "measured": "; ".join(parts),
                     "status": status, "basis": "measured, median of " + ", ".join(str(r["fraction"].get("runs", 1)) for r in runs)
                     + " run(s)" + (", stand-in vectors" if any(r["embed"].get("standin") for r in runs) else "")})
    else:
        rows.append({"target": "incremental batch <= 10 % of a full run", "measured": "not run", "status": "not run", "basis": ""})
    # 5. peak memory <= 4 GiB on all 712k NSMC rows
    s712, st712 = _newest(results, C.NSMC_ROWS)
    if s712:
        mem = s712["peak_rss_mb"]["median"]
        enc = (st712.get("embed_rate") or {}).get("peak_rss_mb")
        rows.append({"target": "peak memory <= 4 GiB on all 712k NSMC rows", "measured": f"{mem / 1024:.2f} GiB"
                     + (f" (+ the encoder process alone: {enc / 1024:.2f} GiB)" if s712["standin_vectors"] and enc else ""),
                     "status": "met" if mem <= 4096 else "missed",
                     "basis": "measured" + (" with stand-in vectors of the encoder's dimension" if s712["standin_vectors"] else "")
                     + when(st712)})
    else:
        worse = [s for s in (st or {}).get("sizes", []) if s["peak_rss_mb"]["median"] > 4096
                 or any("MemoryError" in (e or "") for e in (s.get("errors") or {}).values())]
        if worse:
            w = worse[0]
            why = "; ".join(f"{k}: {v[:90]}" for k, v in (w.get("errors") or {}).items()) or \
                f"peak {w['peak_rss_mb']['median'] / 1024:.1f} GiB"
            rows.append({"target": "peak memory <= 4 GiB on all 712k NSMC rows", "measured": "not run",
                         "status": "not run (would miss)", "basis": f"already at {w['n']:,} rows: {why}"})
        else:
            rows.append({"target": "peak memory <= 4 GiB on all 712k NSMC rows", "measured": "not run", "status": "not run", "basis": ""})
    return rows


def project_17m(st: dict[str, Any] | None) -> dict[str, Any] | None:
    """1.7M full cycle = 1.7M kept rows / the real encoder's rate + the other stages scaled from the
    largest size measured with the growth exponent of each stage (at least linear)."""
    if not st or not st.get("sizes"):
        return None
    rate = (st.get("embed_rate") or {}).get("rows_per_second", {}).get("median")
    real = [s for s in st["sizes"] if not s["standin_vectors"]]
    if not rate and real:
        last = real[-1]["stages"]["embed"]
        rate = last["rows_per_second"]["median"]
    big = max(st["sizes"], key=lambda s: s["n"])
    if not rate or big["n"] < 10_000:
        return None
    n = 1_700_000
    scale = n / big["n"]
    other = 0.0
    for stage, v in big["stages"].items():
        if stage == "embed":
            continue
        exp = max(1.0, (st.get("growth") or {}).get(stage, {}).get("exponent", 1.0))
        other += v["seconds"]["median"] * scale ** exp
    kept_share = big["stages"]["embed"]["rows"] / big["n"]
    embed = n * kept_share / rate
    total = embed + other
    failed = big.get("failed_stages") or []
    return {"ok": total <= 3600 and not failed,
            "text": f"~{total / 60:.0f} min (embed {embed / 60:.0f} min at {rate:,.0f} rows/s + other stages "
                    f"{other / 60:.0f} min); memory not projected"
                    + (f"; {', '.join(failed)} already fails at {big['n']:,} rows" if failed else ""),
            "basis": f"projection from {big['n']:,} rows (linear or worse per stage); not measured"}


def first_table(md_path: Path) -> str:
    try:
        text = md_path.read_text("utf-8")
    except OSError:
        return ""
    m = re.search(r"((?:^\|.*\|\s*$\n?){3,})", text, flags=re.M)
    return m.group(1).strip() if m else ""


def summary_markdown(summary: dict[str, Any], out_dir: Path) -> str:
    lines = ["# purify benchmark summary", "", C.machine_markdown(summary), "",
             f"- mode: {summary['mode']}", "", "## Targets", "",
             C.md_table(summary["targets"], ["target", "measured", "status", "basis"]), ""]
    lines += ["## Benchmarks run", "", C.md_table([{"benchmark": b["name"],
                                                    "status": b["status"] + (" (smoke)" if b.get("smoke") else ""),
                                                    "seconds": b.get("seconds"), "command": f"`{b.get('command', '')}`" if b.get("command") else b.get("note", "")}
                                                   for b in summary["benchmarks"]]), ""]
    for b in summary["benchmarks"]:
        md = Path(b.get("md", ""))
        if b["status"] == "ok" and md.exists():
            table = first_table(md)
            rel = os.path.relpath(md, out_dir)
            note = ["_Smoke run: tiny sizes, checks the script; these figures are not measurements._", ""] \
                if b.get("smoke") else []
            lines += [f"## {b['name']} ([full results]({rel}))" + (" (smoke)" if b.get("smoke") else ""), "",
                      *note, table or "_see the results file_", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny versions of every benchmark, seconds")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(BENCHES)}")
    ap.add_argument("--collect", action="store_true", help="run nothing; summarize the existing results files")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per benchmark (default: 4 h; smoke: the budget left)")
    ap.add_argument("--smoke-budget", type=float, default=55.0,
                    help="smoke: seconds for the whole run; purify's own scripts always run, the other scripts get "
                         "what is left of it in their lane and are stopped (reported, exit 0) when it runs out")
    ap.add_argument("--out-dir", default=None, help="results folder (default bench/results, smoke: bench/results/smoke)")
    args = ap.parse_args(argv)

    out_dir = Path(args.out_dir) if args.out_dir else (C.RESULTS / "smoke" if args.smoke else C.RESULTS)
    if not C.have_data(C.DATA):
        print(C.skip_message("run_all", C.DATA))
        return 0
    names = [n.strip() for n in args.only.split(",")] if args.only else list(BENCHES)
    names = sorted(names, key=lambda n: n not in OWN)  # own scripts first (stable order otherwise)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")
    timeout = args.timeout or 4 * 3600.0
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done: dict[str, dict[str, Any]] = {}

    def run_one(name: str) -> None:
        if args.collect:
            stem = BENCHES[name][3]
            js = out_dir / f"{stem}.json"
            done[name] = {"name": name, "status": "ok" if js.exists() else "missing", "json": str(js),
                          "md": str(js.with_suffix(".md")), "note": "collected" if js.exists() else "no results file"}
        elif args.smoke and name not in OWN:
            left = args.smoke_budget - (time.perf_counter() - started)
            if left < 5:
                done[name] = {"name": name, "status": "skipped", "note": f"smoke budget of {args.smoke_budget:.0f} s used up"}
            else:
                done[name] = run_bench(name, True, out_dir, min(timeout, left))
        else:
            done[name] = run_bench(name, args.smoke, out_dir, timeout)

    if args.smoke and not args.collect:
        # two lanes, one per core: smoke scripts are single-threaded and mostly import time (bertopic's
        # import alone takes ~14 s), so one after another they overran the budget. Each lane runs its
        # scripts in order; the figures are not measurements, so sharing the cores costs nothing.
        lanes = [[n for n in names if n in SMOKE_LANE], [n for n in names if n not in SMOKE_LANE]]
        workers = [threading.Thread(target=lambda lane=lane: [run_one(n) for n in lane]) for lane in lanes if lane]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    else:
        for name in names:
            run_one(name)
    ran = [done[name] for name in names]
    paths = {b["name"]: b["json"] for b in ran if b.get("json") and b["status"] == "ok"}
    results = {name: _load(Path(path)) for name, path in paths.items()}
    # results files of more sizes beside a benchmark's standard one: the larger incremental runs, and
    # later runs of single stage sizes (stages_100k, stages_712k ...); each target takes the newest
    extras = [(f.stem, kind) for kind in ("incremental", "stages") for f in sorted(out_dir.glob(f"{kind}_*.json"))]
    for extra, beside in extras:
        if beside in results and (out_dir / f"{extra}.json").exists():
            results[extra] = _load(out_dir / f"{extra}.json")
            paths[extra] = str(out_dir / f"{extra}.json")
    for b in ran:  # whatever the mode, results of a smoke run are labelled as such
        if is_smoke(results.get(b["name"])):
            b["smoke"] = True
    summary = C.header("run_all", ["run_all"] + list(argv if argv is not None else sys.argv[1:]))
    collect_note = "; results marked (smoke) only check their scripts" if any(b.get("smoke") for b in ran) else ""
    summary.update({
        "mode": "smoke (tiny sizes, stand-in vectors or one fast model: checks the scripts, not the figures)" if args.smoke else
                ("collect (nothing run: every figure comes from its results file, which records the machine and "
                 "load it ran under; the machine line above is the one that built this summary)" + collect_note)
        if args.collect else "full" + collect_note,
        "benchmarks": ran, "targets": targets(results),
        "total_seconds": round(time.perf_counter() - started, 1),
        "results": {k: {"json": paths[k]} for k in results if results[k] is not None},
    })
    js, md = C.write_results(out_dir / "summary", summary, summary_markdown(summary, out_dir))
    print(f"wrote {js} and {md} ({summary['total_seconds']} s)")
    failed = [b["name"] for b in ran if b["status"] == "failed"]
    for b in ran:
        if b["status"] == "timeout":
            print(f"WARNING: {b['name']} exceeded its time limit ({b['note']})", file=sys.stderr)
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
