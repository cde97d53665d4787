"""The estimate stage: every table of a study in memory (:func:`estimate_all`: the effect models,
the descriptive model, attrition, Lee bounds, balance, quantile treatment effects, key estimates),
written to ``data/processed/<study>/`` by :func:`run`."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Sequence

import numpy as np
import pandas as pd

from pipeline import inference, lee_bounds, parallel, qte
from pipeline.arms import intervention_arm_groups
from pipeline.balance import BALANCE_JOINT_COLUMNS, balance_columns, balance_tables
from pipeline.estimation.columns import FOLLOWUP, GENDER, require
from pipeline.estimation.fit import fit
from pipeline.estimation.sample import (apply_sample, baseline_columns, gender_varies, resolve_outcome,
                                        sexes_present)
from pipeline.estimation.spec import (ARM_TERM_PREFIX, EFFECT_KEYS, Spec, interaction_name, split_params,
                                     study_params)
from pipeline.estimation.tables import (COEFFICIENTS_BY_GENDER_COLUMNS, TIDY_COLUMNS, coefficients_by_gender,
                                        concat_tidy, empty_tidy, estimate_study, fit_descriptive, sort_table,
                                        tidy)
from pipeline.estimation.wild import wild_settings
from pipeline.vocabulary import (ALL, BY_GENDER, IGNORED_NOTE_PREFIX, MEN, POOLED, SAMPLE_MODELS, SAMPLES, SEXES, WOMEN,
                                 split_sex_term)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Attrition
# --------------------------------------------------------------------------------------------
# The tidy columns that apply to attrition (one outcome, level, no power or multiple testing),
# then the joint test of the treatment terms.
ATTRITION_COLUMNS = [c for c in TIDY_COLUMNS if c not in (
    "transform", "wild_p_value", "q_value", "effect_pct_of_control_mean", "mde", "mde_pct_of_control_mean")] + [
    "joint_f_stat", "joint_df_num", "joint_df_denom", "joint_p_value"]


def _arm_contrasts(df: pd.DataFrame, treatments: Sequence[str], arm: str = "arm") -> dict[str, dict]:
    """Treated arm label -> {treatment: 0/1} (from the firm-level arm and treatment columns)."""
    if arm not in df.columns:
        return {}
    arms, control = inference.arm_order(df, arm, treatments)
    firms = df[[arm, *treatments]].drop_duplicates().set_index(arm)
    return {a: {t: int(firms.loc[a, t]) for t in treatments} for a in arms if a != control}


def attrition_table(df: pd.DataFrame, spec_params: dict, study: str | None, alpha: float,
                    power: float) -> pd.DataFrame:
    """Attrition by arm: ``attrited ~ treatments (+ interaction) + strata and round FE`` on every
    planned follow-up firm-round, cluster SE (the main specification without the baseline control
    and controls), pooled, by gender and per sex. Besides the coefficient rows, one row per
    treated arm (term ``arm: <label>``) gives the attrition difference arm - control (a linear
    combination for the combined arm). ``control_mean`` is the control arm's attrition rate;
    ``joint_f_stat`` / ``joint_p_value`` test that all treatment terms of the model are zero, on
    F(``joint_df_num``, ``joint_df_denom``) (``AbsorbedResults.f_test``: the denominator is G - 1
    under every clustered covariance, CR2 included, N - K with HC1); both NaN where the covariance of
    the tested terms is singular (the test is not reported, ``variance.wald_statistic``)."""
    require(df, ["attrited"], "attrition indicator")
    base = Spec.from_params(spec_params, "attrited", df)
    spec = replace(base, baseline_control=False, controls=())
    contrasts = _arm_contrasts(df, spec.treatments)
    results = [fit(df, spec)]
    present = sexes_present(df, spec) if GENDER in df.columns else set()
    if present == set(SEXES):
        results.append(fit(df, spec, by_gender=True))
    results += [fit(df, spec, sample=sex) for sex in SEXES if sex in present]
    parts = []
    for res in results:
        t = tidy(res, study, alpha=alpha, power=power)
        ft = _joint_test_of_terms(res)
        t["joint_f_stat"] = float(np.squeeze(ft.fvalue))
        t["joint_df_num"], t["joint_df_denom"] = int(ft.df_num), int(ft.df_denom)
        t["joint_p_value"] = float(np.squeeze(ft.pvalue))
        extra = [] if res.estimate_info.model == BY_GENDER else [
            {**t.iloc[0].to_dict(), **_arm_difference(res, a, active, alpha)} for a, active in contrasts.items()]
        parts.append(pd.concat([t, pd.DataFrame(extra)], ignore_index=True) if extra else t)
    out = pd.concat(parts, ignore_index=True)
    return out[ATTRITION_COLUMNS]


def _joint_test_of_terms(res):
    """The Wald test that every parameter of the model's tidy terms is zero (``res.f_test``)."""
    names = list(res.params.index)
    interest = list(dict.fromkeys(p for td in res.estimate_info.terms for p, _ in td.weights))
    R = np.zeros((len(interest), len(names)))
    for i, p in enumerate(interest):
        R[i, names.index(p)] = 1.0
    return res.f_test(R)


def _arm_difference(res, arm: str, active: dict[str, int], alpha: float) -> dict:
    """The tidy columns of the row ``arm: <label>``: arm - control, the sum of the arm's treatment
    coefficients and of their interactions in the model (``res.t_test``, the contrast's t df)."""
    names = list(res.params.index)
    r = np.zeros(len(names))
    on = [k for k, v in active.items() if v == 1]
    for k in on:
        r[names.index(k)] = 1.0
    for i, k1 in enumerate(on):
        for k2 in on[i + 1:]:
            nm = interaction_name((k1, k2))
            if nm in names:
                r[names.index(nm)] = 1.0
    tt = res.t_test(r[None, :])
    lo, hi = np.asarray(tt.conf_int(alpha=alpha)).ravel()
    return {"term": f"{ARM_TERM_PREFIX}{arm}", "estimate": float(np.squeeze(tt.effect)),
            "std_error": float(np.squeeze(tt.sd)), "ci_low": float(lo), "ci_high": float(hi),
            "p_value": float(np.squeeze(tt.pvalue))}


def attrition_rates(df: pd.DataFrame, arm: str = "arm") -> pd.DataFrame:
    """Share of planned follow-up firm-rounds not interviewed, by sample, arm and round."""
    fu = df[df[FOLLOWUP].astype(bool)]
    parts = []
    for sample, sub in ((ALL, fu), (WOMEN, fu[fu[GENDER] == 1]), (MEN, fu[fu[GENDER] == 0])):
        if sub.empty:
            continue
        g = sub.groupby([arm, "round"])["attrited"].agg(["size", "mean"]).reset_index()
        g.insert(0, "sample", sample)
        parts.append(g.rename(columns={"size": "planned", "mean": "attrition_rate"}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --------------------------------------------------------------------------------------------
# The whole stage
# --------------------------------------------------------------------------------------------
def _key_estimates(study, primary, results, attrition, balance_joint, lee, qte) -> dict:
    """Key numbers for the metrics JSON (rounded to 6 decimals)."""
    r6 = lambda v: None if v is None or not np.isfinite(v) else round(float(v), 6)  # noqa: E731
    out: dict = {"study": study, "primary_outcome": primary, "effects": {}}
    sub = results[(results["outcome"] == primary) & (results["transform"] == "level")
                  & (results["model"] == BY_GENDER)]
    for _, r in sub.iterrows():
        term, sex = split_sex_term(r["term"])
        out["effects"][f"{EFFECT_KEYS.get(term, term)}_{sex}"] = {
            k: r6(r[c]) for k, c in (("estimate", "estimate"), ("se", "std_error"), ("ci_low", "ci_low"),
                                     ("ci_high", "ci_high"), ("p", "p_value"), ("q", "q_value"),
                                     ("mde", "mde"), ("mde_pct", "mde_pct_of_control_mean"),
                                     ("pct", "effect_pct_of_control_mean"))}
    if len(attrition):
        pooled = attrition[attrition["model"] == POOLED]
        out["attrition"] = {
            "control_rate": r6(pooled["control_mean"].iloc[0]),
            "joint_p_value": r6(pooled["joint_p_value"].iloc[0]),
            "difference_by_arm": {inference.slug(t[len(ARM_TERM_PREFIX):]): r6(e) for t, e in
                                  zip(pooled["term"], pooled["estimate"]) if t.startswith(ARM_TERM_PREFIX)}}
    if len(balance_joint):
        out["balance_joint_ri_p_value"] = {
            f"{inference.slug(r['arm'])}_{r['sample']}": r6(r["ri_p_value"]) for _, r in balance_joint.iterrows()}
    if len(lee):
        out["lee_bounds"] = {f"{inference.slug(r['arm'])}_{r['sample']}": {
            "lower": r6(r["lower"]), "upper": r6(r["upper"]), "ci_low": r6(r["ci_low"]),
            "ci_high": r6(r["ci_high"])} for _, r in lee.iterrows()}
    if len(qte):
        med = qte[(qte["quantile"] == 0.5)]
        out["qte_median"] = {f"{EFFECT_KEYS.get(r['term'], r['term'])}_{r['sample']}": r6(r["estimate"])
                             for _, r in med.iterrows()}
    return out


# Errors an add-on (attrition, Lee bounds, balance, QTE) may raise on a study: it is then skipped
# with the reason, and the causal results are kept.
ADD_ON_ERRORS = (ValueError, KeyError, IndexError, np.linalg.LinAlgError)


def estimate_all(analysis: pd.DataFrame, params: dict, study: str,
                 study_cfg: dict | None = None) -> dict:
    """Every table of the estimate stage, computed in memory (nothing written).

    ``study_cfg``: the study's configuration; its ``estimate:`` block overrides ``params`` (see
    :func:`study_params`). The effect models (results, descriptive, QTE) use the rows selected by
    ``sample``; attrition, Lee bounds and balance use every planned row. Gender models are run
    only where both sexes are observed (and none unknown). An add-on whose inputs are absent or
    that fails on the study is skipped; ``summary["skipped"]`` says which and why.

    Returns ``results`` (tidy), ``descriptive`` (its rows are also in ``results``),
    ``attrition``, ``attrition_rates``, ``balance``, ``balance_joint``, ``lee_bounds``, ``qte``,
    ``coefficients_by_gender``, ``key_estimates`` and ``summary``.
    """
    params = study_params(params, study_cfg)
    spec_params, sp = split_params(params)
    if not sp["outcomes"]:
        raise ValueError("estimate params: 'outcomes' is empty")
    full = analysis
    analysis, notes = apply_sample(full, sp["sample"])
    notes += [f"{IGNORED_NOTE_PREFIX}{x}" for x in sp["ignored"]]
    skipped: dict[str, str] = {}
    resolved, outcomes, primary, q_families = _resolve_outcomes(analysis, sp, study)
    gender_models = gender_varies(analysis)
    if not gender_models:
        skipped["gender_models"] = "owner's sex unknown or the same for every firm"
    if sp["gender_control"]:
        if gender_models:
            spec_params["controls"] = [*spec_params["controls"], GENDER]
        else:
            skipped["gender_control"] = "female_owner does not vary (or is unknown)"
    alpha, power = float(sp["alpha"]), float(sp["mde_power"])
    results = estimate_study(analysis, outcomes, spec_params, study, transforms=sp["transforms"],
                             by_round=bool(sp["by_round"]), trim_top_pct=float(sp["trim_top_pct"]),
                             q_families=q_families, alpha=alpha, power=power,
                             gender_models=gender_models, wild=wild_settings(sp),
                             arm_groups=intervention_arm_groups(((study_cfg or {}).get("treatment") or {}).get("arms") or {}))
    spec = Spec.from_params(spec_params, primary, analysis)
    descriptive = _descriptive(analysis, spec, sp, study, skipped)
    if descriptive is None:      # not applicable (the reason is in skipped)
        descriptive = empty_tidy()
    else:                        # fitted, or failed (no rows)
        results = sort_table(concat_tidy([results, descriptive]), outcomes,
                             list(pd.unique(results["transform"])))
    sexes = SAMPLES if gender_varies(full) else (ALL,)
    attrition, rates, lee = _attrition_and_lee(full, spec_params, spec, sp, study, primary, sexes, skipped)
    balance, balance_joint = _balance(full, spec, sp, study, sexes, skipped)
    # the QTE bootstrap's workers: started only if the loop pays for them
    with parallel.Workers(int(sp["n_jobs"])) as workers:
        qte_tab = _qte(analysis, spec, sp, study, primary, gender_models, skipped, workers)
    if spec.weights is not None:
        notes.append("weights are not used by the quantile regressions, Lee bounds or the balance table")
    for what, why in skipped.items():
        log.info("%s: %s skipped (%s)", study, what, why)

    coefs = coefficients_by_gender(results, primary)
    key = _key_estimates(study, primary, results, attrition, balance_joint, lee, qte_tab)
    tables = {"results": results, "attrition": attrition, "balance": balance,
              "balance_joint": balance_joint, "lee_bounds": lee, "qte": qte_tab,
              "coefficients_by_gender": coefs}
    tables = {name: _with_header(table, TABLE_COLUMNS[name]) for name, table in tables.items()}
    summary = {"study": study, "outcomes": outcomes, "primary_outcome": primary, "rows": len(results),
               "skipped_outcomes": [o for o, c in resolved.items() if c not in outcomes],
               "transforms": list(pd.unique(results["transform"])),
               "models": list(pd.unique(results["model"])),
               "tables": {name: table_status(name, table, skipped) for name, table in tables.items()},
               "attrition_rates": rates.to_dict("records") if len(rates) else [],
               "specification": _specification(analysis, spec, sp, outcomes, gender_models, q_families),
               "wild_bootstrap": {**wild_settings(sp).__dict__,
                                  "rows_with_wild_p_value": int(results["wild_p_value"].notna().sum())},
               "skipped": skipped,
               "notes": notes}
    return {**tables, "descriptive": descriptive, "attrition_rates": rates,
            "key_estimates": key, "summary": summary}


def _resolve_outcomes(analysis: pd.DataFrame, sp: dict, study: str) -> tuple[dict, list, str, dict | None]:
    """(configured outcome -> its column or None, the estimable outcome columns, the primary
    outcome's column, the q-value families in columns)."""
    resolved = {o: resolve_outcome(o, analysis.columns) for o in sp["outcomes"]}
    outcomes = list(dict.fromkeys(c for c in resolved.values()
                                  if c is not None and analysis[c].notna().any()))
    if not outcomes:
        raise ValueError(f"{study}: none of the outcomes {sp['outcomes']} is in the analysis table")
    primary = resolve_outcome(sp["primary_outcome"], analysis.columns) if sp["primary_outcome"] else outcomes[0]
    if primary not in outcomes:
        raise ValueError(f"{study}: primary outcome {sp['primary_outcome']!r} is not among the "
                         f"estimable outcomes {outcomes}")
    q_families = sp["q_families"]
    if q_families:
        q_families = {f: [resolve_outcome(o, analysis.columns) or o for o in
                          ([m] if isinstance(m, str) else m)] for f, m in q_families.items()}
    return resolved, outcomes, primary, q_families


def _descriptive(analysis: pd.DataFrame, spec: Spec, sp: dict, study: str,
                 skipped: dict) -> pd.DataFrame | None:
    """The descriptive, non-causal model (women's profits on the skills index / credit access);
    no rows when it failed, None when not applicable (the reason in ``skipped`` for both)."""
    women_fu = (analysis[GENDER] == 1) if GENDER in analysis.columns else pd.Series(False, index=analysis.index)
    if FOLLOWUP in analysis.columns:
        women_fu &= analysis[FOLLOWUP].astype(bool)
    regs = [c for c in sp["descriptive_regressors"]
            if c in analysis.columns and analysis.loc[women_fu, c].notna().any()]
    ctrls = [c for c in sp["descriptive_controls"] if c in analysis.columns]
    if not (regs and women_fu.any()):
        skipped["descriptive"] = "no descriptive regressor observed among women, or no women"
        return None
    try:
        return fit_descriptive(analysis, spec, regs, ctrls, sample=WOMEN,
                               control_only=sp["descriptive_sample"] == "control_only",
                               study=study, alpha=float(sp["alpha"]))
    except ValueError as exc:    # an add-on: report it, keep the causal results
        log.warning("descriptive model failed: %s", exc)
        skipped["descriptive"] = f"failed: {exc}"
        return empty_tidy()
def _attrition_and_lee(full: pd.DataFrame, spec_params: dict, spec: Spec, sp: dict, study: str, primary: str,
                       sexes: tuple[str, ...], skipped: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(attrition table, attrition rates, Lee bounds) on every planned follow-up row (not only the
    effect models' sample); empty tables with the reason in ``skipped`` where not applicable."""
    attrition, rates, lee = pd.DataFrame(columns=ATTRITION_COLUMNS), pd.DataFrame(), pd.DataFrame()
    fu = full[full[FOLLOWUP].astype(bool)] if FOLLOWUP in full.columns else full.iloc[0:0]
    if "attrited" not in full.columns or not len(fu):
        skipped["attrition"] = skipped["lee_bounds"] = "no attrited / followup columns"
        return attrition, rates, lee
    if not fu["attrited"].astype(bool).any():
        skipped["attrition"] = skipped["lee_bounds"] = "no attrition (every planned interview observed)"
        return attrition, rates, lee
    alpha = float(sp["alpha"])
    att_p = {}
    try:
        attrition = attrition_table(fu, spec_params, study, alpha, float(sp["mde_power"]))
        rates = attrition_rates(full)
        for _, r in attrition.iterrows():
            if r["term"].startswith(ARM_TERM_PREFIX) and r["model"] in SAMPLE_MODELS.values():
                att_p[(r["sample"], r["term"][len(ARM_TERM_PREFIX):])] = r["p_value"]
    except ADD_ON_ERRORS as exc:
        attrition, rates = pd.DataFrame(columns=ATTRITION_COLUMNS), pd.DataFrame()
        skipped["attrition"] = f"failed: {exc}"
    if "arm" not in full.columns:
        skipped["lee_bounds"] = "no arm column"
        return attrition, rates, lee
    try:
        lee = lee_bounds.lee_bounds_table(
            fu, primary, treatments=spec.treatments, cells=[c for c in sp["lee_cells"] if c in fu.columns],
            cluster=spec.cluster or "firm_id", reps=int(sp["bootstrap_reps"]), seed=int(sp["seed"]),
            alpha=alpha, attrition_p=att_p, samples=sexes)
        lee.insert(0, "study", study)
    except ADD_ON_ERRORS as exc:
        lee = pd.DataFrame()
        skipped["lee_bounds"] = f"failed: {exc}"
    return attrition, rates, lee


def _balance(full: pd.DataFrame, spec: Spec, sp: dict, study: str, sexes: tuple[str, ...],
             skipped: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(balance, balance_joint) at baseline, on every interviewed baseline row; empty tables with
    the reason in ``skipped`` where not applicable."""
    if FOLLOWUP not in full.columns or "arm" not in full.columns:
        skipped["balance"] = "no followup / arm columns"
        return pd.DataFrame(), pd.DataFrame()
    bl_rows = full[~full[FOLLOWUP].astype(bool)]
    if "interviewed" in bl_rows.columns:
        bl_rows = bl_rows[bl_rows["interviewed"] == 1]
    covs = [c for c in sp["balance_covariates"] if c in bl_rows.columns and bl_rows[c].notna().any()]
    if not (len(bl_rows) and covs):
        skipped["balance"] = "no baseline rows or no balance covariates observed"
        return pd.DataFrame(), pd.DataFrame()
    try:
        balance, balance_joint = balance_tables(
            bl_rows, covs, treatments=spec.treatments, cluster=spec.cluster or "firm_id",
            permutations=int(sp["permutations"]), seed=int(sp["seed"]), samples=sexes)
    except ADD_ON_ERRORS as exc:
        skipped["balance"] = f"failed: {exc}"
        return pd.DataFrame(), pd.DataFrame()
    balance.insert(0, "study", study)
    balance_joint.insert(0, "study", study)
    return balance, balance_joint


def _qte(analysis: pd.DataFrame, spec: Spec, sp: dict, study: str, primary: str, gender_models: bool,
         skipped: dict, workers: parallel.Workers) -> pd.DataFrame:
    """Quantile treatment effects of the primary outcome (level), or no rows with the reason in
    ``skipped``."""
    qte_cols = ["stratum", spec.cluster or "firm_id"]
    if not all(c in analysis.columns for c in qte_cols):
        skipped["qte"] = f"missing columns {[c for c in qte_cols if c not in analysis.columns]}"
        return pd.DataFrame()
    try:
        return qte.qte_table(
            analysis, primary, spec.treatments, sp["qte_quantiles"], reps=int(sp["bootstrap_reps"]),
            seed=int(sp["seed"]), cluster=spec.cluster or "firm_id", baseline_control=spec.baseline_control,
            listwise_baseline=spec.missing_baseline == "listwise",
            fixed_effects=[f for f in sp["qte_fixed_effects"] if f in analysis.columns],
            interact=spec.interact_treatments, workers=workers, alpha=float(sp["alpha"]), study=study,
            followup_only=spec.followup_only,
            samples=SEXES if gender_models else (ALL,))
    except ADD_ON_ERRORS as exc:
        skipped["qte"] = f"failed: {exc}"
        return pd.DataFrame()


def _specification(analysis: pd.DataFrame, spec: Spec, sp: dict, outcomes: list[str], gender_models: bool,
                   q_families: dict | None) -> dict:
    """The resolved specification of the study, as the summary records it (the method note reads it)."""
    return {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.__dict__.items() if k != "outcome"},
            "sample": sp["sample"],
            # resolved against the data: ANCOVA only where the outcome has a baseline
            "baseline_control_by_outcome": {
                o: bool(baseline_columns(analysis, replace(spec, outcome=o))) for o in outcomes},
            "gender_models": gender_models, "by_round": bool(sp["by_round"]),
            "q_families": q_families,
            # levels among the effect models' follow-up rows (1: absorbs nothing)
            **_design_levels(analysis, spec)}


# The header of every CSV the stage writes (OUTPUT_FILES), whatever the study: a table with nothing
# to report is written with these columns and no rows (never as an empty, header-less file), and
# ``summary["tables"]`` says why (table_status). The balance table has, besides these, n / mean /
# sd / normdiff columns per arm (balance_columns) where it has rows.
TABLE_COLUMNS: dict[str, list[str]] = {
    "results": TIDY_COLUMNS,
    "attrition": ATTRITION_COLUMNS,
    "balance": ["study", *balance_columns()],
    "balance_joint": ["study", *BALANCE_JOINT_COLUMNS],
    "lee_bounds": ["study", *lee_bounds.LEE_BOUNDS_COLUMNS],
    "qte": qte.QTE_COLUMNS,
    "coefficients_by_gender": COEFFICIENTS_BY_GENDER_COLUMNS,
}
# The ``skipped`` entry of estimate_all that explains each table's absence.
TABLE_SKIP_KEYS = {"attrition": "attrition", "balance": "balance", "balance_joint": "balance",
                   "lee_bounds": "lee_bounds", "qte": "qte", "coefficients_by_gender": "gender_models"}
TABLE_STATUSES = ("estimated", "not_applicable", "failed")


def _design_levels(analysis: pd.DataFrame, spec: Spec) -> dict:
    """Distinct fixed-effect levels, clusters and units among the follow-up rows (for the method note)."""
    fu = analysis[analysis[FOLLOWUP].astype(bool)] if FOLLOWUP in analysis.columns else analysis
    return {"fixed_effect_levels": {c: int(fu[c].nunique()) for c in spec.fixed_effects},
            "clusters": int(fu[spec.cluster].nunique()) if spec.cluster else None,
            "units": int(fu["firm_id"].nunique()) if "firm_id" in fu.columns else None}


def _with_header(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``table`` unchanged where it has rows; else no rows with ``columns`` (and any of its own)."""
    if len(table):
        return table
    return pd.DataFrame(columns=list(dict.fromkeys([*columns, *table.columns])))


def table_status(name: str, table: pd.DataFrame, skipped: dict[str, str]) -> dict:
    """``{"rows": n, "status": ..., "reason": ...}`` of one output table: ``estimated`` (it has
    rows; reason null), ``failed`` (the add-on raised; reason ``failed: <error>``) or
    ``not_applicable`` (nothing to report, e.g. no balance covariates, no attrition; reason why)."""
    why = skipped.get(TABLE_SKIP_KEYS.get(name, name))
    if len(table):
        return {"rows": int(len(table)), "status": "estimated", "reason": None}
    if why and why.startswith("failed"):
        return {"rows": 0, "status": "failed", "reason": why}
    return {"rows": 0, "status": "not_applicable", "reason": why or "nothing to report (no rows)"}


OUTPUT_FILES = {
    "results": "results.csv",
    "attrition": "attrition.csv",
    "balance": "balance.csv",
    "balance_joint": "balance_joint.csv",
    "lee_bounds": "lee_bounds.csv",
    "qte": "qte.csv",
    "coefficients_by_gender": "coefficients_by_gender.csv",
    "key_estimates": "estimate_metrics.json",
    "summary": "estimate_summary.json",
}


def run(context) -> dict:
    """The estimate stage (``context``: a :class:`pipeline.stage_context.StageContext`): analysis
    table -> every table of :func:`estimate_all`, written to the context's outputs (``OUTPUT_FILES``)
    only after everything is computed."""
    from pipeline.io import write_csv, write_json

    analysis = pd.read_parquet(context.inputs["analysis.parquet"])
    config = dict(context.config) if context.config is not None else None
    out = estimate_all(analysis, dict(context.params), context.study, config)
    for key, name in OUTPUT_FILES.items():
        if name.endswith(".json"):
            write_json(context.outputs[name], out[key])
        else:
            write_csv(context.outputs[name], out[key])
    return out
