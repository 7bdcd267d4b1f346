"""Evaluation: PDEBench-compatible metrics, autoregressive rollout and test-time compute."""

from raysim.eval.metrics import (
    bc_violation,
    bc_violation_per_sample,
    conservation_gap,
    conservation_gap_per_sample,
    frmse_bands,
    nrmse,
    nrmse_per_sample,
)
from raysim.eval.rollout import (
    METRIC_KEYS,
    EvalResult,
    candidate_seed,
    evaluate,
    rollout,
    ttc_rollout,
    with_operator_candidate,
)
from raysim.eval.ttc import (
    burgers_residual,
    burgers_tendency,
    low_pass,
    physics_reward,
    select_per_sample,
    select_random,
)

__all__ = [
    "METRIC_KEYS",
    "EvalResult",
    "bc_violation",
    "bc_violation_per_sample",
    "burgers_residual",
    "burgers_tendency",
    "candidate_seed",
    "conservation_gap",
    "conservation_gap_per_sample",
    "evaluate",
    "frmse_bands",
    "low_pass",
    "nrmse",
    "nrmse_per_sample",
    "physics_reward",
    "rollout",
    "select_per_sample",
    "select_random",
    "ttc_rollout",
    "with_operator_candidate",
]
