import numpy as np
import pandas as pd
import pytest

from pipeline import report


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
        "decimals": 1, "fmt": report.fmt, "packages": {}, "params": {},
        "provenance": {"git": {"commit": "abc", "dirty": False}, "inputs": [{"path": "<p>", "md5": "0", "stages": "s"}]},
        "changes": [{"study": "s", "effect": "<i>e</i>", "previous": 1.0, "current": 2.0, "change": 1.0}]})
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;x&lt;/b&gt;" in html
    assert "<i>e</i>" not in html and "<p>" not in html.split("<body>")[1].split("Inputs")[1][:200]
    assert "http://" not in html and "https://" not in html


def test_figure_bytes_are_deterministic():
    eff = report.truth_comparison(report.gender_effects(tidy_fixture(), "s", "profit_usd_ppp_month"), TRUTH)
    a = report.figure_png(report.gender_figure(eff, "t", "USD"))
    b = report.figure_png(report.gender_figure(eff, "t", "USD"))
    assert a == b and len(a) > 1000


def test_metric_changes_against_previous_version():
    current = {"primary_outcome": "p", "s": {"capital_women": {"estimate": 12.0, "se": 1.0}}}
    previous = {"primary_outcome": "p", "s": {"capital_women": {"estimate": 10.0, "se": 1.0}, "gone": {"estimate": 1}}}
    assert report.metric_changes(current, previous) == [
        {"study": "s", "effect": "capital_women", "previous": 10.0, "current": 12.0, "change": 2.0}]
    assert report.metric_changes(current, None) == []


def test_input_hashes_read_dvc_lock(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  a:\n    cmd: x\n    deps:\n    - path: data/raw\n      md5: abc.dir\n"
        "  b:\n    cmd: y\n    deps:\n    - path: data/raw\n      md5: abc.dir\n    - path: code.py\n      md5: def\n"
        "  report:\n    cmd: z\n    deps:\n    - path: pipeline/report.py\n      md5: fed\n")
    assert report.input_hashes(tmp_path / "dvc.lock") == [
        {"path": "code.py", "md5": "def", "stages": "b"}, {"path": "data/raw", "md5": "abc.dir", "stages": "a, b"}]
