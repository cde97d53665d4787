"""Lee (2009) bounds of the estimate stage (see ``METHODS.md``): :func:`trimmed_mean`,
:func:`lee_bounds` (trimming within cells, e.g. strata) and :func:`lee_bounds_table` (each treated
arm against control, per sample, with cluster-bootstrap confidence intervals for the identified set:
clusters resampled within strata by :func:`pipeline.inference.stratified_cluster_draws`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.inference import (arm_order, cluster_level, cluster_rows, first_appearance_codes, rows_for_draw,
                                stratified_cluster_draws)

# The columns of the Lee-bounds table (the estimate stage writes them even where it has no rows).
LEE_BOUNDS_COLUMNS = ["outcome", "sample", "comparison", "arm", "n_obs", "n_observed", "observed_share_arm",
                      "observed_share_control", "attrition_p_value", "trimmed_arm", "trim_share", "lower",
                      "upper", "ci_low", "ci_high", "lower_se", "upper_se", "cells", "cells_dropped",
                      "cells_reversed", "n_boot"]


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
    # cells by first appearance (the order of the weighted sum below must not follow a hash salt)
    cells = np.zeros(len(y), dtype=np.int64) if cells is None else first_appearance_codes(cells)[0]
    q1, q0 = obs[t].mean() if t.any() else np.nan, obs[~t].mean() if (~t).any() else np.nan
    trim_treated = bool(q1 >= q0)
    lows, highs, weights, shares = [], [], [], []
    dropped = reversed_ = 0
    for c in pd.unique(cells):
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


def _cell_codes(base: pd.DataFrame, cells: Sequence[str]) -> np.ndarray:
    """Integer code per row of the cell (the ``cells`` columns joined) by first appearance; zeros without cells."""
    return (first_appearance_codes(base[list(cells)].astype(str).agg("|".join, axis=1))[0]
            if cells else np.zeros(len(base), dtype=np.int64))


def _bootstrap_bounds(y: np.ndarray, observed: np.ndarray, treated: np.ndarray, cell_codes: np.ndarray,
                      m: np.ndarray, draws: np.ndarray, rows_by_cluster) -> tuple[np.ndarray, np.ndarray]:
    """(lower bounds, upper bounds) on the rows ``m`` of each bootstrap draw of clusters."""
    lo_b, hi_b = [], []
    for draw in draws:
        r = rows_for_draw(rows_by_cluster, draw)
        r = r[m[r]]
        b = lee_bounds(y[r], observed[r], treated[r], cell_codes[r])
        lo_b.append(b["lower"])
        hi_b.append(b["upper"])
    return np.asarray(lo_b, float), np.asarray(hi_b, float)


def _bounds_columns(est: dict, lo_b: np.ndarray, hi_b: np.ndarray, alpha: float) -> dict:
    """The bounds, their bootstrap CI and SEs and the trimming columns of one row of the table."""
    good = np.isfinite(lo_b) & np.isfinite(hi_b)
    return {
        "observed_share_arm": est["observed_share_treated"],
        "observed_share_control": est["observed_share_control"],
        "trimmed_arm": est["trimmed_arm"], "trim_share": est["trim_share"],
        "lower": est["lower"], "upper": est["upper"],
        "ci_low": float(np.quantile(lo_b[good], alpha / 2)) if good.any() else np.nan,
        "ci_high": float(np.quantile(hi_b[good], 1 - alpha / 2)) if good.any() else np.nan,
        "lower_se": float(np.std(lo_b[good], ddof=1)) if good.sum() > 1 else np.nan,
        "upper_se": float(np.std(hi_b[good], ddof=1)) if good.sum() > 1 else np.nan,
        "cells": est["cells"], "cells_dropped": est["cells_dropped"],
        "cells_reversed": est["cells_reversed"], "n_boot": int(good.sum()),
    }


def lee_bounds_table(df: pd.DataFrame, outcome: str, *, treatments: Sequence[str], cells: Sequence[str],
                     cluster: str, samples: Sequence[str], reps: int, seed: int, alpha: float,
                     attrition_p: dict | None = None, arm: str = "arm", strata: str = "stratum",
                     gender: str = "female_owner") -> pd.DataFrame:
    """Lee bounds of each treated arm against control, per sample, on the rows of ``df`` (every
    planned follow-up unit-round: observed = outcome not missing).

    Confidence interval for the identified set: [2.5th percentile of the bootstrap lower bounds,
    97.5th percentile of the bootstrap upper bounds] (``alpha``), clusters resampled within strata.
    ``attrition_p`` maps (sample, arm) to the p-value of the attrition difference (shown beside).
    The params (``estimate``: ``treatments``, ``lee_cells``, ``cluster``, ``bootstrap_reps``,
    ``seed``, ``alpha``) have no defaults here; the analysis table's column names do.
    """
    arms, control = arm_order(df, arm, treatments)
    base = df.reset_index(drop=True)
    y = base[outcome].astype("float64").to_numpy()
    observed = ~np.isnan(y)
    # cells and clusters numbered by first appearance, not sorted: the bootstrap draws index the
    # clusters, and ids can be salted hashes (pipeline.inference docstring)
    cell_codes = _cell_codes(base, cells)
    cl_codes, cl_levels = first_appearance_codes(base[cluster])
    cl_stratum = cluster_level(base, cluster, strata).reindex(cl_levels)
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
            lo_b, hi_b = _bootstrap_bounds(y, observed, treated, cell_codes, m, draws, rows_by_cluster)
            out.append({
                "outcome": outcome, "sample": sample, "comparison": f"{a} vs {control}", "arm": a,
                "n_obs": int(m.sum()), "n_observed": int((m & observed).sum()),
                "attrition_p_value": (attrition_p or {}).get((sample, a), np.nan),
                **_bounds_columns(est, lo_b, hi_b, alpha),
            })
    return pd.DataFrame(out, columns=LEE_BOUNDS_COLUMNS)
