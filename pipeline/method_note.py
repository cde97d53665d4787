"""A study's estimated specification in words, from what its estimate stage recorded.

The only input is ``estimate_summary.json`` (the stage's resolved specification: the params group
with the study's own ``estimate:`` block on top, checked against the data), never a params group,
so the report's method note and the estimate notebook describe the models as they were fitted.
"""
from __future__ import annotations

from pipeline.vocabulary import IGNORED_NOTE_PREFIX, ROUND_MODEL_PREFIX, SAMPLE_NOTE_PREFIX

VCOV_WORDS = {
    "CR1": "CR1, the Stata/statsmodels small-sample correction",
    "CR2": "CR2, Bell-McCaffrey, t with Bell-McCaffrey degrees of freedom for each coefficient and contrast, "
           "also in its minimum detectable effect; joint F-tests with G - 1",
    "CR3": "CR3, the cluster jackknife, t with G - 1 degrees of freedom",
}
WILD_WEIGHT_WORDS = {"auto": "Rademacher weights, Webb's six-point weights at or below 12 clusters",
                     "rademacher": "Rademacher weights", "webb": "Webb's six-point weights"}
SAMPLE_WORDS = {"rounds": "follow-up round(s) {} only", "survivors_only": "surviving (open) businesses only"}


def _names(values) -> str:
    return ", ".join(str(v) for v in values)


def baseline_words(spec: dict, outcomes: list[str]) -> str:
    """Whether the outcome's baseline value is a control (ANCOVA), outcome by outcome as resolved."""
    if not spec.get("baseline_control"):
        return "No baseline control (not requested)."
    by_outcome = spec.get("baseline_control_by_outcome") or {}
    with_bl = [o for o in outcomes if by_outcome.get(o)]
    without = [o for o in outcomes if not by_outcome.get(o)]
    if not with_bl:
        return "No baseline control (the study records no baseline value of its outcomes)."
    rule = ("0 plus a missing-baseline dummy where it is missing" if spec.get("missing_baseline", "dummy") == "dummy"
            else "units without a baseline left out (listwise)")
    text = f"Baseline value of the outcome as a control (ANCOVA; {rule})"
    if without:
        text += f" for {_names(with_bl)}; no baseline control for {_names(without)} (no baseline recorded)"
    return text + "."


def fixed_effect_words(spec: dict) -> str:
    """The fixed effects that absorb something: a column with one level among the rows (a study
    without strata has stratum "all") is named as such, not counted as a fixed effect."""
    levels = spec.get("fixed_effect_levels") or {}
    fe = [f for f in spec.get("fixed_effects") or [] if levels.get(f, 2) > 1]
    single = [f for f in spec.get("fixed_effects") or [] if f not in fe]
    text = f"Fixed effects: {_names(fe) if fe else 'none'}"
    if "stratum" not in fe:
        text += " (no strata fixed effects)"
    if single:
        text += f"; {_names(single)} {'has' if len(single) == 1 else 'have'} a single level here"
    return text + "."


def variance_words(spec: dict, wild: dict | None) -> str:
    """Standard errors as computed: clustered (with the estimator) or HC1, and any wild bootstrap p-values."""
    if spec.get("cluster"):
        vcov = spec.get("vcov") or "CR1"
        unit = ", each unit its own cluster," if spec.get("clusters") and spec.get("clusters") == spec.get("units") else ""
        text = f"Standard errors clustered by {spec['cluster']}{unit} ({VCOV_WORDS.get(vcov, vcov)})."
    else:
        text = "Heteroskedasticity-robust standard errors (HC1), not clustered."
    if wild and wild.get("rows_with_wild_p_value"):
        weights = WILD_WEIGHT_WORDS.get(wild["weights"], f"{wild['weights']} weights")
        text += (f" Wild cluster restricted bootstrap p-values ({weights}, {int(wild['reps']):,} "
                 f"samples) for models with fewer than {wild['below_clusters']} clusters.")
    return text


def sample_words(sample: dict | None) -> str:
    if not sample:
        return "Sample: every follow-up interview."
    parts = [SAMPLE_WORDS[k].format(_names(v) if isinstance(v, (list, tuple)) else v)
             for k, v in sample.items() if v not in (None, False) and k in SAMPLE_WORDS]
    return f"Sample: {'; '.join(parts) or 'every follow-up interview'}."


def method_note(summary: dict) -> str:
    """The specification recorded in ``estimate_summary.json``, in sentences."""
    spec = summary.get("specification") or {}
    outcomes = list(summary.get("outcomes") or [])
    primary = summary.get("primary_outcome")
    treatments = list(spec.get("treatments") or [])
    skipped = summary.get("skipped") or {}
    sentences = [
        f"OLS intention-to-treat effects on {_names(outcomes)} (primary outcome: {primary}).",
        f"Treatments: {_names(treatments)}" + (", with their interaction where the arms are crossed"
                                               if spec.get("interact_treatments") and len(treatments) > 1 else "") + ".",
        baseline_words(spec, outcomes),
        fixed_effect_words(spec),
        f"Controls: {_names(spec['controls'])}." if spec.get("controls") else "No other controls.",
        f"Weighted by {spec['weights']}." if spec.get("weights") else "Unweighted.",
        sample_words(spec.get("sample")),
        variance_words(spec, summary.get("wild_bootstrap")),
    ]
    if spec.get("gender_models", "gender_models" not in skipped):
        sentences.append("By owner gender: each treatment for women and for men and their difference"
                         + (", every other term (controls and fixed effects too) interacted with gender"
                            if spec.get("gender_interact_all") else "") + ".")
    else:
        sentences.append(f"No models by owner gender ({skipped.get('gender_models', 'not estimated')}).")
    transforms = [t for t in summary.get("transforms") or [] if t != "level"]
    rounds = [m for m in summary.get("models") or [] if m.startswith(ROUND_MODEL_PREFIX)]
    if transforms or len(rounds) > 1:
        sentences.append("Robustness: " + "; ".join(
            ([f"outcome transforms {_names(transforms)}"] if transforms else [])
            + ([f"each follow-up round alone ({_names(r.removeprefix(ROUND_MODEL_PREFIX) for r in rounds)})"]
               if len(rounds) > 1 else []))
            + ".")
    notes = summary.get("notes") or []
    ignored = [n.removeprefix(IGNORED_NOTE_PREFIX) for n in notes if n.startswith(IGNORED_NOTE_PREFIX)]
    if ignored:
        sentences.append(f"Ignored for this study: {'; '.join(ignored)}.")
    other = [n for n in notes if not n.startswith((IGNORED_NOTE_PREFIX, SAMPLE_NOTE_PREFIX))]
    if other:  # the sample notes are stated above
        sentences.append(f"Note: {'; '.join(other)}.")
    if summary.get("skipped_outcomes"):
        sentences.append(f"Outcomes not in the data, not estimated: {_names(summary['skipped_outcomes'])}.")
    return " ".join(sentences)
