"""Shared fixtures of the estimation tests: a synthetic firm x round panel (2x2 factorial by
cluster within strata) and hand-written references (design matrix built column by column in numpy,
textbook OLS / WLS with CR1 or HC1 covariance):
    beta = (X'WX)^-1 X'Wy
    V_CR1 = G/(G-1) * (N-1)/(N-K) * (X'WX)^-1 (sum_g X_g'W u_g u_g'W X_g) (X'WX)^-1
with K counting every regressor, fixed-effect dummies included; HC1 is the same with one
observation per cluster (G = N). Inference uses t(G-1) (cluster) or t(N-K) (HC1).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import scipy.linalg

from pipeline.estimation.columns import GENDER
from pipeline.estimation.design import by_sex, check_variation, sex_masks, treatment_terms

if TYPE_CHECKING:
    from pipeline.estimation.sample import Sample
    from pipeline.estimation.spec import Spec

Y = "profit_usd_ppp_month"
TREATS = ["treat_skills", "treat_capital"]


# ------------------------------------------------------------------------------------------
# Synthetic data
# ------------------------------------------------------------------------------------------
def make_data(seed=0, n_clusters=40, firms_per_cluster=6, n_strata=4, n_followups=2,
              effects=None, p_missing_bl=0.15, p_missing_y=0.1, weights=False,
              mixed_gender_clusters=True, noise=40.0, cluster_sd=10.0):
    """Firm x round panel, 2x2 factorial assigned by cluster within strata.

    effects: {"women": {...}, "men": {...}} with keys treat_skills, treat_capital, interaction.
    """
    effects = effects or {"women": {"treat_skills": 5.0, "treat_capital": 10.0, "interaction": 0.0},
                          "men": {"treat_skills": 5.0, "treat_capital": 30.0, "interaction": 0.0}}
    rng = np.random.default_rng(seed)
    clusters = np.arange(n_clusters)
    stratum_of = clusters % n_strata
    arm = np.empty(n_clusters, dtype=int)
    for s in range(n_strata):   # balanced arms within stratum
        idx = np.flatnonzero(stratum_of == s)
        arm[idx] = rng.permutation(np.arange(len(idx)) % 4)
    n = n_clusters * firms_per_cluster
    cl = np.repeat(clusters, firms_per_cluster)
    if mixed_gender_clusters:
        female = rng.integers(0, 2, n)
    else:
        female = np.repeat(clusters % 2 == 0, firms_per_cluster).astype(int)
    skills, capital = arm[cl] % 2, arm[cl] // 2
    te = np.zeros(n)
    for sex, fv in (("women", 1), ("men", 0)):
        e = effects[sex]
        te += (female == fv) * (e["treat_skills"] * skills + e["treat_capital"] * capital
                                + e["interaction"] * skills * capital)
    ability = rng.normal(100, 30, n)
    cl_shock = rng.normal(0, cluster_sd, n_clusters)
    strat_eff = 5.0 * stratum_of[cl]
    w = rng.uniform(0.5, 3.0, n) if weights else None
    frames = []
    for r in range(n_followups + 1):
        y = (0.5 * ability + 40 + strat_eff + 3.0 * r + 8.0 * female
             + (r > 0) * te + cl_shock[cl] + rng.normal(0, noise, n))
        frame = pd.DataFrame({
            "firm_id": [f"F{i:05d}" for i in range(n)],
            "round": r,
            "followup": r > 0,
            "stratum": [f"S{s}" for s in stratum_of[cl]],
            "cluster_id": [f"C{c:03d}" for c in cl],
            "female_owner": female,
            "treat_skills": skills,
            "treat_capital": capital,
            Y: y,
            "revenue_usd_ppp_month": 3 * y + rng.normal(0, 50, n),
        })
        if w is not None:
            frame["weight"] = w
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    miss_y = rng.random(len(df)) < p_missing_y
    df.loc[miss_y, Y] = np.nan
    for out in (Y, "revenue_usd_ppp_month"):
        bl = df.loc[df["round"] == 0].set_index("firm_id")[out]
        bl = bl.where(rng.random(len(bl)) >= p_missing_bl)
        vals = df["firm_id"].map(bl)
        df[f"{out}_bl_missing"] = vals.isna().astype(int)
        df[f"{out}_bl"] = vals.fillna(0.0)
    return df


# ------------------------------------------------------------------------------------------
# Hand-written references
# ------------------------------------------------------------------------------------------
def hand_design(df, outcome=Y, treats=("treat_skills", "treat_capital"), interact=True,
                baseline=True, fe=("stratum", "round"), extra=None):
    """Follow-up, non-missing-outcome rows; X built column by column in numpy."""
    d = df[df["followup"] & df[outcome].notna()].reset_index(drop=True)
    cols, names = [np.ones(len(d))], ["const"]
    for t in treats:
        cols.append(d[t].to_numpy(float))
        names.append(t)
    if interact:
        cols.append((d[treats[0]] * d[treats[1]]).to_numpy(float))
        names.append(f"{treats[0]}:{treats[1]}")
    if extra:
        for name, fn in extra:
            cols.append(fn(d))
            names.append(name)
    if baseline:
        for c in (f"{outcome}_bl", f"{outcome}_bl_missing"):
            cols.append(d[c].to_numpy(float))
            names.append(c)
    for f in fe:
        levels = sorted(d[f].unique())
        for lev in levels[1:]:
            cols.append((d[f] == lev).to_numpy(float))
            names.append(f"{f}[{lev}]")
    return d, np.column_stack(cols), names


def hand_ols(X, y, groups=None, w=None):
    """beta, CR1 (or HC1 when groups is None) covariance, and the t df."""
    n, k = X.shape
    w = np.ones(n) if w is None else np.asarray(w, float)
    XtWX = X.T @ (X * w[:, None])
    bread = np.linalg.inv(XtWX)
    beta = bread @ (X.T @ (w * y))
    u = y - X @ beta
    scores = X * (w * u)[:, None]
    if groups is None:
        groups = np.arange(n)
    codes = pd.factorize(pd.Series(groups))[0]
    G = codes.max() + 1
    sums = np.zeros((G, k))
    np.add.at(sums, codes, scores)
    meat = sums.T @ sums
    V = (G / (G - 1)) * ((n - 1) / (n - k)) * bread @ meat @ bread
    df_t = G - 1 if G < n else n - k
    return beta, V, df_t


def rel_close(a, b, tol=1e-8):
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)))


# ------------------------------------------------------------------------------------------
# Closed form
# ------------------------------------------------------------------------------------------


def with_extras(df, seed=0):
    """Add what the construct stage provides beyond make_data: an unwinsorised outcome with
    outliers (and its baseline), arm labels, attrition, covariates."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    big = rng.random(len(df)) < 0.02
    df[f"{Y}_unwinsorised"] = df[Y] + big * 2000.0
    bl = df.loc[df["round"] == 0].set_index("firm_id")[f"{Y}_unwinsorised"]
    vals = df["firm_id"].map(bl).where(df[f"{Y}_bl_missing"] == 0)
    df[f"{Y}_unwinsorised_bl_missing"] = vals.isna().astype(int)
    df[f"{Y}_unwinsorised_bl"] = vals.fillna(0.0)
    labels = {(0, 0): "Control", (1, 0): "Training only", (0, 1): "Grant only", (1, 1): "Training + grant"}
    df["arm"] = [labels[(s, c)] for s, c in zip(df["treat_skills"], df["treat_capital"])]
    df["interviewed"] = np.where(df["followup"], df[Y].notna().astype(int), 1)
    df["attrited"] = 1 - df["interviewed"]
    df["skills_index"] = np.clip(rng.normal(0.3, 0.15, len(df)), 0, 1)
    df["credit_access"] = (rng.random(len(df)) < 0.2).astype(float)
    df.loc[rng.random(len(df)) < 0.05, "skills_index"] = np.nan
    df["owner_age_bl"] = rng.normal(38, 9, len(df)).round()
    df["owner_age"] = df["owner_age_bl"]
    df["owner_age_bl_missing"] = 0
    return df


# ------------------------------------------------------------------------------------------
# The oracle: the same models through statsmodels with explicit fixed-effect dummies
# ------------------------------------------------------------------------------------------
def fe_dummies(fe: tuple[np.ndarray, np.ndarray], name: str,
               mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Dummies for every level but the first (sorted) among the rows in ``mask``."""
    codes, levels = fe
    mask = np.ones(len(codes), dtype=bool) if mask is None else mask
    present = np.unique(codes[mask])
    out = {}
    for c in present[1:]:
        out[f"{name}[{levels[c]}]"] = ((codes == c) & mask).astype(float)
    return out


def drop_collinear(X: dict[str, np.ndarray], w: np.ndarray | None,
                    protected: Sequence[str]) -> tuple[list[str], list[str]]:
    """Greedy, order-respecting selection of linearly independent columns (incremental Cholesky
    of the weighted Gram matrix). A protected column that is collinear raises ValueError."""
    names = list(X)
    M = np.column_stack([X[n] for n in names])
    if w is not None:
        M = M * np.sqrt(w)[:, None]
    G = M.T @ M
    kept: list[int] = []
    dropped: list[str] = []
    L = np.zeros((0, 0))
    for j, name in enumerate(names):
        gjj = G[j, j]
        if kept:
            v = scipy.linalg.solve_triangular(L, G[kept, j], lower=True)
            d = gjj - v @ v
        else:
            v, d = np.zeros(0), gjj
        if gjj <= 0 or d <= 1e-9 * gjj:
            if name in protected:
                raise ValueError(f"term {name!r} is collinear with other regressors "
                                 f"(no independent variation in the sample)")
            dropped.append(name)
            continue
        k = len(kept)
        L2 = np.zeros((k + 1, k + 1))
        L2[:k, :k] = L
        L2[k, :k] = v
        L2[k, k] = np.sqrt(d)
        L = L2
        kept.append(j)
    return [names[j] for j in kept], dropped


def dummy_design(s: Sample, spec: Spec, pairs, by_gender: bool, sample: str):
    """Columns of X in order (dict name -> array) and the names of the terms of interest."""
    terms = treatment_terms(s, pairs)
    X: dict[str, np.ndarray] = {"const": np.ones(s.n)}
    if not by_gender:
        check_variation(terms, f"{sample!r} sample")
        X.update(terms)
        X.update(s.covariates)
        for c, values in s.fe.items():
            X.update(fe_dummies(values, c))
        return X, list(terms)

    masks = sex_masks(s, terms)
    X[GENDER] = s.female.copy()
    interest = by_sex(X, terms, masks)
    if spec.gender_interact_all:
        by_sex(X, s.covariates, masks)
        for c, values in s.fe.items():
            for sex, m in masks.items():
                X.update({f"{k}:{sex}": d for k, d in fe_dummies(values, c, m).items()})
    else:
        X.update(s.covariates)
        for c, values in s.fe.items():
            X.update(fe_dummies(values, c))
    return X, interest


def statsmodels_fit(df, spec, sample=None, by_gender=False):
    """(statsmodels results, dropped columns) of the model :func:`pipeline.estimation.fit.fit` fits,
    with explicit dummies (first sorted level dropped) and statsmodels' own CR1 / HC1, use_t=True."""
    import statsmodels.api as sm
    from pipeline.estimation.sample import crossed_interactions, prepare
    sample = "all" if sample is None else sample
    s = prepare(df, spec, sample, need_gender=by_gender)
    X, interest = dummy_design(s, spec, crossed_interactions(df, spec), by_gender, sample)
    kept, dropped = drop_collinear(X, s.weights, protected=["const", *interest])
    exog = pd.DataFrame({k: X[k] for k in kept})
    model = sm.OLS(s.y, exog) if s.weights is None else sm.WLS(s.y, exog, weights=s.weights)
    if spec.cluster is None:
        return model.fit(cov_type="HC1", use_t=True), dropped
    return model.fit(cov_type="cluster", cov_kwds={"groups": s.groups}, use_t=True), dropped
