"""Run one pipeline stage: execute its notebook with papermill, then publish it.

    python -m pipeline.run_stage clean --study synthetic

0. The notebook's kernel is launched first thing, before the runner's own imports, and preloads
   what the notebook imports meanwhile (``pipeline/stage_kernel.py``; issue 9's notebook tax).
1. ``params.yaml`` is read and checked once against its typed model (``io.load_params``,
   ``pipeline.params``: unknown keys and wrong types stop the run, naming the key); the stage's
   parameters (its group) are injected into the notebook's ``parameters`` cell; the notebook runs
   with the repository root as working directory.
2. Run-dependent metadata (papermill and nbclient timings) is scrubbed (``pipeline/notebook_html.py``), so two runs of the
   same inputs give byte-identical notebooks and HTML.
3. The executed notebook is written under ``reports/notebooks/`` with two HTML renderings:
   ``NAME.html`` (code hidden, for reviewers) and ``NAME.code.html`` (with code, for analysts).
4. All or nothing: the outputs the stage declares in ``dvc.yaml`` are moved into
   ``.stage-backup/<stage>[-study]/`` before it runs and dropped after the notebook and HTML are
   written; after any failure (an error, a full disk, SIGTERM/SIGINT, on which the kernel and its
   process group are stopped first) what the run wrote is removed and the backup moved back, and a
   backup left by a killed runner is restored when the stage next runs. Stale ``.*.tmp`` files of
   ``io.atomic_path`` are removed at the start. A cleanup error is printed and noted on the original
   exception, never raised in its place; the failed notebook is kept in ``logs/failed/`` to debug.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

if __name__ == "__main__":
    # The stage runner's own process only: nbformat imports jsonschema, whose optional "iri" format
    # checker (JSON Schema draft 7 and later) builds an RFC 3987 parser at import, about 1 s of every
    # stage. nbformat validates notebooks against draft 4, which has no "iri" format, and nothing
    # else in the runner checks formats, so the runner goes without that checker.
    sys.modules.setdefault("rfc3987_syntax", None)
    # The kernel starts before the imports below (about a second) and boots meanwhile on the other
    # core, preloading what the notebook imports (pipeline/stage_kernel.py).
    from pipeline.stage_kernel import StageKernel
    FIRST_KERNEL = StageKernel(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None

import nbformat

from pipeline import paths
from pipeline.io import REPO_ROOT, atomic_path, load_params, write_text
from pipeline.notebook_html import export_html, prepare_exporter_in_background, scrub_notebook
from pipeline.privacy import assert_stage_outputs_clean
from pipeline.stage_context import EXTRA_PARAMS, STUDY_LIST_STAGES, derive_paths
from pipeline.stage_context import build as build_context
from pipeline.stage_kernel import KERNEL_NAME, StageKernel, StageKernels, ipc_kernel_manager, kernel_environment


def stage_outs(stage: str, study: str | None, pipeline: str = "main") -> list[Path]:
    """The outputs the pipeline's dvc.yaml declares for this stage (``stage_context.derive_paths``,
    the derivation every stage's context uses), as absolute paths under the repository root."""
    return list(derive_paths(stage, study, pipeline)[1].values())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# --- all-or-nothing outputs -------------------------------------------------------------------
# Before a stage runs, its declared outputs are moved into BACKUP_DIR/<stage>[-study]/ (same
# filesystem, so a rename); they come back after any failure and are dropped after success. The
# file STASHED, written when the stash is finished, lists the outputs that existed: an output it
# does not list was absent before the run (so whatever is there now goes); one it lists but the
# backup no longer holds was already put back. Without STASHED (the runner died while stashing),
# only what the backup holds is put back and everything else is kept as it is.
BACKUP_DIR = ".stage-backup"
STASHED = ".stashed"


def backup_dir(stage: str, study: str | None, pipeline: str = "main") -> Path:
    label = ("" if pipeline == "main" else f"{pipeline}-") + stage + (f"-{study}" if study else "")
    return REPO_ROOT / BACKUP_DIR / label


def _backup_of(out: Path, backup: Path) -> Path:
    return backup / out.relative_to(REPO_ROOT)


def _outermost(outs: list[Path]) -> list[Path]:
    """Declared outputs not inside another declared output (which moves them along with it)."""
    return [out for out in outs if not any(out != other and out.is_relative_to(other) for other in outs)]


def remove_stale_temps(outs: list[Path]) -> list[Path]:
    """Remove the ``.<name>.XXXX.tmp`` files io.atomic_path leaves when a write is killed: next to
    each declared output and anywhere inside a declared output folder."""
    stale = []
    for out in outs:
        if out.parent.is_dir():
            stale += out.parent.glob(f".{glob.escape(out.name)}.*.tmp")
        if out.is_dir():
            stale += out.rglob(".*.tmp")
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def stash_outputs(outs: list[Path], backup: Path) -> None:
    """Move every existing declared output into ``backup``, then mark the stash finished."""
    backup.mkdir(parents=True, exist_ok=True)
    stashed = []
    for out in _outermost(outs):
        if out.exists() or out.is_symlink():
            target = _backup_of(out, backup)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out, target)
            stashed.append(out.relative_to(REPO_ROOT).as_posix())
    write_text(backup / STASHED, "".join(f"{name}\n" for name in stashed))


def restore_backup(outs: list[Path], backup: Path) -> list[str]:
    """Put the outputs back as they were before the run whose backup this is: remove what that
    run wrote and move the backed-up files back. Errors are collected (naming the path), not
    raised; the backup is kept when anything could not be restored."""
    if not backup.exists():
        return []
    errors = []
    marker = backup / STASHED
    existed = set(marker.read_text(encoding="utf-8").split()) if marker.exists() else None
    for out in _outermost(outs):
        saved = _backup_of(out, backup)
        in_backup = saved.exists() or saved.is_symlink()
        if not in_backup and (existed is None or out.relative_to(REPO_ROOT).as_posix() in existed):
            continue                      # never moved, or already put back: the previous output
        try:
            _remove(out)
            if in_backup:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.replace(saved, out)
        except OSError as exc:
            errors.append(f"could not restore {out}: {exc}")
    if not errors:
        try:
            drop_backup(backup)
        except OSError as exc:
            errors.append(f"could not remove the backup {backup}: {exc}")
    for message in errors:
        print(f"stage cleanup: {message}", file=sys.stderr)
    return errors


def roll_back(outs: list[Path], backup: Path, cause: BaseException) -> None:
    """After a failure: remove the stale temp files and the outputs this run wrote, restore the
    previous ones. A cleanup error never replaces ``cause``: it is printed and added to its notes."""
    errors = []
    try:
        remove_stale_temps(outs)
    except OSError as exc:
        errors.append(f"could not remove temporary files: {exc}")
        print(f"stage cleanup: {errors[-1]}", file=sys.stderr)
    errors += restore_backup(outs, backup)
    for message in errors:
        cause.add_note(f"stage cleanup: {message}")
    if errors:
        cause.add_note(f"the previous outputs are kept in {backup} and restored at the next run")


def drop_backup(backup: Path) -> None:
    shutil.rmtree(backup)
    try:
        backup.parent.rmdir()             # .stage-backup/ itself, when no other stage uses it
    except OSError:
        pass


def declared_params(stage: str, pipeline: str = "main") -> list[str]:
    """The params keys a stage reads, as its dvc.yaml entry must list them (``${key}``: the study)."""
    studies_key = "studies" if pipeline == "main" else f"{pipeline}.studies"
    keys = [stage] + ([f"{studies_key}.${{key}}"] if stage == "ingest" else [])
    keys += list(EXTRA_PARAMS.get(stage, {}).values())
    if stage in STUDY_LIST_STAGES:
        keys.append(studies_key)
    return keys


def notebook_parameters(stage: str, study: str | None, params: dict, pipeline: str) -> dict:
    """What papermill injects (JSON values, from which the notebook rebuilds its context with
    ``stage_context.build``): the stage's params group, the keys of EXTRA_PARAMS, the pipeline, and
    the study (per-study stages) or the pipeline's study list, so the executed notebook records
    everything the stage used. An unknown stage or study fails here, naming it."""
    context = build_context(stage, study, pipeline=pipeline, params=params)
    parameters = {"stage_params": dict(context.params), **context.extra}
    if study is not None:
        parameters["study"] = study
    elif stage in STUDY_LIST_STAGES:
        parameters["studies"] = list(context.studies)
    parameters["pipeline"] = pipeline
    return parameters


class StageInterrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) received while a stage ran: raised in the runner so the kernel is
    stopped and the outputs are rolled back like any other failure."""

    def __init__(self, signum: int):
        super().__init__(f"stage runner received {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_raise():
    """Turn SIGTERM and SIGINT into ``StageInterrupted`` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        raise StageInterrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_deferred(raise_after: bool = True):
    """Hold SIGTERM/SIGINT while the block moves outputs (main thread only), so a move is never
    cut in half; with ``raise_after``, a signal that came meanwhile raises ``StageInterrupted`` when
    the block ends (otherwise it is dropped: the runner is already failing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: pending.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if pending and raise_after:
        raise StageInterrupted(pending[0])


def _execute_in_thread(execute, kernels: StageKernels, grace: float = 2.0) -> None:
    """Run papermill in a worker thread so the runner's main thread keeps its own SIGTERM/SIGINT
    handlers (nbclient installs event-loop handlers only when it runs in the main thread) and can
    stop the kernel itself."""
    outcome: list[BaseException] = []

    def target():
        try:
            execute()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome.append(exc)

    worker = threading.Thread(target=target, name="papermill", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except BaseException:
        with signals_deferred(raise_after=False):
            kernels.stop(grace)
            worker.join(grace)    # papermill notices the dead kernel; one it launched meanwhile
            kernels.stop(grace)   # was stopped by its manager, this catches any other
        raise
    if outcome:
        raise outcome[0]


def _keep_failed_notebook(executed_tmp: Path, stage: str, study: str | None) -> None:
    """Best effort: a failure to copy the failed notebook is reported, never raised."""
    if not executed_tmp.exists():
        return
    failed_dir = REPO_ROOT / "logs" / "failed"
    try:
        failed_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(executed_tmp, failed_dir / f"{stage}{'-' + study if study else ''}.ipynb")
        print(f"stage {stage} failed; executed notebook kept in {failed_dir}", file=sys.stderr)
    except OSError as exc:
        print(f"stage {stage} failed; could not keep the executed notebook in {failed_dir}: {exc}", file=sys.stderr)


def run(stage: str, study: str | None = None, params_path: Path | None = None, pipeline: str = "main",
        kernel: StageKernel | None = None) -> Path:
    """Run a stage all-or-nothing: its declared outputs end either all from this run or, after any
    failure (an error, a full disk, SIGTERM/SIGINT), exactly as they were before it. ``kernel``: one
    already launched for this stage (``main`` starts it first thing); without it papermill starts one."""
    import papermill as pm

    params = load_params(params_path)     # checked against pipeline.params before anything runs
    parameters = notebook_parameters(stage, study, params, pipeline)

    name = paths.STAGE_NOTEBOOKS[stage]
    out_dir = paths.executed_notebook_dir(stage, study, pipeline)
    executed_path = out_dir / f"{name}.ipynb"
    outs = stage_outs(stage, study, pipeline)
    backup = backup_dir(stage, study, pipeline)
    logging.getLogger("papermill").setLevel(logging.WARNING)
    kernel_environment()
    kernels = kernel.kernels if kernel is not None else StageKernels()
    with signals_raise(), tempfile.TemporaryDirectory(prefix=f"stage-{stage}-", ignore_cleanup_errors=True) as tmp:
        tmp_nb = Path(tmp) / f"{name}.ipynb"
        with signals_deferred():
            errors = restore_backup(outs, backup)      # a runner killed mid-run left its backup behind
            if errors:
                raise RuntimeError(f"stage {stage}: the outputs of an interrupted run could not be put back; "
                                   + "; ".join(errors))
            remove_stale_temps(outs)
        try:
            with signals_deferred():
                stash_outputs(outs, backup)
            exporter_ready = prepare_exporter_in_background()
            # the kernel launched first, or one papermill starts (and shuts down) itself
            kernel_args = ({"km": kernel.manager} if kernel is not None
                           else {"kernel_manager_class": ipc_kernel_manager(tmp, kernels)})
            _execute_in_thread(lambda: pm.execute_notebook(
                str(paths.notebook_source(stage)),
                str(tmp_nb),
                parameters=parameters,
                kernel_name=KERNEL_NAME,
                cwd=str(REPO_ROOT),
                progress_bar=False,
                log_output=False,
                report_mode=False,
                **kernel_args,
            ), kernels)
            kernels.stop()                # the notebook ran: its kernel has nothing left to do
            nb = scrub_notebook(nbformat.read(tmp_nb, as_version=4))
            with atomic_path(executed_path) as tmp_path:
                nbformat.write(nb, str(tmp_path))
            exporter_ready.join()
            write_text(out_dir / f"{name}.html", export_html(nb, hide_code=True))
            write_text(out_dir / f"{name}.code.html", export_html(nb, hide_code=False))
            assert_stage_outputs_clean(outs, study, REPO_ROOT)    # an identifier in any output fails the stage
        except BaseException as exc:
            with signals_deferred(raise_after=False):
                _keep_failed_notebook(tmp_nb, stage, study)
                roll_back(outs, backup, exc)
            raise
        with signals_deferred(raise_after=False):    # the stage is complete: a late signal changes nothing
            drop_backup(backup)
    return executed_path


def main(argv: list[str] | None = None, kernel: StageKernel | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(paths.STAGE_NOTEBOOKS))
    parser.add_argument("--study", default=None, help="study name for per-study stages")
    parser.add_argument("--pipeline", default="main", choices=sorted(paths.PIPELINE_FILES),
                        help="main: the default run (dvc.yaml); evidence: the real studies (evidence/dvc.yaml)")
    args = parser.parse_args(argv)
    os.chdir(REPO_ROOT)
    try:
        run(args.stage, args.study, pipeline=args.pipeline, kernel=kernel)
    except StageInterrupted as exc:
        print(f"stage {args.stage} stopped: {exc}; its outputs are as before the run", file=sys.stderr)
        return 128 + exc.signum
    finally:
        if kernel is not None:
            kernel.close()
    return 0


if __name__ == "__main__":
    status = main(kernel=FIRST_KERNEL)
    # The stage is done (or stopped and rolled back): its files are closed, its kernel is stopped.
    # Tearing down the interpreter (pandas, pyarrow, nbconvert, zmq) would add about 0.3 s to every
    # stage for nothing, so the runner exits at once. An uncaught error still exits the usual way.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
