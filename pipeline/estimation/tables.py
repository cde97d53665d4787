"""Tidy tables: one row per term of interest of a fit (:func:`tidy`), every model of a study
(:func:`estimate_study`), Anderson's sharpened q-values, the descriptive (non-causal) model and the
plot data of the effects by gender."""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline import inference
from pipeline.estimation.arm_average import arm_average_terms
from pipeline.estimation.columns import as_float, require
from pipeline.estimation import ols
from pipeline.estimation.design import drop_collinear_absorbed, treatment_terms
from pipeline.estimation.fit import FitInfo, fit, weighted_control_mean
from pipeline.estimation.sample import (baseline_columns, crossed_interactions, prepare, round_models,
                                        sexes_present, transform_available, transform_outcome)
from pipeline.estimation.spec import (EFFECT_KEYS, MODELS, NONLINEAR_TRANSFORMS, TRANSFORMS,
                                      Spec)
from pipeline.estimation.wild import WildSettings, wild_p_value
from pipeline.vocabulary import BY_GENDER, DESCRIPTIVE, ROUND_MODEL_PREFIX, SEXES, WOMEN, round_model, split_sex_term

log = logging.getLogger(__name__)

TIDY_COLUMNS = [
    "study", "outcome", "transform", "model", "sample", "term", "estimate", "std_error", "ci_low",
    "ci_high", "p_value", "wild_p_value", "q_value", "n_obs", "n_clusters", "control_mean",
    "effect_pct_of_control_mean", "mde", "mde_pct_of_control_mean",
]
TEXT_COLUMNS = ("study", "outcome", "transform", "model", "sample", "term")
COUNT_COLUMNS = ("n_obs", "n_clusters")
FLOAT_COLUMNS = tuple(c for c in TIDY_COLUMNS if c not in TEXT_COLUMNS + COUNT_COLUMNS)


def empty_tidy() -> pd.DataFrame:
    out = pd.DataFrame({c: pd.Series(dtype="float64") for c in TIDY_COLUMNS})
    for c in TEXT_COLUMNS:
        out[c] = out[c].astype("str")
    out["n_obs"] = out["n_obs"].astype("int64")
    out["n_clusters"] = out["n_clusters"].astype("Int64")
    return out


def _coefficient_lookup(results, ci: pd.DataFrame) -> list[dict]:
    """``params``, ``bse``, CI low, CI high, ``pvalues``, ``df_params`` as name -> value dicts
    (built once per fit: a pandas lookup per term and column cost more than the rest of tidy)."""
    return [dict(zip(s.index, s.to_numpy())) for s in (results.params, results.bse, ci[0], ci[1],
                                                       results.pvalues, results.df_params)]


def _term_inference(results, td, names: list[str], coefficients: list[dict], alpha: float) -> tuple:
    """(estimate, SE, CI low, CI high, p-value, t df) of one tidy term: a single coefficient from
    ``params`` / ``bse`` / ``conf_int`` / ``pvalues`` / ``df_params`` (``coefficients``:
    :func:`_coefficient_lookup`), a linear combination (the ``_diff`` rows) from
    ``results.t_test`` (same covariance, the contrast's own t df)."""
    if len(td.weights) == 1 and td.weights[0][1] == 1.0:
        p = td.weights[0][0]
        return tuple(float(column[p]) for column in coefficients)
    r = np.zeros((1, len(names)))
    for p, wgt in td.weights:
        r[0, names.index(p)] = wgt
    tt = results.t_test(r)
    lo, hi = (float(x) for x in np.asarray(tt.conf_int(alpha=alpha)).ravel())
    return (float(np.squeeze(tt.effect)), float(np.squeeze(tt.sd)), lo, hi, float(np.squeeze(tt.pvalue)),
            float(np.squeeze(tt.df)))


def tidy(results, study: str | None = None, *, alpha: float, power: float,
         wild: WildSettings | None = None, arm_groups: Mapping[str, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """One row per term of interest of a :func:`fit` result, columns ``TIDY_COLUMNS``.

    Estimates, SEs, intervals and p-values: :func:`_term_inference`. ``control_mean`` is the
    (weighted) mean outcome of control-arm observations in the estimation sample, for the gender
    rows that of the gender; NaN for ``_diff`` rows. ``mde`` is the minimum detectable effect at
    ``power`` (80%) and two-sided level ``alpha`` from the estimated SE,
    ``(t_power + t_{1-alpha/2}) * SE`` with the t degrees of freedom of the term's own interval
    (G - 1 under CR1 / CR3, N - K with HC1, the term's Bell-McCaffrey df under CR2);
    ``q_value`` is NaN here (filled by :func:`estimate_study`).
    ``wild_p_value``: the wild cluster restricted bootstrap p-value where ``wild`` applies to the
    model's number of clusters, else NaN.
    ``arm_groups`` (intervention -> its arm terms): each group's arm average is one more row
    (:mod:`pipeline.estimation.arm_average`).
    For the log and ihs transforms the ``_pct_`` columns are NaN (not percentage effects).
    """
    rows = tidy_rows(results, study, alpha=alpha, power=power, wild=wild, arm_groups=arm_groups)
    return tidy_frame(rows) if rows else empty_tidy()


def tidy_rows(results, study: str | None = None, *, alpha: float, power: float,
              wild: WildSettings | None = None, arm_groups: Mapping[str, tuple[str, ...]] | None = None
              ) -> list[dict]:
    """:func:`tidy`'s rows, one dict per term (keys ``TIDY_COLUMNS``), without building the frame
    (the simulation's draws read a few values of each row)."""
    info: FitInfo = getattr(results, "estimate_info", None)
    if info is None:
        raise ValueError("results were not produced by pipeline.estimation.fit.fit")
    names = list(results.params.index)
    ci = results.conf_int(alpha=alpha)
    outcome = info.outcome_label or info.spec.outcome
    rows = []
    terms = info.terms + arm_average_terms(results, info.terms, arm_groups or {})
    coefficients = _coefficient_lookup(results, ci)
    inferred = [_term_inference(results, td, names, coefficients, alpha) for td in terms]
    mdes = inference.mde([r[1] for r in inferred], [r[5] for r in inferred], power=power, alpha=alpha)   # one call
    for td, (est, se, lo, hi, pv, _), m in zip(terms, inferred, mdes):
        wild_p = np.nan
        if wild is not None and wild.applies(info.n_clusters):
            key = "|".join(str(x) for x in (study, outcome, info.transform, info.model, info.sample, td.term))
            wild_p = wild_p_value(results, td, wild, key)
        cm = td.control_mean
        pct_ok = np.isfinite(cm) and cm != 0 and info.transform not in NONLINEAR_TRANSFORMS
        m = float(m)
        rows.append({
            "study": study, "outcome": outcome, "transform": info.transform, "model": info.model,
            "sample": info.sample, "term": td.term, "estimate": est, "std_error": se,
            "ci_low": lo, "ci_high": hi, "p_value": pv, "wild_p_value": wild_p, "q_value": np.nan,
            "n_obs": info.n_obs, "n_clusters": info.n_clusters, "control_mean": cm,
            "effect_pct_of_control_mean": 100.0 * est / cm if pct_ok else np.nan,
            "mde": m, "mde_pct_of_control_mean": 100.0 * m / abs(cm) if pct_ok else np.nan,
        })
    return rows


def _tidy_dtype(column: str, values) -> str | None:
    """The dtype of a tidy column holding ``values``: text ``str`` (object where one is missing),
    ``n_obs`` int64, ``n_clusters`` Int64, the rest float64; None for a column not in the tidy table."""
    if column in TEXT_COLUMNS:
        return "object" if pd.isna(values).any() else "str"
    return {"n_obs": "int64", "n_clusters": "Int64"}.get(column, "float64" if column in FLOAT_COLUMNS else None)


def tidy_frame(rows: list[dict]) -> pd.DataFrame:
    """The tidy table of ``rows`` (one dict per term, keys ``TIDY_COLUMNS``): each column made in its
    dtype from the rows' values (a frame of the rows converted column by column cost 5x as much)."""
    columns = {}
    for c in TIDY_COLUMNS:
        values = [r[c] for r in rows]
        columns[c] = pd.array(values, dtype=_tidy_dtype(c, values))
    return pd.DataFrame(columns)


def coerce_tidy(out: pd.DataFrame) -> pd.DataFrame:
    """The tidy columns in their dtypes (:func:`_tidy_dtype`), other columns as they are, in their
    order. One new frame from the converted columns (setting each column into a copy cost 2.5x as much)."""
    columns = {}
    for c in out.columns:
        v, dtype = out[c], _tidy_dtype(c, out[c])
        if dtype == "Int64":
            v = pd.Series(pd.array(v.tolist(), dtype="Int64"), index=out.index)
        elif dtype is not None:
            v = v.astype(dtype)
        columns[c] = v
    return pd.DataFrame(columns, index=out.index).reset_index(drop=True)


def concat_tidy(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return empty_tidy()
    return coerce_tidy(pd.concat(parts, ignore_index=True))


def estimate_gender_effects(df: pd.DataFrame, spec: Spec, study: str | None = None, *,
                            alpha: float, power: float, wild: WildSettings | None = None,
                            arm_groups: Mapping[str, tuple[str, ...]] | None = None, **fit_kwargs) -> pd.DataFrame:
    """``by_gender``, ``women_only`` and ``men_only`` rows for one outcome (tidy table).

    With one sex only (e.g. a women-only study), only that sex's split regression is run.
    ``fit_kwargs`` (``transform``, ``outcome_label``) are passed to :func:`fit`.
    """
    prepare(df, spec, "all", need_gender=True)    # column and outcome checks, clear errors
    present = sexes_present(df, spec)
    parts = []
    if present == set(SEXES):
        parts.append(tidy(fit(df, spec, by_gender=True, **fit_kwargs), study, alpha=alpha, power=power, wild=wild,
                          arm_groups=arm_groups))
    for sex in SEXES:
        if sex in present:
            parts.append(tidy(fit(df, spec, sample=sex, **fit_kwargs), study, alpha=alpha, power=power, wild=wild,
                              arm_groups=arm_groups))
        else:
            log.info("%s: no %s in the sample; %s_only skipped", spec.outcome, sex, sex)
    return concat_tidy(parts)


# --------------------------------------------------------------------------------------------
# The study table
# --------------------------------------------------------------------------------------------
def _model_rank(model: str) -> tuple:
    if model in MODELS:
        return (0, MODELS.index(model), 0)
    if model.startswith(ROUND_MODEL_PREFIX):
        tail = model[len(ROUND_MODEL_PREFIX):]
        return (1, int(tail) if tail.lstrip("-").isdigit() else 0, tail)
    return (2, 0, model)


def _families(outcomes: Sequence[str], q_families: dict | None) -> dict[str, str]:
    """outcome -> family name. Default: every outcome in one family ``all``; an outcome in no
    configured family is a family of its own."""
    if not q_families:
        return {o: "all" for o in outcomes}
    out = {}
    for fam, members in q_families.items():
        for o in ([members] if isinstance(members, str) else members):
            if o in out:
                raise ValueError(f"outcome {o!r} is in two q-value families ({out[o]!r}, {fam!r})")
            out[o] = str(fam)
    for o in outcomes:
        out.setdefault(o, o)
    return out


def add_q_values(table: pd.DataFrame, q_families: dict | None = None) -> pd.DataFrame:
    """Fill ``q_value``: Anderson (2008) sharpened q-values of ``p_value`` within each family of
    outcomes, separately for every (transform, model, sample, term): the hypotheses of a family
    are "this term has no effect on outcome j" for the outcomes j of the family. Descriptive rows
    get NaN."""
    out = table.copy()
    out["q_value"] = np.nan
    fam = out["outcome"].map(_families(list(pd.unique(out["outcome"])), q_families))
    causal = out["model"] != DESCRIPTIVE
    keys = [fam, out["transform"], out["model"], out["sample"], out["term"]]
    for _, idx in out[causal].groupby([k[causal] for k in keys], sort=False).groups.items():
        out.loc[idx, "q_value"] = inference.sharpened_qvalues(out.loc[idx, "p_value"].to_numpy())
    return out


def estimate_study(df: pd.DataFrame, outcomes: list[str], spec_params: dict | None,
                   study: str, *, transforms: Sequence[str], by_round: bool,
                   trim_top_pct: float, q_families: dict | None, alpha: float, power: float,
                   gender_models: bool = True, wild: WildSettings | None = None,
                   arm_groups: Mapping[str, tuple[str, ...]] | None = None) -> pd.DataFrame:
    """All models for every outcome and transform of one study, as one tidy table.

    ``spec_params``: the regression-specification keys of the ``estimate:`` params group (Spec
    fields except ``outcome``). Models: ``pooled``, ``by_gender``, ``women_only``, ``men_only``
    and, with ``by_round``, ``round_<r>`` (the pooled specification on the rows of follow-up round
    r only). ``transforms`` (see :func:`transform_outcome`); one not available for an outcome is
    skipped with a log message. ``q_value``: :func:`add_q_values` with ``q_families``;
    ``wild_p_value`` where ``wild`` applies (see :func:`tidy`); ``arm_groups``: arm averages
    (see :func:`tidy`).
    Rows are ordered by outcome (as given), transform (``level`` first, then as given), model,
    then term.
    """
    if isinstance(outcomes, str):
        outcomes = [outcomes]
    if not outcomes:
        raise ValueError("no outcomes to estimate")
    if len(set(outcomes)) != len(outcomes):
        raise ValueError(f"duplicate outcomes: {outcomes}")
    transforms = list(dict.fromkeys(transforms or ("level",)))
    for t in transforms:
        if t not in TRANSFORMS:
            raise ValueError(f"unknown transform {t!r}; allowed: {TRANSFORMS}")
    if "level" in transforms:
        transforms = ["level"] + [t for t in transforms if t != "level"]
    parts = []
    for outcome in outcomes:
        base = Spec.from_params(spec_params, outcome, df)
        for transform in transforms:
            if not transform_available(df, outcome, transform):
                log.info("%s: transform %r not available, skipped", outcome, transform)
                continue
            data, column = transform_outcome(df, outcome, transform, trim_top_pct=trim_top_pct)
            spec = replace(base, outcome=column)
            kw = {"transform": transform, "outcome_label": outcome}
            parts.append(tidy(fit(data, spec, **kw), study, alpha=alpha, power=power, wild=wild,
                              arm_groups=arm_groups))
            if gender_models:    # False: owner's sex unknown or constant (no gender models)
                parts.append(estimate_gender_effects(data, spec, study, alpha=alpha, power=power, wild=wild,
                                                     arm_groups=arm_groups, **kw))
            if by_round:
                for r in round_models(data, spec):
                    sub = data[data["round"] == r]
                    parts.append(tidy(fit(sub, spec, model=round_model(r), **kw), study, alpha=alpha, power=power,
                                      wild=wild, arm_groups=arm_groups))
    out = concat_tidy(parts)
    out = add_q_values(out, q_families)
    return sort_table(out, outcomes, transforms)


def sort_table(out: pd.DataFrame, outcomes: Sequence[str], transforms: Sequence[str]) -> pd.DataFrame:
    o_rank = {o: i for i, o in enumerate(outcomes)}
    t_rank = {t: i for i, t in enumerate(transforms)}
    key = pd.DataFrame({
        "o": out["outcome"].map(o_rank).fillna(len(o_rank)),
        "t": out["transform"].map(t_rank).fillna(len(t_rank)),
        "m": out["model"].map(lambda m: _model_rank(m)[:2]),
        "r": np.arange(len(out))})
    idx = key.sort_values(["o", "t", "m", "r"], kind="mergesort").index
    return out.loc[idx].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Descriptive (non-causal) model
# --------------------------------------------------------------------------------------------
def fit_descriptive(df: pd.DataFrame, spec: Spec, regressors: Sequence[str],
                    controls: Sequence[str] = (), *, sample: str = WOMEN,
                    control_only: bool = False, study: str | None = None,
                    alpha: float) -> pd.DataFrame:
    """NON-CAUSAL: how ``regressors`` (e.g. the skills index, credit access) relate to the outcome.

    OLS (WLS with weights) of ``spec.outcome`` on the regressors, ``controls``, the ANCOVA
    baseline pair (when ``spec.baseline_control``) and the specification's fixed effects, on the
    follow-up rows of ``sample`` with every variable observed (closed businesses have no
    business-practice answers, so in practice: open businesses). With ``control_only=False`` all
    arms are used and the treatment dummies (and their interaction) are controls, so the
    coefficients use only within-arm variation; with ``control_only=True`` only control-arm
    firms. Fixed effects absorbed and the covariance of the main models (``spec.vcov``, from
    :mod:`pipeline.estimation.variance`). The regressors are mediators of the treatments and
    are correlated with unobserved ability: associations, not effects. Rows: model
    ``descriptive``, term = regressor; ``control_mean`` is the outcome's mean among control-arm
    rows of the sample; ``effect_pct_of_control_mean`` the change for a one-unit increase in the
    regressor as a % of it; ``q_value`` and ``mde`` are NaN.
    """
    regressors, controls = list(regressors), [c for c in controls if c not in regressors]
    if not regressors:
        raise ValueError("no descriptive regressors")
    require(df, [*regressors, *controls], "descriptive regressor/control")
    spec = replace(spec, controls=tuple(regressors) + tuple(controls))
    needed = [spec.outcome, *regressors, *controls, *baseline_columns(df, spec)]
    ok = np.ones(len(df), dtype=bool)
    for c in needed:
        ok &= ~np.isnan(as_float(df[c], c))
    if control_only:
        for t in spec.treatments:
            ok &= as_float(df[t], t) == 0
    s = prepare(df.loc[ok], spec, sample, need_gender=False)
    pairs = () if control_only else crossed_interactions(df.loc[ok], spec)
    # the main models' fitting path and covariance (spec.vcov), fixed effects absorbed
    X: dict[str, np.ndarray] = dict(s.covariates)
    if not control_only:
        X.update(treatment_terms(s, pairs))
    fe_codes = [codes for codes, _ in s.fe.values()]
    kept, _ = drop_collinear_absorbed(X, fe_codes, s.weights, protected=regressors)
    res = ols.fe_ols(s.y, pd.DataFrame({k: X[k] for k in kept}), fe=fe_codes or None,
                     cluster=s.groups if spec.cluster is not None else None, weights=s.weights,
                     vcov=spec.vcov)
    n_clusters = res.n_clusters
    control = np.ones(s.n, dtype=bool)
    for v in s.treat.values():
        control &= v == 0
    cm = weighted_control_mean(s.y, control, s.weights)
    ci = res.conf_int(alpha=alpha)
    rows = []
    for r in regressors:
        est = float(res.params[r])
        rows.append({
            "study": study, "outcome": spec.outcome, "transform": "level", "model": DESCRIPTIVE,
            "sample": sample, "term": r, "estimate": est, "std_error": float(res.bse[r]),
            "ci_low": float(ci.loc[r, 0]), "ci_high": float(ci.loc[r, 1]),
            "p_value": float(res.pvalues[r]), "q_value": np.nan, "n_obs": int(res.nobs),
            "n_clusters": n_clusters, "control_mean": cm,
            "effect_pct_of_control_mean": 100.0 * est / cm if np.isfinite(cm) and cm != 0 else np.nan,
            "mde": np.nan, "mde_pct_of_control_mean": np.nan,
        })
    return coerce_tidy(pd.DataFrame(rows, columns=TIDY_COLUMNS))


# --------------------------------------------------------------------------------------------
# Plot data
# --------------------------------------------------------------------------------------------
COEFFICIENTS_BY_GENDER_COLUMNS = ["effect", "sex", "estimate", "ci_low", "ci_high"]


def coefficients_by_gender(results: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """Plot data: effect (skills / capital / skills_x_capital), sex (women / men / diff), estimate,
    ci_low, ci_high, from the ``by_gender`` model of ``outcome`` (level)."""
    sub = results[(results["outcome"] == outcome) & (results["transform"] == "level")
                  & (results["model"] == BY_GENDER)]
    rows = []
    for _, r in sub.iterrows():
        term, sex = split_sex_term(r["term"])
        rows.append({"effect": EFFECT_KEYS.get(term, term), "sex": sex, "estimate": r["estimate"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    return pd.DataFrame(rows, columns=COEFFICIENTS_BY_GENDER_COLUMNS)
