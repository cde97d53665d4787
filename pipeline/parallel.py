"""Embarrassingly parallel loops (simulation draws; the estimate stage's QTE cluster bootstrap) on
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
* :class:`Workers` and :func:`run_replications`: a stage's worker processes, started only when a
  loop's first chunk, timed here, shows that the rest would take longer than starting them costs
  (``PAYS_OFF_SECONDS``); smaller loops, and every loop with 1 worker, run here through the same
  function, so where a chunk runs never changes a result.

Library threads are pinned to one per worker process: by environment variables for the workers a
``LocalCluster`` starts (distributed's nanny sets OMP/MKL/OpenBLAS to 1 by default; we add the rest
explicitly) and, for workers started some other way, in the task itself (threadpoolctl when
installed, else :func:`limit_blas_threads`); a loop run here runs with one BLAS thread too
(:func:`single_blas_thread`), so that its numbers are those of a worker's.
"""
from __future__ import annotations

import contextlib
import logging
import os
import reprlib
import sys
import time
import zlib
from typing import Any, Callable, Iterator, Sequence

import numpy as np

SCHEDULER_ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
# dask settings of the local cluster's workers (a cluster at an address keeps its own)
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
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
    import dask
    from distributed import Client, LocalCluster

    address = address or scheduler_address()
    if address:
        with Client(address) as client:
            yield client
        return
    if int(workers) < 1:
        raise ValueError(f"workers = {workers}: at least 1 worker process is needed")
    # distributed's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which makes glibc hand
    # freed memory back at once: the QTE bootstrap's numpy temporaries then ran at half speed (10
    # replications: 14.3-16.8 s against 6.0-8.7 s in a process without it). Glibc's default instead.
    # The workers' statistical profiler (a thread sampling the running task's stack every 10 ms, for
    # the dashboard's profile page) cost a simulation draw 1.3-2.7% of its CPU on 2 workers and 4-11%
    # on 1 (paired runs): WORKER_CONFIG turns it off.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None, **WORKER_CONFIG}), \
            LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, env=SINGLE_THREAD_ENV,
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


_BLAS_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads", "openblas_set_num_threads64_")


def _openblas_libraries() -> list:
    """The OpenBLAS libraries loaded in this process (numpy's and scipy's are separate copies)."""
    import ctypes

    try:
        with open("/proc/self/maps", encoding="utf-8") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    libraries = []
    for path in sorted(paths):
        with contextlib.suppress(OSError):
            libraries.append(ctypes.CDLL(path))
    return libraries


def limit_blas_threads(n: int = 1) -> bool:
    """Best effort: set the number of threads of every OpenBLAS loaded in this process (what
    threadpoolctl does, without the dependency). The regressions here are small: n worker
    processes x n BLAS threads on n cores run at half speed. Returns whether a setter was found."""
    found = False
    for lib in _openblas_libraries():
        for name in _BLAS_SETTERS:
            if hasattr(lib, name):
                getattr(lib, name)(int(n))
                found = True
    return found


@contextlib.contextmanager
def single_blas_thread() -> Iterator[None]:
    """One OpenBLAS thread in this process meanwhile (the number before is restored on exit)."""
    before = []
    for lib in _openblas_libraries():
        for setter in _BLAS_SETTERS:
            getter = setter.replace("_set_", "_get_")
            if hasattr(lib, setter) and hasattr(lib, getter):
                before.append((getattr(lib, setter), int(getattr(lib, getter)())))
                getattr(lib, setter)(1)
    try:
        yield
    finally:
        for setter, n in before:
            setter(n)


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
        limit_blas_threads(1)
    _THREADS_PINNED = True


def _run_chunk(function: Callable, chunk: Sequence, *shared) -> list:
    pin_library_threads()
    return _run_items(function, chunk, *shared)


def _run_items(function: Callable, chunk: Sequence, *shared) -> list:
    out = []
    for item in chunk:
        try:
            out.append(function(item, *shared))
        except Exception as error:   # say which task failed (the traceback alone shows where, not which)
            error.add_note(f"in {function.__module__}.{function.__qualname__}({item!r}, ...)")
            raise
    return out


class TaskLostError(RuntimeError):
    """A task of :func:`run_tasks` ended without a result or an error of its own (cancelled, e.g.
    by another client, or its client's connection to the scheduler lost)."""


def _task_name(function: Callable, chunks: list[Sequence], k: int) -> str:
    """``function`` on chunk ``k``: its items' positions in the loop and (abridged) values."""
    first = sum(len(chunk) for chunk in chunks[:k])
    total = sum(len(chunk) for chunk in chunks)
    return (f"{function.__module__}.{function.__qualname__} on items {first}-{first + len(chunks[k]) - 1} "
            f"of {total} {reprlib.repr(list(chunks[k]))}")


def run_tasks(client, function: Callable, items: Sequence, shared: tuple = (), chunk_size: int | None = None,
              progress: Progress | None = None, weight: Callable[[Any], int] | None = None) -> list:
    """``[function(item, *shared) for item in items]`` on the client's workers, in input order.

    ``function`` must be importable by the workers (a module-level function of the package);
    ``shared`` arguments are sent to every worker once. Items go in chunks of ``chunk_size``
    (default :func:`default_chunk_size`), one task each, ``pure=False``; ``progress`` advances
    by a chunk's items as it completes (by the sum of ``weight(item)`` with ``weight``: e.g. the
    draws of a batch). A task's error is raised with a note naming its items; a
    task cancelled before it returned raises :class:`TaskLostError` naming them. ``client=None``
    runs everything here, serially (debugging, profiling)."""
    items = list(items)
    weigh = weight or (lambda item: 1)
    if client is None:
        out = []
        for item in items:
            out.append(function(item, *shared))
            if progress is not None:
                progress.advance(weigh(item))
        return out
    from distributed import as_completed
    from distributed.client import CancelledError

    chunks = chunked(items, chunk_size or default_chunk_size(len(items), worker_threads(client)))
    shared_futures = client.scatter(list(shared), broadcast=True, hash=False) if shared else []
    futures = [client.submit(_run_chunk, function, chunk, *shared_futures, pure=False) for chunk in chunks]
    position = {future.key: k for k, future in enumerate(futures)}
    results: list = [None] * len(futures)
    try:
        # On this client's event loop: without loop=, as_completed follows the futures on the loop
        # of distributed's *default* client, the last one made in this process, and each client of
        # a LocalCluster or an address has a loop thread of its own. Futures of another client were
        # then followed across threads, and now and then their completion was never seen: the wait
        # went on forever, the workers idle (dask/distributed#4357). Results are fetched here, not
        # by with_results=True, whose fetch runs in a callback on that loop: an error there is only
        # logged and the iterator waits forever.
        for future in as_completed(futures, loop=client.loop):
            k = position[future.key]
            try:
                results[k] = future.result()
            except CancelledError as error:
                raise TaskLostError(
                    f"run_tasks: the task of {_task_name(function, chunks, k)} was cancelled before it returned "
                    f"({error}): by a client, by the loss of this client's scheduler, or because a worker that "
                    "died held the shared arguments, which cannot be recomputed") from error
            except Exception as error:
                error.add_note(f"in the task of {_task_name(function, chunks, k)} (dask key {future.key})")
                raise
            if progress is not None:
                progress.advance(sum(map(weigh, chunks[k])))
    finally:
        client.cancel(futures + list(shared_futures))
    return [value for chunk_result in results for value in chunk_result]


# --------------------------------------------------------------------------------------------
# A stage's workers, started when a loop pays for them
# --------------------------------------------------------------------------------------------
# Start a LocalCluster only for a loop whose rest would take longer than this here: on the 2-core
# machine (loaded by other jobs) a LocalCluster of 2 workers took 3.0-4.0 s to start and 1.8-4.3 s
# to close, about 8 s in all, and 2 workers save half of the rest at best.
PAYS_OFF_SECONDS = 16.0


class Workers:
    """The worker processes of a stage: the cluster at ``address`` (default
    ``DASK_SCHEDULER_ADDRESS``) or a ``LocalCluster`` of ``workers`` processes, started the first
    time :meth:`client` is called and closed on exit. With 1 worker and no address there are none
    (``available`` is False): every loop runs here. ``client``: one already running (tests)."""

    def __init__(self, workers: int, address: str | None = None, client=None):
        if int(workers) < 1:
            raise ValueError(f"workers = {workers}: at least 1 worker process is needed")
        self.workers = int(workers)
        self.address = address or scheduler_address()
        self._client = client
        self._stack = contextlib.ExitStack()

    @property
    def available(self) -> bool:
        return self._client is not None or bool(self.address) or self.workers > 1

    @property
    def started(self) -> bool:
        return self._client is not None

    def client(self):
        if self._client is None:
            self._client = self._stack.enter_context(dask_client(self.workers, self.address))
        return self._client

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()


def run_replications(workers: Workers | None, function: Callable, items: Sequence, shared: tuple = (), *,
                     chunk_size: int, progress: Progress | None = None) -> list:
    """``[function(item, *shared) for item in items]`` in input order, in chunks of ``chunk_size``
    items (a constant of the loop, never derived from the number of workers).

    The first chunk runs here and is timed; the rest goes to ``workers`` (:func:`run_tasks`) if
    they are running already, or if the rest would take longer than ``PAYS_OFF_SECONDS`` here;
    otherwise it runs here too (always without ``workers`` or with 1 worker and no address). Items
    must carry their own random numbers (drawn by the caller, or seeded by :func:`task_seed`): a
    chunk's result is then the same wherever it runs. Here, BLAS runs on one thread, as on a worker."""
    items = list(items)
    if not items:
        return []
    size = int(chunk_size)
    start = time.perf_counter()
    with single_blas_thread():
        out = _run_items(function, items[:size], *shared)
    if progress is not None:
        progress.advance(len(out))
    rest = items[size:]
    seconds_left = (time.perf_counter() - start) * len(rest) / size
    if rest and workers is not None and workers.available and (workers.started or seconds_left > PAYS_OFF_SECONDS):
        if not workers.started and progress is not None and progress.stream is not None:
            print(f"{progress.label}: the other {len(rest)} {progress.unit} (about {seconds_left:.0f} s here) go to "
                  f"{workers.address or f'{workers.workers} local worker processes'}", file=progress.stream, flush=True)
        return out + run_tasks(workers.client(), function, rest, shared, chunk_size=size, progress=progress)
    with single_blas_thread():
        for chunk in chunked(rest, size):
            out += _run_items(function, chunk, *shared)
            if progress is not None:
                progress.advance(len(chunk))
    return out
