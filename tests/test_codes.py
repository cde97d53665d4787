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
