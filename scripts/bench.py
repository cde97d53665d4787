"""Benchmark the pipeline: wall time of a cold `dvc repro`, a no-op `dvc repro`, and each stage.

    make bench        # or: .venv/bin/python scripts/bench.py

Cold = `dvc repro -f` (every stage reruns; DVC's run cache is bypassed by -f). Each stage is
then timed alone via `python -m pipeline.run_stage` (papermill kernel start included). Prints a
table and writes .bench/pipeline.json. Numbers are machine-dependent; nothing here asserts.
"""
from __future__ import annotations

import json
import os
import platform
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


def main() -> int:
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()}}
    print(f"machine: {results['machine']}")
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
    out = ROOT / ".bench" / "pipeline.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
