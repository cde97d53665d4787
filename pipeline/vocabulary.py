"""The words of the results tables, defined once: the treatment terms and their effect keys, the
owners' sexes and samples, the model names and the term labels built from them.

The estimate stage writes these words (``pipeline.estimation``), the synthetic survey's truth uses
the same effect keys and sexes (``pipeline.synthetic``), and the readers of the results (the report
tables, the simulation study, the harmonised evidence) look rows up by them. No imports: every
stage may use this module without depending on anything else.
"""
from __future__ import annotations

# The canonical treatment columns (``treatments: auto``) and their crossed term.
TREATMENTS = ("treat_skills", "treat_capital")
INTERACTION_TERM = "treat_skills_x_treat_capital"
# Tidy term -> the short effect key of the metrics, plots and truth.json ("skills", ...).
EFFECT_KEYS = {"treat_skills": "skills", "treat_capital": "capital", INTERACTION_TERM: "skills_x_capital"}
TERM_OF_EFFECT = {key: term for term, key in EFFECT_KEYS.items()}

# Owners' sexes: the samples of the split models, the suffixes of the by-gender terms
# (``<term>_women``, ``<term>_men``) and the truth's keys; DIFF is the women - men contrast.
WOMEN, MEN, ALL, DIFF = "women", "men", "all", "diff"
SEXES = (WOMEN, MEN)
SAMPLES = (ALL, WOMEN, MEN)
DIFF_LABEL = "women − men"           # how the reader sees DIFF

# Models of the tidy table (then round_<r>, then descriptive), and the model of each sample's
# split regression.
POOLED, BY_GENDER, DESCRIPTIVE = "pooled", "by_gender", "descriptive"
SAMPLE_MODELS = {ALL: POOLED, WOMEN: "women_only", MEN: "men_only"}
MODELS = (POOLED, BY_GENDER, SAMPLE_MODELS[WOMEN], SAMPLE_MODELS[MEN])

# The model of the pooled specification on one follow-up round's rows: ROUND_MODEL_PREFIX + round.
ROUND_MODEL_PREFIX = "round_"

# The attrition table's arm - control rows are named ARM_TERM_PREFIX + the arm's label.
ARM_TERM_PREFIX = "arm: "

# The estimate summary's notes: a setting ignored for the study, and the sample of the effect models.
IGNORED_NOTE_PREFIX = "ignored: "
SAMPLE_NOTE_PREFIX = "effect models on"


def sex_term(term: str, sex: str) -> str:
    """The by-gender model's row of ``term`` for ``sex`` (a SEXES entry or DIFF): ``<term>_<sex>``."""
    return f"{term}_{sex}"


def round_model(r) -> str:
    """The model name of the pooled specification on round ``r`` only."""
    return f"{ROUND_MODEL_PREFIX}{r}"


def split_sex_term(name: str) -> tuple[str, str]:
    """``<term>_<sex>`` -> (term, sex); the inverse of :func:`sex_term`."""
    term, sex = name.rsplit("_", 1)
    return term, sex
