"""purify's clustering, projections and metrics against true labels on real Korean and Chinese data.

    python bench/bench_cluster.py                 # KoBEST 5 x 1000 + BELLE 1000; USE and MiniLM int8; 3 runs
    python bench/bench_cluster.py --embedders use --sets kobest --runs 5
    python bench/bench_cluster.py --quick         # 300 rows per set, USE only, PCA instead of UMAP, 1 run
    python bench/bench_cluster.py --smoke         # CI: 100 rows per set, stand-in vectors, PCA, 1 run (~6 s)

Data (../shared/data): KoBEST, five Korean task types (BoolQ, COPA, HellaSwag, SentiNeg, WiC), the
first ``--per-task`` rows of each train.tsv, text column per task as in ``_common.KOBEST_TEXT``;
BELLE eval_set.json (JSONL), ``question`` with its 10 classes (``closed\\xa0qa`` read as ``closed qa``).
Vectors: multilingual USE (``{"backend": "use"}``) and all-MiniLM-L6-v2 via onnxruntime int8
(``{"backend": "onnx", "precision": "int8"}``), cached in bench/.cache.

What is measured, per data set and embedding:
- ``embed``: seconds to embed every row (or, when the vectors came from the cache, the rate on a
  fresh 256-row slice, scaled up; marked ``from cache``).
- clustering, each ``--runs`` times with seeds 0, 1, 2, ... (medians; min-max in the JSON):
  ``kmeans`` (k = true number of labels, raw vectors), ``dbscan`` (eps from the k-distance knee,
  on UMAP 10-d: the default), ``dbscan-raw`` (no reduction), ``hdbscan`` (UMAP 10-d, the default),
  ``hdbscan-pca`` (PCA 10-d). ARI / NMI against the true labels count noise (-1) as one more
  cluster, as a user would see it; ``ari_clustered`` scores the non-noise rows only. The ``reduce``
  stage is the UMAP/PCA part of those fits (``info["timings"]``), ``cluster`` the rest.
- a k sweep, k = 2..12 (``k_sweep``: silhouette, Davies-Bouldin, Calinski-Harabasz, stability over
  3 seeded 80 % subsamples) plus the ARI/NMI of each k's labels, and the k each criterion picks.
- ``project``: PCA, t-SNE and UMAP to 2-D on every row (one run each; t-SNE fits 5,000 rows at
  most and places the rest; t-SNE both with the libraries' default threads and with ``project``'s
  default of one thread), with the share of rows whose nearest 2-D neighbour has the same true
  label (how well the picture keeps the task types apart).
- ``metrics``: ``global_metrics`` + ``per_cluster_metrics`` on the K-means labels.
The first UMAP fit in a process pays a one-off numba compile: a warm-up runs before any timing.

``--smoke`` checks the script, not the figures: 20 KoBEST rows per task and 10 BELLE rows per
class, hashed character n-gram stand-in vectors (no model to load), PCA in place of UMAP (and no
UMAP projection: numba's compile alone takes longer than the whole run), one run, k 2..4. Its
results say ``mode: smoke``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Peer baselines measured on the same KoBEST rows (DESIGN.md 5b): what purify should match or beat.
BASELINES = [
    {"embedding": "USE-multilingual", "method": "BERTopic defaults (UMAP 5-d + HDBSCAN 10)", "ARI": 0.22, "NMI": 0.43},
    {"embedding": "USE-multilingual", "method": "K-means, k = 5", "ARI": 0.67, "NMI": 0.73},
    {"embedding": "MiniLM", "method": "BERTopic defaults", "ARI": 0.34, "NMI": 0.46},
    {"embedding": "MiniLM", "method": "K-means, k = 5", "ARI": 0.40, "NMI": 0.48},
    {"embedding": "MiniLM", "method": "UMAP 10-d + HDBSCAN (min size 1 %)", "ARI": 0.54, "NMI": 0.67},
]


def scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    keep = labels >= 0
    return {"ari": float(adjusted_rand_score(truth, labels)),
            "nmi": float(normalized_mutual_info_score(truth, labels)),
            "ari_clustered": float(adjusted_rand_score(truth[keep], labels[keep])) if keep.sum() > 1 else float("nan"),
            "clusters": int(len(set(labels.tolist()) - {-1})), "noise": float((~keep).mean())}


def stratified(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Sorted row indices: at most ``per_class`` rows of every label (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(labels):
        idx = np.where(labels == c)[0]
        out.append(idx if len(idx) <= per_class else rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(out))


def warm_up_umap(dim: int) -> float:
    """UMAP fits above and below its 4,096-row threshold, and a transform, so numba compiles now."""
    from umap import UMAP

    t0 = time.perf_counter()
    x = np.random.default_rng(0).normal(size=(4200, dim)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        UMAP(n_components=10, metric="cosine", min_dist=0.0, random_state=0).fit(x)
        m = UMAP(n_components=2, metric="cosine", random_state=0).fit(x[:300])
        m.transform(x[300:400])
    return time.perf_counter() - t0


def cluster_methods(k: int, quick: bool) -> dict[str, dict[str, Any]]:
    umap = "pca" if quick else "umap"  # quick mode: no numba compile
    return {
        "kmeans": {"algorithm": "kmeans", "k": k},
        "dbscan": {"algorithm": "dbscan", "reduce": umap},
        "dbscan-raw": {"algorithm": "dbscan", "reduce": "none"},
        "hdbscan": {"algorithm": "hdbscan", "reduce": umap},
        "hdbscan-pca": {"algorithm": "hdbscan", "reduce": "pca"},
    }


def run_clustering(x: np.ndarray, truth: np.ndarray, runs: int, quick: bool) -> dict[str, Any]:
    from purify_assets.core.clustering import fit_clusters

    k = int(len(np.unique(truth)))
    out: dict[str, Any] = {}
    for name, params in cluster_methods(k, quick).items():
        per_run, total, reduce, cluster = [], [], [], []
        for seed in range(runs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                res = fit_clusters(x, dict(params, seed=seed))
                total.append(time.perf_counter() - t0)
            tm = res.info["timings"]
            red = tm.get("reduce_fit", 0.0) + tm.get("reduce_transform", 0.0)
            reduce.append(red)
            cluster.append(total[-1] - red)
            s = scores(res.labels, truth)
            if "eps" in res.info:
                s["eps"] = res.info["eps"]
            per_run.append(s)
        item = {"params": params, "effective_reduce": res.info["effective_params"]["reduce"],
                "seconds_total": C.summarize(total), "seconds_reduce": C.summarize(reduce),
                "seconds_cluster": C.summarize(cluster)}
        for key in ("ari", "nmi", "ari_clustered", "clusters", "noise", "eps"):
            vals = [r[key] for r in per_run if key in r]
            if vals:
                item[key] = C.summarize(vals)
        out[name] = item
        print(f"    {name:12s} ARI {item['ari']['median']:.3f} ({item['ari']['min']:.3f} to {item['ari']['max']:.3f}) "
              f"NMI {item['nmi']['median']:.3f} clusters {item['clusters']['median']:.0f} "
              f"noise {item['noise']['median']:.1%} {item['seconds_total']['median']:.2f}s", flush=True)
    return out


def run_sweep(x: np.ndarray, truth: np.ndarray, ks: list[int], n_runs: int, stability_sample: int) -> dict[str, Any]:
    from purify_assets.core.clustering import best_k, fit_clusters, k_sweep

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sweep = k_sweep(x, ks, seed=0, n_runs=n_runs, stability_sample=stability_sample)
    sweep_seconds = time.perf_counter() - t0
    for row in sweep:
        # the sweep fits every row of these sets (n <= its 20,000-row sample): the same seed and k
        # give the same labels here
        s = scores(fit_clusters(x, {"algorithm": "kmeans", "k": row["k"], "seed": 0}).labels, truth)
        row["ari"], row["nmi"] = s["ari"], s["nmi"]
    finite = [r for r in sweep if np.isfinite(r.get("stability", float("nan")))]
    picks = {"silhouette": best_k(sweep, "silhouette"), "davies_bouldin": best_k(sweep, "davies_bouldin"),
             "calinski_harabasz": best_k(sweep, "calinski_harabasz"),
             "stability": int(max(finite, key=lambda r: r["stability"])["k"]) if finite else None,
             "ari (oracle)": best_k(sweep, "ari")}
    return {"rows": sweep, "picks": picks, "true_k": int(len(np.unique(truth))), "seconds": round(sweep_seconds, 2)}


def nn_label_agreement(coords: np.ndarray, truth: np.ndarray) -> float:
    """Share of rows whose nearest other row in the projection has the same true label."""
    from sklearn.neighbors import NearestNeighbors

    _, j = NearestNeighbors(n_neighbors=2).fit(coords).kneighbors(coords)
    return float((truth[j[:, 1]] == truth).mean())


def run_projections(x: np.ndarray, truth: np.ndarray, fast: str | None) -> dict[str, Any]:
    """``fast``: "quick" or "smoke" skips UMAP (its numba compile), None runs every method."""
    from purify_assets.core.projection import project

    out: dict[str, Any] = {}
    for method in ("pca", "tsne", "tsne-1-thread", "umap"):
        if fast and method == "umap":
            out[method] = {"skipped": f"{fast} mode (no numba compile)"}
            continue
        # t-SNE twice: with the libraries' default threads (tsne_threads=None) and with project()'s
        # default of one BLAS/OpenMP thread; on this busy 2-core machine spinning threads made
        # t-SNE fits several times slower
        extra = {"tsne_threads": None} if method == "tsne" else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            y = project(x, method.split("-")[0], 2, seed=0, **extra)
            secs = time.perf_counter() - t0
        out[method] = {"seconds": round(secs, 2), "nn_label_agreement": round(nn_label_agreement(y, truth), 3)}
        print(f"    project {method}: {secs:.1f}s, nearest-neighbour label agreement "
              f"{out[method]['nn_label_agreement']:.3f}", flush=True)
    out["raw_vectors_nn_label_agreement"] = round(nn_label_agreement(x, truth), 3)
    return out


def run_metrics(x: np.ndarray, truth: np.ndarray, runs: int) -> dict[str, Any]:
    from purify_assets.core.clustering import fit_clusters
    from purify_assets.core.metrics import global_metrics, per_cluster_metrics

    labels = fit_clusters(x, {"algorithm": "kmeans", "k": int(len(np.unique(truth)))}).labels
    secs, g, per = [], {}, []
    for _ in range(runs):
        t0 = time.perf_counter()
        g = global_metrics(x, labels)
        per = per_cluster_metrics(x, labels)
        secs.append(time.perf_counter() - t0)
    keep = ("silhouette", "silhouette_ci_low", "silhouette_ci_high", "silhouette_sample_size", "davies_bouldin",
            "calinski_harabasz", "balance_entropy", "gini")
    return {"seconds": C.summarize(secs), "global": {k: g.get(k) for k in keep},
            "per_cluster": [{k: r.get(k) for k in ("cluster", "size", "mean_silhouette", "nearest_cluster",
                                                   "nearest_distance", "overlap", "tiny", "outlier_fraction")}
                            for r in per]}


def embed_stage(texts: list[str], embedder: Any, tag: str) -> tuple[np.ndarray, dict[str, Any]]:
    x, secs = C.cached_embeddings(texts, embedder, tag)
    if secs is not None:
        return x, {"seconds": round(secs, 2), "rows_per_second": round(len(texts) / secs, 1), "from_cache": False}
    # evenly spaced rows: the sets are ordered by label, and the labels' text lengths differ a lot
    # (KoBEST's first 1,000 rows are BoolQ passages)
    pick = np.linspace(0, len(texts) - 1, num=min(256, len(texts))).round().astype(int)
    part = [texts[i] for i in np.unique(pick)]
    t0 = time.perf_counter()
    embedder.embed(part)
    rate = len(part) / (time.perf_counter() - t0)
    return x, {"seconds": round(len(texts) / rate, 2), "rows_per_second": round(rate, 1), "from_cache": True,
               "note": f"vectors from bench/.cache; time scaled from {len(part)} evenly spaced rows embedded afresh"}


# ------------------------------------------------------------------------------------ report

def markdown(res: dict[str, Any]) -> str:
    st = res["settings"]
    lines = ["# Clustering, projections and metrics on KoBEST and BELLE (true labels known)", "",
             C.machine_markdown(res), "",
             f"- mode: {st['mode']}; clustering runs per method: {st['runs']} (seeds 0..{st['runs'] - 1}; medians, "
             f"min-max in the JSON); k sweep {st['ks'][0]}..{st['ks'][-1]}",
             f"- UMAP/numba warm-up before timing: {C.fmt(res.get('warm_up_seconds'))} s",
             "- ARI/NMI count noise (-1) as one more cluster; `ARI clustered` scores the non-noise rows only.",
             "- The CPU was shared with other workers (2 cores): times are noisy; compare methods within a table.", ""]
    rows, sweeps, stages, proj = [], [], [], []
    for key, s in res["sets"].items():
        for name, m in s["clustering"].items():
            rows.append({"set / vectors": key, "method": name, "reduce": m["effective_reduce"],
                         "clusters": m["clusters"]["median"], "noise": m["noise"]["median"],
                         "ARI": m["ari"]["median"], "ARI range": f"{m['ari']['min']:.3f} to {m['ari']['max']:.3f}",
                         "NMI": m["nmi"]["median"], "ARI clustered": m["ari_clustered"]["median"],
                         "seconds": m["seconds_total"]["median"]})
        sw = s["k_sweep"]
        p = sw["picks"]
        sweeps.append({"set / vectors": key, "true k": sw["true_k"], "silhouette picks": p["silhouette"],
                       "Davies-Bouldin picks": p["davies_bouldin"], "Calinski-Harabasz picks": p["calinski_harabasz"],
                       "stability picks": p["stability"], "best-ARI k": p["ari (oracle)"],
                       "ARI at silhouette's k": next((r["ari"] for r in sw["rows"] if r["k"] == p["silhouette"]), None),
                       "sweep seconds": sw["seconds"]})
        cl = s["clustering"]
        stages.append({"set / vectors": key, "rows": s["rows"],
                       "embed": s["embed"]["seconds"], "embed rows/s": s["embed"]["rows_per_second"],
                       "reduce (UMAP 10-d)": cl["hdbscan"]["seconds_reduce"]["median"],
                       "kmeans": cl["kmeans"]["seconds_cluster"]["median"],
                       "dbscan (after reduce)": cl["dbscan"]["seconds_cluster"]["median"],
                       "hdbscan (after reduce)": cl["hdbscan"]["seconds_cluster"]["median"],
                       "project pca": s["projections"]["pca"].get("seconds"),
                       "project tsne, default threads": s["projections"]["tsne"].get("seconds"),
                       "project tsne, 1 thread": s["projections"]["tsne-1-thread"].get("seconds"),
                       "project umap": s["projections"]["umap"].get("seconds"),
                       "metrics": s["metrics"]["seconds"]["median"]})
        pj = s["projections"]
        proj.append({"set / vectors": key, "raw vectors": pj["raw_vectors_nn_label_agreement"],
                     **{m: pj[m].get("nn_label_agreement") for m in ("pca", "tsne", "umap")}})
    lines += ["## Agreement with the true labels", "", C.md_table(rows), ""]
    lines += ["## k sweep: which k each criterion picks", "", C.md_table(sweeps), ""]
    for key, s in res["sets"].items():
        lines += [f"### k sweep, {key}", "", C.md_table([
            {"k": r["k"], "silhouette": r.get("silhouette"), "Davies-Bouldin": r.get("davies_bouldin"),
             "Calinski-Harabasz": r.get("calinski_harabasz"), "stability": r.get("stability"), "ARI": r.get("ari"),
             "NMI": r.get("nmi"), "seconds": r.get("seconds")} for r in s["k_sweep"]["rows"]]), ""]
    lines += ["## Wall time per stage (seconds; clustering stages are medians)", "",
              "`embed` for cached vectors is scaled from 256 evenly spaced rows embedded afresh (see JSON `embed`). `reduce` is the UMAP 10-d part of "
              "a DBSCAN/HDBSCAN fit (fit on every row here, seeded, so single-threaded); `dbscan`/`hdbscan` the "
              "rest of that fit (eps search, clustering, assignment, centres).", "", C.md_table(stages), ""]
    lines += ["## 2-D projections: share of rows whose nearest 2-D neighbour has the same true label", "",
              C.md_table(proj), ""]
    lines += ["## Peer baselines on the same KoBEST rows (DESIGN.md 5b, measured earlier)", "",
              C.md_table(BASELINES), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedders", default=None, help="comma-separated: use, onnx, onnx-fp32, st (default use,onnx)")
    ap.add_argument("--sets", default="kobest,belle")
    ap.add_argument("--per-task", type=int, default=1000, help="KoBEST rows per task (default 1000)")
    ap.add_argument("--runs", type=int, default=3, help="clustering runs per method (seeds 0..runs-1)")
    ap.add_argument("--k-min", type=int, default=2)
    ap.add_argument("--k-max", type=int, default=12)
    ap.add_argument("--quick", action="store_true",
                    help="60 rows per KoBEST task and 60 per BELLE class, USE only, PCA in place of UMAP, one run, "
                         "k 2..6: checks the script in seconds, not the figures")
    ap.add_argument("--smoke", action="store_true",
                    help="20 rows per KoBEST task and 10 per BELLE class, hash stand-in vectors, PCA in place of "
                         "UMAP, one run, k 2..4: the CI check of the script, not the figures")
    ap.add_argument("--out", default=str(C.RESULTS / "cluster"), help="results path without extension")
    args = ap.parse_args(argv)

    needed = {"kobest": C.DATA / "kobest", "belle": C.DATA / "belle" / "eval_set.json"}
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in needed]
    if unknown:
        ap.error(f"unknown set(s) {unknown}; choose from {sorted(needed)}")
    missing = [needed[s] for s in sets if not needed[s].exists()]
    if missing:
        print(C.skip_message("bench_cluster", missing[0]))
        return 0
    if args.quick:
        args.per_task, args.runs, args.k_max = 60, 1, min(args.k_max, 6)
    if args.smoke:
        args.per_task, args.runs, args.k_max = 20, 1, min(args.k_max, 4)
    fast = "smoke" if args.smoke else "quick" if args.quick else None
    embedders = (args.embedders or ("hash" if args.smoke else "use" if args.quick else "use,onnx")).split(",")
    ks = list(range(args.k_min, args.k_max + 1))

    res = C.header("bench_cluster", ["bench_cluster"] + list(argv if argv is not None else sys.argv[1:]))
    res["settings"] = {"embedders": embedders, "sets": sets, "per_task": args.per_task, "runs": args.runs, "ks": ks,
                       "mode": "smoke (stand-in vectors, PCA in place of UMAP, tiny sample: checks the script, "
                               "not the figures)" if args.smoke else
                               "quick (PCA in place of UMAP, small sample)" if args.quick else "full"}
    data: dict[str, tuple[list[str], np.ndarray, list[str]]] = {}
    if "kobest" in sets:
        data["kobest"] = C.load_kobest(args.per_task)
    if "belle" in sets:
        texts, labels, classes = C.load_belle()
        if fast:
            idx = stratified(labels, 10 if args.smoke else 60)
            texts, labels = [texts[i] for i in idx], labels[idx]
        data["belle"] = (texts, labels, classes)
    res["data"] = {k: {"rows": len(v[0]), "labels": v[2], "label_counts": np.bincount(v[1]).tolist()}
                   for k, v in data.items()}
    res["sets"] = {}
    warmed = False
    t_all = time.perf_counter()
    for name in embedders:
        embedder, info = C.make_bench_embedder(name)
        for set_name, (texts, truth, _) in data.items():
            key = f"{set_name} / {embedder.model_id}" + (" (stand-in vectors)" if info.get("standin") else "")
            print(f"{key}: {len(texts):,} rows, {len(np.unique(truth))} true labels", flush=True)
            x, emb = embed_stage(texts, embedder, set_name)
            if not warmed and not fast:
                res["warm_up_seconds"] = round(warm_up_umap(x.shape[1]), 1)
                warmed = True
            entry: dict[str, Any] = {"rows": len(texts), "dim": int(x.shape[1]), "embedder": info, "embed": emb}
            entry["clustering"] = run_clustering(x, truth, args.runs, bool(fast))
            entry["k_sweep"] = run_sweep(x, truth, ks, n_runs=2 if fast else 3,
                                         stability_sample=100 if args.smoke else 300 if args.quick else 3000)
            print(f"    k sweep picks {entry['k_sweep']['picks']} (true k {entry['k_sweep']['true_k']}), "
                  f"{entry['k_sweep']['seconds']:.1f}s", flush=True)
            entry["projections"] = run_projections(x, truth, fast)
            entry["metrics"] = run_metrics(x, truth, args.runs)
            res["sets"][key] = entry
    res["total_seconds"] = round(time.perf_counter() - t_all, 1)
    res["machine_load_at_end"] = C.machine_info()["load_average_1_5_15"]
    js, md = C.write_results(args.out, res, markdown(res))
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
