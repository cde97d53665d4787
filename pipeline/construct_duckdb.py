"""Construct on DuckDB: the rules of :mod:`pipeline.construct` as SQL over the clean table, for
surveys too big for pandas in memory (the same switch as the clean stage: ``clean.engine: duckdb``,
in params.yaml or the study's ``clean_params``).

The same rules give the same analysis table (values, column order, dtypes, row order) as the
pandas path; ``tests/test_construct_duckdb.py`` checks both engines on the default survey. The
clean table is never loaded into Python: the per-firm values (assignment, strata, cluster, owner
gender; a firm whose value differs across rounds stops the stage as in pandas) are one GROUP BY
into a DuckDB table, and the analysis table is one ``SELECT`` (the firm x planned-round grid, the
observed row of each cell and the firm's baseline-round row, both by hash join, sorted by firm and
round) that DuckDB streams to parquet. Only small things come back: counts, error examples, the
notebook's two tables.

Details kept as in pandas: ids as text the way :func:`pipeline.construct.format_ids` writes them
(integers without ``.0``); a practice score is a sum over the answered items left to right, divided
by their count (pandas' row mean); missing values are NULL in DuckDB and NaN once in pandas.

Not implemented (a study configuring them gets :class:`UnsupportedRule` naming the study and the
rule): a unit id replaced by a salted hash, treatment dummies, baselines in the same row
(``baseline_column``), text in id, code or numeric columns (text strata and clusters are
supported), ids and round codes that are not integers. The pandera validation of the pandas path
is replaced by SQL checks of the same contract (:func:`check_analysis`).
"""
from __future__ import annotations

import pandas as pd

from pipeline.clean_duckdb import connection
from pipeline.clean_duckdb_rules import (FLOAT_TYPES, NUMERIC_TYPES, UnsupportedRule, check_numeric, ident, in_list,
                                         literal, unsupported)
from pipeline.construct import (ConstructError, baseline_round_number, column_order, first_outcome, hashed_unit_id,
                                planned_rounds, reference_arm)
from pipeline.io import param
from pipeline.schemas import ValidationError
from pipeline.study import FACTOR_COLUMN, analysis_column, flow_column, normalise, numeric_columns

__all__ = ["UnsupportedRule", "construct_frame", "construct_parquet"]

KEY = "_unit"      # the raw unit id in the SQL (firm_id, its text, is made at the end)


def check_supported(cfg: dict, types: dict[str, str]) -> None:
    """Everything the study configures is implemented here, and its ids and numbers are numbers."""
    def refuse(rule: str) -> None:
        raise unsupported(cfg["study"], "construct", rule)

    if hashed_unit_id(cfg):
        refuse("a unit id replaced by a salted hash (hash_identifiers)")
    if not cfg["treatment"]["column"]:
        refuse("treatment dummies (treatment.dummies)")
    if any(out["baseline_column"] for out in cfg["outcomes"].values()):
        refuse("baselines in the same row (outcomes.*.baseline_column)")
    check_numeric(cfg, types, [cfg["unit_id"], cfg.get("round"), cfg["treatment"]["column"],
                               cfg["female_owner"].get("column"), *numeric_columns(cfg), FACTOR_COLUMN], "construct")
    for col in (cfg.get("cluster"), *cfg.get("strata", [])):
        if col and types.get(col, "VARCHAR") not in NUMERIC_TYPES + ("VARCHAR",):
            refuse(f"column {col!r} of type {types[col]}")


def id_text(expr: str, dtype: str) -> str:
    """An id as :func:`pipeline.construct.format_ids` writes it: integers without ``.0``, text as is."""
    if dtype == "VARCHAR":
        return expr
    if dtype in FLOAT_TYPES:
        return f"CAST(CAST({expr} AS HUGEINT) AS VARCHAR)"   # integral: checked by check_integral
    return f"CAST({expr} AS VARCHAR)"


def check_integral(con, cfg: dict, types: dict[str, str]) -> None:
    """Float ids and round codes hold integers (pandas writes other floats with numpy's repr,
    and numbers rounds by their position; neither is done here)."""
    cols = [c for c in (cfg["unit_id"], cfg.get("round"), cfg.get("cluster"), *cfg.get("strata", []))
            if c and types.get(c) in FLOAT_TYPES]
    if not cols:
        return
    counts = con.execute("SELECT " + ", ".join(f"count(*) FILTER (WHERE {ident(c)} <> trunc({ident(c)}) OR "
                                               f"abs({ident(c)}) >= 1e38)" for c in cols) + " FROM clean").fetchall()[0]
    for col, n in zip(cols, counts):
        if n:
            raise unsupported(cfg["study"], "construct", f"ids or round codes that are not integers "
                                                         f"({n} rows of column {col!r})")


# ------------------------------------------------------------------------------------------------
# Per firm: assignment, strata, cluster, owner gender
# ------------------------------------------------------------------------------------------------
def check_arms(con, cfg: dict) -> None:
    """Every clean row has a defined arm (as :func:`pipeline.construct._assignment_columns`)."""
    treat = cfg["treatment"]["column"]
    col = ident(treat)
    reason = con.execute(f"SELECT CASE WHEN {col} IS NULL THEN {literal(treat + ' is missing')} ELSE "
                         f"{literal(treat + '=')} || CAST({col} AS VARCHAR) || ' is not a defined arm' END FROM clean "
                         f"WHERE {col} IS NULL OR {col} NOT IN {in_list(cfg['treatment']['arms'])} "
                         f"ORDER BY source_file, source_row LIMIT 1").fetchall()
    if reason:
        raise ConstructError(f"{cfg['study']}: rows without a treatment arm in the clean table ({reason[0][0]}); "
                             f"run the clean stage")


def firm_columns(cfg: dict) -> dict[str, tuple[str, str, str]]:
    """The per-firm attributes: name -> (clean column, what, shown), as the pandas path names them."""
    treatment, female = cfg["treatment"], cfg["female_owner"]
    out = {"_arm": (treatment["column"], "treatment arm", treatment["column"])}
    out.update({f"_stratum_{k}": (s, "stratum", s) for k, s in enumerate(cfg.get("strata", []))})
    if cfg.get("cluster"):
        out["_cluster"] = (cfg["cluster"], "cluster", cfg["cluster"])
    if "value" not in female:
        out["_sex"] = (female["column"], "owner gender", female["column"])
    return out


def build_firms(con, cfg: dict) -> None:
    """Table ``firms``: one row per unit, its value of each attribute of :func:`firm_columns` (the
    value of its rows where present); a unit whose value differs across rounds stops the stage."""
    unit = ident(cfg["unit_id"])
    attrs = firm_columns(cfg)
    aggs = ", ".join(f"min({ident(col)}) AS {name}, min({ident(col)}) <> max({ident(col)}) AS {name}_varies"
                     for name, (col, _, _) in attrs.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE firms AS SELECT {unit} AS {KEY}, {aggs} FROM clean "
                f"WHERE {unit} IS NOT NULL GROUP BY 1 ORDER BY 1")
    varying = con.execute("SELECT " + ", ".join(
        f"count(*) FILTER (WHERE {n}_varies), (list({KEY} ORDER BY {KEY}) FILTER (WHERE {n}_varies))[1:5]"
        for n in attrs) + " FROM firms").fetchall()[0]
    for k, (_, what, shown) in enumerate(attrs.values()):
        n, units = varying[2 * k], varying[2 * k + 1]
        if n:
            raise ConstructError(f"{cfg['study']}: {what} ({shown}) differs across rounds for {n} units, e.g. {units}")
    check_blank(con, cfg, attrs)


def check_blank(con, cfg: dict, attrs: dict) -> None:
    """A stratum or cluster missing in every round of a unit stops the stage (it would pool
    unrelated firms), with the pandas path's message."""
    strata = [n for n in attrs if n.startswith("_stratum_")]
    if strata:
        blank = " OR ".join(f"{n} IS NULL" for n in strata)
        n, units, *cols = con.execute(
            f"SELECT count(*) FILTER (WHERE {blank}), (list({KEY} ORDER BY {KEY}) FILTER (WHERE {blank}))[1:5], "
            + ", ".join(f"bool_or({n} IS NULL)" for n in strata) + " FROM firms").fetchall()[0]
        if n:
            names = ", ".join(attrs[s][0] for s, missing in zip(strata, cols) if missing)
            # the clean table's first rows (it is in source order: both clean engines write it so)
            rows = con.execute(f"SELECT source_file, source_row FROM clean WHERE {ident(cfg['unit_id'])} IN "
                               f"(SELECT {KEY} FROM firms WHERE {blank}) ORDER BY source_file, source_row LIMIT 5"
                               ).df().to_dict("records")
            raise ConstructError(f"{cfg['study']}: stratum ({names}) is missing in every round for {n} units, "
                                 f"e.g. {units} (rows {rows})")
    if "_cluster" in attrs:
        n, units = con.execute(f"SELECT count(*) FILTER (WHERE _cluster IS NULL), (list({KEY} ORDER BY {KEY}) "
                               f"FILTER (WHERE _cluster IS NULL))[1:5] FROM firms").fetchall()[0]
        if n:
            raise ConstructError(f"{cfg['study']}: cluster ({cfg['cluster']}) is missing in every round for {n} "
                                 f"units, e.g. {units}")


def firm_exprs(cfg: dict, types: dict[str, str]) -> dict[str, str]:
    """The firm-level analysis columns as SQL over ``firms``, in the pandas path's order."""
    arms = cfg["treatment"]["arms"]

    def by_arm(values: dict, dtype: str) -> str:
        return "CASE " + " ".join(f"WHEN _arm = {literal(k)} THEN {literal(v)}" for k, v in values.items()) \
            + f" END::{dtype}"

    out = {"arm": by_arm({k: a["label"] for k, a in arms.items()}, "VARCHAR"),
           "treat_skills": by_arm({k: a["skills"] for k, a in arms.items()}, "TINYINT"),
           "treat_capital": by_arm({k: a["capital"] for k, a in arms.items()}, "TINYINT")}
    reference = reference_arm(cfg)
    out.update({f"arm_{a['slug']}": f"CAST(_arm = {literal(k)} AS TINYINT)" for k, a in arms.items() if k != reference})
    strata = cfg.get("strata", [])
    out["stratum"] = " || '|' || ".join(f"{literal(s + '=')} || {id_text(f'_stratum_{k}', types[s])}"
                                        for k, s in enumerate(strata)) if strata else "'all'"
    out["cluster_id"] = id_text("_cluster", types[cfg["cluster"]]) if cfg.get("cluster") \
        else id_text(f"g.{KEY}", types[cfg["unit_id"]])
    female = cfg["female_owner"]
    if "value" in female:
        out["female_owner"] = "NULL::DOUBLE" if female["value"] is None else literal(float(female["value"]))
    else:
        male = female.get("male_codes")
        out["female_owner"] = (f"CASE WHEN _sex IN {in_list(female['female_codes'])} THEN 1.0 "
                               + (f"WHEN _sex IN {in_list(male)} THEN 0.0 " if male is not None
                                  else "WHEN _sex IS NOT NULL THEN 0.0 ") + "END::DOUBLE")
    return out


# ------------------------------------------------------------------------------------------------
# Per clean row: outcomes in USD PPP, scores, covariates
# ------------------------------------------------------------------------------------------------
def number(col: str) -> str:
    return f"CAST({ident(col)} AS DOUBLE)"


def row_exprs(cfg: dict, params: dict, flow_period: str, columns: list[str]) -> dict[str, str]:
    """The analysis columns of each clean row (:func:`pipeline.construct._observed_rows`), in order."""
    if FACTOR_COLUMN in columns:
        factor = number(FACTOR_COLUMN)
    elif cfg["usd_ppp_per_lcu"]["value"] is not None and cfg["usd_ppp_per_lcu"]["converts_to"] is None:
        factor = literal(float(cfg["usd_ppp_per_lcu"]["value"]))
    else:
        raise ConstructError(f"{cfg['study']}: the clean table has no {FACTOR_COLUMN} column (the ingest stage adds it)")
    currency = str(cfg.get("currency", "lcu")).lower()
    out = {}
    for name, spec in cfg["outcomes"].items():
        base = flow_column(name, spec, currency, flow_period)
        new = analysis_column(name, spec, flow_period)
        scale = factor if spec.get("money", True) else literal(1.0)
        out[new] = f"{number(base + '_w')} * {scale}"
        out[f"{new}_unwinsorised"] = f"{number(base)} * {scale}"
    out["business_closed"] = f"CASE WHEN _interviewed = 1 THEN {number('business_closed')} END"
    if cfg.get("skills_index"):
        share = float(param(params, "construct", "skills_min_answered_share"))
        spec = cfg["skills_index"]
        groups = {"skills_index": spec["columns"], **{f"skills_{a}": c for a, c in spec.get("areas", {}).items()}}
        for name, cols in groups.items():
            answered = " + ".join(f"CAST({ident(c)} IS NOT NULL AS INTEGER)" for c in cols)
            total = " + ".join(f"coalesce({number(c)}, 0.0)" for c in cols)    # pandas: NaN as 0, left to right
            out[name] = (f"CASE WHEN ({answered}) > 0 AND ({answered}) >= {literal(share * len(cols))} "
                         f"THEN ({total}) / ({answered}) END")
    if cfg.get("credit_access"):
        out["credit_access"] = number(cfg["credit_access"])
    for kind, col in (cfg.get("takeup") or {}).items():
        out[f"takeup_{kind}"] = number(col)
    for canonical, col in cfg.get("covariates", {}).items():
        out[canonical] = number(col)
    if cfg.get("weight"):
        out["weight"] = number(cfg["weight"])
    return out


# ------------------------------------------------------------------------------------------------
# The analysis table
# ------------------------------------------------------------------------------------------------
def analysis_sql(con, cfg: dict, params: dict, flow_period: str) -> str:
    """Checks the clean table (view ``clean``), builds ``firms`` and returns the analysis table's SELECT."""
    cfg = normalise(cfg)
    types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE clean)").fetchall())
    check_supported(cfg, types)
    check_integral(con, cfg, types)
    check_arms(con, cfg)
    build_firms(con, cfg)
    unit, round_col = ident(cfg["unit_id"]), cfg.get("round")
    values = row_exprs(cfg, params, flow_period, list(types))
    interviewed = "CAST(interviewed AS TINYINT)" if "interviewed" in types else "CAST(1 AS TINYINT)"
    round_expr = f"CAST({ident(round_col)} AS BIGINT)" if round_col else "CAST(0 AS BIGINT)"
    con.execute(f"CREATE OR REPLACE TEMP VIEW observed AS SELECT {KEY}, _round AS round, "
                + ", ".join(f"{e} AS {ident(c)}" for c, e in values.items())
                + f", _interviewed AS interviewed FROM (SELECT *, {unit} AS {KEY}, {round_expr} AS _round, "
                  f"{interviewed} AS _interviewed FROM clean WHERE {unit} IS NOT NULL)")
    repeated = con.execute(f"SELECT count(*), min({KEY}) FROM (SELECT {KEY}, round FROM observed GROUP BY ALL "
                           f"HAVING count(*) > 1)").fetchall()[0]
    if repeated[0]:
        raise ConstructError(f"{cfg['study']}: {repeated[0]} units x rounds appear more than once in the clean table, "
                             f"e.g. unit {repeated[1]}; run the clean stage")
    planned = planned_rounds(cfg, lambda: [r[0] for r in con.execute(
        "SELECT DISTINCT round FROM observed ORDER BY 1").fetchall()])
    baseline = baseline_round_number(cfg)
    # the pandas path's columns, in its order before the final reordering
    columns = {"study": literal(cfg["study"]), "round": "g.round"}
    columns.update({c: f"o.{ident(c)}" for c in values})
    columns["interviewed"] = "CAST(coalesce(o.interviewed, 0) AS TINYINT)"
    columns["attrited"] = "CAST(1 - coalesce(o.interviewed, 0) AS TINYINT)"
    columns.update({c: f"({e})" for c, e in firm_exprs(cfg, types).items()})
    columns["followup"] = f"(g.round <> {literal(baseline)})" if baseline is not None else "TRUE"
    added = {}
    if baseline is not None:
        for col in values:
            added[f"{col}_bl_missing"] = f"CAST(b.{ident(col)} IS NULL AS TINYINT)"
            added[f"{col}_bl"] = f"coalesce(b.{ident(col)}, 0.0)"
    columns = {c: e for c, e in columns.items() if c not in added} | added
    columns["firm_id"] = id_text(f"g.{KEY}", types[cfg["unit_id"]])
    select = ", ".join(f"{columns[c]} AS {ident(c)}" for c in column_order(list(columns)))
    baseline_join = (f" LEFT JOIN (SELECT * FROM observed WHERE round = {literal(baseline)}) b ON b.{KEY} = g.{KEY}"
                     if baseline is not None else "")
    return (f"SELECT {select} FROM (SELECT firms.*, p.round FROM firms CROSS JOIN "
            f"(SELECT unnest({'[' + ', '.join(literal(r) for r in planned) + ']'}::BIGINT[]) AS round) p) g "
            f"LEFT JOIN observed o ON o.{KEY} = g.{KEY} AND o.round = g.round{baseline_join} "
            f"ORDER BY g.{KEY}, g.round")


def check_analysis(con, cfg: dict, view: str, flow_period: str) -> None:
    """The analysis table's contract (:func:`pipeline.construct.analysis_schema`) as SQL over
    ``view``: the value checks (the ids, flags and one row per firm x round hold by construction).
    A violation stops the stage with :class:`ValidationError` naming column, rule, count and rows."""
    cfg = normalise(cfg)
    names = [r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE {view})").fetchall()]
    rules = {}
    for name, out in cfg["outcomes"].items():
        if not out.get("allow_negative"):
            new = analysis_column(name, out, flow_period)
            for col in (new, f"{new}_unwinsorised", f"{new}_bl", f"{new}_unwinsorised_bl"):
                if col in names:
                    rules[(col, "greater_than_or_equal_to(0)")] = f"{ident(col)} < 0"
    for col in names:
        if col.startswith("skills_") and not col.endswith("_missing"):
            rules[(col, "in_range(0, 1)")] = f"({ident(col)} < 0 OR {ident(col)} > 1)"
    if "weight" in names:
        rules[("weight", "greater_than(0)")] = "weight <= 0"
    if not rules:
        return
    found = con.execute("SELECT " + ", ".join(
        f"count(*) FILTER (WHERE {w}), (list({{'firm_id': firm_id, 'round': round}}) FILTER (WHERE {w}))[1:5]"
        for w in rules.values()) + f" FROM {view}").fetchall()[0]
    lines = [f"column {col!r}, rule {rule}: {found[2 * k]} rows, e.g. {found[2 * k + 1]}"
             for k, (col, rule) in enumerate(rules) if found[2 * k]]
    if lines:
        raise ValidationError(f"{cfg['study']}: the analysis table fails validation:\n  " + "\n  ".join(lines))


def notebook_tables(con, cfg: dict, view: str, flow_period: str) -> dict[str, pd.DataFrame]:
    """The construct notebook's two tables (:func:`pipeline.construct.notebook_tables`) by SQL
    group-bys over ``view``: the share of planned interviews held by arm and round, and the first
    outcome's means by owner gender, arm and round."""
    column = ident(first_outcome(cfg, flow_period))
    owner = "CASE female_owner WHEN 1.0 THEN 'women' WHEN 0.0 THEN 'men' ELSE 'not recorded' END"
    held = con.execute(f"SELECT arm, round, sum(interviewed) / count(*) AS share FROM {view} GROUP BY ALL").df()
    means = con.execute(f"SELECT {owner} AS owner, arm, round, fsum({column}) / count({column}) AS mean "
                        f"FROM {view} GROUP BY ALL HAVING count({column}) > 0").df()
    return {"interviews_by_arm": held.pivot(index="arm", columns="round", values="share").sort_index()
            .sort_index(axis=1).round(3),
            "outcome_means": means.pivot(index=["owner", "arm"], columns="round", values="mean").sort_index()
            .sort_index(axis=1).round(1)}


def construct_frame(clean: pd.DataFrame, cfg: dict, params: dict, flow_period: str, *, checked: bool = True
                    ) -> pd.DataFrame:
    """:func:`pipeline.construct.construct` on DuckDB for a clean table in memory (the tests'
    entry point): the same analysis table."""
    with connection() as con:
        con.register("clean_frame", clean)
        con.execute("CREATE TEMP VIEW clean AS SELECT * FROM clean_frame")
        con.execute(f"CREATE TEMP TABLE analysis AS {analysis_sql(con, cfg, params, flow_period)}")
        if checked:
            check_analysis(con, cfg, "analysis", flow_period)
        return con.execute("SELECT * FROM analysis").df()


def construct_parquet(clean_path, analysis_path, cfg: dict, params: dict, flow_period: str, *,
                      memory_limit: str | None = None, temp_directory: str | None = None) -> dict:
    """Out of core: the clean parquet file constructed into ``analysis_path`` (parquet, written by
    DuckDB, streaming). Returns the stage summary's counts, the notebook's tables, the per-firm
    text columns and the table's first rows (for the identifier scan)."""
    with connection(memory_limit, temp_directory) as con:
        con.execute(f"CREATE TEMP VIEW clean AS SELECT * FROM read_parquet({literal(str(clean_path))})")
        con.execute(f"COPY ({analysis_sql(con, cfg, params, flow_period)}) TO {literal(str(analysis_path))} "
                    f"(FORMAT parquet)")
        con.execute(f"CREATE TEMP VIEW analysis AS SELECT * FROM read_parquet({literal(str(analysis_path))})")
        check_analysis(con, cfg, "analysis", flow_period)
        rows, firms, interviews, attrited = con.execute(
            "SELECT count(*), count(DISTINCT firm_id), sum(interviewed), sum(attrited) FROM analysis").fetchall()[0]
        # one row per firm: its first round (the pandas path's drop_duplicates("firm_id"))
        con.execute("CREATE TEMP TABLE firm_rows AS SELECT firm_id, arm, stratum, cluster_id, female_owner "
                    "FROM analysis QUALIFY row_number() "
                    "OVER (PARTITION BY firm_id ORDER BY round) = 1")
        female, known = con.execute("SELECT sum(female_owner) / count(female_owner), count(female_owner) / count(*) "
                                    "FROM firm_rows").fetchall()[0]
        by_arm = dict(con.execute("SELECT arm, count(*) FROM firm_rows GROUP BY 1 ORDER BY 1").fetchall())
        factor = (con.execute(f"SELECT {number(FACTOR_COLUMN)} FROM clean LIMIT 1").fetchall()[0][0]
                  if FACTOR_COLUMN in [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE clean)").fetchall()]
                  else None)
        return {"counts": {"rows": int(rows), "firms": int(firms), "interviews": int(interviews or 0),
                           "attrited_firm_rounds": int(attrited or 0),
                           "female_owner_share": float("nan") if female is None else float(female),
                           "female_owner_known_share": float(known), "firms_by_arm": by_arm},
                "usd_ppp_per_lcu": factor,
                "tables": notebook_tables(con, normalise(cfg), "analysis", flow_period),
                "firm_text": con.execute("SELECT firm_id, arm, stratum, cluster_id FROM firm_rows").df(),
                "head": con.execute("SELECT * FROM analysis LIMIT 10000").df()}
