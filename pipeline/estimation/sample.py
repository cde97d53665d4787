"""The estimation sample: follow-up rows of the sample's sex with the outcome observed, the
ANCOVA baseline columns, the outcome transforms, the per-study row selection (``sample:``) and the
canonical outcome names."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.estimation.columns import FOLLOWUP, GENDER, as_float, followup_mask, require
from pipeline.estimation.spec import SAMPLES, TRANSFORMS, Spec, check_sample
from pipeline.vocabulary import ALL, MEN, SAMPLE_NOTE_PREFIX, WOMEN

log = logging.getLogger(__name__)

FLOW_SUFFIXES = ("day", "week", "two_weeks", "month", "quarter", "year")


def baseline_columns(df: pd.DataFrame, spec: Spec) -> tuple[str, ...]:
    """The ANCOVA controls to use: (Y_bl, Y_bl_missing), (Y_bl,) with
    ``missing_baseline="listwise"`` (the rows with Y_bl_missing = 1 are then left out by
    :func:`prepare`), or () for a study without a baseline."""
    if not spec.baseline_control:
        return ()
    bl, miss = f"{spec.outcome}_bl", f"{spec.outcome}_bl_missing"
    have = [c in df.columns for c in (bl, miss)]
    if not any(have):
        log.info("no baseline columns for %s: plain (non-ANCOVA) regression", spec.outcome)
        return ()
    require(df, [bl, miss], f"baseline control for {spec.outcome}")
    return (bl,) if spec.missing_baseline == "listwise" else (bl, miss)


def _baseline_observed(df: pd.DataFrame, spec: Spec) -> np.ndarray:
    """Rows whose baseline of ``spec.outcome`` is observed (``Y_bl_missing == 0``)."""
    miss = f"{spec.outcome}_bl_missing"
    return as_float(df[miss], miss) == 0.0


@dataclass
class Sample:
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


def _study_prefix(df: pd.DataFrame) -> str:
    """``"<study>: "`` when the analysis table names its study (its ``study`` column), else ``""``."""
    studies = df["study"].dropna().unique() if "study" in df.columns else []
    return f"{studies[0]}: " if len(studies) == 1 else ""


def _first_rows(mask: np.ndarray, limit: int = 5) -> str:
    """The first row positions (0-based) where ``mask`` holds, with the count when there are more."""
    rows = np.flatnonzero(mask)
    return str(rows[:limit].tolist()) + (f" (and {len(rows) - limit} more)" if len(rows) > limit else "")


def prepare(df: pd.DataFrame, spec: Spec, sample: str | None, need_gender: bool) -> Sample:
    """The estimation sample of ``spec`` as arrays: follow-up rows (``spec.followup_only``) of
    ``sample`` (None or ``all``, ``women``, ``men``) with the outcome observed (and, with
    ``missing_baseline: listwise``, its baseline). A missing column, or a missing value in a
    regressor, the fixed effects, clusters or weights of the sample, raises ValueError naming it."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError("df must be a pandas DataFrame")
    sample = ALL if sample is None else sample
    if sample not in SAMPLES:
        raise ValueError(f"sample must be None, 'women' or 'men', got {sample!r}")
    with_gender = need_gender or sample != ALL
    baseline = baseline_columns(df, spec)
    _require_spec_columns(df, spec, with_gender)
    keep = _sample_rows(df, spec, sample, baseline)
    used = [spec.outcome, *spec.treatments, *([GENDER] if with_gender else []), *baseline, *spec.controls,
            *spec.fixed_effects, *([spec.cluster] if spec.cluster is not None else []),
            *([spec.weights] if spec.weights is not None else [])]
    sub = df.loc[keep, list(dict.fromkeys(used))]          # only the model's columns: not the whole table copied

    def design_var(col: str, binary: bool = False) -> np.ndarray:
        v = as_float(sub[col], col)
        if not np.isfinite(v).all():
            at = np.zeros(len(df), dtype=bool)
            at[np.flatnonzero(keep)[~np.isfinite(v)]] = True
            raise ValueError(f"{_study_prefix(df)}column {col!r} has missing (NaN) or infinite values in the "
                             f"estimation sample of {spec.outcome!r} at rows {_first_rows(at)} of the analysis table")
        if binary and not np.isin(v, (0.0, 1.0)).all():
            raise ValueError(f"column {col!r} must be 0/1")
        return v

    treat = {t: design_var(t, binary=True) for t in spec.treatments}
    female = design_var(GENDER, binary=True) if with_gender else None
    covariates = {c: design_var(c) for c in (*baseline, *spec.controls)}
    fe = {c: pd.factorize(_complete(sub[c], f"fixed-effect column {c!r}"), sort=True) for c in spec.fixed_effects}
    groups = None
    if spec.cluster is not None:
        groups = pd.factorize(_complete(sub[spec.cluster], f"cluster column {spec.cluster!r}"),
                              sort=True)[0].astype(np.int64)
    weights = None
    if spec.weights is not None:
        weights = design_var(spec.weights)
        if not (np.isfinite(weights).all() and (weights > 0).all()):
            raise ValueError(f"weights column {spec.weights!r} must be finite and positive")
    return Sample(y=as_float(sub[spec.outcome], spec.outcome), treat=treat, female=female,
                  covariates=covariates, fe=fe, groups=groups, weights=weights)


def _require_spec_columns(df: pd.DataFrame, spec: Spec, with_gender: bool) -> None:
    """A clear error for any column of the specification missing from ``df``."""
    require(df, [spec.outcome], "outcome")
    require(df, spec.treatments, "treatment")
    require(df, spec.fixed_effects, "fixed effect")
    require(df, spec.controls, "control")
    if spec.cluster is not None:
        require(df, [spec.cluster], "cluster")
    if spec.weights is not None:
        require(df, [spec.weights], "weights")
    if with_gender:
        require(df, [GENDER], "owner's sex")


def _sample_rows(df: pd.DataFrame, spec: Spec, sample: str, baseline: tuple[str, ...]) -> np.ndarray:
    """Row mask of the estimation sample (see :func:`prepare`); no row raises ValueError."""
    y_all = as_float(df[spec.outcome], spec.outcome)
    keep = followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    if not np.any(keep & ~np.isnan(y_all)):
        raise ValueError(f"outcome {spec.outcome!r} has no non-missing "
                         f"{'follow-up ' if spec.followup_only else ''}observations")
    if sample != ALL:
        g = as_float(df[GENDER], GENDER)
        keep &= g == (1.0 if sample == WOMEN else 0.0)
    keep &= ~np.isnan(y_all)
    listwise = bool(baseline) and spec.missing_baseline == "listwise"
    if listwise:
        keep &= _baseline_observed(df, spec)    # complete cases: baseline observed
    if np.isinf(y_all[keep]).any():
        raise ValueError(f"{_study_prefix(df)}column {spec.outcome!r} has infinite values at rows "
                         f"{_first_rows(keep & np.isinf(y_all))} of the analysis table")
    if not keep.any():
        raise ValueError(f"outcome {spec.outcome!r} has no non-missing observations "
                         f"in sample {sample!r}"
                         + (" with a baseline (missing_baseline: listwise)" if listwise else ""))
    return keep


def _complete(s: pd.Series, what: str) -> pd.Series:
    """``s`` when it has no missing value in the estimation sample, else ValueError naming ``what``."""
    if s.isna().any():
        raise ValueError(f"{what} has missing values in the estimation sample")
    return s


def crossed_interactions(df: pd.DataFrame, spec: Spec) -> tuple[tuple[str, str], ...]:
    """Pairs of treatments crossed in the study (some follow-up firm with non-missing outcome has
    both). Decided on the whole data, so every model of an outcome has the same terms."""
    if not spec.interact_treatments or len(spec.treatments) < 2:
        return ()
    rows = followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    rows &= ~np.isnan(as_float(df[spec.outcome], spec.outcome))
    pairs = []
    for i, a in enumerate(spec.treatments):
        for b in spec.treatments[i + 1:]:
            both = (as_float(df[a], a)[rows] == 1) & (as_float(df[b], b)[rows] == 1)
            if both.any():
                pairs.append((a, b))
    return tuple(pairs)


def sexes_present(df: pd.DataFrame, spec: Spec) -> set[str]:
    require(df, [GENDER], "owner's sex")
    rows = followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    rows &= ~np.isnan(as_float(df[spec.outcome], spec.outcome))
    g = as_float(df[GENDER], GENDER)[rows]
    present = set()
    if (g == 1).any():
        present.add(WOMEN)
    if (g == 0).any():
        present.add(MEN)
    return present


def round_models(df: pd.DataFrame, spec: Spec) -> list:
    if "round" not in df.columns:
        log.info("no 'round' column: round-by-round models skipped")
        return []
    rows = followup_mask(df) if spec.followup_only else np.ones(len(df), dtype=bool)
    rows &= ~np.isnan(as_float(df[spec.outcome], spec.outcome))
    return sorted(pd.unique(df.loc[rows, "round"]).tolist())


def gender_varies(df: pd.DataFrame) -> bool:
    """Both sexes observed (and no unknown sex) among the follow-up rows."""
    if GENDER not in df.columns:
        return False
    rows = df[df[FOLLOWUP].astype(bool)] if FOLLOWUP in df.columns else df
    g = pd.to_numeric(rows[GENDER], errors="coerce")
    return bool(g.notna().all() and g.nunique() == 2)


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
                      trim_top_pct: float) -> tuple[pd.DataFrame, str]:
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
    require(df, [outcome], "outcome")
    if transform == "level":
        return df, outcome
    name = f"{outcome}__{transform}"
    bl, miss = f"{outcome}_bl", f"{outcome}_bl_missing"
    baseline = (bl, miss) if bl in df.columns and miss in df.columns else None
    y = pd.Series(as_float(df[outcome], outcome), index=df.index)
    if transform == "unwinsorised":
        new = _unwinsorised(df, outcome, name)
    elif transform == "log":
        new = _log(df, y, name, baseline)
    elif transform == "ihs":
        new = _ihs(df, y, name, baseline)
    else:
        new = _trimmed(df, outcome, name, baseline, trim_top_pct)
    return df.assign(**new), name


def _unwinsorised(df: pd.DataFrame, outcome: str, name: str) -> dict[str, pd.Series]:
    src = f"{outcome}_unwinsorised"
    require(df, [src], "unwinsorised outcome")
    new = {name: df[src].astype("float64")}
    if f"{src}_bl" in df.columns and f"{src}_bl_missing" in df.columns:
        new[f"{name}_bl"] = df[f"{src}_bl"].astype("float64")
        new[f"{name}_bl_missing"] = df[f"{src}_bl_missing"]
    return new


def _log(df: pd.DataFrame, y: pd.Series, name: str, baseline: tuple[str, str] | None) -> dict[str, pd.Series]:
    new = {name: np.log(y.where(y > 0))}
    if baseline is not None:
        v = df[baseline[0]].astype("float64")
        ok = (df[baseline[1]] == 0) & (v > 0)
        new[f"{name}_bl"] = np.log(v.where(ok)).fillna(0.0)
        new[f"{name}_bl_missing"] = (~ok).astype("int8")
    return new


def _ihs(df: pd.DataFrame, y: pd.Series, name: str, baseline: tuple[str, str] | None) -> dict[str, pd.Series]:
    new = {name: np.arcsinh(y)}
    if baseline is not None:
        new[f"{name}_bl"] = np.arcsinh(df[baseline[0]].astype("float64"))
        new[f"{name}_bl_missing"] = df[baseline[1]]
    return new


def _trimmed(df: pd.DataFrame, outcome: str, name: str, baseline: tuple[str, str] | None,
             trim_top_pct: float) -> dict[str, pd.Series]:
    if not 0 <= float(trim_top_pct) < 100:
        raise ValueError(f"trim_top_pct must be in [0, 100), got {trim_top_pct}")
    src = f"{outcome}_unwinsorised" if f"{outcome}_unwinsorised" in df.columns else outcome
    v = df[src].astype("float64")
    if "round" in df.columns:
        thr = v.groupby(df["round"]).transform(lambda s: s.quantile(1 - float(trim_top_pct) / 100))
    else:
        thr = pd.Series(v.quantile(1 - float(trim_top_pct) / 100), index=df.index)
    new = {name: v.where(v <= thr) if trim_top_pct > 0 else v}
    if baseline is not None:
        new[f"{name}_bl"], new[f"{name}_bl_missing"] = df[baseline[0]], df[baseline[1]]
    return new


# --------------------------------------------------------------------------------------------
# The rows and outcomes of a study
# --------------------------------------------------------------------------------------------
def resolve_outcome(name: str, columns) -> str | None:
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
    check_sample(sample)
    if not sample:
        return analysis, []
    keep = pd.Series(True, index=analysis.index)
    notes = []
    if sample.get("rounds") is not None:
        require(analysis, ["round"], "sample.rounds")
        rounds = [int(r) for r in (sample["rounds"] if isinstance(sample["rounds"], (list, tuple))
                                   else [sample["rounds"]])]
        keep &= analysis["round"].isin(rounds)
        notes.append(f"{SAMPLE_NOTE_PREFIX} rounds {rounds} only")
    if sample.get("survivors_only"):
        require(analysis, ["business_closed"], "sample.survivors_only")
        keep &= analysis["business_closed"] == 0
        notes.append(f"{SAMPLE_NOTE_PREFIX} surviving (open) businesses only")
    return analysis.loc[keep], notes
