"""Credibility and inference tools for the estimate stage (see ``METHODS.md``).

* :func:`sharpened_qvalues` -- Anderson (2008) sharpened FDR q-values, his grid procedure.
* :func:`mde` -- minimum detectable effect from an estimated standard error.
* :func:`stratified_cluster_draws` / :func:`rows_for_draw` -- the cluster bootstrap (clusters
  resampled with replacement within strata), shared by the QTE and Lee-bound confidence intervals.
* :func:`cluster_wald` -- a cluster-robust (CR1) Wald F-test of OLS coefficients (numpy; the
  balance tests and their randomisation inference need thousands of them).
* :func:`balance_tables` -- baseline means by arm, normalised differences, per-covariate F-tests
  of arms and joint tests of covariates predicting each arm, each with a randomisation-inference
  p-value (assignment re-drawn at the cluster level within strata); a joint test drops the
  regressors it cannot use (:func:`joint_regressors`) and says so in its ``note``.
* :func:`lee_bounds` / :func:`lee_bounds_table` -- Lee (2009) bounds with trimming within cells
  (strata), with cluster-bootstrap confidence intervals for the identified set.

Seeds: every random procedure takes ``seed`` (an int) and derives its own stream from it with
``numpy.random.default_rng([seed, STREAM])`` so that, for instance, the number of bootstrap
replications never changes the permutations drawn for randomisation inference.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import linalg, stats

log = logging.getLogger(__name__)

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
def mde(std_error, df=np.inf, power: float = 0.8, alpha: float = 0.05):
    """Minimum detectable effect: (t_{power} + t_{1 - alpha/2}) x SE with t(df) quantiles
    (the normal when df is infinite). Vectorised over ``std_error`` and ``df``."""
    if not 0 < power < 1 or not 0 < alpha < 1:
        raise ValueError("power and alpha must be in (0, 1)")
    se = np.asarray(std_error, dtype=float)
    d = np.asarray(df, dtype=float)
    return (stats.t.ppf(power, d) + stats.t.ppf(1 - alpha / 2, d)) * se


# --------------------------------------------------------------------------------------------
# Cluster bootstrap
# --------------------------------------------------------------------------------------------
def stratified_cluster_draws(cluster_strata: Sequence, reps: int, seed: int) -> np.ndarray:
    """``reps`` x G array of cluster positions (0..G-1): each replication draws, in every stratum,
    as many clusters as it has, with replacement, from that stratum's clusters only.

    ``cluster_strata[g]`` is the stratum of cluster g. Strata are visited in sorted order, so the
    draws depend only on (strata, reps, seed).
    """
    strata = pd.Series(np.asarray(cluster_strata, dtype=object)).astype(str).to_numpy()
    reps = int(reps)
    if reps < 1:
        raise ValueError("reps must be >= 1")
    rng = np.random.default_rng([int(seed), STREAM_BOOTSTRAP])
    draws = np.empty((reps, len(strata)), dtype=np.int64)
    for s in sorted(set(strata)):
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


# Relative tolerance of the rank decisions below: an eigenvalue of a correlation matrix, or a
# diagonal of the R of a pivoted QR of unit-norm columns, at most this counts as zero.
RANK_TOL = 1e-8


def cluster_wald(y: np.ndarray, X: np.ndarray, groups: np.ndarray, test: Sequence[int] | None = None,
                 k_extra: int = 0, tol: float = 1e-10, pvalue: bool = True) -> dict:
    """OLS of ``y`` on ``X`` with CR1 cluster-robust covariance; Wald F-test of ``test`` columns.

    Matches statsmodels ``OLS(...).fit(cov_type="cluster", use_t=True).f_test``: V = c (X'X)^-1
    (sum_g X_g'u_g u_g'X_g) (X'X)^-1 with c = G/(G-1) (N-1)/(N-K), F = b'(R V R')^-1 b / q on
    (q, G-1) degrees of freedom. ``k_extra`` adds regressors already partialled out of y and X
    (fixed effects absorbed by :func:`demean_within`) to K. Columns of X with (numerically) no
    variation are dropped first; ``q`` is the number of tested columns left. ``groups``: cluster labels
    (integer codes are used as they are). ``pvalue=False`` skips the p-value (permutation loops).
    The test is refused (``f_stat`` NaN, the reason in ``note``) when the cluster-robust covariance
    of the tested coefficients (decided on its correlation matrix, tolerance ``RANK_TOL``) has a
    smaller rank than their number.
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
        codes = pd.factorize(codes, sort=True)[0]
    n_codes = int(codes.max()) + 1 if n else 0
    G = int(np.count_nonzero(np.bincount(codes, minlength=n_codes))) if n else 0
    empty = {"f_stat": np.nan, "df_num": 0, "df_denom": max(G - 1, 0), "p_value": np.nan,
             "n_obs": n, "n_clusters": G}
    if not test or G < 2 or n <= k + k_extra:
        return empty
    bread = np.linalg.pinv(X.T @ X)
    beta = bread @ (X.T @ y)
    u = y - X @ beta
    S = X * u[:, None]
    Sg = np.column_stack([np.bincount(codes, weights=S[:, j], minlength=n_codes) for j in range(k)])
    c = G / (G - 1) * (n - 1) / (n - (k + k_extra))
    A = bread[test] @ Sg.T                      # rows of (X'X)^-1 for the tested coefficients
    Vt = c * (A @ A.T)
    # On the correlation scale, so that a regressor's units (profit in shillings beside a 0/1
    # dummy) can neither hide a dimension nor keep a noise one.
    sd = np.sqrt(np.clip(np.diag(Vt), 0.0, None))
    q = len(test)
    evals = np.zeros(q)
    if (sd > 0).all():
        evals, evecs = np.linalg.eigh(Vt / np.outer(sd, sd))
    rank = int((evals > RANK_TOL).sum())
    if rank < q:
        # Stata's rule: a Wald test of more restrictions than the rank of their cluster-robust
        # covariance (at most G - 1) is not reported; a generalised inverse would test noise.
        return {**empty, "df_num": q,
                "note": f"test refused: rank of the cluster-robust covariance of the {q} tested "
                        f"coefficients is {rank} (G = {G} clusters)"}
    z = evecs.T @ (beta[test] / sd)
    f = float((z ** 2 / evals).sum()) / q
    return {"f_stat": f, "df_num": q, "df_denom": G - 1,
            "p_value": float(stats.f.sf(f, q, G - 1)) if pvalue else np.nan,
            "n_obs": n, "n_clusters": G}


# --------------------------------------------------------------------------------------------
# Balance
# --------------------------------------------------------------------------------------------
def normalized_difference(x_treat: np.ndarray, x_control: np.ndarray) -> float:
    """Imbens & Rubin (2015): (mean_t - mean_c) / sqrt((s2_t + s2_c) / 2), sample variances
    (ddof = 1), missing values ignored."""
    a = np.asarray(x_treat, dtype=float)
    b = np.asarray(x_control, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    denom = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    return float((a.mean() - b.mean()) / denom) if denom > 0 else float("nan")


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


def _cluster_level(df: pd.DataFrame, cluster: str, column: str) -> pd.Series:
    per = df.groupby(cluster, sort=True)[column].nunique(dropna=False)
    if (per > 1).any():
        raise ValueError(f"{column!r} varies within cluster(s) {per[per > 1].index[:5].tolist()}: "
                         f"randomisation inference needs it constant within the unit of assignment")
    return df.groupby(cluster, sort=True)[column].first()


def permuted_arms(cluster_arm: np.ndarray, cluster_stratum: np.ndarray, n_perm: int,
                  seed: int) -> np.ndarray:
    """``n_perm`` x G array of arm codes: the clusters' arms shuffled within each stratum (the
    number of clusters per arm and stratum is kept, as in a re-run of the randomisation)."""
    rng = np.random.default_rng([int(seed), STREAM_PERMUTATION])
    out = np.empty((n_perm, len(cluster_arm)), dtype=cluster_arm.dtype)
    strata = sorted(set(cluster_stratum.tolist()))
    for s in strata:
        members = np.flatnonzero(cluster_stratum == s)
        vals = cluster_arm[members]
        out[:, members] = rng.permuted(np.broadcast_to(vals, (n_perm, len(members))), axis=1)
    return out


def _per_covariate_stat(x_demeaned: np.ndarray, arm_codes: np.ndarray, n_arms: int,
                        strata: np.ndarray, groups: np.ndarray, n_strata: int,
                        pvalue: bool = True) -> dict:
    """F-test that all arm dummies are zero in x ~ arm dummies + strata FE (cluster CR1);
    ``x_demeaned`` is x minus its strata means (FWL)."""
    D = np.column_stack([(arm_codes == a).astype(float) for a in range(1, n_arms)])
    return cluster_wald(x_demeaned, demean_within(D, strata), groups, k_extra=n_strata,
                        pvalue=pvalue)


def _joint_stat(Z: np.ndarray, arm_codes: np.ndarray, a: int, strata: np.ndarray,
                groups: np.ndarray, pvalue: bool = True) -> dict:
    """F-test that all covariates are zero in 1{arm a} ~ covariates + strata FE, on arm a and
    control (code 0) units."""
    rows = (arm_codes == a) | (arm_codes == 0)
    s = strata[rows]
    d = (arm_codes[rows] == a).astype(float)
    return cluster_wald(demean_within(d, s), demean_within(Z[rows], s), groups[rows],
                        k_extra=int(np.count_nonzero(np.bincount(s))), pvalue=pvalue)


def joint_regressors(Z: np.ndarray, names: Sequence[str], rows: np.ndarray, strata: np.ndarray,
                     groups: np.ndarray, tol: float = RANK_TOL) -> tuple[list[int], dict[str, str]]:
    """The columns of ``Z`` a joint balance test can use on ``rows`` (one comparison), and the
    reason each other one is dropped, checked in this order:

    * "constant within strata": after removing the strata means its norm is at most ``tol``
      times its raw norm (e.g. a missing-value dummy that is zero throughout the comparison);
    * "varies in one cluster only": every cluster but one holds only the column's most common
      value in the comparison. The residuals of that cluster then absorb its coefficient's score,
      the cluster-robust variance of the coefficient misses the cluster's shock and the F-test
      explodes (issue 10: F = 126.5, p = 2.5e-38 beside a randomisation p of 0.13);
    * "collinear with ...": a pivoted QR of the strata-demeaned, unit-norm columns finds
      ``|R_ii| <= tol |R_00|`` (the column lies in the span of the earlier pivots).
    """
    s, g = strata[rows], groups[rows]
    raw = Z[rows]
    dm = demean_within(raw, s)
    dropped: dict[str, str] = {}
    keep = []
    for j, name in enumerate(names):
        if np.linalg.norm(dm[:, j]) <= tol * max(np.linalg.norm(raw[:, j]), 1e-300):
            dropped[name] = "constant within strata"
            continue
        values, counts = np.unique(raw[:, j], return_counts=True)
        off_mode = raw[:, j] != values[np.argmax(counts)]
        if np.unique(g[off_mode]).size < 2:
            dropped[name] = "varies in one cluster only"
            continue
        keep.append(j)
    if len(keep) > 1:
        unit = dm[:, keep] / np.linalg.norm(dm[:, keep], axis=0)
        r, piv = linalg.qr(unit, mode="r", pivoting=True)
        diag = np.abs(np.diag(r))
        dependent = diag <= tol * diag[0]
        basis = [names[keep[i]] for i in piv[:len(diag)][~dependent]]
        for i in sorted(piv[:len(diag)][dependent]):
            dropped[names[keep[i]]] = "collinear with " + " ".join(basis)
        keep = sorted(keep[i] for i in piv[:len(diag)][~dependent])
    return keep, dropped


# The columns of the tables below (the estimate stage writes them even where a table has no rows).
BALANCE_JOINT_COLUMNS = ["sample", "comparison", "arm", "n_obs", "n_clusters", "n_regressors", "f_stat",
                         "f_df_num", "f_df_denom", "f_p_value", "ri_p_value", "n_permutations", "regressors", "note"]
LEE_BOUNDS_COLUMNS = ["outcome", "sample", "comparison", "arm", "n_obs", "n_observed", "observed_share_arm",
                      "observed_share_control", "attrition_p_value", "trimmed_arm", "trim_share", "lower",
                      "upper", "ci_low", "ci_high", "lower_se", "upper_se", "cells", "cells_dropped",
                      "cells_reversed", "n_boot"]


def balance_columns(arms: Sequence[str] = (), control: str | None = None) -> list[str]:
    """The columns of the per-covariate balance table: n / mean / sd per arm and the normalised
    difference of every arm but ``control`` (none without arms), between the fixed ones."""
    per_arm = [f"{k}_{slug(a)}" for a in arms for k in ("n", "mean", "sd")]
    normdiff = [f"normdiff_{slug(a)}" for a in arms if a != control]
    return ["sample", "covariate", *per_arm, *normdiff, "f_stat", "f_df_num", "f_df_denom", "f_p_value",
            "ri_p_value", "n_clusters"]


def balance_tables(df: pd.DataFrame, covariates: Sequence[str], *, arm: str = "arm",
                   treatments: Sequence[str] = ("treat_skills", "treat_capital"),
                   strata: str = "stratum", cluster: str = "cluster_id",
                   samples: Sequence[str] = ("all", "women", "men"), permutations: int = 1000,
                   seed: int = 0, gender: str = "female_owner") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Balance of baseline covariates by arm: (per-covariate table, joint-test table).

    ``df`` holds one row per unit at baseline (the caller selects the rows). Per covariate and
    sample: n, mean and SD per arm (missing values ignored), the normalised difference of each
    treated arm against control, the cluster-robust F-test that all arm dummies are zero in
    ``covariate ~ arm dummies + strata FE`` and its randomisation-inference p-value.

    Joint tests, per treated arm against control: ``1{arm} ~ covariates + strata FE`` on the units
    of the two arms, cluster-robust F-test that every covariate coefficient is zero. Missing
    covariate values are set to the sample mean with a missing-value dummy that is tested too.
    Regressors that are constant, vary in one cluster only or are collinear in a comparison are
    dropped from its test (:func:`joint_regressors`) and named in ``note``, as is a refused test.

    Randomisation inference: ``permutations`` re-draws of the assignment, shuffling the arms of
    the clusters within each stratum (``seed``); p = (1 + #{F* >= F}) / (1 + permutations).
    """
    covariates = [c for c in covariates if c in df.columns]
    if not covariates:
        raise ValueError("no balance covariates in the data")
    arms, control = arm_order(df, arm, treatments)
    arms_treated = [a for a in arms if a != control]
    base = df.reset_index(drop=True)
    cl_arm = _cluster_level(base, cluster, arm)
    cl_stratum = _cluster_level(base, cluster, strata)
    arm_code_of = {a: i for i, a in enumerate(arms)}
    cluster_arm = cl_arm.map(arm_code_of).to_numpy(dtype=np.int64)
    perms = permuted_arms(cluster_arm, cl_stratum.astype(str).to_numpy(), int(permutations), seed)
    cluster_code = pd.Index(cl_arm.index).get_indexer(base[cluster])

    rows, joint_rows = [], []
    for sample in samples:
        if sample == "all":
            sub_mask = np.ones(len(base), dtype=bool)
        else:
            if gender not in base.columns:
                continue
            sub_mask = (base[gender] == (1 if sample == "women" else 0)).to_numpy()
        if not sub_mask.any():
            continue
        sub = base.loc[sub_mask]
        ccode = cluster_code[sub_mask]
        codes_obs = cluster_arm[ccode]
        strata_codes = pd.factorize(sub[strata], sort=True)[0]
        groups = ccode                      # integer cluster codes
        # Per covariate.
        varying = [c for c in covariates if np.nanstd(sub[c].astype("float64").to_numpy()) > 0]
        for cov in varying:       # (a covariate constant in the sample, e.g. sex, is skipped)
            x = sub[cov].astype("float64").to_numpy()
            ok = ~np.isnan(x)
            row = {"sample": sample, "covariate": cov}
            for a in arms:
                v = x[(codes_obs == arm_code_of[a]) & ok]
                row[f"n_{slug(a)}"] = int(len(v))
                row[f"mean_{slug(a)}"] = float(v.mean()) if len(v) else np.nan
                row[f"sd_{slug(a)}"] = float(v.std(ddof=1)) if len(v) > 1 else np.nan
            xc = x[codes_obs == arm_code_of[control]]
            for a in arms_treated:
                row[f"normdiff_{slug(a)}"] = normalized_difference(x[codes_obs == arm_code_of[a]], xc)
            s_ok = pd.factorize(strata_codes[ok])[0]
            n_s = int(s_ok.max()) + 1 if ok.any() else 0
            x_dm = demean_within(x[ok], s_ok)
            obs = _per_covariate_stat(x_dm, codes_obs[ok], len(arms), s_ok, groups[ok], n_s)
            row.update({"f_stat": obs["f_stat"], "f_df_num": obs["df_num"], "f_df_denom": obs["df_denom"],
                        "f_p_value": obs["p_value"]})
            if np.isfinite(obs["f_stat"]) and len(perms):
                exceed = 0
                for perm in perms:
                    f = _per_covariate_stat(x_dm, perm[ccode][ok], len(arms), s_ok, groups[ok], n_s,
                                            pvalue=False)["f_stat"]
                    exceed += bool(np.isfinite(f) and f >= obs["f_stat"] * (1 - 1e-12))
                row["ri_p_value"] = (1 + exceed) / (1 + len(perms))
            else:
                row["ri_p_value"] = np.nan
            row["n_clusters"] = obs["n_clusters"]
            rows.append(row)
        # Joint tests.
        Z, znames = [], []
        for cov in varying:
            x = sub[cov].astype("float64").to_numpy()
            miss = np.isnan(x)
            if miss.all():
                continue
            Z.append(np.where(miss, np.nanmean(x), x))
            znames.append(cov)
            if miss.any():
                Z.append(miss.astype(float))
                znames.append(f"{cov}_missing")
        Z = np.column_stack(Z)
        for a in arms_treated:
            code = arm_code_of[a]
            in_comparison = (codes_obs == code) | (codes_obs == 0)
            keep, dropped = joint_regressors(Z, znames, in_comparison, strata_codes, groups)
            # The permutations test the same regressors as the observed assignment (one statistic).
            Zk = Z[:, keep]
            obs = _joint_stat(Zk, codes_obs, code, strata_codes, groups)
            notes = [f"dropped {name}: {why}" for name, why in dropped.items()]
            notes += [obs["note"]] if "note" in obs else []
            exceed = 0
            if np.isfinite(obs["f_stat"]):
                for perm in perms:
                    f = _joint_stat(Zk, perm[ccode], code, strata_codes, groups, pvalue=False)["f_stat"]
                    exceed += bool(np.isfinite(f) and f >= obs["f_stat"] * (1 - 1e-12))
            joint_rows.append({
                "sample": sample, "comparison": f"{a} vs {control}", "arm": a,
                "n_obs": obs["n_obs"], "n_clusters": obs["n_clusters"], "n_regressors": len(znames),
                "f_stat": obs["f_stat"], "f_df_num": obs["df_num"], "f_df_denom": obs["df_denom"],
                "f_p_value": obs["p_value"],
                "ri_p_value": (1 + exceed) / (1 + len(perms)) if np.isfinite(obs["f_stat"]) else np.nan,
                "n_permutations": len(perms), "regressors": " ".join(znames), "note": "; ".join(notes),
            })
    return (pd.DataFrame(rows, columns=balance_columns(arms, control)),
            pd.DataFrame(joint_rows, columns=BALANCE_JOINT_COLUMNS))


# --------------------------------------------------------------------------------------------
# Lee (2009) bounds
# --------------------------------------------------------------------------------------------
def trimmed_mean(values: np.ndarray, share: float, drop: str) -> float:
    """Mean after removing the top (``drop="top"``) or bottom (``"bottom"``) ``share`` of the
    empirical distribution, with fractional weight on the boundary observation (exact for any
    share, so the mean of the remaining (1 - share) probability mass)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    if n == 0:
        return float("nan")
    share = float(min(max(share, 0.0), 1.0))
    keep = (1.0 - share) * n
    if keep <= 0:
        return float("nan")
    if drop == "bottom":
        v = v[::-1]
    elif drop != "top":
        raise ValueError("drop must be 'top' or 'bottom'")
    k = int(np.floor(keep + 1e-12))
    frac = keep - k
    total = v[:k].sum() + (frac * v[k] if k < n and frac > 1e-12 else 0.0)
    return float(total / keep)


def lee_bounds(y: np.ndarray, observed: np.ndarray, treated: np.ndarray,
               cells: np.ndarray | None = None) -> dict:
    """Lee (2009) sharp bounds on the effect for the always-observed, trimming within cells.

    ``y`` is used where ``observed``; ``treated`` is 0/1. The direction of differential
    observation is decided on the whole sample (monotonicity is an assumption about the
    population): if the treated are observed more often, the observed treated are trimmed in each
    cell by p_s = (q1_s - q0_s) / q1_s, otherwise the controls by (q0_s - q1_s) / q0_s; a cell
    whose sample difference has the other sign gets p_s = 0 (counted in ``cells_reversed``).
    Lower bound: trim the top; upper bound: trim the bottom. Cell bounds are averaged with weights
    proportional to N_s x q_s of the less-observed arm, i.e. the estimated number of
    always-observed units in the cell (Lee 2009, section on covariates). Cells lacking observed
    units in either arm are dropped (``cells_dropped``).
    """
    y = np.asarray(y, dtype=float)
    obs = np.asarray(observed, dtype=bool) & ~np.isnan(y)
    t = np.asarray(treated, dtype=float)
    if not np.isin(t, (0.0, 1.0)).all():
        raise ValueError("treated must be 0/1")
    t = t.astype(bool)
    cells = np.zeros(len(y), dtype=np.int64) if cells is None else pd.factorize(np.asarray(cells), sort=True)[0]
    q1, q0 = obs[t].mean() if t.any() else np.nan, obs[~t].mean() if (~t).any() else np.nan
    trim_treated = bool(q1 >= q0)
    lows, highs, weights, shares = [], [], [], []
    dropped = reversed_ = 0
    for c in np.unique(cells):
        m = cells == c
        mt, mc = m & t, m & ~t
        if not (obs & mt).any() or not (obs & mc).any():
            dropped += 1
            continue
        q1s, q0s = obs[mt].mean(), obs[mc].mean()
        yt, yc = y[obs & mt], y[obs & mc]
        if trim_treated:
            p = (q1s - q0s) / q1s
            if p < 0:
                reversed_ += 1
                p = 0.0
            lo = trimmed_mean(yt, p, "top") - yc.mean()
            hi = trimmed_mean(yt, p, "bottom") - yc.mean()
            w = m.sum() * q0s
        else:
            p = (q0s - q1s) / q0s
            if p < 0:
                reversed_ += 1
                p = 0.0
            lo = yt.mean() - trimmed_mean(yc, p, "bottom")
            hi = yt.mean() - trimmed_mean(yc, p, "top")
            w = m.sum() * q1s
        lows.append(lo)
        highs.append(hi)
        weights.append(w)
        shares.append(p)
    if not weights:
        return {"lower": np.nan, "upper": np.nan, "trim_share": np.nan, "trimmed_arm": None,
                "observed_share_treated": q1, "observed_share_control": q0,
                "cells": 0, "cells_dropped": dropped, "cells_reversed": reversed_}
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    return {"lower": float(w @ np.asarray(lows)), "upper": float(w @ np.asarray(highs)),
            "trim_share": float(w @ np.asarray(shares)),
            "trimmed_arm": "treated" if trim_treated else "control",
            "observed_share_treated": float(q1), "observed_share_control": float(q0),
            "cells": len(w), "cells_dropped": dropped, "cells_reversed": reversed_}


def lee_bounds_table(df: pd.DataFrame, outcome: str, *, arm: str = "arm",
                     treatments: Sequence[str] = ("treat_skills", "treat_capital"),
                     cells: Sequence[str] = ("stratum",), strata: str = "stratum",
                     cluster: str = "cluster_id", samples: Sequence[str] = ("all", "women", "men"),
                     reps: int = 200, seed: int = 0, alpha: float = 0.05,
                     gender: str = "female_owner", attrition_p: dict | None = None) -> pd.DataFrame:
    """Lee bounds of each treated arm against control, per sample, on the rows of ``df`` (every
    planned follow-up unit-round: observed = outcome not missing).

    Confidence interval for the identified set: [2.5th percentile of the bootstrap lower bounds,
    97.5th percentile of the bootstrap upper bounds] (``alpha``), clusters resampled within strata.
    ``attrition_p`` maps (sample, arm) to the p-value of the attrition difference (shown beside).
    """
    arms, control = arm_order(df, arm, treatments)
    base = df.reset_index(drop=True)
    y = base[outcome].astype("float64").to_numpy()
    observed = ~np.isnan(y)
    cell_codes = (pd.factorize(base[list(cells)].astype(str).agg("|".join, axis=1), sort=True)[0]
                  if cells else np.zeros(len(base), dtype=np.int64))
    cl_codes, cl_levels = pd.factorize(base[cluster], sort=True)
    cl_stratum = _cluster_level(base, cluster, strata).reindex(cl_levels)
    draws = stratified_cluster_draws(cl_stratum.to_numpy(), reps, seed) if reps else np.empty((0, 0), int)
    rows_by_cluster = cluster_rows(cl_codes, len(cl_levels))
    arm_values = base[arm].to_numpy()
    female = base[gender].to_numpy() if gender in base.columns else None
    out = []
    for sample in samples:
        if sample == "all":
            smask = np.ones(len(base), dtype=bool)
        else:
            if female is None:
                continue
            smask = female == (1 if sample == "women" else 0)
        for a in arms:
            if a == control:
                continue
            m = smask & np.isin(arm_values, [a, control])
            if not m.any():
                continue
            treated = arm_values == a
            est = lee_bounds(y[m], observed[m], treated[m], cell_codes[m])
            lo_b, hi_b = [], []
            for draw in draws:
                r = rows_for_draw(rows_by_cluster, draw)
                r = r[m[r]]
                b = lee_bounds(y[r], observed[r], treated[r], cell_codes[r])
                lo_b.append(b["lower"])
                hi_b.append(b["upper"])
            lo_b, hi_b = np.asarray(lo_b, float), np.asarray(hi_b, float)
            good = np.isfinite(lo_b) & np.isfinite(hi_b)
            ci_low = float(np.quantile(lo_b[good], alpha / 2)) if good.any() else np.nan
            ci_high = float(np.quantile(hi_b[good], 1 - alpha / 2)) if good.any() else np.nan
            out.append({
                "outcome": outcome, "sample": sample, "comparison": f"{a} vs {control}", "arm": a,
                "n_obs": int(m.sum()), "n_observed": int((m & observed).sum()),
                "observed_share_arm": est["observed_share_treated"],
                "observed_share_control": est["observed_share_control"],
                "attrition_p_value": (attrition_p or {}).get((sample, a), np.nan),
                "trimmed_arm": est["trimmed_arm"], "trim_share": est["trim_share"],
                "lower": est["lower"], "upper": est["upper"],
                "ci_low": ci_low, "ci_high": ci_high,
                "lower_se": float(np.std(lo_b[good], ddof=1)) if good.sum() > 1 else np.nan,
                "upper_se": float(np.std(hi_b[good], ddof=1)) if good.sum() > 1 else np.nan,
                "cells": est["cells"], "cells_dropped": est["cells_dropped"],
                "cells_reversed": est["cells_reversed"], "n_boot": int(good.sum()),
            })
    return pd.DataFrame(out, columns=LEE_BOUNDS_COLUMNS)
