"""The epoch loop both stages share: accumulation, clipping, EMA, NaN guard, validation, resume, report."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from raysim.config import StageConfig
from raysim.models.build import model_state
from raysim.train.common import (
    EMA,
    LoopState,
    StepGuard,
    autocast,
    load_checkpoint,
    make_optimizer,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap,
)

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fit(
    *,
    stage_name: str,
    model: nn.Module,
    loss_fn: LossFn,
    train_loader: DataLoader,
    val_loader: DataLoader,
    stage: StageConfig,
    ctx: Any,
    device: torch.device,
    seed: int = 0,
    epoch_metrics: Callable[[nn.Module], dict[str, float]] | None = None,
) -> LoopState:
    """Train `model` for `stage.epochs` epochs, reporting each epoch with a resumable checkpoint.

    `epoch_metrics(ema_model)`, if given, runs after each validation; its dict joins the epoch's record.
    """
    steps_per_epoch, opt_steps_per_epoch = epoch_steps(train_loader, stage)
    model.to(device)
    optimizer, scheduler = make_optimizer(model, stage, stage.epochs * opt_steps_per_epoch)
    ema = EMA(model, stage.ema_decay, stage.ema_warmup)
    state = LoopState()
    total_opt_steps = stage.epochs * opt_steps_per_epoch

    resume = ctx.resume_dir()
    if resume is not None:
        saved = load_checkpoint(resume)
        model.load_state_dict(saved["train_model"])
        ema.model.load_state_dict(saved["model"]["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        state = LoopState(**saved["loop"])
        ema.updates = state.ema_updates
        set_rng_state(saved["rng"])
    ema.model.to(device)
    model = ctx.prepare_model(model)
    guard = StepGuard(stage.max_nonfinite_steps, state.nonfinite_steps)

    while state.epoch < stage.epochs and state.bad_epochs <= _patience(stage):
        if hasattr(train_loader.sampler, "set_epoch"):  # DistributedSampler
            train_loader.sampler.set_epoch(state.epoch)
        if train_loader.generator is not None:  # the shuffle of epoch e depends on (seed, e) only: exact resume
            train_loader.generator.manual_seed(seed * 1_000_003 + state.epoch)
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        grad_norm_sum = torch.zeros((), device=device)
        samples = taken = opt_steps = 0
        optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            batch = _to(batch, device)
            if hasattr(loss_fn, "set_progress"):  # e.g. the operator loss's unroll curriculum
                loss_fn.set_progress(state.optimizer_steps / max(1, total_opt_steps))
            with autocast(stage, device):
                loss = loss_fn(model, batch)
            (loss / stage.grad_accum_steps).backward()
            loss_sum += loss.detach().float()
            samples += len(batch["u"])
            taken += 1
            if taken % stage.grad_accum_steps == 0 or i == steps_per_epoch - 1:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), stage.grad_clip)
                if guard.ok(loss.detach(), grad_norm):  # one host sync per optimiser step
                    optimizer.step()
                    ema.update(unwrap(model))
                    grad_norm_sum += grad_norm.detach()
                    opt_steps += 1
                state.optimizer_steps += 1
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
        train_seconds = time.perf_counter() - start
        val_loss = evaluate_loss(ema.model, loss_fn, val_loader, stage, device)
        extra = epoch_metrics(ema.model) if epoch_metrics is not None else {}
        state.epoch += 1
        state.nonfinite_steps = guard.count
        state.ema_updates = ema.updates
        if val_loss < state.best_val:
            state.best_val, state.bad_epochs = val_loss, 0
        else:
            state.bad_epochs += 1
        record = {
            "stage": stage_name,
            "epoch": state.epoch,
            "train_loss": float(loss_sum) / max(1, taken),
            "val_loss": val_loss,
            "grad_norm": float(grad_norm_sum) / max(1, opt_steps),
            "lr": scheduler.get_last_lr()[0],
            "nonfinite_steps": guard.count,
            "samples_per_second": samples / max(train_seconds, 1e-9),
            "epoch_seconds": train_seconds,
            **extra,
        }
        state.history.append(record)
        early = state.bad_epochs > _patience(stage) and state.epoch < stage.epochs
        record = {**record, "epochs_planned": stage.epochs, "early_stopped": early,
                  "stage_done": early or state.epoch >= stage.epochs}
        _report(ctx, record, unwrap(model), ema, optimizer, scheduler, state)
    return state


def epoch_steps(train_loader: DataLoader, stage: StageConfig) -> tuple[int, int]:
    """(micro-batches, optimiser steps) of one epoch."""
    steps = len(train_loader)
    if stage.max_steps_per_epoch:
        steps = min(steps, stage.max_steps_per_epoch)
    if getattr(train_loader, "drop_last", False) and steps >= stage.grad_accum_steps:
        # whole effective batches only: after an out-of-memory retry (half the micro-batch, twice the
        # accumulation) an epoch takes the same samples and optimiser steps, and the LR schedule still fits
        steps -= steps % stage.grad_accum_steps
    return steps, max(1, math.ceil(steps / stage.grad_accum_steps))


def _patience(stage: StageConfig) -> float:
    return stage.early_stopping_patience if stage.early_stopping_patience > 0 else math.inf


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, loss_fn: LossFn, loader: DataLoader, stage: StageConfig, device: torch.device
) -> float:
    """Mean loss over a loader, in eval mode."""
    model.eval()
    total = torch.zeros((), device=device)
    count = 0
    for batch in loader:
        batch = _to(batch, device)
        with autocast(stage, device):
            total += loss_fn(model, batch).float() * len(batch["u"])
        count += len(batch["u"])
    return float(total) / max(1, count)


def _report(ctx: Any, record: dict[str, Any], model: nn.Module, ema: EMA, optimizer, scheduler, state: LoopState):
    if ctx.rank != 0:
        ctx.report(record, None)
        return
    with tempfile.TemporaryDirectory(prefix="raysim-ckpt-") as tmp:
        save_checkpoint(
            Path(tmp),
            {
                "model": model_state(ema.model),  # the weights downstream stages and evaluation use
                "train_model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "loop": dataclasses.asdict(state),
                "rng": rng_state(),
            },
        )
        ctx.report(record, Path(tmp))
