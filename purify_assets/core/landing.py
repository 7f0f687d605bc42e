"""Landing folder and archive: one batch per distinct file content.

A file dropped into ``PURIFY_HOME/landing`` becomes a batch once: its bytes are copied unchanged to
``PURIFY_HOME/archive/<sha256>/<original name>`` with a ``meta.json`` beside it. The batch key (the
Dagster partition key) reads ``<slug of the file name>-<first 12 hex of sha256>``; landing the same
content again, under any name, finds the archived sha256 and creates nothing.

Only the landing and archive folders are touched here, never the warehouse: the landing sensor
calls this, and sensors must not open DuckDB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path

BATCH_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,60}-[0-9a-f]{12}$")
IGNORED_PREFIXES = (".", "_", "~")


class LandingError(ValueError):
    pass


@dataclass(frozen=True)
class LandedBatch:
    batch_key: str
    sha256: str
    original_name: str
    archived_path: str
    bytes: int
    landed_at: float
    mapping: dict | None = None  # field mapping from a ``<file>.mapping.json`` beside the landed file

    def as_dict(self) -> dict:
        return asdict(self)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def slugify(name: str) -> str:
    """A partition-key-safe slug of a file name: ascii lowercase, digits, ``_ . -``."""
    stem = name
    for suffix in (".gz", ".zst", ".zstd"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    stem = Path(stem).stem
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9_.-]+", "_", ascii_stem.lower()).strip("_.-")
    return (slug or "batch")[:48]


def batch_key_for(name: str, sha256: str) -> str:
    return f"{slugify(name)}-{sha256[:12]}"


def archived_batches(archive_dir: Path) -> dict[str, LandedBatch]:
    """sha256 -> LandedBatch for every archived batch."""
    out: dict[str, LandedBatch] = {}
    if not archive_dir.exists():
        return out
    for meta in archive_dir.glob("*/meta.json"):
        try:
            data = json.loads(meta.read_text("utf-8"))
            out[data["sha256"]] = LandedBatch(**data)
        except (OSError, ValueError, TypeError, KeyError):
            continue  # a half-written meta (killed mid-archive) is redone on the next landing
    return out


def find_batch(archive_dir: Path, batch_key: str) -> LandedBatch:
    """The archived batch for a partition key; a clear error when it is unknown."""
    if not BATCH_KEY_RE.match(batch_key):
        raise LandingError(f"{batch_key!r} is not a purify batch key (expected <name>-<12 hex>)")
    prefix = batch_key.rsplit("-", 1)[1]
    for meta in archive_dir.glob(f"{prefix}*/meta.json"):
        data = json.loads(meta.read_text("utf-8"))
        if data["batch_key"] == batch_key:
            return LandedBatch(**data)
    raise LandingError(f"batch {batch_key!r} has no archived file under {archive_dir}; land the file again")


def archive_file(path: Path, archive_dir: Path, *, known: dict[str, LandedBatch] | None = None) -> tuple[LandedBatch, bool]:
    """Archive ``path`` unchanged; returns (batch, created). ``created`` is False for known content."""
    path = Path(path)
    if not path.is_file():
        raise LandingError(f"{path} is not a file")
    sha = sha256_of(path)
    known = archived_batches(archive_dir) if known is None else known
    if sha in known:
        return known[sha], False
    mapping = None
    mapping_file = path.with_name(path.name + ".mapping.json")
    try:
        has_mapping = mapping_file.exists()
    except OSError:  # e.g. the name is already at NAME_MAX: no mapping file can exist beside it
        has_mapping = False
    if has_mapping:
        try:
            mapping = json.loads(mapping_file.read_text("utf-8"))
        except ValueError as exc:
            raise LandingError(f"{mapping_file}: not valid JSON ({exc})") from exc
        if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
            raise LandingError(f"{mapping_file}: expected an object such as {{\"instruction\": \"Q\", \"output\": \"A\"}}")
    target_dir = archive_dir / sha
    target_dir.mkdir(parents=True, exist_ok=True)
    safe_name = path.name.replace(os.sep, "_")
    target = target_dir / safe_name
    tmp = target_dir / ".incoming.part"  # short: ``<name>.part`` overflows NAME_MAX for a 251+ byte name
    try:
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)  # disk full / read-only: leave no half-copied file behind
        raise
    batch = LandedBatch(
        batch_key=batch_key_for(path.name, sha), sha256=sha, original_name=path.name,
        archived_path=str(target), bytes=target.stat().st_size, landed_at=time.time(), mapping=mapping,
    )
    meta_tmp = target_dir / "meta.json.part"
    meta_tmp.write_text(json.dumps(batch.as_dict(), ensure_ascii=False, indent=1), "utf-8")
    os.replace(meta_tmp, target_dir / "meta.json")
    known[sha] = batch
    return batch, True


def landing_candidates(landing_dir: Path) -> list[Path]:
    """Data files in the landing folder (recursive), skipping hidden, temporary and mapping files."""
    if not landing_dir.exists():
        return []
    out = []
    for p in sorted(landing_dir.rglob("*")):
        rel = p.relative_to(landing_dir)
        if not p.is_file() or any(part.startswith(IGNORED_PREFIXES) for part in rel.parts):
            continue
        if p.name.endswith((".mapping.json", ".part", ".tmp")):
            continue
        if p.is_symlink() and not is_inside(landing_dir, p):
            continue  # a symlink to a file outside the landing folder is refused (see refused_candidates)
        out.append(p)
    return out


def is_inside(base: Path, candidate: str | Path) -> bool:
    try:
        resolve_inside(base, candidate)
        return True
    except LandingError:
        return False


def refused_candidates(landing_dir: Path) -> list[Path]:
    """Files in the landing folder that are symlinks resolving outside it: never archived."""
    if not landing_dir.exists():
        return []
    return [p for p in sorted(landing_dir.rglob("*"))
            if p.is_symlink() and p.is_file() and not is_inside(landing_dir, p)]


def scan_landing(landing_dir: Path, archive_dir: Path, seen: dict[str, list] | None = None) -> tuple[list[LandedBatch], dict[str, list]]:
    """Archive every new file in the landing folder.

    ``seen`` maps path -> [size, mtime] of files already handled (the sensor cursor), so unchanged
    files are not hashed again. Returns the new batches and the updated ``seen``.
    """
    seen = dict(seen or {})
    known = archived_batches(archive_dir)
    new: list[LandedBatch] = []
    for path in landing_candidates(landing_dir):
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime]
        if seen.get(str(path)) == stamp:
            continue
        batch, created = archive_file(path, archive_dir, known=known)
        seen[str(path)] = stamp
        if created:
            new.append(batch)
    return new, seen


def resolve_inside(base: Path, candidate: str | Path) -> Path:
    """``candidate`` resolved; refused when it escapes ``base`` (e.g. through ``..``)."""
    base_r = base.resolve()
    target = (base_r / candidate).resolve()
    if base_r != target and base_r not in target.parents:
        raise LandingError(f"{candidate} is outside {base}")
    return target
