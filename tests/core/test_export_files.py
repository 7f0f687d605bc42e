"""The export's plan: which clusters link their earlier parts and which are written whole."""

import polars as pl

from purify_assets.core import export_files as ex


def counts(*rows):
    return pl.DataFrame(rows, schema={"cluster": pl.Int32, "cluster_name": pl.String, "rows": pl.Int64}, orient="row")


def manifest(cycle, **clusters):
    return {"layout": ex.LAYOUT, "cycle": cycle,
            "clusters": {ex.cluster_folder(c, name): {"cluster": c, "name": name, "rows": rows,
                                                       "parts": [{"stem": ex.part_stem(k), "rows": 1} for k in parts]}
                         for c, name, rows, parts in clusters.values()}}


def test_a_cluster_that_only_gained_rows_links_its_parts_and_writes_the_new_ones():
    prev = manifest(1, a=(0, "greetings", 10, [1]), b=(1, "math", 5, [1]))
    plans = ex.plan_export(counts((0, "greetings", 13), (1, "math", 5)), {0: 3}, set(), prev, 1, 2)
    assert [(p.folder, p.write, [x["stem"] for x in p.linked], p.new_rows) for p in plans] == [
        ("cluster_000_greetings", "new", ["part-c001"], 3), ("cluster_001_math", "new", ["part-c001"], 0)]


def test_every_other_case_writes_the_cluster_whole_and_says_why():
    prev = manifest(1, a=(0, "greetings", 10, [1]), b=(1, "math", 5, [1]), c=(2, "code", 4, [1]),
                    d=(3, "full", 4, list(range(1, ex.MAX_PARTS + 1))), e=(4, "again", 4, [1, 2]))
    now = counts((0, "greetings", 12), (1, "maths", 5), (2, "code", 4), (3, "full", 5), (4, "again", 5), (9, "code", 4))
    plans = {p.cluster: p for p in ex.plan_export(now, {0: 1, 3: 1, 4: 1}, {2}, prev, 1, 2)}
    assert all(p.write == "all" and not p.linked for p in plans.values())
    assert "do not hold exactly" in plans[0].reason  # 10 earlier rows + 1 new is not 12
    assert "new folder" in plans[1].reason  # renamed
    assert "changed or left" in plans[2].reason
    assert f"{ex.MAX_PARTS} parts already" in plans[3].reason
    assert "a part of cycle 2 already" in plans[4].reason
    assert "new folder" in plans[9].reason
    # a manifest made for another publication than the one the warehouse holds, or none at all
    for previous, previous_cycle in ((prev, 3), (None, 1), (prev, None)):
        assert all(p.write == "all" and "no earlier export" in p.reason
                   for p in ex.plan_export(counts((0, "greetings", 10)), {}, set(), previous, previous_cycle, 4))


def test_manifests_of_another_layout_are_not_read(tmp_path):
    (tmp_path / ex.MANIFEST_NAME).write_text('{"layout": 1, "cycle": 1, "clusters": {}}', "utf-8")
    assert ex.read_manifest(tmp_path) is None
    (tmp_path / ex.MANIFEST_NAME).write_text("not json", "utf-8")
    assert ex.read_manifest(tmp_path) is None
    assert ex.read_manifest(tmp_path / "missing") is None
    written = ex.write_manifest(tmp_path, 2, ex.plan_export(counts((0, "x y", 2)), {0: 2}, set(), None, None, 2),
                                {"cluster_000_x_y": {"stem": "part-c002", "rows": 2, "cycle": 2}})
    assert ex.read_manifest(tmp_path) == written and written["clusters"]["cluster_000_x_y"]["parts"][0]["rows"] == 2


def test_a_cluster_whose_earlier_part_file_is_gone_is_written_whole(tmp_path):
    prev = manifest(1, a=(0, "greetings", 10, [1]), b=(1, "math", 5, [1]))
    plans = ex.plan_export(counts((0, "greetings", 11), (1, "math", 5)), {0: 1}, set(), prev, 1, 2)
    for plan in plans:
        (tmp_path / plan.folder).mkdir()
        for suffix in ex.PART_SUFFIXES:
            (tmp_path / plan.folder / f"part-c001{suffix}").write_text("{}\n", "utf-8")
    (tmp_path / plans[1].folder / "part-c001.parquet").unlink()
    ex.unlink_missing_parts(plans, tmp_path)
    assert [(p.write, len(p.linked)) for p in plans] == [("new", 1), ("all", 0)]
    assert plans[1].reason == "an earlier part file is missing"
    target = tmp_path / "next" / plans[0].folder
    target.mkdir(parents=True)
    assert ex.link_parts(plans[0], tmp_path, target) == 1
    for suffix in ex.PART_SUFFIXES:
        linked, source = target / f"part-c001{suffix}", tmp_path / plans[0].folder / f"part-c001{suffix}"
        assert linked.stat().st_ino == source.stat().st_ino
    # no earlier folder at all: nothing can be linked
    plans = ex.plan_export(counts((0, "greetings", 11)), {0: 1}, set(), prev, 1, 2)
    ex.unlink_missing_parts(plans, None)
    assert plans[0].write == "all" and not plans[0].linked
