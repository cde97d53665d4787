"""Survey codes (pipeline/codes.py): one comparable form per code, computed once per distinct value."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import codes
from pipeline.codes import codes_in, norm_code, norm_codes


@pytest.mark.parametrize("value,expected", [
    (2, 2), (2.0, 2), ("2", 2), (" 2 ", 2), (np.int8(2), 2), (2.5, 2.5), ("Control", "control"),
    (None, None), (np.nan, None), ("", None), (pd.NA, None), (True, 1),
])
def test_norm_code(value, expected):
    assert norm_code(value) == expected


# survey answers as they arrive: integers, floats (integral or not), text with spaces and case,
# and every kind of missing
_ANSWERS = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=True, allow_infinity=False, width=32),
                     st.sampled_from([" 2 ", "2", "2.0", "Control", "control ", "", "n/a", "-99"]),
                     st.sampled_from([None, np.nan, pd.NA]))


@settings(max_examples=200, deadline=None)
@given(st.lists(_ANSWERS, max_size=40))
def test_norm_codes_equals_norm_code_on_every_element(values):
    series = pd.Series(values, dtype="object")
    expected = [norm_code(v) for v in values]
    assert norm_codes(series).tolist() == expected
    codes = {2, "control", -99}
    assert codes_in(series, codes).tolist() == [c in codes for c in expected]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-5, 5), max_size=60))
def test_norm_codes_of_a_numeric_column_keeps_the_index(values):
    series = pd.Series(values, index=np.arange(len(values))[::-1] * 3, dtype="float64")
    out = norm_codes(series)
    assert out.index.equals(series.index)
    assert out.tolist() == [norm_code(v) for v in series]


def test_map_distinct_calls_python_once_per_distinct_value(monkeypatch):
    calls = []
    series = pd.Series(np.tile([1.0, 2.0, np.nan, 3.0], 50_000))     # 200,000 rows, 3 codes
    out = codes.map_distinct(series, lambda v: calls.append(v) or v * 10, na_value=-1)
    assert len(calls) == 3
    assert out.iloc[:4].tolist() == [10.0, 20.0, -1, 30.0] and len(out) == len(series)


def _map_row_by_row(series: pd.Series, fn, na_value=None, dtype=None) -> pd.Series:
    """map_distinct's definition, one call per row: the reference its per-distinct-value form must equal."""
    values = np.array([na_value if pd.isna(v) else fn(v) for v in series.tolist()] + [None], dtype=object)[:-1]
    out = pd.Series(values, index=series.index, dtype=dtype or "object")
    return out if dtype else out.infer_objects()


@pytest.mark.parametrize("fn, na_value, dtype", [
    (norm_code, None, "object"), (lambda v: norm_code(v) in {2, "control"}, False, None),
    (lambda v: str(norm_code(v)), None, None), (lambda v: f"code {norm_code(v)}", "missing", "str"),
    (lambda v: 1.5, np.nan, "float64"), (lambda v: 3, np.nan, None), (lambda v: norm_code(v) == 2, None, None),
])
@settings(max_examples=60, deadline=None)
@given(values=st.lists(_ANSWERS, max_size=40))
def test_map_distinct_equals_the_function_applied_to_every_row(values, fn, na_value, dtype):
    """Same values, dtype, index and element types as the function called on every row (the dtype
    inferred from the results present: na_value counts only where a value is missing), for functions
    that give equal values (2 and 2.0: one distinct value) equal results."""
    series = pd.Series(values, index=np.arange(len(values))[::-1], dtype="object")
    got, expected = codes.map_distinct(series, fn, na_value, dtype), _map_row_by_row(series, fn, na_value, dtype)
    pd.testing.assert_series_equal(got, expected, check_exact=True)
    assert [type(v) for v in got.tolist()] == [type(v) for v in expected.tolist()]
