"""Frequentist cross-checks of the synthesis: random-effects pooling (DerSimonian-Laird, Paule-Mandel)
and the mixed-effects meta-regression, both with normal-theory (z) intervals."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats


def frequentist_random_effects(effects, ses, *, method: str, interval: float) -> dict:
    """Random-effects pooled estimate via statsmodels' ``combine_effects``: "dl" DerSimonian-Laird
    (statsmodels does not truncate a negative tau^2; here it is truncated at 0 and the estimate
    recomputed, as metafor does) or "pm" Paule-Mandel (iterated to |Q - (k-1)| < 1e-10).
    Normal-theory (z) interval. Fewer than two studies: NaNs."""
    from statsmodels.stats.meta_analysis import combine_effects

    y, se = np.asarray(effects, float), np.asarray(ses, float)
    if len(y) < 2:
        return {"estimate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan, "tau2": np.nan}
    if method not in ("dl", "pm"):
        raise ValueError(f"frequentist_random_effects: method {method!r}: 'dl' or 'pm'")
    with np.errstate(invalid="ignore"):  # statsmodels' HKSJ SD of a negative DL tau^2 (unused here)
        res = (combine_effects(y, se ** 2, method_re="dl") if method == "dl"
               else combine_effects(y, se ** 2, method_re="pm", atol=1e-10, maxiter=1000))
    tau2 = max(float(res.tau2), 0.0)
    wts = 1.0 / (se ** 2 + tau2)
    est, sd = float(np.sum(wts * y) / wts.sum()), float(np.sqrt(1.0 / wts.sum()))
    z = stats.norm.ppf(0.5 + interval / 2)
    return {"estimate": est, "se": sd, "ci_low": float(est - z * sd), "ci_high": float(est + z * sd), "tau2": tau2}


def frequentist_meta_regression(effects, ses, moderators: pd.DataFrame) -> pd.DataFrame:
    """Mixed-effects meta-regression, tau^2 by the method of moments (DerSimonian-Laird
    generalised, truncated at 0), weights 1 / (se^2 + tau^2), z intervals (95%)."""
    y, se = np.asarray(effects, float), np.asarray(ses, float)
    X = np.column_stack([np.ones(len(y)), moderators.to_numpy(float)])
    names = ["intercept", *moderators.columns]
    k, p = X.shape
    if k <= p or np.linalg.matrix_rank(X) < p:
        return pd.DataFrame(columns=["term", "estimate", "std_error", "ci_low", "ci_high", "tau2", "n_studies"])
    w = 1.0 / se ** 2
    xtwx = X.T @ (w[:, None] * X)
    q = float(np.sum(w * (y - X @ np.linalg.solve(xtwx, X.T @ (w * y))) ** 2))
    trace_p = w.sum() - np.trace(np.linalg.solve(xtwx, X.T @ (w[:, None] ** 2 * X)))
    tau2 = max(0.0, (q - (k - p)) / trace_p)
    w2 = 1.0 / (se ** 2 + tau2)
    cov = np.linalg.inv(X.T @ (w2[:, None] * X))
    beta = cov @ X.T @ (w2 * y)
    sd = np.sqrt(np.diag(cov))
    z = stats.norm.ppf(0.975)
    return pd.DataFrame({"term": names, "estimate": beta, "std_error": sd, "ci_low": beta - z * sd,
                         "ci_high": beta + z * sd, "tau2": tau2, "n_studies": k})
