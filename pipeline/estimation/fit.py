"""Fitting one model of a specification: the one fitting path.

``fit`` absorbs the fixed effects (:func:`pipeline.estimation.ols.fe_ols`, covariance from
:mod:`pipeline.estimation.variance`) and returns :class:`AbsorbedResults` with ``estimate_info``
(:class:`FitInfo`: the tidy terms, sample sizes, t degrees of freedom) and ``wild_design`` attached.
statsmodels with explicit dummies is the tests' oracle (tests/_estimation_data.py), not a path here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.stats

from pipeline.estimation import ols
from pipeline.estimation.design import absorbed_design, independent_absorbed, treatment_terms
from pipeline.estimation.sample import Sample, crossed_interactions, prepare
from pipeline.estimation.spec import FEMALE, MALE, Spec, diff_name, gender_param, tidy_name
from pipeline.estimation.variance import wald_statistic
from pipeline.estimation.wild import WildDesign
from pipeline.vocabulary import BY_GENDER, SAMPLE_MODELS

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TermDef:
    """One row of the tidy table: a linear combination of parameters."""

    term: str
    weights: tuple[tuple[str, float], ...]
    control_mean: float


@dataclass(frozen=True)
class FitInfo:
    """What :func:`tidy` needs besides the fit's numbers (attached as ``.estimate_info``); the t
    degrees of freedom are the results' (``df_params``, ``t_test(...).df``)."""

    spec: Spec
    model: str
    sample: str
    n_obs: int
    n_clusters: int | None
    terms: tuple[TermDef, ...]
    dropped_columns: tuple[str, ...] = ()
    baseline_columns: tuple[str, ...] = ()
    transform: str = "level"
    outcome_label: str | None = None       # the outcome named in the tidy table (default spec.outcome)


def weighted_control_mean(y: np.ndarray, control: np.ndarray, w: np.ndarray | None) -> float:
    if not control.any():
        return float("nan")
    if w is None:
        return float(np.mean(y[control]))
    return float(np.average(y[control], weights=w[control]))


def fit(df: pd.DataFrame, spec: Spec, sample: str | None = None, *, by_gender: bool = False,
        model: str | None = None, transform: str = "level", outcome_label: str | None = None):
    """Fit one model (OLS, or WLS with ``spec.weights``) with the fixed effects absorbed; returns
    :class:`AbsorbedResults` (only the non-fixed-effect parameters).

    ``sample``: None (all firms), ``"women"`` or ``"men"``. ``by_gender=True`` fits the
    gender-interacted model on all firms. Covariance ``spec.vcov`` (CR1: statsmodels' cluster
    correction, t(G-1); HC1 when ``spec.cluster`` is None; CR2 with Bell-McCaffrey df; CR3,
    t(G-1)). Collinear control columns are dropped (listed in
    ``results.estimate_info.dropped_columns``); a collinear treatment term raises ValueError.
    ``results.estimate_info`` is a :class:`FitInfo`.

    ``model`` overrides the model name of the tidy rows (e.g. ``round_2`` for a fit on one
    round's rows); ``transform`` and ``outcome_label`` are carried to the tidy table (used when
    ``spec.outcome`` is a derived column, see :func:`transform_outcome`).
    """
    if by_gender and sample not in (None, "all"):
        raise ValueError("the by_gender model is fitted on all firms (sample=None)")
    sample = "all" if sample is None else sample
    s = prepare(df, spec, sample, need_gender=by_gender)
    pairs = crossed_interactions(df, spec)
    return _fit_absorbed(s, spec, pairs, by_gender, sample, model, transform, outcome_label)


def _attach_info(res, s, spec, pairs, by_gender, sample, model, transform, outcome_label,
                 interest, dropped, n_clusters) -> None:
    control = np.ones(s.n, dtype=bool)
    for v in s.treat.values():
        control &= v == 0
    term_defs = []
    if not by_gender:
        cm = weighted_control_mean(s.y, control, s.weights)
        for p in interest:
            term_defs.append(TermDef(tidy_name(p), ((p, 1.0),), cm))
        model_name = model or SAMPLE_MODELS[sample]
    else:
        cm = {level: weighted_control_mean(s.y, control & (s.female == (1 if level == FEMALE else 0)), s.weights)
              for level in (FEMALE, MALE)}
        for name in treatment_terms(s, pairs):
            f, m = gender_param(name, FEMALE), gender_param(name, MALE)
            term_defs.append(TermDef(tidy_name(f), ((f, 1.0),), cm[FEMALE]))
            term_defs.append(TermDef(tidy_name(m), ((m, 1.0),), cm[MALE]))
            term_defs.append(TermDef(diff_name(name), ((f, 1.0), (m, -1.0)), np.nan))
        model_name = model or BY_GENDER
    res.estimate_info = FitInfo(
        spec=spec, model=model_name, sample=sample, n_obs=int(res.nobs), n_clusters=n_clusters,
        terms=tuple(term_defs), dropped_columns=tuple(dropped),
        baseline_columns=tuple(c for c in s.covariates if c not in spec.controls),
        transform=transform, outcome_label=outcome_label)


class _TTestResult:
    """The part of statsmodels' ContrastResults that this module uses (t test)."""

    def __init__(self, effect, sd, df):
        self.effect, self.sd, self.df = np.atleast_1d(effect), np.atleast_1d(sd), df
        with np.errstate(divide="ignore", invalid="ignore"):
            self.tvalue = self.effect / self.sd
        self.pvalue = 2.0 * scipy.stats.t.sf(np.abs(self.tvalue), df)

    def conf_int(self, alpha: float = 0.05) -> np.ndarray:
        q = scipy.stats.t.ppf(1.0 - alpha / 2.0, self.df)
        return np.column_stack([self.effect - q * self.sd, self.effect + q * self.sd])


class _FTestResult:
    def __init__(self, fvalue, pvalue, df_num, df_denom):
        self.fvalue, self.pvalue, self.df_num, self.df_denom = fvalue, pvalue, df_num, df_denom


class AbsorbedResults:
    """Results of :func:`fit` with a statsmodels-like interface (``params``, ``bse``,
    ``pvalues``, ``tvalues``, ``conf_int``, ``cov_params()``, ``t_test``, ``f_test``, ``nobs``,
    ``df_resid``). Only the non-fixed-effect parameters are reported (no ``const``, no dummies).

    Degrees of freedom, as the covariance registry (:mod:`pipeline.estimation.variance`) gives them:
    every t-test, interval and minimum detectable effect of a coefficient or contrast uses that
    contrast's t df (``df_params`` per coefficient, ``t_test(r).df``): G - 1 under CR1 and CR3,
    N - K under HC1, and under CR2 the Bell-McCaffrey df of the contrast. The joint Wald test
    (:meth:`f_test`) uses F(q, ``df_inference``), the registry's model df (G - 1 clustered, N - K
    HC1) under every estimator, CR2 included: the Bell-McCaffrey df is defined for one contrast,
    and its multivariate extension (Pustejovsky & Tipton 2018, HTZ) is not implemented, so a CR2
    joint test with few clusters may over-reject. ``fe_result`` is the
    :class:`pipeline.estimation.ols.FEResult`."""

    def __init__(self, r: ols.FEResult):
        self.fe_result = r
        self.params, self.bse, self.tvalues, self.pvalues = r.params, r.bse, r.tvalues, r.pvalues
        self.nobs, self.df_resid = float(r.nobs), float(r.df_resid)
        self.df_inference = r.df_inference
        self.df_params = r.df_by_param          # t df of each coefficient (CR2: Bell-McCaffrey)
        self.cov_type = r.cov_type

    def cov_params(self) -> pd.DataFrame:
        return self.fe_result.cov

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        return self.fe_result.conf_int(alpha)

    def t_test(self, r) -> _TTestResult:
        R = np.atleast_2d(np.asarray(r, dtype=float))
        V = self.fe_result.cov.to_numpy()
        eff = R @ self.params.to_numpy()
        sd = np.sqrt(np.clip(np.einsum("ij,jk,ik->i", R, V, R), 0.0, None))
        df = self.fe_result.contrast_df(R)              # CR2: Bell-McCaffrey per row
        return _TTestResult(eff, sd, df)

    def f_test(self, R) -> _FTestResult:
        """Wald test of ``R b = 0``: F = (Rb)'(R V R')^-1 (Rb) / q on (q, ``df_inference``); F and
        p NaN (test not reported) when R V R' has rank below q (``variance.wald_statistic``)."""
        R = np.atleast_2d(np.asarray(R, dtype=float))
        V = self.fe_result.cov.to_numpy()
        q = R.shape[0]
        wald, rank = wald_statistic(R @ self.params.to_numpy(), R @ V @ R.T)
        if rank < q:
            log.info("%s, %s model: joint test of %d restrictions not reported: their covariance has rank %d",
                     self.estimate_info.spec.outcome, self.estimate_info.model, q, rank)
        F = wald / q
        return _FTestResult(F, float(scipy.stats.f.sf(F, q, self.df_inference)), q,
                            self.df_inference)


def _fit_absorbed(s: Sample, spec: Spec, pairs, by_gender, sample, model, transform,
                  outcome_label) -> AbsorbedResults:
    """:func:`fit` with the fixed effects absorbed by :func:`pipeline.estimation.ols.fe_ols`."""
    X, interest, fe_codes = absorbed_design(s, spec, pairs, by_gender, sample)
    kept, dropped, partialled = independent_absorbed(X, fe_codes, s.weights, protected=interest)
    if dropped:
        log.info("%s: dropped collinear columns %s", spec.outcome, dropped)
    n_clusters = None
    if spec.cluster is not None:
        n_clusters = int(np.unique(s.groups).size)
        if n_clusters < 2:
            raise ValueError(f"only {n_clusters} cluster in the estimation sample of "
                             f"{spec.outcome!r}")
    r = ols.fe_ols(s.y, pd.DataFrame({k: X[k] for k in kept}), fe=fe_codes or None,
                       cluster=s.groups if spec.cluster is not None else None,
                       weights=s.weights, vcov=spec.vcov,
                       # the collinearity check absorbed X already (the same rows): y alone is absorbed
                       partialled=partialled)
    res = AbsorbedResults(r)
    _attach_info(res, s, spec, pairs, by_gender, sample, model, transform, outcome_label,
                 interest, dropped, n_clusters)
    res.wild_design = WildDesign(s.y, pd.DataFrame({k: X[k] for k in kept}), fe_codes or None, s.groups,
                                 s.weights)
    return res
