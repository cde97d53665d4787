"""The evidence report's parts from a synthesis computed here on published-style summary data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _params import params_group

from pipeline import harmonise, report_evidence, synthesize, synthesize_frequentist
from pipeline.io import load_params, write_csv, write_json


@pytest.fixture(scope="module")
def synthesis_dir(tmp_path_factory):
    rows = []
    for i, (effect, se, share, lender) in enumerate([(12.0, 5.0, 1.0, 1), (4.0, 3.0, 0.6, 0), (9.0, 6.0, 0.8, 1),
                                                     (-1.0, 4.0, 0.5, 0)]):
        rows.append({"study": f"s{i}", "citation": f"Author {i}", "intervention": "capital", "sex": "women",
                     "outcome": "profit", "scale": "pct_of_control_mean", "effect": effect, "std_error": se,
                     "share_female_owners": share, "lender_targeted_women": lender})
    rows.append({"study": "s9", "citation": "Author 9", "intervention": "skills", "sex": "women", "outcome": "profit",
                 "scale": "pct_of_control_mean", "effect": 3.0, "std_error": 2.0, "share_female_owners": 0.7,
                 "lender_targeted_women": np.nan})
    effects = harmonise.published_effects(pd.DataFrame(rows), "fixture.csv")
    settings = {**load_params()["synthesize"], "coverage_draws": 200, "tau_grid_points": 800}
    out = synthesize.synthesize(effects, settings)
    folder = tmp_path_factory.mktemp("synthesis")
    for name in ("pooled", "shrunk", "meta_regression"):
        write_csv(folder / f"{name}.csv", out[name])
    write_csv(folder / "study_effects.csv", effects)
    write_json(folder / "synthesize_summary.json", {"not_pooled": out["not_pooled"], "priors_note": "fixture priors"})
    return folder, out


def test_headline_states_the_pooled_effect_its_interval_and_the_number_of_studies(synthesis_dir):
    folder, out = synthesis_dir
    context = report_evidence.evidence_context(folder, 1)
    row = out["pooled"].iloc[0]
    assert len(context["headline"]) == 1  # skills: one study, not pooled
    sentence = context["headline"][0]
    assert f"{row['mu_mean']:.1f}% of the control mean" in sentence and "4 studies" in sentence
    assert f"{row['mu_lower']:.1f} to {row['mu_upper']:.1f}" in sentence
    assert any("skills" in note for note in context["not_pooled"])


def test_pooled_table_reports_the_simulated_coverage_and_the_meta_regression_its_slopes(synthesis_dir):
    folder, out = synthesis_dir
    tables = report_evidence.evidence_context(folder, 1)["tables"]
    pooled, _, meta = tables
    coverage = out["pooled"].iloc[0]["coverage_mu"]
    assert pooled["rows"][0][-1].startswith(f"{100 * coverage:.1f}%") and "200 draws" in pooled["rows"][0][-1]
    assert 0.5 < coverage <= 1.0
    moderators = {r[0] for r in meta["rows"]}
    # the skills study has no lender: lender targeting varies among the 4 capital studies only
    assert moderators == {"Capital (vs skills) intervention", "Share of women owners", "Lender targeted women"}
    lender = next(r for r in meta["rows"] if r[0] == "Lender targeted women")
    assert lender[3] == "4"
    direct = synthesize_frequentist.frequentist_meta_regression([12.0, 4.0, 9.0, -1.0], [5.0, 3.0, 6.0, 4.0],
                                                    pd.DataFrame({"lender": [1.0, 0.0, 1.0, 0.0]}))
    assert lender[4] == f"{direct['estimate'].iloc[1]:.1f}"


def test_a_synthesis_without_moderator_variation_says_so(tmp_path):
    empty = report_evidence.meta_regression_table(pd.DataFrame(), 1)
    assert empty["rows"][0][0].startswith("no moderator varies")


def test_a_study_with_two_arms_counts_once(tmp_path):
    rows = [{"study": s, "citation": s, "intervention": "skills", "sex": "all", "outcome": "profit",
             "scale": "pct_of_control_mean", "effect": e, "std_error": 5.0}
            for s, e in (("a", 10.0), ("a", 14.0), ("b", 2.0))]
    effects = harmonise.published_effects(pd.DataFrame(rows), "fixture.csv")
    settings = {**load_params()["synthesize"], "coverage_draws": 0, "tau_grid_points": 400}
    pooled = synthesize.synthesize(effects, settings)["pooled"].iloc[0]
    assert pooled["n_studies"] == 2 and pooled["n_effects"] == 3
    assert "2 studies" in report_evidence.headline(synthesize.synthesize(effects, settings)["pooled"], 1)[0]


def test_native_unit_is_the_study_currency_per_its_recall_period():
    assert harmonise.native_unit("INR", 0.1, {"value": "week"}) == ("INR per week", pytest.approx(12 / 52 / 0.1))
    assert harmonise.native_unit("MXN", 0.5, {"value": "two_weeks"})[0] == "MXN per two weeks"
    assert harmonise.native_unit("LCU", 0.025, {"column": "recall", "codes": {1: "week"}}) == ("LCU per month", 40.0)
    assert harmonise.native_unit(None, None, {}) == ("USD PPP per month", 1.0)


def test_the_evidence_table_shows_the_papers_own_units_and_numbers(outputs):
    """acz2018 and field2013 through the four stages and the synthesis: the 'Native estimate' column
    is the published coefficient in the paper's unit (data README: rand per month, rupees per week)."""
    from conftest import stage_context
    from test_real_studies import data_dir

    from pipeline import clean, construct, ingest
    from pipeline.estimation import stage as estimate_stage

    params = load_params()
    est = {**params["estimate"], "transforms": ["level"], "by_round": False, "bootstrap_reps": 10,
           "permutations": 20, "n_jobs": 1, "wild_bootstrap_reps": 99}
    studies = ("acz2018", "field2013")
    for study in studies:
        ingest.run(stage_context("ingest", study, outputs, params_group("ingest", hash_salt="test"), data_dir=data_dir(study)))
        clean.run(stage_context("clean", study, outputs, params["clean"]))
        construct.run(stage_context("construct", study, outputs, params["construct"],
                                    flow_period=params["clean"]["flow_period"]))
        estimate_stage.run(stage_context("estimate", study, outputs, est))
    effects, _ = synthesize.collect_effects({s: outputs / "processed" / s for s in studies}, pd.DataFrame(), "none")
    table = report_evidence.effects_table(effects, 1)
    rows = {(r[0], r[1], r[3], r[4]): r for r in table["rows"]}
    unit, native = table["columns"].index("Native unit"), table["columns"].index("Native estimate")
    # the published coefficient: field2013 645.0 rupees/week
    key = ("field2013", "treat_capital", "all", "USD PPP per month")
    assert rows[key][unit] == "INR per week"
    assert float(rows[key][native].replace(",", "")) == pytest.approx(645.0, rel=0.01)
    # acz2018's two trainings share a control group: it enters through their average, in rand per
    # month, between the paper's Table 3 arm coefficients (finance 2706.5, marketing 4035.2)
    key = ("acz2018", "skills_arms_avg", "all", "USD PPP per month")
    assert rows[key][unit] == "ZAR per month"
    assert 2706.5 < float(rows[key][native].replace(",", "")) < 4035.2
    assert not any(r[0] == "acz2018" and r[1].startswith("arm_") for r in table["rows"])
