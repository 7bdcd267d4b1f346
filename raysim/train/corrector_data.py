"""The diffusion corrector's data: residuals of the frozen operator on states it did not train on.

`build_residual_pairs` rolls the frozen operator out once, under no_grad, from frame 0 of every trajectory
of a split, and keeps the pairs (u, pred = operator(u), target = the true next frame):

- "rollout": u is the operator's own rollout state (frame 0 is the truth), so pred is the rollout's next
  state and the residual target - pred holds the error the operator makes, and carries, along a rollout:
  the states the corrector meets at test time.
- "teacher_forced": u is the true frame (the operator's in-sample residuals on the training split).
- "held_out" (the default): teacher-forced on the validation trajectories, which the operator never
  trained on; half of them train the corrector, the other half validate it.

A split of N trajectories of T frames on X points holds two float32 arrays of N T X values (the truth and
the operator's inputs or predictions): 128 trajectories x 41 frames x 256 points is 11 MB.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from raysim.config import RunConfig
from raysim.eval.metrics import nrmse_per_sample
from raysim.eval.rollout import rollout
from raysim.models.diffusion import predict_nothing_loss
from raysim.train.common import StudyData, load_trajectories

Residuals = Literal["rollout", "teacher_forced"]
METRIC_PAIRS = 128  # pairs per split on which the per-epoch corrector metrics are measured (cost: 3k denoiser calls)


class ResidualPairs(Dataset):
    """Pairs (u, pred, target) of N trajectories, each field (X,): pair (n, t) has u = inputs[n, t],
    pred = preds[n, t], target = truth[n, t + 1]; `keep` (P,) lists the flat indices n (T - 1) + t in use."""

    def __init__(self, inputs: Tensor, preds: Tensor, truth: Tensor, nu: float, dt: float,
                 keep: Tensor | None = None):
        n, t, x = truth.shape
        assert inputs.shape == preds.shape == (n, t - 1, x), (
            f"inputs and preds must be ({n}, {t - 1}, {x}), got {tuple(inputs.shape)} and {tuple(preds.shape)}"
        )
        self.inputs, self.preds, self.truth = inputs, preds, truth  # (N, T-1, X), (N, T-1, X), (N, T, X)
        self.nu, self.dt = float(nu), float(dt)
        self.steps = t - 1
        self.keep = torch.arange(n * (t - 1)) if keep is None else keep.long()  # (P,)

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int) -> dict[str, Tensor | float]:
        n, t = divmod(int(self.keep[i]), self.steps)
        return {"u": self.inputs[n, t], "pred": self.preds[n, t], "target": self.truth[n, t + 1],
                "nu": self.nu, "dt": self.dt}

    def take(self, index: Tensor) -> dict[str, Tensor]:
        """The pairs at positions `index` (P,) of `keep` as one batch: u, pred, target (P, X), nu, dt (P,)."""
        flat = self.keep[index]
        n, t = flat // self.steps, flat % self.steps
        full = torch.full((len(index),), 1.0)
        return {"u": self.inputs[n, t], "pred": self.preds[n, t], "target": self.truth[n, t + 1],
                "nu": full * self.nu, "dt": full * self.dt}

    def spread(self, count: int) -> Tensor:
        """At most `count` positions spaced evenly over the pairs (every trajectory and rollout depth)."""
        total = len(self)
        if total <= count:
            return torch.arange(total)
        return torch.linspace(0, total - 1, count).round().long()

    def residual_mean_square(self) -> float:
        """mean((target - pred)^2) over the pairs in use, in physical units."""
        n, t = self.keep // self.steps, self.keep % self.steps
        return float(((self.truth[n, t + 1].double() - self.preds[n, t].double()) ** 2).mean())


def rollout_keep(inputs: Tensor, truth: Tensor, max_nrmse: float) -> Tensor:
    """Flat indices of the pairs before each rollout's state first drifts past `max_nrmse` from the truth.

    inputs (N, T-1, X) are the rollout states, truth (N, T, X); a state's error is its nRMSE against
    the true frame of the same time. Beyond that point the state no longer says where the truth is.
    """
    err = nrmse_per_sample(inputs.double(), truth[:, :-1].double())  # (N, T-1)
    ok = torch.cumprod((err <= max_nrmse).long(), dim=1).bool()  # True until the first excess
    return torch.nonzero(ok.reshape(-1)).squeeze(1)


def load_split(cfg: RunConfig, data: StudyData, split: str, limit: int | None) -> tuple[Tensor, float]:
    """The first `limit` (None: all) strided trajectories of a split, (N, T, X) float32, and their dt."""
    return load_trajectories(cfg, data, data.splits[split][:limit] if limit else data.splits[split])


@torch.no_grad()
def operator_pairs(
    operator: nn.Module, truth: Tensor, x: Tensor, nu: float, dt: float, residuals: Residuals,
    device: torch.device, batch_size: int = 64, max_nrmse: float = 1.0,
) -> ResidualPairs:
    """The frozen operator's pairs on trajectories (N, T, X): inputs and predictions per `residuals` mode.

    With "rollout", each rollout's pairs end where its state drifts past `max_nrmse` (`rollout_keep`).
    """
    n, t, _ = truth.shape
    grid = x.to(device)

    def step(u: Tensor) -> Tensor:
        return operator(u, grid, torch.full((len(u),), nu, device=device), torch.full((len(u),), dt, device=device))

    if residuals not in ("rollout", "teacher_forced"):
        raise ValueError(f"residuals must be 'rollout' or 'teacher_forced', got {residuals!r}")
    parts = []
    for start in range(0, n, batch_size):
        traj = truth[start : start + batch_size].to(device)  # (B, T, X)
        if residuals == "rollout":
            parts.append(rollout(step, traj[:, 0], t - 1).float().cpu())  # (B, T, X), frame 0 the truth
        else:
            parts.append(torch.stack([step(traj[:, k]).float() for k in range(t - 1)], dim=1).cpu())  # (B, T-1, X)
    computed = torch.cat(parts)
    if residuals == "rollout":  # inputs and predictions are views of the one rollout
        inputs, preds = computed[:, :-1], computed[:, 1:]
        return ResidualPairs(inputs, preds, truth, nu, dt, rollout_keep(inputs, truth, max_nrmse))
    return ResidualPairs(truth[:, :-1], computed, truth, nu, dt)


def build_residual_pairs(
    operator: nn.Module, cfg: RunConfig, data: StudyData, split: str, residuals: str, device: torch.device
) -> ResidualPairs:
    """`operator_pairs` of the corrector's `split` ("train" or "val") under `diffusion.residuals`.

    "rollout" and "teacher_forced" use the study split of that name (its first `residual_trajectories`).
    "held_out" uses teacher-forced residuals on the validation trajectories only, which the operator never
    trained on: the first half of them trains the corrector, the second half validates it (with a single
    validation trajectory, the first and second half of its steps).
    """
    mode = "teacher_forced" if residuals == "held_out" else residuals
    if residuals == "held_out":
        held_out = data.splits["val"]
        if len(held_out) == 0:
            from raysim.errors import UserError

            raise UserError("held_out needs validation trajectories, the split has none", field="diffusion.residuals")
        if len(held_out) == 1:  # one trajectory: its first half of steps trains, the second half validates
            truth, dt = load_trajectories(cfg, data, held_out)
            pairs = operator_pairs(operator, truth, data.x, data.nu, dt, "teacher_forced", device,
                                   cfg.evaluation.batch_size, cfg.diffusion.rollout_max_nrmse)
            half = pairs.steps // 2
            pairs.keep = pairs.keep[pairs.keep < half] if split == "train" else pairs.keep[pairs.keep >= half]
            return pairs
        half = len(held_out) // 2
        indices = held_out[:half] if split == "train" else held_out[half:]
        truth, dt = load_trajectories(cfg, data, indices[: cfg.diffusion.residual_trajectories])
    else:
        truth, dt = load_split(cfg, data, split, cfg.diffusion.residual_trajectories)
    return operator_pairs(operator, truth, data.x, data.nu, dt, mode, device, cfg.evaluation.batch_size,
                          cfg.diffusion.rollout_max_nrmse)


# ----------------------------------------------------------------------------- per-epoch metrics


def _to(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def level_losses(model: nn.Module, batch: dict[str, Tensor], seed: int, chunk: int = 128) -> Tensor:
    """The corrector's loss at every noise level on one batch, noise fixed by `seed`: (K + 1,) float64."""
    levels = model.sigmas.shape[0]
    out = torch.zeros(levels, dtype=torch.float64)
    count = len(batch["u"])
    for k in range(levels):
        gen = torch.Generator(device=batch["u"].device).manual_seed(seed + k)
        for start in range(0, count, chunk):
            part = {key: v[start : start + chunk] for key, v in batch.items()}
            loss = model.loss(part["u"], part["pred"], part["target"], part["nu"], part["dt"], level=k, generator=gen)
            out[k] += float(loss) * len(part["u"])
    return out / max(count, 1)


@torch.no_grad()
def one_step_nrmse(model: nn.Module, batch: dict[str, Tensor], samples: int, seed: int,
                   chunk: int = 64) -> dict[str, float]:
    """One-step nRMSE of the operator, of one corrector sample and of the mean of `samples` fresh samples."""
    sums = {"operator": 0.0, "corrector_sample": 0.0, "corrected": 0.0}
    count = len(batch["u"])
    for i, start in enumerate(range(0, count, chunk)):
        u, pred, target = (batch[k][start : start + chunk] for k in ("u", "pred", "target"))
        nu, dt = batch["nu"][start : start + chunk], batch["dt"][start : start + chunk]
        cands = model.sample_many(u, pred, nu, dt, k=samples, seed=seed + i * samples)  # (S, B, X)
        for name, p in (("operator", pred), ("corrector_sample", cands[0]), ("corrected", cands.mean(0))):
            sums[name] += float(nrmse_per_sample(p, target).sum())
    return {name: value / max(count, 1) for name, value in sums.items()}


def corrector_metrics(
    train: dict[str, Tensor], val: dict[str, Tensor], val_teacher_forced: dict[str, Tensor], samples: int,
    seed: int, device: torch.device,
) -> Callable[[nn.Module], dict[str, float]]:
    """The diffusion stage's epoch metrics on fixed batches of pairs (the loop calls it with the EMA model).

    Per noise level k: `train_loss_level{k}` and `val_loss_level{k}` (the same noise every epoch), and the
    loss of predicting nothing (v_hat = 0) on each, `train_reference_loss_level{k}` and
    `reference_loss_level{k}` (validation). On the validation split's true states (teacher forced):
    `val_nrmse_one_step_operator`, `val_nrmse_one_step_corrector_sample` and `val_nrmse_one_step_corrected`
    (the mean of `samples` fresh samples, as the study's baseline).
    """
    train, val, val_tf = _to(train, device), _to(val, device), _to(val_teacher_forced, device)
    raw_ms = {name: float(((b["target"].double() - b["pred"].double()) ** 2).mean()) for name, b in
              (("train", train), ("val", val))}

    def metrics(model: nn.Module) -> dict[str, float]:
        model.eval()
        r_var = float(model.r_std) ** 2
        out: dict[str, float] = {}
        for name, batch, ref_key in (("train", train, "train_reference_loss_level"),
                                     ("val", val, "reference_loss_level")):
            losses = level_losses(model, batch, seed)
            refs = predict_nothing_loss(model.sigmas.cpu(), raw_ms[name] / r_var)
            for k in range(len(losses)):
                out[f"{name}_loss_level{k}"] = float(losses[k])
                out[f"{ref_key}{k}"] = float(refs[k])
        one_step = one_step_nrmse(model, val_tf, samples, seed)
        out.update({f"val_nrmse_one_step_{name}": value for name, value in one_step.items()})
        return out

    return metrics


@torch.no_grad()
def teacher_forced_batch(operator: nn.Module, pairs: ResidualPairs, count: int, x: Tensor,
                         device: torch.device, chunk: int = 256) -> dict[str, Tensor]:
    """At most `count` pairs spread over every frame of `pairs`' trajectories, with the true frame as input:
    u (P, X), pred = operator(u), target (P, X) the true next frame, nu, dt (P,)."""
    total = pairs.truth.shape[0] * pairs.steps
    flat = torch.arange(total) if total <= count else torch.linspace(0, total - 1, count).round().long()
    n, t = flat // pairs.steps, flat % pairs.steps
    u, target = pairs.truth[n, t], pairs.truth[n, t + 1]  # (P, X)
    full = torch.full((len(flat),), 1.0)
    nu, dt = full * pairs.nu, full * pairs.dt
    grid = x.to(device)
    preds = [operator(u[s : s + chunk].to(device), grid, nu[s : s + chunk].to(device),
                      dt[s : s + chunk].to(device)).float().cpu() for s in range(0, len(flat), chunk)]
    return {"u": u, "pred": torch.cat(preds), "target": target, "nu": nu, "dt": dt}
