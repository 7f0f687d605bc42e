"""Both sensors evaluated with build_sensor_context against a real (temporary) instance."""

import json

import pytest
from dagster import build_sensor_context, instance_for_test

from purify_assets.automation.partitions import BATCHES
from purify_assets.automation.sensors import feedback_run_requests, feedback_sensor, landing_sensor
from purify_assets.core.params import DEFAULT_PARAMS, ParamsStore, set_path
from purify_assets.resources import build_resources
from purify_assets.settings import PurifyPaths


@pytest.fixture()
def paths(tmp_path):
    return PurifyPaths(tmp_path / "home").ensure()


def test_landing_sensor_adds_one_partition_per_new_content_and_ignores_relanding(paths):
    (paths.landing / "one.jsonl").write_text('{"instruction": "a", "output": "b"}\n', "utf-8")
    (paths.landing / "two.csv").write_text("question,answer\nx,y\n", "utf-8")
    with instance_for_test() as instance:
        ctx = build_sensor_context(instance=instance, resources=build_resources(paths))
        result = landing_sensor(ctx)
        keys = sorted(r.partition_key for r in result.run_requests)
        assert len(keys) == 2
        assert sorted(result.dynamic_partitions_requests[0].partition_keys) == keys
        assert all(r.run_key == f"batch-{r.partition_key}" for r in result.run_requests)
        instance.add_dynamic_partitions(BATCHES, keys)

        # the same content again, under another name, and an unchanged folder: nothing new
        (paths.landing / "one again.jsonl").write_text('{"instruction": "a", "output": "b"}\n', "utf-8")
        ctx2 = build_sensor_context(instance=instance, cursor=result.cursor, resources=build_resources(paths))
        again = landing_sensor(ctx2)
        assert not again.run_requests
        assert not again.dynamic_partitions_requests

        # a genuinely new file is picked up
        (paths.landing / "three.jsonl").write_text('{"text": "new content here"}\n', "utf-8")
        ctx3 = build_sensor_context(instance=instance, cursor=again.cursor, resources=build_resources(paths))
        third = landing_sensor(ctx3)
        assert [r.partition_key.startswith("three-") for r in third.run_requests] == [True]


def test_feedback_sensor_requests_affected_assets_with_version_in_run_key(paths):
    store = ParamsStore(paths.params)
    v1 = store.current()
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(BATCHES, ["a-000000000000", "b-111111111111"])
        first = feedback_sensor(build_sensor_context(instance=instance, resources=build_resources(paths)))
        assert first.cursor == str(v1.version) and not first.run_requests  # starts quietly

        skip = feedback_sensor(build_sensor_context(instance=instance, cursor=str(v1.version), resources=build_resources(paths)))
        assert not getattr(skip, "run_requests", None)

        v2 = store.write(set_path(v1.params, "cluster.k", 5), source="review", reason="more clusters", parent=1)
        out = feedback_sensor(build_sensor_context(instance=instance, cursor=str(v1.version), resources=build_resources(paths)))
        assert out.cursor == str(v2.version)
        assert len(out.run_requests) == 1
        request = out.run_requests[0]
        assert request.run_key == f"params-v{v2.version}"
        assert request.tags["purify/params_version"] == str(v2.version)
        assert [k.to_user_string() for k in request.asset_selection] == [
            "cluster_labels", "projections", "cluster_metrics", "cluster_reviews", "purified_dataset"]

        # a proposed (not approved) version does not trigger anything
        store.write(set_path(v2.params, "cluster.k", 7), source="review", reason="", status="proposed", parent=2)
        idle = feedback_sensor(build_sensor_context(instance=instance, cursor=out.cursor, resources=build_resources(paths)))
        assert not getattr(idle, "run_requests", None)


def test_cleaning_changes_rerun_every_batch_before_the_cycle():
    new = set_path(DEFAULT_PARAMS, "clean.min_chars", 20)
    requests = feedback_run_requests(DEFAULT_PARAMS, new, 4, ["a-000000000000", "b-111111111111"])
    assert [r.partition_key for r in requests] == ["a-000000000000", "b-111111111111", None]
    batch_keys = [k.to_user_string() for k in requests[0].asset_selection]
    assert batch_keys == ["clean_rows", "rejected_rows", "embeddings"]
    assert requests[-1].run_key == "params-v4"
    assert len({r.run_key for r in requests}) == 3
