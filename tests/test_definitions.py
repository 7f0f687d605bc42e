"""The code location loads, names what the user asked for, and stays cheap to import."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from purify_assets.definitions import build_definitions

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ["raw_rows", "clean_rows", "embeddings", "dedup_sets", "cluster_labels", "projections",
          "cluster_metrics", "cluster_reviews", "purified_dataset"]


def test_assets_lineage_and_partitions(tmp_path):
    defs = build_definitions(tmp_path)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(ASSETS) | {"quarantine", "rejected_rows"} <= keys
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["clean_rows"] == {"raw_rows"}
    assert parents["embeddings"] == {"clean_rows"}
    assert "embeddings" in parents["dedup_sets"]
    assert parents["cluster_labels"] == {"dedup_sets"}
    assert parents["projections"] == {"cluster_labels"} and parents["cluster_metrics"] == {"cluster_labels"}
    assert "cluster_metrics" in parents["cluster_reviews"] and parents["purified_dataset"] == {"cluster_reviews"}
    for key in ("raw_rows", "clean_rows", "embeddings"):
        assert graph.get(next(k for k in graph.get_all_asset_keys() if k.to_user_string() == key)).partitions_def.name == "batches"
    schedule = defs.resolve_schedule_def("daily_cycle_schedule")
    assert schedule.default_status.value == "STOPPED"
    assert {s.name for s in defs.sensors} == {"landing_sensor", "feedback_sensor"}
    assert all(defs.resolve_sensor_def(s).default_status.value == "RUNNING" for s in ("landing_sensor", "feedback_sensor"))


def test_dagster_yaml_serializes_the_single_writer():
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 1
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_definitions_validate_and_import_stays_light(tmp_path):
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path), PURIFY_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    probe = ("import sys, purify_assets.definitions; "
             "heavy = [m for m in ('torch', 'sentence_transformers', 'umap', 'hdbscan', 'openai', 'sklearn') if m in sys.modules]; "
             "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"heavy modules imported by the definitions: {out.stdout}"
