"""Intention-to-treat effects of skills and capital on micro-enterprise profits.

Estimation follows the "Estimation and inference" section of ``METHODS.md``:

* **ANCOVA**: the firm's baseline value of the outcome (``Y_bl``, 0 where missing) and a
  missing-baseline dummy (``Y_bl_missing``) are controls, so firms without a baseline are kept.
  When a study has no baseline (neither column exists) the model is the plain regression.
* Follow-up rounds are **pooled** (``followup`` is True) with **round fixed effects**, and
  **strata fixed effects** enter every regression (dummy variables, first sorted level dropped).
* **Cluster-robust** standard errors at the unit of randomisation, exactly as statsmodels'
  ``cov_type="cluster"`` computes them (CR1: ``G/(G-1) * (N-1)/(N-K)``, ``K`` counting every
  regressor including the fixed-effect dummies), with t(G-1) inference (``use_t=True``).
  ``Spec.cluster = None`` gives HC1 with t(N-K).
* **Survey weights** (``Spec.weights``) give WLS; control means are then weighted too.

Models per outcome (the ``model`` column of the tidy table):

``pooled`` (sample ``all``)
    y ~ treatments (+ their interaction where the study crosses them) + baseline + FE (+ controls).
``by_gender`` (sample ``all``)
    Every treatment term ``T`` enters twice, as ``T:female`` and ``T:male``, so each coefficient is
    directly the effect for women / for men, plus the ``female_owner`` main effect. With
    ``Spec.gender_interact_all = True`` (default) the baseline, controls and fixed-effect dummies are
    *also* interacted with gender: the model is then the two separate regressions stacked, so the
    women (men) coefficients equal the ``women_only`` (``men_only``) coefficients exactly, while
    the covariance between the women and men coefficients (non-zero when clusters contain both
    sexes) is estimated jointly. With ``gender_interact_all = False`` the controls and FE are common
    to both sexes; the guarantee is then that ``T_diff`` equals the coefficient (and cluster SE) of
    ``T x female`` in the usual ``T + T x female`` parameterisation of the same model.
    Rows ``T_diff`` (women - men) come from ``t_test``; its p-value tests equal effects.
``women_only`` / ``men_only``
    The pooled specification on each sex separately.

Term names in the tidy table: ``treat_skills``, ``treat_capital``, ``treat_skills_x_treat_capital``
(pooled and split models) and ``<term>_women``, ``<term>_men``, ``<term>_diff`` (by_gender).
In the statsmodels results the parameter names are ``treat_skills:treat_capital`` and
``treat_capital:female`` etc.

A study with only women (``female_owner`` all 1) has no ``by_gender`` or ``men_only`` rows (and
symmetrically for only men).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import statsmodels.api as sm

log = logging.getLogger(__name__)

GENDER = "female_owner"
FOLLOWUP = "followup"
CANONICAL_TREATMENTS = ("treat_skills", "treat_capital")
MODELS = ("pooled", "by_gender", "women_only", "men_only")
SAMPLES = ("all", "women", "men")
GENDER_SUFFIX = {"women": "female", "men": "male"}
TIDY_COLUMNS = [
    "study", "outcome", "model", "sample", "term", "estimate", "std_error", "ci_low", "ci_high",
    "p_value", "n_obs", "n_clusters", "control_mean", "effect_pct_of_control_mean",
]
# A column is dropped as collinear when the share of its (weighted) sum of squares not explained
# by the columns kept before it is below this.
COLLINEARITY_TOL = 1e-9


# --------------------------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------------------------
@dataclass
class Spec:
    """One regression specification (built from the ``estimate:`` params group).

    List-valued fields accept any sequence and are stored as tuples.
    """

    outcome: str
    treatments: list[str]
    interact_treatments: bool = True    # add treat_skills:treat_capital where the study crosses them
    baseline_control: bool = True       # ANCOVA when the Y_bl / Y_bl_missing columns exist
    fixed_effects: list[str] = ("stratum", "round")
    cluster: str | None = "cluster_id"  # None -> HC1
    weights: str | None = None
    controls: list[str] = ()
    followup_only: bool = True
    gender_interact_all: bool = True    # by_gender: interact baseline, controls and FE with gender

    def __post_init__(self) -> None:
        for name in ("treatments", "fixed_effects", "controls"):
            value = getattr(self, name)
            if value is None:
                value = ()
            if isinstance(value, str):
                value = (value,)
            value = tuple(value)
            if not all(isinstance(v, str) for v in value):
                raise ValueError(f"Spec.{name} must be a list of column names, got {value!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"Spec.{name} has duplicates: {value!r}")
            setattr(self, name, value)
        if not isinstance(self.outcome, str) or not self.outcome:
            raise ValueError(f"Spec.outcome must be a column name, got {self.outcome!r}")
        if not self.treatments:
            raise ValueError("Spec.treatments is empty: at least one treatment column is needed")
        for name in ("cluster", "weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Spec.{name} must be a column name or None, got {value!r}")
        overlap = set(self.treatments) & (set(self.controls) | set(self.fixed_effects))
        if overlap:
            raise ValueError(f"treatment column(s) {sorted(overlap)} also listed as controls/FE")

    @classmethod
    def from_params(cls, params: dict | None, outcome: str, df: pd.DataFrame | None = None) -> Spec:
        """Build a Spec from an ``estimate:`` params dict (every key a Spec field but ``outcome``).

        ``treatments`` may be omitted (or ``"auto"``): it then becomes those of
        ``treat_skills`` / ``treat_capital`` that exist in ``df`` and vary among follow-up rows.
        """
        params = dict(params or {})
        allowed = {f.name for f in fields(cls)} - {"outcome"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"unknown estimate parameter(s) {unknown}; allowed: {sorted(allowed)}")
        treatments = params.pop("treatments", "auto")
        if treatments in (None, "auto"):
            if df is None:
                raise ValueError("treatments not given and no data to infer them from")
            treatments = _infer_treatments(df, params.get("followup_only", True))
        return cls(outcome=outcome, treatments=treatments, **params)


def _infer_treatments(df: pd.DataFrame, followup_only: bool) -> tuple[str, ...]:
    rows = _followup_mask(df) if followup_only else np.ones(len(df), dtype=bool)
    found = []
    for t in CANONICAL_TREATMENTS:
        if t in df.columns:
            values = pd.to_numeric(df[t], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            if np.unique(values[rows][~np.isnan(values[rows])]).size > 1:
                found.append(t)
    if not found:
        raise ValueError(
            f"no treatment column with variation among {CANONICAL_TREATMENTS} in the data")
    return tuple(found)


# --------------------------------------------------------------------------------------------
# Data checks and the estimation sample
# --------------------------------------------------------------------------------------------
def _require(df: pd.DataFrame, columns: Iterable[str], why: str) -> None:
    for c in columns:
        if c not in df.columns:
            raise ValueError(f"required column {c!r} ({why}) is missing from the data")


def _followup_mask(df: pd.DataFrame) -> np.ndarray:
    _require(df, [FOLLOWUP], "follow-up indicator; followup_only=True")
    s = df[FOLLOWUP]
    if s.isna().any():
        raise ValueError(f"column {FOLLOWUP!r} has missing values")
    return np.array(s.astype(bool).to_numpy(), dtype=bool)  # writable copy (copy-on-write)


def _as_float(s: pd.Series, name: str) -> np.ndarray:
    if s.dtype == bool or pd.api.types.is_bool_dtype(s.dtype):
        s = s.astype("float64")
    if not pd.api.types.is_numeric_dtype(s.dtype):
        raise ValueError(f"column {name!r} must be numeric, has dtype {s.dtype}")
    return s.to_numpy(dtype=float, na_value=np.nan)


def _baseline_columns(df: pd.DataFrame, spec: Spec) -> tuple[str, ...]:
    """The ANCOVA controls to use: (Y_bl, Y_bl_missing), or () for a study without a baseline."""
    if not spec.baseline_control:
        return ()
    bl, miss = f"{spec.outcome}_bl", f"{spec.outcome}_bl_missing"
    have = [c in df.columns for c in (bl, miss)]
    if not any(have):
        log.info("no baseline columns for %s: plain (non-ANCOVA) regression", spec.outcome)
        return ()
    _require(df, [bl, miss], f"baseline control for {spec.outcome}")
    return (bl, miss)


@dataclass
class _Sample:
    """The estimation sample as plain arrays (rows: follow-up, sample sex, non-missing outcome)."""

    y: np.ndarray
    treat: dict[str, np.ndarray]
    female: np.ndarray | None
    covariates: dict[str, np.ndarray]          # baseline + controls, in order
    fe: dict[str, tuple[np.ndarray, np.ndarray]]  # FE column -> (codes, sorted levels)
    groups: np.ndarray | None                  # integer cluster codes
    weights: np.ndarray | None

    @property
    def n(self) -> int:
        return len(self.y)


def _prepare(df: pd.DataFrame, spec: Spec, sample: str | None, need_gender: bool) -> _Sample:
    if not isinstance(df, pd.DataFrame):
        raise TypeError("df must be a pandas DataFrame")
    sample = "all" if sample is None else sample
    if sample not in SAMPLES:
        raise ValueError(f"sample must be None, 'women' or 'men', got {sample!r}")
    baseline = _baseline_columns(df, spec)
    _require(df, [spec.outcome], "outcome")
    _require(df, spec.treatments, "treatment")
    _require(df, spec.fixed_effects, "fixed effect")
    _require(df, spec.controls, "control")
    if spec.cluster is not None:
        _require(df, [spec.cluster], "cluster")
    if spec.weights is not None:
        _require(df, [spec.weights], "weights")
    if need_gender or sample != "all":
        _require(df, [GENDER], "owner's sex")

    y_all = _as_float(df[spec.outcome], spec.outcome)
    keep = _followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    if not np.any(keep & ~np.isnan(y_all)):
        raise ValueError(f"outcome {spec.outcome!r} has no non-missing "
                         f"{'follow-up ' if spec.followup_only else ''}observations")
    if sample != "all":
        g = _as_float(df[GENDER], GENDER)
        keep &= g == (1.0 if sample == "women" else 0.0)
    keep &= ~np.isnan(y_all)
    if not keep.any():
        raise ValueError(f"outcome {spec.outcome!r} has no non-missing observations "
                         f"in sample {sample!r}")
    sub = df.loc[keep]

    def design_var(col: str, binary: bool = False) -> np.ndarray:
        v = _as_float(sub[col], col)
        if np.isnan(v).any():
            raise ValueError(f"column {col!r} has missing values in the estimation sample "
                             f"of {spec.outcome!r}")
        if binary and not np.isin(v, (0.0, 1.0)).all():
            raise ValueError(f"column {col!r} must be 0/1")
        return v

    treat = {t: design_var(t, binary=True) for t in spec.treatments}
    female = design_var(GENDER, binary=True) if (need_gender or sample != "all") else None
    covariates = {c: design_var(c) for c in (*baseline, *spec.controls)}
    fe = {}
    for c in spec.fixed_effects:
        s = sub[c]
        if s.isna().any():
            raise ValueError(f"fixed-effect column {c!r} has missing values in the estimation sample")
        fe[c] = pd.factorize(s, sort=True)
    groups = None
    if spec.cluster is not None:
        s = sub[spec.cluster]
        if s.isna().any():
            raise ValueError(f"cluster column {spec.cluster!r} has missing values in the "
                             f"estimation sample")
        groups = pd.factorize(s, sort=True)[0].astype(np.int64)
    weights = None
    if spec.weights is not None:
        weights = design_var(spec.weights)
        if not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError(f"weights column {spec.weights!r} must be finite and positive")
    return _Sample(y=_as_float(sub[spec.outcome], spec.outcome), treat=treat, female=female,
                   covariates=covariates, fe=fe, groups=groups, weights=weights)


def _crossed_interactions(df: pd.DataFrame, spec: Spec) -> tuple[tuple[str, str], ...]:
    """Pairs of treatments crossed in the study (some follow-up firm with non-missing outcome has
    both). Decided on the whole data, so every model of an outcome has the same terms."""
    if not spec.interact_treatments or len(spec.treatments) < 2:
        return ()
    rows = _followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    rows &= ~np.isnan(_as_float(df[spec.outcome], spec.outcome))
    pairs = []
    for i, a in enumerate(spec.treatments):
        for b in spec.treatments[i + 1:]:
            both = (_as_float(df[a], a)[rows] == 1) & (_as_float(df[b], b)[rows] == 1)
            if both.any():
                pairs.append((a, b))
    return tuple(pairs)


# --------------------------------------------------------------------------------------------
# Design matrix
# --------------------------------------------------------------------------------------------
def _fe_dummies(fe: tuple[np.ndarray, np.ndarray], name: str,
               mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Dummies for every level but the first (sorted) among the rows in ``mask``."""
    codes, levels = fe
    mask = np.ones(len(codes), dtype=bool) if mask is None else mask
    present = np.unique(codes[mask])
    out = {}
    for c in present[1:]:
        out[f"{name}[{levels[c]}]"] = ((codes == c) & mask).astype(float)
    return out


def _drop_collinear(X: dict[str, np.ndarray], w: np.ndarray | None,
                    protected: Sequence[str]) -> tuple[list[str], list[str]]:
    """Greedy, order-respecting selection of linearly independent columns (incremental Cholesky
    of the weighted Gram matrix). A protected column that is collinear raises ValueError."""
    names = list(X)
    M = np.column_stack([X[n] for n in names])
    if w is not None:
        M = M * np.sqrt(w)[:, None]
    G = M.T @ M
    kept: list[int] = []
    dropped: list[str] = []
    L = np.zeros((0, 0))
    for j, name in enumerate(names):
        gjj = G[j, j]
        if kept:
            v = scipy.linalg.solve_triangular(L, G[kept, j], lower=True)
            d = gjj - v @ v
        else:
            v, d = np.zeros(0), gjj
        if gjj <= 0 or d <= COLLINEARITY_TOL * gjj:
            if name in protected:
                raise ValueError(f"term {name!r} is collinear with other regressors "
                                 f"(no independent variation in the sample)")
            dropped.append(name)
            continue
        k = len(kept)
        L2 = np.zeros((k + 1, k + 1))
        L2[:k, :k] = L
        L2[k, :k] = v
        L2[k, k] = np.sqrt(d)
        L = L2
        kept.append(j)
    return [names[j] for j in kept], dropped


def _interaction_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}:{pair[1]}"


def _terms(s: _Sample, pairs: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
    """Treatment terms of interest, in order: each treatment, then each crossed pair."""
    out = {t: v for t, v in s.treat.items()}
    for a, b in pairs:
        out[_interaction_name((a, b))] = s.treat[a] * s.treat[b]
    return out


def _check_variation(terms: dict[str, np.ndarray], where: str) -> None:
    for name, v in terms.items():
        if np.unique(v).size < 2:
            raise ValueError(f"treatment {name!r} has no variation in the {where} "
                             f"(all values {v[0]:g})")


def _design(s: _Sample, spec: Spec, pairs, by_gender: bool, sample: str):
    """Columns of X in order (dict name -> array) and the names of the terms of interest."""
    terms = _terms(s, pairs)
    X: dict[str, np.ndarray] = {"const": np.ones(s.n)}
    if not by_gender:
        _check_variation(terms, f"{sample!r} sample")
        X.update(terms)
        X.update(s.covariates)
        for c, values in s.fe.items():
            X.update(_fe_dummies(values, c))
        return X, list(terms)

    fem = s.female
    masks = {"female": fem == 1, "male": fem == 0}
    for sex, m in masks.items():
        if not m.any():
            raise ValueError(f"by_gender model needs both sexes; no {sex} owners in the sample")
        _check_variation({k: v[m] for k, v in terms.items()}, f"{sex} sample")
    X[GENDER] = fem.copy()
    interest = []
    for name, v in terms.items():
        for sex, m in masks.items():
            X[f"{name}:{sex}"] = v * m
            interest.append(f"{name}:{sex}")
    if spec.gender_interact_all:
        for c, v in s.covariates.items():
            for sex, m in masks.items():
                X[f"{c}:{sex}"] = v * m
        for c, values in s.fe.items():
            for sex, m in masks.items():
                X.update({f"{k}:{sex}": d for k, d in _fe_dummies(values, c, m).items()})
    else:
        X.update(s.covariates)
        for c, values in s.fe.items():
            X.update(_fe_dummies(values, c))
    return X, interest


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TermDef:
    """One row of the tidy table: a linear combination of parameters."""

    term: str
    weights: tuple[tuple[str, float], ...]
    control_mean: float


@dataclass(frozen=True)
class FitInfo:
    """What :func:`tidy` needs besides the statsmodels results (attached as ``.estimate_info``)."""

    spec: Spec
    model: str
    sample: str
    n_obs: int
    n_clusters: int | None
    terms: tuple[TermDef, ...]
    dropped_columns: tuple[str, ...] = ()
    baseline_columns: tuple[str, ...] = ()


def _control_mean(y: np.ndarray, control: np.ndarray, w: np.ndarray | None) -> float:
    if not control.any():
        return float("nan")
    if w is None:
        return float(np.mean(y[control]))
    return float(np.average(y[control], weights=w[control]))


def _tidy_name(param: str) -> str:
    """'treat_skills:treat_capital:female' -> 'treat_skills_x_treat_capital_women'."""
    parts = param.split(":")
    suffix = ""
    if parts[-1] in ("female", "male"):
        suffix = "_women" if parts[-1] == "female" else "_men"
        parts = parts[:-1]
    return "_x_".join(parts) + suffix


def fit(df: pd.DataFrame, spec: Spec, sample: str | None = None, *, by_gender: bool = False):
    """Fit one model; returns the statsmodels results (OLS, or WLS with ``spec.weights``).

    ``sample``: None (all firms), ``"women"`` or ``"men"``. ``by_gender=True`` fits the
    gender-interacted model on all firms. Cluster-robust covariance (statsmodels default CR1
    correction, t(G-1) inference) or HC1 when ``spec.cluster`` is None. Collinear control / FE
    columns are dropped (listed in ``results.estimate_info.dropped_columns``); a collinear
    treatment term raises ValueError. ``results.estimate_info`` is a :class:`FitInfo`.
    """
    if by_gender and sample not in (None, "all"):
        raise ValueError("the by_gender model is fitted on all firms (sample=None)")
    sample = "all" if sample is None else sample
    s = _prepare(df, spec, sample, need_gender=by_gender)
    pairs = _crossed_interactions(df, spec)
    X, interest = _design(s, spec, pairs, by_gender, sample)
    kept, dropped = _drop_collinear(X, s.weights, protected=["const", *interest])
    if dropped:
        log.info("%s: dropped collinear columns %s", spec.outcome, dropped)
    exog = pd.DataFrame({k: X[k] for k in kept})
    endog = pd.Series(s.y, name=spec.outcome)
    if exog.shape[1] >= s.n:
        raise ValueError(f"{spec.outcome!r}: {s.n} observations for {exog.shape[1]} regressors")
    model = sm.OLS(endog, exog) if s.weights is None else sm.WLS(endog, exog, weights=s.weights)
    if spec.cluster is None:
        res = model.fit(cov_type="HC1", use_t=True)
        n_clusters = None
    else:
        n_clusters = int(np.unique(s.groups).size)
        if n_clusters < 2:
            raise ValueError(f"only {n_clusters} cluster in the estimation sample of "
                             f"{spec.outcome!r}")
        res = model.fit(cov_type="cluster", cov_kwds={"groups": s.groups}, use_t=True)

    control = np.ones(s.n, dtype=bool)
    for v in s.treat.values():
        control &= v == 0
    term_defs = []
    if not by_gender:
        cm = _control_mean(s.y, control, s.weights)
        for p in interest:
            term_defs.append(TermDef(_tidy_name(p), ((p, 1.0),), cm))
        model_name = {"all": "pooled", "women": "women_only", "men": "men_only"}[sample]
    else:
        cm = {sex: _control_mean(s.y, control & (s.female == (1 if sex == "female" else 0)),
                                 s.weights) for sex in ("female", "male")}
        for name in _terms(s, pairs):
            f, m = f"{name}:female", f"{name}:male"
            term_defs.append(TermDef(_tidy_name(f), ((f, 1.0),), cm["female"]))
            term_defs.append(TermDef(_tidy_name(m), ((m, 1.0),), cm["male"]))
            term_defs.append(TermDef(_tidy_name(name) + "_diff", ((f, 1.0), (m, -1.0)), np.nan))
        model_name = "by_gender"
    res.estimate_info = FitInfo(
        spec=spec, model=model_name, sample=sample, n_obs=int(res.nobs), n_clusters=n_clusters,
        terms=tuple(term_defs), dropped_columns=tuple(dropped),
        baseline_columns=tuple(c for c in s.covariates if c not in spec.controls))
    return res


# --------------------------------------------------------------------------------------------
# Tidy output
# --------------------------------------------------------------------------------------------
def _empty_tidy() -> pd.DataFrame:
    out = pd.DataFrame({c: pd.Series(dtype="float64") for c in TIDY_COLUMNS})
    for c in ("study", "outcome", "model", "sample", "term"):
        out[c] = out[c].astype("str")
    out["n_obs"] = out["n_obs"].astype("int64")
    out["n_clusters"] = out["n_clusters"].astype("Int64")
    return out


def tidy(results, study: str | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """One row per term of interest of a :func:`fit` result, columns ``TIDY_COLUMNS``.

    Single coefficients come from ``params`` / ``bse`` / ``conf_int()`` / ``pvalues``; linear
    combinations (the ``_diff`` rows) from ``results.t_test`` (same covariance and t df).
    ``control_mean`` is the (weighted) mean outcome of control-arm observations in the
    estimation sample, for the gender rows that of the gender; NaN for ``_diff`` rows.
    """
    info: FitInfo = getattr(results, "estimate_info", None)
    if info is None:
        raise ValueError("results were not produced by pipeline.estimate.fit")
    names = list(results.params.index)
    ci = results.conf_int(alpha=alpha)
    rows = []
    for td in info.terms:
        if len(td.weights) == 1 and td.weights[0][1] == 1.0:
            p = td.weights[0][0]
            est, se = float(results.params[p]), float(results.bse[p])
            lo, hi = (float(x) for x in ci.loc[p])
            pv = float(results.pvalues[p])
        else:
            r = np.zeros((1, len(names)))
            for p, wgt in td.weights:
                r[0, names.index(p)] = wgt
            tt = results.t_test(r)
            est, se = float(np.squeeze(tt.effect)), float(np.squeeze(tt.sd))
            lo, hi = (float(x) for x in np.asarray(tt.conf_int(alpha=alpha)).ravel())
            pv = float(np.squeeze(tt.pvalue))
        cm = td.control_mean
        pct = 100.0 * est / cm if np.isfinite(cm) and cm != 0 else np.nan
        rows.append({
            "study": study, "outcome": info.spec.outcome, "model": info.model,
            "sample": info.sample, "term": td.term, "estimate": est, "std_error": se,
            "ci_low": lo, "ci_high": hi, "p_value": pv, "n_obs": info.n_obs,
            "n_clusters": info.n_clusters, "control_mean": cm, "effect_pct_of_control_mean": pct,
        })
    if not rows:
        return _empty_tidy()
    out = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return _coerce(out)


def _coerce(out: pd.DataFrame) -> pd.DataFrame:
    out = out.copy()
    for c in ("study", "outcome", "model", "sample", "term"):
        out[c] = out[c].astype("str") if out[c].notna().all() else out[c].astype("object")
    out["n_obs"] = out["n_obs"].astype("int64")
    out["n_clusters"] = pd.array(out["n_clusters"].tolist(), dtype="Int64")
    for c in ("estimate", "std_error", "ci_low", "ci_high", "p_value", "control_mean",
              "effect_pct_of_control_mean"):
        out[c] = out[c].astype("float64")
    return out.reset_index(drop=True)


def _sexes_present(df: pd.DataFrame, spec: Spec) -> set[str]:
    _require(df, [GENDER], "owner's sex")
    rows = _followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    rows &= ~np.isnan(_as_float(df[spec.outcome], spec.outcome))
    g = _as_float(df[GENDER], GENDER)[rows]
    present = set()
    if (g == 1).any():
        present.add("women")
    if (g == 0).any():
        present.add("men")
    return present


def estimate_gender_effects(df: pd.DataFrame, spec: Spec, study: str | None = None) -> pd.DataFrame:
    """``by_gender``, ``women_only`` and ``men_only`` rows for one outcome (tidy table).

    With one sex only (e.g. a women-only study), only that sex's split regression is run.
    """
    _prepare(df, spec, "all", need_gender=True)    # column and outcome checks, clear errors
    present = _sexes_present(df, spec)
    parts = []
    if present == {"women", "men"}:
        parts.append(tidy(fit(df, spec, by_gender=True), study))
    for sex in ("women", "men"):
        if sex in present:
            parts.append(tidy(fit(df, spec, sample=sex), study))
        else:
            log.info("%s: no %s in the sample; %s_only skipped", spec.outcome, sex, sex)
    return _concat(parts)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_tidy()
    return _coerce(pd.concat(parts, ignore_index=True))


def estimate_study(df: pd.DataFrame, outcomes: list[str], spec_params: dict | None,
                   study: str) -> pd.DataFrame:
    """All models for every outcome of one study, as one tidy table.

    ``spec_params``: the ``estimate:`` params group (Spec fields except ``outcome``).
    Rows are ordered by outcome (as given), model (``MODELS``), then term.
    """
    if isinstance(outcomes, str):
        outcomes = [outcomes]
    if not outcomes:
        raise ValueError("no outcomes to estimate")
    if len(set(outcomes)) != len(outcomes):
        raise ValueError(f"duplicate outcomes: {outcomes}")
    parts = []
    for outcome in outcomes:
        spec = Spec.from_params(spec_params, outcome, df)
        parts.append(tidy(fit(df, spec), study))
        parts.append(estimate_gender_effects(df, spec, study))
    out = _concat(parts)
    # Explicit, stable ordering (construction already follows it).
    order = {"outcome": {o: i for i, o in enumerate(outcomes)},
             "model": {m: i for i, m in enumerate(MODELS)}}
    key = pd.DataFrame({
        "o": out["outcome"].map(order["outcome"]), "m": out["model"].map(order["model"]),
        "r": np.arange(len(out))})
    idx = key.sort_values(["o", "m", "r"], kind="mergesort").index
    return out.loc[idx].reset_index(drop=True)


# Keys of the ``estimate:`` params group that are not regression-specification fields.
STAGE_KEYS = ("outcomes", "primary_outcome")


def run(study: str, params: dict) -> dict:
    """The estimate stage: analysis table -> tidy results for every outcome and model."""
    from pipeline import paths
    from pipeline.io import write_csv, write_json

    analysis = pd.read_parquet(paths.processed_dir(study) / "analysis.parquet")
    outcomes = [o for o in params["outcomes"] if o in analysis.columns and analysis[o].notna().any()]
    if not outcomes:
        raise ValueError(f"{study}: none of the outcomes {params['outcomes']} is in the analysis table")
    spec_params = {k: v for k, v in params.items() if k not in STAGE_KEYS}
    results = estimate_study(analysis, outcomes, spec_params, study)
    out = paths.processed_dir(study)
    write_csv(out / "results.csv", results)
    summary = {"study": study, "outcomes": outcomes, "rows": len(results),
               "skipped_outcomes": [o for o in params["outcomes"] if o not in outcomes]}
    write_json(out / "estimate_summary.json", summary)
    return {"results": results, "summary": summary}
