"""Diffusion residual corrector (PDE-Refiner style): denoise r = u(t + dt) - operator(u(t)).

Noise schedule (`noise_schedule`): K = noise_steps refinement steps with
sigma_k = sigma_min ** (k / K), k = 0..K, so sigma_0 = 1 (pure noise) down to
sigma_K = sigma_min. Variance-preserving noising of the normalised residual r:
x_k = alpha_k r + sigma_k eps with alpha_k = sqrt(1 - sigma_k^2).

The denoiser predicts v = alpha_k eps - sigma_k r (v-prediction). At k = 0
(alpha = 0) that is -r, the residual itself, as PDE-Refiner's first step; at
k >= 1 (alpha ~ 1) it is essentially the noise. Either way r_hat = alpha x - sigma v_hat.

Sampling runs all K + 1 levels (K + 1 denoiser calls): start from pure noise
at k = 0, then at each k >= 1 re-noise the current estimate to sigma_k with
fresh noise and denoise it. The noise draws make candidates seed-dependent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysim.models.layers import ScalarEmbedding, log_scalars


def noise_schedule(steps: int, sigma_min: float) -> Tensor:
    """sigma_k = sigma_min ** (k / K) for k = 0..K: (K + 1,), from 1 (pure noise) down to sigma_min."""
    assert steps >= 1 and 0 < sigma_min < 1, f"need noise_steps >= 1 and 0 < sigma_min < 1, got {steps}, {sigma_min}"
    k = torch.arange(steps + 1, dtype=torch.float64)
    return (sigma_min ** (k / steps)).float()  # (K + 1,)


def predict_nothing_loss(sigmas: Tensor, residual_mean_square: float) -> Tensor:
    """Per level, the loss of v_hat = 0: E[(alpha eps - sigma r)^2] = alpha^2 + sigma^2 E[r^2], shape (K + 1,).

    r is the residual in the corrector's units (divided by r_std), eps ~ N(0, 1) independent of r, so the
    cross term vanishes; E[r^2] is 1 on the data r_std was measured on.
    """
    sigmas = sigmas.double()
    return (1 - sigmas**2).clamp_min(0) + sigmas**2 * float(residual_mean_square)


# --------------------------------------------------------------------------- denoiser


def circular_conv(c_in: int, c_out: int, dilation: int = 1) -> nn.Conv1d:
    """Kernel-3 convolution over a periodic x axis."""
    return nn.Conv1d(c_in, c_out, 3, padding=dilation, dilation=dilation, padding_mode="circular")


class ResBlock(nn.Module):
    """Pre-norm conv residual block, FiLM-conditioned: h (B, C, X), cond (B, C) -> (B, C, X)."""

    def __init__(self, hidden: int, dilation: int):
        super().__init__()
        groups = math.gcd(hidden, 8)
        self.norm1 = nn.GroupNorm(groups, hidden)
        self.conv1 = circular_conv(hidden, hidden, dilation)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.norm2 = nn.GroupNorm(groups, hidden)
        self.conv2 = circular_conv(hidden, hidden, dilation)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.film(F.silu(cond))[..., None].chunk(2, dim=1)  # each (B, C, 1)
        y = self.conv1(F.silu(self.norm1(h)))
        y = self.norm2(y) * (1 + scale) + shift
        return h + self.conv2(F.silu(y))


class ConvDenoiser(nn.Module):
    """channels (B, 3, X) = [noisy residual, u_t, pred] (normalised), scalars (B, 3) -> v_hat (B, X).

    A 1D ResNet with circular padding; block i has dilation 2 ** (i mod 4), so
    4 blocks see about 60 points. Scalars are [log10 sigma, log10 nu, log10 dt].
    The output layer starts small so an untrained corrector barely moves pred.
    """

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        self.embed = ScalarEmbedding(3, hidden)
        self.inp = circular_conv(3, hidden)
        self.blocks = nn.ModuleList(ResBlock(hidden, 2 ** (i % 4)) for i in range(layers))
        self.norm_out = nn.GroupNorm(math.gcd(hidden, 8), hidden)
        self.out = circular_conv(hidden, 1)
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def forward(self, channels: Tensor, scalars: Tensor) -> Tensor:
        assert channels.ndim == 3 and channels.shape[1] == 3, f"channels must be (B, 3, X), got {tuple(channels.shape)}"
        assert scalars.shape == (channels.shape[0], 3), f"scalars must be (B, 3), got {tuple(scalars.shape)}"
        cond = self.embed(scalars)  # (B, C)
        h = self.inp(channels)  # (B, C, X)
        for block in self.blocks:
            h = block(h, cond)
        return self.out(F.silu(self.norm_out(h))).squeeze(1)  # (B, X)


# --------------------------------------------------------------------------- corrector


class DiffusionCorrector(nn.Module):
    """Conditional diffusion over the operator's residual: (u_t, pred, nu, dt) -> corrected pred (B, X).

    Physical units in and out; u is normalised with (u_mean, u_std), the
    residual with r_std. `sigmas` is the default schedule; both methods take
    another one if given. `config` is set by build.py for checkpoints.
    """

    def __init__(self, denoiser: nn.Module, sigmas: Tensor):
        super().__init__()
        self.denoiser = denoiser
        self.register_buffer("sigmas", sigmas, persistent=False)
        self.register_buffer("u_mean", torch.tensor(0.0))
        self.register_buffer("u_std", torch.tensor(1.0))
        self.register_buffer("r_std", torch.tensor(1.0))
        self.config = None

    def set_normalization(self, mean: float, std: float) -> None:
        """Set u's normalisation statistics (the operator's)."""
        assert std > 0, f"std must be positive, got {std}"
        self.u_mean.fill_(float(mean))
        self.u_std.fill_(float(std))

    def set_residual_scale(self, std: float) -> None:
        """Set the residual's scale r_std (std of u(t + dt) - operator(u(t)) on training data)."""
        assert std > 0, f"residual std must be positive, got {std}"
        self.r_std.fill_(float(std))

    def denoise(self, noisy: Tensor, u_t: Tensor, pred: Tensor, sigma: Tensor, nu: Tensor, dt: Tensor) -> Tensor:
        """v_hat (B, X) for the noisy normalised residual (B, X) at noise level sigma (B,)."""
        B, X = u_t.shape
        for name, t in (("noisy", noisy), ("pred", pred)):
            assert t.shape == (B, X), f"{name} must be ({B}, {X}) like u_t, got {tuple(t.shape)}"
        for name, t in (("sigma", sigma), ("nu", nu), ("dt", dt)):
            assert t.shape == (B,), f"{name} must be ({B},), got {tuple(t.shape)}"
        u_n, pred_n = (u_t - self.u_mean) / self.u_std, (pred - self.u_mean) / self.u_std
        channels = torch.stack([noisy, u_n, pred_n], dim=1)  # (B, 3, X)
        return self.denoiser(channels, log_scalars(sigma, nu, dt))

    def loss(
        self,
        u_t: Tensor,
        pred: Tensor,
        target: Tensor,
        nu: Tensor,
        dt: Tensor,
        sigmas: Tensor | None = None,
        level: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Training target: MSE of v_hat at a uniformly drawn level k per sample, or at `level` for every sample.

        pred is detached. Levels and noise come from `generator` when given (on its device), else from the
        global RNG.
        """
        sigmas = self.sigmas if sigmas is None else sigmas
        pred = pred.detach()
        r = (target - pred) / self.r_std  # (B, X)
        if level is not None:
            k = torch.full((r.shape[0],), int(level), device=r.device, dtype=torch.long)  # (B,)
        elif generator is not None:
            k = torch.randint(0, sigmas.shape[0], (r.shape[0],), generator=generator, device=generator.device)
        else:
            k = torch.randint(0, sigmas.shape[0], (r.shape[0],), device=r.device)  # (B,)
        sigma = sigmas.to(r.device)[k.to(r.device)]  # (B,)
        s, a = sigma[:, None], (1 - sigma[:, None] ** 2).clamp_min(0).sqrt()  # (B, 1)
        if generator is not None:
            eps = torch.randn(r.shape, generator=generator, device=generator.device).to(r.device, r.dtype)
        else:
            eps = torch.randn_like(r)
        v_hat = self.denoise(a * r + s * eps, u_t, pred, sigma, nu, dt)
        return F.mse_loss(v_hat.float(), (a * eps - s * r).float())

    @torch.no_grad()
    def sample(
        self,
        u_t: Tensor,
        pred: Tensor,
        nu: Tensor,
        dt: Tensor,
        generator: torch.Generator | None = None,
        sigmas: Tensor | None = None,
    ) -> Tensor:
        """One corrected prediction pred + r_std * r_hat (B, X), its noise drawn from `generator`."""
        return self._sample(u_t, pred, nu, dt, [generator], sigmas)

    @torch.no_grad()
    def sample_many(self, u_t: Tensor, pred: Tensor, nu: Tensor, dt: Tensor, k: int, seed: int) -> Tensor:
        """k candidates (k, B, X); candidate j uses seed `seed + j` (the convention of raysim.eval.rollout)."""
        B, X = u_t.shape
        generators = [torch.Generator(device=u_t.device).manual_seed(seed + j) for j in range(k)]

        def rep(t: Tensor) -> Tensor:
            return t.repeat(k, *([1] * (t.ndim - 1)))  # (k B, ...)

        out = self._sample(rep(u_t), rep(pred), rep(nu), rep(dt), generators, None)  # (k B, X)
        return out.view(k, B, X)

    def _sample(
        self, u_t: Tensor, pred: Tensor, nu: Tensor, dt: Tensor, generators: list, sigmas: Tensor | None
    ) -> Tensor:
        """The sampler on a batch made of len(generators) equal chunks, each chunk's noise from its generator."""
        sigmas = (self.sigmas if sigmas is None else sigmas).to(u_t.device)
        B, X = u_t.shape
        chunk = B // len(generators)

        def noise() -> Tensor:
            draws = [torch.randn(chunk, X, generator=g, device=g.device if g else u_t.device) for g in generators]
            return torch.cat(draws).to(device=u_t.device, dtype=u_t.dtype)  # (B, X)

        r = torch.zeros_like(u_t)
        for sigma in sigmas:
            alpha = (1 - sigma**2).clamp_min(0).sqrt()
            noisy = alpha * r + sigma * noise()  # k = 0: pure noise
            v_hat = self.denoise(noisy, u_t, pred, sigma.expand(B), nu, dt)
            r = alpha * noisy - sigma * v_hat  # (B, X)
        return pred + self.r_std * r
