"""`make bench`: each figure of issue 9's "Done when", measured side by side in one run and printed
as one table (measured numbers, the ratio, its target, met or not).

    make bench                                         # or: .venv/bin/python scripts/bench.py
    .venv/bin/python scripts/bench.py --only tax --tax-stages clean    # one part, one stage
    .venv/bin/python scripts/bench.py --duckdb-rows 10000200           # the issue's 10M-row survey
    .venv/bin/python scripts/bench.py --cold-repro                     # + cold/no-op dvc repro (~40 min)
    .venv/bin/python scripts/bench.py --markdown .bench/bench.json     # README rows of an earlier run

Parts (``--only`` picks some; each measures its contenders alternately or in turn in this run, so
they see the same machine load, and only ratios within the run are compared):

* ``tax``: each stage of the synthetic study (synthetic, ingest, clean, construct, estimate, in
  pipeline order) as a notebook stage (``python -m pipeline.run_stage``) and its function as a
  plain ``python -c`` process, alternately, ``--tax-repeats`` times each (once for a stage whose
  function takes over a minute); ratio of the medians (target <= 1.3). Both write the same
  outputs, so each stage feeds the next.
* ``simulation``: CPU s per draw of this checkout and of ``--simulation-against`` (default a73bafe,
  the last commit before issue 9's work began: its stage was ``scripts/simulation_study.py``) in
  alternating child processes (``scripts/bench_simulation.py``); the stage's CPU time at the
  ``simulation:`` params (draws, few-cluster draws) projected from them, ratio (target >= 10x),
  and its wall time at ``simulation.workers`` (CPU time / workers: a free core per worker).
* ``duckdb``: the DuckDB clean + construct engine vs a hand-written DuckDB SQL baseline of the same rules, each
  in its own process, on a generated survey of about ``--duckdb-rows`` rows
  (``scripts/bench_duckdb.py``): time ratio (target <= 1.5) and the engine's peak memory (< 4 GB).
* ``estimation``: fastols vs pyfixest (``scripts/bench_estimation.py``, pyfixest from the venv in
  ``.bench/venv``) at its default sizes: warm-call time and peak-memory ratios (target < 1).

``--cold-repro`` adds a cold ``dvc repro -f``, a no-op ``dvc repro`` and each stage alone. Prints a
machine summary (cores, load average at start and end), the parts' own tables, then the summary
table; writes everything to .bench/bench.json (after each part). Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))      # the part scripts next to this one
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
OUT = ROOT / ".bench" / "bench.json"

PARTS = ("tax", "simulation", "duckdb", "estimation")
# stage -> the module whose run(context) its notebook calls, in pipeline order
TAX_STAGES = {"synthetic": "pipeline.synthetic", "ingest": "pipeline.ingest", "clean": "pipeline.clean",
              "construct": "pipeline.construct", "estimate": "pipeline.estimation.stage"}
TAX_STUDY = "synthetic"
# a stage whose function runs longer is timed once each way: the tax is a few seconds of fixed cost,
# and three runs of the estimate stage (minutes each here) would triple make bench's time
LONG_STAGE_S = 60
# the last commit before issue 9's work began (aed27fc made the simulation a stage)
SIMULATION_REFERENCE = "a73bafe"
TARGETS = {"tax": "<= 1.3", "simulation": ">= 10", "duckdb_time": "<= 1.5", "duckdb_peak_mb": "< 4096",
           "estimation": "< 1"}


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def target_met(value: float, target: str) -> bool | None:
    """Whether ``value`` meets ``target`` ("<= 1.3", ">= 10", "< 1"); None without a target."""
    if not target:
        return None
    op, bound = target.split()
    return {"<=": value <= float(bound), ">=": value >= float(bound), "<": value < float(bound),
            ">": value > float(bound)}[op]


def row(figure: str, measured: str, value: float, target: str = "") -> dict:
    """One line of the table: the measured numbers as text, the value compared with the target
    (a ratio, or MB for memory)."""
    return {"figure": figure, "measured": measured, "value": value, "target": target,
            "met": target_met(value, target)}


def _met(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[met]


def table(rows: list[dict]) -> str:
    """The rows as fixed-width text."""
    fig = max([len("figure")] + [len(r["figure"]) for r in rows])
    meas = max([len("measured")] + [len(r["measured"]) for r in rows])
    lines = [f"{'figure':<{fig}}  {'measured':<{meas}}  {'value':>9}  {'target':<8}  met"]
    lines.append("-" * len(lines[0]))
    lines += [f"{r['figure']:<{fig}}  {r['measured']:<{meas}}  {r['value']:>9.3g}  {r['target']:<8}  {_met(r['met'])}"
              for r in rows]
    return "\n".join(lines)


def markdown(rows: list[dict], machine: dict) -> str:
    """README rows: | figure (date, load) | measured | value | target | met |."""
    end = machine.get("load_average_end")          # absent in a run stopped before its end
    when = (f"{machine['date_utc'][:10]}, {machine['cores']} cores, load average "
            f"{machine['load_average_start'][0]:.1f} at start" + (f", {end[0]:.1f} at end" if end else ""))
    lines = [f"| `make bench` figure ({when}) | measured | value | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {r['figure']} | {r['measured']} | {r['value']:.3g} | {r['target'] or '-'} | {_met(r['met'])} |"
              for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------------------------
def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def stage_command(stage: str, study: str | None = None) -> list[str]:
    return [sys.executable, "-m", "pipeline.run_stage", stage] + (["--study", study] if study else [])


def function_command(stage: str, study: str | None) -> list[str]:
    """The stage's function as a plain process: what its notebook calls."""
    return [sys.executable, "-c", f"from pipeline import stage_context; from {TAX_STAGES[stage]} import run; "
                                  f"run(stage_context.build({stage!r}, {study!r}))"]


def load_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


# ---------------------------------------------------------------------------------------------
# Parts: each measures, then builds its rows from the measured numbers alone
# ---------------------------------------------------------------------------------------------
def notebook_tax(stage: str, repeats: int) -> dict:
    """Wall times of the stage's function as a plain process and of the stage, run alternately;
    once only when the function takes over LONG_STAGE_S (the estimate stage: minutes)."""
    study = None if stage == "synthetic" else TAX_STUDY
    function_s, stage_s = [], []
    for _ in range(repeats):
        function_s.append(timed(function_command(stage, study)))
        stage_s.append(timed(stage_command(stage, study)))
        if function_s[0] > LONG_STAGE_S:
            break
    print(f"  {stage:<10} function {statistics.median(function_s):6.1f} s   stage {statistics.median(stage_s):6.1f} s",
          flush=True)
    return {"function_s": function_s, "stage_s": stage_s}


def tax_rows(stages: dict) -> list[dict]:
    out = []
    for stage, t in stages.items():
        function, notebook = statistics.median(t["function_s"]), statistics.median(t["stage_s"])
        where = stage if stage == "synthetic" else f"{stage}@{TAX_STUDY}"
        out.append(row(f"notebook tax {where}: stage / function (medians of {len(t['stage_s'])}, alternating)",
                       f"{notebook:.1f} s vs {function:.1f} s", notebook / function, TARGETS["tax"]))
    return out


def tax_part(args) -> dict:
    print(f"notebook tax: each stage and its function alternately, {args.tax_repeats} times each", flush=True)
    stages = {stage: notebook_tax(stage, args.tax_repeats) for stage in args.tax_stages}
    return {"stages": stages, "rows": tax_rows(stages)}


def simulation_rows(cpu: dict, reference: str, sim: dict) -> list[dict]:
    """``cpu``: {"reference": {"main": s, "few": s or None}, "this checkout": {...}} CPU s per draw;
    ``sim``: the ``simulation:`` params (draws, few_cluster_draws, workers)."""
    old, new = cpu["reference"], cpu["this checkout"]

    def stage_cpu(per_draw: dict) -> float:
        return sim["draws"] * per_draw["main"] + (sim["few_cluster_draws"] * per_draw["few"] if per_draw["few"] else 0)

    old_stage, new_stage = stage_cpu(old), stage_cpu(new)
    few_then = f"{sim['few_cluster_draws']:,}" if old["few"] else "none"
    return [
        row(f"simulation: CPU s per main draw, {reference} vs this checkout", f"{old['main']:.3f} vs {new['main']:.3f}",
            old["main"] / new["main"]),
        row(f"simulation stage CPU at {sim['draws']:,} draws + {sim['few_cluster_draws']:,} few-cluster "
            f"({few_then} at {reference}), projected: {reference} / this checkout",
            f"{old_stage:,.0f} s vs {new_stage:,.0f} s", old_stage / new_stage, TARGETS["simulation"]),
        row(f"simulation stage wall time at {sim['workers']} workers, projected (s; {reference}: "
            f"{old_stage / sim['workers']:,.0f} s)", f"{new_stage / sim['workers']:,.0f} s", new_stage / sim["workers"]),
    ]


def simulation_part(args) -> dict:
    import bench_simulation
    ref = args.simulation_against
    commit = subprocess.run(["git", "log", "-1", "--format=%h %ad %s", "--date=short", ref], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.strip()
    why = " (the code when issue 9 was filed)" if ref == SIMULATION_REFERENCE else ""
    print(f"simulation: this checkout vs {commit[:100]}{why}", flush=True)
    cpu = bench_simulation.side_by_side(ref, args.simulation_draws, args.simulation_few, args.simulation_rounds)
    sim = load_params()["simulation"]
    return {"reference": ref, "reference_commit": commit, "draws": args.simulation_draws,
            "few": args.simulation_few, "rounds": args.simulation_rounds, "cpu_s_per_draw": cpu,
            "simulation_params": sim, "rows": simulation_rows(cpu, ref, sim)}


def duckdb_rows(result: dict) -> list[dict]:
    got = {c["role"]: c for c in result["contenders"]}
    failed = [role for role, c in got.items() if c["exit"] != 0]
    if failed:
        raise RuntimeError(f"bench_duckdb: {', '.join(failed)} failed")
    engine, baseline = got["engine"], got["baseline"]
    rows_text = f"{result['survey']['rows']:,} rows"
    return [row(f"DuckDB clean + construct engine / hand-written SQL baseline, time, {rows_text}",
                f"{engine['seconds']:.1f} s vs {baseline['seconds']:.1f} s", engine["seconds"] / baseline["seconds"],
                TARGETS["duckdb_time"]),
            row(f"DuckDB clean + construct engine peak memory (MB), {rows_text}",
                f"{engine['peak_mb']:,} MB (baseline {baseline['peak_mb']:,} MB)", engine["peak_mb"],
                TARGETS["duckdb_peak_mb"])]


def duckdb_part(args) -> dict:
    import bench_duckdb
    firms = bench_duckdb.firms_for(args.duckdb_rows)
    print(f"duckdb: a survey of {firms:,} firms (about {args.duckdb_rows:,} rows), baseline then engine", flush=True)
    result = bench_duckdb.run(firms, min(args.duckdb_chunk_firms, firms), ["baseline", "engine"])
    return {**result, "firms": firms, "rows": duckdb_rows(result)}


def estimation_rows(result: dict) -> list[dict]:
    out = []
    for v in result["verdicts"]:
        runs = {r["tool"]: r for r in result["runs"] if r["n"] == v["n"]}
        ours, theirs = runs["fastols"], runs["pyfixest"]
        size = f"{v['n']:,.0f} rows"
        out.append(row(f"estimation fastols / pyfixest, warm-call time, {size}",
                       f"{ours['warm_s']:.3f} s vs {theirs['warm_s']:.3f} s (first call {ours['first_s']:.3f} "
                       f"vs {theirs['first_s']:.3f})", ours["warm_s"] / theirs["warm_s"], TARGETS["estimation"]))
        out.append(row(f"estimation fastols / pyfixest, peak memory, {size}",
                       f"{ours['peak_gb']:.3f} GB vs {theirs['peak_gb']:.3f} GB", ours["peak_gb"] / theirs["peak_gb"],
                       TARGETS["estimation"]))
    return out


def estimation_part(args) -> dict:
    import bench_estimation
    print("estimation: fastols vs pyfixest, each call in its own process", flush=True)
    result = bench_estimation.run(bench_estimation.parse_sizes(args.estimation_sizes), 0,
                                  str(bench_estimation.PYFIXEST_PYTHON), statsmodels_max_n=0)
    return {**result, "rows": estimation_rows(result)}


def cold_repro_part(args) -> dict:
    """Cold and no-op dvc repro, then each stage alone (the whole pipeline, ~40 min here)."""
    out = {"dvc_repro_cold_s": timed(["dvc", "repro", "-f"])}
    print(f"dvc repro -f (cold, all stages):   {out['dvc_repro_cold_s']:7.1f} s", flush=True)
    out["dvc_repro_noop_s"] = timed(["dvc", "repro"])
    out["stages_s"] = {}
    params = load_params()
    stages = [("synthetic", None)] + [(stage, study) for stage in ("ingest", "clean", "construct", "estimate")
                                      for study in params["studies"]] + [("simulation", None), ("report", None)]
    for stage, study in stages:
        name = stage if study is None else f"{stage}@{study}"
        out["stages_s"][name] = timed(stage_command(stage, study))
        print(f"  stage {name:<28} {out['stages_s'][name]:7.1f} s", flush=True)
    # the stage runs above rewrote outputs identically; DVC should agree nothing changed
    out["dvc_status_after"] = subprocess.run(["dvc", "status"], cwd=ROOT, env=ENV, capture_output=True,
                                             text=True).stdout.strip()
    out["rows"] = [row("dvc repro -f, cold, whole pipeline (s; install not included)",
                       f"{out['dvc_repro_cold_s']:,.0f} s", out["dvc_repro_cold_s"], "<= 300"),
                   row("dvc repro with nothing changed (s)", f"{out['dvc_repro_noop_s']:.1f} s",
                       out["dvc_repro_noop_s"])]
    return out


MEASURE = {"tax": tax_part, "simulation": simulation_part, "duckdb": duckdb_part, "estimation": estimation_part,
           "cold_repro": cold_repro_part}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------
def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(PARTS)}")
    return parts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=parse_parts, default=list(PARTS), metavar="PART[,PART...]",
                        help=f"parts to measure (default: all of {','.join(PARTS)})")
    parser.add_argument("--cold-repro", action="store_true",
                        help="also a cold dvc repro -f, a no-op dvc repro and each stage (~40 min here)")
    parser.add_argument("--tax-stages", nargs="+", default=list(TAX_STAGES), choices=list(TAX_STAGES),
                        help="stages whose notebook tax is measured (default: all, in pipeline order)")
    parser.add_argument("--tax-repeats", type=int, default=3)
    parser.add_argument("--simulation-against", default=SIMULATION_REFERENCE, metavar="REF",
                        help=f"the git revision whose simulation code is timed side by side "
                             f"(default {SIMULATION_REFERENCE}: where issue 9 was filed)")
    parser.add_argument("--simulation-draws", type=int, default=5)
    parser.add_argument("--simulation-few", type=int, default=2)
    parser.add_argument("--simulation-rounds", type=int, default=2)
    parser.add_argument("--duckdb-rows", type=int, default=1_000_000,
                        help="rows of the generated survey (10000200: the issue's 2.6 million firms)")
    parser.add_argument("--duckdb-chunk-firms", type=int, default=50_000)
    parser.add_argument("--estimation-sizes", default="1e5,1e6,5e6")
    parser.add_argument("--markdown", nargs="?", const="", default=None, metavar="JSON",
                        help="also print README table rows; with a JSON file of an earlier run, only those")
    parser.add_argument("--json", type=Path, default=OUT, help=f"where to write the results (default {OUT})")
    args = parser.parse_args(argv)
    args.tax_stages = [s for s in TAX_STAGES if s in args.tax_stages]       # pipeline order
    return args


def machine() -> dict:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cores": os.cpu_count(), "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(), "commit": commit,
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "load_average_start": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown:
        results = json.loads(Path(args.markdown).read_text())
        print(markdown(results["rows"], results["machine"]))
        return 0
    if "estimation" in args.only:
        import bench_estimation
        if not bench_estimation.PYFIXEST_PYTHON.exists():
            print(f"the estimation part needs pyfixest in {bench_estimation.PYFIXEST_PYTHON}; create it with\n"
                  f"  {bench_estimation.PYFIXEST_SETUP}\nor skip the part (--only ...)", file=sys.stderr)
            return 2
    start = time.perf_counter()
    results = {"machine": machine(), "parts": {}, "rows": []}
    m = results["machine"]
    print(f"machine: {m['cores']} cores, load average {' '.join(f'{x:.2f}' for x in m['load_average_start'])} "
          f"(1, 5, 15 min) at start; Python {m['python']}; commit {m['commit']}; {m['date_utc']} UTC", flush=True)
    for part in args.only + (["cold_repro"] if args.cold_repro else []):
        part_start = time.perf_counter()
        results["parts"][part] = MEASURE[part](args)
        results["parts"][part]["elapsed_s"] = round(time.perf_counter() - part_start, 1)
        results["rows"] += results["parts"][part]["rows"]
        write(results, args.json)
    m["load_average_end"] = os.getloadavg()
    results["elapsed_s"] = round(time.perf_counter() - start, 1)
    write(results, args.json)
    print(f"\nload average {' '.join(f'{x:.2f}' for x in m['load_average_end'])} at end; "
          f"{results['elapsed_s'] / 60:.1f} min in all")
    print(table(results["rows"]))
    if args.markdown is not None:
        print()
        print(markdown(results["rows"], m))
    print(f"wrote {args.json}")
    return 0


def write(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
