"""Construct: the canonical analysis table, one row per enterprise x planned survey round.

Outcomes in one unit (USD PPP per ``flow_period``), the business-practices (skills) index
with its four area sub-scores (McKenzie & Woodruff 2017), capital access, the female-owner
indicator, assignment indicators for the skills and capital interventions, take-up, the
baseline value of each outcome (0 plus a missing dummy where absent: ANCOVA keeps the firm),
and an attrition flag for planned interviews that did not happen.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.io import write_json, write_parquet
from pipeline.study import load_study


class ConstructError(ValueError):
    """The clean data contradicts the study design; the message names the units."""


def _firm_level(df: pd.DataFrame, unit: str, column: str, study: str, what: str) -> pd.Series:
    """A per-firm attribute that must not vary across rounds (assignment, strata, gender)."""
    values = df[[unit, column]].dropna()
    n_distinct = values.groupby(unit)[column].nunique()
    varying = n_distinct[n_distinct > 1]
    if len(varying):
        raise ConstructError(f"{study}: {what} ({column}) differs across rounds for {len(varying)} "
                             f"units, e.g. {varying.index[:5].tolist()}")
    return values.groupby(unit)[column].first()


def firm_table(clean: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """Assignment, strata, cluster and owner gender: one row per enterprise."""
    unit, study = cfg["unit_id"], cfg["study"]
    units = pd.Index(sorted(clean[unit].dropna().unique()), name=unit)
    firms = pd.DataFrame(index=units)
    arm = _firm_level(clean, unit, cfg["treatment"]["column"], study, "treatment arm")
    arms = {int(k): v for k, v in cfg["treatment"]["arms"].items()}
    firms["arm"] = arm.map(lambda a: arms[int(a)].get("label", str(a)))
    firms["treat_skills"] = arm.map(lambda a: int(arms[int(a)].get("skills", 0))).astype("int8")
    firms["treat_capital"] = arm.map(lambda a: int(arms[int(a)].get("capital", 0))).astype("int8")
    strata = [_firm_level(clean, unit, s, study, "stratum").rename(s) for s in cfg.get("strata", [])]
    if strata:
        parts = pd.concat(strata, axis=1).reindex(units)
        firms["stratum"] = parts.apply(lambda r: "|".join(f"{c}={_fmt(v)}" for c, v in r.items()), axis=1)
    else:
        firms["stratum"] = "all"
    if cfg.get("cluster"):
        firms["cluster_id"] = _firm_level(clean, unit, cfg["cluster"], study, "cluster").reindex(units).map(_fmt)
    else:
        firms["cluster_id"] = [_fmt(u) for u in units]
    female = cfg.get("female_owner") or {}
    if "value" in female:
        firms["female_owner"] = float(female["value"])
    else:
        sex = _firm_level(clean, unit, female["column"], study, "owner gender").reindex(units)
        firms["female_owner"] = sex.isin(female["female_codes"]).astype("float64").where(sex.notna())
    return firms


def _fmt(value) -> str:
    """Stable text for ids: 12.0 -> '12'."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def skills_scores(clean: pd.DataFrame, spec: dict, min_answered_share: float) -> pd.DataFrame:
    """Share of business practices used, overall and per area (yes=1, no=0, missing skipped).

    A score is missing when fewer than ``min_answered_share`` of its items were answered.
    """
    out = pd.DataFrame(index=clean.index)
    groups = {"skills_index": spec["columns"], **{f"skills_{a}": cols for a, cols in spec.get("areas", {}).items()}}
    for name, cols in groups.items():
        items = clean[cols].apply(pd.to_numeric, errors="coerce").astype("float64")
        answered = items.notna().sum(axis=1)
        score = items.mean(axis=1)
        out[name] = score.where(answered >= min_answered_share * len(cols))
    return out


def construct(clean: pd.DataFrame, cfg: dict, params: dict, flow_period: str) -> pd.DataFrame:
    unit, round_col = cfg["unit_id"], cfg.get("round")
    firms = firm_table(clean, cfg)
    currency = str(cfg.get("currency", "lcu")).lower()
    factor = float(cfg.get("usd_ppp_per_lcu", 1.0))
    key = "_unit"  # the raw unit id, whatever the study calls it; becomes firm_id (text) at the end
    rows = pd.DataFrame({key: clean[unit], "round": clean[round_col].astype("int64") if round_col else 0})
    for name, out in cfg["outcomes"].items():
        base = f"{name}_{currency}_{flow_period}" if out.get("flow", True) else f"{name}_{currency}"
        new = f"{name}_usd_ppp_{flow_period}" if out.get("flow", True) else f"{name}_usd_ppp"
        rows[new] = clean[f"{base}_w"] * factor
        rows[f"{new}_unwinsorised"] = clean[base] * factor
    rows["business_closed"] = clean["business_closed"].astype("float64")
    if cfg.get("skills_index"):
        rows = rows.join(skills_scores(clean, cfg["skills_index"], float(params.get("skills_min_answered_share", 0.5))))
    if cfg.get("credit_access"):
        rows["credit_access"] = pd.to_numeric(clean[cfg["credit_access"]], errors="coerce").astype("float64")
    for kind, col in (cfg.get("takeup") or {}).items():
        rows[f"takeup_{kind}"] = pd.to_numeric(clean[col], errors="coerce").astype("float64")
    for canonical, col in cfg.get("covariates", {}).items():
        rows[canonical] = pd.to_numeric(clean[col], errors="coerce").astype("float64")
    if cfg.get("weight"):
        rows["weight"] = pd.to_numeric(clean[cfg["weight"]], errors="coerce").astype("float64")
    rows["interviewed"] = 1

    planned = cfg.get("rounds") or sorted(rows["round"].unique().tolist())
    grid = pd.MultiIndex.from_product([firms.index, planned], names=[key, "round"]).to_frame(index=False)
    table = grid.merge(rows, on=[key, "round"], how="left", validate="one_to_one")
    table["interviewed"] = table["interviewed"].fillna(0).astype("int8")
    table["attrited"] = (1 - table["interviewed"]).astype("int8")
    table = table.merge(firms.rename_axis(key), left_on=key, right_index=True, how="left")
    baseline = cfg.get("baseline_round")
    table["followup"] = table["round"] != baseline if baseline is not None else True
    if baseline is not None:
        value_cols = [c for c in rows.columns if c not in (key, "round", "interviewed")]
        bl = table.loc[table["round"] == baseline, [key] + value_cols].set_index(key)
        for col in value_cols:
            values = table[key].map(bl[col])
            table[f"{col}_bl_missing"] = values.isna().astype("int8")
            table[f"{col}_bl"] = values.fillna(0.0)
    table.insert(0, "study", cfg["study"])
    table["firm_id"] = table[key].map(_fmt)
    table = table.sort_values([key, "round"], kind="stable").drop(columns=[key]).reset_index(drop=True)
    first = ["study", "firm_id", "round", "followup", "interviewed", "attrited", "arm", "treat_skills",
             "treat_capital", "female_owner", "stratum", "cluster_id"]
    return table[first + [c for c in table.columns if c not in first]]


def run(study: str, params: dict, flow_period: str) -> dict:
    """The construct stage: clean table -> canonical analysis table."""
    cfg = load_study(study)
    clean = pd.read_parquet(paths.interim_dir(study) / "clean.parquet")
    table = construct(clean, cfg, params, flow_period)
    out = paths.processed_dir(study)
    write_parquet(out / "analysis.parquet", table)
    summary = {
        "study": study,
        "rows": len(table),
        "firms": int(table["firm_id"].nunique()),
        "interviews": int(table["interviewed"].sum()),
        "attrited_firm_rounds": int(table["attrited"].sum()),
        "female_owner_share": float(table.drop_duplicates("firm_id")["female_owner"].mean()),
    }
    write_json(out / "construct_summary.json", summary)
    return {"config": cfg, "analysis": table, "summary": summary}
