"""The survey mess of the synthetic survey: the latent world of :mod:`pipeline.synthetic_firms`
recorded the way a real field survey arrives, as one row per submission of a server export.

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

Every function draws from the one random stream it is given, in a fixed order (see
:func:`pipeline.synthetic.generate`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute        # binds pyarrow too

from pipeline.synthetic_firms import BP_COLUMNS, CAPITAL_ROUNDING_LCU, SEX_FEMALE, SEX_MALE

WEEKS_PER_MONTH = 52 / 12
CODE_REFUSED, CODE_DONT_KNOW, CODE_NOT_APPLICABLE = -99, -98, -88
MISSING_CODES = {CODE_REFUSED: "Refused", CODE_DONT_KNOW: "Don't know",
                 CODE_NOT_APPLICABLE: "Not applicable (business closed)"}
SHARE_REFUSED_AMONG_MISSING = 0.35
# Fieldwork calendar: round r starts FIELDWORK_START + r x ROUND_SPACING_DAYS.
FIELDWORK_START = np.datetime64("2024-02-05", "D")
ROUND_SPACING_DAYS = 182
FIELDWORK_WINDOW_DAYS = 56
ENUMERATORS_PER_REGION = 4

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


def flat(a) -> np.ndarray:
    """A (firm, round) panel array flattened firm-major: one element per firm-round."""
    return np.asarray(a).reshape(-1)


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


def _avoid_codes(values: np.ndarray) -> np.ndarray:
    """Shift genuine answers that happen to equal a missing code by -3 (e.g. -88 -> -91)."""
    is_code = np.isin(values, list(MISSING_CODES))
    return np.where(is_code, values - 3, values)



# --------------------------------------------------------------------------- answers

def record_answers(p: dict, world: dict, weekly: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(answers per column as the questionnaire records them, recall_period).

    Money in whole LCU over the recall period (``weekly``: asked for the last week), capital in
    hundreds of LCU, -88 for every business answer of a closed business; age grows by half a
    year per round (rounds are six months apart)."""
    lcu = float(p["lcu_per_usd_ppp"])
    business_open, owners = world["business_open"], world["owners"]
    n_firms, n_rounds = business_open.shape
    per_period = np.where(weekly, 1.0 / WEEKS_PER_MONTH, 1.0) * lcu

    def to_lcu(monthly_usd: np.ndarray) -> np.ndarray:
        return _avoid_codes(np.rint(monthly_usd * per_period).astype(np.int64))

    answers = {
        "profit": to_lcu(world["profit_reported"]),
        "revenue": to_lcu(world["revenue_reported"]),
        "costs": to_lcu(world["costs_reported"]),
        "capital_stock": (np.rint(world["capital_usd"] * lcu / CAPITAL_ROUNDING_LCU) * CAPITAL_ROUNDING_LCU).astype(np.int64),
        "hours_week": world["hours_week"],
    }
    for col in answers:
        answers[col] = np.where(business_open, answers[col], CODE_NOT_APPLICABLE)
    recall_period = np.where(business_open, np.where(weekly, 1, 2), CODE_NOT_APPLICABLE)
    rounds = np.arange(n_rounds)[None, :]
    answers["owner_age"] = np.floor(owners["age_exact"][:, None] + 0.5 * rounds).astype(np.int64)
    answers["owner_educ_years"] = np.broadcast_to(owners["educ"][:, None], (n_firms, n_rounds)).astype(np.int64)
    return answers, recall_period


def practice_answers(practices: np.ndarray, dont_know: np.ndarray, business_open: np.ndarray) -> np.ndarray:
    """The business-practice items as recorded: -98 where "don't know", -88 for a closed business."""
    practices = np.where(dont_know, CODE_DONT_KNOW, practices)
    return np.where(business_open[:, :, None], practices, CODE_NOT_APPLICABLE)


def inject_missing_codes(p: dict, answers: dict[str, np.ndarray], interviewed: np.ndarray,
                         rng: np.random.Generator) -> dict[str, dict[str, int]]:
    """Replace a share of the answers by -99 refused / -98 don't know (in place; open businesses
    only for business answers); return the counts among interviews per column."""
    n_firms, n_rounds = interviewed.shape
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
    return missing_counts


def inject_typos(p: dict, answers: dict[str, np.ndarray], business_open: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """An extra zero typed in a share of the valid non-zero profit answers (in place); return where."""
    profit = answers["profit"]
    valid_profit = business_open & ~np.isin(profit, list(MISSING_CODES)) & (profit != 0)
    typo = valid_profit & (rng.random(profit.shape) < p["share_typo_extra_zero"])
    answers["profit"] = np.where(typo, profit * 10, profit)
    return typo


# --------------------------------------------------------------------------- interviews

def draw_attrition(p: dict, firm_arm: np.ndarray, follow_up: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Which firm-rounds are absent from the file: follow-ups only, at the arm's rate, at random."""
    attrition_rate = np.where(firm_arm == 1, p["attrition_control"], p["attrition_treated"])
    return follow_up & (rng.random(follow_up.shape) < attrition_rate[:, None])


def fieldwork_timing(design: dict, firm_region: np.ndarray, n_rounds: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(submission time in seconds since the epoch, enumerator id) per firm and round: each market
    is visited on one day of the round's window by one of its region's enumerators."""
    firm_market = design["firm_market"]
    n_firms = len(firm_market)
    market_day = rng.integers(0, FIELDWORK_WINDOW_DAYS - 10, (design["n_markets"], n_rounds))
    market_enumerator = rng.integers(1, ENUMERATORS_PER_REGION + 1, (design["n_markets"], n_rounds))
    firm_day_offset = rng.integers(0, 3, (n_firms, n_rounds))
    second_of_day = 8 * 3600 + rng.integers(0, 10 * 3600, (n_firms, n_rounds))
    days = (np.arange(n_rounds) * ROUND_SPACING_DAYS)[None, :] + market_day[firm_market] + firm_day_offset
    start_s = FIELDWORK_START.astype("datetime64[s]").astype(np.int64)
    submitted_s = start_s + days.astype(np.int64) * 86400 + second_of_day
    enumerator_id = firm_region[:, None] * 100 + market_enumerator[firm_market]
    return submitted_s, enumerator_id


def draw_duplicates(p: dict, keep: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Which interviews in the file are submitted twice (identically or with conflicting answers),
    the delay of the second submission, and the size and sign of the conflicting answers' errors."""
    n_panel = len(keep)
    u_dup = rng.random(n_panel)
    dup_identical = keep & (u_dup < p["share_duplicate_identical"])
    dup_conflicting = keep & ~dup_identical & (u_dup < p["share_duplicate_identical"] + p["share_duplicate_conflicting"])
    delay_identical = rng.integers(60, 2 * 3600, n_panel)
    delay_conflicting = rng.integers(2 * 3600, 4 * 86400, n_panel)
    u_field = rng.random((n_panel, len(CONFLICT_COLUMNS)))
    size_field = rng.uniform(0.1, 0.6, (n_panel, len(CONFLICT_COLUMNS)))
    sign_field = np.where(rng.random((n_panel, len(CONFLICT_COLUMNS))) < 0.5, -1, 1)
    return {"identical": dup_identical, "conflicting": dup_conflicting, "delay_identical": delay_identical,
            "delay_conflicting": delay_conflicting, "u_field": u_field, "size_field": size_field,
            "sign_field": sign_field}


def draw_notes(owners: dict, business_open: np.ndarray, firm_index: np.ndarray, rng: np.random.Generator) -> pd.Series:
    """Enumerator notes per firm-round: mostly empty or generic, about 14% naming or calling the owner."""
    n_panel = len(firm_index)
    u_note = rng.random(n_panel)
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
    return notes


def assemble_interviews(design: dict, owners: dict, firm_arm: np.ndarray, firm_region: np.ndarray,
                        firm_sector: np.ndarray, panel: dict[str, np.ndarray], answers: dict[str, np.ndarray],
                        notes: pd.Series, submission_ids: np.ndarray) -> pd.DataFrame:
    """Every planned firm-round as one interview row (firm-major), with its submission time in
    seconds in ``submitted_s``; ``panel`` holds the (firm, round) arrays that are not answers."""
    female, firm_market = owners["female"], design["firm_market"]
    n_firms, n_rounds = panel["business_open"].shape
    firm_index = np.repeat(np.arange(n_firms), n_rounds)
    firm_id = 100001 + np.arange(n_firms)
    market_id = 1 + np.arange(design["n_markets"])
    owner_sex = np.where(female, SEX_FEMALE, SEX_MALE)
    columns: dict[str, Any] = {
        "submission_id": submission_ids,
        "submitted_s": flat(panel["submitted_s"]),
        "enumerator_id": flat(panel["enumerator_id"]).astype(np.int16),
        "firm_id": firm_id[firm_index].astype(np.int32),
        "round": np.tile(np.arange(n_rounds), n_firms).astype(np.int8),
        "region": firm_region[firm_index].astype(np.int8),
        "sector": firm_sector[firm_index].astype(np.int8),
        "market_id": market_id[firm_market][firm_index].astype(np.int32 if design["n_markets"] > 32000 else np.int16),
        "owner_sex": owner_sex[firm_index].astype(np.int8),
        "owner_age": flat(answers["owner_age"]).astype(np.int16),
        "owner_educ_years": flat(answers["owner_educ_years"]).astype(np.int8),
        "hh_size": np.repeat(owners["hh_size"], n_rounds).astype(np.int8),
        # text columns taken as they are (str), not through an array of Python strings and back
        "owner_name": owners["owner_name"].array.take(firm_index),
        "phone": owners["phone"].array.take(firm_index),
        "notes": notes.array,
        "treat_arm": firm_arm[firm_index].astype(np.int8),
        "took_training": flat(panel["took_training"]).astype(np.int8),
        "received_grant": flat(panel["received_grant"]).astype(np.int8),
        "business_open": flat(panel["business_open"]).astype(np.int8),
        "recall_period": flat(panel["recall_period"]).astype(np.int8),
        "profit": flat(answers["profit"]).astype(np.int32),
        "revenue": flat(answers["revenue"]).astype(np.int32),
        "costs": flat(answers["costs"]).astype(np.int32),
        "capital_stock": flat(answers["capital_stock"]).astype(np.int32),
        "hours_week": flat(answers["hours_week"]).astype(np.int16),
    }
    for j, col in enumerate(BP_COLUMNS):
        columns[col] = panel["practices"][:, :, j].reshape(-1).astype(np.int8)
    columns["loan_any"] = flat(panel["loan_any"]).astype(np.int8)
    return pd.DataFrame(columns)


# --------------------------------------------------------------------------- duplicates and export

def corrupt_conflicting(interviews: pd.DataFrame, dup: dict[str, np.ndarray]) -> np.ndarray:
    """Make some answers of each conflicting duplicate's earlier submission wrong (in place);
    return which (row, CONFLICT_COLUMNS) cells were changed, at least one per such row."""
    dup_conflicting, u_field, size_field, sign_field = dup["conflicting"], dup["u_field"], dup["size_field"], dup["sign_field"]
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
    return chosen


def submission_order(seconds: np.ndarray, ids: pd.Series) -> np.ndarray:
    """Row order by submission time, then id (``np.lexsort((ids, seconds))``): a stable sort of the
    times, the ids compared only among rows submitted in the same second (text sorting is the slow part)."""
    order = np.argsort(seconds, kind="stable")
    ordered = seconds[order]
    tied = np.zeros(len(order), dtype=bool)
    same = np.flatnonzero(ordered[1:] == ordered[:-1])
    tied[same] = tied[same + 1] = True
    if tied.any():                   # the tied rows are runs of equal times, in time order: sort them by (time, id)
        rows = order[tied]
        order[tied] = rows[np.lexsort((ids.iloc[rows].to_numpy(dtype="U41"), ordered[tied]))]   # tied ids only
    return order


def export(interviews: pd.DataFrame, correct_copies: pd.DataFrame, keep: np.ndarray, dup: dict[str, np.ndarray],
           id_bytes: np.ndarray) -> pd.DataFrame:
    """The server export: the interviews in the file, the identical copies and the correct later
    submissions of the conflicting duplicates (new ids, later times), in submission order."""
    dup_identical, dup_conflicting = dup["identical"], dup["conflicting"]
    identical_copies = interviews.loc[dup_identical].assign(
        submission_id=_hex_ids(id_bytes[dup_identical, 1]),
        submitted_s=interviews["submitted_s"].to_numpy()[dup_identical] + dup["delay_identical"][dup_identical])
    correct_copies = correct_copies.assign(
        submission_id=_hex_ids(id_bytes[dup_conflicting, 1]),
        submitted_s=correct_copies["submitted_s"].to_numpy() + dup["delay_conflicting"][dup_conflicting])
    survey = pd.concat([interviews.loc[keep], identical_copies, correct_copies], ignore_index=True)
    # Server export order: by submission time (ISO strings sort like the seconds), then id.
    survey = survey.take(submission_order(survey["submitted_s"].to_numpy(), survey["submission_id"])).reset_index(drop=True)
    # 'YYYY-MM-DD HH:MM:SS': Arrow's text of a time in seconds, made as a str column (8x numpy's via unicode)
    seconds = pyarrow.array(survey["submitted_s"].to_numpy(), pyarrow.timestamp("s"))
    survey["submitted_at"] = pd.array(pyarrow.compute.cast(seconds, pyarrow.string()), dtype="str")
    for col in ("submission_id", "owner_name", "phone", "notes"):
        survey[col] = survey[col].astype("str")
    survey = survey[COLUMNS]
    if not survey["submission_id"].is_unique:  # 128 random bits: practically impossible
        raise RuntimeError("submission_id collision; change the seed")
    return survey
