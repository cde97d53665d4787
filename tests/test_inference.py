"""Tests for pipeline.inference and pipeline.qte against independent references:
hand computations, closed forms (normal-distribution trimming, quantile-regression asymptotics,
t quantiles), statsmodels as an independent implementation, and exact enumeration of a small
randomisation."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.multitest import multipletests

from pipeline import inference as inf
from pipeline import qte


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
    assert inf.mde(1.0) == pytest.approx(stats.norm.ppf(0.8) + stats.norm.ppf(0.975), abs=1e-12)
    assert inf.mde(1.0) == pytest.approx(2.801585, abs=1e-6)
    se, df = 3.0, 12
    m = inf.mde(se, df)
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
    assert mine["f_stat"] == pytest.approx(float(np.squeeze(ft.fvalue)), rel=1e-9)
    assert mine["p_value"] == pytest.approx(float(np.squeeze(ft.pvalue)), rel=1e-8)
    assert (mine["df_num"], mine["df_denom"]) == (2, 39)
    # without absorption, same as a plain regression test
    direct = inf.cluster_wald(y, X, g, test=[1, 2])
    assert direct["f_stat"] == pytest.approx(mine["f_stat"], rel=1e-9)


# ------------------------------------------------------------------------------------------
# Balance
# ------------------------------------------------------------------------------------------
def test_normalized_difference_by_hand():
    # means 2.5 and 1, variances 5/3 and 1: 1.5 / sqrt(4/3)
    assert inf.normalized_difference([1, 2, 3, 4], [0, 1, 2, np.nan]) == pytest.approx(1.5 / np.sqrt(4 / 3))
    assert inf.slug("Training + grant") == "training_grant"


def _balance_data(seed=3, n_strata=2, clusters_per_arm=1, firms=5):
    """Clusters assigned to the 4 arms of a 2x2 within strata, firms within clusters."""
    rng = np.random.default_rng(seed)
    labels = {(0, 0): "Control", (1, 0): "Training only", (0, 1): "Grant only", (1, 1): "Training + grant"}
    rows = []
    cid = 0
    for s in range(n_strata):
        arms = list(labels) * clusters_per_arm
        rng.shuffle(arms)
        for a in arms:
            u = rng.normal()
            for f in range(firms):
                rows.append({"stratum": f"S{s}", "cluster_id": f"C{cid:03d}", "arm": labels[a],
                             "treat_skills": a[0], "treat_capital": a[1],
                             "female_owner": float(rng.random() < 0.5),
                             "age": 35 + 3 * s + 2 * u + rng.normal(0, 5),
                             "educ": rng.normal(8, 2) if rng.random() > 0.1 else np.nan})
            cid += 1
    return pd.DataFrame(rows)


def test_balance_means_and_per_covariate_test_match_references():
    df = _balance_data(seed=11, n_strata=4, clusters_per_arm=3, firms=6)
    bal, joint = inf.balance_tables(df, ["age", "educ"], permutations=50, seed=1, samples=("all", "women"))
    row = bal[(bal["sample"] == "all") & (bal["covariate"] == "educ")].iloc[0]
    for arm, slug in [("Control", "control"), ("Grant only", "grant_only")]:
        v = df.loc[df["arm"] == arm, "educ"].dropna()
        assert row[f"n_{slug}"] == len(v)
        assert row[f"mean_{slug}"] == pytest.approx(v.mean(), rel=1e-12)
        assert row[f"sd_{slug}"] == pytest.approx(v.std(ddof=1), rel=1e-12)
    c, t = df.loc[df["arm"] == "Control", "educ"], df.loc[df["arm"] == "Training + grant", "educ"]
    assert row["normdiff_training_grant"] == pytest.approx(
        (t.mean() - c.mean()) / np.sqrt((t.var() + c.var()) / 2), rel=1e-12)
    # F-test of the arm dummies with strata FE, cluster CR1: statsmodels with explicit dummies.
    d = df.dropna(subset=["educ"])
    X = pd.get_dummies(d[["arm", "stratum"]], drop_first=False).astype(float)
    X = X.drop(columns=["arm_Control", "stratum_S0"]).assign(const=1.0)
    res = sm.OLS(d["educ"], X).fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(d["cluster_id"])[0]},
                                   use_t=True)
    arm_cols = ("arm_Grant only", "arm_Training + grant", "arm_Training only")
    ft = res.f_test(np.eye(X.shape[1])[[list(X.columns).index(c) for c in arm_cols]])
    assert row["f_stat"] == pytest.approx(float(np.squeeze(ft.fvalue)), rel=1e-8)
    assert row["f_p_value"] == pytest.approx(float(np.squeeze(ft.pvalue)), rel=1e-7)
    # joint test, Grant only vs Control: 1{grant} ~ age + educ (mean-imputed) + educ_missing + FE
    j = joint[(joint["sample"] == "all") & (joint["arm"] == "Grant only")].iloc[0]
    sub = df[df["arm"].isin(["Grant only", "Control"])].copy()
    educ = df["educ"]
    sub["educ_missing"] = sub["educ"].isna().astype(float)
    sub["educ"] = sub["educ"].fillna(educ.mean())
    Xj = pd.get_dummies(sub["stratum"], drop_first=True).astype(float)
    Xj[["age", "educ", "educ_missing"]] = sub[["age", "educ", "educ_missing"]]
    Xj["const"] = 1.0
    rj = sm.OLS((sub["arm"] == "Grant only").astype(float), Xj).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(sub["cluster_id"])[0]}, use_t=True)
    fj = rj.f_test(np.eye(Xj.shape[1])[[list(Xj.columns).index(c) for c in ("age", "educ", "educ_missing")]])
    assert j["f_stat"] == pytest.approx(float(np.squeeze(fj.fvalue)), rel=1e-8)
    assert j["f_p_value"] == pytest.approx(float(np.squeeze(fj.pvalue)), rel=1e-7)
    assert j["regressors"] == "age educ educ_missing"
    # female_owner is constant among women: skipped there
    assert set(bal.loc[bal["sample"] == "women", "covariate"]) == {"age", "educ"}


def test_randomisation_p_value_matches_exact_enumeration():
    """2 strata x 4 clusters (one per arm): 4! x 4! = 576 equally likely assignments. The Monte
    Carlo RI p-value approaches the exact share of assignments with F >= observed F."""
    df = _balance_data(seed=5, n_strata=2, clusters_per_arm=1, firms=5)
    df["educ"] = df["educ"].fillna(8.0)
    bal, _ = inf.balance_tables(df, ["age"], permutations=2000, seed=2, samples=("all",))
    row = bal.iloc[0]
    clusters = df.groupby("cluster_id").agg(stratum=("stratum", "first"), arm=("arm", "first"))
    arms, _ = inf.arm_order(df, "arm", ["treat_skills", "treat_capital"])
    code = {a: i for i, a in enumerate(arms)}
    strata_codes = pd.factorize(df["stratum"], sort=True)[0]
    groups = pd.factorize(df["cluster_id"], sort=True)[0]
    x = df["age"].to_numpy()

    def F(arm_of_cluster):
        a = df["cluster_id"].map(arm_of_cluster).map(code).to_numpy()
        D = np.column_stack([(a == k).astype(float) for k in (1, 2, 3)])
        return inf.cluster_wald(inf.demean_within(x, strata_codes), inf.demean_within(D, strata_codes),
                                groups, k_extra=2)["f_stat"]

    f_obs = F(clusters["arm"].to_dict())
    assert f_obs == pytest.approx(row["f_stat"], rel=1e-10)
    per_stratum = [clusters[clusters["stratum"] == s] for s in ("S0", "S1")]
    stats_all = []
    for p0 in itertools.permutations(per_stratum[0]["arm"]):
        for p1 in itertools.permutations(per_stratum[1]["arm"]):
            assign = dict(zip(per_stratum[0].index, p0)) | dict(zip(per_stratum[1].index, p1))
            stats_all.append(F(assign))
    exact = np.mean(np.asarray(stats_all) >= f_obs * (1 - 1e-12))
    assert len(stats_all) == 576
    assert row["ri_p_value"] == pytest.approx(exact, abs=3 * np.sqrt(exact * (1 - exact) / 2000) + 0.002)


def _panel_balance_data(seed=2):
    """A panel's baseline: 96 clusters; one control cluster was not asked profit at baseline, so
    profit_missing varies in that cluster only (issue 10)."""
    df = _balance_data(seed=seed, n_strata=4, clusters_per_arm=6, firms=8)
    df["educ"] = df["educ"].fillna(8.0)
    df["profit"] = np.exp(np.random.default_rng(seed).normal(8, 1, size=len(df)))
    first_control = df.loc[df["arm"] == "Control", "cluster_id"].iloc[0]
    df.loc[df["cluster_id"] == first_control, "profit"] = np.nan
    return df


def _statsmodels_joint_f(df, arm, regressors):
    """Reference: 1{arm} ~ regressors + strata dummies on arm and control, CR1, f_test."""
    sub = df[df["arm"].isin([arm, "Control"])]
    X = pd.get_dummies(sub["stratum"], drop_first=True).astype(float)
    X[list(regressors)] = sub[list(regressors)].to_numpy()
    X["const"] = 1.0
    res = sm.OLS((sub["arm"] == arm).astype(float), X).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(sub["cluster_id"])[0]}, use_t=True)
    ft = res.f_test(np.eye(X.shape[1])[[list(X.columns).index(c) for c in regressors]])
    return float(np.squeeze(ft.fvalue)), float(np.squeeze(ft.pvalue))


def test_joint_balance_drops_a_regressor_that_varies_in_one_cluster_only():
    """Issue 10: a missing-baseline dummy that is 1 in a single cluster has its score absorbed by
    that cluster's residuals, so CR1 misses the cluster's shock and F explodes. It is dropped,
    named, and F equals statsmodels on the remaining regressors."""
    df = _panel_balance_data()
    _, joint = inf.balance_tables(df, ["age", "profit", "educ"], permutations=200, seed=1, samples=("all",))
    for _, j in joint.iterrows():
        ref = df.assign(profit=df["profit"].fillna(df["profit"].mean()))
        f, p = _statsmodels_joint_f(ref, j["arm"], ["age", "profit", "educ"])
        assert (j["f_df_num"], j["f_stat"]) == (3, pytest.approx(f, rel=1e-8))
        assert j["f_p_value"] == pytest.approx(p, rel=1e-7)
        assert j["regressors"] == "age profit profit_missing educ"
        assert j["note"] == "dropped profit_missing: varies in one cluster only"
    # the F p-values and the randomisation p-values now tell the same story (after: 0.22 / 0.26,
    # 0.30 / 0.39, 0.45 / 0.51; before, with profit_missing tested: 0.005 / 0.19, 0.005 / 0.23, 0.008 / 0.34)
    assert (abs(np.log10(joint["f_p_value"]) - np.log10(joint["ri_p_value"])) < 1.0).all()


def test_joint_balance_drops_constant_and_collinear_regressors():
    df = _balance_data(seed=11, n_strata=4, clusters_per_arm=3, firms=6)
    df["educ"] = df["educ"].fillna(8.0)
    df["age_months"] = 12 * df["age"] + 6            # collinear with age (and the strata FE)
    df["site_visit"] = (df["stratum"] == "S1").astype(float)   # constant within strata
    covs = ["age", "educ", "age_months", "site_visit"]
    _, joint = inf.balance_tables(df, covs, permutations=20, seed=1, samples=("all",))
    j = joint[joint["arm"] == "Grant only"].iloc[0]
    f, p = _statsmodels_joint_f(df, "Grant only", ["age", "educ"])
    assert (j["f_df_num"], j["f_stat"]) == (2, pytest.approx(f, rel=1e-8))
    assert j["f_p_value"] == pytest.approx(p, rel=1e-7)
    assert j["note"] == ("dropped site_visit: constant within strata; "
                         "dropped age_months: collinear with age educ")


def test_joint_balance_test_is_refused_with_more_covariates_than_clusters_allow():
    """2 strata x 1 cluster per arm: 4 clusters per comparison, 5 covariates -> NaN F and RI p,
    the reason in the note (before: an F on the 3 surviving eigen-directions)."""
    df = _balance_data(seed=4, n_strata=2, clusters_per_arm=1, firms=6)
    rng = np.random.default_rng(0)
    covs = ["age"] + [f"x{k}" for k in range(4)]
    for k in range(4):
        df[f"x{k}"] = rng.normal(size=len(df)) * 10.0 ** (2 * k)
    _, joint = inf.balance_tables(df, covs, permutations=20, seed=1, samples=("all",))
    for _, j in joint.iterrows():
        assert np.isnan(j["f_stat"]) and np.isnan(j["f_p_value"]) and np.isnan(j["ri_p_value"])
        assert j["f_df_num"] == 5 and j["n_clusters"] == 4
        assert j["note"] == ("test refused: rank of the cluster-robust covariance of the 5 tested "
                             "coefficients is 3 (G = 4 clusters)")


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


def test_permuted_arms_keep_counts_and_are_seeded():
    arm = np.array([0, 1, 2, 3, 0, 1, 2, 3, 3])
    strata = np.array(["a"] * 4 + ["b"] * 5)
    p1 = inf.permuted_arms(arm, strata, 50, seed=9)
    p2 = inf.permuted_arms(arm, strata, 50, seed=9)
    np.testing.assert_array_equal(p1, p2)
    assert not np.array_equal(p1, inf.permuted_arms(arm, strata, 50, seed=10))
    for perm in p1:
        for s in ("a", "b"):
            assert sorted(perm[strata == s]) == sorted(arm[strata == s])


# ------------------------------------------------------------------------------------------
# Cluster bootstrap
# ------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------
# Lee bounds
# ------------------------------------------------------------------------------------------
def test_trimmed_mean_fractional_by_hand():
    v = [5, 1, 4, 2, 3]
    assert inf.trimmed_mean(v, 0.3, "top") == pytest.approx((1 + 2 + 3 + 0.5 * 4) / 3.5)
    assert inf.trimmed_mean(v, 0.3, "bottom") == pytest.approx((5 + 4 + 3 + 0.5 * 2) / 3.5)
    assert inf.trimmed_mean(v, 0.0, "top") == pytest.approx(3.0)
    assert inf.trimmed_mean(v, 0.4, "top") == pytest.approx(2.0)


def test_lee_bounds_by_hand():
    """Treated: 5 of 5 observed (1..5); control: 4 of 5 observed (1..4, mean 2.5).
    p = (1 - 0.8) / 1 = 0.2: trim one treated value. Lower: mean(1..4) - 2.5 = 0; upper:
    mean(2..5) - 2.5 = 1."""
    y = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, np.nan])
    t = np.array([1] * 5 + [0] * 5)
    b = inf.lee_bounds(y, ~np.isnan(y), t)
    assert (b["lower"], b["upper"], b["trim_share"]) == pytest.approx((0.0, 1.0, 0.2))
    assert b["trimmed_arm"] == "treated"
    # Mirror image: the controls are observed more -> trim the controls.
    b2 = inf.lee_bounds(y, ~np.isnan(y), 1 - t)
    assert (b2["lower"], b2["upper"]) == pytest.approx((-1.0, 0.0))
    assert b2["trimmed_arm"] == "control"


def test_lee_bounds_within_cells_by_hand():
    """Cell A: treated 1..5 all observed, controls 4 of 5 (mean 2.5): bounds [0, 1], p = 0.2,
    always-observed weight N_A q0_A = 10 x 0.8 = 8. Cell B: treated 10, 20 observed of 2, controls
    10 and 20 observed of 2 (p = 0): bounds [0, 0], weight 4 x 1 = 4. Pooled: [0, 8/12]."""
    y = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, np.nan, 10, 20, 10, 20], float)
    t = np.array([1] * 5 + [0] * 5 + [1, 1, 0, 0])
    cells = np.array(["A"] * 10 + ["B"] * 4)
    b = inf.lee_bounds(y, ~np.isnan(y), t, cells)
    assert b["lower"] == pytest.approx(0.0)
    assert b["upper"] == pytest.approx(8 / 12)
    assert b["trim_share"] == pytest.approx(0.2 * 8 / 12)


def test_lee_bounds_normal_closed_form():
    """Y0 ~ N(0,1), Y1 = Y0 + 1, controls missing at random with probability 0.2, treated all
    observed: p = 0.2, bounds 1 -+ phi(z_0.8) / 0.8 (mean of a normal truncated at its 80th
    percentile), which contain the true effect 1."""
    rng = np.random.default_rng(0)
    n = 400_000
    t = rng.integers(0, 2, n)
    y = rng.normal(size=n) + t
    observed = (t == 1) | (rng.random(n) < 0.8)
    b = inf.lee_bounds(y, observed, t)
    half = stats.norm.pdf(stats.norm.ppf(0.8)) / 0.8
    assert b["lower"] == pytest.approx(1 - half, abs=0.015)
    assert b["upper"] == pytest.approx(1 + half, abs=0.015)
    assert b["trim_share"] == pytest.approx(0.2, abs=0.005)


def test_lee_bounds_table_runs_with_bootstrap():
    df = _balance_data(seed=2, n_strata=3, clusters_per_arm=3, firms=8)
    rng = np.random.default_rng(1)
    df["y"] = rng.normal(size=len(df)) + df["treat_capital"]
    df.loc[(df["arm"] == "Control") & (rng.random(len(df)) < 0.3), "y"] = np.nan
    tab = inf.lee_bounds_table(df, "y", reps=30, seed=3, samples=("all", "women"))
    assert len(tab) == 6 and (tab["lower"] <= tab["upper"]).all()
    assert (tab["ci_low"] <= tab["lower"]).all() and (tab["ci_high"] >= tab["upper"]).all()
    assert (tab["n_boot"] == 30).all() and (tab["trimmed_arm"] == "treated").all()
    again = inf.lee_bounds_table(df, "y", reps=30, seed=3, samples=("all", "women"))
    pd.testing.assert_frame_equal(tab, again)


# ------------------------------------------------------------------------------------------
# Quantile treatment effects
# ------------------------------------------------------------------------------------------
def _qte_data(seed=0, n_clusters=120, firms=25, shift=2.0, scale=1.0):
    """Y0 = e, Y1 = shift + (1 + scale) e, e ~ N(0, 1), one follow-up round, treatment by
    cluster within 4 strata, both sexes with identical effects except women get + 1 shift."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_clusters), firms)
    strata = g % 4
    tc = np.empty(n_clusters, int)
    for s in range(4):                       # half the clusters of each stratum treated
        members = np.flatnonzero(np.arange(n_clusters) % 4 == s)
        tc[members] = rng.permutation(np.arange(len(members)) % 2)
    d = tc[g]
    female = rng.integers(0, 2, len(g))
    e = rng.normal(size=len(g))
    y = np.where(d == 1, shift + female + (1 + scale) * e, e)
    return pd.DataFrame({"followup": True, "round": 1, "stratum": [f"S{s}" for s in strata],
                         "cluster_id": [f"C{c:03d}" for c in g], "female_owner": female.astype(float),
                         "treat_capital": d, "y": y})


def test_qte_recovers_location_scale_quantile_effects_with_right_bootstrap_se():
    """QTE(tau) = shift (+1 for women) + scale * z_tau. Asymptotic SE of a difference of two
    sample quantiles: sqrt(tau (1 - tau)) * sqrt(1/(n1 f1^2) + 1/(n0 f0^2)) (independent units)."""
    df = _qte_data(seed=4)
    quantiles = [0.25, 0.5, 0.75]
    tab = qte.qte_table(df, "y", ["treat_capital"], quantiles, reps=60, seed=5, fixed_effects=())
    for _, r in tab.iterrows():
        z = stats.norm.ppf(r["quantile"])
        truth = {"women": 3 + z, "men": 2 + z, "diff": 1.0}[r["sample"]]
        assert abs(r["estimate"] - truth) < 4 * r["std_error"], (r["sample"], r["quantile"])
        if r["sample"] != "diff":
            sub = df[df["female_owner"] == (1 if r["sample"] == "women" else 0)]
            n1, n0 = (sub["treat_capital"] == 1).sum(), (sub["treat_capital"] == 0).sum()
            tau = r["quantile"]
            f0 = stats.norm.pdf(z)
            f1 = stats.norm.pdf(z) / 2            # Y1 has sd 2 at its tau-quantile
            se = np.sqrt(tau * (1 - tau)) * np.sqrt(1 / (n1 * f1 ** 2) + 1 / (n0 * f0 ** 2))
            assert r["std_error"] == pytest.approx(se, rel=0.35)
            assert r["ci_low"] < r["estimate"] < r["ci_high"]
    diff = tab[tab["sample"] == "diff"].set_index("quantile")["estimate"]
    w = tab[tab["sample"] == "women"].set_index("quantile")["estimate"]
    m = tab[tab["sample"] == "men"].set_index("quantile")["estimate"]
    np.testing.assert_allclose(diff, w - m, rtol=1e-12)


def test_qte_without_controls_is_the_difference_of_sample_quantiles_and_deterministic():
    df = _qte_data(seed=6, n_clusters=40, firms=11)
    df = df[df["female_owner"] == 1]
    tab = qte.qte_table(df, "y", ["treat_capital"], [0.5], reps=8, seed=1, fixed_effects=(),
                        samples=("women",))
    y1 = df.loc[df["treat_capital"] == 1, "y"]
    y0 = df.loc[df["treat_capital"] == 0, "y"]
    # the LP solution is any point between order statistics; IRLS lands very close to it
    lo = np.quantile(y1, 0.5, method="inverted_cdf") - np.quantile(y0, 0.5, method="higher")
    hi = np.quantile(y1, 0.5, method="higher") - np.quantile(y0, 0.5, method="inverted_cdf")
    est = tab["estimate"].iloc[0]
    assert min(lo, hi) - 1e-3 <= est <= max(lo, hi) + 1e-3
    again = qte.qte_table(df, "y", ["treat_capital"], [0.5], reps=8, seed=1, fixed_effects=(),
                          samples=("women",), n_jobs=2)
    pd.testing.assert_frame_equal(tab, again)
