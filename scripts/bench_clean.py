"""Benchmark cleaning and construction: do they scale with rows, and what did vectorising buy?

    .venv/bin/python scripts/bench_clean.py [--copies 8] [--repeat 3]

Side by side in one run (the machine is shared, so only ratios within a run mean anything):

1. code normalisation on a 1,000,000-row column: ``codes.norm_codes`` (Python once per distinct
   value) against ``norm_code`` applied row by row (what the stage did before);
2. ingest -> clean -> construct of the default synthetic survey in memory (the simulation's path)
   at 1x and at ``--copies`` x the rows (the survey stacked with new firm ids): time per row should
   stay flat (ratio near 1) when nothing is quadratic or per-row Python;
3. one simulation draw (generator, in-memory ingest, clean, construct and the fits), median of
   ``--repeat``.

Prints a table; asserts nothing (numbers are machine-dependent).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import clean, construct, ingest, paths, simulation, synthetic  # noqa: E402
from pipeline.codes import norm_code, norm_codes  # noqa: E402
from pipeline.study import load_study, normalise  # noqa: E402


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stacked_interim(params: dict, cfg: dict, copies: int) -> pd.DataFrame:
    survey, value_labels, variable_labels, _ = synthetic.generate(params["synthetic"])
    unit = cfg["unit_id"]
    parts = []
    for k in range(copies):
        part = survey.copy()
        part[unit] = part[unit] + k * 10_000_000       # new firms, same answers
        parts.append(part)
    survey = pd.concat(parts, ignore_index=True)
    interim, _ = ingest.ingest_frame(survey, value_labels, variable_labels, cfg, cfg["files"][0], salt=None,
                                     scan_identifiers=False)
    factor, _ = ingest.conversion_factor(cfg, paths.raw_synthetic_dir())
    return ingest.interim_table([interim], cfg, factor)


def clean_and_construct(interim: pd.DataFrame, cfg: dict, params: dict) -> pd.DataFrame:
    cleaned = clean.clean(interim, cfg, params["clean"])["clean"]
    return construct.construct(cleaned, cfg, params["construct"], params["clean"].get("flow_period", "month"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = normalise(load_study("synthetic"))
    rows = []

    column = pd.Series(np.random.default_rng(0).choice([1.0, 2.0, 3.0, -99.0, np.nan], 1_000_000))
    vectorised = median_time(lambda: norm_codes(column), args.repeat)
    per_row = median_time(lambda: [norm_code(v) for v in column.to_numpy(dtype=object)], args.repeat)
    rows.append(("norm_codes, 1,000,000 rows (s)", vectorised, per_row, per_row / vectorised))

    small, big = stacked_interim(params, cfg, 1), stacked_interim(params, cfg, args.copies)
    clean_and_construct(small, cfg, params)                      # imports and caches outside the timing
    t_small = median_time(lambda: clean_and_construct(small, cfg, params), args.repeat)
    t_big = median_time(lambda: clean_and_construct(big, cfg, params), args.repeat)
    rows.append((f"clean+construct, {len(small):,} raw rows (s)", t_small, None, None))
    rows.append((f"clean+construct, {len(big):,} raw rows (s)", t_big, None, None))
    per_row_ratio = (t_big / len(big)) / (t_small / len(small))
    rows.append((f"time per row at {args.copies}x / at 1x", per_row_ratio, None, None))

    settings = simulation.build_settings(params["synthetic"], params["clean"], params["construct"],
                                         params["estimate"], cfg, variants=list(simulation.VARIANTS),
                                         outcomes=list(simulation.OUTCOMES),
                                         wild_reps=params["simulation"]["wild_bootstrap_reps"])
    draw = median_time(lambda: simulation.one_draw(0, settings), args.repeat)
    rows.append(("one simulation draw, 2 variants x 2 outcomes (s)", draw, None, None))

    print(f"{'measure':<52} {'value':>10} {'per-row ref':>12} {'speed-up':>9}")
    for name, value, reference, ratio in rows:
        print(f"{name:<52} {value:>10.3f} {'' if reference is None else f'{reference:.3f}':>12} "
              f"{'' if ratio is None else f'{ratio:.1f}x':>9}")


if __name__ == "__main__":
    main()
