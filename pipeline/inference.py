"""Inference tools shared by the estimate stage's tables (see ``METHODS.md``).

* :func:`sharpened_qvalues` -- Anderson (2008) sharpened FDR q-values, his grid procedure.
* :func:`mde` -- minimum detectable effect from an estimated standard error.
* :func:`stratified_cluster_draws` / :func:`rows_for_draw` -- the cluster bootstrap (clusters
  resampled with replacement within strata), shared by the QTE and Lee-bound confidence intervals.
* :func:`first_appearance_codes` -- how clusters and strata are numbered before anything random is
  indexed by them (their order of first appearance in the data, never their sorted order).
* :func:`cluster_wald` -- a cluster-robust (CR1) Wald F-test of OLS coefficients (numpy; the
  balance tests and their randomisation inference need thousands of them).
* :func:`arm_order` / :func:`slug` / :func:`cluster_level` -- arms in table order, their column
  names, and a column's value per cluster (the unit of assignment).

Balance tables are in :mod:`pipeline.balance`, Lee bounds in :mod:`pipeline.lee_bounds`.

Seeds: every random procedure takes ``seed`` (an int) and derives its own stream from it with
``numpy.random.default_rng([seed, STREAM])`` so that, for instance, the number of bootstrap
replications never changes the permutations drawn for randomisation inference.

Order: a random draw is an array indexed by cluster (or stratum) position, so the positions must
not depend on anything but the data's content and row order. Cluster and stratum ids can be
salted hashes (``ingest``: field2013's loan-group names), whose *sorted* order changes with the
per-checkout salt (``.secrets/hash_salt``), which made bootstrap CIs and randomisation p-values
differ between clones (issue 8). Clusters and strata are therefore numbered in order of first
appearance in the rows passed in (:func:`first_appearance_codes`); the analysis table's row order
is salt-free (``construct`` sorts it by unit id and round, and no study hashes its unit id).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.estimation.variance import Problem, covariance, wald_statistic

STREAM_BOOTSTRAP = 1
STREAM_PERMUTATION = 2


# --------------------------------------------------------------------------------------------
# Multiple testing: Anderson (2008) sharpened q-values
# --------------------------------------------------------------------------------------------
def sharpened_qvalues(pvalues: Sequence[float], grid_steps: int = 1000) -> np.ndarray:
    """Anderson (2008) sharpened FDR q-values (Benjamini, Krieger & Yekutieli 2006 two-stage).

    A line-by-line port of Anderson's ``fdr_sharpened_qvalues.do``: for every level q on the
    grid 1.000, 0.999, ..., 0.001 (``grid_steps`` = 1000 steps),

    1. stage 1: q' = q / (1 + q); r1 = the largest rank r with p_(r) <= q' r / M;
    2. stage 2: q2 = q' M / (M - r1); r2 = the largest rank r with p_(r) <= q2 r / M
       (when r1 = M, Stata's division by zero gives a missing q2, and ``missing >= p`` is true
       in Stata, so every hypothesis is rejected: reproduced here);
    3. every hypothesis of rank <= r2 gets q-value q (overwriting the value of a larger q).

    The q-value is thus the smallest grid level at which the hypothesis is rejected, 1 if none.
    NaN p-values are ignored (q NaN) and do not count in M. Ranks are 1..M after a stable sort,
    as Stata's ``sort`` + ``_n``; tied p-values always share the decision, so the tie order does
    not matter. Differences from the Stata code that can only matter when a p-value lies exactly
    on a threshold: Stata stores the thresholds as single-precision ``float`` variables and
    builds the grid by repeated subtraction of 0.001; here both are doubles and the grid is
    k / 1000 exactly.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    pv = p[ok]
    m = pv.size
    if m == 0:
        return out
    if (pv < 0).any() or (pv > 1).any():
        raise ValueError("p-values must be in [0, 1]")
    order = np.argsort(pv, kind="mergesort")
    ps = pv[order]
    rank = np.arange(1, m + 1, dtype=float)
    levels = np.arange(grid_steps, 0, -1) / grid_steps                 # 1.000 ... 0.001
    q1 = levels / (1.0 + levels)
    stage1 = ps[None, :] <= (q1[:, None] * rank[None, :] / m)
    r1 = np.max(np.where(stage1, rank[None, :], 0.0), axis=1)
    with np.errstate(divide="ignore"):
        q2 = np.where(r1 < m, q1 * m / np.maximum(m - r1, 1e-300), np.inf)
    stage2 = ps[None, :] <= (q2[:, None] * rank[None, :] / m)
    r2 = np.max(np.where(stage2, rank[None, :], 0.0), axis=1)
    r2 = np.where(r1 >= m, m, r2)                                       # Stata: missing >= p
    # q-value of rank j: the smallest level whose r2 >= j (1 if none).
    rejected = r2[:, None] >= rank[None, :]                             # levels x ranks
    q_sorted = np.ones(m)
    any_rej = rejected.any(axis=0)
    last = len(levels) - 1 - np.argmax(rejected[::-1, :], axis=0)       # last row = smallest level
    q_sorted[any_rej] = levels[last[any_rej]]
    qv = np.empty(m)
    qv[order] = q_sorted
    out[ok] = qv
    return out


# --------------------------------------------------------------------------------------------
# Power
# --------------------------------------------------------------------------------------------
def mde(std_error, df, *, power: float, alpha: float):
    """Minimum detectable effect: (t_{power} + t_{1 - alpha/2}) x SE with t(df) quantiles
    (the normal when df is infinite). Vectorised over ``std_error`` and ``df``. ``power`` and
    ``alpha`` are the estimate params ``mde_power`` and ``alpha`` (no defaults here: params.yaml
    holds them)."""
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise ValueError("power and alpha must be in (0, 1)")
    se = np.asarray(std_error, dtype=float)
    d = np.asarray(df, dtype=float)
    return (stats.t.ppf(power, d) + stats.t.ppf(1 - alpha / 2, d)) * se


# --------------------------------------------------------------------------------------------
# Cluster bootstrap
# --------------------------------------------------------------------------------------------
def first_appearance_codes(values) -> tuple[np.ndarray, pd.Index]:
    """(codes 0..G-1, the G distinct values): values numbered in order of first appearance.

    Used for every cluster and stratum numbering that random draws are indexed by: sorted order
    would follow the hash salt where ids are salted hashes (see the module docstring).
    """
    codes, levels = pd.factorize(pd.Series(values).to_numpy(), sort=False)
    return codes, pd.Index(levels)


def stratified_cluster_draws(cluster_strata: Sequence, reps: int, seed: int) -> np.ndarray:
    """``reps`` x G array of cluster positions (0..G-1): each replication draws, in every stratum,
    as many clusters as it has, with replacement, from that stratum's clusters only.

    ``cluster_strata[g]`` is the stratum of cluster g. Strata are visited in order of first
    appearance in ``cluster_strata`` (not sorted: stratum labels can be salted hashes), so the
    draws depend only on the clusters' order and strata, ``reps`` and ``seed``.
    """
    strata = pd.Series(np.asarray(cluster_strata, dtype=object)).astype(str).to_numpy()
    reps = int(reps)
    if reps < 1:
        raise ValueError("reps must be >= 1")
    rng = np.random.default_rng([int(seed), STREAM_BOOTSTRAP])
    draws = np.empty((reps, len(strata)), dtype=np.int64)
    for s in pd.unique(strata):
        members = np.flatnonzero(strata == s)
        draws[:, members] = members[rng.integers(0, len(members), size=(reps, len(members)))]
    return draws


def cluster_rows(codes: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """Row positions of each cluster code 0..n_clusters-1."""
    order = np.argsort(codes, kind="mergesort")
    bounds = np.searchsorted(codes[order], np.arange(n_clusters + 1))
    return [order[bounds[g]:bounds[g + 1]] for g in range(n_clusters)]


def rows_for_draw(rows_by_cluster: list[np.ndarray], draw: np.ndarray) -> np.ndarray:
    """Row positions of a bootstrap sample (a cluster drawn twice contributes its rows twice)."""
    return np.concatenate([rows_by_cluster[g] for g in draw])


# --------------------------------------------------------------------------------------------
# Cluster-robust Wald test (numpy)
# --------------------------------------------------------------------------------------------
def demean_within(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Subtract group means (codes 0..H-1) from each column of ``values`` (n x k or n)."""
    v = np.asarray(values, dtype=float)
    one = v.ndim == 1
    v2 = v[:, None] if one else v
    n_groups = int(codes.max()) + 1
    counts = np.bincount(codes, minlength=n_groups).astype(float)
    means = np.column_stack([np.bincount(codes, weights=v2[:, j], minlength=n_groups)
                             for j in range(v2.shape[1])]) / np.maximum(counts, 1)[:, None]
    out = v2 - means[codes]
    return out[:, 0] if one else out


def cluster_wald(y: np.ndarray, X: np.ndarray, groups: np.ndarray, test: Sequence[int] | None = None,
                 k_extra: int = 0, tol: float = 1e-10, pvalue: bool = True) -> dict:
    """OLS of ``y`` on ``X`` with CR1 cluster-robust covariance; Wald F-test of ``test`` columns.

    Matches statsmodels ``OLS(...).fit(cov_type="cluster", use_t=True).f_test``: V = c (X'X)^-1
    (sum_g X_g'u_g u_g'X_g) (X'X)^-1 with c = G/(G-1) (N-1)/(N-K) (the estimation package's
    ``CR1``, :func:`pipeline.estimation.variance.cr1`), F = b'(R V R')^-1 b / q on
    (q, G-1) degrees of freedom. ``k_extra`` adds regressors already partialled out of y and X
    (fixed effects absorbed by :func:`demean_within`) to K. Columns of X with (numerically) no
    variation are dropped first; ``q`` is the number of tested columns left. ``groups``: cluster labels
    (integer codes are used as they are, other labels numbered by :func:`first_appearance_codes`,
    so that the order of the sums over clusters does not follow a hash salt). ``pvalue=False``
    skips the p-value (permutation loops).
    The test is refused (``f_stat`` NaN, the reason in ``note``) when the cluster-robust covariance
    of the tested coefficients has a smaller rank than their number
    (:func:`pipeline.estimation.variance.wald_statistic`).
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    if X.ndim == 1:
        X = X[:, None]
    test = list(range(X.shape[1])) if test is None else list(test)
    norms = np.sqrt((X ** 2).sum(axis=0))
    keep = norms > tol * max(norms.max(initial=0.0), 1e-300)
    if not keep.all():
        col_map = {j: i for i, j in enumerate(np.flatnonzero(keep))}
        test = [col_map[j] for j in test if j in col_map]
        X = X[:, keep]
    X = X / norms[keep]             # unit-norm columns: F is invariant, pinv's cut-off then is not
    n, k = X.shape
    codes = np.asarray(groups)
    if not np.issubdtype(codes.dtype, np.integer):
        codes = first_appearance_codes(codes)[0]
    n_codes = int(codes.max()) + 1 if n else 0
    G = int(np.count_nonzero(np.bincount(codes, minlength=n_codes))) if n else 0
    empty = {"f_stat": np.nan, "df_num": 0, "df_denom": max(G - 1, 0), "p_value": np.nan,
             "n_obs": n, "n_clusters": G}
    if not test or G < 2 or n <= k + k_extra:
        return empty
    if G < n_codes:                             # integer labels with gaps: dense codes 0..G-1
        codes = (np.cumsum(np.bincount(codes, minlength=n_codes) > 0) - 1)[codes]
    bread = np.linalg.pinv(X.T @ X)
    beta = bread @ (X.T @ y)
    u = y - X @ beta
    cr1 = covariance("CR1", Problem(bread=bread, scores=(X * u[:, None]).T, beta=beta, n_obs=n,
                                    k_params=k + k_extra, groups=codes, n_clusters=G))
    q = len(test)
    wald, rank = wald_statistic(beta[test], cr1.cov[np.ix_(test, test)])
    if rank < q:
        return {**empty, "df_num": q,
                "note": f"test refused: rank of the cluster-robust covariance of the {q} tested "
                        f"coefficients is {rank} (G = {G} clusters)"}
    f = wald / q
    return {"f_stat": f, "df_num": q, "df_denom": G - 1,
            "p_value": float(stats.f.sf(f, q, G - 1)) if pvalue else np.nan,
            "n_obs": n, "n_clusters": G}


# --------------------------------------------------------------------------------------------
# Arms (shared by the balance, Lee-bound and estimate tables)
# --------------------------------------------------------------------------------------------
def slug(label: str) -> str:
    """'Training + grant' -> 'training_grant' (column-name friendly)."""
    return re.sub(r"[^0-9a-z]+", "_", str(label).lower()).strip("_") or "arm"


def arm_order(df: pd.DataFrame, arm: str, treatments: Sequence[str]) -> tuple[list[str], str]:
    """Arms ordered control first, then by number of treatments, then in the order of the
    treatment columns (Training only, Grant only, Training + grant); and the control label."""
    treatments = [t for t in treatments if t in df.columns]
    firms = df[[arm, *treatments]].drop_duplicates()
    if firms[arm].duplicated().any():
        raise ValueError(f"arm column {arm!r} is not consistent with the treatment columns")
    keys = {}
    for _, r in firms.iterrows():
        t = [int(r[c]) for c in treatments]
        keys[r[arm]] = (sum(t), [-v for v in t], str(r[arm]))
    arms = sorted(keys, key=lambda a: keys[a])
    controls = [a for a in arms if keys[a][0] == 0]
    if len(controls) != 1:
        raise ValueError(f"expected exactly one control arm (no treatment), found {controls}")
    return arms, controls[0]


def cluster_level(df: pd.DataFrame, cluster: str, column: str) -> pd.Series:
    """``column`` per cluster, clusters in order of first appearance in ``df`` (not sorted: cluster
    ids can be salted hashes); ValueError if it varies within a cluster."""
    per = df.groupby(cluster, sort=False)[column].nunique(dropna=False)
    if (per > 1).any():
        raise ValueError(f"{column!r} varies within cluster(s) {per[per > 1].index[:5].tolist()}: "
                         f"randomisation inference needs it constant within the unit of assignment")
    return df.groupby(cluster, sort=False)[column].first()
