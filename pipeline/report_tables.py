"""Report tables for the reviewer: each is {"caption", "columns", "rows", "notes"} with text
cells, rendered by one macro in the template (which escapes every cell)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import read_json

TERM_LABELS = {"treat_skills": "Training only (skills)", "treat_capital": "Grant only (capital)",
               "treat_skills_x_treat_capital": "Skills × capital"}
SEX_LABELS = {"women": "women", "men": "men", "diff": "women − men"}
SEXES = {"women": "Women", "men": "Men"}


def fmt(value, decimals: int = 1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:,.{decimals}f}"


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
    sub, outcomes = _model_rows(results, "pooled", outcomes)
    if sub.empty or not outcomes:
        return None
    rows = []
    for term in dict.fromkeys(sub["term"]):
        est, se = [TERM_LABELS.get(term, term.removeprefix("arm_").replace("_", " "))], [""]
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
    sub, outcomes = _model_rows(results, "by_gender", outcomes)
    if sub.empty or not outcomes:
        return None
    rows = []
    for term, label in TERM_LABELS.items():
        if not (sub["term"] == f"{term}_women").any():
            continue
        for sex in ("women", "men"):
            cells_est, cells_se = [f"{label}: {SEX_LABELS[sex]}"], [""]
            for o in outcomes:
                r = sub[(sub["outcome"] == o) & (sub["term"] == f"{term}_{sex}")]
                if r.empty:
                    cells_est.append(""), cells_se.append("")
                    continue
                r = r.iloc[0]
                cells_est.append(f"{fmt(r['estimate'], decimals)}{stars(r['p_value'])}")
                cells_se.append(f"({fmt(r['std_error'], decimals)})")
            rows += [cells_est, cells_se]
        diff = [f"p-value, equal effects ({label})"]
        for o in outcomes:
            r = sub[(sub["outcome"] == o) & (sub["term"] == f"{term}_diff")]
            diff.append(pval(r.iloc[0]["p_value"]) if not r.empty else "")
        rows.append(diff)
    footer = [["Observations"] + [str(int(sub[sub["outcome"] == o]["n_obs"].iloc[0])) for o in outcomes],
              ["Clusters"] + [_int(sub[sub["outcome"] == o]["n_clusters"].iloc[0]) for o in outcomes]]
    for sex in ("women", "men"):
        footer.append([f"Control mean, {sex}"] + [
            fmt(_first(sub[(sub["outcome"] == o) & (sub["term"].str.endswith(f"_{sex}"))]["control_mean"]), decimals)
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
    sub = results[(results["outcome"] == outcome) & (results["model"] == "by_gender")]
    if sub.empty or "transform" not in sub.columns:
        return None
    transforms = list(dict.fromkeys(sub["transform"]))
    rows = []
    for term, label in TERM_LABELS.items():
        for sex in ("women", "men"):
            row = [f"{label}: {SEX_LABELS[sex]}"]
            for t in transforms:
                r = sub[(sub["transform"] == t) & (sub["term"] == f"{term}_{sex}")]
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
    sub = sub[(sub["model"] == "by_gender") & ~sub["term"].str.endswith("_diff")]
    if sub.empty or "q_value" not in sub.columns:
        return None
    wild = "wild_p_value" in sub.columns and sub["wild_p_value"].notna().any()
    rows = [[r["outcome"], TERM_LABELS.get(r["term"].rsplit("_", 1)[0], r["term"]),
             SEX_LABELS.get(r["term"].rsplit("_", 1)[1], ""), pval(r["p_value"]),
             *([pval(r["wild_p_value"])] if wild else []), pval(r["q_value"]), fmt(r.get("mde"), 1)]
            for _, r in sub.iterrows()]
    notes = ("q: Anderson (2008) sharpened false-discovery-rate q-values within the family of business-income "
             "outcomes. MDE: minimum detectable effect at 80% power, 5% two-sided, from the estimated SE.")
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
    bal = bal[bal["sample"] == "all"] if "sample" in bal.columns else bal
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
        joint = joint[joint["sample"] == "all"] if "sample" in joint.columns else joint
        notes += " Joint tests of all covariates: " + "; ".join(
            f"{r['comparison']}: F p = {pval(r['f_p_value'])}, RI p = {pval(r['ri_p_value'])}" for _, r in joint.iterrows()) + "."
    return {"caption": "Balance at baseline", "first_col_left": True,
            "columns": ["Covariate"] + [f"mean: {a.replace('_', ' ')}" for a in arms] + [f"nd: {a.replace('_', ' ')}" for a in nd]
                       + ["p (F)", "p (RI)"], "rows": rows, "notes": notes}


def attrition_tables(folder: Path, decimals: int, design_note: str) -> list[dict]:
    out = []
    att = read_table(folder / "attrition.csv")
    if att is not None:
        att = att[(att["model"] == "pooled") & (att["sample"] == "all")] if "model" in att.columns else att
    if att is not None and not att.empty:
        rows = [[TERM_LABELS.get(r["term"], r["term"]), fmt(r["estimate"], 3), f"({fmt(r['std_error'], 3)})", pval(r["p_value"]),
                 fmt(r["control_mean"], 3)] for _, r in att.iterrows()]
        joint = pval(att["joint_p_value"].iloc[0]) if "joint_p_value" in att.columns and len(att) else "–"
        out.append({"caption": "Attrition by arm (follow-up interviews missing)", "first_col_left": True,
                    "columns": ["Regressor", "Effect on attrition", "SE", "p", "Control attrition"], "rows": rows,
                    "notes": f"Linear probability model of attrition on the arms. {design_note} Joint test p = {joint}."})
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


def simulation_table(folder: Path) -> dict | None:
    """The simulation study's table (``folder``: the simulation stage's reports/simulation)."""
    path = folder / "simulation.csv"
    if not path.exists():
        return None
    sim = pd.read_csv(path)
    meta = read_json(folder / "simulation.json")
    rows = [[str(r.get("variant", "")), str(r.get("outcome", "")), str(r["effect"]), str(r["sex"]), fmt(r["truth"], 1),
             fmt(r["mean_estimate"], 2), fmt(r["bias_in_sd"], 3), f"{100 * r['coverage']:.1f}%", fmt(r["se_over_sd"], 2)]
            for _, r in sim.iterrows()]
    return {"caption": f"Simulation study: {meta.get('draws', '?')} datasets drawn from the generator", "first_col_left": True,
            "columns": ["Variant", "Outcome", "Effect", "Owners", "Truth", "Mean estimate", "Bias (SD)", "95% CI coverage",
                        "SE / SD"], "rows": rows,
            "notes": f"Standard errors: {meta.get('vcov', meta.get('estimator', {}).get('vcov', 'see params'))}. "
                     "Targets: |bias| below 0.05 standard deviations of the estimate; coverage between 93% and 97%. "
                     "no_typos: the generator without extra-zero typing errors, so the unwinsorised outcome is exactly "
                     "the one the truth is defined on; as_configured: the default survey. See pipeline/simulation.py."}


def few_cluster_table(folder: Path) -> dict | None:
    """CR1, CR2 and the wild bootstrap side by side with 20 clusters (the simulation stage's ``folder``)."""
    path = folder / "few_clusters.csv"
    if not path.exists():
        return None
    few = pd.read_csv(path)
    meta = read_json(folder / "simulation.json").get("few_clusters", {})
    rows = [[str(r["effect"]), str(r["sex"]), fmt(r["truth"], 1),
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
