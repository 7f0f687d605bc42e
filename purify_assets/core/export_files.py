"""The files a publication writes: one folder per cluster, its rows in parts (JSONL and Parquet).

A cycle's export folder (``exports/cycle_NNN``) holds, per published cluster, a folder
``cluster_<id>_<name>`` with one or more parts, ``part-c<cycle>.jsonl`` and ``.parquet`` (the same
rows in both), and ``MANIFEST.json``, which lists every cluster's folder, parts and row counts.

Parts are what make a backfill cheap: when a cycle only adds rows to a cluster (its earlier rows
kept their cluster, name, task type and texts), the earlier parts are hard links to the files of
the previous export, and only the new rows are written, as one new part. A cluster that lost or
changed a row is written again as a single part, and so is one that would reach ``MAX_PARTS``.
Each file is written once and never modified, so a link shares its bytes with the earlier export
without either being able to change the other; deleting an old cycle's folder leaves the later
ones whole. Reading a whole cluster is reading its folder (``pl.read_parquet(folder / "*.parquet")``
or ``cat folder/*.jsonl``); every row of the export is ``cycle_NNN/cluster_*/*.jsonl``.

This module decides and writes; the stage (``stages.cycle.publish_dataset``) reads the rows from
the warehouse and says which clusters changed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

#: the columns of every exported row, in this order
EXPORT_COLUMNS = ["row_id", "batch_id", "cluster", "cluster_name", "task_type", "instruction", "input", "output", "record_json"]
MANIFEST_NAME = "MANIFEST.json"
#: the layout version written into the manifest; an export without a manifest of this version is
#: never linked from (it is written again in full)
LAYOUT = 2
#: a cluster with this many parts is written again as one part instead of getting another
MAX_PARTS = 16


def safe_name(text: str) -> str:
    slug = re.sub(r"[^\w.-]+", "_", text, flags=re.UNICODE).strip("_.")
    return slug[:60] or "cluster"


def cluster_folder(cluster: int, name: str | None) -> str:
    return f"cluster_{int(cluster):03d}_{safe_name(str(name or 'unnamed'))}"


def part_stem(cycle: int) -> str:
    return f"part-c{int(cycle):03d}"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of an export folder, or None when it has none, an unreadable one or one of an
    older layout."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("layout") != LAYOUT or not isinstance(manifest.get("clusters"), dict):
        return None
    return manifest


@dataclass
class ClusterPlan:
    """What the export does for one cluster: ``linked`` parts of the previous export (by stem) are
    linked, then ``write`` says which rows go into the one part written now: "new" (the rows new
    to this cluster) or "all" (every row of the cluster, the earlier parts not used)."""

    cluster: int
    name: str | None
    folder: str
    rows: int
    write: str
    new_rows: int
    linked: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


def plan_export(counts: pl.DataFrame, new_counts: dict[int, int], changed: set[int], previous: dict[str, Any] | None,
                previous_cycle: int | None, cycle: int, max_parts: int = MAX_PARTS) -> list[ClusterPlan]:
    """One ``ClusterPlan`` per row of ``counts`` (cluster, cluster_name, rows: the published rows
    per cluster). ``new_counts``: rows per cluster that the previous publication did not hold as
    they are now (new rows, and rows that moved in or changed); ``changed``: clusters that lost or
    changed a row of the previous publication; ``previous``: the previous export's manifest, made
    for the publication of ``previous_cycle`` (the one the warehouse still holds).

    A cluster links its earlier parts when the manifest lists its folder for the same cluster id,
    it lost and changed nothing, its other rows are exactly the ones listed (row counts agree),
    and one more part keeps it within ``max_parts`` and does not reuse a stem it already has."""
    usable = previous is not None and previous_cycle is not None and previous.get("cycle") == previous_cycle
    entries = previous["clusters"] if usable else {}
    plans = []
    for cluster, name, rows in counts.select("cluster", "cluster_name", "rows").iter_rows():
        cluster, rows = int(cluster), int(rows)
        folder = cluster_folder(cluster, name)
        new = int(new_counts.get(cluster, 0))
        entry = entries.get(folder)
        plan = ClusterPlan(cluster, name, folder, rows, "all", new)
        stems = [p.get("stem") for p in entry.get("parts", [])] if isinstance(entry, dict) else []
        if not usable:
            plan.reason = "no earlier export of the publication the warehouse holds"
        elif entry is None:
            plan.reason = "new folder (a new cluster, or a new name)"
        elif int(entry.get("cluster", -2)) != cluster:
            plan.reason = "the folder held another cluster id"
        elif cluster in changed:
            plan.reason = "rows of the cluster changed or left it"
        elif int(entry.get("rows", -1)) != rows - new:
            plan.reason = "the earlier parts do not hold exactly the cluster's other rows"
        elif new and len(stems) + 1 > max_parts:
            plan.reason = f"{len(stems)} parts already: written again as one"
        elif new and part_stem(cycle) in stems:
            plan.reason = f"it has a part of cycle {cycle} already: written again as one"
        else:
            plan.write, plan.linked = "new", list(entry["parts"])
            plan.reason = f"{len(stems)} part(s) linked" + (f", {new:,} new rows" if new else "")
        plans.append(plan)
    return plans


#: the files of one part, one per format
PART_SUFFIXES = (".jsonl", ".parquet")


def unlink_missing_parts(plans: list[ClusterPlan], previous_folder: Path | None) -> None:
    """A cluster whose earlier parts are not all on disk in ``previous_folder`` (a file deleted by
    hand, say) is written whole instead: its plan loses its links and says why."""
    for plan in plans:
        if not plan.linked:
            continue
        files = [previous_folder / plan.folder / f"{part['stem']}{suffix}" for part in plan.linked
                 for suffix in PART_SUFFIXES] if previous_folder is not None else []
        if not files or not all(f.is_file() for f in files):
            plan.write, plan.linked, plan.reason = "all", [], "an earlier part file is missing"


def link_parts(plan: ClusterPlan, previous_folder: Path, target: Path) -> int:
    """The earlier parts of ``plan`` put into ``target`` (its cluster's new folder) as links to the
    files in ``previous_folder`` (``link_or_copy``); returns how many parts."""
    for part in plan.linked:
        for suffix in PART_SUFFIXES:
            link_or_copy(previous_folder / plan.folder / f"{part['stem']}{suffix}", target / f"{part['stem']}{suffix}")
    return len(plan.linked)


def link_or_copy(source: Path, target: Path) -> str:
    """A hard link of ``source`` at ``target`` ("linked"), or a copy where links cannot be made
    ("copied": another file system, or one without links)."""
    try:
        os.link(source, target)
        return "linked"
    except OSError:
        shutil.copyfile(source, target)
        return "copied"


def write_parts(parts: list[tuple[Path, pl.DataFrame]]) -> None:
    """Each (path without suffix, rows) as ``.jsonl`` and ``.parquet``, two files at a time (polars
    writes without the GIL). The rows are written in ``EXPORT_COLUMNS`` order."""
    with ThreadPoolExecutor(2, thread_name_prefix="purify-export") as pool:
        jobs = []
        for stem, frame in parts:
            frame = frame.select(EXPORT_COLUMNS)
            jobs.append(pool.submit(frame.write_ndjson, stem.with_suffix(PART_SUFFIXES[0])))
            jobs.append(pool.submit(frame.write_parquet, stem.with_suffix(PART_SUFFIXES[1])))
        for job in jobs:
            job.result()


def write_manifest(folder: Path, cycle: int, plans: list[ClusterPlan], written: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``MANIFEST.json`` of the export in ``folder``: per cluster folder its id, name, row count and
    parts (stem, rows, and the cycle whose export first wrote it). ``written``: the part written
    now per cluster folder, if any."""
    clusters = {}
    for plan in plans:
        parts = list(plan.linked) + ([written[plan.folder]] if plan.folder in written else [])
        clusters[plan.folder] = {"cluster": plan.cluster, "name": plan.name, "rows": plan.rows, "parts": parts}
    manifest = {"layout": LAYOUT, "cycle": int(cycle), "columns": EXPORT_COLUMNS, "clusters": clusters}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), "utf-8")
    return manifest
