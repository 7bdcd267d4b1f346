"""Evaluate trained checkpoints on the test split, in physical space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysim.config import RunConfig
from raysim.models.build import flops_per_sample
from raysim.train.common import prepare_data, seed_everything, select_device
from raysim.train.stages import load_stage_model


def _size(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # the loaded models are frozen: count every weight


def load_test_trajectories(cfg: RunConfig, data) -> tuple[torch.Tensor, float]:
    """The strided test trajectories (N, T, X), capped at `evaluation.max_trajectories`, and their true dt."""
    from raysim.data.dataset import RolloutDataset

    indices = data.splits["test"]
    if cfg.evaluation.max_trajectories:
        indices = indices[: cfg.evaluation.max_trajectories]
    dataset = RolloutDataset(data.path, indices, cfg.data.x_stride, cfg.data.t_stride, horizon=cfg.evaluation.horizon)
    return torch.stack([dataset[i]["u"] for i in range(len(dataset))]), float(dataset.dt)


@torch.no_grad()
def evaluate_checkpoints(
    cfg: RunConfig, operator_dir: str | Path, corrector_dir: str | Path | None
) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Metrics (INTERFACE.md names), per-trajectory arrays and per-step curves of one trained config."""
    from raysim.eval.rollout import evaluate

    seed_everything(cfg.evaluation.seed, cfg.resources.torch_threads)
    device = select_device(cfg)
    data = prepare_data(cfg)
    operator = load_stage_model(operator_dir, device)
    corrector = load_stage_model(corrector_dir, device) if corrector_dir is not None else None
    trajectories, dt = load_test_trajectories(cfg, data)  # (N, T, X)
    trajectories = trajectories.to(device)
    x = data.x.to(device)

    def cond(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((len(u),), data.nu, device=u.device), torch.full((len(u),), dt, device=u.device)

    def operator_step(u: torch.Tensor) -> torch.Tensor:
        return operator(u, x, *cond(u))

    def sample_candidates(u: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        return corrector.sample_many(u, operator_step(u), *cond(u), k=k, seed=seed)  # (k, B, X)

    def corrected_step(u: torch.Tensor) -> torch.Tensor:
        # the baseline: mean of `corrector_samples` draws with fixed seeds
        return sample_candidates(u, cfg.evaluation.corrector_samples, cfg.evaluation.seed).mean(0)

    kwargs: dict[str, Any] = {"dt": dt, "dx": data.dx, "nu": data.nu, "horizon": cfg.evaluation.horizon,
                              "ttc_candidates": cfg.evaluation.ttc_candidates, "seed": cfg.evaluation.seed,
                              "batch_size": cfg.evaluation.batch_size}
    result = evaluate(trajectories, predict=corrected_step if corrector else operator_step,
                      sample_candidates=sample_candidates if corrector else None, **kwargs)
    metrics = dict(result.metrics)
    per_traj = {k: np.asarray(v) for k, v in result.per_trajectory.items()}
    per_step = {k: np.asarray(v) for k, v in result.per_step.items()}
    if corrector is not None:  # the operator alone, so a reader sees what the corrector adds
        alone = evaluate(trajectories, predict=operator_step, sample_candidates=None, **kwargs)
        metrics["nrmse_rollout_operator"] = alone.metrics["nrmse_rollout"]
        metrics["nrmse_one_step_operator"] = alone.metrics["nrmse_one_step"]
        per_traj["nrmse_rollout_operator"] = np.asarray(alone.per_trajectory["nrmse_rollout"])
    nx = trajectories.shape[-1]
    metrics["params_operator"] = float(_size(operator))
    metrics["params"] = metrics["params_operator"] + float(_size(corrector) if corrector else 0)
    metrics["flops_per_sample"] = float(flops_per_sample(operator, nx))
    metrics["test_trajectories"] = float(len(trajectories))
    return metrics, per_traj, per_step
