"""Intention-to-treat effects of skills and capital on micro-enterprise profits.

Estimation follows the "Estimation and inference" section of ``METHODS.md``:

* **ANCOVA**: the firm's baseline value of the outcome (``Y_bl``, 0 where missing) and a
  missing-baseline dummy (``Y_bl_missing``) are controls, so firms without a baseline are kept
  (``Spec.missing_baseline = "dummy"``). With ``"listwise"`` the rows whose baseline is missing
  (``Y_bl_missing == 1``) leave the estimation sample instead and ``Y_bl`` alone is the control
  (complete-case ANCOVA; ``n_obs`` counts the rows kept).
  When a study has no baseline (neither column exists) the model is the plain regression.
* Follow-up rounds are **pooled** (``followup`` is True) with **round fixed effects**, and
  **strata fixed effects** enter every regression (absorbed).
* **Cluster-robust** standard errors at the unit of randomisation, exactly as statsmodels'
  ``cov_type="cluster"`` computes them (CR1: ``G/(G-1) * (N-1)/(N-K)``, ``K`` counting every
  regressor including the fixed-effect dummies), with t(G-1) inference (``use_t=True``).
  ``Spec.cluster = None`` gives HC1 with t(N-K). ``Spec.vcov = "CR2"`` (the ``vcov:`` param) gives
  instead Bell-McCaffrey CR2 (``A_g = (I - H_gg)^-1/2`` with the hat matrix of the full model,
  FE dummies included; no further factor; Bell-McCaffrey df per contrast) and ``"CR3"`` the cluster
  jackknife of MacKinnon, Nielsen & Webb (2023), ``(G-1)/G sum_g (b_(g) - b) (b_(g) - b)'``
  with the fixed effects re-estimated in every leave-one-cluster-out fit, t(G-1):
  the simulation study found CR1 about 9% too small for the by_gender model (strata x sex FE,
  ~7-8 clusters per stratum); CR2 reached 93-97% coverage in every cell at 500 draws, CR3 was
  conservative (up to 98%). Every covariance is an entry of :mod:`pipeline.estimation.variance`.
* One fitting path: the fixed effects are absorbed (:func:`pipeline.estimation.ols.fe_ols`), only the
  non-FE parameters are reported (results an ``AbsorbedResults``); the by_gender fully interacted
  model absorbs FE x sex. The tests check every model against statsmodels with explicit dummies
  (estimates and CR1/HC1 covariance to 1e-8). Under CR2 each t-test (coefficient or women - men
  contrast) uses its Bell-McCaffrey degrees of freedom instead of G-1.
* **Survey weights** (``Spec.weights``) give WLS; control means are then weighted too.

Models per outcome (the ``model`` column of the tidy table):

``pooled`` (sample ``all``)
    y ~ treatments (+ their interaction where the study crosses them) + baseline + FE (+ controls).
``by_gender`` (sample ``all``)
    Every treatment term ``T`` enters twice, as ``T:female`` and ``T:male``, so each coefficient is
    directly the effect for women / for men, plus the ``female_owner`` main effect. With
    ``Spec.gender_interact_all = True`` (default) the baseline, controls and fixed-effect dummies are
    *also* interacted with gender: the model is then the two separate regressions stacked, so the
    women (men) coefficients equal the ``women_only`` (``men_only``) coefficients exactly, while
    the covariance between the women and men coefficients (non-zero when clusters contain both
    sexes) is estimated jointly. With ``gender_interact_all = False`` the controls and FE are common
    to both sexes; the guarantee is then that ``T_diff`` equals the coefficient (and cluster SE) of
    ``T x female`` in the usual ``T + T x female`` parameterisation of the same model.
    Rows ``T_diff`` (women - men) come from ``t_test``; its p-value tests equal effects.
``women_only`` / ``men_only``
    The pooled specification on each sex separately.
``round_<r>`` (sample ``all``; with ``by_round``)
    The pooled specification on the rows of follow-up round r only (round FE then drop out).
``descriptive`` (sample ``women``; NON-CAUSAL)
    Women's profit on the skills index and credit access with controls (:func:`fit_descriptive`).

Optional ``controls`` (``Spec.controls``, the ``controls:`` param) must be complete in the
estimation sample: use the construct stage's baseline pairs, e.g. ``owner_age_bl`` and
``owner_age_bl_missing``.

Outcome transforms (the ``transform`` column; :func:`transform_outcome`): ``level`` (as cleaned,
winsorised), ``unwinsorised``, ``log`` (y > 0 only), ``ihs`` (asinh) and ``trimmed`` (top
``trim_top_pct`` % per round dropped). Beside every effect: the control-group mean, the effect as
% of it (not for log / ihs), the minimum detectable effect ``mde`` = (t_0.8 + t_0.975) SE with the
t degrees of freedom of the row's own interval (Bell-McCaffrey under CR2; also as % of the control
mean) and Anderson's sharpened ``q_value`` within a family of outcomes (:func:`add_q_values`).
The attrition table's joint F-test of the treatment terms is on F(q, G - 1) under every clustered
covariance, CR2 included (columns ``joint_df_num``, ``joint_df_denom``).

The stage (:mod:`pipeline.estimation.stage`: ``run`` / ``estimate_all``) also writes attrition by arm
(:func:`attrition_table`), Lee bounds (``lee_bounds.lee_bounds_table``), the baseline balance
tables (``balance.balance_tables``), quantile treatment effects (``qte.qte_table``), plot data
(:func:`coefficients_by_gender`) and key estimates for the metrics (``OUTPUT_FILES``).

Term names in the tidy table: ``treat_skills``, ``treat_capital``, ``treat_skills_x_treat_capital``
(pooled and split models) and ``<term>_women``, ``<term>_men``, ``<term>_diff`` (by_gender).
In the fit results (``params``) the parameter names are ``treat_skills:treat_capital`` and
``treat_capital:female`` etc.

A study with only women (``female_owner`` all 1) has no ``by_gender`` or ``men_only`` rows (and
symmetrically for only men).

Modules: ``spec`` (Spec, stage keys, term labels; the words themselves are in
:mod:`pipeline.vocabulary`), ``columns`` (column checks),
``sample`` (estimation sample, baseline columns, transforms), ``design`` (terms, by-sex columns,
dummies, collinearity), ``absorb`` (fixed-effect absorption), ``variance`` (covariance registry),
``ols`` (the absorbed OLS/WLS), ``fit`` (one model of a Spec), ``wild`` (wild cluster restricted
bootstrap), ``tables`` (tidy tables, q-values, descriptive model, plot data) and ``stage``
(attrition, estimate_all and its add-ons, run).
"""
