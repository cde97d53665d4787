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

Coding in the file
------------------
One row per submission; columns :data:`COLUMNS`; sorted by submitted_at, then
submission_id. Money (profit, revenue, costs) is in whole LCU over the
recall_period (1 last week = monthly / (52/12), 2 last month); capital_stock is
in LCU, rounded to hundreds. A closed business (business_open = 0) has -88 in
profit, revenue, costs, capital_stock, hours_week, recall_period and bp_*.
-99 refused / -98 don't know appear as described under share_missing_code. A
genuine answer that would equal a code is shifted by -3 (e.g. a loss of -88
LCU is recorded as -91), so a code always means a code. owner_sex 1 Male /
2 Female; treat_arm 1 Control / 2 Training only / 3 Grant only / 4 Training +
grant; yes/no items 1/0. owner_name, phone and notes are direct identifiers
(notes: about 14% name or phone the owner, e.g. "call back on 0712 345 678").

Latent model (module constants below)
-------------------------------------
Untreated monthly profit (USD PPP) of firm i, market k, round t, gender g:
``mean_g * growth_t * region_r * sector_s * exp(a_i + m_k + e_it - var/2) + d_it``
with log-normal firm productivity a_i, market effect m_k, AR(1) round shocks
e_it and additive mean-zero noise d_it (which makes a few profits negative).
Baseline means: women 80, men 120 USD PPP per month; market ICC about 0.05;
round-to-round correlation of profits about 0.4.

Randomness: one child generator per component (``rng.spawn``) and fixed-shape
draws, so switching a kind of mess off (share = 0) leaves every other variable,
and every retained row, unchanged. This is what the tests use as a reference.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from pipeline.io import atomic_path, write_json

# --------------------------------------------------------------------------- params

DEFAULT_PARAMS: dict[str, Any] = {
    "seed": 20261128,
    "n_firms": 3000,
    "n_followups": 3,
    "share_female": 0.5,
    "n_regions": 4,
    "n_sectors": 5,
    "firms_per_market": 20,
    "lcu_per_usd_ppp": 40.0,
    "takeup_training": 0.7,
    "takeup_grant": 0.9,
    "grant_usd_ppp": 250,
    "share_weekly_recall": 0.4,
    "share_duplicate_identical": 0.015,
    "share_duplicate_conflicting": 0.01,
    "share_typo_extra_zero": 0.004,
    "share_missing_code": 0.02,
    "attrition_control": 0.12,
    "attrition_treated": 0.07,
    "closure_rate_per_round": 0.04,
    "effect_training_women": 4,
    "effect_training_men": 5,
    "effect_grant_women": 8,
    "effect_grant_men": 30,
    "effect_interaction_women": 12,
    "effect_interaction_men": 0,
}

_SHARE_KEYS = (
    "share_female", "share_weekly_recall", "share_duplicate_identical",
    "share_duplicate_conflicting", "share_typo_extra_zero", "share_missing_code",
    "attrition_control", "attrition_treated", "closure_rate_per_round",
)

# --------------------------------------------------------------------------- constants

WEEKS_PER_MONTH = 52 / 12
CODE_REFUSED, CODE_DONT_KNOW, CODE_NOT_APPLICABLE = -99, -98, -88
MISSING_CODES = {CODE_REFUSED: "Refused", CODE_DONT_KNOW: "Don't know",
                 CODE_NOT_APPLICABLE: "Not applicable (business closed)"}
SHARE_REFUSED_AMONG_MISSING = 0.35

SEX_MALE, SEX_FEMALE = 1, 2
ARM_LABELS = {1: "Control", 2: "Training only", 3: "Grant only", 4: "Training + grant"}
ARM_KEYS = {1: "control", 2: "training_only", 3: "grant_only", 4: "training_and_grant"}
ARM_HAS_TRAINING = np.array([False, False, True, False, True])  # index = arm code
ARM_HAS_GRANT = np.array([False, False, False, True, True])

# Latent profit model (USD PPP per month).
BASELINE_MEAN_PROFIT_USD_PPP = {"women": 80.0, "men": 120.0}
GROWTH_PER_ROUND = 0.03          # common (all arms) profit growth per round
SD_LOG_FIRM = 0.55               # firm productivity (persistent)
SD_LOG_MARKET = 0.25             # market effect (drives the ICC, about 0.05)
SD_LOG_REGION = 0.10
SD_LOG_SECTOR = 0.12
SD_LOG_SHOCK = 0.70              # round shocks, AR(1) with coefficient AR_SHOCK
AR_SHOCK = 0.15
SD_NOISE_SHARE_OF_MEAN = 0.25    # additive mean-zero noise, sd = share x gender mean (~4% < 0)
# Revenue/costs: costs = cost_ratio_i x business scale (+ any loss), revenue = costs + profit,
# each then reported with multiplicative mean-one error.
MEDIAN_COST_RATIO, SD_LOG_COST_RATIO, SD_LOG_COST_ROUND = 1.8, 0.35, 0.15
SD_LOG_REPORTING_REV_COSTS = 0.25
# Capital stock (USD PPP): log-normal, raised by a share of the grant.
MEAN_CAPITAL_USD_PPP = {"women": 350.0, "men": 600.0}
SD_LOG_CAPITAL, SD_LOG_CAPITAL_ROUND = 1.0, 0.20
GRANT_SHARE_INVESTED = {"women": 0.5, "men": 0.8}
CAPITAL_ROUNDING_LCU = 100       # capital is reported in round hundreds (heaping)
# Hours worked per week in the business.
MEAN_HOURS = {"women": 40.0, "men": 48.0}
SD_HOURS_FIRM, SD_HOURS_ROUND = 10.0, 6.0
# Business practices: logit(P yes) = practice propensity + item intercept + training effect.
TRAINING_LOGIT_EFFECT = {"marketing": 0.6, "buying_stock": 0.5,
                         "record_keeping": 0.9, "financial_planning": 0.9}
# Fieldwork calendar: round r starts FIELDWORK_START + r x ROUND_SPACING_DAYS.
FIELDWORK_START = np.datetime64("2024-02-05", "D")
ROUND_SPACING_DAYS = 182
FIELDWORK_WINDOW_DAYS = 56
ENUMERATORS_PER_REGION = 4

# McKenzie & Woodruff (2017) 26 business practices: (area, item intercept, question).
BUSINESS_PRACTICES: list[tuple[str, float, str]] = [
    ("marketing", 0.3, "Visited a competitor's business to see prices (3 months)"),
    ("marketing", 0.1, "Visited a competitor's business to see products (3 months)"),
    ("marketing", -0.2, "Asked customers whether other products wanted (3 months)"),
    ("marketing", -1.0, "Talked to a former customer about why they stopped buying"),
    ("marketing", -0.3, "Asked a supplier which products are selling well (3 months)"),
    ("marketing", -0.4, "Used a special offer to attract customers (3 months)"),
    ("marketing", -1.2, "Advertised in any form (last 6 months)"),
    ("buying_stock", 0.2, "Negotiated a lower price with a supplier (3 months)"),
    ("buying_stock", 0.0, "Compared prices or quality of alternative suppliers"),
    ("buying_stock", 0.4, "Does not run out of stock frequently"),
    ("record_keeping", -0.6, "Keeps written business records"),
    ("record_keeping", -1.0, "Records every purchase and sale"),
    ("record_keeping", -0.9, "Can use records to see how much cash is on hand"),
    ("record_keeping", -1.3, "Uses records to know if sales of a product rise or fall"),
    ("record_keeping", -1.1, "Works out the cost of each main product sold"),
    ("record_keeping", -0.5, "Knows which goods make the most profit per item"),
    ("record_keeping", -1.8, "Has a written budget of monthly expenses"),
    ("record_keeping", -2.0, "Has records that could be used to get a bank loan"),
    ("financial_planning", -1.4, "Reviews financial performance at least monthly"),
    ("financial_planning", -1.6, "Has a target for sales over the next year"),
    ("financial_planning", -2.0, "Compares sales to the target at least monthly"),
    ("financial_planning", -2.1, "Has a budget of likely costs for the next year"),
    ("financial_planning", -2.5, "Prepares an annual profit and loss statement"),
    ("financial_planning", -2.7, "Prepares an annual cash-flow statement"),
    ("financial_planning", -2.8, "Prepares an annual balance sheet"),
    ("financial_planning", -2.4, "Prepares an annual income and expenditure sheet"),
]
BP_COLUMNS = [f"bp_{j:02d}" for j in range(1, len(BUSINESS_PRACTICES) + 1)]

REGION_NAMES = ["Central", "Coast", "Lakeside", "Highlands", "Rift", "Western", "Eastern", "Northern"]
SECTOR_NAMES = ["Retail and trading", "Tailoring and garments", "Food and restaurants",
                "Hair and beauty services", "Crafts and manufacturing", "Repairs",
                "Agro-processing", "Transport"]

FIRST_NAMES_FEMALE = [
    "Achieng", "Akinyi", "Wanjiru", "Njeri", "Wambui", "Atieno", "Nyambura", "Chebet",
    "Jepkosgei", "Mwende", "Mumbua", "Kerubo", "Moraa", "Nafula", "Naliaka", "Awino",
    "Wairimu", "Muthoni", "Faith", "Grace", "Mercy", "Esther", "Joyce", "Beatrice",
    "Janet", "Caroline", "Purity", "Lucy", "Rose", "Agnes"]
FIRST_NAMES_MALE = [
    "Otieno", "Ochieng", "Kamau", "Mwangi", "Kiprop", "Kipchoge", "Mutua", "Musyoka",
    "Onyango", "Omondi", "Wekesa", "Barasa", "Kariuki", "Njoroge", "Odhiambo", "Juma",
    "Hassan", "Peter", "David", "James", "Joseph", "Daniel", "Samuel", "Brian", "Kevin",
    "Collins", "Dennis", "Stephen", "Patrick", "George"]
LAST_NAMES = [
    "Otieno", "Ochieng", "Kamau", "Mwangi", "Wanjiku", "Kiprotich", "Mutua", "Onyango",
    "Omondi", "Wekesa", "Barasa", "Kariuki", "Njoroge", "Odhiambo", "Chebet", "Rotich",
    "Korir", "Kiplagat", "Maina", "Gitau", "Macharia", "Owino", "Okello", "Wafula",
    "Simiyu", "Nyaga", "Muriuki", "Kilonzo", "Mbithi", "Ndungu", "Achieng", "Auma",
    "Langat", "Cheruiyot", "Mugo", "Karanja", "Wambua", "Kioko", "Nzioka", "Ouma"]
GENERIC_NOTES = [
    "Owner busy with customers; interview completed in two visits",
    "Stall relocated within the same market",
    "Respondent unsure about last month's sales, gave best estimate",
    "Power outage during interview",
    "Spouse helped answer the revenue questions",
    "Interview interrupted by rain, resumed later",
    "Respondent asked about the next training session",
    "Market day; many customers present",
]

# Independent random streams, one per component; order fixed forever (append only).
RANDOM_STREAMS = (
    "design", "owners", "takeup", "profit", "closure", "business", "practices", "recall",
    "attrition", "missing", "typos", "duplicates", "timing", "ids", "notes",
)

COLUMNS = (
    ["submission_id", "submitted_at", "enumerator_id", "firm_id", "round", "region", "sector",
     "market_id", "owner_sex", "owner_age", "owner_educ_years", "hh_size", "owner_name",
     "phone", "notes", "treat_arm", "took_training", "received_grant", "business_open",
     "recall_period", "profit", "revenue", "costs", "capital_stock", "hours_week"]
    + BP_COLUMNS + ["loan_any"]
)
IDENTIFIER_COLUMNS = ["owner_name", "phone", "notes"]
MONEY_COLUMNS = ["profit", "revenue", "costs"]
MISSING_CODE_COLUMNS = ["profit", "revenue", "costs", "capital_stock", "owner_age", "owner_educ_years"]
CONFLICT_COLUMNS = ["profit", "revenue", "costs", "hours_week", "hh_size", "owner_age"]
CONFLICT_FIELD_PROB = 0.35


# --------------------------------------------------------------------------- helpers

def resolve_params(params: dict | None) -> dict:
    """Defaults overlaid with ``params``; unknown keys and impossible values raise ValueError."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise ValueError(f"unknown synthetic params: {unknown}")
    p = {**DEFAULT_PARAMS, **params}
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


def _hex_ids(raw: np.ndarray) -> np.ndarray:
    """uuid-style strings 'uuid:xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx' from (n, 16) random bytes."""
    n = len(raw)
    hex_ascii = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    nibbles = hex_ascii[np.stack([raw >> 4, raw & 15], axis=-1).reshape(n, 32)]
    out = np.empty((n, 41), dtype=np.uint8)
    out[:, :5] = np.frombuffer(b"uuid:", dtype=np.uint8)
    dash = ord("-")
    for start, stop, at in ((0, 8, 5), (8, 12, 14), (12, 16, 19), (16, 20, 24), (20, 32, 29)):
        out[:, at:at + stop - start] = nibbles[:, start:stop]
        if at + stop - start < 41:
            out[:, at + stop - start] = dash
    return np.ascontiguousarray(out).view("S41").ravel().astype("U41")


def _digits(rng: np.random.Generator, n: int, width: int) -> pd.Series:
    """``n`` zero-padded random digit strings of ``width`` digits."""
    values = rng.integers(0, 10 ** width, size=n)
    return pd.Series(values).astype(str).str.zfill(width)


def _avoid_codes(values: np.ndarray) -> np.ndarray:
    """Shift genuine answers that happen to equal a missing code by -3 (e.g. -88 -> -91)."""
    is_code = np.isin(values, list(MISSING_CODES))
    return np.where(is_code, values - 3, values)


# --------------------------------------------------------------------------- design

def _assign_design(p: dict, rng: np.random.Generator) -> dict:
    """Markets in strata, arms at random within strata (balanced), firms to markets."""
    n_regions, n_sectors, n_firms = int(p["n_regions"]), int(p["n_sectors"]), int(p["n_firms"])
    n_strata = n_regions * n_sectors
    n_markets = max(4 * n_strata, int(round(n_firms / p["firms_per_market"])))
    base, extra = divmod(n_markets, n_strata)
    markets_per_stratum = np.full(n_strata, base)
    markets_per_stratum[rng.permutation(n_strata)[:extra]] += 1
    market_stratum = np.repeat(np.arange(n_strata), markets_per_stratum)
    # Position of each market in a random order within its stratum.
    order = np.lexsort((rng.random(n_markets), market_stratum))
    first_of_stratum = np.concatenate([[0], np.cumsum(markets_per_stratum)[:-1]])
    position = np.empty(n_markets, dtype=np.int64)
    position[order] = np.arange(n_markets) - first_of_stratum[market_stratum[order]]
    # Each stratum cycles through its own random permutation of the four arms: full
    # cycles are exactly balanced; a partial cycle gets a random subset of arms.
    arm_permutation = np.argsort(rng.random((n_strata, 4)), axis=1) + 1
    market_arm = arm_permutation[market_stratum, position % 4]
    # Firms: evenly over markets, at random.
    firm_market = np.empty(n_firms, dtype=np.int64)
    firm_market[rng.permutation(n_firms)] = np.arange(n_firms) % n_markets
    return {
        "n_strata": n_strata,
        "n_markets": n_markets,
        "markets_per_stratum": markets_per_stratum,
        "market_region": market_stratum // n_sectors + 1,
        "market_sector": market_stratum % n_sectors + 1,
        "market_arm": market_arm,
        "firm_market": firm_market,
    }


def _draw_owners(p: dict, n_firms: int, rng: np.random.Generator) -> dict:
    """Owner gender, age, education, household size, name and phone (firm level)."""
    female = rng.random(n_firms) < p["share_female"]
    age_exact = 18.0 + np.minimum(rng.gamma(4.0, 5.0, n_firms), 52.0)
    educ = np.where(female, rng.binomial(16, 0.50, n_firms), rng.binomial(16, 0.56, n_firms))
    hh_size = np.minimum(1 + rng.poisson(3.5, n_firms), 14)
    first_f = rng.choice(FIRST_NAMES_FEMALE, n_firms)
    first_m = rng.choice(FIRST_NAMES_MALE, n_firms)
    first = pd.Series(np.where(female, first_f, first_m), dtype="str")
    last = pd.Series(rng.choice(LAST_NAMES, n_firms), dtype="str")
    a, b, c = _digits(rng, n_firms, 2), _digits(rng, n_firms, 3), _digits(rng, n_firms, 3)
    return {
        "female": female,
        "age_exact": age_exact,
        "educ": educ,
        "hh_size": hh_size,
        "first_name": first,
        "owner_name": first + " " + last,
        "phone": "+254 7" + a + " " + b + " " + c,
        "phone_local": "07" + a + " " + b + " " + c,
    }


# --------------------------------------------------------------------------- generate

def generate(params: dict) -> tuple[pd.DataFrame, dict[str, dict[int, str]], dict[str, str], dict]:
    """Return (survey, value_labels, variable_labels, truth). Pure, deterministic given params['seed'].

    ``survey`` has one row per submission (duplicates included), columns :data:`COLUMNS`,
    sorted by submitted_at then submission_id like a server export.
    """
    p = resolve_params(params)
    rngs = dict(zip(RANDOM_STREAMS, np.random.default_rng(int(p["seed"])).spawn(len(RANDOM_STREAMS))))
    n_firms, n_rounds = int(p["n_firms"]), int(p["n_followups"]) + 1
    n_panel = n_firms * n_rounds
    lcu = float(p["lcu_per_usd_ppp"])

    design = _assign_design(p, rngs["design"])
    owners = _draw_owners(p, n_firms, rngs["owners"])
    female = owners["female"]
    gender_key = np.where(female, "women", "men")
    firm_market = design["firm_market"]
    firm_arm = design["market_arm"][firm_market]
    firm_region = design["market_region"][firm_market]
    firm_sector = design["market_sector"][firm_market]

    # Panel arrays have shape (n_firms, n_rounds); flattened firm-major later.
    rounds = np.broadcast_to(np.arange(n_rounds), (n_firms, n_rounds))
    follow_up = rounds >= 1

    # ---- take-up (firm level; effective from round 1)
    rng = rngs["takeup"]
    took_training_firm = ARM_HAS_TRAINING[firm_arm] & (rng.random(n_firms) < p["takeup_training"])
    received_grant_firm = ARM_HAS_GRANT[firm_arm] & (rng.random(n_firms) < p["takeup_grant"])
    took_training = took_training_firm[:, None] & follow_up
    received_grant = received_grant_firm[:, None] & follow_up

    # ---- closures (absorbing, independent of treatment)
    closes = rngs["closure"].random((n_firms, n_rounds)) < p["closure_rate_per_round"]
    closes[:, 0] = False
    business_open = ~np.logical_or.accumulate(closes, axis=1)
    prob_open = (1.0 - p["closure_rate_per_round"]) ** np.arange(n_rounds)

    # ---- untreated profit (USD PPP / month)
    rng = rngs["profit"]
    mean_profit = np.where(female, BASELINE_MEAN_PROFIT_USD_PPP["women"], BASELINE_MEAN_PROFIT_USD_PPP["men"])
    log_region = rng.normal(0, SD_LOG_REGION, int(p["n_regions"]))
    log_sector = rng.normal(0, SD_LOG_SECTOR, int(p["n_sectors"]))
    region_mult = np.exp(log_region) / np.exp(log_region).mean()
    sector_mult = np.exp(log_sector) / np.exp(log_sector).mean()
    log_firm = rng.normal(0, SD_LOG_FIRM, n_firms)
    log_market = rng.normal(0, SD_LOG_MARKET, design["n_markets"])[firm_market]
    innovations = rng.normal(0, SD_LOG_SHOCK, (n_firms, n_rounds))
    shock = np.empty((n_firms, n_rounds))
    shock[:, 0] = innovations[:, 0]
    for t in range(1, n_rounds):  # loop over rounds (a handful), vectorised over firms
        shock[:, t] = AR_SHOCK * shock[:, t - 1] + np.sqrt(1 - AR_SHOCK ** 2) * innovations[:, t]
    log_var = SD_LOG_FIRM ** 2 + SD_LOG_MARKET ** 2 + SD_LOG_SHOCK ** 2
    growth = (1.0 + GROWTH_PER_ROUND) ** np.arange(n_rounds)
    scale = ((mean_profit * region_mult[firm_region - 1] * sector_mult[firm_sector - 1])[:, None]
             * growth[None, :]
             * np.exp((log_firm + log_market)[:, None] + shock - log_var / 2))
    noise = rng.normal(0, 1, (n_firms, n_rounds)) * (SD_NOISE_SHARE_OF_MEAN * mean_profit)[:, None]
    profit_untreated = scale + noise

    # ---- treatment effect on takers (additive; see module docstring)
    eff = {arm: np.where(female, p[f"effect_{arm}_women"], p[f"effect_{arm}_men"]).astype(float)
           for arm in ("training", "grant", "interaction")}
    pt, pg = float(p["takeup_training"]), float(p["takeup_grant"])
    per_taker = (took_training * (eff["training"] / pt)[:, None]
                 + received_grant * (eff["grant"] / pg)[:, None]
                 + (took_training & received_grant) * (eff["interaction"] / (pt * pg))[:, None])
    increment = per_taker / prob_open[None, :]
    profit_true = np.where(business_open, profit_untreated + increment, 0.0)

    # ---- revenue, costs, capital, hours, credit
    rng = rngs["business"]
    cost_ratio = MEDIAN_COST_RATIO * np.exp(rng.normal(0, SD_LOG_COST_RATIO, n_firms))
    costs_true = (cost_ratio[:, None] * scale * np.exp(rng.normal(0, SD_LOG_COST_ROUND, (n_firms, n_rounds)))
                  + np.maximum(0.0, -profit_true))
    revenue_true = costs_true + profit_true
    s2 = SD_LOG_REPORTING_REV_COSTS ** 2
    revenue_reported = revenue_true * np.exp(rng.normal(-s2 / 2, SD_LOG_REPORTING_REV_COSTS, (n_firms, n_rounds)))
    costs_reported = costs_true * np.exp(rng.normal(-s2 / 2, SD_LOG_REPORTING_REV_COSTS, (n_firms, n_rounds)))

    mean_capital = np.where(female, MEAN_CAPITAL_USD_PPP["women"], MEAN_CAPITAL_USD_PPP["men"])
    log_capital = 0.8 * log_firm + rng.normal(0, np.sqrt(SD_LOG_CAPITAL ** 2 - (0.8 * SD_LOG_FIRM) ** 2), n_firms)
    capital_firm = mean_capital * np.exp(log_capital - SD_LOG_CAPITAL ** 2 / 2)
    invest_share = np.where(female, GRANT_SHARE_INVESTED["women"], GRANT_SHARE_INVESTED["men"])
    capital_usd = (capital_firm[:, None] * growth[None, :]
                   * np.exp(rng.normal(-SD_LOG_CAPITAL_ROUND ** 2 / 2, SD_LOG_CAPITAL_ROUND, (n_firms, n_rounds)))
                   + received_grant * (invest_share * p["grant_usd_ppp"])[:, None])

    mean_hours = np.where(female, MEAN_HOURS["women"], MEAN_HOURS["men"])
    hours = (mean_hours + rng.normal(0, SD_HOURS_FIRM, n_firms))[:, None] \
        + rng.normal(0, SD_HOURS_ROUND, (n_firms, n_rounds))
    hours_week = np.clip(np.rint(hours), 2, 98).astype(np.int64)

    loan_logit = -2.2 + 0.35 * (log_firm / SD_LOG_FIRM)[:, None] + 0.3 * (~female)[:, None] \
        + 0.2 * received_grant
    loan_any = (rng.random((n_firms, n_rounds)) < expit(loan_logit)).astype(np.int64)

    # ---- business practices
    rng = rngs["practices"]
    propensity = 0.4 * log_firm / SD_LOG_FIRM + np.sqrt(1 - 0.16) * rng.normal(0, 1, n_firms)
    area = [a for a, _, _ in BUSINESS_PRACTICES]
    intercept = np.array([b for _, b, _ in BUSINESS_PRACTICES])
    training_logit = np.array([TRAINING_LOGIT_EFFECT[a] for a in area])
    logit = (propensity[:, None, None] + intercept[None, None, :]
             + took_training[:, :, None] * training_logit[None, None, :])
    practices = (rng.random((n_firms, n_rounds, len(BP_COLUMNS))) < expit(logit)).astype(np.int64)
    bp_dont_know = rng.random(practices.shape) < p["share_missing_code"] / 2
    practices = np.where(bp_dont_know, CODE_DONT_KNOW, practices)
    practices = np.where(business_open[:, :, None], practices, CODE_NOT_APPLICABLE)

    # ---- recall period and money in LCU per recall period
    weekly = rngs["recall"].random((n_firms, n_rounds)) < p["share_weekly_recall"]
    per_period = np.where(weekly, 1.0 / WEEKS_PER_MONTH, 1.0) * lcu

    def to_lcu(monthly_usd: np.ndarray) -> np.ndarray:
        return _avoid_codes(np.rint(monthly_usd * per_period).astype(np.int64))

    answers = {
        "profit": to_lcu(profit_untreated + increment),
        "revenue": to_lcu(revenue_reported),
        "costs": to_lcu(costs_reported),
        "capital_stock": (np.rint(capital_usd * lcu / CAPITAL_ROUNDING_LCU) * CAPITAL_ROUNDING_LCU).astype(np.int64),
        "hours_week": hours_week,
    }
    for col in answers:
        answers[col] = np.where(business_open, answers[col], CODE_NOT_APPLICABLE)
    recall_period = np.where(business_open, np.where(weekly, 1, 2), CODE_NOT_APPLICABLE)
    answers["owner_age"] = np.floor(owners["age_exact"][:, None] + 0.5 * rounds).astype(np.int64)
    answers["owner_educ_years"] = np.broadcast_to(owners["educ"][:, None], (n_firms, n_rounds)).astype(np.int64)

    # ---- attrition (follow-ups only; by arm)
    attrition_rate = np.where(firm_arm == 1, p["attrition_control"], p["attrition_treated"])
    attrited = follow_up & (rngs["attrition"].random((n_firms, n_rounds)) < attrition_rate[:, None])
    interviewed = ~attrited

    # ---- missing codes in answers (open businesses for business answers)
    rng = rngs["missing"]
    u_missing = rng.random((len(MISSING_CODE_COLUMNS), n_firms, n_rounds))
    u_kind = rng.random((len(MISSING_CODE_COLUMNS), n_firms, n_rounds))
    missing_counts: dict[str, dict[str, int]] = {}
    for j, col in enumerate(MISSING_CODE_COLUMNS):
        eligible = answers[col] != CODE_NOT_APPLICABLE
        hit = eligible & (u_missing[j] < p["share_missing_code"])
        code = np.where(u_kind[j] < SHARE_REFUSED_AMONG_MISSING, CODE_REFUSED, CODE_DONT_KNOW)
        answers[col] = np.where(hit, code, answers[col])
        missing_counts[col] = {
            "refused": int((hit & (code == CODE_REFUSED) & interviewed).sum()),
            "dont_know": int((hit & (code == CODE_DONT_KNOW) & interviewed).sum()),
        }
        missing_counts[col]["total"] = missing_counts[col]["refused"] + missing_counts[col]["dont_know"]

    # ---- typing error: an extra zero in profit
    profit = answers["profit"]
    valid_profit = business_open & ~np.isin(profit, list(MISSING_CODES)) & (profit != 0)
    typo = valid_profit & (rngs["typos"].random((n_firms, n_rounds)) < p["share_typo_extra_zero"])
    answers["profit"] = np.where(typo, profit * 10, profit)

    # ---- flatten the panel (firm-major) and keep the interviews in the file
    flat = lambda a: np.asarray(a).reshape(n_panel)  # noqa: E731
    keep = flat(interviewed)
    firm_index = np.repeat(np.arange(n_firms), n_rounds)
    round_flat = flat(rounds)

    # ---- fieldwork timing and enumerators (market-round visits)
    rng = rngs["timing"]
    market_day = rng.integers(0, FIELDWORK_WINDOW_DAYS - 10, (design["n_markets"], n_rounds))
    market_enumerator = rng.integers(1, ENUMERATORS_PER_REGION + 1, (design["n_markets"], n_rounds))
    firm_day_offset = rng.integers(0, 3, (n_firms, n_rounds))
    second_of_day = 8 * 3600 + rng.integers(0, 10 * 3600, (n_firms, n_rounds))
    days = (np.arange(n_rounds) * ROUND_SPACING_DAYS)[None, :] + market_day[firm_market] + firm_day_offset
    start_s = FIELDWORK_START.astype("datetime64[s]").astype(np.int64)
    submitted_s = start_s + days.astype(np.int64) * 86400 + second_of_day
    enumerator_id = firm_region[:, None] * 100 + market_enumerator[firm_market]

    # ---- duplicates (among interviews in the file)
    rng = rngs["duplicates"]
    u_dup = flat(rng.random((n_firms, n_rounds)))
    dup_identical = keep & (u_dup < p["share_duplicate_identical"])
    dup_conflicting = keep & ~dup_identical & (u_dup < p["share_duplicate_identical"] + p["share_duplicate_conflicting"])
    delay_identical = rng.integers(60, 2 * 3600, n_panel)
    delay_conflicting = rng.integers(2 * 3600, 4 * 86400, n_panel)
    u_field = rng.random((n_panel, len(CONFLICT_COLUMNS)))
    size_field = rng.uniform(0.1, 0.6, (n_panel, len(CONFLICT_COLUMNS)))
    sign_field = np.where(rng.random((n_panel, len(CONFLICT_COLUMNS))) < 0.5, -1, 1)

    id_bytes = rngs["ids"].integers(0, 256, (n_panel, 2, 16), dtype=np.uint8)

    # ---- notes (free text; some contain the owner's name or phone)
    rng = rngs["notes"]
    u_note = flat(rng.random((n_firms, n_rounds)))
    generic = np.asarray(GENERIC_NOTES, dtype=object)[rng.integers(0, len(GENERIC_NOTES), n_panel)]
    identifying_notes = [  # per firm, then per interview
        ("call back on " + owners["phone_local"]).to_numpy(dtype=object)[firm_index],
        ("spoke with " + owners["owner_name"] + " at the stall").to_numpy(dtype=object)[firm_index],
        (owners["first_name"] + " asked us to return after 4pm").to_numpy(dtype=object)[firm_index],
    ]
    note_kind = np.digitize(u_note, [0.72, 0.79, 0.83, 0.86])  # empty/phone/name/first name/generic
    notes = pd.Series(np.select(
        [note_kind == 0, note_kind == 1, note_kind == 2, note_kind == 3],
        ["", *identifying_notes], default=generic), dtype="str")
    closed_flat = ~flat(business_open)
    notes = notes.where(~(closed_flat & (note_kind == 4)), "Business closed since last visit")

    # ---- assemble the interviews
    firm_id = 100001 + np.arange(n_firms)
    market_id = 1 + np.arange(design["n_markets"])
    owner_sex = np.where(female, SEX_FEMALE, SEX_MALE)
    columns: dict[str, Any] = {
        "submission_id": _hex_ids(id_bytes[:, 0]),
        "submitted_s": flat(submitted_s),
        "enumerator_id": flat(enumerator_id).astype(np.int16),
        "firm_id": firm_id[firm_index].astype(np.int32),
        "round": round_flat.astype(np.int8),
        "region": firm_region[firm_index].astype(np.int8),
        "sector": firm_sector[firm_index].astype(np.int8),
        "market_id": market_id[firm_market][firm_index].astype(np.int32 if design["n_markets"] > 32000 else np.int16),
        "owner_sex": owner_sex[firm_index].astype(np.int8),
        "owner_age": flat(answers["owner_age"]).astype(np.int16),
        "owner_educ_years": flat(answers["owner_educ_years"]).astype(np.int8),
        "hh_size": np.repeat(owners["hh_size"], n_rounds).astype(np.int8),
        "owner_name": owners["owner_name"].to_numpy()[firm_index],
        "phone": owners["phone"].to_numpy()[firm_index],
        "notes": notes.to_numpy(),
        "treat_arm": firm_arm[firm_index].astype(np.int8),
        "took_training": flat(took_training).astype(np.int8),
        "received_grant": flat(received_grant).astype(np.int8),
        "business_open": flat(business_open).astype(np.int8),
        "recall_period": flat(recall_period).astype(np.int8),
        "profit": flat(answers["profit"]).astype(np.int32),
        "revenue": flat(answers["revenue"]).astype(np.int32),
        "costs": flat(answers["costs"]).astype(np.int32),
        "capital_stock": flat(answers["capital_stock"]).astype(np.int32),
        "hours_week": flat(answers["hours_week"]).astype(np.int16),
    }
    for j, col in enumerate(BP_COLUMNS):
        columns[col] = practices[:, :, j].reshape(n_panel).astype(np.int8)
    columns["loan_any"] = flat(loan_any).astype(np.int8)
    interviews = pd.DataFrame(columns)
    del columns

    # The conflicting duplicates' earlier submission has some answers wrong; the copy is correct.
    correct_copies = interviews.loc[dup_conflicting]
    values = interviews[CONFLICT_COLUMNS].to_numpy(dtype=np.int64)
    valid = ~np.isin(values, list(MISSING_CODES))
    chosen = dup_conflicting[:, None] & valid & (u_field < CONFLICT_FIELD_PROB)
    fallback_col = np.argmax(np.where(valid, u_field, -1.0), axis=1)  # hh_size is always valid
    none_chosen = dup_conflicting & ~chosen.any(axis=1)
    chosen[none_chosen, fallback_col[none_chosen]] = True
    # Money and hours: off by 10-60%; household size and age: off by 1-3.
    relative = np.array([c in ("profit", "revenue", "costs", "hours_week") for c in CONFLICT_COLUMNS])
    delta = np.where(relative[None, :], np.maximum(1, np.rint(np.abs(values) * size_field)),
                     1 + np.floor((size_field - 0.1) * 6).clip(0, 2)).astype(np.int64)
    lower = np.array([-(10 ** 9), 0, 0, 0, 1, 15])      # per CONFLICT_COLUMNS: stay plausible
    upper = np.array([10 ** 9, 10 ** 9, 10 ** 9, 112, 30, 95])
    candidate = values + sign_field * delta
    outside = (candidate < lower[None, :]) | (candidate > upper[None, :])
    wrong = _avoid_codes(np.where(outside, values - sign_field * delta, candidate))
    for j, col in enumerate(CONFLICT_COLUMNS):
        interviews[col] = np.where(chosen[:, j], wrong[:, j], values[:, j]).astype(interviews[col].dtype)

    identical_copies = interviews.loc[dup_identical].assign(
        submission_id=_hex_ids(id_bytes[dup_identical, 1]),
        submitted_s=interviews["submitted_s"].to_numpy()[dup_identical] + delay_identical[dup_identical])
    correct_copies = correct_copies.assign(
        submission_id=_hex_ids(id_bytes[dup_conflicting, 1]),
        submitted_s=correct_copies["submitted_s"].to_numpy() + delay_conflicting[dup_conflicting])
    survey = pd.concat([interviews.loc[keep], identical_copies, correct_copies], ignore_index=True)
    # Server export order: by submission time (ISO strings sort like the seconds), then id.
    order = np.lexsort((survey["submission_id"].to_numpy(dtype="U41"), survey["submitted_s"].to_numpy()))
    survey = survey.take(order).reset_index(drop=True)
    submitted_at = np.datetime_as_string(survey["submitted_s"].to_numpy().astype("datetime64[s]"), unit="s")
    survey["submitted_at"] = pd.Series(np.char.replace(submitted_at, "T", " "), dtype="str")
    for col in ("submission_id", "owner_name", "phone", "notes"):
        survey[col] = survey[col].astype("str")
    survey = survey[COLUMNS]
    if not survey["submission_id"].is_unique:  # 128 random bits: practically impossible
        raise RuntimeError("submission_id collision; change the seed")

    value_labels = _value_labels(p)
    variable_labels = _variable_labels(p)

    # ---- truth
    arm_keep = firm_arm[:, None] * np.ones(n_rounds, dtype=int)
    attrited_by_arm = {ARM_KEYS[a]: int((attrited & (arm_keep == a)).sum()) for a in ARM_KEYS}
    planned_by_arm = {ARM_KEYS[a]: int(((arm_keep == a) & follow_up).sum()) for a in ARM_KEYS}
    closed_all = ~business_open
    truth = _truth(
        p, design=design, firm_arm=firm_arm, female=female,
        took_training_firm=took_training_firm, received_grant_firm=received_grant_firm,
        prob_open=prob_open, counts={
            "duplicates_identical": int(dup_identical.sum()),
            "duplicates_conflicting": int(dup_conflicting.sum()),
            "conflicting_fields_changed": {c: int(chosen[:, j].sum()) for j, c in enumerate(CONFLICT_COLUMNS)},
            "typo_extra_zero": int((typo & interviewed).sum()),
            "missing_codes": missing_counts,
            "bp_dont_know": int((bp_dont_know & (business_open & interviewed)[:, :, None]).sum()),
            "attrited_firm_rounds": attrited_by_arm,
            "planned_followup_firm_rounds": planned_by_arm,
            "closed_firm_rounds": int(closed_all.sum()),
            "closed_firm_rounds_interviewed": int((closed_all & interviewed).sum()),
            "negative_profit_interviews": int(((profit_untreated + increment < 0) & business_open & interviewed).sum()),
            "interviews": int(keep.sum()),
            "rows": int(len(survey)),
        })
    return survey, value_labels, variable_labels, truth


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

def _truth(p: dict, *, design: dict, firm_arm: np.ndarray, female: np.ndarray,
           took_training_firm: np.ndarray, received_grant_firm: np.ndarray,
           prob_open: np.ndarray, counts: dict) -> dict:
    """The true parameters and the record of every piece of injected mess."""
    genders = ("women", "men")
    itt = {
        "skills": {g: float(p[f"effect_training_{g}"]) for g in genders},
        "capital": {g: float(p[f"effect_grant_{g}"]) for g in genders},
        "skills_x_capital": {g: float(p[f"effect_interaction_{g}"]) for g in genders},
    }
    itt_by_arm = {
        "training_only": dict(itt["skills"]),
        "grant_only": dict(itt["capital"]),
        "training_and_grant": {g: itt["skills"][g] + itt["capital"][g] + itt["skills_x_capital"][g]
                               for g in genders},
    }
    pt, pg = float(p["takeup_training"]), float(p["takeup_grant"])
    per_taker = {
        f"round_{t}": {
            "training_taker": {g: itt["skills"][g] / pt / prob_open[t] for g in genders},
            "grant_recipient": {g: itt["capital"][g] / pg / prob_open[t] for g in genders},
            "both_extra": {g: itt["skills_x_capital"][g] / (pt * pg) / prob_open[t] for g in genders},
        }
        for t in range(1, len(prob_open))
    }
    assigned_t, assigned_g = ARM_HAS_TRAINING[firm_arm], ARM_HAS_GRANT[firm_arm]
    n_rounds = len(prob_open)
    return {
        "generator": "pipeline.synthetic",
        "params": dict(p),
        "units": "USD PPP per month",
        "estimand": (
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
        ),
        "itt": itt,
        "itt_difference_women_minus_men": {k: v["women"] - v["men"] for k, v in itt.items()},
        "itt_by_arm": itt_by_arm,
        "effect_on_takers_usd_ppp_by_round": per_taker,
        "prob_business_open_by_round": {f"round_{t}": float(prob_open[t]) for t in range(n_rounds)},
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
        "design": {
            "n_firms": int(p["n_firms"]),
            "rounds": list(range(n_rounds)),
            "n_strata": int(design["n_strata"]),
            "n_markets": int(design["n_markets"]),
            "markets_per_stratum": {  # keyed "region r, sector s" (codes)
                f"region {s // int(p['n_sectors']) + 1}, sector {s % int(p['n_sectors']) + 1}": int(m)
                for s, m in enumerate(design["markets_per_stratum"])},
            "markets_by_arm": {ARM_KEYS[a]: int((design["market_arm"] == a).sum()) for a in ARM_KEYS},
            "firms_by_arm": {ARM_KEYS[a]: int((firm_arm == a).sum()) for a in ARM_KEYS},
            "women": int(female.sum()),
            "men": int((~female).sum()),
            "randomisation": "2x2 factorial at the market level, balanced within region x sector strata",
        },
        "mess": counts,
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


def run(params: dict, out_dir: str | Path) -> dict:
    """Generate the survey from ``params`` and write it to ``out_dir``; return a small summary."""
    survey, value_labels, variable_labels, truth = generate(params)
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
