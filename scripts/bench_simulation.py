"""Benchmark the simulation's draws: CPU seconds per draw and where they go.

    .venv/bin/python scripts/bench_simulation.py [--draws 5] [--few 2] [--against main] [--rounds 2]

Runs ``--draws`` main draws and ``--few`` few-cluster draws serially (BLAS pinned to one thread, as
on the stage's dask workers), after one warm-up draw of each kind (draw 0, the one that validates
its tables), and prints CPU seconds per draw, then the share of the main draws' CPU time in each
component (cProfile, cumulative, so nested components overlap: validation is inside clean and
construct, CR2 inside estimation). The machine is shared: compare numbers from one run, or CPU
seconds (not wall time) from runs at similar load. Asserts nothing.

``--against REF`` also measures the code of git revision ``REF`` (``git archive`` into a temporary
folder) side by side: the two codes' timings run in alternating child processes (``--rounds`` each,
the fastest kept), so both see the same machine load, and the ratio is printed. A revision from
before ``pipeline/simulation.py`` (e.g. a73bafe, where issue 9 was filed) is timed through its
``scripts/simulation_study.py`` as its stage ran it (every outcome; no few-cluster draws then).
``make bench`` (``scripts/bench.py``) runs this side by side as one part of its table.

``--check N --against REF`` instead asserts that this checkout and ``REF`` give identical results:
main draws 0..N-1 (every row of :func:`pipeline.simulation.main_batch`, in batches) and each draw's analysis tables
(both variants), few-cluster draws 0..2, compared exactly (``assert_frame_equal(check_exact=True)``).
"""
from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"           # before numpy is imported, as parallel.SINGLE_THREAD_ENV on workers

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import pstats  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(os.environ.get("BENCH_CODE_ROOT") or Path(__file__).resolve().parents[1])
sys.path.insert(0, str(ROOT))


# component -> (file suffix, function name) of the function whose cumulative time it is
COMPONENTS = {
    "generator (synthetic.generate_variants)": ("pipeline/synthetic.py", "generate_variants"),
    "ingest (ingest_frame)": ("pipeline/ingest.py", "ingest_frame"),
    "clean (clean.clean)": ("pipeline/clean.py", "clean"),
    "construct (construct.construct)": ("pipeline/construct.py", "construct"),
    "  of which pandera validation": ("pipeline/schemas.py", "validate_frame"),
    "estimation (fit.fit)": ("pipeline/estimation/fit.py", "fit"),
    "  of which CR2 covariance": ("pipeline/estimation/variance.py", "_cr2_cov"),
    "  of which Bell-McCaffrey df": ("pipeline/estimation/variance.py", "_bell_mccaffrey_df"),
    "tidy tables (tables.tidy)": ("pipeline/estimation/tables.py", "tidy"),
}


def settings() -> dict:
    from pipeline import simulation
    from pipeline.io import load_params
    from pipeline.study import load_study
    params = load_params()
    sim = params["simulation"]
    chosen = {key: sim[key] for key in ("variants", "outcomes") if key in sim}   # older revisions: all of them
    return simulation.build_settings(params["synthetic"], params["clean"], params["construct"], params["estimate"],
                                     load_study("synthetic"), **chosen, wild_reps=sim["wild_bootstrap_reps"])


def stage_batch_size() -> int:
    """Draws per task of the simulation stage at the ``simulation:`` params (``run_study``'s default)."""
    from pipeline import parallel
    from pipeline.io import load_params
    sim = load_params()["simulation"]
    return parallel.default_chunk_size(int(sim["draws"]), int(sim["workers"]))


def batched(module, batch_name: str | None, draw_name: str) -> Callable:
    """``function(draws, settings) -> rows of each draw``: the module's batch function, or, in code from
    before batches (``analysis_tables``) or without them (``batch_name`` None), its one-draw function
    draw by draw."""
    batch = getattr(module, batch_name, None) if batch_name else None
    if batch is not None:
        return batch
    one = getattr(module, draw_name)
    return lambda draws, s: [one(i, s) for i in draws]


def cpu_per_draw(batch, n: int, s: dict, size: int) -> float:
    """CPU s per draw of draws 1..n in batches of ``size`` (the stage's tasks)."""
    start = time.process_time()
    for k in range(1, n + 1, size):
        batch(list(range(k, min(k + size, n + 1))), s)
    return (time.process_time() - start) / n


def shares(n: int, s: dict) -> list[tuple[str, float]]:
    from pipeline import simulation
    profile = cProfile.Profile()
    profile.enable()
    cpu_per_draw(simulation.main_batch, n, s, stage_batch_size())
    profile.disable()
    stats = pstats.Stats(profile).stats
    total = max(ct for (_, _, _), (_, _, _, ct, _) in stats.items())
    out = []
    for label, (suffix, name) in COMPONENTS.items():
        cum = sum(ct for (path, _, fn), (_, _, _, ct, _) in stats.items() if path.endswith(suffix) and fn == name)
        out.append((label, cum / total))
    return out


def draw_code() -> tuple[dict, Callable, Callable | None, int]:
    """(settings, main batch, few-cluster batch, draws per batch) of the code under ``ROOT``
    (:func:`batched`): ``pipeline.simulation``, or, in a revision from before it,
    ``scripts/simulation_study.py`` with the settings its stage used (no few-cluster draws: None)."""
    try:
        from pipeline import simulation
    except ImportError:
        if not (ROOT / "scripts" / "simulation_study.py").exists():
            raise
        sys.path.insert(0, str(ROOT / "scripts"))
        import simulation_study
        return simulation_study.build_settings(), batched(simulation_study, None, "one_draw"), None, 1
    has_batches = hasattr(simulation, "analysis_tables")
    return (settings(), batched(simulation, "main_batch", "one_draw"),
            batched(simulation, "few_cluster_batch", "few_cluster_draw"), stage_batch_size() if has_batches else 1)


def timings(draws: int, few: int) -> dict:
    """CPU seconds per main and few-clusters draw of the code under ``ROOT`` (after a warm-up draw
    0 of each kind), in batches as its stage runs them; ``few`` None where the code has no
    few-cluster draws."""
    s, main_batch, few_batch, size = draw_code()
    main_batch([0], s)
    if few_batch is not None:
        few_batch([0], s)
    return {"main": cpu_per_draw(main_batch, draws, s, size),
            "few": None if few_batch is None else cpu_per_draw(few_batch, few, s, size)}


def results(draws: int, few: int) -> dict:
    """Every main draw's rows and analysis tables (draws 0..draws-1) and few-cluster draws' rows, as
    the code under ``ROOT`` computes them: in the stage's batches (draw 0 alone, then batches of
    3, so that a batch is never the whole run) where the code has them, else one draw at a time."""
    from pipeline import simulation
    s = settings()
    def batches_of(n: int) -> list[list[int]]:
        return simulation.draw_batches(n, 3) if hasattr(simulation, "draw_batches") else [[i] for i in range(n)]

    batches = batches_of(draws)
    tables = {}
    for batch in batches:
        for variant in s["variants"]:
            generated = [simulation.synthetic.generate({**s["synthetic"], **simulation.VARIANTS[variant],
                                                        "seed": s["base_seed"] + i}) for i in batch]
            if hasattr(simulation, "analysis_tables"):
                made = simulation.analysis_tables(generated, s["cfg"], s["clean"], s["construct"],
                                                  checked=any(simulation.checked_draw(i) for i in batch))
            else:
                made = [simulation.analysis_table(None, s["cfg"], s["clean"], s["construct"],
                                                  simulation.checked_draw(i), g)[0] for i, g in zip(batch, generated)]
            tables.update({(i, variant): t for i, t in zip(batch, made)})
    few_batches = batches_of(few)
    main_batch = batched(simulation, "main_batch", "one_draw")
    few_batch = batched(simulation, "few_cluster_batch", "few_cluster_draw")
    return {"main": [rows for b in batches for rows in main_batch(b, s)], "tables": tables,
            "few": [rows for b in few_batches for rows in few_batch(b, s)]}


def _child_env(root: str) -> dict:
    return {**os.environ, "BENCH_CODE_ROOT": root, "PYTHONPATH": root}


def _archive(ref: str, here: Path, tmp: str) -> None:
    archive = subprocess.run(["git", "-C", str(here), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)


def check_identical(ref: str, draws: int, few: int) -> None:
    """This checkout's results against git revision ``ref``'s: AssertionError at the first difference."""
    import pandas as pd
    here = Path(__file__).resolve().parents[1]
    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        _archive(ref, here, tmp)
        for label, root in ((ref, tmp), ("this checkout", str(here))):
            out = Path(tmp) / f"results_{len(got)}.pkl"
            subprocess.run([sys.executable, __file__, "--child-results", str(out), "--check", str(draws),
                            "--few", str(few)], env=_child_env(root), check=True, cwd=root)
            got[label] = pickle.loads(out.read_bytes())
    old, new = got[ref], got["this checkout"]
    for key, table in old["tables"].items():
        pd.testing.assert_frame_equal(new["tables"][key], table, check_exact=True, obj=f"analysis table {key}")
    for kind in ("main", "few"):
        pd.testing.assert_frame_equal(pd.DataFrame([r for rows in new[kind] for r in rows]),
                                      pd.DataFrame([r for rows in old[kind] for r in rows]), check_exact=True,
                                      obj=f"{kind} draws")
    print(f"identical to {ref}: {draws} main draws ({len(old['tables'])} analysis tables, "
          f"{sum(map(len, old['main']))} estimate rows) and {few} few-cluster draws "
          f"({sum(map(len, old['few']))} rows), compared exactly")


def side_by_side(ref: str, draws: int, few: int, rounds: int) -> dict:
    """CPU s per draw of git revision ``ref``'s code and of this checkout's, in alternating child
    processes, the fastest of ``rounds`` each: {"reference": ..., "this checkout": ...}, each
    {"main": s, "few": s or None}. Prints a table."""
    here = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        _archive(ref, here, tmp)
        best: dict[str, dict] = {}
        for _ in range(rounds):
            for label, root in (("reference", tmp), ("this checkout", str(here))):
                out = subprocess.run([sys.executable, __file__, "--child", "--draws", str(draws), "--few", str(few)],
                                     env=_child_env(root),
                                     check=True, capture_output=True, text=True, cwd=root).stdout
                got = json.loads(out.strip().splitlines()[-1])
                best[label] = {k: None if v is None else min(v, best.get(label, got)[k]) for k, v in got.items()}
    print(f"CPU s/draw, fastest of {rounds} alternating runs ({draws} main, {few} few-clusters draws each):")
    print(f"  {'kind':<14}{ref:>14}{'this checkout':>16}{'ratio':>8}")
    for kind in ("main", "few"):
        old, new = best["reference"][kind], best["this checkout"][kind]
        ratio = f"{old / new:>7.2f}x" if old is not None else "      -"
        print(f"  {kind:<14}{'-' if old is None else f'{old:.3f}':>14}{new:>16.3f}{ratio}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--few", type=int, default=2)
    parser.add_argument("--against", help="a git revision to time side by side (e.g. main)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--check", type=int, metavar="N",
                        help="with --against: assert identical results on N main draws and --few few-cluster draws")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(timings(args.draws, args.few)))
        return
    if args.child_results:
        Path(args.child_results).write_bytes(pickle.dumps(results(args.check, args.few)))
        return
    if args.check:
        if not args.against:
            parser.error("--check needs --against REF")
        check_identical(args.against, args.check, args.few)
        return
    if args.against:
        side_by_side(args.against, args.draws, args.few, args.rounds)
    from pipeline import simulation
    s = settings()
    size = stage_batch_size()
    simulation.one_draw(0, s)              # warm-up: imports, caches, the validated draw
    simulation.few_cluster_draw(0, s)
    print(f"code: {simulation.__file__}")
    shape = f"{len(s['variants'])} variant(s) x {len(s['outcomes'])} outcome(s)"
    print(f"main draw ({shape}):".ljust(37) + f" {cpu_per_draw(simulation.main_batch, args.draws, s, size):.3f} "
          f"CPU s/draw over {args.draws} draws (batches of {size}, as the stage)")
    print(f"few-clusters draw (CR1, CR2, wild):   {cpu_per_draw(simulation.few_cluster_batch, args.few, s, size):.3f} "
          f"CPU s/draw over {args.few} draws")
    print("share of a main draw's CPU time (cProfile, cumulative):")
    for label, share in shares(args.draws, s):
        print(f"  {label:<36} {share:6.1%}")


if __name__ == "__main__":
    main()
