"""Shared fixtures. ``shared_data`` points at ../shared/data and skips when it is absent."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "PURIFY_CACHE_DIR" not in os.environ:
    # derived model files (the loaded USE encoder, ONNX exports without a cache_dir) go to one
    # cache for the session, shared by its tests and their Dagster run processes, never ~/.cache
    _cache = tempfile.mkdtemp(prefix="purify-test-cache-")
    os.environ["PURIFY_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared datasets not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture()
def purify_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "purify_home"
    monkeypatch.setenv("PURIFY_HOME", str(home))
    return home
