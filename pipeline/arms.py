"""What each treatment arm of a study is, as the result tables name it.

A study's arms (``treatment.arms`` of its configuration) carry 0/1 flags ``skills`` and
``capital``. The estimate stage's terms are ``treat_skills`` / ``treat_capital`` (factorial
designs) or ``arm_<slug>`` (one dummy per arm); this module maps them to the intervention they
test, for the synthesis and for the estimate stage's arm averages.
"""
from __future__ import annotations

from typing import Mapping

from pipeline.vocabulary import EFFECT_KEYS, TREATMENTS

# The result term of each single intervention -> its name ("skills", "capital": the effect keys).
INTERVENTION_TERMS = {t: EFFECT_KEYS[t] for t in TREATMENTS}
INTERVENTIONS = tuple(INTERVENTION_TERMS.values())


def arm_interventions(arms: Mapping) -> dict[str, str]:
    """Result term of each single-intervention arm -> 'skills' or 'capital'.

    Arms that bundle both interventions are left out: in a 2x2 design their extra effect is the
    ``treat_skills_x_treat_capital`` interaction, which is not an effect of either alone."""
    terms = dict(INTERVENTION_TERMS)
    for arm in arms.values():
        kinds = [k for k in INTERVENTIONS if int(arm.get(k, 0))]
        if len(kinds) == 1:
            terms[f"arm_{arm['slug']}"] = kinds[0]
    return terms


def arm_average_term(intervention: str) -> str:
    """The tidy term of the average of a study's arms of one intervention (see
    :func:`intervention_arm_groups`)."""
    return f"{intervention}_arms_avg"


def intervention_arm_groups(arms: Mapping) -> dict[str, tuple[str, ...]]:
    """Intervention -> the result terms of its single-intervention arms, for every intervention
    tested by more than one arm (e.g. a finance and a marketing training against one control).

    Such arms share their control group, so their effects are correlated and must not enter a
    meta-analysis as independent studies; the estimate stage reports their average as one more
    term (``arm_average_term``), with its standard error from the joint covariance."""
    groups: dict[str, list[str]] = {}
    for term, intervention in arm_interventions(arms).items():
        if term.startswith("arm_"):
            groups.setdefault(intervention, []).append(term)
    return {k: tuple(v) for k, v in groups.items() if len(v) > 1}
