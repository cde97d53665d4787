"""The clean stage's record of what its rules did: the rejected-rows table, the value log
(row, column, old value, new value, rule) and the error a rule raises on data it cannot handle."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.codes import map_distinct
from pipeline.identifier_patterns import EMAIL_RE, PHONE_RE

REJECTED_COLUMNS = ["source_file", "source_row", "rule", "reason"]
LOG_COLUMNS = ["source_file", "source_row", "column", "old_value", "old_text", "new_value", "rule"]


class CleaningError(ValueError):
    """A cleaning rule met data it cannot handle; the message names study, column and rows."""


def rows_hint(df: pd.DataFrame, mask: pd.Series, limit: int = 5) -> str:
    rows = df.loc[mask, "source_row"].head(limit).tolist()
    return f"source rows {rows}{' ...' if mask.sum() > limit else ''}"


def first_rows(df: pd.DataFrame, mask: pd.Series, limit: int = 5) -> str:
    """'survey.csv rows [3, 7]; other.csv rows [2]': the first source rows of ``mask`` per file."""
    hits = df.loc[mask, ["source_file", "source_row"]]
    return "; ".join(f"{f} rows {rows['source_row'].head(limit).tolist()}{' ...' if len(rows) > limit else ''}"
                     for f, rows in hits.groupby("source_file", sort=True))


def rejected_rows(df: pd.DataFrame, mask: pd.Series, rule: str, reason: pd.Series | str) -> pd.DataFrame:
    out = df.loc[mask]               # a new frame (copy-on-write): setting its columns leaves df as it is
    out["rule"] = rule
    out["reason"] = reason if isinstance(reason, str) else reason.loc[mask].to_numpy()
    return out


def redact(text: str, limit: int = 60) -> str:
    """Logged raw text without anything that looks like a phone number or an e-mail address."""
    text = EMAIL_RE.sub("[redacted]", str(text))
    text = PHONE_RE.sub(lambda m: "[redacted]" if sum(c.isdigit() for c in m.group(0)) >= 7 else m.group(0), text)
    return text if len(text) <= limit else text[:limit] + "..."


def log_changes(df: pd.DataFrame, mask: pd.Series, column: str, new_value, rule: str) -> pd.DataFrame:
    pos = np.flatnonzero(mask.to_numpy(dtype=bool))
    old = df[column].iloc[pos]
    numeric = pd.api.types.is_numeric_dtype(old) and not pd.api.types.is_bool_dtype(old)
    return pd.DataFrame({
        "source_file": df["source_file"].astype("str").array.take(pos),    # no array of Python strings
        "source_row": df["source_row"].to_numpy()[pos],
        "column": column,
        "old_value": old.astype("float64").to_numpy() if numeric else np.nan,
        "old_text": "" if numeric else map_distinct(old, redact, na_value="").to_numpy(dtype=object),
        "new_value": new_value.to_numpy()[pos].astype("float64") if isinstance(new_value, pd.Series) else new_value,
        "rule": rule,
    })


def _empty_log() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in ("old_value", "new_value") else
                                      "int64" if c == "source_row" else "object") for c in LOG_COLUMNS})


# Built once (a rule with nothing to log returns it about ten times per clean call, ~1 ms each);
# handed out as copies, so no caller can change the template.
_EMPTY_LOG = _empty_log()


def concat_logs(logs: list[pd.DataFrame]) -> pd.DataFrame:
    logs = [log for log in logs if len(log)]
    if not logs:
        return _EMPTY_LOG.copy()
    # one log (the usual case of a rule): what concat would give, without its cost
    out = logs[0].reset_index(drop=True) if len(logs) == 1 else pd.concat(logs, ignore_index=True)
    out["old_text"] = out["old_text"].astype("object")
    return out[LOG_COLUMNS]



def flow_frame(rows: list[dict], labels: dict) -> pd.DataFrame:
    """The flow table from its rows (step, all, count per arm label): arms in configured order,
    then any other label (``undefined arm``); an arm without rows at a step counts 0."""
    table = pd.DataFrame(rows).fillna(0)
    arm_order = list(dict.fromkeys(labels.values()))
    cols = ["step", "all"] + [c for c in arm_order if c in table.columns] + \
        [c for c in table.columns if c not in arm_order and c not in ("step", "all")]
    return table[cols].astype({c: "int64" for c in cols if c != "step"})
