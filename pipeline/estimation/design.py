"""Design matrices: the treatment terms (and their crossed interactions), the by-sex columns of the
``by_gender`` model, the fixed-effect codes to absorb, and the order-respecting dropping of
collinear columns."""
from __future__ import annotations

import numpy as np
import scipy.linalg

from pipeline.estimation.absorb import COLLINEARITY_TOL, absorb
from pipeline.estimation.columns import GENDER
from pipeline.estimation.sample import Sample
from pipeline.estimation.spec import FEMALE, MALE, Spec, gender_param, interaction_name


def treatment_terms(s: Sample, pairs: tuple[tuple[str, str], ...]) -> dict[str, np.ndarray]:
    """Treatment terms of interest, in order: each treatment, then each crossed pair."""
    out = {t: v for t, v in s.treat.items()}
    for a, b in pairs:
        out[interaction_name((a, b))] = s.treat[a] * s.treat[b]
    return out


def check_variation(terms: dict[str, np.ndarray], where: str) -> None:
    for name, v in terms.items():
        if np.unique(v).size < 2:
            raise ValueError(f"treatment {name!r} has no variation in the {where} "
                             f"(all values {v[0]:g})")


def sex_masks(s: Sample, terms: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Row masks of women and men owners; each sex must be present with treatment variation."""
    masks = {FEMALE: s.female == 1, MALE: s.female == 0}
    for sex, m in masks.items():
        if not m.any():
            raise ValueError(f"by_gender model needs both sexes; no {sex} owners in the sample")
        check_variation({k: v[m] for k, v in terms.items()}, f"{sex} sample")
    return masks


def by_sex(X: dict[str, np.ndarray], columns: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> list[str]:
    """Add ``<name>:female`` and ``<name>:male`` (the column times each sex's mask) to X."""
    names = []
    for name, v in columns.items():
        for sex, m in masks.items():
            X[gender_param(name, sex)] = v * m
            names.append(gender_param(name, sex))
    return names


def absorbed_design(s: Sample, spec: Spec, pairs, by_gender: bool, sample: str):
    """(X columns without constant or FE dummies, terms of interest, FE codes to absorb).

    The fully interacted by_gender model absorbs FE x sex (just sex without FE): the same
    column space as sex-specific fixed-effect dummies and intercepts."""
    terms = treatment_terms(s, pairs)
    X: dict[str, np.ndarray] = {}
    fe_codes = [codes for codes, _ in s.fe.values()]
    if not by_gender:
        check_variation(terms, f"{sample!r} sample")
        X.update(terms)
        X.update(s.covariates)
        return X, list(terms), fe_codes
    masks = sex_masks(s, terms)
    sex_code = s.female.astype(np.int64)
    if not spec.gender_interact_all:
        X[GENDER] = s.female.copy()
    interest = by_sex(X, terms, masks)
    if spec.gender_interact_all:
        by_sex(X, s.covariates, masks)
        fe_codes = [c.astype(np.int64) * 2 + sex_code for c in fe_codes] or [sex_code]
    else:
        X.update(s.covariates)
    return X, interest, fe_codes


def drop_collinear_absorbed(X: dict[str, np.ndarray], fe_codes, w, protected):
    """Greedy, order-respecting selection of linearly independent columns after absorbing the
    fixed effects and the intercept: a column is dropped when the share of its raw (weighted) sum of
    squares left after the FE and the columns kept before it is below COLLINEARITY_TOL
    (a collinear protected column raises). Returns (kept names, dropped names)."""
    kept, dropped, _ = independent_absorbed(X, fe_codes, w, protected)
    return kept, dropped


def independent_absorbed(X: dict[str, np.ndarray], fe_codes, w, protected):
    """:func:`drop_collinear_absorbed` plus the kept columns with the fixed effects partialled out,
    ``(len(kept), n)`` (``absorb``'s rows, for ``ols.fe_ols(partialled=...)``), or None when the
    absorption was iterative (more than two FE): ``fe_ols`` then absorbs X itself."""
    names = list(X)
    M = np.column_stack([X[n] for n in names])
    Zd, absorbed = absorb(M, fe_codes or None, w)
    if w is None:
        G, raw = Zd @ Zd.T, np.einsum("ij,ij->j", M, M)
    else:
        G, raw = (Zd * w) @ Zd.T, np.einsum("ij,ij,i->j", M, M, w)
    kept: list[int] = []
    dropped: list[str] = []
    for j, name in enumerate(names):
        if kept:
            Gk = G[np.ix_(kept, kept)]
            v = scipy.linalg.solve(Gk, G[kept, j], assume_a="pos")
            d = G[j, j] - G[kept, j] @ v
        else:
            d = G[j, j]
        if raw[j] <= 0 or d <= COLLINEARITY_TOL * raw[j]:
            if name in protected:
                raise ValueError(f"term {name!r} is collinear with other regressors "
                                 f"(no independent variation in the sample)")
            dropped.append(name)
            continue
        kept.append(j)
    return [names[j] for j in kept], dropped, Zd[kept] if absorbed.is_exact else None
