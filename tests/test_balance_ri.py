"""Tests for pipeline.balance_ri: every permutation's batched F against the scalar path
(``pipeline.inference.cluster_wald`` through ``balance._per_covariate_stat`` / ``_joint_stat``, one
permutation at a time, as the balance tables computed them before), on small designs made here:
unequal strata and clusters, missing covariate values, permutations that make ``cluster_wald``
drop a column or refuse the test."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _arms_data import DESIGN

from pipeline import balance, balance_ri
from pipeline.inference import demean_within, first_appearance_codes

LABELS = {0: "Control", 1: "Training only", 2: "Grant only", 3: "Training + grant"}
# An observed F that no permutation's F comes near (no recomputation for being close to it).
F_FAR = 1e300


def unequal_design(seed=0, clusters_per_stratum=(4, 8, 12), n_arms=4, max_firms=9):
    """Strata of 4, 8 and 12 clusters (arms as balanced as the stratum allows), clusters of 1 to
    ``max_firms`` firms, covariates on different scales, ``educ`` missing for ~15% of firms."""
    rng = np.random.default_rng(seed)
    rows, cid = [], 0
    for s, n_cl in enumerate(clusters_per_stratum):
        arms = rng.permutation(np.arange(n_cl) % n_arms)
        for a in arms:
            shock = rng.normal()
            for _ in range(rng.integers(1, max_firms + 1)):
                rows.append({"stratum": f"S{s}", "cluster_id": f"C{cid:03d}", "arm": LABELS[a],
                             "treat_skills": int(a in (1, 3)), "treat_capital": int(a in (2, 3)),
                             "female_owner": float(rng.random() < 0.5),
                             "age": 30 + 4 * s + 3 * shock + rng.normal(0, 6),
                             "profit": np.exp(rng.normal(9, 1)),
                             "educ": rng.normal(8, 3) if rng.random() > 0.15 else np.nan})
            cid += 1
    return pd.DataFrame(rows)


def _codes(df):
    """(arm codes of the clusters, each row's cluster, stratum codes, permutations)."""
    arms, _ = balance.arm_order(df, "arm", DESIGN["treatments"])
    cl = balance.cluster_level(df, "cluster_id", "arm")
    cluster_arm = cl.map({a: i for i, a in enumerate(arms)}).to_numpy(dtype=np.int64)
    row_cluster = pd.Index(cl.index).get_indexer(df["cluster_id"])
    strata = first_appearance_codes(df["stratum"])[0]
    cl_stratum = balance.cluster_level(df, "cluster_id", "stratum").to_numpy()
    return cluster_arm, row_cluster, strata, balance.permuted_arms(cluster_arm, cl_stratum, 80, seed=3)


def _rel(a, b):
    return np.abs(a - b) / np.abs(b)


def test_covariate_batch_equals_the_scalar_path_with_missing_values_and_unequal_strata():
    df = unequal_design()
    cluster_arm, row_cluster, strata, perms = _codes(df)
    x = df["educ"].to_numpy()
    ok = ~np.isnan(x)
    s_ok = pd.factorize(strata[ok])[0]
    g_ok = row_cluster[ok]
    x_dm = demean_within(x[ok], s_ok)
    layout = balance_ri.ClusterLayout.of(s_ok, g_ok)
    f, exact = balance_ri.covariate_f_batch(x_dm, perms, 4, layout, 3)
    ref = np.array([balance._per_covariate_stat(x_dm, p[g_ok], 4, s_ok, g_ok, 3, pvalue=False)["f_stat"]
                    for p in perms])
    assert exact.all() and np.isfinite(ref).all()
    assert _rel(f, ref).max() < 1e-10
    assert np.unique(np.round(ref, 6)).size > 40            # the permutations do differ


@pytest.mark.parametrize("max_firms", [9, 1])
def test_joint_batch_equals_the_scalar_path_on_the_rows_of_each_comparison(max_firms):
    """Clusters of 1 to 9 firms, and clusters of one firm (no within-cluster scatter)."""
    df = unequal_design(seed=1, clusters_per_stratum=(4, 8, 12) if max_firms > 1 else (12, 16, 20),
                        max_firms=max_firms)
    cluster_arm, row_cluster, strata, perms = _codes(df)
    Z, names = balance._joint_design(df, ["age", "profit", "educ", "female_owner"])
    assert names == ["age", "profit", "educ", "educ_missing", "female_owner"]
    for arm in (1, 2, 3):
        layout = balance_ri.ClusterLayout.of(strata, row_cluster)
        f, exact = balance_ri.joint_f_batch(Z, perms, arm, layout)
        ref = np.array([balance._joint_stat(Z, p[row_cluster], arm, strata, row_cluster, pvalue=False)["f_stat"]
                        for p in perms])
        assert exact.mean() > 0.8           # (the others: educ_missing all 0 in the comparison, dropped)
        assert _rel(f[exact], ref[exact]).max() < 1e-10


def test_a_column_dropped_by_cluster_wald_in_some_permutations_goes_to_the_scalar_path():
    """A regressor non-zero in one cluster only (after demeaning it is zero on the rows of a
    permutation that leaves that cluster out of the comparison): cluster_wald drops it there and
    tests the others; the batch flags those permutations and permutation_f_stats takes the
    scalar F."""
    df = unequal_design(seed=2)
    cluster_arm, row_cluster, strata, perms = _codes(df)
    Z, _ = balance._joint_design(df, ["age", "profit"])
    Z = np.column_stack([Z, (row_cluster == 5).astype(float)])
    layout = balance_ri.ClusterLayout.of(strata, row_cluster)

    calls = []

    def scalar(codes):
        calls.append(1)
        return balance._joint_stat(Z, codes, 1, strata, row_cluster, pvalue=False)["f_stat"]

    ref = np.array([balance._joint_stat(Z, p[row_cluster], 1, strata, row_cluster, pvalue=False)["f_stat"]
                    for p in perms])
    _, exact = balance_ri.joint_f_batch(Z, perms, 1, layout)
    in_comparison = np.isin(perms[:, 5], (0, 1))
    np.testing.assert_array_equal(exact, in_comparison)   # dropped exactly where cluster 5 is out
    assert 0 < in_comparison.sum() < len(perms)
    got = balance_ri.permutation_f_stats(perms, row_cluster, F_FAR, lambda c: balance_ri.joint_f_batch(Z, c, 1, layout),
                                         scalar, chunk=7)
    np.testing.assert_array_equal(got[~exact], ref[~exact])
    assert _rel(got, ref).max() < 1e-10
    assert len(calls) == (~exact).sum()                  # the others are the batch's


def test_a_column_cluster_wald_drops_for_its_tiny_norm_goes_to_the_scalar_path():
    """A regressor on a scale 1e-12 of the others' (cluster_wald's tolerance is 1e-10 of the
    largest norm): dropped there, so the batch must not test it after its unit-norm scaling."""
    df = unequal_design(seed=7)
    cluster_arm, row_cluster, strata, perms = _codes(df)
    noise = np.random.default_rng(1).normal(size=len(df))
    Z = np.column_stack([df["age"], df["profit"], 1e-12 * noise])
    layout = balance_ri.ClusterLayout.of(strata, row_cluster)
    f, exact = balance_ri.joint_f_batch(Z, perms, 1, layout)
    assert not exact.any()
    ref = np.array([balance._joint_stat(Z, p[row_cluster], 1, strata, row_cluster, pvalue=False)["f_stat"]
                    for p in perms])
    ref_two = np.array([balance._joint_stat(Z[:, :2], p[row_cluster], 1, strata, row_cluster, pvalue=False)["f_stat"]
                        for p in perms])
    assert _rel(ref, ref_two).max() < 1e-12              # the scalar path tests age and profit only


def test_nearly_collinear_regressors_go_to_the_scalar_path():
    """Two regressors equal up to 1e-7 noise: X'X has a condition number ~1e13, where rounding
    differences are amplified (and pinv may cut a different singular value): scalar F."""
    df = unequal_design(seed=8)
    cluster_arm, row_cluster, strata, perms = _codes(df)
    noise = np.random.default_rng(2).normal(size=len(df))
    Z = np.column_stack([df["age"], df["profit"], df["age"] + 1e-7 * noise])
    layout = balance_ri.ClusterLayout.of(strata, row_cluster)
    f, exact = balance_ri.joint_f_batch(Z, perms, 2, layout)
    assert not exact.any()

    def scalar(codes):
        return balance._joint_stat(Z, codes, 2, strata, row_cluster, pvalue=False)["f_stat"]

    ref = np.array([scalar(p[row_cluster]) for p in perms])
    got = balance_ri.permutation_f_stats(perms, row_cluster, F_FAR, lambda c: balance_ri.joint_f_batch(Z, c, 2, layout),
                                         scalar, chunk=50)
    np.testing.assert_array_equal(got, ref)


def test_degenerate_permutations_refused_or_without_a_column_go_to_the_scalar_path():
    """x observed only in the two smallest-stratum clusters of one arm: some permutations give x
    rows with no treated arm at all (every dummy column zero -> no test), others a refused or a
    full test. And a joint test of 8 regressors on 8 clusters (the CR1 covariance has rank
    G - 1 = 7 at most): refused in every permutation."""
    df = unequal_design(seed=3, clusters_per_stratum=(4, 4, 8))
    cluster_arm, row_cluster, strata, perms = _codes(df)
    rng = np.random.default_rng(0)
    x = np.where(np.isin(row_cluster, [0, 1, 4, 5, 9]), rng.normal(size=len(df)), np.nan)
    ok = ~np.isnan(x)
    s_ok, g_ok = pd.factorize(strata[ok])[0], row_cluster[ok]
    x_dm = demean_within(x[ok], s_ok)
    n_s = int(s_ok.max()) + 1
    layout = balance_ri.ClusterLayout.of(s_ok, g_ok)

    def scalar(codes):
        return balance._per_covariate_stat(x_dm, codes, 4, s_ok, g_ok, n_s, pvalue=False)["f_stat"]

    ref = np.array([scalar(p[g_ok]) for p in perms])
    f, exact = balance_ri.covariate_f_batch(x_dm, perms, 4, layout, n_s)
    assert (~exact).any()
    got = balance_ri.permutation_f_stats(perms, g_ok, F_FAR, lambda c: balance_ri.covariate_f_batch(
        x_dm, c, 4, layout, n_s), scalar, chunk=30)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    fin = np.isfinite(ref)
    assert _rel(got[fin], ref[fin]).max() < 1e-10

    Z = np.column_stack([df["age"], df["profit"], rng.normal(size=(len(df), 6))])
    layout = balance_ri.ClusterLayout.of(strata, row_cluster)
    f, exact = balance_ri.joint_f_batch(Z, perms, 2, layout)
    ref = np.array([balance._joint_stat(Z, p[row_cluster], 2, strata, row_cluster, pvalue=False)["f_stat"]
                    for p in perms])
    assert np.isnan(ref).all() and not exact.any() and np.isnan(f).all()


def test_a_permutation_reproducing_the_observed_design_gets_the_observed_f_exactly():
    """Its F is a tie with the observed one: recomputed by the scalar path, bit for bit."""
    df = unequal_design(seed=4)
    cluster_arm, row_cluster, strata, perms = _codes(df)
    perms = np.vstack([perms[:10], cluster_arm, perms[10:20]])
    Z, _ = balance._joint_design(df, ["age", "educ"])
    f_obs = balance._joint_stat(Z, cluster_arm[row_cluster], 3, strata, row_cluster)["f_stat"]
    layout = balance_ri.ClusterLayout.of(strata, row_cluster)

    def scalar(codes):
        return balance._joint_stat(Z, codes, 3, strata, row_cluster, pvalue=False)["f_stat"]

    got = balance_ri.permutation_f_stats(perms, row_cluster, f_obs, lambda c: balance_ri.joint_f_batch(Z, c, 3, layout),
                                         scalar, chunk=8)
    assert got[10] == f_obs


def test_an_f_of_rounding_noise_is_the_scalar_one():
    """A two-valued covariate of whole clusters, 3 of 6 per stratum: a permutation giving both arms the
    same share in every stratum has F = 0 up to rounding (~1e-32), rounded differently in the batch;
    such F (below SMALL_F) are the scalar ones, so they compare with the observed F as before."""
    rows = [{"stratum": f"S{s}", "cluster_id": f"C{s}{c}", "arm": ["Control", "Training only"][c % 2],
             "treat_skills": c % 2, "treat_capital": 0, "x": 0.3 + 1.7 * (c < 3), "firm": f}
            for s in range(2) for c in range(6) for f in range(3)]
    df = pd.DataFrame(rows)
    cluster_arm, row_cluster, strata, perms = _codes(df)
    x_dm = demean_within(df["x"].to_numpy(), strata)
    layout = balance_ri.ClusterLayout.of(strata, row_cluster)

    def scalar(codes):
        return balance._per_covariate_stat(x_dm, codes, 2, strata, row_cluster, 2, pvalue=False)["f_stat"]

    ref = np.array([scalar(p[row_cluster]) for p in perms])
    got = balance_ri.permutation_f_stats(perms, row_cluster, F_FAR, lambda c: balance_ri.covariate_f_batch(
        x_dm, c, 2, layout, 2), scalar, chunk=80)
    tiny = ref < 1e-20
    assert tiny.any() and (~tiny).any()
    np.testing.assert_array_equal(got[tiny], ref[tiny])
    assert _rel(got[~tiny], ref[~tiny]).max() < 1e-10


def _scalar_permutation_f_stats(perms, row_cluster, f_observed, batch, scalar, chunk):
    """The loop the balance tables ran before: the scalar path for every permutation."""
    return np.array([scalar(p[row_cluster]) for p in perms])


@pytest.mark.parametrize("seed", [5, 6])
def test_balance_tables_equal_those_of_the_scalar_loop(monkeypatch, seed):
    df = unequal_design(seed=seed)
    df["age_x2"] = 2 * df["age"] + 1                                   # collinear: dropped
    covs = ["age", "profit", "educ", "female_owner", "age_x2"]
    kwargs = dict(**DESIGN, permutations=150, seed=seed, samples=("all", "women", "men"))
    batched = balance.balance_tables(df, covs, **kwargs)
    monkeypatch.setattr(balance, "permutation_f_stats", _scalar_permutation_f_stats)
    scalar = balance.balance_tables(df, covs, **kwargs)
    assert batched[1]["note"].str.contains("collinear").all()
    assert batched[0]["ri_p_value"].notna().sum() > 10 and batched[1]["ri_p_value"].notna().sum() > 5
    for a, b in zip(batched, scalar):
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_cluster_layout_refuses_a_cluster_in_two_strata():
    with pytest.raises(ValueError, match="spans several strata"):
        balance_ri.ClusterLayout.of(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 2]))
