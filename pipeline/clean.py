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

The rules live by family in :mod:`pipeline.clean_rows` (1-2), :mod:`pipeline.clean_values` (3-7)
and :mod:`pipeline.clean_money` (8-9), their records in :mod:`pipeline.clean_log`; this module
runs them in order, counts the flow, validates and writes.
"""
from __future__ import annotations

import pandas as pd

from pipeline import clean_duckdb
from pipeline.clean_log import CleaningError, concat_logs, flow_frame
from pipeline.clean_money import SUMMARY_PERCENTILES, flow_columns, normalise_recall, treat_outliers
from pipeline.clean_rows import check_id_collisions, reject_invalid_rows, resolve_duplicates
from pipeline.clean_values import (apply_closures, check_sex_coding, flag_not_interviewed, parse_numbers,
                                   reject_impossible_values, replace_missing_codes, replace_unknown_codes,
                                   unusable_numbers)
from pipeline.codes import codes_in, map_distinct
from pipeline.io import atomic_path, param, write_named_outputs
from pipeline.stage_context import StageContext
from pipeline.privacy import assert_no_identifiers
from pipeline.schemas import validate_frame
from pipeline.study import (FACTOR_COLUMN, PIPELINE_COLUMNS, arm_labels, assign_arms, effective_clean_params,
                            flow_column, normalise)


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

    return flow_frame([{"step": "raw rows", **counts(raw)}] + [{"step": name, **counts(frame)} for name, frame in steps],
                      labels)


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
def clean(interim: pd.DataFrame, cfg: dict, params: dict, *, checked: bool = True,
          partition: str | None = None) -> dict[str, pd.DataFrame]:
    """Apply every rule; return clean table, rejected rows, value log and flow table.

    ``clean.engine`` ``duckdb``: the same rules and tables from :func:`pipeline.clean_duckdb.clean_frame`.
    ``checked=False`` (the simulation's draws after the first, whose generator and rules are the
    ones a checked draw already passed): no pandera validation and no flow table (``flow`` None);
    the rules, the row accounting and every other output are the same.
    ``partition``: a column of ``interim`` that splits it into surveys with distinct unit ids,
    cleaned together to share pandas' cost per call (the simulation's batches of draws): the
    statistics the rules take over a table (winsorising cut-offs, the overflow bound) are each
    survey's own, so every survey's clean rows are those it gets alone. Not with the duckdb engine."""
    cfg = normalise(cfg)
    params = effective_clean_params(cfg, params)
    if param(params, "clean", "engine") == "duckdb":
        if partition is not None:
            raise ValueError(f"{cfg['study']}: clean(partition=...) runs on the pandas engine only")
        return clean_duckdb.clean_frame(interim, cfg, params, checked=checked)
    id_like = {cfg["unit_id"], cfg.get("round"), cfg["treatment"]["column"], cfg.get("cluster"),
               *(cfg["treatment"]["dummies"] or []), *cfg.get("strata", []),
               *((cfg.get("submission") or {}).values()), partition}
    check_id_collisions(interim, cfg)
    df, rejected_invalid = reject_invalid_rows(interim, cfg)
    after_invalid = df
    df, rejected_dups = resolve_duplicates(df, cfg, param(params, "clean", "duplicate_rule"))
    after_dups = df
    df, log_text, parsed = parse_numbers(df, cfg)
    df, log_not_interviewed = flag_not_interviewed(df, cfg)
    answer_cols = [c for c in df.columns if c not in id_like and c not in PIPELINE_COLUMNS]
    df, log_missing = replace_missing_codes(df, answer_cols, cfg["missing_codes"])
    df, log_unknown = replace_unknown_codes(df, cfg)
    check_sex_coding(df, cfg)
    df, log_closed = apply_closures(df, cfg)
    df, log_unusable = unusable_numbers(df, cfg, partition)
    df, log_impossible = reject_impossible_values(df, cfg)
    period = param(params, "clean", "flow_period")
    df = normalise_recall(df, cfg, period)
    currency = str(cfg.get("currency", "lcu")).lower()
    targets, baselines = {}, {}
    for name, out in cfg["outcomes"].items():
        new = flow_column(name, out, currency, period)
        targets[new] = bool(out.get("allow_negative", False))
        if out["baseline_column"]:
            baselines[f"{new}_pre"] = bool(out.get("allow_negative", False))
    lower, upper = float(param(params, "clean", "winsor_lower_pct")), float(param(params, "clean", "winsor_upper_pct"))
    method = param(params, "clean", "outlier_method")
    by_round = cfg.get("round") if param(params, "clean", "winsor_by_round") else None
    df, changed = treat_outliers(df, targets, lower, upper, by=[c for c in (partition, by_round) if c], method=method)
    if baselines:
        df, changed_bl = treat_outliers(df, baselines, lower, upper, by=partition, method=method, unit=cfg["unit_id"])
        changed.update(changed_bl)
    rejected = pd.concat([rejected_invalid, rejected_dups], ignore_index=True)
    rejected = rejected.sort_values(["source_file", "source_row"], kind="stable").reset_index(drop=True)
    log = concat_logs([log_text, log_not_interviewed, log_missing, log_unknown, log_closed, log_unusable,
                        log_impossible])
    log = log.sort_values(["source_file", "source_row", "column", "rule"], kind="stable").reset_index(drop=True)
    steps = [("after invalid rows", after_invalid), ("after duplicates", after_dups), ("clean", df)]
    if cfg["not_interviewed"]:
        steps.append(("clean and interviewed", df[df["interviewed"] == 1]))
    flow = flow_table(interim, steps, cfg) if checked else None
    if len(df) + len(rejected) != len(interim):
        raise CleaningError(f"{cfg['study']}: row accounting broken: {len(df)} clean + {len(rejected)} rejected "
                            f"!= {len(interim)} raw")
    df = df.reset_index(drop=True).copy()   # .copy(): one block per dtype (the rules added columns one by one)
    if checked:
        validate_frame(df, clean_schema(cfg, period), cfg["study"], "clean",
                       ["source_file", "source_row", cfg["unit_id"]] + ([cfg["round"]] if cfg["round"] else []))
    extra = {"outliers_changed": changed, "method": method, "text_parsed": parsed, "params": params}
    return {"clean": df, "rejected": rejected, "log": log, "flow": flow, "extra": extra}


def run(context: StageContext) -> dict:
    """The clean stage: interim table -> clean table, rejected rows, value log, flow table (all
    or nothing). With ``clean.engine: duckdb`` the interim parquet file is cleaned out of core
    (:func:`pipeline.clean_duckdb.clean_parquet`): the clean table never enters pandas."""
    cfg, params = dict(context.config), dict(context.params)
    if param(effective_clean_params(cfg, params), "clean", "engine") == "duckdb":
        return run_out_of_core(context, cfg, params)
    interim = pd.read_parquet(context.inputs["ingested.parquet"])
    result = clean(interim, cfg, params)
    result["flow_summary"] = flow_summary(result["clean"], param(result["extra"]["params"], "clean", "flow_period"))
    not_interviewed = int((result["clean"]["interviewed"] == 0).sum())
    for name in ("clean", "rejected", "log"):
        assert_no_identifiers(result[name], cfg=cfg, source=f"{cfg['study']} {name} table")
    result["log_counts"] = result["log"].groupby(["rule", "column"]).size().rename("values").reset_index()
    summary = stage_summary(context, cfg, result, len(interim), len(result["clean"]), not_interviewed)
    write_named_outputs(context.outputs, {
        "clean.parquet": result["clean"],
        "rejected_rows.parquet": result["rejected"],
        "value_log.parquet": result["log"],
        "flow.csv": result["flow"],
        "clean_summary.json": summary,
    })
    return {"config": cfg, **result, "summary": summary}


def run_out_of_core(context: StageContext, cfg: dict, params: dict) -> dict:
    """The clean stage on DuckDB: the clean table and the value log streamed to parquet by DuckDB
    (into temporary files renamed into place once the other outputs are written), the rejected
    rows and the flow through pandas. The returned ``clean`` and ``log`` are None (they may not fit
    in memory). The value log holds no raw text here (the engine refuses text in the columns it
    changes), so only the rejected rows are scanned for identifiers before writing."""
    with atomic_path(context.outputs["clean.parquet"]) as clean_tmp, \
            atomic_path(context.outputs["value_log.parquet"]) as log_tmp:
        result = clean_duckdb.clean_parquet(context.inputs["ingested.parquet"], clean_tmp, log_tmp, cfg, params,
                                            memory_limit=param(params, "clean", "duckdb_memory_limit"))
        assert_no_identifiers(result["rejected"], cfg=cfg, source=f"{cfg['study']} rejected table")
        rows = result.pop("rows")
        summary = stage_summary(context, cfg, result, rows["raw"], rows["clean"], result.pop("not_interviewed_rows"))
        write_named_outputs({k: v for k, v in context.outputs.items() if k in ("rejected_rows.parquet", "flow.csv",
                                                                                "clean_summary.json")}, {
            "rejected_rows.parquet": result["rejected"],
            "flow.csv": result["flow"],
            "clean_summary.json": summary,
        })
    return {"config": cfg, "clean": None, "log": None, **result, "summary": summary}


def stage_summary(context: StageContext, cfg: dict, result: dict, raw_rows: int, clean_rows: int,
                  not_interviewed: int) -> dict:
    """clean_summary.json: the row accounting and what the rules changed (``result["log_counts"]``:
    values changed per rule and column)."""
    extra = result["extra"]
    summary = {
        "study": cfg["study"],
        "raw_rows": raw_rows,
        "clean_rows": clean_rows,
        "rejected_rows_by_rule": result["rejected"]["rule"].value_counts().sort_index().to_dict(),
        "values_changed_by_rule": result["log_counts"].groupby("rule")["values"].sum().sort_index().to_dict(),
    }
    if cfg["not_interviewed"]:
        summary["not_interviewed_rows"] = not_interviewed
    if cfg["clean_params"]:
        summary["study_clean_params"] = dict(cfg["clean_params"])
    summary["outliers"] = {"method": extra["method"], "values_changed": extra["outliers_changed"]}
    summary["resolved_config"] = context.resolved_config()
    return summary


def values_changed(log_counts: pd.DataFrame) -> pd.DataFrame:
    """Values changed by column (rows) and rule (columns), from the counts per rule and column."""
    return log_counts.set_index(["rule", "column"])["values"].unstack(0, fill_value=0)


def flow_summary(clean: pd.DataFrame, flow_period: str) -> pd.DataFrame:
    """Distribution of the money flows after cleaning (plain and winsorised); a study whose outcomes
    are not money flows (e.g. already logs) gets a one-line note instead."""
    flows = flow_columns(clean.columns, flow_period)
    if not flows:
        return pd.DataFrame({"note": [f"no money-flow outcome per {flow_period} in this study"]})
    return clean[flows].describe(percentiles=list(SUMMARY_PERCENTILES)).T.round(1)
