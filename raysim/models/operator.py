"""The latent operator: encoder -> processor -> decoder, one step u(t) -> u(t + dt) in physical units."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysim.models.layers import periodic_length, token_centres


class PhysicalStep(nn.Module):
    """What every operator shares: u's normalisation (u_mean, u_std), the scale of one step's change
    (delta_std), all in the state_dict, and `config`, set by build.py so checkpoints can rebuild the model."""

    def __init__(self):
        super().__init__()
        self.register_buffer("u_mean", torch.tensor(0.0))
        self.register_buffer("u_std", torch.tensor(1.0))
        self.register_buffer("delta_std", torch.tensor(1.0))
        self.config = None

    def set_normalization(self, mean: float, std: float, delta_std: float | None = None) -> None:
        """Set u's normalisation statistics and the scale of one step's change (from the training split)."""
        assert std > 0, f"std must be positive, got {std}"
        self.u_mean.fill_(float(mean))
        self.u_std.fill_(float(std))
        self.delta_std.fill_(float(delta_std if delta_std is not None else std))


class LatentOperator(PhysicalStep):
    """u (B, X), x (X,), nu (B,), dt (B,) -> u at t + dt (B, X), physical units in and out.

    Works on normalised values internally, (u - u_mean) / u_std, and predicts in
    residual form: out = u + delta_std * decoder(processor(encoder(u_n, x), nu, dt), x), where
    delta_std is the typical size of one step's change, so the decoder's output is O(1).
    The normalisation buffers are part of the state_dict. `config` is set by
    build.py (the ModelConfig it was built from) so checkpoints can rebuild it.
    """

    def __init__(self, encoder: nn.Module, processor: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.processor, self.decoder = encoder, processor, decoder

    def forward(self, u: Tensor, x: Tensor, nu: Tensor, dt: Tensor) -> Tensor:
        assert u.ndim == 2, f"u must be (B, X), got {tuple(u.shape)}"
        B, X = u.shape
        assert x.shape == (X,), f"x must be ({X},), got {tuple(x.shape)}"
        assert nu.shape == (B,) and dt.shape == (B,), f"nu, dt must be ({B},), got {tuple(nu.shape)}, {tuple(dt.shape)}"
        length = periodic_length(x)
        u_n = (u - self.u_mean) / self.u_std  # (B, X)
        z = self.encoder(u_n, x, length)  # (B, N, D)
        z = self.processor(z, nu, dt)  # (B, N, D)
        centres = token_centres(x, z.shape[1], length)  # (N,) token cells, for the decoder's locality bias
        delta = self.decoder(z, x, length, centres, u_n)  # (B, X)
        return u + self.delta_std * delta
