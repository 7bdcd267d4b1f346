"""Analysis of ablation studies: load results, test hypotheses, check milestones, report, promote, cost."""

from raysim.analysis.cost import study_cost, trial_cost
from raysim.analysis.hypotheses import (
    bootstrap_mean_ci,
    evaluate_hypotheses,
    evaluate_hypothesis,
    log_ratio_t_interval,
    paired_bootstrap_ratio,
    t_quantile,
    verdict,
)
from raysim.analysis.leaderboard import promote
from raysim.analysis.load import load, load_per_step, load_per_trajectory, load_results, load_study
from raysim.analysis.milestones import check_milestones
from raysim.analysis.report import hypothesis_table, write_report

__all__ = [
    "bootstrap_mean_ci",
    "check_milestones",
    "evaluate_hypotheses",
    "evaluate_hypothesis",
    "hypothesis_table",
    "load",
    "load_per_step",
    "load_per_trajectory",
    "load_results",
    "load_study",
    "log_ratio_t_interval",
    "paired_bootstrap_ratio",
    "promote",
    "study_cost",
    "t_quantile",
    "trial_cost",
    "verdict",
    "write_report",
]
