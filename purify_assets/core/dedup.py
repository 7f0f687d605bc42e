"""Duplicate sets: exact, near (MinHash LSH), semantic (cosine), and conflicts.

CONTRACT (used by ``purify_assets.assets.dedup``): every finder returns a ``polars.DataFrame`` with
the columns of ``DEDUP_COLUMNS``, one row per member of a set, the representative included
(``is_representative`` True, similarity 1.0). ``set_id`` is unique across kinds (prefix with the
kind). ``kind`` is one of exact | near | semantic | conflict. A conflict set (same or nearly the same
instruction, materially different responses) removes nothing: its rows are flagged, not dropped.
Representative rule: longest response, then earliest row id (documented in the README).

- ``exact_duplicates(row_ids, row_hashes, response_lengths)``
- ``minhash_signatures(texts, num_perm=128, shingle="auto", ngram=None)`` -> (n, num_perm) uint64;
  ``compact_signatures`` -> the same values as uint32 (half the memory), accepted everywhere
- ``near_duplicates(row_ids, signatures, threshold=0.5, ...)``
- ``semantic_duplicates(row_ids, vectors, threshold=0.9, ...)``
- ``hybrid_duplicates(row_ids, vectors, signatures, threshold=0.5, weight_cosine=0.6, ...)``
  (paraphrases: fused cosine + Jaccard score, kind ``semantic``)
- ``near_pairs`` / ``semantic_pairs`` / ``hybrid_pairs``: the verified pairs behind the sets (for
  benchmarks); ``lsh_candidate_pairs``: every pair above a Jaccard bound (the hybrid search that
  scales linearly when the fused threshold implies a high Jaccard, see ``hybrid_duplicates``)
- ``conflicting_responses(row_ids, instructions, responses, ...)``
- ``combine_sets(*frames)`` and ``removed_row_ids(sets)``

Rules shared by every finder
----------------------------
* Sets have at least two members; rows in no set are simply absent from the frame.
* Representative of a set: the member with the longest response (``response_lengths``; all 0 when
  not given), ties broken by the earliest row id. Row ids are compared as strings, lexicographically
  (byte / code point order) exactly as given: "row-10" sorts before "row-9", so callers that want
  arrival order should use zero-padded ids (e.g. ``batch/000042``).
* ``set_id`` is ``"<kind>-<representative row id>"``: unique across kinds and stable while the
  representative stays the same.
* ``similarity`` is the member's similarity to its set's representative (1.0 for the representative
  itself): 1.0 for exact sets, estimated Jaccard (fraction of equal MinHash slots) for near sets,
  cosine (or the hybrid score) for semantic sets, response similarity for conflict sets.
* Grouping of near / semantic links (``grouping``): "components" (union-find; a member reached
  through a chain can be less similar to the representative than the threshold, the similarity
  column shows it) or "star" (greedy in representative order: each member is directly similar to
  its representative; no chains, which matters at low, paraphrase-level thresholds where
  components snowball into topic-sized sets).
* Bad input (length mismatch, duplicate row ids, null hashes, wrong shapes) raises ``ValueError``
  naming the argument and the offending row.

Incremental contract (``new_mask``)
-----------------------------------
``near_duplicates`` and ``semantic_duplicates`` take the data of *all* rows kept so far (signatures
and vectors are persisted, so nothing is re-hashed or re-embedded) plus ``new_mask`` (True = row of
the new batch). Only pairs with at least one new row are searched; old rows are never compared with
each other again. Pass the frame this function returned on the previous run as ``previous_sets``:
the old sets are then merged with the new links (union-find) and the function returns the complete,
updated frame of sets for all rows -- with ``grouping="components"`` the same sets,
representatives and similarities a full run over all rows would give (exactly, as long as no LSH
bucket exceeds ``max_bucket`` and, for the approximate semantic index and the hybrid LSH search,
up to their recall); with
"star" the greedy grouping runs over the previous stars plus the new links, which can differ
slightly from a full run (old rows keep their stars). Without ``previous_sets`` only the sets touched by
new links are returned, built from the new links alone; merge them with the old ones through
``combine_sets``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import zlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import polars as pl

from purify_assets.core.clustering import CHUNK  # rows per block of the passes over signatures and vectors
from purify_assets.core.list_cache import is_row_source

DEDUP_SCHEMA = {
    "set_id": pl.String,
    "kind": pl.String,
    "row_id": pl.String,
    "representative_row_id": pl.String,
    "is_representative": pl.Boolean,
    "similarity": pl.Float32,
    "reason": pl.String,
}
DEDUP_COLUMNS = list(DEDUP_SCHEMA)

#: kinds whose non-representative members are removed; conflicts only flag rows.
REMOVING_KINDS = ("exact", "near", "semantic")
#: when a row is a non-representative member of several sets, the set of the first kind here wins.
KIND_PRIORITY = {"exact": 0, "near": 1, "semantic": 2, "conflict": 3}

MERSENNE_61 = np.uint64((1 << 61) - 1)
MAX_HASH_32 = np.uint64((1 << 32) - 1)
#: signature value of a text without any shingle (empty after normalization); such rows never
#: join a near set (they are exact duplicates of each other anyway).
EMPTY_SIGNATURE_VALUE = np.uint64(np.iinfo(np.uint64).max)

DEFAULT_CHAR_NGRAM = 3
DEFAULT_WORD_NGRAM = 3


def compact_signatures(signatures: np.ndarray) -> np.ndarray:
    """MinHash signatures in half the memory: uint32. Every MinHash value is below 2**32, so the
    values are kept exactly; the empty-text marker (``EMPTY_SIGNATURE_VALUE``) becomes 2**32 - 1.
    Every finder here accepts either form and gives the same pairs and sets (keys, bands and
    comparisons depend on the values only); at 1.7M rows x 128 slots the compact form is 0.8 GB
    instead of 1.7 GB. A real slot can equal 2**32 - 1 too (chance 2**-32 for a one-shingle text);
    such a row is then taken for an empty text by the near search, which skips empty texts."""
    sig = np.asarray(signatures)
    if sig.dtype == np.uint32:
        return sig
    if sig.dtype != np.uint64:
        raise ValueError(f"signatures must be uint64 (minhash_signatures) or uint32, got {sig.dtype}")
    return sig.astype(np.uint32)  # keeps the low 32 bits: the values themselves, and 2**32 - 1 for the marker


def _signature_array(signatures: np.ndarray) -> np.ndarray:
    """``signatures`` as a uint32 (compact) or uint64 array, never copied when already one of them."""
    sig = np.asarray(signatures)
    return sig if sig.dtype in (np.uint32, np.uint64) else sig.astype(np.uint64)


def _empty_marker(dtype: np.dtype) -> np.unsignedinteger:
    return np.uint32(np.iinfo(np.uint32).max) if dtype == np.uint32 else EMPTY_SIGNATURE_VALUE


def empty_sets() -> pl.DataFrame:
    return pl.DataFrame(schema=DEDUP_SCHEMA)


# --------------------------------------------------------------------------------------------
# validation and shared helpers
# --------------------------------------------------------------------------------------------

def _as_row_ids(row_ids: Sequence[str]) -> np.ndarray:
    ids = np.asarray(row_ids, dtype=object)
    if ids.ndim != 1:
        raise ValueError(f"row_ids must be one-dimensional, got shape {ids.shape}")
    try:  # polars checks the types in native code: a Python loop over 110k ids took 0.03 s a call
        s = pl.Series("row_id", ids, dtype=pl.String, strict=True)
        bad = s.null_count() > 0
    except (TypeError, pl.exceptions.PolarsError):
        bad = True
    if bad:
        for i, r in enumerate(ids):
            if not isinstance(r, str):
                raise ValueError(f"row_ids[{i}] must be a string, got {type(r).__name__}: {r!r}")
        s = pl.Series("row_id", [str(r) for r in ids], dtype=pl.String)
    dup = s.filter(s.is_duplicated())
    if len(dup):
        raise ValueError(f"row_ids must be unique; duplicated: {dup.unique().head(5).to_list()}")
    return ids


def _check_len(name: str, seq: Any, n: int) -> None:
    if len(seq) != n:
        raise ValueError(f"{name} has {len(seq)} entries but row_ids has {n}")


def _lengths(response_lengths: Sequence[int] | None, n: int) -> np.ndarray:
    if response_lengths is None:
        return np.zeros(n, dtype=np.int64)
    _check_len("response_lengths", response_lengths, n)
    if isinstance(response_lengths, np.ndarray) and response_lengths.dtype.kind in "iu":
        # an integer array has no None or text to check: at 110k rows the loop below took 0.03 s a call
        return response_lengths.astype(np.int64, copy=False)
    out = np.empty(n, dtype=np.int64)
    for i, v in enumerate(response_lengths):
        if v is None:
            out[i] = 0
            continue
        try:
            out[i] = int(v)
        except (TypeError, ValueError):
            raise ValueError(f"response_lengths[{i}] is not an integer: {v!r}") from None
    return out


def _mask(new_mask: Sequence[bool] | np.ndarray | None, n: int) -> np.ndarray | None:
    if new_mask is None:
        return None
    m = np.asarray(new_mask, dtype=bool)
    if m.shape != (n,):
        raise ValueError(f"new_mask must have shape ({n},), got {m.shape}")
    return m


def _components(n: int, edges_i: np.ndarray, edges_j: np.ndarray) -> np.ndarray:
    """Connected-component label per node (union-find over the edges), via scipy."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(edges_i) == 0:
        return np.arange(n, dtype=np.int64)
    g = coo_matrix((np.ones(len(edges_i), dtype=np.int8), (edges_i, edges_j)), shape=(n, n))
    _, labels = connected_components(g, directed=False)
    return labels.astype(np.int64)


def _previous_edges(previous_sets: pl.DataFrame | None, kind: str, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Star edges member -> representative of the given previous sets (rows unknown now are ignored)."""
    if previous_sets is None or previous_sets.height == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    missing = [c for c in ("kind", "row_id", "representative_row_id") if c not in previous_sets.columns]
    if missing:
        raise ValueError(f"previous_sets lacks columns {missing}")
    pos = pl.DataFrame({"row_id": ids.tolist(), "pos": np.arange(len(ids), dtype=np.int64)},
                       schema={"row_id": pl.String, "pos": pl.Int64})
    prev = previous_sets.filter(pl.col("kind") == kind).select("row_id", "representative_row_id")
    e = (prev.join(pos, on="row_id", how="inner")
         .join(pos.rename({"row_id": "representative_row_id", "pos": "rep_pos"}), on="representative_row_id", how="inner"))
    return e["pos"].to_numpy(), e["rep_pos"].to_numpy()


def _sets_from_labels(
    kind: str,
    ids: np.ndarray,
    labels: np.ndarray,
    lengths: np.ndarray,
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
    reason: Callable[[pl.Expr, pl.Expr], pl.Expr],
    keep: np.ndarray | None = None,
) -> pl.DataFrame:
    """Frame of all components with >= 2 members; representative by the documented rule."""
    n = len(ids)
    df = pl.DataFrame(
        {"pos": np.arange(n, dtype=np.int64), "comp": labels, "len": lengths, "row_id": ids.tolist()},
        schema={"pos": pl.Int64, "comp": pl.Int64, "len": pl.Int64, "row_id": pl.String},
    )
    if keep is not None:
        df = df.filter(pl.Series(keep))
    df = df.filter(pl.len().over("comp") >= 2)
    if df.height == 0:
        return empty_sets()
    reps = (df.sort(["comp", "len", "row_id"], descending=[False, True, False])
            .group_by("comp", maintain_order=True).first()
            .select("comp", rep_pos="pos", representative_row_id="row_id"))
    df = df.join(reps, on="comp", how="left")
    member = df["pos"].to_numpy()
    rep = df["rep_pos"].to_numpy()
    sim = np.ones(len(member), dtype=np.float32) if similarity is None else similarity(member, rep).astype(np.float32)
    sim[member == rep] = 1.0
    df = df.with_columns(similarity=pl.Series(sim, dtype=pl.Float32), is_representative=pl.col("pos") == pl.col("rep_pos"))
    size = pl.len().over("comp")
    df = df.with_columns(
        set_id=pl.lit(kind + "-") + pl.col("representative_row_id"),
        kind=pl.lit(kind),
        reason=pl.when(pl.col("is_representative"))
        .then(pl.format("{}: representative of {} rows (longest response, then earliest row id)", pl.lit(kind), size))
        .otherwise(reason(pl.col("representative_row_id"), pl.col("similarity"))),
    )
    return df.sort(["set_id", "is_representative", "row_id"], descending=[False, True, False]).select(
        [pl.col(c).cast(t) for c, t in DEDUP_SCHEMA.items()])


# --------------------------------------------------------------------------------------------
# exact
# --------------------------------------------------------------------------------------------

def exact_duplicates(row_ids: Sequence[str], row_hashes: Sequence[str], response_lengths: Sequence[int]) -> pl.DataFrame:
    """Rows with the same hash (of the normalized text) form one ``exact`` set.

    Grouping is done by polars (no Python loop over rows). Representative: longest response, then
    earliest row id. ``response_lengths`` may be None (then only the row id decides).
    """
    ids = _as_row_ids(row_ids)
    n = len(ids)
    _check_len("row_hashes", row_hashes, n)
    hashes = pl.Series("h", list(row_hashes) if not isinstance(row_hashes, pl.Series) else row_hashes)
    if hashes.dtype != pl.String:
        try:
            hashes = hashes.cast(pl.String)
        except Exception as exc:  # pragma: no cover - polars cast errors are rare
            raise ValueError(f"row_hashes must be strings: {exc}") from exc
    if hashes.null_count():
        i = int(hashes.is_null().arg_true()[0])
        raise ValueError(f"row_hashes[{i}] (row {ids[i]!r}) is null: every row needs a hash")
    lengths = _lengths(response_lengths, n)
    labels = hashes.rank("dense").cast(pl.Int64).to_numpy()
    return _sets_from_labels(
        "exact", ids, labels, lengths, None,
        lambda rep, sim: pl.format("exact: same normalized text as {}", rep),
    )


# --------------------------------------------------------------------------------------------
# MinHash signatures
# --------------------------------------------------------------------------------------------

_PUNCT = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
_CJK_RANGES = (
    (0x1100, 0x11FF), (0x3040, 0x30FF), (0x3130, 0x318F), (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF), (0xA960, 0xA97F), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
)


def normalize_for_shingles(text: str) -> str:
    """NFKC, lower case, punctuation to spaces, whitespace runs collapsed (what gets shingled)."""
    t = unicodedata.normalize("NFKC", text).lower()
    t = _PUNCT.sub(" ", t)
    return _SPACE.sub(" ", t).strip()


def _fmix64(h: np.ndarray) -> np.ndarray:
    """Murmur3's 64-bit finalizer (in place on a uint64 array): spreads bits before truncation."""
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xFF51AFD7ED558CCD)
    h ^= h >> np.uint64(33)
    h *= np.uint64(0xC4CEB9FE1A85EC53)
    h ^= h >> np.uint64(33)
    return h


def _ngram_hashes(units: np.ndarray, starts: np.ndarray, counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hash every n-gram of consecutive units inside each segment (no n-gram crosses segments).

    ``units``: uint64 codes (code points or word hashes) of all segments back to back; every
    segment is at least n long (callers pad). Returns (uint64 shingle hashes < 2**32, count per
    segment).
    """
    total = len(units)
    if total == 0:
        return np.empty(0, np.uint64), np.zeros(len(counts), np.int64)
    ok = counts >= n
    ends = starts + counts
    valid = np.zeros(total + 1, dtype=np.int32)
    # position p starts a valid n-gram iff start <= p <= end - n of its segment
    np.add.at(valid, starts[ok], 1)
    np.add.at(valid, ends[ok] - n + 1, -1)
    valid = np.cumsum(valid[:-1]) > 0
    span = total - n + 1
    h = np.zeros(span, dtype=np.uint64)
    mult = np.uint64(0x100000001B3)
    for k in range(n):
        h *= mult
        h += units[k:k + span] + np.uint64(1)
    h = _fmix64(h)[valid[:span]]
    h &= MAX_HASH_32
    per = np.where(ok, counts - n + 1, 0)
    return h, per


def _minhash(shingles: np.ndarray, per_text: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Signature per text: min over its shingles of ((a*h + b) mod (2**61-1)) & (2**32-1).

    The same permutation family as datasketch (uint64 arithmetic, Mersenne prime modulus,
    truncated to 32 bits), vectorized over shingles. Texts without shingles get
    ``EMPTY_SIGNATURE_VALUE`` everywhere.
    """
    m = len(per_text)
    num_perm = len(a)
    out = np.full((m, num_perm), EMPTY_SIGNATURE_VALUE, dtype=np.uint64)
    has = np.flatnonzero(per_text > 0)
    if len(has) == 0:
        return out
    offsets = np.concatenate([[0], np.cumsum(per_text)])
    ends = offsets[has + 1]
    # walk texts in groups whose shingles fit in `chunk` rows of the (shingles x perms) matrix
    i = 0
    while i < len(has):
        lo = offsets[has[i]]
        j = max(i + 1, int(np.searchsorted(ends, lo + chunk, side="right")))
        grp = has[i:j]
        hi = offsets[grp[-1] + 1]
        # (num_perm, shingles) layout: the min-reduction then runs along contiguous memory
        ph = np.multiply.outer(a, shingles[lo:hi])
        ph += b[:, None]
        # x mod (2**61 - 1) without a division: fold the high bits onto the low ones
        folded = ph & MERSENNE_61
        ph >>= np.uint64(61)
        folded += ph
        np.minimum(folded, folded - MERSENNE_61, out=folded)
        folded &= MAX_HASH_32
        out[grp] = np.minimum.reduceat(folded, offsets[grp] - lo, axis=1).T
        i = j
    return out


def permutations(num_perm: int = 128, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) parameters of the num_perm hash permutations (deterministic for a seed)."""
    gen = np.random.RandomState(seed)
    a = gen.randint(1, int(MERSENNE_61), size=num_perm, dtype=np.uint64)
    b = gen.randint(0, int(MERSENNE_61), size=num_perm, dtype=np.uint64)
    return a, b


def _is_cjk(codes: np.ndarray) -> np.ndarray:
    m = np.zeros(len(codes), dtype=bool)
    for lo, hi in _CJK_RANGES:
        m |= (codes >= lo) & (codes <= hi)
    return m


def shingle_kinds(texts: Sequence[str], cjk_fraction: float = 0.3) -> np.ndarray:
    """"char" for texts whose letters are mostly CJK/Hangul/Kana (>= cjk_fraction), else "word"."""
    norm = [normalize_for_shingles(t or "") for t in texts]
    return _kinds_of_normalized(norm, cjk_fraction)


def _codepoints(norm: list[str]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.fromiter((len(t) for t in norm), dtype=np.int64, count=len(norm))
    codes = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    return codes, lengths


def _kinds_of_normalized(norm: list[str], cjk_fraction: float) -> np.ndarray:
    codes, lengths = _codepoints(norm)
    kinds = np.full(len(norm), "word", dtype=object)
    if len(codes) == 0:
        return kinds
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cjk = _is_cjk(codes).astype(np.int64)
    letters = (codes != 32).astype(np.int64)
    nz = lengths > 0
    cjk_n = np.zeros(len(norm), np.int64)
    let_n = np.zeros(len(norm), np.int64)
    cjk_n[nz] = np.add.reduceat(cjk, starts[nz])
    let_n[nz] = np.add.reduceat(letters, starts[nz])
    frac = np.where(let_n > 0, cjk_n / np.maximum(let_n, 1), 0.0)
    kinds[frac >= cjk_fraction] = "char"
    return kinds


def _char_shingles(norm: list[str], n: int, keep_spaces: bool) -> tuple[np.ndarray, np.ndarray]:
    if not keep_spaces:
        norm = [t.replace(" ", "") for t in norm]
    # a non-empty text shorter than n becomes one shingle: pad it with NULs to length n
    norm = [t + "\0" * (n - len(t)) if 0 < len(t) < n else t for t in norm]
    codes, lengths = _codepoints(norm)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return _ngram_hashes(codes, starts, lengths, n)


def _word_shingles(norm: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[str, int] = {}
    ids: list[int] = []
    lengths = np.zeros(len(norm), dtype=np.int64)
    for i, t in enumerate(norm):
        toks = _WORD.findall(t)
        if 0 < len(toks) < n:
            toks = toks + [""] * (n - len(toks))
        lengths[i] = len(toks)
        ids.extend(vocab.setdefault(tok, len(vocab)) for tok in toks)
    word_hash = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in vocab), dtype=np.uint64, count=len(vocab))
    units = word_hash[np.asarray(ids, dtype=np.int64)] if ids else np.empty(0, np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return _ngram_hashes(units, starts, lengths, n)


def minhash_signatures(
    texts: Sequence[str],
    num_perm: int = 128,
    shingle: str = "auto",
    ngram: int | None = None,
    *,
    char_ngram: int = DEFAULT_CHAR_NGRAM,
    word_ngram: int = DEFAULT_WORD_NGRAM,
    keep_spaces: bool = True,
    seed: int = 1,
    cjk_fraction: float = 0.3,
    batch_rows: int = 20000,
) -> np.ndarray:
    """MinHash signature per text, shape (n, num_perm), dtype uint64 (values < 2**32).

    Text is normalized (``normalize_for_shingles``), then shingled: ``shingle="char"`` uses
    character n-grams (``char_ngram``, default 3; right for Korean/Chinese/Japanese, which have no
    reliable word boundaries), ``"word"`` uses word n-grams (``word_ngram``, default 3), ``"auto"``
    decides per text: char when at least ``cjk_fraction`` of its letters are CJK/Hangul/Kana.
    ``ngram`` overrides both n. ``keep_spaces=False`` drops spaces before char shingling (Korean
    spacing varies a lot between writers). A text shorter than n is one shingle; an empty text gets
    ``EMPTY_SIGNATURE_VALUE`` in every slot. Shingles are hashed with a stable 64-bit rolling hash
    (the same on every machine and run, so signatures can be persisted), then permuted like
    datasketch's MinHash. Vectorized with numpy in batches of ``batch_rows`` texts.
    """
    if shingle not in ("auto", "char", "word"):
        raise ValueError(f"shingle must be 'auto', 'char' or 'word', got {shingle!r}")
    if ngram is not None:
        char_ngram = word_ngram = int(ngram)
    if char_ngram < 1 or word_ngram < 1:
        raise ValueError("n-gram sizes must be >= 1")
    if num_perm < 2:
        raise ValueError("num_perm must be >= 2")
    texts = list(texts)
    for i, t in enumerate(texts):
        if t is not None and not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be a string or None, got {type(t).__name__}")
    a, b = permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint64)
    for lo in range(0, len(texts), batch_rows):
        norm = [normalize_for_shingles(t) if t else "" for t in texts[lo:lo + batch_rows]]
        if shingle == "auto":
            kinds = _kinds_of_normalized(norm, cjk_fraction)
        else:
            kinds = np.full(len(norm), shingle, dtype=object)
        for kind in ("char", "word"):
            idx = np.flatnonzero(kinds == kind)
            if len(idx) == 0:
                continue
            sub = [norm[i] for i in idx]
            if kind == "char":
                sh, per = _char_shingles(sub, char_ngram, keep_spaces)
            else:
                sh, per = _word_shingles(sub, word_ngram)
            out[lo + idx] = _minhash(sh, per, a, b)
    return out


# --------------------------------------------------------------------------------------------
# near duplicates: banded LSH over the signature matrix
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def lsh_params(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows per band) minimizing the weighted false positive + false negative areas of the
    S-curve ``1 - (1 - s**r)**b`` around ``threshold`` (the criterion datasketch uses)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    best, best_err = (1, num_perm), np.inf
    lo_s = np.linspace(0.0, threshold, 201)
    hi_s = np.linspace(threshold, 1.0, 201)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - lo_s ** rows) ** bands, lo_s)
            fn = np.trapezoid((1 - hi_s ** rows) ** bands, hi_s)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def _mix_columns(sig: np.ndarray) -> np.ndarray:
    """One uint64 key per row from a block of signature columns."""
    h = np.full(sig.shape[0], 0x9E3779B97F4A7C15, dtype=np.uint64)
    for k in range(sig.shape[1]):
        h ^= sig[:, k]
        h = _fmix64(h)
    return h


#: fixed odd multipliers for ``_row_keys`` (deterministic, so keys are the same in every run)
_KEY_MULTIPLIERS = np.random.RandomState(20240611).randint(0, 2**62, size=1024, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _row_keys(block: np.ndarray) -> np.ndarray:
    """One uint64 key per row of a block of signature columns: a multiply-add over the row (one
    integer matrix product, wrapping modulo 2**64), then Murmur's finalizer. About 15x faster
    than ``_mix_columns``; equal rows always get equal keys, and the rare unequal rows sharing a
    key only cost an extra candidate (every key match is checked on the slots themselves)."""
    if block.shape[1] > len(_KEY_MULTIPLIERS):
        return _mix_columns(block)
    return _fmix64(block.astype(np.uint64, copy=False) @ _KEY_MULTIPLIERS[:block.shape[1]])


def _band_keys(sig: np.ndarray, nodes: np.ndarray, bands: int, rows: int,
               budget_bytes: int = 64 << 20) -> Iterator[tuple[int, np.ndarray]]:
    """(band, the ``_row_keys`` of band ``band`` for the signature rows ``nodes``), band by band.

    Several bands are keyed per pass over the rows, each block of rows gathered whole (``np.take``
    of contiguous rows) and keyed for all of those bands at once: taking a band's few columns of
    every row one band at a time cost 0.6 s of a 100k-row incremental search (32 strided gathers),
    most of the LSH step. The keys of the bands of one pass are held together: at most
    ``budget_bytes`` (one band at the least): 100k rows take every band in one pass, 712k rows 11
    and 1.7M rows 4 bands per pass (the stage's peak is in dedup at those sizes)."""
    n = len(nodes)
    per_pass = max(1, min(bands, budget_bytes // max(8 * n, 1)))
    for lo in range(0, bands, per_pass):
        hi = min(bands, lo + per_pass)
        keys = np.empty((hi - lo, n), dtype=np.uint64)
        for start in range(0, n, CHUNK):
            block = np.take(sig, nodes[start:start + CHUNK], axis=0)[:, lo * rows:hi * rows]
            width = hi - lo
            keys[:, start:start + len(block)] = _row_keys(
                np.ascontiguousarray(block).reshape(len(block) * width, rows)).reshape(len(block), width).T
        for band in range(lo, hi):
            yield band, keys[band - lo]
        del keys


def _sharing_a_key_with(keys: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """Positions of the nodes whose key equals the key of some ``marked`` node (the marked ones
    included), in order. An incremental search only needs the buckets holding a new row: with 10 %
    new rows they are a small part of every band, and a hash lookup finds them without sorting
    the band's keys."""
    wanted = pl.Series(keys[marked], dtype=pl.UInt64)
    return np.flatnonzero(pl.Series(keys, dtype=pl.UInt64).is_in(wanted.implode()).to_numpy())


def _bucket_pairs(keys: np.ndarray, nodes: np.ndarray, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs of nodes sharing a key: all pairs in buckets of up to ``max_bucket``
    members; in larger buckets every member is paired with the first ``max_bucket`` ones."""
    df = pl.DataFrame({"k": keys, "v": nodes}).filter(pl.len().over("k") >= 2)
    if df.height == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    df = df.with_columns(rank=pl.int_range(pl.len()).over("k"))
    right = df.filter(pl.col("rank") < max_bucket).select("k", w="v")
    pairs = (df.select("k", "v").join(right, on="k", how="inner")
             .filter(pl.col("v") != pl.col("w"))
             .select(i=pl.min_horizontal("v", "w"), j=pl.max_horizontal("v", "w")))
    return pairs["i"].to_numpy(), pairs["j"].to_numpy()


def _estimated_jaccard(sig: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    out = np.empty(len(i), dtype=np.float32)
    for lo in range(0, len(i), chunk):
        out[lo:lo + chunk] = (sig[i[lo:lo + chunk]] == sig[j[lo:lo + chunk]]).mean(axis=1)
    return out


def near_pairs(
    signatures: np.ndarray,
    threshold: float = 0.5,
    num_perm: int = 128,
    new_mask: Sequence[bool] | np.ndarray | None = None,
    *,
    bands: int | None = None,
    max_bucket: int = 64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified similar pairs (i, j, estimated Jaccard) from banded LSH over the signature matrix.

    ``bands`` x rows per band are chosen by ``lsh_params`` unless given. Rows with identical
    signatures are collapsed first (thousands of copies of one short text cost one LSH entry); they
    come back as a star (every copy paired with the first one). Candidates are verified on the
    full signatures (estimated Jaccard >= ``threshold``). Buckets of more than ``max_bucket``
    distinct signatures pair each member with the first ``max_bucket`` members only. With
    ``new_mask``, only pairs with at least one new row are returned. Empty texts never pair.
    """
    sig = np.asarray(signatures)
    if sig.ndim != 2:
        raise ValueError(f"signatures must be a 2-D (rows, num_perm) array, got shape {sig.shape}")
    n = sig.shape[0]
    if sig.shape[1] != num_perm:
        raise ValueError(f"signatures have {sig.shape[1]} permutations but num_perm={num_perm}")
    sig = _signature_array(sig)
    new = _mask(new_mask, n)
    if bands is None:
        bands, rows = lsh_params(threshold, num_perm)
    else:
        rows = num_perm // max(bands, 1)
    if bands * rows > num_perm or bands < 1 or rows < 1:
        raise ValueError(f"bands={bands} does not fit num_perm={num_perm}")
    ei: list[np.ndarray] = []
    ej: list[np.ndarray] = []
    # 1) identical signatures -> one node
    cand = np.flatnonzero(sig[:, 0] != _empty_marker(sig.dtype))
    node_new = new[cand] if new is not None else np.ones(len(cand), bool)
    # keys block by block: ``sig[cand]`` at once would copy the whole signature matrix
    keys = np.concatenate([_row_keys(sig[cand[lo:lo + CHUNK]]) for lo in range(0, len(cand), CHUNK)]) \
        if len(cand) else np.empty(0, np.uint64)
    node_df = pl.DataFrame({"key": keys, "pos": cand, "new": node_new},
                           schema={"key": pl.UInt64, "pos": pl.Int64, "new": pl.Boolean})
    firsts = node_df.group_by("key", maintain_order=True).agg(first=pl.col("pos").first(), any_new=pl.col("new").any())
    node_df = node_df.join(firsts.select("key", "first"), on="key", how="left")
    dup = node_df.filter(pl.col("pos") != pl.col("first"))
    if new is not None:
        dup = dup.filter(pl.col("new") | pl.Series(new[dup["first"].to_numpy()]))
    di, dj = dup["pos"].to_numpy(), dup["first"].to_numpy()
    ok = _estimated_jaccard(sig, di, dj) >= 1.0  # guard against key collisions
    ei.append(di[ok])
    ej.append(dj[ok])
    reps = firsts["first"].to_numpy()
    rep_new = firsts["any_new"].to_numpy() if new is not None else None
    # 2) banding over the distinct signatures
    if len(reps) >= 2:
        pi_all: list[np.ndarray] = []
        pj_all: list[np.ndarray] = []
        node = np.arange(len(reps), dtype=np.int64)
        for _band, keys in _band_keys(sig, reps, bands, rows):
            if rep_new is not None:  # only buckets holding a new signature
                sel = _sharing_a_key_with(keys, rep_new)
                pi, pj = _bucket_pairs(keys[sel], node[sel], max_bucket)
            else:
                pi, pj = _bucket_pairs(keys, node, max_bucket)
            if rep_new is not None and len(pi):
                keep = rep_new[pi] | rep_new[pj]
                pi, pj = pi[keep], pj[keep]
            pi_all.append(pi)
            pj_all.append(pj)
        pi = np.concatenate(pi_all)
        pj = np.concatenate(pj_all)
        if len(pi):
            pairs = np.unique(pi * len(reps) + pj)
            pi, pj = reps[pairs // len(reps)], reps[pairs % len(reps)]
            good = _estimated_jaccard(sig, pi, pj) >= threshold
            ei.append(pi[good])
            ej.append(pj[good])
    i = np.concatenate(ei).astype(np.int64)
    j = np.concatenate(ej).astype(np.int64)
    return i, j, _estimated_jaccard(sig, i, j)


def _priority_order(ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Row positions sorted by the representative rule: longest response, then earliest row id."""
    df = pl.DataFrame({"len": lengths, "row_id": ids.tolist()}, schema={"len": pl.Int64, "row_id": pl.String})
    return df.with_row_index("pos").sort(["len", "row_id"], descending=[True, False])["pos"].to_numpy().astype(np.int64)


def _star_labels(n: int, i: np.ndarray, j: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Greedy star grouping: walking rows in representative order, an unassigned row with
    unassigned neighbours becomes a representative and takes those neighbours. Every member is
    then directly linked to its representative (no chains)."""
    from scipy.sparse import coo_matrix

    labels = np.arange(n, dtype=np.int64)
    if len(i) == 0:
        return labels
    adj = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    adj = (adj + adj.T).tocsr()
    indptr, indices = adj.indptr, adj.indices
    assigned = np.full(n, -1, dtype=np.int64)
    involved = np.zeros(n, bool)
    involved[i] = True
    involved[j] = True
    for v in order[involved[order]]:
        if assigned[v] != -1:
            continue
        nb = indices[indptr[v]:indptr[v + 1]]
        nb = nb[assigned[nb] == -1]
        if len(nb):
            assigned[v] = v
            assigned[nb] = v
    has = assigned >= 0
    labels[has] = assigned[has]
    return labels


def _group(kind: str, ids: np.ndarray, lengths: np.ndarray, i: np.ndarray, j: np.ndarray,
           previous_sets: pl.DataFrame | None, new: np.ndarray | None, grouping: str,
           similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
           reason: Callable[[pl.Expr, pl.Expr], pl.Expr]) -> pl.DataFrame:
    n = len(ids)
    pei, pej = _previous_edges(previous_sets, kind, ids)
    i_all = np.concatenate([i, pei]).astype(np.int64)
    j_all = np.concatenate([j, pej]).astype(np.int64)
    if grouping == "components":
        labels = _components(n, i_all, j_all)
    elif grouping == "star":
        labels = _star_labels(n, i_all, j_all, _priority_order(ids, lengths))
    else:
        raise ValueError(f"grouping must be 'components' or 'star', got {grouping!r}")
    keep = None
    if new is not None and previous_sets is None:
        # only the groups touched by a new link
        touched = np.zeros(n, bool)
        touched[i_all] = True
        touched[j_all] = True
        keep_label = np.zeros(n, bool)
        keep_label[labels[touched & (np.bincount(labels, minlength=n)[labels] >= 2)]] = True
        keep = keep_label[labels]
    return _sets_from_labels(kind, ids, labels, lengths, similarity, reason, keep=keep)


def near_duplicates(
    row_ids: Sequence[str],
    signatures: np.ndarray,
    threshold: float = 0.5,
    num_perm: int = 128,
    response_lengths: Sequence[int] | None = None,
    new_mask: Sequence[bool] | np.ndarray | None = None,
    *,
    previous_sets: pl.DataFrame | None = None,
    grouping: str = "components",
    bands: int | None = None,
    max_bucket: int = 64,
) -> pl.DataFrame:
    """``near`` sets from MinHash signatures (``minhash_signatures``): rows whose estimated Jaccard
    is >= ``threshold`` (pairs from ``near_pairs``), grouped by ``grouping``:

    * "components" (default): union-find connected components; a member reached through a chain
      may be less similar to the representative than the threshold (its similarity shows it).
      Incremental runs give exactly the sets of a full run.
    * "star": greedy, in representative order; every member is directly similar to its
      representative (no chains). Incremental runs are greedy over the previous stars plus the
      new links, which can differ from a full run.

    See the module docstring for ``new_mask`` / ``previous_sets``.
    """
    ids = _as_row_ids(row_ids)
    n = len(ids)
    sig = np.asarray(signatures)
    if sig.ndim != 2 or sig.shape[0] != n:
        raise ValueError(f"signatures must have shape ({n}, num_perm), got {sig.shape}")
    sig = _signature_array(sig)
    lengths = _lengths(response_lengths, n)
    new = _mask(new_mask, n)
    i, j, _ = near_pairs(sig, threshold, num_perm, new, bands=bands, max_bucket=max_bucket)
    return _group(
        "near", ids, lengths, i, j, previous_sets, new, grouping,
        lambda m, r: _estimated_jaccard(sig, m, r),
        lambda rep, sim: pl.format("near: estimated Jaccard {} with {} (MinHash LSH, threshold {})",
                                   sim.round(2), rep, pl.lit(threshold)),
    )


# --------------------------------------------------------------------------------------------
# semantic duplicates
# --------------------------------------------------------------------------------------------

def _check_vectors(vectors: np.ndarray, n: int, block: int = CHUNK) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"vectors must have shape ({n}, dim), got {x.shape}")
    for lo in range(0, n, block):  # block by block: a mask of the whole matrix is n x dim bytes
        part = x[lo:lo + block]
        if not np.isfinite(part).all():
            bad = lo + int(np.flatnonzero(~np.isfinite(part).all(axis=1))[0])
            raise ValueError(f"vectors[{bad}] contains NaN or infinity")
    return x


class TooManyPairsError(ValueError):
    """More pairs pass the threshold than ``max_pairs``: the threshold is too low for the vectors."""


def _guard(count: int, max_pairs: int, threshold: float) -> None:
    if count > max_pairs:
        raise TooManyPairsError(
            f"more than {max_pairs:,} pairs have cosine >= {threshold}: the threshold is too low for these "
            f"vectors (every row would join one set); raise the threshold or pass a larger max_pairs")


def _cosines(x: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    out = np.empty(len(i), dtype=np.float32)
    for lo in range(0, len(i), chunk):
        out[lo:lo + chunk] = np.einsum("ij,ij->i", x[i[lo:lo + chunk]], x[j[lo:lo + chunk]])
    return out


def _exact_pairs(x: np.ndarray, threshold: float, queries: np.ndarray, new: np.ndarray | None,
                 block_size: int, max_pairs: int = 20_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (query, j) with cosine >= threshold by blocked matrix products, with their cosines
    taken from the products (not computed a second time).

    Full mode (new is None): each block of queries is compared with the rows after its first one
    only, so smaller blocks skip more of the lower triangle. Incremental: new queries against every
    row; a new-new pair is kept once (j > q), new-old pairs always.
    """
    n = x.shape[0]
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    out_c: list[np.ndarray] = []
    found = 0
    for lo in range(0, len(queries), block_size):
        q = queries[lo:lo + block_size]
        start = int(q[0]) + 1 if new is None else 0
        if start >= n:
            continue
        sims = x[q] @ x[start:].T
        qi, jj = np.nonzero(sims >= threshold)
        cos = sims[qi, jj]
        jj = jj + start
        qq = q[qi]
        if new is None:
            keep = jj > qq
        else:
            keep = (jj != qq) & (~new[jj] | (jj > qq))
        out_i.append(qq[keep])
        out_j.append(jj[keep])
        out_c.append(cos[keep])
        found += int(keep.sum())
        _guard(found, max_pairs, threshold)
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return (np.concatenate(out_i).astype(np.int64), np.concatenate(out_j).astype(np.int64),
            np.concatenate(out_c).astype(np.float32, copy=False))


def _kmeans(x: np.ndarray, k: int, iters: int, seed: int, sample: int = 100_000) -> np.ndarray:
    """Spherical k-means centroids (cosine) on a sample: a few Lloyd iterations in numpy."""
    rng = np.random.default_rng(seed)
    xs = x[rng.choice(len(x), size=min(sample, len(x)), replace=False)]
    c = xs[rng.choice(len(xs), size=k, replace=False)].copy()
    for _ in range(iters):
        assign = _argmax_blocked(xs, c)
        sums = np.zeros_like(c)
        np.add.at(sums, assign, xs)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        empty = norms[:, 0] == 0
        sums[empty] = xs[rng.choice(len(xs), size=int(empty.sum()), replace=False)]
        norms[empty] = 1.0
        c = (sums / norms).astype(np.float32)
    return c


def _argmax_blocked(x: np.ndarray, c: np.ndarray, top: int = 1, block: int = 8192) -> np.ndarray:
    out = np.empty((len(x), top), dtype=np.int64)
    for lo in range(0, len(x), block):
        s = x[lo:lo + block] @ c.T
        if top == 1:
            out[lo:lo + block, 0] = s.argmax(axis=1)
        else:
            out[lo:lo + block] = np.argpartition(-s, top - 1, axis=1)[:, :top]
    return out[:, 0] if top == 1 else out


def _ivf_pairs(x: np.ndarray, threshold: float, queries: np.ndarray, new: np.ndarray | None,
               n_lists: int | None, n_probe: int, seed: int, max_pairs: int = 20_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Approximate pairs with an inverted-file index (SemDeDup-style K-means partitions): every
    row lives in the partition of its nearest centroid, every query searches its ``n_probe``
    nearest partitions exactly. Near-identical vectors almost always share their nearest centroid,
    so recall at high thresholds is close to 1 (measured in bench/bench_dedup.py)."""
    n = x.shape[0]
    k = n_lists or max(8, int(np.sqrt(n) * 1.5))
    cent = _kmeans(x, k, iters=8, seed=seed)
    home = _argmax_blocked(x, cent)
    probes = _argmax_blocked(x[queries], cent, top=min(n_probe, k)).reshape(len(queries), -1)
    members = pl.DataFrame({"list": home, "pos": np.arange(n)}).group_by("list").agg("pos")
    member_of = {int(l): np.sort(np.asarray(p, dtype=np.int64)) for l, p in zip(members["list"], members["pos"])}
    qdf = pl.DataFrame({"list": probes.ravel(), "q": np.repeat(queries, probes.shape[1])}).group_by("list").agg("q")
    out_i: list[np.ndarray] = []
    out_j: list[np.ndarray] = []
    found = 0
    for lst, qs in zip(qdf["list"], qdf["q"]):
        db = member_of.get(int(lst))
        if db is None:
            continue
        qs = np.asarray(qs, dtype=np.int64)
        for lo in range(0, len(qs), 2048):
            q = qs[lo:lo + 2048]
            sims = x[q] @ x[db].T
            qi, jj = np.nonzero(sims >= threshold)
            qq, jj = q[qi], db[jj]
            keep = jj != qq
            if new is not None:
                keep &= ~new[jj] | (jj > qq)
            out_i.append(qq[keep])
            out_j.append(jj[keep])
            found += int(keep.sum())
            _guard(found, 2 * max_pairs, threshold)
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    i = np.concatenate(out_i)
    j = np.concatenate(out_j)
    lo_, hi_ = np.minimum(i, j), np.maximum(i, j)
    if len(lo_):
        p = np.unique(np.stack([lo_, hi_], axis=1), axis=0)
        return p[:, 0], p[:, 1]
    return lo_, hi_


def _usearch_pairs(x: np.ndarray, threshold: float, queries: np.ndarray, new: np.ndarray | None,
                   k: int, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate pairs from a usearch HNSW index: the k nearest neighbours of every query."""
    from usearch.index import Index

    index = Index(ndim=x.shape[1], metric="ip", dtype="f32")
    index.add(np.arange(len(x)), x, threads=threads)
    m = index.search(x[queries], min(k + 1, len(x)), threads=threads)
    keys = np.asarray(m.keys, dtype=np.int64).reshape(len(queries), -1)
    sims = 1.0 - np.asarray(m.distances, dtype=np.float32).reshape(len(queries), -1)
    qq = np.repeat(queries, keys.shape[1])
    jj = keys.ravel()
    ok = (sims.ravel() >= threshold) & (jj >= 0) & (jj != qq) & (jj < len(x))
    if new is not None:
        ok &= ~new[np.clip(jj, 0, len(x) - 1)] | (jj > qq)
    qq, jj = qq[ok], jj[ok]
    if not len(qq):
        return qq, jj
    p = np.unique(np.stack([np.minimum(qq, jj), np.maximum(qq, jj)], axis=1), axis=0)
    return p[:, 0], p[:, 1]


def semantic_pairs(
    vectors: np.ndarray,
    threshold: float = 0.9,
    new_mask: Sequence[bool] | np.ndarray | None = None,
    block_size: int | None = None,
    *,
    method: str = "auto",
    exact_max_rows: int = 50_000,
    n_lists: int | None = None,
    n_probe: int = 3,
    knn: int = 32,
    threads: int = 2,
    seed: int = 0,
    max_pairs: int = 20_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j, cosine) with cosine >= ``threshold`` among L2-normalized rows; see
    ``semantic_duplicates`` for the methods. With ``new_mask`` only pairs with a new row. Raises
    ``TooManyPairsError`` (a ValueError) when more than ``max_pairs`` pairs pass: that happens when
    the threshold is far too low for the embedding model (e.g. English MiniLM on Korean text)."""
    x = _check_vectors(vectors, len(vectors))
    n = x.shape[0]
    if n and np.abs(np.linalg.norm(x[: min(n, 1000)], axis=1) - 1).max() > 1e-2:
        raise ValueError("vectors must be L2-normalized (row norms differ from 1)")
    new = _mask(new_mask, n)
    queries = np.flatnonzero(new) if new is not None else np.arange(n)
    if block_size is None:
        # at most 1,024 queries a block: 4,000 rows in one 4,096 block computed the whole square, in
        # blocks of 1,024 about 60 % of it (0.36 -> 0.24 s for 4,000 x 512, median of 3)
        block_size = int(max(16, min(1024, (16 * 1024 * 1024) // max(n, 1))))
    if method == "auto":
        method = "exact" if n <= exact_max_rows else "ivf"
    if method not in ("exact", "ivf", "usearch"):
        raise ValueError(f"method must be auto, exact, ivf or usearch, got {method!r}")
    if n < 2 or len(queries) == 0:
        i = j = np.empty(0, np.int64)
    elif method == "exact":
        return _exact_pairs(x, threshold, queries, new, block_size, max_pairs)
    elif method == "ivf":
        i, j = _ivf_pairs(x, threshold, queries, new, n_lists, n_probe, seed, max_pairs)
    else:
        i, j = _usearch_pairs(x, threshold, queries, new, knn, threads)
    return i, j, _cosines(x, i, j)


def semantic_duplicates(
    row_ids: Sequence[str],
    vectors: np.ndarray,
    threshold: float = 0.9,
    response_lengths: Sequence[int] | None = None,
    new_mask: Sequence[bool] | np.ndarray | None = None,
    block_size: int | None = None,
    *,
    previous_sets: pl.DataFrame | None = None,
    grouping: str = "components",
    method: str = "auto",
    exact_max_rows: int = 50_000,
    n_lists: int | None = None,
    n_probe: int = 3,
    knn: int = 32,
    threads: int = 2,
    seed: int = 0,
    max_pairs: int = 20_000_000,
) -> pl.DataFrame:
    """``semantic`` sets: rows whose cosine is >= ``threshold``, grouped like ``near_duplicates``
    (``grouping`` "components" or "star").

    ``vectors`` must be L2-normalized (cosine = dot product); they are checked for shape, NaN and
    norm. ``method``: "exact" (blocked matrix products: every pair with cosine >= threshold, memory
    bounded by ``block_size`` x n floats; ``block_size`` None -> about 64 MB per block), "ivf"
    (K-means partitions, each query searched exactly in its ``n_probe`` nearest partitions:
    SemDeDup-style, no extra dependency), "usearch" (HNSW k-NN, ``knn`` neighbours, needs the
    optional ``usearch`` package), "auto" = exact up to ``exact_max_rows`` rows, ivf above.
    Similarity = cosine to the representative. See the module docstring for incremental mode.
    """
    ids = _as_row_ids(row_ids)
    n = len(ids)
    x = _check_vectors(vectors, n)
    lengths = _lengths(response_lengths, n)
    new = _mask(new_mask, n)
    i, j, _ = semantic_pairs(x, threshold, new, block_size, method=method, exact_max_rows=exact_max_rows,
                             n_lists=n_lists, n_probe=n_probe, knn=knn, threads=threads, seed=seed,
                             max_pairs=max_pairs)
    return _group(
        "semantic", ids, lengths, i, j, previous_sets, new, grouping,
        lambda m, r: _cosines(x, m, r),
        lambda rep, sim: pl.format("semantic: cosine {} to {} (threshold {})", sim.round(3), rep, pl.lit(threshold)),
    )


# --------------------------------------------------------------------------------------------
# hybrid candidates from MinHash LSH alone (used when the fused threshold implies a high Jaccard)
# --------------------------------------------------------------------------------------------

def hybrid_bounds(threshold: float, weight_cosine: float) -> tuple[float, float]:
    """(lowest cosine, lowest estimated Jaccard) a pair can have and still reach
    ``weight_cosine * cosine + (1 - weight_cosine) * Jaccard >= threshold`` (each of the two is at
    most 1). A weight of 0 or 1 leaves the ignored score without a bound (-inf)."""
    w = float(weight_cosine)
    cos_min = (threshold - (1.0 - w)) / w if w > 0 else -np.inf
    jac_min = (threshold - w) / (1.0 - w) if w < 1 else -np.inf
    return cos_min, jac_min


def recall_lsh_params(jaccard: float, num_perm: int, miss_rate: float = 1e-3) -> tuple[int, int]:
    """(bands, rows per band) for a candidate search that must not lose pairs: the longest bands
    (fewest accidental candidates) for which a pair exactly at ``jaccard`` shares no band with
    probability ``(1 - jaccard**rows)**bands <= miss_rate``. Pairs above the bound are missed far
    less often, and with ``bands`` disjoint bands a pair whose signatures differ in fewer than
    ``bands`` slots always shares one (pigeonhole)."""
    if not 0.0 < jaccard <= 1.0:
        raise ValueError(f"jaccard must be in (0, 1], got {jaccard}")
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if (1.0 - jaccard ** rows) ** bands <= miss_rate:
            return bands, rows
    return num_perm, 1


def _signature_groups(sig: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Rows with identical signatures share a group: (group per row, first row of each group).

    Groups are keyed by a 64-bit mix of the signature and then checked slot by slot, so a key
    collision only splits a group (both halves still meet in every LSH band)."""
    n = sig.shape[0]
    key = np.concatenate([_row_keys(sig[lo:lo + chunk]) for lo in range(0, n, chunk)]) if n else np.empty(0, np.uint64)
    df = pl.DataFrame({"key": key, "pos": np.arange(n, dtype=np.int64)}, schema={"key": pl.UInt64, "pos": pl.Int64})
    group = np.array(df.select(pl.col("key").rank("dense").cast(pl.Int64) - 1).to_series().to_numpy())
    n_groups = int(group.max()) + 1 if n else 0
    first = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(first, group, np.arange(n, dtype=np.int64))
    others = np.flatnonzero(first[group] != np.arange(n))
    bad: list[np.ndarray] = []
    for lo in range(0, len(others), chunk):
        o = others[lo:lo + chunk]
        differs = (sig[o] != sig[first[group[o]]]).any(axis=1)
        bad.append(o[differs])
    bad_rows = np.concatenate(bad) if bad else np.empty(0, np.int64)
    if len(bad_rows):  # 64-bit key collision: such rows get groups of their own
        group[bad_rows] = n_groups + np.arange(len(bad_rows))
        first = np.concatenate([first, bad_rows])
    return group, first


def _expand_group_pairs(ga: np.ndarray, gb: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs behind group pairs: every member of ``ga`` with every member of ``gb``, plus every
    pair inside each group of two or more rows. Returned as (smaller row, larger row)."""
    n = len(group)
    members = pl.DataFrame({"g": group, "pos": np.arange(n, dtype=np.int64)}, schema={"g": pl.Int64, "pos": pl.Int64})
    multi = members.filter(pl.len().over("g") >= 2)
    inside = (multi.join(multi.rename({"pos": "other"}), on="g", how="inner")
              .filter(pl.col("pos") < pl.col("other")).select(i="pos", j="other"))
    gp = pl.DataFrame({"ga": ga, "gb": gb}, schema={"ga": pl.Int64, "gb": pl.Int64})
    across = (gp.join(members.rename({"g": "ga", "pos": "i"}), on="ga", how="inner")
              .join(members.rename({"g": "gb", "pos": "j"}), on="gb", how="inner")
              .select(i=pl.min_horizontal("i", "j"), j=pl.max_horizontal("i", "j")))
    both = pl.concat([inside, across])
    return both["i"].to_numpy(), both["j"].to_numpy()


def _bucket_runs(keys: np.ndarray, cap: int | None, wanted: np.ndarray | None, chunk: int):
    """Pairs of positions sharing a key, in chunks of about ``chunk`` pairs: (a, b) node arrays.

    Nodes are sorted by key; each node is paired with the members after it in its run of equal
    keys (all of them, or the next ``cap`` when given), so every pair comes once per call.
    ``wanted`` (bool per node) keeps only runs holding at least one wanted node."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    m = len(k)
    if m < 2:
        return
    starts = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
    lengths = np.diff(np.append(starts, m))
    run_end = np.repeat(starts + lengths, lengths)
    after = run_end - 1 - np.arange(m)
    if wanted is not None:
        run_of = np.repeat(np.arange(len(starts)), lengths)
        run_wanted = np.zeros(len(starts), bool)
        np.logical_or.at(run_wanted, run_of, wanted[order])
        after[~run_wanted[run_of]] = 0
    if cap is not None:
        np.minimum(after, cap, out=after)
    pos = np.flatnonzero(after > 0)
    if len(pos) == 0:
        return
    counts = after[pos]
    done = np.cumsum(counts)
    lo = 0
    while lo < len(pos):
        hi = max(lo + 1, int(np.searchsorted(done, done[lo] - counts[lo] + chunk, side="right")))
        c = counts[lo:hi]
        left = np.repeat(pos[lo:hi], c)
        step = np.arange(len(left)) - np.repeat(np.cumsum(c) - c, c)
        yield order[left], order[left + 1 + step]
        lo = hi


def lsh_candidate_pairs(
    signatures: np.ndarray,
    jaccard: float,
    new_mask: Sequence[bool] | np.ndarray | None = None,
    *,
    bands: int | None = None,
    max_bucket: int | None = 4096,
    miss_rate: float = 1e-3,
    chunk: int = 1 << 18,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row pair (i < j, estimated Jaccard) whose estimated Jaccard is >= ``jaccard``, up to the
    LSH miss rate; the candidate search of ``hybrid_duplicates(candidates="lsh")``.

    Unlike ``near_pairs`` (which links copies of one signature as a star, enough for components),
    every pair is returned, copies included, because the hybrid score also depends on each row's
    vector. Rows with identical signatures are searched once and expanded at the end. Bands come
    from ``recall_lsh_params`` unless ``bands`` is given. Within a band bucket every pair of
    distinct signatures is checked, except in buckets of more than ``max_bucket`` signatures,
    where each is paired with the next ``max_bucket`` only (None: no limit; a guard against
    pathological data such as thousands of texts made of the same few shingles, which NSMC does
    not reach: its largest bucket at 1.7M rows holds ~2,200). Bucket pairs are first screened on
    one byte per slot (a slot equal in full is equal in its low byte, so nothing is lost), the
    survivors are de-duplicated across bands and then checked on the full signatures.
    Memory stays bounded by ``chunk`` pairs at a time. With ``new_mask`` only buckets holding a
    new row are expanded and only pairs with a new row are returned.
    """
    sig = np.asarray(signatures)
    if sig.ndim != 2:
        raise ValueError(f"signatures must be a 2-D (rows, num_perm) array, got shape {sig.shape}")
    sig = _signature_array(sig)
    n, num_perm = sig.shape
    new = _mask(new_mask, n)
    if bands is None:
        bands, rows = recall_lsh_params(jaccard, num_perm, miss_rate)
    else:
        rows = num_perm // max(int(bands), 1)
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise ValueError(f"bands={bands} does not fit num_perm={num_perm}")
    if n < 2 or (new is not None and not new.any()):
        e = np.empty(0, np.int64)
        return e, e, np.empty(0, np.float32)
    group, first = _signature_groups(sig)
    n_groups = len(first)
    group_new = None
    if new is not None:
        group_new = np.zeros(n_groups, bool)
        group_new[group[new]] = True
    # one byte per slot of each distinct signature for the screening pass (no copy of the signatures)
    low = np.empty((n_groups, num_perm), dtype=np.uint8)
    for lo in range(0, n_groups, CHUNK):
        low[lo:lo + CHUNK] = sig[first[lo:lo + CHUNK]] & 0xFF
    need = int(np.ceil(jaccard * num_perm - 1e-9))
    found: list[np.ndarray] = []
    for _band, keys in _band_keys(sig, first, bands, rows):
        # with new rows, only buckets holding one: the same runs, in the same order, as over every key
        sel = _sharing_a_key_with(keys, group_new) if group_new is not None else None
        runs = _bucket_runs(keys, max_bucket, None, chunk) if sel is None else \
            ((sel[a], sel[b]) for a, b in _bucket_runs(keys[sel], max_bucket, group_new[sel], chunk))
        for a, b in runs:
            if group_new is not None:
                keep = group_new[a] | group_new[b]
                a, b = a[keep], b[keep]
            close = (low[a] == low[b]).sum(axis=1) >= need
            a, b = a[close], b[close]
            found.append(np.minimum(a, b) * n_groups + np.maximum(a, b))
        if len(found) > 64:  # a close pair shares many bands: fold the repeats now and then
            found = [np.unique(np.concatenate(found))]
    gkeys = np.unique(np.concatenate(found)) if found else np.empty(0, np.int64)
    ga, gb = gkeys // n_groups, gkeys % n_groups
    ok = _estimated_jaccard(sig, first[ga], first[gb]) >= jaccard
    i, j = _expand_group_pairs(ga[ok], gb[ok], group)
    if new is not None and len(i):
        keep = new[i] | new[j]
        i, j = i[keep], j[keep]
    jac = _estimated_jaccard(sig, i, j)
    ok = jac >= jaccard  # pairs inside one group have Jaccard 1; this only re-checks the expansion
    return i[ok], j[ok], jac[ok]


def hybrid_pairs(
    vectors: np.ndarray,
    signatures: np.ndarray,
    threshold: float = 0.5,
    weight_cosine: float = 0.6,
    new_mask: Sequence[bool] | np.ndarray | None = None,
    *,
    candidate_cosine: float = 0.5,
    candidate_jaccard: float = 0.2,
    method: str = "auto",
    candidates: str = "auto",
    lsh_min_jaccard: float = 0.6,
    lsh_bands: int | None = None,
    max_bucket: int | None = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The linked pairs (i < j, fused score) behind ``hybrid_duplicates``; arguments as there."""
    x, sig = _check_hybrid_inputs(vectors, signatures, len(vectors), weight_cosine)
    return _hybrid_pairs(x, sig, threshold, weight_cosine, _mask(new_mask, len(x)), candidate_cosine=candidate_cosine,
                         candidate_jaccard=candidate_jaccard, method=method, candidates=candidates,
                         lsh_min_jaccard=lsh_min_jaccard, lsh_bands=lsh_bands, max_bucket=max_bucket)


def _check_hybrid_inputs(vectors: Any, signatures: np.ndarray, n: int,
                         weight_cosine: float) -> tuple[Any, np.ndarray]:
    """``vectors``: an array, or rows gathered when indexed (``list_cache.CachedRows``: the search
    only reads its candidates' vectors; NaN there scores no link instead of raising)."""
    if not is_row_source(vectors):
        x = _check_vectors(vectors, n)
    elif len(vectors) != n:
        raise ValueError(f"vectors must have shape ({n}, dim), got {vectors.shape}")
    else:
        x = vectors
    sig = np.asarray(signatures)
    if sig.ndim != 2 or sig.shape[0] != n:
        raise ValueError(f"signatures must have shape ({n}, num_perm), got {sig.shape}")
    if not 0.0 <= weight_cosine <= 1.0:
        raise ValueError(f"weight_cosine must be in [0, 1], got {weight_cosine}")
    if n and np.abs(np.linalg.norm(x[: min(n, 1000)], axis=1) - 1).max() > 1e-2:
        raise ValueError("vectors must be L2-normalized (row norms differ from 1)")
    return x, sig


def _hybrid_pairs(x: np.ndarray, sig: np.ndarray, threshold: float, weight_cosine: float, new: np.ndarray | None, *,
                  candidate_cosine: float, candidate_jaccard: float, method: str, candidates: str,
                  lsh_min_jaccard: float, lsh_bands: int | None, max_bucket: int | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``hybrid_pairs`` on inputs already checked (``new``: a bool mask or None)."""
    n = len(x)
    _, jac_min = hybrid_bounds(threshold, weight_cosine)
    if candidates == "auto":
        candidates = "lsh" if lsh_min_jaccard <= jac_min <= 1.0 else "union"
    if candidates not in ("lsh", "union"):
        raise ValueError(f"candidates must be auto, lsh or union, got {candidates!r}")
    if candidates == "lsh" and not 0.0 < jac_min <= 1.0:
        raise ValueError(f"candidates='lsh' needs a Jaccard bound in (0, 1]; threshold {threshold} with weight "
                         f"{weight_cosine} gives {jac_min:.3f}: use candidates='union'")
    if candidates == "lsh":
        # the small margin keeps pairs that only float rounding of the score could lift over the threshold
        i, j, jac = lsh_candidate_pairs(sig, max(jac_min - 1e-6, 1e-6), new, bands=lsh_bands, max_bucket=max_bucket)
        cos = _cosines(x, i, j)
        keep = (cos >= candidate_cosine) | (jac >= candidate_jaccard)
    else:
        if not isinstance(x, np.ndarray):  # a range search reads every vector
            x = x[:]
        ci, cj, _ = semantic_pairs(x, candidate_cosine, new, method=method)
        ni, nj, _ = near_pairs(sig, candidate_jaccard, sig.shape[1], new)
        i = np.concatenate([ci, ni]).astype(np.int64)
        j = np.concatenate([cj, nj]).astype(np.int64)
        if len(i):
            keys = np.unique(np.minimum(i, j) * n + np.maximum(i, j))
            i, j = keys // n, keys % n
        cos = _cosines(x, i, j)
        jac = _estimated_jaccard(sig, i, j)
        keep = np.ones(len(i), bool)
    fused = weight_cosine * cos + (1 - weight_cosine) * jac
    keep &= fused >= threshold
    return i[keep], j[keep], fused[keep]


def hybrid_duplicates(
    row_ids: Sequence[str],
    vectors: np.ndarray,
    signatures: np.ndarray,
    threshold: float = 0.5,
    weight_cosine: float = 0.6,
    response_lengths: Sequence[int] | None = None,
    new_mask: Sequence[bool] | np.ndarray | None = None,
    *,
    previous_sets: pl.DataFrame | None = None,
    grouping: str = "star",
    candidate_cosine: float = 0.5,
    candidate_jaccard: float = 0.2,
    method: str = "auto",
    candidates: str = "auto",
    lsh_min_jaccard: float = 0.6,
    lsh_bands: int | None = None,
    max_bucket: int | None = 4096,
) -> pl.DataFrame:
    """Paraphrase sets from a fused score: ``weight_cosine * cosine + (1 - weight_cosine) *
    estimated Jaccard >= threshold`` (kind ``semantic``; the reason says "hybrid").

    A pair is linked when its score reaches ``threshold`` and it is a candidate: cosine >=
    ``candidate_cosine`` or estimated Jaccard >= ``candidate_jaccard``. Two searches find them
    (``candidates``), with the same links up to the recall of their approximate parts:

    * "union": a cosine range search at ``candidate_cosine`` (``semantic_pairs`` with ``method``)
      plus MinHash LSH at ``candidate_jaccard`` (``near_pairs``), then both scores for every
      candidate. Works for any setting, but on short, similar texts the range search can return
      huge neighbour lists (4.2M pairs at cosine >= 0.7 for 100k NSMC reviews with the benchmark's
      stand-in vectors, 0.07 % of them linked; more than 40M at 378k rows) and grows faster than n.
    * "lsh": as neither score exceeds 1, a linked pair has estimated Jaccard >= ``(threshold -
      weight_cosine) / (1 - weight_cosine)`` (``hybrid_bounds``). ``lsh_candidate_pairs`` returns
      every pair above that bound (bands tuned for recall: miss probability <= 1e-3 exactly at the
      bound, far lower above it, none when fewer slots differ than there are bands), and only
      those are scored. Its cost follows the number of lexically close pairs, not the size of
      cosine neighbourhoods, and does not depend on the encoder.
    * "auto" (default): "lsh" when that Jaccard bound is at least ``lsh_min_jaccard`` (0.6), else
      "union". The stage's default (threshold 0.85, weight 0.5) has the bound 0.7 and runs "lsh";
      the paraKQC setting below has no Jaccard bound at all and runs "union".

    ``lsh_bands`` / ``max_bucket`` tune the "lsh" search (see ``lsh_candidate_pairs``).
    Measured on paraKQC (10,000 Korean questions, 45,000 paraphrase pairs; bench/results/dedup.md):
    with USE-multilingual vectors and signatures from ``minhash_signatures(texts, ngram=2,
    keep_spaces=False)``, weight 0.6 and threshold 0.5 gave pair F1 0.71, against 0.63 for cosine
    alone (best threshold 0.75), 0.66 for near OR semantic, and 0.47 for MinHash alone.
    Incremental contract as in the module docstring.
    """
    ids = _as_row_ids(row_ids)
    n = len(ids)
    x, sig = _check_hybrid_inputs(vectors, signatures, n, weight_cosine)
    lengths = _lengths(response_lengths, n)
    new = _mask(new_mask, n)
    i, j, _ = _hybrid_pairs(x, sig, threshold, weight_cosine, new, candidate_cosine=candidate_cosine,
                            candidate_jaccard=candidate_jaccard, method=method, candidates=candidates,
                            lsh_min_jaccard=lsh_min_jaccard, lsh_bands=lsh_bands, max_bucket=max_bucket)

    def score(m: np.ndarray, r: np.ndarray) -> np.ndarray:
        # chunked: gathering both rows of millions of candidate pairs at once would need n_pairs x dim floats
        return weight_cosine * _cosines(x, m, r) + (1 - weight_cosine) * _estimated_jaccard(sig, m, r)

    return _group(
        "semantic", ids, lengths, i, j, previous_sets, new, grouping, score,
        lambda rep, sim: pl.format("semantic (hybrid): {} x cosine + {} x Jaccard = {} with {} (threshold {})",
                                   pl.lit(weight_cosine), pl.lit(round(1 - weight_cosine, 3)), sim.round(3), rep,
                                   pl.lit(threshold)),
    )


# --------------------------------------------------------------------------------------------
# conflicts
# --------------------------------------------------------------------------------------------

def conflicting_responses(
    row_ids: Sequence[str],
    instructions: Sequence[str] | np.ndarray,
    responses: Sequence[str] | np.ndarray,
    response_lengths: Sequence[int] | None = None,
    *,
    instruction_threshold: float | None = None,
    max_response_similarity: float | None = None,
    num_perm: int = 128,
) -> pl.DataFrame:
    """``conflict`` sets: the same (or nearly the same) instruction with materially different responses.

    ``instructions`` decides which rows share an instruction:
      * a sequence of strings: hashes of the normalized instruction (+ input): equal = same;
      * a 2-D uint64 array: MinHash signatures, near-same when estimated Jaccard >=
        ``instruction_threshold`` (default 0.8);
      * a 2-D float array: L2-normalized vectors, near-same when cosine >= ``instruction_threshold``
        (default 0.95).
    ``responses`` gives the response similarity: a 2-D float array of L2-normalized vectors
    (cosine), a 2-D uint64 array of MinHash signatures, or a sequence of response texts (MinHash
    signatures are computed). A group of rows sharing an instruction is a conflict set when some
    pair of its responses has similarity < ``max_response_similarity`` (default 0.8 for vectors,
    0.5 for MinHash). The set holds the whole group; similarity = response similarity to the
    representative. Conflict sets remove nothing: ``removed_row_ids`` ignores them and the caller
    keeps the rows, flagged for review.
    """
    ids = _as_row_ids(row_ids)
    n = len(ids)
    lengths = _lengths(response_lengths, n)
    _check_len("instructions", instructions, n)
    _check_len("responses", responses, n)

    # response representation
    if isinstance(responses, np.ndarray) and responses.ndim == 2 and responses.dtype in (np.uint64, np.uint32):
        rsig = responses
        rvec = None
    elif isinstance(responses, np.ndarray) and responses.ndim == 2:
        rvec = _check_vectors(responses, n)
        rsig = None
    else:
        resp_texts = ["" if r is None else r for r in responses]
        rsig = minhash_signatures(resp_texts, num_perm=num_perm)
        rvec = None
    if max_response_similarity is None:
        max_response_similarity = 0.8 if rvec is not None else 0.5

    def rsim(m: np.ndarray, r: np.ndarray) -> np.ndarray:
        if rvec is not None:
            return _cosines(rvec, m, r)
        return _estimated_jaccard(rsig, m, r)

    # instruction groups
    if isinstance(instructions, np.ndarray) and instructions.ndim == 2:
        if instructions.dtype in (np.uint64, np.uint32):
            t = 0.8 if instruction_threshold is None else instruction_threshold
            groups = near_duplicates(ids.tolist(), instructions, threshold=t, num_perm=instructions.shape[1])
        else:
            t = 0.95 if instruction_threshold is None else instruction_threshold
            groups = semantic_duplicates(ids.tolist(), instructions, threshold=t)
        pos = pl.DataFrame({"row_id": ids.tolist(), "pos": np.arange(n)})
        g = groups.join(pos, on="row_id").select("pos", comp=pl.col("set_id").rank("dense").cast(pl.Int64))
        labels = np.arange(n, dtype=np.int64) + n + 1
        labels[g["pos"].to_numpy()] = g["comp"].to_numpy()
    else:
        h = pl.Series("h", list(instructions), dtype=pl.String)
        if h.null_count():
            i = int(h.is_null().arg_true()[0])
            raise ValueError(f"instructions[{i}] (row {ids[i]!r}) is null")
        labels = h.rank("dense").cast(pl.Int64).to_numpy()

    # keep only groups where some pair of responses differs materially
    df = pl.DataFrame({"pos": np.arange(n), "comp": labels}).filter(pl.len().over("comp") >= 2)
    conflict_comps: list[int] = []
    for comp, members in df.group_by("comp").agg("pos").iter_rows():
        m = np.asarray(members, dtype=np.int64)
        if len(m) > 300:  # big groups: compare with the first member only
            a, b = np.full(len(m) - 1, m[0]), m[1:]
        else:
            a, b = np.triu_indices(len(m), k=1)
            a, b = m[a], m[b]
        if (rsim(a, b) < max_response_similarity).any():
            conflict_comps.append(comp)
    keep = np.isin(labels, np.asarray(conflict_comps, dtype=np.int64))
    return _sets_from_labels(
        "conflict", ids, labels, lengths, rsim,
        lambda rep, sim: pl.format("conflict: same instruction as {}, response similarity {} (< {} somewhere in the set); flagged, not removed",
                                   rep, sim.round(2), pl.lit(max_response_similarity)),
        keep=keep,
    )


# --------------------------------------------------------------------------------------------
# combining kinds
# --------------------------------------------------------------------------------------------

def combine_sets(*frames: pl.DataFrame) -> pl.DataFrame:
    """All sets of all kinds in one frame, with each removed row resolved to the row that is kept.

    Returns the ``DEDUP_COLUMNS`` plus ``removed`` (bool) and ``final_representative_row_id``.
    Resolution rule: a row is removed when it is a non-representative member of at least one
    exact, near or semantic set. If it is such a member of several sets, it follows the set of the
    highest-priority kind (exact, then near, then semantic; then higher similarity; then the
    earlier set id). Pointers are followed transitively (a near-duplicate of a row that is itself
    an exact duplicate of X ends at X), so every removed row's ``final_representative_row_id`` is a
    kept row. Because every finder picks representatives by the same total order (longest
    response, then earliest id), the chains cannot loop; a loop (from inconsistent inputs) is
    broken at its smallest row id, which is kept.
    Conflict rows are never removed; their final representative is themselves.
    """
    frames = [f for f in frames if f is not None and f.height > 0]
    if not frames:
        return empty_sets().with_columns(removed=pl.lit(False), final_representative_row_id=pl.lit(None, pl.String)).clear()
    for k, f in enumerate(frames):
        missing = [c for c in DEDUP_COLUMNS if c not in f.columns]
        if missing:
            raise ValueError(f"frame {k} lacks columns {missing}")
    allf = pl.concat([f.select([pl.col(c).cast(t) for c, t in DEDUP_SCHEMA.items()]) for f in frames])
    dup = allf.filter(pl.struct("set_id", "row_id").is_duplicated())
    if dup.height:
        raise ValueError(f"row {dup['row_id'][0]!r} appears twice in set {dup['set_id'][0]!r}: frames overlap")
    edges = (allf.filter(pl.col("kind").is_in(REMOVING_KINDS) & ~pl.col("is_representative"))
             .with_columns(prio=pl.col("kind").replace_strict(KIND_PRIORITY, return_dtype=pl.Int32))
             .sort(["row_id", "prio", "similarity", "set_id"], descending=[False, False, True, False])
             .group_by("row_id", maintain_order=True).first()
             .select("row_id", "representative_row_id"))
    parent = dict(zip(edges["row_id"].to_list(), edges["representative_row_id"].to_list()))
    final: dict[str, str] = {}
    for start in parent:
        path: list[str] = []
        on_path: set[str] = set()
        cur = start
        end = None
        while cur in parent and cur not in final:
            if cur in on_path:  # a loop (inconsistent inputs): keep its smallest row id
                end = min(path[path.index(cur):])
                final[end] = end
                break
            on_path.add(cur)
            path.append(cur)
            cur = parent[cur]
        if end is None:
            end = final.get(cur, cur)
        for p in path:
            if p != end:
                final[p] = end
    removed_ids = [r for r in parent if final.get(r, r) != r]
    fin = pl.DataFrame({"row_id": removed_ids, "final_representative_row_id": [final[r] for r in removed_ids]},
                       schema={"row_id": pl.String, "final_representative_row_id": pl.String})
    out = allf.join(fin, on="row_id", how="left").with_columns(
        removed=pl.col("final_representative_row_id").is_not_null(),
    ).with_columns(final_representative_row_id=pl.coalesce("final_representative_row_id", "row_id"))
    return out.sort(["set_id", "is_representative", "row_id"], descending=[False, True, False])


def removed_row_ids(sets: pl.DataFrame) -> pl.Series:
    """Sorted unique row ids removed by the sets: non-representative members of exact, near and
    semantic sets (conflict sets remove nothing). Accepts one finder's frame or ``combine_sets``
    output."""
    if sets.height == 0:
        return pl.Series("row_id", [], dtype=pl.String)
    if "removed" in sets.columns:
        r = sets.filter(pl.col("removed"))["row_id"]
    else:
        r = sets.filter(pl.col("kind").is_in(REMOVING_KINDS) & ~pl.col("is_representative"))["row_id"]
    return r.unique().sort().rename("row_id")
