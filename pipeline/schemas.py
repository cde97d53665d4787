"""Running a table's pandera schema with a message a researcher can act on."""
from __future__ import annotations

import pandas as pd


class ValidationError(ValueError):
    """A table breaks its schema (pandera); the message names study, column, rule, count and rows."""


def validate_frame(df: pd.DataFrame, schema, study: str, table: str, row_columns: list[str]) -> None:
    """Validate ``df`` against a pandera schema (all failures collected); raise
    :class:`ValidationError` naming study, table, and per failed rule its column, count and up to
    five example rows (identified by ``row_columns``)."""
    import pandera.pandas as pa

    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.copy()
        cases["column"] = cases["column"].astype("object").where(cases["column"].notna(), "(table)")
        cases["check"] = cases["check"].astype(str)
        lines = []
        for (column, check), group in cases.groupby(["column", "check"], sort=True):
            index = pd.to_numeric(group["index"], errors="coerce").dropna().astype(int).unique()
            index = [i for i in index if i in df.index][:5]
            cols = [c for c in row_columns if c in df.columns]
            examples = df.loc[index, cols].to_dict("records") if index and cols else group["failure_case"].head(5).tolist()
            lines.append(f"column {column!r}, rule {check}: {len(group)} rows, e.g. {examples}")
        raise ValidationError(f"{study}: the {table} table fails validation:\n  " + "\n  ".join(lines)) from None
