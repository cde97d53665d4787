"""Survey codes: one comparable form for a code (``2``, ``2.0`` and ``"2"`` are the same; text
ignores case and surrounding spaces), computed once per distinct value of a column, never per row.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import numpy as np
import pandas as pd

# Periods per year: a value over period A becomes value * PER_YEAR[A] / PER_YEAR[B] over B.
PER_YEAR = {"day": 365.0, "week": 52.0, "two_weeks": 26.0, "month": 12.0, "quarter": 4.0, "year": 1.0}


def norm_code(value: Any) -> Any:
    """One comparable form for a survey code: integers as ``int`` (``2``, ``2.0``, ``"2"`` -> 2),
    other numbers as ``float``, text stripped and case-folded; missing -> ``None``."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return int(value) if float(value).is_integer() else float(value)
    text = str(value).strip()
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text.casefold()
    if math.isnan(number):
        return None
    return int(number) if number.is_integer() else number


def map_distinct(series: pd.Series, fn, na_value: Any = None, dtype: Any = None) -> pd.Series:
    """``fn`` applied once per distinct non-missing value of ``series`` and broadcast back to
    every row (``na_value`` where missing): Python runs per distinct value, never per row, so a
    column of 10 million answers with 5 codes costs 5 calls and one C-level take. The dtype is
    inferred from the results (as ``Series.map`` does) unless ``dtype`` is given."""
    positions, uniques = pd.factorize(series, use_na_sentinel=True)
    results = np.empty(len(uniques) + 1, dtype=object)
    for k, value in enumerate(uniques):
        results[k] = fn(value)
    results[-1] = na_value            # position -1 = missing
    # Typed (or inferred) on the distinct results, then taken: one small conversion, not one per row.
    # The results present decide the inferred dtype, so na_value counts only where a value is missing.
    present = results if (positions < 0).any() else results[:-1]
    distinct = pd.Series(present, dtype=dtype or "object")
    if not dtype:
        distinct = distinct.infer_objects()
    return pd.Series(distinct.array.take(positions), index=series.index, dtype=distinct.dtype)


def norm_codes(series: pd.Series) -> pd.Series:
    """:func:`norm_code` over a column (computed once per distinct value)."""
    return map_distinct(series, norm_code, dtype="object")


def codes_in(series: pd.Series, codes: Iterable) -> pd.Series:
    """Boolean: the row's normalised code is one of ``codes`` (already normalised); missing -> False."""
    codes = set(codes)
    return map_distinct(series, lambda v: norm_code(v) in codes, na_value=False).astype(bool)


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", str(text).casefold()).strip("_")
    return slug or "arm"
