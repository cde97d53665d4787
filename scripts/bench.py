"""Benchmark the pipeline: wall time of a cold `dvc repro`, a no-op `dvc repro`, each stage, and
the notebook tax (a stage against its function run as a plain process).

    make bench        # or: .venv/bin/python scripts/bench.py
    .venv/bin/python scripts/bench.py --tax-only --tax-stages clean   # only the notebook tax, one stage

Cold = `dvc repro -f` (every stage reruns; DVC's run cache is bypassed by -f). Each stage is
then timed alone via `python -m pipeline.run_stage` (papermill kernel start included). Prints a
table and writes .bench/pipeline.json. Numbers are machine-dependent; nothing here asserts.

Notebook tax: for each stage of TAX_FUNCTIONS on the synthetic study, the stage's function as a
plain `python -c` process and `python -m pipeline.run_stage` are run alternately, REPEATS times
each, in the same run (the machine is shared: alternation spreads its noise over both); the
ratio is stage median / function median (issue 9 asks for at most 1.3). Both write the same files,
so the stage's outputs end as they were. Needs the stage's upstream outputs (run the pipeline once).
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
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
       "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def stage_commands() -> list[tuple[str, list[str]]]:
    """Stages in pipeline order, expanded per study."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = [("synthetic", [sys.executable, "-m", "pipeline.run_stage", "synthetic"])]
    for stage in ("ingest", "clean", "construct", "estimate"):
        for study in params["studies"]:
            out.append((f"{stage}@{study}", [sys.executable, "-m", "pipeline.run_stage", stage, "--study", study]))
    out.append(("simulation", [sys.executable, "-m", "pipeline.run_stage", "simulation"]))
    out.append(("report", [sys.executable, "-m", "pipeline.run_stage", "report"]))
    return out


# What each stage's notebook calls, as a plain process: stage -> Python code (study "synthetic").
TAX_FUNCTIONS = {
    "clean": "from pipeline import clean, stage_context; clean.run(stage_context.build('clean', 'synthetic'))",
    "estimate": "from pipeline import stage_context; from pipeline.estimation import stage; "
                "stage.run(stage_context.build('estimate', 'synthetic'))",
}
REPEATS = 3


def notebook_tax(stage: str, repeats: int = REPEATS) -> dict:
    """Median wall time of the stage's function as a plain process and of the stage, run alternately."""
    function_cmd = [sys.executable, "-c", TAX_FUNCTIONS[stage]]
    stage_cmd = [sys.executable, "-m", "pipeline.run_stage", stage, "--study", "synthetic"]
    function_s, stage_s = [], []
    for _ in range(repeats):
        function_s.append(timed(function_cmd))
        stage_s.append(timed(stage_cmd))
    function_median, stage_median = statistics.median(function_s), statistics.median(stage_s)
    return {"function_s": function_s, "stage_s": stage_s, "function_median_s": function_median,
            "stage_median_s": stage_median, "ratio": stage_median / function_median}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tax-only", action="store_true", help="only the notebook tax (no dvc repro, no stage table)")
    parser.add_argument("--tax-stages", nargs="+", default=list(TAX_FUNCTIONS), choices=list(TAX_FUNCTIONS),
                        help="stages whose notebook tax is measured (default: all)")
    args = parser.parse_args(argv)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()}}
    print(f"machine: {results['machine']}")
    if not args.tax_only:
        pipeline_timings(results)
    results["notebook_tax"] = {}
    print(f"notebook tax (median of {REPEATS}, alternating; issue 9 target: ratio <= 1.3):")
    for stage in args.tax_stages:
        tax = results["notebook_tax"][stage] = notebook_tax(stage)
        print(f"  {stage + '@synthetic':<20} function {tax['function_median_s']:6.1f} s   "
              f"stage {tax['stage_median_s']:6.1f} s   ratio {tax['ratio']:5.2f}")
    out = ROOT / ".bench" / ("notebook_tax.json" if args.tax_only else "pipeline.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


def pipeline_timings(results: dict) -> None:
    """Cold and no-op dvc repro, then each stage alone; fills ``results`` and prints a table."""
    results["dvc_repro_cold_s"] = timed(["dvc", "repro", "-f"])
    print(f"dvc repro -f (cold, all stages):   {results['dvc_repro_cold_s']:7.1f} s")
    results["dvc_repro_noop_s"] = timed(["dvc", "repro"])
    print(f"dvc repro (nothing changed):       {results['dvc_repro_noop_s']:7.1f} s")
    results["stages_s"] = {}
    for name, cmd in stage_commands():
        results["stages_s"][name] = timed(cmd)
        print(f"  stage {name:<28} {results['stages_s'][name]:7.1f} s")
    # the stage runs above rewrote outputs identically; confirm DVC agrees nothing changed
    status = subprocess.run(["dvc", "status"], cwd=ROOT, env=ENV, capture_output=True, text=True).stdout.strip()
    results["dvc_status_after"] = status
    print(f"dvc status after timing stages: {status}")


if __name__ == "__main__":
    raise SystemExit(main())
