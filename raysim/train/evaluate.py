"""Evaluate trained checkpoints on the test split, in physical space."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from raysim.config import RunConfig
from raysim.models.build import count_params, flops_per_sample
from raysim.train.common import load_checkpoint, load_trajectories, prepare_data, seed_everything, select_device
from raysim.train.stages import load_stage_model


def load_test_trajectories(cfg: RunConfig, data) -> tuple[torch.Tensor, float]:
    """The strided test trajectories (N, T, X), capped at `evaluation.max_trajectories`, and their true dt."""
    indices = data.splits["test"]
    if cfg.evaluation.max_trajectories:
        indices = indices[: cfg.evaluation.max_trajectories]
    return load_trajectories(cfg, data, indices, horizon=cfg.evaluation.horizon)


def make_reward(cfg: RunConfig):
    """The TTC physics reward with the config's conservation weight and resolved modes."""
    from raysim.eval.ttc import physics_reward

    return functools.partial(physics_reward, conservation_weight=cfg.evaluation.conservation_weight,
                             resolved_modes=cfg.evaluation.reward_modes)


@torch.no_grad()
def evaluate_models(
    cfg: RunConfig, operator: torch.nn.Module, corrector: torch.nn.Module | None, trajectories: torch.Tensor,
    x: torch.Tensor, dt: float, dx: float, nu: float,
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Metrics, per-trajectory arrays and per-step curves of an operator (and corrector) on trajectories (N, T, X)."""
    from raysim.eval.rollout import evaluate

    def cond(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((len(u),), nu, device=u.device), torch.full((len(u),), dt, device=u.device)

    last: dict[str, torch.Tensor] = {}

    def operator_step(u: torch.Tensor) -> torch.Tensor:
        if last.get("u") is u:  # the corrector's draws on a state the operator has just seen reuse its prediction
            return last["pred"]
        pred = operator(u, x, *cond(u))
        last.update(u=u, pred=pred)
        return pred

    def sample_candidates(u: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        assert corrector is not None
        return corrector.sample_many(u, operator_step(u), *cond(u), k=k, seed=seed)  # (k, B, X)

    ev = cfg.evaluation
    result = evaluate(trajectories, predict=operator_step, sample_candidates=sample_candidates if corrector else None,
                      dt=dt, dx=dx, nu=nu, horizon=ev.horizon, ttc_candidates=ev.ttc_candidates,
                      corrector_samples=ev.corrector_samples, seed=ev.seed, batch_size=ev.batch_size,
                      reward=make_reward(cfg), operator_candidate=ev.ttc_operator_candidate)
    metrics = dict(result.metrics)
    per_traj = {k: np.asarray(v) for k, v in result.per_trajectory.items()}
    per_step = {k: np.asarray(v) for k, v in result.per_step.items()}
    # the loaded models are frozen: count every weight, a complex one as two real numbers
    sizes = [count_params(m, trainable_only=False) for m in (operator, corrector) if m is not None]
    metrics["params_operator"] = float(sizes[0])
    metrics["params"] = float(sum(sizes))
    metrics["flops_per_sample"] = float(flops_per_sample(operator, trajectories.shape[-1]))
    metrics["test_trajectories"] = float(len(trajectories))
    return metrics, per_traj, per_step


def evaluate_checkpoints(
    cfg: RunConfig, operator_dir: str | Path, corrector_dir: str | Path | None
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Metrics (INTERFACE.md names), per-trajectory arrays and per-step curves of one trained config."""
    seed_everything(cfg.evaluation.seed, cfg.resources.torch_threads)
    device = select_device(cfg)
    data = prepare_data(cfg)
    operator = load_stage_model(operator_dir, device)
    corrector = load_stage_model(corrector_dir, device) if corrector_dir is not None else None
    trajectories, dt = load_test_trajectories(cfg, data)  # (N, T, X)
    metrics, per_traj, per_step = evaluate_models(cfg, operator, corrector, trajectories.to(device),
                                                  data.x.to(device), dt, data.dx, data.nu)
    if corrector_dir is not None:
        metrics.update(validation_metrics(corrector_dir))
    return metrics, per_traj, per_step


def validation_metrics(corrector_dir: str | Path) -> dict[str, float]:
    """The validation one-step nRMSE with and without the corrector, from the diffusion stage's last epoch."""
    history = load_checkpoint(corrector_dir)["loop"]["history"]
    last = history[-1] if history else {}
    return {k: float(v) for k, v in last.items() if k.startswith("val_nrmse_one_step_")}
