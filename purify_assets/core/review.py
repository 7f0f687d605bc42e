"""Cluster reviews: one JSON schema, an offline reviewer and an OpenAI reviewer.

CONTRACT (used by ``purify_assets.assets.review``):

- ``REVIEW_SCHEMA``: JSON schema of one review: ``{"clusters": [{"cluster", "name", "task_type",
  "quality" (1-5), "verdict" (keep|clean|drop|split|merge), "merge_with", "reasons", "problem_row_ids"}],
  "global": {"k_recommendation" (increase|decrease|keep), "suggested_k", "reasons",
  "dedup_recommendation" (null or {"parameter" (near_threshold|semantic_threshold), "value", "reasons"})}}``.
- ``ClusterEvidence``: what a reviewer reads about one cluster (size, metrics, central and boundary
  examples, top terms).
- ``make_reviewer(config) -> Reviewer``; ``Reviewer.review(evidence, global_metrics, dedup=None) -> ReviewOutcome``
  with the validated review dict plus model id, prompt hash, token usage and failures. ``dedup`` is
  the dedup evidence (``DedupEvidence``): thresholds, the least similar pairs dedup removed, and the
  most similar pairs it kept just below the threshold; reviewers may recommend a new threshold.
- ``offline_review(evidence, global_metrics, dedup=None) -> dict``: deterministic, follows the schema.
- ``validate_review(obj) -> dict``: raises ``ReviewSchemaError`` naming the bad field.
- ``propose_params(review, params) -> tuple[dict, list[str]] | None``: the next parameter set the
  recommendations imply and the reasons, or None when the review recommends no change.

Additions beyond the contract (all optional helpers):

- ``top_terms(texts, n)`` / ``cluster_top_terms(texts_by_cluster, n)``: CJK-aware frequent terms
  (the second one scores terms against the other clusters, class-based TF-IDF, so words every
  cluster shares such as "다음" or "the" do not name every cluster).
- ``compute_text_stats(texts, outputs, langs)``: the ``text_stats`` of a ``ClusterEvidence``;
  ``text_stats_by_group`` the same for every cluster of a frame in one pass.
- ``resolve_drop_clusters(entries, clusters)``: which current cluster ids the ``review.drop_clusters``
  entries written by ``propose_params`` refer to (ids change between cycles, see there).
- ``CLUSTER_REVIEW_SCHEMA`` / ``GLOBAL_REVIEW_SCHEMA``: the two halves of ``REVIEW_SCHEMA``; the
  OpenAI reviewer asks for one cluster per request, then for the global recommendation.

Row text is data, never instructions. Every answer, from any reviewer, passes ``validate_review``
before it is used: a row that says "ignore previous instructions and output ..." can at most change
free-text fields (name, reasons); it cannot change the structure, add fields or review a cluster
that does not exist. The offline reviewer derives verdicts from metrics and statistics only; row
text feeds the cluster name and the task-type guess, never the verdict.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from purify_assets.core.retry import retry_after_seconds

VERDICTS = ("keep", "clean", "drop", "split", "merge")
K_RECOMMENDATIONS = ("increase", "decrease", "keep")
DEDUP_THRESHOLDS = ("near_threshold", "semantic_threshold")
DEDUP_THRESHOLD_RANGE = (0.5, 0.99)  # a recommended threshold outside this is clipped by propose_params
OFFLINE_REVIEWER_ID = "offline-v1"

# --------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------

CLUSTER_REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["cluster", "name", "task_type", "quality", "verdict", "merge_with", "reasons", "problem_row_ids"],
    "properties": {
        "cluster": {"type": "integer", "description": "the cluster id, exactly as given in the data"},
        "name": {"type": "string", "description": "a short descriptive name (2-6 words)"},
        "task_type": {"type": "string", "description": "the kind of task the rows are, e.g. summarization"},
        "quality": {"type": "integer", "enum": [1, 2, 3, 4, 5], "description": "1 = unusable, 5 = excellent"},
        "verdict": {"type": "string", "enum": list(VERDICTS)},
        "merge_with": {"type": ["integer", "null"], "description": "the other cluster id when verdict is merge, else null"},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "problem_row_ids": {"type": "array", "items": {"type": "string"}, "description": "row ids (from the data) of problem rows"},
    },
}

DEDUP_RECOMMENDATION_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "additionalProperties": False,
    "required": ["parameter", "value", "reasons"],
    "description": "null, or a new dedup threshold when removed pairs are not duplicates (raise it) or kept pairs are (lower it)",
    "properties": {
        "parameter": {"type": "string", "enum": list(DEDUP_THRESHOLDS)},
        "value": {"type": "number", "description": "the new threshold, between 0.5 and 0.99"},
        "reasons": {"type": "array", "items": {"type": "string"}},
    },
}

GLOBAL_REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["k_recommendation", "suggested_k", "reasons", "dedup_recommendation"],
    "properties": {
        "k_recommendation": {"type": "string", "enum": list(K_RECOMMENDATIONS)},
        "suggested_k": {"type": ["integer", "null"], "description": "the number of clusters to use next, or null"},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "dedup_recommendation": DEDUP_RECOMMENDATION_SCHEMA,
    },
}

REVIEW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["clusters", "global"],
    "properties": {
        "clusters": {"type": "array", "items": CLUSTER_REVIEW_SCHEMA},
        "global": GLOBAL_REVIEW_SCHEMA,
    },
}

_MAX_NAME = 80
_MAX_TASK = 60
_MAX_REASON = 500
_MAX_REASONS = 12
_MAX_PROBLEM_IDS = 50


class ReviewSchemaError(ValueError):
    """A review (or one part of it) does not follow ``REVIEW_SCHEMA``. ``path`` names the field."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class ReviewConfigError(ValueError):
    """The ``review`` parameter section is unusable; the message names the key."""


def _as_int(value: Any, path: str, *, nullable: bool = False) -> int | None:
    if value is None:
        if nullable:
            return None
        raise ReviewSchemaError(path, "is required (got null)")
    if isinstance(value, bool):
        raise ReviewSchemaError(path, f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ReviewSchemaError(path, f"{value!r} is not an integer")


def _as_str(value: Any, path: str, max_len: int) -> str:
    if not isinstance(value, str):
        raise ReviewSchemaError(path, f"{value!r} is not a string")
    return " ".join(value.split())[:max_len]


def _as_str_list(value: Any, path: str, max_items: int, max_len: int) -> list[str]:
    if not isinstance(value, list):
        raise ReviewSchemaError(path, f"expected a list of strings, got {type(value).__name__}")
    out: list[str] = []
    for i, item in enumerate(value):
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            item = str(item)  # row ids given as numbers
        if not isinstance(item, str):
            raise ReviewSchemaError(f"{path}[{i}]", f"{item!r} is not a string")
        item = " ".join(item.split())[:max_len]
        if item and item not in out:
            out.append(item)
    return out[:max_items]


def _check_keys(obj: Any, path: str, schema: dict[str, Any]) -> None:
    if not isinstance(obj, dict):
        raise ReviewSchemaError(path or "review", f"expected an object, got {type(obj).__name__}")
    for key in schema["required"]:
        if key not in obj:
            raise ReviewSchemaError(f"{path}.{key}" if path else key, "is missing")
    extra = sorted(set(obj) - set(schema["properties"]))
    if extra:
        raise ReviewSchemaError(f"{path}.{extra[0]}" if path else extra[0],
                                f"unexpected field (allowed: {', '.join(schema['properties'])})")


def validate_cluster_review(obj: Any, path: str = "cluster", *, expected_cluster: int | None = None,
                            known_clusters: Iterable[int] | None = None, known_row_ids: Iterable[str] | None = None,
                            warnings: list[str] | None = None) -> dict[str, Any]:
    """Validate and normalize one cluster review (one item of ``clusters``)."""
    _check_keys(obj, path, CLUSTER_REVIEW_SCHEMA)
    cluster = _as_int(obj["cluster"], f"{path}.cluster")
    if expected_cluster is not None and cluster != expected_cluster:
        raise ReviewSchemaError(f"{path}.cluster", f"expected cluster {expected_cluster}, got {cluster}")
    name = _as_str(obj["name"], f"{path}.name", _MAX_NAME)
    if not name:
        raise ReviewSchemaError(f"{path}.name", "is empty")
    task_type = _as_str(obj["task_type"], f"{path}.task_type", _MAX_TASK) or "unknown"
    quality = _as_int(obj["quality"], f"{path}.quality")
    if not 1 <= quality <= 5:
        raise ReviewSchemaError(f"{path}.quality", f"{quality} is not in 1..5")
    verdict = obj["verdict"]
    if not isinstance(verdict, str) or verdict.strip().lower() not in VERDICTS:
        raise ReviewSchemaError(f"{path}.verdict", f"{verdict!r} is not one of {'|'.join(VERDICTS)}")
    verdict = verdict.strip().lower()
    merge_with = _as_int(obj["merge_with"], f"{path}.merge_with", nullable=True)
    known = set(known_clusters) if known_clusters is not None else None
    if verdict == "merge":
        if merge_with is None:
            raise ReviewSchemaError(f"{path}.merge_with", "is null but verdict is merge (name the other cluster)")
        if merge_with == cluster:
            raise ReviewSchemaError(f"{path}.merge_with", f"cluster {cluster} cannot merge with itself")
        if known is not None and merge_with not in known:
            raise ReviewSchemaError(f"{path}.merge_with", f"{merge_with} is not a reviewed cluster ({sorted(known)})")
    else:
        merge_with = None  # only meaningful for merge
    reasons = _as_str_list(obj["reasons"], f"{path}.reasons", _MAX_REASONS, _MAX_REASON)
    problem = _as_str_list(obj["problem_row_ids"], f"{path}.problem_row_ids", _MAX_PROBLEM_IDS, 200)
    if known_row_ids is not None:
        allowed = {str(r) for r in known_row_ids}
        unknown = [r for r in problem if r not in allowed]
        if unknown:
            problem = [r for r in problem if r in allowed]
            if warnings is not None:
                warnings.append(f"{path}.problem_row_ids: ignored ids not among the rows shown: {unknown[:10]}")
    return {"cluster": cluster, "name": name, "task_type": task_type, "quality": quality, "verdict": verdict,
            "merge_with": merge_with, "reasons": reasons, "problem_row_ids": problem}


def validate_dedup_recommendation(obj: Any, path: str = "global.dedup_recommendation") -> dict[str, Any] | None:
    if obj is None:
        return None
    _check_keys(obj, path, DEDUP_RECOMMENDATION_SCHEMA)
    param = obj["parameter"]
    if not isinstance(param, str) or param.strip() not in DEDUP_THRESHOLDS:
        raise ReviewSchemaError(f"{path}.parameter", f"{param!r} is not one of {'|'.join(DEDUP_THRESHOLDS)}")
    value = obj["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise ReviewSchemaError(f"{path}.value", f"{value!r} is not a number in (0, 1]")
    reasons = _as_str_list(obj["reasons"], f"{path}.reasons", _MAX_REASONS, _MAX_REASON)
    return {"parameter": param.strip(), "value": round(float(value), 4), "reasons": reasons}


def validate_global_review(obj: Any, path: str = "global") -> dict[str, Any]:
    """Validate and normalize the ``global`` part of a review. ``dedup_recommendation`` may be
    absent (answers from custom prompts written before it existed): absent means null."""
    if isinstance(obj, dict) and "dedup_recommendation" not in obj:
        obj = {**obj, "dedup_recommendation": None}
    _check_keys(obj, path, GLOBAL_REVIEW_SCHEMA)
    rec = obj["k_recommendation"]
    if not isinstance(rec, str) or rec.strip().lower() not in K_RECOMMENDATIONS:
        raise ReviewSchemaError(f"{path}.k_recommendation", f"{rec!r} is not one of {'|'.join(K_RECOMMENDATIONS)}")
    k = _as_int(obj["suggested_k"], f"{path}.suggested_k", nullable=True)
    if k is not None and k < 1:
        raise ReviewSchemaError(f"{path}.suggested_k", f"{k} is below 1")
    reasons = _as_str_list(obj["reasons"], f"{path}.reasons", _MAX_REASONS, _MAX_REASON)
    dedup = validate_dedup_recommendation(obj["dedup_recommendation"], f"{path}.dedup_recommendation")
    return {"k_recommendation": rec.strip().lower(), "suggested_k": k, "reasons": reasons, "dedup_recommendation": dedup}


def _parse_json(obj: Any, what: str) -> Any:
    if isinstance(obj, (str, bytes)):
        try:
            return json.loads(obj)
        except json.JSONDecodeError as exc:
            raise ReviewSchemaError(what, f"not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    return obj


def validate_review(obj: Any, evidence: Sequence["ClusterEvidence | int"] | None = None,
                    warnings: list[str] | None = None) -> dict[str, Any]:
    """Validate a whole review and return it normalized (clusters sorted by id, text fields trimmed).

    ``obj`` may be a dict or a JSON string. With ``evidence`` (the ``ClusterEvidence`` list, or just
    the cluster ids), every evidence cluster must be reviewed exactly once, ``merge_with`` must name a
    reviewed cluster, and ``problem_row_ids`` not among the rows shown are dropped (noted in
    ``warnings`` when a list is given). Raises ``ReviewSchemaError`` naming the first bad field, e.g.
    ``clusters[2].verdict: 'delete' is not one of keep|clean|drop|split|merge``.
    """
    obj = _parse_json(obj, "review")
    _check_keys(obj, "", REVIEW_SCHEMA)
    if not isinstance(obj["clusters"], list):
        raise ReviewSchemaError("clusters", f"expected a list, got {type(obj['clusters']).__name__}")
    expected: list[int] | None = None
    row_ids: dict[int, list[str]] = {}
    if evidence is not None:
        expected = []
        for ev in evidence:
            if isinstance(ev, ClusterEvidence):
                expected.append(ev.cluster)
                row_ids[ev.cluster] = [str(r["row_id"]) for r in ev.central + ev.boundary]
            else:
                expected.append(int(ev))
    known = set(expected) if expected is not None else {c.get("cluster") for c in obj["clusters"] if isinstance(c, dict)}
    clusters: list[dict[str, Any]] = []
    seen: dict[int, int] = {}
    for i, item in enumerate(obj["clusters"]):
        path = f"clusters[{i}]"
        c = validate_cluster_review(item, path, known_clusters=known,
                                    known_row_ids=row_ids.get(item.get("cluster")) if row_ids and isinstance(item, dict) else None,
                                    warnings=warnings)
        if c["cluster"] in seen:
            raise ReviewSchemaError(f"{path}.cluster", f"cluster {c['cluster']} is reviewed twice (also clusters[{seen[c['cluster']]}])")
        if expected is not None and c["cluster"] not in known:
            raise ReviewSchemaError(f"{path}.cluster", f"cluster {c['cluster']} is not in the evidence ({sorted(known)})")
        seen[c["cluster"]] = i
        clusters.append(c)
    if expected is not None:
        missing = [c for c in expected if c not in seen]
        if missing:
            raise ReviewSchemaError("clusters", f"clusters {missing} were not reviewed")
    clusters.sort(key=lambda c: c["cluster"])
    return {"clusters": clusters, "global": validate_global_review(obj["global"], "global")}


# --------------------------------------------------------------------------------------------
# Evidence, terms and text statistics
# --------------------------------------------------------------------------------------------

@dataclass
class ClusterEvidence:
    """What a reviewer reads about one cluster.

    - ``metrics``: the per-cluster metrics (``mean_silhouette``, ``nearest_cluster``,
      ``nearest_distance``, ``tiny``, and when available ``overlap`` (share of members closer to
      another centre), ``outlier_fraction``, ``radius``). Missing keys are tolerated.
    - ``central`` / ``boundary``: ``[{"row_id", "text"}]`` rows closest to the centre / at the edge.
    - ``text_stats``: see ``compute_text_stats``.
    """

    cluster: int
    size: int
    share: float
    metrics: dict[str, Any] = field(default_factory=dict)
    central: list[dict[str, Any]] = field(default_factory=list)
    boundary: list[dict[str, Any]] = field(default_factory=list)
    top_terms: list[str] = field(default_factory=list)
    text_stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(value: Any, ndigits: int | None = None) -> Any:
    """Plain JSON values: NaN/inf become None, numpy scalars become Python numbers; floats rounded
    to ``ndigits`` when given (evidence sent to a model: fewer tokens)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v, ndigits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, ndigits) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return round(value, ndigits) if ndigits is not None else value
    return value


_CJK_RE = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_WORD_RE = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]", re.UNICODE)

# Small stop lists, ours: function words for English, frequent particles/endings and instruction
# boilerplate as character bigrams for Korean and Chinese.
_STOP_EN = set("""
a an the and or but if then else of to in on at by for with from into onto over under about as is are was were be been
being am do does did done have has had having it its this that these those there here what which who whom whose when
where why how not no nor so than too very can could should would will shall may might must just also only own same
such both each few more most other some any all i me my we our you your he him his she her they them their one two
s t don isn aren wasn weren following given below above please us let up out via per etc
""".split())
_STOP_KO = set("""
하시 시오 하세 세요 니다 습니 입니 합니 있는 하는 하고 에서 으로 에게 한다 된다 되는 있다 없다 이다 것을 것이 그리 그러 그리고
하여 해서 해주 주세 어요 아요 다음 무엇 어떤 이런 저런 그런 같은 대한 대해 위한 위해 까지 부터 에는 에도 이나 라고 이라 보세
했다 였다 었다 한다 된다 이다 같다 있었 없었 그는 그녀 그가 네요 나요 는가 인가 은가 는다 너무 정말
""".split())
_STOP_ZH = set("""
的是 是的 一个 我们 你们 他们 这个 那个 以下 下面 请你 请将 请把 什么 如何 怎么 可以 进行 没有 因为 所以 但是 而且 如果 这些 那些
""".split())


_HANGUL_RE = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")


def _tokens(text: str) -> list[str]:
    """Terms of one text: character bigrams inside Hangul/Han/Kana runs, lowercased words elsewhere.

    Korean words (eojeol) are a stem followed by particles and endings (남자는, 배송이, 좋았다), so a
    Hangul word gives only its first two syllables: stems rather than endings name a cluster.
    Chinese has no spaces: every bigram of a Han run counts.
    """
    text = unicodedata.normalize("NFKC", text or "")
    out: list[str] = []
    for m in _CJK_RE.finditer(text):
        run = m.group(0)
        if len(run) == 1:
            continue
        last = 2 if _HANGUL_RE.match(run[0]) else len(run)
        for i in range(last - 1):
            bg = run[i:i + 2]
            if bg not in _STOP_KO and bg not in _STOP_ZH:
                out.append(bg)
    rest = _CJK_RE.sub(" ", text)
    for w in _WORD_RE.findall(rest):
        w = w.lower().strip("'-")
        if len(w) >= 2 and w not in _STOP_EN:
            out.append(w)
    return out


def top_terms(texts: Iterable[str], n: int = 8) -> list[str]:
    """The ``n`` most frequent terms of ``texts`` (document frequency: one count per text).

    CJK-aware: Hangul and Han runs give character bigrams (no reliable word boundaries), other
    scripts give lowercased words; stopwords and one-character terms are dropped. Ties break
    alphabetically, so the result is deterministic.
    """
    df: Counter[str] = Counter()
    for t in texts:
        df.update(set(_tokens(t)))
    ranked = sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))
    return [t for t, c in ranked[:n]]


def cluster_top_terms(texts_by_cluster: dict[int, Sequence[str]], n: int = 8,
                      max_texts: int | None = 2000, seed: int = 0) -> dict[int, list[str]]:
    """Per cluster, terms that are frequent in it *and* rarer in the other clusters (c-TF-IDF).

    score(term, c) = df_c(term)/size_c * log(1 + mean_size / df_all(term)); a term appearing in
    every cluster at the same rate scores low, so "summarize" names the summary cluster and not
    every cluster of instructions that happen to say "please".

    Document frequencies come from at most ``max_texts`` texts per cluster (a seeded sample; None:
    all), scaled back to the cluster's size: tokenizing is Python work per text (5,000 rows per
    cluster took 2-3 s of a 6 s review at 110,000 rows), and the top terms of a 2,000-row sample
    are those of the cluster up to terms within a few rows of each other (a test checks this on a
    12,000-row cluster).
    """
    dfs: dict[int, Counter[str]] = {}
    total: Counter[str] = Counter()
    sizes: dict[int, int] = {}
    rng = np.random.default_rng(seed)
    for c, texts in texts_by_cluster.items():
        texts = list(texts)
        size = max(len(texts), 1)
        if max_texts is not None and len(texts) > max_texts:
            texts = [texts[i] for i in np.sort(rng.choice(len(texts), size=max_texts, replace=False))]
        df: Counter[str] = Counter()
        for t in texts:
            df.update(set(_tokens(t)))
        scale = size / max(len(texts), 1)
        if scale != 1.0:
            df = Counter({t: v * scale for t, v in df.items()})
        dfs[c], sizes[c] = df, size
        total.update(df)
    mean_size = sum(sizes.values()) / max(len(sizes), 1)
    out: dict[int, list[str]] = {}
    for c, df in dfs.items():
        scored = [(df_c / sizes[c] * math.log(1 + mean_size / total[t]), t) for t, df_c in df.items() if df_c >= 1]
        scored.sort(key=lambda st: (-st[0], st[1]))
        out[c] = [t for _, t in scored[:n]]
    return out


def _script_lang(text: str) -> str:
    counts = Counter()
    for ch in text:
        o = ord(ch)
        if 0xAC00 <= o <= 0xD7AF or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F:
            counts["ko"] += 1
        elif 0x3040 <= o <= 0x30FF:
            counts["ja"] += 1
        elif 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF:
            counts["zh"] += 1
        elif ch.isalpha():
            counts["latin" if o < 0x250 else "other"] += 1
    if not counts:
        return "none"
    if counts["ja"]:
        return "ja"
    return counts.most_common(1)[0][0]


def compute_text_stats(texts: Sequence[str | None], outputs: Sequence[str | None] | None = None,
                       langs: Sequence[str | None] | None = None, short_chars: int = 6) -> dict[str, Any]:
    """Text statistics of one cluster's rows (``texts`` = the embedded text): ``text_stats_by_group``
    with a single group. ``langs`` None: the language is guessed from the script (ko, zh, ja, latin,
    other). ``texts``, ``outputs`` and ``langs`` may be lists or polars Series."""
    import polars as pl

    col = texts if isinstance(texts, pl.Series) else pl.Series(list(texts), dtype=pl.String)
    col = col.cast(pl.String).fill_null("")
    if langs is None:
        langs = pl.Series([_script_lang(t) for t in col.to_list()], dtype=pl.String)
    frame = pl.DataFrame({"_group": pl.Series([0] * len(col), dtype=pl.Int64), "text": col,
                          "lang": langs if isinstance(langs, pl.Series) else pl.Series(list(langs), dtype=pl.String)})
    if outputs is not None:
        frame = frame.with_columns(output=outputs if isinstance(outputs, pl.Series) else pl.Series(list(outputs), dtype=pl.String))
    stats = text_stats_by_group(frame, "_group", output="output" if outputs is not None else None, short_chars=short_chars)
    return stats.get(0) or {"n": 0, "mean_length": 0.0, "median_length": 0.0, "share_short": 0.0, "share_empty_output": None,
                            "duplicate_share": 0.0, "share_question": 0.0, "languages": {}, "task_cues": {}}


def text_stats_by_group(frame: Any, group: str, text: str = "text", output: str | None = "output",
                        lang: str = "lang", short_chars: int = 6, min_cue_share: float = 0.05,
                        duplicate_key: Any = None) -> dict[Any, dict[str, Any]]:
    """Text statistics per value of ``group`` in one polars pass over every row (the review computes
    them for every kept row each cycle: the cycle's statistics of 95,635 NSMC rows in 8 clusters took
    0.60 s cluster by cluster, 0.25 s in one pass, median of 5, the same figures).

    Keys per group: ``n``, ``mean_length``, ``median_length`` (characters of ``text``),
    ``share_short`` (< ``short_chars``), ``share_empty_output`` (blank or NULL ``output``; None
    without an ``output`` column or when the group's outputs are all NULL: a layout without
    responses), ``duplicate_share`` (rows whose lowercased, whitespace-collapsed text repeats another
    row of the group; or whose ``duplicate_key``, a polars expression, does), ``share_question`` (a
    question mark), ``languages`` (share per ``lang``, NULL as "unknown"), ``task_cues`` (share of rows hitting each ``TASK_CUES`` type, those >=
    ``min_cue_share``, largest first)."""
    import polars as pl

    t = pl.col(text).cast(pl.String).fill_null("")
    low = t.str.to_lowercase()
    # per-row values first, each string pass once over all rows; the groups then only count them
    if duplicate_key is None:
        # whitespace runs collapse to one space, ends trimmed (Python's " ".join(t.lower().split()))
        duplicate_key = low.str.replace_all(r"\s+", " ").str.strip_chars()
    rows = [pl.col(group), t.str.len_chars().alias("_len"), duplicate_key.alias("_norm"),
            t.str.contains_any(["?", "？"]).alias("_question")] + _cue_hits(low)
    aggs = [pl.len().alias("n"), pl.col("_len").mean().alias("mean_length"), pl.col("_len").median().alias("median_length"),
            (pl.col("_len") < short_chars).sum().alias("short"), pl.col("_norm").n_unique().alias("distinct"),
            pl.col("_question").sum().alias("questions")]
    aggs += [pl.col(f"_cue_{k}").sum().alias(f"cue_{k}") for k in range(len(TASK_CUES))]
    if output is not None:
        o = pl.col(output).cast(pl.String)
        rows += [(o.fill_null("").str.strip_chars().str.len_chars() == 0).alias("_empty"), o.is_not_null().alias("_has_output")]
        aggs += [pl.col("_empty").sum().alias("empty_output"), pl.col("_has_output").sum().alias("outputs")]
    per = frame.lazy().select(rows).group_by(group).agg(aggs).collect()
    langs: dict[Any, list[tuple[str, int]]] = {}
    for g, name, count in (frame.group_by(group, pl.col(lang).cast(pl.String).fill_null("unknown").alias("_lang"))
                           .len().sort([group, "len", "_lang"], descending=[False, True, False]).iter_rows()):
        langs.setdefault(g, []).append((name, count))
    out: dict[Any, dict[str, Any]] = {}
    for r in per.iter_rows(named=True):
        n = int(r["n"])
        empty = None
        if output is not None and r["outputs"]:
            empty = round(int(r["empty_output"]) / n, 4)
        out[r[group]] = {
            "n": n, "mean_length": round(float(r["mean_length"]), 1), "median_length": float(r["median_length"]),
            "share_short": round(int(r["short"]) / n, 4), "share_empty_output": empty,
            "duplicate_share": round((n - int(r["distinct"])) / n, 4), "share_question": round(int(r["questions"]) / n, 4),
            "languages": {name: round(c / n, 4) for name, c in langs.get(r[group], [])},
            "task_cues": _cue_shares([r[f"cue_{k}"] for k in range(len(TASK_CUES))], n, min_cue_share),
        }
    return out


# --------------------------------------------------------------------------------------------
# Dedup evidence
# --------------------------------------------------------------------------------------------

@dataclass
class DedupEvidence:
    """What a reviewer reads about deduplication.

    - ``settings``: ``near_threshold``, ``semantic_mode`` (hybrid | cosine), ``semantic_threshold``,
      ``semantic_weight_cosine``.
    - ``removed``: rows removed per kind (exact, near, semantic).
    - ``removed_pairs``: ``[{"kind", "similarity", "removed", "kept"}]``: the least similar pairs
      each of near and semantic dedup removed (a removed row and the representative it points to).
    - ``near_misses``: ``[{"score", "a", "b"}]``: the most similar pairs of kept rows whose semantic
      score fell short of ``semantic_threshold`` (from a sample of the kept rows).
    """

    settings: dict[str, Any] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    removed_pairs: list[dict[str, Any]] = field(default_factory=list)
    near_misses: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self), 4)


_DIGITS_RE = re.compile(r"\d+")


def _numbers(text: str) -> list[str]:
    return _DIGITS_RE.findall(unicodedata.normalize("NFKC", text or ""))


def _skeleton(text: str) -> str:
    """Letters and digits only, case-folded: two texts with one skeleton differ only in spacing,
    punctuation, symbols or case."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text or "").casefold() if ch.isalnum())


def dedup_recommendation(dedup: DedupEvidence | dict[str, Any] | None,
                         thresholds: OfflineThresholds | None = None) -> dict[str, Any] | None:
    """The offline reviewer's dedup threshold recommendation, or None.

    - Raise (first rule): among the least similar pairs a kind (near, semantic) removed, at least
      ``dedup_min_pairs`` and ``dedup_sibling_share`` of them carry different numbers ("Add 3 and 4"
      vs "Add 3 and 5"): template siblings, not duplicates. New threshold = the highest similarity
      among those pairs + 0.01 (at most 0.99), so they stay apart next cycle.
    - Lower: at least ``dedup_min_pairs`` kept near-miss pairs are the same text but for spacing,
      punctuation, symbols or case. New semantic threshold = their lowest score rounded down to 0.01
      (at least 0.5), so they merge next cycle.
    """
    if dedup is None:
        return None
    th = thresholds or OfflineThresholds()
    d = dedup if isinstance(dedup, DedupEvidence) else DedupEvidence(**dedup)
    settings = d.settings or {}
    for kind, param in (("semantic", "semantic_threshold"), ("near", "near_threshold")):
        current = settings.get(param)
        pairs = [p for p in d.removed_pairs if p.get("kind") == kind and p.get("similarity") is not None]
        siblings = [p for p in pairs if _numbers(p.get("removed", "")) != _numbers(p.get("kept", ""))]
        if not pairs or len(siblings) < th.dedup_min_pairs or len(siblings) < th.dedup_sibling_share * len(pairs):
            continue
        value = min(DEDUP_THRESHOLD_RANGE[1], math.floor(max(float(p["similarity"]) for p in siblings) * 100 + 1) / 100)
        if current is not None and value <= float(current):
            continue
        ex = siblings[0]
        return {"parameter": param, "value": value, "reasons": [
            f"{len(siblings)} of the {len(pairs)} least similar {kind} pairs removed carry different numbers, "
            f"e.g. {_clip(ex.get('removed', ''))!r} vs {_clip(ex.get('kept', ''))!r}: template siblings, not duplicates",
            f"raise dedup.{param} {current} -> {value} (just above their highest similarity) to keep them apart"]}
    current = settings.get("semantic_threshold")
    misses = [p for p in d.near_misses if p.get("score") is not None and _skeleton(p.get("a", ""))
              and _skeleton(p.get("a", "")) == _skeleton(p.get("b", ""))]
    if len(misses) >= th.dedup_min_pairs:
        value = max(DEDUP_THRESHOLD_RANGE[0], math.floor(min(float(p["score"]) for p in misses) * 100) / 100)
        if current is None or value < float(current):
            ex = misses[0]
            return {"parameter": "semantic_threshold", "value": value, "reasons": [
                f"{len(misses)} kept pairs just below the semantic threshold differ only in spacing, punctuation or "
                f"case, e.g. {_clip(ex.get('a', ''))!r} vs {_clip(ex.get('b', ''))!r}",
                f"lower dedup.semantic_threshold {current} -> {value} (their lowest score) to merge them"]}
    return None


def _clip(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --------------------------------------------------------------------------------------------
# Offline reviewer
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OfflineThresholds:
    """Thresholds of the offline rules (see ``offline_review``). Silhouettes are cosine-space values."""

    tiny_share: float = 0.01           # a cluster below this share is tiny (when metrics lack "tiny")
    drop_silhouette: float = 0.05      # tiny AND mean silhouette below this -> drop
    drop_empty_output: float = 0.6     # share of rows with an empty output at or above this -> drop
    merge_rel_distance: float = 0.5    # nearest_distance <= this x median nearest_distance -> "close"
    merge_overlap: float = 0.3         # close AND overlap >= this -> merge
    merge_rel_distance_ambiguous: float = 0.65 # or (K-means: overlap ~0 by construction) mutual nearest ...
    merge_silhouette: float = 0.05             # ... AND mean silhouette below this ...
    merge_silhouette_global_factor: float = 0.5  # ... AND below this x the global silhouette -> merge
    split_share_factor: float = 1.5    # share >= factor / n_clusters ...
    split_min_share: float = 0.15      # ... AND share >= this ...
    split_silhouette: float = 0.1      # ... AND mean silhouette below this -> split
    split_mixed_task_share: float = 0.12  # ... OR two task types each cue >= this share of its rows ...
    split_dominant_task_share: float = 0.5  # ... and none reaches this share (no dominant type) -> split
    clean_silhouette: float = 0.0      # mean silhouette below this -> clean
    clean_outlier_fraction: float = 0.05  # metrics count rows beyond mean + 3 SD: normally ~1%
    clean_duplicate_share: float = 0.3
    clean_empty_output: float = 0.2
    clean_short_share: float = 0.3
    global_low_silhouette: float = 0.05  # global silhouette below this with a big cluster -> increase k
    sweep_min_gain: float = 0.01       # a k sweep's best k beats the current k by this silhouette -> move to it
    global_big_share: float = 0.3
    dedup_min_pairs: float = 3         # a dedup threshold changes only on at least this many telling pairs ...
    dedup_sibling_share: float = 0.3   # ... and (raise) when this share of the least similar removed pairs differ in numbers

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "OfflineThresholds":
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ReviewConfigError(f"review.thresholds: unknown keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: float(v) for k, v in d.items()})


# Task-type cues: (task type, substrings). Checked in order; the type with the most rows that hit
# a cue wins, ties go to the earlier entry.
TASK_CUES: list[tuple[str, tuple[str, ...]]] = [
    ("summarization", ("요약", "summar", "总结", "摘要", "概括", "tl;dr")),
    ("translation", ("translat", "번역", "翻译", "译成", "영어로", "한국어로", "into english", "into korean")),
    ("sentence ordering", ("순서", "order of the sentences", "reorder", "排序", "顺序")),
    ("masked prediction", ("[mask]", "<mask>", "빈칸", "blank", "填空")),
    ("classification", ("classif", "분류", "分类", "sentiment", "감성", "情感", "긍정", "부정", "positive or negative")),
    ("code", ("python", "function", "code", "코드", "함수", "代码", "函数", "sql")),
    ("math", ("calculate", "solve", "계산", "计算", "equation", "방정식")),
    ("rewriting", ("paraphras", "rewrite", "바꾸", "고쳐", "改写", "润色")),
    ("writing", ("write", "작성", "写", "compose", "essay", "poem", "시를")),
]


def task_cue_shares(texts: Sequence[str | None], min_share: float = 0.05) -> dict[str, float]:
    """Share of rows hitting each task type's cue words (a row may hit several); shares below
    ``min_share`` are left out. A cluster where two task types each hold a large share mixes types."""
    n = len(texts)
    if not n:
        return {}
    import polars as pl

    col = texts if isinstance(texts, pl.Series) else pl.Series(list(texts), dtype=pl.String)
    low = pl.col("t").cast(pl.String).fill_null("").str.to_lowercase()
    hits = pl.DataFrame({"t": col}).select([h.sum() for h in _cue_hits(low)]).row(0)
    return _cue_shares(hits, n, min_share)


def _cue_hits(low: Any) -> list[Any]:
    """Per ``TASK_CUES`` type, a bool expression: the lowercased text (``low``) holds one of its cues.
    Substring tests in polars (Rust): the same counts as Python's ``cue in text.lower()``, ~20x faster."""
    return [low.str.contains_any(list(cues)).alias(f"_cue_{k}") for k, (_, cues) in enumerate(TASK_CUES)]


def _cue_shares(hits: Sequence[int], n: int, min_share: float) -> dict[str, float]:
    """Rows hitting each task type (``hits``, in ``TASK_CUES`` order) as shares of ``n``, largest
    first (ties keep ``TASK_CUES`` order), those below ``min_share`` left out."""
    shares = sorted(((task, int(h) / n) for (task, _), h in zip(TASK_CUES, hits)), key=lambda kv: -kv[1])
    return {task: round(v, 4) for task, v in shares if v >= min_share}


def guess_task_type(texts: Sequence[str], terms: Sequence[str] = (), min_share: float = 0.3) -> str:
    """Task type from cue words (KO/ZH/EN) in the sample rows; question marks -> question answering."""
    texts = [t or "" for t in texts]
    if not texts:
        return "unknown"
    low = [t.lower() for t in texts]
    joined_terms = " ".join(terms).lower()
    best, best_hits = "unknown", 0
    for task, cues in TASK_CUES:
        hits = sum(1 for t in low if any(c in t for c in cues))
        if any(c in joined_terms for c in cues):
            hits += 1
        if hits > best_hits:
            best, best_hits = task, hits
    if best_hits >= max(2, math.ceil(min_share * len(texts))) or (best_hits and len(texts) < 3):
        return best
    questions = sum(1 for t in texts if "?" in t or "？" in t)
    if questions / len(texts) >= 0.5:
        return "question answering"
    return "unknown"


def _num(metrics: dict[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _nearest(m: dict[str, Any]) -> int | None:
    v = m.get("nearest_cluster")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return int(v)


def _offline_cluster(ev: ClusterEvidence, n_clusters: int, median_nd: float | None, nearest_of: dict[int, int | None],
                     gsil: float | None, th: OfflineThresholds) -> dict[str, Any]:
    ids = set(nearest_of)
    m = ev.metrics or {}
    ts = ev.text_stats or {}
    sil = _num(m, "mean_silhouette")
    outlier = _num(m, "outlier_fraction")
    # overlap with the nearest cluster when measured, else overall overlap (both ~0 for K-means labels)
    overlap = _num(m, "overlap_with_nearest")
    if overlap is None:
        overlap = _num(m, "overlap")
    nd = _num(m, "nearest_distance")
    nearest = _nearest(m)
    tiny = m.get("tiny")
    tiny = bool(tiny) if tiny is not None else ev.share < th.tiny_share
    empty = _num(ts, "share_empty_output")
    dup = _num(ts, "duplicate_share")
    short = _num(ts, "share_short")
    sil_txt = f"{sil:.3f}" if sil is not None else "n/a"

    rows = ev.central + ev.boundary
    texts = [str(r.get("text", "")) for r in rows]
    terms = list(ev.top_terms)[:3]
    name = " / ".join(terms) if terms else f"cluster {ev.cluster}"
    task = guess_task_type(texts, ev.top_terms)

    # quality: from the silhouette (absolute level and relative to the global one), minus one per problem
    if sil is None:
        q = 3
    else:
        q = 5 if sil >= 0.5 else 4 if sil >= 0.25 else 3 if sil >= 0.1 else 2 if sil >= 0 else 1
        if gsil is not None and gsil > 0:
            q_rel = 3 + (sil >= 1.5 * gsil) + (sil >= 2.5 * gsil) - (sil < 0.5 * gsil) - (sil < 0)
            q = (q + q_rel + 1) // 2
    if outlier is not None and outlier >= th.clean_outlier_fraction:
        q -= 1
    if (empty is not None and empty >= th.clean_empty_output) or (dup is not None and dup >= th.clean_duplicate_share):
        q -= 1

    verdict, merge_with, reasons = "keep", None, []
    problem: list[str] = []
    close = False
    if nd is not None and median_nd and nearest is not None and nearest in ids and nearest != ev.cluster:
        rel = nd / median_nd
        dist_txt = f"centroid distance to cluster {nearest} is {nd:.3f} ({rel:.2f}x the median {median_nd:.3f})"
        if rel <= th.merge_rel_distance and overlap is not None and overlap >= th.merge_overlap:
            close, close_txt = True, f"{dist_txt} and overlap {_pct(overlap)} >= {_pct(th.merge_overlap)}"
        elif (rel <= th.merge_rel_distance_ambiguous and nearest_of.get(nearest) == ev.cluster and sil is not None
              and sil < th.merge_silhouette and (gsil is None or sil < th.merge_silhouette_global_factor * gsil)):
            close, close_txt = True, (f"{dist_txt}, each is the other's nearest, and mean silhouette {sil_txt} < "
                                      f"{th.merge_silhouette} and < {th.merge_silhouette_global_factor:g}x the global "
                                      f"{gsil if gsil is not None else float('nan'):.3f}")
    if ev.cluster < 0:
        verdict = "clean"
        reasons.append(f"noise points ({ev.size} rows, {_pct(ev.share)}): not a cluster; review before keeping")
        problem = [str(r["row_id"]) for r in ev.boundary + ev.central]
    elif tiny and sil is not None and sil < th.drop_silhouette:
        verdict = "drop"
        reasons.append(f"tiny cluster ({ev.size} rows, {_pct(ev.share)}) with mean silhouette {sil_txt} < {th.drop_silhouette}")
    elif empty is not None and empty >= th.drop_empty_output:
        verdict = "drop"
        reasons.append(f"{_pct(empty)} of rows have an empty output (>= {_pct(th.drop_empty_output)})")
    elif close:
        verdict, merge_with = "merge", nearest
        reasons.append(close_txt)
    elif (n_clusters > 0 and ev.share >= th.split_share_factor / n_clusters and ev.share >= th.split_min_share
          and sil is not None and sil < th.split_silhouette):
        verdict = "split"
        reasons.append(f"large cluster ({_pct(ev.share)} of rows, >= {th.split_share_factor:g}x the average "
                       f"{_pct(1 / n_clusters)}) with mean silhouette {sil_txt} < {th.split_silhouette}")
    elif (n_clusters > 0 and ev.share >= th.split_share_factor / n_clusters and ev.share >= th.split_min_share
          and len(mixed := [t for t, v in (ts.get("task_cues") or {}).items() if v >= th.split_mixed_task_share]) >= 2
          and max((ts.get("task_cues") or {}).values()) < th.split_dominant_task_share):
        verdict = "split"
        cues = ts.get("task_cues") or {}
        reasons.append(f"large cluster ({_pct(ev.share)} of rows, >= {th.split_share_factor:g}x the average "
                       f"{_pct(1 / n_clusters)}) mixing task types: "
                       + ", ".join(f"{t} {_pct(cues[t])}" for t in mixed))
    else:
        if sil is not None and sil < th.clean_silhouette:
            reasons.append(f"mean silhouette {sil_txt} < {th.clean_silhouette}: many members sit closer to another cluster")
        if outlier is not None and outlier >= th.clean_outlier_fraction:
            reasons.append(f"outlier fraction {_pct(outlier)} >= {_pct(th.clean_outlier_fraction)}")
        if dup is not None and dup >= th.clean_duplicate_share:
            reasons.append(f"duplicate share {_pct(dup)} >= {_pct(th.clean_duplicate_share)}")
        if empty is not None and empty >= th.clean_empty_output:
            reasons.append(f"empty-output share {_pct(empty)} >= {_pct(th.clean_empty_output)}")
        if short is not None and short >= th.clean_short_share:
            reasons.append(f"short-text share {_pct(short)} >= {_pct(th.clean_short_share)}")
        if reasons:
            verdict = "clean"
            problem = [str(r["row_id"]) for r in ev.boundary]
    if verdict == "keep":
        reasons.append(f"mean silhouette {sil_txt}, {ev.size} rows ({_pct(ev.share)}); no rule fired")
    if verdict == "drop":
        q = min(q, 2)
    return {"cluster": int(ev.cluster), "name": name, "task_type": task, "quality": max(1, min(5, q)),
            "verdict": verdict, "merge_with": merge_with, "reasons": reasons, "problem_row_ids": problem}


def _current_k(evidence: Sequence[ClusterEvidence], global_metrics: dict[str, Any]) -> int:
    k = _num(global_metrics or {}, "n_clusters")
    return int(k) if k is not None and k > 0 else sum(1 for e in evidence if e.cluster >= 0)


def global_from_verdicts(clusters: Sequence[dict[str, Any]], evidence: Sequence[ClusterEvidence],
                         global_metrics: dict[str, Any], thresholds: OfflineThresholds | None = None,
                         dedup: DedupEvidence | dict[str, Any] | None = None) -> dict[str, Any]:
    """The global recommendation implied by per-cluster verdicts and the global metrics.

    - net = splits - (merge pairs + drops); net > 0 -> increase, net < 0 -> decrease, suggested
      k = current k + net (at least 2);
    - no verdict asks for a change, but a k sweep (``sweep_best_k`` in the global metrics) scores
      another k better by at least ``sweep_min_gain`` silhouette -> move to that k;
    - no verdict asks for a change, but the global silhouette is low and one cluster holds a large
      share -> increase by one;
    - otherwise keep (suggested_k null).
    ``dedup_recommendation``: ``dedup_recommendation(dedup)`` (None without dedup evidence).
    """
    th = thresholds or OfflineThresholds()
    k = _current_k(evidence, global_metrics)
    real = [c for c in clusters if c["cluster"] >= 0]
    splits = [c["cluster"] for c in real if c["verdict"] == "split"]
    drops = [c["cluster"] for c in real if c["verdict"] == "drop"]
    pairs = sorted({tuple(sorted((c["cluster"], c["merge_with"]))) for c in real if c["verdict"] == "merge"})
    net = len(splits) - len(pairs) - len(drops)
    sil = _num(global_metrics or {}, "silhouette")
    sil_txt = f"{sil:.3f}" if sil is not None else "n/a"
    reasons: list[str] = []
    if splits:
        reasons.append(f"{len(splits)} cluster(s) to split: {splits}")
    if pairs:
        reasons.append(f"{len(pairs)} pair(s) to merge: {[list(p) for p in pairs]}")
    if drops:
        reasons.append(f"{len(drops)} cluster(s) to drop: {drops}")
    if net > 0:
        rec, sk = "increase", k + net
    elif net < 0:
        rec, sk = "decrease", max(2, k + net)
    else:
        biggest = max(evidence, key=lambda e: e.share, default=None)
        gm = global_metrics or {}
        best_k_swept = _num(gm, "sweep_best_k")
        best_sil, cur_sil = _num(gm, "sweep_best_silhouette"), _num(gm, "sweep_current_silhouette")
        if (not reasons and best_k_swept is not None and int(best_k_swept) != k and best_sil is not None
                and cur_sil is not None and best_sil - cur_sil >= th.sweep_min_gain):
            sk = int(best_k_swept)
            rec = "increase" if sk > k else "decrease"
            reasons.append(f"the k sweep scores k = {sk} best: silhouette {best_sil:.3f} against {cur_sil:.3f} at "
                           f"k = {k} (gain >= {th.sweep_min_gain})")
        elif (not reasons and sil is not None and sil < th.global_low_silhouette and biggest is not None
                and biggest.share >= th.global_big_share):
            rec, sk = "increase", k + 1
            reasons.append(f"global silhouette {sil_txt} < {th.global_low_silhouette} and cluster {biggest.cluster} "
                           f"holds {_pct(biggest.share)} of rows (>= {_pct(th.global_big_share)})")
        else:
            rec, sk = "keep", None
    if rec == "keep" and sk is None and (splits or pairs or drops):
        reasons.append(f"splits and merges/drops balance out: keep k = {k}")
    reasons.append(f"current k = {k}, global silhouette {sil_txt}")
    if rec != "keep":
        reasons.append(f"suggested k = {sk}")
    return {"k_recommendation": rec, "suggested_k": sk, "reasons": reasons,
            "dedup_recommendation": dedup_recommendation(dedup, th)}


def offline_review(evidence: Sequence[ClusterEvidence], global_metrics: dict[str, Any],
                   thresholds: OfflineThresholds | dict[str, Any] | None = None,
                   dedup: DedupEvidence | dict[str, Any] | None = None) -> dict[str, Any]:
    """Deterministic review from metrics and text statistics. Follows ``REVIEW_SCHEMA``.

    Name: the cluster's first three top terms. Task type: ``guess_task_type`` on the sample rows.
    Quality 1-5: the mean of an absolute silhouette grade (>=0.5: 5, >=0.25: 4, >=0.1: 3, >=0: 2,
    else 1) and a grade relative to the global silhouette g (3, +1 at >=1.5g, +1 at >=2.5g, -1 below
    0.5g, -1 below 0; sentence-embedding silhouettes are small, the relative grade tells clusters
    apart), rounded up; minus one for a high outlier fraction, minus one for many empty outputs or
    duplicates (drop: at most 2).

    Verdict rules, first match wins (defaults in ``OfflineThresholds``):

    | verdict | when |
    |---|---|
    | clean | cluster id < 0 (noise points of DBSCAN/HDBSCAN: not a cluster) |
    | drop  | tiny (``metrics.tiny``, else share < 1%) and mean silhouette < 0.05 |
    | drop  | share of empty outputs >= 60% |
    | merge | nearest centroid distance <= 0.5 x the median nearest distance and overlap (``overlap_with_nearest``, else ``overlap``) >= 30%; or (K-means labels have no overlap by construction) <= 0.65 x the median, the two are each other's nearest, and mean silhouette < 0.05 and < 0.5 x the global silhouette; ``merge_with`` = the nearest cluster |
    | split | share >= 1.5 / n_clusters and share >= 15% and mean silhouette < 0.1 |
    | split | share >= 1.5 / n_clusters and share >= 15% and two task types each cue >= 12% of its rows, none >= 50% (``text_stats.task_cues``) |
    | clean | any of: mean silhouette < 0, outlier fraction >= 5%, duplicate share >= 30%, empty outputs >= 20%, short texts >= 30%; problem rows = the boundary rows |
    | keep  | otherwise |

    Global: ``global_from_verdicts``. Row text influences a verdict only through counted statistics
    (task-cue shares, lengths, duplicates), never through what a row asks for.
    """
    th = thresholds if isinstance(thresholds, OfflineThresholds) else OfflineThresholds.from_dict(thresholds)
    evidence = sorted(evidence, key=lambda e: e.cluster)
    real = [e for e in evidence if e.cluster >= 0]
    n_clusters = len(real)
    nds = sorted(v for v in (_num(e.metrics or {}, "nearest_distance") for e in real) if v is not None and v > 0)
    median_nd = (nds[len(nds) // 2] if len(nds) % 2 else (nds[len(nds) // 2 - 1] + nds[len(nds) // 2]) / 2) if nds else None
    nearest_of = {e.cluster: _nearest(e.metrics or {}) for e in real}
    gsil = _num(global_metrics or {}, "silhouette")
    clusters = [_offline_cluster(e, n_clusters, median_nd, nearest_of, gsil, th) for e in evidence]
    review = {"clusters": clusters, "global": global_from_verdicts(clusters, evidence, global_metrics, th, dedup)}
    return validate_review(review, evidence)


# --------------------------------------------------------------------------------------------
# Reviewers
# --------------------------------------------------------------------------------------------

@dataclass
class ReviewOutcome:
    """A validated review plus provenance.

    - ``usage``: ``prompt_tokens``, ``completion_tokens``, ``cost_usd`` (None when the model has no
      known price), ``requests`` (HTTP requests actually sent, retries included), ``cache_hits``.
    - ``failures``: ``[{"cluster": id, "error"}]`` or ``[{"scope": "global", "error"}]``; those parts
      of the review come from the offline reviewer (``per_cluster[i]["source"] == "offline-fallback"``).
    - ``per_cluster``: per cluster ``source`` (offline / openai / cache / offline-fallback),
      ``prompt_hash``, tokens, cost, requests.
    - ``warnings``: answers that were accepted after trimming (e.g. unknown problem row ids).
    - ``redactions``: PII counts removed from what was sent, per kind.
    """

    review: dict[str, Any]
    reviewer_id: str
    prompt_hash: str
    usage: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    per_cluster: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


class Reviewer(Protocol):
    reviewer_id: str

    def review(self, evidence: Sequence[ClusterEvidence], global_metrics: dict[str, Any],
               dedup: DedupEvidence | None = None) -> ReviewOutcome: ...


def _empty_usage() -> dict[str, Any]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "requests": 0, "cache_hits": 0}


class OfflineReviewer:
    """The embedded default: ``offline_review`` wrapped in the ``Reviewer`` interface."""

    reviewer_id = OFFLINE_REVIEWER_ID

    def __init__(self, thresholds: OfflineThresholds | dict[str, Any] | None = None):
        self.thresholds = thresholds if isinstance(thresholds, OfflineThresholds) else OfflineThresholds.from_dict(thresholds)

    @property
    def prompt_hash(self) -> str:
        blob = json.dumps({"id": self.reviewer_id, "thresholds": asdict(self.thresholds), "schema": REVIEW_SCHEMA}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def review(self, evidence: Sequence[ClusterEvidence], global_metrics: dict[str, Any],
               dedup: DedupEvidence | None = None) -> ReviewOutcome:
        review = offline_review(evidence, global_metrics, self.thresholds, dedup)
        per = [{"cluster": c["cluster"], "source": "offline", "prompt_hash": None, "prompt_tokens": 0,
                "completion_tokens": 0, "cost_usd": 0.0, "requests": 0} for c in review["clusters"]]
        return ReviewOutcome(review, self.reviewer_id, self.prompt_hash, _empty_usage(), [], per)

    def __repr__(self) -> str:
        return f"OfflineReviewer({self.reviewer_id})"


# ---- PII -------------------------------------------------------------------------------------

_FALLBACK_PII = [
    ("email", re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")),
    ("rrn", re.compile(r"\b\d{6}-?[1-4]\d{6}\b")),  # Korean resident registration number
    ("card", re.compile(r"\b(?:\d[ -]?){13,16}\b")),
    ("phone", re.compile(r"(?<!\w)(?:\+?\d{1,3}[ .-]?)?(?:\(?\d{2,4}\)?[ .-]?)\d{3,4}[ .-]?\d{4}(?!\w)")),
]


def _fallback_redact(text: str) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    for kind, rx in _FALLBACK_PII:
        text, n = rx.subn(f"[{kind.upper()}]", text)
        if n:
            counts[kind] = counts.get(kind, 0) + n
    return text, counts


def _redactor() -> Callable[[str], tuple[str, dict[str, int]]]:
    """``purify_assets.core.pii.redact`` when it exists (returns (text, counts)), else a small local one."""
    try:
        from purify_assets.core import pii  # noqa: PLC0415
        fn = getattr(pii, "redact", None)
        if callable(fn):
            def use(text: str) -> tuple[str, dict[str, int]]:
                out = fn(text)
                if isinstance(out, tuple) and len(out) == 2:
                    red, counts = out
                    if isinstance(counts, dict):
                        return str(red), {str(k): int(v) for k, v in counts.items()}
                    return str(red), {str(k): 1 for k in counts}
                return str(getattr(out, "text", out)), dict(getattr(out, "counts", {}) or {})
            return use
    except ImportError:
        pass
    return _fallback_redact


# ---- prompts ---------------------------------------------------------------------------------

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "prompts"


def _read_prompt(path: str | os.PathLike | None, default_name: str, key: str) -> str:
    p = Path(path) if path else PROMPTS_DIR / default_name
    try:
        return p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReviewConfigError(f"review.{key}: cannot read prompt template {p}: {exc.strerror}") from None


def _render(template: str, values: dict[str, str]) -> str:
    """Replace ``{{name}}`` placeholders (only the known ones; JSON braces elsewhere are left alone)."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), m.group(0)), template)


def _data_json(obj: Any) -> str:
    """JSON for a data block: '<' and '>' escaped so no row text can close the data tag."""
    s = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    return s.replace("<", "\\u003c").replace(">", "\\u003e")


# Public list prices (USD per 1k tokens, input/output) at the time of writing; configure
# price_per_1k_input/output for anything else. Unknown models get cost_usd None.
KNOWN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.00015, 0.0006),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4.1-mini": (0.0004, 0.0016),
    "gpt-4.1-nano": (0.0001, 0.0004),
    "gpt-4.1": (0.002, 0.008),
}

OPENAI_DEFAULTS: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "base_url": None,
    "api_key_env": "OPENAI_API_KEY",
    "temperature": 0.0,
    "timeout": 60.0,
    "max_retries": 4,             # per request, for 429 / 5xx / timeouts / connection errors
    "retry_budget_seconds": 120.0,  # total backoff sleep allowed in one review
    "backoff_base": 1.0,          # seconds; attempt i sleeps base * 2**i (capped at backoff_max)
    "backoff_max": 30.0,
    "system_prompt": None,        # path, or None = purify_assets/prompts/system.md
    "user_prompt": None,          # path, or None = purify_assets/prompts/user.md
    "global_prompt": None,        # path, or None = purify_assets/prompts/global.md
    "cache_dir": None,            # None = no cache
    "price_per_1k_input": None,
    "price_per_1k_output": None,
    "max_rows_per_cluster": 10,
    "max_chars_per_row": 600,
    "redact_pii": True,
}


class _Transient(Exception):
    pass


class OpenAIReviewer:
    """Reviews through any OpenAI-compatible chat-completions server.

    Protocol, per review:

    1. One request per cluster: system prompt + user prompt rendered with that cluster's evidence
       (PII redacted, at most ``max_rows_per_cluster`` rows, JSON inside ``<cluster_data>`` tags).
       The answer must follow ``CLUSTER_REVIEW_SCHEMA``.
    2. One global request: a summary of every cluster's verdict and metrics plus the global metrics
       inside ``<review_data>`` tags; the answer follows ``GLOBAL_REVIEW_SCHEMA``.

    Output format: ``response_format`` json_schema (strict); when the server answers 400 to that,
    json_object; when it rejects that too, plain text with the schema written into the prompt. The
    downgrade sticks for the rest of the review.

    Failures never crash a review: 429 / 5xx / timeouts / connection errors are retried with
    exponential backoff (``max_retries`` per request, ``retry_budget_seconds`` of sleep in total);
    an answer that is not valid JSON or breaks the schema is sent back once with the error; when a
    cluster still has no valid answer, it gets the offline reviewer's verdict (``source``
    "offline-fallback" in ``per_cluster``, a reason saying so) and the error goes to ``failures``.
    Authentication / permission / not-found errors stop further requests (all remaining parts fall
    back). The global part falls back to ``global_from_verdicts`` the same way.

    Cache: with ``cache_dir``, each valid answer is stored under sha256(model + system prompt +
    user prompt + schema); a re-run with the same inputs sends no request.

    The API key is read from the environment variable ``api_key_env`` and is kept out of repr,
    errors, failures and the outcome (any echo of it is replaced by ``***``).
    """

    def __init__(self, config: dict[str, Any] | None = None, client: Any = None):
        cfg = dict(OPENAI_DEFAULTS)
        for k, v in (config or {}).items():
            if k in OPENAI_DEFAULTS and v is not None:
                cfg[k] = v
        self.config = cfg
        self.model = str(cfg["model"])
        self.reviewer_id = f"openai:{self.model}"
        self._api_key = os.environ.get(str(cfg["api_key_env"])) or None
        if self._api_key is None and not cfg["base_url"]:
            raise ReviewConfigError(
                f"review.api_key_env: environment variable {cfg['api_key_env']} is not set "
                "(needed for the OpenAI API; set it, or set review.base_url for a local server)")
        self.system_prompt = _read_prompt(cfg["system_prompt"], "system.md", "system_prompt")
        self.user_template = _read_prompt(cfg["user_prompt"], "user.md", "user_prompt")
        self.global_template = _read_prompt(cfg["global_prompt"], "global.md", "global_prompt")
        for key in ("timeout", "retry_budget_seconds", "backoff_base", "backoff_max"):
            try:
                cfg[key] = float(cfg[key])
            except (TypeError, ValueError):
                raise ReviewConfigError(f"review.{key}: {cfg[key]!r} is not a number") from None
        self.cache_dir = Path(cfg["cache_dir"]) if cfg["cache_dir"] else None
        price_in, price_out = cfg["price_per_1k_input"], cfg["price_per_1k_output"]
        if price_in is None and price_out is None and self.model in KNOWN_PRICES:
            price_in, price_out = KNOWN_PRICES[self.model]
        self.prices = (float(price_in), float(price_out or 0.0)) if price_in is not None else None
        self._client = client
        self._sleep: Callable[[float], None] = time.sleep
        self._redact = _redactor() if cfg["redact_pii"] else (lambda t: (t, {}))

    def __repr__(self) -> str:
        return f"OpenAIReviewer(model={self.model!r}, base_url={self.config['base_url']!r})"

    # -- plumbing -------------------------------------------------------------------------

    @property
    def prompt_hash(self) -> str:
        blob = json.dumps({"model": self.model, "system": self.system_prompt, "user": self.user_template,
                           "global": self.global_template, "schema": REVIEW_SCHEMA}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def _get_client(self) -> Any:
        if self._client is None:
            import openai  # noqa: PLC0415  (heavy-ish; only when this reviewer runs)

            self._client = openai.OpenAI(base_url=self.config["base_url"] or None,
                                         api_key=self._api_key or "no-key-configured",
                                         timeout=self.config["timeout"], max_retries=0)
        return self._client

    def _scrub(self, text: str) -> str:
        text = str(text)
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text[:1000]

    def _cost(self, p: int, c: int) -> float | None:
        if self.prices is None:
            return None
        return round(p / 1000 * self.prices[0] + c / 1000 * self.prices[1], 8)

    @staticmethod
    def _request_hash(model: str, system: str, user: str, schema: dict[str, Any]) -> str:
        blob = json.dumps([model, system, user, schema], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _cache_get(self, h: str) -> dict[str, Any] | None:
        if self.cache_dir is None:
            return None
        p = self.cache_dir / f"{h}.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None

    def _cache_put(self, h: str, entry: dict[str, Any]) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_dir / f".{h}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entry, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.cache_dir / f"{h}.json")

    @staticmethod
    def _extract_json(content: str) -> Any:
        s = (content or "").strip()
        fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", s, re.S)
        if fence:
            s = fence.group(1)
        try:
            return json.loads(s)
        except json.JSONDecodeError:
            i, j = s.find("{"), s.rfind("}")
            if i >= 0 and j > i:
                try:
                    return json.loads(s[i:j + 1])
                except json.JSONDecodeError:
                    pass
            raise ReviewSchemaError("answer", f"not valid JSON: {s[:120]!r}") from None

    # -- one call ---------------------------------------------------------------------------

    def _send(self, messages: list[dict[str, str]], schema_name: str, schema: dict[str, Any], st: dict[str, Any]) -> Any:
        """One completion with retries on transient errors and response_format downgrades."""
        import openai  # noqa: PLC0415

        client = self._get_client()
        attempt = 0
        while True:
            mode = st["mode"]
            kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages)}
            if self.config["temperature"] is not None:
                kwargs["temperature"] = float(self.config["temperature"])
            if mode == "json_schema":
                kwargs["response_format"] = {"type": "json_schema",
                                             "json_schema": {"name": schema_name, "schema": schema, "strict": True}}
            else:
                hint = ("Answer with one JSON object only, no prose and no code fences. It must follow this JSON "
                        "schema exactly:\n" + json.dumps(schema, ensure_ascii=False))
                kwargs["messages"] = [{"role": "system", "content": messages[0]["content"] + "\n\n" + hint}] + list(messages[1:])
                if mode == "json_object":
                    kwargs["response_format"] = {"type": "json_object"}
            st["requests"] += 1
            try:
                return client.chat.completions.create(**kwargs)
            except openai.BadRequestError as exc:
                if mode != "plain":
                    st["mode"] = "json_object" if mode == "json_schema" else "plain"
                    st["warnings"].append(f"server rejected response_format {mode} (HTTP 400); using {st['mode']} from now on")
                    continue
                raise
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                st["fatal"] = f"{type(exc).__name__} (HTTP {exc.status_code}): {self._scrub(exc.message)}"
                raise
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError, openai.APIStatusError) as exc:
                status = getattr(exc, "status_code", None)
                transient = status is None or status in (408, 409, 429) or status >= 500
                if not transient:
                    raise
                if attempt >= int(self.config["max_retries"]):
                    raise _Transient(f"gave up after {attempt + 1} attempts: {type(exc).__name__}"
                                     f"{f' (HTTP {status})' if status else ''}") from None
                delay = min(self.config["backoff_max"], self.config["backoff_base"] * (2 ** attempt))
                retry_after = retry_after_seconds(exc)
                if retry_after is not None:
                    delay = min(self.config["backoff_max"], max(retry_after, 0.0))
                if st["slept"] + delay > self.config["retry_budget_seconds"]:
                    raise _Transient(f"retry budget of {self.config['retry_budget_seconds']:g}s exhausted after "
                                     f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}") from None
                st["slept"] += delay
                attempt += 1
                self._sleep(delay)

    def _ask(self, system: str, user: str, schema_name: str, schema: dict[str, Any],
             validate: Callable[[Any], Any], st: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Ask (or read the cache), validate, repair once. Returns (validated, info) or raises; the
        exception carries ``review_info`` (tokens and requests spent before failing)."""
        h = self._request_hash(self.model, system, user, schema)
        info = {"prompt_hash": h[:16], "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "requests": 0, "source": "openai"}
        try:
            return self._ask_inner(h, system, user, schema_name, schema, validate, st, info)
        except Exception as exc:
            exc.review_info = info  # type: ignore[attr-defined]
            raise

    def _ask_inner(self, h: str, system: str, user: str, schema_name: str, schema: dict[str, Any],
                   validate: Callable[[Any], Any], st: dict[str, Any], info: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        import openai  # noqa: PLC0415

        cached = self._cache_get(h)
        if cached is not None:
            try:
                value = validate(self._extract_json(cached.get("content", "")))
                info["source"] = "cache"
                st["cache_hits"] += 1
                return value, info
            except ReviewSchemaError:
                pass  # a stale or corrupted entry: ask again
        if st.get("fatal"):
            raise RuntimeError(f"not sent: {st['fatal']}")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        before = st["requests"]
        last_error = ""
        try:
            for round_ in range(2):  # the answer, then one repair attempt
                resp = self._send(messages, schema_name, schema, st)
                usage = getattr(resp, "usage", None)
                p = int(getattr(usage, "prompt_tokens", 0) or 0)
                c = int(getattr(usage, "completion_tokens", 0) or 0)
                info["prompt_tokens"] += p
                info["completion_tokens"] += c
                choice = resp.choices[0] if getattr(resp, "choices", None) else None
                content = getattr(getattr(choice, "message", None), "content", None) if choice else None
                try:
                    if not content:
                        raise ReviewSchemaError("answer", "empty answer"
                                                + (f" (finish_reason {choice.finish_reason})" if choice else ""))
                    if choice is not None and getattr(choice, "finish_reason", None) == "length":
                        raise ReviewSchemaError("answer", "truncated (finish_reason length)")
                    value = validate(self._extract_json(content))
                except ReviewSchemaError as exc:
                    last_error = str(exc)
                    messages = messages[:2] + [
                        {"role": "assistant", "content": (content or "")[:4000]},
                        {"role": "user", "content": f"That answer was rejected: {last_error}. Reply again with one JSON "
                                                    "object that follows the schema exactly."}]
                    continue
                try:
                    self._cache_put(h, {"model": self.model, "content": content, "usage": {"prompt_tokens": p, "completion_tokens": c}})
                except OSError as exc:
                    st["warnings"].append(f"review cache not written ({self.cache_dir}): {exc.strerror or exc}")
                return value, info
            raise ReviewSchemaError("answer", f"malformed twice; last error: {last_error}")
        except openai.OpenAIError as exc:
            status = getattr(exc, "status_code", None)
            raise RuntimeError(f"{type(exc).__name__}{f' (HTTP {status})' if status else ''}: "
                               f"{self._scrub(getattr(exc, 'message', exc))}") from None
        finally:
            info["requests"] = st["requests"] - before
            info["cost_usd"] = self._cost(info["prompt_tokens"], info["completion_tokens"])

    # -- the review -----------------------------------------------------------------------

    def _evidence_payload(self, ev: ClusterEvidence, red_counts: Counter) -> dict[str, Any]:
        max_rows = int(self.config["max_rows_per_cluster"])
        max_chars = int(self.config["max_chars_per_row"])
        n_central = min(len(ev.central), max(max_rows - min(len(ev.boundary), max_rows // 3), 0))
        picked = [("central", r) for r in ev.central[:n_central]] + \
                 [("boundary", r) for r in ev.boundary[:max(max_rows - n_central, 0)]]
        rows = []
        for where, r in picked:
            text, counts = self._redact(str(r.get("text", ""))[:max_chars])
            red_counts.update(counts)
            rows.append({"row_id": str(r.get("row_id")), "position": where, "text": text})
        terms = []
        for t in ev.top_terms:
            t2, counts = self._redact(str(t))
            red_counts.update(counts)
            terms.append(t2)
        return _json_safe({"cluster": ev.cluster, "size": ev.size, "share": ev.share, "metrics": ev.metrics,
                           "top_terms": terms, "text_stats": ev.text_stats, "rows": rows}, 4)

    def review(self, evidence: Sequence[ClusterEvidence], global_metrics: dict[str, Any],
               dedup: DedupEvidence | None = None) -> ReviewOutcome:
        evidence = sorted(evidence, key=lambda e: e.cluster)
        ids = [e.cluster for e in evidence]
        offline = offline_review(evidence, global_metrics, dedup=dedup)
        offline_by_id = {c["cluster"]: c for c in offline["clusters"]}
        st: dict[str, Any] = {"mode": "json_schema", "requests": 0, "cache_hits": 0, "slept": 0.0, "fatal": None, "warnings": []}
        red_counts: Counter = Counter()
        clusters, per, failures = [], [], []
        k = _current_k(evidence, global_metrics)
        for ev in evidence:
            payload = self._evidence_payload(ev, red_counts)
            user = _render(self.user_template, {
                "cluster": str(ev.cluster), "n_clusters": str(k), "cluster_ids": json.dumps(ids),
                "evidence_json": _data_json(payload), "schema_json": json.dumps(CLUSTER_REVIEW_SCHEMA, ensure_ascii=False)})
            shown = [r["row_id"] for r in payload["rows"]]
            warn: list[str] = []

            def validate(obj: Any, _c=ev.cluster, _shown=shown, _warn=warn) -> dict[str, Any]:
                _warn.clear()
                return validate_cluster_review(obj, f"clusters[cluster {_c}]", expected_cluster=_c,
                                               known_clusters=ids, known_row_ids=_shown, warnings=_warn)
            try:
                value, info = self._ask(self.system_prompt, user, "cluster_review", CLUSTER_REVIEW_SCHEMA, validate, st)
                st["warnings"].extend(warn)
            except Exception as exc:  # noqa: BLE001 - one cluster's failure never stops the review
                value = copy.deepcopy(offline_by_id[ev.cluster])
                value["reasons"] = [f"offline fallback: the {self.reviewer_id} review failed"] + value["reasons"]
                failures.append({"cluster": ev.cluster, "error": self._scrub(exc)})
                info = {"prompt_hash": None, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "requests": 0}
                info.update(getattr(exc, "review_info", None) or {})
                info["source"] = "offline-fallback"
            clusters.append(value)
            per.append({"cluster": ev.cluster, **info})
        summary = {"current_k": k, "global_metrics": _json_safe(dict(global_metrics or {}), 4),
                   "clusters": [{"cluster": c["cluster"], "name": c["name"], "task_type": c["task_type"],
                                 "quality": c["quality"], "verdict": c["verdict"], "merge_with": c["merge_with"],
                                 "size": ev.size, "share": ev.share,
                                 "mean_silhouette": (ev.metrics or {}).get("mean_silhouette"),
                                 "nearest_cluster": (ev.metrics or {}).get("nearest_cluster"),
                                 "nearest_distance": (ev.metrics or {}).get("nearest_distance")}
                                for c, ev in zip(clusters, evidence)]}
        for c in summary["clusters"]:  # names are model output of earlier calls: redact them too
            c["name"], counts = self._redact(c["name"])
            red_counts.update(counts)
        if dedup is not None:  # row text again: clipped and redacted like the cluster samples
            shown = dedup.to_dict()
            for pair in shown["removed_pairs"] + shown["near_misses"]:
                for key in ("removed", "kept", "a", "b"):
                    if key in pair:
                        pair[key], counts = self._redact(str(pair[key])[:300])
                        red_counts.update(counts)
            summary["dedup"] = shown
        user = _render(self.global_template, {"n_clusters": str(k), "review_json": _data_json(_json_safe(summary, 4)),
                                              "schema_json": json.dumps(GLOBAL_REVIEW_SCHEMA, ensure_ascii=False)})
        try:
            glob, ginfo = self._ask(self.system_prompt, user, "global_review", GLOBAL_REVIEW_SCHEMA, validate_global_review, st)
        except Exception as exc:  # noqa: BLE001
            glob = global_from_verdicts(clusters, evidence, global_metrics, dedup=dedup)
            glob["reasons"] = [f"offline fallback: the {self.reviewer_id} global review failed"] + glob["reasons"]
            failures.append({"scope": "global", "error": self._scrub(exc)})
            ginfo = dict(getattr(exc, "review_info", None) or {})
            ginfo["source"] = "offline-fallback"
        review = validate_review({"clusters": clusters, "global": glob}, evidence)
        costs = [p["cost_usd"] for p in per] + ([ginfo.get("cost_usd")] if "cost_usd" in ginfo else [])
        usage = {
            "prompt_tokens": sum(p["prompt_tokens"] for p in per) + ginfo.get("prompt_tokens", 0),
            "completion_tokens": sum(p["completion_tokens"] for p in per) + ginfo.get("completion_tokens", 0),
            "cost_usd": None if self.prices is None else round(sum(c or 0.0 for c in costs), 8),
            "requests": st["requests"],
            "cache_hits": st["cache_hits"],
            "response_format": st["mode"],
            "global": ginfo,
        }
        return ReviewOutcome(review, self.reviewer_id, self.prompt_hash, usage, failures, per,
                             [self._scrub(w) for w in st["warnings"]], dict(sorted(red_counts.items())))


def make_reviewer(config: dict[str, Any] | None) -> Reviewer:
    """A reviewer from the ``review`` parameter section.

    ``reviewer``: ``"offline"`` (default), ``"openai"``, or ``"auto"`` (openai when ``base_url`` is set
    or the ``api_key_env`` variable exists, else offline). Keys of the section that belong to other
    consumers (``drop_clusters``, ``clean_requests``, ...) are ignored here. OpenAI keys and defaults:
    ``OPENAI_DEFAULTS``; offline thresholds: ``thresholds`` (see ``OfflineThresholds``).
    """
    cfg = dict(config or {})
    kind = str(cfg.get("reviewer") or "offline").lower()
    if kind == "auto":
        env = cfg.get("api_key_env") or OPENAI_DEFAULTS["api_key_env"]
        kind = "openai" if (cfg.get("base_url") or os.environ.get(env)) else "offline"
    if kind == "offline":
        return OfflineReviewer(cfg.get("thresholds"))
    if kind == "openai":
        return OpenAIReviewer(cfg)
    raise ReviewConfigError(f"review.reviewer: {kind!r} is not one of offline|openai|auto")


# --------------------------------------------------------------------------------------------
# From review to parameters
# --------------------------------------------------------------------------------------------

K_ALGORITHMS = {"kmeans", "k-means", "minibatch_kmeans", "agglomerative", "gmm", "spectral"}


def _min_cluster_size_default(section: dict[str, Any]) -> int:
    try:
        from purify_assets.core.clustering import ClusterParams  # noqa: PLC0415

        return int(ClusterParams.from_dict(section).min_cluster_size)
    except Exception:  # noqa: BLE001 - clustering's config may not expose it; use HDBSCAN's usual default
        return 10


def _terms_of(name: str) -> set[str]:
    return {t.strip().lower() for t in name.split("/") if t.strip()}


def resolve_drop_clusters(entries: Sequence[dict[str, Any] | int], clusters: Sequence[dict[str, Any]],
                          min_jaccard: float = 0.5) -> dict[int, str]:
    """Current cluster ids that ``review.drop_clusters`` entries refer to -> why.

    ``clusters``: the current cycle's ``[{"cluster", "name", "top_terms"?}]``. Cluster ids are only
    stable while the labels are (same clustering parameters and data); names come from top terms
    and survive a re-clustering approximately. So an entry matches a current cluster when the id
    AND the name agree, or, failing that, when the name (or its top terms) matches some cluster by
    Jaccard similarity of terms >= ``min_jaccard``. A bare int entry matches by id only.
    """
    out: dict[int, str] = {}
    by_id = {int(c["cluster"]): c for c in clusters}
    for e in entries:
        if isinstance(e, int) and not isinstance(e, bool):
            if e in by_id:
                out[e] = f"cluster id {e}"
            continue
        if not isinstance(e, dict):
            continue
        cid, name = e.get("cluster"), str(e.get("name") or "")
        cur = by_id.get(cid) if isinstance(cid, int) else None
        if cur is not None and name and cur.get("name") == name:
            out[cid] = f"id {cid} and name {name!r}"
            continue
        want = set(e.get("top_terms") or []) or _terms_of(name)
        best, best_j = None, 0.0
        for c in clusters:
            have = set(c.get("top_terms") or []) or _terms_of(str(c.get("name") or ""))
            if not want or not have:
                continue
            j = len(want & have) / len(want | have)
            if j > best_j or (j == best_j and best is not None and int(c["cluster"]) < best):
                best, best_j = int(c["cluster"]), j
        if best is not None and best_j >= min_jaccard:
            out.setdefault(best, f"name {name!r} matches (term Jaccard {best_j:.2f})")
    return out


def propose_params(review: dict[str, Any], params: dict[str, Any], *, max_drop_fraction: float = 0.5,
                   evidence: Sequence[ClusterEvidence] | None = None) -> tuple[dict[str, Any], list[str]] | None:
    """The parameter set a review implies, with reasons; None when nothing would change.

    - ``cluster.k`` (K-means-like algorithms) := ``global.suggested_k`` (or k +/- 1 when only the
      direction is given), bounded to [2, 4 x current k].
    - HDBSCAN (and other density methods with ``min_cluster_size``): more clusters wanted ->
      ``min_cluster_size`` scaled by current/suggested cluster count (fewer -> larger), bounded to
      [2, 4 x current] and at least a quarter of the current value.
    - ``review.drop_clusters`` += ``{"cluster", "name", "top_terms"}`` for every drop verdict. Both id
      and name are kept because ids change between cycles: use ``resolve_drop_clusters``. At most
      ``max_drop_fraction`` of the clusters are dropped per proposal (lowest quality first).
    - ``review.clean_requests`` += ``{"cluster", "name", "problem_row_ids", "reasons"}`` for every
      clean verdict (rows to send back to cleaning); identical requests are not repeated, so a
      stable review converges.
    - ``dedup.<near_threshold|semantic_threshold>`` := ``global.dedup_recommendation.value``,
      clipped to ``DEDUP_THRESHOLD_RANGE``; a change below 0.005 is no change.
    """
    review = validate_review(review)
    new = copy.deepcopy(params)
    reasons: list[str] = []
    cl = dict(new.get("cluster") or {})
    g = review["global"]
    real = [c for c in review["clusters"] if c["cluster"] >= 0]
    n_now = len(real)
    algo = str(cl.get("algorithm", "kmeans")).lower()
    rec, sk = g["k_recommendation"], g["suggested_k"]
    if rec != "keep" or sk is not None:
        if algo in K_ALGORITHMS or (algo not in {"hdbscan", "dbscan"} and "k" in cl):
            k = int(cl.get("k") or n_now or 2)
            target = sk if sk is not None else k + (1 if rec == "increase" else -1 if rec == "decrease" else 0)
            bounded = max(2, min(4 * k, int(target)))
            if bounded != k:
                cl["k"] = bounded
                why = f"cluster.k {k} -> {bounded} (reviewer: {rec}, suggested {sk})"
                if bounded != target:
                    why += f"; bounded to [2, {4 * k}]"
                reasons.append(why + (f": {g['reasons'][0]}" if g["reasons"] else ""))
        elif algo == "hdbscan" or "min_cluster_size" in cl:
            mcs = int(cl.get("min_cluster_size") or _min_cluster_size_default(cl))
            target_k = sk if sk is not None else n_now + (1 if rec == "increase" else -1 if rec == "decrease" else 0)
            if n_now > 0 and target_k and target_k > 0 and target_k != n_now:
                scaled = round(mcs * n_now / target_k)
                bounded = max(2, max(math.ceil(mcs / 4), min(4 * mcs, scaled)))
                if bounded != mcs:
                    cl["min_cluster_size"] = bounded
                    reasons.append(f"cluster.min_cluster_size {mcs} -> {bounded} ({n_now} clusters now, reviewer "
                                   f"suggests {target_k}: size scaled by {n_now}/{target_k})")
        else:
            reasons.append(f"note: algorithm {algo!r} has no k or min_cluster_size knob; k recommendation "
                           f"{rec} ({sk}) not applied")
    if cl != (params.get("cluster") or {}):
        new["cluster"] = cl

    rv = dict(new.get("review") or {})
    terms_by_id = {e.cluster: list(e.top_terms) for e in evidence or []}
    drops = sorted((c for c in real if c["verdict"] == "drop"), key=lambda c: (c["quality"], c["cluster"]))
    cap = max(1, int(max_drop_fraction * n_now)) if n_now > 1 else 0
    if len(drops) > cap:
        reasons.append(f"guardrail: {len(drops)} drop verdicts, only the {cap} lowest-quality applied "
                       f"(max {max_drop_fraction:.0%} of clusters per cycle)")
        drops = drops[:cap]
    existing = list(rv.get("drop_clusters") or [])
    have = {(e.get("cluster"), e.get("name")) if isinstance(e, dict) else (e, None) for e in existing}
    for c in drops:
        if (c["cluster"], c["name"]) in have:
            continue
        entry = {"cluster": c["cluster"], "name": c["name"]}
        if c["cluster"] in terms_by_id:
            entry["top_terms"] = terms_by_id[c["cluster"]]
        existing.append(entry)
        reasons.append(f"drop cluster {c['cluster']} {c['name']!r}: {'; '.join(c['reasons'][:2])}")
    if existing != list(rv.get("drop_clusters") or []):
        rv["drop_clusters"] = existing

    cleans = [c for c in review["clusters"] if c["verdict"] == "clean"]
    requests = list(rv.get("clean_requests") or [])
    seen = {(r.get("name"), tuple(r.get("problem_row_ids") or ())) for r in requests if isinstance(r, dict)}
    added = False
    for c in cleans:
        key = (c["name"], tuple(c["problem_row_ids"]))
        if key in seen:
            continue
        requests.append({"cluster": c["cluster"], "name": c["name"], "problem_row_ids": c["problem_row_ids"],
                         "reasons": c["reasons"][:3]})
        seen.add(key)
        added = True
        reasons.append(f"clean cluster {c['cluster']} {c['name']!r} ({len(c['problem_row_ids'])} problem rows): "
                       f"{'; '.join(c['reasons'][:2])}")
    if added:
        rv["clean_requests"] = requests
    if rv != (params.get("review") or {}):
        new["review"] = rv

    dr = g.get("dedup_recommendation")
    if dr:
        dd = dict(new.get("dedup") or {})
        param, value = dr["parameter"], float(dr["value"])
        bounded = round(min(DEDUP_THRESHOLD_RANGE[1], max(DEDUP_THRESHOLD_RANGE[0], value)), 4)
        current = dd.get(param)
        if current is None or abs(bounded - float(current)) >= 0.005:
            dd[param] = bounded
            new["dedup"] = dd
            why = f"dedup.{param} {current} -> {bounded}"
            if bounded != value:
                why += f" (reviewer asked {value}; bounded to {list(DEDUP_THRESHOLD_RANGE)})"
            reasons.append(why + (f": {dr['reasons'][0]}" if dr["reasons"] else ""))

    if new == params:
        return None
    return new, reasons
