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
}


def root() -> Path:
    return REPO_ROOT


def raw_synthetic_dir() -> Path:
    return REPO_ROOT / "data" / "raw" / "synthetic"


def interim_dir(study: str) -> Path:
    return REPO_ROOT / "data" / "interim" / study


def processed_dir(study: str) -> Path:
    return REPO_ROOT / "data" / "processed" / study


def reports_dir() -> Path:
    return REPO_ROOT / "reports"


def study_config_path(study: str) -> Path:
    return REPO_ROOT / "studies" / f"{study}.yaml"


def notebook_source(stage: str) -> Path:
    return REPO_ROOT / "notebooks" / f"{STAGE_NOTEBOOKS[stage]}.ipynb"


def executed_notebook_dir(stage: str, study: str | None) -> Path:
    """reports/notebooks/<study>/ for per-study stages, reports/notebooks/ otherwise."""
    base = REPO_ROOT / "reports" / "notebooks"
    return base / study if study else base
