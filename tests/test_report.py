import base64
import numpy as np
import pandas as pd
import pytest
from _params import params_group

from pipeline import report, report_figures, report_tables


def tidy_fixture() -> pd.DataFrame:
    rows = []
    values = {"treat_skills": (4.0, 6.0), "treat_capital": (10.0, 30.0), "treat_skills_x_treat_capital": (2.0, -1.0)}
    for term, (women, men) in values.items():
        for sex, est in (("women", women), ("men", men), ("diff", women - men)):
            rows.append({"study": "s", "outcome": "profit_usd_ppp_month", "model": "by_gender", "sample": "all",
                         "term": f"{term}_{sex}", "estimate": est, "std_error": 2.0, "ci_low": est - 4, "ci_high": est + 4,
                         "p_value": 0.5, "n_obs": 100, "n_clusters": 10,
                         "control_mean": np.nan if sex == "diff" else 50.0,
                         "effect_pct_of_control_mean": np.nan if sex == "diff" else est * 2})
    return pd.DataFrame(rows)


TRUTH = {"itt": {"skills": {"women": 4.0, "men": 5.0}, "capital": {"women": 8.0, "men": 30.0},
                 "skills_x_capital": {"women": 12.0, "men": 0.0}}}


def test_truth_comparison_flags_estimates_outside_two_se():
    eff = report.truth_comparison(report.gender_effects(tidy_fixture(), "s", "profit_usd_ppp_month"), TRUTH)
    got = eff.set_index(["effect", "sex"])
    assert got.loc[("capital", "women"), "truth"] == 8.0
    assert got.loc[("capital", "diff"), "truth"] == -22.0            # women - men, derived
    assert got.loc[("capital", "women"), "error_in_se"] == pytest.approx(1.0)
    assert got.loc[("skills_x_capital", "women"), "within_2se"] == np.False_  # (2 - 12) / 2 = -5 SE
    assert got.loc[("skills", "men"), "within_2se"] == np.True_
    assert len(eff) == 9


def test_index_escapes_text_and_is_offline():
    eff = report.truth_comparison(report.gender_effects(tidy_fixture(), "s", "profit_usd_ppp_month"), TRUTH)
    html = report.render_index({
        "title": "<script>alert(1)</script>", "version": "0", "unit": "USD", "primary_outcome": "p",
        "sections": [{"study": "<b>x</b>", "effects": eff.to_dict("records"), "has_truth": True,
                      "all_within_2se": False, "headlines": [], "figure": None, "flow_columns": [], "flow": [],
                      "table": [], "notebooks": []}],
        "decimals": 1, "fmt": report_tables.fmt, "packages": {}, "params": {},
        "provenance": {"git": {"commit": "abc", "dirty": False}, "inputs": [{"path": "<p>", "md5": "0", "stages": "s"}]},
        "changes": [{"study": "s", "effect": "<i>e</i>", "previous": 1.0, "current": 2.0, "change": 1.0}]})
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<i>e</i>" not in html and "<p>" not in html.split("<body>")[1].split("Inputs")[1][:200]
    assert "http://" not in html and "https://" not in html


def test_figure_bytes_are_deterministic():
    eff = report.truth_comparison(report.gender_effects(tidy_fixture(), "s", "profit_usd_ppp_month"), TRUTH)
    a = report_figures.figure_png(report_figures.gender_figure(eff, "t", "USD"))
    b = report_figures.figure_png(report_figures.gender_figure(eff, "t", "USD"))
    assert a == b and len(a) > 1000


# ------------------------------------------------------------------ a study without gender, baseline or strata
def minimal_study(root, estimate_block: dict) -> str:
    """A new study made here: one CSV (unit id, arm, weekly profit; one follow-up round, no owner gender,
    baseline, strata or clusters) and its YAML (root/minimal.yaml)."""
    import yaml

    rng = np.random.default_rng(7)
    raw = root / "raw"
    raw.mkdir(parents=True)
    shops = pd.DataFrame({"shop": range(1, 81), "group": ["control", "grant"] * 40})
    shops["profit"] = (100 + 25 * (shops["group"] == "grant") + rng.normal(0, 20, len(shops))).round(1)
    shops.to_csv(raw / "survey.csv", index=False)
    cfg = {"study": "minimal", "files": [{"path": "survey.csv", "format": "csv", "sha256": None}], "identifiers": [],
           "unit_id": "shop", "female_owner": {"value": None},
           "treatment": {"column": "group", "arms": {"control": {"label": "Control", "skills": 0, "capital": 0},
                                                       "grant": {"label": "Grant", "skills": 0, "capital": 1}}},
           "recall_period": {"value": "week"}, "currency": "KES",
           "usd_ppp_per_lcu": {"lcu_per_usd_ppp": 40, "source": "test"},
           "outcomes": {"profit": {"column": "profit", "allow_negative": True}}, "estimate": estimate_block}
    (root / "minimal.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(raw)


@pytest.mark.parametrize("block, variance", [
    ({"treatments": "auto"}, "Standard errors clustered by cluster_id, each unit its own cluster, (CR2"),
    ({"treatments": "auto", "cluster": None}, "Heteroskedasticity-robust standard errors (HC1), not clustered."),
])
def test_a_study_without_gender_baseline_or_strata_runs_through_to_its_report_section(tmp_path, outputs,
                                                                                       block, variance):
    from conftest import stage_context

    from pipeline import clean, construct, ingest
    from pipeline.estimation import stage as estimate_stage
    from pipeline.io import load_params

    raw = minimal_study(tmp_path, block)
    study = tmp_path / "minimal.yaml"
    params = load_params()
    ingest.run(stage_context("ingest", study, outputs, params_group("ingest"), data_dir=raw))
    clean.run(stage_context("clean", study, outputs, params["clean"]))
    construct.run(stage_context("construct", study, outputs, params["construct"], flow_period="month"))
    est = {**params["estimate"], "bootstrap_reps": 10, "permutations": 20, "n_jobs": 1}
    results = estimate_stage.run(stage_context("estimate", study, outputs, est))["results"]
    folders = {f"{kind}/minimal": outputs / kind / "minimal" for kind in ("processed", "interim")}
    section, effects = report.study_section("minimal", results, "month", 1, folders)

    assert effects.empty and section["effects"] == [] and section["figure"] is None
    assert not results["model"].isin(["by_gender", "women_only", "men_only"]).any()
    assert any(n.startswith("effects by owner gender: not estimable") for n in section["not_applicable"])
    note = section["spec_note"]
    assert "No baseline control (the study records no baseline value of its outcomes)." in note
    assert "Fixed effects: none (no strata fixed effects); stratum, round have a single level here." in note
    assert variance in note
    assert "No models by owner gender" in note and "ANCOVA" not in note
    # the pooled effect of the grant: the difference of arm means (no controls, no FE), in USD PPP per
    # month, on the profit as reported (the level rows are winsorised at the 1st / 99th percentiles)
    pooled = results[(results["model"] == "pooled") & (results["transform"] == "unwinsorised")
                     & (results["term"] == "treat_capital")].iloc[0]
    shops = pd.read_csv(raw + "/survey.csv")
    per_month = shops["profit"] * 52 / 12 / 40
    diff = per_month[shops["group"] == "grant"].mean() - per_month[shops["group"] == "control"].mean()
    assert pooled["estimate"] == pytest.approx(diff, rel=1e-9) and pooled["n_obs"] == 80
    assert any(t["caption"] == "Intention-to-treat effects, all owners" for t in section["tables"])


def test_fmt_prints_no_negative_zero_and_a_dash_for_missing():
    from pipeline.report_tables import fmt

    # expected strings written out by hand: Python's own format gives "-0" for -0.3 at 0 places
    assert [fmt(v, 0) for v in (-0.3, -0.5, -0.6, 0.4, -1234.4)] == ["0", "0", "-1", "0", "-1,234"]
    assert [fmt(v, 1) for v in (-0.04, -0.05001, 1234.56, -0.0)] == ["0.0", "-0.1", "1,234.6", "0.0"]
    assert [fmt(v) for v in (None, float("nan"), float("inf"), pd.NA, np.nan)] == ["–"] * 5


def test_simulation_tables_name_effects_owners_and_variants_in_words(tmp_path):
    from pipeline.io import write_json

    pd.DataFrame({"variant": ["no_typos", "as_configured"], "outcome": ["unwinsorised", "winsorised"],
                  "effect": ["skills_x_capital", "capital"], "sex": ["diff", "women"], "truth": [12.0, 8.0],
                  "mean_estimate": [12.31, 7.99], "bias_in_sd": [0.026, -0.0004], "coverage": [0.95, 0.9485],
                  "se_over_sd": [0.99, 1.0]}).to_csv(tmp_path / "simulation.csv", index=False)
    pd.DataFrame({"effect": ["skills"], "sex": ["men"], "draws": [500], "n_clusters": [20], "truth": [5.0],
                  **{f"{k}_{m}": [v] for m in ("cr1", "cr2", "wild") for k, v in (("coverage", 0.9), ("mc_se", 0.01))}}
                 ).to_csv(tmp_path / "few_clusters.csv", index=False)
    write_json(tmp_path / "simulation.json", {"draws": 2000, "vcov": "CR2", "few_clusters": {}})
    sim = report_tables.simulation_table(tmp_path)
    assert [r[:4] for r in sim["rows"]] == [["No typing errors", "Unwinsorised", "Skills × capital", "Women − men"],
                                            ["As configured", "Winsorised", "Grant only (capital)", "Women"]]
    assert sim["rows"][1][6] == "0.000"                     # -0.0004 at 3 places: no "-0.000"
    assert "No typing errors: the generator without" in sim["notes"]
    few = report_tables.few_cluster_table(tmp_path)
    assert few["rows"] == [["Training only (skills)", "Men", "5.0", "90.0% (1.0)", "90.0% (1.0)", "90.0% (1.0)"]]


def test_the_report_names_every_simulation_variant_and_outcome():
    # the report stage does not import the simulation (its own module): both take the names from pipeline.vocabulary
    from pipeline import simulation

    assert list(report_tables.VARIANT_LABELS) == list(report_tables.VARIANT_NOTES) == list(simulation.VARIANTS)


def test_the_simulation_notes_describe_only_the_variants_that_ran(tmp_path):
    from pipeline.io import write_json

    pd.DataFrame({"variant": ["as_configured"], "outcome": ["winsorised"], "effect": ["capital"], "sex": ["women"],
                  "truth": [8.0], "mean_estimate": [7.99], "bias_in_sd": [-0.0004], "coverage": [0.9485],
                  "se_over_sd": [1.0]}).to_csv(tmp_path / "simulation.csv", index=False)
    write_json(tmp_path / "simulation.json", {"draws": 20, "variants": {"as_configured": {}}})
    notes = report_tables.simulation_table(tmp_path)["notes"]
    assert "As configured: the default survey." in notes and "No typing errors" not in notes


def test_intervals_are_drawn_from_their_ends_even_when_they_exclude_the_estimate(tmp_path):
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    fig, ax = plt.subplots()
    report_figures.interval_bars(ax, [0.25, 0.5], [2.0, -1.0], [5.0, 3.0], "red", capsize=2, vertical=True)
    (bars,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert [seg.tolist() for seg in bars.get_segments()] == [[[0.25, 2.0], [0.25, 5.0]], [[0.5, -1.0], [0.5, 3.0]]]
    plt.close(fig)
    # a percentile bootstrap interval [2, 5] that excludes its estimate 1.0 (matplotlib refuses a
    # negative error bar, which is what the report did before)
    pd.DataFrame({"sample": ["women", "men"], "term": ["treat_skills"] * 2, "quantile": [0.5, 0.5],
                  "estimate": [1.0, 0.0], "ci_low": [2.0, -1.0], "ci_high": [5.0, 1.0]}).to_csv(tmp_path / "qte.csv", index=False)
    assert base64.b64decode(report_figures.qte_figure(tmp_path, "USD")).startswith(b"\x89PNG")
