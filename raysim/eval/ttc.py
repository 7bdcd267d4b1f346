"""Test-time compute (TTC): score corrector candidates by physics, choose per sample.

Nothing here uses the ground truth: the reward is the discrete residual of the
Burgers equation u_t + (u^2/2)_x = (nu/pi) u_xx (periodic in x) across the
step u_t -> candidate, plus the drift of the conserved integral of u. With
``resolved_modes`` both states are low-passed first, so scales the models do not
resolve (a corrector sample's leftover noise) do not decide the choice.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "burgers_residual",
    "burgers_tendency",
    "low_pass",
    "physics_reward",
    "select_per_sample",
    "select_random",
]

EPS = 1e-12


def _hi(x: Tensor) -> Tensor:
    """Upcast to float64 for the finite differences (float32 where float64 is unsupported)."""
    if x.device.type == "mps":
        return x.to(torch.float32)
    return x.to(torch.float64)


def _nu_like(nu: float | Tensor, ref: Tensor) -> float | Tensor:
    """A float, or a tensor of shape (B,) / (...) reshaped to broadcast against (..., X)."""
    if isinstance(nu, Tensor):
        return nu.to(device=ref.device, dtype=ref.dtype).unsqueeze(-1)  # (..., 1)
    return float(nu)


def burgers_tendency(u: Tensor, dx: float, nu: float | Tensor, method: str = "spectral") -> Tensor:
    """Right-hand side N(u) = -(u^2/2)_x + (nu/pi) u_xx on a periodic grid, shape (..., X).

    ``method="central"``: conservative second-order central differences,
    (f[i+1] - f[i-1]) / (2 dx) with f = u^2/2, and (u[i+1] - 2u[i] + u[i-1]) / dx^2.
    ``method="spectral"`` (default): exact Fourier derivatives on the grid of
    length X*dx (Nyquist mode dropped from the first derivative); on resolved
    data (nu >= 0.01 at 256+ points) its floor for a true step is far lower than
    the central scheme's.  ``nu`` is a float or a tensor broadcastable to the
    leading dims of u (e.g. (B,)).
    """
    u = _hi(u)
    nu_ = _nu_like(nu, u)
    flux = 0.5 * u * u  # (..., X)
    if method == "central":
        flux_x = (torch.roll(flux, -1, dims=-1) - torch.roll(flux, 1, dims=-1)) / (2.0 * dx)
        u_xx = (torch.roll(u, -1, dims=-1) - 2.0 * u + torch.roll(u, 1, dims=-1)) / (dx * dx)
    elif method == "spectral":
        nx = u.shape[-1]
        k = 2.0 * torch.pi * torch.fft.rfftfreq(nx, d=dx, device=u.device, dtype=u.dtype)  # (X//2+1,)
        ik = 1j * k
        if nx % 2 == 0:
            ik = ik.clone()
            ik[-1] = 0.0  # the Nyquist mode has no well-defined first derivative
        flux_x = torch.fft.irfft(ik * torch.fft.rfft(flux, dim=-1), n=nx, dim=-1)
        u_xx = torch.fft.irfft(-(k * k) * torch.fft.rfft(u, dim=-1), n=nx, dim=-1)
    else:
        raise ValueError(f"method must be 'central' or 'spectral', got {method!r}")
    return -flux_x + (nu_ / torch.pi) * u_xx


def burgers_residual(
    u_t: Tensor,
    u_next: Tensor,
    dt: float,
    dx: float,
    nu: float | Tensor,
    method: str = "spectral",
) -> Tensor:
    """Normalised Crank-Nicolson residual of the step u_t -> u_next, shape (B,) (or the broadcast leading dims).

    R = (u_next - u_t)/dt - (N(u_t) + N(u_next))/2 with N from `burgers_tendency`
    (trapezoid in time, periodic differences in space, conservative flux,
    viscosity nu/pi).  Returned: rms_x(R) / rms_x(N(u_t)) (clamped at eps).  The
    normaliser depends only on u_t, so for one sample every candidate u_next is
    ranked by its absolute residual.  u_next may carry extra leading dims, e.g.
    (K, B, X) against u_t (B, X).  A true step scores only the trapezoid's
    truncation error, O(dt^2), plus the spatial discretisation error; u_next = u_t
    scores exactly 1.  Uses no ground truth.
    """
    if u_t.shape[-1] != u_next.shape[-1]:
        raise ValueError(f"u_t and u_next must share the grid, got {tuple(u_t.shape)} and {tuple(u_next.shape)}")
    if dt <= 0 or dx <= 0:
        raise ValueError(f"dt and dx must be positive, got dt={dt}, dx={dx}")
    a = _hi(u_t)
    b = _hi(u_next)
    n_a = burgers_tendency(a, dx, nu, method)  # (B, X)
    n_b = burgers_tendency(b, dx, nu, method)  # (..., B, X)
    res = (b - a) / dt - 0.5 * (n_a + n_b)  # (..., B, X)
    scale = torch.sqrt(torch.mean(n_a * n_a, dim=-1)).clamp_min(EPS)  # (B,)
    out = torch.sqrt(torch.mean(res * res, dim=-1)) / scale
    return out.to(torch.promote_types(u_next.dtype, torch.float32))


def low_pass(u: Tensor, modes: int) -> Tensor:
    """u (..., X) with only its Fourier modes 0..modes-1 along the periodic x axis kept."""
    if modes < 1:
        raise ValueError(f"modes must be >= 1, got {modes}")
    spectrum = torch.fft.rfft(u, dim=-1)  # (..., X//2+1)
    spectrum[..., modes:] = 0
    return torch.fft.irfft(spectrum, n=u.shape[-1], dim=-1)


def physics_reward(
    u_t: Tensor,
    candidate: Tensor,
    dt: float,
    dx: float,
    nu: float | Tensor,
    conservation_weight: float = 1.0,
    method: str = "spectral",
    resolved_modes: int | None = None,
) -> Tensor:
    """Higher is better: -(burgers_residual + w * |mean_x(cand) - mean_x(u_t)| / rms_x(u_t)), shape (B,) or (K, B).

    With ``resolved_modes``, the residual is that of the low-passed states (`low_pass`); the
    conservation term (mode 0) is unchanged by it.
    """
    if resolved_modes is not None:
        u_t, candidate = low_pass(_hi(u_t), resolved_modes), low_pass(_hi(candidate), resolved_modes)
    residual = burgers_residual(u_t, candidate, dt, dx, nu, method)  # (..., B)
    a = _hi(u_t)
    b = _hi(candidate)
    drift = (b.mean(dim=-1) - a.mean(dim=-1)).abs()  # (..., B)
    scale = torch.sqrt(torch.mean(a * a, dim=-1)).clamp_min(EPS)  # (B,)
    score = -(residual.to(drift.dtype) + conservation_weight * drift / scale)
    return score.to(residual.dtype)


def select_per_sample(candidates: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample, the candidate with the highest score: (K, B, X), (K, B) -> ((B, X), (B,)).

    NaN scores and candidates containing NaN/Inf rank below every finite one.
    """
    if candidates.ndim != 3 or scores.shape != candidates.shape[:2]:
        raise ValueError(
            f"expected candidates (K, B, X) and scores (K, B), got {tuple(candidates.shape)} and {tuple(scores.shape)}"
        )
    finite = torch.isfinite(candidates).all(dim=-1)  # (K, B)
    s = torch.where(finite & ~torch.isnan(scores), scores, torch.full_like(scores, -torch.inf))  # (K, B)
    index = torch.argmax(s, dim=0)  # (B,)
    batch = torch.arange(candidates.shape[1], device=candidates.device)
    chosen = candidates[index.to(candidates.device), batch]  # (B, X)
    return chosen, index


def select_random(candidates: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The control: a uniformly random candidate per sample, (K, B, X) -> ((B, X), (B,))."""
    if candidates.ndim != 3:
        raise ValueError(f"expected candidates (K, B, X), got {tuple(candidates.shape)}")
    k, b = candidates.shape[:2]
    index = torch.randint(k, (b,), generator=generator, device=generator.device)  # (B,)
    index = index.to(candidates.device)
    chosen = candidates[index, torch.arange(b, device=candidates.device)]  # (B, X)
    return chosen, index
