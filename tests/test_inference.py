"""Tests for pipeline.inference against independent references: Anderson's Stata loop written out,
closed forms (t quantiles, the analytic cluster SE of a mean difference) and statsmodels' OLS
cluster f_test."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pipeline import inference as inf


# ------------------------------------------------------------------------------------------
# Anderson (2008) sharpened q-values
# ------------------------------------------------------------------------------------------
def stata_port(p, step_count=1000):
    """Anderson's fdr_sharpened_qvalues.do written as a literal loop (independent of the
    vectorised implementation): q from 1.000 down to 0.001."""
    p = np.asarray(p, float)
    m = len(p)
    order = np.argsort(p, kind="mergesort")
    rank = np.empty(m, int)
    rank[order] = np.arange(1, m + 1)
    q_out = np.ones(m)
    for k in range(step_count, 0, -1):
        q = k / step_count
        q_adj = q / (1 + q)
        r1 = max([rank[i] for i in range(m) if p[i] <= q_adj * rank[i] / m], default=0)
        if r1 == m:            # Stata: q_2st missing, and missing >= p is true: all rejected
            r2 = m
        else:
            q2 = q_adj * m / (m - r1)
            r2 = max([rank[i] for i in range(m) if p[i] <= q2 * rank[i] / m], default=0)
        for i in range(m):
            if rank[i] <= r2:
                q_out[i] = q
    return q_out


def test_qvalues_two_hypotheses_by_hand():
    """p = (0.01, 0.04). Stage 1 rejects rank 1 iff q/(1+q) >= 0.02 (q >= 0.020408) and rank 2
    iff q/(1+q) >= 0.04 (q >= 0.041667). For 0.020408 <= q < 0.041667, r1 = 1, so stage 2 uses
    2q/(1+q) r/2: rank 2 needs q/(1+q) >= 0.02 -> rejected. Below 0.020408 nothing is.
    The smallest grid level >= 0.020408 is 0.021: q-values (0.021, 0.021)."""
    np.testing.assert_allclose(inf.sharpened_qvalues([0.01, 0.04]), [0.021, 0.021], atol=1e-12)


def test_qvalues_three_hypotheses_by_hand():
    """p = (0.01, 0.04, 0.30), M = 3. Stage 1: rank 1 iff q' >= 0.03 (q >= 0.030928), rank 2 iff
    q' >= 0.06 (q >= 0.06383), rank 3 iff q' >= 0.3. With r1 = 1 stage 2 thresholds are q' r / 2:
    rank 1 from q' >= 0.02 (already), rank 2 from q' >= 0.04 (q >= 0.041667). With r1 = 2
    (q >= 0.06383) thresholds q' r: rank 3 needs q' >= 0.1 (q >= 0.111111).
    Grid: q(1) = 0.031, q(2) = 0.042, q(3) = 0.112."""
    p = [0.30, 0.01, 0.04]                    # unsorted on purpose
    np.testing.assert_allclose(inf.sharpened_qvalues(p), [0.112, 0.031, 0.042], atol=1e-12)
    # NaN is ignored and does not count in M.
    np.testing.assert_allclose(inf.sharpened_qvalues([0.30, np.nan, 0.01, 0.04]),
                               [0.112, np.nan, 0.031, 0.042], atol=1e-12)


def test_qvalues_all_rejected_in_stage_one_and_edge_cases():
    """p = (0.001, 0.002): at q = 0.003 stage 1 rejects both (r1 = M, Stata's missing q2 rejects
    all); at 0.002, q' = 0.001996 rejects none in either stage -> (0.003, 0.003)."""
    np.testing.assert_allclose(inf.sharpened_qvalues([0.001, 0.002]), [0.003, 0.003], atol=1e-12)
    assert inf.sharpened_qvalues([0.9, 0.95]).tolist() == [1.0, 1.0]
    # a single hypothesis: rejected at q iff p <= q/(1+q): p = 0.04 -> q >= 0.041667 -> 0.042
    assert inf.sharpened_qvalues([0.04])[0] == pytest.approx(0.042)
    assert np.isnan(inf.sharpened_qvalues([np.nan])).all()
    with pytest.raises(ValueError):
        inf.sharpened_qvalues([1.2])


def test_qvalues_equal_literal_stata_loop_and_reject_like_fdr_tsbky():
    rng = np.random.default_rng(7)
    differs = 0
    for trial in range(300):
        m = int(rng.integers(2, 25))
        # a mix of true nulls (uniform) and alternatives (small p)
        p = np.where(rng.random(m) < 0.4, rng.beta(0.3, 8, m), rng.random(m))
        q = inf.sharpened_qvalues(p)
        if trial < 25:
            np.testing.assert_allclose(q, stata_port(p), atol=1e-12)
        for level in (0.05, 0.10):
            rej_sm, p_adj, _, _ = multipletests(p, alpha=level, method="fdr_tsbky")
            np.testing.assert_array_equal(q <= level + 1e-12, rej_sm)
        differs += not np.allclose(q, p_adj, atol=1e-3)
    # ... while the adjusted values themselves differ (METHODS.md): they are not the same numbers.
    assert differs > 100


# ------------------------------------------------------------------------------------------
# Minimum detectable effect
# ------------------------------------------------------------------------------------------
def test_mde_closed_form_and_power():
    assert inf.mde(1.0, np.inf, power=0.8, alpha=0.05) == pytest.approx(stats.norm.ppf(0.8) + stats.norm.ppf(0.975),
                                                               abs=1e-12)
    assert inf.mde(1.0, np.inf, power=0.8, alpha=0.05) == pytest.approx(2.801585, abs=1e-6)
    se, df = 3.0, 12
    m = inf.mde(se, df, power=0.8, alpha=0.05)
    assert m == pytest.approx((stats.t.ppf(0.8, df) + stats.t.ppf(0.975, df)) * se, rel=1e-12)
    # An effect equal to the MDE is detected with probability 0.8 (upper tail, t approximation).
    assert stats.t.sf(stats.t.ppf(0.975, df) - m / se, df) == pytest.approx(0.8, abs=1e-12)
    np.testing.assert_allclose(inf.mde([1.0, 2.0], [np.inf, np.inf], power=0.9, alpha=0.1),
                               np.array([1.0, 2.0]) * (stats.norm.ppf(0.9) + stats.norm.ppf(0.95)))


# ------------------------------------------------------------------------------------------
# Cluster-robust Wald test against statsmodels
# ------------------------------------------------------------------------------------------
def _cluster_data(seed=0, n=600, G=40, H=4):
    rng = np.random.default_rng(seed)
    g = rng.integers(0, G, n)
    h = g % H
    x1, x2 = rng.normal(size=n), rng.normal(size=n) + 0.1 * h
    y = 0.2 * x1 + 0.5 * h + rng.normal(size=n) + rng.normal(size=G)[g]
    return y, x1, x2, g, h


def test_cluster_wald_matches_statsmodels_with_absorbed_fe():
    y, x1, x2, g, h = _cluster_data()
    dummies = (h[:, None] == np.arange(1, 4)[None, :]).astype(float)
    X = np.column_stack([np.ones_like(y), x1, x2, dummies])
    res = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)
    ft = res.f_test(np.eye(X.shape[1])[[1, 2]])
    mine = inf.cluster_wald(inf.demean_within(y, h), inf.demean_within(np.column_stack([x1, x2]), h),
                            g, k_extra=4)
    assert mine["f_stat"] == pytest.approx(float(np.squeeze(ft.fvalue)), rel=1e-10)
    assert mine["p_value"] == pytest.approx(float(np.squeeze(ft.pvalue)), rel=1e-9)
    assert (mine["df_num"], mine["df_denom"]) == (2, 39)
    # without absorption, same as a plain regression test
    direct = inf.cluster_wald(y, X, g, test=[1, 2])
    assert direct["f_stat"] == pytest.approx(mine["f_stat"], rel=1e-9)


def test_cluster_wald_labels_with_gaps_strings_and_a_constant_column_match_statsmodels():
    """Cluster labels are integers with gaps (a subset of the clusters, as in a two-arm comparison)
    or strings; a column without variation is dropped: F and p equal statsmodels' on the rest."""
    y, x1, x2, g, h = _cluster_data(seed=5, n=500, G=30)
    rows = g % 3 != 0                                      # clusters 0, 3, 6, ... absent
    y, x1, x2, g = y[rows], x1[rows], x2[rows], g[rows]
    X = np.column_stack([np.ones_like(y), x1, x2])
    res = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)
    ft = res.f_test(np.eye(3)[[1, 2]])
    for labels in (g * 7 + 11, np.array([f"c{v}" for v in g])):
        out = inf.cluster_wald(y, np.column_stack([X, np.zeros_like(y)]), labels, test=[1, 2, 3])
        assert out["f_stat"] == pytest.approx(float(np.squeeze(ft.fvalue)), rel=1e-10)
        assert out["p_value"] == pytest.approx(float(np.squeeze(ft.pvalue)), rel=1e-9)
        assert (out["df_num"], out["df_denom"], out["n_clusters"]) == (2, 19, 20)


def test_cluster_wald_refuses_more_restrictions_than_cluster_degrees_of_freedom():
    """5 tested coefficients, 4 clusters: the CR1 covariance has rank <= 3 -> NaN with a reason
    (before: a generalised-inverse F on 3 df of whatever noise direction survived)."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(4), 10)
    X = rng.normal(size=(40, 5)) * np.array([1, 1e3, 1e-3, 1, 1e5])
    out = inf.cluster_wald(rng.normal(size=40), X, g)
    assert np.isnan(out["f_stat"]) and np.isnan(out["p_value"])
    assert out["df_num"] == 5 and out["n_clusters"] == 4
    assert "rank of the cluster-robust covariance of the 5 tested coefficients is 3" in out["note"]
    # 3 tested coefficients in 4 clusters: full rank, statsmodels' value
    res = sm.OLS(X[:, 0], X[:, 1:4]).fit(cov_type="cluster", cov_kwds={"groups": g}, use_t=True)
    ft = res.f_test(np.eye(3))
    mine = inf.cluster_wald(X[:, 0], X[:, 1:4], g)
    assert mine["f_stat"] == pytest.approx(float(np.squeeze(ft.fvalue)), rel=1e-8) and "note" not in mine


# ------------------------------------------------------------------------------------------
# Cluster bootstrap
# ------------------------------------------------------------------------------------------
def test_clusters_and_strata_are_numbered_by_first_appearance_not_sorted():
    """Issue 8: ids can be salted hashes, whose sorted order follows the salt."""
    codes, levels = inf.first_appearance_codes(pd.Series(["f3", "a1", "f3", "c2", "a1"]))
    np.testing.assert_array_equal(codes, [0, 1, 0, 2, 1])
    assert list(levels) == ["f3", "a1", "c2"]
    df = pd.DataFrame({"cluster_id": ["z", "z", "b", "m"], "stratum": ["S2", "S2", "S1", "S2"]})
    assert inf.cluster_level(df, "cluster_id", "stratum").to_dict() == {"z": "S2", "b": "S1", "m": "S2"}
    assert list(inf.cluster_level(df, "cluster_id", "stratum").index) == ["z", "b", "m"]
    # the draws follow the clusters' positions: renaming the strata (another salt) changes nothing
    strata = np.array(["q", "q", "a", "q", "a", "k"])
    renamed = np.array(["b", "b", "z", "b", "z", "c"])
    np.testing.assert_array_equal(inf.stratified_cluster_draws(strata, 50, seed=3),
                                  inf.stratified_cluster_draws(renamed, 50, seed=3))


def test_stratified_cluster_draws_stay_within_strata():
    strata = np.array(["x"] * 3 + ["y"] * 5 + ["z"] * 2)
    d = inf.stratified_cluster_draws(strata, 200, seed=4)
    assert d.shape == (200, 10)
    for rep in d:
        for s in "xyz":
            assert (strata[rep[strata == s]] == s).all()
    np.testing.assert_array_equal(d, inf.stratified_cluster_draws(strata, 200, seed=4))
    # every cluster of a stratum is drawn with probability 1/G_h per slot
    assert np.mean(d[:, 3:8] == 3) == pytest.approx(0.2, abs=0.03)


def test_cluster_bootstrap_se_of_a_mean_difference_matches_the_analytic_cluster_se():
    rng = np.random.default_rng(8)
    G, m = 120, 8
    strata = np.repeat(np.arange(4), G // 4)
    treat_c = np.concatenate([rng.permutation(np.arange(G // 4) % 2) for _ in range(4)])
    g = np.repeat(np.arange(G), m)
    y = 2.0 * treat_c[g] + rng.normal(size=G)[g] + rng.normal(size=G * m)
    rows = inf.cluster_rows(g, G)
    boots = []
    for draw in inf.stratified_cluster_draws(strata, 1500, seed=1):
        r = inf.rows_for_draw(rows, draw)
        t = treat_c[g[r]]
        boots.append(y[r][t == 1].mean() - y[r][t == 0].mean())
    X = np.column_stack([np.ones(len(y)), treat_c[g]])
    res = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": g})
    assert np.std(boots, ddof=1) == pytest.approx(res.bse[1], rel=0.1)
