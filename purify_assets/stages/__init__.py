"""Stage runners: each reads its inputs from the warehouse, calls the pure core, writes its table(s)
in one transaction, and returns a ``StageReport`` that the Dagster asset turns into metadata.

No Dagster import here either: the CLI, the benchmarks and the tests call these directly.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

Log = Callable[[str], None]


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
