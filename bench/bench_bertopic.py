"""purify's clustering path against BERTopic's default pipeline: same rows, same embeddings.

    python bench/bench_bertopic.py                   # KoBEST (5 x 1000) and BELLE (1000), USE vectors, 3 runs
    python bench/bench_bertopic.py --embedders use,onnx --runs 3
    python bench/bench_bertopic.py --quick           # 300 rows per set, 1 run (seconds once numba is warm)

BERTopic is a benchmark-only dependency (``pip install bertopic``); without it this script writes
purify's own figures and says BERTopic was not importable.

Methods, all on the same cached vectors (``bench/.cache/emb_*.npy``):
- ``bertopic-default``: ``BERTopic().fit_transform(docs, embeddings)``: UMAP (5-d, 15 neighbours,
  cosine, unseeded, so parallel) -> HDBSCAN (min_cluster_size 10) -> c-TF-IDF topic words. The
  topic words are part of its default pipeline and of the timed call.
- ``bertopic-seeded``: the same with ``UMAP(..., random_state=42)`` (UMAP then runs single-threaded).
- ``purify-kmeans``: ``fit_clusters(vectors, {"algorithm": "kmeans", "k": <true number of labels>})``.
- ``purify-hdbscan``: ``fit_clusters(vectors, {"algorithm": "hdbscan"})``: its defaults, i.e. seeded
  UMAP to 10-d, min_cluster_size max(10, 1 % of rows).
ARI / NMI against the true labels count noise (-1) as one more cluster, as a user would see it.
The first UMAP fit in a process pays a one-off numba compile; a warm-up fit runs before timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # BERTopic must never try to fetch a model here
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bertopic_available() -> tuple[bool, str]:
    try:
        import bertopic  # noqa: F401

        return True, getattr(bertopic, "__version__", "?")
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        return False, f"{type(exc).__name__}: {exc}"


def scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    labels = np.asarray(labels)
    return {"ari": float(adjusted_rand_score(truth, labels)), "nmi": float(normalized_mutual_info_score(truth, labels)),
            "clusters": int(len(set(labels.tolist()) - {-1})), "noise": float((labels < 0).mean())}


def bertopic_method(seeded: bool, pca: bool = False) -> Callable[[list[str], np.ndarray, int], np.ndarray]:
    def run(docs: list[str], x: np.ndarray, k: int) -> np.ndarray:
        from bertopic import BERTopic

        if pca:  # smoke only: BERTopic's code path without UMAP's numba compile
            from sklearn.decomposition import PCA

            model = BERTopic(umap_model=PCA(n_components=5, random_state=0))
        elif seeded:
            from umap import UMAP

            model = BERTopic(umap_model=UMAP(n_neighbors=15, n_components=5, min_dist=0.0, metric="cosine",
                                             random_state=42))
        else:
            model = BERTopic()
        topics, _ = model.fit_transform(docs, embeddings=x)
        return np.asarray(topics)
    return run


def purify_method(algorithm: str, reduce: str | None = None) -> Callable[[list[str], np.ndarray, int], np.ndarray]:
    def run(docs: list[str], x: np.ndarray, k: int) -> np.ndarray:
        from purify_assets.core.clustering import fit_clusters

        params: dict[str, Any] = {"algorithm": algorithm, "k": k} if algorithm == "kmeans" else {"algorithm": algorithm}
        if reduce:
            params["reduce"] = reduce
        return fit_clusters(x, params).labels
    return run


def warm_up_umap(dim: int) -> float:
    """One UMAP fit above UMAP's small-data threshold (4,096 rows) so numba compiles before timing."""
    from umap import UMAP

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4200, dim)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        UMAP(n_neighbors=15, n_components=5, metric="cosine", min_dist=0.0).fit(x[:4200])
        UMAP(n_neighbors=15, n_components=5, metric="cosine", min_dist=0.0, random_state=1).fit(x[:300])
    return time.perf_counter() - t0


def run_set(name: str, docs: list[str], truth: np.ndarray, x: np.ndarray, methods: dict[str, Callable], runs: int) -> dict[str, Any]:
    k = int(len(set(truth.tolist())))
    out: dict[str, Any] = {}
    for method, fn in methods.items():
        secs, per_run = [], []
        for _ in range(runs):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                labels = fn(docs, x, k)
                secs.append(time.perf_counter() - t0)
            per_run.append(scores(labels, truth))
        out[method] = {
            "seconds": C.summarize(secs),
            "ari": C.summarize([r["ari"] for r in per_run]), "nmi": C.summarize([r["nmi"] for r in per_run]),
            "clusters": C.summarize([r["clusters"] for r in per_run], 1),
            "noise": C.summarize([r["noise"] for r in per_run]),
        }
        print(f"  {name} {method}: {out[method]['seconds']['median']:.2f}s, ARI {out[method]['ari']['median']:.3f}, "
              f"NMI {out[method]['nmi']['median']:.3f}, {out[method]['clusters']['median']:.0f} clusters", flush=True)
    base = out.get("bertopic-default")
    if base:
        for method in ("purify-kmeans", "purify-hdbscan"):
            if method in out:
                speed = base["seconds"]["median"] / max(out[method]["seconds"]["median"], 1e-9)
                out[method]["speedup_vs_bertopic_default"] = round(speed, 2)
                out[method]["ari_minus_bertopic_default"] = round(out[method]["ari"]["median"] - base["ari"]["median"], 3)
                out[method]["target_met"] = bool(speed >= 3 and out[method]["ari"]["median"] >= base["ari"]["median"])
    return {"rows": len(docs), "true_labels": k, "methods": out}


def markdown(res: dict[str, Any]) -> str:
    lines = ["# purify clustering vs BERTopic (same rows, same embeddings)", "", C.machine_markdown(res), "",
             f"- mode: {res['settings']['mode']}",
             f"- BERTopic: {res['bertopic']}; runs per method: {res['settings']['runs']} (medians; min-max in JSON)",
             f"- UMAP/numba warm-up before timing: {C.fmt(res.get('warm_up_seconds'))} s",
             "- target: purify's clustering path >= 3x faster than BERTopic's default pipeline at equal or better ARI", ""]
    rows = []
    for key, s in res["sets"].items():
        for method, m in s["methods"].items():
            rows.append({"set / vectors": key, "rows": s["rows"], "method": method, "seconds": m["seconds"]["median"],
                         "clusters": m["clusters"]["median"], "noise": m["noise"]["median"], "ARI": m["ari"]["median"],
                         "ARI range": f"{m['ari']['min']:.2f}-{m['ari']['max']:.2f}", "NMI": m["nmi"]["median"],
                         "x faster than BERTopic": m.get("speedup_vs_bertopic_default"),
                         "target met": m.get("target_met")})
    lines += [C.md_table(rows), ""]
    if res.get("embedding_seconds"):
        lines += ["Embedding time (not part of any method; cached in bench/.cache): " +
                  ", ".join(f"{k} {C.fmt(v)} s" for k, v in res["embedding_seconds"].items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedders", default="use", help="comma-separated: use, onnx, onnx-fp32, st (default use)")
    ap.add_argument("--sets", default="kobest,belle")
    ap.add_argument("--per-task", type=int, default=1000, help="KoBEST rows per task (default 1000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="300 rows per set, USE vectors, one run (about a minute)")
    ap.add_argument("--smoke", action="store_true",
                    help="300 rows per set, hash stand-in vectors, PCA instead of UMAP everywhere (no numba compile): "
                         "checks the script, not the figures")
    ap.add_argument("--out", default=str(C.RESULTS / "bertopic"))
    args = ap.parse_args(argv)

    needed = {"kobest": C.DATA / "kobest", "belle": C.DATA / "belle" / "eval_set.json"}
    sets = [s for s in args.sets.split(",") if s]
    missing = [needed[s] for s in sets if not needed[s].exists()]
    if missing:
        print(C.skip_message("bench_bertopic", missing[0]))
        return 0
    ok, bt = bertopic_available()
    if not ok:
        print(f"note: BERTopic not importable ({bt}); only purify's methods run (pip install bertopic to compare)")
    if args.quick or args.smoke:
        args.per_task, args.runs = 60, 1
    if args.smoke:
        args.embedders = "hash"

    methods: dict[str, Callable] = {}
    if args.smoke:
        if ok:
            methods["bertopic-default"] = bertopic_method(seeded=False, pca=True)
        methods["purify-kmeans"] = purify_method("kmeans")
        methods["purify-hdbscan"] = purify_method("hdbscan", reduce="pca")
    else:
        if ok:
            methods["bertopic-default"] = bertopic_method(seeded=False)
            methods["bertopic-seeded"] = bertopic_method(seeded=True)
        methods["purify-kmeans"] = purify_method("kmeans")
        methods["purify-hdbscan"] = purify_method("hdbscan")

    res = C.header("bench_bertopic", ["bench_bertopic"] + list(argv if argv is not None else sys.argv[1:]))
    res["bertopic"] = f"bertopic {bt}" if ok else f"not importable ({bt})"
    res["settings"] = {"embedders": args.embedders, "sets": sets, "per_task": args.per_task, "runs": args.runs,
                       "mode": "smoke (PCA instead of UMAP, stand-in vectors)" if args.smoke else
                       "quick" if args.quick else "full"}
    data: dict[str, tuple[list[str], np.ndarray, list[str]]] = {}
    if "kobest" in sets:
        data["kobest"] = C.load_kobest(args.per_task)
    if "belle" in sets:
        texts, labels, classes = C.load_belle()
        if args.quick or args.smoke:
            texts, labels = texts[:300], labels[:300]
        data["belle"] = (texts, labels, classes)
    res["data"] = {k: {"rows": len(v[0]), "labels": v[2]} for k, v in data.items()}
    res["sets"], res["embedding_seconds"] = {}, {}
    warmed = False
    for name in args.embedders.split(","):
        embedder, info = C.make_bench_embedder(name)
        for set_name, (docs, truth, _) in data.items():
            x, secs = C.cached_embeddings(docs, embedder, set_name)
            if secs is not None:
                res["embedding_seconds"][f"{set_name}/{embedder.model_id}"] = round(secs, 1)
            if not warmed and not args.smoke:
                res["warm_up_seconds"] = round(warm_up_umap(x.shape[1]), 1)
                warmed = True
            key = f"{set_name} / {embedder.model_id}" + (" (stand-in vectors)" if info.get("standin") else "")
            print(f"{key}: {len(docs):,} rows", flush=True)
            res["sets"][key] = run_set(key, docs, truth, x, methods, args.runs)
    js, md = C.write_results(args.out, res, markdown(res))
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
