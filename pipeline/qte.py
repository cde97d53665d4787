"""Quantile treatment effects of skills and capital, by owner gender, with cluster-bootstrap CIs.

Model, per sex and quantile tau, fitted by minimising the check loss exactly
(``pipeline.quantreg``: the Frisch-Newton interior-point method of R quantreg's ``rq.fit.fn``;
where ties in the outcome leave several minimisers, it returns one inside that set):

    Q_tau(y | ...) = a + treatment terms (skills, capital, skills x capital where crossed)
                     + b * y_bl + c * y_bl_missing + fixed-effect dummies (default: round only)

on the pooled follow-up rounds. The coefficients are *conditional* quantile effects (given the
baseline outcome and round), not effects on the unconditional quantiles of profit. Strata fixed
effects are left out by default (params ``estimate.qte_fixed_effects: [round]``; add ``stratum`` to
include them): assignment is random within strata with (nearly) equal arm shares, so treatment stays
independent of strata and the coefficients remain effects conditional on baseline and round;
with strata dummies they would be effects conditional on strata too -- a different estimand,
since quantile effects do not average over covariates the way mean effects do -- and every
dummy adds a column to each of the bootstrap's fits. Weights are not supported.

Inference: clusters are resampled with replacement within strata (the unit of randomisation, all
rounds and both sexes of a drawn cluster together), ``reps`` times, from
``inference.stratified_cluster_draws(..., seed)`` (clusters numbered in order of first
appearance, so that the draws do not depend on the salt of hashed cluster ids); the CI is the
percentile interval of the bootstrap estimates and ``std_error`` their standard deviation.
Women's and men's estimates come from the same resamples, so the ``diff`` rows (women - men)
have a valid bootstrap CI too. The draws are made up front, here, and only the fits are shipped:
replications go in chunks of ``CHUNK_REPS`` to the stage's :class:`pipeline.parallel.Workers`
when the loop pays for starting them (:func:`pipeline.parallel.run_replications`), so results do
not depend on the number of workers (``estimate.n_jobs``), the chunking or where a chunk runs.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline import inference, parallel, quantreg

log = logging.getLogger(__name__)

QTE_COLUMNS = ["study", "outcome", "transform", "sample", "term", "quantile", "estimate", "std_error",
               "ci_low", "ci_high", "n_obs", "n_clusters", "n_boot"]

# Bootstrap replications per task: a replication's 10 quantile fits take about 0.1 s on one core
# with the exact solver (synthetic study; more on bigger ones), so a task is about half a second
# or more, far above dask's per-task cost; fixed, never from the worker count.
CHUNK_REPS = 5


def _fit_quantiles(y: np.ndarray, X: np.ndarray, quantiles: Sequence[float], n_terms: int) -> np.ndarray:
    """Coefficients of columns 1..n_terms for each quantile: the exact minimiser of the check loss
    (``quantreg.rq_fit_quantiles``; a vertex where the minimiser is unique, so an effect that is 0
    in the data, both arms' quantile at 0 profit, is exactly 0). Columns in the span of the ones
    before them (a dummy without variation in a resample) are left out, which leaves the fit
    unchanged; a term left out that way, a quantile whose solver fails or does not converge, get
    NaN (not counted in ``n_boot``)."""
    out = np.full((len(quantiles), n_terms), np.nan)
    kept = quantreg.independent_columns(X)
    is_term = (kept >= 1) & (kept <= n_terms)
    try:
        coef = quantreg.rq_fit_quantiles(X[:, kept], y, quantiles)
    except ValueError:
        return out
    out[:, kept[is_term] - 1] = coef[:, is_term]
    return out


def _estimate(rows: np.ndarray | None, payload: dict) -> np.ndarray:
    """samples x quantiles x terms for the rows given (None = the original sample)."""
    y, X, sample_masks, cols = payload["y"], payload["X"], payload["sample_masks"], payload["cols"]
    out = np.full((len(sample_masks), len(payload["quantiles"]), payload["n_terms"]), np.nan)
    for s, (mask, keep) in enumerate(zip(sample_masks, cols)):
        r = np.flatnonzero(mask) if rows is None else rows[mask[rows]]
        if len(r) <= len(keep):
            continue
        out[s] = _fit_quantiles(y[r], X[np.ix_(r, keep)], payload["quantiles"], payload["n_terms"])
    return out


def _replication(draw: np.ndarray, payload: dict) -> np.ndarray:
    """samples x quantiles x terms on the rows of one bootstrap draw of clusters."""
    return _estimate(inference.rows_for_draw(payload["rows_by_cluster"], draw), payload)


def _crossed(treat: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    names = list(treat)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if ((treat[a] == 1) & (treat[b] == 1)).any()]


def _rows_used(df: pd.DataFrame, outcome: str, samples: Sequence[str], followup_only: bool, gender: str,
               has_baseline: bool, listwise_baseline: bool) -> np.ndarray:
    """Boolean mask of the rows of ``df`` the regressions use."""
    keep = np.array(df[outcome].notna().to_numpy(), dtype=bool)
    if followup_only:
        keep &= df["followup"].astype(bool).to_numpy()
    if any(s != "all" for s in samples):
        keep &= df[gender].notna().to_numpy()
    if has_baseline and listwise_baseline:
        keep &= (df[f"{outcome}_bl_missing"].astype("float64") == 0).to_numpy()
    return keep


def _design(d: pd.DataFrame, outcome: str, treatments: Sequence[str], interact: bool, has_baseline: bool,
            listwise_baseline: bool, fixed_effects: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(regressor matrix: constant, treatment terms, baseline, fixed-effect dummies; the term names)."""
    treat = {t: d[t].astype("float64").to_numpy() for t in treatments}
    terms = dict(treat)
    if interact:
        for a, b in _crossed(treat):
            terms[f"{a}_x_{b}"] = treat[a] * treat[b]
    cols = {"const": np.ones(len(d)), **terms}
    bl, miss = f"{outcome}_bl", f"{outcome}_bl_missing"
    if has_baseline:
        cols[bl] = d[bl].astype("float64").to_numpy()
        if not listwise_baseline:
            cols[miss] = d[miss].astype("float64").to_numpy()
    for fe in fixed_effects:   # levels by first appearance: a stratum label can be a salted hash
        codes, levels = inference.first_appearance_codes(d[fe])
        for c in range(1, len(levels)):
            cols[f"{fe}[{levels[c]}]"] = (codes == c).astype(float)
    return np.column_stack(list(cols.values())), list(terms)


def _sample_masks(d: pd.DataFrame, samples: Sequence[str], gender: str,
                  n_cols: int) -> tuple[list[np.ndarray], list[str]]:
    """(row masks, names) of the samples with more rows than the ``n_cols`` regressors."""
    female = d[gender].to_numpy() if gender in d.columns else None
    masks, names = [], []
    for s in samples:
        if s == "all":
            m = np.ones(len(d), dtype=bool)
        else:
            m = female == (1 if s == "women" else 0)
        if m.sum() > n_cols:
            masks.append(m)
            names.append(s)
    return masks, names


def _varying_columns(X: np.ndarray, masks: list[np.ndarray], n_terms: int) -> list[np.ndarray]:
    """Per sample, the columns of ``X`` with variation in it (always the constant and the terms)."""
    col_keep = []
    for m in masks:
        sd = X[m].std(axis=0)
        k = [j for j in range(X.shape[1]) if j <= n_terms or sd[j] > 0]
        col_keep.append(np.asarray(k))
    return col_keep


def _bootstrap(payload: dict, cl_strata: np.ndarray, reps: int, seed: int, workers: parallel.Workers | None,
               shape: tuple) -> np.ndarray:
    """reps x ``shape`` bootstrap estimates (clusters resampled within strata; empty if ``reps`` is 0)."""
    if not reps:
        return np.empty((0, *shape))
    draws = inference.stratified_cluster_draws(cl_strata, reps, seed)
    boot = parallel.run_replications(workers, _replication, list(draws), shared=(payload,), chunk_size=CHUNK_REPS,
                                     progress=parallel.Progress(reps, label="QTE bootstrap", unit="reps"))
    return np.stack(boot)


def _with_difference(point: np.ndarray, boot: np.ndarray,
                     names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(point, boot, sample names) with a women - men ``diff`` sample added where both are there."""
    if {"women", "men"} <= set(names):
        iw, im = names.index("women"), names.index("men")
        point = np.concatenate([point, (point[iw] - point[im])[None]])
        if len(boot):
            boot = np.concatenate([boot, (boot[:, iw] - boot[:, im])[:, None]], axis=1)
        names = names + ["diff"]
    return point, boot, names


def _table_rows(point: np.ndarray, boot: np.ndarray, names: list[str], masks: list[np.ndarray],
                cl_codes: np.ndarray, quantiles: list[float], term_names: list[str], alpha: float,
                labels: dict) -> list[dict]:
    """One row per sample, quantile and term: estimate, bootstrap SE and percentile CI, counts."""
    rows = []
    for s, sname in enumerate(names):
        n_obs = int(masks[s].sum()) if sname != "diff" else int(sum(m.sum() for m in masks[:2]))
        m_rows = masks[s] if sname != "diff" else (masks[0] | masks[1])
        n_cl = int(np.unique(cl_codes[m_rows]).size)
        for qi, q in enumerate(quantiles):
            for ti, t in enumerate(term_names):
                b = boot[:, s, qi, ti] if len(boot) else np.empty(0)
                b = b[np.isfinite(b)]
                rows.append({
                    **labels, "sample": sname,
                    "term": t, "quantile": q, "estimate": float(point[s, qi, ti]),
                    "std_error": float(np.std(b, ddof=1)) if len(b) > 1 else np.nan,
                    "ci_low": float(np.quantile(b, alpha / 2)) if len(b) else np.nan,
                    "ci_high": float(np.quantile(b, 1 - alpha / 2)) if len(b) else np.nan,
                    "n_obs": n_obs, "n_clusters": n_cl, "n_boot": int(len(b)),
                })
    return rows


def qte_table(df: pd.DataFrame, outcome: str, treatments: Sequence[str], quantiles: Sequence[float], *,
              reps: int, seed: int, cluster: str, baseline_control: bool, fixed_effects: Sequence[str],
              interact: bool, samples: Sequence[str], followup_only: bool, alpha: float,
              listwise_baseline: bool, study: str | None, workers: parallel.Workers | None = None,
              strata: str = "stratum", gender: str = "female_owner", transform: str = "level") -> pd.DataFrame:
    """Quantile effects per sample (``women``, ``men``, ``all``) and their women - men ``diff``.

    The settings that are params (``estimate``: ``bootstrap_reps``, ``seed``, ``qte_fixed_effects``,
    ``alpha`` and the study's resolved specification) have no defaults here; the column names of
    the analysis table do (the solver's tolerance is ``quantreg``'s). ``workers``: where the
    bootstrap may run (None: here).

    ``listwise_baseline`` (the estimate specification's ``missing_baseline: listwise``): rows whose
    baseline is missing (``<outcome>_bl_missing == 1``) are left out and the baseline enters alone,
    instead of 0 plus the missing-baseline dummy."""
    quantiles = [float(q) for q in quantiles]
    if not quantiles or not all(0 < q < 1 for q in quantiles):
        raise ValueError(f"quantiles must be in (0, 1), got {quantiles}")
    for c in [outcome, *treatments, strata, cluster, *fixed_effects]:
        if c not in df.columns:
            raise ValueError(f"required column {c!r} is missing from the data")
    has_baseline = (baseline_control and f"{outcome}_bl" in df.columns
                    and f"{outcome}_bl_missing" in df.columns)
    d = df.loc[_rows_used(df, outcome, samples, followup_only, gender, has_baseline,
                          listwise_baseline)].reset_index(drop=True)
    if d.empty:
        raise ValueError(f"no observations of {outcome!r} for quantile regressions")
    X, term_names = _design(d, outcome, treatments, interact, has_baseline, listwise_baseline, fixed_effects)
    y = d[outcome].astype("float64").to_numpy()
    masks, names = _sample_masks(d, samples, gender, X.shape[1])
    # clusters numbered by first appearance, not sorted: the draws index them (inference docstring)
    cl_codes, cl_levels = inference.first_appearance_codes(d[cluster])
    cl_strata = d.groupby(cl_codes)[strata].first().astype(str).to_numpy()
    payload = {"y": y, "X": X, "sample_masks": masks, "cols": _varying_columns(X, masks, len(term_names)),
               "quantiles": quantiles, "n_terms": len(term_names),
               "rows_by_cluster": inference.cluster_rows(cl_codes, len(cl_levels))}
    point = _estimate(None, payload)
    boot = _bootstrap(payload, cl_strata, reps, seed, workers, point.shape)
    point, boot, names = _with_difference(point, boot, names)
    rows = _table_rows(point, boot, names, masks, cl_codes, quantiles, term_names, alpha,
                       {"study": study, "outcome": outcome, "transform": transform})
    return pd.DataFrame(rows, columns=QTE_COLUMNS)
