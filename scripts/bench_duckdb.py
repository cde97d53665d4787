"""Benchmark the out-of-core clean and construct engines (``clean.engine: duckdb``) against a
hand-written DuckDB SQL baseline of the same rules, on a large synthetic survey written to parquet
in chunks.

    .venv/bin/python scripts/bench_duckdb.py --firms 250000 [--chunk-firms 50000] [--pandas]

1. The generator (``pipeline.synthetic.generate``, params.yaml ``synthetic:`` with seed + k for
   chunk k) makes ``--chunk-firms`` firms at a time; each chunk goes through the ingest stage's own
   pure function (``ingest.ingest_frame``, ``interim_table``), gets firm, market and row numbers
   offset past the earlier chunks, and is appended to one parquet file as a row group, so no more
   than a chunk is ever in memory. About 4 rows per firm: 2.6 million firms give ~10 million rows.
2. Each contender runs in its own child process (time and peak RSS from ``os.wait4``), side by side:
   ``engine``: :func:`pipeline.clean_duckdb.clean_parquet` (rules, rejected rows, flow, contract
   checks, clean table and value log to parquet), then :func:`pipeline.construct_duckdb.construct_parquet`
   (the analysis table to parquet, its checks, the summary's counts and the notebook's tables);
   ``baseline``: one hand-written SQL statement of the default study's clean rules (dedupe, codes,
   closures, ranges, recall, winsorising per round) to parquet, no logs, then one of its construct
   rules (per-firm values, firm x planned-round grid, outcomes in USD PPP, practice scores,
   baseline-round values) to parquet; ``baseline+records``: the same with the clean stage's records
   (rejected rows, value log); ``pandas`` (with ``--pandas``): ``pd.read_parquet`` + ``clean.clean``
   + ``construct.construct``. The engine's and the baseline's clean and analysis tables are
   compared (rows and every value).

Prints a table; asserts nothing (numbers are machine-dependent; the machine may be shared).
``make bench`` (``scripts/bench.py``) runs the engine against the baseline (clean + construct) as
one part of its table (``run``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEMORY_LIMIT = "2GB"     # DuckDB's buffer pool for both contenders (it spills to disk beyond)


def write_survey(path: Path, n_firms: int, chunk_firms: int) -> dict:
    """The interim table of a survey of ``n_firms`` firms, generated and written chunk by chunk."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import ingest, paths, synthetic
    from pipeline.io import load_params
    from pipeline.study import load_study, normalise

    cfg = normalise(load_study("synthetic"))
    base = load_params(ROOT / "params.yaml")["synthetic"]
    factor, _ = ingest.conversion_factor(cfg, paths.raw_synthetic_dir())
    writer, rows, firms, markets, schema = None, 0, 0, 0, None
    start = time.perf_counter()
    for k in range(-(-n_firms // chunk_firms)):
        n = min(chunk_firms, n_firms - firms)
        survey, labels, var_labels, _ = synthetic.generate({**base, "n_firms": n, "seed": base["seed"] + k})
        interim, _ = ingest.ingest_frame(survey, labels, var_labels, cfg, cfg["files"][0], salt=None,
                                         scan_identifiers=False, describe=False)
        interim = ingest.interim_table([interim], cfg, factor)
        interim["firm_id"] = (interim["firm_id"] + firms).astype("int32")
        interim["market_id"] = (interim["market_id"].astype("int32") + markets).astype("int32")
        interim["source_row"] += rows
        markets = int(interim["market_id"].max())
        table = pa.Table.from_pandas(interim, preserve_index=False)
        if writer is None:
            schema = table.schema
            writer = pq.ParquetWriter(path, schema)
        writer.write_table(table.cast(schema))
        rows, firms = rows + len(interim), firms + n
    writer.close()
    return {"rows": rows, "firms": firms, "generate_s": round(time.perf_counter() - start, 1),
            "parquet_mb": round(path.stat().st_size / 1e6, 1)}


# the default study's answer columns (studies/synthetic.yaml): missing codes apply to these
ANSWERS = ["owner_sex", "owner_age", "owner_educ_years", "hh_size", "took_training", "received_grant",
           "business_open", "recall_period", "profit", "revenue", "costs", "capital_stock", "hours_week",
           *[f"bp_{i:02d}" for i in range(1, 27)], "loan_any"]
RANGES = {"owner_age": (15, 95), "owner_educ_years": (0, 25), "hh_size": (1, 30), "hours_week": (0, 112),
          "revenue": (0, None), "costs": (0, None), "capital_stock": (0, None)}


def dedupe_sql(interim: str) -> str:
    """Valid rows, identical copies dropped, then the latest submission of each firm x round."""
    content = ", ".join(["enumerator_id", "firm_id", "round", "region", "sector", "market_id", "treat_arm",
                         *ANSWERS, "usd_ppp_per_lcu"])
    return f"""
    valid AS (SELECT * FROM read_parquet('{interim}') WHERE firm_id IS NOT NULL
                     AND treat_arm IN (1, 2, 3, 4) AND round IN (0, 1, 2, 3)),
    firsts AS (SELECT * FROM valid QUALIFY row_number() OVER (PARTITION BY {content}
               ORDER BY submitted_at, submission_id, source_file, source_row) = 1),
    latest AS (SELECT * FROM firsts QUALIFY row_number() OVER (PARTITION BY firm_id, round
               ORDER BY submitted_at DESC, submission_id DESC, source_file DESC, source_row DESC) = 1)"""


def baseline_sql(interim: str, out: str, upper: float = 0.99, lower: float = 0.01, kept: str | None = None) -> str:
    """The default study's clean rules written by hand (studies/synthetic.yaml, params.yaml clean:);
    ``kept``: a table of the deduplicated rows made before."""
    coded = ", ".join(f"CASE WHEN {c} IN (-99, -98, -88) THEN NULL ELSE {c} END AS {c}" for c in ANSWERS)
    flows = {"profit": "profit_lcu_month", "revenue": "revenue_lcu_month", "costs": "costs_lcu_month"}
    period = "CASE recall_period WHEN 1 THEN 52.0 / 12.0 WHEN 2 THEN 1.0 END"
    money = ", ".join([f"CASE WHEN c.{v} = 0 THEN c.{v} ELSE c.{v} * {period} END AS {t}" for v, t in flows.items()]
                      + ["CAST(c.capital_stock AS DOUBLE) AS capital_stock_lcu"])
    outcomes = list(flows.values()) + ["capital_stock_lcu"]
    cuts = ", ".join(f"quantile_cont({c}, {upper}) AS {c}_hi" for c in outcomes) + ", " + \
        f"quantile_cont(profit_lcu_month, {lower}) AS profit_lcu_month_lo"
    clamp = ", ".join(
        ["CASE WHEN profit_lcu_month > q.profit_lcu_month_hi THEN q.profit_lcu_month_hi "
         "WHEN profit_lcu_month < q.profit_lcu_month_lo THEN q.profit_lcu_month_lo "
         "ELSE profit_lcu_month END AS profit_lcu_month_w"]
        + [f"CASE WHEN {c} > q.{c}_hi THEN q.{c}_hi ELSE {c} END AS {c}_w" for c in outcomes[1:]])
    return f"""
    COPY (
    WITH {f"latest AS (SELECT * FROM {kept})" if kept else dedupe_sql(interim)},
    coded AS (SELECT * REPLACE ({coded}) FROM latest),
    closed AS (SELECT *, CAST(business_open = 0 AS TINYINT) AS business_closed,
               CASE WHEN business_open = 0 THEN 0 ELSE profit END AS profit_c,
               CASE WHEN business_open = 0 THEN 0 ELSE revenue END AS revenue_c,
               CASE WHEN business_open = 0 THEN 0 ELSE costs END AS costs_c FROM coded),
    valued AS (SELECT * EXCLUDE (profit_c, revenue_c, costs_c) REPLACE (
                 profit_c AS profit,
                 CASE WHEN revenue_c < 0 THEN NULL ELSE revenue_c END AS revenue,
                 CASE WHEN costs_c < 0 THEN NULL ELSE costs_c END AS costs,
                 CASE WHEN capital_stock < 0 THEN NULL ELSE capital_stock END AS capital_stock,
                 CASE WHEN owner_age NOT BETWEEN 15 AND 95 THEN NULL ELSE owner_age END AS owner_age,
                 CASE WHEN owner_educ_years NOT BETWEEN 0 AND 25 THEN NULL ELSE owner_educ_years END AS owner_educ_years,
                 CASE WHEN hh_size NOT BETWEEN 1 AND 30 THEN NULL ELSE hh_size END AS hh_size,
                 CASE WHEN hours_week NOT BETWEEN 0 AND 112 THEN NULL ELSE hours_week END AS hours_week)
               FROM closed),
    c AS (SELECT *, 1 AS interviewed FROM valued),
    m AS (SELECT c.*, {money} FROM c),
    q AS (SELECT round, {cuts} FROM m GROUP BY round)
    SELECT m.*, {clamp} FROM m JOIN q USING (round) ORDER BY source_file, source_row
    ) TO '{out}' (FORMAT parquet)
    """


def baseline_records_sql(interim: str, out: str) -> list[str]:
    """The baseline with the engine's records too: the deduplicated rows kept once (a temporary
    table), the clean table, the rejected rows and a value log (codes, closures, ranges), by hand."""
    coded = "CASE old_value WHEN -99 THEN 'missing_code:refused' WHEN -98 THEN 'missing_code:dont_know' " \
            "WHEN -88 THEN 'missing_code:not_applicable' END"
    unpivot = "UNPIVOT (SELECT source_file, source_row, " + ", ".join(f"CAST({c} AS DOUBLE) AS {c}" for c in ANSWERS) + \
        f" FROM kept) ON {', '.join(ANSWERS)} INTO NAME \"column\" VALUE old_value"
    value = "(CASE WHEN {c} IN (-99, -98, -88) THEN NULL ELSE {c} END)"
    closed = " UNION ALL ".join(
        f"SELECT source_file, source_row, '{c}', {value.format(c=c)}, 0.0, 'closed_business_zero' FROM kept "
        f"WHERE business_open = 0 AND {value.format(c=c)} IS DISTINCT FROM 0" for c in ("profit", "revenue", "costs"))
    impossible = " UNION ALL ".join(
        f"SELECT source_file, source_row, '{c}', {c}, NULL, 'impossible_value:outside[{lo},{hi if hi is not None else 'inf'}]' "
        f"FROM kept WHERE {c} NOT IN (-99, -98, -88) AND business_open IS DISTINCT FROM 0 AND "
        f"({c} < {lo}{f' OR {c} > {hi}' if hi is not None else ''})" for c, (lo, hi) in RANGES.items())
    log = (f"SELECT source_file, source_row, \"column\", old_value, '' AS old_text, NULL::DOUBLE AS new_value, "
           f"{coded} AS rule FROM ({unpivot}) WHERE old_value IN (-99, -98, -88) "
           f"UNION ALL SELECT s, r, c, o, '', n, ru FROM ({closed} UNION ALL {impossible}) AS t(s, r, c, o, n, ru)")
    return [f"CREATE TEMP TABLE kept AS WITH {dedupe_sql(interim)} SELECT * FROM latest",
            baseline_sql(interim, out, kept="kept"),
            f"COPY (SELECT i.*, 'rejected' AS rule FROM read_parquet('{interim}') i ANTI JOIN kept "
            f"USING (source_file, source_row) ORDER BY source_file, source_row) TO '{out}.rejected.parquet' (FORMAT parquet)",
            f"COPY (SELECT * FROM ({log}) ORDER BY source_file, source_row, \"column\", rule) "
            f"TO '{out}.log.parquet' (FORMAT parquet)"]


ARMS = {1: ("Control", 0, 0), 2: ("Training only", 1, 0), 3: ("Grant only", 0, 1), 4: ("Training + grant", 1, 1)}
PRACTICES = {"skills_index": range(1, 27), "skills_marketing": range(1, 8), "skills_buying_stock": range(8, 11),
             "skills_record_keeping": range(11, 19), "skills_financial_planning": range(19, 27)}


def construct_baseline_sql(clean: str, out: str, min_share: float = 0.5) -> str:
    """The default study's construct rules written by hand (studies/synthetic.yaml, params.yaml
    construct:): per-firm assignment, strata, market and gender, the firm x round grid (rounds
    0-3) with attrition, outcomes in USD PPP per month, practice scores, credit, take-up,
    covariates, and each value's baseline-round value (0 plus a missing dummy)."""
    money = {"profit_usd_ppp_month": "profit_lcu_month", "revenue_usd_ppp_month": "revenue_lcu_month",
             "costs_usd_ppp_month": "costs_lcu_month", "capital_stock_usd_ppp": "capital_stock_lcu"}
    values = []
    for new, base in money.items():
        values += [f"{base}_w * usd_ppp_per_lcu AS {new}", f"{base} * usd_ppp_per_lcu AS {new}_unwinsorised"]
    values.append("CASE WHEN interviewed = 1 THEN CAST(business_closed AS DOUBLE) END AS business_closed")
    for name, items in PRACTICES.items():
        cols = [f"bp_{i:02d}" for i in items]
        n = " + ".join(f"CAST({c} IS NOT NULL AS INTEGER)" for c in cols)
        total = " + ".join(f"coalesce({c}, 0.0)" for c in cols)
        values.append(f"CASE WHEN ({n}) > 0 AND ({n}) >= {min_share * len(cols)} THEN ({total}) / ({n}) END AS {name}")
    values += ["CAST(loan_any AS DOUBLE) AS credit_access", "CAST(took_training AS DOUBLE) AS takeup_skills",
               "CAST(received_grant AS DOUBLE) AS takeup_capital"]
    values += [f"CAST({c} AS DOUBLE) AS {c}" for c in ("owner_age", "owner_educ_years", "hh_size", "hours_week")]
    names = [v.rsplit(" AS ", 1)[1] for v in values]
    baseline = ", ".join(f"CAST(b.{c} IS NULL AS TINYINT) AS {c}_bl_missing, coalesce(b.{c}, 0.0) AS {c}_bl"
                         for c in names)
    label = "CASE g.arm " + " ".join(f"WHEN {k} THEN '{a[0]}'" for k, a in ARMS.items()) + " END"
    dummies = ", ".join(f"CAST(g.arm = {k} AS TINYINT) AS arm_{a[0].lower().replace(' + ', '_').replace(' ', '_')}"
                        for k, a in ARMS.items() if k != 1)
    return f"""
    COPY (
    WITH firms AS (SELECT firm_id, min(treat_arm) AS arm, min(region) AS region, min(sector) AS sector,
                          min(market_id) AS market, min(owner_sex) AS sex FROM read_parquet('{clean}') GROUP BY 1),
    obs AS (SELECT firm_id, CAST(round AS BIGINT) AS round, {', '.join(values)}, interviewed
            FROM read_parquet('{clean}')),
    g AS (SELECT firms.*, r.round FROM firms, (SELECT unnest([0, 1, 2, 3]) AS round) r)
    SELECT 'synthetic' AS study, CAST(g.firm_id AS VARCHAR) AS firm_id, g.round, g.round <> 0 AS followup,
           CAST(coalesce(o.interviewed, 0) AS TINYINT) AS interviewed,
           CAST(1 - coalesce(o.interviewed, 0) AS TINYINT) AS attrited, {label} AS arm,
           CAST(g.arm IN (2, 4) AS TINYINT) AS treat_skills, CAST(g.arm IN (3, 4) AS TINYINT) AS treat_capital,
           CASE WHEN g.sex = 2 THEN 1.0 WHEN g.sex IS NOT NULL THEN 0.0 END AS female_owner,
           'region=' || g.region || '|sector=' || g.sector AS stratum, CAST(g.market AS VARCHAR) AS cluster_id,
           {dummies}, {', '.join(f'o.{c}' for c in names)}, {baseline}
    FROM g LEFT JOIN obs o ON o.firm_id = g.firm_id AND o.round = g.round
    LEFT JOIN (SELECT * FROM obs WHERE round = 0) b ON b.firm_id = g.firm_id
    ORDER BY g.firm_id, g.round
    ) TO '{out}' (FORMAT parquet)
    """


def analysis_path(out: str) -> str:
    return str(out).replace(".parquet", "_analysis.parquet")


def child(role: str, interim: str, out: str) -> None:
    """One contender, in this (child) process: clean, then construct (seconds of each printed)."""
    start = time.perf_counter()
    spill = str(Path(out).parent / "spill")
    if role == "engine":
        from pipeline import clean_duckdb, construct_duckdb
        from pipeline.io import load_params
        from pipeline.study import load_study
        params, cfg = load_params(ROOT / "params.yaml"), load_study("synthetic")
        clean_duckdb.clean_parquet(interim, out, str(out).replace(".parquet", "_log.parquet"), cfg, params["clean"],
                                   memory_limit=MEMORY_LIMIT, temp_directory=spill)
        cleaned = time.perf_counter()
        construct_duckdb.construct_parquet(out, analysis_path(out), cfg, params["construct"],
                                           params["clean"]["flow_period"], memory_limit=MEMORY_LIMIT,
                                           temp_directory=spill)
    elif role in ("baseline", "baseline+records"):
        import duckdb
        con = duckdb.connect()
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        con.execute(f"SET temp_directory = '{spill}'")
        for statement in (baseline_records_sql(interim, out) if role == "baseline+records"
                          else [baseline_sql(interim, out)]):
            con.execute(statement)
        cleaned = time.perf_counter()
        con.execute(construct_baseline_sql(out, analysis_path(out)))
    elif role == "pandas":
        import pandas as pd

        from pipeline import clean, construct
        from pipeline.io import load_params
        from pipeline.study import load_study
        params, cfg = load_params(ROOT / "params.yaml"), load_study("synthetic")
        table = clean.clean(pd.read_parquet(interim), cfg, {**params["clean"], "engine": "pandas"})["clean"]
        table.to_parquet(out)
        cleaned = time.perf_counter()
        construct.construct(table, cfg, params["construct"], params["clean"]["flow_period"]).to_parquet(analysis_path(out))
    print(json.dumps({"clean_s": round(cleaned - start, 1), "construct_s": round(time.perf_counter() - cleaned, 1)}))


def measure(role: str, interim: Path, out: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", role, str(interim), str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    printed = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    parts = json.loads(printed.strip().splitlines()[-1]) if printed.strip() else {}
    return {"role": role, "seconds": round(seconds, 1), "peak_gb": round(usage.ru_maxrss / 1024 ** 2, 2),
            "peak_mb": round(usage.ru_maxrss / 1024), "exit": os.waitstatus_to_exitcode(status), **parts}


def compare(engine_out: Path, baseline_out: Path, one_row_per_source_row: bool = True) -> str:
    """Rows and values of the two clean tables (the baseline's columns, matched by name, numbers as
    doubles: the engine keeps pandas' dtypes, the baseline DuckDB's)."""
    import duckdb
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")     # EXCEPT ALL of 10M wide rows: spill, not 10 GB
    types = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM '{baseline_out}')").fetchall()
    # numbers compared to 1e-6 (the baseline's quantile_cont differs from pandas' in the last bits)
    keyed = ", ".join(f'"{c}"' if t in ("VARCHAR", "BOOLEAN") else f'round(CAST("{c}" AS DOUBLE), 6)' for c, t in types)
    diff = con.execute(f"SELECT count(*) FROM (SELECT {keyed} FROM '{engine_out}' EXCEPT ALL "
                       f"SELECT {keyed} FROM '{baseline_out}')").fetchall()[0][0]
    n = [con.execute(f"SELECT count(*) FROM '{p}'").fetchall()[0][0] for p in (engine_out, baseline_out)]
    if not one_row_per_source_row:     # the value log: several entries per source row
        return f"rows engine {n[0]:,} baseline {n[1]:,}; engine rows not in the baseline: {diff:,}"
    unordered = con.execute(f"SELECT count(*) FROM (SELECT source_row, lag(source_row) OVER (ORDER BY file_row_number) "
                            f"AS previous FROM read_parquet('{engine_out}', file_row_number = true)) "
                            f"WHERE source_row <= previous").fetchall()[0][0]   # one source file here
    return (f"rows engine {n[0]:,} baseline {n[1]:,}; engine rows not in the baseline: {diff:,}; "
            f"engine rows out of source order: {unordered:,}")


# rows per firm of the default generator: 10,000,200 rows from 2.6 million firms
ROWS_PER_FIRM = 10_000_200 / 2_600_000


def firms_for(rows: int) -> int:
    """Firms whose survey has about ``rows`` rows."""
    return max(1, round(rows / ROWS_PER_FIRM))


def run(firms: int, chunk_firms: int, roles: list[str], folder: str | None = None,
        interim: Path | None = None) -> dict:
    """The survey (written unless ``interim`` is given), then each contender of ``roles`` in its
    own process (the first is the reference of the ratios); prints and returns the table and the
    comparisons of the engine's clean table with the baselines'."""
    out: dict = {}
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        tmp = Path(tmp)
        if interim is None:
            interim = tmp / "ingested.parquet"
            out["survey"] = write_survey(interim, firms, chunk_firms)
            print(f"survey: {out['survey']}", flush=True)
        results = out["contenders"] = [measure(role, interim, tmp / f"clean_{role}.parquet") for role in roles]
        base = results[0]["seconds"]
        print(f"{'contender':<16} {'seconds':>8} {'x ' + roles[0]:>10} {'peak GB':>8} {'clean s':>8} {'construct s':>11}")
        for r in results:
            print(f"{r['role']:<16} {r['seconds']:>8} {r['seconds'] / base:>10.2f} {r['peak_gb']:>8} "
                  f"{r.get('clean_s', '-'):>8} {r.get('construct_s', '-'):>11}"
                  + ("" if r["exit"] == 0 else f"  FAILED (exit {r['exit']})"))
        engine = tmp / "clean_engine.parquet"
        out["comparisons"] = {}
        for baseline in ("baseline", "baseline+records"):
            if "engine" in roles and baseline in roles:
                out["comparisons"][baseline] = compare(engine, tmp / f"clean_{baseline}.parquet")
                out["comparisons"][f"{baseline} analysis"] = compare(
                    tmp / analysis_path("clean_engine.parquet"), tmp / analysis_path(f"clean_{baseline}.parquet"), False)
        if "engine" in roles and "baseline+records" in roles:
            out["comparisons"]["value log"] = compare(tmp / "clean_engine_log.parquet",
                                                      tmp / "clean_baseline+records.parquet.log.parquet", False)
        for name, text in out["comparisons"].items():
            print(f"engine vs {name}: {text}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--firms", type=int, default=250_000)
    parser.add_argument("--chunk-firms", type=int, default=50_000)
    parser.add_argument("--pandas", action="store_true", help="also the pandas engine (in memory)")
    parser.add_argument("--no-records", action="store_true", help="without the baseline+records contender")
    parser.add_argument("--child", nargs=3, metavar=("ROLE", "INTERIM", "OUT"))
    parser.add_argument("--dir", help="working folder (default: a temporary one)")
    parser.add_argument("--interim", help="an interim parquet file this script wrote before (skips the generator)")
    parser.add_argument("--generate-only", metavar="PATH", help="write the survey to PATH and stop")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.generate_only:
        print(write_survey(Path(args.generate_only), args.firms, args.chunk_firms))
        return
    roles = ["baseline"] + ([] if args.no_records else ["baseline+records"]) + ["engine"] \
        + (["pandas"] if args.pandas else [])
    run(args.firms, args.chunk_firms, roles, args.dir, Path(args.interim) if args.interim else None)


if __name__ == "__main__":
    main()
