"""Study effects on one scale."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import harmonise

ARMS = {"a": {"slug": "training", "skills": 1, "capital": 0}, "b": {"slug": "grant", "skills": 0, "capital": 1},
        "c": {"slug": "both", "skills": 1, "capital": 1}}


def results() -> pd.DataFrame:
    rows = [("pooled", "arm_training", 10.0, 4.0, 50.0), ("pooled", "arm_grant", 20.0, 5.0, 50.0),
            ("pooled", "arm_both", 30.0, 6.0, 50.0), ("by_gender", "arm_grant_women", 8.0, 4.0, 40.0),
            ("by_gender", "arm_grant_men", 30.0, 7.0, 60.0)]
    return pd.DataFrame([{"outcome": "profit_usd_ppp_month", "transform": "level", "model": m, "term": t, "estimate": e,
                          "std_error": s, "control_mean": c, "n_obs": 100, "n_clusters": 10} for m, t, e, s, c in rows])


def test_single_intervention_arms_on_both_scales_and_bundles_left_out():
    eff = harmonise.study_effects(results(), study="s", arms=ARMS, primary_outcome="profit_usd_ppp_month",
                                  outcome_is_log=False, share_female_owners=0.5, lender_targeted_women=np.nan, citation="c")
    assert "arm_both" not in set(eff["arm"])
    women = eff[(eff["arm"] == "arm_grant") & (eff["group"] == "women")].set_index("scale")
    assert women.loc["usd_ppp_month", "effect"] == 8.0
    assert women.loc["pct_of_control_mean", "effect"] == pytest.approx(20.0)  # 100 x 8 / 40
    assert women.loc["pct_of_control_mean", "std_error"] == pytest.approx(10.0)
    assert set(eff[eff["arm"] == "arm_training"]["group"]) == {"all"}


def test_log_outcomes_are_log_points_and_have_no_money_scale():
    eff = harmonise.study_effects(results(), study="s", arms=ARMS, primary_outcome="profit_usd_ppp_month",
                                  outcome_is_log=True, share_female_owners=0.5, lender_targeted_women=np.nan, citation="c")
    assert set(eff["scale"]) == {"pct_of_control_mean"}
    assert eff[(eff["arm"] == "arm_grant") & (eff["group"] == "all")]["effect"].iloc[0] == pytest.approx(2000.0)


def test_women_only_study_reports_its_pooled_effect_for_women():
    eff = harmonise.study_effects(results(), study="s", arms=ARMS, primary_outcome="profit_usd_ppp_month",
                                  outcome_is_log=False, share_female_owners=1.0, lender_targeted_women=np.nan, citation="c")
    assert set(eff[eff["arm"] == "arm_training"]["group"]) == {"all", "women"}


def test_published_rows_are_validated_with_their_file_lines():
    bad = pd.DataFrame({"study": ["x"], "citation": ["c"], "intervention": ["cash"], "sex": ["women"], "outcome": ["profit"],
                        "scale": ["usd_ppp_month"], "effect": [1.0], "std_error": [1.0]})
    with pytest.raises(ValueError, match=r"pub.csv: rows \[2\]"):
        harmonise.published_effects(bad, "pub.csv")
