"""Tests for pipeline.estimation.spec: building and validating a specification.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from _estimation_data import Y, TREATS
from pipeline.estimation.spec import Spec


def test_from_params_rejects_unknown_key():
    with pytest.raises(ValueError, match="clustre"):
        Spec.from_params({"treatments": TREATS, "clustre": "cluster_id"}, Y)


def test_vcov_validation_and_no_engine():
    with pytest.raises(ValueError, match="vcov"):
        Spec(Y, TREATS, vcov="HC3")
    with pytest.raises(ValueError, match="needs Spec.cluster"):
        Spec(Y, TREATS, vcov="CR3", cluster=None)
    with pytest.raises(TypeError, match="engine"):                  # one fitting path: no engine
        Spec(Y, TREATS, engine="statsmodels")
    spec = Spec.from_params({"treatments": TREATS, "vcov": "CR3"}, Y)
    assert spec.vcov == "CR3" and Spec(Y, TREATS).vcov == "CR1"
