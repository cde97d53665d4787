"""Baseline balance of the estimate stage (see ``METHODS.md``): baseline means by arm, normalised
differences (:func:`normalized_difference`), per-covariate F-tests of arms and joint tests of
covariates predicting each arm (:func:`balance_tables`), each with a randomisation-inference
p-value (assignment re-drawn at the cluster level within strata, :func:`permuted_arms`); a joint
test drops the regressors it cannot use (:func:`joint_regressors`) and says so in its ``note``.
The F-tests are :func:`pipeline.inference.cluster_wald` (CR1); the permutations' statistics are
computed a chunk of permutations at a time by :mod:`pipeline.balance_ri` (the same F-tests).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import linalg

from pipeline.balance_ri import ClusterLayout, chunk_size, covariate_f_batch, joint_f_batch, permutation_f_stats
from pipeline.estimation.variance import RANK_TOL
from pipeline.inference import (STREAM_PERMUTATION, arm_order, cluster_level, cluster_wald, demean_within,
                                first_appearance_codes, slug)

# The columns of the joint-test table (the estimate stage writes them even where it has no rows).
BALANCE_JOINT_COLUMNS = ["sample", "comparison", "arm", "n_obs", "n_clusters", "n_regressors", "f_stat",
                         "f_df_num", "f_df_denom", "f_p_value", "ri_p_value", "n_permutations", "regressors", "note"]


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


def permuted_arms(cluster_arm: np.ndarray, cluster_stratum: np.ndarray, n_perm: int,
                  seed: int) -> np.ndarray:
    """``n_perm`` x G array of arm codes: the clusters' arms shuffled within each stratum (the
    number of clusters per arm and stratum is kept, as in a re-run of the randomisation). Strata are
    visited in order of first appearance (not sorted: stratum labels can be salted hashes)."""
    rng = np.random.default_rng([int(seed), STREAM_PERMUTATION])
    out = np.empty((n_perm, len(cluster_arm)), dtype=cluster_arm.dtype)
    for s in pd.unique(np.asarray(cluster_stratum)):
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


def balance_columns(arms: Sequence[str] = (), control: str | None = None) -> list[str]:
    """The columns of the per-covariate balance table: n / mean / sd per arm and the normalised
    difference of every arm but ``control`` (none without arms), between the fixed ones."""
    per_arm = [f"{k}_{slug(a)}" for a in arms for k in ("n", "mean", "sd")]
    normdiff = [f"normdiff_{slug(a)}" for a in arms if a != control]
    return ["sample", "covariate", *per_arm, *normdiff, "f_stat", "f_df_num", "f_df_denom", "f_p_value",
            "ri_p_value", "n_clusters"]


def _sample_mask(base: pd.DataFrame, sample: str, gender: str) -> np.ndarray | None:
    """Boolean row mask of ``sample`` (``all``, ``women``, ``men``); None without the gender column."""
    if sample == "all":
        return np.ones(len(base), dtype=bool)
    if gender not in base.columns:
        return None
    return (base[gender] == (1 if sample == "women" else 0)).to_numpy()


def _exceedances(f_obs: float, f_perms) -> int:
    """Number of permutation statistics that are finite and at least the observed one."""
    exceed = 0
    for f in f_perms:
        exceed += bool(np.isfinite(f) and f >= f_obs * (1 - 1e-12))
    return exceed


def _arm_summaries(x: np.ndarray, codes_obs: np.ndarray, arms: Sequence[str], arm_code_of: dict,
                   control: str) -> dict:
    """n / mean / sd per arm (missing values ignored) and each treated arm's normalised difference."""
    ok = ~np.isnan(x)
    row = {}
    for a in arms:
        v = x[(codes_obs == arm_code_of[a]) & ok]
        row[f"n_{slug(a)}"] = int(len(v))
        row[f"mean_{slug(a)}"] = float(v.mean()) if len(v) else np.nan
        row[f"sd_{slug(a)}"] = float(v.std(ddof=1)) if len(v) > 1 else np.nan
    xc = x[codes_obs == arm_code_of[control]]
    for a in arms:
        if a != control:
            row[f"normdiff_{slug(a)}"] = normalized_difference(x[codes_obs == arm_code_of[a]], xc)
    return row


def _covariate_test(x: np.ndarray, codes_obs: np.ndarray, n_arms: int, strata_codes: np.ndarray,
                    groups: np.ndarray, perms: np.ndarray, ccode: np.ndarray) -> dict:
    """The F-test columns of one covariate's row and its randomisation p-value (NaN if F is not finite)."""
    ok = ~np.isnan(x)
    s_ok = pd.factorize(strata_codes[ok])[0]
    n_s = int(s_ok.max()) + 1 if ok.any() else 0
    x_dm = demean_within(x[ok], s_ok)
    obs = _per_covariate_stat(x_dm, codes_obs[ok], n_arms, s_ok, groups[ok], n_s)
    row = {"f_stat": obs["f_stat"], "f_df_num": obs["df_num"], "f_df_denom": obs["df_denom"],
           "f_p_value": obs["p_value"]}
    if np.isfinite(obs["f_stat"]) and len(perms):
        g_ok = groups[ok]
        layout = ClusterLayout.of(s_ok, g_ok)
        f_perms = permutation_f_stats(
            perms, ccode[ok], obs["f_stat"],
            batch=lambda chunk: covariate_f_batch(x_dm, chunk, n_arms, layout, n_s),
            scalar=lambda codes: _per_covariate_stat(x_dm, codes, n_arms, s_ok, g_ok, n_s, pvalue=False)["f_stat"],
            chunk=chunk_size(len(layout.clusters), n_arms))
        row["ri_p_value"] = (1 + _exceedances(obs["f_stat"], f_perms)) / (1 + len(perms))
    else:
        row["ri_p_value"] = np.nan
    row["n_clusters"] = obs["n_clusters"]
    return row


def _joint_design(sub: pd.DataFrame, covariates: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(regressor matrix, names) of the joint tests: each covariate with missing values set to its
    mean plus a missing-value dummy where any is missing (all-missing covariates left out)."""
    Z, znames = [], []
    for cov in covariates:
        x = sub[cov].astype("float64").to_numpy()
        miss = np.isnan(x)
        if miss.all():
            continue
        Z.append(np.where(miss, np.nanmean(x), x))
        znames.append(cov)
        if miss.any():
            Z.append(miss.astype(float))
            znames.append(f"{cov}_missing")
    return np.column_stack(Z), znames


def _joint_row(Z: np.ndarray, znames: list[str], code: int, codes_obs: np.ndarray, strata_codes: np.ndarray,
               groups: np.ndarray, perms: np.ndarray, ccode: np.ndarray) -> dict:
    """The test columns of one arm's joint-test row (arm code ``code`` against control code 0)."""
    in_comparison = (codes_obs == code) | (codes_obs == 0)
    keep, dropped = joint_regressors(Z, znames, in_comparison, strata_codes, groups)
    # The permutations test the same regressors as the observed assignment (one statistic).
    Zk = Z[:, keep]
    obs = _joint_stat(Zk, codes_obs, code, strata_codes, groups)
    notes = [f"dropped {name}: {why}" for name, why in dropped.items()]
    notes += [obs["note"]] if "note" in obs else []
    exceed = 0
    if np.isfinite(obs["f_stat"]):
        layout = ClusterLayout.of(strata_codes, groups)
        exceed = _exceedances(obs["f_stat"], permutation_f_stats(
            perms, ccode, obs["f_stat"],
            batch=lambda chunk: joint_f_batch(Zk, chunk, code, layout),
            scalar=lambda codes: _joint_stat(Zk, codes, code, strata_codes, groups, pvalue=False)["f_stat"],
            chunk=chunk_size(len(layout.clusters), Zk.shape[1])))
    return {
        "n_obs": obs["n_obs"], "n_clusters": obs["n_clusters"], "n_regressors": len(znames),
        "f_stat": obs["f_stat"], "f_df_num": obs["df_num"], "f_df_denom": obs["df_denom"],
        "f_p_value": obs["p_value"],
        "ri_p_value": (1 + exceed) / (1 + len(perms)) if np.isfinite(obs["f_stat"]) else np.nan,
        "n_permutations": len(perms), "regressors": " ".join(znames), "note": "; ".join(notes),
    }


def _sample_tables(sub: pd.DataFrame, sample: str, covariates: Sequence[str], arms: Sequence[str],
                   control: str, arm_code_of: dict, ccode: np.ndarray, cluster_arm: np.ndarray,
                   perms: np.ndarray, strata: str) -> tuple[list[dict], list[dict]]:
    """(per-covariate rows, joint-test rows) of one sample ``sub``; ``ccode`` its cluster codes."""
    codes_obs = cluster_arm[ccode]
    strata_codes = first_appearance_codes(sub[strata])[0]
    groups = ccode                      # integer cluster codes
    # (a covariate constant in the sample, e.g. sex, is skipped)
    varying = [c for c in covariates if np.nanstd(sub[c].astype("float64").to_numpy()) > 0]
    rows = []
    for cov in varying:
        x = sub[cov].astype("float64").to_numpy()
        rows.append({"sample": sample, "covariate": cov,
                     **_arm_summaries(x, codes_obs, arms, arm_code_of, control),
                     **_covariate_test(x, codes_obs, len(arms), strata_codes, groups, perms, ccode)})
    Z, znames = _joint_design(sub, varying)
    joint_rows = [{"sample": sample, "comparison": f"{a} vs {control}", "arm": a,
                   **_joint_row(Z, znames, arm_code_of[a], codes_obs, strata_codes, groups, perms, ccode)}
                  for a in arms if a != control]
    return rows, joint_rows


def balance_tables(df: pd.DataFrame, covariates: Sequence[str], *, treatments: Sequence[str], cluster: str,
                   samples: Sequence[str], permutations: int, seed: int, arm: str = "arm",
                   strata: str = "stratum", gender: str = "female_owner") -> tuple[pd.DataFrame, pd.DataFrame]:
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
    The params (``estimate``: ``treatments``, ``cluster``, ``permutations``, ``seed``) have no
    defaults here; the analysis table's column names do. The permutations' statistics are computed
    in batch, in this process (:mod:`pipeline.balance_ri`: about 1.6 s for 1,000 permutations of the
    synthetic study's 34 tests, less than starting workers would cost).
    """
    covariates = [c for c in covariates if c in df.columns]
    if not covariates:
        raise ValueError("no balance covariates in the data")
    arms, control = arm_order(df, arm, treatments)
    base = df.reset_index(drop=True)
    # clusters in order of first appearance: the permutations index them (inference docstring)
    cl_arm = cluster_level(base, cluster, arm)
    cl_stratum = cluster_level(base, cluster, strata)
    arm_code_of = {a: i for i, a in enumerate(arms)}
    cluster_arm = cl_arm.map(arm_code_of).to_numpy(dtype=np.int64)
    perms = permuted_arms(cluster_arm, cl_stratum.astype(str).to_numpy(), int(permutations), seed)
    cluster_code = pd.Index(cl_arm.index).get_indexer(base[cluster])

    rows, joint_rows = [], []
    for sample in samples:
        sub_mask = _sample_mask(base, sample, gender)
        if sub_mask is None or not sub_mask.any():
            continue
        sample_rows, sample_joint = _sample_tables(base.loc[sub_mask], sample, covariates, arms, control,
                                                   arm_code_of, cluster_code[sub_mask], cluster_arm, perms,
                                                   strata)
        rows += sample_rows
        joint_rows += sample_joint
    return (pd.DataFrame(rows, columns=balance_columns(arms, control)),
            pd.DataFrame(joint_rows, columns=BALANCE_JOINT_COLUMNS))
