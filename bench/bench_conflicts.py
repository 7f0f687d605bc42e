"""Conflicting responses: MinHash vs response vectors on questions that really repeat.

    python bench/bench_conflicts.py            # kor_chatbot (11,823 Korean Q/A pairs), USE encoder
    python bench/bench_conflicts.py --smoke    # first 1,500 rows, stand-in vectors (seconds)

kor_chatbot repeats some questions with the same answer and some with a different one. The whole
file goes through purify's own stages (ingest, clean, embed with response vectors, dedup) and the
conflict sets are counted three ways: instructions matched exactly with responses compared by
MinHash Jaccard (what purify did before response vectors), exactly with response vectors, and by
instruction vectors (cosine >= 0.95, same input) with response vectors (the default). The dataset
has no conflict labels, so the script also prints every differing answer pair under an exactly
repeated question with both similarities: the table shows where each measure draws the line.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

DATA = C.DATA / "kor_chatbot" / "ChatbotData.csv"


def conflict_rows(con: Any) -> set[str]:
    from purify_assets.core import warehouse as wh

    return set(wh.frame(con, "SELECT row_id FROM dedup_sets WHERE kind = 'conflict'")["row_id"].to_list())


def answer_pairs(con: Any, model_id: str) -> list[dict[str, Any]]:
    """Every pair of different answers to one exactly repeated question, with cosine and Jaccard."""
    from purify_assets.core import warehouse as wh
    from purify_assets.core.dedup import minhash_signatures

    rows = wh.frame(con, """SELECT c.row_id, c.instruction, c.output, r.vector FROM clean_rows c
                            JOIN response_embeddings r ON r.row_id = c.row_id AND r.model_id = ?
                            ORDER BY c.row_id""", [model_id])
    by_question: dict[str, list[int]] = {}
    for i, q in enumerate(rows["instruction"].to_list()):
        by_question.setdefault(q, []).append(i)
    outputs = rows["output"].to_list()
    pairs = [(a, b) for members in by_question.values() for k, a in enumerate(members) for b in members[k + 1:]
             if outputs[a] != outputs[b]]
    if not pairs:
        return []
    vectors = np.asarray(rows["vector"].to_list(), dtype=np.float32)
    sig = minhash_signatures(outputs)
    out = []
    for a, b in pairs:
        out.append({"question": rows["instruction"][a], "answer_a": outputs[a], "answer_b": outputs[b],
                    "cosine": round(float(vectors[a] @ vectors[b]), 3),
                    "jaccard": round(float((sig[a] == sig[b]).mean()), 3)})
    return sorted(out, key=lambda p: p["cosine"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="first 1,500 rows with stand-in vectors")
    ap.add_argument("--embedder", default="use", help="use | onnx | hash (default use)")
    ap.add_argument("--out", default=str(C.RESULTS / "conflicts"))
    args = ap.parse_args(argv)
    if not C.have_data(DATA):
        print(C.skip_message("bench_conflicts", DATA))
        return 0
    from purify_assets.core import warehouse as wh
    from purify_assets.core.params import DEFAULT_PARAMS
    from purify_assets.stages.cycle import dedup_rows

    embedder, section = C.make_bench_embedder("hash" if args.smoke else args.embedder)
    work = Path(tempfile.mkdtemp(prefix="conflicts_"))
    try:
        src = work / "kor_chatbot.csv"
        with open(DATA, encoding="utf-8", newline="") as f:
            lines = f.readlines()
        src.write_text("".join(lines[:1501] if args.smoke else lines), "utf-8")
        ws = C.Workspace(work / "purify")
        timings: list[C.StageTiming] = []
        dp = dict(DEFAULT_PARAMS["dedup"])
        results = []
        C.run_batch(ws, src, embedder, timings)
        with ws.connect() as con:
            n = int(wh.scalar(con, "SELECT count(*) FROM clean_rows"))
            n_resp = int(wh.scalar(con, "SELECT count(*) FROM response_embeddings"))
            pairs = answer_pairs(con, embedder.model_id)
            settings = [
                ("exact instruction, MinHash Jaccard < 0.5", dict(dp, conflict_instruction_match="exact"), False),
                ("exact instruction, response cosine < 0.5", dict(dp, conflict_instruction_match="exact"), True),
                ("instruction cosine >= 0.95 + same input, response cosine < 0.5 (default)", dp, True),
            ]
            kept_vectors = wh.frame(con, "SELECT * FROM response_embeddings")
            for label, params, with_vectors in settings:
                if not with_vectors:
                    wh.run(con, "DELETE FROM response_embeddings")
                t0 = time.perf_counter()
                rep = dedup_rows(con, params, embedder.model_id)
                seconds = time.perf_counter() - t0
                flagged = conflict_rows(con)
                results.append({"setting": label, "conflict_sets": rep.counts.get("conflict.sets", 0),
                                "rows_flagged": len(flagged), "response_similarity": rep.values.get("conflicts.response_similarity"),
                                "dedup_seconds": round(seconds, 2)})
                if not with_vectors:
                    wh.insert_frame(con, "response_embeddings", kept_vectors)
        reworded = [p for p in pairs if p["jaccard"] < 0.5 <= p["cosine"]]
        head = C.header("bench_conflicts", ["bench_conflicts"] + list(argv if argv is not None else sys.argv[1:]))
        data = {**head, "rows": n, "response_vectors": n_resp, "embedder": section, "settings": results,
                "differing_answer_pairs": len(pairs), "pairs_minhash_calls_different": sum(p["jaccard"] < 0.5 for p in pairs),
                "pairs_cosine_calls_different": sum(p["cosine"] < 0.5 for p in pairs),
                "reworded_pairs_only_minhash_flags": len(reworded), "pairs": pairs}
        md = [f"# Conflicting responses on kor_chatbot ({n:,} clean rows, {n_resp:,} response vectors, {embedder.model_id})",
              "", C.machine_markdown(head), "", C.md_table(results), "",
              f"Differing answers to an exactly repeated question: {len(pairs)} pairs. MinHash Jaccard < 0.5 calls "
              f"{data['pairs_minhash_calls_different']} of them different, response cosine < 0.5 calls "
              f"{data['pairs_cosine_calls_different']}; {len(reworded)} pairs are flagged by MinHash only (cosine >= 0.5).",
              "", "Every pair, by cosine:", "", C.md_table(pairs, ["cosine", "jaccard", "answer_a", "answer_b", "question"])]
        C.write_results(args.out, data, "\n".join(md) + "\n")
        print(json.dumps({k: v for k, v in data.items() if k != "pairs"}, ensure_ascii=False, default=str)[:2000])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
