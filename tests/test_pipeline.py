"""End-to-end: the DVC pipeline in a fresh copy of this checkout (slow: minutes).

The copy holds exactly what a `git clone` would (tracked and new, non-ignored files), with no
DVC outputs or cache, and runs with this test session's virtualenv.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from _pipeline_copy import copy_tree, env_for, lock_md5s, run, stages_run

pytestmark = pytest.mark.slow

# One `dvc repro` of the whole pipeline per session (tests/conftest.py `reproduced_clone`, shared with
# tests/test_browser.py): the tests that only read its outputs read it as it is; each test that reruns
# stages or edits files does so on its own copy (seconds), independent of the others and of order.


@pytest.fixture
def repo(reproduced_clone, tmp_path) -> Path:
    """A private copy of the reproduced clone (seconds), beside which `dvc push` makes its remote."""
    return copy_tree(reproduced_clone, tmp_path / "project")


def test_repro_is_complete_then_up_to_date(reproduced_clone):
    repo = reproduced_clone          # read only: a second `dvc repro` that changed it would fail here
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], repo)
    assert stages_run(run(["dvc", "repro"], repo)) == []
    for path in ("reports/index.html", "reports/metrics.json", "reports/results.csv",
                 "reports/notebooks/synthetic/04_estimate.html", "reports/notebooks/synthetic/04_estimate.code.html"):
        assert (repo / path).stat().st_size > 0, path


def test_effects_for_women_and_men_are_within_two_se_of_truth(reproduced_clone):
    repo = reproduced_clone          # read only
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
    params.write_text(original.replace("decimals: 1", "decimals: 2"))
    assert params.read_text() != original
    assert stages_run(run(["dvc", "repro"], repo)) == ["report"]


def test_failed_stage_leaves_no_outputs(repo):
    """A stage that fails removes every output it declares (none is half-written)."""
    config = repo / "studies/synthetic.yaml"
    original = config.read_text()
    config.write_text(original.replace("column: recall_period", "column: no_such_column"))
    assert (repo / "data/interim/synthetic/ingested.parquet").exists()          # the previous run's
    # the ingest stage by name: the simulation stage reads the same YAML, and DVC may run it first
    proc = subprocess.run(["dvc", "repro", "ingest@synthetic"], cwd=repo, capture_output=True, text=True,
                          env=env_for(repo))
    assert proc.returncode != 0
    assert "Running stage 'ingest@synthetic'" in proc.stdout + proc.stderr
    assert "no_such_column" in proc.stdout + proc.stderr
    assert not (repo / "data/interim/synthetic/ingested.parquet").exists()
    assert not (repo / "reports/notebooks/synthetic/01_ingest.html").exists()


def default_pipeline_notebooks(repo: Path) -> list[Path]:
    """The notebooks the default pipeline's stages run (06_synthesize belongs to evidence/dvc.yaml,
    whose real-study inputs a clone without ../shared/data does not have)."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    names = {dep for stage in stages.values() for dep in stage.get("do", stage).get("deps", [])
             if str(dep).startswith("notebooks/") and str(dep).endswith(".ipynb")}
    assert len(names) >= 5, names
    return [repo / name for name in sorted(names)]


def test_notebooks_run_top_to_bottom_as_an_analyst_opens_them(repo):
    """With their default parameters, from the notebooks/ folder (JupyterLab's working directory),
    without papermill; they read and rewrite the current outputs identically."""
    import nbformat
    from nbclient import NotebookClient

    before = lock_md5s(repo)
    import os
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(repo)  # the kernel imports the copy's package
    try:
        for path in default_pipeline_notebooks(repo):
            nb = nbformat.read(path, as_version=4)
            NotebookClient(nb, kernel_name="microenterprise", timeout=600,
                           resources={"metadata": {"path": str(repo / "notebooks")}}).execute()
            errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
            assert not errors, (path.name, errors)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], repo)
    assert lock_md5s(repo) == before


def _file_md5s(repo: Path, roots: list[str]) -> dict[str, str]:
    import hashlib
    out = {}
    for root in roots:
        for path in sorted((repo / root).rglob("*")):
            if path.is_file() and path.name != ".gitignore":
                out[path.relative_to(repo).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def test_push_delete_pull_gives_identical_reports(repo):
    """The default remote (a folder beside the repository) round-trips every output byte for byte."""
    before = _file_md5s(repo, ["reports", "data"])
    assert any(p.startswith("reports/") and p.endswith(".html") for p in before)
    run(["dvc", "push", "dvc.yaml"], repo)
    remote = (repo / ".." / "microenterprise-dvc-remote").resolve()
    assert remote.is_dir() and any(remote.rglob("*"))
    import shutil
    shutil.rmtree(repo / ".dvc" / "cache")
    for path in before:
        if path not in ("reports/metrics.json", "reports/evidence/metrics.json"):  # git-tracked metrics (cache: false)
            (repo / path).unlink()
    assert "reports/index.html" not in _file_md5s(repo, ["reports"])
    run(["dvc", "pull", "dvc.yaml"], repo)
    assert _file_md5s(repo, ["reports", "data"]) == before
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], repo)


def test_cleaning_parameter_experiment_reruns_clean_and_what_follows_and_metrics_diff_shows_it(repo):
    """`dvc exp run -S` writes the parameter into params.yaml and reproduces, as `dvc repro` after an
    edit does: one run checks both which stages a cleaning parameter reruns, in order, and what the
    experiment reports (a separate edit-then-repro test reran the same five stages a second time)."""
    import json
    from _pipeline_copy import commit_all
    commit_all(repo, "results of the default run")
    baseline = json.loads((repo / "reports/metrics.json").read_text())["synthetic"]["capital_men"]["estimate"]
    out = run(["dvc", "exp", "run", "-S", "clean.winsor_upper_pct=90"], repo)
    ran = stages_run(out)
    assert sorted(ran) == ["clean@synthetic", "construct@synthetic", "estimate@synthetic", "report", "simulation"]
    # dependency order (the simulation is independent of them, so DVC may run it at any point before the report)
    assert ran.index("clean@synthetic") < ran.index("construct@synthetic") < ran.index("estimate@synthetic")
    assert ran[-1] == "report"
    assert "winsor_upper_pct: 90" in (repo / "params.yaml").read_text()
    moved = json.loads((repo / "reports/metrics.json").read_text())["synthetic"]["capital_men"]["estimate"]
    assert moved != baseline
    show = json.dumps(json.loads(run(["dvc", "exp", "show", "--json"], repo)))
    assert '"winsor_upper_pct": 90' in show and "capital_men" in show
    # stdout only: DVC warns on stderr that the evidence pipeline's metrics file is absent here
    diff = json.loads(subprocess.run(["dvc", "metrics", "diff", "--json"], cwd=repo, env=env_for(repo),
                                     capture_output=True, text=True, check=True).stdout)
    change = diff["reports/metrics.json"]["synthetic.capital_men.estimate"]
    assert change["old"] == pytest.approx(baseline) and change["new"] == pytest.approx(moved)

