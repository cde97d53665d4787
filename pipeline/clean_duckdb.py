"""Clean on DuckDB: the rules of :mod:`pipeline.clean` as SQL over the interim table, for surveys
too big for pandas in memory (``clean.engine: duckdb``).

The same rules, in the same order, give the same clean table (values, column order and dtypes),
rejected rows, value log, flow table and outlier counts as the pandas path; a test checks both
engines on the default survey (``tests/test_clean_duckdb.py``). The table is never loaded into
Python: the rejected rows are found once (two window passes), the kept rows are the interim
table minus them (an anti join on ``source_file, source_row``), and every value rule is an SQL
expression over the kept rows, built column by column, so the clean table is one ``SELECT`` that
DuckDB streams to parquet. Only small things come back: counts, the rejected rows, the value log,
the per-round row counts of the outlier cut-offs.

Details kept as in pandas: a column becomes float64 only when a rule changes a value in it
(pandas' dtype follows the data, so each rule first counts its changes); percentiles are
pandas' linear interpolation between two order statistics (DuckDB's ``quantile_cont`` differs in
the last bits), read exactly with ``quantile_disc``; a missing value is never clamped (DuckDB's
``greatest``/``least`` skip NULLs, so clamps are written as ``CASE``).

Not implemented (a study configuring them gets :class:`UnsupportedRule` naming the study and the
rule, never a silently different table): text in id, code or numeric columns (id spelling
collisions and numbers stored as text), ``not_interviewed``, ``allowed_codes`` and
``female_owner.male_codes``, baselines in the same row (``baseline_column``), dummy treatment
columns. The pandera validation of the pandas path is replaced by SQL checks of the same
contract (:func:`check_clean`).
"""
from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

import numpy as np
import pandas as pd

from pipeline.clean_duckdb_rules import (Columns, UnsupportedRule, check_sex_coding, check_supported, closures,
                                         find_rejected, group_quantiles, ident, impossible_values, in_list, literal,
                                         missing_codes, outliers, recall, unusable_numbers)
from pipeline.clean_log import CleaningError
from pipeline.clean_money import SUMMARY_PERCENTILES, flow_columns
from pipeline.study import FACTOR_COLUMN, PIPELINE_COLUMNS, arm_labels, flow_column, normalise

__all__ = ["UnsupportedRule", "clean_frame", "clean_parquet", "clean_sql"]


# ------------------------------------------------------------------------------------------------
# The engine
# ------------------------------------------------------------------------------------------------
def arm_label_sql(cfg: dict) -> str:
    treat = ident(cfg["treatment"]["column"])
    return "CASE " + " ".join(f"WHEN {treat} = {literal(k)} THEN {literal(v)}" for k, v in arm_labels(cfg).items()) \
        + " ELSE 'undefined arm' END"


def flow_counts(con, cfg: dict) -> list[dict]:
    """Rows by arm label after each step (the rows of :func:`pipeline.clean_log.flow_frame`), one pass."""
    counts = con.execute(f"""
        SELECT {arm_label_sql(cfg)} AS arm, count(*), count(*) FILTER (WHERE rule IS DISTINCT FROM 'invalid_row'),
               count(*) FILTER (WHERE rule IS NULL)
        FROM interim LEFT JOIN rejected_keys USING (source_file, source_row) GROUP BY 1 ORDER BY 1""").fetchall()
    rows = []
    for k, step in enumerate(("raw rows", "after invalid rows", "after duplicates", "clean")):
        per_arm = {arm: n[min(k, 2)] for arm, *n in counts if n[min(k, 2)]}
        rows.append({"step": step, **per_arm, "all": sum(per_arm.values())})
    return rows


def check_clean(con, cfg: dict, flow_period: str) -> None:
    """The clean table's contract (:func:`pipeline.clean.clean_schema`) as SQL over the view ``clean``:
    ids present, one row per unit x round, defined rounds, non-negative money where it must be,
    ranges, 0/1 flags, a positive conversion factor. A violation stops the stage naming the rows."""
    unit, round_col = cfg["unit_id"], cfg.get("round")
    currency = str(cfg.get("currency", "lcu")).lower()
    rules = {f"{unit} missing": f"{ident(unit)} IS NULL"}
    if round_col:
        rules[f"{round_col} missing"] = f"{ident(round_col)} IS NULL"
        if cfg["rounds"]:
            rules[f"{round_col} not in {cfg['rounds']}"] = f"{ident(round_col)} NOT IN {in_list(cfg['rounds'])}"
    for name, out in cfg["outcomes"].items():
        if not out.get("allow_negative"):
            base = flow_column(name, out, currency, flow_period)
            for col in (base, f"{base}_w"):
                rules[f"{col} < 0"] = f"{ident(col)} < 0"
    for col, (lo, hi) in cfg["valid_ranges"].items():
        if lo is not None:
            rules[f"{col} < {lo}"] = f"{ident(col)} < {literal(lo)}"
        if hi is not None:
            rules[f"{col} > {hi}"] = f"{ident(col)} > {literal(hi)}"
    for flag in ("business_closed", "interviewed"):
        rules[f"{flag} not 0/1"] = f"{ident(flag)} IS NULL OR {ident(flag)} NOT IN (0, 1)"
    columns = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE clean)").fetchall()]
    if FACTOR_COLUMN in columns:
        rules[f"{FACTOR_COLUMN} not > 0"] = f"{ident(FACTOR_COLUMN)} IS NULL OR NOT {ident(FACTOR_COLUMN)} > 0"
    keys = ", ".join(ident(k) for k in [unit] + ([round_col] if round_col else []))
    failed = [f"{name} (source rows {rows})" for name, rows in zip(rules, con.execute(
        "SELECT " + ", ".join(f"(list(source_row ORDER BY source_row) FILTER (WHERE coalesce({w}, FALSE)))[1:5]"
                              for w in rules.values()) + " FROM clean").fetchall()[0]) if rows]
    repeated = con.execute(f"SELECT count(*) FROM (SELECT {keys} FROM clean GROUP BY ALL HAVING count(*) > 1)").fetchall()[0][0]
    if repeated:
        failed.append(f"{repeated} {keys.replace(chr(34), '')} appear more than once")
    if failed:
        raise CleaningError(f"{cfg['study']} clean: the clean table breaks its contract: {'; '.join(failed)}")


def clean_sql(con, cfg: dict, params: dict, *, checked: bool = True) -> dict:
    """Every rule over the view ``interim`` of ``con``: views ``clean``, ``rejected`` and ``value_log``
    (ordered as the pandas path's tables), the flow rows (``checked``) and the outlier counts.
    The caller checks the clean table's contract (:func:`check_clean`) where it is final."""
    from pipeline.io import param
    from pipeline.study import effective_clean_params

    cfg = normalise(cfg)
    params = effective_clean_params(cfg, params)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE interim)").fetchall())
    check_supported(cfg, types)
    find_rejected(con, cfg, list(types), param(params, "clean", "duplicate_rule"))
    cols = Columns(con, dict(types))
    cols.set("interviewed", "CAST(1 AS TINYINT)", "TINYINT")
    cols.commit()
    id_like = {cfg["unit_id"], cfg.get("round"), cfg["treatment"]["column"], cfg.get("cluster"),
               *cfg.get("strata", []), *((cfg.get("submission") or {}).values())}
    missing_codes(con, cols, [c for c in types if c not in id_like and c not in PIPELINE_COLUMNS], cfg["missing_codes"])
    cols.commit()
    check_sex_coding(con, cfg, cols)
    closures(con, cfg, cols)
    cols.commit()
    n_kept = con.execute("SELECT count(*) FROM kept").fetchall()[0][0]
    unusable_numbers(con, cfg, cols, n_kept, types)
    cols.commit()
    impossible_values(con, cfg, cols)
    period = param(params, "clean", "flow_period")
    new = recall(con, cfg, cols, period)
    cols.commit()
    targets = dict(zip(new, (bool(out.get("allow_negative", False)) for out in cfg["outcomes"].values())))
    method = param(params, "clean", "outlier_method")
    changed = outliers(con, cols, targets, float(param(params, "clean", "winsor_lower_pct")),
                       float(param(params, "clean", "winsor_upper_pct")),
                       cfg.get("round") if param(params, "clean", "winsor_by_round") else None, method)
    cols.commit()
    con.execute(f"CREATE OR REPLACE TEMP VIEW clean AS SELECT * FROM {cols.layer}")
    con.execute("CREATE OR REPLACE TEMP VIEW rejected AS SELECT interim.*, rule, reason FROM interim "
                "JOIN rejected_keys USING (source_file, source_row) ORDER BY source_file, source_row")
    con.execute(f"CREATE OR REPLACE TEMP VIEW value_log AS SELECT source_file, source_row, \"column\", old_value, "
                f"'' AS old_text, new_value, rule FROM ({cols.log_sql()}) "
                f"ORDER BY source_file, source_row, \"column\", rule, _part")
    n_rejected = con.execute("SELECT count(*) FROM rejected_keys").fetchall()[0][0]
    n_raw = con.execute("SELECT count(*) FROM interim").fetchall()[0][0]
    if n_kept + n_rejected != n_raw:
        raise CleaningError(f"{cfg['study']}: row accounting broken: {n_kept} clean + {n_rejected} rejected != {n_raw} raw")
    extra = {"outliers_changed": changed, "method": method, "text_parsed": {}, "params": params}
    return {"flow": flow_counts(con, cfg) if checked else None, "extra": extra,
            "rows": {"raw": n_raw, "clean": n_kept, "rejected": n_rejected}}


def flow_summary(con, flow_period: str) -> pd.DataFrame:
    """:func:`pipeline.clean.flow_summary` over the view ``clean`` (the clean notebook's display:
    percentiles as pandas computes them, means and SDs by DuckDB, rounded to 0.1)."""
    names = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE clean)").fetchall()]
    flows = flow_columns(names, flow_period)
    if not flows:
        return pd.DataFrame({"note": [f"no money-flow outcome per {flow_period} in this study"]})
    stats = ["count", "mean", "std", "min"] + [f"{p * 100:g}%" for p in SUMMARY_PERCENTILES] + ["max"]
    moments = con.execute("SELECT " + ", ".join(f"count({v}), avg({v}), stddev_samp({v}), min({v}), max({v})"
                                                for v in map(ident, flows)) + " FROM clean").fetchall()[0]
    quantiles = group_quantiles(con, "clean", "0", [(ident(c), p) for c in flows for p in SUMMARY_PERCENTILES])
    rows = {}
    for k, col in enumerate(flows):
        n, mean, sd, lo, hi = (np.nan if x is None else float(x) for x in moments[5 * k: 5 * k + 5])
        cuts = [q.get(0, np.nan) for q in quantiles[len(SUMMARY_PERCENTILES) * k: len(SUMMARY_PERCENTILES) * (k + 1)]]
        rows[col] = [n, mean, sd, lo, *cuts, hi]
    return pd.DataFrame.from_dict(rows, orient="index", columns=stats).round(1)


@contextlib.contextmanager
def connection(memory_limit: str | None = None, temp_directory: str | None = None) -> Iterator:
    """A DuckDB connection in memory, closed on exit. With a ``memory_limit`` DuckDB spills beyond
    it to ``temp_directory``, or to a private temporary folder removed after the connection closes."""
    import duckdb

    with contextlib.ExitStack() as stack:
        if memory_limit and not temp_directory:
            temp_directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="duckdb-spill-"))
        con = duckdb.connect()
        stack.callback(con.close)          # closed before its spill folder goes (last in, first out)
        if memory_limit:
            con.execute(f"SET memory_limit = {literal(memory_limit)}")
        if temp_directory:
            con.execute(f"SET temp_directory = {literal(temp_directory)}")
        con.execute("SET preserve_insertion_order = true")
        yield con


def to_frame(con, view: str) -> pd.DataFrame:
    return con.execute(f"SELECT * FROM {view}").df()


def pandas_tables(con, cfg: dict, result: dict, log: bool = True) -> dict:
    """The small tables as the pandas path types them (rejected reasons and log text as object);
    ``log=False``: not the value log (a table as long as the survey's changed values)."""
    from pipeline.clean_log import concat_logs, flow_frame

    rejected = to_frame(con, "rejected")
    # the pandas path's dtype: its invalid-row reasons are str when there are any, and an empty
    # object column (which makes the concatenated reasons object) when there are none
    invalid = (rejected["rule"] == "invalid_row").any()
    if rejected.empty:    # DuckDB gives text columns without rows as object, pandas keeps str
        rejected = rejected.astype({c: "str" for c in rejected.columns if rejected[c].dtype == object})
    rejected["reason"] = rejected["reason"].astype("str" if invalid else "object")
    flow = flow_frame(result["flow"], arm_labels(cfg)) if result["flow"] is not None else None
    tables = {"rejected": rejected, "flow": flow}
    if log:
        frame = to_frame(con, "value_log")
        tables["log"] = concat_logs([frame]) if len(frame) else concat_logs([])
    return tables


def clean_frame(interim: pd.DataFrame, cfg: dict, params: dict, *, checked: bool = True) -> dict:
    """:func:`pipeline.clean.clean` on DuckDB for an interim table in memory (the simulation's and
    the tests' entry point): the same dict of tables."""
    with connection() as con:
        con.register("interim_frame", interim)
        con.execute("CREATE TEMP VIEW interim AS SELECT * FROM interim_frame")
        result = clean_sql(con, cfg, params, checked=checked)
        if checked:
            check_clean(con, normalise(cfg), result["extra"]["params"]["flow_period"])
        clean = to_frame(con, "clean")
        return {"clean": clean, **pandas_tables(con, normalise(cfg), result), "extra": result["extra"]}


def clean_parquet(interim_path, clean_path, log_path, cfg: dict, params: dict, *, memory_limit: str | None = None,
                  temp_directory: str | None = None) -> dict:
    """Out of core: the interim parquet file cleaned into ``clean_path`` and its value log into
    ``log_path`` (parquet, written by DuckDB, streaming); returns the small tables (rejected rows,
    flow) as pandas, the value log's counts by rule and column, the row counts and the money-flow summary."""
    with connection(memory_limit, temp_directory) as con:
        con.execute(f"CREATE TEMP VIEW interim AS SELECT * FROM read_parquet({literal(str(interim_path))})")
        result = clean_sql(con, cfg, params)
        con.execute(f"COPY (SELECT * FROM clean) TO {literal(str(clean_path))} (FORMAT parquet)")
        con.execute(f"COPY (SELECT * FROM value_log) TO {literal(str(log_path))} (FORMAT parquet)")
        con.execute(f"CREATE OR REPLACE TEMP VIEW clean AS SELECT * FROM read_parquet({literal(str(clean_path))})")
        period = result["extra"]["params"]["flow_period"]
        check_clean(con, normalise(cfg), period)
        not_interviewed = con.execute("SELECT count(*) FILTER (WHERE interviewed = 0) FROM clean").fetchall()[0][0]
        log_counts = con.execute(f"SELECT rule, \"column\", count(*) AS \"values\" FROM read_parquet({literal(str(log_path))}) "
                                 f"GROUP BY ALL ORDER BY ALL").df()
        return {**pandas_tables(con, normalise(cfg), result, log=False), "log_counts": log_counts,
                "extra": result["extra"], "rows": result["rows"], "not_interviewed_rows": int(not_interviewed),
                "flow_summary": flow_summary(con, period)}
