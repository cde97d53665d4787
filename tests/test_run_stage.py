import errno
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from pipeline import paths, run_stage
from pipeline.io import write_text


def executed_like_papermill() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={
        "papermill": {"start_time": "2026-01-01T00:00:00", "end_time": "2026-01-01T00:00:01",
                      "duration": 1.0, "status": "completed", "exception": False},
        "execution": {"iopub.status.busy": "2026-01-01T00:00:00"}, "tags": ["parameters"]})]
    nb.metadata["papermill"] = {"start_time": "t0", "end_time": "t1", "duration": 2.0, "input_path": "/a",
                                "output_path": "/b", "environment_variables": {}, "parameters": {"study": "s"},
                                "version": "2.7.0"}
    return nb


def test_scrub_removes_run_dependent_metadata_and_keeps_parameters():
    nb = run_stage.scrub_notebook(executed_like_papermill())
    assert nb.metadata["papermill"] == {"parameters": {"study": "s"}, "version": "2.7.0"}
    cell = nb.cells[0].metadata
    assert "execution" not in cell
    assert cell["papermill"] == {"status": "completed", "exception": False}
    assert cell["tags"] == ["parameters"]


def test_html_is_offline_and_hides_code_for_reviewers():
    nb = run_stage.scrub_notebook(executed_like_papermill())
    nb.cells.append(nbformat.v4.new_markdown_cell("# A heading"))
    reviewer = run_stage.export_html(nb, hide_code=True)
    analyst = run_stage.export_html(nb, hide_code=False)
    for html in (reviewer, analyst):
        assert "<script src" not in html and "cdnjs" not in html and "mathjax" not in html.lower()
    assert "x = 1" not in reviewer.replace("&#34;", '"')
    assert "x</span> <span" in analyst or "x = 1" in analyst
    assert run_stage.export_html(nb, hide_code=True) == reviewer  # deterministic


def fresh_export(nb, hide_code: bool) -> str:
    """The export as the runner did it before the exporter was reused: a new exporter per rendering."""
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_template_paths=[str(Path(run_stage.__file__).parent / "templates")])
    exporter.exclude_input = exporter.exclude_input_prompt = exporter.exclude_output_prompt = hide_code
    exporter.mathjax_url = exporter.require_js_url = exporter.widget_renderer_url = ""
    return exporter.from_notebook_node(nb)[0]


def test_the_reused_exporter_gives_the_bytes_of_a_fresh_one_in_any_order():
    nb = run_stage.scrub_notebook(executed_like_papermill())
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="printed 42\n"),
                           nbformat.v4.new_output("execute_result", data={"text/plain": "1234"}, execution_count=1)]
    nb.cells[0].execution_count = 1
    expected = {hide: fresh_export(nb, hide) for hide in (True, False)}
    assert expected[True] != expected[False]
    run_stage.prepare_exporter_in_background().join()   # as the runner does: another notebook first
    for hide in (False, True, True, False):       # the exclusions of one call never leak into the next
        assert run_stage.export_html(nb, hide_code=hide) == expected[hide]
    assert "printed 42" in expected[True] and "1234" in expected[True] and "x = 1" not in expected[True]


def test_the_runner_process_skips_the_rfc3987_parser_but_validates_notebooks(tmp_path):
    # what `python -m pipeline.run_stage` imports; the check must still reject an invalid notebook
    code = ("import runpy, sys; sys.argv = ['run_stage', '--help']\n"
            "try:\n    runpy.run_module('pipeline.run_stage', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "import nbformat\nnb = nbformat.v4.new_notebook(); nbformat.validate(nb)\n"
            "nb.cells = [{'cell_type': 'code'}]\n"
            "try:\n    nbformat.validate(nb)\nexcept nbformat.ValidationError:\n    print('invalid rejected')\n"
            "print('rfc3987_syntax loaded:', sys.modules.get('rfc3987_syntax') is not None)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=run_stage.REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "invalid rejected" in done.stdout
    assert "rfc3987_syntax loaded: False" in done.stdout


def test_stage_outs_fill_in_the_study():
    outs = run_stage.stage_outs("clean", "acme")
    names = {p.relative_to(run_stage.REPO_ROOT).as_posix() for p in outs}
    assert "data/interim/acme/clean.parquet" in names
    assert "reports/notebooks/acme/02_clean.html" in names
    assert all("${" not in n for n in names)


def test_params_are_checked_once_before_a_stage_runs(tmp_path):
    import yaml
    from pipeline.io import load_params, read_yaml
    from pipeline.params import ParamsError

    assert load_params() == read_yaml(run_stage.REPO_ROOT / "params.yaml")   # checked, not changed
    broken = load_params()
    broken["clean"]["winsor_uper_pct"] = 95
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ParamsError, match=r"params.yaml: clean: unknown key 'winsor_uper_pct'.*did you mean 'winsor_upper_pct'"):
        run_stage.run("clean", "synthetic", params_path=tmp_path / "params.yaml")   # before papermill starts


# --- all-or-nothing outputs (issue 11, class 4) ------------------------------------------------
# A fake papermill stands in for the kernel: it writes the stage's data output the way a notebook
# does (io.atomic_path) and the executed notebook; the stage's outputs live in a repository made in
# tmp_path (run_stage.REPO_ROOT patched), so nothing in this checkout is touched.

STAGE = "synthetic"
NAME = paths.STAGE_NOTEBOOKS[STAGE]


@pytest.fixture
def repo(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    data, notebooks = root / "data" / "raw" / "x", root / "reports" / "notebooks"
    outs = [data, notebooks / f"{NAME}.ipynb", notebooks / f"{NAME}.html", notebooks / f"{NAME}.code.html"]
    monkeypatch.setattr(run_stage, "REPO_ROOT", root)
    monkeypatch.setattr(run_stage, "stage_outs", lambda stage, study, pipeline="main": outs)
    monkeypatch.setattr(paths, "executed_notebook_dir", lambda stage, study, pipeline="main": notebooks)
    monkeypatch.setenv("PYTHONPATH", "")
    return root


def previous_run(root: Path) -> dict[str, bytes]:
    """Outputs of an earlier successful run, returned as {relative path: bytes}."""
    write_text(root / "data/raw/x/x.parquet", "old data")
    write_text(root / "data/raw/x/sub/y.csv", "old y")
    for suffix in (".ipynb", ".html", ".code.html"):
        write_text(root / "reports/notebooks" / f"{NAME}{suffix}", f"old {suffix}")
    return snapshot(root)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and "logs" not in p.parts}


def fake_papermill(monkeypatch, fail: BaseException | None = None) -> None:
    import papermill

    def execute_notebook(source, output, **kwargs):
        root = run_stage.REPO_ROOT
        write_text(root / "data/raw/x/x.parquet", "new data")    # the notebook's data output
        write_text(root / "data/raw/x/extra.csv", "new file")
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_code_cell("x = 1")]
        nbformat.write(nb, output)
        if fail is not None:
            raise fail

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)


def test_a_successful_run_replaces_the_outputs_and_drops_the_backup(repo, monkeypatch):
    previous_run(repo)
    fake_papermill(monkeypatch)
    run_stage.run(STAGE)
    after = snapshot(repo)
    assert after["data/raw/x/x.parquet"] == b"new data" and after["data/raw/x/extra.csv"] == b"new file"
    assert "data/raw/x/sub/y.csv" not in after                     # the old folder was replaced, not merged
    assert after[f"reports/notebooks/{NAME}.code.html"].startswith(b"<!DOCTYPE html>")
    assert not (repo / run_stage.BACKUP_DIR).exists()


def test_a_full_disk_after_the_notebook_ran_restores_the_previous_outputs(repo, monkeypatch, capsys):
    before = previous_run(repo)
    fake_papermill(monkeypatch)

    def disk_full(nb, hide_code):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_stage, "export_html", disk_full)
    with pytest.raises(OSError) as raised:
        run_stage.run(STAGE)
    assert raised.value.errno == errno.ENOSPC
    assert snapshot(repo) == before                                # byte for byte, nothing new left
    assert (repo / "logs/failed" / f"{STAGE}.ipynb").exists()
    assert not (repo / run_stage.BACKUP_DIR).exists()


def test_a_failure_with_no_previous_run_leaves_no_outputs(repo, monkeypatch):
    fake_papermill(monkeypatch, fail=RuntimeError("cell failed"))
    with pytest.raises(RuntimeError, match="cell failed"):
        run_stage.run(STAGE)
    assert snapshot(repo) == {}


def test_stale_temp_files_are_removed_by_the_next_run(repo, monkeypatch):
    previous_run(repo)
    stale = [repo / "data/raw/x/.x.parquet.abc.tmp", repo / "data/raw/x/sub/.y.csv.k2j.tmp",
             repo / "reports/notebooks" / f".{NAME}.html.zz9.tmp"]
    for path in stale:
        path.write_text("half written")
    keep = repo / "reports/notebooks/.other.html.abc.tmp"       # not next to this stage's outputs
    keep.write_text("someone else's")
    fake_papermill(monkeypatch)
    run_stage.run(STAGE)
    assert not any(p.exists() for p in stale)
    assert keep.exists()


def test_a_failing_cleanup_still_surfaces_the_original_error(repo, monkeypatch, capsys):
    before = previous_run(repo)
    fake_papermill(monkeypatch, fail=RuntimeError("cell failed: the cause"))
    real_remove = run_stage._remove

    def read_only(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(run_stage, "_remove", read_only)
    with pytest.raises(RuntimeError, match="the cause") as raised:
        run_stage.run(STAGE)
    notes = "\n".join(getattr(raised.value, "__notes__", []))
    assert "could not restore" in notes and "data/raw/x" in notes and "Permission denied" in notes
    assert "could not restore" in capsys.readouterr().err
    assert (repo / run_stage.BACKUP_DIR).exists()                   # kept for the next run

    # The next run (here one that fails again, with a working cleanup) starts by restoring it.
    monkeypatch.setattr(run_stage, "_remove", real_remove)
    with pytest.raises(RuntimeError):
        run_stage.run(STAGE)
    assert snapshot(repo) == before
    assert not (repo / run_stage.BACKUP_DIR).exists()


def test_a_backup_left_by_a_killed_runner_is_restored_at_the_next_run(repo, monkeypatch):
    before = previous_run(repo)
    outs = run_stage.stage_outs(STAGE, None)
    backup = run_stage.backup_dir(STAGE, None)
    run_stage.stash_outputs(outs, backup)
    write_text(repo / "data/raw/x/x.parquet", "half of a killed run")   # then SIGKILL
    fake_papermill(monkeypatch, fail=RuntimeError("fails again"))
    with pytest.raises(RuntimeError):
        run_stage.run(STAGE)
    assert snapshot(repo) == before


def test_a_runner_killed_while_stashing_keeps_the_outputs_it_had_not_moved(repo):
    before = previous_run(repo)
    outs = run_stage.stage_outs(STAGE, None)
    backup = run_stage.backup_dir(STAGE, None)
    run_stage.stash_outputs(outs[:1], backup)           # killed after the first move
    (backup / run_stage.STASHED).unlink()
    assert run_stage.restore_backup(outs, backup) == []
    assert snapshot(repo) == before


def test_sigterm_during_the_run_restores_the_previous_outputs(repo, monkeypatch):
    import papermill

    before = previous_run(repo)

    def killed_mid_run(source, output, **kwargs):
        write_text(run_stage.REPO_ROOT / "data/raw/x/x.parquet", "half of an interrupted run")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(2.5)                                 # the runner does not wait for the notebook

    monkeypatch.setattr(papermill, "execute_notebook", killed_mid_run)
    with pytest.raises(run_stage.StageInterrupted) as raised:
        run_stage.run(STAGE)
    assert raised.value.signum == signal.SIGTERM
    assert snapshot(repo) == before
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL        # handlers put back


def test_a_signal_while_outputs_move_is_held_until_the_move_is_done():
    done = []
    with pytest.raises(run_stage.StageInterrupted):
        with run_stage.signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("moved")
    assert done == ["moved"]


def test_a_restore_cut_short_does_not_remove_what_it_already_put_back(repo):
    before = previous_run(repo)
    outs = run_stage.stage_outs(STAGE, None)
    backup = run_stage.backup_dir(STAGE, None)
    run_stage.stash_outputs(outs, backup)
    write_text(repo / "data/raw/x/x.parquet", "new data")
    html = repo / "reports/notebooks" / f"{NAME}.html"
    os.replace(run_stage._backup_of(html, backup), html)    # put back before the restore was cut short
    assert run_stage.restore_backup(outs, backup) == []
    assert snapshot(repo) == before


# --- a real runner, killed with SIGTERM while its kernel runs -----------------------------------

def md5_tree(repo: Path, outs: list[Path]) -> dict[str, str]:
    files = [f for out in outs for f in ([out] if out.is_file() else sorted(out.rglob("*"))) if f.is_file()]
    return {f.relative_to(repo).as_posix(): hashlib.md5(f.read_bytes()).hexdigest() for f in files}


def kernels_of(pid: int) -> list:
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in children if "ipykernel" in " ".join(p.cmdline())]


SYNTHETIC_OUTS = ("data/raw/synthetic", "reports/notebooks/00_synthetic.ipynb", "reports/notebooks/00_synthetic.html",
                  "reports/notebooks/00_synthetic.code.html")


HOLD, HELD = "hold-the-notebook", "the-notebook-is-held"


def add_hold_cell(notebook: Path, hold: Path, held: Path) -> None:
    """Insert, after the parameters, a cell that waits while ``hold`` exists (and says so in
    ``held``): a signal sent while it waits reaches a notebook that is certainly mid-run, on a
    machine of any speed. Without ``hold`` the cell is a no-op, so ordinary runs are unchanged."""
    nb = nbformat.read(notebook, as_version=4)
    params_at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(params_at + 1, nbformat.v4.new_code_cell(
        "import pathlib, time\n"
        f"if pathlib.Path({str(hold)!r}).exists():\n"
        f"    pathlib.Path({str(held)!r}).touch()\n"
        f"while pathlib.Path({str(hold)!r}).exists():\n"
        "    time.sleep(0.05)"))
    nbformat.write(nb, notebook)


@contextlib.contextmanager
def notebook_held(repo: Path):
    """While in the block, the copy's synthetic notebook waits at its hold cell."""
    hold, held = repo.parent / HOLD, repo.parent / HELD
    held.unlink(missing_ok=True)
    hold.touch()
    try:
        yield held
    finally:
        hold.unlink(missing_ok=True)
        held.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh copy of this checkout where `dvc repro synthetic` ran once: the previous run."""
    sys.path.insert(0, str(Path(__file__).parent))
    from _pipeline_copy import fresh_copy, run

    repo = fresh_copy(tmp_path_factory.mktemp("clone") / "project")
    add_hold_cell(repo / "notebooks" / "00_synthetic.ipynb", repo.parent / HOLD, repo.parent / HELD)
    run(["dvc", "repro", "synthetic"], repo)
    before = md5_tree(repo, [repo / p for p in SYNTHETIC_OUTS])
    assert len(before) >= 4
    return repo, before


def start_until_kernel_runs(repo: Path, held: Path):
    """Start the synthetic stage and wait until its kernel waits at the hold cell, mid-notebook
    (the runner has by then launched the kernel and moved the previous outputs aside); return the
    runner and its kernel processes. Call inside ``notebook_held``."""
    from _pipeline_copy import env_for

    runner = subprocess.Popen([sys.executable, "-m", "pipeline.run_stage", "synthetic"], cwd=repo,
                              env=env_for(repo), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stashed = repo / run_stage.BACKUP_DIR / "synthetic" / run_stage.STASHED
    deadline = time.monotonic() + 120
    while not held.exists() and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    kernels = kernels_of(runner.pid)
    assert held.exists() and kernels and stashed.exists(), "the notebook never reached its hold cell"
    return runner, kernels


def start_and_signal(repo: Path, held: Path, sig: int):
    """Start the synthetic stage, wait until its kernel is mid-notebook, send ``sig`` to the
    runner; return the runner and the pids of its kernel and the kernel's children."""
    runner, kernels = start_until_kernel_runs(repo, held)
    group = [k.pid for k in kernels] + [c.pid for k in kernels for c in k.children(recursive=True)]
    runner.send_signal(sig)
    return runner, group


def still_running(pids: list[int]) -> list[int]:
    import psutil

    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return [pid for pid in pids if alive(pid)]


@pytest.mark.slow
def test_sigterm_stops_the_kernel_and_restores_the_previous_outputs(project):
    from _pipeline_copy import lock_md5s, run

    repo, before = project
    with notebook_held(repo) as held:
        runner, group = start_and_signal(repo, held, signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM, err
    assert still_running(group) == [], "kernel processes survived the runner"
    assert md5_tree(repo, [repo / p for p in SYNTHETIC_OUTS]) == before
    assert not (repo / ".stage-backup").exists()
    assert "up to date" in run(["dvc", "status", "synthetic"], repo)
    lock = lock_md5s(repo)
    assert all(p in lock for p in ("data/raw/synthetic", "reports/notebooks/00_synthetic.html"))


@pytest.mark.slow
def test_after_sigkill_the_backup_brings_back_the_previous_outputs(project):
    from _pipeline_copy import run

    repo, before = project
    with notebook_held(repo) as held:                             # held, so the kernel can only exit by noticing
        runner, group = start_and_signal(repo, held, signal.SIGKILL)
        runner.communicate(timeout=60)
        deadline = time.monotonic() + 10                          # the orphaned kernel notices its parent died
        while still_running(group) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_running(group) == []
    assert (repo / ".stage-backup" / "synthetic").is_dir()        # left behind by the killed runner
    run([sys.executable, "-c", "from pipeline import run_stage as r; "
         "assert r.restore_backup(r.stage_outs('synthetic', None), r.backup_dir('synthetic', None)) == []"], repo)
    assert md5_tree(repo, [repo / p for p in SYNTHETIC_OUTS]) == before
    assert not (repo / ".stage-backup").exists()
    assert "up to date" in run(["dvc", "status", "synthetic"], repo)


@pytest.mark.slow
def test_a_kernel_killed_mid_stage_fails_the_stage_and_restores_the_previous_outputs(project):
    """Fault inside the kernel (issue 11): the kernel process dies (SIGKILL, as the OOM killer
    would) while the notebook runs; the runner must fail, and the declared outputs must be exactly
    those of the previous run, with nothing half-written and DVC seeing the stage up to date."""
    import psutil

    from _pipeline_copy import run

    repo, before = project
    with notebook_held(repo) as held:
        runner, kernels = start_until_kernel_runs(repo, held)
        for kernel in kernels:
            with contextlib.suppress(psutil.NoSuchProcess):
                kernel.kill()
        _, err = runner.communicate(timeout=120)
    assert runner.returncode != 0, "the stage reported success although its kernel died"
    assert md5_tree(repo, [repo / p for p in SYNTHETIC_OUTS]) == before, err[-2000:]
    assert not (repo / ".stage-backup").exists()
    assert not list(repo.rglob("*.tmp"))
    assert "up to date" in run(["dvc", "status", "synthetic"], repo)


def _file_size_limit(limit_bytes: int):
    """preexec_fn: a real, kernel-enforced write limit for the runner and every process it starts
    (RLIMIT_FSIZE; SIGXFSZ ignored so that a write past it fails with EFBIG, as a full disk fails
    a write with ENOSPC)."""
    def apply():
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


@pytest.mark.slow
def test_writes_refused_by_the_operating_system_leave_the_previous_outputs(project):
    """A real write failure, not a monkeypatched one (issue 11): the stage's processes may write
    no file larger than 64 KB, so the kernel's survey.dta and the runner's notebook fail mid-write.
    The stage must fail and the declared outputs be exactly those of the previous run."""
    from _pipeline_copy import env_for, run

    repo, before = project
    proc = subprocess.run([sys.executable, "-m", "pipeline.run_stage", "synthetic"], cwd=repo, env=env_for(repo),
                          capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(64 * 1024))
    assert proc.returncode != 0, "the stage reported success although its writes were refused"
    assert "File too large" in proc.stderr or "EFBIG" in proc.stderr or "Errno 27" in proc.stderr, proc.stderr[-3000:]
    assert md5_tree(repo, [repo / p for p in SYNTHETIC_OUTS]) == before, proc.stderr[-2000:]
    assert not (repo / ".stage-backup").exists()
    assert not list(repo.rglob("*.tmp"))
    assert "up to date" in run(["dvc", "status", "synthetic"], repo)
