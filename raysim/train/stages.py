"""The two training stages. `raysim.train.pipeline` runs both, then evaluation, in one Ray Train worker
(or in-process: `run_operator_stage(cfg, LocalStageContext(...))` is plain PyTorch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from raysim.config import OperatorStageConfig, RunConfig
from raysim.models.build import build_corrector, build_operator, load_model_state
from raysim.train.common import StudyData, load_checkpoint, prepare_data, seed_everything, select_device
from raysim.train.loop import fit


def _loaders(cfg: RunConfig, data: StudyData, stage, unroll: int, ctx: Any) -> tuple[DataLoader, DataLoader]:
    from raysim.data.dataset import PairDataset

    d = cfg.data
    train = PairDataset(data.path, data.splits["train"], d.x_stride, d.t_stride, unroll=unroll)
    val = PairDataset(data.path, data.splits["val"], d.x_stride, d.t_stride, unroll=1)
    if stage.validation_samples and len(val) > stage.validation_samples:  # evenly spread over trajectories and times
        val = Subset(val, np.linspace(0, len(val) - 1, stage.validation_samples).round().astype(int).tolist())
    generator = torch.Generator().manual_seed(cfg.seed)
    common = {"num_workers": d.loader_workers, "persistent_workers": d.loader_workers > 0}
    train_loader = DataLoader(train, batch_size=stage.batch_size, shuffle=True, drop_last=len(train) > stage.batch_size,
                              generator=generator, **common)
    val_loader = DataLoader(val, batch_size=stage.batch_size * 2, shuffle=False, **common)
    return ctx.prepare_loader(train_loader), ctx.prepare_loader(val_loader)


def relative_mse(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over samples of sum_x (p - y)^2 / sum_x y^2: the square of PDEBench's per-sample, per-time nRMSE."""
    err = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B,)
    return (err / target.float().pow(2).mean(dim=-1).clamp_min(eps)).mean()


class OperatorLoss:
    """Physical-space next-step loss, trained for rollouts: relative or plain MSE, pushforward unrolling, noise.

    A batch holds u (B, X) and target (B, S, X), the next S frames. The unroll length k of a batch is drawn
    uniformly from 1..k_max, where k_max grows linearly from 1 to `unroll_steps` over the first
    `unroll_curriculum` of training (`set_progress`, called by the loop). Pushforward: the first k - 1 steps
    run without gradient and only the last step is trained, on the state the model itself produced, so the
    model learns to correct its own errors without backpropagating through the rollout. `input_noise`
    (a fraction of the data's std) perturbs the state the trained step starts from. In eval mode: one step,
    no noise (the validation loss is the one-step loss).
    """

    def __init__(self, x: torch.Tensor, stage: OperatorStageConfig, data_std: float = 1.0):
        self.x, self.stage, self.data_std = x, stage, data_std
        self.progress = 0.0

    def set_progress(self, fraction: float) -> None:
        self.progress = float(fraction)

    def max_unroll(self) -> int:
        """The longest unroll allowed at the current training progress."""
        top = self.stage.unroll_steps
        ramp = self.stage.unroll_curriculum
        if top <= 1 or ramp <= 0:
            return top
        return 1 + min(top - 1, int(self.progress / ramp * top))

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u, target = batch["u"], batch["target"]  # (B, X), (B, S, X)
        grid = self.x.to(u.device)
        nu, dt = batch["nu"].float(), batch["dt"].float()
        k = 1
        if model.training:
            top = min(self.max_unroll(), target.shape[1])
            k = int(torch.randint(1, top + 1, ())) if top > 1 else 1
        if k > 1:
            with torch.no_grad():  # pushforward: the earlier steps give the input, not the gradient
                for _ in range(k - 1):
                    u = model(u, grid, nu, dt).detach()
        if model.training and self.stage.input_noise > 0:
            u = u + self.stage.input_noise * self.data_std * torch.randn_like(u)
        pred = model(u, grid, nu, dt)
        if self.stage.loss == "relative":
            return relative_mse(pred, target[:, k - 1])
        return torch.mean((pred.float() - target[:, k - 1]) ** 2)


def operator_loss(x: torch.Tensor, stage: OperatorStageConfig, data_std: float = 1.0) -> OperatorLoss:
    """The operator stage's loss (see `OperatorLoss`)."""
    return OperatorLoss(x, stage, data_std)


def run_operator_stage(cfg: RunConfig, ctx: Any) -> None:
    """Train the latent operator (encoder, processor, decoder together)."""
    seed_everything(cfg.seed, cfg.resources.torch_threads)
    device = select_device(cfg)
    data = prepare_data(cfg)
    model = build_operator(cfg.model)  # seeded by the global seed: every worker builds the same weights
    model.set_normalization(data.mean, data.std, data.step_std)
    train_loader, val_loader = _loaders(cfg, data, cfg.operator, cfg.operator.unroll_steps, ctx)
    fit(stage_name="operator", model=model, loss_fn=operator_loss(data.x, cfg.operator, data.std),
        train_loader=train_loader, val_loader=val_loader, stage=cfg.operator, ctx=ctx, device=device, seed=cfg.seed)


def load_stage_model(checkpoint_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The (EMA) model a stage checkpoint holds, rebuilt and frozen."""
    model = load_model_state(load_checkpoint(checkpoint_dir)["model"]).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def diffusion_loss():
    """Corrector training target on precomputed pairs: u, pred = frozen operator(u), target (see corrector_data)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u, pred, target = batch["u"], batch["pred"], batch["target"]  # each (B, X)
        return model.loss(u, pred.float(), target, batch["nu"].float(), batch["dt"].float())

    return loss_fn


def residual_std(pairs) -> float:
    """RMS of target - operator(u) over every training pair (the residuals the corrector learns)."""
    return max(pairs.residual_mean_square() ** 0.5, 1e-8)


def run_diffusion_stage(cfg: RunConfig, operator_checkpoint: str | Path, ctx: Any) -> None:
    """Train the diffusion residual corrector on the frozen operator's out-of-sample residuals.

    The pairs (`diffusion.residuals`, by default teacher-forced on validation trajectories the operator never
    trained on) are built once, here, under no_grad; r_std comes from the training pairs; each epoch logs the
    loss per noise level and the validation one-step nRMSE with and without the corrector (`corrector_metrics`).
    """
    from raysim.train.corrector_data import (
        METRIC_PAIRS,
        build_residual_pairs,
        corrector_metrics,
        teacher_forced_batch,
    )

    seed_everything(cfg.seed + 1, cfg.resources.torch_threads)
    device = select_device(cfg)
    data = prepare_data(cfg)
    operator = load_stage_model(operator_checkpoint, device)
    model = build_corrector(cfg.diffusion)
    model.set_normalization(data.mean, data.std)
    stage = cfg.diffusion
    train = build_residual_pairs(operator, cfg, data, "train", stage.residuals, device)
    val = build_residual_pairs(operator, cfg, data, "val", stage.residuals, device)
    if ctx.resume_dir() is None:
        model.set_residual_scale(residual_std(train))
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train, batch_size=stage.batch_size, shuffle=True,
                              drop_last=len(train) > stage.batch_size, generator=generator)
    val_loader = DataLoader(val, batch_size=stage.batch_size * 2, shuffle=False)
    metrics = corrector_metrics(train.take(train.spread(METRIC_PAIRS)), val.take(val.spread(METRIC_PAIRS)),
                                teacher_forced_batch(operator, val, METRIC_PAIRS, data.x, device),
                                cfg.evaluation.corrector_samples, cfg.seed + 2, device)
    fit(stage_name="diffusion", model=model, loss_fn=diffusion_loss(), train_loader=ctx.prepare_loader(train_loader),
        val_loader=ctx.prepare_loader(val_loader), stage=stage, ctx=ctx, device=device, seed=cfg.seed + 1,
        epoch_metrics=metrics)


def checkpoint_loads(location: str) -> bool:
    """Whether a stage checkpoint (path or URI) loads and rebuilds its model (weights_only=True)."""
    from ray.train import Checkpoint

    with Checkpoint(location).as_directory() as d:
        load_stage_model(d)
    return True
