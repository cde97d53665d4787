"""Synthetic field survey: a 2x2 business-training x capital-grant experiment.

The embedded default data of the pipeline. :func:`generate` simulates a panel of
micro-enterprises (baseline + follow-ups), randomises a 2x2 factorial at the
market level within region x sector strata, and then records it the way a real
field survey arrives: a Stata file in local currency, with mixed recall periods,
survey missing-value codes, typing errors, duplicate submissions, attrition and
direct identifiers. The true parameters are returned (and written) beside the
data as ``truth``, so later stages can be checked against them.

Parameters (the ``synthetic:`` group of params.yaml; every key is optional)
---------------------------------------------------------------------------
seed (20261128)
    Seed of ``numpy.random.default_rng``; everything is a pure function of params.
n_firms (3000)
    Number of micro-enterprises (one owner each).
n_followups (3)
    Follow-up rounds after the baseline (round 0); rounds are 0..n_followups.
share_female (0.5)
    Probability that an owner is a woman (independent of everything else).
n_regions (4), n_sectors (5)
    Regions x sectors are the randomisation strata.
firms_per_market (20)
    Target market (cluster) size. A market is one sector in one region, so it
    belongs to exactly one stratum. The number of markets is
    ``max(4 * n_strata, round(n_firms / firms_per_market))`` spread as evenly as
    possible over strata (every stratum has at least 4 markets, one per arm);
    firms are spread evenly (sizes differ by at most one) over markets at random.
lcu_per_usd_ppp (40.0)
    Local currency units per USD PPP; money in the survey is in LCU.
takeup_training (0.7)
    P(took_training = 1) for firms assigned training (0 otherwise and at baseline).
takeup_grant (0.9)
    P(received_grant = 1) for firms assigned the grant (0 otherwise and at baseline).
grant_usd_ppp (250)
    Grant size in USD PPP; recipients add a share of it to their capital stock.
share_weekly_recall (0.4)
    Per-interview probability that profit/revenue/costs are asked for the last
    week (recall_period = 1) rather than the last month (recall_period = 2).
share_duplicate_identical (0.015)
    Per-interview probability of a second, identical submission (only
    submission_id and submitted_at differ; the copy is 1 minute to 2 hours later).
share_duplicate_conflicting (0.01)
    Per-interview probability of a second submission with some answers differing.
    The later submission (2 hours to 4 days later) holds the correct answers; the
    earlier one has 1+ of profit/revenue/costs/hours_week/hh_size/owner_age wrong.
share_typo_extra_zero (0.004)
    Per-interview probability that a valid, non-zero profit answer is typed with
    an extra zero (value x 10).
share_missing_code (0.02)
    Per-answer probability that profit, revenue, costs, capital_stock (open
    businesses), owner_age or owner_educ_years is a missing code (-99 refused with
    probability 0.35, else -98 don't know). Half this rate gives -98 "don't know"
    in the business-practice items bp_01..bp_26.
attrition_control (0.12), attrition_treated (0.07)
    Per follow-up firm-round probability that the interview is absent from the
    file, in the control arm / in the three treated arms. Independent of
    everything else (missing at random within arm). Baseline is complete.
closure_rate_per_round (0.04)
    Per follow-up round probability that an open business closes (absorbing,
    independent of treatment and of profits).
effect_training_women (4), effect_training_men (5)
effect_grant_women (8), effect_grant_men (30)
effect_interaction_women (12), effect_interaction_men (0)
    True intention-to-treat effects on monthly profit in USD PPP (see below).

Estimand (what the ``effect_*`` params are, exactly)
----------------------------------------------------
ITT = E[profit | arm, gender] - E[profit | control, gender], profit being the
true monthly profit in USD PPP with a closed business counted as 0, in any
follow-up round (it is the same in every follow-up round, hence also pooled
over rounds), among firms interviewed at that round. ``effect_training_*`` is
the ITT of "training only", ``effect_grant_*`` that of "grant only", and the
"training + grant" arm's ITT is training + grant + interaction.

It holds exactly in expectation because: take-up of training and of the grant
are independent Bernoulli draws among the assigned; closures are independent of
treatment and of profits, so P(open at round t) = (1 - closure_rate)^t in every
arm; attrition is independent of outcomes within arm; and an open firm that took
up in round t >= 1 gets an additive profit increment

    T * e_T / p_T  +  G * e_G / p_G  +  T * G * e_TG / (p_T * p_G),   all / (1 - c)^t

(T, G = took_training, received_grant; p = take-up rates; c = closure rate).
Then E[increment * open] = e_T (training arm), e_G (grant arm) and
e_T + e_G + e_TG (both). "True profit" is the direct-question profit answer
before it is put in LCU per recall period, rounded, and before injected mess;
its reporting noise has mean zero. To recover it from the file: weekly values
x 52/12, / lcu_per_usd_ppp, closed (business_open = 0, coded -88) = 0.
Rounding to whole LCU changes this by < 0.06 USD PPP.

How the file is coded is described in :mod:`pipeline.synthetic_mess`, the latent
profit model in :mod:`pipeline.synthetic_firms`; this module holds the params, the
order of the random draws, the labels, the truth and the writer.

Randomness: one child generator per component (``rng.spawn``) and fixed-shape
draws, so switching a kind of mess off (share = 0) leaves every other variable,
and every retained row, unchanged. This is what the tests use as a reference.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.io import atomic_path, param, write_json
from pipeline.params import Synthetic
from pipeline.synthetic_firms import (ARM_HAS_GRANT, ARM_HAS_TRAINING, ARM_KEYS, ARM_LABELS,  # noqa: F401
                                      BASELINE_MEAN_PROFIT_USD_PPP, BP_COLUMNS, CAPITAL, EFFECT_PARAMS, SKILLS,
                                      SKILLS_X_CAPITAL, BUSINESS_PRACTICES,
                                      REGION_NAMES, SECTOR_NAMES, SEX_FEMALE, SEX_MALE, assign_design,
                                      draw_business, draw_closures, draw_owners, draw_practices, draw_takeup,
                                      draw_untreated_profit, effect_on_takers)
from pipeline.vocabulary import MEN, SEXES, WOMEN
from pipeline.synthetic_mess import (CODE_DONT_KNOW, CODE_NOT_APPLICABLE, COLUMNS, CONFLICT_COLUMNS,  # noqa: F401
                                     IDENTIFIER_COLUMNS, MISSING_CODES, WEEKS_PER_MONTH, _hex_ids,
                                     assemble_interviews, corrupt_conflicting, draw_attrition, draw_duplicates,
                                     draw_notes, export, fieldwork_timing, flat, inject_missing_codes,
                                     inject_typos, practice_answers, record_answers)

# --------------------------------------------------------------------------- params

# The keys of the ``synthetic:`` params group (typed in pipeline.params.Synthetic); their values
# are set only in params.yaml.
PARAM_KEYS = tuple(Synthetic.model_fields)

_SHARE_KEYS = (
    "share_female", "share_weekly_recall", "share_duplicate_identical",
    "share_duplicate_conflicting", "share_typo_extra_zero", "share_missing_code",
    "attrition_control", "attrition_treated", "closure_rate_per_round",
)


# Params that only the survey mess reads, not the latent world (firms, profits, practices): surveys
# differing only in these share one world (generate_variants).
MESS_ONLY_KEYS = ("share_typo_extra_zero",)

# Independent random streams, one per component; order fixed forever (append only).
RANDOM_STREAMS = (
    "design", "owners", "takeup", "profit", "closure", "business", "practices", "recall",
    "attrition", "missing", "typos", "duplicates", "timing", "ids", "notes",
)


# --------------------------------------------------------------------------- helpers

def resolve_params(params: dict) -> dict:
    """``params`` (the ``synthetic:`` group) checked: every key given (a missing one raises naming
    it), unknown keys and impossible values raise ValueError."""
    params = dict(params)
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ValueError(f"unknown synthetic params: {unknown}")
    p = {key: param(params, "synthetic", key) for key in PARAM_KEYS}
    for key in _SHARE_KEYS:
        if not 0.0 <= float(p[key]) <= 1.0:
            raise ValueError(f"{key} must be in [0, 1], got {p[key]}")
    for key in ("takeup_training", "takeup_grant"):
        if not 0.0 < float(p[key]) <= 1.0:
            raise ValueError(f"{key} must be in (0, 1], got {p[key]}")
    if p["closure_rate_per_round"] >= 1.0:
        raise ValueError("closure_rate_per_round must be < 1")
    if p["share_duplicate_identical"] + p["share_duplicate_conflicting"] > 1.0:
        raise ValueError("duplicate shares sum to more than 1")
    for key in ("n_regions", "n_sectors", "firms_per_market", "n_followups"):
        if int(p[key]) < 1:
            raise ValueError(f"{key} must be >= 1")
    if int(p["n_firms"]) < 4 * p["n_regions"] * p["n_sectors"]:
        raise ValueError("n_firms must be at least 4 x n_regions x n_sectors (one firm per arm and stratum)")
    if float(p["lcu_per_usd_ppp"]) <= 0:
        raise ValueError("lcu_per_usd_ppp must be positive")
    return p


def _category_names(base: list[str], n: int, prefix: str) -> dict[int, str]:
    return {k: (base[k - 1] if k <= len(base) else f"{prefix} {k}") for k in range(1, n + 1)}



# --------------------------------------------------------------------------- generate

def generate(params: dict) -> tuple[pd.DataFrame, dict[str, dict[int, str]], dict[str, str], dict]:
    """Return (survey, value_labels, variable_labels, truth). Pure, deterministic given params['seed'].

    ``survey`` has one row per submission (duplicates included), columns :data:`COLUMNS`,
    sorted by submitted_at then submission_id like a server export. Three steps, each with its own
    random streams: the latent world (:func:`_latent_world`), the survey mess
    (:func:`_survey_mess`) and the server export (:func:`_server_export`); then the truth.
    """
    return generate_variants(params, [{}])[0]


def generate_variants(params: dict, overrides: list[dict]) -> list[tuple]:
    """``[generate({**params, **o}) for o in overrides]``, the same results. When every override
    sets only :data:`MESS_ONLY_KEYS`, the latent world is drawn once for all: its random streams are
    independent of the mess's (:data:`RANDOM_STREAMS`) and it reads none of those keys, so each
    variant's survey is the one :func:`generate` makes (the simulation's two variants of a draw);
    so is the mess but the typos, the only part that reads those keys (:func:`inject_typos`)."""
    share_world = all(set(o) <= set(MESS_ONLY_KEYS) for o in overrides)
    world, out = None, []
    for override in overrides:
        p = resolve_params({**params, **override})
        rngs = dict(zip(RANDOM_STREAMS, np.random.default_rng(int(p["seed"])).spawn(len(RANDOM_STREAMS))))
        if world is None or not share_world:
            world = _latent_world(p, rngs)
            untyped = _survey_mess(p, world, rngs)
        answers = dict(untyped["answers"])         # inject_typos replaces answers["profit"], not the shared one
        out.append(_survey_of(p, world, {**untyped, "answers": answers,
                                         "typo": inject_typos(p, answers, world["business_open"], rngs["typos"])}))
    return out


def _survey_of(p: dict, world: dict, mess: dict) -> tuple[pd.DataFrame, dict[str, dict[int, str]], dict[str, str], dict]:
    """:func:`generate`'s result from the latent world and the survey mess (both read, never changed)."""
    survey, chosen = _server_export(world, mess)
    truth = _truth(p, design=world["design"], firm_arm=world["firm_arm"], female=world["owners"]["female"],
                   took_training_firm=world["takeup"]["took_training_firm"],
                   received_grant_firm=world["takeup"]["received_grant_firm"],
                   prob_open=world["prob_open"], counts=_mess_counts(world, mess, chosen, survey))
    return survey, _value_labels(p), _variable_labels(p), truth


def _latent_world(p: dict, rngs: dict) -> dict:
    """The latent world: design, owners, take-up, closures, profits, business and practices.
    Panel arrays have shape (n_firms, n_rounds); flattened firm-major later."""
    n_firms, n_rounds = int(p["n_firms"]), int(p["n_followups"]) + 1
    design = assign_design(p, rngs["design"])
    owners = draw_owners(p, n_firms, rngs["owners"])
    female = owners["female"]
    firm_market = design["firm_market"]
    firm_arm = design["market_arm"][firm_market]
    firm_region = design["market_region"][firm_market]
    firm_sector = design["market_sector"][firm_market]
    follow_up = np.broadcast_to(np.arange(n_rounds), (n_firms, n_rounds)) >= 1
    takeup = draw_takeup(p, firm_arm, follow_up, rngs["takeup"])
    business_open, prob_open = draw_closures(p, n_firms, n_rounds, rngs["closure"])
    profit = draw_untreated_profit(p, design, female, firm_region, firm_sector, n_rounds, rngs["profit"])
    increment = effect_on_takers(p, female, takeup["took_training"], takeup["received_grant"], prob_open)
    profit_reported = profit["profit_untreated"] + increment
    profit_true = np.where(business_open, profit_reported, 0.0)
    business = draw_business(p, female, profit, profit_true, takeup["received_grant"], rngs["business"])
    practices, bp_dont_know = draw_practices(p, profit["log_firm"], takeup["took_training"], rngs["practices"])
    return {"n_firms": n_firms, "n_rounds": n_rounds, "design": design, "owners": owners, "firm_arm": firm_arm,
            "firm_region": firm_region, "firm_sector": firm_sector, "follow_up": follow_up, "takeup": takeup,
            "business_open": business_open, "prob_open": prob_open, "profit_reported": profit_reported,
            "business": business, "practices": practices, "bp_dont_know": bp_dont_know}


def _survey_mess(p: dict, world: dict, rngs: dict) -> dict:
    """How the survey records the world but the typos (added by :func:`generate_variants`): recall
    periods, attrition, missing codes, timing, duplicates, ids and notes (answers edited in place)."""
    n_firms, n_rounds = world["n_firms"], world["n_rounds"]
    weekly = rngs["recall"].random((n_firms, n_rounds)) < p["share_weekly_recall"]
    answers, recall_period = record_answers(
        p, {**world["business"], "business_open": world["business_open"], "owners": world["owners"],
            "profit_reported": world["profit_reported"]}, weekly)
    attrited = draw_attrition(p, world["firm_arm"], world["follow_up"], rngs["attrition"])
    interviewed = ~attrited
    missing_counts = inject_missing_codes(p, answers, interviewed, rngs["missing"])
    keep = flat(interviewed)
    submitted_s, enumerator_id = fieldwork_timing(world["design"], world["firm_region"], n_rounds, rngs["timing"])
    dup = draw_duplicates(p, keep, rngs["duplicates"])
    id_bytes = rngs["ids"].integers(0, 256, (n_firms * n_rounds, 2, 16), dtype=np.uint8)
    notes = draw_notes(world["owners"], world["business_open"], np.repeat(np.arange(n_firms), n_rounds),
                       rngs["notes"])
    return {"answers": answers, "recall_period": recall_period, "attrited": attrited, "interviewed": interviewed,
            "missing_counts": missing_counts, "keep": keep, "submitted_s": submitted_s,
            "enumerator_id": enumerator_id, "dup": dup, "id_bytes": id_bytes, "notes": notes}


def _server_export(world: dict, mess: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """(survey, which answers of each conflicting duplicate were changed): the interviews as the
    server exports them. The conflicting duplicates' earlier submission has some answers wrong;
    the later copy is correct."""
    takeup, business_open = world["takeup"], world["business_open"]
    panel = {"submitted_s": mess["submitted_s"], "enumerator_id": mess["enumerator_id"],
             "took_training": takeup["took_training"], "received_grant": takeup["received_grant"],
             "business_open": business_open, "recall_period": mess["recall_period"],
             "practices": practice_answers(world["practices"], world["bp_dont_know"], business_open),
             "loan_any": world["business"]["loan_any"]}
    interviews = assemble_interviews(world["design"], world["owners"], world["firm_arm"], world["firm_region"],
                                     world["firm_sector"], panel, mess["answers"], mess["notes"],
                                     _hex_ids(mess["id_bytes"][:, 0]))
    dup = mess["dup"]
    correct_copies = interviews.loc[dup["conflicting"]]
    chosen = corrupt_conflicting(interviews, dup)
    return export(interviews, correct_copies, mess["keep"], dup, mess["id_bytes"]), chosen


def _mess_counts(world: dict, mess: dict, chosen: np.ndarray, survey: pd.DataFrame) -> dict:
    """The record of every piece of injected mess (``truth["mess"]``)."""
    arm_keep = world["firm_arm"][:, None] * np.ones(world["n_rounds"], dtype=int)
    attrited, interviewed, dup = mess["attrited"], mess["interviewed"], mess["dup"]
    business_open = world["business_open"]
    closed_all = ~business_open
    return {
        "duplicates_identical": int(dup["identical"].sum()),
        "duplicates_conflicting": int(dup["conflicting"].sum()),
        "conflicting_fields_changed": {c: int(chosen[:, j].sum()) for j, c in enumerate(CONFLICT_COLUMNS)},
        "typo_extra_zero": int((mess["typo"] & interviewed).sum()),
        "missing_codes": mess["missing_counts"],
        "bp_dont_know": int((world["bp_dont_know"] & (business_open & interviewed)[:, :, None]).sum()),
        "attrited_firm_rounds": {ARM_KEYS[a]: int((attrited & (arm_keep == a)).sum()) for a in ARM_KEYS},
        "planned_followup_firm_rounds": {ARM_KEYS[a]: int(((arm_keep == a) & world["follow_up"]).sum())
                                         for a in ARM_KEYS},
        "closed_firm_rounds": int(closed_all.sum()),
        "closed_firm_rounds_interviewed": int((closed_all & interviewed).sum()),
        "negative_profit_interviews": int(((world["profit_reported"] < 0) & business_open & interviewed).sum()),
        "interviews": int(mess["keep"].sum()),
        "rows": int(len(survey)),
    }


# --------------------------------------------------------------------------- labels

def _value_labels(p: dict) -> dict[str, dict[int, str]]:
    yes_no = {1: "Yes", 0: "No"}
    n_rounds = int(p["n_followups"]) + 1
    labels: dict[str, dict[int, str]] = {
        "round": {0: "Baseline", **{r: f"Follow-up {r}" for r in range(1, n_rounds)}},
        "region": _category_names(REGION_NAMES, int(p["n_regions"]), "Region"),
        "sector": _category_names(SECTOR_NAMES, int(p["n_sectors"]), "Sector"),
        "owner_sex": {SEX_MALE: "Male", SEX_FEMALE: "Female"},
        "treat_arm": dict(ARM_LABELS),
        "took_training": dict(yes_no),
        "received_grant": dict(yes_no),
        "business_open": dict(yes_no),
        "recall_period": {1: "Last week", 2: "Last month", CODE_NOT_APPLICABLE: MISSING_CODES[CODE_NOT_APPLICABLE]},
        "loan_any": dict(yes_no),
    }
    for col in BP_COLUMNS:
        labels[col] = {1: "Yes", 0: "No", CODE_DONT_KNOW: "Don't know",
                       CODE_NOT_APPLICABLE: MISSING_CODES[CODE_NOT_APPLICABLE]}
    return labels


def _variable_labels(p: dict) -> dict[str, str]:
    money = "local currency, over recall_period; -99/-98/-88 codes"
    labels = {
        "submission_id": "Submission id (server)",
        "submitted_at": "Submission time, YYYY-MM-DD HH:MM:SS (server)",
        "enumerator_id": "Enumerator id",
        "firm_id": "Enterprise id",
        "round": "Survey round (0 = baseline)",
        "region": "Region",
        "sector": "Sector of the business",
        "market_id": "Market (cluster of randomisation)",
        "owner_sex": "Sex of the owner",
        "owner_age": "Age of the owner, years (-99 refused, -98 don't know)",
        "owner_educ_years": "Owner's years of education (-99 refused, -98 don't know)",
        "hh_size": "Household size (persons)",
        "owner_name": "Owner name (DIRECT IDENTIFIER)",
        "phone": "Owner phone number (DIRECT IDENTIFIER)",
        "notes": "Enumerator notes, free text (may contain identifiers)",
        "treat_arm": "Assigned treatment arm",
        "took_training": "Attended the business training",
        "received_grant": "Received the capital grant",
        "business_open": "Business currently operating",
        "recall_period": "Recall period of profit, revenue and costs",
        "profit": f"Profit, direct question ({money})",
        "revenue": f"Sales revenue ({money})",
        "costs": f"Business expenses ({money})",
        "capital_stock": "Capital stock incl. inventory, local currency (-99/-98/-88 codes)",
        "hours_week": "Hours worked in the business last week (-88 closed)",
        "loan_any": "Any formal loan in the last 12 months",
    }
    for col, (_, _, question) in zip(BP_COLUMNS, BUSINESS_PRACTICES):
        labels[col] = question
    assert all(len(v) <= 80 for v in labels.values())
    return labels


# --------------------------------------------------------------------------- truth

# The estimand recorded in truth.json (what the ``effect_*`` params are; see the module docstring).
ESTIMAND = (
    "Intention-to-treat effect on monthly business profit in USD PPP: the expected "
    "difference in true monthly profit (closed businesses counted as 0 profit) between "
    "firms assigned to an arm and firms assigned to control, owners of the same gender, "
    "at any follow-up round (identical in every follow-up round, so also pooled over "
    "rounds 1..n_followups), among firms interviewed at that round. 'skills' = training "
    "only vs control; 'capital' = grant only vs control; 'skills_x_capital' = the extra "
    "effect when both are assigned (ITT of training + grant = skills + capital + "
    "skills_x_capital). Exact in expectation: take-up is independent Bernoulli among the "
    "assigned, closures and attrition are independent of treatment effects and profits, "
    "and an open taker's profit rises by effect / take-up rate / P(open at round t) "
    "(see effect_on_takers_usd_ppp_by_round). True profit = the direct profit answer "
    "before conversion to LCU per recall period, rounding and injected mess; to recover "
    "it: weekly values x weeks_per_month, divide by lcu_per_usd_ppp, closed (-88) = 0."
)


def _truth(p: dict, *, design: dict, firm_arm: np.ndarray, female: np.ndarray,
           took_training_firm: np.ndarray, received_grant_firm: np.ndarray,
           prob_open: np.ndarray, counts: dict) -> dict:
    """The true parameters and the record of every piece of injected mess."""
    itt = _true_itt(p)
    pt, pg = float(p["takeup_training"]), float(p["takeup_grant"])
    assigned_t, assigned_g = ARM_HAS_TRAINING[firm_arm], ARM_HAS_GRANT[firm_arm]
    return {
        "generator": "pipeline.synthetic",
        "params": dict(p),
        "units": "USD PPP per month",
        "estimand": ESTIMAND,
        "itt": itt,
        "itt_difference_women_minus_men": {k: v[WOMEN] - v[MEN] for k, v in itt.items()},
        "itt_by_arm": {
            "training_only": dict(itt[SKILLS]),
            "grant_only": dict(itt[CAPITAL]),
            "training_and_grant": {g: itt[SKILLS][g] + itt[CAPITAL][g] + itt[SKILLS_X_CAPITAL][g] for g in SEXES},
        },
        "effect_on_takers_usd_ppp_by_round": _effect_on_takers_by_round(itt, pt, pg, prob_open),
        "prob_business_open_by_round": {f"round_{t}": float(prob_open[t]) for t in range(len(prob_open))},
        "takeup": {
            "training": {"rate": pt, "realized_among_assigned": float(took_training_firm[assigned_t].mean())},
            "grant": {"rate": pg, "realized_among_assigned": float(received_grant_firm[assigned_g].mean())},
        },
        "baseline_mean_profit_usd_ppp": dict(BASELINE_MEAN_PROFIT_USD_PPP),
        "lcu_per_usd_ppp": float(p["lcu_per_usd_ppp"]),
        "weeks_per_month": WEEKS_PER_MONTH,
        "recall_period_codes": {"1": "last week", "2": "last month"},
        "missing_value_codes": {str(k): v for k, v in MISSING_CODES.items()},
        "identifier_columns": list(IDENTIFIER_COLUMNS),
        "design": _design_record(p, design, firm_arm, female, len(prob_open)),
        "mess": counts,
    }


def _true_itt(p: dict) -> dict[str, dict[str, float]]:
    """effect (skills / capital / skills_x_capital) -> {women, men: true ITT} from the params."""
    return {effect: {g: float(p[f"effect_{name}_{g}"]) for g in SEXES} for effect, name in EFFECT_PARAMS.items()}


def _effect_on_takers_by_round(itt: dict, pt: float, pg: float, prob_open: np.ndarray) -> dict:
    """The profit increment of an open taker in each follow-up round (effect / take-up / P(open))."""
    return {
        f"round_{t}": {
            "training_taker": {g: itt[SKILLS][g] / pt / prob_open[t] for g in SEXES},
            "grant_recipient": {g: itt[CAPITAL][g] / pg / prob_open[t] for g in SEXES},
            "both_extra": {g: itt[SKILLS_X_CAPITAL][g] / (pt * pg) / prob_open[t] for g in SEXES},
        }
        for t in range(1, len(prob_open))
    }


def _design_record(p: dict, design: dict, firm_arm: np.ndarray, female: np.ndarray, n_rounds: int) -> dict:
    """The realised randomisation design (``truth["design"]``)."""
    return {
        "n_firms": int(p["n_firms"]),
        "rounds": list(range(n_rounds)),
        "n_strata": int(design["n_strata"]),
        "n_markets": int(design["n_markets"]),
        "markets_per_stratum": {  # keyed "region r, sector s" (codes)
            f"region {s // int(p['n_sectors']) + 1}, sector {s % int(p['n_sectors']) + 1}": int(m)
            for s, m in enumerate(design["markets_per_stratum"])},
        "markets_by_arm": {ARM_KEYS[a]: int((design["market_arm"] == a).sum()) for a in ARM_KEYS},
        "firms_by_arm": {ARM_KEYS[a]: int((firm_arm == a).sum()) for a in ARM_KEYS},
        WOMEN: int(female.sum()),
        MEN: int((~female).sum()),
        "randomisation": "2x2 factorial at the market level, balanced within region x sector strata",
    }


# --------------------------------------------------------------------------- write / run

def write(survey: pd.DataFrame, value_labels: dict[str, dict[int, str]], variable_labels: dict[str, str],
          truth: dict, out_dir: str | Path) -> None:
    """Write out_dir/survey.dta (Stata 118, value and variable labels) and out_dir/truth.json.

    Both atomic; byte-identical for identical inputs (the .dta time stamp is fixed).
    """
    out_dir = Path(out_dir)
    frame = survey.copy()
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            frame[col] = frame[col].astype(object)
    with atomic_path(out_dir / "survey.dta") as tmp:
        frame.to_stata(
            tmp, write_index=False, version=118,
            time_stamp=dt.datetime(2026, 1, 1, 0, 0),
            data_label="Synthetic micro-enterprise survey (pipeline.synthetic)",
            variable_labels=variable_labels, value_labels=value_labels,
        )
    write_json(out_dir / "truth.json", truth)


def run(context) -> dict:
    """The synthetic stage (``context``: a :class:`pipeline.stage_context.StageContext`): generate
    the survey from the ``synthetic:`` group and write it to ``outputs["raw/synthetic"]`` (the raw
    folder; ``truth.json`` records the params); return a small summary."""
    out_dir = context.outputs["raw/synthetic"]
    survey, value_labels, variable_labels, truth = generate(dict(context.params))
    write(survey, value_labels, variable_labels, truth, out_dir)
    mess = truth["mess"]
    return {
        "out_dir": Path(out_dir).as_posix(),
        "rows": int(len(survey)),
        "interviews": mess["interviews"],
        "firms": int(survey["firm_id"].nunique()),
        "markets": truth["design"]["n_markets"],
        "duplicates": mess["duplicates_identical"] + mess["duplicates_conflicting"],
        "duplicates_identical": mess["duplicates_identical"],
        "duplicates_conflicting": mess["duplicates_conflicting"],
        "typos": mess["typo_extra_zero"],
        "attrited_firm_rounds": sum(mess["attrited_firm_rounds"].values()),
        "closed_firm_rounds_interviewed": mess["closed_firm_rounds_interviewed"],
    }
