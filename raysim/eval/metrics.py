"""Error metrics in physical space, PDEBench-compatible, on tensors shaped (..., X).

Every ``*_per_sample`` function reduces only the last (spatial) axis and returns
one value per leading index (sample, time, ...); the plain function averages
those values into a scalar tensor.  Nothing here looks at ``requires_grad``:
the functions are differentiable, but are meant to be used under ``no_grad``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "bc_violation",
    "bc_violation_per_sample",
    "conservation_gap",
    "conservation_gap_per_sample",
    "frmse_bands",
    "nrmse",
    "nrmse_per_sample",
    "rms",
]

EPS = 1e-12


def _as_float(x: Tensor) -> Tensor:
    """Return x in a floating dtype of at least float32 precision."""
    if x.dtype in (torch.float64, torch.float32):
        return x
    return x.to(torch.float32)


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Validate that pred and target share a shape (..., X) and upcast them."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.ndim < 1 or pred.shape[-1] < 1:
        raise ValueError(f"fields must be shaped (..., X) with X >= 1, got {tuple(pred.shape)}")
    dtype = torch.promote_types(_as_float(pred).dtype, _as_float(target).dtype)
    return pred.to(dtype), target.to(dtype)


def rms(u: Tensor) -> Tensor:
    """Root mean square over the last axis: (..., X) -> (...)."""
    u = _as_float(u)
    return torch.sqrt(torch.mean(u * u, dim=-1))


def nrmse_per_sample(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """PDEBench nRMSE per leading index: sqrt(mean_x (p-y)^2) / sqrt(mean_x y^2), shape (...)."""
    pred, target = _check_pair(pred, target)
    return rms(pred - target) / rms(target).clamp_min(eps)


def nrmse(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Mean over all leading indices of `nrmse_per_sample` (scalar tensor)."""
    return nrmse_per_sample(pred, target, eps).mean()


def conservation_gap_per_sample(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """|mean_x pred - mean_x target| / sqrt(mean_x target^2), shape (...).

    On a uniform periodic grid the integral of u is L * mean_x u, so this is the
    error in the conserved integral divided by L * rms(target): independent of
    the domain length and of the resolution.
    """
    pred, target = _check_pair(pred, target)
    gap = (pred.mean(dim=-1) - target.mean(dim=-1)).abs()  # (...)
    return gap / rms(target).clamp_min(eps)


def conservation_gap(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Mean over all leading indices of `conservation_gap_per_sample` (scalar tensor)."""
    return conservation_gap_per_sample(pred, target, eps).mean()


def bc_violation_per_sample(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Boundary error per leading index, shape (...): normalised bRMSE plus excess wrap jump.

    With p = pred, y = target, r = sqrt(mean_x y^2) (clamped at eps):

    - bRMSE (PDEBench) = sqrt(((p[0] - y[0])^2 + (p[-1] - y[-1])^2) / 2), the RMS
      error over the two boundary cells;
    - wrap excess = max(|p[-1] - p[0]| - |y[-1] - y[0]|, 0), how much larger the
      jump across the periodic wrap is in the prediction than in the truth;

    bc_violation = (bRMSE + wrap excess) / r.  The truth scores exactly 0, and a
    prediction that is exact at both boundary cells scores exactly 0.
    """
    pred, target = _check_pair(pred, target)
    d0 = pred[..., 0] - target[..., 0]  # (...)
    d1 = pred[..., -1] - target[..., -1]  # (...)
    brmse = torch.sqrt(0.5 * (d0 * d0 + d1 * d1))
    jump_pred = (pred[..., -1] - pred[..., 0]).abs()
    jump_true = (target[..., -1] - target[..., 0]).abs()
    excess = (jump_pred - jump_true).clamp_min(0.0)
    return (brmse + excess) / rms(target).clamp_min(eps)


def bc_violation(pred: Tensor, target: Tensor, eps: float = EPS) -> Tensor:
    """Mean over all leading indices of `bc_violation_per_sample` (scalar tensor)."""
    return bc_violation_per_sample(pred, target, eps).mean()


_BAND_NAMES = ("low", "mid", "high")


def frmse_bands(
    pred: Tensor,
    target: Tensor,
    bands: Sequence[tuple[int, int | None]] = ((0, 4), (5, 12), (13, None)),
    length: float = 1.0,
) -> dict[str, Tensor]:
    """PDEBench-style Fourier-band RMSE: {"low", "mid", "high"} -> scalar tensors.

    E_k = sqrt(mean over leading indices of |rfft(p - y)_k|^2) * length / X for each
    mode k (an amplitude, independent of X), then averaged over the modes of each
    band.  Bands are inclusive mode ranges [lo, hi]; hi=None runs to the Nyquist
    mode.  A band holding no mode (too coarse a grid) is NaN.  With a number of
    bands other than 3 the keys are "band0", "band1", ...
    """
    pred, target = _check_pair(pred, target)
    nx = pred.shape[-1]
    diff_f = torch.fft.rfft(pred - target, dim=-1)  # (..., X//2+1)
    power = (diff_f.abs() ** 2).reshape(-1, diff_f.shape[-1])  # (M, X//2+1)
    err_k = torch.sqrt(power.mean(dim=0)) * (length / nx)  # (X//2+1,)
    n_modes = err_k.shape[0]
    names = _BAND_NAMES if len(bands) == 3 else tuple(f"band{i}" for i in range(len(bands)))
    out: dict[str, Tensor] = {}
    for name, (lo, hi) in zip(names, bands, strict=True):
        stop = n_modes if hi is None else min(hi + 1, n_modes)
        start = max(lo, 0)
        if start >= stop:
            out[name] = torch.tensor(float("nan"), dtype=err_k.dtype, device=err_k.device)
        else:
            out[name] = err_k[start:stop].mean()
    return out
