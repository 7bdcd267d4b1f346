"""Loop helpers shared by both training stages: data, device, schedule, EMA, guards, checkpoints."""

from __future__ import annotations

import copy
import fcntl
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from raysim.config import DataConfig, RunConfig, StageConfig

# ----------------------------------------------------------------------------- data


def data_file(data: DataConfig) -> Path:
    """The HDF5 file a config trains on: its `path`, or the cache file it generates."""
    if data.path:
        return Path(data.path).expanduser().resolve()
    g = data.generate
    name = f"burgers_nu{g.nu:g}_n{g.samples}_x{g.nx}_t{g.nt}_T{g.t_end:g}_s{g.seed}.h5"
    return Path(data.cache_dir).expanduser().resolve() / name


def ensure_data(data: DataConfig) -> Path:
    """The data file, generated (once, under a file lock) if it is a cache file not yet there."""
    path = data_file(data)
    if path.is_file() or data.path:
        return path
    from raysim.data.burgers import available_cpus, generate

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():  # on every CPU available (Ray tasks from a Ray driver); same bytes as serial
            g = data.generate
            generate(path, nu=g.nu, samples=g.samples, nx=g.nx, nt=g.nt, t_end=g.t_end, seed=g.seed,
                     workers=available_cpus(), progress=True)
    return path


@dataclass
class StudyData:
    """Splits, normalisation and grid of one config's data (train statistics only)."""

    path: Path
    splits: dict[str, np.ndarray]
    mean: float
    std: float
    step_std: float  # RMS of one strided step's change
    x: torch.Tensor  # (X,) strided grid
    dx: float
    nu: float


def prepare_data(cfg: RunConfig) -> StudyData:
    """Split by trajectory and fit the normaliser on the training split alone."""
    from raysim.data.dataset import Normalizer, grid, split_indices
    from raysim.data.pdebench import open_info

    path = ensure_data(cfg.data)
    info = open_info(path)
    splits = split_indices(info.n, tuple(cfg.data.splits), seed=cfg.data.split_seed)
    norm = Normalizer.fit(path, splits["train"], cfg.data.x_stride, cfg.data.t_stride)
    x = torch.as_tensor(np.asarray(grid(path, cfg.data.x_stride)), dtype=torch.float32)
    dx = float(x[1] - x[0])
    nu = info.nu if info.nu is not None else cfg.data.generate.nu
    return StudyData(path=path, splits=splits, mean=float(norm.mean), std=float(norm.std),
                     step_std=float(norm.step_std), x=x, dx=dx, nu=float(nu))


def load_trajectories(cfg: RunConfig, data: StudyData, indices: Any, horizon: int | None = None
                      ) -> tuple[torch.Tensor, float]:
    """The strided trajectories at file `indices` from frame 0 (over `horizon` steps; None: all), (N, T, X)
    float32, and their true dt."""
    from raysim.data.dataset import RolloutDataset

    dataset = RolloutDataset(data.path, indices, cfg.data.x_stride, cfg.data.t_stride, horizon=horizon)
    try:
        return torch.stack([dataset[i]["u"] for i in range(len(dataset))]), float(dataset.dt)
    finally:
        dataset.close()


# ----------------------------------------------------------------------------- device, seeds


def select_device(cfg: RunConfig) -> torch.device:
    """CUDA when present and asked for, else CPU (`force_cpu` for fake-GPU clusters)."""
    if cfg.resources.use_gpu and not cfg.resources.force_cpu and torch.cuda.is_available():
        try:
            import ray.train.torch

            return ray.train.torch.get_device()
        except Exception:  # outside a Train worker
            return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed torch, numpy and random; cap torch's threads if asked."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if threads:
        torch.set_num_threads(threads)


def autocast(stage: StageConfig, device: torch.device):
    """bf16 autocast on GPU ('auto'/'bf16'), a no-op context on CPU unless 'bf16' is forced."""
    enabled = stage.amp == "bf16" or (stage.amp == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


# ----------------------------------------------------------------------------- optimisation


def make_optimizer(model: nn.Module, stage: StageConfig, total_steps: int):
    """AdamW with linear warmup then cosine decay, stepped once per optimiser step."""
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": stage.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=stage.lr,
    )
    warmup = max(1, int(stage.warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class EMA:
    """Exponential moving average of a model's weights (decay 0: a plain copy).

    With `warmup`, update n (counting from 0) uses decay min(decay, (1 + n) / (10 + n)): the average forgets
    the initial weights within tens of updates instead of hundreds (with 0.99 and no warm-up, 30 % of the
    weights after 120 updates would still be the initialisation).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update applies."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for ema_t, t in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_t.dtype.is_floating_point or ema_t.dtype.is_complex:  # complex: an FNO's spectral weights
                ema_t.mul_(d).add_(t.detach(), alpha=1 - d)
            else:
                ema_t.copy_(t)
        self.updates += 1


class NonFiniteError(RuntimeError):
    """Too many steps with non-finite loss or gradients."""


@dataclass
class StepGuard:
    """Counts skipped non-finite steps; raises past the configured limit."""

    limit: int
    count: int = 0

    def ok(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
        if torch.isfinite(loss) and torch.isfinite(grad_norm):
            return True
        self.count += 1
        if self.count > self.limit:
            raise NonFiniteError(f"{self.count} steps with non-finite loss or gradients (limit {self.limit})")
        return False


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


# ----------------------------------------------------------------------------- checkpoints


@dataclass
class LoopState:
    """What a checkpoint restores besides the weights: epoch, best val, history, RNG."""

    epoch: int = 0
    best_val: float = float("inf")
    bad_epochs: int = 0
    nonfinite_steps: int = 0
    ema_updates: int = 0
    optimizer_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def save_checkpoint(directory: Path, payload: dict[str, Any]) -> None:
    """Write `state.pt` atomically into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, directory / "state.pt")


def replace_dir(source: Path, target: Path) -> None:
    """Make `target` a copy of `source`: copied beside it first, so a kill leaves the old or the new one."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """`state.pt` of a checkpoint directory, loaded with weights_only=True."""
    return torch.load(Path(directory) / "state.pt", map_location="cpu", weights_only=True)


def rng_state() -> dict[str, Any]:
    """Torch RNG state (CPU, and CUDA when present), weights_only-safe."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
