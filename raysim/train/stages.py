"""The two training stages. `raysim.train.pipeline` runs both, then evaluation, in one Ray Train worker
(or in-process: `run_operator_stage(cfg, LocalStageContext(...))` is plain PyTorch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from raysim.config import RunConfig
from raysim.models.build import build_corrector, build_operator, load_model_state
from raysim.train.common import StudyData, load_checkpoint, prepare_data, seed_everything, select_device
from raysim.train.loop import fit


def _loaders(cfg: RunConfig, data: StudyData, stage, unroll: int, ctx: Any) -> tuple[DataLoader, DataLoader]:
    from raysim.data.dataset import PairDataset

    d = cfg.data
    train = PairDataset(data.path, data.splits["train"], d.x_stride, d.t_stride, unroll=unroll)
    val = PairDataset(data.path, data.splits["val"], d.x_stride, d.t_stride, unroll=1)
    generator = torch.Generator().manual_seed(cfg.seed)
    common = {"num_workers": d.loader_workers, "persistent_workers": d.loader_workers > 0}
    train_loader = DataLoader(train, batch_size=stage.batch_size, shuffle=True, drop_last=len(train) > stage.batch_size,
                              generator=generator, **common)
    val_loader = DataLoader(val, batch_size=stage.batch_size * 2, shuffle=False, **common)
    return ctx.prepare_loader(train_loader), ctx.prepare_loader(val_loader)


def operator_loss(x: torch.Tensor, unroll: int):
    """Physical-space next-step MSE, unrolled autoregressively for `unroll` steps."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u, target = batch["u"], batch["target"]  # (B, X), (B, S, X)
        grid = x.to(u.device)
        loss = torch.zeros((), device=u.device)
        steps = min(unroll, target.shape[1])
        for k in range(steps):
            u = model(u, grid, batch["nu"].float(), batch["dt"].float())
            loss = loss + torch.mean((u.float() - target[:, k]) ** 2)
        return loss / steps

    return loss_fn


def run_operator_stage(cfg: RunConfig, ctx: Any) -> None:
    """Train the latent operator (encoder, processor, decoder together)."""
    seed_everything(cfg.seed, cfg.resources.torch_threads)
    device = select_device(cfg)
    data = prepare_data(cfg)
    model = build_operator(cfg.model)  # seeded by the global seed: every worker builds the same weights
    model.set_normalization(data.mean, data.std, data.step_std)
    train_loader, val_loader = _loaders(cfg, data, cfg.operator, cfg.operator.unroll_steps, ctx)
    fit(stage_name="operator", model=model, loss_fn=operator_loss(data.x, cfg.operator.unroll_steps),
        train_loader=train_loader, val_loader=val_loader, stage=cfg.operator, ctx=ctx, device=device, seed=cfg.seed)


def load_stage_model(checkpoint_dir: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """The (EMA) model a stage checkpoint holds, rebuilt and frozen."""
    model = load_model_state(load_checkpoint(checkpoint_dir)["model"]).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def diffusion_loss(operator: nn.Module, x: torch.Tensor):
    """Corrector training target on the frozen operator's residual."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        u, target = batch["u"], batch["target"][:, 0]  # (B, X), (B, X)
        nu, dt = batch["nu"].float(), batch["dt"].float()
        with torch.no_grad():
            pred = operator(u, x.to(u.device), nu, dt)
        return model.loss(u, pred.float(), target, nu, dt)

    return loss_fn


@torch.no_grad()
def residual_std(operator: nn.Module, loader: DataLoader, x: torch.Tensor, device, batches: int = 8) -> float:
    """RMS of target - operator(u) over the first training batches (training split only)."""
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        u = batch["u"].to(device)
        pred = operator(u, x.to(device), batch["nu"].float().to(device), batch["dt"].float().to(device))
        total += float(((batch["target"][:, 0].to(device) - pred) ** 2).sum())
        count += pred.numel()
    return max((total / max(count, 1)) ** 0.5, 1e-8)


def run_diffusion_stage(cfg: RunConfig, operator_checkpoint: str | Path, ctx: Any) -> None:
    """Train the diffusion residual corrector on the frozen operator's checkpoint."""
    seed_everything(cfg.seed + 1, cfg.resources.torch_threads)
    device = select_device(cfg)
    data = prepare_data(cfg)
    operator = load_stage_model(operator_checkpoint, device)
    model = build_corrector(cfg.diffusion)
    model.set_normalization(data.mean, data.std)
    train_loader, val_loader = _loaders(cfg, data, cfg.diffusion, 1, ctx)
    if ctx.resume_dir() is None:
        model.set_residual_scale(residual_std(operator, train_loader, data.x, device))
    fit(stage_name="diffusion", model=model, loss_fn=diffusion_loss(operator, data.x),
        train_loader=train_loader, val_loader=val_loader, stage=cfg.diffusion, ctx=ctx, device=device,
        seed=cfg.seed + 1)


def checkpoint_loads(location: str) -> bool:
    """Whether a stage checkpoint (path or URI) loads and rebuilds its model (weights_only=True)."""
    from ray.train import Checkpoint

    with Checkpoint(location).as_directory() as d:
        load_stage_model(d)
    return True
