"""The typed model of ``params.yaml``: one model per group, every key required.

``params.yaml`` is the one place where a parameter's value is set: these models give each key a
type and reject unknown keys (with a "did you mean" hint), but supply no value of their own (no
field has a default), so the configuration a stage receives is exactly ``params.yaml`` (plus, for
a per-study stage, the study's YAML). :func:`validate_params` is called by ``io.load_params``, the
one reader of params.yaml (``run_stage``, and a notebook run by hand); it returns the same dict,
checked.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field, ValidationError, create_model

from pipeline.config import (CLEAN_FIELDS, SPEC_FIELDS, STAGE_FIELDS, Block, Number, dump, format_errors)


class ParamsError(ValueError):
    """params.yaml breaks its model (the message names the file and every offending key)."""


def required(name: str, fields: dict[str, Any]):
    """A block whose every key must be given (``Optional[...]``: given, possibly null)."""
    return create_model(name, __base__=Block, **{key: (kind, ...) for key, kind in fields.items()})


# The simulation study's generator variants and outcomes, the choices of ``simulation.variants`` and
# ``simulation.outcomes`` (``pipeline.simulation.VARIANTS`` and ``OUTCOMES``, in this order): defined here,
# which every stage imports, so that naming them adds no stage a dependency.
SIMULATION_VARIANTS = ("no_typos", "as_configured")
SIMULATION_OUTCOMES = ("unwinsorised", "winsorised")


def _distinct(values: list) -> list:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"listed more than once: {', '.join(repeated)}")
    return values


def choice_list(names: tuple[str, ...]):
    """A non-empty list of distinct names out of ``names``."""
    return Annotated[list[Literal[names]], Field(min_length=1), AfterValidator(_distinct)]


StudyEntry = required("StudyEntry", {"data_dir": str})   # the study's raw-data folder
Studies = dict[str, StudyEntry]

Synthetic = required("Synthetic", {
    "seed": int, "n_firms": int, "n_followups": int, "share_female": Number, "n_regions": int,
    "n_sectors": int, "firms_per_market": int, "lcu_per_usd_ppp": Number, "takeup_training": Number,
    "takeup_grant": Number, "grant_usd_ppp": Number, "share_weekly_recall": Number,
    "share_duplicate_identical": Number, "share_duplicate_conflicting": Number, "share_typo_extra_zero": Number,
    "share_missing_code": Number, "attrition_control": Number, "attrition_treated": Number,
    "closure_rate_per_round": Number, "effect_training_women": Number, "effect_training_men": Number,
    "effect_grant_women": Number, "effect_grant_men": Number, "effect_interaction_women": Number,
    "effect_interaction_men": Number,
})
Ingest = required("Ingest", {
    "hash_salt": Optional[str],     # null: the salt comes from the environment variable below
    "hash_salt_env": str,
})
Clean = required("Clean", CLEAN_FIELDS)
Construct = required("Construct", {"skills_min_answered_share": Number})
Estimate = required("Estimate", {**SPEC_FIELDS, **STAGE_FIELDS})
Simulation = required("Simulation", {"draws": int, "workers": int, "variants": choice_list(SIMULATION_VARIANTS),
                                     "outcomes": choice_list(SIMULATION_OUTCOMES), "few_cluster_draws": int,
                                     "wild_bootstrap_reps": int})
Report = required("Report", {"title": str, "decimals": int})
Synthesize = required("Synthesize", {
    "published_effects": str, "moderators": str, "scales": list[Literal["pct_of_control_mean", "usd_ppp_month"]],
    "interval_level": Number, "prior_hypermean": Literal["baggr"], "prior_hypersd": Literal["baggr"],
    "tau_grid_points": int, "min_studies": int, "coverage_draws": int, "seed": int,
})
Evidence = required("Evidence", {"studies": Studies})

# (the construct group is the field construct_: BaseModel has a method of that name)
Params = create_model("Params", __base__=Block, construct_=(Construct, Field(..., alias="construct")),
                      **{key: (kind, ...) for key, kind in {
                          "studies": Studies, "synthetic": Synthetic, "evidence": Evidence, "ingest": Ingest,
                          "clean": Clean, "estimate": Estimate, "simulation": Simulation, "report": Report,
                          "synthesize": Synthesize}.items()})


def validate_params(raw: dict, where: str = "params.yaml") -> dict:
    """``raw`` (the whole params.yaml) checked against :data:`Params`; returns it unchanged (as
    plain data, keys in the file's order). Every mistake is listed at once, each with its key path."""
    try:
        model = Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(format_errors(exc, Params, where, docs="params.yaml comments")) from None
    return dump(model, raw)
