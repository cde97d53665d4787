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


def metrics(per_study: dict[str, pd.DataFrame], primary: str) -> dict:
    """Key estimates for ``dvc metrics``: by study, effect and sex (primary outcome)."""
    out: dict = {"primary_outcome": primary}
    for study, eff in per_study.items():
        block = {}
        for _, r in eff.iterrows():
            entry = {"estimate": round(float(r["estimate"]), 6), "se": round(float(r["std_error"]), 6)}
            if "truth" in eff.columns:
                entry["truth"] = round(float(r["truth"]), 6)
                entry["within_2se"] = bool(r["within_2se"])
            block[f"{r['effect']}_{r['sex']}"] = entry
        out[study] = block
    return out


TEMPLATE = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


def render_index(context: dict) -> str:
    return TEMPLATE.get_template("index.html.j2").render(**context)


def run(params: dict, studies: list[str], primary_outcome: str, flow_period: str) -> dict:
    """The report stage: collect results, compare with truth, write index.html and metrics."""
    decimals = int(params.get("decimals", 1))
    results = load_results(studies)
    unit = f"USD PPP per {flow_period.replace('_', ' ')}"
    per_study, sections = {}, []
    for study in studies:
        eff = gender_effects(results, study, primary_outcome)
        truth_path = paths.raw_synthetic_dir() / "truth.json" if study == "synthetic" else None
        truth = read_json(truth_path) if truth_path and truth_path.exists() else None
        if truth is not None and not eff.empty:
            eff = truth_comparison(eff, truth)
        per_study[study] = eff
        flow_path = paths.interim_dir(study) / "flow.csv"
        flow = pd.read_csv(flow_path) if flow_path.exists() else pd.DataFrame()
        study_results = results[results["study"] == study]
        fig = figure_png(gender_figure(eff, f"{study}: effects on {primary_outcome}", unit)) if not eff.empty else None
        sections.append({
            "study": study,
            "effects": eff.to_dict("records"),
            "has_truth": truth is not None,
            "all_within_2se": bool(eff["within_2se"].all()) if truth is not None and not eff.empty else None,
            "headlines": [headline_sentence(r, unit, decimals) for _, r in eff[eff["sex"] != "diff"].iterrows()],
            "figure": fig,
            "flow_columns": list(flow.columns),
            "flow": flow.to_dict("records"),
            "table": study_results.to_dict("records"),
            "notebooks": [f"notebooks/{study}/{name}.html" for name in
                          ("01_ingest", "02_clean", "03_construct", "04_estimate")],
        })
    context = {
        "title": params.get("title", "Results"),
        "version": project_version(),
        "unit": unit,
        "primary_outcome": primary_outcome,
        "sections": sections,
        "decimals": decimals,
        "fmt": fmt,
        "packages": package_versions(),
        "params": params,
    }
    m = metrics(per_study, primary_outcome)
    context["provenance"] = {"git": git_state(), "inputs": input_hashes()}
    context["changes"] = metric_changes(m, previous_metrics())
    html = render_index(context)
    out = paths.reports_dir()
    write_text(out / "index.html", html)
    write_csv(out / "results.csv", results)
    write_json(out / "metrics.json", m)
    return {"results": results, "effects": per_study, "metrics": m, "html": html}
