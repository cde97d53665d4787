"""Tests for pipeline.estimation.variance: CR2 and CR3 against independent computations (a dense
Bell-McCaffrey formula with scipy's sqrtm; leave-one-cluster-out statsmodels refits).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _estimation_data import Y, TREATS, make_data, hand_design, rel_close
from pipeline.estimation.fit import fit
from pipeline.estimation.spec import Spec
from pipeline.estimation.tables import tidy


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
    spec = Spec(Y, TREATS, vcov="CR3", weights="weight" if weighted else None)
    res = fit(df, spec)
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else None
    b, V, G = _cr3_by_refits(d, X, names, d["cluster_id"].to_numpy(), w)
    terms = ["treat_skills", "treat_capital", "treat_skills:treat_capital"]
    rel_close(res.params[terms].to_numpy(), b[terms].to_numpy())
    rel_close(res.cov_params().loc[terms, terms].to_numpy(), V.loc[terms, terms].to_numpy(), 1e-7)
    t = tidy(res).set_index("term")
    q = stats.t.ppf(0.975, G - 1)
    for term in terms:
        se = np.sqrt(V.loc[term, term])
        row = t.loc[term.replace(":", "_x_")]
        rel_close(row["std_error"], se, 1e-7)
        rel_close([row["ci_low"], row["ci_high"]], [b[term] - q * se, b[term] + q * se], 1e-7)
        rel_close(row["p_value"], 2 * stats.t.sf(abs(b[term] / se), G - 1), 1e-6)


def test_cr3_by_gender_diff_uses_jackknife_covariance():
    df = make_data(seed=23, n_clusters=24)
    res = fit(df, Spec(Y, TREATS, vcov="CR3"), by_gender=True)
    cr1 = fit(df, Spec(Y, TREATS), by_gender=True)
    assert res.fe_result.cov_type == "CR3"
    rel_close(res.params.to_numpy(), cr1.params[list(res.params.index)].to_numpy())
    V = res.cov_params()
    t = tidy(res).set_index("term")
    f, m = "treat_capital:female", "treat_capital:male"
    rel_close(t.loc["treat_capital_diff", "std_error"],
              np.sqrt(V.loc[f, f] + V.loc[m, m] - 2 * V.loc[f, m]), 1e-10)
    # the women coefficients' jackknife equals the women-only jackknife when, as here, the
    # model is the two regressions stacked (same leave-one-out refits per sex)
    women = fit(df, Spec(Y, TREATS, vcov="CR3"), sample="women")
    G_all, G_w = res.estimate_info.n_clusters, women.estimate_info.n_clusters
    if G_all == G_w:
        rel_close(res.bse[f], women.bse["treat_capital"], 1e-7)


@pytest.mark.parametrize("weighted", [False, True])
def test_cr2_matches_bell_mccaffrey_hand_formula(weighted):
    """CR2: (X'WX)^-1 sum_g X_g'W^1/2 A_g u*_g u*_g' A_g W^1/2 X_g (X'WX)^-1, A_g = (I - H*_gg)^-1/2,
    H* the hat matrix of the full dummy-variable design in the sqrt(w) metric (scipy sqrtm)."""
    import scipy.linalg
    df = make_data(seed=30, n_clusters=24, weights=weighted)
    res = fit(df, Spec(Y, TREATS, vcov="CR2", weights="weight" if weighted else None))
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else np.ones(len(d))
    Xs, ys = X * np.sqrt(w)[:, None], d[Y].to_numpy() * np.sqrt(w)
    B = np.linalg.inv(Xs.T @ Xs)
    u = ys - Xs @ (B @ Xs.T @ ys)
    meat = np.zeros((X.shape[1], X.shape[1]))
    for g in pd.unique(d["cluster_id"]):
        m = (d["cluster_id"] == g).to_numpy()
        A = np.linalg.inv(scipy.linalg.sqrtm(np.eye(m.sum()) - Xs[m] @ B @ Xs[m].T).real)
        s = Xs[m].T @ A @ u[m]
        meat += np.outer(s, s)
    V = B @ meat @ B
    terms = ["treat_skills", "treat_capital", "treat_skills:treat_capital"]
    ix = [names.index(t) for t in terms]
    rel_close(res.cov_params().loc[terms, terms].to_numpy(), V[np.ix_(ix, ix)], 1e-8)
    G = d["cluster_id"].nunique()
    t = tidy(res).set_index("term")
    se = np.sqrt(V[ix[1], ix[1]])
    rel_close(t.loc["treat_capital", "p_value"],
              2 * stats.t.sf(abs(t.loc["treat_capital", "estimate"] / se), G - 1), 1e-7)
