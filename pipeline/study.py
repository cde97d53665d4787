"""Study configurations: one YAML file per study in ``studies/`` maps a raw survey onto the
canonical schema (``docs/study_config.md`` documents every key; ``studies/synthetic.yaml`` is
a fully commented example).

* :func:`load_study` / :func:`normalise` -- read (with the base it ``extends:``), check against the
  typed model (:mod:`pipeline.config`) and complete a configuration; every mistake is reported
  with the file and the key;
* :func:`assign_arms` -- the treatment arm of each row, from one categorical column or from
  several 0/1 dummy columns;
* the columns a configuration refers to, the names of outcome columns, the data files.

Shared by the stages elsewhere: survey codes (:mod:`pipeline.codes`), identifiers and pseudonyms
(:mod:`pipeline.privacy`), table schemas (:mod:`pipeline.schemas`), all-or-nothing writing
(:func:`pipeline.io.write_outputs`).
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from pipeline import config, paths
from pipeline.codes import PER_YEAR, codes_in, map_distinct, norm_code, norm_codes, slugify
from pipeline.config import StudyConfigError
from pipeline.io import REPO_ROOT, read_yaml

TEXT_KEYS = ("title", "citation", "data_source", "notes", "description")
FORMATS = {"dta": "dta", "sav": "sav", "zsav": "sav", "csv": "csv", "tsv": "csv", "txt": "csv",
           "xlsx": "xlsx", "xlsm": "xlsx", "parquet": "parquet", "pq": "parquet"}
# columns the pipeline adds to a study's tables (never raw survey answers)
ROW_ID = "_row_id"              # generated unit id where a survey has none (one row = one unit)
FACTOR_COLUMN = "usd_ppp_per_lcu"  # per-row conversion factor written by ingest
PIPELINE_COLUMNS = ("source_file", "source_row", ROW_ID, FACTOR_COLUMN, "interviewed", "business_closed")
# names of the analysis table's own columns (a covariate may not take them)
RESERVED_NAMES = {"study", "firm_id", "round", "followup", "interviewed", "attrited", "arm", "treat_skills",
                  "treat_capital", "female_owner", "stratum", "cluster_id", "weight", "business_closed",
                  "credit_access"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


# ------------------------------------------------------------------------------------------------
# Loading and checking a configuration
# ------------------------------------------------------------------------------------------------
def shown_path(path: Path) -> str:
    """A file as messages name it: relative to the repository where it is inside it."""
    return str(path.relative_to(REPO_ROOT)) if path.resolve().is_relative_to(REPO_ROOT) else str(path)


def read_mapping(path: Path) -> dict:
    """A YAML file that must hold a mapping (an empty file is an empty mapping)."""
    if not path.exists():
        raise StudyConfigError(f"{shown_path(path)}: no such configuration file")
    try:
        data = read_yaml(path)
    except Exception as exc:  # noqa: BLE001 - a YAML syntax error, with the file named
        raise StudyConfigError(f"{shown_path(path)}: not valid YAML ({exc})") from exc
    if not isinstance(data or {}, dict):
        raise StudyConfigError(f"{shown_path(path)}: expected a mapping of keys, got {type(data).__name__}")
    return data or {}


def read_study_file(path: Path) -> dict:
    """A study YAML with its ``extends:`` base (a path relative to the file, e.g.
    ``base/meager.yaml``, itself possibly extending another) merged in: mappings are merged key
    by key, the study overriding; any other value (a list, a number) the study gives replaces the
    base's. The file name must be the ``study:`` name (issue 11: a copied file that kept the old
    name would silently overwrite that study's outputs)."""
    cfg = _with_base(path, ())
    if "study" in cfg and cfg["study"] != path.stem:
        raise StudyConfigError(f"{shown_path(path)}: study: {cfg['study']!r} is not the file's name "
                               f"{path.stem!r}; rename one so that they agree")
    return cfg


def base_files(path: Path) -> list[Path]:
    """The files a study YAML extends, nearest first (for DVC dependencies and their test)."""
    chain: list[Path] = []
    base = read_mapping(path).get("extends")
    while base is not None:
        path = (path.parent / base).resolve()
        chain.append(path)
        base = read_mapping(path).get("extends")
    return chain


def _with_base(path: Path, seen: tuple) -> dict:
    cfg = read_mapping(path)
    base = cfg.pop("extends", None)
    if base is None:
        return cfg
    if not isinstance(base, str):
        raise StudyConfigError(f"{shown_path(path)}: extends: expected the path of a base YAML, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in seen or base_path == path.resolve():
        raise StudyConfigError(f"{shown_path(path)}: extends: {base} extends itself (a cycle)")
    merged = deep_merge(_with_base(base_path, (*seen, path.resolve())), cfg)
    return config.in_model_order(merged, config.StudyConfig)


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` on top: mappings merged recursively, other values replaced."""
    out = dict(base)
    for key, value in override.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = deep_merge(out[key], value) if both else value
    return out


def load_study(study: str | Path) -> dict[str, Any]:
    """Read and check a study configuration by name (``studies/<name>.yaml``) or by path, with
    the base it ``extends:`` merged in (:func:`read_study_file`)."""
    path = Path(study) if str(study).endswith((".yaml", ".yml")) else paths.study_config_path(str(study))
    cfg = read_study_file(path)
    cfg["_path"] = shown_path(path)
    return normalise(cfg)


def normalise(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check a configuration against the model (:class:`pipeline.config.StudyConfig`: keys and
    types), complete it with its defaults, bring every alternative form to one, and check the
    rules that span keys. Idempotent; returns a new dict (the argument is not changed). Stages
    call it on whatever they are given, so a configuration made in code behaves exactly like one
    read from YAML. Keys starting with ``_`` are the pipeline's own (``_path``...)."""
    if cfg.get("_normalised"):
        return cfg
    where = cfg.get("_path") or f"study {cfg.get('study', '?')!r}"
    given = {k: v for k, v in cfg.items() if not str(k).startswith("_")}
    dumped = config.dump(config.validate_study(given, where), given)
    cfg = {k: dumped[k] if k in dumped else copy.deepcopy(v) for k, v in cfg.items()}

    def fail(message: str) -> None:
        raise StudyConfigError(f"{where}: {message}")

    for step in (_normalise_files, _normalise_identifiers, _normalise_design, _normalise_arms,
                 _normalise_female_owner, _normalise_money, _normalise_cleaning, _normalise_analysis):
        step(cfg, fail)
    for key in TEXT_KEYS:
        cfg.setdefault(key, "")
    cfg.setdefault("_path", where)
    cfg["_normalised"] = True
    return cfg


def _normalise_files(cfg: dict, fail) -> None:
    """The raw files: format from the extension where not given, prefixes and renames as lists and mappings."""
    files = []
    for i, entry in enumerate(cfg["files"]):
        fmt = str(entry.get("format") or Path(entry["path"]).suffix.lstrip(".")).lower()
        if fmt not in FORMATS:
            fail(f"files[{i}] ({entry['path']}): format {fmt!r} unknown; expected one of {sorted(set(FORMATS))}")
        entry["format"] = FORMATS[fmt]
        entry.setdefault("sha256", None)
        prefixes = entry.get("strip_group_prefixes", False)
        if prefixes is True:
            prefixes = ["/", "-"]
        elif isinstance(prefixes, str):
            prefixes = [prefixes]
        entry["strip_group_prefixes"] = list(prefixes or [])
        entry["rename"] = dict(entry.get("rename") or {})
        files.append(entry)
    cfg["files"] = files


def _normalise_identifiers(cfg: dict, fail) -> None:
    """Identifiers: the names to drop, the names to replace by a salted hash, the false positives."""
    items = cfg.get("identifiers") or []
    cfg["identifiers"] = [item["column"] for item in items if item.get("action", "drop") == "drop"]
    cfg["hash_identifiers"] = [item["column"] for item in items if item.get("action") == "hash"]
    cfg["not_identifiers"] = list(cfg.get("not_identifiers") or [])
    cfg["not_identifier_patterns"] = list(cfg.get("not_identifier_patterns") or [])
    for pattern in cfg["not_identifier_patterns"]:
        try:
            re.compile(pattern)
        except re.error as exc:
            fail(f"not_identifier_patterns: {pattern!r} is not a regular expression ({exc})")

    cfg["missing_codes"] = {int(k): str(v) for k, v in (cfg.get("missing_codes") or {}).items()}


def _normalise_design(cfg: dict, fail) -> None:
    """Unit id (generated where the survey has none), rounds, strata, cluster, weight."""
    if cfg["unit_id"] is None:
        cfg["unit_id"] = ROW_ID
        cfg["_generated_unit_id"] = True
    cfg.setdefault("_generated_unit_id", cfg["unit_id"] == ROW_ID)
    cfg.setdefault("round", None)
    cfg.setdefault("rounds", None)
    cfg.setdefault("baseline_round", None)
    if cfg["round"] is None and (cfg["rounds"] or cfg["baseline_round"] is not None):
        fail("rounds/baseline_round given but round: null (a single cross-section has neither)")
    if cfg["rounds"] is not None:
        cfg["rounds"] = [norm_code(r) for r in cfg["rounds"]]
    if cfg["baseline_round"] is not None:
        cfg["baseline_round"] = norm_code(cfg["baseline_round"])
        if cfg["rounds"] and cfg["baseline_round"] not in cfg["rounds"]:
            fail(f"baseline_round {cfg['baseline_round']!r} is not one of rounds {cfg['rounds']}")
    cfg.setdefault("submission", None)
    cfg["strata"] = list(cfg.get("strata") or [])
    cfg.setdefault("cluster", None)
    cfg.setdefault("weight", None)


def _normalise_arms(cfg: dict, fail) -> None:
    """The treatment arms, from one categorical column or from 0/1 dummies."""
    cfg["treatment"] = _normalise_treatment(cfg["treatment"], fail)


def _normalise_female_owner(cfg: dict, fail) -> None:
    """The owner's sex: a column with its codes, or one value for the study."""
    female = cfg["female_owner"]
    if "column" not in female and "value" not in female:
        fail("female_owner: required, either {column: ..., female_codes: [...]} or {value: 1} "
             "(value: null where unknown)")
    if "column" in female:
        if not female.get("female_codes"):
            fail("female_owner: female_codes is required with column")
        female["female_codes"] = [norm_code(c) for c in female["female_codes"]]
        if female.get("male_codes") is not None:
            female["male_codes"] = [norm_code(c) for c in female["male_codes"]]


def _normalise_money(cfg: dict, fail) -> None:
    """Outcomes, the recall period and the conversion to USD PPP."""
    outcomes = {}
    for name, spec in cfg["outcomes"].items():
        if not _NAME_RE.match(str(name)):
            fail(f"outcomes.{name}: needs a lower-case name and a column")
        spec.setdefault("money", True)
        if not spec["money"]:   # already transformed (e.g. the authors' log): no period, no currency
            if spec.get("flow"):
                fail(f"outcomes.{name}: money: false outcomes are not money flows (drop flow: true)")
            if str(name) in RESERVED_NAMES or str(name).startswith(("arm_", "takeup_", "skills_")):
                fail(f"outcomes.{name}: a money: false outcome keeps its name in the analysis table, "
                     f"which is taken by a canonical column; choose another")
            spec["flow"] = False
        spec.setdefault("flow", True)
        spec.setdefault("allow_negative", False)
        spec.setdefault("baseline_column", None)
        outcomes[str(name)] = spec
    cfg["outcomes"] = outcomes
    recall = cfg.get("recall_period")
    if any(o["flow"] for o in outcomes.values()):
        if not recall or ("column" not in recall and "value" not in recall):
            fail("recall_period: required for money flows, {column: ..., codes: {...}} or {value: month}")
        if "column" in recall:
            recall["codes"] = {norm_code(k): v for k, v in (recall.get("codes") or {}).items()}
    cfg["recall_period"] = recall or {}
    cfg.setdefault("currency", "LCU")
    factor = cfg.get("usd_ppp_per_lcu", {"value": 1.0})   # none given: a factor of 1, as before
    cfg["usd_ppp_per_lcu"] = _normalise_factor(factor, cfg["recall_period"], fail)


def _normalise_cleaning(cfg: dict, fail) -> None:
    """The cleaning rules: closed businesses, planned interviews not held, ranges, codes, number format."""
    business = cfg.get("business_open")
    if business:
        business["closed_codes"] = [norm_code(c) for c in business.get("closed_codes", [])]
    cfg["business_open"] = business or None
    ni = cfg.get("not_interviewed")
    if ni:
        if not (("when_all_missing" in ni) ^ ("column" in ni and "codes" in ni)):
            fail("not_interviewed: expected {when_all_missing: [columns]} or {column: ..., codes: [...]}")
        if "codes" in ni:
            ni["codes"] = [norm_code(c) for c in ni["codes"]]
    cfg["not_interviewed"] = ni or None
    cfg["valid_ranges"] = {c: list(v) for c, v in (cfg.get("valid_ranges") or {}).items()}
    cfg["allowed_codes"] = {c: [norm_code(x) for x in v] for c, v in (cfg.get("allowed_codes") or {}).items()}
    fmt = {"decimal": ".", "thousands": ",", **(cfg.get("number_format") or {})}
    if fmt["decimal"] == fmt["thousands"]:
        fail("number_format: decimal and thousands separators must differ")
    cfg["number_format"] = fmt
    cfg["clean_params"] = dict(cfg.get("clean_params") or {})


def _normalise_analysis(cfg: dict, fail) -> None:
    """What the analysis table carries beyond outcomes: skills, credit, take-up, covariates, controls."""
    cfg.setdefault("skills_index", None)
    cfg.setdefault("credit_access", None)
    cfg["takeup"] = dict(cfg.get("takeup") or {})
    covariates = cfg.get("covariates") or {}
    for canonical in covariates:
        if canonical in RESERVED_NAMES or str(canonical).startswith(("arm_", "takeup_", "skills_")):
            fail(f"covariates.{canonical}: the name is taken by a canonical analysis column; choose another")
    cfg["covariates"] = dict(covariates)
    cfg["controls"] = list(cfg.get("controls") or [])
    unknown_controls = [c for c in cfg["controls"] if c not in cfg["covariates"]]
    if unknown_controls:
        fail(f"controls: {unknown_controls} are not names under covariates")


def _normalise_treatment(spec: dict, fail) -> dict:
    def arm(key, raw: dict | None) -> dict:
        raw = dict(raw or {})
        label = str(raw.get("label", key))
        return {"label": label, "slug": slugify(raw.get("slug") or label),
                "skills": int(raw.get("skills", 0)), "capital": int(raw.get("capital", 0))}

    if spec.get("column") and "arms" in spec:
        arms = {norm_code(k): arm(k, v) for k, v in spec["arms"].items()}
        out = {"column": spec["column"], "dummies": None, "arms": arms}
    elif spec.get("dummies"):
        if "control" in spec["dummies"]:
            fail("treatment: a dummy column may not be called 'control'")
        arms = {}
        if spec.get("control") is not None:   # the comparison arm first (flow tables list it first)
            arms["control"] = arm("control", {"label": "Control", **spec["control"]})
        arms.update({str(col): arm(col, v) for col, v in spec["dummies"].items()})
        out = {"column": None, "dummies": list(spec["dummies"]), "arms": arms}
    else:
        fail("treatment: expected {column: ..., arms: {...}} or {dummies: {...}, control: {...}}")
    slugs = [a["slug"] for a in out["arms"].values()]
    if len(set(slugs)) != len(slugs):
        fail(f"treatment: arm slugs {slugs} are not unique (set slug: for each arm)")
    return out


def _normalise_factor(spec: dict, recall: dict, fail) -> dict:
    """USD PPP per local currency unit: {value|lcu_per_usd_ppp: ..., source: ...} or
    {lookup: {file, sha256, where, column}, converts_to: period, source: ...} (a bare number is
    ``{value: number}``, see pipeline.config)."""
    forms = [k for k in ("value", "lcu_per_usd_ppp", "lookup") if spec.get(k) is not None]
    if len(forms) != 1:
        fail("usd_ppp_per_lcu: give exactly one of value, lcu_per_usd_ppp or lookup")
    out = {"value": None, "lookup": None, "converts_to": spec.get("converts_to"), "source": spec.get("source", "")}
    if "value" in forms:
        out["value"] = float(spec["value"])
    elif "lcu_per_usd_ppp" in forms:
        out["value"] = 1.0 / float(spec["lcu_per_usd_ppp"])
    else:
        lookup = dict(spec["lookup"])
        lookup.setdefault("sha256", None)
        out["lookup"] = lookup
    if out["value"] is not None and not (out["value"] > 0 and math.isfinite(out["value"])):
        fail(f"usd_ppp_per_lcu: {out['value']} is not a positive number")
    if out["converts_to"] is not None and "value" not in (recall or {}):
        fail("usd_ppp_per_lcu.converts_to needs a fixed recall_period: {value: ...} (the factor "
             "already includes the conversion from that period)")
    out["_normalised_factor"] = True
    return out


def currency_factor(cfg: dict, factor: float) -> float:
    """USD PPP per LCU from a configured factor. A factor that ``converts_to`` a period (such as
    Meager's ``profit_std``: LCU over the study's recall period -> USD PPP per two weeks) already
    includes the recall conversion, which the clean stage applies separately; it is taken out here
    so that raw value x factor is exactly the value in USD PPP per ``converts_to``."""
    spec = cfg["usd_ppp_per_lcu"]
    if spec["converts_to"] is None:
        return float(factor)
    recall = cfg["recall_period"]["value"]
    return float(factor) * PER_YEAR[spec["converts_to"]] / PER_YEAR[recall]


def resolve_file(entry: dict | str, data_dir: str | Path) -> Path:
    """A configured file: relative paths are relative to the study's data folder, which
    params.yaml gives (``studies.<name>.data_dir``, itself relative to the repository root)."""
    path = Path(entry["path"] if isinstance(entry, dict) else entry)
    if path.is_absolute():
        return path
    base = Path(data_dir)
    return (base if base.is_absolute() else REPO_ROOT / base) / path


def configured_columns(cfg: dict) -> list[str]:
    """Every raw column a study configuration refers to (they must all exist after ingest's
    renaming; generated columns excluded)."""
    cfg = normalise(cfg)
    cols = [cfg["round"], cfg["cluster"], cfg["weight"], *cfg["strata"]]
    if not cfg["_generated_unit_id"]:
        cols.append(cfg["unit_id"])
    treatment = cfg["treatment"]
    cols += [treatment["column"]] if treatment["column"] else list(treatment["dummies"])
    if cfg["submission"]:
        cols += [cfg["submission"].get("id"), cfg["submission"].get("time")]
    cols.append(cfg["female_owner"].get("column"))
    for spec in cfg["outcomes"].values():
        cols += [spec["column"], spec["baseline_column"]]
    cols.append(cfg["recall_period"].get("column"))
    if cfg["business_open"]:
        cols.append(cfg["business_open"]["column"])
    ni = cfg["not_interviewed"] or {}
    cols += list(ni.get("when_all_missing", [])) + [ni.get("column")]
    cols += list(cfg["valid_ranges"]) + list(cfg["allowed_codes"])
    cols += list(cfg["covariates"].values())
    cols += list((cfg["skills_index"] or {}).get("columns", []))
    cols.append(cfg["credit_access"])
    cols += [c for c in cfg["takeup"].values() if c]
    return [c for c in dict.fromkeys(cols) if c]


def numeric_columns(cfg: dict) -> list[str]:
    """Raw columns that hold numbers (text in them is parsed by the clean stage)."""
    cfg = normalise(cfg)
    cols = []
    for spec in cfg["outcomes"].values():
        cols += [spec["column"], spec["baseline_column"]]
    cols += list(cfg["valid_ranges"]) + list(cfg["covariates"].values())
    cols += list((cfg["skills_index"] or {}).get("columns", []))
    cols += [cfg["weight"], cfg["credit_access"], *cfg["takeup"].values()]
    return [c for c in dict.fromkeys(cols) if c]


def flow_column(name: str, spec: dict, currency: str, period: str) -> str:
    """The clean table's column for an outcome: ``profit_lcu_month`` (flows), ``capital_stock_lcu``
    (stocks) or ``log_profit_value`` (``money: false``: not in a currency)."""
    if not spec.get("money", True):
        return f"{name}_value"
    return f"{name}_{currency}_{period}" if spec.get("flow", True) else f"{name}_{currency}"


def analysis_column(name: str, spec: dict, period: str) -> str:
    """The analysis table's column for an outcome: ``profit_usd_ppp_month`` (flows),
    ``capital_stock_usd_ppp`` (stocks) or the outcome's own name (``money: false``: carried as
    cleaned, not converted)."""
    if not spec.get("money", True):
        return name
    return f"{name}_usd_ppp_{period}" if spec.get("flow", True) else f"{name}_usd_ppp"


def effective_clean_params(cfg: dict, params: Mapping) -> dict:
    """The clean params group with the study's own ``clean_params`` on top (the study wins)."""
    return {**dict(params or {}), **normalise(cfg)["clean_params"]}


# ------------------------------------------------------------------------------------------------
# Treatment arms
# ------------------------------------------------------------------------------------------------
def assign_arms(df: pd.DataFrame, cfg: dict) -> tuple[pd.Series, pd.Series]:
    """The arm key of every row and, where it has none, why.

    One categorical column: the key is the row's (normalised) code if it is a configured arm.
    Dummy columns: the key is the one dummy equal to 1, or ``control`` when all are 0; a missing
    or non-0/1 dummy, or two dummies equal to 1, leave the row without an arm.
    """
    cfg = normalise(cfg)
    spec = cfg["treatment"]
    reasons = pd.Series("", index=df.index, dtype="object")
    if spec["column"]:
        col = spec["column"]
        codes = norm_codes(df[col])
        known = codes_in(df[col], spec["arms"])
        text = np.full(len(df), "", dtype=object)      # numpy masks: two Series mask-setitems cost 5x more
        missing = codes.isna().to_numpy()
        text[missing] = f"{col} is missing"
        bad = ~known.to_numpy() & ~missing
        if bad.any():
            text[bad] = map_distinct(df.loc[bad, col], lambda v: f"{col}={v} is not a defined arm").to_numpy()
        keys = codes.where(known, None)
        return keys.astype("object"), pd.Series(text, index=df.index, dtype="object")
    dummies = spec["dummies"]
    values = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") for c in dummies}, index=df.index)
    keys = pd.Series(None, index=df.index, dtype="object")
    for c in dummies:
        missing = values[c].isna() & (reasons == "")
        reasons[missing] = f"{c} is missing"
        bad = values[c].notna() & ~values[c].isin([0, 1]) & (reasons == "")
        reasons[bad] = map_distinct(df.loc[bad, c], lambda v, c=c: f"{c}={v} is not 0/1")
    ones = values.eq(1).sum(axis=1)
    several = (ones > 1) & (reasons == "")
    if several.any():
        # "more than one arm: a=1, b=1": the dummies equal to 1, in configured order
        listed = pd.Series("", index=df.index, dtype="object")
        for c in dummies:
            one = values[c].eq(1)
            listed = listed.mask(one, listed.where(listed == "", listed + ", ") + f"{c}=1")
        reasons[several] = "more than one arm: " + listed[several]
    ok = reasons == ""
    for c in dummies:
        keys[ok & (values[c] == 1)] = c
    none = ok & (ones == 0)
    if "control" in spec["arms"]:
        keys[none] = "control"
    else:
        reasons[none] = f"all of {dummies} are 0 and no control arm is configured"
    return keys, reasons


def arm_labels(cfg: dict) -> dict:
    return {k: v["label"] for k, v in normalise(cfg)["treatment"]["arms"].items()}
