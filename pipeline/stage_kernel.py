"""The kernel a stage's notebook runs in, started first thing by the stage runner.

``python -m pipeline.run_stage`` launches the kernel before it imports pandas, nbformat and
papermill (about a second): the kernel boots on the other core meanwhile and imports what the
stage's notebook imports (``preload_notebook_imports``), so the notebook's first cells find them
loaded. This module imports nothing heavy at import time for that reason (``jupyter_client`` only
when a kernel is launched). The kernel talks over Unix sockets in a private temporary folder (no
open port, no "running over TCP without encryption" warning), runs in a session of its own and is
stopped with its whole process group.
"""
from __future__ import annotations

import ast
import asyncio
import atexit
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

KERNEL_NAME = "microenterprise"
# pipeline.io.REPO_ROOT, computed here without importing pandas (tests/test_stage_kernel.py checks they agree)
REPO_ROOT = Path(__file__).resolve().parents[1]


class StageKernels:
    """The kernels a stage started, so that an interrupted runner can stop them and refuse new ones."""

    def __init__(self):
        self.managers: list = []
        self.stopping = threading.Event()

    def stop(self, grace: float = 2.0) -> None:
        self.stopping.set()
        for km in self.managers:
            stop_kernel(km, grace)


def ipc_kernel_manager(socket_dir: str, kernels: StageKernels | None = None):
    """A kernel manager whose kernel talks over Unix sockets in ``socket_dir`` (a private temporary
    folder) instead of TCP on localhost. Each manager is recorded in ``kernels``; once the runner is
    stopping, no kernel is launched (one launched meanwhile is stopped at once)."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        @default("ip")
        def _default_ip(self):
            return os.path.join(socket_dir, "kernel")

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if kernels is not None:
                kernels.managers.append(self)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if kernels is not None and kernels.stopping.is_set():
                raise RuntimeError("the stage runner is stopping: no kernel is started")
            await super()._async_launch_kernel(kernel_cmd, **kw)
            if kernels is not None and kernels.stopping.is_set():
                stop_kernel(self)

    return IPCKernelManager


def stop_kernel(km, grace: float = 2.0) -> None:
    """Stop a kernel with its whole process group (the kernel runs in a session of its own, so its
    children such as dask workers share its group and die with it): SIGTERM, then SIGKILL for
    whatever is left after ``grace`` seconds."""
    provisioner = getattr(km, "provisioner", None)
    process = getattr(provisioner, "process", None)
    pgid = getattr(provisioner, "pgid", None)
    if process is None and pgid is None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if pgid:
                os.killpg(pgid, sig)
            elif process is not None:
                process.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass
        if process is not None:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                if sig == signal.SIGKILL:
                    print(f"stage runner: kernel process {process.pid} did not stop", file=sys.stderr)


def kernel_environment() -> None:
    """The kernel (and any kernel the runner starts) imports this checkout's pipeline package, not
    another editable install: the repository root goes first on PYTHONPATH."""
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO_ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *inherited])


def notebook_imports(notebook: Path) -> list[str]:
    """The modules a notebook's import statements name (``from a import b`` gives ``a`` and ``a.b``,
    since ``b`` may be a submodule), in order, from the code cells that parse as Python."""
    modules: list[str] = []
    for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse("".join(cell["source"]))
        except SyntaxError:           # IPython magics: not plain Python
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return list(dict.fromkeys(modules))


def preload_notebook_imports(stage: str) -> None:
    """Run in the kernel as it starts: import what the stage's notebook imports, binding no name in
    the notebook's namespace. Any failure is left for the notebook's own import to report."""
    try:
        from pipeline import paths

        modules = notebook_imports(paths.notebook_source(stage))
    except Exception:  # noqa: BLE001 - an unknown stage: the runner's argument check reports it
        return
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - e.g. "a.b" where b is a function, not a module
            pass


class StageKernel:
    """One kernel launched for a stage (not waited for: papermill connects to it when the notebook
    runs), with its private socket folder. ``close`` stops it and removes the folder; it is also
    registered at exit, and until the runner installs its own handlers a SIGTERM/SIGINT stops the
    kernel and exits (nothing else has been done yet)."""

    def __init__(self, stage: str | None):
        kernel_environment()
        self._socket_dir = tempfile.TemporaryDirectory(prefix="stage-kernel-", ignore_cleanup_errors=True)
        self.kernels = StageKernels()
        # its connection file (with the session key) goes in the private folder too, removed with it
        self.manager = ipc_kernel_manager(self._socket_dir.name, self.kernels)(
            kernel_name=KERNEL_NAME, connection_file=os.path.join(self._socket_dir.name, "kernel.json"))
        atexit.register(self.close)
        self._previous_handlers = {sig: signal.signal(sig, self._stop_and_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        preload = []
        if stage is not None and stage.isidentifier():
            preload = [f"--IPKernelApp.exec_lines="
                       f"__import__('pipeline.stage_kernel').stage_kernel.preload_notebook_imports({stage!r})"]
        asyncio.run(self.manager.start_kernel(cwd=str(REPO_ROOT), extra_arguments=preload))

    def close(self) -> None:
        """Stop the kernel, remove its socket folder, put back the signal handlers it replaced."""
        self.kernels.stop()
        self._socket_dir.cleanup()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous_handlers.items():
                signal.signal(sig, handler)

    def _stop_and_exit(self, signum, _frame):
        self.close()
        print(f"stage runner received {signal.Signals(signum).name} before the stage started; nothing was changed",
              file=sys.stderr)
        os._exit(128 + signum)
