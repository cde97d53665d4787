"""The real params.yaml groups for tests, with a test's overrides on top: tests give explicit
values this way instead of re-inventing defaults (the code has none)."""
from __future__ import annotations

import functools

from pipeline.estimation.spec import Spec
from pipeline.io import load_params


@functools.lru_cache(maxsize=1)
def _params() -> dict:
    return load_params()


def params_group(name: str, **overrides) -> dict:
    """params.yaml's group ``name`` (a fresh copy) with ``overrides`` on top."""
    return {**_params()[name], **overrides}


def make_spec(outcome: str, treatments, **overrides) -> Spec:
    """A Spec from params.yaml's ``estimate:`` group, with ``treatments`` and ``overrides`` given."""
    return Spec.from_params(params_group("estimate", treatments=treatments, **overrides), outcome)


def study_kw(**overrides) -> dict:
    """The stage keys ``estimate_study`` takes, from params.yaml's ``estimate:`` group (level only,
    no round models, no q-value families unless overridden)."""
    group = params_group("estimate")
    return {"transforms": ["level"], "by_round": False, "trim_top_pct": group["trim_top_pct"], "q_families": None,
            "alpha": group["alpha"], "power": group["mde_power"], **overrides}


def tidy_kw() -> dict:
    """``alpha`` and ``power`` of tidy tables, from params.yaml's ``estimate:`` group."""
    group = params_group("estimate")
    return {"alpha": group["alpha"], "power": group["mde_power"]}
