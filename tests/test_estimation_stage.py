"""Tests for pipeline.estimation.stage: attrition, every output of the stage, header-only tables with the
reason, wild bootstrap p-values in the study table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _estimation_data import Y, TREATS, make_data, hand_design, hand_ols, rel_close, with_extras
from pipeline.estimation import stage
from pipeline.estimation.fit import fit
from pipeline.estimation.spec import TRANSFORMS
from pipeline.estimation.stage import attrition_table
from pipeline.estimation.tables import TIDY_COLUMNS, estimate_study
from pipeline.estimation.wild import WildSettings, wild_cluster_test, wild_settings
from _params import make_spec, params_group, study_kw


def test_attrition_table_by_hand():
    df = with_extras(make_data(seed=24, n_clusters=40), seed=4)
    fu = df[df["followup"]]
    tab = attrition_table(fu, params_group("estimate", treatments=TREATS, vcov="CR1"), "s", params_group("estimate")["alpha"],
                          params_group("estimate")["mde_power"])
    pooled = tab[tab["model"] == "pooled"].set_index("term")
    d, X, names = hand_design(fu.assign(**{Y: fu["attrited"].astype(float)}), baseline=False)
    beta, V, _ = hand_ols(X, d[Y].to_numpy(), d["cluster_id"].to_numpy())
    rel_close(pooled.loc[["treat_skills", "treat_capital", "treat_skills_x_treat_capital"], "estimate"], beta[1:4])
    assert pooled.loc["treat_skills", "n_obs"] == len(fu)          # every planned firm-round
    # combined arm vs control = sum of the three coefficients; SE from the covariance
    rel_close(pooled.loc["arm: Training + grant", "estimate"], beta[1:4].sum())
    rel_close(pooled.loc["arm: Training + grant", "std_error"], np.sqrt(V[1:4, 1:4].sum()))
    rel_close(pooled.loc["arm: Grant only", "estimate"], beta[2])
    ctrl = fu[(fu["treat_skills"] == 0) & (fu["treat_capital"] == 0)]
    rel_close(pooled["control_mean"], np.full(len(pooled), ctrl["attrited"].mean()))
    # joint F-test of the three terms: Wald with the CR1 covariance, F(3, G - 1)
    b, Vb = beta[1:4], V[1:4, 1:4]
    F = b @ np.linalg.solve(Vb, b) / 3
    rel_close(pooled["joint_f_stat"].iloc[0], F, 1e-8)
    rel_close(pooled["joint_p_value"].iloc[0], stats.f.sf(F, 3, fu["cluster_id"].nunique() - 1), 1e-7)
    assert (pooled["joint_df_num"] == 3).all() and (pooled["joint_df_denom"] == fu["cluster_id"].nunique() - 1).all()
    assert set(tab["model"]) == {"pooled", "by_gender", "women_only", "men_only"}


def test_attrition_joint_test_under_cr2_is_the_cr2_wald_on_g_minus_1_df():
    """CR2: the joint F is the Wald statistic with the (dense, independent) CR2 covariance, and the
    table states its df: F(q, G - 1) (the Bell-McCaffrey df is per contrast, not for a joint test)."""
    from test_estimation_variance import dense_cr2
    df = with_extras(make_data(seed=26, n_clusters=16), seed=6)
    fu = df[df["followup"]]
    group = params_group("estimate")
    tab = attrition_table(fu, params_group("estimate", treatments=TREATS, vcov="CR2", fixed_effects=["round"]), "s",
                          group["alpha"], group["mde_power"])
    pooled = tab[tab["model"] == "pooled"]
    d, X, names = hand_design(fu.assign(**{Y: fu["attrited"].astype(float)}), baseline=False, fe=("round",))
    V, _ = dense_cr2(X, d[Y].to_numpy(), d["cluster_id"].to_numpy(), np.ones(len(d)), [])
    b = np.linalg.lstsq(X, d[Y].to_numpy(), rcond=None)[0][1:4]
    F = b @ np.linalg.solve(V[1:4, 1:4], b) / 3
    G = fu["cluster_id"].nunique()
    rel_close(pooled["joint_f_stat"].iloc[0], F, 1e-7)
    assert pooled["joint_df_num"].iloc[0] == 3 and pooled["joint_df_denom"].iloc[0] == G - 1
    rel_close(pooled["joint_p_value"].iloc[0], stats.f.sf(F, 3, G - 1), 1e-6)

    # Men only, the dense CR2 covariance of the 3 terms has rank 2 (one contrast of the arms has no
    # variance in this sample): the test is not reported, here and in the by-gender model that
    # holds the men's terms, rather than divided by rounding noise (it was F = 2.01 by luck).
    men = fu[fu["female_owner"] == 0]
    d, X, _ = hand_design(men.assign(**{Y: men["attrited"].astype(float)}), baseline=False, fe=("round",))
    V, _ = dense_cr2(X, d[Y].to_numpy(), d["cluster_id"].to_numpy(), np.ones(len(d)), [])
    sd = np.sqrt(np.diag(V[1:4, 1:4]))
    assert np.linalg.eigvalsh(V[1:4, 1:4] / np.outer(sd, sd)).min() < 1e-10
    for model in ("men_only", "by_gender"):
        rows = tab[tab["model"] == model]
        assert rows["joint_f_stat"].isna().all() and rows["joint_p_value"].isna().all()
        assert (rows["joint_df_num"] == (3 if model == "men_only" else 6)).all()
    women = tab[tab["model"] == "women_only"]
    assert women["joint_f_stat"].notna().all()


def _context(folder, params):
    """The estimate stage's context for a study without a YAML, reading and writing in ``folder``."""
    from pipeline.stage_context import StageContext
    return StageContext("estimate", study="s", params=params, inputs={"analysis.parquet": folder / "analysis.parquet"},
                        outputs={name: folder / name for name in stage.OUTPUT_FILES.values()})


def test_estimate_all_and_run_write_every_output(tmp_path):
    df = with_extras(make_data(seed=25, n_clusters=48, firms_per_cluster=5), seed=5)
    params = {**params_group("estimate", vcov="CR1", q_families=None, primary_outcome=None),
              "outcomes": [Y, "revenue_usd_ppp_month", "not_there"], "primary_outcome": Y,
              "treatments": TREATS, "bootstrap_reps": 5, "permutations": 9, "seed": 3, "wild_bootstrap_reps": 99,
              "qte_quantiles": [0.25, 0.5], "balance_covariates": ["owner_age", Y, "female_owner"],
              "descriptive_controls": ["owner_age_bl"]}
    (tmp_path / "s").mkdir()
    df.to_parquet(tmp_path / "s" / "analysis.parquet")
    out = stage.run(_context(tmp_path / "s", params))
    for name in stage.OUTPUT_FILES.values():
        assert (tmp_path / "s" / name).exists(), name
    res = pd.read_csv(tmp_path / "s" / "results.csv")
    assert list(res.columns) == TIDY_COLUMNS
    assert set(res["transform"]) == set(TRANSFORMS)   # stage default: all five
    assert "descriptive" in set(res["model"]) and "round_2" in set(res["model"])
    assert out["summary"]["skipped_outcomes"] == ["not_there"]
    coefs = pd.read_csv(tmp_path / "s" / "coefficients_by_gender.csv")
    assert list(coefs.columns) == ["effect", "sex", "estimate", "ci_low", "ci_high"]
    assert len(coefs) == 9 and set(coefs["sex"]) == {"women", "men", "diff"}
    bg = res[(res["outcome"] == Y) & (res["transform"] == "level") & (res["model"] == "by_gender")]
    rel_close(coefs["estimate"], bg["estimate"], 1e-9)
    qt = pd.read_csv(tmp_path / "s" / "qte.csv")
    assert set(qt["sample"]) == {"women", "men", "diff"} and set(qt["quantile"]) == {0.25, 0.5}
    lee = pd.read_csv(tmp_path / "s" / "lee_bounds.csv")
    assert len(lee) == 9 and (lee["lower"] <= lee["upper"]).all()
    bal = pd.read_csv(tmp_path / "s" / "balance.csv")
    assert {"normdiff_training_only", "ri_p_value", "f_p_value"} <= set(bal.columns)
    m = out["key_estimates"]
    assert set(m["effects"]) == {f"{e}_{s}" for e in ("skills", "capital", "skills_x_capital")
                                 for s in ("women", "men", "diff")}
    # deterministic: a second run gives identical tables
    again = stage.estimate_all(df, params, "s")
    for key in ("results", "qte", "lee_bounds", "balance", "balance_joint", "attrition"):
        pd.testing.assert_frame_equal(out[key], again[key])


def test_tables_without_rows_are_header_only_csvs_with_the_reason(tmp_path):
    import json
    df = with_extras(make_data(seed=44, n_clusters=24, firms_per_cluster=5), seed=6)
    df["attrited"] = 0                       # every planned interview observed: no attrition
    df["female_owner"] = 1                   # all women: no gender models
    params = {**params_group("estimate", vcov="CR1", q_families=None, primary_outcome=None),
              "outcomes": [Y], "treatments": TREATS, "transforms": ["level"], "by_round": False,
              "bootstrap_reps": 3, "qte_quantiles": [0.5], "balance_covariates": ["not_in_the_data"]}
    (tmp_path / "s").mkdir()
    df.to_parquet(tmp_path / "s" / "analysis.parquet")
    stage.run(_context(tmp_path / "s", params))
    summary = json.loads((tmp_path / "s" / "estimate_summary.json").read_text())
    for key, name in stage.OUTPUT_FILES.items():
        if not name.endswith(".csv"):
            continue
        table = pd.read_csv(tmp_path / "s" / name)       # never EmptyDataError
        assert list(table.columns)[:len(stage.TABLE_COLUMNS[key])] == stage.TABLE_COLUMNS[key], name
        info = summary["tables"][key]
        assert info["rows"] == len(table)
        assert info["status"] == ("estimated" if len(table) else "not_applicable"), name
    tables = summary["tables"]
    for name in ("balance", "balance_joint", "attrition", "lee_bounds", "coefficients_by_gender"):
        assert tables[name]["rows"] == 0 and tables[name]["status"] == "not_applicable", name
    assert "no balance covariates" in tables["balance"]["reason"]
    assert "no attrition" in tables["attrition"]["reason"] and "no attrition" in tables["lee_bounds"]["reason"]
    assert "sex" in tables["coefficients_by_gender"]["reason"]
    assert tables["results"] == {"rows": summary["rows"], "status": "estimated", "reason": None}
    assert (tmp_path / "s" / "balance.csv").read_text().startswith("study,sample,covariate,")


def test_a_table_without_columns_is_never_written(tmp_path):
    from pipeline.io import write_csv
    from pipeline.io import write_outputs
    with pytest.raises(ValueError, match="no columns"):
        write_csv(tmp_path / "x.csv", pd.DataFrame())
    with pytest.raises(ValueError, match="no columns"):
        write_outputs(tmp_path, {"x.csv": pd.DataFrame()})
    assert not (tmp_path / "x.csv").exists()
    write_csv(tmp_path / "y.csv", pd.DataFrame(columns=["a", "b"]))
    assert (tmp_path / "y.csv").read_text() == "a,b\n"


def test_wild_p_values_only_below_the_cluster_threshold_and_order_free():
    df = make_data(seed=3, n_clusters=14)
    spec_params = params_group("estimate", treatments=list(TREATS), vcov="CR2")
    few = WildSettings(below_clusters=15, reps=999, weights="auto", seed=9)
    table = estimate_study(df, [Y], spec_params, "s", wild=few, **study_kw())
    assert table["wild_p_value"].notna().all() and table["wild_p_value"].between(0, 1).all()
    none = estimate_study(df, [Y], spec_params, "s", wild=WildSettings(14, 999, "auto", 9), **study_kw())
    assert none["wild_p_value"].isna().all()                          # 14 clusters, not fewer than 14
    pd.testing.assert_frame_equal(none.drop(columns="wild_p_value"), table.drop(columns="wild_p_value"))
    # one term by hand: the pooled skills effect, Webb weights (14 clusters > 12: Rademacher under auto)
    res = fit(df, make_spec(Y, TREATS, vcov="CR2"))
    d = res.wild_design
    r = np.array([1.0 if c == "treat_skills" else 0.0 for c in d.X.columns])
    key = "|".join(["s", Y, "level", "pooled", "all", "treat_skills"])
    import zlib
    by_hand = wild_cluster_test(d.y, d.X.to_numpy(), d.groups, r, fe=d.fe, reps=999,
                                               weight_type="rademacher",
                                               seed=np.random.SeedSequence([9, zlib.crc32(key.encode())]))
    row = table[(table["model"] == "pooled") & (table["term"] == "treat_skills")].iloc[0]
    assert row["wild_p_value"] == by_hand.p_value
    with pytest.raises(ValueError, match="wild_bootstrap_weights"):
        wild_settings(params_group("estimate", wild_bootstrap_weights="mammen"))
