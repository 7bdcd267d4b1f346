"""The guide's per-run milestone checks, computed from a trial's result.json instead of eyeballed."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from raysim.analysis.hypotheses import finite_float
from raysim.config import METRICS

STAGES = ("operator", "diffusion")
DEFAULT_THRESHOLDS = {"operator": 1e-3}  # the guide's "final loss" milestone of the operator
CONVERGENCE_SLACK = 0.05  # the last third of the diffusion loss curve may not end more than 5% above its start
LEVEL_MARGIN = 0.05  # every noise level's validation loss must end at least 5% below its predict-nothing loss
TTC_METRICS = ("nrmse_ttc", "nrmse_ttc_random", "ttc_improvement_pct", "diffusion_final_loss")
MILESTONES = (
    "trial finished",
    "operator final loss",
    "no NaN/Inf gradients",
    "all epochs run",
    "diffusion loss converged",
    "corrector helps",
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


def _level_losses(record: Mapping[str, Any]) -> list[tuple[int, float, float]]:
    """(level, validation loss, predict-nothing loss) of every noise level an epoch record holds."""
    out = []
    k = 0
    while f"val_loss_level{k}" in record and f"reference_loss_level{k}" in record:
        out.append((k, float(record[f"val_loss_level{k}"]), float(record[f"reference_loss_level{k}"])))
        k += 1
    return out


def _diffusion_converged(result: Mapping[str, Any], stages: list[str]) -> dict[str, Any]:
    """Every noise level's final validation loss at least LEVEL_MARGIN below the loss of predicting nothing.

    The reference of level k is alpha_k^2 + sigma_k^2 E[r^2] (v_hat = 0 on the validation residuals), so
    the comparison holds at every noise level, where one fixed number cannot. The training loss must also
    not rise over the last third of the epochs. `diffusion.final_loss_threshold` is not used.
    """
    name = "diffusion loss converged"
    if "diffusion" not in stages:
        return _check(name, None, "diffusion stage disabled")
    history = [e for e in (result.get("history") or {}).get("diffusion") or [] if isinstance(e, Mapping)]
    levels = _level_losses(history[-1]) if history else []
    if not levels:
        return _check(name, False, "no per-level validation loss recorded")
    if any(not (math.isfinite(v) and math.isfinite(ref)) for _, v, ref in levels):
        return _check(name, False, "non-finite per-level losses")
    losses = _losses(result, "diffusion")
    if any(not math.isfinite(v) for v in losses):
        return _check(name, False, "non-finite epoch losses")
    parts = [f"level {k}: {v:.3g} vs {ref:.3g} ({(v / ref - 1) * 100:+.0f}%)" for k, v, ref in levels]
    short = [k for k, v, ref in levels if not v <= (1 - LEVEL_MARGIN) * ref]
    detail = "validation loss vs predict-nothing: " + ", ".join(parts)
    if short:
        levels_text = ", ".join(map(str, short))
        return _check(name, False, f"{detail}; level(s) {levels_text} not {LEVEL_MARGIN:.0%} below")
    if len(losses) >= 2:
        start = min(len(losses) - 2, (2 * len(losses)) // 3)
        first, last = losses[start], losses[-1]
        if last > first * (1 + CONVERGENCE_SLACK):
            return _check(name, False, f"{detail}, but rising over the last third ({first:.3g} -> {last:.3g})")
    return _check(name, True, detail)


def _corrector_helps(result: Mapping[str, Any], stages: list[str]) -> dict[str, Any]:
    """The corrected one-step nRMSE on validation (mean of the corrector samples) below the operator's alone.

    From the metrics, else the diffusion stage's last epoch record; the test rollout's numbers join the
    detail when the metrics hold them.
    """
    name = "corrector helps"
    if "diffusion" not in stages:
        return _check(name, None, "diffusion stage disabled")
    metrics = result.get("metrics") or {}
    history = [e for e in (result.get("history") or {}).get("diffusion") or [] if isinstance(e, Mapping)]
    last = history[-1] if history else {}
    values = {}
    for key in ("val_nrmse_one_step_corrected", "val_nrmse_one_step_operator"):
        values[key] = finite_float(metrics.get(key, last.get(key)))
    corrected, alone = values["val_nrmse_one_step_corrected"], values["val_nrmse_one_step_operator"]
    if corrected is None or alone is None:
        return _check(name, None, "no validation one-step nRMSE with and without the corrector recorded")
    detail = f"validation one-step nRMSE {corrected:.4g} corrected vs {alone:.4g} alone{_change(corrected, alone)}"
    rollout, rollout_alone = (finite_float(metrics.get(k)) for k in ("nrmse_rollout", "nrmse_rollout_operator"))
    if rollout is not None and rollout_alone is not None:
        detail += f"; test rollout {rollout:.4g} vs {rollout_alone:.4g}{_change(rollout, rollout_alone)}"
    return _check(name, corrected < alone, detail)


def _change(value: float, reference: float) -> str:
    """` (+3.1%)`: value against reference, or nothing when the reference is not positive."""
    return f" ({(value / reference - 1) * 100:+.1f}%)" if reference > 0 else ""


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
    checks.append(_diffusion_converged(result, stages))
    checks.append(_corrector_helps(result, stages))
    checks.append(_metrics_logged(result, stages))
    checks.append(_checkpoints(result, stages, load_checkpoint))
    return checks
