"""Column checks shared by the estimation modules: the owner's-sex and follow-up columns, a
clear error for a missing column, numeric columns as float arrays."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

GENDER = "female_owner"
FOLLOWUP = "followup"


def require(df: pd.DataFrame, columns: Iterable[str], why: str) -> None:
    for c in columns:
        if c not in df.columns:
            raise ValueError(f"required column {c!r} ({why}) is missing from the data")


def followup_mask(df: pd.DataFrame) -> np.ndarray:
    require(df, [FOLLOWUP], "follow-up indicator; followup_only=True")
    s = df[FOLLOWUP]
    if s.isna().any():
        raise ValueError(f"column {FOLLOWUP!r} has missing values")
    return np.array(s.astype(bool).to_numpy(), dtype=bool)  # writable copy (copy-on-write)


def as_float(s: pd.Series, name: str) -> np.ndarray:
    if s.dtype == bool or pd.api.types.is_bool_dtype(s.dtype):
        s = s.astype("float64")
    if not pd.api.types.is_numeric_dtype(s.dtype):
        raise ValueError(f"column {name!r} must be numeric, has dtype {s.dtype}")
    return s.to_numpy(dtype=float, na_value=np.nan)
