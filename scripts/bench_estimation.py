"""Benchmark one clustered fixed-effects regression: fastols vs pyfixest vs statsmodels dummies.

The regression of METHODS.md ("Software measured here"): ``y ~ treat + x + 50 strata FE``,
cluster-robust (CR1) by 1,000 clusters (clusters nested in strata, treatment assigned by
cluster), at 1e5, 1e6 and 5e6 rows.

Every (tool, size) runs in a fresh subprocess that generates the same data from the seed
(checked by a checksum), then times two calls of the estimator on the full data: the *first*
call (lazy imports, compilation, caches) and a *warm* second call. Memory: the worker reads
its own ``VmRSS`` / ``VmHWM`` from ``/proc/self/status`` and resets the high-water mark
(``/proc/self/clear_refs``) before each call, so "peak" is the process's largest resident set
*during that call* (data included, data generation excluded) and "extra" is that peak minus the
resident set just before the call. ``RUSAGE_CHILDREN`` is not used: it keeps the maximum over
all children waited for, so one large run would pollute the next.

* fastols: ``pipeline.estimation.ols.fe_ols`` in /work/main/.venv (this interpreter).
* pyfixest 0.60: ``feols("y ~ treat + x | strata", vcov={"CRV1": "cluster"})`` in the separate
  virtualenv ``.bench/venv`` (``--pyfixest-python``), never installed in .venv.
* statsmodels: ``sm.OLS`` on [const, treat, x, 49 strata dummies], ``cov_type="cluster"``,
  ``use_t=True`` (the test oracle of ``pipeline.estimation``), one call only (no compilation);
  at 5e6 rows only with ``--with-statsmodels-5e6`` (about 44 s and 10 GB).

Usage:  .venv/bin/python scripts/bench_estimation.py [--sizes 1e5,1e6,5e6]
            [--with-statsmodels-5e6] [--seed 0] [--json .bench/estimation.json]
The table is printed and written as JSON (default ``.bench/estimation.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_CLUSTERS = 1000
N_STRATA = 50
FORMULA = "y ~ treat + x | strata"
TERMS = ["treat", "x"]


# --------------------------------------------------------------------------------------------
# Data (identical in every worker: same numpy version in both virtualenvs, same seed)
# --------------------------------------------------------------------------------------------
def make_data(n: int, seed: int):
    """DataFrame y, treat, x (float64), strata, cluster (int64). Clusters nested in strata."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, N_CLUSTERS, n)
    stratum_of_cluster = np.arange(N_CLUSTERS) % N_STRATA
    treat_of_cluster = np.zeros(N_CLUSTERS)
    for s in range(N_STRATA):                       # half the clusters of each stratum treated
        idx = np.flatnonzero(stratum_of_cluster == s)
        treat_of_cluster[rng.permutation(idx)[: idx.size // 2]] = 1.0
    stratum_effect = rng.normal(0.0, 1.0, N_STRATA)
    cluster_shock = rng.normal(0.0, 0.5, N_CLUSTERS)
    strata = stratum_of_cluster[cluster]
    treat = treat_of_cluster[cluster]
    x = rng.normal(0.0, 1.0, n)
    y = rng.normal(0.0, 2.0, n)                     # built in place: few temporaries
    y += 1.0
    y += 0.25 * treat
    y += 0.5 * x
    y += stratum_effect[strata]
    y += cluster_shock[cluster]
    df = pd.DataFrame({"y": y, "treat": treat, "x": x, "strata": strata, "cluster": cluster},
                      copy=False)
    return df


# --------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------
def _status() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024 / 1e9          # GB
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _estimator(tool: str):
    """A function df -> (params dict, bse dict) for the tool; imports done here (untimed)."""
    if tool == "fastols":
        sys.path.insert(0, str(ROOT))
        from pipeline.estimation.ols import fe_ols

        def run(df):
            r = fe_ols(df["y"], df[TERMS], fe=[df["strata"]], cluster=df["cluster"])
            return r.params.to_dict(), r.bse.to_dict()
        return run
    if tool == "pyfixest":
        import pyfixest as pf

        def run(df):
            f = pf.feols(FORMULA, data=df, vcov={"CRV1": "cluster"})
            return ({k: float(v) for k, v in f.coef().items()},
                    {k: float(v) for k, v in f.se().items()})
        return run
    if tool == "statsmodels":
        import pandas as pd
        import statsmodels.api as sm

        def run(df):
            dummies = pd.get_dummies(df["strata"], prefix="strata", drop_first=True, dtype=float)
            exog = pd.concat([pd.Series(1.0, index=df.index, name="const"), df[TERMS], dummies],
                             axis=1)
            res = sm.OLS(df["y"], exog).fit(cov_type="cluster",
                                            cov_kwds={"groups": df["cluster"].to_numpy()},
                                            use_t=True)
            return ({k: float(res.params[k]) for k in TERMS},
                    {k: float(res.bse[k]) for k in TERMS})
        return run
    raise ValueError(tool)


def worker(tool: str, n: int, seed: int, calls: int, out: str) -> None:
    t0 = time.perf_counter()
    run = _estimator(tool)
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    df = make_data(n, seed)
    t_data = time.perf_counter() - t0
    rec = {"tool": tool, "n": n, "seed": seed, "import_s": t_import, "data_s": t_data,
           "checksum": float(df["y"].sum() + df["x"].sum() + df["treat"].sum()),
           "data_gen_peak_gb": _status()["VmHWM"], "calls": []}
    for _ in range(calls):
        reset = _reset_peak()
        before = _status()["VmRSS"]
        t0 = time.perf_counter()
        params, bse = run(df)
        secs = time.perf_counter() - t0
        st = _status()
        rec["calls"].append({"seconds": secs, "rss_before_gb": before,
                             "peak_gb": st["VmHWM"] if reset else float("nan"),
                             "extra_gb": st["VmHWM"] - before if reset else float("nan")})
    rec["params"], rec["bse"] = params, bse
    rec["ru_maxrss_gb_since_last_reset"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    with open(out, "w") as fh:
        json.dump(rec, fh)


# --------------------------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------------------------
def _spawn(python: str, tool: str, n: int, seed: int, calls: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        path = tmp.name
    cmd = [python, str(Path(__file__).resolve()), "--worker", tool, "--n", str(n),
           "--seed", str(seed), "--calls", str(calls), "--out", path]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    try:
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} at n={n} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        with open(path) as fh:
            rec = json.load(fh)
    finally:
        os.unlink(path)
    rec["process_wall_s"] = wall
    return rec


def _max_rel(a: dict, b: dict) -> float:
    return max(abs(a[k] / b[k] - 1.0) for k in TERMS)


def _fmt_n(n: int) -> str:
    e = int(np.floor(np.log10(n)))
    m = n / 10 ** e
    return f"{m:g}e{e}"


PYFIXEST_PYTHON = ROOT / ".bench" / "venv" / "bin" / "python"
PYFIXEST_SETUP = "make .bench/venv/.installed   (or make bench, which does it first; pins: scripts/bench-pyfixest.lock)"
DEFAULT_SIZES = "1e5,1e6,5e6"


def parse_sizes(text: str) -> list[int]:
    return [int(float(s)) for s in text.split(",")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-statsmodels-5e6", action="store_true",
                    help="also run statsmodels dummies at 5e6 rows (about 44 s / 10 GB)")
    ap.add_argument("--pyfixest-python", default=str(PYFIXEST_PYTHON))
    ap.add_argument("--json", default=str(ROOT / ".bench" / "estimation.json"))
    # worker mode (internal)
    ap.add_argument("--worker", choices=["fastols", "pyfixest", "statsmodels"])
    ap.add_argument("--n", type=int)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    if args.worker:
        worker(args.worker, args.n, args.seed, args.calls, args.out)
        return 0
    if not Path(args.pyfixest_python).exists():
        print(f"pyfixest interpreter {args.pyfixest_python} not found; create it with\n  {PYFIXEST_SETUP}",
              file=sys.stderr)
        return 2
    results = run(parse_sizes(args.sizes), args.seed, args.pyfixest_python,
                  statsmodels_max_n=None if args.with_statsmodels_5e6 else 1_000_000)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")
    return 0 if all(v["fastols_not_slower_and_within_memory"] for v in results["verdicts"]) else 1


def run(sizes: list[int], seed: int, pyfixest_python: str, statsmodels_max_n: int | None = 1_000_000) -> dict:
    """fastols and pyfixest (and statsmodels up to ``statsmodels_max_n`` rows; 0: never, None:
    always) at each size, each in its own process; prints the table, returns the results (runs,
    verdicts: speed-ups and peak ratio per size)."""
    env_info = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS",
                                               "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    results = {"regression": f"{FORMULA}, CRV1 by cluster", "n_strata": N_STRATA,
               "n_clusters": N_CLUSTERS, "seed": seed, "cpus": os.cpu_count(),
               "python": platform.python_version(), "env": env_info, "runs": []}
    rows = []
    for n in sizes:
        plan = [("fastols", sys.executable, 2), ("pyfixest", pyfixest_python, 2)]
        if statsmodels_max_n is None or n <= statsmodels_max_n:
            plan.append(("statsmodels", sys.executable, 1))
        recs = {}
        for tool, python, calls in plan:
            print(f"  running {tool} at n={_fmt_n(n)} ...", file=sys.stderr, flush=True)
            recs[tool] = _spawn(python, tool, n, seed, calls)
        sums = {r["checksum"] for r in recs.values()}
        if len(sums) != 1:
            raise RuntimeError(f"workers generated different data at n={n}: {sums}")
        fo = recs["fastols"]
        for tool, rec in recs.items():
            first, warm = rec["calls"][0], rec["calls"][-1]
            row = {
                "n": n, "tool": tool, "first_s": first["seconds"],
                "warm_s": warm["seconds"] if len(rec["calls"]) > 1 else None,
                "peak_gb": max(c["peak_gb"] for c in rec["calls"]),
                "extra_gb": max(c["extra_gb"] for c in rec["calls"]),
                "data_gen_peak_gb": rec["data_gen_peak_gb"],
                "params": rec["params"], "bse": rec["bse"],
                "coef_rel_diff_vs_fastols": None if tool == "fastols"
                else _max_rel(rec["params"], fo["params"]),
                "se_rel_diff_vs_fastols": None if tool == "fastols"
                else _max_rel(rec["bse"], fo["bse"]),
                "calls": rec["calls"], "process_wall_s": rec["process_wall_s"],
            }
            rows.append(row)
        results["runs"] = rows

    # ---- table --------------------------------------------------------------------------
    hdr = (f"{'rows':>5} {'tool':<12} {'first call':>10} {'warm call':>10} {'peak RSS':>9} "
           f"{'extra':>8} {'coef rel diff':>14} {'SE rel diff':>12}")
    lines = [f"Regression {FORMULA}, CRV1 by {N_CLUSTERS} clusters, {N_STRATA} strata "
             f"(seed {seed}, {os.cpu_count()} cores)",
             "peak RSS: largest resident set during a call (data included); extra: peak minus "
             "RSS before the call; rel diff: max over treat, x, vs fastols", hdr, "-" * len(hdr)]

    def f_s(v):
        return "-" if v is None else f"{v:9.3f}s"

    def f_d(v):
        return "-" if v is None else f"{v:.1e}"

    for r in rows:
        lines.append(f"{_fmt_n(r['n']):>5} {r['tool']:<12} {f_s(r['first_s']):>10} "
                     f"{f_s(r['warm_s']):>10} {r['peak_gb']:7.3f}GB {r['extra_gb']:6.3f}GB "
                     f"{f_d(r['coef_rel_diff_vs_fastols']):>14} "
                     f"{f_d(r['se_rel_diff_vs_fastols']):>12}")
    verdicts = []
    for n in sizes:
        fo = next(r for r in rows if r["n"] == n and r["tool"] == "fastols")
        pf = next(r for r in rows if r["n"] == n and r["tool"] == "pyfixest")
        ok = (fo["warm_s"] <= pf["warm_s"] and fo["first_s"] <= pf["first_s"]
              and fo["peak_gb"] <= pf["peak_gb"])
        verdicts.append({"n": n, "fastols_not_slower_and_within_memory": ok,
                         "speedup_warm": pf["warm_s"] / fo["warm_s"],
                         "speedup_first": pf["first_s"] / fo["first_s"],
                         "peak_ratio": fo["peak_gb"] / pf["peak_gb"]})
        lines.append(f"n={_fmt_n(n)}: fastols vs pyfixest: {pf['first_s'] / fo['first_s']:.1f}x "
                     f"faster first call, {pf['warm_s'] / fo['warm_s']:.1f}x faster warm, peak "
                     f"{fo['peak_gb']:.2f} vs {pf['peak_gb']:.2f} GB -> "
                     f"{'OK' if ok else 'TARGET MISSED'}")
    results["verdicts"] = verdicts
    table = "\n".join(lines)
    print(table)
    results["table"] = table
    return results


if __name__ == "__main__":
    sys.exit(main())
