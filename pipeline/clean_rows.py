"""Clean, rows: unit and cluster ids that collide, invalid rows and duplicate interviews
(rules 1 and 2 of :mod:`pipeline.clean`)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.clean_log import CleaningError, first_rows, rejected_rows, rows_hint
from pipeline.codes import codes_in, map_distinct, norm_codes
from pipeline.study import assign_arms, normalise


def check_id_collisions(df: pd.DataFrame, cfg: dict) -> None:
    """Unit and cluster ids are compared by one rule, :func:`pipeline.codes.norm_code`: text is
    stripped and case-folded and numeric text is its number ("01", "1", "1.0" and 1 are one id;
    "A7" and "a7 " are one id). Two different raw ids with the same normalised id are a collision
    (was: "1" and "01" silently merged into one firm): the stage stops naming them and their rows."""
    cfg = normalise(cfg)
    for col in dict.fromkeys(c for c in (cfg["unit_id"], cfg.get("cluster")) if c and c in df.columns):
        values = df[col]
        if pd.api.types.is_numeric_dtype(values):
            continue                          # numbers: equal ids are equal values already
        raw = pd.DataFrame({"raw": values.astype("object"), "norm": norm_codes(values)}).dropna()
        spellings = raw.drop_duplicates().groupby("norm", sort=False)["raw"].agg(list)
        collided = spellings[spellings.map(len) > 1]
        if len(collided):
            shown = "; ".join(
                " and ".join(f"{v!r} ({first_rows(df, values == v)})" for v in ids) for ids in collided.head(5))
            raise CleaningError(f"{cfg['study']}: ids of {col!r} that differ only in spelling "
                                f"(leading zeros, spaces, case, '1.0'), which the id rule reads as one id: {shown}. "
                                f"Correct the raw ids")


def reject_invalid_rows(df: pd.DataFrame, cfg: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows that cannot be analysed at all: no unit id, undefined round or treatment arm (the first
    reason that applies, in that order)."""
    cfg = normalise(cfg)
    reasons = np.full(len(df), "", dtype=object)      # numpy masks, one Series at the end
    unit = cfg["unit_id"]
    reasons[df[unit].isna().to_numpy()] = f"{unit} is missing"
    _, arm_reasons = assign_arms(df, cfg)
    arm_reasons = arm_reasons.to_numpy()
    take = (arm_reasons != "") & (reasons == "")
    reasons[take] = arm_reasons[take]
    round_col = cfg.get("round")
    if round_col:
        no_round = df[round_col].isna().to_numpy() & (reasons == "")
        reasons[no_round] = f"{round_col} is missing"
    if round_col and cfg.get("rounds"):
        known = codes_in(df[round_col], cfg["rounds"]).to_numpy()
        bad_round = ~known & df[round_col].notna().to_numpy() & (reasons == "")
        if bad_round.any():
            reasons[bad_round] = map_distinct(df.loc[bad_round, round_col],
                                              lambda v: f"{round_col}={v} is not a defined round").to_numpy()
    mask = pd.Series(reasons != "", index=df.index)
    return df.loc[~mask], rejected_rows(df, mask, "invalid_row", pd.Series(reasons, index=df.index, dtype="object"))


def content_hash(df: pd.DataFrame, exclude: list[str]) -> pd.Series:
    """A hash of each row's answers (METHODS: row hashing is 4x faster than whole-row duplicated())."""
    cols = [c for c in df.columns if c not in exclude]
    return pd.util.hash_pandas_object(df[cols], index=False)


def resolve_duplicates(df: pd.DataFrame, cfg: dict, rule: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One record per unit x round.

    Identical submissions (same answers, different submission id/time): keep the first.
    Conflicting submissions: ``rule`` = ``latest`` keeps the last submitted (by the
    configured submission time, else by file order), ``drop_all`` rejects every copy,
    ``error`` stops with the offending ids.
    """
    cfg = normalise(cfg)
    unit, round_col = cfg["unit_id"], cfg.get("round")
    keys = [unit] + ([round_col] if round_col else [])
    sub = cfg.get("submission") or {}
    order_cols = [c for c in (sub.get("time"), sub.get("id")) if c] + ["source_file", "source_row"]
    meta = ["source_file", "source_row"] + [c for c in (sub.get("time"), sub.get("id")) if c]
    # Only rows sharing their unit x round with another row can repeat or conflict: they alone are
    # put in submission order and hashed. The table leaves in (source_file, source_row) order, unique.
    shared = df.duplicated(keys, keep=False)
    copies = df.loc[shared].sort_values(order_cols, kind="stable")
    hashes = content_hash(copies, meta)
    identical = pd.DataFrame({k: copies[k] for k in keys}).assign(_h=hashes.to_numpy()).duplicated(keep="first")
    identical.index = copies.index
    rejected = [rejected_rows(copies, identical, "duplicate_identical",
                          "identical answers to an earlier submission of the same interview")]
    copies = copies.loc[~identical]
    dup_any = copies.duplicated(keys, keep=False)
    dropped = identical[identical].index
    if dup_any.any():
        if rule == "error":
            ids = copies.loc[dup_any, keys].drop_duplicates().head(5).to_dict("records")
            raise CleaningError(f"{cfg['study']}: {int(dup_any.sum())} conflicting submissions of the same "
                                f"{' x '.join(keys)} ({rows_hint(copies, dup_any)}; ids {ids}); set clean.duplicate_rule")
        if rule == "latest":
            superseded = copies.duplicated(keys, keep="last")
            rejected.append(rejected_rows(copies, superseded, "duplicate_conflicting",
                                      "answers differ from a later submission of the same interview; the latest is kept"))
            dropped = dropped.append(superseded[superseded].index)
        elif rule == "drop_all":
            rejected.append(rejected_rows(copies, dup_any, "duplicate_conflicting",
                                      "conflicting submissions of the same interview; all copies dropped"))
            dropped = dropped.append(dup_any[dup_any].index)
        else:
            raise CleaningError(f"clean.duplicate_rule={rule!r}: expected latest, drop_all or error")
    df = df.loc[~df.index.isin(dropped)]
    return df.sort_values(["source_file", "source_row"], kind="stable"), pd.concat(rejected)
