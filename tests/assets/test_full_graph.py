"""The whole graph, end to end, on the generated demo data: what `purify demo` (the Quickstart) runs.

One session-scoped run (two cycles, the second triggered through the feedback sensor) feeds the
invariant checks below, so the embedding model and UMAP load once.
"""

import json
import os
from pathlib import Path

import pytest
from dagster import DagsterInstance

from purify_assets import cli
from purify_assets.core import warehouse as wh
from purify_assets.core.demo import DEMO_PLANTED
from purify_assets.core.params import ParamsStore
from purify_assets.settings import PurifyPaths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> PurifyPaths:
    root = tmp_path_factory.mktemp("demo")
    saved = {k: os.environ.get(k) for k in ("DAGSTER_HOME", "PURIFY_HOME")}
    os.environ["DAGSTER_HOME"] = str(root / "dagster_home")
    (root / "dagster_home").mkdir()
    paths = PurifyPaths(root / "home")
    try:
        assert cli.main(["--home", str(paths.home), "demo", "--cycles", "2"]) == 0
        yield paths
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def con(demo_home):
    with wh.connect(demo_home.warehouse, read_only=True) as c:
        yield c


def test_every_asset_table_is_filled(demo_home):
    status = cli.status_dict(demo_home)
    for table, n in status["tables"].items():
        assert n > 0, f"{table} is empty"
    assert status["params_versions"] >= 2, "the review should have written a new parameter version"
    assert status["cycles"] == 2


def test_no_row_is_lost(con):
    raw = wh.scalar(con, "SELECT count(*) FROM raw_rows")
    kept = wh.scalar(con, "SELECT count(*) FROM clean_rows")
    rejected = wh.scalar(con, "SELECT count(*) FROM rejected_rows")
    assert raw == kept + rejected
    assert wh.scalar(con, "SELECT count(*) FROM quarantine") == DEMO_PLANTED["malformed_jsonl_lines"]
    # every row id appears exactly once across kept and rejected
    assert wh.scalar(con, "SELECT count(DISTINCT row_id) FROM (SELECT row_id FROM clean_rows UNION ALL "
                          "SELECT row_id FROM rejected_rows)") == raw
    assert wh.scalar(con, "SELECT count(*) FROM rejected_rows WHERE reason IS NULL OR reason = ''") == 0


def test_every_kept_row_has_an_embedding_and_every_survivor_a_cluster(con):
    assert wh.scalar(con, "SELECT count(*) FROM clean_rows c ANTI JOIN embeddings e USING (row_id)") == 0
    cycle = wh.current_cycle(con)
    survivors = wh.scalar(con, "SELECT count(*) FROM clean_rows WHERE row_id NOT IN (SELECT row_id FROM dedup_sets "
                               "WHERE NOT is_representative AND kind IN ('exact','near','semantic'))")
    labelled = wh.scalar(con, "SELECT count(*) FROM cluster_labels WHERE cycle = ?", [cycle])
    dropped_by_review = survivors - labelled
    assert labelled > 0 and dropped_by_review >= 0
    assert wh.scalar(con, "SELECT count(*) FROM cluster_labels WHERE cycle = ? GROUP BY row_id HAVING count(*) > 1",
                     [cycle]) is None


def test_planted_exact_duplicates_are_found(con):
    removed = wh.scalar(con, "SELECT count(*) FROM dedup_sets WHERE kind = 'exact' AND NOT is_representative")
    assert removed >= DEMO_PLANTED["exact_duplicate_copies"] - 2  # a planted copy may also fail a cleaning filter


def test_feedback_cycle_ran_with_the_new_parameters(demo_home, con):
    store = ParamsStore(demo_home.params)
    versions = store.history()
    review_versions = [v for v in versions if v.source == "review"]
    assert review_versions, "no review-sourced parameter version"
    cycles = wh.frame(con, "SELECT cycle, params_version, state FROM cycles ORDER BY cycle").to_dicts()
    assert cycles[0]["params_version"] < cycles[1]["params_version"] == review_versions[0].version
    assert cycles[0]["state"] == "applied"
    instance = DagsterInstance.get()
    runs = instance.get_runs()
    tagged = [r for r in runs if r.tags.get("purify/params_version") == str(review_versions[0].version)]
    assert tagged and all(r.is_success for r in tagged)


def test_projections_metrics_reviews_and_exports(demo_home, con):
    cycle = wh.current_cycle(con)
    methods = wh.frame(con, "SELECT method, dims, count(*) AS n FROM projections WHERE cycle = ? GROUP BY ALL ORDER BY ALL", [cycle])
    assert {(m, d) for m, d, _ in methods.iter_rows()} >= {("pca", 2), ("pca", 3), ("umap", 2), ("umap", 3)}
    metrics = dict(wh.run(con, "SELECT metric, value FROM cluster_metrics WHERE cycle = ? AND scope = 'global'", [cycle]))
    assert -1 <= metrics["silhouette"] <= 1 and metrics["davies_bouldin"] > 0 and metrics["calinski_harabasz"] > 0
    reviews = wh.frame(con, "SELECT cluster, name, verdict FROM cluster_reviews WHERE cycle = ? AND scope = 'cluster'", [cycle])
    n_clusters = wh.scalar(con, "SELECT count(DISTINCT cluster) FROM cluster_labels WHERE cycle = ? AND cluster >= 0", [cycle])
    assert len(reviews) == n_clusters and reviews["name"].null_count() == 0
    assert set(reviews["verdict"]) <= {"keep", "clean", "drop", "split", "merge"}
    folder = demo_home.exports / f"cycle_{cycle:03d}"
    exported = sum(1 for f in folder.glob("cluster_*/part-*.jsonl") for _ in open(f, encoding="utf-8"))
    assert exported == wh.scalar(con, "SELECT count(*) FROM purified_dataset")
    first = json.loads(next(iter(open(next(folder.glob("cluster_*/part-*.jsonl")), encoding="utf-8"))))
    assert "task_type" in json.loads(first["record_json"])  # extra columns survive to the export
    assert (folder / "DATASET_CARD.md").read_text("utf-8").startswith("# Purified dataset")
    assert list(demo_home.plots.glob("*_2d.png")) and list(demo_home.plots.glob("*_3d.html"))


def test_relanding_the_same_file_creates_no_batch(demo_home, capsys):
    before = cli.status_dict(demo_home)["tables"]["raw_rows"]
    demo_file = next((demo_home.landing / "demo").glob("*.jsonl"))
    assert cli.main(["--home", str(demo_home.home), "land", str(demo_file)]) == 0
    assert "already landed" in capsys.readouterr().out
    assert cli.status_dict(demo_home)["tables"]["raw_rows"] == before


def test_status_json_shape(demo_home, capsys):
    assert cli.main(["--home", str(demo_home.home), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status["tables"]) >= {"raw_rows", "clean_rows", "embeddings", "dedup_sets", "cluster_labels",
                                     "projections", "cluster_metrics", "cluster_reviews", "purified_dataset",
                                     "quarantine", "rejected_rows"}
    assert status["params_versions"] >= 2 and status["cycles"] == 2


def test_planted_junk_is_rejected_with_reasons(con):
    reasons = dict(wh.run(con, "SELECT reason, count(*) FROM rejected_rows GROUP BY reason"))
    assert reasons.get("empty_output", 0) >= DEMO_PLANTED["empty_outputs"]
    assert reasons.get("output_equals_input", 0) >= DEMO_PLANTED["output_equals_input"] - 1
    assert reasons.get("too_short", 0) >= DEMO_PLANTED["too_short"] // 2
    # HTML junk and PII are repaired in place, not rejected
    html_left = wh.scalar(con, "SELECT count(*) FROM clean_rows WHERE regexp_matches(text || coalesce(output, ''), '<(p|br|div)[ />]')")
    assert html_left == 0
    assert wh.scalar(con, "SELECT count(*) FROM clean_rows WHERE regexp_matches(coalesce(input,'') || coalesce(output,''), "
                          "'010-[0-9]{4}-[0-9]{4}')") == 0


def test_zz_retracting_a_batch_removes_it_everywhere_on_the_next_cycle(demo_home, capsys):
    """Runs last in this module: it changes the shared demo workspace."""
    with wh.connect(demo_home.warehouse, read_only=True) as c:
        batch = wh.scalar(c, "SELECT batch_id FROM batches ORDER BY batch_id LIMIT 1")
        before = wh.scalar(c, "SELECT count(*) FROM raw_rows")
        in_batch = wh.scalar(c, "SELECT count(*) FROM raw_rows WHERE batch_id = ?", [batch])
    assert cli.main(["--home", str(demo_home.home), "retract", batch]) == 0
    assert not DagsterInstance.get().has_dynamic_partition("batches", batch)
    assert cli.main(["--home", str(demo_home.home), "run"]) == 0
    with wh.connect(demo_home.warehouse, read_only=True) as c:
        assert wh.scalar(c, "SELECT count(*) FROM raw_rows") == before - in_batch
        for table in ("clean_rows", "rejected_rows", "embeddings", "quarantine"):
            assert wh.scalar(c, f"SELECT count(*) FROM {table} WHERE batch_id = ?", [batch]) == 0
        cycle = wh.current_cycle(c)
        assert wh.scalar(c, "SELECT count(*) FROM cluster_labels WHERE cycle = ? AND starts_with(row_id, ?)", [cycle, batch]) == 0
        assert wh.scalar(c, "SELECT count(*) FROM purified_dataset WHERE batch_id = ?", [batch]) == 0
        assert wh.scalar(c, "SELECT count(*) FROM dedup_sets WHERE starts_with(row_id, ?)", [batch]) == 0
