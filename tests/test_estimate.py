"""Tests for pipeline.estimate, against references computed independently in numpy/scipy.

The hand references build the design matrix here (not with the module's helpers) and apply
the textbook formulas:
    beta = (X'WX)^-1 X'Wy
    V_CR1 = G/(G-1) * (N-1)/(N-K) * (X'WX)^-1 (sum_g X_g'W u_g u_g'W X_g) (X'WX)^-1
with K counting every regressor, fixed-effect dummies included; HC1 is the same with one
observation per cluster (G = N). Inference uses t(G-1) (cluster) or t(N-K) (HC1).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline import estimate as est
from pipeline.estimate import Spec, estimate_gender_effects, estimate_study, fit, tidy

Y = "profit_usd_ppp_month"
TREATS = ["treat_skills", "treat_capital"]


# ------------------------------------------------------------------------------------------
# Synthetic data
# ------------------------------------------------------------------------------------------
def make_data(seed=0, n_clusters=40, firms_per_cluster=6, n_strata=4, n_followups=2,
              effects=None, p_missing_bl=0.15, p_missing_y=0.1, weights=False,
              mixed_gender_clusters=True, noise=40.0, cluster_sd=10.0):
    """Firm x round panel, 2x2 factorial assigned by cluster within strata.

    effects: {"women": {...}, "men": {...}} with keys treat_skills, treat_capital, interaction.
    """
    effects = effects or {"women": {"treat_skills": 5.0, "treat_capital": 10.0, "interaction": 0.0},
                          "men": {"treat_skills": 5.0, "treat_capital": 30.0, "interaction": 0.0}}
    rng = np.random.default_rng(seed)
    clusters = np.arange(n_clusters)
    stratum_of = clusters % n_strata
    arm = np.empty(n_clusters, dtype=int)
    for s in range(n_strata):   # balanced arms within stratum
        idx = np.flatnonzero(stratum_of == s)
        arm[idx] = rng.permutation(np.arange(len(idx)) % 4)
    n = n_clusters * firms_per_cluster
    cl = np.repeat(clusters, firms_per_cluster)
    if mixed_gender_clusters:
        female = rng.integers(0, 2, n)
    else:
        female = np.repeat(clusters % 2 == 0, firms_per_cluster).astype(int)
    skills, capital = arm[cl] % 2, arm[cl] // 2
    te = np.zeros(n)
    for sex, fv in (("women", 1), ("men", 0)):
        e = effects[sex]
        te += (female == fv) * (e["treat_skills"] * skills + e["treat_capital"] * capital
                                + e["interaction"] * skills * capital)
    ability = rng.normal(100, 30, n)
    cl_shock = rng.normal(0, cluster_sd, n_clusters)
    strat_eff = 5.0 * stratum_of[cl]
    w = rng.uniform(0.5, 3.0, n) if weights else None
    frames = []
    for r in range(n_followups + 1):
        y = (0.5 * ability + 40 + strat_eff + 3.0 * r + 8.0 * female
             + (r > 0) * te + cl_shock[cl] + rng.normal(0, noise, n))
        frame = pd.DataFrame({
            "firm_id": [f"F{i:05d}" for i in range(n)],
            "round": r,
            "followup": r > 0,
            "stratum": [f"S{s}" for s in stratum_of[cl]],
            "cluster_id": [f"C{c:03d}" for c in cl],
            "female_owner": female,
            "treat_skills": skills,
            "treat_capital": capital,
            Y: y,
            "revenue_usd_ppp_month": 3 * y + rng.normal(0, 50, n),
        })
        if w is not None:
            frame["weight"] = w
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    miss_y = rng.random(len(df)) < p_missing_y
    df.loc[miss_y, Y] = np.nan
    for out in (Y, "revenue_usd_ppp_month"):
        bl = df.loc[df["round"] == 0].set_index("firm_id")[out]
        bl = bl.where(rng.random(len(bl)) >= p_missing_bl)
        vals = df["firm_id"].map(bl)
        df[f"{out}_bl_missing"] = vals.isna().astype(int)
        df[f"{out}_bl"] = vals.fillna(0.0)
    return df


# ------------------------------------------------------------------------------------------
# Hand-written references
# ------------------------------------------------------------------------------------------
def hand_design(df, outcome=Y, treats=("treat_skills", "treat_capital"), interact=True,
                baseline=True, fe=("stratum", "round"), extra=None):
    """Follow-up, non-missing-outcome rows; X built column by column in numpy."""
    d = df[df["followup"] & df[outcome].notna()].reset_index(drop=True)
    cols, names = [np.ones(len(d))], ["const"]
    for t in treats:
        cols.append(d[t].to_numpy(float)); names.append(t)
    if interact:
        cols.append((d[treats[0]] * d[treats[1]]).to_numpy(float))
        names.append(f"{treats[0]}:{treats[1]}")
    if extra:
        for name, fn in extra:
            cols.append(fn(d)); names.append(name)
    if baseline:
        for c in (f"{outcome}_bl", f"{outcome}_bl_missing"):
            cols.append(d[c].to_numpy(float)); names.append(c)
    for f in fe:
        levels = sorted(d[f].unique())
        for lev in levels[1:]:
            cols.append((d[f] == lev).to_numpy(float)); names.append(f"{f}[{lev}]")
    return d, np.column_stack(cols), names


def hand_ols(X, y, groups=None, w=None):
    """beta, CR1 (or HC1 when groups is None) covariance, and the t df."""
    n, k = X.shape
    w = np.ones(n) if w is None else np.asarray(w, float)
    XtWX = X.T @ (X * w[:, None])
    bread = np.linalg.inv(XtWX)
    beta = bread @ (X.T @ (w * y))
    u = y - X @ beta
    scores = X * (w * u)[:, None]
    if groups is None:
        groups = np.arange(n)
    codes = pd.factorize(pd.Series(groups))[0]
    G = codes.max() + 1
    sums = np.zeros((G, k))
    np.add.at(sums, codes, scores)
    meat = sums.T @ sums
    V = (G / (G - 1)) * ((n - 1) / (n - k)) * bread @ meat @ bread
    df_t = G - 1 if G < n else n - k
    return beta, V, df_t


def rel_close(a, b, tol=1e-8):
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)))


# ------------------------------------------------------------------------------------------
# Closed form
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighted", [False, True])
def test_pooled_matches_closed_form_cluster(weighted):
    df = make_data(seed=1, weights=weighted)
    spec = Spec(Y, TREATS, weights="weight" if weighted else None)
    res = fit(df, spec)
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else None
    beta, V, df_t = hand_ols(X, d[Y].to_numpy(), d["cluster_id"].to_numpy(), w)

    assert list(res.params.index) == names          # same regressors, K incl. FE dummies
    rel_close(res.params.to_numpy(), beta)
    rel_close(res.bse.to_numpy(), np.sqrt(np.diag(V)))
    rel_close(res.cov_params().to_numpy(), V)

    t = tidy(res, study="x")
    se = np.sqrt(np.diag(V))
    q = stats.t.ppf(0.975, df_t)
    assert df_t == df["cluster_id"].nunique() - 1
    for i, term, pname in [(1, "treat_skills", "treat_skills"), (2, "treat_capital", "treat_capital"),
                           (3, "treat_skills_x_treat_capital", "treat_skills:treat_capital")]:
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
    res = fit(df, Spec(Y, TREATS, cluster=None))
    d, X, names = hand_design(df)
    beta, V, df_t = hand_ols(X, d[Y].to_numpy(), groups=None)
    n, k = X.shape
    # One observation per cluster: G/(G-1)*(N-1)/(N-K) = N/(N-K), the HC1 factor.
    assert list(res.params.index) == names
    rel_close(res.params.to_numpy(), beta)
    rel_close(res.bse.to_numpy(), np.sqrt(np.diag(V)))
    t = tidy(res)
    assert t["n_clusters"].isna().all()
    q = stats.t.ppf(0.975, n - k)
    se = np.sqrt(V[2, 2])
    row = t.set_index("term").loc["treat_capital"]
    rel_close([row["ci_low"], row["ci_high"]], [beta[2] - q * se, beta[2] + q * se])


def test_no_baseline_is_plain_ols_and_one_treatment():
    df = make_data(seed=3).drop(columns=[f"{Y}_bl", f"{Y}_bl_missing"])
    res = fit(df, Spec(Y, ["treat_capital"]))
    d, X, names = hand_design(df, treats=("treat_capital",), interact=False, baseline=False)
    beta, V, _ = hand_ols(X, d[Y].to_numpy(), d["cluster_id"].to_numpy())
    assert list(res.params.index) == names
    rel_close(res.params.to_numpy(), beta)
    rel_close(res.bse.to_numpy(), np.sqrt(np.diag(V)))
    assert res.estimate_info.baseline_columns == ()


# ------------------------------------------------------------------------------------------
# Simulation with known truth
# ------------------------------------------------------------------------------------------
TRUTH = {"women": {"treat_skills": 4.0, "treat_capital": 10.0, "interaction": -5.0},
         "men": {"treat_skills": 2.0, "treat_capital": 30.0, "interaction": 6.0}}


@pytest.fixture(scope="module")
def sim():
    df = make_data(seed=20240611, n_clusters=400, firms_per_cluster=10, n_strata=8,
                   effects=TRUTH, noise=30.0)
    return df, estimate_study(df, [Y, "revenue_usd_ppp_month"], {"treatments": TREATS}, "sim")


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
    spec = Spec(Y, TREATS)
    res = fit(df, spec, by_gender=True)
    t = tidy(res).set_index("term")
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
    assert list(out.columns) == est.TIDY_COLUMNS
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
    again = estimate_study(df, [Y, "revenue_usd_ppp_month"], {"treatments": TREATS}, "sim")
    pd.testing.assert_frame_equal(out, again)
    # Gender rows carry that gender's control mean.
    d = df[df["followup"] & df[Y].notna() & (df["treat_skills"] == 0) & (df["treat_capital"] == 0)]
    o = out[out["outcome"] == Y].set_index(["model", "term"])
    rel_close(o.loc[("by_gender", "treat_capital_women"), "control_mean"],
              d.loc[d["female_owner"] == 1, Y].mean())
    rel_close(o.loc[("men_only", "treat_capital"), "control_mean"], d.loc[d["female_owner"] == 0, Y].mean())


# ------------------------------------------------------------------------------------------
# by_gender versus the split regressions
# ------------------------------------------------------------------------------------------
def test_fully_interacted_equals_split_coefficients():
    df = make_data(seed=5, n_clusters=60, weights=True)    # clusters contain both sexes
    spec = Spec(Y, TREATS, weights="weight", controls=["revenue_usd_ppp_month_bl"])
    joint = tidy(fit(df, spec, by_gender=True)).set_index("term")
    for sample in ("women", "men"):
        split = tidy(fit(df, spec, sample=sample)).set_index("term")
        for term in split.index:
            rel_close(joint.loc[f"{term}_{sample}", "estimate"], split.loc[term, "estimate"], 1e-8)
            rel_close(joint.loc[f"{term}_{sample}", "control_mean"], split.loc[term, "control_mean"], 1e-12)


def test_fully_interacted_se_relation_when_clusters_nest_in_gender():
    """With every cluster single-sex the meat is block diagonal, so the joint and split
    cluster covariances differ only by the CR1 small-sample factor G/(G-1)(N-1)/(N-K)."""
    df = make_data(seed=6, n_clusters=48, mixed_gender_clusters=False)
    spec = Spec(Y, TREATS)
    rj = fit(df, spec, by_gender=True)
    cj = lambda r: r.estimate_info.n_clusters / (r.estimate_info.n_clusters - 1) * (
        (r.nobs - 1) / (r.nobs - len(r.params)))
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
    spec = Spec(Y, TREATS, gender_interact_all=False)
    t = tidy(fit(df, spec, by_gender=True)).set_index("term")
    fem = lambda d: d["female_owner"].to_numpy(float)
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


# ------------------------------------------------------------------------------------------
# Study variants
# ------------------------------------------------------------------------------------------
def test_women_only_study_skips_men():
    df = make_data(seed=8)
    df = df[df["female_owner"] == 1].reset_index(drop=True)
    out = estimate_study(df, [Y], {"treatments": TREATS}, "women_study")
    assert out["model"].unique().tolist() == ["pooled", "women_only"]
    assert out["sample"].unique().tolist() == ["all", "women"]


def test_capital_only_study_infers_treatments():
    df = make_data(seed=9).drop(columns=["treat_skills"])
    out = estimate_study(df, [Y], {}, "capital_study")
    assert set(out["term"]) == {"treat_capital", "treat_capital_women", "treat_capital_men",
                                "treat_capital_diff"}


def test_uncrossed_design_has_no_interaction():
    df = make_data(seed=10)
    df = df[~((df["treat_skills"] == 1) & (df["treat_capital"] == 1))].reset_index(drop=True)
    t = tidy(fit(df, Spec(Y, TREATS)))
    assert t["term"].tolist() == ["treat_skills", "treat_capital"]


def test_from_params_rejects_unknown_key():
    with pytest.raises(ValueError, match="clustre"):
        Spec.from_params({"treatments": TREATS, "clustre": "cluster_id"}, Y)


# ------------------------------------------------------------------------------------------
# Error paths
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("column", ["cluster_id", "stratum", "treat_capital", Y, "followup"])
def test_missing_column_is_named(column):
    df = make_data(seed=11).drop(columns=[column])
    with pytest.raises(ValueError, match=column):
        fit(df, Spec(Y, TREATS))


def test_missing_gender_column_is_named():
    df = make_data(seed=11).drop(columns=["female_owner"])
    with pytest.raises(ValueError, match="female_owner"):
        estimate_gender_effects(df, Spec(Y, TREATS))


def test_half_baseline_columns_is_an_error():
    df = make_data(seed=11).drop(columns=[f"{Y}_bl_missing"])
    with pytest.raises(ValueError, match=f"{Y}_bl_missing"):
        fit(df, Spec(Y, TREATS))


def test_no_variation_is_named():
    df = make_data(seed=12)
    df["treat_skills"] = 0
    with pytest.raises(ValueError, match="treat_skills.*no variation"):
        fit(df, Spec(Y, TREATS))
    df = make_data(seed=12)
    df.loc[df["female_owner"] == 0, "treat_capital"] = 0     # no variation among men
    with pytest.raises(ValueError, match="treat_capital.*no variation"):
        fit(df, Spec(Y, TREATS, interact_treatments=False), by_gender=True)


def test_empty_outcome_is_named():
    df = make_data(seed=13)
    df.loc[df["followup"], Y] = np.nan
    with pytest.raises(ValueError, match=f"{Y}.*no non-missing"):
        estimate_study(df, [Y], {"treatments": TREATS}, "s")


def test_missing_design_values_are_errors():
    df = make_data(seed=14)
    df.loc[5, "cluster_id"] = None
    df.loc[5, "followup"] = True
    df.loc[5, Y] = 1.0
    with pytest.raises(ValueError, match="cluster_id"):
        fit(df, Spec(Y, TREATS))


def test_gender_specific_strata_collinearity_is_handled():
    """Strata defined within sex make female_owner collinear with common stratum dummies;
    a redundant FE column is dropped (never a treatment term) and results stay well defined."""
    df = make_data(seed=15)
    df["stratum"] = df["stratum"] + "_" + df["female_owner"].astype(str)
    spec = Spec(Y, TREATS)
    full = fit(df, spec, by_gender=True)
    assert full.estimate_info.dropped_columns == ()
    women = fit(df, spec, sample="women")
    rel_close(full.params["treat_capital:female"], women.params["treat_capital"])
    part = fit(df, Spec(Y, TREATS, gender_interact_all=False), by_gender=True)
    assert len(part.estimate_info.dropped_columns) == 1
    assert part.estimate_info.dropped_columns[0].startswith("stratum[")
    assert np.linalg.matrix_rank(part.model.exog) == part.model.exog.shape[1]


# ------------------------------------------------------------------------------------------
# Transforms, round-by-round models, q-values, MDE
# ------------------------------------------------------------------------------------------
def with_extras(df, seed=0):
    """Add what the construct stage provides beyond make_data: an unwinsorised outcome with
    outliers (and its baseline), arm labels, attrition, covariates."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    big = rng.random(len(df)) < 0.02
    df[f"{Y}_unwinsorised"] = df[Y] + big * 2000.0
    bl = df.loc[df["round"] == 0].set_index("firm_id")[f"{Y}_unwinsorised"]
    vals = df["firm_id"].map(bl).where(df[f"{Y}_bl_missing"] == 0)
    df[f"{Y}_unwinsorised_bl_missing"] = vals.isna().astype(int)
    df[f"{Y}_unwinsorised_bl"] = vals.fillna(0.0)
    labels = {(0, 0): "Control", (1, 0): "Training only", (0, 1): "Grant only", (1, 1): "Training + grant"}
    df["arm"] = [labels[(s, c)] for s, c in zip(df["treat_skills"], df["treat_capital"])]
    df["interviewed"] = np.where(df["followup"], df[Y].notna().astype(int), 1)
    df["attrited"] = 1 - df["interviewed"]
    df["skills_index"] = np.clip(rng.normal(0.3, 0.15, len(df)), 0, 1)
    df["credit_access"] = (rng.random(len(df)) < 0.2).astype(float)
    df.loc[rng.random(len(df)) < 0.05, "skills_index"] = np.nan
    df["owner_age_bl"] = rng.normal(38, 9, len(df)).round()
    df["owner_age"] = df["owner_age_bl"]
    df["owner_age_bl_missing"] = 0
    return df


def test_transform_outcome_by_hand():
    df = with_extras(make_data(seed=21, n_clusters=24), seed=1)
    df.loc[df.index[:40], Y] = -5.0       # some non-positive profits
    df.loc[df.index[40:50], Y] = 0.0
    d, name = est.transform_outcome(df, Y, "log")
    y = df[Y]
    np.testing.assert_allclose(d[name], np.log(y.where(y > 0)))
    assert d[name].isna().sum() == (y.isna() | (y <= 0)).sum()
    v = df[f"{Y}_bl"]
    ok = (df[f"{Y}_bl_missing"] == 0) & (v > 0)
    np.testing.assert_allclose(d[f"{name}_bl"], np.where(ok, np.log(v.where(ok)), 0.0))
    np.testing.assert_array_equal(d[f"{name}_bl_missing"], (~ok).astype(int))
    d, name = est.transform_outcome(df, Y, "ihs")
    np.testing.assert_allclose(d[name], np.arcsinh(y))
    d, name = est.transform_outcome(df, Y, "unwinsorised")
    np.testing.assert_array_equal(d[f"{name}_bl"], df[f"{Y}_unwinsorised_bl"])
    # trimmed: per round, values above the 90th percentile of that round (unwinsorised) dropped
    d, name = est.transform_outcome(df, Y, "trimmed", trim_top_pct=10)
    for r, g in df.groupby("round"):
        u = g[f"{Y}_unwinsorised"]
        thr = np.quantile(u.dropna(), 0.9)
        kept = d.loc[g.index, name]
        assert kept.notna().sum() == (u <= thr).sum()
        assert kept.max() <= thr
    np.testing.assert_array_equal(d[f"{name}_bl"], df[f"{Y}_bl"])
    d, name = est.transform_outcome(df, Y, "level")
    assert d is df and name == Y
    with pytest.raises(ValueError, match="unknown transform"):
        est.transform_outcome(df, Y, "sqrt")


def test_study_with_transforms_rounds_q_and_mde():
    df = with_extras(make_data(seed=22, n_clusters=40, n_followups=2), seed=2)
    df.loc[df.index[:30], Y] = -1.0
    out = estimate_study(df, [Y, "revenue_usd_ppp_month"], {"treatments": TREATS}, "s",
                         transforms=["log", "level", "ihs", "trimmed", "unwinsorised"], by_round=True)
    assert list(out.columns) == est.TIDY_COLUMNS
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
    sep = est.add_q_values(out, {"a": [Y], "b": ["revenue_usd_ppp_month"]})
    rel_close(sep["q_value"], [inf_q([p])[0] for p in sep["p_value"]], 1e-12)


def inf_q(p):
    from pipeline.inference import sharpened_qvalues
    return sharpened_qvalues(np.asarray(p, float))


def test_descriptive_model_matches_hand_ols():
    df = with_extras(make_data(seed=23, n_clusters=40), seed=3)
    spec = Spec(Y, TREATS)
    t = est.fit_descriptive(df, spec, ["skills_index", "credit_access"], ["owner_age_bl"], study="s")
    assert t["model"].tolist() == ["descriptive"] * 2 and (t["sample"] == "women").all()
    d = df[(df["female_owner"] == 1) & df["skills_index"].notna()]
    extra = [(c, (lambda c: lambda x: x[c].to_numpy(float))(c))
             for c in ("skills_index", "credit_access", "owner_age_bl")]
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
    t0 = est.fit_descriptive(df, spec, ["skills_index"], [], control_only=True)
    c = d[(d["treat_skills"] == 0) & (d["treat_capital"] == 0)]
    dd, X, names = hand_design(c, treats=(), interact=False,
                               extra=[("skills_index", lambda x: x["skills_index"].to_numpy(float))])
    beta, _, _ = hand_ols(X, dd[Y].to_numpy(), dd["cluster_id"].to_numpy())
    rel_close(t0["estimate"].iloc[0], beta[names.index("skills_index")])


def test_attrition_table_by_hand():
    df = with_extras(make_data(seed=24, n_clusters=40), seed=4)
    fu = df[df["followup"]]
    tab = est.attrition_table(fu, {"treatments": TREATS}, "s")
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
    assert set(tab["model"]) == {"pooled", "by_gender", "women_only", "men_only"}


def test_estimate_all_and_run_write_every_output(tmp_path, monkeypatch):
    from pipeline import paths
    df = with_extras(make_data(seed=25, n_clusters=48, firms_per_cluster=5), seed=5)
    params = {"outcomes": [Y, "revenue_usd_ppp_month", "not_there"], "primary_outcome": Y,
              "treatments": TREATS, "bootstrap_reps": 5, "permutations": 9, "seed": 3,
              "qte_quantiles": [0.25, 0.5], "balance_covariates": ["owner_age", Y, "female_owner"],
              "descriptive_controls": ["owner_age_bl"]}
    (tmp_path / "s").mkdir()
    df.to_parquet(tmp_path / "s" / "analysis.parquet")
    monkeypatch.setattr(paths, "processed_dir", lambda study: tmp_path / study)
    out = est.run("s", params)
    for key, name in est.OUTPUT_FILES.items():
        assert (tmp_path / "s" / name).exists(), name
    res = pd.read_csv(tmp_path / "s" / "results.csv")
    assert list(res.columns) == est.TIDY_COLUMNS
    assert set(res["transform"]) == set(est.TRANSFORMS)   # stage default: all five
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
    again = est.estimate_all(df, params, "s")
    for key in ("results", "qte", "lee_bounds", "balance", "balance_joint", "attrition"):
        pd.testing.assert_frame_equal(out[key], again[key])


# ------------------------------------------------------------------------------------------
# fastols engine and the CR3 (cluster jackknife) covariance
# ------------------------------------------------------------------------------------------
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
], ids=["pooled", "wls", "hc1", "by_gender", "by_gender_wls_controls", "by_gender_partial",
        "by_gender_no_fe", "women_one_fe"])
def test_fastols_engine_equals_statsmodels_engine(fit_kw, spec_kw, data_kw):
    df = make_data(seed=21, **data_kw)
    sm_res = fit(df, Spec(Y, TREATS, **spec_kw), **fit_kw)
    fo_res = fit(df, Spec(Y, TREATS, engine="fastols", **spec_kw), **fit_kw)
    assert isinstance(fo_res, est.AbsorbedResults)
    a, b = tidy(sm_res), tidy(fo_res)
    assert a["term"].tolist() == b["term"].tolist()
    for c in ["estimate", "std_error", "ci_low", "ci_high", "p_value", "mde"]:
        rel_close(b[c], a[c], 1e-8)
    np.testing.assert_allclose(b["control_mean"], a["control_mean"], rtol=1e-12, equal_nan=True)
    assert (a["n_obs"] == b["n_obs"]).all()
    assert fo_res.estimate_info.df_t == sm_res.estimate_info.df_t
    if spec_kw.get("cluster", "cluster_id") is not None:
        # the wild bootstrap refits the same model with FE absorbed or as dummies: same draws, same p
        wild = est.WildSettings(below_clusters=1000, reps=499, weights="rademacher", seed=5)
        wa, wb = tidy(sm_res, wild=wild)["wild_p_value"], tidy(fo_res, wild=wild)["wild_p_value"]
        assert wa.notna().all() and (wa > 0).any()
        np.testing.assert_array_equal(wa, wb)
    # every non-FE parameter and its covariance
    names = list(fo_res.params.index)
    rel_close(fo_res.params.to_numpy(), sm_res.params[names].to_numpy())
    rel_close(fo_res.cov_params().to_numpy(), sm_res.cov_params().loc[names, names].to_numpy())
    R = np.zeros((2, len(names)))
    R[0, 0] = R[1, 1] = 1.0
    Rs = np.zeros((2, len(sm_res.params)))
    for i in range(2):
        Rs[i, list(sm_res.params.index).index(names[i])] = 1.0
    fa, fb = sm_res.f_test(Rs), fo_res.f_test(R)
    rel_close(float(np.squeeze(fb.fvalue)), float(np.squeeze(fa.fvalue)))
    rel_close(float(np.squeeze(fb.pvalue)), float(np.squeeze(fa.pvalue)))


def test_fastols_engine_drops_collinear_female_with_sex_specific_strata():
    df = make_data(seed=15)
    df["stratum"] = df["stratum"] + "_" + df["female_owner"].astype(str)
    spec = Spec(Y, TREATS, gender_interact_all=False)
    a = tidy(fit(df, spec, by_gender=True))
    res = fit(df, replace(spec, engine="fastols"), by_gender=True)
    assert res.estimate_info.dropped_columns == ("female_owner",)
    rel_close(tidy(res)["std_error"], a["std_error"], 1e-8)


def _cr3_by_refits(d, X, names, groups, w=None):
    """Reference CR3: statsmodels OLS/WLS on the hand design without each cluster in turn
    (dummy columns all zero without the cluster removed; pinv handles them)."""
    import statsmodels.api as sm
    y = d[Y].to_numpy()

    def coefs(m):
        Xm = X[m][:, np.abs(X[m]).sum(axis=0) > 0]
        mod = sm.OLS(y[m], Xm) if w is None else sm.WLS(y[m], Xm, weights=w[m])
        keep = np.flatnonzero(np.abs(X[m]).sum(axis=0) > 0)
        return pd.Series(mod.fit().params, index=[names[j] for j in keep])

    full = coefs(np.ones(len(d), dtype=bool))
    levels = pd.unique(groups)
    dev = []
    for g in levels:
        b = coefs(groups != g)
        dev.append((b[full.index] - full).to_numpy())
    dev = np.array(dev)
    G = len(levels)
    return full, pd.DataFrame((G - 1) / G * dev.T @ dev, index=full.index, columns=full.index), G


@pytest.mark.parametrize("weighted", [False, True])
def test_cr3_matches_leave_one_cluster_out_statsmodels_refits(weighted):
    df = make_data(seed=22, n_clusters=24, weights=weighted)
    spec = Spec(Y, TREATS, vcov="CR3", weights="weight" if weighted else None)
    res = fit(df, spec)
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else None
    b, V, G = _cr3_by_refits(d, X, names, d["cluster_id"].to_numpy(), w)
    terms = ["treat_skills", "treat_capital", "treat_skills:treat_capital"]
    rel_close(res.params[terms].to_numpy(), b[terms].to_numpy())
    rel_close(res.cov_params().loc[terms, terms].to_numpy(), V.loc[terms, terms].to_numpy(), 1e-7)
    t = tidy(res).set_index("term")
    q = stats.t.ppf(0.975, G - 1)
    for term in terms:
        se = np.sqrt(V.loc[term, term])
        row = t.loc[term.replace(":", "_x_")]
        rel_close(row["std_error"], se, 1e-7)
        rel_close([row["ci_low"], row["ci_high"]], [b[term] - q * se, b[term] + q * se], 1e-7)
        rel_close(row["p_value"], 2 * stats.t.sf(abs(b[term] / se), G - 1), 1e-6)


def test_cr3_by_gender_diff_uses_jackknife_covariance():
    df = make_data(seed=23, n_clusters=24)
    res = fit(df, Spec(Y, TREATS, vcov="CR3"), by_gender=True)
    cr1 = fit(df, Spec(Y, TREATS), by_gender=True)
    assert res.fe_result.cov_type == "CR3"
    rel_close(res.params.to_numpy(), cr1.params[list(res.params.index)].to_numpy())
    V = res.cov_params()
    t = tidy(res).set_index("term")
    f, m = "treat_capital:female", "treat_capital:male"
    rel_close(t.loc["treat_capital_diff", "std_error"],
              np.sqrt(V.loc[f, f] + V.loc[m, m] - 2 * V.loc[f, m]), 1e-10)
    # the women coefficients' jackknife equals the women-only jackknife when, as here, the
    # model is the two regressions stacked (same leave-one-out refits per sex)
    women = fit(df, Spec(Y, TREATS, vcov="CR3"), sample="women")
    G_all, G_w = res.estimate_info.n_clusters, women.estimate_info.n_clusters
    if G_all == G_w:
        rel_close(res.bse[f], women.bse["treat_capital"], 1e-7)


def test_vcov_and_engine_validation():
    with pytest.raises(ValueError, match="vcov"):
        Spec(Y, TREATS, vcov="HC3")
    with pytest.raises(ValueError, match="needs Spec.cluster"):
        Spec(Y, TREATS, vcov="CR3", cluster=None)
    with pytest.raises(ValueError, match="engine"):
        Spec(Y, TREATS, engine="pyfixest")
    spec = Spec.from_params({"treatments": TREATS, "vcov": "CR3"}, Y)
    assert spec.vcov == "CR3" and Spec(Y, TREATS).vcov == "CR1"


@pytest.mark.parametrize("weighted", [False, True])
def test_cr2_matches_bell_mccaffrey_hand_formula(weighted):
    """CR2: (X'WX)^-1 sum_g X_g'W^1/2 A_g u*_g u*_g' A_g W^1/2 X_g (X'WX)^-1, A_g = (I - H*_gg)^-1/2,
    H* the hat matrix of the full dummy-variable design in the sqrt(w) metric (scipy sqrtm)."""
    import scipy.linalg
    df = make_data(seed=30, n_clusters=24, weights=weighted)
    res = fit(df, Spec(Y, TREATS, vcov="CR2", weights="weight" if weighted else None))
    d, X, names = hand_design(df)
    w = d["weight"].to_numpy() if weighted else np.ones(len(d))
    Xs, ys = X * np.sqrt(w)[:, None], d[Y].to_numpy() * np.sqrt(w)
    B = np.linalg.inv(Xs.T @ Xs)
    u = ys - Xs @ (B @ Xs.T @ ys)
    meat = np.zeros((X.shape[1], X.shape[1]))
    for g in pd.unique(d["cluster_id"]):
        m = (d["cluster_id"] == g).to_numpy()
        A = np.linalg.inv(scipy.linalg.sqrtm(np.eye(m.sum()) - Xs[m] @ B @ Xs[m].T).real)
        s = Xs[m].T @ A @ u[m]
        meat += np.outer(s, s)
    V = B @ meat @ B
    terms = ["treat_skills", "treat_capital", "treat_skills:treat_capital"]
    ix = [names.index(t) for t in terms]
    rel_close(res.cov_params().loc[terms, terms].to_numpy(), V[np.ix_(ix, ix)], 1e-8)
    G = d["cluster_id"].nunique()
    t = tidy(res).set_index("term")
    se = np.sqrt(V[ix[1], ix[1]])
    rel_close(t.loc["treat_capital", "p_value"],
              2 * stats.t.sf(abs(t.loc["treat_capital", "estimate"] / se), G - 1), 1e-7)


# ------------------------------------------------------------------------------------------
# Missing baselines: the dummy rule (default) or listwise deletion (issue 8)
# ------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("engine", ["statsmodels", "fastols"])
def test_listwise_missing_baseline_is_ols_on_the_complete_cases(engine):
    df = make_data(seed=41, p_missing_bl=0.3)
    res = fit(df, Spec(Y, TREATS, missing_baseline="listwise", engine=engine))
    d = df[df["followup"] & df[Y].notna() & (df[f"{Y}_bl_missing"] == 0)]
    assert len(d) < (df["followup"] & df[Y].notna()).sum()      # some rows had no baseline
    ref = _statsmodels_reference(d, with_dummy=False)
    names = ["treat_skills", "treat_capital", "treat_skills:treat_capital", f"{Y}_bl"]
    rel_close(res.params[names].to_numpy(), ref.params[names].to_numpy())
    rel_close(res.bse[names].to_numpy(), ref.bse[names].to_numpy())
    assert f"{Y}_bl_missing" not in res.params.index
    t = tidy(res)
    assert (t["n_obs"] == len(d)).all()                           # the n reported is the complete cases
    rel_close(t.set_index("term").loc["treat_capital", "std_error"], ref.bse["treat_capital"])


def test_dummy_missing_baseline_reproduces_todays_numbers():
    df = make_data(seed=42, p_missing_bl=0.3)
    default, explicit = fit(df, Spec(Y, TREATS)), fit(df, Spec(Y, TREATS, missing_baseline="dummy"))
    assert Spec(Y, TREATS).missing_baseline == "dummy"
    pd.testing.assert_frame_equal(tidy(default), tidy(explicit))
    d = df[df["followup"] & df[Y].notna()]
    ref = _statsmodels_reference(d, with_dummy=True)
    names = ["treat_skills", "treat_capital", "treat_skills:treat_capital", f"{Y}_bl", f"{Y}_bl_missing"]
    rel_close(default.params[names].to_numpy(), ref.params[names].to_numpy())
    rel_close(default.bse[names].to_numpy(), ref.bse[names].to_numpy())
    assert (tidy(default)["n_obs"] == len(d)).all()


def test_listwise_applies_to_every_model_of_the_study_and_is_recorded():
    df = with_extras(make_data(seed=43, n_clusters=32, firms_per_cluster=5, p_missing_bl=0.3), seed=4)
    kw = {"transforms": ["level", "ihs"], "by_round": True}
    dummy = estimate_study(df, [Y], {"treatments": TREATS}, "s", **kw)
    listwise = estimate_study(df, [Y], {"treatments": TREATS, "missing_baseline": "listwise"}, "s", **kw)
    assert len(dummy) == len(listwise)
    complete = df["followup"] & df[Y].notna() & (df[f"{Y}_bl_missing"] == 0)
    for frame, n in ((dummy, (df["followup"] & df[Y].notna()).sum()), (listwise, complete.sum())):
        pooled = frame[(frame["model"] == "pooled") & (frame["transform"] == "level")]
        assert (pooled["n_obs"] == n).all()
    women = listwise[(listwise["model"] == "women_only") & (listwise["transform"] == "level")]
    assert (women["n_obs"] == (complete & (df["female_owner"] == 1)).sum()).all()
    params = {"outcomes": [Y], "treatments": TREATS, "transforms": ["level"], "by_round": False,
              "bootstrap_reps": 3, "permutations": 5, "qte_quantiles": [0.5], "balance_covariates": [],
              "descriptive_regressors": []}
    out = est.estimate_all(df, params, "s", {"estimate": {"missing_baseline": "listwise"}})
    assert out["summary"]["specification"]["missing_baseline"] == "listwise"
    qt = out["qte"]
    assert (qt.loc[qt["sample"] == "women", "n_obs"] == (complete & (df["female_owner"] == 1)).sum()).all()
    with pytest.raises(ValueError, match="missing_baseline"):
        Spec(Y, TREATS, missing_baseline="drop")


# ------------------------------------------------------------------------------------------
# Every CSV has its header; "nothing to report" is explicit in the summary (issue 8)
# ------------------------------------------------------------------------------------------
def test_tables_without_rows_are_header_only_csvs_with_the_reason(tmp_path, monkeypatch):
    import json
    from pipeline import paths
    df = with_extras(make_data(seed=44, n_clusters=24, firms_per_cluster=5), seed=6)
    df["attrited"] = 0                       # every planned interview observed: no attrition
    df["female_owner"] = 1                   # all women: no gender models
    params = {"outcomes": [Y], "treatments": TREATS, "transforms": ["level"], "by_round": False,
              "bootstrap_reps": 3, "qte_quantiles": [0.5], "balance_covariates": ["not_in_the_data"]}
    (tmp_path / "s").mkdir()
    df.to_parquet(tmp_path / "s" / "analysis.parquet")
    monkeypatch.setattr(paths, "processed_dir", lambda study: tmp_path / study)
    est.run("s", params)
    summary = json.loads((tmp_path / "s" / "estimate_summary.json").read_text())
    for key, name in est.OUTPUT_FILES.items():
        if not name.endswith(".csv"):
            continue
        table = pd.read_csv(tmp_path / "s" / name)       # never EmptyDataError
        assert list(table.columns)[:len(est.TABLE_COLUMNS[key])] == est.TABLE_COLUMNS[key], name
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
    from pipeline import wild_bootstrap
    df = make_data(seed=3, n_clusters=14)
    spec_params = {"treatments": list(TREATS), "engine": "fastols", "vcov": "CR2"}
    few = est.WildSettings(below_clusters=15, reps=999, weights="auto", seed=9)
    table = estimate_study(df, [Y], spec_params, "s", wild=few)
    assert table["wild_p_value"].notna().all() and table["wild_p_value"].between(0, 1).all()
    none = estimate_study(df, [Y], spec_params, "s", wild=est.WildSettings(14, 999, "auto", 9))
    assert none["wild_p_value"].isna().all()                          # 14 clusters, not fewer than 14
    pd.testing.assert_frame_equal(none.drop(columns="wild_p_value"), table.drop(columns="wild_p_value"))
    # one term by hand: the pooled skills effect, Webb weights (14 clusters > 12: Rademacher under auto)
    res = fit(df, Spec(Y, TREATS, engine="fastols", vcov="CR2"))
    d = res.wild_design
    r = np.array([1.0 if c == "treat_skills" else 0.0 for c in d.X.columns])
    key = "|".join(["s", Y, "level", "pooled", "all", "treat_skills"])
    import zlib
    by_hand = wild_bootstrap.wild_cluster_test(d.y, d.X.to_numpy(), d.groups, r, fe=d.fe, reps=999,
                                               weight_type="rademacher",
                                               seed=np.random.SeedSequence([9, zlib.crc32(key.encode())]))
    row = table[(table["model"] == "pooled") & (table["term"] == "treat_skills")].iloc[0]
    assert row["wild_p_value"] == by_hand.p_value
    with pytest.raises(ValueError, match="wild_bootstrap_weights"):
        est.wild_settings({**est.STAGE_DEFAULTS, "wild_bootstrap_weights": "mammen"})
