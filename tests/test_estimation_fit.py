"""Tests for pipeline.estimation.fit: one model of a specification, checked against the hand references
(closed form), a simulation's known truth, statsmodels with explicit dummies and the
by-gender parameterisations' identities.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from _estimation_data import statsmodels_fit, Y, TREATS, make_data, hand_design, hand_ols, rel_close
from pipeline.estimation.fit import AbsorbedResults, fit
from pipeline.estimation.tables import TIDY_COLUMNS, estimate_study, tidy
from pipeline.estimation.wild import WildSettings, wild_cluster_test
from _params import make_spec, params_group, study_kw, tidy_kw


def reported(names):
    """Positions of the parameters fit reports: all but the intercept and the FE dummies."""
    return [i for i, n in enumerate(names) if n != "const" and "[" not in n]


@pytest.mark.parametrize("weighted", [False, True])
def test_pooled_matches_closed_form_cluster(weighted):
    df = make_data(seed=1, weights=weighted)
    spec = make_spec(Y, TREATS, weights="weight" if weighted else None, vcov="CR1")
    res = fit(df, spec)
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else None
    beta, V, df_t = hand_ols(X, d[Y].to_numpy(), d["cluster_id"].to_numpy(), w)

    x = reported(names)                              # FE absorbed; K counts their dummies
    assert list(res.params.index) == [names[i] for i in x]
    rel_close(res.params.to_numpy(), beta[x])
    rel_close(res.bse.to_numpy(), np.sqrt(np.diag(V))[x])
    rel_close(res.cov_params().to_numpy(), V[np.ix_(x, x)])

    t = tidy(res, study="x", **tidy_kw())
    se = np.sqrt(np.diag(V))
    q = stats.t.ppf(0.975, df_t)
    assert df_t == df["cluster_id"].nunique() - 1
    for i, term in [(1, "treat_skills"), (2, "treat_capital"), (3, "treat_skills_x_treat_capital")]:
        row = t.set_index("term").loc[term]
        rel_close(row["estimate"], beta[i])
        rel_close(row["std_error"], se[i])
        rel_close([row["ci_low"], row["ci_high"]], [beta[i] - q * se[i], beta[i] + q * se[i]])
        rel_close(row["p_value"], 2 * stats.t.sf(abs(beta[i] / se[i]), df_t))
    assert t["term"].tolist() == ["treat_skills", "treat_capital", "treat_skills_x_treat_capital"]
    assert (t["n_obs"] == len(d)).all() and (t["n_clusters"] == d["cluster_id"].nunique()).all()
    ctrl = (d["treat_skills"] == 0) & (d["treat_capital"] == 0)
    cm = np.average(d.loc[ctrl, Y], weights=None if w is None else w[ctrl.to_numpy()])
    rel_close(t["control_mean"], np.full(3, cm))
    rel_close(t["effect_pct_of_control_mean"], 100 * t["estimate"] / cm)


def test_hc1_when_cluster_is_none():
    df = make_data(seed=2)
    res = fit(df, make_spec(Y, TREATS, cluster=None, vcov="CR1"))
    d, X, names = hand_design(df)
    beta, V, df_t = hand_ols(X, d[Y].to_numpy(), groups=None)
    n, k = X.shape
    # One observation per cluster: G/(G-1)*(N-1)/(N-K) = N/(N-K), the HC1 factor.
    x = reported(names)
    assert list(res.params.index) == [names[i] for i in x]
    rel_close(res.params.to_numpy(), beta[x])
    rel_close(res.bse.to_numpy(), np.sqrt(np.diag(V))[x])
    t = tidy(res, **tidy_kw())
    assert t["n_clusters"].isna().all()
    q = stats.t.ppf(0.975, n - k)
    se = np.sqrt(V[2, 2])
    row = t.set_index("term").loc["treat_capital"]
    rel_close([row["ci_low"], row["ci_high"]], [beta[2] - q * se, beta[2] + q * se])


def test_no_baseline_is_plain_ols_and_one_treatment():
    df = make_data(seed=3).drop(columns=[f"{Y}_bl", f"{Y}_bl_missing"])
    res = fit(df, make_spec(Y, ["treat_capital"], vcov="CR1"))
    d, X, names = hand_design(df, treats=("treat_capital",), interact=False, baseline=False)
    beta, V, _ = hand_ols(X, d[Y].to_numpy(), d["cluster_id"].to_numpy())
    x = reported(names)
    assert list(res.params.index) == [names[i] for i in x]
    rel_close(res.params.to_numpy(), beta[x])
    rel_close(res.bse.to_numpy(), np.sqrt(np.diag(V))[x])
    assert res.estimate_info.baseline_columns == ()


TRUTH = {"women": {"treat_skills": 4.0, "treat_capital": 10.0, "interaction": -5.0},
         "men": {"treat_skills": 2.0, "treat_capital": 30.0, "interaction": 6.0}}


@pytest.fixture(scope="module")
def sim():
    df = make_data(seed=20240611, n_clusters=400, firms_per_cluster=10, n_strata=8,
                   effects=TRUTH, noise=30.0)
    return df, estimate_study(df, [Y, "revenue_usd_ppp_month"], params_group("estimate", treatments=TREATS, vcov="CR1"),
                              "sim", **study_kw())


def test_simulation_recovers_gender_effects(sim):
    df, out = sim
    key = {"treat_skills": "treat_skills", "treat_capital": "treat_capital",
           "treat_skills_x_treat_capital": "interaction"}
    rows = out[out["outcome"] == Y]
    checked = 0
    for _, r in rows.iterrows():
        if r["model"] == "pooled":
            continue
        base = r["term"]
        if r["model"] == "by_gender":
            base, sex = r["term"].rsplit("_", 1)
            truth = (TRUTH["women"][key[base]] - TRUTH["men"][key[base]] if sex == "diff"
                     else TRUTH[sex][key[base]])
        else:
            truth = TRUTH["women" if r["sample"] == "women" else "men"][key[base]]
        assert abs(r["estimate"] - truth) < 3 * r["std_error"], (r["model"], r["term"])
        checked += 1
    assert checked == 9 + 3 + 3
    # The capital gap (-20) is detected.
    gap = rows.set_index(["model", "term"]).loc[("by_gender", "treat_capital_diff")]
    assert gap["p_value"] < 1e-3 and gap["ci_high"] < 0


def test_diff_row_is_women_minus_men_with_covariance_se(sim):
    df, _ = sim
    spec = make_spec(Y, TREATS, vcov="CR1")
    res = fit(df, spec, by_gender=True)
    t = tidy(res, **tidy_kw()).set_index("term")
    V = res.cov_params()
    G = df.loc[df["followup"] & df[Y].notna(), "cluster_id"].nunique()
    for term in ["treat_skills", "treat_capital", "treat_skills:treat_capital"]:
        name = term.replace(":", "_x_")
        f, m = f"{term}:female", f"{term}:male"
        diff = t.loc[f"{name}_diff"]
        assert diff["estimate"] == pytest.approx(
            t.loc[f"{name}_women", "estimate"] - t.loc[f"{name}_men", "estimate"], rel=1e-12, abs=1e-12)
        se = np.sqrt(V.loc[f, f] + V.loc[m, m] - 2 * V.loc[f, m])
        rel_close(diff["std_error"], se, 1e-10)
        rel_close(diff["p_value"], 2 * stats.t.sf(abs(diff["estimate"] / se), G - 1), 1e-8)
        q = stats.t.ppf(0.975, G - 1)
        rel_close([diff["ci_low"], diff["ci_high"]],
                  [diff["estimate"] - q * se, diff["estimate"] + q * se], 1e-10)
        assert np.isnan(diff["control_mean"]) and np.isnan(diff["effect_pct_of_control_mean"])


def test_study_table_shape_and_order(sim):
    df, out = sim
    assert list(out.columns) == TIDY_COLUMNS
    terms = ["treat_skills", "treat_capital", "treat_skills_x_treat_capital"]
    bg = [f"{t}_{s}" for t in terms for s in ("women", "men", "diff")]
    expected = []
    for o in (Y, "revenue_usd_ppp_month"):
        expected += [(o, "pooled", "all", t) for t in terms]
        expected += [(o, "by_gender", "all", t) for t in bg]
        expected += [(o, "women_only", "women", t) for t in terms]
        expected += [(o, "men_only", "men", t) for t in terms]
    assert list(out[["outcome", "model", "sample", "term"]].itertuples(index=False, name=None)) == expected
    assert (out["study"] == "sim").all()
    again = estimate_study(df, [Y, "revenue_usd_ppp_month"], params_group("estimate", treatments=TREATS, vcov="CR1"),
                           "sim", **study_kw())
    pd.testing.assert_frame_equal(out, again)
    # Gender rows carry that gender's control mean.
    d = df[df["followup"] & df[Y].notna() & (df["treat_skills"] == 0) & (df["treat_capital"] == 0)]
    o = out[out["outcome"] == Y].set_index(["model", "term"])
    rel_close(o.loc[("by_gender", "treat_capital_women"), "control_mean"],
              d.loc[d["female_owner"] == 1, Y].mean())
    rel_close(o.loc[("men_only", "treat_capital"), "control_mean"], d.loc[d["female_owner"] == 0, Y].mean())


def test_fully_interacted_equals_split_coefficients():
    df = make_data(seed=5, n_clusters=60, weights=True)    # clusters contain both sexes
    spec = make_spec(Y, TREATS, weights="weight", controls=["revenue_usd_ppp_month_bl"], vcov="CR1")
    joint = tidy(fit(df, spec, by_gender=True), **tidy_kw()).set_index("term")
    for sample in ("women", "men"):
        split = tidy(fit(df, spec, sample=sample), **tidy_kw()).set_index("term")
        for term in split.index:
            rel_close(joint.loc[f"{term}_{sample}", "estimate"], split.loc[term, "estimate"], 1e-8)
            rel_close(joint.loc[f"{term}_{sample}", "control_mean"], split.loc[term, "control_mean"], 1e-12)


def test_fully_interacted_se_relation_when_clusters_nest_in_gender():
    """With every cluster single-sex the meat is block diagonal, so the joint and split
    cluster covariances differ only by the CR1 small-sample factor G/(G-1)(N-1)/(N-K)."""
    df = make_data(seed=6, n_clusters=48, mixed_gender_clusters=False)
    spec = make_spec(Y, TREATS, vcov="CR1")
    rj = fit(df, spec, by_gender=True)

    def cj(r):
        return r.estimate_info.n_clusters / (r.estimate_info.n_clusters - 1) * (
            (r.nobs - 1) / (r.nobs - r.fe_result.k_params))

    for sample, sex in (("women", "female"), ("men", "male")):
        rs = fit(df, spec, sample=sample)
        for term in ["treat_skills", "treat_capital", "treat_skills:treat_capital"]:
            rel_close(rj.bse[f"{term}:{sex}"], rs.bse[term] * np.sqrt(cj(rj) / cj(rs)), 1e-8)
    # and the women-men covariance is zero
    V = rj.cov_params()
    assert abs(V.loc["treat_capital:female", "treat_capital:male"]) < 1e-10 * V.loc[
        "treat_capital:female", "treat_capital:female"]


def test_partially_interacted_diff_equals_interaction_parameterisation():
    """gender_interact_all=False: common controls/FE. Then treat_diff must equal the
    coefficient and CR1 SE of treat x female in y ~ treat + treat x female + female + ...
    (a nonsingular reparameterisation with the same K), computed here by hand."""
    df = make_data(seed=7, n_clusters=50)
    spec = make_spec(Y, TREATS, gender_interact_all=False, vcov="CR1")
    t = tidy(fit(df, spec, by_gender=True), **tidy_kw()).set_index("term")

    def fem(d):
        return d["female_owner"].to_numpy(float)
    extra = [("female_owner", fem),
             ("skills_x_female", lambda d: (d["treat_skills"] * d["female_owner"]).to_numpy(float)),
             ("capital_x_female", lambda d: (d["treat_capital"] * d["female_owner"]).to_numpy(float)),
             ("inter_x_female", lambda d: (d["treat_skills"] * d["treat_capital"]
                                           * d["female_owner"]).to_numpy(float))]
    d, X, names = hand_design(df, extra=extra)
    beta, V, _ = hand_ols(X, d[Y].to_numpy(), d["cluster_id"].to_numpy())
    se = np.sqrt(np.diag(V))
    for term, hname in [("treat_skills", "skills_x_female"), ("treat_capital", "capital_x_female"),
                        ("treat_skills_x_treat_capital", "inter_x_female")]:
        i = names.index(hname)
        rel_close(t.loc[f"{term}_diff", "estimate"], beta[i], 1e-8)
        rel_close(t.loc[f"{term}_diff", "std_error"], se[i], 1e-8)
        # men's effect is the base coefficient
        j = names.index(term.replace("_x_", ":"))
        rel_close(t.loc[f"{term}_men", "estimate"], beta[j], 1e-8)


def test_women_only_study_skips_men():
    df = make_data(seed=8)
    df = df[df["female_owner"] == 1].reset_index(drop=True)
    out = estimate_study(df, [Y], params_group("estimate", treatments=TREATS, vcov="CR1"), "women_study", **study_kw())
    assert out["model"].unique().tolist() == ["pooled", "women_only"]
    assert out["sample"].unique().tolist() == ["all", "women"]


def test_capital_only_study_infers_treatments():
    df = make_data(seed=9).drop(columns=["treat_skills"])
    out = estimate_study(df, [Y], params_group("estimate", treatments="auto", vcov="CR1"), "capital_study", **study_kw())
    assert set(out["term"]) == {"treat_capital", "treat_capital_women", "treat_capital_men",
                                "treat_capital_diff"}


def test_uncrossed_design_has_no_interaction():
    df = make_data(seed=10)
    df = df[~((df["treat_skills"] == 1) & (df["treat_capital"] == 1))].reset_index(drop=True)
    t = tidy(fit(df, make_spec(Y, TREATS, vcov="CR1")), **tidy_kw())
    assert t["term"].tolist() == ["treat_skills", "treat_capital"]


def test_gender_specific_strata_collinearity_is_handled():
    """Strata defined within sex make female_owner collinear with common stratum dummies;
    a redundant FE column is dropped (never a treatment term) and results stay well defined."""
    df = make_data(seed=15)
    df["stratum"] = df["stratum"] + "_" + df["female_owner"].astype(str)
    spec = make_spec(Y, TREATS, vcov="CR1")
    full = fit(df, spec, by_gender=True)
    assert full.estimate_info.dropped_columns == ()
    women = fit(df, spec, sample="women")
    rel_close(full.params["treat_capital:female"], women.params["treat_capital"])
    partial = make_spec(Y, TREATS, gender_interact_all=False, vcov="CR1")
    part = fit(df, partial, by_gender=True)
    assert part.estimate_info.dropped_columns == ("female_owner",)   # absorbed FE span female_owner
    ref, dropped = statsmodels_fit(df, partial, by_gender=True)      # with dummies: one stratum dummy
    assert len(dropped) == 1 and dropped[0].startswith("stratum[")
    assert np.linalg.matrix_rank(ref.model.exog) == ref.model.exog.shape[1]
    names = list(part.params.index)
    rel_close(part.params.to_numpy(), ref.params[names].to_numpy())
    rel_close(part.bse.to_numpy(), ref.bse[names].to_numpy())


@pytest.mark.parametrize("fit_kw,spec_kw,data_kw", [
    ({}, {}, {}),
    ({}, {"weights": "weight"}, {"weights": True}),
    ({}, {"cluster": None}, {}),
    ({"by_gender": True}, {}, {}),
    ({"by_gender": True}, {"weights": "weight", "controls": ["revenue_usd_ppp_month_bl"]},
     {"weights": True}),
    ({"by_gender": True}, {"gender_interact_all": False}, {}),
    ({"by_gender": True}, {"fixed_effects": ()}, {}),
    ({"sample": "women"}, {"fixed_effects": ["stratum"]}, {}),
    # three FE: absorbed by alternating projections, so fit_ols absorbs X itself (no partialled rows)
    ({}, {"fixed_effects": ["stratum", "round", "female_owner"], "weights": "weight"}, {"weights": True}),
], ids=["pooled", "wls", "hc1", "by_gender", "by_gender_wls_controls", "by_gender_partial",
        "by_gender_no_fe", "women_one_fe", "three_fe_wls"])
def test_fit_equals_statsmodels_with_explicit_dummies(fit_kw, spec_kw, data_kw):
    """The one fitting path (FE absorbed) against statsmodels OLS / WLS with explicit dummies
    (tests/_estimation_data.statsmodels_fit): every tidy row (coefficients and women - men
    contrasts through statsmodels' t_test), every parameter, the covariance, an F-test and the wild
    bootstrap p-values (the same model refitted with dummies as regressors) to 1e-8."""
    df = make_data(seed=21, **data_kw)
    spec = make_spec(Y, TREATS, **{"vcov": "CR1", **spec_kw})
    res = fit(df, spec, **fit_kw)
    ref, _ = statsmodels_fit(df, spec, **fit_kw)
    assert isinstance(res, AbsorbedResults)
    t = tidy(res, **tidy_kw())
    ref_names = list(ref.params.index)
    for td, (_, row) in zip(res.estimate_info.terms, t.iterrows()):
        assert row["term"] == td.term
        r = np.zeros(len(ref_names))
        for param, weight in td.weights:
            r[ref_names.index(param)] = weight
        tt = ref.t_test(r)
        rel_close(row["estimate"], float(np.squeeze(tt.effect)))
        rel_close(row["std_error"], float(np.squeeze(tt.sd)))
        rel_close(row["p_value"], float(np.squeeze(tt.pvalue)))
        rel_close([row["ci_low"], row["ci_high"]], np.asarray(tt.conf_int()).ravel())
    assert (t["n_obs"] == int(ref.nobs)).all()
    names = list(res.params.index)
    rel_close(res.params.to_numpy(), ref.params[names].to_numpy())
    rel_close(res.cov_params().to_numpy(), ref.cov_params().loc[names, names].to_numpy())
    R = np.zeros((2, len(names)))
    R[0, 0] = R[1, 1] = 1.0
    Rs = np.zeros((2, len(ref_names)))
    for i in range(2):
        Rs[i, ref_names.index(names[i])] = 1.0
    fa, fb = ref.f_test(Rs), res.f_test(R)
    rel_close(float(np.squeeze(fb.fvalue)), float(np.squeeze(fa.fvalue)))
    rel_close(float(np.squeeze(fb.pvalue)), float(np.squeeze(fa.pvalue)))
    if spec.cluster is not None:
        # the wild bootstrap refits the model with FE absorbed or as dummies: same draws, same p
        wild = WildSettings(below_clusters=1000, reps=499, weights="rademacher", seed=5)
        got = tidy(res, wild=wild, **tidy_kw())["wild_p_value"]
        assert got.notna().all() and (got > 0).any()
        exog = ref.model.exog[:, 1:]                      # without the constant (partialled out)
        info = res.estimate_info
        for td, p_value in zip(info.terms, got):
            key = "|".join(str(x) for x in (None, Y, "level", info.model, info.sample, td.term))
            r = np.zeros(exog.shape[1])
            for param, weight in td.weights:
                r[ref_names.index(param) - 1] = weight
            by_dummies = wild_cluster_test(ref.model.endog, exog, res.wild_design.groups, r, reps=499,
                                           weight_type="rademacher", weights=res.wild_design.weights,
                                           seed=np.random.SeedSequence([5, zlib.crc32(key.encode("utf-8"))]))
            assert by_dummies.p_value == p_value


def _statsmodels_reference(d, with_dummy):
    """statsmodels OLS, CR1 by cluster with t(G-1), on the rows ``d`` (follow-up, outcome observed):
    treatments, their interaction, the baseline (and its missing dummy), strata and round dummies."""
    import statsmodels.api as sm
    X = pd.DataFrame({"const": 1.0, "treat_skills": d["treat_skills"].astype(float),
                      "treat_capital": d["treat_capital"].astype(float),
                      "treat_skills:treat_capital": (d["treat_skills"] * d["treat_capital"]).astype(float),
                      f"{Y}_bl": d[f"{Y}_bl"]})
    if with_dummy:
        X[f"{Y}_bl_missing"] = d[f"{Y}_bl_missing"].astype(float)
    for f in ("stratum", "round"):
        X = X.join(pd.get_dummies(d[f], prefix=f, drop_first=True, dtype=float))
    groups = pd.factorize(d["cluster_id"])[0]
    return sm.OLS(d[Y].to_numpy(), X).fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)


def test_listwise_missing_baseline_is_ols_on_the_complete_cases():
    df = make_data(seed=41, p_missing_bl=0.3)
    res = fit(df, make_spec(Y, TREATS, missing_baseline="listwise", vcov="CR1"))
    d = df[df["followup"] & df[Y].notna() & (df[f"{Y}_bl_missing"] == 0)]
    assert len(d) < (df["followup"] & df[Y].notna()).sum()      # some rows had no baseline
    ref = _statsmodels_reference(d, with_dummy=False)
    names = ["treat_skills", "treat_capital", "treat_skills:treat_capital", f"{Y}_bl"]
    rel_close(res.params[names].to_numpy(), ref.params[names].to_numpy())
    rel_close(res.bse[names].to_numpy(), ref.bse[names].to_numpy())
    assert f"{Y}_bl_missing" not in res.params.index
    t = tidy(res, **tidy_kw())
    assert (t["n_obs"] == len(d)).all()                           # the n reported is the complete cases
    rel_close(t.set_index("term").loc["treat_capital", "std_error"], ref.bse["treat_capital"])


def test_dummy_missing_baseline_reproduces_todays_numbers():
    df = make_data(seed=42, p_missing_bl=0.3)
    default = fit(df, make_spec(Y, TREATS, vcov="CR1"))
    explicit = fit(df, make_spec(Y, TREATS, missing_baseline="dummy", vcov="CR1"))
    assert make_spec(Y, TREATS, vcov="CR1").missing_baseline == "dummy"
    pd.testing.assert_frame_equal(tidy(default, **tidy_kw()), tidy(explicit, **tidy_kw()))
    d = df[df["followup"] & df[Y].notna()]
    ref = _statsmodels_reference(d, with_dummy=True)
    names = ["treat_skills", "treat_capital", "treat_skills:treat_capital", f"{Y}_bl", f"{Y}_bl_missing"]
    rel_close(default.params[names].to_numpy(), ref.params[names].to_numpy())
    rel_close(default.bse[names].to_numpy(), ref.bse[names].to_numpy())
    assert (tidy(default, **tidy_kw())["n_obs"] == len(d)).all()
