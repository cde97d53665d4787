"""Embarrassingly parallel loops (simulation draws; later bootstrap and randomisation inference) on
``dask.distributed``.

* :func:`dask_client`: a client on the scheduler at ``DASK_SCHEDULER_ADDRESS`` when that variable
  is set (a cluster: ``dask scheduler`` / ``dask worker``, dask-jobqueue, ...), else on a
  ``LocalCluster`` of ``workers`` processes with one thread each. The address is read from the
  environment, not from params.yaml, so moving a stage to a cluster does not invalidate its results.
* :func:`task_seed`: a ``numpy.random.SeedSequence`` keyed by what a task is (e.g. draw index and
  term), never by worker or chunk, so results do not depend on worker count, chunking or order.
* :func:`run_tasks`: ``[function(item, *shared) for item in items]`` computed in chunks (one task
  per chunk, submitted with ``pure=False`` so that identical calls are not merged), returned in
  input order, with progress (done / total, rate, time left) on the terminal.

Library threads are pinned to one per worker process: by environment variables for the workers a
``LocalCluster`` starts (distributed's nanny sets OMP/MKL/OpenBLAS to 1 by default; we add the rest
explicitly) and, for workers started some other way, in the task itself (threadpoolctl when
installed, else :func:`pipeline.qte.limit_blas_threads`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import zlib
from typing import Callable, Iterator, Sequence

import numpy as np

SCHEDULER_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
# n worker processes x n library threads on n cores run at about half speed
SINGLE_THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------
def scheduler_address(environ=None) -> str | None:
    """The scheduler address from ``DASK_SCHEDULER_ADDRESS`` (None when unset or empty)."""
    value = (os.environ if environ is None else environ).get(SCHEDULER_ADDRESS_ENV, "").strip()
    return value or None


@contextlib.contextmanager
def dask_client(workers: int, address: str | None = None) -> Iterator:
    """A ``distributed.Client`` on ``address`` (default: ``DASK_SCHEDULER_ADDRESS``), or, without
    one, on a ``LocalCluster`` of ``workers`` processes with one thread each (closed on exit)."""
    from distributed import Client, LocalCluster

    address = address or scheduler_address()
    if address:
        with Client(address) as client:
            yield client
        return
    if int(workers) < 1:
        raise ValueError(f"workers = {workers}: at least 1 worker process is needed")
    with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, env=SINGLE_THREAD_ENV,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def worker_threads(client) -> int:
    """Threads (task slots) of the client's workers, all of them."""
    return max(1, sum(client.nthreads().values())) if client is not None else 1


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------
def task_seed(*key: int | str) -> np.random.SeedSequence:
    """The seed of the task ``key`` (non-negative integers, strings hashed with CRC-32), e.g.
    ``task_seed(draw_seed, term)``: the same for a task wherever and whenever it runs."""
    entropy = []
    for part in key:
        if isinstance(part, str):
            entropy.append(zlib.crc32(part.encode("utf-8")))
        elif isinstance(part, (int, np.integer)) and not isinstance(part, bool) and part >= 0:
            entropy.append(int(part))
        else:
            raise ValueError(f"task_seed: key part {part!r} is neither a non-negative integer nor a string")
    if not entropy:
        raise ValueError("task_seed: empty key")
    return np.random.SeedSequence(entropy)


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------
_TERMINAL: list = []


def terminal():
    """The terminal that started this process. Usually its stderr; but an IPython kernel sends
    whatever is written to file descriptor 2 into the notebook's cell outputs as well, and the
    executed notebook is a stage output that must carry no timings: there, a stream on the copy of
    the original descriptor that the kernel keeps (``sys.stderr.fileno()``), which reaches only the
    terminal."""
    if not _TERMINAL:
        original = getattr(sys.stderr, "_original_stdstream_copy", None)
        _TERMINAL.append(open(os.dup(original), "w", buffering=1, encoding="utf-8")
                         if isinstance(original, int) else sys.__stderr__)
    return _TERMINAL[0]


class Progress:
    """Done / total with a rate and the time left, on the :func:`terminal`, not in a cell output.
    At most one line per ``every`` seconds, and the last."""

    def __init__(self, total: int, label: str = "simulation", every: float = 15.0, stream=None,
                 unit: str = "draws"):
        self.total, self.label, self.every, self.unit = total, label, every, unit
        self.stream = stream if stream is not None else terminal()
        self.start = self.last = time.perf_counter()
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.stream is None or (now - self.last < self.every and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        print(f"{self.label}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f}%), "
              f"{rate:.2f} {self.unit}/s, about {left / 60:.1f} min left", file=self.stream, flush=True)


def default_chunk_size(n_items: int, threads: int) -> int:
    """Items per task: at least 4 tasks per thread (load balance, progress), at most 10 items (a
    draw costs seconds, so 10 keep the scheduler's few ms per task negligible)."""
    return max(1, min(10, n_items // (4 * max(1, threads))))


def chunked(items: Sequence, size: int) -> list[Sequence]:
    if int(size) < 1:
        raise ValueError(f"chunk size {size}: must be at least 1")
    return [items[k:k + size] for k in range(0, len(items), size)]


_THREADS_PINNED = False


def pin_library_threads() -> None:
    """One BLAS / OpenMP thread in this process (once per process)."""
    global _THREADS_PINNED
    if _THREADS_PINNED:
        return
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:
        from pipeline.qte import limit_blas_threads
        limit_blas_threads(1)
    _THREADS_PINNED = True


def _run_chunk(function: Callable, chunk: Sequence, *shared) -> list:
    pin_library_threads()
    out = []
    for item in chunk:
        try:
            out.append(function(item, *shared))
        except Exception as error:   # say which task failed (the traceback alone shows where, not which)
            error.add_note(f"in {function.__module__}.{function.__qualname__}({item!r}, ...)")
            raise
    return out


def run_tasks(client, function: Callable, items: Sequence, shared: tuple = (), chunk_size: int | None = None,
              progress: Progress | None = None) -> list:
    """``[function(item, *shared) for item in items]`` on the client's workers, in input order.

    ``function`` must be importable by the workers (a module-level function of the package);
    ``shared`` arguments are sent to every worker once. Items go in chunks of ``chunk_size``
    (default :func:`default_chunk_size`), one task each, ``pure=False``; ``progress`` advances
    by a chunk's items as it completes. ``client=None`` runs everything here, serially (debugging,
    profiling)."""
    items = list(items)
    if client is None:
        out = []
        for item in items:
            out.append(function(item, *shared))
            if progress is not None:
                progress.advance()
        return out
    from distributed import as_completed

    chunks = chunked(items, chunk_size or default_chunk_size(len(items), worker_threads(client)))
    shared_futures = client.scatter(list(shared), broadcast=True, hash=False) if shared else []
    futures = [client.submit(_run_chunk, function, chunk, *shared_futures, pure=False) for chunk in chunks]
    position = {future.key: k for k, future in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        for future, result in as_completed(futures, with_results=True):
            k = position[future.key]
            results[k] = result
            if progress is not None:
                progress.advance(len(chunks[k]))
    finally:
        client.cancel(futures + list(shared_futures))
    return [value for chunk_result in results for value in chunk_result]
