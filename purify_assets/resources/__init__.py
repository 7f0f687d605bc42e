"""Dagster resources: the DuckDB warehouse, the parameter store, the workspace folders, embedders."""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any, Iterator

import duckdb
from dagster import ConfigurableResource

from purify_assets.core import warehouse as wh
from purify_assets.core.params import ParamsStore, ParamsVersion
from purify_assets.settings import PurifyPaths


class PurifyWarehouse(ConfigurableResource):
    """The one DuckDB file every asset writes to. Connections wait for the single writer lock."""

    path: str
    wait_seconds: float = 600.0

    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with wh.connect(self.path, wait_seconds=self.wait_seconds) as con:
            yield con


class PurifyParams(ConfigurableResource):
    """Versioned parameters in SQLite, outside the warehouse (see ``purify_assets.core.params``)."""

    path: str

    def store(self) -> ParamsStore:
        return ParamsStore(self.path)

    def current(self) -> ParamsVersion:
        return self.store().current()


class PurifyFiles(ConfigurableResource):
    """The workspace folders under ``PURIFY_HOME``: landing, archive, exports, plots, caches."""

    home: str

    @property
    def paths(self) -> PurifyPaths:
        return PurifyPaths(Path(self.home)).ensure()


@functools.lru_cache(maxsize=4)
def _cached_embedder(config_json: str) -> Any:
    from purify_assets.core.embedders import make_embedder

    return make_embedder(json.loads(config_json))


def embedder_for(embed_params: dict[str, Any]) -> Any:
    """One embedder per configuration and process, so a model loads once per run."""
    config = {k: v for k, v in embed_params.items() if k not in ("text_template", "response_vectors")}
    return _cached_embedder(json.dumps(config, sort_keys=True))


def build_resources(paths: PurifyPaths) -> dict[str, Any]:
    return {
        "warehouse": PurifyWarehouse(path=str(paths.warehouse)),
        "params": PurifyParams(path=str(paths.params)),
        "files": PurifyFiles(home=str(paths.home)),
    }
