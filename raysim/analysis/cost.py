"""What a study cost: GPU hours and dollars per trial, per arm and in total."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from raysim.analysis.hypotheses import finite_float

DEFAULT_COST_PER_GPU_HOUR = 1.89  # USD, the guide's A100 rate


def trial_cost(result: Mapping[str, Any]) -> dict[str, float]:
    """GPU hours and USD of one trial: its `gpu_hours` metric (else wall time x GPU workers) x the config's rate."""
    resources = (result.get("config") or {}).get("resources") or {}
    rate = finite_float(resources.get("cost_per_gpu_hour"))
    rate = DEFAULT_COST_PER_GPU_HOUR if rate is None else rate
    gpu_hours = finite_float((result.get("metrics") or {}).get("gpu_hours"))
    if gpu_hours is None:
        wall = finite_float(result.get("wall_seconds")) or 0.0
        uses_gpu = bool(resources.get("use_gpu")) and not resources.get("force_cpu")
        workers = finite_float(resources.get("num_workers")) or 1.0
        gpu_hours = wall / 3600.0 * workers if uses_gpu else 0.0
    return {"gpu_hours": gpu_hours, "usd": gpu_hours * rate, "cost_per_gpu_hour": rate}


def study_cost(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Total GPU hours and USD of a study's trials, with a per-arm breakdown."""
    per_arm: dict[str, dict[str, float]] = {}
    total = {"gpu_hours": 0.0, "usd": 0.0, "trials": 0}
    for result in results:
        cost = trial_cost(result)
        arm = per_arm.setdefault(str(result.get("arm")), {"gpu_hours": 0.0, "usd": 0.0, "trials": 0})
        for bucket in (arm, total):
            bucket["gpu_hours"] += cost["gpu_hours"]
            bucket["usd"] += cost["usd"]
            bucket["trials"] += 1
    return {**total, "per_arm": per_arm}
