"""An incremental cycle: a few new rows after a full cycle keep the projection fit and the k sweep
of the earlier cycle; changed settings, too many changed rows or changed fitted rows force a refit.

Same stand-in embedder and row generator as tests/stages/test_stages.py. Projections use PCA and
t-SNE (no UMAP: its first fit in a process compiles for tens of seconds).
"""

import numpy as np
import polars as pl
import pytest

from purify_assets.core import warehouse as wh
from purify_assets.core.params import DEFAULT_PARAMS, ParamsStore, deep_merge
from purify_assets.stages.cycle import cluster_rows, dedup_rows, measure_clusters, project_rows, review_clusters
from tests.stages.test_stages import TrigramEmbedder, load, make_rows

PROJECT = {"methods": ["pca", "tsne"], "seed": 0, "fit_sample": 40}  # t-SNE fitted on 40 rows, the rest placed


@pytest.fixture(autouse=True)
def one_thread():
    # t-SNE's threads spin on a busy 2-core machine (see tests/core/test_projection.py)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def fresh_rows(tag, n):
    """``n`` rows whose instructions share nothing with make_rows' templates (no dedup removals)."""
    words = ["amber", "basil", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper",
             "kelp", "lotus", "maple", "nectar", "onyx", "pebble", "quartz", "raven", "saffron", "tundra",
             "umber", "velvet", "willow", "xenon", "yarrow", "zephyr", "acorn", "bramble", "canyon", "dune"]
    return [{"instruction": f"List {i + 3} facts about {words[i % len(words)]} ({tag} set, item {i}).",
             "input": f"{tag} context {i}: {words[(i * 7) % len(words)]} and {words[(i * 11) % len(words)]}.",
             "output": f"Facts for {tag} {i}."} for i in range(n)]


class Cycle:
    """One warehouse, and a helper that runs dedup -> cluster -> project -> measure on it."""

    def __init__(self, home, con, project=PROJECT, measure=None):
        self.home, self.con, self.emb = home, con, TrigramEmbedder()
        self.store = ParamsStore(home / "p.sqlite")
        params = deep_merge(DEFAULT_PARAMS, {"cluster": {"k": 3}, "project": dict(project),
                                             "measure": dict(measure or {"k_sweep": [2, 3, 4, 5]})})
        self.pv = self.store.write(params, source="user", reason="test")
        self.batches = 0

    def land(self, rows):
        self.batches += 1
        load(self.con, self.home, f"b{self.batches}.jsonl", rows, self.emb, self.pv.params)

    def run(self, project=None, measure=None, with_measure=True):
        dedup_rows(self.con, self.pv.params["dedup"], self.emb.model_id)
        cluster_rows(self.con, self.pv, self.emb.model_id)
        proj = project_rows(self.con, project or self.pv.params["project"], self.emb.model_id, self.home / "plots")
        meas = measure_clusters(self.con, measure or self.pv.params["measure"], self.emb.model_id) if with_measure else None
        return proj, meas

    def coords(self, cycle):
        return wh.frame(self.con, "SELECT row_id, method, dims, x, y, z, cluster FROM projections WHERE cycle = ? "
                                  "ORDER BY method, dims, row_id", [cycle])

    def vectors(self, row_ids):
        frame = wh.frame(self.con, "SELECT row_id, vector FROM embeddings WHERE model_id = ?", [self.emb.model_id])
        by_id = dict(zip(frame["row_id"].to_list(), frame["vector"].to_list()))
        return np.array([by_id[r] for r in row_ids], dtype=np.float32)


def edit_text(con, row_id):
    """``row_id``'s text (and so its vector's key) changes, as after re-cleaning its batch."""
    with wh.transaction(con):
        wh.run(con, "UPDATE clean_rows SET text = text || ' (edited)', text_hash = 'edited' WHERE row_id = ?", [row_id])
        wh.run(con, "UPDATE embeddings SET text_hash = 'edited' WHERE row_id = ?", [row_id])


@pytest.fixture()
def home(tmp_path):
    (tmp_path / "archive").mkdir()
    return tmp_path


def test_a_few_new_rows_keep_the_projection_and_are_placed_onto_it(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())  # 60 rows
        first, _ = cy.run(with_measure=False)
        assert first.values["mode"] == "refit" and first.values["refit_reason"] == "no earlier projection fit"
        assert first.counts["rows_refit"] == 60
        before = cy.coords(1)
        cy.land(fresh_rows("new", 6))  # 10 % new rows
        second, _ = cy.run(with_measure=False)
        assert second.values["mode"] == "reused", second.values
        assert second.counts["rows_reused"] == 60 and second.counts["rows_placed"] == 6
        assert second.counts["rows_refit"] == 0 and second.counts["fit_cycle"] == 1
        assert second.values["changed_share"] == pytest.approx(0.1)
        after = cy.coords(2)
        assert len(after) == 66 * 4  # 2 methods x (2-D, 3-D)
        old = after.join(before.select("row_id", "method", "dims"), on=["row_id", "method", "dims"], how="semi")
        # the 60 earlier rows keep exactly the coordinates of cycle 1, with the labels of cycle 2
        assert old.select("row_id", "method", "dims", "x", "y", "z").equals(before.select("row_id", "method", "dims", "x", "y", "z"))
        labels2 = wh.frame(con, "SELECT row_id, cluster FROM cluster_labels WHERE cycle = 2")
        joined = after.join(labels2, on="row_id", suffix="_label")
        assert (joined["cluster"] == joined["cluster_label"]).all()
        new = after.join(before.select("row_id").unique(), on="row_id", how="anti")
        assert new["row_id"].n_unique() == 6 and new["x"].null_count() == 0 and new["y"].null_count() == 0
        assert new.filter(pl.col("dims") == 3)["z"].null_count() == 0
        # PCA: the new rows are transformed by the PCA of cycle 1 (fitted on 40 of its 60 rows), the
        # very map the earlier rows sit on
        from sklearn.decomposition import PCA

        fit_ids = wh.frame(con, "SELECT row_id FROM projection_fit WHERE method = 'pca' AND dims = 2 ORDER BY row_id")["row_id"]
        assert len(fit_ids) == 40
        model = PCA(n_components=2, random_state=0).fit(cy.vectors(fit_ids.to_list()))
        old_pca = before.filter((pl.col("method") == "pca") & (pl.col("dims") == 2))
        np.testing.assert_allclose(old_pca.select("x", "y").to_numpy(),
                                   model.transform(cy.vectors(old_pca["row_id"].to_list())), atol=1e-4)
        new_pca = new.filter((pl.col("method") == "pca") & (pl.col("dims") == 2)).sort("row_id")
        np.testing.assert_allclose(new_pca.select("x", "y").to_numpy(),
                                   model.transform(cy.vectors(new_pca["row_id"].to_list())), atol=1e-4)
        # t-SNE: new rows are weighted means of fitted rows, so they stay inside the fitted map
        fit = wh.frame(con, "SELECT x, y FROM projection_fit WHERE method = 'tsne' AND dims = 2")
        assert len(fit) == 40
        placed = new.filter((pl.col("method") == "tsne") & (pl.col("dims") == 2))
        assert placed["x"].min() >= fit["x"].min() - 1e-4 and placed["x"].max() <= fit["x"].max() + 1e-4
        assert placed["y"].min() >= fit["y"].min() - 1e-4 and placed["y"].max() <= fit["y"].max() + 1e-4
        assert (home / "plots" / "cycle2_tsne_2d.png").stat().st_size > 0
        assert (home / "plots" / "cycle2_pca_3d.html").exists()
        # the same rows again (a re-materialization of the same cycle): nothing to place
        again = project_rows(con, cy.pv.params["project"], cy.emb.model_id, home / "plots")
        assert again.values["mode"] == "reused" and again.counts["rows_placed"] == 0
        assert cy.coords(2).equals(after)


def test_a_kept_projection_takes_the_new_labels_and_loses_the_rows_that_left(home):
    from purify_assets.core.params import set_path

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        rows = make_rows()
        cy.land(rows)
        cy.run(with_measure=False)
        before = cy.coords(1)
        # near copies with a longer response: their 2 originals become removed duplicates and leave
        # the clustering input; k 3 -> 4 refits the clusters, so most rows change label, while the
        # projection (which does not depend on the clusters) keeps its fit
        cy.land([dict(r, output=r["output"] + " Yes, indeed.") for r in rows[10:12]])
        cy.pv = cy.store.write(set_path(cy.pv.params, "cluster.k", 4), source="user", reason="k 4")
        second, _ = cy.run(with_measure=False)
        assert second.values["mode"] == "reused", second.values
        labels = wh.frame(con, "SELECT row_id, cluster FROM cluster_labels WHERE cycle = 2")
        after = cy.coords(2)
        # the table holds exactly the rows of cycle 2, every one with its cycle-2 label
        assert wh.scalar(con, "SELECT count(*) FROM projections") == len(after) == 4 * len(labels)
        assert sorted(after["row_id"].unique().to_list()) == sorted(labels["row_id"].to_list())
        joined = after.join(labels, on="row_id", suffix="_label")
        assert (joined["cluster"] == joined["cluster_label"]).all()
        gone = before.join(labels, on="row_id", how="anti")["row_id"].unique()
        assert len(gone) == 2
        # the rows that stayed keep their coordinates of cycle 1
        kept = after.join(before.select("row_id", "method", "dims"), on=["row_id", "method", "dims"], how="semi")
        assert kept.select("row_id", "method", "dims", "x", "y", "z").equals(
            before.filter(~pl.col("row_id").is_in(gone.implode())).select("row_id", "method", "dims", "x", "y", "z"))
        assert before.join(labels, on="row_id").filter(pl.col("cluster") != pl.col("cluster_right")).height > 0


def test_a_placed_row_whose_text_changed_is_placed_again_and_its_old_state_goes(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        cy.run(with_measure=False)
        # a row placed onto the fit, not fitted, changes its text (as after re-cleaning its batch)
        row_id = wh.scalar(con, "SELECT min(row_id) FROM clean_rows WHERE row_id NOT IN (SELECT row_id FROM projection_fit)")
        edit_text(con, row_id)
        cy.land(fresh_rows("new", 3))
        report, _ = cy.run(with_measure=False)
        assert report.values["mode"] == "reused" and report.counts["rows_placed"] == 4
        n = wh.scalar(con, "SELECT count(*) FROM cluster_labels WHERE cycle = 2")
        assert wh.scalar(con, "SELECT count(*) FROM projections") == 4 * n == 4 * 63
        assert wh.scalar(con, "SELECT count(DISTINCT (row_id, method, dims)) FROM projections") == 4 * n
        for stage in ("clusters", "projections"):
            hashes = wh.run(con, "SELECT text_hash FROM fit_state WHERE stage = ? AND row_id = ?", [stage, row_id])
            assert hashes == [("edited",)], stage
            assert wh.scalar(con, "SELECT count(*) FROM fit_state WHERE stage = ?", [stage]) == n


def test_a_changed_projection_parameter_forces_a_refit(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        cy.run(with_measure=False)
        cy.land(fresh_rows("new", 3))
        report, _ = cy.run(project=dict(PROJECT, seed=1), with_measure=False)
        assert report.values["mode"] == "refit" and "parameters" in report.values["refit_reason"]
        assert report.counts["rows_refit"] == 63 and report.counts["rows_placed"] == 0
        # a parameter that only changes the pictures does not
        report, _ = cy.run(project=dict(PROJECT, seed=1, plot_points=30), with_measure=False)
        assert report.values["mode"] == "reused"


def test_many_new_rows_force_a_refit_and_small_batches_add_up(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con, project=dict(PROJECT, refit_share=0.15))
        cy.land(make_rows())
        cy.run(with_measure=False)
        cy.land(fresh_rows("a", 6))  # 10 % of the 60 fitted rows: reused
        assert cy.run(with_measure=False)[0].values["mode"] == "reused"
        cy.land(fresh_rows("b", 6))  # 6 + 6 rows placed since the fit = 20 % > 15 %: refit
        report, _ = cy.run(with_measure=False)
        assert report.values["mode"] == "refit" and "refit_share" in report.values["refit_reason"]
        assert report.counts["fit_cycle"] == 3 and report.counts["rows_at_fit"] == 72
        cy.land(fresh_rows("c", 30))  # 30 new rows on 72 fitted ones: refit at once
        report, _ = cy.run(with_measure=False)
        assert report.values["mode"] == "refit" and report.counts["rows_refit"] == 102


def test_a_fitted_row_whose_text_changed_forces_a_refit(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        cy.run(with_measure=False)
        # a fitted row's text (and therefore its vector) changes, as after re-cleaning its batch
        row_id = wh.scalar(con, "SELECT row_id FROM projection_fit WHERE method = 'tsne' ORDER BY row_id LIMIT 1")
        edit_text(con, row_id)
        report, _ = cy.run(with_measure=False)
        assert report.values["mode"] == "refit"
        assert "changed their text" in report.values["refit_reason"]


def test_the_k_sweep_is_reused_while_the_rows_barely_change(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        _, first = cy.run()
        assert first.values["k_sweep_mode"] == "computed" and first.values["sweep_from_cycle"] == 1
        assert "k_sweep" in first.timings
        review_clusters(con, cy.pv, cy.store, cy.emb.model_id, home / "cache")
        cy.land(fresh_rows("new", 6))
        _, second = cy.run()
        assert second.values["k_sweep_mode"] == "reused" and second.values["sweep_from_cycle"] == 1
        assert "k_sweep" not in second.timings
        # the same sweep makes the same chart: taken from chart_cache, not drawn again
        assert (first.values["k_sweep_chart"], second.values["k_sweep_chart"]) == ("drawn", "reused")
        assert second.images["k_sweep"] == first.images["k_sweep"] and second.images["k_sweep"][:4] == b"\x89PNG"
        sweep = "SELECT setting, metric, value FROM cluster_metrics WHERE cycle = ? AND scope = 'sweep' ORDER BY ALL"
        one, two = wh.frame(con, sweep, [1]), wh.frame(con, sweep, [2])
        assert one.equals(two)  # the same figures, written again under cycle 2 ...
        origin = two.filter(pl.col("metric") == "sweep_from_cycle")
        assert len(origin) == 4 and (origin["value"] == 1.0).all()  # ... each marked as computed in cycle 1
        # the current metrics (what the reviewer reads) still carry the sweep's verdict
        current = "SELECT metric, value FROM cluster_metrics WHERE cycle = ? AND scope = 'global' AND metric LIKE 'sweep%' ORDER BY metric"
        assert wh.frame(con, current, [2]).equals(wh.frame(con, current, [1]))
        # the labels' own metrics are fresh: 66 rows in cycle 2
        assert wh.scalar(con, "SELECT value FROM cluster_metrics WHERE cycle = 2 AND scope = 'global' AND metric = 'n'") == 66
        review = review_clusters(con, cy.pv, cy.store, cy.emb.model_id, home / "cache")
        k_rec = wh.run(con, "SELECT cycle, verdict FROM cluster_reviews WHERE scope = 'global' ORDER BY cycle")
        assert k_rec[0][1] == k_rec[1][1] == review.values["k_recommendation"]


def test_the_k_sweep_is_recomputed_when_settings_ks_or_rows_change(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        cy.run()
        measure = cy.pv.params["measure"]
        sweep = "SELECT setting, metric, value FROM cluster_metrics WHERE cycle = ? AND scope = 'sweep' AND setting <> 'k=6' " \
                "AND metric <> 'seconds' ORDER BY ALL"
        # more ks than the stored sweep tried (a review moved k): only the new k is computed
        _, report = cy.run(measure=dict(measure, k_sweep=[2, 3, 4, 5, 6]))
        assert report.values["k_sweep_mode"] == "partly reused" and "k = 6 not tried before" in report.values["k_sweep_reason"]
        assert report.counts["k_sweep_ks_reused"] == 4 and report.counts["k_sweep_ks_computed"] == 1
        assert report.values["k_sweep_chart"] == "drawn"  # another k on it: another chart
        assert report.values["sweep_from_cycle"] == 1
        assert wh.frame(con, sweep, [2]).equals(wh.frame(con, sweep, [1]))  # k = 2..5 as computed in cycle 1
        origin = dict(wh.run(con, "SELECT setting, value FROM cluster_metrics WHERE cycle = 2 AND scope = 'sweep' "
                                  "AND metric = 'sweep_from_cycle'"))
        assert origin == {"k=2": 1.0, "k=3": 1.0, "k=4": 1.0, "k=5": 1.0, "k=6": 2.0}
        # fewer ks: covered by the stored sweep
        _, report = cy.run(measure=dict(measure, k_sweep=[3, 4]))
        assert report.values["k_sweep_mode"] == "reused" and report.values["sweep_from_cycle"] == 1
        assert wh.scalar(con, "SELECT count(DISTINCT setting) FROM cluster_metrics WHERE cycle = 3 AND scope = 'sweep'") == 2
        # k = 6 was computed in cycle 2, not in cycle 3: still found
        _, report = cy.run(measure=dict(measure, k_sweep=[2, 6]))
        assert report.values["k_sweep_mode"] == "reused" and report.counts["k_sweep_ks_computed"] == 0
        # other sweep settings
        _, report = cy.run(measure=dict(measure, sweep_stability_runs=3))
        assert report.values["k_sweep_mode"] == "computed" and "settings" in report.values["k_sweep_reason"]
        # many new rows
        cy.land(fresh_rows("many", 20))
        _, report = cy.run(measure=dict(measure, sweep_stability_runs=3))
        assert report.values["k_sweep_mode"] == "computed" and "sweep_refit_share" in report.values["k_sweep_reason"]
        assert report.values["sweep_from_cycle"] == 6


def test_a_few_new_rows_keep_the_kmeans_fit_and_go_to_the_nearest_stored_centre(home):
    from purify_assets.core.clustering import assign_to_centers
    from purify_assets.core.params import set_path

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        dedup_rows(con, cy.pv.params["dedup"], cy.emb.model_id)
        first = cluster_rows(con, cy.pv, cy.emb.model_id)
        assert first.values["mode"] == "refit" and first.values["refit_reason"] == "no earlier clustering fit"
        before = wh.frame(con, "SELECT row_id, cluster, strength FROM cluster_labels WHERE cycle = 1")
        centres = np.array(wh.frame(con, "SELECT center FROM cluster_fit ORDER BY cluster")["center"].to_list(), dtype=np.float32)
        assert centres.shape == (3, cy.emb.dim)
        cy.land(fresh_rows("new", 6))  # 10 % new rows
        dedup_rows(con, cy.pv.params["dedup"], cy.emb.model_id)
        second = cluster_rows(con, cy.pv, cy.emb.model_id)
        assert second.values["mode"] == "reused" and second.values["fit_cycle"] == 1, second.values
        assert second.counts["rows_reused"] == 60 and second.counts["rows_assigned"] == 6 and second.counts["rows_refit"] == 0
        after = wh.frame(con, "SELECT row_id, cluster, strength FROM cluster_labels WHERE cycle = 2")
        assert after.join(before, on="row_id", how="semi").sort("row_id").equals(before.sort("row_id"))  # labels kept
        new = after.join(before, on="row_id", how="anti").sort("row_id")
        labels, strength = assign_to_centers(cy.vectors(new["row_id"].to_list()), centres)
        assert new["cluster"].to_list() == labels.tolist()
        np.testing.assert_allclose(new["strength"].to_numpy(), strength, atol=1e-6)
        # another cluster parameter, or a review dropping a cluster, refits
        other = cy.store.write(set_path(cy.pv.params, "cluster.k", 4), source="user", reason="k 4")
        third = cluster_rows(con, other, cy.emb.model_id)
        assert third.values["mode"] == "refit" and "cluster parameters" in third.values["refit_reason"]
        assert third.counts["clusters"] == 4 and third.counts["rows_refit"] == 66
        dropping = cy.store.write(set_path(other.params, "review.drop_clusters", [{"cycle": 3, "cluster": 0}]),
                                  source="review", reason="drop 0")
        fourth = cluster_rows(con, dropping, cy.emb.model_id)
        assert fourth.values["mode"] == "refit" and fourth.counts["rows_refit"] < 66


def test_many_new_rows_or_a_density_clustering_refit_the_clusters(home):
    from purify_assets.core.params import set_path

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        dedup_rows(con, cy.pv.params["dedup"], cy.emb.model_id)
        cluster_rows(con, cy.pv, cy.emb.model_id)
        cy.land(fresh_rows("many", 15))  # 25 % new rows
        dedup_rows(con, cy.pv.params["dedup"], cy.emb.model_id)
        report = cluster_rows(con, cy.pv, cy.emb.model_id)
        assert report.values["mode"] == "refit" and "cluster.refit_share" in report.values["refit_reason"]
        assert wh.scalar(con, "SELECT max(fit_cycle) FROM cluster_fit") == 2
        dense = cy.store.write(set_path(cy.pv.params, "cluster.algorithm", "dbscan"), source="user", reason="dbscan")
        report = cluster_rows(con, dense, cy.emb.model_id)
        assert report.values["mode"] == "refit" and "only K-means" in report.values["refit_reason"]
        assert wh.scalar(con, "SELECT count(*) FROM cluster_fit") == 0
        assert wh.scalar(con, "SELECT count(*) FROM fit_state WHERE stage = 'clusters'") == 0


def test_the_3d_plot_reads_the_hover_texts_of_the_drawn_points_only(home):
    from purify_assets.core.plots import drawn_points
    from purify_assets.stages.cycle import _hover_texts

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con, project={"methods": ["pca"], "seed": 0, "plot_points_3d": 25})
        cy.land(make_rows())
        cy.run(with_measure=False)
        rows = wh.frame(con, "SELECT l.row_id, c.text FROM cluster_labels l JOIN clean_rows c USING (row_id) "
                             "WHERE l.cycle = 1 ORDER BY l.row_id")
        drawn = drawn_points(len(rows), 25)
        assert 0 < len(drawn) == 25 < len(rows)
        hover = _hover_texts(con, rows["row_id"], drawn, 120)
        texts = rows["text"].to_list()
        assert [hover[i] for i in drawn] == [t[:120] for t in (texts[i] for i in drawn)]
        assert sum(h is not None for h in hover) == 25
        page = (home / "plots" / "cycle1_pca_3d.html").read_text("utf-8")
        shown = [t for i, t in enumerate(texts) if i in set(drawn.tolist())]
        hidden = [t for i, t in enumerate(texts) if i not in set(drawn.tolist())]
        import html as h
        assert all(h.escape(t[:120]) in page for t in shown)
        assert not any(h.escape(t[:120]) in page for t in hidden if not any(t[:120] in s for s in shown))
        assert "showing 25 of" in page


def test_the_review_is_carried_over_while_few_rows_change_and_redone_when_drift_adds_up(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.pv = cy.store.write(deep_merge(cy.pv.params, {"review": {"rereview_share": 0.15}}), source="user", reason="test")

        def review():
            return review_clusters(con, cy.pv, cy.store, cy.emb.model_id, home / "cache")

        cy.land(make_rows())  # 60 rows
        cy.run()
        first = review()
        assert first.values["mode"] == "reviewed" and first.values["rereview_reason"] == "no earlier review"
        assert "evidence" in first.timings
        versions = len(cy.store.history())  # with what the first review proposed
        cy.land(fresh_rows("new", 6))  # 10 % new: the clusters keep their fit, the review stands
        cy.run()
        second = review()
        assert second.values["mode"] == "carried_over" and second.values["carried_from"] == 1
        assert "evidence" not in second.timings and second.counts["clusters_carried_over"] == first.counts["clusters_reviewed"]
        assert "6 rows new, 0 gone and 0 in another cluster since the review of cycle 1: 10.0% of its 60 rows" in \
            second.values["reuse_reason"]
        columns = "scope, cluster, name, task_type, quality, verdict, merge_with, reasons, problem_row_ids, reviewer, prompt_hash"
        same = f"SELECT {columns} FROM cluster_reviews WHERE cycle = ? ORDER BY scope, cluster"
        assert wh.frame(con, same, [2]).equals(wh.frame(con, same, [1])) and len(wh.frame(con, same, [2])) > 1
        marks = wh.run(con, "SELECT DISTINCT json_extract(review_json, '$.carried_from')::INT FROM cluster_reviews WHERE cycle = 2")
        assert marks == [(1,)]
        state = wh.run(con, "SELECT state, proposed_version, recommendation FROM cycles WHERE cycle = 2")[0]
        assert state[:2] == ("review_carried_over", None) and state[2] == second.values["k_recommendation"]
        assert len(cy.store.history()) == versions  # nothing proposed again
        # drift is counted against the cycle actually reviewed: 6 + 4 new rows are 16.7 % of cycle 1's 60 rows
        cy.land(fresh_rows("more", 4))
        cy.run()
        third = review()
        assert third.values["mode"] == "reviewed" and "evidence" in third.timings
        assert "10 rows new" in third.values["rereview_reason"] and "above review.rereview_share 15%" in third.values["rereview_reason"]
        assert wh.run(con, "SELECT count(*) FROM cluster_reviews WHERE cycle = 3 AND review_json LIKE '%carried_from%'") == [(0,)]


def test_the_review_is_redone_after_a_refit_or_when_switched_off(home):
    from purify_assets.stages.cycle import _review_to_carry

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        cy.run()
        first = review_clusters(con, cy.pv, cy.store, cy.emb.model_id, home / "cache")
        reviewer, prompt = first.values["reviewer"], first.values["prompt_hash"]
        cy.land(fresh_rows("new", 3))
        cy.run()
        assert _review_to_carry(con, 2, reviewer, prompt, 0.2)["carry"]
        assert _review_to_carry(con, 2, reviewer, prompt, 0.0)["reason"] == "review.rereview_share is 0: every cycle is reviewed"
        assert "reviewer or its prompt changed" in _review_to_carry(con, 2, "openai:gpt-x", prompt, 0.2)["reason"]
        # another k: new parameters, a new K-means fit, a fresh review
        cy.pv = cy.store.write(deep_merge(cy.pv.params, {"cluster": {"k": 4}}), source="user", reason="k 4")
        cy.run()
        verdict = _review_to_carry(con, 3, reviewer, prompt, 0.2)
        assert not verdict["carry"] and "parameters changed since the review of cycle 1" in verdict["reason"]


def test_a_kept_fit_updates_its_fit_state_row_by_row(home):
    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        cy.run(with_measure=False)
        state = "SELECT row_id, text_hash, config, fit_cycle, rows_at_fit, since_fit FROM fit_state WHERE stage = ? ORDER BY row_id"
        first = {stage: wh.frame(con, state, [stage]) for stage in ("clusters", "projections")}
        assert all(len(f) == 60 and not f["since_fit"].any() for f in first.values())
        for tag, n, total in (("new", 4, 64), ("more", 3, 67)):
            cy.land(fresh_rows(tag, n))
            proj, _ = cy.run(with_measure=False)
            assert proj.values["mode"] == "reused"
            for stage, before in first.items():
                now = wh.frame(con, state, [stage])
                kept = now.join(before.select("row_id"), on="row_id", how="semi")
                assert len(now) == total and kept.equals(before)  # the fitted rows' state is untouched
                added = now.join(before.select("row_id"), on="row_id", how="anti")
                assert len(added) == total - 60 and added["since_fit"].all() and (added["fit_cycle"] == 1).all()
                assert (added["rows_at_fit"] == 60).all() and added["config"].n_unique() == 1
        # a row gone from the data leaves the state too
        wh.run(con, "DELETE FROM clean_rows WHERE row_id = (SELECT min(row_id) FROM clean_rows)")
        cy.run(with_measure=False)
        for stage in ("clusters", "projections"):
            assert wh.scalar(con, "SELECT count(*) FROM fit_state WHERE stage = ?", [stage]) == 66


def test_measure_reads_the_vectors_from_the_cache_files_without_a_matrix_and_agrees_with_duckdb(home, monkeypatch):
    from purify_assets.core import list_cache

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con, measure={"k_sweep": None})
        cy.land(make_rows())
        cy.run(with_measure=False)
        views = []
        real_view = list_cache.ListCache.view

        def spy(self, *a, **k):
            out = real_view(self, *a, **k)
            views.append(out)
            return out

        monkeypatch.setattr(list_cache.ListCache, "view", spy)
        cached = measure_clusters(con, {"k_sweep": None}, cy.emb.model_id)
        assert len(views) == 1 and isinstance(views[0], list_cache.CachedRows)  # the stage asked for rows, not a matrix
        monkeypatch.setenv("PURIFY_LIST_CACHE", "0")  # the same figures from DuckDB's own matrix
        from_duckdb = measure_clusters(con, {"k_sweep": None}, cy.emb.model_id)
        assert len(views) == 1
        assert cached.values == pytest.approx(from_duckdb.values, nan_ok=True)
        assert cached.markdown["per_cluster"] == from_duckdb.markdown["per_cluster"]
        assert "geometry" in cached.timings


def test_a_fresh_k_sweep_gets_only_its_sampled_rows_the_same_ones_it_would_draw(home, monkeypatch):
    from purify_assets.core import clustering
    from purify_assets.stages import cycle as stage

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        cy.land(make_rows())
        cy.run(with_measure=False)
        given = []
        real = clustering.k_sweep

        def spy(vectors, ks, **kw):
            given.append(np.array(vectors))
            return real(vectors, ks, **kw)

        monkeypatch.setattr(clustering, "k_sweep", spy)
        measure = {"k_sweep": [2, 3], "sweep_sample": 25}
        report = measure_clusters(con, measure, cy.emb.model_id)
        assert report.values["k_sweep_mode"] == "computed" and given  # (k_sweep calls itself once to cap its threads)
        data = stage._labelled(con, report.counts["cycle"], cy.emb.model_id)
        every = stage._all_vectors(con, data, cy.emb.model_id)
        assert len(every) > 25
        np.testing.assert_array_equal(given[0], every[clustering.sample_indices(len(every), 25, 0)])


def test_a_backfill_links_the_earlier_export_parts_and_writes_only_its_new_rows(home):
    import json

    from purify_assets.core.export_files import EXPORT_COLUMNS
    from purify_assets.stages.cycle import publish_dataset

    def exported(folder):
        rows = [json.loads(line) for f in folder.glob("cluster_*/part-*.jsonl") for line in f.read_text("utf-8").splitlines()]
        return sorted(rows, key=lambda r: r["row_id"])

    with wh.connect(home / "w.duckdb") as con:
        cy = Cycle(home, con)
        exports = home / "exports"

        def table():
            return wh.frame(con, f"SELECT {', '.join(EXPORT_COLUMNS)} FROM purified_dataset ORDER BY row_id").to_dicts()

        def cycle_and_publish():
            cy.run(with_measure=False)
            measure_clusters(con, cy.pv.params["measure"], cy.emb.model_id)
            review = review_clusters(con, cy.pv, cy.store, cy.emb.model_id, home / "cache")
            return review, publish_dataset(con, exports, home / "plots")

        cy.land(make_rows())
        _, first = cycle_and_publish()
        one = exports / "cycle_001"
        first_rows = exported(one)
        assert first_rows == table() and first.counts["export_rows_written"] == first.counts["rows_published"]
        cy.land(fresh_rows("new", 6))  # 10 % new: fit and review kept, the clusters keep their names and folders
        review, second = cycle_and_publish()
        assert review.values["mode"] == "carried_over"
        two = exports / "cycle_002"
        new_rows = second.counts["rows_published"] - first.counts["rows_published"]
        assert new_rows == 6
        assert (second.counts["table_rows_deleted"], second.counts["table_rows_inserted"]) == (0, 6)
        # only the 6 new rows are written; every part of cycle 1 is the same file in cycle 2, not a copy
        assert second.counts["export_rows_written"] == 6 and second.counts["export_clusters_written_whole"] == 0
        assert second.counts["export_parts_linked"] == first.counts["clusters_published"]
        for old in one.glob("cluster_*/part-c001.*"):
            assert (two / old.parent.name / old.name).stat().st_ino == old.stat().st_ino
        assert exported(two) == table() and len(table()) == len(first_rows) + 6
        manifest = json.loads((two / "MANIFEST.json").read_text("utf-8"))
        stems = sorted(p["stem"] for c in manifest["clusters"].values() for p in c["parts"])
        assert stems.count("part-c001") == first.counts["clusters_published"] and 1 <= stems.count("part-c002") <= 6
        assert sum(p["rows"] for c in manifest["clusters"].values() for p in c["parts"] if p["stem"] == "part-c002") == 6
        # a row whose texts changed (cleaned again): its cluster is written whole as one part, the others linked
        edited = table()[0]
        wh.run(con, "UPDATE clean_rows SET output = output || ' (edited)', row_hash = 'edited' WHERE row_id = ?", [edited["row_id"]])
        third = publish_dataset(con, exports, home / "plots")
        assert (third.counts["table_rows_deleted"], third.counts["table_rows_inserted"]) == (1, 1)
        assert third.counts["export_clusters_written_whole"] == 1
        assert third.counts["export_rows_written"] == manifest["clusters"][next(
            f for f, c in manifest["clusters"].items() if c["cluster"] == edited["cluster"])]["rows"]
        assert exported(two) == table()
        assert next(r for r in exported(two) if r["row_id"] == edited["row_id"])["output"].endswith("(edited)")
        assert exported(one) == first_rows  # the earlier export shares files but none of them changed
        # an earlier part file gone, or no manifest (an older layout): those clusters are written whole
        next(two.glob("cluster_*/part-c001.parquet")).unlink()
        fourth = publish_dataset(con, exports, home / "plots")
        assert fourth.counts["export_clusters_written_whole"] == 1 and exported(two) == table()
        (two / "MANIFEST.json").unlink()
        fifth = publish_dataset(con, exports, home / "plots")
        assert fifth.counts["export_parts_linked"] == 0 and fifth.counts["export_rows_written"] == len(table())
        assert exported(two) == table() and exported(one) == first_rows
