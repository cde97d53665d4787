"""Intention-to-treat effects of skills and capital on micro-enterprise profits.

Estimation follows the "Estimation and inference" section of ``METHODS.md``:

* **ANCOVA**: the firm's baseline value of the outcome (``Y_bl``, 0 where missing) and a
  missing-baseline dummy (``Y_bl_missing``) are controls, so firms without a baseline are kept
  (``Spec.missing_baseline = "dummy"``). With ``"listwise"`` the rows whose baseline is missing
  (``Y_bl_missing == 1``) leave the estimation sample instead and ``Y_bl`` alone is the control
  (complete-case ANCOVA; ``n_obs`` counts the rows kept).
  When a study has no baseline (neither column exists) the model is the plain regression.
* Follow-up rounds are **pooled** (``followup`` is True) with **round fixed effects**, and
  **strata fixed effects** enter every regression (dummy variables, first sorted level dropped).
* **Cluster-robust** standard errors at the unit of randomisation, exactly as statsmodels'
  ``cov_type="cluster"`` computes them (CR1: ``G/(G-1) * (N-1)/(N-K)``, ``K`` counting every
  regressor including the fixed-effect dummies), with t(G-1) inference (``use_t=True``).
  ``Spec.cluster = None`` gives HC1 with t(N-K). ``Spec.vcov = "CR2"`` (the ``vcov:`` param) gives
  instead Bell-McCaffrey CR2 (``A_g = (I - H_gg)^-1/2`` with the hat matrix of the full model,
  FE dummies included; no further factor; t(G-1)) and ``"CR3"`` the cluster jackknife of MacKinnon, Nielsen & Webb (2023), ``(G-1)/G sum_g (b_(g) - b)
  (b_(g) - b)'`` with the fixed effects re-estimated in every leave-one-cluster-out fit, t(G-1):
  the simulation study found CR1 about 9% too small for the by_gender model (strata x sex FE,
  ~7-8 clusters per stratum); CR2 reached 93-97% coverage in every cell at 500 draws, CR3 was
  conservative (up to 98%). CR2 and CR3 are computed by :mod:`pipeline.fastols`.
* Engine (``Spec.engine``): ``statsmodels`` (explicit FE dummies, every parameter reported) or
  ``fastols`` (FE absorbed by :func:`pipeline.fastols.fe_ols`, only non-FE parameters reported,
  results an :class:`AbsorbedResults`; same estimates and CR1/HC1 covariance to ~1e-10). The
  by_gender fully interacted model then absorbs FE x sex. CR2 / CR3 always use fastols.
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
``round_<r>`` (sample ``all``; with ``by_round``)
    The pooled specification on the rows of follow-up round r only (round FE then drop out).
``descriptive`` (sample ``women``; NON-CAUSAL)
    Women's profit on the skills index and credit access with controls (:func:`fit_descriptive`).

Optional ``controls`` (``Spec.controls``, the ``controls:`` param) must be complete in the
estimation sample: use the construct stage's baseline pairs, e.g. ``owner_age_bl`` and
``owner_age_bl_missing``.

Outcome transforms (the ``transform`` column; :func:`transform_outcome`): ``level`` (as cleaned,
winsorised), ``unwinsorised``, ``log`` (y > 0 only), ``ihs`` (asinh) and ``trimmed`` (top
``trim_top_pct`` % per round dropped). Beside every effect: the control-group mean, the effect as
% of it (not for log / ihs), the minimum detectable effect ``mde`` = (t_0.8 + t_0.975) SE (also as
% of the control mean) and Anderson's sharpened ``q_value`` within a family of outcomes
(:func:`add_q_values`).

The stage (:func:`run` / :func:`estimate_all`) also writes attrition by arm
(:func:`attrition_table`), Lee bounds (``inference.lee_bounds_table``), the baseline balance
tables (``inference.balance_tables``), quantile treatment effects (``qte.qte_table``), plot data
(:func:`coefficients_by_gender`) and key estimates for the metrics (``OUTPUT_FILES``).

Term names in the tidy table: ``treat_skills``, ``treat_capital``, ``treat_skills_x_treat_capital``
(pooled and split models) and ``<term>_women``, ``<term>_men``, ``<term>_diff`` (by_gender).
In the statsmodels results the parameter names are ``treat_skills:treat_capital`` and
``treat_capital:female`` etc.

A study with only women (``female_owner`` all 1) has no ``by_gender`` or ``men_only`` rows (and
symmetrically for only men).
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, fields, replace
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats
import statsmodels.api as sm

from pipeline import fastols, inference, qte, wild_bootstrap

log = logging.getLogger(__name__)

GENDER = "female_owner"
FOLLOWUP = "followup"
CANONICAL_TREATMENTS = ("treat_skills", "treat_capital")
MODELS = ("pooled", "by_gender", "women_only", "men_only")   # then round_<r>, then descriptive
SAMPLES = ("all", "women", "men")
GENDER_SUFFIX = {"women": "female", "men": "male"}
TIDY_COLUMNS = [
    "study", "outcome", "transform", "model", "sample", "term", "estimate", "std_error", "ci_low",
    "ci_high", "p_value", "wild_p_value", "q_value", "n_obs", "n_clusters", "control_mean",
    "effect_pct_of_control_mean", "mde", "mde_pct_of_control_mean",
]
TEXT_COLUMNS = ("study", "outcome", "transform", "model", "sample", "term")
FLOAT_COLUMNS = ("estimate", "std_error", "ci_low", "ci_high", "p_value", "wild_p_value", "q_value", "control_mean",
                 "effect_pct_of_control_mean", "mde", "mde_pct_of_control_mean")
# Outcome transforms (see transform_outcome). For log and ihs the effect is not in the outcome's
# units, so no "% of the control mean" is given for them.
TRANSFORMS = ("level", "unwinsorised", "log", "ihs", "trimmed")
NONLINEAR_TRANSFORMS = ("log", "ihs")
MDE_POWER = 0.8
# A column is dropped as collinear when the share of its (weighted) sum of squares not explained
# by the columns kept before it is below this.
COLLINEARITY_TOL = 1e-9
ENGINES = ("statsmodels", "fastols")
# Units without a baseline value of the outcome (Spec.missing_baseline): "dummy" keeps them with
# Y_bl = 0 and Y_bl_missing = 1 as controls; "listwise" drops them from the estimation sample.
MISSING_BASELINE = ("dummy", "listwise")


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
    # Covariance: "CR1" (statsmodels' cluster default, HC1 without cluster; reproduces published
    # results), "CR2" (Bell-McCaffrey with the full-model hat matrix, t(G-1); the recommended
    # default, see the simulation study) or "CR3" (cluster jackknife, MacKinnon-Nielsen-Webb
    # 2023; FE refitted in every leave-one-cluster-out estimate; t(G-1)). CR2/CR3 use fastols.
    vcov: str = "CR1"
    # "statsmodels" (explicit FE dummies; every parameter reported) or "fastols" (fixed effects
    # absorbed by pipeline.fastols.fe_ols; only the non-FE parameters reported; same estimates
    # and CR1/HC1 covariance to ~1e-10).
    engine: str = "statsmodels"
    # ANCOVA rows without a baseline: "dummy" (Y_bl = 0 plus the Y_bl_missing dummy) or
    # "listwise" (left out of the estimation sample). See MISSING_BASELINE.
    missing_baseline: str = "dummy"

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
        if self.vcov not in fastols.VCOV_TYPES:
            raise ValueError(f"Spec.vcov must be one of {fastols.VCOV_TYPES}, got {self.vcov!r}")
        if self.vcov != "CR1" and self.cluster is None:
            raise ValueError(f"Spec.vcov={self.vcov!r} needs Spec.cluster")
        if self.engine not in ENGINES:
            raise ValueError(f"Spec.engine must be one of {ENGINES}, got {self.engine!r}")
        if self.missing_baseline not in MISSING_BASELINE:
            raise ValueError(f"Spec.missing_baseline must be one of {MISSING_BASELINE}, "
                             f"got {self.missing_baseline!r}")
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
    """The ANCOVA controls to use: (Y_bl, Y_bl_missing), (Y_bl,) with
    ``missing_baseline="listwise"`` (the rows with Y_bl_missing = 1 are then left out by
    :func:`_prepare`), or () for a study without a baseline."""
    if not spec.baseline_control:
        return ()
    bl, miss = f"{spec.outcome}_bl", f"{spec.outcome}_bl_missing"
    have = [c in df.columns for c in (bl, miss)]
    if not any(have):
        log.info("no baseline columns for %s: plain (non-ANCOVA) regression", spec.outcome)
        return ()
    _require(df, [bl, miss], f"baseline control for {spec.outcome}")
    return (bl,) if spec.missing_baseline == "listwise" else (bl, miss)


def _baseline_observed(df: pd.DataFrame, spec: Spec) -> np.ndarray:
    """Rows whose baseline of ``spec.outcome`` is observed (``Y_bl_missing == 0``)."""
    miss = f"{spec.outcome}_bl_missing"
    return _as_float(df[miss], miss) == 0.0


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
    if baseline and spec.missing_baseline == "listwise":
        keep &= _baseline_observed(df, spec)    # complete cases: baseline observed
    if not keep.any():
        raise ValueError(f"outcome {spec.outcome!r} has no non-missing observations "
                         f"in sample {sample!r}"
                         + (" with a baseline (missing_baseline: listwise)" if baseline
                            and spec.missing_baseline == "listwise" else ""))
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


def _sex_masks(s: _Sample, terms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Row masks of women and men owners; each sex must be present with treatment variation."""
    masks = {"female": s.female == 1, "male": s.female == 0}
    for sex, m in masks.items():
        if not m.any():
            raise ValueError(f"by_gender model needs both sexes; no {sex} owners in the sample")
        _check_variation({k: v[m] for k, v in terms.items()}, f"{sex} sample")
    return masks


def _by_sex(X: dict[str, np.ndarray], columns: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> list[str]:
    """Add ``<name>:female`` and ``<name>:male`` (the column times each sex's mask) to X."""
    names = []
    for name, v in columns.items():
        for sex, m in masks.items():
            X[f"{name}:{sex}"] = v * m
            names.append(f"{name}:{sex}")
    return names


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

    masks = _sex_masks(s, terms)
    X[GENDER] = s.female.copy()
    interest = _by_sex(X, terms, masks)
    if spec.gender_interact_all:
        _by_sex(X, s.covariates, masks)
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
class WildDesign:
    """What the wild cluster bootstrap refits: outcome, regressors (named as the parameters),
    fixed-effect codes to absorb, clusters and weights of the estimation sample."""

    y: np.ndarray
    X: pd.DataFrame
    fe: list | None
    groups: np.ndarray | None
    weights: np.ndarray | None


@dataclass(frozen=True)
class WildSettings:
    """The ``estimate.wild_bootstrap_*`` keys: WCR p-values (pipeline.wild_bootstrap) for every
    term of a model whose estimation sample has fewer than ``below_clusters`` clusters."""

    below_clusters: int
    reps: int
    weights: str
    seed: int

    def applies(self, n_clusters: int | None) -> bool:
        return n_clusters is not None and 2 <= n_clusters < self.below_clusters


def wild_p_value(results, td: TermDef, wild: WildSettings, key: str) -> float:
    """WCR bootstrap p-value of one tidy term; the seed is keyed by the term (order-free)."""
    design: WildDesign = results.wild_design
    names = list(design.X.columns)
    restriction = np.zeros(len(names))
    for param, weight in td.weights:
        restriction[names.index(param)] = weight
    seed = np.random.SeedSequence([wild.seed, zlib.crc32(key.encode("utf-8"))])
    return wild_bootstrap.wild_cluster_test(design.y, design.X.to_numpy(), design.groups, restriction,
                                            fe=design.fe, weights=design.weights, reps=wild.reps,
                                            weight_type=wild.weights, seed=seed).p_value


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
    transform: str = "level"
    outcome_label: str | None = None       # the outcome named in the tidy table (default spec.outcome)
    df_t: float = np.inf                   # degrees of freedom of the t inference


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


def fit(df: pd.DataFrame, spec: Spec, sample: str | None = None, *, by_gender: bool = False,
        model: str | None = None, transform: str = "level", outcome_label: str | None = None):
    """Fit one model; returns the statsmodels results (OLS, or WLS with ``spec.weights``).

    ``sample``: None (all firms), ``"women"`` or ``"men"``. ``by_gender=True`` fits the
    gender-interacted model on all firms. Cluster-robust covariance (statsmodels default CR1
    correction, t(G-1) inference) or HC1 when ``spec.cluster`` is None. Collinear control / FE
    columns are dropped (listed in ``results.estimate_info.dropped_columns``); a collinear
    treatment term raises ValueError. ``results.estimate_info`` is a :class:`FitInfo`.

    ``model`` overrides the model name of the tidy rows (e.g. ``round_2`` for a fit on one
    round's rows); ``transform`` and ``outcome_label`` are carried to the tidy table (used when
    ``spec.outcome`` is a derived column, see :func:`transform_outcome`).
    """
    if by_gender and sample not in (None, "all"):
        raise ValueError("the by_gender model is fitted on all firms (sample=None)")
    sample = "all" if sample is None else sample
    s = _prepare(df, spec, sample, need_gender=by_gender)
    pairs = _crossed_interactions(df, spec)
    if spec.engine == "fastols" or spec.vcov != "CR1":
        return _fit_absorbed(s, spec, pairs, by_gender, sample, model, transform, outcome_label)
    X, interest = _design(s, spec, pairs, by_gender, sample)
    kept, dropped = _drop_collinear(X, s.weights, protected=["const", *interest])
    if dropped:
        log.info("%s: dropped collinear columns %s", spec.outcome, dropped)
    exog = pd.DataFrame({k: X[k] for k in kept})
    endog = pd.Series(s.y, name=spec.outcome)
    if exog.shape[1] >= s.n:
        raise ValueError(f"{spec.outcome!r}: {s.n} observations for {exog.shape[1]} regressors")
    ols = sm.OLS(endog, exog) if s.weights is None else sm.WLS(endog, exog, weights=s.weights)
    if spec.cluster is None:
        res = ols.fit(cov_type="HC1", use_t=True)
        n_clusters = None
    else:
        n_clusters = int(np.unique(s.groups).size)
        if n_clusters < 2:
            raise ValueError(f"only {n_clusters} cluster in the estimation sample of "
                             f"{spec.outcome!r}")
        res = ols.fit(cov_type="cluster", cov_kwds={"groups": s.groups}, use_t=True)

    _attach_info(res, s, spec, pairs, by_gender, sample, model, transform, outcome_label,
                 interest, dropped, n_clusters)
    # the intercept is partialled out by the wild bootstrap; the FE dummies stay regressors
    res.wild_design = WildDesign(s.y, exog.drop(columns="const"), None, s.groups, s.weights)
    return res


def _attach_info(res, s, spec, pairs, by_gender, sample, model, transform, outcome_label,
                 interest, dropped, n_clusters) -> None:
    control = np.ones(s.n, dtype=bool)
    for v in s.treat.values():
        control &= v == 0
    term_defs = []
    if not by_gender:
        cm = _control_mean(s.y, control, s.weights)
        for p in interest:
            term_defs.append(TermDef(_tidy_name(p), ((p, 1.0),), cm))
        model_name = model or {"all": "pooled", "women": "women_only", "men": "men_only"}[sample]
    else:
        cm = {sex: _control_mean(s.y, control & (s.female == (1 if sex == "female" else 0)),
                                 s.weights) for sex in ("female", "male")}
        for name in _terms(s, pairs):
            f, m = f"{name}:female", f"{name}:male"
            term_defs.append(TermDef(_tidy_name(f), ((f, 1.0),), cm["female"]))
            term_defs.append(TermDef(_tidy_name(m), ((m, 1.0),), cm["male"]))
            term_defs.append(TermDef(_tidy_name(name) + "_diff", ((f, 1.0), (m, -1.0)), np.nan))
        model_name = model or "by_gender"
    res.estimate_info = FitInfo(
        spec=spec, model=model_name, sample=sample, n_obs=int(res.nobs), n_clusters=n_clusters,
        terms=tuple(term_defs), dropped_columns=tuple(dropped),
        baseline_columns=tuple(c for c in s.covariates if c not in spec.controls),
        transform=transform, outcome_label=outcome_label,
        df_t=float(n_clusters - 1) if n_clusters is not None else float(res.df_resid))


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
    """Results of the fastols engine with a statsmodels-like interface (``params``, ``bse``,
    ``pvalues``, ``tvalues``, ``conf_int``, ``cov_params()``, ``t_test``, ``f_test``, ``nobs``,
    ``df_resid``). Only the non-fixed-effect parameters are reported (no ``const``, no dummies);
    t / F inference with the covariance's degrees of freedom (G - 1 clustered, N - K HC1), as
    statsmodels' ``use_t=True``. ``fe_result`` is the :class:`pipeline.fastols.FEResult`."""

    def __init__(self, r: fastols.FEResult):
        self.fe_result = r
        self.params, self.bse, self.tvalues, self.pvalues = r.params, r.bse, r.tvalues, r.pvalues
        self.nobs, self.df_resid = float(r.nobs), float(r.df_resid)
        self.df_inference = r.df_inference
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
        return _TTestResult(eff, sd, self.df_inference)

    def f_test(self, R) -> _FTestResult:
        R = np.atleast_2d(np.asarray(R, dtype=float))
        V = self.fe_result.cov.to_numpy()
        rb = R @ self.params.to_numpy()
        q = R.shape[0]
        F = float(rb @ np.linalg.solve(R @ V @ R.T, rb)) / q
        return _FTestResult(F, float(scipy.stats.f.sf(F, q, self.df_inference)), q,
                            self.df_inference)


def _design_absorbed(s: _Sample, spec: Spec, pairs, by_gender: bool, sample: str):
    """(X columns without constant or FE dummies, terms of interest, FE codes to absorb).

    The fully interacted by_gender model absorbs FE x sex (just sex without FE): the same
    column space as the sex-specific dummies and intercepts of :func:`_design`."""
    terms = _terms(s, pairs)
    X: dict[str, np.ndarray] = {}
    fe_codes = [codes for codes, _ in s.fe.values()]
    if not by_gender:
        _check_variation(terms, f"{sample!r} sample")
        X.update(terms)
        X.update(s.covariates)
        return X, list(terms), fe_codes
    masks = _sex_masks(s, terms)
    sex_code = s.female.astype(np.int64)
    if not spec.gender_interact_all:
        X[GENDER] = s.female.copy()
    interest = _by_sex(X, terms, masks)
    if spec.gender_interact_all:
        _by_sex(X, s.covariates, masks)
        fe_codes = [c.astype(np.int64) * 2 + sex_code for c in fe_codes] or [sex_code]
    else:
        X.update(s.covariates)
    return X, interest, fe_codes


def _drop_collinear_absorbed(X: dict[str, np.ndarray], fe_codes, w, protected):
    """:func:`_drop_collinear` after absorbing the fixed effects and the intercept: a column is
    dropped when the share of its raw (weighted) sum of squares left after the FE and the
    columns kept before it is below COLLINEARITY_TOL (a collinear protected column raises)."""
    names = list(X)
    M = np.column_stack([X[n] for n in names])
    Zd, _ = fastols.absorb(M, fe_codes or None, w)
    if w is None:
        G, raw = Zd @ Zd.T, np.einsum("ij,ij->j", M, M)
    else:
        G, raw = (Zd * w) @ Zd.T, np.einsum("ij,ij,i->j", M, M, w)
    kept: list[int] = []
    dropped: list[str] = []
    for j, name in enumerate(names):
        if kept:
            Gk = G[np.ix_(kept, kept)]
            v = scipy.linalg.solve(Gk, G[kept, j], assume_a="pos")
            d = G[j, j] - G[kept, j] @ v
        else:
            d = G[j, j]
        if raw[j] <= 0 or d <= COLLINEARITY_TOL * raw[j]:
            if name in protected:
                raise ValueError(f"term {name!r} is collinear with other regressors "
                                 f"(no independent variation in the sample)")
            dropped.append(name)
            continue
        kept.append(j)
    return [names[j] for j in kept], dropped


def _fit_absorbed(s: _Sample, spec: Spec, pairs, by_gender, sample, model, transform,
                  outcome_label) -> AbsorbedResults:
    """:func:`fit` with the fixed effects absorbed by :func:`pipeline.fastols.fe_ols`."""
    X, interest, fe_codes = _design_absorbed(s, spec, pairs, by_gender, sample)
    kept, dropped = _drop_collinear_absorbed(X, fe_codes, s.weights, protected=interest)
    if dropped:
        log.info("%s: dropped collinear columns %s", spec.outcome, dropped)
    n_clusters = None
    if spec.cluster is not None:
        n_clusters = int(np.unique(s.groups).size)
        if n_clusters < 2:
            raise ValueError(f"only {n_clusters} cluster in the estimation sample of "
                             f"{spec.outcome!r}")
    r = fastols.fe_ols(s.y, pd.DataFrame({k: X[k] for k in kept}), fe=fe_codes or None,
                       cluster=s.groups if spec.cluster is not None else None,
                       weights=s.weights, vcov=spec.vcov)
    res = AbsorbedResults(r)
    _attach_info(res, s, spec, pairs, by_gender, sample, model, transform, outcome_label,
                 interest, dropped, n_clusters)
    res.wild_design = WildDesign(s.y, pd.DataFrame({k: X[k] for k in kept}), fe_codes or None, s.groups,
                                 s.weights)
    return res


# --------------------------------------------------------------------------------------------
# Tidy output
# --------------------------------------------------------------------------------------------
def _empty_tidy() -> pd.DataFrame:
    out = pd.DataFrame({c: pd.Series(dtype="float64") for c in TIDY_COLUMNS})
    for c in TEXT_COLUMNS:
        out[c] = out[c].astype("str")
    out["n_obs"] = out["n_obs"].astype("int64")
    out["n_clusters"] = out["n_clusters"].astype("Int64")
    return out


def tidy(results, study: str | None = None, alpha: float = 0.05, power: float = MDE_POWER,
         wild: WildSettings | None = None) -> pd.DataFrame:
    """One row per term of interest of a :func:`fit` result, columns ``TIDY_COLUMNS``.

    Single coefficients come from ``params`` / ``bse`` / ``conf_int()`` / ``pvalues``; linear
    combinations (the ``_diff`` rows) from ``results.t_test`` (same covariance and t df).
    ``control_mean`` is the (weighted) mean outcome of control-arm observations in the
    estimation sample, for the gender rows that of the gender; NaN for ``_diff`` rows.
    ``mde`` is the minimum detectable effect at ``power`` (80%) and two-sided level ``alpha`` from
    the estimated SE, ``(t_power + t_{1-alpha/2}) * SE`` with the model's t degrees of freedom (G - 1
    clustered, N - K with HC1); ``q_value`` is NaN here (filled by :func:`estimate_study`).
    ``wild_p_value``: the wild cluster restricted bootstrap p-value where ``wild`` applies to the
    model's number of clusters, else NaN.
    For the log and ihs transforms the ``_pct_`` columns are NaN (not percentage effects).
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
        wild_p = np.nan
        if wild is not None and wild.applies(info.n_clusters):
            key = "|".join(str(x) for x in (study, info.outcome_label or info.spec.outcome, info.transform,
                                             info.model, info.sample, td.term))
            wild_p = wild_p_value(results, td, wild, key)
        cm = td.control_mean
        pct_ok = np.isfinite(cm) and cm != 0 and info.transform not in NONLINEAR_TRANSFORMS
        m = float(inference.mde(se, info.df_t, power=power, alpha=alpha))
        rows.append({
            "study": study, "outcome": info.outcome_label or info.spec.outcome,
            "transform": info.transform, "model": info.model,
            "sample": info.sample, "term": td.term, "estimate": est, "std_error": se,
            "ci_low": lo, "ci_high": hi, "p_value": pv, "wild_p_value": wild_p, "q_value": np.nan,
            "n_obs": info.n_obs,
            "n_clusters": info.n_clusters, "control_mean": cm,
            "effect_pct_of_control_mean": 100.0 * est / cm if pct_ok else np.nan,
            "mde": m, "mde_pct_of_control_mean": 100.0 * m / abs(cm) if pct_ok else np.nan,
        })
    if not rows:
        return _empty_tidy()
    out = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    return _coerce(out)


def _coerce(out: pd.DataFrame) -> pd.DataFrame:
    out = out.copy()
    for c in TEXT_COLUMNS:
        out[c] = out[c].astype("str") if out[c].notna().all() else out[c].astype("object")
    out["n_obs"] = out["n_obs"].astype("int64")
    out["n_clusters"] = pd.array(out["n_clusters"].tolist(), dtype="Int64")
    for c in FLOAT_COLUMNS:
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


def estimate_gender_effects(df: pd.DataFrame, spec: Spec, study: str | None = None, *,
                            alpha: float = 0.05, power: float = MDE_POWER,
                            wild: WildSettings | None = None, **fit_kwargs) -> pd.DataFrame:
    """``by_gender``, ``women_only`` and ``men_only`` rows for one outcome (tidy table).

    With one sex only (e.g. a women-only study), only that sex's split regression is run.
    ``fit_kwargs`` (``transform``, ``outcome_label``) are passed to :func:`fit`.
    """
    _prepare(df, spec, "all", need_gender=True)    # column and outcome checks, clear errors
    present = _sexes_present(df, spec)
    parts = []
    if present == {"women", "men"}:
        parts.append(tidy(fit(df, spec, by_gender=True, **fit_kwargs), study, alpha, power, wild))
    for sex in ("women", "men"):
        if sex in present:
            parts.append(tidy(fit(df, spec, sample=sex, **fit_kwargs), study, alpha, power, wild))
        else:
            log.info("%s: no %s in the sample; %s_only skipped", spec.outcome, sex, sex)
    return _concat(parts)


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return _empty_tidy()
    return _coerce(pd.concat(parts, ignore_index=True))


# --------------------------------------------------------------------------------------------
# Outcome transforms
# --------------------------------------------------------------------------------------------
def transform_available(df: pd.DataFrame, outcome: str, transform: str) -> bool:
    """Whether ``transform`` can be built for ``outcome`` from the columns of ``df``."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; allowed: {TRANSFORMS}")
    if transform == "unwinsorised":
        return f"{outcome}_unwinsorised" in df.columns
    return outcome in df.columns


def transform_outcome(df: pd.DataFrame, outcome: str, transform: str, *,
                      trim_top_pct: float = 1.0) -> tuple[pd.DataFrame, str]:
    """``df`` with the transformed outcome (and its ANCOVA baseline pair) added; its column name.

    ``level``
        The outcome as constructed (cleaned; winsorised per round as the clean stage is set).
    ``unwinsorised``
        ``<outcome>_unwinsorised`` with its own baseline ``<outcome>_unwinsorised_bl``.
    ``log``
        log(y), **only for y > 0**: the sample drops zero (closed) and negative profits, so the
        effect is on the intensive margin among firms with positive profit in that round and is
        not an ITT on the whole sample (selection). Baseline control log(y_bl) where y_bl > 0,
        else 0 with the missing-baseline dummy set to 1.
    ``ihs``
        asinh(y), all observations; baseline asinh(y_bl). Depends on the units of y (Chen & Roth).
    ``trimmed``
        The unwinsorised outcome (the outcome itself if no unwinsorised column exists) with the
        observations above the (100 - ``trim_top_pct``) percentile of their round set to missing
        (percentile over all non-missing observations of the round, arms and sexes pooled, linear
        interpolation). The baseline control is the winsorised ``<outcome>_bl`` (a covariate
        only; any pre-treatment function of the baseline keeps ANCOVA valid).

    For ``level`` the data and name are returned unchanged. The new columns are named
    ``<outcome>__<transform>`` (+ ``_bl`` / ``_bl_missing`` where the study has a baseline).
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; allowed: {TRANSFORMS}")
    _require(df, [outcome], "outcome")
    if transform == "level":
        return df, outcome
    name = f"{outcome}__{transform}"
    bl, miss = f"{outcome}_bl", f"{outcome}_bl_missing"
    has_bl = bl in df.columns and miss in df.columns
    y = pd.Series(_as_float(df[outcome], outcome), index=df.index)
    new: dict[str, pd.Series] = {}
    if transform == "unwinsorised":
        src = f"{outcome}_unwinsorised"
        _require(df, [src], "unwinsorised outcome")
        new[name] = df[src].astype("float64")
        if f"{src}_bl" in df.columns and f"{src}_bl_missing" in df.columns:
            new[f"{name}_bl"] = df[f"{src}_bl"].astype("float64")
            new[f"{name}_bl_missing"] = df[f"{src}_bl_missing"]
    elif transform == "log":
        new[name] = np.log(y.where(y > 0))
        if has_bl:
            v = df[bl].astype("float64")
            ok = (df[miss] == 0) & (v > 0)
            new[f"{name}_bl"] = np.log(v.where(ok)).fillna(0.0)
            new[f"{name}_bl_missing"] = (~ok).astype("int8")
    elif transform == "ihs":
        new[name] = np.arcsinh(y)
        if has_bl:
            new[f"{name}_bl"] = np.arcsinh(df[bl].astype("float64"))
            new[f"{name}_bl_missing"] = df[miss]
    elif transform == "trimmed":
        if not 0 <= float(trim_top_pct) < 100:
            raise ValueError(f"trim_top_pct must be in [0, 100), got {trim_top_pct}")
        src = f"{outcome}_unwinsorised" if f"{outcome}_unwinsorised" in df.columns else outcome
        v = df[src].astype("float64")
        if "round" in df.columns:
            thr = v.groupby(df["round"]).transform(lambda s: s.quantile(1 - float(trim_top_pct) / 100))
        else:
            thr = pd.Series(v.quantile(1 - float(trim_top_pct) / 100), index=df.index)
        new[name] = v.where(v <= thr) if trim_top_pct > 0 else v
        if has_bl:
            new[f"{name}_bl"] = df[bl]
            new[f"{name}_bl_missing"] = df[miss]
    return df.assign(**new), name


# --------------------------------------------------------------------------------------------
# The study table
# --------------------------------------------------------------------------------------------
def _round_models(df: pd.DataFrame, spec: Spec) -> list:
    if "round" not in df.columns:
        log.info("no 'round' column: round-by-round models skipped")
        return []
    rows = _followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    rows &= ~np.isnan(_as_float(df[spec.outcome], spec.outcome))
    return sorted(pd.unique(df.loc[rows, "round"]).tolist())


def _model_rank(model: str) -> tuple:
    if model in MODELS:
        return (0, MODELS.index(model), 0)
    if model.startswith("round_"):
        tail = model[len("round_"):]
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
    causal = out["model"] != "descriptive"
    keys = [fam, out["transform"], out["model"], out["sample"], out["term"]]
    for _, idx in out[causal].groupby([k[causal] for k in keys], sort=False).groups.items():
        out.loc[idx, "q_value"] = inference.sharpened_qvalues(out.loc[idx, "p_value"].to_numpy())
    return out


def estimate_study(df: pd.DataFrame, outcomes: list[str], spec_params: dict | None,
                   study: str, *, transforms: Sequence[str] = ("level",), by_round: bool = False,
                   trim_top_pct: float = 1.0, q_families: dict | None = None,
                   alpha: float = 0.05, power: float = MDE_POWER,
                   gender_models: bool = True, wild: WildSettings | None = None) -> pd.DataFrame:
    """All models for every outcome and transform of one study, as one tidy table.

    ``spec_params``: the regression-specification keys of the ``estimate:`` params group (Spec
    fields except ``outcome``). Models: ``pooled``, ``by_gender``, ``women_only``, ``men_only``
    and, with ``by_round``, ``round_<r>`` (the pooled specification on the rows of follow-up round
    r only). ``transforms`` (see :func:`transform_outcome`); one not available for an outcome is
    skipped with a log message. ``q_value``: :func:`add_q_values` with ``q_families``;
    ``wild_p_value`` where ``wild`` applies (see :func:`tidy`).
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
            parts.append(tidy(fit(data, spec, **kw), study, alpha, power, wild))
            if gender_models:    # False: owner's sex unknown or constant (no gender models)
                parts.append(estimate_gender_effects(data, spec, study, alpha=alpha, power=power, wild=wild,
                                                     **kw))
            if by_round:
                for r in _round_models(data, spec):
                    sub = data[data["round"] == r]
                    parts.append(tidy(fit(sub, spec, model=f"round_{r}", **kw), study, alpha, power, wild))
    out = _concat(parts)
    out = add_q_values(out, q_families)
    return _sort_table(out, outcomes, transforms)


def _sort_table(out: pd.DataFrame, outcomes: Sequence[str], transforms: Sequence[str]) -> pd.DataFrame:
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
                    controls: Sequence[str] = (), *, sample: str = "women",
                    control_only: bool = False, study: str | None = None,
                    alpha: float = 0.05) -> pd.DataFrame:
    """NON-CAUSAL: how ``regressors`` (e.g. the skills index, credit access) relate to the outcome.

    OLS (WLS with weights) of ``spec.outcome`` on the regressors, ``controls``, the ANCOVA
    baseline pair (when ``spec.baseline_control``) and the specification's fixed effects, on the
    follow-up rows of ``sample`` with every variable observed (closed businesses have no
    business-practice answers, so in practice: open businesses). With ``control_only=False`` all
    arms are used and the treatment dummies (and their interaction) are controls, so the
    coefficients use only within-arm variation; with ``control_only=True`` only control-arm
    firms. Standard errors as the main models. The regressors are mediators of the treatments and
    are correlated with unobserved ability: associations, not effects. Rows: model
    ``descriptive``, term = regressor; ``control_mean`` is the outcome's mean among control-arm
    rows of the sample; ``effect_pct_of_control_mean`` the change for a one-unit increase in the
    regressor as a % of it; ``q_value`` and ``mde`` are NaN.
    """
    regressors, controls = list(regressors), [c for c in controls if c not in regressors]
    if not regressors:
        raise ValueError("no descriptive regressors")
    _require(df, [*regressors, *controls], "descriptive regressor/control")
    spec = replace(spec, controls=tuple(regressors) + tuple(controls))
    needed = [spec.outcome, *regressors, *controls, *_baseline_columns(df, spec)]
    ok = np.ones(len(df), dtype=bool)
    for c in needed:
        ok &= ~np.isnan(_as_float(df[c], c))
    if control_only:
        for t in spec.treatments:
            ok &= _as_float(df[t], t) == 0
    s = _prepare(df.loc[ok], spec, sample, need_gender=False)
    pairs = () if control_only else _crossed_interactions(df.loc[ok], spec)
    X: dict[str, np.ndarray] = {"const": np.ones(s.n)}
    X.update(s.covariates)
    if not control_only:
        X.update(_terms(s, pairs))
    for c, values in s.fe.items():
        X.update(_fe_dummies(values, c))
    kept, dropped = _drop_collinear(X, s.weights, protected=["const", *regressors])
    exog = pd.DataFrame({k: X[k] for k in kept})
    ols = (sm.OLS(s.y, exog) if s.weights is None else sm.WLS(s.y, exog, weights=s.weights))
    if spec.cluster is None:
        res = ols.fit(cov_type="HC1", use_t=True)
        n_clusters = None
    else:
        n_clusters = int(np.unique(s.groups).size)
        res = ols.fit(cov_type="cluster", cov_kwds={"groups": s.groups}, use_t=True)
    control = np.ones(s.n, dtype=bool)
    for v in s.treat.values():
        control &= v == 0
    cm = _control_mean(s.y, control, s.weights)
    ci = res.conf_int(alpha=alpha)
    rows = []
    for r in regressors:
        est = float(res.params[r])
        rows.append({
            "study": study, "outcome": spec.outcome, "transform": "level", "model": "descriptive",
            "sample": sample, "term": r, "estimate": est, "std_error": float(res.bse[r]),
            "ci_low": float(ci.loc[r, 0]), "ci_high": float(ci.loc[r, 1]),
            "p_value": float(res.pvalues[r]), "q_value": np.nan, "n_obs": int(res.nobs),
            "n_clusters": n_clusters, "control_mean": cm,
            "effect_pct_of_control_mean": 100.0 * est / cm if np.isfinite(cm) and cm != 0 else np.nan,
            "mde": np.nan, "mde_pct_of_control_mean": np.nan,
        })
    return _coerce(pd.DataFrame(rows, columns=TIDY_COLUMNS))


# --------------------------------------------------------------------------------------------
# Attrition
# --------------------------------------------------------------------------------------------
ATTRITION_COLUMNS = ["study", "outcome", "model", "sample", "term", "estimate", "std_error",
                     "ci_low", "ci_high", "p_value", "n_obs", "n_clusters", "control_mean",
                     "joint_f_stat", "joint_p_value"]


def _arm_contrasts(df: pd.DataFrame, treatments: Sequence[str], arm: str = "arm") -> dict[str, dict]:
    """Treated arm label -> {treatment: 0/1} (from the firm-level arm and treatment columns)."""
    if arm not in df.columns:
        return {}
    arms, control = inference.arm_order(df, arm, treatments)
    firms = df[[arm, *treatments]].drop_duplicates().set_index(arm)
    return {a: {t: int(firms.loc[a, t]) for t in treatments} for a in arms if a != control}


def attrition_table(df: pd.DataFrame, spec_params: dict | None, study: str | None = None,
                    alpha: float = 0.05) -> pd.DataFrame:
    """Attrition by arm: ``attrited ~ treatments (+ interaction) + strata and round FE`` on every
    planned follow-up firm-round, cluster SE (the main specification without the baseline control
    and controls), pooled, by gender and per sex. Besides the coefficient rows, one row per
    treated arm (term ``arm: <label>``) gives the attrition difference arm - control (a linear
    combination for the combined arm). ``control_mean`` is the control arm's attrition rate;
    ``joint_f_stat`` / ``joint_p_value`` test that all treatment terms of the model are zero."""
    _require(df, ["attrited"], "attrition indicator")
    base = Spec.from_params(spec_params, "attrited", df)
    spec = replace(base, baseline_control=False, controls=())
    contrasts = _arm_contrasts(df, spec.treatments)
    results = [fit(df, spec)]
    present = _sexes_present(df, spec) if GENDER in df.columns else set()
    if present == {"women", "men"}:
        results.append(fit(df, spec, by_gender=True))
    results += [fit(df, spec, sample=sex) for sex in ("women", "men") if sex in present]
    parts = []
    for res in results:
        t = tidy(res, study, alpha)
        names = list(res.params.index)
        interest = [p for td in res.estimate_info.terms for p, _ in td.weights]
        R = np.zeros((len(set(interest)), len(names)))
        for i, p in enumerate(dict.fromkeys(interest)):
            R[i, names.index(p)] = 1.0
        ft = res.f_test(R)
        t["joint_f_stat"] = float(np.squeeze(ft.fvalue))
        t["joint_p_value"] = float(np.squeeze(ft.pvalue))
        extra = []
        if res.estimate_info.model != "by_gender":
            for a, active in contrasts.items():
                r = np.zeros(len(names))
                on = [k for k, v in active.items() if v == 1]
                for k in on:
                    r[names.index(k)] = 1.0
                for i, k1 in enumerate(on):
                    for k2 in on[i + 1:]:
                        nm = _interaction_name((k1, k2))
                        if nm in names:
                            r[names.index(nm)] = 1.0
                tt = res.t_test(r[None, :])
                lo, hi = np.asarray(tt.conf_int(alpha=alpha)).ravel()
                extra.append({**t.iloc[0].to_dict(), "term": f"arm: {a}",
                              "estimate": float(np.squeeze(tt.effect)), "std_error": float(np.squeeze(tt.sd)),
                              "ci_low": float(lo), "ci_high": float(hi), "p_value": float(np.squeeze(tt.pvalue))})
        parts.append(pd.concat([t, pd.DataFrame(extra)], ignore_index=True) if extra else t)
    out = pd.concat(parts, ignore_index=True)
    return out[ATTRITION_COLUMNS]


def attrition_rates(df: pd.DataFrame, arm: str = "arm") -> pd.DataFrame:
    """Share of planned follow-up firm-rounds not interviewed, by sample, arm and round."""
    fu = df[df[FOLLOWUP].astype(bool)]
    parts = []
    for sample, sub in (("all", fu), ("women", fu[fu[GENDER] == 1]), ("men", fu[fu[GENDER] == 0])):
        if sub.empty:
            continue
        g = sub.groupby([arm, "round"])["attrited"].agg(["size", "mean"]).reset_index()
        g.insert(0, "sample", sample)
        parts.append(g.rename(columns={"size": "planned", "mean": "attrition_rate"}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# --------------------------------------------------------------------------------------------
# The whole stage
# --------------------------------------------------------------------------------------------
# Keys of the ``estimate:`` params group that are not regression-specification fields, with the
# defaults used when a key is absent.
STAGE_DEFAULTS: dict = {
    "outcomes": None,
    "primary_outcome": None,
    "transforms": list(TRANSFORMS),
    "trim_top_pct": 1.0,
    "by_round": True,
    "q_families": None,
    "alpha": 0.05,
    "mde_power": MDE_POWER,
    "seed": 20261201,
    "bootstrap_reps": 200,
    "permutations": 1000,
    "n_jobs": 2,
    "qte_quantiles": [0.1, 0.25, 0.5, 0.75, 0.9],
    "qte_fixed_effects": ["round"],
    "balance_covariates": ["female_owner", "owner_age", "owner_educ_years", "hh_size", "hours_week",
                           "skills_index", "credit_access", "profit_usd_ppp_month",
                           "revenue_usd_ppp_month"],
    "lee_cells": ["stratum"],
    "descriptive_regressors": ["skills_index", "credit_access"],
    "descriptive_controls": ["owner_age_bl", "owner_age_bl_missing", "owner_educ_years_bl",
                             "owner_educ_years_bl_missing", "hh_size_bl", "hh_size_bl_missing"],
    "descriptive_sample": "all_arms",
    "wild_bootstrap_below_clusters": 50,   # WCR p-values for models with fewer clusters (0: never)
    "wild_bootstrap_reps": 9999,
    "wild_bootstrap_weights": "auto",      # rademacher | webb | auto (Webb at or below 12 clusters)
    # per-study keys (usually set in a study's ``estimate:`` block, see study_params)
    "sample": None,            # {rounds: [...], survivors_only: bool}: rows of the effect models
    "gender_control": False,   # add female_owner as a control where it varies in the sample
}
STAGE_KEYS = tuple(STAGE_DEFAULTS)
# Every key an ``estimate:`` block may set (the params group, or a study's block on top of it, see
# study_params): the regression-specification fields of Spec (but ``outcome``) and the stage keys.
# pipeline.study.load_study rejects any other key in a study's block; docs/study_config.md
# documents each one (tests/test_study.py checks both).
ESTIMATE_KEYS = tuple(sorted(({f.name for f in fields(Spec)} - {"outcome"}) | set(STAGE_DEFAULTS)))
EFFECT_KEYS = {"treat_skills": "skills", "treat_capital": "capital",
               "treat_skills_x_treat_capital": "skills_x_capital"}


def wild_settings(stage: dict) -> WildSettings:
    """The wild bootstrap settings from the resolved stage keys (checked here, once)."""
    weights = stage["wild_bootstrap_weights"]
    if weights not in wild_bootstrap.WEIGHT_TYPES:
        raise ValueError(f"estimate.wild_bootstrap_weights must be one of {wild_bootstrap.WEIGHT_TYPES}, "
                         f"got {weights!r}")
    below, reps = int(stage["wild_bootstrap_below_clusters"]), int(stage["wild_bootstrap_reps"])
    if below < 0 or reps < 99:
        raise ValueError("estimate.wild_bootstrap_below_clusters must be >= 0 and wild_bootstrap_reps >= 99")
    return WildSettings(below_clusters=below, reps=reps, weights=weights, seed=int(stage["seed"]))


def split_params(params: dict) -> tuple[dict, dict]:
    """(regression-specification params, stage params with defaults filled in)."""
    spec_params = {k: v for k, v in params.items() if k not in STAGE_DEFAULTS}
    stage = {**STAGE_DEFAULTS, **{k: v for k, v in params.items() if k in STAGE_DEFAULTS}}
    if stage["descriptive_sample"] not in ("all_arms", "control_only"):
        raise ValueError("descriptive_sample must be 'all_arms' or 'control_only'")
    stage["ignored"] = []
    if spec_params.get("cluster", "cluster_id") is None and spec_params.get("vcov", "CR1") not in ("CR1", "HC1"):
        # CR2/CR3 are cluster-robust refinements; a study randomised by individual (cluster null)
        # gets HC1, as its published specification does
        stage["ignored"].append(f"vcov: {spec_params['vcov']} (no cluster: HC1)")
        spec_params["vcov"] = "CR1"
    if spec_params.get("vcov") == "HC1":
        spec_params["vcov"] = "CR1"  # with cluster null, CR1 is HC1
    _check_sample(stage["sample"])
    return spec_params, stage


# --------------------------------------------------------------------------------------------
# Per-study specifications (a study's ``estimate:`` block)
# --------------------------------------------------------------------------------------------
SAMPLE_KEYS = ("rounds", "survivors_only")
FLOW_SUFFIXES = ("day", "week", "two_weeks", "month", "quarter", "year")


def _check_sample(sample) -> None:
    if sample is None:
        return
    if not isinstance(sample, dict) or set(sample) - set(SAMPLE_KEYS):
        raise ValueError(f"estimate.sample must be a mapping with keys among {SAMPLE_KEYS}, got {sample!r}")


def study_params(params: dict, study_cfg: dict | None) -> dict:
    """The ``estimate:`` params group with the study's own ``estimate:`` block on top (the study
    wins, key by key). In the study block, ``controls: config`` means the study's ``controls:``
    list (canonical covariate names). Every other key is an ``estimate:`` params key (see
    ``docs/study_config.md``)."""
    out = dict(params or {})
    block = dict((study_cfg or {}).get("estimate") or {})
    if block.get("controls") == "config":
        block["controls"] = list((study_cfg or {}).get("controls") or [])
    out.update(block)
    return out


def _resolve_outcome(name: str, columns) -> str | None:
    """An analysis-table column for ``name``: the column itself, or the canonical outcome
    ``<name>_usd_ppp_<period>`` / ``<name>_usd_ppp`` (so a study block can say ``profit``
    whatever the flow period). None when nothing matches."""
    columns = list(columns)
    if name in columns:
        return name
    found = [c for c in columns if c == f"{name}_usd_ppp"
             or c in {f"{name}_usd_ppp_{p}" for p in FLOW_SUFFIXES}]
    return found[0] if len(found) == 1 else None


def apply_sample(analysis: pd.DataFrame, sample: dict | None) -> tuple[pd.DataFrame, list[str]]:
    """The rows of the effect models: ``rounds`` (keep these rounds), ``survivors_only`` (keep
    rows whose business is open, ``business_closed == 0``). Returns (rows, notes)."""
    _check_sample(sample)
    if not sample:
        return analysis, []
    keep = pd.Series(True, index=analysis.index)
    notes = []
    if sample.get("rounds") is not None:
        _require(analysis, ["round"], "sample.rounds")
        rounds = [int(r) for r in (sample["rounds"] if isinstance(sample["rounds"], (list, tuple))
                                   else [sample["rounds"]])]
        keep &= analysis["round"].isin(rounds)
        notes.append(f"effect models on rounds {rounds} only")
    if sample.get("survivors_only"):
        _require(analysis, ["business_closed"], "sample.survivors_only")
        keep &= analysis["business_closed"] == 0
        notes.append("effect models on surviving (open) businesses only")
    return analysis.loc[keep], notes


def _gender_varies(df: pd.DataFrame) -> bool:
    """Both sexes observed (and no unknown sex) among the follow-up rows."""
    if GENDER not in df.columns:
        return False
    rows = df[df[FOLLOWUP].astype(bool)] if FOLLOWUP in df.columns else df
    g = pd.to_numeric(rows[GENDER], errors="coerce")
    return bool(g.notna().all() and g.nunique() == 2)


def coefficients_by_gender(results: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """Plot data: effect (skills / capital / skills_x_capital), sex (women / men / diff), estimate,
    ci_low, ci_high, from the ``by_gender`` model of ``outcome`` (level)."""
    sub = results[(results["outcome"] == outcome) & (results["transform"] == "level")
                  & (results["model"] == "by_gender")]
    rows = []
    for _, r in sub.iterrows():
        term, sex = r["term"].rsplit("_", 1)
        rows.append({"effect": EFFECT_KEYS.get(term, term), "sex": sex, "estimate": r["estimate"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"]})
    return pd.DataFrame(rows, columns=COEFFICIENTS_BY_GENDER_COLUMNS)


COEFFICIENTS_BY_GENDER_COLUMNS = ["effect", "sex", "estimate", "ci_low", "ci_high"]


def _key_estimates(study, primary, results, attrition, balance_joint, lee, qte) -> dict:
    """Key numbers for the metrics JSON (rounded to 6 decimals)."""
    r6 = lambda v: None if v is None or not np.isfinite(v) else round(float(v), 6)  # noqa: E731
    out: dict = {"study": study, "primary_outcome": primary, "effects": {}}
    sub = results[(results["outcome"] == primary) & (results["transform"] == "level")
                  & (results["model"] == "by_gender")]
    for _, r in sub.iterrows():
        term, sex = r["term"].rsplit("_", 1)
        out["effects"][f"{EFFECT_KEYS.get(term, term)}_{sex}"] = {
            k: r6(r[c]) for k, c in (("estimate", "estimate"), ("se", "std_error"), ("ci_low", "ci_low"),
                                     ("ci_high", "ci_high"), ("p", "p_value"), ("q", "q_value"),
                                     ("mde", "mde"), ("mde_pct", "mde_pct_of_control_mean"),
                                     ("pct", "effect_pct_of_control_mean"))}
    if len(attrition):
        pooled = attrition[attrition["model"] == "pooled"]
        out["attrition"] = {
            "control_rate": r6(pooled["control_mean"].iloc[0]),
            "joint_p_value": r6(pooled["joint_p_value"].iloc[0]),
            "difference_by_arm": {inference.slug(t[len("arm: "):]): r6(e) for t, e in
                                  zip(pooled["term"], pooled["estimate"]) if t.startswith("arm: ")}}
    if len(balance_joint):
        out["balance_joint_ri_p_value"] = {
            f"{inference.slug(r['arm'])}_{r['sample']}": r6(r["ri_p_value"]) for _, r in balance_joint.iterrows()}
    if len(lee):
        out["lee_bounds"] = {f"{inference.slug(r['arm'])}_{r['sample']}": {
            "lower": r6(r["lower"]), "upper": r6(r["upper"]), "ci_low": r6(r["ci_low"]),
            "ci_high": r6(r["ci_high"])} for _, r in lee.iterrows()}
    if len(qte):
        med = qte[(qte["quantile"] == 0.5)]
        out["qte_median"] = {f"{EFFECT_KEYS.get(r['term'], r['term'])}_{r['sample']}": r6(r["estimate"])
                             for _, r in med.iterrows()}
    return out


def estimate_all(analysis: pd.DataFrame, params: dict, study: str,
                 study_cfg: dict | None = None) -> dict:
    """Every table of the estimate stage, computed in memory (nothing written).

    ``study_cfg``: the study's configuration; its ``estimate:`` block overrides ``params`` (see
    :func:`study_params`). The effect models (results, descriptive, QTE) use the rows selected by
    ``sample``; attrition, Lee bounds and balance use every planned row. Gender models are run
    only where both sexes are observed (and none unknown). An add-on whose inputs are absent or
    that fails on the study is skipped; ``summary["skipped"]`` says which and why.

    Returns ``results`` (tidy), ``descriptive`` (its rows are also in ``results``),
    ``attrition``, ``attrition_rates``, ``balance``, ``balance_joint``, ``lee_bounds``, ``qte``,
    ``coefficients_by_gender``, ``key_estimates`` and ``summary``.
    """
    params = study_params(params, study_cfg)
    spec_params, sp = split_params(params)
    if not sp["outcomes"]:
        raise ValueError("estimate params: 'outcomes' is empty")
    full = analysis
    analysis, notes = apply_sample(full, sp["sample"])
    notes += [f"ignored: {x}" for x in sp["ignored"]]
    skipped: dict[str, str] = {}
    resolved = {o: _resolve_outcome(o, analysis.columns) for o in sp["outcomes"]}
    outcomes = list(dict.fromkeys(c for c in resolved.values()
                                  if c is not None and analysis[c].notna().any()))
    if not outcomes:
        raise ValueError(f"{study}: none of the outcomes {sp['outcomes']} is in the analysis table")
    primary = _resolve_outcome(sp["primary_outcome"], analysis.columns) if sp["primary_outcome"] else outcomes[0]
    if primary not in outcomes:
        raise ValueError(f"{study}: primary outcome {sp['primary_outcome']!r} is not among the "
                         f"estimable outcomes {outcomes}")
    q_families = sp["q_families"]
    if q_families:
        q_families = {f: [_resolve_outcome(o, analysis.columns) or o for o in
                          ([m] if isinstance(m, str) else m)] for f, m in q_families.items()}
    gender_models = _gender_varies(analysis)
    if not gender_models:
        skipped["gender_models"] = "owner's sex unknown or the same for every firm"
    if sp["gender_control"]:
        if gender_models:
            spec_params["controls"] = [*(spec_params.get("controls") or []), GENDER]
        else:
            skipped["gender_control"] = "female_owner does not vary (or is unknown)"
    alpha, power, seed = float(sp["alpha"]), float(sp["mde_power"]), int(sp["seed"])
    results = estimate_study(analysis, outcomes, spec_params, study, transforms=sp["transforms"],
                             by_round=bool(sp["by_round"]), trim_top_pct=float(sp["trim_top_pct"]),
                             q_families=q_families, alpha=alpha, power=power,
                             gender_models=gender_models, wild=wild_settings(sp))
    spec = Spec.from_params(spec_params, primary, analysis)

    # Descriptive, non-causal: women's profits and the skills index / credit access.
    descriptive = _empty_tidy()
    women_fu = (analysis[GENDER] == 1) if GENDER in analysis.columns else pd.Series(False, index=analysis.index)
    if FOLLOWUP in analysis.columns:
        women_fu &= analysis[FOLLOWUP].astype(bool)
    regs = [c for c in sp["descriptive_regressors"]
            if c in analysis.columns and analysis.loc[women_fu, c].notna().any()]
    ctrls = [c for c in sp["descriptive_controls"] if c in analysis.columns]
    if regs and women_fu.any():
        try:
            descriptive = fit_descriptive(analysis, spec, regs, ctrls, sample="women",
                                          control_only=sp["descriptive_sample"] == "control_only",
                                          study=study, alpha=alpha)
        except ValueError as exc:    # an add-on: report it, keep the causal results
            log.warning("descriptive model failed: %s", exc)
            skipped["descriptive"] = f"failed: {exc}"
        results = _sort_table(_concat([results, descriptive]), outcomes,
                              list(pd.unique(results["transform"])))
    else:
        skipped["descriptive"] = "no descriptive regressor observed among women, or no women"

    # Attrition and Lee bounds: every planned follow-up row (not only the effect models' sample).
    add_on_errors = (ValueError, KeyError, IndexError, np.linalg.LinAlgError)
    sexes = ("all", "women", "men") if _gender_varies(full) else ("all",)
    attrition = pd.DataFrame(columns=ATTRITION_COLUMNS)
    lee = pd.DataFrame()
    rates = pd.DataFrame()
    fu = full[full[FOLLOWUP].astype(bool)] if FOLLOWUP in full.columns else full.iloc[0:0]
    if "attrited" not in full.columns or not len(fu):
        skipped["attrition"] = skipped["lee_bounds"] = "no attrited / followup columns"
    elif not fu["attrited"].astype(bool).any():
        skipped["attrition"] = skipped["lee_bounds"] = "no attrition (every planned interview observed)"
    else:
        att_p = {}
        try:
            attrition = attrition_table(fu, spec_params, study, alpha)
            rates = attrition_rates(full)
            for _, r in attrition.iterrows():
                if r["term"].startswith("arm: ") and r["model"] in ("pooled", "women_only", "men_only"):
                    att_p[(r["sample"], r["term"][len("arm: "):])] = r["p_value"]
        except add_on_errors as exc:
            attrition, rates = pd.DataFrame(columns=ATTRITION_COLUMNS), pd.DataFrame()
            skipped["attrition"] = f"failed: {exc}"
        if "arm" not in full.columns:
            skipped["lee_bounds"] = "no arm column"
        else:
            try:
                lee = inference.lee_bounds_table(
                    fu, primary, treatments=spec.treatments, cells=[c for c in sp["lee_cells"] if c in fu.columns],
                    cluster=spec.cluster or "firm_id", reps=int(sp["bootstrap_reps"]), seed=seed,
                    alpha=alpha, attrition_p=att_p, samples=sexes)
                lee.insert(0, "study", study)
            except add_on_errors as exc:
                lee = pd.DataFrame()
                skipped["lee_bounds"] = f"failed: {exc}"

    # Balance at baseline (every interviewed baseline row).
    balance, balance_joint = pd.DataFrame(), pd.DataFrame()
    if FOLLOWUP in full.columns and "arm" in full.columns:
        bl_rows = full[~full[FOLLOWUP].astype(bool)]
        if "interviewed" in bl_rows.columns:
            bl_rows = bl_rows[bl_rows["interviewed"] == 1]
        covs = [c for c in sp["balance_covariates"] if c in bl_rows.columns and bl_rows[c].notna().any()]
        if len(bl_rows) and covs:
            try:
                balance, balance_joint = inference.balance_tables(
                    bl_rows, covs, treatments=spec.treatments, cluster=spec.cluster or "firm_id",
                    permutations=int(sp["permutations"]), seed=seed, samples=sexes)
                balance.insert(0, "study", study)
                balance_joint.insert(0, "study", study)
            except add_on_errors as exc:
                balance, balance_joint = pd.DataFrame(), pd.DataFrame()
                skipped["balance"] = f"failed: {exc}"
        else:
            skipped["balance"] = "no baseline rows or no balance covariates observed"
    else:
        skipped["balance"] = "no followup / arm columns"

    # Quantile treatment effects (primary outcome, level).
    qte_tab = pd.DataFrame()
    qte_cols = ["stratum", spec.cluster or "firm_id"]
    if not all(c in analysis.columns for c in qte_cols):
        skipped["qte"] = f"missing columns {[c for c in qte_cols if c not in analysis.columns]}"
    else:
        try:
            qte_tab = qte.qte_table(
                analysis, primary, spec.treatments, sp["qte_quantiles"], reps=int(sp["bootstrap_reps"]),
                seed=seed, cluster=spec.cluster or "firm_id", baseline_control=spec.baseline_control,
                listwise_baseline=spec.missing_baseline == "listwise",
                fixed_effects=[f for f in sp["qte_fixed_effects"] if f in analysis.columns],
                interact=spec.interact_treatments, n_jobs=int(sp["n_jobs"]), alpha=alpha, study=study,
                followup_only=spec.followup_only,
                samples=("women", "men") if gender_models else ("all",))
        except add_on_errors as exc:
            qte_tab = pd.DataFrame()
            skipped["qte"] = f"failed: {exc}"
    if spec.weights is not None:
        notes.append("weights are not used by QuantReg, Lee bounds or the balance table")
    for what, why in skipped.items():
        log.info("%s: %s skipped (%s)", study, what, why)

    coefs = coefficients_by_gender(results, primary)
    key = _key_estimates(study, primary, results, attrition, balance_joint, lee, qte_tab)
    tables = {"results": results, "attrition": attrition, "balance": balance,
              "balance_joint": balance_joint, "lee_bounds": lee, "qte": qte_tab,
              "coefficients_by_gender": coefs}
    tables = {name: _with_header(table, TABLE_COLUMNS[name]) for name, table in tables.items()}
    summary = {"study": study, "outcomes": outcomes, "primary_outcome": primary, "rows": len(results),
               "skipped_outcomes": [o for o, c in resolved.items() if c not in outcomes],
               "transforms": list(pd.unique(results["transform"])),
               "models": list(pd.unique(results["model"])),
               "tables": {name: table_status(name, table, skipped) for name, table in tables.items()},
               "attrition_rates": rates.to_dict("records") if len(rates) else [],
               "specification": {**{k: (list(v) if isinstance(v, tuple) else v)
                                    for k, v in spec.__dict__.items() if k != "outcome"},
                                 "sample": sp["sample"],
                                 # resolved against the data: ANCOVA only where the outcome has a baseline
                                 "baseline_control_by_outcome": {
                                     o: bool(_baseline_columns(analysis, replace(spec, outcome=o))) for o in outcomes},
                                 "gender_models": gender_models, "by_round": bool(sp["by_round"]),
                                 "q_families": q_families,
                                 # levels among the effect models' follow-up rows (1: absorbs nothing)
                                 **_design_levels(analysis, spec)},
               "wild_bootstrap": {**wild_settings(sp).__dict__,
                                  "rows_with_wild_p_value": int(results["wild_p_value"].notna().sum())},
               "skipped": skipped,
               "notes": notes}
    return {**tables, "descriptive": descriptive, "attrition_rates": rates,
            "key_estimates": key, "summary": summary}


def _design_levels(analysis: pd.DataFrame, spec: Spec) -> dict:
    """Distinct fixed-effect levels, clusters and units among the follow-up rows (for the method note)."""
    fu = analysis[analysis[FOLLOWUP].astype(bool)] if FOLLOWUP in analysis.columns else analysis
    return {"fixed_effect_levels": {c: int(fu[c].nunique()) for c in spec.fixed_effects},
            "clusters": int(fu[spec.cluster].nunique()) if spec.cluster else None,
            "units": int(fu["firm_id"].nunique()) if "firm_id" in fu.columns else None}


# The header of every CSV the stage writes (OUTPUT_FILES), whatever the study: a table with nothing
# to report is written with these columns and no rows (never as an empty, header-less file), and
# ``summary["tables"]`` says why (table_status). The balance table has, besides these, n / mean /
# sd / normdiff columns per arm (inference.balance_columns) where it has rows.
TABLE_COLUMNS: dict[str, list[str]] = {
    "results": TIDY_COLUMNS,
    "attrition": ATTRITION_COLUMNS,
    "balance": ["study", *inference.balance_columns()],
    "balance_joint": ["study", *inference.BALANCE_JOINT_COLUMNS],
    "lee_bounds": ["study", *inference.LEE_BOUNDS_COLUMNS],
    "qte": qte.QTE_COLUMNS,
    "coefficients_by_gender": COEFFICIENTS_BY_GENDER_COLUMNS,
}
# The ``skipped`` entry of estimate_all that explains each table's absence.
TABLE_SKIP_KEYS = {"attrition": "attrition", "balance": "balance", "balance_joint": "balance",
                   "lee_bounds": "lee_bounds", "qte": "qte", "coefficients_by_gender": "gender_models"}
TABLE_STATUSES = ("estimated", "not_applicable", "failed")


def _with_header(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``table`` unchanged where it has rows; else no rows with ``columns`` (and any of its own)."""
    if len(table):
        return table
    return pd.DataFrame(columns=list(dict.fromkeys([*columns, *table.columns])))


def table_status(name: str, table: pd.DataFrame, skipped: dict[str, str]) -> dict:
    """``{"rows": n, "status": ..., "reason": ...}`` of one output table: ``estimated`` (it has
    rows; reason null), ``failed`` (the add-on raised; reason ``failed: <error>``) or
    ``not_applicable`` (nothing to report, e.g. no balance covariates, no attrition; reason why)."""
    why = skipped.get(TABLE_SKIP_KEYS.get(name, name))
    if len(table):
        return {"rows": int(len(table)), "status": "estimated", "reason": None}
    if why and why.startswith("failed"):
        return {"rows": 0, "status": "failed", "reason": why}
    return {"rows": 0, "status": "not_applicable", "reason": why or "nothing to report (no rows)"}


OUTPUT_FILES = {
    "results": "results.csv",
    "attrition": "attrition.csv",
    "balance": "balance.csv",
    "balance_joint": "balance_joint.csv",
    "lee_bounds": "lee_bounds.csv",
    "qte": "qte.csv",
    "coefficients_by_gender": "coefficients_by_gender.csv",
    "key_estimates": "estimate_metrics.json",
    "summary": "estimate_summary.json",
}


def study_config(study: str) -> dict | None:
    """The study's configuration (``studies/<study>.yaml``), or None where there is none."""
    from pipeline import paths
    from pipeline.study import load_study

    return load_study(study) if paths.study_config_path(study).exists() else None


def run(study: str, params: dict) -> dict:
    """The estimate stage: analysis table -> every table of :func:`estimate_all`, written to
    ``data/processed/<study>/`` (``OUTPUT_FILES``) only after everything is computed."""
    from pipeline import paths
    from pipeline.io import write_csv, write_json

    analysis = pd.read_parquet(paths.processed_dir(study) / "analysis.parquet")
    out = estimate_all(analysis, params, study, study_config(study))
    folder = paths.processed_dir(study)
    for key, name in OUTPUT_FILES.items():
        if name.endswith(".json"):
            write_json(folder / name, out[key])
        else:
            write_csv(folder / name, out[key])
    return out
