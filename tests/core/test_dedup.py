"""Dedup core: exact / near / semantic / conflict sets, incremental mode, combining kinds."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from purify_assets.core import dedup as d

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _ids(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def _set_members(frame: pl.DataFrame) -> set[frozenset[str]]:
    return {frozenset(g["row_id"].to_list()) for _, g in frame.group_by("set_id")}


def _random_texts(rng: np.random.Generator, n: int, words: int = 30) -> list[str]:
    vocab = [f"w{k}" for k in range(5000)]
    return [" ".join(rng.choice(vocab, size=words)) for _ in range(n)]


# ------------------------------------------------------------------ exact

def test_exact_groups_representative_and_reason():
    ids = ["b", "a", "c", "d", "e", "f"]
    hashes = ["h1", "h1", "h2", "h1", "h3", "h3"]
    lengths = [10, 10, 5, 3, 7, 9]
    f = d.exact_duplicates(ids, hashes, lengths)
    assert f.columns == d.DEDUP_COLUMNS
    assert f.schema == pl.Schema(d.DEDUP_SCHEMA)
    assert _set_members(f) == {frozenset({"a", "b", "d"}), frozenset({"e", "f"})}
    reps = dict(zip(f["row_id"], f["representative_row_id"]))
    # h1: a and b tie on length 10 -> earliest id "a"; h3: f has the longer response
    assert reps["b"] == "a" and reps["d"] == "a" and reps["e"] == "f"
    assert set(f.filter(pl.col("is_representative"))["row_id"]) == {"a", "f"}
    assert (f["similarity"] == 1.0).all()
    assert set(f["set_id"]) == {"exact-a", "exact-f"}
    b_reason = f.filter(pl.col("row_id") == "b")["reason"][0]
    assert "exact" in b_reason and "a" in b_reason
    assert d.removed_row_ids(f).to_list() == ["b", "d", "e"]


def test_exact_bad_input_is_named():
    with pytest.raises(ValueError, match="unique"):
        d.exact_duplicates(["a", "a"], ["h", "h"], [1, 1])
    with pytest.raises(ValueError, match="row_hashes has 1"):
        d.exact_duplicates(["a", "b"], ["h"], [1, 1])
    with pytest.raises(ValueError, match=r"row_hashes\[1\].*'b'"):
        d.exact_duplicates(["a", "b"], ["h", None], [1, 1])
    with pytest.raises(ValueError, match=r"response_lengths\[0\]"):
        d.exact_duplicates(["a", "b"], ["h", "h"], ["x", 1])


def test_exact_finds_every_nsmc_duplicate():
    path = DATA / "nsmc" / "nsmc_raw_reviews.jsonl"
    if not path.exists():
        pytest.skip(f"NSMC not found at {path} (../shared/data is absent)")
    reviews = pl.read_ndjson(path, schema={"review": pl.String})["review"].fill_null("").to_list()
    assert len(reviews) == 712_404
    ids = [f"{i:07d}" for i in range(len(reviews))]
    hashes = [hashlib.blake2b(t.encode("utf-8"), digest_size=16).hexdigest() for t in reviews]
    f = d.exact_duplicates(ids, hashes, [len(t) for t in reviews])
    # truth computed independently: every occurrence after the first of a repeated text
    counts = Counter(reviews)
    assert sum(c - 1 for c in counts.values()) == 23_896
    seen: set[str] = set()
    truth = set()
    for i, t in enumerate(reviews):
        if t in seen:
            truth.add(ids[i])
        seen.add(t)
    removed = set(d.removed_row_ids(f).to_list())
    assert removed == truth
    assert f["set_id"].n_unique() == sum(1 for c in counts.values() if c > 1)


# ------------------------------------------------------------------ MinHash

def _char_ngrams(t: str, n: int) -> set[str]:
    t = d.normalize_for_shingles(t)
    return {t[i:i + n] for i in range(len(t) - n + 1)} if len(t) >= n else {t}


def test_signatures_estimate_jaccard_and_are_stable():
    a = "오늘 서울의 날씨는 맑고 기온은 영상 십오도까지 올라가겠습니다"
    b = "오늘 서울 날씨는 맑고 기온은 영상 십오도까지 오르겠습니다"
    c = "完全不同的一句话，关于股票市场的下跌"
    sig = d.minhash_signatures([a, b, c, "", None], num_perm=256)
    assert sig.shape == (5, 256) and sig.dtype == np.uint64
    true_ab = len(_char_ngrams(a, 3) & _char_ngrams(b, 3)) / len(_char_ngrams(a, 3) | _char_ngrams(b, 3))
    est_ab = float((sig[0] == sig[1]).mean())
    assert abs(est_ab - true_ab) < 0.12, (est_ab, true_ab)
    assert (sig[0] == sig[2]).mean() < 0.05
    assert (sig[3] == d.EMPTY_SIGNATURE_VALUE).all() and (sig[4] == d.EMPTY_SIGNATURE_VALUE).all()
    assert (sig[:3] < 2**32).all()
    # stable: same input -> same signature, also in another batch layout
    again = d.minhash_signatures([c, a], num_perm=256, batch_rows=1)
    assert (again[1] == sig[0]).all() and (again[0] == sig[2]).all()


def test_auto_shingling_uses_characters_for_cjk_and_words_otherwise():
    texts = ["안녕하세요 반갑습니다", "今天天气很好", "こんにちは世界", "hello there my friend", "한국어 text mixed 문장입니다", ""]
    assert d.shingle_kinds(texts).tolist() == ["char", "char", "char", "word", "char", "word"]
    # Korean spacing variants share most character 3-grams but no word 3-gram
    ko = ["오늘 날씨가 정말 좋네요 산책하러 갈까요", "오늘날씨가 정말좋네요 산책하러 갈까요"]
    auto = d.minhash_signatures(ko)
    words = d.minhash_signatures(ko, shingle="word")
    nospace = d.minhash_signatures(ko, keep_spaces=False)
    assert (auto[0] == auto[1]).mean() > 0.4
    assert (words[0] == words[1]).mean() < 0.1
    assert (nospace[0] == nospace[1]).all()
    with pytest.raises(ValueError, match="shingle"):
        d.minhash_signatures(ko, shingle="bytes")
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        d.minhash_signatures(["ok", 3])


def test_lsh_params_follow_the_threshold():
    b_lo, r_lo = d.lsh_params(0.3, 128)
    b_hi, r_hi = d.lsh_params(0.9, 128)
    assert b_lo * r_lo <= 128 and b_hi * r_hi <= 128
    assert r_hi > r_lo  # a higher threshold needs longer bands


# ------------------------------------------------------------------ near

def _planted_near(seed: int = 0, n_random: int = 400, n_sets: int = 30):
    rng = np.random.default_rng(seed)
    texts = _random_texts(rng, n_random)
    planted: list[set[int]] = []
    for s in range(n_sets):
        base = texts[s].split()
        members = {s}
        for _ in range(int(rng.integers(1, 4))):
            v = list(base)
            v[int(rng.integers(0, len(v)))] = f"x{int(rng.integers(1_000_000))}"
            members.add(len(texts))
            texts.append(" ".join(v))
        planted.append(members)
    order = rng.permutation(len(texts))  # shuffle so sets are not contiguous
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    texts = [texts[i] for i in order]
    planted = [{int(inv[i]) for i in m} for m in planted]
    return texts, planted


def test_near_finds_planted_sets_exactly():
    texts, planted = _planted_near()
    ids = _ids(len(texts))
    sig = d.minhash_signatures(texts)
    f = d.near_duplicates(ids, sig, threshold=0.5, response_lengths=[len(t) for t in texts])
    assert _set_members(f) == {frozenset(ids[i] for i in m) for m in planted}
    members = f.filter(~pl.col("is_representative"))
    assert (members["similarity"] >= 0.5).all() and (members["similarity"] < 1.0).all()
    assert members["reason"].str.contains("near: estimated Jaccard").all()
    # representative: longest text in its set
    lens = dict(zip(ids, (len(t) for t in texts)))
    for _, g in f.group_by("set_id"):
        rep = g.filter(pl.col("is_representative"))["row_id"][0]
        assert lens[rep] == max(lens[r] for r in g["row_id"])


def test_near_collapses_identical_and_skips_empty():
    texts = ["굿"] * 50 + ["", "", "최고의 영화 정말 재밌어요", "최고의 영화 정말 재밌어요!!"]
    ids = _ids(len(texts))
    f = d.near_duplicates(ids, d.minhash_signatures(texts), threshold=0.8)
    assert _set_members(f) == {frozenset(ids[:50]), frozenset(ids[52:])}
    with pytest.raises(ValueError, match="num_perm"):
        d.near_duplicates(ids, d.minhash_signatures(texts, num_perm=64), num_perm=128)


def test_near_incremental_equals_full_run():
    texts, _ = _planted_near(seed=3)
    ids = _ids(len(texts))
    sig = d.minhash_signatures(texts)
    full = d.near_duplicates(ids, sig, threshold=0.5)
    cut = int(len(ids) * 0.6)
    old = d.near_duplicates(ids[:cut], sig[:cut], threshold=0.5)
    new_mask = np.arange(len(ids)) >= cut
    inc = d.near_duplicates(ids, sig, threshold=0.5, new_mask=new_mask, previous_sets=old)
    assert inc.sort(["set_id", "row_id"]).equals(full.sort(["set_id", "row_id"]))
    # without previous sets: only sets touched by a new row, old-only sets are not searched again
    touched = d.near_duplicates(ids, sig, threshold=0.5, new_mask=new_mask)
    old_only = [m for m in _set_members(old) if m in _set_members(full)]
    assert old_only, "the fixture should have a set made of old rows only"
    assert not (_set_members(touched) & set(old_only))
    for _, g in touched.group_by("set_id"):
        assert any(ids.index(r) >= cut for r in g["row_id"])


def test_star_grouping_has_no_chains():
    # a chain a ~ b ~ c where a and c are not similar: components join all three, star does not
    sig = np.array([[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 1, 1, 1, 3], [5, 5, 5, 1, 1, 1, 1, 3]], dtype=np.uint64)
    ids = ["a", "b", "c"]
    comp = d.near_duplicates(ids, sig, threshold=0.6, num_perm=8, bands=8)
    star = d.near_duplicates(ids, sig, threshold=0.6, num_perm=8, bands=8, grouping="star")
    assert _set_members(comp) == {frozenset(ids)}
    assert comp.filter(pl.col("row_id") == "c")["similarity"][0] < 0.6  # the chain shows
    assert _set_members(star) == {frozenset({"a", "b"})}
    assert (star["similarity"] >= 0.6).all()
    with pytest.raises(ValueError, match="grouping"):
        d.near_duplicates(ids, sig, threshold=0.6, num_perm=8, grouping="cliques")


# ------------------------------------------------------------------ semantic

def _planted_vectors(n: int, dim: int = 64, n_sets: int = 20, seed: int = 0, noise: float = 0.05):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    planted = []
    for s in range(n_sets):
        k = int(rng.integers(2, 5))
        members = rng.choice(np.arange(n_sets, n), size=k - 1, replace=False)
        x[members] = x[s] + noise * rng.normal(size=(k - 1, dim))
        planted.append({s, *members.tolist()})
    # drop overlapping plants (a row reused by two sets)
    seen: set[int] = set()
    clean = []
    for m in planted:
        if not (m & seen):
            clean.append(m)
        seen |= m
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, clean, planted


def test_semantic_exact_finds_planted_sets():
    x, clean, planted = _planted_vectors(500)
    ids = _ids(len(x))
    f = d.semantic_duplicates(ids, x, threshold=0.9, method="exact", block_size=37)
    found = _set_members(f)
    for m in clean:
        assert frozenset(ids[i] for i in m) in found
    assert len(found) == len({frozenset(m) for m in planted})  # nothing else is linked
    sims = f.filter(~pl.col("is_representative"))
    pos = {r: i for i, r in enumerate(ids)}
    expect = [float(x[pos[r]] @ x[pos[p]]) for r, p in zip(sims["row_id"], sims["representative_row_id"])]
    assert np.allclose(sims["similarity"].to_numpy(), expect, atol=1e-5)
    assert sims["reason"].str.starts_with("semantic: cosine").all()
    with pytest.raises(ValueError, match="normalized"):
        d.semantic_duplicates(ids, x * 2)
    with pytest.raises(ValueError, match="shape"):
        d.semantic_duplicates(ids[:-1], x)


def test_semantic_exact_pairs_and_cosines_equal_brute_force_for_any_block_size():
    """The exact search returns the cosines of its block products: every pair at or above the
    threshold once, with its dot product, whatever the block size, in full and incremental mode."""
    x, _, _ = _planted_vectors(300, seed=3)
    sims = x @ x.T
    t = 0.6
    upper = {(i, j) for i, j in zip(*np.nonzero(np.triu(sims >= t, k=1)))}
    new = np.arange(len(x)) >= 200
    wanted_new = {(i, j) for i, j in upper if new[i] or new[j]}
    assert len(upper) > 40 and 0 < len(wanted_new) < len(upper)
    for block in (7, 64, 1024, None):
        i, j, cos = d.semantic_pairs(x, t, block_size=block, method="exact")
        assert {(int(a), int(b)) for a, b in zip(i, j)} == upper and len(i) == len(upper)
        np.testing.assert_allclose(cos, sims[i, j], atol=1e-6)
        assert cos.dtype == np.float32
        i, j, cos = d.semantic_pairs(x, t, new_mask=new, block_size=block, method="exact")
        assert {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist())} == wanted_new and len(i) == len(wanted_new)
        np.testing.assert_allclose(cos, sims[i, j], atol=1e-6)
    i, j, cos = d.semantic_pairs(x[:1], t, method="exact")
    assert len(i) == len(j) == len(cos) == 0


def test_semantic_ivf_matches_exact():
    x, _, _ = _planted_vectors(6000, dim=32, n_sets=200, seed=1, noise=0.1)
    ids = _ids(len(x))
    exact = d.semantic_duplicates(ids, x, threshold=0.85, method="exact")
    ivf = d.semantic_duplicates(ids, x, threshold=0.85, method="ivf", n_probe=3)
    assert exact.height > 300
    pairs = lambda f: {(r, p) for r, p in zip(f["row_id"], f["representative_row_id"])}
    recall = len(pairs(exact) & pairs(ivf)) / len(pairs(exact))
    assert recall > 0.97, recall
    assert pairs(ivf) <= pairs(exact) | pairs(ivf)  # ivf never invents cosine >= t it did not see
    assert (ivf.filter(~pl.col("is_representative"))["similarity"] >= 0.0).all()


def test_semantic_incremental_equals_full_run():
    x, _, _ = _planted_vectors(800, seed=2)
    ids = _ids(len(x))
    full = d.semantic_duplicates(ids, x, threshold=0.9)
    cut = 500
    old = d.semantic_duplicates(ids[:cut], x[:cut], threshold=0.9)
    inc = d.semantic_duplicates(ids, x, threshold=0.9, new_mask=np.arange(len(ids)) >= cut, previous_sets=old)
    assert inc.sort(["set_id", "row_id"]).equals(full.sort(["set_id", "row_id"]))


# ------------------------------------------------------------------ conflicts and combining

def test_conflicts_are_flagged_not_removed():
    ids = ["a", "b", "c", "d", "e"]
    instr = ["i1", "i1", "i2", "i2", "i3"]
    responses = ["Paris is the capital of France.", "The capital of France is Lyon, a large city in the south.",
                 "Two plus two is four.", "Two plus two is four.", "alone"]
    f = d.conflicting_responses(ids, instr, responses)
    assert _set_members(f) == {frozenset({"a", "b"})}
    assert set(f["kind"]) == {"conflict"}
    assert d.removed_row_ids(f).len() == 0
    assert f.filter(~pl.col("is_representative"))["reason"].str.contains("flagged, not removed").all()
    # with vectors for responses, and signatures for near-same instructions
    vec = np.eye(5, dtype=np.float32)
    vec[3] = vec[2]
    sig = d.minhash_signatures(["translate this to french please", "translate this to french please now", "x y z", "x y z", "q"])
    f2 = d.conflicting_responses(ids, sig, vec, instruction_threshold=0.5)
    assert _set_members(f2) == {frozenset({"a", "b"})}
    combined = d.combine_sets(f2)
    assert not combined["removed"].any()


def test_combine_resolves_transitively_with_kind_priority():
    # exact {a, b} keeps a; near {b, c} keeps b (b longer than c); semantic {c, d} keeps c
    ids = ["a", "b", "c", "d", "e"]
    lengths = [9, 9, 5, 1, 1]
    exact = d.exact_duplicates(["a", "b"], ["h", "h"], [9, 9])
    near_sig = np.array([[1] * 8, [1] * 7 + [2]], dtype=np.uint64)
    near = d.near_duplicates(["b", "c"], near_sig, threshold=0.5, num_perm=8, response_lengths=[9, 5], bands=4)
    v = np.array([[1.0, 0.0], [0.999, 0.0447], [0.0, 1.0]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    sem = d.semantic_duplicates(["c", "d", "e"], v, threshold=0.9, response_lengths=[5, 1, 1])
    conflict = d.conflicting_responses(["a", "e"], ["i", "i"], ["yes it is", "no never ever"])
    assert set(near["representative_row_id"]) == {"b"} and set(sem["representative_row_id"]) == {"c"}
    out = d.combine_sets(exact, near, sem, conflict)
    final = dict(zip(out["row_id"], out["final_representative_row_id"]))
    assert final["b"] == "a" and final["c"] == "a" and final["d"] == "a"
    assert d.removed_row_ids(out).to_list() == ["b", "c", "d"]
    assert final["e"] == "e" and final["a"] == "a"
    assert not out.filter(pl.col("row_id") == "e")["removed"].any()
    # a row that is a plain member of two sets follows the higher-priority kind
    ex2 = d.exact_duplicates(["p", "q"], ["h", "h"], [5, 1])
    se2 = d.semantic_duplicates(["q", "r"], np.array([[1, 0], [1, 0]], dtype=np.float32), response_lengths=[1, 5])
    out2 = d.combine_sets(ex2, se2)
    assert dict(zip(out2["row_id"], out2["final_representative_row_id"]))["q"] == "p"
    with pytest.raises(ValueError, match="appears twice"):
        d.combine_sets(exact, exact)


# ------------------------------------------------------------------ real Korean paraphrases

def test_parakqc_slice_sanity():
    path = DATA / "parakqc" / "paraKQC_v1.txt"
    if not path.exists():
        pytest.skip(f"paraKQC not found at {path} (../shared/data is absent)")
    lines = path.read_text(encoding="utf-8").splitlines()[:300]
    texts = [ln.split("\t")[2] for ln in lines]
    group = [i // 10 for i in range(len(texts))]
    ids = _ids(len(texts))
    sig = d.minhash_signatures(texts, ngram=2)
    i, j, sim = d.near_pairs(sig, threshold=0.5)
    assert len(i) > 50, "paraphrases sharing most syllables should be found"
    assert (sim >= 0.5).all()
    precision = sum(group[a] == group[b] for a, b in zip(i, j)) / len(i)
    assert precision > 0.8, precision
    # star sets: every removed row is a paraphrase of its own representative, mostly
    f = d.near_duplicates(ids, sig, threshold=0.5, grouping="star")
    pos = {r: k for k, r in enumerate(ids)}
    members = f.filter(~pl.col("is_representative"))
    assert members.height > 30
    same = sum(group[pos[r]] == group[pos[p]] for r, p in zip(members["row_id"], members["representative_row_id"]))
    assert same / members.height > 0.8


def test_hybrid_combines_cosine_and_jaccard():
    texts = ["오늘 서울 날씨 어때", "오늘 서울 날씨는 어때?", "내일 부산 비 와?", "주식 시장 전망 알려줘"]
    ids = _ids(len(texts))
    sig = d.minhash_signatures(texts, ngram=2)
    # vectors: rows 0 and 2 are semantically close but share few characters; 3 is far from all
    v = np.array([[1, 0, 0], [0.9, 0.1, 0], [0.95, 0, 0.05], [0, 0, 1]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    f = d.hybrid_duplicates(ids, v, sig, threshold=0.75, weight_cosine=0.6)
    assert _set_members(f) == {frozenset(ids[:2])}
    row = f.filter(~pl.col("is_representative"))
    jac = float((sig[0] == sig[1]).mean())
    cos = float(v[0] @ v[1])
    assert row["similarity"][0] == pytest.approx(0.6 * cos + 0.4 * jac, abs=1e-5)
    assert row["reason"][0].startswith("semantic (hybrid)")
    only_cos = d.hybrid_duplicates(ids, v, sig, threshold=0.95, weight_cosine=1.0)
    assert any({ids[0], ids[2]} <= m for m in _set_members(only_cos))  # cosine alone links 0 and 2
    assert not any(ids[3] in m for m in _set_members(only_cos))


def test_semantic_refuses_a_threshold_that_links_everything():
    x = np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (50, 1))
    with pytest.raises(d.TooManyPairsError, match="threshold is too low"):
        d.semantic_pairs(x, 0.5, max_pairs=100)
    assert len(d.semantic_pairs(x, 0.5)[0]) == 50 * 49 // 2


# ------------------------------------------------------------------ hybrid: candidates from MinHash LSH

def _hybrid_fixture(seed: int = 0, n_base: int = 250, dim: int = 24):
    """Texts with planted edits (0-3 replaced words of 40) and vectors with planted noise, so that
    pairs fall on every side of both score bounds; plus copies of one text with different vectors
    and a few empty texts (identical signatures)."""
    rng = np.random.default_rng(seed)
    texts = _random_texts(rng, n_base, words=40)
    vecs = [rng.normal(size=dim) for _ in range(n_base)]
    for s in range(110):
        words = texts[s].split()
        for _ in range(int(rng.integers(1, 4))):
            v = list(words)
            for _ in range(int(rng.integers(0, 4))):
                v[int(rng.integers(len(v)))] = f"x{int(rng.integers(10**6))}"
            texts.append(" ".join(v))
            vecs.append(vecs[s] + rng.uniform(0.05, 1.3) * rng.normal(size=dim))
    for _ in range(4):
        texts.append(texts[0])
        vecs.append(vecs[0] + rng.uniform(0.05, 1.3) * rng.normal(size=dim))
    for _ in range(3):
        texts.append("")
        vecs.append(vecs[1] + 0.2 * rng.normal(size=dim))
    x = np.asarray(vecs, dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], x[order]


def _all_pair_scores(x: np.ndarray, sig: np.ndarray):
    """Brute force over every pair: (i, j, cosine, estimated Jaccard) with i < j."""
    i, j = np.triu_indices(len(x), k=1)
    cos = np.einsum("ij,ij->i", x[i], x[j])
    jac = (sig[i] == sig[j]).mean(axis=1)
    return i, j, cos, jac


def test_hybrid_bounds_and_recall_bands():
    assert d.hybrid_bounds(0.85, 0.5) == pytest.approx((0.7, 0.7))
    cos_min, jac_min = d.hybrid_bounds(0.5, 0.6)
    assert cos_min == pytest.approx(0.1 / 0.6) and jac_min < 0  # paraKQC setting: no Jaccard bound
    assert d.hybrid_bounds(0.9, 1.0)[1] == -np.inf and d.hybrid_bounds(0.9, 0.0)[0] == -np.inf
    bands, rows = d.recall_lsh_params(0.7, 128)
    assert (bands, rows) == (32, 4)
    assert (1 - 0.7 ** rows) ** bands <= 1e-3 < (1 - 0.7 ** (rows + 1)) ** (128 // (rows + 1))
    assert d.recall_lsh_params(0.9, 128)[1] > rows  # a higher bound allows longer bands
    # pigeonhole: differing in fewer slots than there are bands -> always a candidate; one
    # differing slot in every band (estimated Jaccard 0.75) is the arrangement LSH cannot see
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, size=128, dtype=np.uint64)
    spread = base.copy()
    spread[np.arange(bands - 1) * rows] += np.uint64(1)
    every_band = base.copy()
    every_band[np.arange(bands) * rows] += np.uint64(1)
    i, j, jac = d.lsh_candidate_pairs(np.stack([base, spread]), 0.7)
    assert (i.tolist(), j.tolist()) == ([0], [1]) and jac[0] == pytest.approx(1 - (bands - 1) / 128)
    assert len(d.lsh_candidate_pairs(np.stack([base, every_band]), 0.7)[0]) == 0


def test_lsh_candidates_return_every_pair_above_the_bound():
    texts, _ = _hybrid_fixture()
    sig = d.minhash_signatures(texts)
    ai, aj, _, ajac = _all_pair_scores(np.zeros((len(texts), 1), np.float32), sig)
    for bound in (0.6, 0.7, 0.8):
        truth = {(a, b): s for a, b, s in zip(ai.tolist(), aj.tolist(), ajac.tolist()) if s >= bound}
        i, j, jac = d.lsh_candidate_pairs(sig, bound)
        got = dict(zip(zip(i.tolist(), j.tolist()), jac.tolist()))
        assert got.keys() == truth.keys(), bound
        assert all(got[k] == pytest.approx(truth[k]) for k in truth)
    assert len(truth) > 50
    # the empty texts and the copies of one text pair with each other (identical signatures)
    empty = [k for k, t in enumerate(texts) if t == ""]
    assert {(a, b) for a in empty for b in empty if a < b} <= got.keys()
    # small chunks, and a degenerate key function (every row and band one key), change nothing
    i2, j2, _ = d.lsh_candidate_pairs(sig, 0.8, chunk=7)
    assert set(zip(i2.tolist(), j2.tolist())) == got.keys()


def test_lsh_candidates_survive_key_collisions(monkeypatch):
    texts, _ = _hybrid_fixture(seed=4, n_base=120)
    sig = d.minhash_signatures(texts)
    i, j, _ = d.lsh_candidate_pairs(sig, 0.7)
    monkeypatch.setattr(d, "_row_keys", lambda block: np.zeros(block.shape[0], dtype=np.uint64))
    ci, cj, _ = d.lsh_candidate_pairs(sig, 0.7, max_bucket=None)
    assert set(zip(ci.tolist(), cj.tolist())) == set(zip(i.tolist(), j.tolist())) and len(i) > 20
    capped, _, _ = d.lsh_candidate_pairs(sig, 0.7, max_bucket=3)  # one huge bucket, windowed: fewer pairs
    assert 0 < len(capped) < len(ci)


@pytest.mark.parametrize("threshold,weight", [(0.85, 0.5), (0.8, 0.5), (0.9, 0.7)])
def test_hybrid_lsh_path_equals_exact_union_path(threshold, weight):
    texts, x = _hybrid_fixture(seed=1)
    sig = d.minhash_signatures(texts)
    ids = _ids(len(texts))
    lengths = [len(t) for t in texts]
    cos_min, jac_min = d.hybrid_bounds(threshold, weight)
    kw = dict(threshold=threshold, weight_cosine=weight, candidate_cosine=cos_min, candidate_jaccard=jac_min)
    # brute force: every pair whose fused score reaches the threshold
    ai, aj, acos, ajac = _all_pair_scores(x, sig)
    fused = weight * acos + (1 - weight) * ajac
    truth = set(zip(ai[fused >= threshold].tolist(), aj[fused >= threshold].tolist()))
    assert len(truth) > 30
    li, lj, lscore = d.hybrid_pairs(x, sig, candidates="lsh", **kw)
    assert set(zip(li.tolist(), lj.tolist())) == truth
    assert (lscore >= threshold).all()
    ui, uj, _ = d.hybrid_pairs(x, sig, candidates="union", method="exact", **kw)
    assert set(zip(ui.tolist(), uj.tolist())) == truth
    # and the same sets, representatives, similarities and reasons
    for grouping in ("star", "components"):
        lsh = d.hybrid_duplicates(ids, x, sig, response_lengths=lengths, grouping=grouping, candidates="lsh", **kw)
        union = d.hybrid_duplicates(ids, x, sig, response_lengths=lengths, grouping=grouping, candidates="union",
                                    method="exact", **kw)
        assert lsh.height > 0 and lsh.equals(union)


def test_hybrid_lsh_path_keeps_the_candidate_cutoffs():
    # cut-offs stricter than the bounds: a pair must also have cosine >= 0.95 or Jaccard >= 0.9
    texts, x = _hybrid_fixture(seed=2)
    sig = d.minhash_signatures(texts)
    ai, aj, acos, ajac = _all_pair_scores(x, sig)
    ok = (0.5 * acos + 0.5 * ajac >= 0.8) & ((acos >= 0.95) | (ajac >= 0.9))
    truth = set(zip(ai[ok].tolist(), aj[ok].tolist()))
    loose = (0.5 * acos + 0.5 * ajac >= 0.8).sum()
    assert 0 < len(truth) < loose
    i, j, _ = d.hybrid_pairs(x, sig, 0.8, 0.5, candidate_cosine=0.95, candidate_jaccard=0.9, candidates="lsh")
    assert set(zip(i.tolist(), j.tolist())) == truth


def test_hybrid_lsh_incremental_equals_full_run():
    texts, x = _hybrid_fixture(seed=3)
    sig = d.minhash_signatures(texts)
    ids = _ids(len(texts))
    kw = dict(threshold=0.85, weight_cosine=0.5, candidate_cosine=0.7, candidate_jaccard=0.7, candidates="lsh",
              grouping="components")
    full = d.hybrid_duplicates(ids, x, sig, **kw)
    cut = int(len(ids) * 0.7)
    old = d.hybrid_duplicates(ids[:cut], x[:cut], sig[:cut], **kw)
    new_mask = np.arange(len(ids)) >= cut
    inc = d.hybrid_duplicates(ids, x, sig, new_mask=new_mask, previous_sets=old, **kw)
    assert full.height > 0 and inc.sort(["set_id", "row_id"]).equals(full.sort(["set_id", "row_id"]))
    # the pairs searched incrementally are exactly the full run's pairs that touch a new row
    fi, fj, _ = d.hybrid_pairs(x, sig, 0.85, 0.5, candidate_cosine=0.7, candidate_jaccard=0.7)
    ni, nj, _ = d.hybrid_pairs(x, sig, 0.85, 0.5, new_mask, candidate_cosine=0.7, candidate_jaccard=0.7)
    touching = {(a, b) for a, b in zip(fi.tolist(), fj.tolist()) if new_mask[a] or new_mask[b]}
    assert set(zip(ni.tolist(), nj.tolist())) == touching and touching
    assert d.hybrid_pairs(x, sig, 0.85, 0.5, np.zeros(len(ids), bool))[0].size == 0


def test_hybrid_auto_picks_the_search_by_the_jaccard_bound(monkeypatch):
    texts, x = _hybrid_fixture(seed=5, n_base=80)
    sig = d.minhash_signatures(texts)
    calls = []
    real = d.semantic_pairs
    monkeypatch.setattr(d, "semantic_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    d.hybrid_pairs(x, sig, 0.85, 0.5, candidate_cosine=0.7, candidate_jaccard=0.7)  # bound 0.7 -> lsh
    assert calls == []
    d.hybrid_pairs(x, sig, 0.5, 0.6)  # paraKQC setting, no Jaccard bound -> cosine range search
    assert calls == [1]
    with pytest.raises(ValueError, match="Jaccard bound"):
        d.hybrid_pairs(x, sig, 0.5, 0.6, candidates="lsh")
    with pytest.raises(ValueError, match="candidates"):
        d.hybrid_pairs(x, sig, 0.85, 0.5, candidates="ann")
    with pytest.raises(ValueError, match="normalized"):
        d.hybrid_pairs(x * 2, sig, 0.85, 0.5)


def test_minhash_estimates_jaccard_as_well_as_datasketch_on_the_same_shingles():
    """purify hashes shingles itself (vectorized, 7x datasketch's rate on NSMC, bench/bench_dedup.py);
    its Jaccard estimates must be as good as the maintained library's on the same shingle sets."""
    from datasketch import MinHash

    from purify_assets.core.dedup import minhash_signatures, normalize_for_shingles

    rng = np.random.default_rng(7)
    syllables = [chr(c) for c in range(0xAC00, 0xAC00 + 400)]
    truth, ours, peer = [], [], []
    for k in range(40):
        base = "".join(rng.choice(syllables, size=60))
        chars = list(base)
        for pos in rng.choice(60, size=int(k * 1.5), replace=False):  # 0 .. 58 syllables changed
            chars[pos] = rng.choice(syllables)
        a, b = base, "".join(chars)
        sig = minhash_signatures([a, b], num_perm=128, shingle="char", char_ngram=3)
        ours.append(float((sig[0] == sig[1]).mean()))
        sets = []
        for t in (a, b):
            norm = normalize_for_shingles(t)
            sets.append({norm[i:i + 3] for i in range(len(norm) - 2)})
        truth.append(len(sets[0] & sets[1]) / len(sets[0] | sets[1]))
        m = [MinHash(num_perm=128, seed=1) for _ in range(2)]
        for mh, shingles in zip(m, sets):
            for s in shingles:
                mh.update(s.encode("utf-8"))
        peer.append(float(m[0].jaccard(m[1])))
    truth, ours, peer = map(np.asarray, (truth, ours, peer))
    assert truth.min() < 0.1 and truth.max() == 1.0  # the pairs span the whole range
    err_ours, err_peer = np.abs(ours - truth), np.abs(peer - truth)
    # 128 permutations: the standard error is at most 0.044; both stay well inside it on average
    assert err_ours.mean() < 0.025 and err_peer.mean() < 0.025  # measured: 0.016 and 0.018
    assert err_ours.max() < 0.1 and err_ours.mean() < err_peer.mean() + 0.005
    assert np.corrcoef(ours, peer)[0, 1] > 0.98


def test_compact_signatures_give_the_same_pairs_and_sets_in_half_the_memory():
    """The dedup stage holds signatures as uint32: every finder must answer exactly as with uint64,
    empty texts (whose marker changes from 2**64 - 1 to 2**32 - 1) and identical copies included."""
    texts, x = _hybrid_fixture(seed=5)
    texts = texts + ["", "", "   "] + [texts[0]] * 3
    x = np.vstack([x, x[:1].repeat(6, axis=0)])
    sig = d.minhash_signatures(texts)
    small = d.compact_signatures(sig)
    assert small.dtype == np.uint32 and small.nbytes * 2 == sig.nbytes
    assert (small.astype(np.uint64) == np.where(sig == d.EMPTY_SIGNATURE_VALUE, np.uint64(2**32 - 1), sig)).all()
    assert d.compact_signatures(small) is small
    with pytest.raises(ValueError, match="uint64"):
        d.compact_signatures(sig.astype(np.int64))
    ids = _ids(len(texts))
    lengths = [len(t) for t in texts]
    new_mask = np.arange(len(texts)) % 3 == 0
    for mask in (None, new_mask):
        for a, b in zip(d.near_pairs(sig, 0.5, new_mask=mask), d.near_pairs(small, 0.5, new_mask=mask)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(d.lsh_candidate_pairs(sig, 0.6, mask), d.lsh_candidate_pairs(small, 0.6, mask)):
            np.testing.assert_array_equal(a, b)
        near = d.near_duplicates(ids, sig, threshold=0.5, new_mask=mask, response_lengths=lengths)
        assert near.height > 0 and near.equals(d.near_duplicates(ids, small, threshold=0.5, new_mask=mask,
                                                                 response_lengths=lengths))
        for candidates in ("lsh", "union"):
            kw = dict(threshold=0.8, weight_cosine=0.5, candidates=candidates, new_mask=mask, response_lengths=lengths)
            hybrid = d.hybrid_duplicates(ids, x, sig, **kw)
            assert hybrid.height > 0 and hybrid.equals(d.hybrid_duplicates(ids, x, small, **kw))
    # the empty texts pair with each other in neither form of the near search
    empty = {ids[k] for k, t in enumerate(texts) if not t.strip()}
    assert not any(set(g["row_id"].to_list()) & empty for _, g in
                   d.near_duplicates(ids, small, threshold=0.5).group_by("set_id"))


def test_searches_limited_to_new_rows_find_the_full_searchs_pairs_that_touch_one():
    """``near_pairs`` and ``lsh_candidate_pairs`` with a new-row mask look only at the buckets that
    hold a new row; they must find what the full search finds, also where a bucket is larger than
    ``max_bucket`` (the cap follows the same order either way)."""
    rng = np.random.default_rng(11)
    base = ["the quick brown fox jumps over the lazy dog number %d" % (i % 40) for i in range(300)]
    texts = [t + " " + " ".join(rng.choice(["alpha", "beta", "gamma", "delta"], size=rng.integers(0, 3)))
             for t in base]
    sig = d.compact_signatures(d.minhash_signatures(texts))
    new = rng.random(len(texts)) < 0.1

    def touching(pairs):
        i, j, s = pairs
        keep = new[i] | new[j]
        return sorted(zip(np.minimum(i, j)[keep].tolist(), np.maximum(i, j)[keep].tolist(), np.round(s[keep], 6).tolist()))

    def as_list(pairs):
        i, j, s = pairs
        return sorted(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), np.round(s, 6).tolist()))

    for cap in (None, 3):
        full = d.lsh_candidate_pairs(sig, 0.6, None, max_bucket=cap)
        limited = d.lsh_candidate_pairs(sig, 0.6, new, max_bucket=cap)
        assert len(limited[0]) > 0 and as_list(limited) == touching(full)
    for cap in (64, 2):
        # near_pairs links identical signatures through their first copy, so with a mask it keeps the
        # pairs of signature groups holding a new row: every full pair with a new row, and only full pairs
        full = set(as_list(d.near_pairs(sig, 0.5, new_mask=None, max_bucket=cap)))
        limited = set(as_list(d.near_pairs(sig, 0.5, new_mask=new, max_bucket=cap)))
        with_new = {p for p in full if new[p[0]] or new[p[1]]}
        assert with_new and with_new <= limited <= full


def test_hybrid_reads_only_its_candidates_from_lazily_gathered_vectors(tmp_path):
    from purify_assets.core.list_cache import CachedRows

    texts, x = _hybrid_fixture(seed=6)
    sig = d.minhash_signatures(texts)
    ids = _ids(len(texts))
    n = len(ids)
    half = n // 2  # two segment files, the second holding the rows in reverse order
    (tmp_path / "a.data").write_bytes(np.ascontiguousarray(x[:half]).tobytes())
    (tmp_path / "b.data").write_bytes(np.ascontiguousarray(x[half:][::-1]).tobytes())
    maps = {0: np.memmap(tmp_path / "a.data", np.float32, "r", shape=(half, x.shape[1])),
            1: np.memmap(tmp_path / "b.data", np.float32, "r", shape=(n - half, x.shape[1]))}
    segment = np.where(np.arange(n) < half, 0, 1).astype(np.int32)
    offset = np.where(np.arange(n) < half, np.arange(n), n - 1 - np.arange(n))
    gathered = []

    class Counting(CachedRows):
        def __getitem__(self, idx):
            out = super().__getitem__(idx)
            gathered.append(len(out))
            return out

    lazy = Counting(maps, segment, offset, x.shape[1], np.float32)
    np.testing.assert_array_equal(lazy.materialize(), x)
    gathered.clear()
    kw = dict(threshold=0.85, weight_cosine=0.5, candidate_cosine=0.7, candidate_jaccard=0.7, grouping="components")
    lsh = d.hybrid_duplicates(ids, lazy, sig, candidates="lsh", **kw)
    assert lsh.height > 0 and lsh.equals(d.hybrid_duplicates(ids, x, sig, candidates="lsh", **kw))
    # the norm check reads the first 1,000 rows (here all 493); then only candidate pairs' rows, never all
    assert gathered[0] == min(n, 1000) and len(gathered) > 1 and max(gathered[1:]) < n
    union = d.hybrid_duplicates(ids, lazy, sig, candidates="union", method="exact", **kw)  # reads them all
    assert union.equals(lsh)


def test_band_keys_in_passes_equal_each_band_keyed_alone():
    from purify_assets.core.dedup import _band_keys, _row_keys

    rng = np.random.default_rng(5)
    sig = rng.integers(0, 2**32 - 1, size=(9000, 24), dtype=np.uint32)  # more rows than one block
    nodes = rng.permutation(9000)[:8500]
    want = [_row_keys(sig[nodes, b * 3:(b + 1) * 3]) for b in range(8)]
    for budget in (1, 8 * len(nodes) * 3, 1 << 30):  # one band, three bands, every band per pass
        got = list(_band_keys(sig, nodes, 8, 3, budget_bytes=budget))
        assert [b for b, _ in got] == list(range(8))
        for (_, keys), ref in zip(got, want):
            np.testing.assert_array_equal(keys, ref)
