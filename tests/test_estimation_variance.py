"""Tests for pipeline.estimation.variance: CR2 and CR3 against independent computations (a dense
Bell-McCaffrey formula with scipy's sqrtm; leave-one-cluster-out statsmodels refits).
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _estimation_data import Y, TREATS, make_data, hand_design, rel_close
from pipeline.estimation.fit import fit
from pipeline.estimation.tables import tidy
from pipeline.estimation.variance import wald_statistic
from _params import make_spec, tidy_kw


def _cr3_by_refits(d, X, names, groups, w=None):
    """Reference CR3: statsmodels OLS/WLS on the hand design without each cluster in turn
    (dummy columns all zero without the cluster removed; pinv handles them)."""
    import statsmodels.api as sm
    y = d[Y].to_numpy()

    def coefs(m):
        Xm = X[m][:, np.abs(X[m]).sum(axis=0) > 0]
        mod = sm.OLS(y[m], Xm) if w is None else sm.WLS(y[m], Xm, weights=w[m])
        keep = np.flatnonzero(np.abs(X[m]).sum(axis=0) > 0)
        return pd.Series(mod.fit().params, index=[names[j] for j in keep])

    full = coefs(np.ones(len(d), dtype=bool))
    levels = pd.unique(groups)
    dev = []
    for g in levels:
        b = coefs(groups != g)
        dev.append((b[full.index] - full).to_numpy())
    dev = np.array(dev)
    G = len(levels)
    return full, pd.DataFrame((G - 1) / G * dev.T @ dev, index=full.index, columns=full.index), G


@pytest.mark.parametrize("weighted", [False, True])
def test_cr3_matches_leave_one_cluster_out_statsmodels_refits(weighted):
    df = make_data(seed=22, n_clusters=24, weights=weighted)
    spec = make_spec(Y, TREATS, vcov="CR3", weights="weight" if weighted else None)
    res = fit(df, spec)
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else None
    b, V, G = _cr3_by_refits(d, X, names, d["cluster_id"].to_numpy(), w)
    terms = ["treat_skills", "treat_capital", "treat_skills:treat_capital"]
    rel_close(res.params[terms].to_numpy(), b[terms].to_numpy())
    rel_close(res.cov_params().loc[terms, terms].to_numpy(), V.loc[terms, terms].to_numpy(), 1e-7)
    t = tidy(res, **tidy_kw()).set_index("term")
    q = stats.t.ppf(0.975, G - 1)
    for term in terms:
        se = np.sqrt(V.loc[term, term])
        row = t.loc[term.replace(":", "_x_")]
        rel_close(row["std_error"], se, 1e-7)
        rel_close([row["ci_low"], row["ci_high"]], [b[term] - q * se, b[term] + q * se], 1e-7)
        rel_close(row["p_value"], 2 * stats.t.sf(abs(b[term] / se), G - 1), 1e-6)


def test_cr3_by_gender_diff_uses_jackknife_covariance():
    df = make_data(seed=23, n_clusters=24)
    res = fit(df, make_spec(Y, TREATS, vcov="CR3"), by_gender=True)
    cr1 = fit(df, make_spec(Y, TREATS, vcov="CR1"), by_gender=True)
    assert res.fe_result.cov_type == "CR3"
    rel_close(res.params.to_numpy(), cr1.params[list(res.params.index)].to_numpy())
    V = res.cov_params()
    t = tidy(res, **tidy_kw()).set_index("term")
    f, m = "treat_capital:female", "treat_capital:male"
    rel_close(t.loc["treat_capital_diff", "std_error"],
              np.sqrt(V.loc[f, f] + V.loc[m, m] - 2 * V.loc[f, m]), 1e-10)
    # the women coefficients' jackknife equals the women-only jackknife when, as here, the
    # model is the two regressions stacked (same leave-one-out refits per sex)
    women = fit(df, make_spec(Y, TREATS, vcov="CR3"), sample="women")
    G_all, G_w = res.estimate_info.n_clusters, women.estimate_info.n_clusters
    if G_all == G_w:
        rel_close(res.bse[f], women.bse["treat_capital"], 1e-7)


def dense_cr2(X, y, clusters, w, contrasts):
    """Independent CR2 with dense n x n matrices: V = B sum_g X_g' A_g u_g u_g' A_g X_g B with
    A_g = (I - H_gg)^-1/2 (scipy's sqrtm, pseudo-inverted), and for each contrast c the Bell-McCaffrey degrees of
    freedom (Imbens & Kolesar 2016, eq. 9): G = [(I - H)[:, g] A_g X_g B c]_g,
    df = tr(G'G)^2 / ||G'G||_F^2 (the eigenvalue formula without eigenvalues). All in the sqrt(w)
    metric (working model: independent errors with variance proportional to 1/w)."""
    import scipy.linalg
    Xs, ys = X * np.sqrt(w)[:, None], y * np.sqrt(w)
    B = np.linalg.inv(Xs.T @ Xs)
    H = Xs @ B @ Xs.T
    u = ys - H @ ys
    IH = np.eye(len(y)) - H
    meat = np.zeros((X.shape[1], X.shape[1]))
    A = {}
    for g in pd.unique(clusters):
        m = clusters == g
        # pseudo-inverse where I - H_gg is singular (eigenvalues <= 1e-12: square roots <= 1e-6)
        A[g] = np.linalg.pinv(scipy.linalg.sqrtm(IH[np.ix_(m, m)]).real, rcond=1e-6, hermitian=True)
        s = Xs[m].T @ A[g] @ u[m]
        meat += np.outer(s, s)
    V = B @ meat @ B
    dfs = []
    for c in contrasts:
        G = np.column_stack([IH[:, clusters == g] @ A[g] @ Xs[clusters == g] @ B @ c for g in A])
        GtG = G.T @ G
        dfs.append(np.trace(GtG) ** 2 / np.sum(GtG ** 2))
    return V, dfs


@pytest.mark.parametrize("weighted", [False, True])
def test_cr2_matches_bell_mccaffrey_hand_formula(weighted):
    """CR2 covariance and, for every tidy row, the t-test with the contrast's Bell-McCaffrey degrees
    of freedom (p-value and interval) against the dense computation."""
    df = make_data(seed=30, n_clusters=24, weights=weighted)
    res = fit(df, make_spec(Y, TREATS, vcov="CR2", weights="weight" if weighted else None))
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else np.ones(len(d))
    terms = ["treat_skills", "treat_capital", "treat_skills:treat_capital"]
    ix = [names.index(t) for t in terms]
    V, dfs = dense_cr2(X, d[Y].to_numpy(), d["cluster_id"].to_numpy(), w, [np.eye(len(names))[j] for j in ix])
    rel_close(res.cov_params().loc[terms, terms].to_numpy(), V[np.ix_(ix, ix)], 1e-8)
    G = d["cluster_id"].nunique()
    assert all(1 < v < G - 1 for v in dfs)              # fewer than G - 1: the correction matters
    t = tidy(res, **tidy_kw()).set_index("term")
    for term, j, dof in zip(terms, ix, dfs):
        row, se = t.loc[term.replace(":", "_x_")], np.sqrt(V[j, j])
        rel_close(row["p_value"], 2 * stats.t.sf(abs(row["estimate"] / se), dof), 1e-7)
        q = stats.t.ppf(0.975, dof)
        rel_close([row["ci_low"], row["ci_high"]], [row["estimate"] - q * se, row["estimate"] + q * se], 1e-8)


def test_cr2_diff_row_uses_the_contrast_bell_mccaffrey_df():
    """by_gender: the women - men row is a contrast of two coefficients; its df is that contrast's."""
    df = make_data(seed=31, n_clusters=20)
    res = fit(df, make_spec(Y, TREATS, vcov="CR2", fixed_effects=["round"]), by_gender=True)
    d = df[df["followup"] & df[Y].notna()].reset_index(drop=True)
    fem = d["female_owner"].to_numpy(float)
    cols = {"const:female": fem, "const:male": 1 - fem}
    for tname in ("treat_skills", "treat_capital"):
        cols[f"{tname}:female"] = d[tname].to_numpy(float) * fem
        cols[f"{tname}:male"] = d[tname].to_numpy(float) * (1 - fem)
    inter = (d["treat_skills"] * d["treat_capital"]).to_numpy(float)
    cols["treat_skills:treat_capital:female"], cols["treat_skills:treat_capital:male"] = inter * fem, inter * (1 - fem)
    for c in (f"{Y}_bl", f"{Y}_bl_missing"):
        cols[f"{c}:female"], cols[f"{c}:male"] = d[c].to_numpy(float) * fem, d[c].to_numpy(float) * (1 - fem)
    for r in sorted(d["round"].unique())[1:]:
        cols[f"round{r}:female"] = (d["round"] == r).to_numpy(float) * fem
        cols[f"round{r}:male"] = (d["round"] == r).to_numpy(float) * (1 - fem)
    names = list(cols)
    X = np.column_stack([cols[n] for n in names])
    c = np.zeros(len(names))
    c[names.index("treat_capital:female")], c[names.index("treat_capital:male")] = 1.0, -1.0
    V, (dof,) = dense_cr2(X, d[Y].to_numpy(), d["cluster_id"].to_numpy(), np.ones(len(d)), [c])
    row = tidy(res, **tidy_kw()).set_index("term").loc["treat_capital_diff"]
    se = np.sqrt(c @ V @ c)
    rel_close(row["std_error"], se, 1e-8)
    rel_close(row["p_value"], 2 * stats.t.sf(abs(row["estimate"] / se), dof), 1e-7)
    assert dof < res.estimate_info.n_clusters - 1


def test_registry_names_and_the_estimator_for_a_spec():
    from pipeline.estimation import variance
    assert set(variance.REGISTRY) == {"HC1", "CR1", "CR2", "CR3"}
    assert variance.estimator_name("CR1", clustered=False) == "HC1"
    assert variance.estimator_name("CR2", clustered=True) == "CR2"
    with pytest.raises(ValueError, match="needs cluster"):
        variance.estimator_name("CR2", clustered=False)
    with pytest.raises(ValueError, match="vcov must be one of"):
        variance.estimator_name("HC3", clustered=True)
    with pytest.raises(ValueError, match="unknown covariance"):
        variance.covariance("HC3", None)


def _cr2_design(seed, fe_names, weighted):
    """Unequal clusters (singletons to 40 rows) for :func:`variance._cr2_cov`: a cluster-level
    treatment, a row-level regressor and a row-level dummy; fixed effects among ``stratum`` (nested
    in the clusters; stratum 4 holds cluster 0 alone, so I - H_gg is singular there), ``round``
    (crossing the clusters) and ``district`` (levels spanning clusters, clusters spanning levels).
    Clusters 8 and 9 have 6 rows each; in cluster 8 only 3 columns of [X, dummies] are not all zero
    (low-rank form), in cluster 9 more. Returns the inputs of ``_cr2_cov`` and the full-rank hand
    design (X, intercept, dummies without their first level) for :func:`dense_cr2`."""
    rng = np.random.default_rng(seed)
    sizes = np.array([40, 1, 1, 2, 3, 5, 8, 12, 6, 6, 12, 20, 20, 25, 30, 31, 33, 40, 12, 16])
    groups = np.repeat(np.arange(len(sizes)), sizes)
    n = len(groups)
    stratum = np.where(groups == 0, 4, groups % 4)
    treat = (rng.random(len(sizes)) < 0.5)[groups].astype(float)
    dummy = (rng.random(n) < 0.3).astype(float)
    rounds, district = rng.integers(0, 3, n), rng.integers(0, 3, n)
    in8, in9 = groups == 8, groups == 9
    treat[in8], dummy[in8], rounds[in8], district[in8] = 0.0, 0.0, 0, 0
    treat[in9], dummy[in9] = 1.0, np.arange(6) % 2
    codes = {"stratum": stratum, "round": rounds, "district": district}
    X = np.column_stack([treat, rng.normal(size=n), dummy])
    y = X @ [1.0, 0.5, -0.3] + rng.normal(size=len(sizes))[groups] + rng.normal(size=n)
    w = rng.uniform(0.5, 2.0, n) if weighted else None
    fes = [(codes[f], codes[f].max() + 1, f) for f in fe_names]
    dummies = [np.ones((n, 1))] + [(codes[f][:, None] == np.arange(1, codes[f].max() + 1)).astype(float)
                                   for f in fe_names]
    return np.vstack([y, X.T]), fes, w, groups, np.hstack([X] + dummies)


@pytest.mark.parametrize("weighted", [False, True], ids=["ols", "wls"])
@pytest.mark.parametrize("fe_names", [(), ("stratum",), ("stratum", "round"), ("round",), ("district", "round")])
def test_cr2_low_rank_and_dense_clusters_match_the_dense_formula(fe_names, weighted):
    """_cr2_cov's covariance and Bell-McCaffrey df (each coefficient, a difference of two) against
    :func:`dense_cr2` on clusters of unequal sizes, singletons, weights, fixed effects nested in,
    crossing and spanning the clusters, and a cluster whose I - H_gg is singular; the clusters go
    through both the low-rank (r x r) and the dense (n_g x n_g) factorisation of (I - H_gg)^-1/2."""
    from pipeline.estimation import variance
    Z0, fes, w, groups, hand = _cr2_design(40, fe_names, weighted)
    G = groups.max() + 1
    V, contrast_df = variance._cr2_cov(Z0, fes, w, groups, G)
    C = np.vstack([np.eye(3), [1.0, -1.0, 0.0]])
    V_ref, df_ref = dense_cr2(hand, Z0[0], groups, np.ones(len(groups)) if w is None else w,
                              np.hstack([C, np.zeros((len(C), hand.shape[1] - 3))]))
    rel_close(V, V_ref[:3, :3], 1e-9)
    rel_close(contrast_df(C), df_ref, 1e-9)
    # each cluster's A_g = I + Q diag(f) Q' is the pseudo-inverse square root of I - H_gg (0 on the
    # null space: cluster 0 with stratum fixed effects)
    M = variance._dense_design(Z0, fes) * (1.0 if w is None else np.sqrt(w)[:, None])
    Ainv = np.linalg.pinv(M.T @ M)
    widths = {}
    for gs, rows, Mg, Q, f in variance._adjustment_blocks(M, Ainv, groups, G):
        for g, r, Qg, fg in zip(gs, rows, Q, f):
            widths[g] = (Q.shape[2], Mg.shape[1])
            ev, vec = np.linalg.eigh(np.eye(len(r)) - M[r] @ Ainv @ M[r].T)
            A_ref = (vec * np.where(ev > 1e-10, 1 / np.sqrt(np.clip(ev, 1e-10, None)), 0.0)) @ vec.T
            np.testing.assert_allclose(np.eye(len(r)) + (Qg * fg) @ Qg.T, A_ref, atol=1e-9)
    assert sorted(widths) == list(range(G))
    assert any(r < n_g for r, n_g in widths.values()) and any(r == n_g for r, n_g in widths.values())
    assert widths[8][0] < 6 == widths[9][0]      # one size block split between the two forms


def test_wald_statistic_is_the_quadratic_form_in_any_units_and_refuses_a_rank_deficient_covariance():
    rng = np.random.default_rng(12)
    B = rng.normal(size=(6, 3))
    V, b = B.T @ B, rng.normal(size=3)
    wald, rank = wald_statistic(b, V)
    assert rank == 3 and wald == pytest.approx(b @ np.linalg.solve(V, b), rel=1e-12)
    units = np.array([1.0, 1e7, 1e-6])              # shillings beside a 0/1 dummy: the same test
    assert wald_statistic(b * units, V * np.outer(units, units))[0] == pytest.approx(wald, rel=1e-9)
    L = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # the third coefficient is the sum of the others
    for scale in (1.0, 1e7):
        W, r = wald_statistic(L @ b[:2] * scale, L @ V[:2, :2] @ L.T * scale ** 2)
        assert np.isnan(W) and r == 2
    W, r = wald_statistic(b, np.diag([1.0, 0.0, 2.0]))       # a coefficient without variance
    assert np.isnan(W) and r == 0
