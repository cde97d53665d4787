"""Clean: the mess of a field survey handled by explicit, param-driven rules.

Every raw row ends either in the clean table or in the rejected-rows table with the rule
that removed it, and every value that a rule changed is logged (row, column, old value,
new value, reason). The rules, in order (after a check that no two raw unit or cluster ids are spelt
differently but read as one id, :func:`check_id_collisions`):

1. invalid rows: no unit id, a round or treatment code the study does not define (or, with
   dummy columns, no arm or more than one);
2. duplicate interviews: identical copies keep the first submission; conflicting copies
   of the same unit x round keep one by ``duplicate_rule`` (``latest`` submission);
3. numbers stored as text (``"1,200"``, ``"KSh 3 000"``, ``"(50)"``) become numbers in the
   configured numeric columns; text that is not a number becomes missing, logged;
4. planned interviews that did not take place (``not_interviewed``): kept, flagged
   ``interviewed = 0``, outcomes blank (attrition is measured, not hidden);
5. survey missing-value codes (-99 refused, -98 don't know, -88 not applicable) to missing,
   with the reason logged; codes outside a column's declared codes (``allowed_codes``, the
   owner's sex when ``male_codes`` is given) to missing, logged; with ``female_codes`` only,
   the sex column may hold one other code (male), more stop the stage;
6. closed businesses: money flows set to 0 (closure is an outcome, not non-response), flagged;
7. impossible values (outside the study's ``valid_ranges``, negative revenue) to missing, and
   numbers no estimate can use (infinite, or so large that float64 sums of squares overflow);
8. recall periods normalised: every money flow to one period (``flow_period``);
9. outliers per round at ``winsor_lower_pct`` / ``winsor_upper_pct`` (the lower tail only for
   outcomes that can be negative): ``outlier_method`` ``winsorise`` clamps, ``trim`` blanks;
   the untreated column is kept.

The clean table is then validated (pandera: types, ranges, one row per unit x round); a
violation stops the stage. A study's configuration may override these params
(``clean_params``), e.g. where the authors already winsorised their data.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.codes import PER_YEAR, codes_in, map_distinct, norm_code, norm_codes  # noqa: F401
from pipeline.io import write_outputs
from pipeline.privacy import EMAIL_RE, PHONE_RE, assert_no_identifiers  # noqa: F401
from pipeline.schemas import ValidationError, validate_frame  # noqa: F401
from pipeline.study import (FACTOR_COLUMN, PIPELINE_COLUMNS, arm_labels, assign_arms,  # noqa: F401
                            effective_clean_params, flow_column, load_study, normalise, numeric_columns)

REJECTED_COLUMNS = ["source_file", "source_row", "rule", "reason"]
LOG_COLUMNS = ["source_file", "source_row", "column", "old_value", "old_text", "new_value", "rule"]
OUTLIER_METHODS = ("winsorise", "trim")


class CleaningError(ValueError):
    """A cleaning rule met data it cannot handle; the message names study, column and rows."""


def _rows_hint(df: pd.DataFrame, mask: pd.Series, limit: int = 5) -> str:
    rows = df.loc[mask, "source_row"].head(limit).tolist()
    return f"source rows {rows}{' ...' if mask.sum() > limit else ''}"


def _first_rows(df: pd.DataFrame, mask: pd.Series, limit: int = 5) -> str:
    """'survey.csv rows [3, 7]; other.csv rows [2]': the first source rows of ``mask`` per file."""
    hits = df.loc[mask, ["source_file", "source_row"]]
    return "; ".join(f"{f} rows {rows['source_row'].head(limit).tolist()}{' ...' if len(rows) > limit else ''}"
                     for f, rows in hits.groupby("source_file", sort=True))


def _rejected(df: pd.DataFrame, mask: pd.Series, rule: str, reason: pd.Series | str) -> pd.DataFrame:
    out = df.loc[mask].copy()
    out["rule"] = rule
    out["reason"] = reason if isinstance(reason, str) else reason.loc[mask].to_numpy()
    return out


def _redact(text: str, limit: int = 60) -> str:
    """Logged raw text without anything that looks like a phone number or an e-mail address."""
    text = EMAIL_RE.sub("[redacted]", str(text))
    text = PHONE_RE.sub(lambda m: "[redacted]" if sum(c.isdigit() for c in m.group(0)) >= 7 else m.group(0), text)
    return text if len(text) <= limit else text[:limit] + "..."


def _log(df: pd.DataFrame, mask: pd.Series, column: str, new_value, rule: str) -> pd.DataFrame:
    pos = np.flatnonzero(mask.to_numpy(dtype=bool))
    old = df[column].iloc[pos]
    numeric = pd.api.types.is_numeric_dtype(old) and not pd.api.types.is_bool_dtype(old)
    return pd.DataFrame({
        "source_file": df["source_file"].to_numpy()[pos],
        "source_row": df["source_row"].to_numpy()[pos],
        "column": column,
        "old_value": old.astype("float64").to_numpy() if numeric else np.nan,
        "old_text": "" if numeric else map_distinct(old, _redact, na_value="").to_numpy(dtype=object),
        "new_value": new_value.to_numpy()[pos].astype("float64") if isinstance(new_value, pd.Series) else new_value,
        "rule": rule,
    })


def _concat_logs(logs: list[pd.DataFrame]) -> pd.DataFrame:
    logs = [log for log in logs if len(log)]
    if not logs:
        return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("old_value", "new_value") else
                                          "int64" if c == "source_row" else "object") for c in LOG_COLUMNS})
    out = pd.concat(logs, ignore_index=True)
    out["old_text"] = out["old_text"].astype("object")
    return out[LOG_COLUMNS]


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------
def check_id_collisions(df: pd.DataFrame, cfg: dict) -> None:
    """Unit and cluster ids are compared by one rule, :func:`pipeline.study.norm_code`: text is
    stripped and case-folded and numeric text is its number ("01", "1", "1.0" and 1 are one id;
    "A7" and "a7 " are one id). Two different raw ids with the same normalised id are a collision
    (was: "1" and "01" silently merged into one firm): the stage stops naming them and their rows."""
    cfg = normalise(cfg)
    for col in dict.fromkeys(c for c in (cfg["unit_id"], cfg.get("cluster")) if c and c in df.columns):
        values = df[col]
        if pd.api.types.is_numeric_dtype(values):
            continue                          # numbers: equal ids are equal values already
        raw = pd.DataFrame({"raw": values.astype("object"), "norm": norm_codes(values)}).dropna()
        spellings = raw.drop_duplicates().groupby("norm", sort=False)["raw"].agg(list)
        collided = spellings[spellings.map(len) > 1]
        if len(collided):
            shown = "; ".join(
                " and ".join(f"{v!r} ({_first_rows(df, values == v)})" for v in ids) for ids in collided.head(5))
            raise CleaningError(f"{cfg['study']}: ids of {col!r} that differ only in spelling "
                                f"(leading zeros, spaces, case, '1.0'), which the id rule reads as one id: {shown}. "
                                f"Correct the raw ids")


def reject_invalid_rows(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows that cannot be analysed at all: no unit id, undefined round or treatment arm."""
    cfg = normalise(cfg)
    reasons = pd.Series("", index=df.index, dtype="object")
    unit = cfg["unit_id"]
    reasons[df[unit].isna()] = f"{unit} is missing"
    _, arm_reasons = assign_arms(df, cfg)
    take = (arm_reasons != "") & (reasons == "")
    reasons[take] = arm_reasons[take]
    round_col = cfg.get("round")
    if round_col:
        no_round = df[round_col].isna() & (reasons == "")
        reasons[no_round] = f"{round_col} is missing"
    if round_col and cfg.get("rounds"):
        known = codes_in(df[round_col], cfg["rounds"])
        bad_round = ~known & df[round_col].notna() & (reasons == "")
        reasons[bad_round] = map_distinct(df.loc[bad_round, round_col], lambda v: f"{round_col}={v} is not a defined round")
    mask = reasons != ""
    return df.loc[~mask], _rejected(df, mask, "invalid_row", reasons)


def content_hash(df: pd.DataFrame, exclude: list[str]) -> pd.Series:
    """A hash of each row's answers (METHODS: row hashing is 4x faster than whole-row duplicated())."""
    cols = [c for c in df.columns if c not in exclude]
    return pd.util.hash_pandas_object(df[cols], index=False)


def resolve_duplicates(df: pd.DataFrame, cfg: dict, rule: str = "latest") -> tuple[pd.DataFrame, pd.DataFrame]:
    """One record per unit x round.

    Identical submissions (same answers, different submission id/time): keep the first.
    Conflicting submissions: ``rule`` = ``latest`` keeps the last submitted (by the
    configured submission time, else by file order), ``drop_all`` rejects every copy,
    ``error`` stops with the offending ids.
    """
    cfg = normalise(cfg)
    unit, round_col = cfg["unit_id"], cfg.get("round")
    keys = [unit] + ([round_col] if round_col else [])
    sub = cfg.get("submission") or {}
    order_cols = [c for c in (sub.get("time"), sub.get("id")) if c] + ["source_file", "source_row"]
    meta = ["source_file", "source_row"] + [c for c in (sub.get("time"), sub.get("id")) if c]
    df = df.sort_values(order_cols, kind="stable")
    hashes = content_hash(df, meta)
    identical = pd.DataFrame({k: df[k] for k in keys}).assign(_h=hashes.to_numpy()).duplicated(keep="first")
    identical.index = df.index
    rejected = [_rejected(df, identical, "duplicate_identical",
                          "identical answers to an earlier submission of the same interview")]
    df = df.loc[~identical]
    dup_any = df.duplicated(keys, keep=False)
    if dup_any.any():
        if rule == "error":
            ids = df.loc[dup_any, keys].drop_duplicates().head(5).to_dict("records")
            raise CleaningError(f"{cfg['study']}: {int(dup_any.sum())} conflicting submissions of the same "
                                f"{' x '.join(keys)} ({_rows_hint(df, dup_any)}; ids {ids}); set clean.duplicate_rule")
        if rule == "latest":
            superseded = df.duplicated(keys, keep="last")
            rejected.append(_rejected(df, superseded, "duplicate_conflicting",
                                      "answers differ from a later submission of the same interview; the latest is kept"))
            df = df.loc[~superseded]
        elif rule == "drop_all":
            rejected.append(_rejected(df, dup_any, "duplicate_conflicting",
                                      "conflicting submissions of the same interview; all copies dropped"))
            df = df.loc[~dup_any]
        else:
            raise CleaningError(f"clean.duplicate_rule={rule!r}: expected latest, drop_all or error")
    return df.sort_values(["source_file", "source_row"], kind="stable"), pd.concat(rejected)


# ------------------------------------------------------------------------------------------------
# Values
# ------------------------------------------------------------------------------------------------
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
    df = df.copy()
    fmt = cfg["number_format"]
    logs, parsed = [], {}
    for col in numeric_columns(cfg):
        if col not in df.columns or pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            continue
        raw = df[col].astype("object")
        values = map_distinct(raw, lambda v: parse_number(v, fmt["decimal"], fmt["thousands"]),
                              na_value=np.nan).astype("float64")
        blank = map_distinct(raw, lambda v: str(v).strip() == "", na_value=False).astype(bool)
        bad = raw.notna() & values.isna() & ~blank
        if bad.any():
            logs.append(_log(df.assign(**{col: raw}), bad, col, np.nan, "unparseable_number"))
        parsed[col] = int((raw.notna() & values.notna()).sum())
        df[col] = values
    return df, _concat_logs(logs), parsed


def flag_not_interviewed(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``interviewed`` = 0 for planned interviews that did not take place; their outcomes blank."""
    cfg = normalise(cfg)
    df = df.copy()
    spec = cfg["not_interviewed"]
    if not spec:
        df["interviewed"] = np.int8(1)
        return df, _concat_logs([])
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
            logs.append(_log(df, change, col, np.nan, "not_interviewed"))
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64").mask(mask)
    return df, _concat_logs(logs)


def replace_missing_codes(df: pd.DataFrame, columns: list[str], codes: dict[int, str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Survey codes to missing; the log keeps which code (hence why) each value was.
    One pass over the numeric answer columns as a 2-D block (no loop over rows)."""
    numeric = [c for c in columns
               if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    if not numeric or not codes:
        return df.copy(), _concat_logs([])
    block = df[numeric].to_numpy(dtype="float64", na_value=np.nan)
    coded = np.isin(block, np.array(list(codes), dtype="float64"))
    if not coded.any():
        return df.copy(), _concat_logs([])
    col_pos, row_pos = np.nonzero(coded.T)     # column by column, rows in order within each
    old_value = block[row_pos, col_pos]
    log = pd.DataFrame({
        "source_file": df["source_file"].to_numpy()[row_pos],
        "source_row": df["source_row"].to_numpy()[row_pos],
        "column": np.asarray(numeric, dtype=object)[col_pos],
        "old_value": old_value,
        "old_text": "",
        "new_value": np.nan,
        "rule": "missing_code:" + pd.Series(old_value.astype("int64")).map(codes).to_numpy(dtype=object),
    })
    replaced = {c: df[c].astype("float64").mask(coded[:, k]) for k, c in enumerate(numeric) if coded[:, k].any()}
    return df.assign(**replaced), _concat_logs([log])


def replace_unknown_codes(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Codes outside a column's declared codes become missing, logged (``unknown_code``):
    ``allowed_codes`` columns, and the owner's sex where ``female_owner.male_codes`` is given."""
    cfg = normalise(cfg)
    df = df.copy()
    checks = dict(cfg["allowed_codes"])
    female = cfg["female_owner"]
    if female.get("column") and female.get("male_codes") is not None:
        checks.setdefault(female["column"], list(female["female_codes"]) + list(female["male_codes"]))
    logs = []
    for col, allowed in checks.items():
        allowed = set(allowed)
        bad = norm_codes(df[col]).notna() & ~codes_in(df[col], allowed)
        if bad.any():
            logs.append(_log(df, bad, col, np.nan, f"unknown_code:not in {sorted(allowed, key=str)}"))
            df[col] = df[col].mask(bad)
    return df, _concat_logs(logs)


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
        shown = "; ".join(f"{v!r}: {_first_rows(df, other & (codes == v))}" for v in others)
        raise CleaningError(f"{cfg['study']}: female_owner.column {col!r} holds {len(others)} codes that are not in "
                            f"female_codes {female['female_codes']} ({shown}); with female_codes only, one other "
                            f"code is read as male. Give female_owner.male_codes (other codes become missing, logged)")


def apply_closures(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Where the survey says the business is closed, its money flows are 0, flagged."""
    cfg = normalise(cfg)
    df = df.copy()
    spec = cfg.get("business_open")
    if not spec:
        df["business_closed"] = np.int8(0)
        return df, _concat_logs([])
    closed = codes_in(df[spec["column"]], spec["closed_codes"])
    if "interviewed" in df.columns:
        closed &= df["interviewed"] == 1
    df["business_closed"] = closed.astype("int8")
    logs = []
    for name, out in cfg["outcomes"].items():
        if not out.get("flow", True):
            continue
        col = out["column"]
        change = closed & (df[col] != 0)
        if change.any():
            logs.append(_log(df, change, col, 0.0, "closed_business_zero"))
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64").mask(closed, 0.0)
    return df, _concat_logs(logs)


def unusable_numbers(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Numbers no estimate can use become missing (the row stays), logged: infinities
    (``impossible_value:non_finite``) and magnitudes whose square, summed over the table's rows,
    overflows float64 (|x| > sqrt(max float / rows), about 1e152 for 10,000 rows), which made a
    profit of 1e300 give estimates of 1e297 with NaN standard errors. This is arithmetic, not
    plausibility: a plausible range is the study's ``valid_ranges`` (:func:`reject_impossible_values`)."""
    cfg = normalise(cfg)
    bound = float(np.sqrt(np.finfo("float64").max / max(len(df), 1)))
    logs, replaced = [], {}
    for col in numeric_columns(cfg):
        if col not in df.columns or not pd.api.types.is_float_dtype(df[col]):
            continue                  # integers are finite and far below the bound
        values = df[col]
        as_double = np.abs(values.to_numpy(dtype="float64", na_value=np.nan))    # float32 columns too
        infinite = pd.Series(np.isinf(as_double), index=df.index)
        huge = pd.Series(as_double > bound, index=df.index) & ~infinite
        if infinite.any():
            logs.append(_log(df, infinite, col, np.nan, "impossible_value:non_finite"))
        if huge.any():
            logs.append(_log(df, huge, col, np.nan, f"impossible_value:magnitude above {bound:.3g} (float64 overflow)"))
        if infinite.any() or huge.any():
            replaced[col] = values.mask(infinite | huge)
    return df.assign(**replaced), _concat_logs(logs)


def reject_impossible_values(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Values outside their plausible range become missing (the row stays), logged."""
    cfg = normalise(cfg)
    df = df.copy()
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
            logs.append(_log(df, bad, col, np.nan, f"impossible_value:outside[{lo},{hi if hi is not None else 'inf'}]"))
            df[col] = values.mask(bad)
    return df, _concat_logs(logs)


def normalise_recall(df: pd.DataFrame, cfg: dict, flow_period: str) -> pd.DataFrame:
    """Money flows to one period. The recall period is a column of codes or a study-wide value.
    A baseline given as a column in the same row (``baseline_column``) becomes ``<column>_pre``."""
    cfg = normalise(cfg)
    if flow_period not in PER_YEAR:
        raise CleaningError(f"clean.flow_period={flow_period!r}: expected one of {sorted(PER_YEAR)}")
    df = df.copy()
    spec = cfg.get("recall_period") or {}
    if "column" in spec:
        raw = df[spec["column"]]
        codes = norm_codes(raw)
        period = map_distinct(raw, lambda v: None if norm_code(v) is None else spec["codes"].get(norm_code(v)))
        unknown = codes.notna() & period.isna()
        if unknown.any():
            raise CleaningError(f"{cfg['study']}: {spec['column']} has codes {sorted(raw[unknown].unique().tolist(), key=str)} "
                                f"not in recall_period.codes ({_rows_hint(df, unknown)})")
    else:
        period = pd.Series(spec.get("value", flow_period), index=df.index)
    bad = sorted(set(period.dropna()) - set(PER_YEAR))
    if bad:
        raise CleaningError(f"{cfg['study']}: recall periods {bad} unknown; expected {sorted(PER_YEAR)}")
    factor = period.map(PER_YEAR).astype("float64") / PER_YEAR[flow_period]  # missing period -> missing flow
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
              by: str | None, method: str = "winsorise", unit: str | None = None) -> pd.DataFrame:
    """:func:`treat_outliers` without the counts."""
    return treat_outliers(df, columns, lower_pct, upper_pct, by, method, unit)[0]


def treat_outliers(df: pd.DataFrame, columns: dict[str, bool], lower_pct: float, upper_pct: float,
                   by: str | None, method: str = "winsorise", unit: str | None = None) -> tuple[pd.DataFrame, dict]:
    """Add ``<col>_w``: values beyond per-group percentiles clamped (``winsorise``) or blanked
    (``trim``); cut-offs from a quantile table mapped back. Returns (table, values changed per column).

    ``columns`` maps a column to whether its lower tail is treated too (outcomes that can be
    negative). Missing values stay missing. With ``unit``, cut-offs come from one value per unit
    (for baselines repeated on every row of a unit).
    """
    if method not in OUTLIER_METHODS:
        raise CleaningError(f"clean.outlier_method={method!r}: expected one of {OUTLIER_METHODS}")
    df = df.copy()
    groups = df[by] if by else pd.Series(0, index=df.index)
    changed = {}
    for col, both_tails in columns.items():
        source = df[[col]].assign(_g=groups)
        if unit:
            source = source.assign(_u=df[unit]).dropna(subset=[col]).drop_duplicates("_u")
        grouped = source[col].groupby(source["_g"])
        upper = grouped.quantile(upper_pct / 100.0) if upper_pct < 100 else None
        lower = grouped.quantile(lower_pct / 100.0) if both_tails and lower_pct > 0 else None
        values = df[col]
        out_of_range = pd.Series(False, index=df.index)
        if upper is not None:
            cap = groups.map(upper)
            above = values.notna() & (values > cap)
            out_of_range |= above
            values = values.mask(above, np.nan if method == "trim" else cap)
        if lower is not None:
            floor = groups.map(lower)
            below = values.notna() & (values < floor)
            out_of_range |= below
            values = values.mask(below, np.nan if method == "trim" else floor)
        df[f"{col}_w"] = values
        changed[col] = int(out_of_range.sum())
    return df, changed


def flow_table(raw: pd.DataFrame, steps: list[tuple[str, pd.DataFrame]], cfg: dict) -> pd.DataFrame:
    """Rows remaining after each step, by treatment arm (the CONSORT-style flow)."""
    cfg = normalise(cfg)
    labels = arm_labels(cfg)

    def counts(frame: pd.DataFrame) -> dict:
        keys, _ = assign_arms(frame, cfg)
        arm = map_distinct(keys, lambda k: labels.get(k, "undefined arm"), na_value="undefined arm")
        out = arm.value_counts().to_dict()
        out["all"] = len(frame)
        return out

    rows = [{"step": "raw rows", **counts(raw)}] + [{"step": name, **counts(frame)} for name, frame in steps]
    table = pd.DataFrame(rows).fillna(0)
    arm_order = list(dict.fromkeys(labels.values()))
    cols = ["step", "all"] + [c for c in arm_order if c in table.columns] + \
        [c for c in table.columns if c not in arm_order and c not in ("step", "all")]
    return table[cols].astype({c: "int64" for c in cols if c != "step"})


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------
def clean_schema(cfg: dict, flow_period: str):
    """The clean table's contract (pandera): ids present, one row per unit x round, defined rounds
    and arms, money columns float and non-negative where they must be, ranges, 0/1 flags."""
    import pandera.pandas as pa

    cfg = normalise(cfg)
    unit, round_col = cfg["unit_id"], cfg["round"]
    currency = str(cfg.get("currency", "lcu")).lower()
    columns = {unit: pa.Column(nullable=False, required=True)}
    if round_col:
        rounds = cfg["rounds"]
        checks = [pa.Check(lambda s: codes_in(s, rounds),
                           name=f"round in {rounds}")] if rounds else []
        columns[round_col] = pa.Column(nullable=False, checks=checks)
    for name, out in cfg["outcomes"].items():
        base = flow_column(name, out, currency, flow_period)
        names = [base, f"{base}_w"] + ([f"{base}_pre", f"{base}_pre_w"] if out["baseline_column"] else [])
        checks = [] if out.get("allow_negative") else [pa.Check.ge(0)]
        for col in names:
            columns[col] = pa.Column("float64", nullable=True, checks=checks)
    for col, (lo, hi) in cfg["valid_ranges"].items():
        checks = ([pa.Check.ge(lo)] if lo is not None else []) + ([pa.Check.le(hi)] if hi is not None else [])
        columns[col] = pa.Column(nullable=True, checks=checks)
    for flag in ("business_closed", "interviewed"):
        columns[flag] = pa.Column(checks=pa.Check.isin([0, 1]), nullable=False)
    if cfg["weight"]:
        columns[cfg["weight"]] = pa.Column(nullable=True, checks=pa.Check.gt(0))
    columns[FACTOR_COLUMN] = pa.Column(checks=pa.Check.gt(0), nullable=False, required=False)
    keys = [unit] + ([round_col] if round_col else [])
    return pa.DataFrameSchema(columns, unique=keys, strict=False, name=f"{cfg['study']} clean")


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------
def clean(interim: pd.DataFrame, cfg: dict, params: dict) -> dict[str, pd.DataFrame]:
    """Apply every rule; return clean table, rejected rows, value log and flow table."""
    cfg = normalise(cfg)
    params = effective_clean_params(cfg, params)
    id_like = {cfg["unit_id"], cfg.get("round"), cfg["treatment"]["column"], cfg.get("cluster"),
               *(cfg["treatment"]["dummies"] or []), *cfg.get("strata", []),
               *((cfg.get("submission") or {}).values())}
    check_id_collisions(interim, cfg)
    df, rejected_invalid = reject_invalid_rows(interim, cfg)
    after_invalid = df
    df, rejected_dups = resolve_duplicates(df, cfg, params.get("duplicate_rule", "latest"))
    after_dups = df
    df, log_text, parsed = parse_numbers(df, cfg)
    df, log_not_interviewed = flag_not_interviewed(df, cfg)
    answer_cols = [c for c in df.columns if c not in id_like and c not in PIPELINE_COLUMNS]
    df, log_missing = replace_missing_codes(df, answer_cols, cfg["missing_codes"])
    df, log_unknown = replace_unknown_codes(df, cfg)
    check_sex_coding(df, cfg)
    df, log_closed = apply_closures(df, cfg)
    df, log_unusable = unusable_numbers(df, cfg)
    df, log_impossible = reject_impossible_values(df, cfg)
    period = params.get("flow_period", "month")
    df = normalise_recall(df, cfg, period)
    currency = str(cfg.get("currency", "lcu")).lower()
    targets, baselines = {}, {}
    for name, out in cfg["outcomes"].items():
        new = flow_column(name, out, currency, period)
        targets[new] = bool(out.get("allow_negative", False))
        if out["baseline_column"]:
            baselines[f"{new}_pre"] = bool(out.get("allow_negative", False))
    lower, upper = float(params.get("winsor_lower_pct", 1)), float(params.get("winsor_upper_pct", 99))
    method = params.get("outlier_method", "winsorise")
    df, changed = treat_outliers(df, targets, lower, upper,
                            by=cfg.get("round") if params.get("winsor_by_round", True) else None, method=method)
    if baselines:
        df, changed_bl = treat_outliers(df, baselines, lower, upper, by=None, method=method, unit=cfg["unit_id"])
        changed.update(changed_bl)
    rejected = pd.concat([rejected_invalid, rejected_dups], ignore_index=True)
    rejected = rejected.sort_values(["source_file", "source_row"], kind="stable").reset_index(drop=True)
    log = _concat_logs([log_text, log_not_interviewed, log_missing, log_unknown, log_closed, log_unusable,
                        log_impossible])
    log = log.sort_values(["source_file", "source_row", "column", "rule"], kind="stable").reset_index(drop=True)
    steps = [("after invalid rows", after_invalid), ("after duplicates", after_dups), ("clean", df)]
    if cfg["not_interviewed"]:
        steps.append(("clean and interviewed", df[df["interviewed"] == 1]))
    flow = flow_table(interim, steps, cfg)
    if len(df) + len(rejected) != len(interim):
        raise CleaningError(f"{cfg['study']}: row accounting broken: {len(df)} clean + {len(rejected)} rejected "
                            f"!= {len(interim)} raw")
    df = df.reset_index(drop=True)
    validate_frame(df, clean_schema(cfg, period), cfg["study"], "clean",
                   ["source_file", "source_row", cfg["unit_id"]] + ([cfg["round"]] if cfg["round"] else []))
    extra = {"outliers_changed": changed, "method": method, "text_parsed": parsed, "params": params}
    return {"clean": df, "rejected": rejected, "log": log, "flow": flow, "extra": extra}


def run(study: str, params: dict) -> dict:
    """The clean stage: interim table -> clean table, rejected rows, value log, flow table (all
    or nothing). ``study`` is a name or a path to a YAML file."""
    cfg = load_study(study)
    out = paths.interim_dir(cfg["study"])
    interim = pd.read_parquet(out / "ingested.parquet")
    result = clean(interim, cfg, params)
    extra = result.pop("extra")
    summary = {
        "study": cfg["study"],
        "raw_rows": len(interim),
        "clean_rows": len(result["clean"]),
        "rejected_rows_by_rule": result["rejected"]["rule"].value_counts().sort_index().to_dict(),
        "values_changed_by_rule": result["log"]["rule"].value_counts().sort_index().to_dict(),
    }
    if cfg["not_interviewed"]:
        summary["not_interviewed_rows"] = int((result["clean"]["interviewed"] == 0).sum())
    if cfg["clean_params"]:
        summary["study_clean_params"] = dict(cfg["clean_params"])
    summary["outliers"] = {"method": extra["method"], "values_changed": extra["outliers_changed"]}
    for name in ("clean", "rejected", "log"):
        assert_no_identifiers(result[name], cfg=cfg, source=f"{cfg['study']} {name} table")
    write_outputs(out, {
        "clean.parquet": result["clean"],
        "rejected_rows.parquet": result["rejected"],
        "value_log.parquet": result["log"],
        "flow.csv": result["flow"],
        "clean_summary.json": summary,
    })
    return {"config": cfg, **result, "summary": summary}


def flow_summary(clean: pd.DataFrame, flow_period: str) -> pd.DataFrame:
    """Distribution of the money flows after cleaning (plain and winsorised); a study whose outcomes
    are not money flows (e.g. already logs) gets a one-line note instead."""
    flows = [c for c in clean.columns if c.endswith(f"_{flow_period}") or c.endswith(f"_{flow_period}_w")]
    if not flows:
        return pd.DataFrame({"note": [f"no money-flow outcome per {flow_period} in this study"]})
    return clean[flows].describe(percentiles=[0.01, 0.5, 0.99]).T.round(1)
