"""Stage runners: each reads its inputs from the warehouse, calls the pure core, writes its table(s)
in one transaction, and returns a ``StageReport`` that the Dagster asset turns into metadata.

No Dagster import here either: the CLI, the benchmarks and the tests call these directly.
"""

from __future__ import annotations

import gc
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

Log = Callable[[str], None]


def releases_memory(stage: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for a stage runner whose first argument is the warehouse connection: when it
    returns (or fails), what the stage left behind goes back to the system, so the next stage on the
    same connection starts from a low baseline. At 712k rows this keeps every stage of a cycle under
    4 GiB in one process.

    First the reference cycles the stage made are collected. They matter because of what they pin:
    a library that raises and catches exceptions inside a stage (matplotlib parses its settings with
    pyparsing on first import, inside the projection stage's first plot) can leave them in cycles,
    and a traceback's frames hold their callers' frames, so the stage's own frame and every array it
    held stay alive until Python's cyclic collector happens to run. At 100k rows that was the 196 MB
    vector matrix of the projection stage (found with ``gc.DEBUG_SAVEALL``), at 712k about 1.4 GB,
    held through metrics, review and publish in one run out of three. A full collection costs
    0.1-0.2 s once dagster and the numeric libraries are loaded (~300k tracked objects), so the
    objects alive when the stage starts are set aside (``gc.freeze``) and the collection at the end
    looks only at what the stage made, then they are put back. Then DuckDB's cached blocks and free
    heap pages are given back (``warehouse.release_memory``)."""
    import functools

    @functools.wraps(stage)
    def run(con: Any, *args: Any, **kwargs: Any) -> Any:
        froze = gc.get_freeze_count() == 0  # someone else's freeze (or an outer stage's) is left alone
        if froze:
            gc.freeze()
        try:
            return stage(con, *args, **kwargs)
        finally:
            from purify_assets.core.warehouse import release_memory

            gc.collect()
            if froze:
                gc.unfreeze()
            release_memory(con)

    return run


def _no_log(message: str) -> None:
    pass


@dataclass
class StageReport:
    """What a stage did, for Dagster metadata, the CLI and tests."""

    counts: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    values: dict[str, Any] = field(default_factory=dict)  # other scalars (rates, hashes, model ids)
    markdown: dict[str, str] = field(default_factory=dict)  # previews and tables
    images: dict[str, bytes] = field(default_factory=dict)  # PNGs, shown inline as markdown
    files: dict[str, str] = field(default_factory=dict)  # paths written (exports, HTML plots)
    checks: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name -> (passed, description)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = round(self.timings.get(step, 0.0) + time.perf_counter() - start, 4)
