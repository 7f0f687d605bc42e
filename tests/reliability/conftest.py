"""Helpers for the reliability tests: generated batches, a child-process runner, a small pipeline."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from purify_assets.core import warehouse as wh
from purify_assets.core.landing import archive_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]

TOPICS = ["cooking pasta", "repairing bicycles", "tax returns", "learning piano", "planting tomatoes", "writing poems"]


def make_rows(n: int, seed: int = 0, bad_every: int = 0, dup_every: int = 0) -> tuple[bytes, int]:
    """JSONL of ``n`` lines: instruction/output rows on a few topics; every ``bad_every``-th line is
    broken JSON and every ``dup_every``-th row repeats the previous one. Returns (bytes, bad lines)."""
    lines, bad = [], 0
    for i in range(1, n + 1):
        if bad_every and i % bad_every == 0:
            lines.append('{"instruction": "broken line %d' % i)
            bad += 1
            continue
        j = i - 1 if dup_every and i % dup_every == 0 else i
        topic = TOPICS[(j + seed) % len(TOPICS)]
        lines.append(json.dumps({"instruction": f"Give me advice number {j} ({seed}) about {topic}, step by step",
                                 "output": f"Here is advice {j} on {topic}: start small, practise daily, and check your progress."}))
    return ("\n".join(lines) + "\n").encode(), bad


def land_bytes(root: Path, name: str, data: bytes):
    landing = root / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    path = landing / name
    path.write_bytes(data)
    batch, _ = archive_file(path, root / "archive")
    return batch


class HashEmbedder:
    """Deterministic embedder for tests: a unit vector per text from its hash, plus a topic direction
    so rows on the same topic cluster together."""

    def __init__(self, dim: int = 16):
        self.dim = dim
        self.model_id = f"test-hash-{dim}"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim) * 0.2
            for t, topic in enumerate(TOPICS):
                if topic in text:
                    v[t % self.dim] += 3.0
            out[i] = v / np.linalg.norm(v)
        return out


class Child:
    """``python -m tests.reliability._child`` with its stdout read line by line in a thread."""

    def __init__(self, args: dict[str, Any], env: dict[str, str] | None = None):
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability._child", json.dumps(args)], cwd=PROJECT_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()

    @staticmethod
    def _pump(stream, q) -> None:
        for line in stream:
            q.put(line.rstrip("\n"))

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def wait_for(self, prefix: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.seen:
            if line.startswith(prefix):
                return line
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"child never printed {prefix!r}; stdout {self.seen}, stderr:\n{self.stderr[-3000:]}")

    def has(self, prefix: str) -> bool:
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return any(line.startswith(prefix) for line in self.seen)

    def kill9(self) -> int:
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=30)

    def finish(self, timeout: float = 120.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.05)
        self.has("")  # collect the remaining lines
        return rc


@pytest.fixture()
def child_factory():
    children: list[Child] = []

    def make(args: dict[str, Any], env: dict[str, str] | None = None) -> Child:
        c = Child(args, env)
        children.append(c)
        return c

    yield make
    for c in children:  # only the processes this test started
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait(timeout=30)


def batch_counts(con, batch_id: str) -> dict[str, int]:
    out = {}
    for table in ("raw_rows", "quarantine", "clean_rows", "rejected_rows", "batches"):
        out[table] = int(wh.scalar(con, f"SELECT count(*) FROM {table} WHERE batch_id = ?", [batch_id]))
    out["distinct_raw_ids"] = int(wh.scalar(con, "SELECT count(DISTINCT row_id) FROM raw_rows WHERE batch_id = ?", [batch_id]))
    return out


def small_pipeline(root: Path, review: dict[str, Any], n_rows: int = 72, embedder: Any = None,
                   k: int = 3, plant: list[dict] | None = None):
    """Land one batch and run ingest -> clean -> embed -> dedup -> cluster -> measure, without Dagster.

    Returns (warehouse path, params store, params version, embedder)."""
    from purify_assets.core.params import ParamsStore
    from purify_assets.stages.batch import clean_batch, embed_batch, ingest_batch
    from purify_assets.stages.cycle import cluster_rows, dedup_rows, measure_clusters

    data, _ = make_rows(n_rows)
    if plant:
        data += b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in plant)
    batch = land_bytes(root, "pipeline.jsonl", data)
    embedder = embedder or HashEmbedder()
    store = ParamsStore(root / "params.sqlite")
    pv = store.write({"cluster": {"algorithm": "kmeans", "k": k}, "review": review,
                      "dedup": {"near": False, "semantic": False}, "measure": {"silhouette_sample": 500}},
                     source="user", reason="reliability test")
    warehouse = root / "warehouse.duckdb"
    with wh.connect(warehouse, wait_seconds=30) as con:
        ingest_batch(con, batch)
        clean_batch(con, batch.batch_key, pv.params["clean"], "instruction")
        embed_batch(con, batch.batch_key, embedder)
        dedup_rows(con, pv.params["dedup"], embedder.model_id)
        cluster_rows(con, pv, embedder.model_id)
        measure_clusters(con, pv.params["measure"], embedder.model_id)
    return warehouse, store, pv, embedder, batch
