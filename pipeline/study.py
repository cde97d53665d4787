"""Study configurations: one YAML file per study in ``studies/`` maps a raw survey onto the
canonical schema (``docs/study_config.md`` documents every key; ``studies/synthetic.yaml`` is
a fully commented example).

This module also holds what every per-study stage shares (each stage's DVC dependencies
include this file):

* :func:`load_study` / :func:`normalise` -- read, complete and check a configuration; every
  mistake is reported with the file and the key;
* :func:`assign_arms` -- the treatment arm of each row, from one categorical column or from
  several 0/1 dummy columns;
* :func:`norm_code` -- one comparable form for survey codes (``2``, ``2.0``, ``"2"``);
* :func:`assert_no_identifiers` -- fails if direct identifiers reach a table or a file;
* :func:`validate_frame` -- runs a pandera schema and names study, column, rule, count and rows;
* :func:`write_outputs` -- renders every output of a stage first, then writes them (all or none).
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import io as _io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.io import REPO_ROOT, _clean_floats, _json_default, atomic_path, check_csv_table, read_yaml

# Periods per year: a value over period A becomes value * PER_YEAR[A] / PER_YEAR[B] over B.
PER_YEAR = {"day": 365.0, "week": 52.0, "two_weeks": 26.0, "month": 12.0, "quarter": 4.0, "year": 1.0}

REQUIRED_KEYS = ("study", "files", "unit_id", "treatment", "outcomes")
TEXT_KEYS = ("title", "citation", "data_source", "notes", "description")
KNOWN_KEYS = set(REQUIRED_KEYS) | set(TEXT_KEYS) | {
    "identifiers", "not_identifiers", "missing_codes", "round", "rounds", "baseline_round", "submission",
    "strata", "cluster", "weight", "female_owner", "takeup", "recall_period", "currency", "usd_ppp_per_lcu",
    "business_open", "not_interviewed", "valid_ranges", "allowed_codes", "number_format", "skills_index",
    "credit_access", "covariates", "controls", "clean_params",
    "estimate",   # per-study estimation specification, read by pipeline.estimation.spec.study_params
}
FILE_KEYS = {"path", "format", "sha256", "sheet", "strip_group_prefixes", "rename", "sep", "encoding", "notes"}
FORMATS = {"dta": "dta", "sav": "sav", "zsav": "sav", "csv": "csv", "tsv": "csv", "txt": "csv",
           "xlsx": "xlsx", "xlsm": "xlsx", "parquet": "parquet", "pq": "parquet"}
CLEAN_PARAM_KEYS = {"duplicate_rule", "winsor_upper_pct", "winsor_lower_pct", "winsor_by_round", "outlier_method"}
# The keys of each nested block (an unknown one is rejected with a "did you mean" hint). The
# ``estimate:`` block's keys are pipeline.estimation.spec.ESTIMATE_KEYS (derived from the Spec fields and
# the stage keys that consume them), its ``sample:`` keys pipeline.estimation.spec.SAMPLE_KEYS.
OUTCOME_KEYS = {"column", "flow", "allow_negative", "baseline_column", "label", "money"}
TREATMENT_KEYS = {"column", "arms", "dummies", "control"}
ARM_KEYS = {"label", "slug", "skills", "capital"}
IDENTIFIER_KEYS = {"column", "action"}
SUBMISSION_KEYS = {"id", "time"}
FEMALE_OWNER_KEYS = {"column", "female_codes", "male_codes", "value"}
RECALL_KEYS = {"column", "codes", "value"}
FACTOR_KEYS = {"value", "lcu_per_usd_ppp", "lookup", "converts_to", "source"}
LOOKUP_KEYS = {"file", "sha256", "where", "column"}
BUSINESS_OPEN_KEYS = {"column", "closed_codes"}
NOT_INTERVIEWED_KEYS = {"when_all_missing", "column", "codes"}
NUMBER_FORMAT_KEYS = {"decimal", "thousands"}
SKILLS_INDEX_KEYS = {"columns", "areas"}
TAKEUP_KEYS = {"skills", "capital"}
# columns the pipeline adds to a study's tables (never raw survey answers)
ROW_ID = "_row_id"              # generated unit id where a survey has none (one row = one unit)
FACTOR_COLUMN = "usd_ppp_per_lcu"  # per-row conversion factor written by ingest
PIPELINE_COLUMNS = ("source_file", "source_row", ROW_ID, FACTOR_COLUMN, "interviewed", "business_closed")
# names of the analysis table's own columns (a covariate may not take them)
RESERVED_NAMES = {"study", "firm_id", "round", "followup", "interviewed", "attrited", "arm", "treat_skills",
                  "treat_capital", "female_owner", "stratum", "cluster_id", "weight", "business_closed",
                  "credit_access"}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class StudyConfigError(ValueError):
    """A study configuration is incomplete or inconsistent."""


class ValidationError(ValueError):
    """A table breaks its schema (pandera); the message names study, column, rule, count and rows."""


class IdentifierLeakError(ValueError):
    """A direct identifier (configured or detected) is about to reach, or has reached, an output."""


# ------------------------------------------------------------------------------------------------
# Codes
# ------------------------------------------------------------------------------------------------
def norm_code(value: Any) -> Any:
    """One comparable form for a survey code: integers as ``int`` (``2``, ``2.0``, ``"2"`` -> 2),
    other numbers as ``float``, text stripped and case-folded; missing -> ``None``."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return int(value) if float(value).is_integer() else float(value)
    text = str(value).strip()
    if text == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text.casefold()
    if math.isnan(number):
        return None
    return int(number) if number.is_integer() else number


def map_distinct(series: pd.Series, fn, na_value: Any = None, dtype: Any = None) -> pd.Series:
    """``fn`` applied once per distinct non-missing value of ``series`` and broadcast back to
    every row (``na_value`` where missing): Python runs per distinct value, never per row, so a
    column of 10 million answers with 5 codes costs 5 calls and one C-level take. The dtype is
    inferred from the results (as ``Series.map`` does) unless ``dtype`` is given."""
    positions, uniques = pd.factorize(series, use_na_sentinel=True)
    results = np.empty(len(uniques) + 1, dtype=object)
    for k, value in enumerate(uniques):
        results[k] = fn(value)
    results[-1] = na_value            # position -1 = missing
    out = pd.Series(results[positions], index=series.index, dtype=dtype or "object")
    return out if dtype else out.infer_objects()


def norm_codes(series: pd.Series) -> pd.Series:
    """:func:`norm_code` over a column (computed once per distinct value)."""
    return map_distinct(series, norm_code, dtype="object")


def codes_in(series: pd.Series, codes: Iterable) -> pd.Series:
    """Boolean: the row's normalised code is one of ``codes`` (already normalised); missing -> False."""
    codes = set(codes)
    return map_distinct(series, lambda v: norm_code(v) in codes, na_value=False).astype(bool)


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", str(text).casefold()).strip("_")
    return slug or "arm"


# ------------------------------------------------------------------------------------------------
# Loading and checking a configuration
# ------------------------------------------------------------------------------------------------
def did_you_mean(unknown: Iterable, known: Iterable) -> str:
    """`` ('weight': did you mean 'weights'?)`` for the unknown keys close to a known one, else ''."""
    known = sorted(str(k) for k in known)
    hints = {k: difflib.get_close_matches(str(k), known, n=1) for k in unknown}
    hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in hints.items() if m)
    return f" ({hint})" if hint else ""


def check_keys(block: Any, where: str, known: Iterable, fail) -> None:
    """Fail (``fail(message)``) if the mapping ``block`` has keys outside ``known``; the message
    names the block, the unknown keys with a "did you mean" hint, and the known keys."""
    if not isinstance(block, Mapping):
        return
    known = set(known)
    unknown = sorted((k for k in block if k not in known and not str(k).startswith("_")), key=str)
    if unknown:
        fail(f"{where}: unknown keys {unknown}{did_you_mean(unknown, known)}; the known keys are "
             f"{sorted(known)} (docs/study_config.md)")


def load_study(study: str | Path) -> dict[str, Any]:
    """Read and check a study configuration by name (``studies/<name>.yaml``) or by path."""
    path = Path(study) if str(study).endswith((".yaml", ".yml")) else paths.study_config_path(str(study))
    if not path.exists():
        raise StudyConfigError(f"{path}: no such study configuration")
    try:
        cfg = read_yaml(path) or {}
    except Exception as exc:  # noqa: BLE001 - a YAML syntax error, with the file named
        raise StudyConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(cfg, dict):
        raise StudyConfigError(f"{path}: expected a mapping of keys, got {type(cfg).__name__}")
    shown = str(path.relative_to(REPO_ROOT)) if path.resolve().is_relative_to(REPO_ROOT) else str(path)
    cfg["_path"] = shown
    return normalise(cfg)


def normalise(cfg: dict[str, Any]) -> dict[str, Any]:
    """Complete a configuration with its defaults, bring every alternative form to one, and check
    it. Idempotent; returns a new dict (the argument is not changed). Stages call it on whatever
    they are given, so a configuration made in code behaves exactly like one read from YAML."""
    if cfg.get("_normalised"):
        return cfg
    cfg = copy.deepcopy(cfg)
    where = cfg.get("_path") or f"study {cfg.get('study', '?')!r}"

    def fail(message: str) -> None:
        raise StudyConfigError(f"{where}: {message}")

    missing = [key for key in REQUIRED_KEYS if key not in cfg]
    if missing:
        fail(f"missing required keys {missing}")
    unknown = sorted(k for k in cfg if k not in KNOWN_KEYS and not str(k).startswith("_"))
    if unknown:
        fail(f"unknown keys {unknown}{did_you_mean(unknown, KNOWN_KEYS)}; the known keys are "
             f"{sorted(KNOWN_KEYS)} (docs/study_config.md)")
    if not isinstance(cfg["study"], str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", cfg["study"]):
        fail(f"study: {cfg['study']!r} is not a usable name (letters, digits, _ . -)")

    # files
    if not isinstance(cfg["files"], list) or not cfg["files"]:
        fail("files: expected a non-empty list of {path: ..., format: ...}")
    files = []
    for i, entry in enumerate(cfg["files"]):
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        check_keys(entry, f"files[{i}]", FILE_KEYS, fail)
        if "path" not in entry:
            fail(f"files[{i}]: no path (known keys: {sorted(FILE_KEYS)})")
        fmt = str(entry.get("format") or Path(entry["path"]).suffix.lstrip(".")).lower()
        if fmt not in FORMATS:
            fail(f"files[{i}] ({entry['path']}): format {fmt!r} unknown; expected one of {sorted(set(FORMATS))}")
        entry["format"] = FORMATS[fmt]
        entry.setdefault("sha256", None)
        if entry["sha256"] is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(entry["sha256"])):
            fail(f"files[{i}] ({entry['path']}): sha256 must be 64 hex digits or null")
        prefixes = entry.get("strip_group_prefixes", False)
        if prefixes is True:
            prefixes = ["/", "-"]
        elif isinstance(prefixes, str):
            prefixes = [prefixes]
        entry["strip_group_prefixes"] = list(prefixes or [])
        entry["rename"] = dict(entry.get("rename") or {})
        files.append(entry)
    cfg["files"] = files

    # identifiers: names to drop, names to replace by a salted hash
    drop, hashed = [], []
    for item in cfg.get("identifiers") or []:
        check_keys(item, "identifiers", IDENTIFIER_KEYS, fail)
        if isinstance(item, str):
            drop.append(item)
        elif isinstance(item, dict) and "column" in item and item.get("action", "drop") in ("drop", "hash"):
            (hashed if item.get("action") == "hash" else drop).append(item["column"])
        else:
            fail(f"identifiers: {item!r} is neither a column name nor {{column: ..., action: drop|hash}}")
    cfg["identifiers"] = drop
    cfg["hash_identifiers"] = hashed
    cfg["not_identifiers"] = list(cfg.get("not_identifiers") or [])

    cfg["missing_codes"] = {int(k): str(v) for k, v in (cfg.get("missing_codes") or {}).items()}

    # unit and rounds
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
    check_keys(cfg["submission"], "submission", SUBMISSION_KEYS, fail)
    strata = cfg.get("strata") or []
    cfg["strata"] = [strata] if isinstance(strata, str) else list(strata)
    cfg.setdefault("cluster", None)
    cfg.setdefault("weight", None)

    # treatment arms
    cfg["treatment"] = _normalise_treatment(cfg["treatment"], fail)

    # female owner
    female = cfg.get("female_owner")
    if not isinstance(female, dict) or ("column" not in female and "value" not in female):
        fail("female_owner: required, either {column: ..., female_codes: [...]} or {value: 1} "
             "(value: null where unknown)")
    check_keys(female, "female_owner", FEMALE_OWNER_KEYS, fail)
    if "column" in female:
        if not female.get("female_codes"):
            fail("female_owner: female_codes is required with column")
        female["female_codes"] = [norm_code(c) for c in female["female_codes"]]
        if female.get("male_codes") is not None:
            female["male_codes"] = [norm_code(c) for c in female["male_codes"]]
    elif female["value"] not in (0, 1, None):
        fail(f"female_owner.value: expected 1, 0 or null, got {female['value']!r}")
    cfg["female_owner"] = female

    # outcomes and money
    if not isinstance(cfg["outcomes"], dict) or not cfg["outcomes"]:
        fail("outcomes: expected a mapping name -> {column: ...}")
    outcomes = {}
    for name, spec in cfg["outcomes"].items():
        spec = {"column": spec} if isinstance(spec, str) else dict(spec or {})
        if not _NAME_RE.match(str(name)) or "column" not in spec:
            fail(f"outcomes.{name}: needs a lower-case name and a column")
        check_keys(spec, f"outcomes.{name}", OUTCOME_KEYS, fail)
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
    check_keys(recall, "recall_period", RECALL_KEYS, fail)
    if any(o["flow"] for o in outcomes.values()):
        if not isinstance(recall, dict) or ("column" not in recall and "value" not in recall):
            fail("recall_period: required for money flows, {column: ..., codes: {...}} or {value: month}")
        if "column" in recall:
            recall["codes"] = {norm_code(k): v for k, v in (recall.get("codes") or {}).items()}
            bad = sorted({str(v) for v in recall["codes"].values()} - set(PER_YEAR))
        else:
            bad = [] if recall["value"] in PER_YEAR else [recall["value"]]
        if bad:
            fail(f"recall_period: periods {bad} unknown; expected {sorted(PER_YEAR)}")
    cfg["recall_period"] = recall or {}
    cfg.setdefault("currency", "LCU")
    cfg["usd_ppp_per_lcu"] = _normalise_factor(cfg.get("usd_ppp_per_lcu", 1.0), cfg["recall_period"], fail)

    # cleaning rules
    business = cfg.get("business_open")
    check_keys(business, "business_open", BUSINESS_OPEN_KEYS, fail)
    if business:
        business["closed_codes"] = [norm_code(c) for c in business.get("closed_codes", [])]
    cfg["business_open"] = business or None
    ni = cfg.get("not_interviewed")
    check_keys(ni, "not_interviewed", NOT_INTERVIEWED_KEYS, fail)
    if ni:
        if not (("when_all_missing" in ni) ^ ("column" in ni and "codes" in ni)):
            fail("not_interviewed: expected {when_all_missing: [columns]} or {column: ..., codes: [...]}")
        if "codes" in ni:
            ni["codes"] = [norm_code(c) for c in ni["codes"]]
    cfg["not_interviewed"] = ni or None
    cfg["valid_ranges"] = {c: list(v) for c, v in (cfg.get("valid_ranges") or {}).items()}
    for col, rng in cfg["valid_ranges"].items():
        if len(rng) != 2:
            fail(f"valid_ranges.{col}: expected [low, high] (null for open)")
    cfg["allowed_codes"] = {c: [norm_code(x) for x in v] for c, v in (cfg.get("allowed_codes") or {}).items()}
    check_keys(cfg.get("number_format"), "number_format", NUMBER_FORMAT_KEYS, fail)
    fmt = {"decimal": ".", "thousands": ",", **(cfg.get("number_format") or {})}
    if fmt["decimal"] == fmt["thousands"]:
        fail("number_format: decimal and thousands separators must differ")
    cfg["number_format"] = fmt
    overrides = cfg.get("clean_params") or {}
    bad = sorted(set(overrides) - CLEAN_PARAM_KEYS)
    if bad:
        fail(f"clean_params: {bad} cannot be set per study{did_you_mean(bad, CLEAN_PARAM_KEYS)} "
             f"(allowed: {sorted(CLEAN_PARAM_KEYS)})")
    cfg["clean_params"] = dict(overrides)

    # what the analysis table carries
    cfg.setdefault("skills_index", None)
    check_keys(cfg["skills_index"], "skills_index", SKILLS_INDEX_KEYS, fail)
    cfg.setdefault("credit_access", None)
    check_keys(cfg.get("takeup"), "takeup", TAKEUP_KEYS, fail)
    cfg["takeup"] = dict(cfg.get("takeup") or {})
    covariates = cfg.get("covariates") or {}
    if isinstance(covariates, list):
        covariates = {c: c for c in covariates}
    for canonical in covariates:
        if canonical in RESERVED_NAMES or str(canonical).startswith(("arm_", "takeup_", "skills_")):
            fail(f"covariates.{canonical}: the name is taken by a canonical analysis column; choose another")
    cfg["covariates"] = dict(covariates)
    cfg["controls"] = list(cfg.get("controls") or [])
    unknown_controls = [c for c in cfg["controls"] if c not in cfg["covariates"]]
    if unknown_controls:
        fail(f"controls: {unknown_controls} are not names under covariates")
    _check_estimate_block(cfg.get("estimate"), fail)
    for key in TEXT_KEYS:
        cfg.setdefault(key, "")
    cfg.setdefault("_path", where)
    cfg["_normalised"] = True
    return cfg


def _check_estimate_block(block: Any, fail) -> None:
    """The study's ``estimate:`` block: a mapping whose keys are keys of the estimate stage
    (pipeline.estimation.spec.ESTIMATE_KEYS, the Spec fields and stage keys that read them)."""
    if block is None:
        return
    if not isinstance(block, Mapping):
        fail(f"estimate: expected a mapping of estimate keys, got {block!r}")
    from pipeline.estimation import spec as estimate   # lazily: the estimate stage's own definitions

    check_keys(block, "estimate", estimate.ESTIMATE_KEYS, fail)
    if isinstance(block.get("sample"), Mapping):
        check_keys(block["sample"], "estimate.sample", estimate.SAMPLE_KEYS, fail)
    rule = block.get("missing_baseline")
    if rule is not None and rule not in estimate.MISSING_BASELINE:
        fail(f"estimate.missing_baseline: {rule!r} unknown; expected one of {list(estimate.MISSING_BASELINE)}")


def _normalise_treatment(spec: Any, fail) -> dict:
    def arm(key, raw: Any) -> dict:
        raw = dict(raw or {})
        check_keys(raw, f"treatment arm {key!r}", ARM_KEYS, fail)
        for kind in ("skills", "capital"):
            if raw.get(kind, 0) not in (0, 1):
                fail(f"treatment arm {key!r}: {kind} must be 0 or 1")
        label = str(raw.get("label", key))
        return {"label": label, "slug": slugify(raw.get("slug") or label),
                "skills": int(raw.get("skills", 0)), "capital": int(raw.get("capital", 0))}

    if not isinstance(spec, dict):
        fail("treatment: expected {column: ..., arms: {...}} or {dummies: {...}, control: {...}}")
    check_keys(spec, "treatment", TREATMENT_KEYS, fail)
    if "column" in spec and spec.get("column") and "arms" in spec:
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


def _normalise_factor(spec: Any, recall: dict, fail) -> dict:
    """USD PPP per local currency unit: a number, {value|lcu_per_usd_ppp: ..., source: ...} or
    {lookup: {file, sha256, where, column}, converts_to: period, source: ...}."""
    if isinstance(spec, dict) and spec.get("_normalised_factor"):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"value": float(spec)}
    if not isinstance(spec, dict):
        fail(f"usd_ppp_per_lcu: expected a number or a mapping, got {spec!r}")
    check_keys(spec, "usd_ppp_per_lcu", FACTOR_KEYS, fail)
    forms = [k for k in ("value", "lcu_per_usd_ppp", "lookup") if spec.get(k) is not None]
    if len(forms) != 1:
        fail("usd_ppp_per_lcu: give exactly one of value, lcu_per_usd_ppp or lookup")
    out = {"value": None, "lookup": None, "converts_to": spec.get("converts_to"), "source": spec.get("source", "")}
    if "value" in forms:
        out["value"] = float(spec["value"])
    elif "lcu_per_usd_ppp" in forms:
        out["value"] = 1.0 / float(spec["lcu_per_usd_ppp"])
    else:
        check_keys(spec["lookup"], "usd_ppp_per_lcu.lookup", LOOKUP_KEYS, fail)
        lookup = dict(spec["lookup"])
        if not {"file", "where", "column"} <= set(lookup):
            fail("usd_ppp_per_lcu.lookup: needs file, where ({column: value}) and column")
        lookup.setdefault("sha256", None)
        out["lookup"] = lookup
    if out["value"] is not None and not (out["value"] > 0 and math.isfinite(out["value"])):
        fail(f"usd_ppp_per_lcu: {out['value']} is not a positive number")
    if out["converts_to"] is not None:
        if out["converts_to"] not in PER_YEAR:
            fail(f"usd_ppp_per_lcu.converts_to: {out['converts_to']!r} unknown; expected {sorted(PER_YEAR)}")
        if "value" not in (recall or {}):
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
        reasons[codes.isna()] = f"{col} is missing"
        bad = ~known & codes.notna()
        reasons[bad] = map_distinct(df.loc[bad, col], lambda v: f"{col}={v} is not a defined arm")
        keys = codes.where(known, None)
        return keys.astype("object"), reasons
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


# ------------------------------------------------------------------------------------------------
# Pseudonyms
# ------------------------------------------------------------------------------------------------
SALT_ENV = "PIPELINE_HASH_SALT"
HASH_RE = re.compile(r"^[0-9a-f]{16}$")


SALT_FILE = REPO_ROOT / ".secrets" / "hash_salt"  # gitignored; made once per checkout


def hash_salt(params: Mapping | None, salt_file: Path | None = None) -> str | None:
    """The salt for hashed identifiers: ``hash_salt`` in the ingest params, else the environment
    variable named by ``hash_salt_env`` (default ``PIPELINE_HASH_SALT``), else a random salt kept
    in ``.secrets/hash_salt`` (created on first use, never committed, so reruns in this checkout
    give the same pseudonyms). Never written to any output."""
    import os
    import secrets

    params = params or {}
    if params.get("hash_salt"):
        return str(params["hash_salt"])
    from_env = os.environ.get(str(params.get("hash_salt_env", SALT_ENV)))
    if from_env:
        return from_env
    salt_file = salt_file or SALT_FILE
    if not salt_file.exists():
        salt_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return salt_file.read_text().strip()


def salted_hash(values: pd.Series, salt: str) -> pd.Series:
    """A keyed BLAKE2b hash (16 hex digits) of each value's normalised text; missing stays missing.
    The same value gives the same pseudonym in every file of a study (linkage is kept)."""
    key = hashlib.sha256(salt.encode("utf-8")).digest()

    def one(value):
        code = norm_code(value)
        if code is None:
            return None
        return hashlib.blake2b(str(code).encode("utf-8"), key=key, digest_size=8).hexdigest()

    return map_distinct(values, one, dtype="object")


# ------------------------------------------------------------------------------------------------
# Identifier detection
# ------------------------------------------------------------------------------------------------
_GPS_TOKENS = {"lat", "latitude", "lon", "lng", "longitude", "gps", "geolocation", "geopoint", "geotrace",
               "geoshape", "coordinates", "coords", "geocode"}
_PHONE_TOKENS = {"phone", "phones", "phonenumber", "telephone", "tel", "msisdn", "whatsapp", "cellphone",
                 "mobilenumber", "mobileno"}
_EMAIL_TOKENS = {"email", "emails", "emailaddress", "mail"}
_NAME_TOKENS = {"name", "names", "fullname", "firstname", "lastname", "surname", "forename", "givenname",
                "familyname", "middlename", "nombre", "apellido", "prenom", "nom"}
# "district_name", "business_name": a place or an organisation, not a person
_NOT_PERSON = {"district", "village", "region", "province", "state", "county", "city", "town", "market",
               "business", "firm", "shop", "store", "product", "products", "company", "sector", "school",
               "branch", "bank", "file", "study", "variable", "brand", "country", "site", "street", "item",
               "crop", "activity", "lender", "institution", "program", "programme", "project"}
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# 9-15 digits in phone-like groups ("+254 712 345 678", "0712-345-678", "(020) 345 6782",
# "0712345678"): single space or dash separators, groups of 2-4 digits after the first; not glued to
# letters, colons, dots, slashes (ids, timestamps, decimals) nor a run of table columns ("11594   11594")
PHONE_RE = re.compile(r"(?<![\w:/.\-])\+?(?:\(\d{1,4}\)[ -]?)?\d{1,5}(?:[ -]?\d{2,4}){1,5}(?![\w:/.\-])")
GEOPOINT_RE = re.compile(r"^\s*-?\d{1,2}\.\d{3,}[\s,;]+-?\d{1,3}\.\d{3,}(\s+-?\d+(\.\d+)?){0,2}\s*$")


def _tokens(column: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(column))
    return [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]


def _name_finding(column: str) -> str | None:
    tokens = _tokens(column)
    joined = "".join(tokens)
    if any(t in _GPS_TOKENS for t in tokens):
        return "GPS coordinate column name"
    after_mobile = tokens[tokens.index("mobile") + 1:][:1] if "mobile" in tokens else None
    if any(t in _PHONE_TOKENS for t in tokens) or joined in _PHONE_TOKENS or (
            after_mobile is not None and after_mobile in ([], ["number"], ["no"], ["num"], ["phone"])):
        return "phone-number column name"
    if any(t in _EMAIL_TOKENS for t in tokens) or "email" in joined:
        return "e-mail column name"
    for i, t in enumerate(tokens):
        if t in _NAME_TOKENS and not (set(tokens[:i]) & _NOT_PERSON):
            return "person-name column name"
    return None


def _phone_digits_ok(match: str) -> bool:
    digits = sum(ch.isdigit() for ch in match)
    return 9 <= digits <= 15


def _has_phone_text(s: str) -> bool:
    return any(_phone_digits_ok(m.group(0)) for m in PHONE_RE.finditer(s))


def _matches(series: pd.Series, test) -> pd.Series:
    """Boolean per row: ``test`` on the value's text (once per distinct value); missing -> False."""
    return map_distinct(series, lambda v: bool(test(str(v))), na_value=False).astype(bool)


def find_identifiers(frame: pd.DataFrame, identifiers: Iterable[str] = (), *, allow: Iterable[str] = (),
                     hashed: Iterable[str] = ()) -> list[dict]:
    """Columns of ``frame`` that hold direct identifiers: configured identifier names, and
    detected ones (phone numbers, e-mail addresses, GPS coordinates, person-name columns).

    ``allow`` lists columns known not to be identifiers (a false positive declared in the study
    configuration); ``hashed`` lists columns replaced by salted hashes, accepted only while every
    value still looks like a hash. Each finding: column, rule, count and example row positions
    (never the values themselves).
    """
    allow, hashed, identifiers = set(allow), set(hashed), set(identifiers)
    findings = []

    def add(column, rule, mask=None):
        rows = np.flatnonzero(mask.to_numpy()) if mask is not None else np.array([], dtype=int)
        findings.append({"column": str(column), "rule": rule,
                         "count": int(mask.sum()) if mask is not None else int(frame[column].notna().sum()),
                         "rows": rows[:5].tolist()})

    for column in frame.columns:
        series = frame[column]
        if column in identifiers:
            add(column, "configured identifier", series.notna())
            continue
        if column in allow or series.notna().sum() == 0:
            continue
        if column in hashed:
            not_hash = series.notna() & ~_matches(series, HASH_RE.match)
            if not_hash.any():
                add(column, "hashed identifier holds values that are not hashes", not_hash)
            continue
        by_name = _name_finding(column)
        if by_name:
            add(column, by_name, series.notna())
            continue
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values = pd.to_numeric(series, errors="coerce").dropna()
            if len(values) >= 5:
                integral = np.isclose(values % 1, 0)
                long = (values.abs() >= 1e8) & (values.abs() < 1e15) & integral
                if long.mean() >= 0.5 and values[long].nunique() >= 0.9 * long.sum():
                    add(column, "phone numbers (9-15 digit integers)",
                        (pd.to_numeric(series, errors="coerce").abs() >= 1e8).fillna(False))
            continue
        if not (pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series)):
            continue
        nonnull = int(series.notna().sum())
        emails = _matches(series, EMAIL_RE.search)
        if emails.any():
            add(column, "e-mail addresses", emails)
            continue
        phones = _matches(series, _has_phone_text)
        n_phones = int(phones.sum())
        if n_phones and (n_phones >= 5 or n_phones / nonnull >= 0.01):
            add(column, "phone numbers", phones)
            continue
        geo = _matches(series, GEOPOINT_RE.match)
        if geo.any() and (geo.sum() >= 5 or geo.sum() / nonnull >= 0.01):
            add(column, "GPS coordinates (lat lon pairs)", geo)
    return findings


def _text_findings(text: str) -> list[dict]:
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", text, flags=re.S | re.I)
    text = re.sub(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+", " ", text)
    found = []
    emails = EMAIL_RE.findall(text)
    if emails:
        found.append({"column": "(text)", "rule": "e-mail addresses", "count": len(emails), "rows": []})
    phones = [m.group(0) for m in PHONE_RE.finditer(text) if _phone_digits_ok(m.group(0))]
    if phones:
        found.append({"column": "(text)", "rule": "phone numbers", "count": len(phones), "rows": []})
    return found


def assert_no_identifiers(path_or_frame: str | Path | pd.DataFrame, identifiers: Iterable[str] = (), *,
                          cfg: dict | None = None, allow: Iterable[str] = (), hashed: Iterable[str] = (),
                          source: str | None = None) -> None:
    """Fail (:class:`IdentifierLeakError`) if a table or file holds direct identifiers.

    ``path_or_frame``: a DataFrame, or a file (.parquet, .csv, .xlsx, .dta, .sav, .json, .html,
    .txt, .md) or a folder (every such file in it). With ``cfg`` (a study configuration) its
    identifiers, hashed identifiers and ``not_identifiers`` are used. The message names the
    table, column, rule, count and example row positions, never the values.
    """
    identifiers = set(identifiers)
    allow, hashed = set(allow), set(hashed)
    if cfg is not None:
        cfg = normalise(cfg)
        identifiers |= set(cfg["identifiers"])
        allow |= set(cfg["not_identifiers"])
        hashed |= set(cfg["hash_identifiers"])
    problems: list[tuple[str, dict]] = []
    if isinstance(path_or_frame, pd.DataFrame):
        problems += [(source or "table", f) for f in
                     find_identifiers(path_or_frame, identifiers, allow=allow, hashed=hashed)]
    else:
        path = Path(path_or_frame)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            suffix = file.suffix.lower().lstrip(".")
            if file.name.startswith("."):
                continue
            if suffix in ("parquet", "csv", "xlsx", "dta", "sav"):
                reader = {"parquet": pd.read_parquet, "csv": pd.read_csv, "xlsx": pd.read_excel,
                          "dta": pd.read_stata, "sav": pd.read_spss}[suffix]
                found = find_identifiers(reader(file), identifiers, allow=allow, hashed=hashed)
            elif suffix == "json":
                obj = json.loads(file.read_text(encoding="utf-8"))
                keys = _json_keys(obj)
                found = [{"column": k, "rule": "configured identifier", "count": 1, "rows": []}
                         for k in keys if k in identifiers]
                found += _text_findings(json.dumps(obj, ensure_ascii=False))
            elif suffix in ("html", "htm", "txt", "md", "ipynb"):
                found = _text_findings(file.read_text(encoding="utf-8", errors="replace"))
            else:
                continue
            problems += [(str(file), f) for f in found]
    if problems:
        lines = [f"{where}: column {f['column']!r}: {f['rule']} ({f['count']} values"
                 + (f", e.g. rows {f['rows']})" if f["rows"] else ")") for where, f in problems]
        raise IdentifierLeakError(
            "direct identifiers would reach an output:\n  " + "\n  ".join(lines)
            + "\nDeclare each such column under `identifiers:` (dropped, or {column: ..., action: hash}) "
              "in the study configuration, or under `not_identifiers:` if it is not one.")


def _json_keys(obj: Any) -> set[str]:
    keys: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys.add(str(k))
            keys |= _json_keys(v)
    elif isinstance(obj, list):
        for v in obj:
            keys |= _json_keys(v)
    return keys


# ------------------------------------------------------------------------------------------------
# Validation (pandera)
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# All-or-nothing outputs
# ------------------------------------------------------------------------------------------------
def render(name: str, obj: Any) -> bytes:
    """The bytes of one output, chosen by its extension (deterministic writer settings)."""
    if name.endswith(".parquet"):
        buffer = _io.BytesIO()
        obj.to_parquet(buffer, index=False, engine="pyarrow", compression="snappy")
        return buffer.getvalue()
    if name.endswith(".csv"):
        check_csv_table(name, obj)
        return obj.to_csv(index=False, float_format="%.10g", lineterminator="\n").encode("utf-8")
    if name.endswith(".json"):
        text = json.dumps(_clean_floats(json.loads(json.dumps(obj, default=_json_default))),
                          indent=2, sort_keys=True, ensure_ascii=False)
        return (text + "\n").encode("utf-8")
    raise ValueError(f"{name}: no writer for this extension")


def write_outputs(out_dir: str | Path, outputs: Mapping[str, Any]) -> list[Path]:
    """Render every output in memory first, then write each atomically. If rendering fails nothing
    is written; if a write fails, the files already written by this call are removed."""
    out_dir = Path(out_dir)
    rendered = {name: render(name, obj) for name, obj in outputs.items()}
    written: list[Path] = []
    try:
        for name, data in rendered.items():
            path = out_dir / name
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
