"""The regression specification (:class:`Spec`, built from the ``estimate:`` params group), the
split of that group into specification fields and stage keys (both listed, with their types, in
:mod:`pipeline.config`; their values only in params.yaml), the per-study ``estimate:`` block, and
the labels of the terms (parameter names and their tidy-table names; the words themselves are
in :mod:`pipeline.vocabulary`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import ESTIMATE_KEYS, SPEC_FIELDS, STAGE_FIELDS
from pipeline.estimation.columns import followup_mask
from pipeline.estimation.variance import VCOV_TYPES
from pipeline.io import param
from pipeline.vocabulary import DIFF, SEXES, sex_term
# The names of the tidy tables, from pipeline.vocabulary (re-exported for the estimation package).
from pipeline.vocabulary import ARM_TERM_PREFIX, EFFECT_KEYS, MODELS, SAMPLES  # noqa: F401
from pipeline.vocabulary import TREATMENTS as CANONICAL_TREATMENTS

# Outcome transforms (see transform_outcome). For log and ihs the effect is not in the outcome's
# units, so no "% of the control mean" is given for them.
TRANSFORMS = ("level", "unwinsorised", "log", "ihs", "trimmed")
NONLINEAR_TRANSFORMS = ("log", "ihs")
# Units without a baseline value of the outcome (Spec.missing_baseline): "dummy" keeps them with
# Y_bl = 0 and Y_bl_missing = 1 as controls; "listwise" drops them from the estimation sample.
MISSING_BASELINE = ("dummy", "listwise")


@dataclass
class Spec:
    """One regression specification (built from the ``estimate:`` params group by
    :meth:`from_params`). No field has a default: every value comes from params.yaml (plus the
    study's ``estimate:`` block), so code and configuration cannot disagree.

    List-valued fields accept any sequence and are stored as tuples.
    """

    outcome: str
    treatments: list[str]
    interact_treatments: bool   # add treat_skills:treat_capital where the study crosses them
    baseline_control: bool      # ANCOVA when the Y_bl / Y_bl_missing columns exist
    fixed_effects: list[str]
    cluster: str | None         # None -> HC1
    weights: str | None
    controls: list[str]
    followup_only: bool
    gender_interact_all: bool   # by_gender: interact baseline, controls and FE with gender
    # Covariance: "CR1" (statsmodels' cluster default, HC1 without cluster; reproduces published
    # results; t(G-1)), "CR2" (Bell-McCaffrey with the full-model hat matrix, t with each contrast's
    # Bell-McCaffrey df; the recommended default, see the simulation study) or "CR3" (cluster
    # jackknife, MacKinnon-Nielsen-Webb 2023; FE refitted in every leave-one-cluster-out estimate;
    # t(G-1)). See estimation/variance.py.
    vcov: str
    # ANCOVA rows without a baseline: "dummy" (Y_bl = 0 plus the Y_bl_missing dummy) or
    # "listwise" (left out of the estimation sample). See MISSING_BASELINE.
    missing_baseline: str

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
    def from_params(cls, params: dict, outcome: str, df: pd.DataFrame | None = None) -> Spec:
        """Build a Spec from the resolved ``estimate:`` params (every Spec field but ``outcome``
        must be given; stage keys, see :func:`split_params`, may be present and are ignored).

        ``treatments: auto`` means those of ``treat_skills`` / ``treat_capital`` that exist in
        ``df`` and vary among follow-up rows.
        """
        params = dict(params)
        unknown = sorted(set(params) - set(SPEC_FIELDS) - set(STAGE_FIELDS))
        if unknown:
            raise ValueError(f"unknown estimate parameter(s) {unknown}; allowed: {sorted(ESTIMATE_KEYS)}")
        values = {key: param(params, "estimate", key) for key in SPEC_FIELDS}
        if values["treatments"] == "auto":
            if df is None:
                raise ValueError("estimate.treatments is 'auto' and no data was given to infer them from")
            values["treatments"] = _infer_treatments(df, values["followup_only"])
        return cls(outcome=outcome, **values)


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
# The gender levels of the by_gender model's parameters (``treat_capital:female``, see
# :func:`gender_param`) -> the sex of their tidy term (``treat_capital_women``).
FEMALE, MALE = "female", "male"
GENDER_LEVELS = {FEMALE: SEXES[0], MALE: SEXES[1]}


def gender_param(name: str, level: str) -> str:
    """The by_gender model's parameter of ``name`` for a GENDER_LEVELS key: ``<name>:<level>``."""
    return f"{name}:{level}"


def interaction_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}:{pair[1]}"


def tidy_name(param: str) -> str:
    """'treat_skills:treat_capital:female' -> 'treat_skills_x_treat_capital_women'."""
    parts = param.split(":")
    if parts[-1] in GENDER_LEVELS:
        return sex_term("_x_".join(parts[:-1]), GENDER_LEVELS[parts[-1]])
    return "_x_".join(parts)


def diff_name(param: str) -> str:
    """'treat_capital' -> 'treat_capital_diff': the women - men contrast of a by-gender term."""
    return sex_term(tidy_name(param), DIFF)


# --------------------------------------------------------------------------------------------
# Stage keys and the per-study ``estimate:`` block
# --------------------------------------------------------------------------------------------
# The keys of the ``estimate:`` params group (and of a study's ``estimate:`` block), listed once,
# with their types, in pipeline.config: regression-specification fields of Spec (all but
# ``outcome``) and stage keys. Their values are set only in params.yaml.
STAGE_KEYS = tuple(STAGE_FIELDS)


def split_params(params: dict) -> tuple[dict, dict]:
    """(regression-specification params, stage params) of the resolved ``estimate:`` params;
    every key must be present (a missing one raises, naming it)."""
    for key in ESTIMATE_KEYS:
        param(params, "estimate", key)
    unknown = sorted(set(params) - set(ESTIMATE_KEYS))
    if unknown:
        raise ValueError(f"unknown estimate parameter(s) {unknown}; allowed: {sorted(ESTIMATE_KEYS)}")
    spec_params = {k: v for k, v in params.items() if k in SPEC_FIELDS}
    stage = {k: params[k] for k in STAGE_FIELDS}
    if stage["descriptive_sample"] not in ("all_arms", "control_only"):
        raise ValueError("descriptive_sample must be 'all_arms' or 'control_only'")
    stage["ignored"] = []
    if spec_params["cluster"] is None and spec_params["vcov"] not in ("CR1", "HC1"):
        # CR2/CR3 are cluster-robust refinements; a study randomised by individual (cluster null)
        # gets HC1, as its published specification does
        stage["ignored"].append(f"vcov: {spec_params['vcov']} (no cluster: HC1)")
        spec_params["vcov"] = "CR1"
    if spec_params["vcov"] == "HC1":
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
