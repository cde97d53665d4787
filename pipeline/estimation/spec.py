"""The regression specification (:class:`Spec`, built from the ``estimate:`` params group), the
stage keys and their defaults (``STAGE_DEFAULTS``), the per-study ``estimate:`` block, and the
labels of the terms (parameter names and their tidy-table names), each defined once here."""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from pipeline.estimation.columns import followup_mask
from pipeline.estimation.variance import VCOV_TYPES

CANONICAL_TREATMENTS = ("treat_skills", "treat_capital")
MODELS = ("pooled", "by_gender", "women_only", "men_only")   # then round_<r>, then descriptive
SAMPLES = ("all", "women", "men")
# Outcome transforms (see transform_outcome). For log and ihs the effect is not in the outcome's
# units, so no "% of the control mean" is given for them.
TRANSFORMS = ("level", "unwinsorised", "log", "ihs", "trimmed")
NONLINEAR_TRANSFORMS = ("log", "ihs")
MDE_POWER = 0.8
# Units without a baseline value of the outcome (Spec.missing_baseline): "dummy" keeps them with
# Y_bl = 0 and Y_bl_missing = 1 as controls; "listwise" drops them from the estimation sample.
MISSING_BASELINE = ("dummy", "listwise")


@dataclass
class Spec:
    """One regression specification (built from the ``estimate:`` params group).

    List-valued fields accept any sequence and are stored as tuples.
    """

    outcome: str
    treatments: list[str]
    interact_treatments: bool = True    # add treat_skills:treat_capital where the study crosses them
    baseline_control: bool = True       # ANCOVA when the Y_bl / Y_bl_missing columns exist
    fixed_effects: list[str] = ("stratum", "round")
    cluster: str | None = "cluster_id"  # None -> HC1
    weights: str | None = None
    controls: list[str] = ()
    followup_only: bool = True
    gender_interact_all: bool = True    # by_gender: interact baseline, controls and FE with gender
    # Covariance: "CR1" (statsmodels' cluster default, HC1 without cluster; reproduces published
    # results), "CR2" (Bell-McCaffrey with the full-model hat matrix, t(G-1); the recommended
    # default, see the simulation study) or "CR3" (cluster jackknife, MacKinnon-Nielsen-Webb
    # 2023; FE refitted in every leave-one-cluster-out estimate; t(G-1)). See estimation/variance.py.
    vcov: str = "CR1"
    # ANCOVA rows without a baseline: "dummy" (Y_bl = 0 plus the Y_bl_missing dummy) or
    # "listwise" (left out of the estimation sample). See MISSING_BASELINE.
    missing_baseline: str = "dummy"

    def __post_init__(self) -> None:
        for name in ("treatments", "fixed_effects", "controls"):
            value = getattr(self, name)
            if value is None:
                value = ()
            if isinstance(value, str):
                value = (value,)
            value = tuple(value)
            if not all(isinstance(v, str) for v in value):
                raise ValueError(f"Spec.{name} must be a list of column names, got {value!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"Spec.{name} has duplicates: {value!r}")
            setattr(self, name, value)
        if not isinstance(self.outcome, str) or not self.outcome:
            raise ValueError(f"Spec.outcome must be a column name, got {self.outcome!r}")
        if not self.treatments:
            raise ValueError("Spec.treatments is empty: at least one treatment column is needed")
        if self.vcov not in VCOV_TYPES:
            raise ValueError(f"Spec.vcov must be one of {VCOV_TYPES}, got {self.vcov!r}")
        if self.vcov != "CR1" and self.cluster is None:
            raise ValueError(f"Spec.vcov={self.vcov!r} needs Spec.cluster")
        if self.missing_baseline not in MISSING_BASELINE:
            raise ValueError(f"Spec.missing_baseline must be one of {MISSING_BASELINE}, "
                             f"got {self.missing_baseline!r}")
        for name in ("cluster", "weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"Spec.{name} must be a column name or None, got {value!r}")
        overlap = set(self.treatments) & (set(self.controls) | set(self.fixed_effects))
        if overlap:
            raise ValueError(f"treatment column(s) {sorted(overlap)} also listed as controls/FE")

    @classmethod
    def from_params(cls, params: dict | None, outcome: str, df: pd.DataFrame | None = None) -> Spec:
        """Build a Spec from an ``estimate:`` params dict (every key a Spec field but ``outcome``).

        ``treatments`` may be omitted (or ``"auto"``): it then becomes those of
        ``treat_skills`` / ``treat_capital`` that exist in ``df`` and vary among follow-up rows.
        """
        params = dict(params or {})
        allowed = {f.name for f in fields(cls)} - {"outcome"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"unknown estimate parameter(s) {unknown}; allowed: {sorted(allowed)}")
        treatments = params.pop("treatments", "auto")
        if treatments in (None, "auto"):
            if df is None:
                raise ValueError("treatments not given and no data to infer them from")
            treatments = _infer_treatments(df, params.get("followup_only", True))
        return cls(outcome=outcome, treatments=treatments, **params)


def _infer_treatments(df: pd.DataFrame, followup_only: bool) -> tuple[str, ...]:
    rows = followup_mask(df) if followup_only else np.ones(len(df), dtype=bool)
    found = []
    for t in CANONICAL_TREATMENTS:
        if t in df.columns:
            values = pd.to_numeric(df[t], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            if np.unique(values[rows][~np.isnan(values[rows])]).size > 1:
                found.append(t)
    if not found:
        raise ValueError(
            f"no treatment column with variation among {CANONICAL_TREATMENTS} in the data")
    return tuple(found)


# --------------------------------------------------------------------------------------------
# Term labels
# --------------------------------------------------------------------------------------------
def interaction_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}:{pair[1]}"


def tidy_name(param: str) -> str:
    """'treat_skills:treat_capital:female' -> 'treat_skills_x_treat_capital_women'."""
    parts = param.split(":")
    suffix = ""
    if parts[-1] in ("female", "male"):
        suffix = "_women" if parts[-1] == "female" else "_men"
        parts = parts[:-1]
    return "_x_".join(parts) + suffix


EFFECT_KEYS = {"treat_skills": "skills", "treat_capital": "capital",
               "treat_skills_x_treat_capital": "skills_x_capital"}


# --------------------------------------------------------------------------------------------
# Stage keys and the per-study ``estimate:`` block
# --------------------------------------------------------------------------------------------
# Keys of the ``estimate:`` params group that are not regression-specification fields, with the
# defaults used when a key is absent.
STAGE_DEFAULTS: dict = {
    "outcomes": None,
    "primary_outcome": None,
    "transforms": list(TRANSFORMS),
    "trim_top_pct": 1.0,
    "by_round": True,
    "q_families": None,
    "alpha": 0.05,
    "mde_power": MDE_POWER,
    "seed": 20261201,
    "bootstrap_reps": 200,
    "permutations": 1000,
    "n_jobs": 2,
    "qte_quantiles": [0.1, 0.25, 0.5, 0.75, 0.9],
    "qte_fixed_effects": ["round"],
    "balance_covariates": ["female_owner", "owner_age", "owner_educ_years", "hh_size", "hours_week",
                           "skills_index", "credit_access", "profit_usd_ppp_month",
                           "revenue_usd_ppp_month"],
    "lee_cells": ["stratum"],
    "descriptive_regressors": ["skills_index", "credit_access"],
    "descriptive_controls": ["owner_age_bl", "owner_age_bl_missing", "owner_educ_years_bl",
                             "owner_educ_years_bl_missing", "hh_size_bl", "hh_size_bl_missing"],
    "descriptive_sample": "all_arms",
    "wild_bootstrap_below_clusters": 50,   # WCR p-values for models with fewer clusters (0: never)
    "wild_bootstrap_reps": 9999,
    "wild_bootstrap_weights": "auto",      # rademacher | webb | auto (Webb at or below 12 clusters)
    # per-study keys (usually set in a study's ``estimate:`` block, see study_params)
    "sample": None,            # {rounds: [...], survivors_only: bool}: rows of the effect models
    "gender_control": False,   # add female_owner as a control where it varies in the sample
}
STAGE_KEYS = tuple(STAGE_DEFAULTS)
# Every key an ``estimate:`` block may set (the params group, or a study's block on top of it, see
# study_params): the regression-specification fields of Spec (but ``outcome``) and the stage keys.
# pipeline.study.load_study rejects any other key in a study's block; docs/study_config.md
# documents each one (tests/test_study.py checks both).
ESTIMATE_KEYS = tuple(sorted(({f.name for f in fields(Spec)} - {"outcome"}) | set(STAGE_DEFAULTS)))


def split_params(params: dict) -> tuple[dict, dict]:
    """(regression-specification params, stage params with defaults filled in)."""
    spec_params = {k: v for k, v in params.items() if k not in STAGE_DEFAULTS}
    stage = {**STAGE_DEFAULTS, **{k: v for k, v in params.items() if k in STAGE_DEFAULTS}}
    if stage["descriptive_sample"] not in ("all_arms", "control_only"):
        raise ValueError("descriptive_sample must be 'all_arms' or 'control_only'")
    stage["ignored"] = []
    if spec_params.get("cluster", "cluster_id") is None and spec_params.get("vcov", "CR1") not in ("CR1", "HC1"):
        # CR2/CR3 are cluster-robust refinements; a study randomised by individual (cluster null)
        # gets HC1, as its published specification does
        stage["ignored"].append(f"vcov: {spec_params['vcov']} (no cluster: HC1)")
        spec_params["vcov"] = "CR1"
    if spec_params.get("vcov") == "HC1":
        spec_params["vcov"] = "CR1"  # with cluster null, CR1 is HC1
    check_sample(stage["sample"])
    return spec_params, stage


SAMPLE_KEYS = ("rounds", "survivors_only")


def check_sample(sample) -> None:
    if sample is None:
        return
    if not isinstance(sample, dict) or set(sample) - set(SAMPLE_KEYS):
        raise ValueError(f"estimate.sample must be a mapping with keys among {SAMPLE_KEYS}, got {sample!r}")


def study_params(params: dict, study_cfg: dict | None) -> dict:
    """The ``estimate:`` params group with the study's own ``estimate:`` block on top (the study
    wins, key by key). In the study block, ``controls: config`` means the study's ``controls:``
    list (canonical covariate names). Every other key is an ``estimate:`` params key (see
    ``docs/study_config.md``)."""
    out = dict(params or {})
    block = dict((study_cfg or {}).get("estimate") or {})
    if block.get("controls") == "config":
        block["controls"] = list((study_cfg or {}).get("controls") or [])
    out.update(block)
    return out
