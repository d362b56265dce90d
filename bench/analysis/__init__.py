"""Analysis: each task's relative change against its single-task baseline, and delta-m.

Conventions (both reported, named explicitly, in percent):

- ``delta_m_task``: task-level mean of relative *improvement*. For each task,
  average over its metrics of ``s_k (M_k - B_k) / |B_k|`` (``s_k = +1`` when
  higher is better, ``-1`` otherwise), then average over tasks. Positive is
  better. Each task's term is its *relative change*, the negative-transfer
  signal (Maninis et al. 2019; Vandenhende et al. 2021).
- ``delta_m_metric``: metric-level mean of relative *drop*, as Nash-MTL (Navon
  et al. 2022) and FAMO (Liu et al. 2023) report it:
  ``1/K sum_k (-1)^{d_k} (M_k - B_k) / B_k`` over all K metrics of all tasks,
  ``d_k = 1`` when higher is better. Lower is better.

``M`` is the multi-task trial's test metric and ``B`` that of the single-task
baseline trained with the same seed, so seeds pair up.

Uncertainty over seeds (``CI_METHOD``): a Student-t interval of the mean over seeds,
``mean ± t_{n-1, (1 + CI_LEVEL)/2} s / sqrt(n)`` (level ``CI_LEVEL`` = 95 %, ``s`` the
sample standard deviation). Unlike a percentile bootstrap, which with 2 seeds is just the
minimum and maximum of the two values, it widens as the number of seeds falls (with 2
seeds its half-width is 12.7 standard errors). One seed gives no interval (NaN bounds).
A task shows *negative transfer* when its whole interval of relative change lies below
zero; with fewer than ``MIN_SEEDS_VERDICT`` = 3 seeds no verdict is given (``verdict`` =
"too few seeds (n=2)"). :func:`bootstrap_ci` (percentile bootstrap, seeded) stays
available.

Across datasets (:func:`rankings`): strategies are ranked per dataset by
``delta_m_task`` (rank 1 = best, ties averaged), then the Friedman test and the
Nemenyi critical difference (Demšar 2006) are computed. They need at least 3
strategies and 2 datasets, and only strategies with a result on every dataset
take part (a complete block design).

Cost and quality (:func:`cost_quality`): ``delta_m_task`` against time per step
(and peak memory when speed records give one); the non-dominated strategies of
each dataset are marked.

Task relationships (:mod:`bench.analysis.probes`): gradient-conflict probes
(:func:`conflict_summary`): the conflict fraction (share of
probed steps with cosine < 0) is about 0.5 for orthogonal gradients from noise alone, so it
comes with the mean cosine and its Student-t interval (over the seeds' means; with one
seed, over that trial's probed steps) and whether that interval excludes 0; results from
fewer than ``bench.probes.MIN_PROBED_STEPS`` probed steps are flagged ``enough_probes =
False``.

Scalarization front (:func:`scalarization_front`): for datasets with 2 or 3
tasks, trials of the ``ls`` strategy (fixed weight vectors) trace the linear
scalarization front in the space of per-task relative changes; every other
strategy's mean point is marked dominated or not by a point of that front
(Xin et al. 2022; Kurin et al. 2022). The report computes the front against the best
single-task recipe (``trial_summary(..., reference="best")``), so that with a
``train_grid`` every point has the same reference.
"""

from __future__ import annotations

from bench.analysis.deltas import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    CI_LEVEL,
    CI_METHOD,
    GROUP,
    MIN_SEEDS_VERDICT,
    SCALARIZATION,
    bootstrap_ci,
    component_name,
    convergence,
    delta_m_intervals,
    is_scalarization,
    per_task_changes,
    strategy_label,
    t_interval,
    task_change_intervals,
    transfer_verdict,
    trial_costs,
    trial_summary,
)
from bench.analysis.probes import Relationships, conflict_summary, pair_matrix, relationships
from bench.analysis.ranking import (
    Rankings,
    cost_quality,
    dominated_by,
    near_front,
    nemenyi_cd,
    pareto_mask,
    rankings,
    scalarization_front,
)

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "CI_LEVEL",
    "CI_METHOD",
    "GROUP",
    "MIN_SEEDS_VERDICT",
    "SCALARIZATION",
    "Rankings",
    "Relationships",
    "bootstrap_ci",
    "component_name",
    "conflict_summary",
    "convergence",
    "cost_quality",
    "delta_m_intervals",
    "dominated_by",
    "is_scalarization",
    "near_front",
    "nemenyi_cd",
    "pair_matrix",
    "pareto_mask",
    "per_task_changes",
    "rankings",
    "relationships",
    "scalarization_front",
    "strategy_label",
    "t_interval",
    "task_change_intervals",
    "transfer_verdict",
    "trial_costs",
    "trial_summary",
]
