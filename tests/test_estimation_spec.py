"""Tests for pipeline.estimation.spec: building and validating a specification.
"""
from __future__ import annotations

import pytest

from _estimation_data import Y, TREATS
from _params import make_spec, params_group
from pipeline.estimation.spec import Spec
from pipeline.io import MissingParamError


def test_from_params_rejects_unknown_key():
    with pytest.raises(ValueError, match="clustre"):
        Spec.from_params(params_group("estimate", treatments=TREATS, clustre="cluster_id"), Y)


def test_from_params_missing_key_names_it():
    """No Spec field has a code default: a group without one of them fails, naming it."""
    group = params_group("estimate", treatments=TREATS)
    del group["missing_baseline"]
    with pytest.raises(MissingParamError, match="'estimate' has no key 'missing_baseline'"):
        Spec.from_params(group, Y)


def test_vcov_validation_and_no_engine():
    with pytest.raises(ValueError, match="vcov"):
        make_spec(Y, TREATS, vcov="HC3")
    with pytest.raises(ValueError, match="needs Spec.cluster"):
        make_spec(Y, TREATS, vcov="CR3", cluster=None)
    with pytest.raises(ValueError, match="engine"):                 # one fitting path: no engine
        make_spec(Y, TREATS, engine="statsmodels")
    assert make_spec(Y, TREATS, vcov="CR3").vcov == "CR3"
    assert make_spec(Y, TREATS).vcov == params_group("estimate")["vcov"]
