"""Report tables for the reviewer: each is {"caption", "columns", "rows", "notes"} with text
cells, rendered by one macro in the template (which escapes every cell)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.arms import INTERVENTIONS, arm_average_term
from pipeline.io import read_json
from pipeline.params import SIMULATION_VARIANTS
from pipeline.vocabulary import (ALL, BY_GENDER, DIFF, DIFF_LABEL, INTERACTION_TERM, POOLED, TERM_OF_EFFECT,
                                 TREATMENTS, sex_term, split_sex_term)
from pipeline.vocabulary import SEXES as SEX_KEYS

# How the reader sees the terms and sexes of the results tables (pipeline.vocabulary's words).
TERM_LABELS = {TREATMENTS[0]: "Training only (skills)", TREATMENTS[1]: "Grant only (capital)",
               INTERACTION_TERM: "Skills × capital",
               **{arm_average_term(k): f"Average of the {k} arms" for k in INTERVENTIONS}}
SEX_LABELS = {**{sex: sex for sex in SEX_KEYS}, DIFF: DIFF_LABEL}
SEXES = {sex: sex.capitalize() for sex in SEX_KEYS}


def term_label(term: str) -> str:
    """A result term as a reader names it: ``arm_<slug>`` terms by their arm's slug."""
    return TERM_LABELS.get(term, term.removeprefix("arm_").replace("_", " "))


# The simulation's survey variants (pipeline.simulation.VARIANTS) as the reader sees them, and what each is.
VARIANT_LABELS = dict(zip(SIMULATION_VARIANTS, ("No typing errors", "As configured")))
VARIANT_NOTES = dict(zip(SIMULATION_VARIANTS, ("the generator without extra-zero typing errors, so the unwinsorised "
                                               "outcome is exactly the one the truth is defined on", "the default survey")))


def effect_label(effect: str) -> str:
    """A short effect key of the simulation and truth tables ("skills", ...) as a reader names it."""
    return term_label(TERM_OF_EFFECT.get(effect, effect))


def owners_label(sex: str) -> str:
    """"women" -> "Women", "diff" -> "Women − men"."""
    label = SEX_LABELS.get(sex, sex)
    return label[:1].upper() + label[1:]


def _by_gender_terms(rows: pd.DataFrame) -> list[str]:
    """The effects a by-gender model reports (the terms with a women's row), in the table's order."""
    women = sex_term("", SEX_KEYS[0])
    return [t.removesuffix(women) for t in dict.fromkeys(rows["term"]) if t.endswith(women)]


def fmt(value, decimals: int = 1) -> str:
    """A number as the reports print it: thousands separators, ``decimals`` places, "–" when
    missing or infinite, and no "-0" for a negative value that rounds to zero."""
    if value is None or pd.isna(value) or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    text = f"{value:,.{decimals}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.,") else text


def stars(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 0.01 else "**" if p < 0.05 else "*" if p < 0.10 else ""


def pval(p) -> str:
    if p is None or (isinstance(p, float) and not np.isfinite(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _model_rows(results: pd.DataFrame, model: str, outcomes: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """The level-outcome rows of one model and the requested outcomes it was estimated on."""
    sub = _level(results)
    sub = sub[sub["model"] == model]
    return sub, [o for o in outcomes if o in set(sub["outcome"])]


def pooled_table(results: pd.DataFrame, outcomes: list[str], decimals: int, note: str) -> dict | None:
    """Effects of every arm on every outcome, all owners (the pooled model): one column per outcome."""
    sub, outcomes = _model_rows(results, POOLED, outcomes)
    if sub.empty or not outcomes:
        return None
    rows = []
    for term in dict.fromkeys(sub["term"]):
        est, se = [term_label(term)], [""]
        for o in outcomes:
            r = sub[(sub["outcome"] == o) & (sub["term"] == term)]
            est.append(f"{fmt(r.iloc[0]['estimate'], decimals)}{stars(r.iloc[0]['p_value'])}" if not r.empty else "")
            se.append(f"({fmt(r.iloc[0]['std_error'], decimals)})" if not r.empty else "")
        rows += [est, se]
    footer = [["Observations"] + [_int(_first(sub[sub["outcome"] == o]["n_obs"])) for o in outcomes],
              ["Clusters"] + [_int(_first(sub[sub["outcome"] == o]["n_clusters"])) for o in outcomes],
              ["Control mean"] + [fmt(_first(sub[sub["outcome"] == o]["control_mean"]), decimals) for o in outcomes]]
    return {"caption": "Intention-to-treat effects, all owners", "columns": [""] + outcomes,
            "rows": rows + footer, "first_col_left": True, "notes": note + " * p < 0.10, ** p < 0.05, *** p < 0.01."}


def _level(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["transform"] == "level"] if "transform" in results.columns else results


def publication_table(results: pd.DataFrame, outcomes: list[str], decimals: int, spec_note: str) -> dict | None:
    """Main results in journal style: effects by gender (by_gender model), SEs in parentheses,
    stars, the p-value of equal effects, N, clusters and control means; one column per outcome."""
    sub, outcomes = _model_rows(results, BY_GENDER, outcomes)
    if sub.empty or not outcomes:
        return None
    rows = []
    # every effect the by-gender model reports (treat_* and arm_* terms, arm averages), in its order
    for term in _by_gender_terms(sub):
        label = term_label(term)
        for sex in SEX_KEYS:
            cells_est, cells_se = [f"{label}: {SEX_LABELS[sex]}"], [""]
            for o in outcomes:
                r = sub[(sub["outcome"] == o) & (sub["term"] == sex_term(term, sex))]
                if r.empty:
                    cells_est.append(""), cells_se.append("")
                    continue
                r = r.iloc[0]
                cells_est.append(f"{fmt(r['estimate'], decimals)}{stars(r['p_value'])}")
                cells_se.append(f"({fmt(r['std_error'], decimals)})")
            rows += [cells_est, cells_se]
        diff = [f"p-value, equal effects ({label})"]
        for o in outcomes:
            r = sub[(sub["outcome"] == o) & (sub["term"] == sex_term(term, DIFF))]
            diff.append(pval(r.iloc[0]["p_value"]) if not r.empty else "")
        rows.append(diff)
    footer = [["Observations"] + [str(int(sub[sub["outcome"] == o]["n_obs"].iloc[0])) for o in outcomes],
              ["Clusters"] + [_int(sub[sub["outcome"] == o]["n_clusters"].iloc[0]) for o in outcomes]]
    for sex in SEX_KEYS:
        footer.append([f"Control mean, {sex}"] + [
            fmt(_first(sub[(sub["outcome"] == o) & (sub["term"].str.endswith(sex_term("", sex)))]["control_mean"]),
                decimals)
            for o in outcomes])
    return {"caption": "Main results: intention-to-treat effects by owner gender",
            "columns": [""] + outcomes, "rows": rows + footer, "first_col_left": True,
            "notes": spec_note + " * p < 0.10, ** p < 0.05, *** p < 0.01."}


def _first(series: pd.Series):
    series = series.dropna()
    return float(series.iloc[0]) if len(series) else float("nan")


def _int(value) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "–"


def robustness_table(results: pd.DataFrame, outcome: str, decimals: int) -> dict | None:
    """The gender effects of the primary outcome under each outcome transform."""
    sub = results[(results["outcome"] == outcome) & (results["model"] == BY_GENDER)]
    if sub.empty or "transform" not in sub.columns:
        return None
    transforms = list(dict.fromkeys(sub["transform"]))
    rows = []
    for term in _by_gender_terms(sub):
        for sex in SEX_KEYS:
            row = [f"{term_label(term)}: {SEX_LABELS[sex]}"]
            for t in transforms:
                r = sub[(sub["transform"] == t) & (sub["term"] == sex_term(term, sex))]
                dec = decimals if t not in ("log", "ihs") else 3
                row.append("" if r.empty else f"{fmt(r.iloc[0]['estimate'], dec)}"
                                              f"{stars(r.iloc[0]['p_value'])} ({fmt(r.iloc[0]['std_error'], dec)})")
            if len(row) > 1 and any(row[1:]):
                rows.append(row)
    return {"caption": f"Robustness: {outcome} under other outcome definitions", "columns": ["Effect"] + transforms,
            "rows": rows, "first_col_left": True,
            "notes": "level: winsorised as cleaned; unwinsorised; log: log profit among firms with positive profit "
                     "(a selected sample, not an ITT); ihs: inverse hyperbolic sine (not a percentage effect when many "
                     "values are zero, Chen & Roth); trimmed: top percentile per round dropped. Estimate (SE)."}


def multiple_testing_table(results: pd.DataFrame) -> dict | None:
    """Plain p-values beside Anderson (2008) sharpened q-values across the family of outcomes."""
    sub = _level(results)
    sub = sub[(sub["model"] == BY_GENDER) & ~sub["term"].str.endswith(sex_term("", DIFF))]
    if sub.empty or "q_value" not in sub.columns:
        return None
    wild = "wild_p_value" in sub.columns and sub["wild_p_value"].notna().any()
    rows = [[r["outcome"], term_label(split_sex_term(r["term"])[0]),
             SEX_LABELS.get(split_sex_term(r["term"])[1], ""), pval(r["p_value"]),
             *([pval(r["wild_p_value"])] if wild else []), pval(r["q_value"]), fmt(r.get("mde"), 1)]
            for _, r in sub.iterrows()]
    notes = ("q: Anderson (2008) sharpened false-discovery-rate q-values within the family of business-income "
             "outcomes. MDE: minimum detectable effect at 80% power, 5% two-sided, from the estimated SE and the "
             "degrees of freedom of the effect's own interval (Bell-McCaffrey under CR2, G - 1 under CR1 / CR3).")
    if wild:
        notes += (" Wild p: wild cluster restricted bootstrap (few clusters: "
                  f"{int(sub['n_clusters'].max())} or fewer in these models), the field's test when cluster-robust "
                  "SEs over-reject.")
    return {"caption": "Multiple testing and power",
            "columns": ["Outcome", "Effect", "Owners", "p", *(["Wild p"] if wild else []), "q (sharpened FDR)", "MDE"],
            "rows": rows, "first_col_left": True, "notes": notes}


def read_table(path: Path) -> pd.DataFrame | None:
    """A stage's CSV, or None when it is absent or has no rows ("nothing to report": the
    estimate stage's summary says why), so a section that does not apply is left out."""
    if not path.exists():
        return None
    try:
        table = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    return None if table.empty else table


def balance_table(folder: Path, decimals: int) -> dict | None:
    """The balance table from a study's estimate outputs (``folder``: its data/processed/<study>)."""
    bal = read_table(folder / "balance.csv")
    if bal is None:
        return None
    bal = bal[bal["sample"] == ALL] if "sample" in bal.columns else bal
    arms = [c[len("mean_"):] for c in bal.columns if c.startswith("mean_")]
    rows = []
    for _, r in bal.iterrows():
        row = [r["covariate"]] + [fmt(r[f"mean_{a}"], 2) for a in arms]
        row += [fmt(r[f"normdiff_{a}"], 2) for a in arms if f"normdiff_{a}" in bal.columns]
        row += [pval(r.get("f_p_value")), pval(r.get("ri_p_value"))]
        rows.append(row)
    nd = [a for a in arms if f"normdiff_{a}" in bal.columns]
    joint_path = folder / "balance_joint.csv"
    notes = "Baseline means by arm; normalised differences against control; p-values of the F-test of equal means " \
            "across arms and its randomisation-inference (RI) counterpart (assignment re-drawn within strata)."
    joint = read_table(joint_path)
    if joint is not None:
        joint = joint[joint["sample"] == ALL] if "sample" in joint.columns else joint
        notes += " Joint tests of all covariates: " + "; ".join(
            f"{r['comparison']}: F p = {pval(r['f_p_value'])}, RI p = {pval(r['ri_p_value'])}" for _, r in joint.iterrows()) + "."
    return {"caption": "Balance at baseline", "first_col_left": True,
            "columns": ["Covariate"] + [f"mean: {a.replace('_', ' ')}" for a in arms] + [f"nd: {a.replace('_', ' ')}" for a in nd]
                       + ["p (F)", "p (RI)"], "rows": rows, "notes": notes}


def attrition_tables(folder: Path, decimals: int, design_note: str) -> list[dict]:
    out = []
    att = read_table(folder / "attrition.csv")
    if att is not None:
        att = att[(att["model"] == POOLED) & (att["sample"] == ALL)] if "model" in att.columns else att
    if att is not None and not att.empty:
        rows = [[TERM_LABELS.get(r["term"], r["term"]), fmt(r["estimate"], 3), f"({fmt(r['std_error'], 3)})", pval(r["p_value"]),
                 fmt(r["control_mean"], 3)] for _, r in att.iterrows()]
        joint = _joint_test_words(att.iloc[0])
        out.append({"caption": "Attrition by arm (follow-up interviews missing)", "first_col_left": True,
                    "columns": ["Regressor", "Effect on attrition", "SE", "p", "Control attrition"], "rows": rows,
                    "notes": f"Linear probability model of attrition on the arms. {design_note} "
                             f"Joint test that every arm term is zero: {joint}."})
    lee = read_table(folder / "lee_bounds.csv")
    if lee is not None:
        rows = [[r["comparison"], r["sample"], fmt(r["lower"], decimals), fmt(r["upper"], decimals),
                 f"[{fmt(r['ci_low'], decimals)}, {fmt(r['ci_high'], decimals)}]", fmt(r["trim_share"], 3)]
                for _, r in lee.iterrows()]
        out.append({"caption": "Lee (2009) bounds on the effect on the primary outcome", "first_col_left": True,
                     "columns": ["Comparison", "Owners", "Lower bound", "Upper bound", "95% CI (identified set)",
                                 "Share trimmed"],
                     "rows": rows, "notes": "Trimming within strata the arm with less attrition; cluster-bootstrap CI."})
    return out


def _joint_test_words(row: pd.Series) -> str:
    """``F(q, df) p = ...`` of the attrition table's joint test (the df where the table has them)."""
    p = pval(row["joint_p_value"]) if "joint_p_value" in row.index else "–"
    if "joint_df_denom" not in row.index or not np.isfinite(row["joint_df_denom"]):
        return f"p = {p}"
    if "joint_f_stat" in row.index and not np.isfinite(row["joint_f_stat"]):
        # AbsorbedResults.f_test: the covariance of the tested terms has lower rank than their number
        return f"not reported (the covariance of the {int(row['joint_df_num'])} tested terms is singular)"
    return f"F({int(row['joint_df_num'])}, {int(row['joint_df_denom'])}) p = {p}"


def simulation_table(folder: Path) -> dict | None:
    """The simulation study's table (``folder``: the simulation stage's reports/simulation)."""
    path = folder / "simulation.csv"
    if not path.exists():
        return None
    sim = pd.read_csv(path)
    meta = read_json(folder / "simulation.json")
    rows = [[VARIANT_LABELS.get(r.get("variant", ""), str(r.get("variant", ""))), str(r.get("outcome", "")).capitalize(),
             effect_label(r["effect"]), owners_label(r["sex"]), fmt(r["truth"], 1), fmt(r["mean_estimate"], 2),
             fmt(r["bias_in_sd"], 3), f"{100 * r['coverage']:.1f}%", fmt(r["se_over_sd"], 2)]
            for _, r in sim.iterrows()]
    return {"caption": f"Simulation study: {meta.get('draws', '?')} datasets drawn from the generator", "first_col_left": True,
            "columns": ["Variant", "Outcome", "Effect", "Owners", "Truth", "Mean estimate", "Bias (SD)", "95% CI coverage",
                        "SE / SD"], "rows": rows,
            "notes": f"Standard errors: {meta.get('vcov', meta.get('estimator', {}).get('vcov', 'see params'))}. "
                     "Targets: |bias| below 0.05 standard deviations of the estimate; coverage between 93% and 97%. "
                     + " ".join(f"{VARIANT_LABELS[v]}: {VARIANT_NOTES[v]}." for v in VARIANT_LABELS
                                if v in meta.get("variants", VARIANT_LABELS))
                     + " See pipeline/simulation.py."}


def few_cluster_table(folder: Path) -> dict | None:
    """CR1, CR2 and the wild bootstrap side by side with 20 clusters (the simulation stage's ``folder``)."""
    path = folder / "few_clusters.csv"
    if not path.exists():
        return None
    few = pd.read_csv(path)
    meta = read_json(folder / "simulation.json").get("few_clusters", {})
    rows = [[effect_label(r["effect"]), owners_label(r["sex"]), fmt(r["truth"], 1),
             *[f"{100 * r[f'coverage_{m}']:.1f}% ({100 * r[f'mc_se_{m}']:.1f})" for m in ("cr1", "cr2", "wild")]]
            for _, r in few.iterrows()]
    wild = meta.get("wild_bootstrap", {})
    return {"caption": f"Few clusters: coverage of the true effect with {int(few['n_clusters'].median())} markets "
                       f"({int(few['draws'].iloc[0])} datasets)", "first_col_left": True,
            "columns": ["Effect", "Owners", "Truth", "CR1 95% CI", "CR2 95% CI", "Wild bootstrap test"], "rows": rows,
            "notes": "Share of datasets whose 95% interval contains the true effect (CR1: t with G - 1 degrees of "
                     "freedom; CR2: t with Bell-McCaffrey degrees of freedom), or whose wild cluster restricted "
                     "bootstrap test of the true value does not reject at 5% "
                     f"({wild.get('weights', '?')} weights, {wild.get('reps', '?')} bootstrap samples); Monte Carlo SE in "
                     "brackets. The same generator as above with 2 regions x 2 sectors of 5 markets of 150 firms and no "
                     "typing errors; unwinsorised profit, by_gender model."}
