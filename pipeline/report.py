"""Report: the reviewer's entry point (``reports/index.html``), metrics and tidy tables.

The page is one self-contained HTML file: figures are embedded PNGs, there are no scripts and
no external requests, every text that comes from data is escaped (Jinja2 autoescape), and
nothing in it depends on when it was built, so reruns are byte-identical.

The tables are built in :mod:`pipeline.report_tables`, the figures in :mod:`pipeline.report_figures`,
the provenance block in :mod:`pipeline.report_provenance` and the evidence pipeline's synthesis
section in :mod:`pipeline.report_evidence`; this module collects each study's results into its
section, computes the metrics and assembles and writes the page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import jinja2
import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.io import read_json, write_csv, write_json, write_text
from pipeline.method_note import fixed_effect_words, method_note, variance_words
from pipeline.report_figures import figure_png, gender_figure, qte_figure
from pipeline.report_provenance import (git_state, input_hashes, metric_changes, package_versions, previous_metrics,
                                        project_version)
from pipeline.stage_context import StageContext, per_study_stages
from pipeline.report_tables import (SEXES, _level, attrition_tables, balance_table, few_cluster_table, fmt,
                                    multiple_testing_table, pooled_table, publication_table, read_table,
                                    robustness_table, simulation_table)

# Truth keys (truth.json "itt") and the by_gender terms that estimate them.
EFFECTS = {
    "skills": ("treat_skills", "Training only (skills)"),
    "capital": ("treat_capital", "Grant only (capital)"),
    "skills_x_capital": ("treat_skills_x_treat_capital", "Skills × capital interaction"),
}


def study_folder(inputs: Mapping[str, Path], kind: str, study: str) -> Path:
    """A study's data/<kind>/<study> folder among the report context's inputs (``processed/<study>``)."""
    return inputs[f"{kind}/{study}"]


def load_results(studies: list[str], inputs: Mapping[str, Path]) -> pd.DataFrame:
    """All studies' tidy estimates in one table (study order as in params.yaml)."""
    frames = [pd.read_csv(study_folder(inputs, "processed", s) / "results.csv") for s in studies]
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


def headline_sentence(row: pd.Series, unit: str, decimals: int) -> str:
    who = SEXES.get(row["sex"], row["sex"])
    pct = row.get("effect_pct_of_control_mean")
    pct_txt = f" ({fmt(pct, 0)}% of the control mean)" if pd.notna(pct) else ""
    return (f"{who}: {fmt(row['estimate'], decimals)} {unit}{pct_txt}, "
            f"95% CI {fmt(row['ci_low'], decimals)} to {fmt(row['ci_high'], decimals)}")


def metrics(per_study: dict[str, pd.DataFrame], results: pd.DataFrame, studies: list[str],
            inputs: Mapping[str, Path]) -> dict:
    """Key estimates for ``dvc metrics``: per study, the pooled effect of every arm on the primary
    outcome and, where estimable, the effects for women and men and their difference."""
    out: dict = {}
    for study, eff in per_study.items():
        primary = study_spec(study, inputs)["primary_outcome"]
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


TEMPLATE = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True)


def render_index(context: dict) -> str:
    return TEMPLATE.get_template("index.html.j2").render(**context)


def study_spec(study: str, inputs: Mapping[str, Path]) -> dict:
    """What the study's estimate stage recorded: its resolved specification and outcomes."""
    processed = study_folder(inputs, "processed", study)
    summary = read_json(processed / "estimate_summary.json")
    conversion = {}
    ingest_path = study_folder(inputs, "interim", study) / "ingest_summary.json"
    if ingest_path.exists():
        conversion = read_json(ingest_path).get("conversion") or {}
    construct_path = processed / "construct_summary.json"
    currency = read_json(construct_path).get("currency") if construct_path.exists() else None
    return {"summary": summary, "specification": summary.get("specification", {}),
            "outcomes": list(summary.get("outcomes") or []),
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


def study_section(study: str, results: pd.DataFrame, flow_period: str, decimals: int,
                  inputs: Mapping[str, Path]) -> tuple[dict, pd.DataFrame]:
    """One study's section of the report, true to the specification that study was estimated with
    (``inputs``: the report context's, with the study's ``processed/<study>`` and ``interim/<study>``
    folders and, for the synthetic study, ``truth.json``)."""
    spec = study_spec(study, inputs)
    processed = study_folder(inputs, "processed", study)
    primary = spec["primary_outcome"]
    outcomes = spec["outcomes"] or [primary]
    unit = f"USD PPP per {flow_period.replace('_', ' ')}"
    eff = gender_effects(results, study, primary)
    truth_path = inputs.get("truth.json") if study == "synthetic" else None
    truth = read_json(truth_path) if truth_path and truth_path.exists() else None
    if truth is not None and not eff.empty:
        eff = truth_comparison(eff, truth)
    flow = read_table(study_folder(inputs, "interim", study) / "flow.csv")
    flow = flow if flow is not None else pd.DataFrame()
    study_results = results[results["study"] == study]
    note = f"{method_note(spec['summary'])} {unit_note(spec, flow_period)}"
    # attrition models: the effect models' fixed effects and variance, without baseline or controls
    design = f"{fixed_effect_words(spec['specification'])} {variance_words(spec['specification'], None)}"
    tables = [t for t in (pooled_table(study_results, outcomes, decimals, note),
                          publication_table(study_results, outcomes, decimals, note),
                          robustness_table(study_results, primary, decimals),
                          multiple_testing_table(study_results)) if t]
    design_tables = [t for t in [balance_table(processed, decimals), *attrition_tables(processed, decimals, design)] if t]
    not_applicable = [f"{name.replace('_', ' ')}: {info.get('reason', 'not applicable')}"
                      for name, info in spec["tables"].items()
                      if isinstance(info, dict) and info.get("status") == "not_applicable"]
    if eff.empty:
        not_applicable.insert(0, "effects by owner gender: not estimable (the study's owners are all of one gender, "
                                 "or gender is not recorded)")
    fig = figure_png(gender_figure(eff, f"{study}: effects on {primary}", unit)) if not eff.empty else None
    section = {
        "study": study, "spec_note": note, "primary_outcome": primary, "currency": spec["currency"],
        "tables": tables, "design_tables": design_tables, "not_applicable": not_applicable,
        "qte_figure": qte_figure(processed, unit), "effects": eff.to_dict("records"), "has_truth": truth is not None,
        "all_within_2se": bool(eff["within_2se"].all()) if truth is not None and not eff.empty else None,
        "headlines": ([headline_sentence(r, unit, decimals) for _, r in eff[eff["sex"] != "diff"].iterrows()]
                      if not eff.empty else []),
        "figure": fig, "flow_columns": list(flow.columns), "flow": flow.to_dict("records"),
        "notebooks": ([f"notebooks/{paths.STAGE_NOTEBOOKS['synthetic']}"] if study == "synthetic" else []) +
                     [f"notebooks/{study}/{paths.STAGE_NOTEBOOKS[stage]}" for stage in per_study_stages()],
    }
    return section, eff


def run(stage: StageContext) -> dict:
    """The report stage: collect every study's results (each described by its own recorded
    specification), add the cross-study synthesis in the evidence pipeline, write index.html,
    results.csv, metrics.json and every table as CSV and LaTeX under tables/ (the ``stage``
    context's outputs)."""
    from pipeline import report_evidence

    params, studies, pipeline = stage.params, list(stage.studies), stage.pipeline
    flow_period, inputs, outputs = stage.extra["flow_period"], stage.inputs, stage.outputs
    decimals = int(params["decimals"])
    results = load_results(studies, inputs)
    per_study, sections = {}, []
    for study in studies:
        section, eff = study_section(study, results, flow_period, decimals, inputs)
        per_study[study] = eff
        sections.append(section)
    link_prefix = "../" if pipeline != "main" else ""
    for section in sections:
        section["notebooks"] = [link_prefix + nb for nb in section["notebooks"]]
    evidence = report_evidence.evidence_context(inputs["synthesis"], decimals) if "synthesis" in inputs else None
    context = {
        "title": params["title"], "version": project_version(), "unit": f"USD PPP per {flow_period.replace('_', ' ')}",
        "sections": sections, "decimals": decimals, "fmt": fmt, "packages": package_versions(), "params": params,
        "simulation": simulation_table(inputs["simulation"]) if "simulation" in inputs else None,
        "simulation_few_clusters": few_cluster_table(inputs["simulation"]) if "simulation" in inputs else None,
        "evidence": evidence,
        "self_check_link": "../index.html" if pipeline == "evidence" else None,
        "stage_notebooks": (["notebooks/06_synthesize", "notebooks/05_report"] if pipeline == "evidence" else []),
    }
    m = metrics(per_study, results, studies, inputs)
    if evidence is not None:
        m["synthesis"] = evidence["metrics"]
    metrics_path = outputs["metrics.json"]
    context["provenance"] = {"git": git_state(), "inputs": input_hashes(paths.pipeline_file(pipeline).with_suffix(".lock"))}
    context["changes"] = metric_changes(m, previous_metrics(str(metrics_path.relative_to(paths.root()))))
    html = render_index(context)
    tables = [t for s in sections for t in s["tables"] + s["design_tables"]] + (evidence["tables"] if evidence else [])
    table_files = report_evidence.export_tables(tables, [s["study"] for s in sections for _ in s["tables"] + s["design_tables"]]
                                                + ["synthesis"] * len(evidence["tables"] if evidence else []))
    write_text(outputs["index.html"], html)
    for name, text in table_files.items():
        write_text(outputs["tables"] / name, text)
    write_csv(outputs["results.csv"], results)
    write_json(metrics_path, m)
    return {"results": results, "effects": per_study, "metrics": m, "html": html}
