"""Report: the reviewer's entry point (``reports/index.html``), metrics and tidy tables.

The page is one self-contained HTML file: figures are embedded PNGs, there are no scripts and
no external requests, every text that comes from data is escaped (Jinja2 autoescape), and
nothing in it depends on when it was built, so reruns are byte-identical.
"""
from __future__ import annotations

import base64
import io
from importlib import metadata
from pathlib import Path

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import paths  # noqa: E402
from pipeline.method_note import fixed_effect_words, method_note, variance_words  # noqa: E402
from pipeline.io import read_json, write_csv, write_json, write_text  # noqa: E402

# Truth keys (truth.json "itt") and the by_gender terms that estimate them.
EFFECTS = {
    "skills": ("treat_skills", "Training only (skills)"),
    "capital": ("treat_capital", "Grant only (capital)"),
    "skills_x_capital": ("treat_skills_x_treat_capital", "Skills × capital interaction"),
}
SEXES = {"women": "Women", "men": "Men"}
PACKAGES = ["pandas", "numpy", "scipy", "statsmodels", "pyarrow", "dvc", "papermill", "matplotlib"]


def load_results(studies: list[str]) -> pd.DataFrame:
    """All studies' tidy estimates in one table (study order as in params.yaml)."""
    frames = [pd.read_csv(paths.processed_dir(s) / "results.csv") for s in studies]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gender_effects(results: pd.DataFrame, study: str, outcome: str) -> pd.DataFrame:
    """Effects for women, for men and their difference, one row per effect (by_gender model)."""
    sub = results[(results["study"] == study) & (results["outcome"] == outcome) & (results["model"] == "by_gender")]
    if "transform" in sub.columns:
        sub = sub[sub["transform"] == "level"]
    rows = []
    for key, (term, label) in EFFECTS.items():
        for sex in ("women", "men", "diff"):
            hit = sub[sub["term"] == f"{term}_{sex}"]
            if hit.empty:
                continue
            r = hit.iloc[0]
            rows.append({"effect": key, "label": label, "sex": sex, "estimate": r["estimate"],
                         "std_error": r["std_error"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "p_value": r["p_value"], "control_mean": r.get("control_mean", np.nan),
                         "effect_pct_of_control_mean": r.get("effect_pct_of_control_mean", np.nan),
                         "n_obs": r["n_obs"], "n_clusters": r.get("n_clusters", np.nan)})
    return pd.DataFrame(rows)


def truth_comparison(effects: pd.DataFrame, truth: dict) -> pd.DataFrame:
    """Estimate beside the true value; ``within_2se`` is |estimate - truth| <= 2 SE."""
    out = effects.copy()
    itt = truth["itt"]
    diffs = truth.get("itt_difference_women_minus_men", {})

    def true_value(row):
        if row["sex"] == "diff":
            if row["effect"] in diffs:
                return float(diffs[row["effect"]])
            return float(itt[row["effect"]]["women"]) - float(itt[row["effect"]]["men"])
        return float(itt[row["effect"]][row["sex"]])

    out["truth"] = out.apply(true_value, axis=1)
    out["error_in_se"] = (out["estimate"] - out["truth"]) / out["std_error"]
    out["within_2se"] = out["error_in_se"].abs() <= 2
    return out


def figure_png(fig) -> str:
    """A figure as base64 PNG without the software-version metadata (deterministic bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def gender_figure(effects: pd.DataFrame, title: str, unit: str):
    """Effects with 95% CIs for women and men side by side; true values as open diamonds."""
    main = effects[effects["sex"].isin(["women", "men"])]
    labels = list(dict.fromkeys(main["label"]))
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.8 * len(labels)))
    colours = {"women": "#b2182b", "men": "#2166ac"}
    for i, label in enumerate(labels):
        for j, sex in enumerate(("women", "men")):
            r = main[(main["label"] == label) & (main["sex"] == sex)]
            if r.empty:
                continue
            r = r.iloc[0]
            y = i + (-0.15 if sex == "women" else 0.15)
            ax.errorbar(r["estimate"], y, xerr=[[r["estimate"] - r["ci_low"]], [r["ci_high"] - r["estimate"]]],
                        fmt="o", color=colours[sex], capsize=3, label=SEXES[sex] if i == 0 else None)
            if "truth" in r and pd.notna(r.get("truth")):
                ax.plot(r["truth"], y, marker="D", mfc="none", mec="black", ms=7,
                        label="True value" if (i == 0 and j == 0) else None)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"Intention-to-treat effect ({unit}), 95% CI")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return fig


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def project_version() -> str:
    try:
        return metadata.version("microenterprise-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str) -> str | None:
    import subprocess
    try:
        proc = subprocess.run(["git", *args], cwd=paths.root(), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state() -> dict:
    """The commit the code came from and whether tracked source files differed from it.

    DVC rewrites dvc.lock and the git-tracked metrics while the pipeline runs, so those two
    are not counted as "dirty"; nothing here depends on the clock.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)dvc.lock", ":(exclude)reports/metrics.json", ":(exclude,glob)**/.gitignore")
    return {"commit": commit or "unknown", "dirty": bool(status) if status is not None else None}


def input_hashes(lock_path: Path | None = None) -> list[dict]:
    """md5 of every stage input recorded in dvc.lock (raw data, configs, code, notebooks)."""
    import yaml

    lock_path = lock_path or paths.root() / "dvc.lock"
    if not lock_path.exists():
        return []
    lock = yaml.safe_load(lock_path.read_text()) or {}
    rows = {}
    for stage, spec in (lock.get("stages") or {}).items():
        if stage == "report":  # its own entry is from the previous run: not an input of this one
            continue
        for dep in spec.get("deps", []):
            rows.setdefault(dep["path"], {"path": dep["path"], "md5": dep.get("md5", ""), "stages": []})["stages"].append(stage)
    return [{**r, "stages": ", ".join(r["stages"])} for _, r in sorted(rows.items())]


def previous_metrics(path: str = "reports/metrics.json") -> dict | None:
    """The metrics of the last committed version (HEAD), to show how the estimates moved."""
    import json

    text = _git("show", f"HEAD:{path}")
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def metric_changes(current: dict, previous: dict | None) -> list[dict]:
    """Estimate now vs at HEAD for every key estimate present in both."""
    if not previous:
        return []
    rows = []
    for study, block in current.items():
        if not isinstance(block, dict):
            continue
        for key, entry in block.items():
            old = (previous.get(study) or {}).get(key) if isinstance(previous.get(study), dict) else None
            if isinstance(entry, dict) and isinstance(old, dict) and "estimate" in entry and "estimate" in old:
                rows.append({"study": study, "effect": key, "previous": old["estimate"], "current": entry["estimate"],
                             "change": entry["estimate"] - old["estimate"]})
    return rows


def fmt(value, decimals: int = 1) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:,.{decimals}f}"


def headline_sentence(row: pd.Series, unit: str, decimals: int) -> str:
    who = SEXES.get(row["sex"], row["sex"])
    pct = row.get("effect_pct_of_control_mean")
    pct_txt = f" ({fmt(pct, 0)}% of the control mean)" if pd.notna(pct) else ""
    return (f"{who}: {fmt(row['estimate'], decimals)} {unit}{pct_txt}, "
            f"95% CI {fmt(row['ci_low'], decimals)} to {fmt(row['ci_high'], decimals)}")


def metrics(per_study: dict[str, pd.DataFrame], results: pd.DataFrame, studies: list[str]) -> dict:
    """Key estimates for ``dvc metrics``: per study, the pooled effect of every arm on the primary
    outcome and, where estimable, the effects for women and men and their difference."""
    out: dict = {}
    for study, eff in per_study.items():
        primary = study_spec(study)["primary_outcome"]
        block: dict = {"primary_outcome": primary}
        pooled = _level(results[(results["study"] == study) & (results["outcome"] == primary) & (results["model"] == "pooled")])
        for _, r in pooled.iterrows():
            block[f"pooled_{r['term']}"] = {"estimate": round(float(r["estimate"]), 6), "se": round(float(r["std_error"]), 6)}
        if eff.empty:  # arms coded as their own dummies (real studies): the by-gender rows as estimated
            by_gender = _level(results[(results["study"] == study) & (results["outcome"] == primary)
                                       & (results["model"] == "by_gender")])
            for _, r in by_gender.iterrows():
                block[str(r["term"])] = {"estimate": round(float(r["estimate"]), 6), "se": round(float(r["std_error"]), 6)}
        for _, r in eff.iterrows():
            entry = {"estimate": round(float(r["estimate"]), 6), "se": round(float(r["std_error"]), 6)}
            if "truth" in eff.columns:
                entry["truth"] = round(float(r["truth"]), 6)
                entry["within_2se"] = bool(r["within_2se"])
            block[f"{r['effect']}_{r['sex']}"] = entry
        out[study] = block
    return out



# ------------------------------------------------------------------------------------------
# Tables for the reviewer: each is {"caption", "columns", "rows", "notes"} with text cells,
# rendered by one macro in the template (which escapes every cell).
# ------------------------------------------------------------------------------------------
TERM_LABELS = {"treat_skills": "Training only (skills)", "treat_capital": "Grant only (capital)",
               "treat_skills_x_treat_capital": "Skills × capital"}
SEX_LABELS = {"women": "women", "men": "men", "diff": "women − men"}


def stars(p: float) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return "***" if p < 0.01 else "**" if p < 0.05 else "*" if p < 0.10 else ""


def pval(p) -> str:
    if p is None or (isinstance(p, float) and not np.isfinite(p)):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def pooled_table(results: pd.DataFrame, outcomes: list[str], decimals: int, note: str) -> dict | None:
    """Effects of every arm on every outcome, all owners (the pooled model): one column per outcome."""
    sub = _level(results)
    sub = sub[sub["model"] == "pooled"]
    outcomes = [o for o in outcomes if o in set(sub["outcome"])]
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
    sub = _level(results)
    sub = sub[sub["model"] == "by_gender"]
    outcomes = [o for o in outcomes if o in set(sub["outcome"])]
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
    first = sub[sub["outcome"] == outcomes[0]]
    footer = [["Observations"] + [str(int(sub[sub["outcome"] == o]["n_obs"].iloc[0])) for o in outcomes],
              ["Clusters"] + [_int(sub[sub["outcome"] == o]["n_clusters"].iloc[0]) for o in outcomes]]
    for sex in ("women", "men"):
        footer.append([f"Control mean, {sex}"] + [
            fmt(_first(sub[(sub["outcome"] == o) & (sub["term"].str.endswith(f"_{sex}"))]["control_mean"]), decimals)
            for o in outcomes])
    del first
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
                row.append("" if r.empty else f"{fmt(r.iloc[0]['estimate'], decimals if t not in ('log', 'ihs') else 3)}"
                                              f"{stars(r.iloc[0]['p_value'])} ({fmt(r.iloc[0]['std_error'], decimals if t not in ('log', 'ihs') else 3)})")
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
    rows = [[r["outcome"], TERM_LABELS.get(r["term"].rsplit("_", 1)[0], r["term"]), SEX_LABELS.get(r["term"].rsplit("_", 1)[1], ""),
             pval(r["p_value"]), *([pval(r["wild_p_value"])] if wild else []), pval(r["q_value"]), fmt(r.get("mde"), 1)]
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


def balance_table(study: str, decimals: int) -> dict | None:
    bal = read_table(paths.processed_dir(study) / "balance.csv")
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
    joint_path = paths.processed_dir(study) / "balance_joint.csv"
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


def attrition_tables(study: str, decimals: int, design_note: str) -> list[dict]:
    out = []
    att = read_table(paths.processed_dir(study) / "attrition.csv")
    if att is not None:
        att = att[(att["model"] == "pooled") & (att["sample"] == "all")] if "model" in att.columns else att
    if att is not None and not att.empty:
        rows = [[TERM_LABELS.get(r["term"], r["term"]), fmt(r["estimate"], 3), f"({fmt(r['std_error'], 3)})", pval(r["p_value"]),
                 fmt(r["control_mean"], 3)] for _, r in att.iterrows()]
        joint = pval(att["joint_p_value"].iloc[0]) if "joint_p_value" in att.columns and len(att) else "–"
        out.append({"caption": "Attrition by arm (follow-up interviews missing)", "first_col_left": True,
                    "columns": ["Regressor", "Effect on attrition", "SE", "p", "Control attrition"], "rows": rows,
                    "notes": f"Linear probability model of attrition on the arms. {design_note} Joint test p = {joint}."})
    lee = read_table(paths.processed_dir(study) / "lee_bounds.csv")
    if lee is not None:
        rows = [[r["comparison"], r["sample"], fmt(r["lower"], decimals), fmt(r["upper"], decimals),
                 f"[{fmt(r['ci_low'], decimals)}, {fmt(r['ci_high'], decimals)}]", fmt(r["trim_share"], 3)]
                for _, r in lee.iterrows()]
        out.append({"caption": "Lee (2009) bounds on the effect on the primary outcome", "first_col_left": True,
                     "columns": ["Comparison", "Owners", "Lower bound", "Upper bound", "95% CI (identified set)", "Share trimmed"],
                     "rows": rows, "notes": "Trimming within strata the arm with less attrition; cluster-bootstrap CI."})
    return out


def qte_figure(study: str, unit: str) -> str | None:
    qte = read_table(paths.processed_dir(study) / "qte.csv")
    if qte is None:
        return None
    qte = qte[qte["sample"].isin(["women", "men"])]
    terms = [t for t in ("treat_skills", "treat_capital") if t in set(qte["term"])]
    if qte.empty or not terms:
        return None
    fig, axes = plt.subplots(1, len(terms), figsize=(4.2 * len(terms), 3.2), sharey=True, squeeze=False)
    colours = {"women": "#b2182b", "men": "#2166ac"}
    for ax, term in zip(axes[0], terms):
        for k, sex in enumerate(("women", "men")):
            d = qte[(qte["term"] == term) & (qte["sample"] == sex)].sort_values("quantile")
            if d.empty:
                continue
            x = d["quantile"] + (k - 0.5) * 0.012
            ax.errorbar(x, d["estimate"], yerr=[d["estimate"] - d["ci_low"], d["ci_high"] - d["estimate"]],
                        fmt="o-", color=colours[sex], capsize=2, ms=4, label=SEXES[sex])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(TERM_LABELS[term], fontsize=10)
        ax.set_xlabel("Quantile of profit")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"Quantile treatment effect ({unit})")
    axes[0][0].legend(fontsize=8, frameon=False)
    return figure_png(fig)


def simulation_table() -> dict | None:
    path = paths.simulation_dir() / "simulation.csv"
    if not path.exists():
        return None
    sim = pd.read_csv(path)
    meta = read_json(paths.simulation_dir() / "simulation.json")
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


def few_cluster_table() -> dict | None:
    """CR1, CR2 and the wild bootstrap side by side with 20 clusters (the simulation stage)."""
    path = paths.simulation_dir() / "few_clusters.csv"
    if not path.exists():
        return None
    few = pd.read_csv(path)
    meta = read_json(paths.simulation_dir() / "simulation.json").get("few_clusters", {})
    rows = [[str(r["effect"]), str(r["sex"]), fmt(r["truth"], 1),
             *[f"{100 * r[f'coverage_{m}']:.1f}% ({100 * r[f'mc_se_{m}']:.1f})" for m in ("cr1", "cr2", "wild")]]
            for _, r in few.iterrows()]
    wild = meta.get("wild_bootstrap", {})
    return {"caption": f"Few clusters: coverage of the true effect with {int(few['n_clusters'].median())} markets "
                       f"({int(few['draws'].iloc[0])} datasets)", "first_col_left": True,
            "columns": ["Effect", "Owners", "Truth", "CR1 95% CI", "CR2 95% CI", "Wild bootstrap test"], "rows": rows,
            "notes": "Share of datasets whose 95% interval contains the true effect (CR1, CR2: t with G - 1 degrees of "
                     "freedom), or whose wild cluster restricted bootstrap test of the true value does not reject at 5% "
                     f"({wild.get('weights', '?')} weights, {wild.get('reps', '?')} bootstrap samples); Monte Carlo SE in "
                     "brackets. The same generator as above with 2 regions x 2 sectors of 5 markets of 150 firms and no "
                     "typing errors; unwinsorised profit, by_gender model."}


TEMPLATE = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


def render_index(context: dict) -> str:
    return TEMPLATE.get_template("index.html.j2").render(**context)


def study_spec(study: str) -> dict:
    """What the study's estimate stage recorded: its resolved specification and outcomes."""
    summary = read_json(paths.processed_dir(study) / "estimate_summary.json")
    conversion = {}
    ingest_path = paths.interim_dir(study) / "ingest_summary.json"
    if ingest_path.exists():
        conversion = read_json(ingest_path).get("conversion") or {}
    construct_path = paths.processed_dir(study) / "construct_summary.json"
    currency = read_json(construct_path).get("currency") if construct_path.exists() else None
    return {"summary": summary, "specification": summary.get("specification", {}), "outcomes": list(summary.get("outcomes") or []),
            "primary_outcome": summary.get("primary_outcome"), "notes": summary.get("notes") or [],
            "tables": summary.get("tables") or {}, "currency": currency,
            "usd_ppp_per_lcu": conversion.get("usd_ppp_per_lcu")}


def unit_note(spec: dict, flow_period: str) -> str:
    """The unit of the study's money outcomes (``*_usd_ppp*`` columns) and the conversion from its currency."""
    if not any("_usd_ppp" in o for o in spec["outcomes"]):
        return "The outcomes are in the study's own units (not money flows converted by the pipeline, e.g. logs)."
    rate = spec.get("usd_ppp_per_lcu")
    if spec.get("currency") and rate:
        return (f"Money outcomes in USD PPP per {flow_period.replace('_', ' ')}, converted from {spec['currency']} "
                f"at {rate:.6g} USD PPP per {spec['currency']} (1 USD PPP = {1 / rate:,.4g} {spec['currency']}).")
    return f"Money outcomes in USD PPP per {flow_period.replace('_', ' ')}."


def study_section(study: str, results: pd.DataFrame, flow_period: str, decimals: int) -> tuple[dict, pd.DataFrame]:
    """One study's section of the report, true to the specification that study was estimated with."""
    spec = study_spec(study)
    primary = spec["primary_outcome"]
    outcomes = spec["outcomes"] or [primary]
    unit = f"USD PPP per {flow_period.replace('_', ' ')}"
    eff = gender_effects(results, study, primary)
    truth_path = paths.raw_synthetic_dir() / "truth.json" if study == "synthetic" else None
    truth = read_json(truth_path) if truth_path and truth_path.exists() else None
    if truth is not None and not eff.empty:
        eff = truth_comparison(eff, truth)
    flow = read_table(paths.interim_dir(study) / "flow.csv")
    flow = flow if flow is not None else pd.DataFrame()
    study_results = results[results["study"] == study]
    note = f"{method_note(spec['summary'])} {unit_note(spec, flow_period)}"
    # attrition models: the effect models' fixed effects and variance, without baseline or controls
    design = f"{fixed_effect_words(spec['specification'])} {variance_words(spec['specification'], None)}"
    tables = [t for t in (pooled_table(study_results, outcomes, decimals, note),
                          publication_table(study_results, outcomes, decimals, note),
                          robustness_table(study_results, primary, decimals),
                          multiple_testing_table(study_results)) if t]
    design_tables = [t for t in [balance_table(study, decimals), *attrition_tables(study, decimals, design)] if t]
    not_applicable = [f"{name.replace('_', ' ')}: {info.get('reason', 'not applicable')}"
                      for name, info in spec["tables"].items() if isinstance(info, dict) and info.get("status") == "not_applicable"]
    if eff.empty:
        not_applicable.insert(0, "effects by owner gender: not estimable (the study's owners are all of one gender, "
                                 "or gender is not recorded)")
    fig = figure_png(gender_figure(eff, f"{study}: effects on {primary}", unit)) if not eff.empty else None
    section = {
        "study": study, "spec_note": note, "primary_outcome": primary, "currency": spec["currency"],
        "tables": tables, "design_tables": design_tables, "not_applicable": not_applicable,
        "qte_figure": qte_figure(study, unit), "effects": eff.to_dict("records"), "has_truth": truth is not None,
        "all_within_2se": bool(eff["within_2se"].all()) if truth is not None and not eff.empty else None,
        "headlines": [headline_sentence(r, unit, decimals) for _, r in eff[eff["sex"] != "diff"].iterrows()] if not eff.empty else [],
        "figure": fig, "flow_columns": list(flow.columns), "flow": flow.to_dict("records"),
        "notebooks": (["notebooks/00_synthetic"] if study == "synthetic" else []) +
                     [f"notebooks/{study}/{name}" for name in ("01_ingest", "02_clean", "03_construct", "04_estimate")],
    }
    return section, eff


def run(params: dict, studies: list[str], flow_period: str, pipeline: str = "main") -> dict:
    """The report stage: collect every study's results (each described by its own recorded
    specification), add the cross-study synthesis in the evidence pipeline, write index.html,
    results.csv, metrics.json and every table as CSV and LaTeX under tables/."""
    from pipeline import report_evidence

    decimals = int(params["decimals"])
    results = load_results(studies)
    per_study, sections = {}, []
    for study in studies:
        section, eff = study_section(study, results, flow_period, decimals)
        per_study[study] = eff
        sections.append(section)
    out = paths.reports_dir(pipeline)
    link_prefix = "../" if pipeline != "main" else ""
    for section in sections:
        section["notebooks"] = [link_prefix + nb for nb in section["notebooks"]]
    evidence = report_evidence.evidence_context(paths.synthesis_dir(), decimals) if pipeline == "evidence" else None
    context = {
        "title": params["title"], "version": project_version(), "unit": f"USD PPP per {flow_period.replace('_', ' ')}",
        "sections": sections, "decimals": decimals, "fmt": fmt, "packages": package_versions(), "params": params,
        "simulation": simulation_table() if pipeline == "main" else None,
        "simulation_few_clusters": few_cluster_table() if pipeline == "main" else None, "evidence": evidence,
        "self_check_link": "../index.html" if pipeline == "evidence" else None,
        "stage_notebooks": ([f"notebooks/06_synthesize", "notebooks/05_report"] if pipeline == "evidence" else []),
    }
    m = metrics(per_study, results, studies)
    if evidence is not None:
        m["synthesis"] = evidence["metrics"]
    metrics_path = out / "metrics.json"
    context["provenance"] = {"git": git_state(), "inputs": input_hashes(paths.pipeline_file(pipeline).with_suffix(".lock"))}
    context["changes"] = metric_changes(m, previous_metrics(str(metrics_path.relative_to(paths.root()))))
    html = render_index(context)
    tables = [t for s in sections for t in s["tables"] + s["design_tables"]] + (evidence["tables"] if evidence else [])
    table_files = report_evidence.export_tables(tables, [s["study"] for s in sections for _ in s["tables"] + s["design_tables"]]
                                                + ["synthesis"] * len(evidence["tables"] if evidence else []))
    write_text(out / "index.html", html)
    for name, text in table_files.items():
        write_text(out / "tables" / name, text)
    write_csv(out / "results.csv", results)
    write_json(metrics_path, m)
    return {"results": results, "effects": per_study, "metrics": m, "html": html}
