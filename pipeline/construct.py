"""Construct: the canonical analysis table, one row per enterprise x planned survey round.

Outcomes in one unit (USD PPP per ``flow_period``), the business-practices (skills) index
with its area sub-scores (McKenzie & Woodruff 2017), capital access, the female-owner
indicator, assignment indicators for the skills and capital interventions and one 0/1 column
``arm_<slug>`` per treatment arm (for published arm-by-arm specifications), take-up, the
baseline value of each outcome (0 plus a missing dummy where absent: ANCOVA keeps the firm) --
from the baseline round, or from a baseline column in the same row (``pre_<outcome>``) --, the
study's covariates under their canonical names, and an attrition flag for planned interviews
that did not happen (absent rows, and rows the survey marks as not interviewed).

The table is validated (pandera) before anything is written. With ``clean.engine: duckdb`` (the
clean stage's switch, in params.yaml or the study's ``clean_params``) the stage runs the same rules
as SQL over the clean parquet file (:mod:`pipeline.construct_duckdb`): the table never enters pandas.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.compute        # binds pyarrow too

from pipeline.codes import codes_in, map_distinct, norm_codes
from pipeline.io import atomic_path, param, write_named_outputs
from pipeline.stage_context import StageContext
from pipeline.privacy import assert_no_identifiers
from pipeline.schemas import ValidationError, validate_frame  # noqa: F401
from pipeline.study import (FACTOR_COLUMN, analysis_column, assign_arms, effective_clean_params, flow_column,
                            load_study, normalise)  # noqa: F401


class ConstructError(ValueError):
    """The clean data contradicts the study design; the message names the units."""


def _firm_level(df: pd.DataFrame, unit: str, column: str, study: str, what: str, shown: str | None = None) -> pd.Series:
    """A per-firm attribute that must not vary across rounds (assignment, strata, gender): per unit
    (sorted) its value, from the unit's first row where both are present. Integer codes and one
    comparison per row instead of a groupby (``nunique`` and ``first``: the same result, a third of the time)."""
    ids, values = df[unit], df[column]
    present = (ids.notna() & values.notna()).to_numpy()
    ids, values = ids[present], values[present]
    unit_codes, units = pd.factorize(ids, sort=True)
    value_codes, _ = pd.factorize(values)
    first = np.full(len(units), len(unit_codes), dtype=np.intp)     # each unit's first row: np.unique's
    np.minimum.at(first, unit_codes, np.arange(len(unit_codes)))      # return_index (codes 0..U-1), no sort
    varying = np.unique(unit_codes[value_codes != value_codes[first][unit_codes]])
    if len(varying):
        raise ConstructError(f"{study}: {what} ({shown or column}) differs across rounds for {len(varying)} "
                             f"units, e.g. {units[varying[:5]].tolist()}")
    return values.iloc[first].set_axis(units.rename(unit))       # the column's dtype kept


def reference_arm(cfg: dict):
    """The comparison arm: the first arm with neither skills nor capital (no ``arm_`` column)."""
    for key, arm in normalise(cfg)["treatment"]["arms"].items():
        if not arm["skills"] and not arm["capital"]:
            return key
    return None


def hashed_unit_id(cfg: dict) -> bool:
    """Whether the (normalised) study's unit id is an identifier replaced by a salted hash."""
    return cfg["unit_id"] in cfg.get("hash_identifiers", [])


def firm_table(clean: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Assignment, strata, cluster and owner gender: one row per enterprise."""
    cfg = normalise(cfg)
    units = _unit_index(clean, cfg)
    return pd.DataFrame({**_assignment_columns(clean, cfg, units),     # one frame, not a column set at a time
                         "stratum": _stratum_labels(clean, cfg, units),
                         "cluster_id": _cluster_ids(clean, cfg, units),
                         "female_owner": _female_owner(clean, cfg, units)}, index=units)


def _unit_index(clean: pd.DataFrame, cfg: dict) -> pd.Index:
    """The enterprises of the clean table, sorted (in first-seen order when the id is hashed)."""
    unit = cfg["unit_id"]
    ids = clean[unit].dropna().unique()
    # A unit id replaced by a salted hash at ingest would sort in an order that follows the
    # per-checkout salt, and so would the analysis table's rows and the bootstrap and permutation
    # draws indexed by them (issue 8): such units keep the clean table's (source file and row) order.
    # numpy sorts integer ids as sorted() does (same order and Index dtype), without Python's sort
    is_int = isinstance(ids, np.ndarray) and ids.dtype.kind in "iu"
    return pd.Index(ids if hashed_unit_id(cfg) else np.sort(ids) if is_int else sorted(ids), name=unit)


def _assignment_columns(clean: pd.DataFrame, cfg: dict, units: pd.Index) -> dict[str, pd.Series]:
    """Per firm: arm label, treat_skills, treat_capital and one 0/1 ``arm_<slug>`` per non-reference arm."""
    unit, study = cfg["unit_id"], cfg["study"]
    keys, reasons = assign_arms(clean, cfg)
    if (reasons != "").any():
        raise ConstructError(f"{study}: rows without a treatment arm in the clean table "
                             f"({reasons[reasons != ''].iloc[0]}); run the clean stage")
    treatment = cfg["treatment"]
    shown = treatment["column"] or "/".join(treatment["dummies"])
    arm = _firm_level(clean.assign(_arm_key=keys), unit, "_arm_key", study, "treatment arm", shown).reindex(units)
    arms = treatment["arms"]
    columns = {"arm": map_distinct(arm, lambda a: arms[a]["label"]),
               "treat_skills": map_distinct(arm, lambda a: arms[a]["skills"]).astype("int8"),
               "treat_capital": map_distinct(arm, lambda a: arms[a]["capital"]).astype("int8")}
    reference = reference_arm(cfg)
    for key, spec in arms.items():
        if key != reference:
            columns[f"arm_{spec['slug']}"] = (arm == key).astype("int8")
    return columns


def _stratum_labels(clean: pd.DataFrame, cfg: dict, units: pd.Index) -> pd.Series | str:
    """Per firm: its stratum as text ("district=3|sector=retail"), or "all" without strata."""
    unit, study = cfg["unit_id"], cfg["study"]
    strata = [_firm_level(clean, unit, s, study, "stratum").rename(s) for s in cfg.get("strata", [])]
    if not strata:
        return "all"
    parts = pd.concat(strata, axis=1).reindex(units)
    blank = parts.isna().any(axis=1)
    if blank.any():
        # a "nan" stratum would pool unrelated firms into one stratum of the design
        rows = clean.loc[clean[unit].isin(parts.index[blank]), ["source_file", "source_row"]]
        raise ConstructError(f"{study}: stratum ({', '.join(parts.columns[parts.isna().any()])}) is missing in "
                             f"every round for {int(blank.sum())} units, e.g. {parts.index[blank][:5].tolist()} "
                             f"(rows {rows.head(5).to_dict('records')})")
    # "district=3|sector=retail"
    labelled = [f"{c}=" + format_ids(parts[c]) for c in parts.columns]
    stratum = labelled[0]
    for part in labelled[1:]:
        stratum = stratum + "|" + part
    return stratum.astype("str")


def _cluster_ids(clean: pd.DataFrame, cfg: dict, units: pd.Index) -> pd.Series:
    """Per firm: its cluster as text (the firm itself without a configured cluster)."""
    unit, study = cfg["unit_id"], cfg["study"]
    if not cfg.get("cluster"):
        return format_ids(units.to_series(index=units))
    cluster = _firm_level(clean, unit, cfg["cluster"], study, "cluster").reindex(units)
    if cluster.isna().any():
        # one "missing" cluster would pool unrelated firms into a single cluster
        raise ConstructError(f"{study}: cluster ({cfg['cluster']}) is missing in every round for "
                             f"{int(cluster.isna().sum())} units, e.g. {cluster.index[cluster.isna()][:5].tolist()}")
    return format_ids(cluster)


def _female_owner(clean: pd.DataFrame, cfg: dict, units: pd.Index) -> pd.Series | float:
    """Per firm: 1.0 for a woman owner, 0.0 for a man, NaN unknown (or the study's one value)."""
    unit, study = cfg["unit_id"], cfg["study"]
    female = cfg["female_owner"]
    if "value" in female:
        return np.nan if female["value"] is None else float(female["value"])
    codes = clean.assign(_sex=norm_codes(clean[female["column"]]))
    sex = _firm_level(codes, unit, "_sex", study, "owner gender", female["column"]).reindex(units)
    # sex holds normalised codes already (norm_code is idempotent)
    is_female = codes_in(sex, female["female_codes"])
    if female.get("male_codes") is not None:
        known = codes_in(sex, set(female["female_codes"]) | set(female["male_codes"]))
    else:
        known = sex.notna()
    return is_female.astype("float64").where(known.astype(bool))


def _fmt(value) -> str:
    """Stable text for ids: 12.0 -> '12'."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def format_ids(values: pd.Series, na_value: str = "nan") -> pd.Series:
    """:func:`_fmt` over a column; vectorised for numeric ids (ids are distinct by nature, so
    computing once per distinct value would still be once per firm)."""
    if pd.api.types.is_integer_dtype(values) and not values.isna().any():
        text = pyarrow.compute.cast(pyarrow.array(values.to_numpy()), pyarrow.large_string())  # str(int), 8x numpy
        return pd.Series(pd.array(text, dtype="str"), index=values.index)
    if pd.api.types.is_float_dtype(values):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        if not (np.abs(numbers[np.isfinite(numbers)]) < 2 ** 53).all():
            return map_distinct(values, _fmt, na_value=na_value)   # beyond exact integers
        integral = np.isfinite(numbers) & (np.mod(numbers, 1) == 0)
        as_int = np.where(integral, numbers, 0).astype("int64").astype(str)
        text = np.where(integral, as_int, numbers.astype(str))     # numpy's float text = str(float)
        text = np.where(np.isnan(numbers), na_value, text)
        return pd.Series(text.astype(object), index=values.index, dtype="str")
    return map_distinct(values, _fmt, na_value=na_value)


def round_numbers(values: pd.Series, cfg: dict) -> pd.Series:
    """The analysis table's ``round``: the round code where codes are integers, else its position
    in ``rounds`` (text codes such as ``baseline`` / ``endline``)."""
    codes = norm_codes(values)
    if map_distinct(codes, lambda c: isinstance(c, int), na_value=False).all():
        return codes.astype("int64")
    rounds = cfg.get("rounds") or sorted(set(codes.dropna()), key=str)
    return map_distinct(codes, rounds.index).astype("int64")


def skills_scores(clean: pd.DataFrame, spec: dict, min_answered_share: float) -> pd.DataFrame:
    """Share of business practices used, overall and per area (yes=1, no=0, missing skipped).

    A score is missing when fewer than ``min_answered_share`` of its items were answered.
    """
    groups = {"skills_index": spec["columns"], **{f"skills_{a}": cols for a, cols in spec.get("areas", {}).items()}}
    every = list(dict.fromkeys(c for cols in groups.values() for c in cols))
    numbers = clean[every]                        # converted once for all the scores
    if not all(pd.api.types.is_numeric_dtype(d) for d in numbers.dtypes):   # to_numeric keeps numbers as they are
        numbers = numbers.apply(pd.to_numeric, errors="coerce")
    numbers = numbers.astype("float64")
    scores = {}
    for name, cols in groups.items():
        items = numbers[cols]
        answered = np.count_nonzero(~np.isnan(items.to_numpy()), axis=1)
        scores[name] = items.mean(axis=1).where(answered >= min_answered_share * len(cols))
    return pd.DataFrame(scores, index=clean.index)       # one frame, not a column set at a time


def construct(clean: pd.DataFrame, cfg: dict, params: dict, flow_period: str, *, checked: bool = True
              ) -> pd.DataFrame:
    """The analysis table of a clean table; ``checked=False`` (the simulation's draws after the
    first) skips the pandera validation of the result, nothing else."""
    cfg = normalise(cfg)
    study = cfg["study"]
    firms = firm_table(clean, cfg)
    key = "_unit"  # the raw unit id, whatever the study calls it; becomes firm_id (text) at the end
    rows, pre_columns = _observed_rows(clean, cfg, params, flow_period, key)
    table = _planned_grid(firms, rows, cfg, key)
    baseline = baseline_round_number(cfg)
    table["followup"] = table["round"] != baseline if baseline is not None else True
    added: dict[str, pd.Series] = {}
    if baseline is not None:
        value_cols = [c for c in rows.columns if c not in (key, "round", "interviewed")]
        added.update(_baseline_round_values(table, value_cols, baseline, key))
    added.update(_baseline_column_values(clean, cfg, table, pre_columns, key))
    table = table.drop(columns=[c for c in added if c in table.columns])
    table = pd.concat([table, pd.DataFrame(added, index=table.index)], axis=1)
    table.insert(0, "study", study)
    table = _sorted_and_ordered(table, cfg, firms, key)
    if checked:
        validate_frame(table, analysis_schema(cfg, table, flow_period), study, "analysis", ["firm_id", "round"])
    return table


def _conversion_factor(clean: pd.DataFrame, cfg: dict) -> pd.Series | float:
    """USD PPP per unit of the study's currency: the clean table's column, or the configured value."""
    if FACTOR_COLUMN in clean.columns:
        return pd.to_numeric(clean[FACTOR_COLUMN], errors="coerce").astype("float64")
    if cfg["usd_ppp_per_lcu"]["value"] is not None and cfg["usd_ppp_per_lcu"]["converts_to"] is None:
        return float(cfg["usd_ppp_per_lcu"]["value"])
    raise ConstructError(f"{cfg['study']}: the clean table has no {FACTOR_COLUMN} column (the ingest stage adds it)")


def _observed_rows(clean: pd.DataFrame, cfg: dict, params: dict, flow_period: str, key: str
                   ) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """(the analysis columns of each clean row, keyed by ``key`` and round; the outcomes' baseline
    columns recorded in the same row, ``pre_<outcome>``, by analysis column)."""
    unit, round_col = cfg["unit_id"], cfg.get("round")
    factor = _conversion_factor(clean, cfg)
    currency = str(cfg.get("currency", "lcu")).lower()
    columns = {key: clean[unit], "round": round_numbers(clean[round_col], cfg) if round_col else 0}
    interviewed = (clean["interviewed"].astype("int8") if "interviewed" in clean.columns
                   else pd.Series(1, index=clean.index, dtype="int8"))
    pre_columns = {}
    for name, out in cfg["outcomes"].items():
        base = flow_column(name, out, currency, flow_period)
        new = analysis_column(name, out, flow_period)
        scale = factor if out.get("money", True) else 1.0   # money: false: not in a currency
        columns[new] = clean[f"{base}_w"] * scale
        columns[f"{new}_unwinsorised"] = clean[base] * scale
        if out["baseline_column"]:
            pre_columns[new] = clean[f"{base}_pre_w"] * scale
            pre_columns[f"{new}_unwinsorised"] = clean[f"{base}_pre"] * scale
    columns["business_closed"] = clean["business_closed"].astype("float64").where(interviewed == 1)
    rows = pd.DataFrame(columns)                        # one frame, not a column set at a time
    if cfg.get("skills_index"):
        min_answered_share = float(param(params, "construct", "skills_min_answered_share"))
        rows = rows.join(skills_scores(clean, cfg["skills_index"], min_answered_share))
    if cfg.get("credit_access"):
        rows["credit_access"] = _numbers(clean[cfg["credit_access"]])
    for kind, col in (cfg.get("takeup") or {}).items():
        rows[f"takeup_{kind}"] = _numbers(clean[col])
    for canonical, col in cfg.get("covariates", {}).items():
        rows[canonical] = _numbers(clean[col])
    if cfg.get("weight"):
        rows["weight"] = _numbers(clean[cfg["weight"]])
    rows["interviewed"] = interviewed.to_numpy()
    return rows, pre_columns


def _numbers(values: pd.Series) -> pd.Series:
    """A column as float64, with anything not a number missing."""
    return pd.to_numeric(values, errors="coerce").astype("float64")


def _planned_grid(firms: pd.DataFrame, rows: pd.DataFrame, cfg: dict, key: str) -> pd.DataFrame:
    """Every firm x planned round, with its observed row (if any), interviewed / attrited flags and
    the firm's columns."""
    planned = planned_rounds(cfg, lambda: sorted(rows["round"].unique().tolist()))
    grid = pd.MultiIndex.from_product([firms.index, planned], names=[key, "round"]).to_frame(index=False)
    table = grid.merge(rows, on=[key, "round"], how="left", validate="one_to_one")
    table["interviewed"] = table["interviewed"].fillna(0).astype("int8")
    table["attrited"] = (1 - table["interviewed"]).astype("int8")
    return table.merge(firms.rename_axis(key), left_on=key, right_index=True, how="left")


def planned_rounds(cfg: dict, observed) -> list:
    """The planned rounds as the analysis table numbers them: the configured ``rounds``, else
    ``observed()`` (the distinct rounds of the clean table, sorted)."""
    return round_numbers(pd.Series(cfg["rounds"], dtype="object"), cfg).tolist() if cfg.get("rounds") else observed()


def baseline_round_number(cfg: dict):
    """The baseline round as the analysis table numbers it, or None."""
    baseline = cfg.get("baseline_round")
    return round_numbers(pd.Series([baseline], dtype="object"), cfg).iloc[0] if baseline is not None else None


def _baseline_round_values(table: pd.DataFrame, value_cols: list[str], baseline, key: str) -> dict[str, pd.Series]:
    """``<col>_bl`` (0 where missing) and ``<col>_bl_missing`` from each firm's baseline-round row."""
    added: dict[str, pd.Series] = {}
    bl = table.loc[table["round"] == baseline, [key] + value_cols].set_index(key)
    aligned = bl.reindex(table[key].to_numpy()).set_axis(table.index)   # one lookup for every column
    for col in value_cols:
        values = aligned[col]
        if values.dtype == np.float64:           # numpy for the usual float column: the same values, less overhead
            v = values.to_numpy()
            missing = np.isnan(v)
            added[f"{col}_bl_missing"] = pd.Series(missing.astype("int8"), index=table.index)
            added[f"{col}_bl"] = pd.Series(np.where(missing, 0.0, v), index=table.index)
            continue
        added[f"{col}_bl_missing"] = values.isna().astype("int8")
        added[f"{col}_bl"] = values.fillna(0.0)
    return added


def _baseline_column_values(clean: pd.DataFrame, cfg: dict, table: pd.DataFrame,
                            pre_columns: dict[str, pd.Series], key: str) -> dict[str, pd.Series]:
    """``<col>_bl`` (0 where missing) and ``<col>_bl_missing`` from a baseline recorded in every row."""
    added: dict[str, pd.Series] = {}
    for col, values in pre_columns.items():
        # a baseline recorded in every row (acz's pre_<outcome>): one value per firm
        per_firm = _firm_level(pd.DataFrame({key: clean[cfg["unit_id"]], col: values}), key, col, cfg["study"],
                               "baseline value")
        mapped = table[key].map(per_firm)
        added[f"{col}_bl_missing"] = mapped.isna().astype("int8")
        added[f"{col}_bl"] = mapped.fillna(0.0)
    return added


def _sorted_and_ordered(table: pd.DataFrame, cfg: dict, firms: pd.DataFrame, key: str) -> pd.DataFrame:
    """``firm_id`` in place of ``key``, rows by firm and round, the design columns first."""
    table["firm_id"] = format_ids(table[key])
    if hashed_unit_id(cfg):         # units in firm_table's order, not by their hash (see there)
        table[key] = pd.Categorical(table[key], categories=firms.index, ordered=True)
    table = table.sort_values([key, "round"], kind="stable").drop(columns=[key]).reset_index(drop=True)
    return table[column_order(list(table.columns))].copy()  # .copy(): one block per dtype


def column_order(columns: list[str]) -> list[str]:
    """The analysis table's columns: the design columns first, then the others as they come."""
    first = ["study", "firm_id", "round", "followup", "interviewed", "attrited", "arm", "treat_skills",
             "treat_capital", "female_owner", "stratum", "cluster_id"]
    first += [c for c in columns if c.startswith("arm_")]
    return first + [c for c in columns if c not in first]


def first_outcome(cfg: dict, flow_period: str) -> str:
    """The analysis column of the study's first configured outcome (the notebook's first table)."""
    name, out = next(iter(normalise(cfg)["outcomes"].items()))
    return analysis_column(name, out, flow_period)


def outcome_means(analysis: pd.DataFrame, cfg: dict, flow_period: str) -> pd.DataFrame:
    """Means of the study's first configured outcome by owner gender, arm and round (the first
    table a reader checks); owners whose gender is not recorded form their own row."""
    column = first_outcome(cfg, flow_period)
    owner = analysis["female_owner"].map({1.0: "women", 0.0: "men"}).fillna("not recorded")
    return analysis.assign(owner=owner).pivot_table(index=["owner", "arm"], columns="round", values=column,
                                                    aggfunc="mean").round(1)


def analysis_schema(cfg: dict, table: pd.DataFrame, flow_period: str):
    """The analysis table's contract (pandera)."""
    import pandera.pandas as pa

    cfg = normalise(cfg)
    binary = pa.Check.isin([0, 1])
    columns = {
        "study": pa.Column(str, nullable=False),
        "firm_id": pa.Column(str, nullable=False),
        "round": pa.Column("int64", nullable=False),
        "followup": pa.Column(bool, nullable=False),
        "stratum": pa.Column(str, nullable=False),
        "cluster_id": pa.Column(str, nullable=False),
        "female_owner": pa.Column("float64", checks=binary, nullable=True),
    }
    for flag in ("interviewed", "attrited", "treat_skills", "treat_capital",
                 *[c for c in table.columns if c.startswith("arm_")]):
        columns[flag] = pa.Column("int8", checks=binary, nullable=False)
    for name, out in cfg["outcomes"].items():
        new = analysis_column(name, out, flow_period)
        checks = [] if out.get("allow_negative") else [pa.Check.ge(0)]
        for col in (new, f"{new}_unwinsorised", f"{new}_bl", f"{new}_unwinsorised_bl"):
            if col in table.columns or col in (new, f"{new}_unwinsorised"):
                columns[col] = pa.Column("float64", checks=checks, nullable=True)
    for col in table.columns:
        if col.startswith("skills_") and not col.endswith("_missing"):
            columns[col] = pa.Column("float64", checks=pa.Check.in_range(0, 1), nullable=True)
    if "weight" in table.columns:
        columns["weight"] = pa.Column("float64", checks=pa.Check.gt(0), nullable=True)
    return pa.DataFrameSchema(columns, unique=["firm_id", "round"], strict=False, name=f"{cfg['study']} analysis")


def notebook_tables(analysis: pd.DataFrame, cfg: dict, flow_period: str) -> dict[str, pd.DataFrame]:
    """The construct notebook's two tables: the share of planned interviews held by arm and round,
    and :func:`outcome_means`."""
    return {"interviews_by_arm": analysis.pivot_table(index="arm", columns="round", values="interviewed",
                                                      aggfunc="mean").round(3),
            "outcome_means": outcome_means(analysis, cfg, flow_period)}


def clean_setting(cfg: dict, context: StageContext, key: str):
    """A ``clean:`` key the construct stage reads (``engine``, ``duckdb_memory_limit``: extra keys of
    the stage), or the study's ``clean_params`` value where it sets one."""
    return param(effective_clean_params(cfg, {key: context.extra[key]}), "clean", key)


def run(context: StageContext) -> dict:
    """The construct stage: clean table -> canonical analysis table (all or nothing)."""
    cfg = dict(context.config)
    flow_period = context.extra["flow_period"]
    if clean_setting(cfg, context, "engine") == "duckdb":
        return run_out_of_core(context, cfg, flow_period)
    clean = pd.read_parquet(context.inputs["clean.parquet"])
    table = construct(clean, cfg, dict(context.params), flow_period)
    firms = table.drop_duplicates("firm_id")
    counts = {
        "rows": len(table),
        "firms": int(table["firm_id"].nunique()),
        "interviews": int(table["interviewed"].sum()),
        "attrited_firm_rounds": int(table["attrited"].sum()),
        "female_owner_share": float(firms["female_owner"].mean()),
        "female_owner_known_share": float(firms["female_owner"].notna().mean()),
        "firms_by_arm": firms["arm"].value_counts().sort_index().to_dict(),
    }
    factor = float(clean[FACTOR_COLUMN].iloc[0]) if FACTOR_COLUMN in clean.columns else None
    summary = stage_summary(context, cfg, counts, factor)
    assert_no_identifiers(table, cfg=cfg, source=f"{cfg['study']} analysis table")
    write_named_outputs(context.outputs, {
        "analysis.parquet": table,
        "construct_summary.json": summary,
    })
    return {"config": cfg, "analysis": table, "summary": summary, **notebook_tables(table, cfg, flow_period)}


def run_out_of_core(context: StageContext, cfg: dict, flow_period: str) -> dict:
    """The construct stage on DuckDB: the analysis table streamed to parquet by DuckDB (into a
    temporary file renamed into place once the summary is written). The returned ``analysis`` is
    None (it may not fit in memory). The identifier scan reads the per-firm text columns (firm_id,
    arm, stratum, cluster_id: one row per firm, the same shares as over firm x round) and the
    table's first 10,000 rows (column names and numbers)."""
    from pipeline import construct_duckdb

    with atomic_path(context.outputs["analysis.parquet"]) as analysis_tmp:
        result = construct_duckdb.construct_parquet(
            context.inputs["clean.parquet"], analysis_tmp, cfg, dict(context.params), flow_period,
            memory_limit=clean_setting(cfg, context, "duckdb_memory_limit"))
        for name in ("firm_text", "head"):
            assert_no_identifiers(result[name], cfg=cfg, source=f"{cfg['study']} analysis table")
        summary = stage_summary(context, cfg, result["counts"], result["usd_ppp_per_lcu"])
        write_named_outputs({"construct_summary.json": context.outputs["construct_summary.json"]},
                            {"construct_summary.json": summary})
    return {"config": cfg, "analysis": None, "summary": summary, **result["tables"]}


def stage_summary(context: StageContext, cfg: dict, counts: dict, factor: float | None) -> dict:
    """construct_summary.json: the table's counts, the arms, the conversion factor (the clean
    table's first row's, else the configured one) and the configuration the stage ran with."""
    arms = {spec["label"]: {"skills": spec["skills"], "capital": spec["capital"],
                            "column": None if key == reference_arm(cfg) else f"arm_{spec['slug']}"}
            for key, spec in cfg["treatment"]["arms"].items()}
    return {
        "study": cfg["study"],
        **{k: v for k, v in counts.items() if k != "firms_by_arm"},
        "arms": arms,
        "firms_by_arm": counts["firms_by_arm"],
        "covariates": sorted(cfg["covariates"]),
        "controls": list(cfg["controls"]),
        "currency": cfg.get("currency"),
        "usd_ppp_per_lcu": factor if factor is not None else cfg["usd_ppp_per_lcu"]["value"],
        "conversion_source": cfg["usd_ppp_per_lcu"]["source"],
        "resolved_config": context.resolved_config(),
    }
