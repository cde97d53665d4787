"""The evidence part of the reviewer report: the headline in words, pooled effects for women and
men, forest plots with shrinkage, and every table also as CSV and LaTeX (booktabs)."""
from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.io import read_json  # noqa: E402
from pipeline.report_tables import fmt  # noqa: E402
from pipeline.report_figures import SEX_COLOURS, figure_png, first_row, interval_bars, plot_interval  # noqa: E402

INTERVENTION_WORDS = {"skills": "business training (skills)", "capital": "capital access (grants, loans, credit)"}
GROUP_WORDS = {"women": "women's", "men": "men's", "all": "all owners'", "diff": "the women − men difference in"}
SCALE_WORDS = {"pct_of_control_mean": "% of the control mean", "usd_ppp_month": "USD PPP per month"}


def headline(pooled: pd.DataFrame, decimals: int) -> list[str]:
    """One sentence per intervention on the unit-free scale: women's and men's pooled effects."""
    out = []
    pct = pooled[pooled["scale"] == "pct_of_control_mean"]
    for intervention, words in INTERVENTION_WORDS.items():
        parts = []
        for group in ("women", "men", "all"):
            r = pct[(pct["intervention"] == intervention) & (pct["group"] == group)]
            if r.empty:
                continue
            r = r.iloc[0]
            parts.append(f"{GROUP_WORDS[group]} monthly profit by {fmt(r['mu_mean'], decimals)}% of the control mean "
                         f"(95% interval {fmt(r['mu_lower'], decimals)} to {fmt(r['mu_upper'], decimals)}; "
                         f"{int(r['n_studies'])} {'study' if int(r['n_studies']) == 1 else 'studies'})")
        if parts:
            out.append(f"Across the studies, {words} changed " + "; ".join(parts) + ".")
    return out


def forest_png(effects: pd.DataFrame, shrunk: pd.DataFrame, pooled_row: pd.Series, title: str, unit: str) -> str:
    """Study estimates (95% CI) beside their shrunk posterior effects, the pooled mean and the
    predictive interval for a new site."""
    n = len(effects)
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * (n + 2)))
    ys = list(range(n + 1, 1, -1))
    labels = [f"{r['study']} ({r['arm'].removeprefix('arm_').removeprefix('treat_')})" for _, r in effects.iterrows()]
    interval_bars(ax, ys, effects["ci_low"], effects["ci_high"], "#444444", capsize=2)
    ax.plot(effects["effect"], ys, "s", color="#444444", ms=4, label="study estimate (95% CI)")
    if not shrunk.empty:
        shrunk_ys = [y - 0.2 for y in ys]
        interval_bars(ax, shrunk_ys, shrunk["theta_lower"], shrunk["theta_upper"], "#1f77b4", capsize=2)
        ax.plot(shrunk["theta_mean"], shrunk_ys, "o", color="#1f77b4", ms=4, label="shrunk (posterior, 95%)")
    m = pooled_row
    interval_bars(ax, [1], [m["mu_lower"]], [m["mu_upper"]], "#d62728", capsize=3)
    ax.plot([m["mu_mean"]], [1], "D", color="#d62728", ms=6, label="pooled mean (95%)")
    ax.plot([m["predictive_lower"], m["predictive_upper"]], [0.6, 0.6], color="#d62728", lw=1, ls="--",
            label="new site (predictive 95%)")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(ys + [1])
    ax.set_yticklabels(labels + ["Pooled"])
    ax.set_xlabel(unit)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return figure_png(fig)


def gender_pooled_png(pooled: pd.DataFrame) -> str | None:
    """Pooled women and men effects for each intervention (unit-free scale)."""
    pct = pooled[(pooled["scale"] == "pct_of_control_mean") & pooled["group"].isin(["women", "men"])]
    if pct.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 2.8))
    for i, intervention in enumerate(INTERVENTION_WORDS):
        for k, group in enumerate(("women", "men")):
            r = first_row(pct[(pct["intervention"] == intervention) & (pct["group"] == group)])
            if r is not None:
                plot_interval(ax, r, i + 0.15 - 0.3 * k, "mu_mean", "mu_lower", "mu_upper", SEX_COLOURS[group],
                              group if i == 0 else None)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks([0, 1])
    ax.set_yticklabels(["Skills", "Capital"])
    ax.set_xlabel("Pooled effect on monthly profit, % of the control mean (95% interval)")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=g.capitalize()) for g, c in SEX_COLOURS.items()]
    ax.legend(handles=handles, fontsize=8, frameon=False)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return figure_png(fig)


def pooled_table(pooled: pd.DataFrame, decimals: int) -> dict:
    rows = [[INTERVENTION_WORDS[r["intervention"]].split(" (")[0], r["group"], SCALE_WORDS[r["scale"]], str(int(r["n_studies"])),
             fmt(r["mu_mean"], decimals), f"[{fmt(r['mu_lower'], decimals)}, {fmt(r['mu_upper'], decimals)}]",
             fmt(r["tau_mean"], decimals), f"[{fmt(r['predictive_lower'], decimals)}, {fmt(r['predictive_upper'], decimals)}]",
             fmt(r["pooling_overall"], 2), fmt(r.get("re_pm_estimate"), decimals),
             f"[{fmt(r.get('re_pm_ci_low'), decimals)}, {fmt(r.get('re_pm_ci_high'), decimals)}]",
             _coverage(r)]
            for _, r in pooled.iterrows()]
    return {"caption": "Pooled effects across studies (Bayesian normal-normal hierarchical model)", "first_col_left": True,
            "columns": ["Intervention", "Owners", "Scale", "Studies", "Pooled mean", "95% interval", "Between-study SD",
                        "New site, 95%", "Pooling", "Random effects (PM)", "95% CI (PM)", "Coverage of the interval"],
            "rows": rows,
            "notes": "Posterior of the hypermean computed exactly by integration over the between-study SD; "
                     "priors as recorded in data/synthesis/synthesize_summary.json. Pooling: the Gelman-Pardoe pooling factor "
                     "(0 = no pooling, 1 = full pooling). PM: frequentist random effects, Paule-Mandel tau², as a cross-check. "
                     "Coverage: the share of meta-analyses simulated at the pooled mean and the median "
                     "between-study SD, with these studies' standard errors and the same priors, whose interval "
                     "contains the pooled mean (Monte Carlo SE)."}


def _coverage(r) -> str:
    value = r.get("coverage_mu")
    if value is None or not np.isfinite(value):
        return "not simulated"
    return f"{100 * value:.1f}% ({100 * r['coverage_mu_mc_se']:.1f}), {int(r['coverage_draws'])} draws"


def effects_table(effects: pd.DataFrame, decimals: int) -> dict:
    """The synthesis inputs: each study effect on each scale, beside its estimate in the study's own unit."""
    return {"caption": "Study effects on one scale (the synthesis inputs)", "first_col_left": True,
            "columns": ["Study", "Arm", "Intervention", "Owners", "Scale", "Effect", "SE", "Native estimate", "Native unit",
                        "Control mean", "Source"],
            "rows": [[r["study"], str(r["arm"]), r["intervention"], r["group"], SCALE_WORDS[r["scale"]],
                      fmt(r["effect"], decimals), fmt(r["std_error"], decimals), fmt(r["estimate_native"], 3),
                      str(r["native_unit"]) if pd.notna(r["native_unit"]) else "–", fmt(r["control_mean"], decimals),
                      r["source"]] for _, r in effects.iterrows()],
            "notes": "Percent of the control mean: 100 × effect / control mean (the control mean taken as known), or 100 × "
                     "the coefficient for outcomes already in logs (log points). Native: the estimate in the study's own "
                     "currency per its recall period (its configuration's conversion factor)."}


def meta_regression_table(meta: pd.DataFrame, decimals: int) -> dict:
    """The slope of each moderator (the intercepts are in data/synthesis/meta_regression.csv)."""
    rows = []
    if "moderator" in meta.columns:
        for _, r in meta[meta["term"] != "intercept"].iterrows():
            rows.append([MODERATOR_WORDS.get(r["moderator"], r["moderator"]), r["group"], SCALE_WORDS[r["scale"]],
                         str(int(r["n_studies"])), fmt(r["estimate"], decimals), fmt(r["std_error"], decimals),
                         f"[{fmt(r['ci_low'], decimals)}, {fmt(r['ci_high'], decimals)}]", fmt(r["tau2"], decimals),
                         str(r["note"]) if isinstance(r["note"], str) and r["note"] else "–"])
    return {"caption": "Meta-regression on study moderators (one moderator at a time)", "first_col_left": True,
            "columns": ["Moderator", "Owners", "Scale", "Effects", "Slope", "SE", "95% CI", "Residual tau²", "Note"],
            "rows": rows or [["no moderator varies among three or more studies", "", "", "", "", "", "", "", ""]],
            "notes": "Mixed-effects meta-regression (method-of-moments tau², truncated at 0; z intervals), skills and capital "
                     "studies together, over the effects where the moderator is recorded. With this few studies a slope is "
                     "descriptive, not causal: moderators vary together with everything else about a study."}


MODERATOR_WORDS = {"capital_intervention": "Capital (vs skills) intervention", "share_female_owners": "Share of women owners",
                   "lender_targeted_women": "Lender targeted women"}


def evidence_context(synthesis_dir: Path, decimals: int) -> dict:
    """Everything the report shows of the synthesis stage's outputs."""
    pooled = pd.read_csv(synthesis_dir / "pooled.csv")
    effects = pd.read_csv(synthesis_dir / "study_effects.csv")
    shrunk = pd.read_csv(synthesis_dir / "shrunk.csv")
    summary = read_json(synthesis_dir / "synthesize_summary.json")
    meta = pd.read_csv(synthesis_dir / "meta_regression.csv")
    forests = []
    for _, row in pooled.iterrows():
        key = ((effects["scale"] == row["scale"]) & (effects["intervention"] == row["intervention"])
               & (effects["group"] == row["group"]))
        skey = ((shrunk["scale"] == row["scale"]) & (shrunk["intervention"] == row["intervention"])
                & (shrunk["group"] == row["group"]))
        title = f"{INTERVENTION_WORDS[row['intervention']]}: {row['group']} ({SCALE_WORDS[row['scale']]})"
        forests.append({"title": title, "png": forest_png(effects[key], shrunk[skey], row, title, SCALE_WORDS[row["scale"]])})
    metrics = {f"{r['intervention']}_{r['group']}_{r['scale']}": {"estimate": round(float(r["mu_mean"]), 6),
                                                                   "lower": round(float(r["mu_lower"]), 6),
                                                                   "upper": round(float(r["mu_upper"]), 6),
                                                                   "n_studies": int(r["n_studies"])}
               for _, r in pooled.iterrows()}
    return {"headline": headline(pooled, decimals), "gender_figure": gender_pooled_png(pooled), "forests": forests,
            "tables": [pooled_table(pooled, decimals), effects_table(effects, decimals), meta_regression_table(meta, decimals)],
            "not_pooled": summary.get("not_pooled", []),
            "priors": summary.get("priors_note", ""), "n_studies": int(effects["study"].nunique()), "metrics": metrics}


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"), ("_", r"\_"),
                 ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text.replace("−", "$-$").replace("×", r"$\times$").replace("²", r"$^2$")


def table_latex(table: dict) -> str:
    """A booktabs table (no package beyond booktabs)."""
    cols = table["columns"]
    spec = "l" + "r" * (len(cols) - 1)
    lines = [r"\begin{table}[htbp]\centering", f"\\caption{{{_latex_escape(table['caption'])}}}",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(_latex_escape(str(c)) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(str(c)) for c in row) + r" \\" for row in table["rows"]]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.get("notes"):
        lines.append(f"\\par\\footnotesize {_latex_escape(table['notes'])}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def table_csv(table: dict) -> str:
    buf = io.StringIO()
    pd.DataFrame(table["rows"], columns=table["columns"]).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def export_tables(tables: list[dict], owners: list[str]) -> dict[str, str]:
    """File name -> text for every table: ``<owner>_<nn>_<caption slug>.csv`` and ``.tex``."""
    files, counts = {}, {}
    for table, owner in zip(tables, owners):
        counts[owner] = counts.get(owner, 0) + 1
        slug = re.sub(r"[^a-z0-9]+", "_", table["caption"].casefold()).strip("_")[:48]
        stem = f"{owner}_{counts[owner]:02d}_{slug}"
        files[f"{stem}.csv"] = table_csv(table)
        files[f"{stem}.tex"] = table_latex(table)
    return dict(sorted(files.items()))
