"""The average effect of a study's arms of one intervention, as one more tidy term.

When two arms test the same intervention against one control group (acz2018: a finance and a
marketing training), their estimates share the control group's noise. The synthesis needs one
effect per study and intervention, with a standard error that accounts for that correlation:
the average of the arm coefficients weighted by each arm's number of treated observations in
the estimation sample (what pooling the arms into one treatment group would weight them by),
a linear combination whose variance comes from the model's own covariance (and, under CR2,
its Bell-McCaffrey degrees of freedom) through ``results.t_test``.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from pipeline.arms import arm_average_term


def _weights(X, columns: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
    counts = np.array([float((X[c].to_numpy() != 0).sum()) for c in columns])
    return tuple((c, float(n / counts.sum())) for c, n in zip(columns, counts))


def arm_average_terms(results, terms, arm_groups: Mapping[str, tuple[str, ...]]) -> tuple:
    """TermDefs (``pipeline.estimation.fit.TermDef``) of the arm averages of one fitted model.

    ``terms``: the model's own TermDefs (for the control means); ``arm_groups``: intervention ->
    its arm terms (:func:`pipeline.arms.intervention_arm_groups`). A group is averaged only when
    all its arms are parameters of the model. In the by-gender model the women's and the men's
    averages (each weighted by that sex's treated counts) and their difference are reported."""
    from pipeline.estimation.fit import TermDef

    X = results.wild_design.X
    params = set(results.params.index)
    control_mean = {td.term: td.control_mean for td in terms}
    out = []
    for intervention, arm_terms in arm_groups.items():
        name = arm_average_term(intervention)
        if all(a in params for a in arm_terms):
            out.append(TermDef(name, _weights(X, arm_terms), control_mean[arm_terms[0]]))
        elif all(f"{a}:female" in params and f"{a}:male" in params for a in arm_terms):
            women = _weights(X, tuple(f"{a}:female" for a in arm_terms))
            men = _weights(X, tuple(f"{a}:male" for a in arm_terms))
            out.append(TermDef(f"{name}_women", women, control_mean[f"{arm_terms[0]}_women"]))
            out.append(TermDef(f"{name}_men", men, control_mean[f"{arm_terms[0]}_men"]))
            out.append(TermDef(f"{name}_diff", women + tuple((p, -w) for p, w in men), np.nan))
    return tuple(out)
