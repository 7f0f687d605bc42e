"""Where purify keeps its files. ``PURIFY_HOME`` (default ``./data``) holds everything of one workspace."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def purify_home(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("PURIFY_HOME") or "data").expanduser().resolve()


@dataclass(frozen=True)
class PurifyPaths:
    home: Path

    @classmethod
    def from_env(cls, explicit: str | Path | None = None) -> "PurifyPaths":
        return cls(purify_home(explicit))

    @property
    def warehouse(self) -> Path:
        return self.home / "warehouse.duckdb"

    @property
    def landing(self) -> Path:
        return self.home / "landing"

    @property
    def archive(self) -> Path:
        return self.home / "archive"

    @property
    def exports(self) -> Path:
        return self.home / "exports"

    @property
    def plots(self) -> Path:
        return self.home / "plots"

    @property
    def params(self) -> Path:
        return self.home / "params.sqlite"

    @property
    def cache(self) -> Path:
        return self.home / "cache"

    def ensure(self) -> "PurifyPaths":
        for folder in (self.home, self.landing, self.archive, self.exports, self.plots, self.cache):
            folder.mkdir(parents=True, exist_ok=True)
        return self
