"""Versioned parameters, kept outside the warehouse.

Why outside: the review -> parameters -> clustering edge would make the asset graph cyclic, and the
feedback sensor must never open the DuckDB file (one writer at a time). Parameters therefore live in a
small SQLite file of their own (``PURIFY_HOME/params.sqlite``). Every change is a new immutable
version with a status:

- ``approved``: in force. The newest approved version is the effective parameter set.
- ``proposed``: written by a review under the ``wait`` policy; a person approves or rejects it.
- ``rejected``: a proposal turned down (or rolled back by a guardrail).

Each version records its source (``default`` / ``user`` / ``review``), the reasons, and the
parameter hash that every materialization reports as metadata.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The default parameters. Every section feeds one stage; ``SECTION_FIRST_ASSET`` says which asset
# a change in that section invalidates first (everything downstream of it re-runs too).
DEFAULT_PARAMS: dict[str, Any] = {
    "ingest": {
        "mapping": None,  # e.g. {"instruction": "Q", "output": "A"}; None = auto-detect
    },
    "clean": {},  # CleanConfig defaults (see purify_assets.core.clean)
    "embed": {
        # Multilingual USE v3 (ships its weights, offline): on KoBEST (5 Korean task types) K-means task-type
        # ARI 0.667 vs 0.277 for MiniLM, and the fastest backend measured here (bench/results/embed.md).
        # English-only data: backend "onnx" (MiniLM int8, cosine 0.99 to torch) or "sentence-transformers"
        # with any model name or path; "openai" for any OpenAI-compatible endpoint.
        "backend": "use",
        "model": "multilingual-v3",
        "text_template": "instruction",  # seed 001 embedded the instruction field
        # also embed each response on its own (table response_embeddings): the conflict check then compares
        # responses by meaning, not by shared characters. Costs one more encoder pass over the responses.
        "response_vectors": True,
        "batch_size": 256,
        # use: worker processes sharing large batches (0 = one per usable core, 1 = in the run's own process)
        "workers": 0,
    },
    "dedup": {
        "exact": True,  # same normalized instruction + input + output
        "near": True,  # MinHash LSH over the whole row; character shingles for CJK, words otherwise
        "near_threshold": 0.8,  # estimated Jaccard
        "num_perm": 128,
        "semantic": True,
        # hybrid: w x cosine(embeddings) + (1 - w) x Jaccard(whole row) >= threshold. The default embeds only
        # the instruction (seed 001), so cosine alone would merge rows that share an instruction template
        # but differ in input and output; the row-level Jaccard term keeps those apart.
        # cosine: cosine alone (use when embed.text_template covers the whole row, e.g. "all").
        "semantic_mode": "hybrid",
        "semantic_threshold": 0.85,
        "semantic_weight_cosine": 0.5,
        "conflicts": True,  # same instruction, materially different responses: flagged, not removed
        # instructions match: "exact" (normalized text) or "vector" (cosine >= conflict_instruction_cosine and the
        # same input); "auto" = vector when the embedded text is the instruction
        "conflict_instruction_match": "auto",
        "conflict_instruction_cosine": 0.95,
        # responses differ: cosine of response vectors below this (embed.response_vectors). On kor_chatbot's repeated
        # questions reworded answers score 0.5-0.95 and different advice 0.17-0.5 (bench/bench_conflicts.py).
        "conflict_max_response_cosine": 0.5,
        "conflict_max_response_similarity": 0.5,  # without response vectors: MinHash Jaccard below this
        "incremental": True,  # compare new rows against everything kept, without re-hashing old rows
    },
    "cluster": {
        "algorithm": "kmeans",
        "k": 8,
        "seed": 0,
        # a K-means fit is kept while at most this share of its rows are new, assigned since or gone and no
        # cluster parameter, dropped cluster or model changed: new rows go to the nearest stored centre
        "refit_share": 0.2,
    },
    "project": {
        "methods": ["pca", "umap"],
        "seed": 0,
        # rows each method is fitted on; the rest are placed by their nearest fitted rows (core/projection.py).
        # A seeded UMAP runs single-threaded: 5,000 rows keep a 2-D + 3-D pair near 20 s here.
        "fit_sample": 5000,
        # the fit (and every earlier row's coordinates) is kept while at most this share of its rows changed;
        # new rows are placed onto it, plots are redrawn with the current labels
        "refit_share": 0.2,
    },
    "measure": {
        "silhouette_sample": 5000,
        # K-means k sweep as evidence for "how many clusters": "auto" = k-3 .. k+4 around cluster.k,
        # a list of ks, or [] to skip. Runs on a sample of at most sweep_sample rows.
        "k_sweep": "auto",
        "sweep_sample": 10000,
        "sweep_stability_runs": 2,
        # each k's sweep figures are kept while at most this share of the rows the sweep saw changed
        "sweep_refit_share": 0.2,
    },
    "review": {
        "reviewer": "offline",
        # the last review (verdicts, names, recommendation) is carried over to a new cycle while the parameters,
        # reviewer, prompt and K-means fit are the same and at most this share of the rows it judged are new, gone
        # or in another cluster since (counted against the cycle actually reviewed); 0 reviews every cycle
        "rereview_share": 0.2,
        # clusters removed from the next cycle's input: [{"cycle": 1, "cluster": 3, "name": "..."}]
        "drop_clusters": [],
        # rows a review sent back to cleaning: [{"cluster", "name", "problem_row_ids", "reasons"}]
        "clean_requests": [],
    },
    "cycle": {
        "policy": "auto",  # auto: apply recommendations within the guardrails; wait: human approval
        "max_cycles": 3,
    },
}

SECTION_FIRST_ASSET: dict[str, str] = {
    "ingest": "raw_rows",
    "clean": "clean_rows",
    "embed": "embeddings",
    "dedup": "dedup_sets",
    "cluster": "cluster_labels",
    "project": "projections",
    "measure": "cluster_metrics",
    "review": "cluster_reviews",
    "cycle": "cluster_reviews",
}

# Parameters read by an earlier stage than their section suggests.
PATH_FIRST_ASSET: dict[str, str] = {
    "review.drop_clusters": "cluster_labels",
    "review.clean_requests": "clean_rows",
}

# Global (unpartitioned) assets in graph order; per-batch assets come before them.
PER_BATCH_ASSETS = ["raw_rows", "clean_rows", "embeddings"]
GLOBAL_ASSETS = ["dedup_sets", "cluster_labels", "projections", "cluster_metrics", "cluster_reviews", "purified_dataset"]
DOWNSTREAM: dict[str, list[str]] = {
    "raw_rows": PER_BATCH_ASSETS + GLOBAL_ASSETS,
    "clean_rows": PER_BATCH_ASSETS[1:] + GLOBAL_ASSETS,
    "embeddings": PER_BATCH_ASSETS[2:] + GLOBAL_ASSETS,
    "dedup_sets": GLOBAL_ASSETS,
    "cluster_labels": GLOBAL_ASSETS[1:],
    "projections": ["projections"],
    "cluster_metrics": ["cluster_metrics", "cluster_reviews", "purified_dataset"],
    "cluster_reviews": ["cluster_reviews", "purified_dataset"],
}


class ParamsError(ValueError):
    pass


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``override`` laid over it, recursively for nested dicts."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def params_hash(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"cluster": {"k": 8}}`` -> ``{"cluster.k": 8}``."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted path -> (old value, new value) for every leaf that differs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def affected_assets(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Assets to re-materialize when parameters go from ``old`` to ``new``, in graph order.

    A change of ``cluster.k`` re-runs clustering and everything after it; so does
    ``review.drop_clusters`` (the dropped clusters' rows leave the clustering input; dedup's sets do
    not depend on clusters, and a duplicate of a dropped row went with it); a change in ``clean``
    re-runs every batch from ``clean_rows``; a dedup threshold re-runs from ``dedup_sets``.
    """
    firsts = set()
    for path in diff(old, new):
        special = [asset for prefix, asset in PATH_FIRST_ASSET.items() if path == prefix or path.startswith(prefix + ".")]
        firsts.add(special[0] if special else SECTION_FIRST_ASSET.get(path.split(".")[0], "raw_rows"))
    wanted: set[str] = set()
    for first in firsts:
        wanted.update(DOWNSTREAM[first])
    order = PER_BATCH_ASSETS + GLOBAL_ASSETS
    return [a for a in order if a in wanted]


def parse_value(text: str) -> Any:
    """Parse a CLI value: JSON when it parses (numbers, lists, true/false/null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_path(params: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``params`` with ``section.key`` set; unknown sections are refused."""
    parts = dotted.split(".")
    if len(parts) < 2:
        raise ParamsError(f"parameter path {dotted!r} must look like section.key (e.g. cluster.k)")
    if parts[0] not in DEFAULT_PARAMS:
        raise ParamsError(f"unknown parameter section {parts[0]!r}; sections: {', '.join(DEFAULT_PARAMS)}")
    out = copy.deepcopy(params)
    node = out
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"{dotted!r}: {part!r} holds a value, not a section")
        node = child
    node[parts[-1]] = value
    return out


@dataclass(frozen=True)
class ParamsVersion:
    version: int
    params: dict[str, Any]
    hash: str
    status: str
    source: str
    reason: str
    parent: int | None
    created_at: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "hash": self.hash, "status": self.status, "source": self.source,
            "reason": self.reason, "parent": self.parent, "created_at": self.created_at, "params": self.params,
        }


_SCHEMA = """
CREATE TABLE IF NOT EXISTS params_versions (
    version     INTEGER PRIMARY KEY,
    params_json TEXT NOT NULL,
    hash        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('approved', 'proposed', 'rejected')),
    source      TEXT NOT NULL,
    reason      TEXT NOT NULL DEFAULT '',
    parent      INTEGER,
    created_at  REAL NOT NULL
);
"""


class ParamsStore:
    """Versioned parameter sets in one SQLite file. Safe to read from sensors and CLI concurrently."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        return con

    @staticmethod
    def _row(row: tuple) -> ParamsVersion:
        version, params_json, h, status, source, reason, parent, created = row
        return ParamsVersion(version, json.loads(params_json), h, status, source, reason, parent, created)

    def _select(self, where: str = "", args: tuple = ()) -> list[ParamsVersion]:
        with self._connect() as con:
            rows = con.execute(
                "SELECT version, params_json, hash, status, source, reason, parent, created_at "
                f"FROM params_versions {where} ORDER BY version", args,
            ).fetchall()
        return [self._row(r) for r in rows]

    def history(self) -> list[ParamsVersion]:
        return self._select()

    def get(self, version: int) -> ParamsVersion:
        rows = self._select("WHERE version = ?", (version,))
        if not rows:
            raise ParamsError(f"no parameter version {version} in {self.path}")
        return rows[0]

    def current(self) -> ParamsVersion:
        """The newest approved version; writes version 1 (the defaults) on first use."""
        rows = self._select("WHERE status = 'approved'")
        if rows:
            return rows[-1]
        return self.write(DEFAULT_PARAMS, source="default", reason="initial defaults")

    def latest_approved_version(self) -> int:
        """Cheap read for sensors: 0 when nothing was written yet (no side effects)."""
        with self._connect() as con:
            (v,) = con.execute("SELECT COALESCE(MAX(version), 0) FROM params_versions WHERE status = 'approved'").fetchone()
        return int(v)

    def pending(self) -> list[ParamsVersion]:
        return self._select("WHERE status = 'proposed'")

    def write(self, params: dict[str, Any], *, source: str, reason: str, status: str = "approved",
              parent: int | None = None) -> ParamsVersion:
        full = deep_merge(DEFAULT_PARAMS, params)
        unknown = set(full) - set(DEFAULT_PARAMS)
        if unknown:
            raise ParamsError(f"unknown parameter sections: {sorted(unknown)}")
        h = params_hash(full)
        with self._connect() as con:
            cur = con.execute(
                "INSERT INTO params_versions (params_json, hash, status, source, reason, parent, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (json.dumps(full, sort_keys=True, ensure_ascii=False), h, status, source, reason, parent, time.time()),
            )
            version = int(cur.lastrowid)
        return self.get(version)

    def set_status(self, version: int, status: str) -> ParamsVersion:
        pv = self.get(version)
        if pv.status != "proposed":
            raise ParamsError(f"version {version} is {pv.status}; only a proposed version can be approved or rejected")
        with self._connect() as con:
            con.execute("UPDATE params_versions SET status = ? WHERE version = ?", (status, version))
        return self.get(version)
