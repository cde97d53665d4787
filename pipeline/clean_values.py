"""Clean, values: numbers stored as text, planned interviews that did not take place, survey
missing-value and unknown codes, closed businesses and impossible or unusable values (rules 3 to
7 of :mod:`pipeline.clean`)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.clean_log import CleaningError, concat_logs, first_rows, log_changes
from pipeline.codes import codes_in, map_distinct, norm_codes
from pipeline.study import normalise, numeric_columns

# currency signs, ISO codes (USD, KES) and common local abbreviations (KSh, Rs., R)
_CURRENCY = r"(?:(?:[A-Z]{1,3}|KSh|Ksh|Kshs|TSh|USh|Rs|Tk|Br|Dh|Rp|Sh)\.?\s*[$€£¥₹₦₱₩₵₺₴₽¢]?|[$€£¥₹₦₱₩₵₺₴₽¢])"
_NUMBER_TEXT = re.compile(rf"^(?P<neg1>-)?\s*(?:{_CURRENCY}\s*)?(?P<neg2>-)?\s*(?P<num>[0-9][0-9\s.,'\u00a0\u202f]*)"
                          rf"\s*(?:{_CURRENCY})?\s*(?P<neg3>-)?$")


def parse_number(text, decimal: str = ".", thousands: str = ",") -> float | None:
    """A number written as text: thousand separators, spaces, currency signs or codes
    (``$``, ``KSh``, ``R``, ``USD``), ``(500)`` for -500. Returns None if it is not a number."""
    s = str(text).strip()
    negative = False
    if s.startswith("(") and s.endswith(")"):
        s, negative = s[1:-1].strip(), True
    m = _NUMBER_TEXT.match(s)
    if not m:
        return None
    negative ^= bool(m.group("neg1") or m.group("neg2") or m.group("neg3"))
    num = re.sub(r"[\s'\u00a0\u202f]", "", m.group("num"))
    head, _, tail = num.partition(decimal)
    if thousands and thousands in tail:
        return None  # a thousands separator after the decimal one: another locale, not guessed
    if thousands and thousands in num:
        groups = head.split(thousands)
        if not (1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])):
            return None  # "1,5" with thousands="," is ambiguous: not guessed
        num = num.replace(thousands, "")
    if decimal != ".":
        num = num.replace(decimal, ".")
    if not re.fullmatch(r"\d+(\.\d+)?", num):
        return None
    value = float(num)
    return -value if negative else value


def parse_numbers(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Configured numeric columns holding text become numbers; empty text becomes missing;
    text that is not a number becomes missing and is logged (``unparseable_number``)."""
    cfg = normalise(cfg)
    df = df.copy(deep=False)   # a new frame; copy-on-write keeps the caller's columns unchanged
    fmt = cfg["number_format"]
    logs, parsed = [], {}
    dtypes = df.dtypes
    for col in numeric_columns(cfg):
        if col not in dtypes.index or pd.api.types.is_numeric_dtype(dtypes[col]) or pd.api.types.is_bool_dtype(dtypes[col]):
            continue
        raw = df[col].astype("object")
        values = map_distinct(raw, lambda v: parse_number(v, fmt["decimal"], fmt["thousands"]),
                              na_value=np.nan).astype("float64")
        blank = map_distinct(raw, lambda v: str(v).strip() == "", na_value=False).astype(bool)
        bad = raw.notna() & values.isna() & ~blank
        if bad.any():
            logs.append(log_changes(df.assign(**{col: raw}), bad, col, np.nan, "unparseable_number"))
        parsed[col] = int((raw.notna() & values.notna()).sum())
        df[col] = values
    return df, concat_logs(logs), parsed


def flag_not_interviewed(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``interviewed`` = 0 for planned interviews that did not take place; their outcomes blank."""
    cfg = normalise(cfg)
    df = df.copy(deep=False)   # a new frame; copy-on-write keeps the caller's columns unchanged
    spec = cfg["not_interviewed"]
    if not spec:
        df["interviewed"] = np.int8(1)
        return df, concat_logs([])
    if "when_all_missing" in spec:
        mask = df[list(spec["when_all_missing"])].isna().all(axis=1)
    else:
        mask = codes_in(df[spec["column"]], spec["codes"])
    df["interviewed"] = (~mask).astype("int8")
    logs = []
    for out in cfg["outcomes"].values():
        col = out["column"]
        change = mask & df[col].notna()
        if change.any():
            logs.append(log_changes(df, change, col, np.nan, "not_interviewed"))
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64").mask(mask)
    return df, concat_logs(logs)


def replace_missing_codes(df: pd.DataFrame, columns: list[str], codes: dict[int, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Survey codes to missing; the log keeps which code (hence why) each value was.
    One pass over the numeric answer columns as a 2-D block (no loop over rows)."""
    dtypes = df.dtypes                         # one lookup, not a Series per column
    numeric = [c for c in columns
               if pd.api.types.is_numeric_dtype(dtypes[c]) and not pd.api.types.is_bool_dtype(dtypes[c])]
    if not numeric or not codes:
        return df.copy(deep=False), concat_logs([])
    block = df[numeric].to_numpy(dtype="float64", na_value=np.nan)
    code_numbers = np.array(list(codes), dtype="float64")
    # np.isin only where a value lies within the codes' range (few answers do): the same mask
    coded = (block >= code_numbers.min()) & (block <= code_numbers.max())
    coded[coded] = np.isin(block[coded], code_numbers)
    if not coded.any():
        return df.copy(deep=False), concat_logs([])
    col_pos, row_pos = np.nonzero(coded.T)     # column by column, rows in order within each
    old_value = block[row_pos, col_pos]
    # text columns taken from short arrays of distinct values (one string per code, per column)
    code_pos, code_values = pd.factorize(old_value.astype("int64"))
    log = pd.DataFrame({
        "source_file": df["source_file"].astype("str").array.take(row_pos),
        "source_row": df["source_row"].to_numpy()[row_pos],
        "column": pd.array(numeric, dtype="str").take(col_pos),
        "old_value": old_value,
        "old_text": "",
        "new_value": np.nan,
        "rule": pd.array([f"missing_code:{codes[int(c)]}" for c in code_values], dtype="str").take(code_pos),
    })
    if not block.flags.writeable:              # a view of a read-only (e.g. Arrow-backed) block
        block = block.copy()
    block[coded] = np.nan                      # the block holds each column as float64 already
    replaced = {c: block[:, k] for k, c in enumerate(numeric) if coded[:, k].any()}   # arrays: df's row order
    return df.assign(**replaced), concat_logs([log])


def replace_unknown_codes(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Codes outside a column's declared codes become missing, logged (``unknown_code``):
    ``allowed_codes`` columns, and the owner's sex where ``female_owner.male_codes`` is given."""
    cfg = normalise(cfg)
    df = df.copy(deep=False)   # a new frame; copy-on-write keeps the caller's columns unchanged
    checks = dict(cfg["allowed_codes"])
    female = cfg["female_owner"]
    if female.get("column") and female.get("male_codes") is not None:
        checks.setdefault(female["column"], list(female["female_codes"]) + list(female["male_codes"]))
    logs = []
    for col, allowed in checks.items():
        allowed = set(allowed)
        bad = norm_codes(df[col]).notna() & ~codes_in(df[col], allowed)
        if bad.any():
            logs.append(log_changes(df, bad, col, np.nan, f"unknown_code:not in {sorted(allowed, key=str)}"))
            df[col] = df[col].mask(bad)
    return df, concat_logs(logs)


def check_sex_coding(df: pd.DataFrame, cfg: dict) -> None:
    """Every observed code of the owner's sex column must be mapped. With ``male_codes`` given,
    codes outside both lists are unknown codes (missing, logged by :func:`replace_unknown_codes`).
    With ``female_codes`` only, the documented rule is that the column holds at most one other
    code, read as male; two or more other codes are ambiguous (which is male, which is "other"
    or a data error?) and stop the stage naming them and their first rows."""
    cfg = normalise(cfg)
    female = cfg["female_owner"]
    if not female.get("column") or female.get("male_codes") is not None:
        return
    col = female["column"]
    codes = norm_codes(df[col])
    other = codes.notna() & ~codes_in(df[col], female["female_codes"])
    others = sorted(set(codes[other]), key=str)
    if len(others) > 1:
        shown = "; ".join(f"{v!r}: {first_rows(df, other & (codes == v))}" for v in others)
        raise CleaningError(f"{cfg['study']}: female_owner.column {col!r} holds {len(others)} codes that are not in "
                            f"female_codes {female['female_codes']} ({shown}); with female_codes only, one other "
                            f"code is read as male. Give female_owner.male_codes (other codes become missing, logged)")


def apply_closures(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where the survey says the business is closed, its money flows are 0, flagged."""
    cfg = normalise(cfg)
    df = df.copy(deep=False)   # a new frame; copy-on-write keeps the caller's columns unchanged
    spec = cfg.get("business_open")
    if not spec:
        df["business_closed"] = np.int8(0)
        return df, concat_logs([])
    closed = codes_in(df[spec["column"]], spec["closed_codes"])
    if "interviewed" in df.columns:
        closed &= df["interviewed"] == 1
    df["business_closed"] = closed.astype("int8")
    logs = []
    for out in cfg["outcomes"].values():
        if not out.get("flow", True):
            continue
        col = out["column"]
        change = closed & (df[col] != 0)
        if change.any():
            logs.append(log_changes(df, change, col, 0.0, "closed_business_zero"))
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64").mask(closed, 0.0)
    return df, concat_logs(logs)


def unusable_numbers(df: pd.DataFrame, cfg: dict, partition: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numbers no estimate can use become missing (the row stays), logged: infinities
    (``impossible_value:non_finite``) and magnitudes whose square, summed over the table's rows,
    overflows float64 (|x| > sqrt(max float / rows), about 1e152 for 10,000 rows), which made a
    profit of 1e300 give estimates of 1e297 with NaN standard errors. This is arithmetic, not
    plausibility: a plausible range is the study's ``valid_ranges`` (:func:`reject_impossible_values`).
    ``partition``: a column splitting the table into surveys cleaned together (:func:`pipeline.clean.clean`);
    the rows counted are then each survey's own."""
    cfg = normalise(cfg)
    rows = (df[partition].map(df[partition].value_counts()).to_numpy(dtype="float64") if partition
            else np.float64(max(len(df), 1)))
    bound = np.sqrt(np.finfo("float64").max / rows)
    logs, replaced = [], {}
    dtypes = df.dtypes
    for col in numeric_columns(cfg):
        if col not in dtypes.index or not pd.api.types.is_float_dtype(dtypes[col]):
            continue                  # integers are finite and far below the bound
        values = df[col]
        as_double = np.abs(values.to_numpy(dtype="float64", na_value=np.nan))    # float32 columns too
        infinite = np.isinf(as_double)
        huge = (as_double > bound) & ~infinite
        if not (infinite.any() or huge.any()):
            continue                  # the usual case: no Series built
        if infinite.any():
            logs.append(log_changes(df, pd.Series(infinite, index=df.index), col, np.nan, "impossible_value:non_finite"))
        for limit in np.unique(np.broadcast_to(bound, huge.shape)[huge]):   # one bound without a partition
            hit = huge & (bound == limit)
            logs.append(log_changes(df, pd.Series(hit, index=df.index), col, np.nan,
                                    f"impossible_value:magnitude above {limit:.3g} (float64 overflow)"))
        replaced[col] = values.mask(infinite | huge)
    return df.assign(**replaced), concat_logs(logs)


def reject_impossible_values(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Values outside their plausible range become missing (the row stays), logged."""
    cfg = normalise(cfg)
    df = df.copy(deep=False)   # a new frame; copy-on-write keeps the caller's columns unchanged
    logs = []
    checks = [(col, lo, hi) for col, (lo, hi) in cfg.get("valid_ranges", {}).items()]
    for out in cfg["outcomes"].values():
        if not out.get("allow_negative", False):
            checks += [(c, 0, None) for c in (out["column"], out["baseline_column"]) if c]
    for col, lo, hi in checks:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = pd.Series(False, index=df.index)
        if lo is not None:
            bad |= values < lo
        if hi is not None:
            bad |= values > hi
        if bad.any():
            logs.append(log_changes(df, bad, col, np.nan, f"impossible_value:outside[{lo},{hi if hi is not None else 'inf'}]"))
            df[col] = values.mask(bad)
    return df, concat_logs(logs)
