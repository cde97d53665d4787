"""Tests for pipeline/parallel.py: per-task seeds, chunking, ordered results with progress, and the
same results from a serial loop, a LocalCluster of 1 or 2 workers and a loopback "remote" scheduler."""
from __future__ import annotations

import io
import os
import sys
import threading
import time
import zlib
from unittest import mock

import numpy as np
import pytest

from pipeline import parallel


def normal_draws(i: int, base_seed: int) -> list[float]:
    """A task that draws random numbers from its own seed (workers import it from this module)."""
    return [i, *np.random.default_rng(parallel.task_seed(base_seed, i, "normal")).normal(size=3).tolist()]


def failing(i: int) -> int:
    if i == 3:
        raise ValueError(f"item {i} is bad")
    return i


def exits_once(i: int, marker: str) -> int:
    """Item 1's task kills its worker process the first time it runs (``marker``: the file that says it did)."""
    if i == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return i


def exits_once_item(item: tuple[int, str]) -> int:
    return exits_once(*item)


def cancelled_by_the_scheduler(i: int) -> int:
    """Item 2's task is cancelled for every client that wants it (what another client's
    ``cancel(..., force=True)`` does), and returns only once the scheduler has done so."""
    if i == 2:
        from distributed import Future, get_client, get_worker

        client, key = get_client(), get_worker().get_current_task()
        client.cancel([Future(key, client)], force=True)
        deadline = time.monotonic() + 30
        while client.run_on_scheduler(wanted_by_a_client, key) and time.monotonic() < deadline:
            time.sleep(0.05)
    return i


def wanted_by_a_client(key, dask_scheduler=None) -> bool:
    task = dask_scheduler.tasks.get(key)
    return task is not None and bool(task.who_wants)


def worker_environment(name: str) -> str | None:
    return os.environ.get(name)


def worker_dask_config(key: str):
    import dask

    return dask.config.get(key)


def test_task_seed_is_a_seed_sequence_keyed_by_integers_and_crc32_of_strings():
    seed = parallel.task_seed(20261128, 7, "treat_skills_women")
    reference = np.random.SeedSequence([20261128, 7, zlib.crc32(b"treat_skills_women")])
    assert seed.entropy == reference.entropy
    assert np.array_equal(seed.generate_state(4), reference.generate_state(4))
    # different tasks, different streams; the same task, the same stream
    a = np.random.default_rng(parallel.task_seed(1, 2)).random(5)
    assert np.array_equal(a, np.random.default_rng(parallel.task_seed(1, 2)).random(5))
    assert not np.array_equal(a, np.random.default_rng(parallel.task_seed(2, 1)).random(5))
    assert parallel.task_seed(np.int64(3)).entropy == [3]
    for bad in [(-1,), (1.5,), (True,), ()]:
        with pytest.raises(ValueError, match="task_seed"):
            parallel.task_seed(*bad)


def test_chunks_cover_the_items_in_order():
    items = list(range(23))
    for size in (1, 4, 23, 50):
        chunks = parallel.chunked(items, size)
        assert [x for c in chunks for x in c] == items
        assert all(len(c) == size for c in chunks[:-1]) and 1 <= len(chunks[-1]) <= size
    with pytest.raises(ValueError, match="chunk size 0"):
        parallel.chunked(items, 0)
    # at least 4 tasks per thread, at most 10 items per task, at least 1
    assert parallel.default_chunk_size(2000, 2) == 10
    assert parallel.default_chunk_size(40, 2) == 5
    assert parallel.default_chunk_size(3, 2) == 1


def test_progress_goes_to_the_terminal_not_to_a_kernel_captured_stderr(monkeypatch):
    """In an IPython kernel, sys.stderr is a stream into the notebook that keeps a copy of the
    terminal's descriptor; progress lines go to that copy (here: a pipe), never into the notebook."""
    read_end, write_end = os.pipe()

    class KernelStderr(io.StringIO):
        _original_stdstream_copy = write_end

    captured = KernelStderr()
    monkeypatch.setattr("sys.stderr", captured)
    monkeypatch.setattr(parallel, "_TERMINAL", [])
    progress = parallel.Progress(3, label="reps", unit="reps", every=3600)
    progress.advance(3)
    progress.stream.close()
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        line = fh.read()
    assert line.startswith("reps: 3/3 reps (100%)") and "reps/s" in line and "min left" in line
    assert captured.getvalue() == ""
    monkeypatch.setattr(parallel, "_TERMINAL", [])
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert parallel.terminal() is sys.__stderr__


def test_scheduler_address_from_the_environment_only_when_set():
    assert parallel.scheduler_address({}) is None
    assert parallel.scheduler_address({"DASK_SCHEDULER_ADDRESS": " "}) is None
    assert parallel.scheduler_address({"DASK_SCHEDULER_ADDRESS": "tcp://10.0.0.1:8786"}) == "tcp://10.0.0.1:8786"


def test_results_do_not_depend_on_workers_chunks_or_scheduler(dask_clients):
    items = list(range(11))
    expected = [normal_draws(i, 5) for i in items]   # the plain loop
    assert parallel.run_tasks(None, normal_draws, items, shared=(5,)) == expected
    for n, size in [(1, 1), (1, 4), (2, 1), (2, 3), (2, None)]:
        progress = parallel.Progress(len(items), stream=io.StringIO(), every=3600)
        assert parallel.run_tasks(dask_clients[n], normal_draws, items, shared=(5,), chunk_size=size,
                                  progress=progress) == expected, (n, size)
        assert progress.done == len(items)
        last = progress.stream.getvalue().splitlines()[-1]
        assert last.startswith("simulation: 11/11 draws (100%)") and "draws/s" in last


def test_identical_tasks_are_not_merged(dask_clients):
    """pure=False: four chunks with the same arguments are four tasks, four results."""
    progress = parallel.Progress(4, stream=None)
    out = parallel.run_tasks(dask_clients[2], normal_draws, [1, 1, 1, 1], shared=(9,), chunk_size=1, progress=progress)
    assert out == [normal_draws(1, 9)] * 4 and progress.done == 4


def test_a_failing_task_raises_its_error(dask_clients):
    with pytest.raises(ValueError, match="item 3 is bad") as info:
        parallel.run_tasks(dask_clients[2], failing, range(6), chunk_size=2)
    notes = getattr(info.value, "__notes__", [])
    assert any("failing(3, ...)" in note for note in notes)
    assert any("test_parallel.failing on items 2-3 of 6 [2, 3] (dask key _run_chunk-" in note for note in notes)


def test_a_client_s_futures_are_followed_on_its_own_event_loop(dask_clients, loopback_scheduler):
    """Each client has its own event-loop thread. distributed's as_completed follows futures on the
    loop of the default client (the last one made) unless told otherwise: with that loop busy
    (here: blocked until released), run_tasks on another client waited for it, and when the two
    loops raced over a future's completion it waited forever (the hang of make test, in
    as_completed, the workers idle). Run on its own client's loop, it does not wait at all."""
    from distributed import Client, default_client

    release = threading.Event()
    with Client(loopback_scheduler) as newest:
        assert default_client() is newest and newest.loop is not dask_clients[1].loop
        newest.loop.add_callback(release.wait, 60)    # its loop thread is stuck meanwhile
        unblock = threading.Timer(10, release.set)      # the old code's wait, bounded here
        unblock.start()
        try:
            start = time.perf_counter()
            out = parallel.run_tasks(dask_clients[1], normal_draws, range(4), shared=(5,), chunk_size=1)
            seconds = time.perf_counter() - start
        finally:
            release.set()
            unblock.cancel()
    assert out == [normal_draws(i, 5) for i in range(4)]
    assert seconds < 10, f"run_tasks waited {seconds:.1f} s for another client's event loop"


def test_a_cancelled_task_raises_an_error_naming_its_items(dask_clients):
    """Before: the cancelled chunk's exception object was taken for its results (TypeError:
    'FutureCancelledError' object is not iterable)."""
    with pytest.raises(parallel.TaskLostError, match=r"cancelled_by_the_scheduler on items 2-2 of 4 \[2\] was cancelled"):
        parallel.run_tasks(dask_clients[2], cancelled_by_the_scheduler, range(4), chunk_size=1)
    assert parallel.run_tasks(dask_clients[2], normal_draws, [1], shared=(9,)) == [normal_draws(1, 9)]


def test_a_worker_killed_mid_run_is_recovered_from_or_named(tmp_path):
    """A task that kills its worker is run again on the worker its nanny restarts: the results are
    those of the plain loop. When the dead worker held the shared arguments (scattered, they cannot
    be recomputed), the tasks needing them are cancelled: a clear error, not a wait."""
    with mock.patch.dict(os.environ):
        os.environ.pop(parallel.SCHEDULER_ADDRESS_ENV, None)
        with parallel.dask_client(1) as client:
            items = [(i, str(tmp_path / "items")) for i in range(4)]
            assert parallel.run_tasks(client, exits_once_item, items, chunk_size=1) == list(range(4))
            assert (tmp_path / "items").exists()
            with pytest.raises(parallel.TaskLostError, match=r"exits_once on items (\d)-\1 of 4 \[\1\] was cancelled"):
                parallel.run_tasks(client, exits_once, range(4), shared=(str(tmp_path / "shared"),), chunk_size=1)
            assert (tmp_path / "shared").exists()


def test_workers_run_one_library_thread(dask_clients):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert set(dask_clients[2].run(worker_environment, name).values()) == {"1"}
    # distributed's default of 65536 halved the QTE bootstrap's speed (glibc returned memory at once)
    assert set(dask_clients[2].run(worker_environment, "MALLOC_TRIM_THRESHOLD_").values()) == {None}
    assert parallel.worker_threads(dask_clients[2]) == 2 and parallel.worker_threads(dask_clients[1]) == 1
    # the statistical profiler's sampling thread cost a simulation draw 1-3% (2 workers) to 4-11% (1)
    assert set(dask_clients[2].run(worker_dask_config, "distributed.worker.profile.enabled").values()) == {False}
    assert sorted(dask_clients[2].nthreads().values()) == [1, 1]


def test_a_scheduler_address_in_the_environment_replaces_the_local_cluster():
    """The "remote" path: a scheduler on the loopback interface, its address in DASK_SCHEDULER_ADDRESS;
    ``workers`` is then the cluster's business, not the stage's."""
    from distributed import LocalCluster

    with LocalCluster(host="127.0.0.1", n_workers=1, processes=True, threads_per_worker=1,
                      dashboard_address=":0") as cluster, \
            mock.patch.dict(os.environ, {parallel.SCHEDULER_ADDRESS_ENV: cluster.scheduler_address}):
        with parallel.dask_client(workers=3) as client:
            assert client.scheduler.address == cluster.scheduler_address
            assert len(client.nthreads()) == 1
            assert parallel.run_tasks(client, normal_draws, range(5), shared=(5,)) == \
                [normal_draws(i, 5) for i in range(5)]


def test_a_local_cluster_needs_a_worker():
    with mock.patch.dict(os.environ), pytest.raises(ValueError, match="workers = 0"):
        os.environ.pop(parallel.SCHEDULER_ADDRESS_ENV, None)
        with parallel.dask_client(0):
            pass


# --------------------------------------------------------------------------------------------
# Workers started when a loop pays for them; run_replications
# --------------------------------------------------------------------------------------------
def test_replications_are_the_same_here_on_local_workers_and_on_a_remote_scheduler(dask_clients,
                                                                                   loopback_scheduler, monkeypatch):
    items = list(range(13))
    expected = [normal_draws(i, 5) for i in items]       # the plain loop
    with parallel.Workers(1) as here:                   # 1 worker, no address: no cluster, ever
        assert not here.available
        assert parallel.run_replications(here, normal_draws, items, (5,), chunk_size=4) == expected
        assert not here.started
    assert parallel.run_replications(None, normal_draws, items, (5,), chunk_size=13) == expected
    for n in (1, 2):                                    # running workers take the rest (chunks 2-4)
        with parallel.Workers(n, client=dask_clients[n]) as running:
            progress = parallel.Progress(len(items), stream=io.StringIO(), every=3600, unit="reps")
            assert parallel.run_replications(running, normal_draws, items, (5,), chunk_size=4,
                                             progress=progress) == expected, n
            assert progress.done == len(items)
    monkeypatch.setattr(parallel, "PAYS_OFF_SECONDS", 0.0)    # the remote one is worth starting
    with parallel.Workers(2, address=loopback_scheduler) as remote:
        assert parallel.run_replications(remote, normal_draws, items, (5,), chunk_size=3) == expected
        assert remote.started and remote.client().scheduler.address == loopback_scheduler


def test_a_small_loop_starts_no_cluster():
    """The first chunk is timed: the rest of a loop of milliseconds is not worth a cluster's seconds."""
    with mock.patch.dict(os.environ):
        os.environ.pop(parallel.SCHEDULER_ADDRESS_ENV, None)
        with parallel.Workers(2) as workers:
            assert workers.available
            out = parallel.run_replications(workers, normal_draws, range(20), (5,), chunk_size=2)
            assert out == [normal_draws(i, 5) for i in range(20)] and not workers.started
    with pytest.raises(ValueError, match="workers = 0"):
        parallel.Workers(0)


def test_a_loop_run_here_uses_one_blas_thread_and_restores_the_count():
    def counts():
        getters = [name.replace("_set_", "_get_") for name in parallel._BLAS_SETTERS]
        return [getattr(lib, name)() for lib in parallel._openblas_libraries() for name in getters if hasattr(lib, name)]

    before = counts()
    if not before:
        pytest.skip("no OpenBLAS with a thread getter in this process")
    with parallel.single_blas_thread():
        assert set(counts()) == {1}
    assert counts() == before


def sum_of_batch(batch, base_seed: int) -> float:
    return float(sum(sum(normal_draws(i, base_seed)) for i in batch))


def test_progress_counts_the_weight_of_each_item(dask_clients):
    """weight=len: items that are batches of draws advance the progress by their draws, on the
    workers and here, serially."""
    batches = [[0], [1, 2, 3], [4, 5], [6, 7, 8, 9]]
    for client in (dask_clients[2], None):
        progress = parallel.Progress(10, stream=None)
        out = parallel.run_tasks(client, sum_of_batch, batches, shared=(3,), chunk_size=2, progress=progress,
                                 weight=len)
        assert out == [sum_of_batch(b, 3) for b in batches] and progress.done == 10
