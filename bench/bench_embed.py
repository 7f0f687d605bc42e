"""Embedding backends: throughput, agreement with the torch reference, and (--ari) task-type ARI.

    python bench/bench_embed.py            # full: ~5-10 min on 2 shared cores
    python bench/bench_embed.py --ari      # plus KoBEST / BELLE clustering evidence for the default
    python bench/bench_embed.py --quick    # seconds; smoke test of the script itself
    python bench/bench_embed.py --smoke    # CI: USE only, a few dozen texts, tiny ARI sets (~6 s)

Text sets (from ../shared/data):
- short_ko: NSMC movie reviews (Korean, ~35 chars; MiniLM's uncased vocab splits Hangul into
  jamo pieces, so ~57 MiniLM tokens each),
- short_en: Alpaca instructions (English, ~13 MiniLM tokens: the "short rows" of the issue target),
- long_en: Alpaca instruction + output (English, ~120 tokens).
Each backend embeds each set once to warm up (model load / ONNX export timed separately), then
``--runs`` timed runs, interleaved across backends; rows/s is the median. Cosine agreement is against the Sentence-Transformers
(torch) vectors of the same texts. ``--ari``: K-means with k = the true number of task types on
KoBEST (``--ari-rows`` per task, text = first text column of each task) and BELLE (question, 10
classes), MiniLM (ONNX fp32, cosine 1.000 to torch, and int8) vs USE multilingual; ARI/NMI averaged over 3
K-means seeds.

``--smoke`` checks the script, not the figures: the USE backend only, one thread (it loads in ~2 s; torch takes
~11 s and a cold ONNX export as long, so the torch reference and cosine agreement are left out),
32/32/8 texts, one run, and the ARI part on 20 KoBEST rows per task and 100 BELLE rows with that
same model. Its results say ``mode: smoke``. Without ../shared/data (or PURIFY_BENCH_DATA) it
prints a SKIP line and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DATA = C.DATA  # ../shared/data, or PURIFY_BENCH_DATA
RESULTS = C.RESULTS

from purify_assets.core import embedders as E  # noqa: E402

KOBEST_TASKS = ("BoolQ", "COPA", "HellaSwag", "SentiNeg", "WiC")


def load_nsmc(n: int) -> list[str]:
    out = []
    with open(DATA / "nsmc" / "nsmc_raw_reviews.jsonl", encoding="utf-8") as f:
        for line in f:
            t = json.loads(line).get("review", "").strip()
            if t:
                out.append(t)
                if len(out) >= n:
                    break
    return out


def load_alpaca(n: int) -> tuple[list[str], list[str]]:
    rows = json.loads((DATA / "alpaca" / "alpaca_data.json").read_text(encoding="utf-8"))
    rows = [r for r in rows if r.get("instruction", "").strip() and r.get("output", "").strip()][:n]
    return [r["instruction"] for r in rows], [f"{r['instruction']}\n{r['output']}" for r in rows]


def load_kobest(per_task: int) -> tuple[list[str], list[int], dict[str, str]]:
    """First ``per_task`` rows of each task's train.tsv; text = first column with real text."""
    texts, labels, used = [], [], {}
    csv.field_size_limit(10**8)
    for k, task in enumerate(KOBEST_TASKS):
        with open(DATA / "kobest" / task / "train.tsv", encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader)
            rows = [r for r in reader if len(r) == len(header)][:per_task]
        # "first text column": skip ids and single words (WiC's Target), i.e. median length > 10
        col = next(i for i, name in enumerate(header)
                   if statistics.median(len(r[i]) for r in rows) > 10 and name.lower() != "id")
        used[task] = header[col]
        texts += [r[col] for r in rows]
        labels += [k] * len(rows)
    return texts, labels, used


def load_belle() -> tuple[list[str], list[int]]:
    rows = [json.loads(line) for line in (DATA / "belle" / "eval_set.json").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    classes = sorted({r["class"].replace("\xa0", " ").strip() for r in rows})
    return [r["question"] for r in rows], [classes.index(r["class"].replace("\xa0", " ").strip()) for r in rows]


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def bench_throughput(args, sets: dict[str, list[str]], backends: dict | None = None) -> dict:
    backends = backends or {
        "st-torch": lambda: E.make_embedder({"backend": "sentence-transformers", "batch_size": 64}),
        "onnx-fp32": lambda: E.make_embedder({"backend": "onnx", "precision": "fp32", "batch_size": 64}),
        "onnx-int8": lambda: E.make_embedder({"backend": "onnx", "precision": "int8", "batch_size": 64}),
        # USE in this process (its BLAS on every core), and shared among worker processes of one
        # thread each (the default for calls of 2,000+ texts; here every call, in pieces of 64)
        "use": lambda: E.make_embedder({"backend": "use", "workers": 1}),
        "use-workers": lambda: E.USEEmbedder(batch_size=64, parallel_min_texts=0),
    }
    # Runs are interleaved (run 1 of every backend, then run 2 ...), so that each backend sees the
    # same mix of load from other jobs on a shared machine and the ratios stay fair.
    embs = {name: make() for name, make in backends.items()}
    results: dict = {}
    for name, emb in embs.items():
        load_s, _ = timed(lambda: emb.embed(["warm up the model"]))
        results[name] = {"model_id": emb.model_id, "first_call_s": round(load_s, 2), "sets": {}}
    reference: dict[str, np.ndarray] = {}
    for set_name, texts in sets.items():
        times: dict[str, list[float]] = {name: [] for name in embs}
        vecs: dict[str, np.ndarray] = {}
        for name, emb in embs.items():
            emb.embed(texts[: min(64, len(texts))])  # warm-up at this text length
        for _ in range(args.runs):
            for name, emb in embs.items():
                dt, vecs[name] = timed(lambda: emb.embed(texts))
                times[name].append(dt)
        if "st-torch" in vecs:  # absent in smoke mode
            reference[set_name] = vecs["st-torch"]
        for name in embs:
            rate = len(texts) / statistics.median(times[name])
            row = {"rows": len(texts), "rows_per_s": round(rate, 1), "runs_s": [round(t, 3) for t in times[name]]}
            if name == "use-workers":  # the same model in worker processes: the same vectors
                row["max_abs_diff_to_use"] = float(np.abs(vecs[name] - vecs["use"]).max())
            if name.startswith("onnx") and set_name in reference:
                cos = (vecs[name] * reference[set_name]).sum(axis=1)
                row.update(cos_mean=round(float(cos.mean()), 4), cos_p1=round(float(np.percentile(cos, 1)), 4),
                           cos_min=round(float(cos.min()), 4))
            results[name]["sets"][set_name] = row
            print(f"{name:10s} {set_name:9s} {rate:8.1f} rows/s  {row.get('cos_mean', '')}", flush=True)
    for name, entry in results.items():  # ratio to the torch run in this process
        for set_name, row in entry["sets"].items():
            if "st-torch" in results:
                row["x_torch"] = round(row["rows_per_s"] / results["st-torch"]["sets"][set_name]["rows_per_s"], 2)
    return results


def bench_ari(args, models: dict | None = None) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    ko_texts, ko_labels, ko_cols = load_kobest(args.ari_rows)
    zh_texts, zh_labels = load_belle()
    if args.quick or args.smoke:
        keep = 100 if args.smoke else 200
        zh_texts, zh_labels = zh_texts[:keep], zh_labels[:keep]
    datasets = {"kobest": (ko_texts, ko_labels), "belle": (zh_texts, zh_labels)}
    models = models or {
        "minilm-onnx-fp32": lambda: E.make_embedder({"backend": "onnx", "precision": "fp32"}),  # = torch
        "minilm-onnx-int8": lambda: E.make_embedder({"backend": "onnx", "precision": "int8"}),
        "use-multilingual": lambda: E.make_embedder({"backend": "use"}),
    }
    out: dict = {"kobest_text_columns": ko_cols, "scores": {}}
    for mname, make in models.items():
        emb = make()
        for dname, (texts, labels) in datasets.items():
            dt, vecs = timed(lambda: emb.embed(texts))
            k = len(set(labels))
            aris, nmis = [], []
            for seed in range(3):
                pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vecs)
                aris.append(adjusted_rand_score(labels, pred))
                nmis.append(normalized_mutual_info_score(labels, pred))
            out["scores"].setdefault(dname, {})[mname] = {
                "rows": len(texts), "k": k, "ari": round(float(np.mean(aris)), 3),
                "ari_runs": [round(a, 3) for a in aris], "nmi": round(float(np.mean(nmis)), 3),
                "embed_rows_per_s": round(len(texts) / dt, 1)}
            print(f"ARI {dname:7s} {mname:17s} {np.mean(aris):.3f} (NMI {np.mean(nmis):.3f}, "
                  f"{len(texts) / dt:.0f} rows/s)", flush=True)
    return out


def write_markdown(res: dict, path: Path) -> None:
    lines = ["# Embedding backends", "",
             f"Command: `{res['command']}`  ",
             f"Machine: {res['machine']}; {res['note']}", "",
             f"Mode: {res.get('settings', {}).get('mode', 'full')}", "",
             "## Throughput (median of runs) and agreement with the torch vectors", "",
             "| backend | set | rows | rows/s | x torch | cosine mean | cosine p1 | cosine min |",
             "|---|---|---|---|---|---|---|---|"]
    for name, entry in res["throughput"].items():
        for set_name, row in entry["sets"].items():
            lines.append(f"| {name} | {set_name} | {row['rows']} | {row['rows_per_s']} | {row.get('x_torch', '—')} | "
                         f"{row.get('cos_mean', '—')} | {row.get('cos_p1', '—')} | {row.get('cos_min', '—')} |")
    lines += ["", "First call (model load; ONNX export + quantization when the cache is cold): " + ", ".join(
        f"{n} {e['first_call_s']} s" for n, e in res["throughput"].items()), "",
        "Text sets: " + "; ".join(f"{k}: {v}" for k, v in res["sets"].items())]
    diffs = [row["max_abs_diff_to_use"] for row in res["throughput"].get("use-workers", {}).get("sets", {}).values()]
    if diffs:
        lines += ["", f"use-workers: the USE model in {E.cpu_count()} worker processes of one BLAS thread each (pieces "
                  f"of 64 texts); largest difference to the in-process vectors {max(diffs):.1e}."]
    if "ari" in res:
        a = res["ari"]
        lines += ["", "## Task-type ARI after K-means (k = true number of types, mean of 3 seeds)", "",
                  "| dataset | model | rows | k | ARI | NMI | embed rows/s |", "|---|---|---|---|---|---|---|"]
        for dname, per in a["scores"].items():
            for mname, s in per.items():
                lines.append(f"| {dname} | {mname} | {s['rows']} | {s['k']} | {s['ari']} | {s['nmi']} | "
                             f"{s['embed_rows_per_s']} |")
        lines += ["", "KoBEST text columns: " + ", ".join(f"{t}={c}" for t, c in a["kobest_text_columns"].items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one run (seconds)")
    ap.add_argument("--smoke", action="store_true",
                    help="USE only, 32/32/8 texts, one run, tiny ARI sets: checks the script, not the figures")
    ap.add_argument("--ari", action="store_true", help="also cluster KoBEST and BELLE (MiniLM vs USE)")
    ap.add_argument("--short-rows", type=int, default=1000)
    ap.add_argument("--long-rows", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ari-rows", type=int, default=1000, help="KoBEST rows per task")
    ap.add_argument("--out", default=str(RESULTS / "embed"))
    args = ap.parse_args()
    needed = [DATA / "nsmc" / "nsmc_raw_reviews.jsonl", DATA / "alpaca" / "alpaca_data.json"]
    if args.ari or args.smoke:
        needed += [DATA / "kobest", DATA / "belle" / "eval_set.json"]
    missing = [p for p in needed if not p.exists()]
    if missing:
        print(C.skip_message("bench_embed", missing[0]))
        return
    if args.quick:
        args.short_rows, args.long_rows, args.runs, args.ari_rows = 64, 16, 1, 100
    backends = ari_models = None
    if args.smoke:
        args.short_rows, args.long_rows, args.runs, args.ari_rows = 32, 8, 1, 20
        # one USE instance for both parts (a second load would cost as much as all the work), one
        # thread: on a busy 2-core machine two threads made these tiny calls up to 10x slower
        use = E.make_embedder({"backend": "use", "workers": 1, "threads": 1})
        backends, ari_models = {"use": lambda: use}, {"use-multilingual": lambda: use}
    short_en, long_en = load_alpaca(max(args.short_rows, args.long_rows))
    sets = {"short_ko": load_nsmc(args.short_rows), "short_en": short_en[: args.short_rows],
            "long_en": long_en[: args.long_rows]}
    res = {
        "command": "python bench/bench_embed.py " + " ".join(sys.argv[1:]),
        "machine": f"{E.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "note": ("CPU shared with other jobs while measuring (load average "
                 f"{os.getloadavg()[0]:.1f} at start): absolute rows/s are noisy, ratios within the run less so"),
        "sets": {k: f"{len(v)} rows, mean {np.mean([len(t) for t in v]):.0f} chars" for k, v in sets.items()},
        "settings": {"mode": ("smoke (USE only, one thread, tiny sets, one run: checks the script, not the figures)"
                              if args.smoke else "quick" if args.quick else "full"),
                     "runs": args.runs, "ari": bool(args.ari or args.smoke)},
    }
    res["throughput"] = bench_throughput(args, sets, backends)
    res["settings"]["backends"] = list(res["throughput"])
    if args.ari or args.smoke:
        res["ari"] = bench_ari(args, ari_models)
    res["load_average_end"] = round(os.getloadavg()[0], 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_markdown(res, out.with_suffix(".md"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
