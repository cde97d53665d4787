"""Clean, money: recall periods normalised to one flow period and outliers winsorised or
trimmed (rules 8 and 9 of :mod:`pipeline.clean`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.clean_log import CleaningError, rows_hint
from pipeline.codes import PER_YEAR, map_distinct, norm_code, norm_codes
from pipeline.study import flow_column, normalise

OUTLIER_METHODS = ("winsorise", "trim")
SUMMARY_PERCENTILES = (0.01, 0.5, 0.99)     # of the money flows after cleaning (the clean notebook)


def flow_columns(columns, flow_period: str) -> list[str]:
    """The clean table's money flows per ``flow_period``, plain and winsorised."""
    return [c for c in columns if c.endswith(f"_{flow_period}") or c.endswith(f"_{flow_period}_w")]


def normalise_recall(df: pd.DataFrame, cfg: dict, flow_period: str) -> pd.DataFrame:
    """Money flows to one period. The recall period is a column of codes or a study-wide value.
    A baseline given as a column in the same row (``baseline_column``) becomes ``<column>_pre``."""
    cfg = normalise(cfg)
    if flow_period not in PER_YEAR:
        raise CleaningError(f"clean.flow_period={flow_period!r}: expected one of {sorted(PER_YEAR)}")
    df = df.copy(deep=False)   # a new frame; copy-on-write keeps the caller's columns unchanged
    spec = cfg.get("recall_period") or {}
    if "column" in spec:
        raw = df[spec["column"]]
        codes = norm_codes(raw)
        period = map_distinct(raw, lambda v: None if norm_code(v) is None else spec["codes"].get(norm_code(v)))
        unknown = codes.notna() & period.isna()
        if unknown.any():
            raise CleaningError(f"{cfg['study']}: {spec['column']} has codes {sorted(raw[unknown].unique().tolist(), key=str)} "
                                f"not in recall_period.codes ({rows_hint(df, unknown)})")
    else:
        period = pd.Series(spec.get("value", flow_period), index=df.index)
    bad = sorted(set(period.dropna().unique()) - set(PER_YEAR))   # per distinct value
    if bad:
        raise CleaningError(f"{cfg['study']}: recall periods {bad} unknown; expected {sorted(PER_YEAR)}")
    # missing period -> missing flow; every period is known here (checked above)
    factor = map_distinct(period, PER_YEAR.__getitem__, na_value=np.nan, dtype="float64") / PER_YEAR[flow_period]
    currency = str(cfg.get("currency", "lcu")).lower()
    for name, out in cfg["outcomes"].items():
        new = flow_column(name, out, currency, flow_period)
        for col, target in ((out["column"], new), (out["baseline_column"], f"{new}_pre")):
            if not col:
                continue
            values = pd.to_numeric(df[col], errors="coerce").astype("float64")
            # A zero flow is zero over any period: a closed business (recall period "not
            # applicable") keeps its zero profit instead of becoming missing.
            df[target] = values.where(values == 0, values * factor) if out.get("flow", True) else values
    return df


def winsorise(df: pd.DataFrame, columns: dict[str, bool], lower_pct: float, upper_pct: float,
              by: str | list[str] | None, method: str = "winsorise", unit: str | None = None) -> pd.DataFrame:
    """:func:`treat_outliers` without the counts."""
    return treat_outliers(df, columns, lower_pct, upper_pct, by, method, unit)[0]


def treat_outliers(df: pd.DataFrame, columns: dict[str, bool], lower_pct: float, upper_pct: float,
                   by: str | list[str] | None, method: str = "winsorise", unit: str | None = None
                   ) -> tuple[pd.DataFrame, dict]:
    """Add ``<col>_w``: values beyond per-group percentiles clamped (``winsorise``) or blanked
    (``trim``); cut-offs from a quantile table mapped back. Returns (table, values changed per column).

    ``columns`` maps a column to whether its lower tail is treated too (outcomes that can be
    negative). Missing values stay missing. With ``unit``, cut-offs come from one value per unit
    (for baselines repeated on every row of a unit). ``by``: the column, or columns, whose values
    form the groups (None: one group).
    """
    if method not in OUTLIER_METHODS:
        raise CleaningError(f"clean.outlier_method={method!r}: expected one of {OUTLIER_METHODS}")
    df = df.copy(deep=False)   # a new frame; copy-on-write keeps the caller's columns unchanged
    groups = outlier_groups(df, by)
    upper, lower = _cutoffs(df, columns, groups, lower_pct, upper_pct, unit)
    changed = {}
    for col, both_tails in columns.items():
        values = df[col]
        out_of_range = np.zeros(len(df), dtype=bool)
        for cut, beyond in ((upper, np.greater), (lower if both_tails else None, np.less)):
            if cut is None:
                continue
            bound = groups.map(cut[col])
            hit = (values.notna() & beyond(values, bound)).to_numpy(dtype=bool)
            out_of_range |= hit
            values = values.mask(hit, np.nan if method == "trim" else bound)
        df[f"{col}_w"] = values
        changed[col] = int(out_of_range.sum())
    return df, changed


def outlier_groups(df: pd.DataFrame, by: str | list[str] | None) -> pd.Series:
    """The group of each row: the column ``by``, one number per distinct combination of the columns
    ``by`` (missing where one of them is: such rows get no cut-off, as with one column), or 0."""
    by = [by] if isinstance(by, str) else list(by or [])
    if not by:
        return pd.Series(0, index=df.index)
    if len(by) == 1:
        return df[by[0]]
    numbers = df.groupby(by, sort=True, dropna=True).ngroup()
    return numbers.where(numbers >= 0)


def _cutoffs(df: pd.DataFrame, columns: dict[str, bool], groups: pd.Series, lower_pct: float, upper_pct: float,
             unit: str | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """(upper, lower) cut-offs per group (rows) and column, or None where that tail is not treated:
    one grouped quantile for all the columns (without ``unit``), or per column from one row per unit."""
    lower_cols = [c for c, both_tails in columns.items() if both_tails] if lower_pct > 0 else []

    def quantiles(cols: list[str], pct: float) -> pd.DataFrame | None:
        if not cols:
            return None
        if not unit:
            return df[cols].groupby(groups).quantile(pct / 100.0)
        parts = {}
        for col in cols:
            source = df[[col]].assign(_g=groups, _u=df[unit]).dropna(subset=[col]).drop_duplicates("_u")
            parts[col] = source[col].groupby(source["_g"]).quantile(pct / 100.0)
        return pd.DataFrame(parts)
    return (quantiles(list(columns), upper_pct) if upper_pct < 100 else None), quantiles(lower_cols, lower_pct)
