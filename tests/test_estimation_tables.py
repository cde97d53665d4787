"""Tests for pipeline.estimation.tables: the study table (models, transforms, rounds, q-values, MDE) and the
descriptive model, against hand computations.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _estimation_data import Y, TREATS, make_data, hand_design, hand_ols, rel_close, with_extras
from pipeline.estimation import stage
from pipeline.estimation.tables import (TIDY_COLUMNS, add_q_values, coerce_tidy, estimate_study, fit_descriptive,
                                        tidy_frame)
from _params import make_spec, params_group, study_kw, tidy_kw


def test_study_with_transforms_rounds_q_and_mde():
    df = with_extras(make_data(seed=22, n_clusters=40, n_followups=2), seed=2)
    df.loc[df.index[:30], Y] = -1.0
    out = estimate_study(df, [Y, "revenue_usd_ppp_month"], params_group("estimate", treatments=TREATS, vcov="CR1"), "s",
                         **study_kw(transforms=["log", "level", "ihs", "trimmed", "unwinsorised"], by_round=True))
    assert list(out.columns) == TIDY_COLUMNS
    # level first; revenue has no unwinsorised column -> that transform skipped for it
    assert list(pd.unique(out.loc[out["outcome"] == Y, "transform"])) == [
        "level", "log", "ihs", "trimmed", "unwinsorised"]
    assert "unwinsorised" not in set(out.loc[out["outcome"] != Y, "transform"])
    assert list(pd.unique(out["model"])) == ["pooled", "by_gender", "women_only", "men_only",
                                             "round_1", "round_2"]
    # round_2 = the pooled specification on round-2 rows, by hand
    sub = df[df["round"] == 2]
    d, X, names = hand_design(sub)
    beta, V, dft = hand_ols(X, d[Y].to_numpy(), d["cluster_id"].to_numpy())
    r2 = out[(out["outcome"] == Y) & (out["transform"] == "level") & (out["model"] == "round_2")].set_index("term")
    rel_close(r2["estimate"], beta[1:4])
    rel_close(r2["std_error"], np.sqrt(np.diag(V))[1:4])
    # MDE: (t_0.8 + t_0.975)(G - 1) x SE, and as % of the control mean
    rel_close(r2["mde"], (stats.t.ppf(0.8, dft) + stats.t.ppf(0.975, dft)) * r2["std_error"], 1e-12)
    rel_close(r2["mde_pct_of_control_mean"], 100 * r2["mde"] / r2["control_mean"].abs(), 1e-12)
    # log: sample is y > 0; pct columns NaN for log and ihs
    lg = out[(out["outcome"] == Y) & (out["transform"] == "log") & (out["model"] == "pooled")]
    assert (lg["n_obs"] == (df["followup"] & (df[Y] > 0)).sum()).all()
    nonlin = out["transform"].isin(["log", "ihs"])
    assert out.loc[nonlin, "effect_pct_of_control_mean"].isna().all()
    assert out.loc[nonlin, "mde_pct_of_control_mean"].isna().all()
    assert out.loc[~nonlin & out["control_mean"].notna(), "effect_pct_of_control_mean"].notna().all()
    # q-values: Anderson q of the two outcomes' p-values, per transform / model / sample / term
    both = out[out["transform"].isin(["level", "log", "ihs", "trimmed"])]
    for _, g in both.groupby(["transform", "model", "sample", "term"]):
        assert len(g) == 2
        rel_close(g["q_value"], inf_q(g["p_value"]), 1e-12)
    solo = out[out["transform"] == "unwinsorised"]     # a family of one (revenue has none)
    rel_close(solo["q_value"], [inf_q([p])[0] for p in solo["p_value"]], 1e-12)
    # separate families: each outcome alone
    sep = add_q_values(out, {"a": [Y], "b": ["revenue_usd_ppp_month"]})
    rel_close(sep["q_value"], [inf_q([p])[0] for p in sep["p_value"]], 1e-12)


def inf_q(p):
    from pipeline.inference import sharpened_qvalues
    return sharpened_qvalues(np.asarray(p, float))


def test_descriptive_model_matches_hand_ols():
    df = with_extras(make_data(seed=23, n_clusters=40), seed=3)
    spec = make_spec(Y, TREATS, vcov="CR1")
    t = fit_descriptive(df, spec, ["skills_index", "credit_access"], ["owner_age_bl"], study="s",
                        alpha=tidy_kw()["alpha"])
    assert t["model"].tolist() == ["descriptive"] * 2 and (t["sample"] == "women").all()
    d = df[(df["female_owner"] == 1) & df["skills_index"].notna()]

    def column(name):
        return lambda x: x[name].to_numpy(float)
    extra = [(c, column(c)) for c in ("skills_index", "credit_access", "owner_age_bl")]
    dd, X, names = hand_design(d, extra=extra)
    beta, V, _ = hand_ols(X, dd[Y].to_numpy(), dd["cluster_id"].to_numpy())
    for term in ("skills_index", "credit_access"):
        i = names.index(term)
        row = t.set_index("term").loc[term]
        rel_close(row["estimate"], beta[i])
        rel_close(row["std_error"], np.sqrt(V[i, i]))
    ctrl = dd[(dd["treat_skills"] == 0) & (dd["treat_capital"] == 0)]
    rel_close(t["control_mean"], np.full(2, ctrl[Y].mean()))
    assert t["q_value"].isna().all() and t["mde"].isna().all()
    # control group only: no treatment dummies, control rows only
    t0 = fit_descriptive(df, spec, ["skills_index"], [], control_only=True, alpha=tidy_kw()["alpha"])
    c = d[(d["treat_skills"] == 0) & (d["treat_capital"] == 0)]
    dd, X, names = hand_design(c, treats=(), interact=False,
                               extra=[("skills_index", lambda x: x["skills_index"].to_numpy(float))])
    beta, _, _ = hand_ols(X, dd[Y].to_numpy(), dd["cluster_id"].to_numpy())
    rel_close(t0["estimate"].iloc[0], beta[names.index("skills_index")])


def test_listwise_applies_to_every_model_of_the_study_and_is_recorded():
    df = with_extras(make_data(seed=43, n_clusters=32, firms_per_cluster=5, p_missing_bl=0.3), seed=4)
    kw = study_kw(transforms=["level", "ihs"], by_round=True)
    dummy = estimate_study(df, [Y], params_group("estimate", treatments=TREATS, vcov="CR1"), "s", **kw)
    listwise = estimate_study(df, [Y], params_group("estimate", treatments=TREATS, vcov="CR1", missing_baseline="listwise"),
                              "s", **kw)
    assert len(dummy) == len(listwise)
    complete = df["followup"] & df[Y].notna() & (df[f"{Y}_bl_missing"] == 0)
    for frame, n in ((dummy, (df["followup"] & df[Y].notna()).sum()), (listwise, complete.sum())):
        pooled = frame[(frame["model"] == "pooled") & (frame["transform"] == "level")]
        assert (pooled["n_obs"] == n).all()
    women = listwise[(listwise["model"] == "women_only") & (listwise["transform"] == "level")]
    assert (women["n_obs"] == (complete & (df["female_owner"] == 1)).sum()).all()
    params = {**params_group("estimate", vcov="CR1", q_families=None, primary_outcome=None),
              "outcomes": [Y], "treatments": TREATS, "transforms": ["level"], "by_round": False,
              "bootstrap_reps": 3, "permutations": 5, "qte_quantiles": [0.5], "balance_covariates": [],
              "descriptive_regressors": []}
    out = stage.estimate_all(df, params, "s", {"estimate": {"missing_baseline": "listwise"}})
    assert out["summary"]["specification"]["missing_baseline"] == "listwise"
    qt = out["qte"]
    assert (qt.loc[qt["sample"] == "women", "n_obs"] == (complete & (df["female_owner"] == 1)).sum()).all()
    with pytest.raises(ValueError, match="missing_baseline"):
        make_spec(Y, TREATS, missing_baseline="drop", vcov="CR1")


@pytest.mark.parametrize("weighted", [False, True])
def test_cr2_mde_uses_each_terms_bell_mccaffrey_df(weighted):
    """Under CR2 the MDE of every row (coefficients and the women - men contrasts) uses the t df of
    that row's interval: its Bell-McCaffrey df from the dense computation, not G - 1."""
    from test_estimation_variance import dense_cr2
    from pipeline.estimation.fit import fit
    from pipeline.estimation.tables import tidy
    df = make_data(seed=32, n_clusters=18, weights=weighted)
    spec = make_spec(Y, TREATS, vcov="CR2", fixed_effects=["round"], weights="weight" if weighted else None)
    res = fit(df, spec)
    d, X, names = hand_design(df, fe=("round",))
    w = d["weight"].to_numpy() if weighted else np.ones(len(d))
    terms = ["treat_skills", "treat_capital", "treat_skills:treat_capital"]
    contrasts = [np.eye(len(names))[names.index(t)] for t in terms]
    V, dfs = dense_cr2(X, d[Y].to_numpy(), d["cluster_id"].to_numpy(), w, contrasts)
    t = tidy(res, **tidy_kw()).set_index("term")
    power, alpha = tidy_kw()["power"], tidy_kw()["alpha"]
    G = d["cluster_id"].nunique()
    for term, c, dof in zip(terms, contrasts, dfs):
        se = np.sqrt(c @ V @ c)
        expected = (stats.t.ppf(power, dof) + stats.t.ppf(1 - alpha / 2, dof)) * se
        row = t.loc[term.replace(":", "_x_")]
        rel_close(row["mde"], expected, 1e-7)
        # the interval uses the same df: half-width / SE is the same t quantile
        rel_close((row["ci_high"] - row["ci_low"]) / 2 / row["std_error"], stats.t.ppf(1 - alpha / 2, dof), 1e-9)
        assert dof < G - 1 and row["mde"] > (stats.t.ppf(power, G - 1) + stats.t.ppf(1 - alpha / 2, G - 1)) * se


def test_cr2_mde_of_the_women_minus_men_row_uses_the_contrast_df():
    from pipeline.estimation.fit import fit
    from pipeline.estimation.tables import tidy
    df = make_data(seed=31, n_clusters=20)
    res = fit(df, make_spec(Y, TREATS, vcov="CR2", fixed_effects=["round"]), by_gender=True)
    names = list(res.params.index)
    power, alpha = tidy_kw()["power"], tidy_kw()["alpha"]
    t = tidy(res, **tidy_kw()).set_index("term")
    for term in ("treat_skills", "treat_capital"):
        c = np.zeros(len(names))
        c[names.index(f"{term}:female")], c[names.index(f"{term}:male")] = 1.0, -1.0
        dof = float(res.fe_result.contrast_df(c)[0])
        row = t.loc[f"{term}_diff"]
        assert dof != res.estimate_info.n_clusters - 1
        rel_close(row["mde"], (stats.t.ppf(power, dof) + stats.t.ppf(1 - alpha / 2, dof)) * row["std_error"], 1e-12)
        # the women row: its own coefficient df
        dof_w = float(res.df_params[f"{term}:female"])
        rel_close(t.loc[f"{term}_women", "mde"],
                  (stats.t.ppf(power, dof_w) + stats.t.ppf(1 - alpha / 2, dof_w)) * t.loc[f"{term}_women", "std_error"],
                  1e-12)


@pytest.mark.parametrize("study, n_clusters", [(None, 40), ("s1", None), ("s1", np.int64(40))])
def test_tidy_frame_equals_the_rows_frame_coerced(study, n_clusters):
    """tidy_frame (each column made in its dtype from the rows) gives the frame coerce_tidy makes of
    a frame of the rows: text str (object where missing), n_obs int64, n_clusters Int64, floats."""
    rows = [{**{c: float(k + j) for j, c in enumerate(TIDY_COLUMNS)}, "study": study, "outcome": "profit",
             "transform": "level", "model": "by_gender", "sample": "all", "term": f"t{k}",
             "n_obs": 100 + k, "n_clusters": n_clusters, "q_value": np.nan} for k in range(3)]
    got, expected = tidy_frame(rows), coerce_tidy(pd.DataFrame(rows, columns=TIDY_COLUMNS))
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got["study"].dtype == (object if study is None else "str")
    assert str(got["n_clusters"].dtype) == "Int64" and got["n_obs"].dtype == "int64"
