"""End-to-end: the DVC pipeline in a fresh copy of this checkout (slow: about a minute).

The copy holds exactly what a `git clone` would (tracked and new, non-ignored files), with no
DVC outputs or cache, and runs with this test session's virtualenv.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.io import REPO_ROOT

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(cwd),
           "DVC_NO_ANALYTICS": "1", "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def stages_run(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def lock_md5s(repo: Path) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("clone") / "project"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)  # as if never run
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    out = run(["dvc", "repro"], dest)
    assert "report" in stages_run(out)
    return dest


def test_repro_is_complete_then_up_to_date(repo):
    assert "up to date" in run(["dvc", "status"], repo)
    assert stages_run(run(["dvc", "repro"], repo)) == []
    for path in ("reports/index.html", "reports/metrics.json", "reports/results.csv",
                 "reports/notebooks/synthetic/04_estimate.html", "reports/notebooks/synthetic/04_estimate.code.html"):
        assert (repo / path).stat().st_size > 0, path


def test_effects_for_women_and_men_are_within_two_se_of_truth(repo):
    metrics = yaml.safe_load((repo / "reports/metrics.json").read_text())["synthetic"]
    for effect in ("skills", "capital", "skills_x_capital"):
        for sex in ("women", "men"):
            m = metrics[f"{effect}_{sex}"]
            assert abs(m["estimate"] - m["truth"]) <= 2 * m["se"], (effect, sex, m)
    html = (repo / "reports/index.html").read_text()
    assert "Truth" in html and "Within 2 SE" in html


def test_forced_rerun_gives_identical_outputs(repo):
    before = lock_md5s(repo)
    assert len(before) >= 30
    run(["dvc", "repro", "-f"], repo)
    assert lock_md5s(repo) == before


def test_report_parameter_reruns_only_the_report(repo):
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("decimals: 1", "decimals: 2"))
        assert stages_run(run(["dvc", "repro"], repo)) == ["report"]
    finally:
        params.write_text(original)
        run(["dvc", "repro"], repo)


def test_cleaning_parameter_reruns_clean_and_what_follows(repo):
    params = repo / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("winsor_upper_pct: 99 ", "winsor_upper_pct: 98 "))
        assert params.read_text() != original
        assert stages_run(run(["dvc", "repro"], repo)) == [
            "clean@synthetic", "construct@synthetic", "estimate@synthetic", "report"]
    finally:
        params.write_text(original)
        run(["dvc", "repro"], repo)


def test_failed_stage_leaves_no_outputs(repo):
    """A stage that fails removes every output it declares (none is half-written)."""
    config = repo / "studies/synthetic.yaml"
    original = config.read_text()
    try:
        config.write_text(original.replace("column: recall_period", "column: no_such_column"))
        proc = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True,
                              env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(repo)})
        assert proc.returncode != 0
        assert "no_such_column" in proc.stdout + proc.stderr
        assert not (repo / "data/interim/synthetic/ingested.parquet").exists()
        assert not (repo / "reports/notebooks/synthetic/01_ingest.html").exists()
    finally:
        config.write_text(original)
        run(["dvc", "repro"], repo)
