"""Where each stage reads and writes, in one place (cookiecutter-data-science layout).

data/raw/        immutable inputs (the synthetic survey is generated here; real studies are read in place)
data/interim/    typed tables after ingest and clean, per study
data/processed/  analysis tables and estimates, per study
reports/         executed notebooks, their HTML, index.html, metrics and tidy tables
"""
from __future__ import annotations

from pathlib import Path

from pipeline.io import REPO_ROOT

STAGE_NOTEBOOKS = {
    "synthetic": "00_synthetic",
    "ingest": "01_ingest",
    "clean": "02_clean",
    "construct": "03_construct",
    "estimate": "04_estimate",
    "report": "05_report",
    "synthesize": "06_synthesize",
    "simulation": "07_simulation",
}

# Two DVC pipelines share the stages: the default run on the embedded synthetic survey
# (`dvc repro`, studies from `studies:`) and the real evidence (`dvc repro evidence/dvc.yaml`,
# studies from `evidence.studies:`), whose pipeline-level outputs go under reports/evidence/.
PIPELINE_FILES = {"main": "dvc.yaml", "evidence": "evidence/dvc.yaml"}


def root() -> Path:
    return REPO_ROOT


def raw_synthetic_dir() -> Path:
    return REPO_ROOT / "data" / "raw" / "synthetic"


def interim_dir(study: str) -> Path:
    return REPO_ROOT / "data" / "interim" / study


def processed_dir(study: str) -> Path:
    return REPO_ROOT / "data" / "processed" / study


def reports_dir(pipeline: str = "main") -> Path:
    """reports/ for the default run, reports/evidence/ for the evidence pipeline."""
    return REPO_ROOT / "reports" if pipeline == "main" else REPO_ROOT / "reports" / pipeline


def simulation_dir() -> Path:
    return REPO_ROOT / "reports" / "simulation"


def synthesis_dir() -> Path:
    return REPO_ROOT / "data" / "synthesis"  # beside processed/: it reads every study folder there


def pipeline_file(pipeline: str) -> Path:
    return REPO_ROOT / PIPELINE_FILES[pipeline]


def study_config_path(study: str) -> Path:
    return REPO_ROOT / "studies" / f"{study}.yaml"


def notebook_source(stage: str) -> Path:
    return REPO_ROOT / "notebooks" / f"{STAGE_NOTEBOOKS[stage]}.ipynb"


def executed_notebook_dir(stage: str, study: str | None, pipeline: str = "main") -> Path:
    """reports/notebooks/<study>/ for per-study stages, <reports_dir(pipeline)>/notebooks/ otherwise."""
    if study:
        return REPO_ROOT / "reports" / "notebooks" / study
    return reports_dir(pipeline) / "notebooks"
