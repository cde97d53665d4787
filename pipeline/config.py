"""The typed configuration model: what a study YAML (``studies/<name>.yaml``, documented in
``docs/study_config.md``) may say, checked once when it is loaded.

Every block is a frozen pydantic model that rejects unknown keys (with a "did you mean" hint) and
wrong types (strict: ``rounds: "0,1"`` is not a list, ``allow_negative: "false"`` is not a
boolean, a number is not a list). The few alternative spellings the format allows (a file given
by its path alone, an outcome by its column alone, ``strata: one_column``, covariates as a list, a
bare number as the conversion factor) are brought to their mapping form before the block is
checked. :func:`validate_study` returns the model; :mod:`pipeline.study` (which reads the file
and the base it ``extends:``) turns it into the normalised dict the stages read. Cross-key rules (a
baseline round among the rounds, unique arm slugs...) are checked there, where the normalised
values are made. The params.yaml groups (:mod:`pipeline.params`) reuse the blocks and field types
defined here (``CLEAN_FIELDS``, ``SPEC_FIELDS``, ``STAGE_FIELDS``).
"""
from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated, Any, Iterable, Literal, Optional, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, PositiveInt, StringConstraints,
                      ValidationError, create_model)


# --------------------------------------------------------------------------------------------
# Scalar types
# --------------------------------------------------------------------------------------------
PERIODS = ("day", "week", "two_weeks", "month", "quarter", "year")
Period = Literal["day", "week", "two_weeks", "month", "quarter", "year"]


def _code(value: Any) -> Any:
    """A survey code: a number or a text (never a boolean, a list or a mapping)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a code (a number or a text), got {type(value).__name__} {value!r}")
    return value


def _number(value: Any) -> Any:
    """A number, kept as given (an ``int`` stays an ``int``, so the normalised values do not change)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")
    return value


def _zero_one(value: Any) -> int:
    if isinstance(value, bool) or value not in (0, 1) or not isinstance(value, int):
        raise ValueError(f"expected 0 or 1, got {value!r}")
    return value


def _prefixes(value: Any) -> Any:
    """``strip_group_prefixes``: true/false, one separator, or a list of separators."""
    if isinstance(value, (bool, str)) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise ValueError(f"expected true, false, a separator or a list of separators, got {value!r}")


def _sheet(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected a sheet name or index, got {value!r}")
    return value


def _as_mapping(key: str):
    """Before-validator: a bare value ``x`` is short for ``{key: x}`` (mappings pass unchanged)."""
    def wrap(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value
    return wrap


Code = Annotated[Any, PlainValidator(_code)]
Number = Annotated[Any, PlainValidator(_number)]
ZeroOne = Annotated[Any, PlainValidator(_zero_one)]
Column = str
# DuckDB's own size syntax ("2GB", "512MiB"), checked here rather than by DuckDB mid-stage.
MemorySize = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)? ?(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")]
Columns = list[str]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
StudyName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class Block(BaseModel):
    """A configuration block: frozen, strict types, unknown keys rejected."""
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------------------------
# Study blocks
# --------------------------------------------------------------------------------------------
class FileEntry(Block):
    path: str
    format: Optional[str] = None
    sha256: Optional[Sha256] = None
    sheet: Optional[Annotated[Any, PlainValidator(_sheet)]] = None
    strip_group_prefixes: Optional[Annotated[Any, PlainValidator(_prefixes)]] = None
    rename: Optional[dict[str, str]] = None
    sep: Optional[str] = None
    encoding: Optional[str] = None
    notes: Optional[str] = None


class Identifier(Block):
    column: Column
    action: Literal["drop", "hash"] = "drop"


class Submission(Block):
    id: Optional[Column] = None
    time: Optional[Column] = None


class Arm(Block):
    label: Optional[str] = None
    slug: Optional[str] = None
    skills: ZeroOne = 0
    capital: ZeroOne = 0


class Treatment(Block):
    column: Optional[Column] = None
    arms: Optional[dict[Code, Optional[Arm]]] = None
    dummies: Optional[dict[str, Optional[Arm]]] = None
    control: Optional[Arm] = None


class FemaleOwner(Block):
    column: Optional[Column] = None
    female_codes: Optional[list[Code]] = None
    male_codes: Optional[list[Code]] = None
    value: Optional[ZeroOne] = None


class Outcome(Block):
    column: Column
    flow: Optional[bool] = None
    allow_negative: Optional[bool] = None
    baseline_column: Optional[Column] = None
    label: Optional[str] = None
    money: Optional[bool] = None


class RecallPeriod(Block):
    column: Optional[Column] = None
    codes: Optional[dict[Code, Period]] = None
    value: Optional[Period] = None


class Lookup(Block):
    file: str
    sha256: Optional[Sha256] = None
    where: dict[str, Code]
    column: Column


def _factor_mapping(value: Any) -> Any:
    """A bare number is ``{value: number}``."""
    return {"value": value} if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class ConversionFactor(Block):
    value: Optional[Number] = None
    lcu_per_usd_ppp: Optional[Number] = None
    lookup: Optional[Lookup] = None
    converts_to: Optional[Period] = None
    source: Optional[str] = None


class BusinessOpen(Block):
    column: Column
    closed_codes: list[Code] = []


class NotInterviewed(Block):
    when_all_missing: Optional[Columns] = None
    column: Optional[Column] = None
    codes: Optional[list[Code]] = None


class NumberFormat(Block):
    decimal: Optional[str] = None
    thousands: Optional[str] = None


class SkillsIndex(Block):
    columns: Optional[Columns] = None
    areas: Optional[dict[str, Columns]] = None


class Takeup(Block):
    skills: Optional[Column] = None
    capital: Optional[Column] = None


# The clean: params (params.yaml, pipeline.params) and, but flow_period (common to every study), a
# study's clean_params: overrides (facts about its data).
CLEAN_FIELDS: dict[str, Any] = {
    "duplicate_rule": Literal["latest", "drop_all", "error"],
    "flow_period": Period,
    "winsor_upper_pct": Number,
    "winsor_lower_pct": Number,
    "winsor_by_round": bool,
    "outlier_method": Literal["winsorise", "trim"],
    "engine": Literal["pandas", "duckdb"],
    "duckdb_memory_limit": MemorySize,
}
CleanOverrides = create_model("CleanOverrides", __base__=Block,
                              **{k: (Optional[t], None) for k, t in CLEAN_FIELDS.items() if k != "flow_period"})


# --------------------------------------------------------------------------------------------
# The estimate block (the keys of the estimate stage; listed here so that loading a study does
# not import the estimator). Regression-specification fields of pipeline.estimation.spec.Spec (all
# but ``outcome``), then the stage keys. Their values are set only in params.yaml.
# --------------------------------------------------------------------------------------------
class EstimateSample(Block):
    rounds: Optional[list[Code]] = None
    survivors_only: Optional[bool] = None


SPEC_FIELDS: dict[str, Any] = {
    "treatments": Union[Columns, Literal["auto"]],
    "interact_treatments": bool,
    "baseline_control": bool,
    "fixed_effects": Columns,
    "cluster": Optional[Column],                     # null: HC1
    "weights": Optional[Column],
    "controls": Union[Columns, Literal["config"]],   # "config": the study's controls: list
    "followup_only": bool,
    "gender_interact_all": bool,
    "vcov": Literal["CR1", "CR2", "CR3", "HC1"],
    "missing_baseline": Literal["dummy", "listwise"],
}
STAGE_FIELDS: dict[str, Any] = {
    "outcomes": Columns,
    "primary_outcome": Optional[Column],
    "transforms": list[Literal["level", "unwinsorised", "log", "ihs", "trimmed"]],
    "trim_top_pct": Number,
    "by_round": bool,
    "q_families": Optional[dict[str, Columns]],
    "alpha": Number,
    "mde_power": Number,
    "seed": int,
    "bootstrap_reps": int,
    "permutations": int,
    "n_jobs": PositiveInt,        # worker processes of the QTE bootstrap
    "qte_quantiles": list[Number],
    "qte_fixed_effects": Columns,
    "balance_covariates": Columns,
    "lee_cells": Columns,
    "descriptive_regressors": Columns,
    "descriptive_controls": Columns,
    "descriptive_sample": Literal["all_arms", "control_only"],
    "wild_bootstrap_below_clusters": int,
    "wild_bootstrap_reps": int,
    "wild_bootstrap_weights": Literal["rademacher", "webb", "auto"],
    "sample": Optional[EstimateSample],
    "gender_control": bool,
}
ESTIMATE_KEYS = tuple(sorted(set(SPEC_FIELDS) | set(STAGE_FIELDS)))


# A study's ``estimate:`` block: any estimate key, each optional (absent or null: the params' value),
# in the order of docs/study_config.md's table (the order of a merged block, see in_model_order).
ESTIMATE_ORDER = ("outcomes", "primary_outcome", "treatments", "interact_treatments", "baseline_control",
                  "missing_baseline", "fixed_effects", "controls", "cluster", "vcov", "weights",
                  "gender_control", "followup_only", "gender_interact_all", "sample", "transforms", "trim_top_pct",
                  "by_round", "q_families", "alpha", "mde_power", "seed", "bootstrap_reps", "permutations",
                  "n_jobs", "qte_quantiles", "qte_fixed_effects", "balance_covariates", "lee_cells",
                  "descriptive_regressors", "descriptive_controls", "descriptive_sample",
                  "wild_bootstrap_below_clusters", "wild_bootstrap_reps", "wild_bootstrap_weights")
ESTIMATE_FIELDS = {key: {**SPEC_FIELDS, **STAGE_FIELDS}[key] for key in ESTIMATE_ORDER}
EstimateBlock = create_model("EstimateBlock", __base__=Block,
                             **{k: (Optional[t], None) for k, t in ESTIMATE_FIELDS.items()})


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------
def _covariate_mapping(value: Any) -> Any:
    """``covariates: [a, b]`` is ``{a: a, b: b}``."""
    return {c: c for c in value} if isinstance(value, list) and all(isinstance(c, str) for c in value) else value


def _listed(value: Any) -> Any:
    """``strata: column`` is ``[column]``."""
    return [value] if isinstance(value, str) else value


class StudyConfig(Block):
    """A study YAML. The keys are in the order of the documentation (a merged configuration,
    which has no single author's order, takes this one)."""
    study: StudyName
    title: Optional[str] = None
    citation: Optional[str] = None
    data_source: Optional[str] = None
    notes: Optional[str] = None
    description: Optional[str] = None
    files: Annotated[list[Annotated[FileEntry, BeforeValidator(_as_mapping("path"))]], Field(min_length=1)]
    identifiers: Optional[list[Annotated[Identifier, BeforeValidator(_as_mapping("column"))]]] = None
    not_identifiers: Optional[Columns] = None
    not_identifier_patterns: Optional[list[str]] = None
    missing_codes: Optional[dict[int, str]] = None
    unit_id: Optional[Column]
    round: Optional[Column] = None
    rounds: Optional[list[Code]] = None
    baseline_round: Optional[Code] = None
    submission: Optional[Submission] = None
    strata: Annotated[Optional[Columns], BeforeValidator(_listed)] = None
    cluster: Optional[Column] = None
    weight: Optional[Column] = None
    female_owner: FemaleOwner
    treatment: Treatment
    takeup: Optional[Takeup] = None
    recall_period: Optional[RecallPeriod] = None
    currency: Optional[str] = None
    usd_ppp_per_lcu: Annotated[Optional[ConversionFactor], BeforeValidator(_factor_mapping)] = None
    outcomes: Annotated[dict[str, Annotated[Outcome, BeforeValidator(_as_mapping("column"))]], Field(min_length=1)]
    business_open: Optional[BusinessOpen] = None
    not_interviewed: Optional[NotInterviewed] = None
    clean_params: Optional[CleanOverrides] = None
    valid_ranges: Optional[dict[str, Annotated[list[Optional[Number]], Field(min_length=2, max_length=2)]]] = None
    allowed_codes: Optional[dict[str, list[Code]]] = None
    number_format: Optional[NumberFormat] = None
    skills_index: Optional[SkillsIndex] = None
    credit_access: Optional[Column] = None
    covariates: Annotated[Optional[dict[str, str]], BeforeValidator(_covariate_mapping)] = None
    controls: Optional[Columns] = None
    estimate: Optional[EstimateBlock] = None


class StudyConfigError(ValueError):
    """A study configuration is incomplete or inconsistent (the message names the file and key)."""


def in_model_order(value: Any, annotation: Any) -> Any:
    """``value`` with the keys of each block in the order of its model's fields (other keys after,
    as they were); mappings of names (outcomes, covariates...) keep their own order."""
    kind = _unwrap(annotation)
    if isinstance(value, dict) and isinstance(kind, type) and issubclass(kind, BaseModel):
        fields = keys_of(kind)
        keys = [k for k in fields if k in value] + [k for k in value if k not in fields]
        return {k: in_model_order(value[k], fields[k].annotation if k in fields else Any) for k in keys}
    if isinstance(value, dict) and typing.get_origin(kind) is dict:
        return {k: in_model_order(v, typing.get_args(kind)[1]) for k, v in value.items()}
    if isinstance(value, list) and typing.get_origin(kind) is list:
        return [in_model_order(v, typing.get_args(kind)[0]) for v in value]
    return value


def validate_study(raw: dict, where: str) -> StudyConfig:
    """The study configuration ``raw`` checked against :class:`StudyConfig` (all mistakes at once);
    ``where`` (the file) starts every message."""
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise StudyConfigError(format_errors(exc, StudyConfig, where)) from None


def dump(model: BaseModel, raw: dict) -> dict:
    """The keys ``raw`` set, as checked by ``model``, as plain data, every mapping in the order
    the author wrote it (field order would reorder, e.g., a study's ``estimate:`` block)."""
    return _as_given(model.model_dump(exclude_unset=True, by_alias=True), raw)


def _as_given(value: Any, raw: Any) -> Any:
    if isinstance(value, dict) and isinstance(raw, dict):
        keys = [k for k in raw if k in value] + [k for k in value if k not in raw]
        return {k: _as_given(value[k], raw.get(k)) for k in keys}
    if isinstance(value, list) and isinstance(raw, list) and len(value) == len(raw):
        return [_as_given(v, r) for v, r in zip(value, raw)]
    return value


# --------------------------------------------------------------------------------------------
# Error messages: the key path, and for an unknown key the known ones with a hint
# --------------------------------------------------------------------------------------------
def did_you_mean(unknown: Iterable, known: Iterable) -> str:
    """`` ('weight': did you mean 'weights'?)`` for the unknown keys close to a known one, else ''."""
    known = sorted(str(k) for k in known)
    hints = {k: difflib.get_close_matches(str(k), known, n=1) for k in unknown}
    hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in hints.items() if m)
    return f" ({hint})" if hint else ""


def _unwrap(annotation: Any) -> Any:
    """The annotation without Annotated[...] and Optional[...]."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if typing.get_origin(annotation) in (Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def keys_of(model: type[BaseModel]) -> dict:
    """The keys a block accepts (a field's alias where it has one) and their fields."""
    return {field.alias or name: field for name, field in model.model_fields.items()}


def _walk(model: type[BaseModel], loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """The readable key path of a pydantic error location (``files[0].sha256``, union member
    tags left out) and the model that holds the last key (for the list of known keys)."""
    path, node, holder = "", model, None
    for part in loc:
        node = _unwrap(node)
        origin = typing.get_origin(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            holder = node
            path += f".{part}" if path else str(part)
            node = keys_of(node)[part].annotation if part in keys_of(node) else Any
        elif origin is list:
            path += f"[{part}]"
            node = typing.get_args(node)[0]
        elif origin is dict:
            path += f".{part}" if path else str(part)
            node = typing.get_args(node)[1]
        elif origin in (Union, types.UnionType):
            continue           # a union member's tag ("list[str]", "literal['auto']"): not a key
        else:
            path += f".{part}" if path else str(part)
    return path, holder


def format_errors(exc: ValidationError, model: type[BaseModel], where: str,
                  docs: str = "docs/study_config.md") -> str:
    lines = []
    for error in exc.errors():
        path, holder = _walk(model, tuple(error["loc"]))
        if error["type"] == "extra_forbidden":
            key = error["loc"][-1]
            parent = path.rsplit(".", 1)[0] if "." in path else ""
            known = sorted(keys_of(holder)) if holder is not None else []
            lines.append(f"{parent or '(top level)'}: unknown key {key!r}{did_you_mean([key], known)}; "
                         f"the known keys are {known}")
        elif error["type"] == "missing":
            lines.append(f"{path}: required key missing")
        else:
            message = error["msg"].removeprefix("Value error, ")
            lines.append(f"{path}: {message} (got {error['input']!r})")
    lines = list(dict.fromkeys(lines))
    if len(lines) == 1:
        return f"{where}: {lines[0]} ({docs})"
    return f"{where}: {len(lines)} problems ({docs}):\n  " + "\n  ".join(lines)
