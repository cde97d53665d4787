"""Study effects on one scale, ready to pool: the first half of the synthesize stage.

Each study's estimate stage writes tidy ITT estimates (``results.csv``) for its own primary
outcome. This module picks, for every treatment arm, the effect of **skills** (business
training) or **capital** (grants, loans, credit) (arms of one intervention that share a control
group: their average, see :func:`effect_terms`) on the primary outcome, overall and for women
and for men where the study estimated them, and expresses it on two scales:

- ``usd_ppp_month``: the estimate itself when the outcome is a monthly money flow in USD PPP;
- ``pct_of_control_mean``: 100 x effect / control mean (unit-free, for comparing training and
  capital studies), or 100 x the coefficient when the outcome is already a log (log points).

The control mean is treated as known when the SE is rescaled (its sampling error is ignored,
as is usual when meta-analyses standardise by a control-group mean).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from pipeline.arms import INTERVENTIONS, arm_average_term, arm_interventions, intervention_arm_groups
from pipeline.vocabulary import ALL, BY_GENDER, POOLED, SAMPLES, WOMEN, sex_term

GROUPS = SAMPLES
EFFECT_COLUMNS = ["study", "arm", "intervention", "group", "outcome", "scale", "effect", "std_error",
                  "ci_low", "ci_high", "estimate_native", "std_error_native", "native_unit", "control_mean",
                  "n_obs", "n_clusters", "model", "term", "share_female_owners", "lender_targeted_women",
                  "source", "citation"]


def effect_terms(arms: Mapping) -> dict[str, str]:
    """The result term that carries each single-intervention effect of a study -> its intervention.

    Arms that test the same intervention against one shared control group enter through their
    average (``<intervention>_arms_avg``, written by the estimate stage with the joint covariance),
    not one by one: their estimates are correlated through the control group and would otherwise
    count as independent studies in the pooled model."""
    terms = arm_interventions(arms)
    for intervention, members in intervention_arm_groups(arms).items():
        for term in members:
            del terms[term]
        terms[arm_average_term(intervention)] = intervention
    return terms


def _rows_for_group(results: pd.DataFrame, term: str, group: str, all_women: bool) -> pd.DataFrame:
    """The estimate of ``term`` for one group: the pooled model for ``all``, the by-gender model's
    ``<term>_women`` / ``<term>_men`` otherwise (a women-only study's pooled effect is its women's)."""
    if group == ALL:
        return results[(results["model"] == POOLED) & (results["term"] == term)]
    hit = results[(results["model"] == BY_GENDER) & (results["term"] == sex_term(term, group))]
    if hit.empty and group == WOMEN and all_women:
        hit = results[(results["model"] == POOLED) & (results["term"] == term)]
    return hit


def native_unit(currency: str | None, usd_ppp_per_lcu: float | None, recall_period: Mapping) -> tuple[str, float]:
    """The study's own unit for a money flow estimated in USD PPP per month, and the factor to it:
    its currency per its recall period (``recall_period.value``), or per month where the recall
    period varies by respondent. USD PPP per month (factor 1) without a currency and a rate."""
    from pipeline.codes import PER_YEAR

    if not currency or not usd_ppp_per_lcu:
        return "USD PPP per month", 1.0
    period = recall_period.get("value") or "month"
    return f"{currency} per {period.replace('_', ' ')}", PER_YEAR["month"] / PER_YEAR[period] / float(usd_ppp_per_lcu)


def study_effects(results: pd.DataFrame, *, study: str, arms: Mapping[str, Mapping], primary_outcome: str,
                  outcome_is_log: bool, share_female_owners: float, lender_targeted_women: float,
                  citation: str, native: tuple[str, float] = ("USD PPP per month", 1.0)) -> pd.DataFrame:
    """One row per (arm, group, scale) for the study's primary outcome at the level transform.
    ``native``: the study's own unit and the factor from USD PPP per month to it (:func:`native_unit`);
    a log outcome is in log points."""
    unit, factor = ("log points", 1.0) if outcome_is_log else native
    level = results[(results["outcome"] == primary_outcome) & (results["transform"] == "level")]
    all_women = share_female_owners == 1.0
    rows = []
    for term, intervention in effect_terms(arms).items():
        for group in GROUPS:
            hit = _rows_for_group(level, term, group, all_women)
            if hit.empty:
                continue
            r = hit.iloc[0]
            base = {"study": study, "arm": term, "intervention": intervention, "group": group,
                    "outcome": primary_outcome, "estimate_native": r["estimate"] * factor,
                    "std_error_native": r["std_error"] * factor, "native_unit": unit,
                    "control_mean": r["control_mean"], "n_obs": r["n_obs"], "n_clusters": r["n_clusters"],
                    "model": r["model"], "term": r["term"], "share_female_owners": share_female_owners,
                    "lender_targeted_women": lender_targeted_women, "source": "microdata", "citation": citation}
            for scale, (effect, se) in _on_scales(r["estimate"], r["std_error"], r["control_mean"], outcome_is_log).items():
                rows.append({**base, "scale": scale, "effect": effect, "std_error": se,
                             "ci_low": effect - 1.959963984540054 * se, "ci_high": effect + 1.959963984540054 * se})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def _on_scales(estimate: float, se: float, control_mean: float, outcome_is_log: bool) -> dict:
    if outcome_is_log:
        return {"pct_of_control_mean": (100.0 * estimate, 100.0 * se)}
    out = {"usd_ppp_month": (float(estimate), float(se))}
    if np.isfinite(control_mean) and control_mean > 0:
        out["pct_of_control_mean"] = (100.0 * estimate / control_mean, 100.0 * se / control_mean)
    return out


def published_effects(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Studies known only from a publication, in the study-effects layout (one row each).

    Required columns: study, citation, intervention, sex, outcome, scale, effect, std_error."""
    required = ["study", "citation", "intervention", "sex", "outcome", "scale", "effect", "std_error"]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; expected {required}")
    bad = table[~table["intervention"].isin(INTERVENTIONS) | ~table["sex"].isin(GROUPS)
                | ~table["scale"].isin(["usd_ppp_month", "pct_of_control_mean"])
                | ~np.isfinite(pd.to_numeric(table["std_error"], errors="coerce"))
                | (pd.to_numeric(table["std_error"], errors="coerce") <= 0)]
    if not bad.empty:
        raise ValueError(f"{source}: rows {list(bad.index + 2)} (file lines) have an intervention outside {INTERVENTIONS}, "
                         f"a sex outside {GROUPS}, an unknown scale or a non-positive standard error")
    out = pd.DataFrame({"study": table["study"], "arm": "published", "intervention": table["intervention"],
                        "group": table["sex"], "outcome": table["outcome"], "scale": table["scale"],
                        "effect": table["effect"].astype(float), "std_error": table["std_error"].astype(float)})
    out["ci_low"] = out["effect"] - 1.959963984540054 * out["std_error"]
    out["ci_high"] = out["effect"] + 1.959963984540054 * out["std_error"]
    for col in ("share_female_owners", "lender_targeted_women"):
        out[col] = table[col].astype(float) if col in table.columns else np.nan
    out["source"], out["citation"] = "publication", table["citation"]
    return out.reindex(columns=EFFECT_COLUMNS)


def synthesis_groups(effects: pd.DataFrame) -> list[tuple[str, str, str]]:
    """Every (scale, intervention, group) that has at least one study effect, in a stable order."""
    keys = effects[["scale", "intervention", "group"]].drop_duplicates()
    order = {v: i for i, v in enumerate(["pct_of_control_mean", "usd_ppp_month", *INTERVENTIONS, *GROUPS])}
    return sorted(map(tuple, keys.to_numpy()), key=lambda k: tuple(order[x] for x in k))
