import pytest

from purify_assets.core.params import (
    DEFAULT_PARAMS, ParamsError, ParamsStore, affected_assets, deep_merge, diff, params_hash, parse_value, set_path,
)


def test_first_use_writes_defaults_as_version_one(tmp_path):
    store = ParamsStore(tmp_path / "p.sqlite")
    assert store.latest_approved_version() == 0
    pv = store.current()
    assert (pv.version, pv.source, pv.status) == (1, "default", "approved")
    assert pv.params == DEFAULT_PARAMS
    assert pv.hash == params_hash(DEFAULT_PARAMS)


def test_versions_are_immutable_and_current_is_newest_approved(tmp_path):
    store = ParamsStore(tmp_path / "p.sqlite")
    v1 = store.current()
    v2 = store.write(set_path(v1.params, "cluster.k", 5), source="user", reason="try 5", parent=1)
    v3 = store.write(set_path(v2.params, "cluster.k", 9), source="review", reason="more", status="proposed", parent=2)
    assert store.current().version == v2.version
    assert store.pending() == [v3]
    store.set_status(v3.version, "approved")
    assert store.current().params["cluster"]["k"] == 9
    assert store.get(1).params["cluster"]["k"] == DEFAULT_PARAMS["cluster"]["k"]
    with pytest.raises(ParamsError, match="only a proposed version"):
        store.set_status(v2.version, "rejected")


def test_unknown_section_is_refused(tmp_path):
    store = ParamsStore(tmp_path / "p.sqlite")
    with pytest.raises(ParamsError, match="unknown parameter section"):
        set_path(DEFAULT_PARAMS, "clusterr.k", 3)
    with pytest.raises(ParamsError, match="unknown parameter sections"):
        store.write({"bogus": {}}, source="user", reason="")


def test_diff_and_affected_assets_follow_the_graph():
    new = set_path(DEFAULT_PARAMS, "cluster.k", 12)
    assert diff(DEFAULT_PARAMS, new) == {"cluster.k": (DEFAULT_PARAMS["cluster"]["k"], 12)}
    assert affected_assets(DEFAULT_PARAMS, new) == [
        "cluster_labels", "projections", "cluster_metrics", "cluster_reviews", "purified_dataset"]
    cleaned = set_path(DEFAULT_PARAMS, "clean.min_chars", 9)
    assert affected_assets(DEFAULT_PARAMS, cleaned)[:2] == ["clean_rows", "embeddings"]
    assert "raw_rows" not in affected_assets(DEFAULT_PARAMS, cleaned)
    assert affected_assets(DEFAULT_PARAMS, set_path(DEFAULT_PARAMS, "project.seed", 1)) == ["projections"]
    assert affected_assets(DEFAULT_PARAMS, DEFAULT_PARAMS) == []


def test_deep_merge_and_parse_value():
    merged = deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}})
    assert merged == {"a": {"b": 1, "c": 3}}
    assert parse_value("6") == 6 and parse_value("true") is True and parse_value("[1,2]") == [1, 2]
    assert parse_value("hdbscan") == "hdbscan"
