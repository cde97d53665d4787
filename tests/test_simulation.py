"""Tests for pipeline/simulation.py: the summary statistics on cases with a known answer,
and the whole machinery at a small size (few draws, few firms)."""
from __future__ import annotations

import json
import math
import os
from unittest import mock

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def sim():
    from pipeline import simulation
    return simulation


@pytest.fixture(scope="module")
def groups():
    from pipeline.io import load_params
    params = load_params()
    return {g: params[g] for g in ("synthetic", "clean", "construct", "estimate", "simulation")}


def chosen(groups) -> dict:
    """The ``simulation:`` params' variants and outcomes (build_settings' keywords)."""
    return {key: groups["simulation"][key] for key in ("variants", "outcomes")}


def draws_frame(estimates, se, truth, ci_half=None):
    est = np.asarray(estimates, float)
    se = np.broadcast_to(np.asarray(se, float), est.shape)
    half = 1.96 * se if ci_half is None else np.broadcast_to(ci_half, est.shape)
    return pd.DataFrame({"variant": "v", "outcome": "o", "effect": "e", "sex": "women",
                         "truth": truth, "estimate": est, "std_error": se,
                         "ci_low": est - half, "ci_high": est + half})


def test_summary_on_a_hand_computed_case(sim):
    """20 draws: estimates 0.1, 0.2, ..., 2.0 around truth 1 with CI half-width 0.75: covered iff
    |e - 1| <= 0.75, i.e. e in [0.25, 1.75] -> 0.3..1.7 = 15 draws (coverage 0.75).
    Bias = mean(e) - 1 = 0.05; SD = sd(0.1..2.0) = 0.1 x sd(1..20) = 0.1 x sqrt(35) ."""
    e = np.arange(1, 21) / 10
    s = sim.summarise(draws_frame(e, 0.5, 1.0, ci_half=0.75)).iloc[0]
    assert s["draws"] == 20
    assert s["coverage"] == pytest.approx(0.75)
    assert s["bias"] == pytest.approx(0.05)
    assert s["sd_estimate"] == pytest.approx(0.1 * np.sqrt(35))
    assert s["bias_in_sd"] == pytest.approx(0.05 / (0.1 * np.sqrt(35)))
    assert s["se_over_sd"] == pytest.approx(0.5 / (0.1 * np.sqrt(35)))
    assert s["mc_se_coverage"] == pytest.approx(np.sqrt(0.75 * 0.25 / 20))
    assert s["mc_se_bias_in_sd"] == pytest.approx(1 / np.sqrt(20))
    assert not s["coverage_ok"] and not s["bias_ok"]
    # boundary: a CI that ends exactly at the truth covers it
    s2 = sim.summarise(draws_frame([1.5, 0.5], 1.0, 1.0, ci_half=0.5)).iloc[0]
    assert s2["coverage"] == 1.0


def test_summary_on_normal_draws_with_known_coverage(sim):
    """Estimates ~ N(theta, 1) with the exact SE: 95% CIs cover 95% of the time, no bias."""
    rng = np.random.default_rng(1)
    R = 20000
    s = sim.summarise(draws_frame(3.0 + rng.normal(size=R), 1.0, 3.0)).iloc[0]
    assert s["coverage"] == pytest.approx(0.95, abs=3 * np.sqrt(0.95 * 0.05 / R))
    assert abs(s["bias_in_sd"]) < 3 / np.sqrt(R)
    assert s["se_over_sd"] == pytest.approx(1.0, abs=0.02)
    # an SE too small by half: coverage = P(|Z| <= 0.98) = 0.673
    s = sim.summarise(draws_frame(3.0 + rng.normal(size=R), 0.5, 3.0)).iloc[0]
    assert s["coverage"] == pytest.approx(2 * 0.5 * (1 + math.erf(0.98 / np.sqrt(2))) - 1, abs=0.015)


def test_a_batch_of_draws_gives_each_draw_the_tables_it_gets_alone(sim, groups):
    """The stage cleans and constructs a task's draws as one stacked table (unit ids shifted, clean's
    partition): each draw's analysis table must be exactly the one it gets alone, although the
    draws' winsorising cut-offs differ (pooled cut-offs would change the winsorised profits)."""
    from pipeline import synthetic
    from pipeline.study import load_study
    cfg = load_study("synthetic")
    synth = {**groups["synthetic"], "n_firms": 300, "share_typo_extra_zero": 0.02}
    generated = [synthetic.generate({**synth, "seed": seed}) for seed in (5, 6, 7)]
    alone = [sim.analysis_table({}, cfg, groups["clean"], groups["construct"], False, g)[0] for g in generated]
    together = sim.analysis_tables(generated, cfg, groups["clean"], groups["construct"])
    assert len(together) == 3
    for one, batched in zip(alone, together):
        pd.testing.assert_frame_equal(batched, one, check_exact=True)
    # the test has power: the per-round top cut-offs differ between draws, so shared ones would not do
    cutoffs = [t[t["interviewed"] == 1].groupby("round")["profit_usd_ppp_month"].max() for t in alone]
    assert not cutoffs[0].equals(cutoffs[1]) and not cutoffs[1].equals(cutoffs[2])
    # a checked batch (draw 0) runs alone, with validation
    assert sim.draw_batches(7, 3) == [[0], [1, 2, 3], [4, 5, 6]]


def test_closed_businesses_have_zero_not_missing_profit(sim, groups):
    """Why the study needs no "closed firms set to 0" outcome: the clean stage already does it."""
    from pipeline.study import load_study
    table, _ = sim.analysis_table({**groups["synthetic"], "n_firms": 400, "closure_rate_per_round": 0.2},
                                  load_study("synthetic"), groups["clean"], groups["construct"])
    closed = (table["business_closed"] == 1) & (table["interviewed"] == 1)
    assert closed.sum() > 20
    for column in sim.OUTCOMES.values():
        assert table.loc[closed, column].eq(0).all()


def test_small_study_end_to_end(sim, groups, dask_clients, tmp_path):
    from pipeline.study import load_study
    settings = sim.build_settings(groups["synthetic"], groups["clean"], groups["construct"], groups["estimate"],
                                  load_study("synthetic"),
                                  synthetic_overrides={"n_firms": 240, "n_regions": 2, "n_sectors": 2}, base_seed=100,
                                  **chosen(groups), wild_reps=groups["simulation"]["wild_bootstrap_reps"])
    draws = sim.run_study(12, settings, dask_clients[2])
    assert len(draws) == 12 * 2 * 2 * 9
    assert sorted(draws["seed"].unique()) == list(range(100, 112))
    # truth from the generator's params; the difference is women - men
    d0 = draws[(draws["effect"] == "capital")]
    assert set(d0.loc[d0["sex"] == "women", "truth"]) == {8.0}
    assert set(d0.loc[d0["sex"] == "diff", "truth"]) == {8.0 - 30.0}
    # deterministic and independent of the number of workers: draws 0-1 again, serially
    again = sim.run_study(2, settings, None)
    pd.testing.assert_frame_equal(draws[draws["draw"] < 2].reset_index(drop=True), again)
    # seed_i = base + i: draw 1 of a study based at 99 is draw 2 of this one
    shifted = sim.run_study(1, {**settings, "base_seed": 101}, None)
    pd.testing.assert_frame_equal(
        draws[draws["draw"] == 1].drop(columns="draw").reset_index(drop=True),
        shifted[shifted["draw"] == 0].drop(columns="draw").reset_index(drop=True))
    summary = sim.summarise(draws)
    assert len(summary) == 2 * 2 * 9 and (summary["draws"] == 12).all()
    # coverage recomputed from the draws
    g = draws[(draws["variant"] == "no_typos") & (draws["outcome"] == "unwinsorised")
              & (draws["effect"] == "skills") & (draws["sex"] == "men")]
    row = summary[(summary["variant"] == "no_typos") & (summary["outcome"] == "unwinsorised")
                  & (summary["effect"] == "skills") & (summary["sex"] == "men")].iloc[0]
    assert row["coverage"] == pytest.approx(((g["ci_low"] <= g["truth"]) & (g["truth"] <= g["ci_high"])).mean())
    meta = sim.write_outputs(draws, summary, settings, tmp_path)
    assert (tmp_path / "simulation.csv").exists() and (tmp_path / "simulation_draws.parquet").exists()
    loaded = json.loads((tmp_path / "simulation.json").read_text())
    assert loaded["draws"] == 12 and len(loaded["summary"]) == 36 and meta["base_seed"] == 100


def test_a_choice_of_variants_and_outcomes_gives_their_rows_of_the_full_study(sim, groups):
    """simulation.variants / outcomes: the rows of the chosen ones are those they have beside the
    others (one latent world per draw, each variant's survey its own), whatever order they are listed in."""
    from pipeline.study import load_study

    def settings_for(variants, outcomes):
        return sim.build_settings(groups["synthetic"], groups["clean"], groups["construct"], groups["estimate"],
                                  load_study("synthetic"), synthetic_overrides={"n_firms": 240, "n_regions": 2,
                                                                                "n_sectors": 2},
                                  base_seed=300, variants=variants, outcomes=outcomes,
                                  wild_reps=groups["simulation"]["wild_bootstrap_reps"])

    full = sim.run_study(3, settings_for(list(sim.VARIANTS), list(sim.OUTCOMES)), None)
    for variants, outcomes in ((["as_configured"], ["winsorised"]), (["no_typos"], ["winsorised", "unwinsorised"])):
        picked = settings_for(variants, outcomes)
        assert picked["outcomes"] == [o for o in sim.OUTCOMES if o in outcomes]      # the canonical order
        expected = full[full["variant"].isin(variants) & full["outcome"].isin(outcomes)].reset_index(drop=True)
        pd.testing.assert_frame_equal(sim.run_study(3, picked, None), expected)
    with pytest.raises(ValueError, match=r"simulation variants \['typos'\]: choose one or more of"):
        settings_for(["typos"], ["winsorised"])


def test_a_draw_enters_through_the_ingest_stage_path(sim, groups, tmp_path):
    """The generator's survey, taken in memory by the simulation, gives the interim table (and
    codebook) that the ingest stage gives when it reads the same survey from the written .dta."""
    from pipeline import ingest, paths, synthetic
    from pipeline.study import load_study, normalise

    survey, value_labels, variable_labels, truth = synthetic.generate(
        {**groups["synthetic"], "n_firms": 120, "n_regions": 2, "n_sectors": 2})
    cfg = normalise(load_study("synthetic"))
    synthetic.write(survey, value_labels, variable_labels, truth, tmp_path)
    from_file, book_from_file, _ = ingest.ingest(cfg, tmp_path)
    in_memory, book = ingest.ingest_frame(survey, value_labels, variable_labels, cfg, cfg["files"][0], salt=None,
                                          scan_identifiers=False)  # as the simulation calls it
    in_memory = ingest.interim_table([in_memory], cfg, ingest.conversion_factor(cfg, paths.raw_synthetic_dir())[0])
    pd.testing.assert_frame_equal(in_memory, from_file)
    pd.testing.assert_frame_equal(book, book_from_file)
    assert not set(cfg["identifiers"]) & set(in_memory.columns)


def test_progress_reports_draws_done_and_rate_and_always_the_last(sim):
    import io

    from pipeline import parallel
    stream = io.StringIO()
    progress = parallel.Progress(5, every=3600, stream=stream)
    for _ in range(5):
        progress.advance()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("simulation: 5/5 draws (100%)") and "draws/s" in lines[0]


def test_few_cluster_draws_compare_cr1_cr2_and_wild(sim, groups, dask_clients, tmp_path):
    from pipeline.study import load_study
    settings = sim.build_settings({**groups["synthetic"], "n_firms": 600}, groups["clean"], groups["construct"],
                                  groups["estimate"], load_study("synthetic"), base_seed=7, **chosen(groups),
                                  wild_reps=199)
    few = sim.run_study(3, settings, dask_clients[1], kind="few_clusters")
    assert list(few.columns) == sim.FEW_CLUSTER_COLUMNS and len(few) == 3 * 9
    assert (few["n_clusters"] == 16).all()         # 4 strata x 4 markets (one per arm) with 600 firms
    assert few[["covered_cr1", "covered_cr2", "covered_wild"]].dtypes.eq(bool).all()
    again = sim.run_study(3, settings, dask_clients[2], kind="few_clusters", chunk_size=2)
    pd.testing.assert_frame_equal(few, again)
    summary = sim.summarise_few_clusters(few)
    assert len(summary) == 9 and summary["draws"].eq(3).all()
    main = sim.run_study(2, settings, None)
    meta = sim.write_outputs(main, sim.summarise(main), settings, tmp_path, few)
    assert meta["few_clusters"]["draws"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few_clusters.csv", "simulation.csv", "simulation.json",
                                                          "simulation_draws.parquet"]


def written_tables(sim, settings, draws, few, out_dir) -> dict:
    sim.write_outputs(draws, sim.summarise(draws), settings, out_dir, few)
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def test_written_tables_do_not_depend_on_workers_chunks_or_scheduler(sim, groups, dask_clients, tmp_path):
    """The bytes of every table the stage writes: the same for the plain loop over draws (the
    pre-Dask serial implementation: draw i seeded base_seed + i, rows in draw order), LocalClusters
    of 1 and 2 workers, chunks of 1, 2 or 3, and a loopback "remote" scheduler named in
    DASK_SCHEDULER_ADDRESS (as a cluster would be)."""
    from distributed import LocalCluster

    from pipeline import parallel
    from pipeline.study import load_study
    settings = sim.build_settings(groups["synthetic"], groups["clean"], groups["construct"], groups["estimate"],
                                  load_study("synthetic"), base_seed=31, **chosen(groups), wild_reps=99,
                                  synthetic_overrides={"n_firms": 240, "n_regions": 2, "n_sectors": 2})
    n_main, n_few = 3, 2

    def plain_loop(kind, n):
        one = {"main": sim.one_draw, "few_clusters": sim.few_cluster_draw}[kind]
        rows = [r for i in range(n) for r in one(i, settings)]
        return pd.DataFrame(rows, columns=sim.DRAW_COLUMNS if kind == "main" else sim.FEW_CLUSTER_COLUMNS)

    reference = written_tables(sim, settings, plain_loop("main", n_main), plain_loop("few_clusters", n_few),
                               tmp_path / "reference")
    assert sorted(reference) == ["few_clusters.csv", "simulation.csv", "simulation.json", "simulation_draws.parquet"]

    def through(client, chunk_size, name):
        draws = sim.run_study(n_main, settings, client, chunk_size=chunk_size)
        few = sim.run_study(n_few, settings, client, kind="few_clusters", chunk_size=chunk_size)
        return written_tables(sim, settings, draws, few, tmp_path / name)

    assert through(dask_clients[1], 1, "one_worker") == reference
    assert through(dask_clients[2], 2, "two_workers_chunks_of_2") == reference
    with LocalCluster(host="127.0.0.1", n_workers=1, processes=True, threads_per_worker=1,
                      dashboard_address=":0") as cluster, \
            mock.patch.dict(os.environ, {parallel.SCHEDULER_ADDRESS_ENV: cluster.scheduler_address}):
        with parallel.dask_client(workers=2) as client:     # as simulation.run opens it
            assert client.scheduler.address == cluster.scheduler_address
            assert through(client, 3, "remote") == reference
