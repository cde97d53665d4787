"""The latent world of the synthetic survey: firms, their owners, the randomised design and
what would truly happen to them, before any of it is put into a questionnaire.

Every function draws from the one random stream it is given, in a fixed order, so that
:func:`pipeline.synthetic.generate` is a pure function of its params (see there).

Latent model (module constants below)
-------------------------------------
Untreated monthly profit (USD PPP) of firm i, market k, round t, gender g:
``mean_g * growth_t * region_r * sector_s * exp(a_i + m_k + e_it - var/2) + d_it``
with log-normal firm productivity a_i, market effect m_k, AR(1) round shocks
e_it and additive mean-zero noise d_it (which makes a few profits negative).
Baseline means: women 80, men 120 USD PPP per month; market ICC about 0.05;
round-to-round correlation of profits about 0.4.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from pipeline.vocabulary import EFFECT_KEYS, INTERACTION_TERM, MEN, TREATMENTS, WOMEN

SEX_MALE, SEX_FEMALE = 1, 2
# The true effects (truth.json's keys, the estimate stage's effect keys) -> the names of their
# ``effect_<name>_<sex>`` params.
SKILLS, CAPITAL, SKILLS_X_CAPITAL = (EFFECT_KEYS[t] for t in (*TREATMENTS, INTERACTION_TERM))
EFFECT_PARAMS = {SKILLS: "training", CAPITAL: "grant", SKILLS_X_CAPITAL: "interaction"}
ARM_LABELS = {1: "Control", 2: "Training only", 3: "Grant only", 4: "Training + grant"}
ARM_KEYS = {1: "control", 2: "training_only", 3: "grant_only", 4: "training_and_grant"}
ARM_HAS_TRAINING = np.array([False, False, True, False, True])  # index = arm code
ARM_HAS_GRANT = np.array([False, False, False, True, True])

# Latent profit model (USD PPP per month).
BASELINE_MEAN_PROFIT_USD_PPP = {WOMEN: 80.0, MEN: 120.0}
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
MEAN_CAPITAL_USD_PPP = {WOMEN: 350.0, MEN: 600.0}
SD_LOG_CAPITAL, SD_LOG_CAPITAL_ROUND = 1.0, 0.20
GRANT_SHARE_INVESTED = {WOMEN: 0.5, MEN: 0.8}
CAPITAL_ROUNDING_LCU = 100       # capital is reported in round hundreds (heaping)
# Hours worked per week in the business.
MEAN_HOURS = {WOMEN: 40.0, MEN: 48.0}
SD_HOURS_FIRM, SD_HOURS_ROUND = 10.0, 6.0
# Business practices: logit(P yes) = practice propensity + item intercept + training effect.
TRAINING_LOGIT_EFFECT = {"marketing": 0.6, "buying_stock": 0.5,
                         "record_keeping": 0.9, "financial_planning": 0.9}
# Fieldwork calendar: round r starts FIELDWORK_START + r x ROUND_SPACING_DAYS.

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

# --------------------------------------------------------------------------- design and owners

def _digits(rng: np.random.Generator, n: int, width: int) -> pd.Series:
    """``n`` zero-padded random digit strings of ``width`` digits."""
    values = rng.integers(0, 10 ** width, size=n)
    return pd.Series(values).astype(str).str.zfill(width)


def assign_design(p: dict, rng: np.random.Generator) -> dict:
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


def draw_owners(p: dict, n_firms: int, rng: np.random.Generator) -> dict:
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



# --------------------------------------------------------------------------- take-up, closures, outcomes

def draw_takeup(p: dict, firm_arm: np.ndarray, follow_up: np.ndarray, rng: np.random.Generator) -> dict:
    """Take-up at the firm level among the assigned, and its (firm, round) panel: effective from round 1."""
    n_firms = len(firm_arm)
    took_training_firm = ARM_HAS_TRAINING[firm_arm] & (rng.random(n_firms) < p["takeup_training"])
    received_grant_firm = ARM_HAS_GRANT[firm_arm] & (rng.random(n_firms) < p["takeup_grant"])
    return {
        "took_training_firm": took_training_firm,
        "received_grant_firm": received_grant_firm,
        "took_training": took_training_firm[:, None] & follow_up,
        "received_grant": received_grant_firm[:, None] & follow_up,
    }


def draw_closures(p: dict, n_firms: int, n_rounds: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(business_open per firm and round, P(open) per round): closures are absorbing and
    independent of treatment; nobody is closed at baseline."""
    closes = rng.random((n_firms, n_rounds)) < p["closure_rate_per_round"]
    closes[:, 0] = False
    business_open = ~np.logical_or.accumulate(closes, axis=1)
    prob_open = (1.0 - p["closure_rate_per_round"]) ** np.arange(n_rounds)
    return business_open, prob_open


def draw_untreated_profit(p: dict, design: dict, female: np.ndarray, firm_region: np.ndarray,
                          firm_sector: np.ndarray, n_rounds: int, rng: np.random.Generator) -> dict:
    """Untreated monthly profit (USD PPP) per firm and round, with the business scale and firm
    productivity that revenue, costs, capital and practices also depend on."""
    firm_market = design["firm_market"]
    n_firms = len(firm_market)
    mean_profit = by_sex(female, BASELINE_MEAN_PROFIT_USD_PPP)
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
    return {"scale": scale, "profit_untreated": profit_untreated, "log_firm": log_firm, "growth": growth}


def by_sex(female: np.ndarray, values: dict) -> np.ndarray:
    """``values[WOMEN]`` where ``female``, else ``values[MEN]``."""
    return np.where(female, values[WOMEN], values[MEN])


def effect_on_takers(p: dict, female: np.ndarray, took_training: np.ndarray, received_grant: np.ndarray,
                     prob_open: np.ndarray) -> np.ndarray:
    """Additive profit increment of each open taker per round (see the estimand in
    :mod:`pipeline.synthetic`): ITT / take-up rate / P(open at round t)."""
    eff = {arm: by_sex(female, {sex: p[f"effect_{arm}_{sex}"] for sex in (WOMEN, MEN)}).astype(float)
           for arm in EFFECT_PARAMS.values()}
    pt, pg = float(p["takeup_training"]), float(p["takeup_grant"])
    per_taker = (took_training * (eff["training"] / pt)[:, None]
                 + received_grant * (eff["grant"] / pg)[:, None]
                 + (took_training & received_grant) * (eff["interaction"] / (pt * pg))[:, None])
    return per_taker / prob_open[None, :]


def draw_business(p: dict, female: np.ndarray, profit: dict, profit_true: np.ndarray, received_grant: np.ndarray,
                  rng: np.random.Generator) -> dict:
    """Reported revenue and costs, capital stock (USD PPP), weekly hours and formal credit per firm and round."""
    scale, log_firm, growth = profit["scale"], profit["log_firm"], profit["growth"]
    n_firms, n_rounds = scale.shape
    cost_ratio = MEDIAN_COST_RATIO * np.exp(rng.normal(0, SD_LOG_COST_RATIO, n_firms))
    costs_true = (cost_ratio[:, None] * scale * np.exp(rng.normal(0, SD_LOG_COST_ROUND, (n_firms, n_rounds)))
                  + np.maximum(0.0, -profit_true))
    revenue_true = costs_true + profit_true
    s2 = SD_LOG_REPORTING_REV_COSTS ** 2
    revenue_reported = revenue_true * np.exp(rng.normal(-s2 / 2, SD_LOG_REPORTING_REV_COSTS, (n_firms, n_rounds)))
    costs_reported = costs_true * np.exp(rng.normal(-s2 / 2, SD_LOG_REPORTING_REV_COSTS, (n_firms, n_rounds)))

    mean_capital = by_sex(female, MEAN_CAPITAL_USD_PPP)
    log_capital = 0.8 * log_firm + rng.normal(0, np.sqrt(SD_LOG_CAPITAL ** 2 - (0.8 * SD_LOG_FIRM) ** 2), n_firms)
    capital_firm = mean_capital * np.exp(log_capital - SD_LOG_CAPITAL ** 2 / 2)
    invest_share = by_sex(female, GRANT_SHARE_INVESTED)
    capital_usd = (capital_firm[:, None] * growth[None, :]
                   * np.exp(rng.normal(-SD_LOG_CAPITAL_ROUND ** 2 / 2, SD_LOG_CAPITAL_ROUND, (n_firms, n_rounds)))
                   + received_grant * (invest_share * p["grant_usd_ppp"])[:, None])

    mean_hours = by_sex(female, MEAN_HOURS)
    hours = (mean_hours + rng.normal(0, SD_HOURS_FIRM, n_firms))[:, None] \
        + rng.normal(0, SD_HOURS_ROUND, (n_firms, n_rounds))
    hours_week = np.clip(np.rint(hours), 2, 98).astype(np.int64)

    loan_logit = -2.2 + 0.35 * (log_firm / SD_LOG_FIRM)[:, None] + 0.3 * (~female)[:, None] \
        + 0.2 * received_grant
    loan_any = (rng.random((n_firms, n_rounds)) < expit(loan_logit)).astype(np.int64)
    return {"revenue_reported": revenue_reported, "costs_reported": costs_reported, "capital_usd": capital_usd,
            "hours_week": hours_week, "loan_any": loan_any}


def draw_practices(p: dict, log_firm: np.ndarray, took_training: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(the 26 business practices 0/1 per firm, round and item, which answers are "don't know").

    The practices rise with firm productivity and with training; the don't-know mask is drawn
    here, after them, because it comes from the same stream."""
    n_firms, n_rounds = took_training.shape
    propensity = 0.4 * log_firm / SD_LOG_FIRM + np.sqrt(1 - 0.16) * rng.normal(0, 1, n_firms)
    area = [a for a, _, _ in BUSINESS_PRACTICES]
    intercept = np.array([b for _, b, _ in BUSINESS_PRACTICES])
    training_logit = np.array([TRAINING_LOGIT_EFFECT[a] for a in area])
    logit = (propensity[:, None, None] + intercept[None, None, :]
             + took_training[:, :, None] * training_logit[None, None, :])
    practices = (rng.random((n_firms, n_rounds, len(BP_COLUMNS))) < expit(logit)).astype(np.int64)
    bp_dont_know = rng.random(practices.shape) < p["share_missing_code"] / 2
    return practices, bp_dont_know
