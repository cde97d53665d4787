"""Clean on DuckDB, the rules: :mod:`pipeline.clean`'s rules 1 to 9 as SQL over the kept rows
(the engine, its records and its entry points are in :mod:`pipeline.clean_duckdb`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.clean_log import CleaningError
from pipeline.clean_money import OUTLIER_METHODS
from pipeline.codes import PER_YEAR
from pipeline.study import flow_column, numeric_columns

NUMERIC_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "FLOAT", "DOUBLE")
FLOAT_TYPES = ("FLOAT", "DOUBLE")


class UnsupportedRule(CleaningError):
    """The study configures a rule the DuckDB engine does not implement (use ``clean.engine: pandas``)."""


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def literal(value) -> str:
    """An SQL literal equal to the Python value (floats exactly: the shortest repr parsed as DOUBLE)."""
    if value is None:
        return "NULL"
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"'{float(value)!r}'::DOUBLE"
    return "'" + str(value).replace("'", "''") + "'"


def in_list(values) -> str:
    return "(" + ", ".join(literal(v) for v in values) + ")"


@dataclass
class Columns:
    """The kept rows as layers of views (``kept``, ``step_1``, ...): a rule reads the current layer,
    sets new expressions for the columns it changes or adds (pandas' dtypes: DuckDB types here),
    and :meth:`commit` makes them the next layer, so no expression is repeated inside another."""
    con: object
    dtype: dict[str, str]
    layer: str = "kept"
    expr: dict[str, str] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)     # SELECTs of value-log rows, in pandas' order
    layers: int = 0
    columns: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.expr = {c: ident(c) for c in self.dtype}
        self.columns = list(self.dtype)

    def set(self, col: str, expr: str, dtype: str) -> None:
        self.expr[col], self.dtype[col] = expr, dtype

    def commit(self) -> None:
        changed = [c for c, e in self.expr.items() if e != ident(c)]
        if not changed:
            return
        replaced = [c for c in changed if c in self.columns]
        added = [c for c in changed if c not in self.columns]
        replace = f" REPLACE ({', '.join(f'{self.expr[c]} AS {ident(c)}' for c in replaced)})" if replaced else ""
        self.layers += 1
        name = f"step_{self.layers}"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT *{replace}"
                         f"{''.join(f', {self.expr[c]} AS {ident(c)}' for c in added)} FROM {self.layer}")
        self.layer, self.columns = name, self.columns + added
        self.expr = {c: ident(c) for c in self.expr}

    def count_where(self, masks: dict) -> dict:
        """Rows of the current layer where each mask holds, in one pass."""
        if not masks:
            return {}
        sql = ", ".join(f"count(*) FILTER (WHERE {m})" for m in masks.values())
        return dict(zip(masks, self.con.execute(f"SELECT {sql} FROM {self.layer}").fetchall()[0]))

    def log(self, col: str, mask: str, new_value: str, rule: str) -> None:
        """Value-log rows where ``mask``: the value before the rule (numeric columns only here)."""
        entry = (f"struct_pack(\"column\" := {literal(col)}, old_value := CAST({self.expr[col]} AS DOUBLE), "
                 f"new_value := CAST({new_value} AS DOUBLE), rule := CAST({rule} AS VARCHAR), _part := {len(self.logs)})")
        self.logs.append((self.layer, mask, entry))

    def log_sql(self) -> str:
        """The value log, unordered: one scan per layer, each row's entries unnested."""
        layers = {}
        for layer, mask, entry in self.logs:
            layers.setdefault(layer, []).append((mask, entry))
        parts = []
        for layer, entries in layers.items():
            listed = ", ".join(f"CASE WHEN {m} THEN {e} END" for m, e in entries)
            parts.append(f"SELECT source_file, source_row, unnest(list_filter([{listed}], lambda x: x IS NOT NULL), "
                         f"recursive := true) FROM {layer} WHERE {' OR '.join(f'({m})' for m, _ in entries)}")
        return " UNION ALL ".join(parts) or \
            "SELECT NULL::VARCHAR source_file, NULL::BIGINT source_row, NULL::VARCHAR \"column\", NULL::DOUBLE old_value, " \
            "NULL::DOUBLE new_value, NULL::VARCHAR rule, 0 _part WHERE FALSE"


def unsupported(study: str, stage: str, rule: str) -> UnsupportedRule:
    """The error for a rule the DuckDB ``stage`` engine lacks, naming the study and the rule."""
    return UnsupportedRule(f"{study}: the DuckDB {stage} engine does not implement {rule}; "
                           f"use clean.engine: pandas for this study")


def check_numeric(cfg: dict, types: dict[str, str], columns: list, stage: str) -> None:
    """The ``columns`` (ids, codes, numbers) present in ``types`` hold numbers, not text."""
    for col in dict.fromkeys(c for c in columns if c):
        if col in types and types[col] not in NUMERIC_TYPES:
            raise unsupported(cfg["study"], stage, f"column {col!r} of type {types[col]} "
                                                   f"(ids, codes and numbers stored as text)")


def check_supported(cfg: dict, types: dict[str, str]) -> None:
    """Everything the study configures is implemented here, and its columns are numbers."""
    def refuse(rule: str) -> None:
        raise unsupported(cfg["study"], "clean", rule)

    if cfg["not_interviewed"]:
        refuse("not_interviewed")
    if cfg["allowed_codes"]:
        refuse("allowed_codes")
    if cfg["female_owner"].get("male_codes") is not None:
        refuse("female_owner.male_codes")
    if not cfg["treatment"]["column"]:
        refuse("treatment dummies (treatment.dummies)")
    if any(out["baseline_column"] for out in cfg["outcomes"].values()):
        refuse("baselines in the same row (outcomes.*.baseline_column)")
    if cfg["_generated_unit_id"]:
        refuse("a generated unit id (no unit_id column)")
    check_numeric(cfg, types, [cfg["unit_id"], cfg.get("round"), cfg.get("cluster"), cfg["treatment"]["column"],
                               cfg["female_owner"].get("column"), (cfg.get("business_open") or {}).get("column"),
                               (cfg.get("recall_period") or {}).get("column"), *numeric_columns(cfg)], "clean")


# ------------------------------------------------------------------------------------------------
# Rules 1-2: invalid rows and duplicate interviews
# ------------------------------------------------------------------------------------------------
def invalid_reason(cfg: dict) -> str:
    """The reason a row cannot be analysed ('' if it can), in :func:`pipeline.clean_rows.reject_invalid_rows`' order."""
    unit, treat, round_col = cfg["unit_id"], cfg["treatment"]["column"], cfg.get("round")
    cases = [(f"{ident(unit)} IS NULL", literal(f"{unit} is missing")),
             (f"{ident(treat)} IS NULL", literal(f"{treat} is missing")),
             (f"{ident(treat)} NOT IN {in_list(cfg['treatment']['arms'])}",
              f"{literal(treat + '=')} || CAST({ident(treat)} AS VARCHAR) || ' is not a defined arm'")]
    if round_col:
        cases.append((f"{ident(round_col)} IS NULL", literal(f"{round_col} is missing")))
        if cfg.get("rounds"):
            cases.append((f"{ident(round_col)} NOT IN {in_list(cfg['rounds'])}",
                          f"{literal(round_col + '=')} || CAST({ident(round_col)} AS VARCHAR) || ' is not a defined round'"))
    return "CASE " + " ".join(f"WHEN {w} THEN {t}" for w, t in cases) + " ELSE '' END"


def find_rejected(con, cfg: dict, columns: list[str], duplicate_rule: str) -> None:
    """Tables ``rejected_keys`` (source_file, source_row, rule, reason) and ``kept`` (the other rows).

    Duplicates as :func:`pipeline.clean_rows.resolve_duplicates`: among valid rows sharing a
    unit x round, in submission order, a copy whose answers (every column but the row number and
    submission time and id) equal an earlier copy's is ``duplicate_identical``; of the remaining
    copies that still conflict, ``latest`` rejects all but the last, ``drop_all`` all of them."""
    if duplicate_rule not in ("latest", "drop_all", "error"):
        raise CleaningError(f"clean.duplicate_rule={duplicate_rule!r}: expected latest, drop_all or error")
    unit, round_col = cfg["unit_id"], cfg.get("round")
    keys = ", ".join(ident(k) for k in [unit] + ([round_col] if round_col else []))
    sub = cfg.get("submission") or {}
    order_cols = [c for c in (sub.get("time"), sub.get("id")) if c] + ["source_file", "source_row"]
    meta = {"source_file", "source_row", *(c for c in (sub.get("time"), sub.get("id")) if c)}
    content = ", ".join(ident(c) for c in columns if c not in meta)
    order = ", ".join(f"{ident(c)} ASC NULLS LAST" for c in order_cols)
    order_desc = ", ".join(f"{ident(c)} DESC NULLS FIRST" for c in order_cols)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE rejected_keys AS
        WITH marked AS (SELECT *, {invalid_reason(cfg)} AS _invalid FROM interim),
        valid AS (SELECT *, count(*) OVER (PARTITION BY {keys}) AS _n FROM marked WHERE _invalid = ''),
        copies AS (SELECT *, row_number() OVER (PARTITION BY {keys}, {content} ORDER BY {order}) AS _copy
                   FROM valid WHERE _n > 1),
        distinct_copies AS (SELECT source_file, source_row, count(*) OVER (PARTITION BY {keys}) AS _m,
                                   row_number() OVER (PARTITION BY {keys} ORDER BY {order_desc}) AS _from_last
                            FROM copies WHERE _copy = 1)
        SELECT source_file, source_row, 'invalid_row' AS rule, _invalid AS reason FROM marked WHERE _invalid <> ''
        UNION ALL
        SELECT source_file, source_row, 'duplicate_identical',
               'identical answers to an earlier submission of the same interview' FROM copies WHERE _copy > 1
        UNION ALL
        SELECT source_file, source_row, 'duplicate_conflicting',
               {literal('answers differ from a later submission of the same interview; the latest is kept'
                        if duplicate_rule == 'latest' else
                        'conflicting submissions of the same interview; all copies dropped')}
        FROM distinct_copies WHERE _m > 1 AND {'_from_last > 1' if duplicate_rule == 'latest' else 'TRUE'}
    """)
    if duplicate_rule == "error":
        conflicting = con.execute("SELECT count(*), min(source_row), max(source_row) FROM rejected_keys "
                                  "WHERE rule = 'duplicate_conflicting'").fetchall()[0]
        if conflicting[0]:
            raise CleaningError(f"{cfg['study']}: {conflicting[0]} conflicting submissions of the same interview "
                                f"(source rows {conflicting[1]} to {conflicting[2]}); set clean.duplicate_rule")
    # kept once, in source order: the rules' dozen passes read DuckDB's own storage (spilled to
    # disk beyond memory_limit) instead of decoding parquet and joining again, and the clean table
    # leaves in this order (preserve_insertion_order) without another sort
    con.execute("CREATE OR REPLACE TEMP TABLE kept AS SELECT * FROM interim "
                "ANTI JOIN rejected_keys USING (source_file, source_row) ORDER BY source_file, source_row")


# ------------------------------------------------------------------------------------------------
# Rules 4-7: value rules as expressions
# ------------------------------------------------------------------------------------------------
def missing_codes(con, cols: Columns, answer_cols: list[str], codes: dict[int, str]) -> None:
    """Survey codes to missing, logged with the code's reason; a column with a code becomes float64."""
    numeric = [c for c in answer_cols if cols.dtype[c] in NUMERIC_TYPES]
    if not numeric or not codes:
        return
    listed = in_list(codes)
    masks = {c: f"{cols.expr[c]} IN {listed}" for c in numeric}
    for col, n in cols.count_where(masks).items():
        if n:
            reason = "CASE " + " ".join(f"WHEN {cols.expr[col]} = {literal(k)} THEN {literal('missing_code:' + v)}"
                                        for k, v in codes.items()) + " END"
            cols.log(col, masks[col], "NULL", reason)
            cols.set(col, f"CASE WHEN {masks[col]} THEN NULL ELSE CAST({cols.expr[col]} AS DOUBLE) END", "DOUBLE")


def check_sex_coding(con, cfg: dict, cols: Columns) -> None:
    """As :func:`pipeline.clean_values.check_sex_coding`: with ``female_codes`` only, at most one other code."""
    female = cfg["female_owner"]
    if not female.get("column"):
        return
    col = cols.expr[female["column"]]
    others = [r[0] for r in con.execute(f"SELECT DISTINCT {col} FROM {cols.layer} WHERE {col} IS NOT NULL AND "
                                        f"{col} NOT IN {in_list(female['female_codes'])} ORDER BY 1").fetchall()]
    if len(others) > 1:
        raise CleaningError(f"{cfg['study']}: female_owner.column {female['column']!r} holds {len(others)} codes that "
                            f"are not in female_codes {female['female_codes']} ({others}); with female_codes only, "
                            f"one other code is read as male. Give female_owner.male_codes")


def closures(con, cfg: dict, cols: Columns) -> None:
    """Closed businesses (interviewed): ``business_closed`` = 1 and money flows 0, logged."""
    spec = cfg.get("business_open")
    if not spec:
        cols.set("business_closed", "CAST(0 AS TINYINT)", "TINYINT")
        return
    closed = f"(coalesce({cols.expr[spec['column']]} IN {in_list(spec['closed_codes'])}, FALSE) " \
             f"AND {cols.expr['interviewed']} = 1)"
    cols.set("business_closed", f"CAST({closed} AS TINYINT)", "TINYINT")
    cols.commit()
    flows = [out["column"] for out in cfg["outcomes"].values() if out.get("flow", True)]
    masks = {c: f"business_closed = 1 AND {cols.expr[c]} IS DISTINCT FROM 0" for c in flows}   # pandas: NaN != 0
    for col, n in cols.count_where(masks).items():
        if n:
            cols.log(col, masks[col], "0.0", "'closed_business_zero'")
            cols.set(col, f"CASE WHEN business_closed = 1 THEN 0.0 ELSE CAST({cols.expr[col]} AS DOUBLE) END", "DOUBLE")


def unusable_numbers(con, cfg: dict, cols: Columns, n_rows: int, raw_types: dict[str, str]) -> None:
    """Infinities and magnitudes whose sum of squares overflows float64 to missing, logged. Only
    columns that were floats in the interim table are searched: pandas searches every float
    column, but one that became float by a rule holds integers (|x| < 2^64, far below the bound
    of about 1e151 at 10^15 rows), so it cannot hold either."""
    bound = float(np.sqrt(np.finfo("float64").max / max(n_rows, 1)))
    masks = {}
    for col in numeric_columns(cfg):
        if col in cols.expr and cols.dtype[col] in FLOAT_TYPES and raw_types.get(col) in FLOAT_TYPES:
            e = f"CAST({cols.expr[col]} AS DOUBLE)"
            masks[(col, "inf")] = f"isinf({e})"
            masks[(col, "huge")] = f"(abs({e}) > {literal(bound)} AND NOT isinf({e}))"
    counts = cols.count_where(masks)
    for col in dict.fromkeys(c for c, _ in masks):
        inf, huge = counts[(col, "inf")], counts[(col, "huge")]
        if inf:
            cols.log(col, masks[(col, "inf")], "NULL", "'impossible_value:non_finite'")
        if huge:
            cols.log(col, masks[(col, "huge")], "NULL",
                     literal(f"impossible_value:magnitude above {bound:.3g} (float64 overflow)"))
        if inf or huge:
            cols.set(col, f"CASE WHEN {masks[(col, 'inf')]} OR {masks[(col, 'huge')]} THEN NULL "
                          f"ELSE {cols.expr[col]} END", cols.dtype[col])


def impossible_values(con, cfg: dict, cols: Columns) -> None:
    """Values outside ``valid_ranges`` (and negative money where it cannot be) to missing, logged;
    checks run one after the other, as in :func:`pipeline.clean_values.reject_impossible_values`."""
    checks = [(col, lo, hi) for col, (lo, hi) in cfg.get("valid_ranges", {}).items()]
    for out in cfg["outcomes"].values():
        if not out.get("allow_negative", False):
            checks += [(c, 0, None) for c in (out["column"], out["baseline_column"]) if c]
    pending = checks
    while pending:                # one pass over distinct columns; a column checked twice: next pass
        batch, later = [], []
        for check in pending:
            (later if any(check[0] == b[0] for b in batch) else batch).append(check)
        masks = {}
        for k, (col, lo, hi) in enumerate(batch):
            e = cols.expr[col]
            mask = " OR ".join([f"{e} < {literal(lo)}"] * (lo is not None) + [f"{e} > {literal(hi)}"] * (hi is not None))
            if mask:
                masks[k] = mask
        counts = cols.count_where({k: f"coalesce({m}, FALSE)" for k, m in masks.items()})
        for k, mask in masks.items():
            col, lo, hi = batch[k]
            if counts[k]:
                cols.log(col, f"coalesce({mask}, FALSE)", "NULL",
                         literal(f"impossible_value:outside[{lo},{hi if hi is not None else 'inf'}]"))
                cols.set(col, f"CASE WHEN {mask} THEN NULL ELSE CAST({cols.expr[col]} AS DOUBLE) END", "DOUBLE")
        cols.commit()
        pending = later


# ------------------------------------------------------------------------------------------------
# Rules 8-9: recall periods and outliers
# ------------------------------------------------------------------------------------------------
def recall(con, cfg: dict, cols: Columns, flow_period: str) -> list[str]:
    """Money flows to ``flow_period``; returns the new columns (as :func:`pipeline.clean_money.normalise_recall`)."""
    if flow_period not in PER_YEAR:
        raise CleaningError(f"clean.flow_period={flow_period!r}: expected one of {sorted(PER_YEAR)}")
    spec = cfg.get("recall_period") or {}
    if "column" in spec:
        code = cols.expr[spec["column"]]
        unknown = [r[0] for r in con.execute(f"SELECT DISTINCT {code} FROM {cols.layer} WHERE {code} IS NOT NULL AND "
                                             f"{code} NOT IN {in_list(spec['codes'])} ORDER BY 1").fetchall()]
        if unknown:
            raise CleaningError(f"{cfg['study']}: {spec['column']} has codes {unknown} not in recall_period.codes")
        periods = dict(spec["codes"])
    else:
        periods = {None: spec.get("value", flow_period)}
    bad = sorted(set(periods.values()) - set(PER_YEAR))
    if bad:
        raise CleaningError(f"{cfg['study']}: recall periods {bad} unknown; expected {sorted(PER_YEAR)}")
    factors = {k: PER_YEAR[p] / PER_YEAR[flow_period] for k, p in periods.items()}
    factor = literal(factors[None]) if "column" not in spec else \
        "CASE " + " ".join(f"WHEN {code} = {literal(k)} THEN {literal(f)}" for k, f in factors.items()) + " END"
    currency = str(cfg.get("currency", "lcu")).lower()
    new = []
    for name, out in cfg["outcomes"].items():
        target = flow_column(name, out, currency, flow_period)
        value = f"CAST({cols.expr[out['column']]} AS DOUBLE)"
        cols.set(target, f"CASE WHEN {value} = 0 THEN {value} ELSE {value} * ({factor}) END"
                 if out.get("flow", True) else value, "DOUBLE")
        new.append(target)
    return new


def group_quantiles(con, table: str, group: str, requests: list[tuple[str, float]]) -> list[dict]:
    """Per request (value expression, q) and group, pandas' ``groupby().quantile(q)`` (linear):
    s[i] + (s[i+1] - s[i]) * frac with i = int(q (n - 1)); the two order statistics read exactly
    with ``quantile_disc`` (which returns s[ceil(p n) - 1]: p = (i + 0.5) / n hits s[i]). Two
    passes over ``table`` for all requests: the group sizes, then the order statistics."""
    if not requests:
        return []
    counts = ", ".join(f"count({v})" for v, _ in requests)
    sizes = con.execute(f"SELECT {group}, {counts} FROM {table} GROUP BY 1").fetchall()
    aggs, plan = [], []
    for k, (value, q) in enumerate(requests):
        for g, *ns in sizes:
            n = ns[k]
            if not n:
                continue
            float_idx = q * float(n - 1)
            i = int(float_idx)
            probs = [(i + 0.5) / n] + ([(i + 1.5) / n] if i < n - 1 else [])
            aggs.append(f"quantile_disc({value}, [{', '.join(literal(p) for p in probs)}]) "
                        f"FILTER (WHERE {group} = {literal(g)} AND {value} IS NOT NULL)")
            plan.append((k, g, float_idx % 1))
    out = [{} for _ in requests]
    if aggs:
        stats = con.execute(f"SELECT {', '.join(aggs)} FROM {table}").fetchall()[0]
        for (k, g, frac), s in zip(plan, stats):
            out[k][g] = s[0] if frac == 0 or len(s) == 1 else s[0] + (s[1] - s[0]) * frac
    return out


def outliers(con, cols: Columns, targets: dict[str, bool], lower_pct: float, upper_pct: float,
             by: str | None, method: str) -> dict[str, int]:
    """``<col>_w``: values beyond the per-group percentiles clamped or blanked; missing stays missing."""
    if method not in OUTLIER_METHODS:
        raise CleaningError(f"clean.outlier_method={method!r}: expected one of {OUTLIER_METHODS}")
    group = cols.expr[by] if by else "0"
    wanted = [(col, op, pct) for col, both_tails in targets.items()
              for op, pct, on in ((">", upper_pct, upper_pct < 100), ("<", lower_pct, both_tails and lower_pct > 0)) if on]
    cutoffs = group_quantiles(con, cols.layer, group, [(cols.expr[col], pct / 100.0) for col, _, pct in wanted])
    masks, new = {}, {}
    for col in targets:
        w, conds = cols.expr[col], []
        for (target, op, _), per_group in zip(wanted, cutoffs):   # upper first, then lower on the clamped values
            if target != col:
                continue
            bound = "CASE " + " ".join(f"WHEN {group} = {literal(g)} THEN {literal(x)}"
                                        for g, x in per_group.items()) + " END" if per_group else "NULL::DOUBLE"
            cond = f"({w}) {op} ({bound})"
            conds.append(cond)
            w = f"CASE WHEN {cond} THEN {'NULL' if method == 'trim' else bound} ELSE {w} END"
        masks[col] = " OR ".join(f"coalesce({c}, FALSE)" for c in conds) or "FALSE"
        new[f"{col}_w"] = w
    changed = cols.count_where(masks)
    for col, w in new.items():
        cols.set(col, w, "DOUBLE")
    return {c: int(n) for c, n in changed.items()}
