"""The guide's per-run milestone checks, computed from a trial's result.json instead of eyeballed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from raysim.analysis.hypotheses import finite_float
from raysim.config import METRICS

STAGES = ("operator", "diffusion")
DEFAULT_THRESHOLDS = {"operator": 1e-3, "diffusion": 1e-2}  # the guide's "final loss" milestones
CONVERGENCE_SLACK = 0.05  # the last third of the diffusion loss curve may not end more than 5% above its start
TTC_METRICS = ("nrmse_ttc", "nrmse_ttc_random", "ttc_improvement_pct", "diffusion_final_loss")
MILESTONES = (
    "trial finished",
    "operator final loss",
    "no NaN/Inf gradients",
    "all epochs run",
    "diffusion loss converged",
    "evaluation metrics logged",
    "checkpoints loadable",
)


def _check(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": passed, "detail": detail}


def _stages(result: Mapping[str, Any]) -> list[str]:
    """The stages a trial runs: the diffusion stage unless its config disables it."""
    diffusion = (result.get("config") or {}).get("diffusion") or {}
    return list(STAGES) if diffusion.get("enabled", True) else ["operator"]


def _losses(result: Mapping[str, Any], stage: str) -> list[float]:
    history = (result.get("history") or {}).get(stage) or []
    return [float(e.get("train_loss", math.nan)) for e in history if isinstance(e, Mapping)]


def _final_loss(result: Mapping[str, Any], stage: str) -> float | None:
    """A stage's final training loss: its `<stage>_final_loss` metric, else the last epoch's train_loss."""
    value = (result.get("metrics") or {}).get(f"{stage}_final_loss")
    if value is not None:
        return float(value)
    losses = _losses(result, stage)
    return losses[-1] if losses else None


def _threshold(result: Mapping[str, Any], stage: str, stage_thresholds: Mapping[str, float] | None) -> float:
    if stage_thresholds and stage in stage_thresholds:
        return float(stage_thresholds[stage])
    configured = finite_float(((result.get("config") or {}).get(stage) or {}).get("final_loss_threshold"))
    return DEFAULT_THRESHOLDS[stage] if configured is None else configured


def _operator_loss(result: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    loss = _final_loss(result, "operator")
    if loss is None:
        return _check("operator final loss", False, "no operator loss recorded")
    if not math.isfinite(loss):
        return _check("operator final loss", False, f"final loss is {loss}")
    passed = loss < threshold
    return _check("operator final loss", passed, f"{loss:.3g} {'<' if passed else '>='} {threshold:g}")


def _gradients(result: Mapping[str, Any], stages: list[str]) -> dict[str, Any]:
    info = result.get("stage_info") or {}
    parts, passed = [], True
    for stage in stages:
        count = (info.get(stage) or {}).get("nonfinite_steps")
        if count is None:
            history = (result.get("history") or {}).get(stage) or []
            counts = [e.get("nonfinite_steps") for e in history if isinstance(e, Mapping)]
            count = sum(int(c) for c in counts if c is not None) if counts else None
        losses = _losses(result, stage)
        bad_losses = sum(1 for v in losses if not math.isfinite(v))
        if count is None:
            passed = False
            parts.append(f"{stage}: no count of non-finite steps")
            continue
        if int(count) or bad_losses:
            passed = False
        text = f"{stage}: {int(count)} non-finite step(s)"
        if bad_losses:
            text += f", {bad_losses} non-finite epoch loss(es)"
        parts.append(text)
    return _check("no NaN/Inf gradients", passed, "; ".join(parts))


def _epochs(result: Mapping[str, Any], stages: list[str]) -> dict[str, Any]:
    info = result.get("stage_info") or {}
    parts, passed = [], True
    for stage in stages:
        stage_info = info.get(stage) or {}
        run = stage_info.get("epochs_run")
        if run is None:
            run = len((result.get("history") or {}).get(stage) or [])
        planned = stage_info.get("epochs_planned", ((result.get("config") or {}).get(stage) or {}).get("epochs"))
        if planned is None:
            passed = False
            parts.append(f"{stage}: {run} epoch(s), plan unknown")
        elif int(run) >= int(planned):
            parts.append(f"{stage}: {int(run)}/{int(planned)}")
        elif stage_info.get("early_stopped"):
            parts.append(f"{stage}: early-stopped on validation loss after {int(run)}/{int(planned)} epochs")
        else:
            passed = False
            parts.append(f"{stage}: stopped after {int(run)}/{int(planned)} epochs without early stopping")
    return _check("all epochs run", passed, "; ".join(parts))


def _diffusion_converged(result: Mapping[str, Any], stages: list[str], threshold: float) -> dict[str, Any]:
    name = "diffusion loss converged"
    if "diffusion" not in stages:
        return _check(name, None, "diffusion stage disabled")
    loss = _final_loss(result, "diffusion")
    if loss is None:
        return _check(name, False, "no diffusion loss recorded")
    if not math.isfinite(loss):
        return _check(name, False, f"final loss is {loss}")
    if loss >= threshold:
        return _check(name, False, f"final loss {loss:.3g} >= {threshold:g}")
    losses = _losses(result, "diffusion")
    if any(not math.isfinite(v) for v in losses):
        return _check(name, False, "non-finite epoch losses")
    detail = f"final loss {loss:.3g} < {threshold:g}"
    if len(losses) >= 2:
        start = min(len(losses) - 2, (2 * len(losses)) // 3)
        first, last = losses[start], losses[-1]
        if last > first * (1 + CONVERGENCE_SLACK):
            return _check(name, False, f"{detail}, but rising over the last third ({first:.3g} -> {last:.3g})")
        detail += f", not rising over the last third ({first:.3g} -> {last:.3g})"
    return _check(name, True, detail)


def _metrics_logged(result: Mapping[str, Any], stages: list[str]) -> dict[str, Any]:
    metrics = result.get("metrics") or {}
    required = [m for m in METRICS if "diffusion" in stages or m not in TTC_METRICS]
    missing = [m for m in required if m not in metrics or metrics[m] is None]
    bad = [m for m in required if m not in missing and finite_float(metrics[m]) is None]
    if not missing and not bad:
        return _check("evaluation metrics logged", True, f"{len(required)} metrics, all finite")
    parts = []
    if missing:
        parts.append("missing: " + ", ".join(missing))
    if bad:
        parts.append("non-finite: " + ", ".join(bad))
    return _check("evaluation metrics logged", False, "; ".join(parts))


def _checkpoints(
    result: Mapping[str, Any], stages: list[str], load_checkpoint: Callable[[str], bool] | None
) -> dict[str, Any]:
    name = "checkpoints loadable"
    if load_checkpoint is None:
        return _check(name, None, "not checked (no checkpoint loader given)")
    info = result.get("stage_info") or {}
    parts, passed = [], True
    for stage in stages:
        path = (info.get(stage) or {}).get("checkpoint")
        if not path:
            passed = False
            parts.append(f"{stage}: no checkpoint")
            continue
        try:
            ok = bool(load_checkpoint(str(path)))
            error = ""
        except Exception as exc:  # a loader failing on a broken file is the answer we want
            ok, error = False, f" ({type(exc).__name__}: {exc})"
        passed = passed and ok
        parts.append(f"{stage}: {'loads' if ok else 'does not load'}{error}")
    return _check(name, passed, "; ".join(parts))


def check_milestones(
    result: Mapping[str, Any],
    stage_thresholds: Mapping[str, float] | None = None,
    load_checkpoint: Callable[[str], bool] | None = None,
) -> list[dict[str, Any]]:
    """The guide's milestones for one trial: [{"name", "passed": True | False | None (not checked), "detail"}]."""
    status = result.get("status") or "running"
    if status == "running":
        return [_check(MILESTONES[0], None, "still running")] + [
            _check(name, None, "trial not finished") for name in MILESTONES[1:]
        ]
    checks = []
    if status == "finished":
        checks.append(_check("trial finished", True, "finished"))
    else:
        error = str(result.get("error") or "").strip().splitlines()
        checks.append(_check("trial finished", False, f"{status}: {error[-1] if error else 'no message'}"))
    stages = _stages(result)
    checks.append(_operator_loss(result, _threshold(result, "operator", stage_thresholds)))
    checks.append(_gradients(result, stages))
    checks.append(_epochs(result, stages))
    checks.append(_diffusion_converged(result, stages, _threshold(result, "diffusion", stage_thresholds)))
    checks.append(_metrics_logged(result, stages))
    checks.append(_checkpoints(result, stages, load_checkpoint))
    return checks
