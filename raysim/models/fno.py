"""A Fourier neural operator baseline: neuraloperator's FNO behind the operator interface of LatentOperator."""

from __future__ import annotations

from typing import Any

import torch
from neuralop.models import FNO
from torch import Tensor

from raysim.models.layers import fourier_features, log_scalars, periodic_length
from raysim.models.operator import PhysicalStep


class FNOOperator(PhysicalStep):
    """u (B, X), x (X,), nu (B,), dt (B,) -> u at t + dt (B, X), physical units in and out.

    The same normalisation buffers and residual form as LatentOperator: out = u + delta_std * fno(channels).
    The FNO sees 3 + 2 * fourier_features input channels on the grid, (B, C, X): the normalised u, log10 nu
    and log10 dt as constant channels, and sin/cos(2 pi k x / L) for k = 1..fourier_features. These periodic
    features stand in for neuraloperator's grid embedding, a linear ramp over [0, 1) that jumps at the wrap
    and ignores x. The domain is periodic, so the FFTs need no domain padding.

    `modes` follows neuraloperator's convention: it counts positive and negative frequencies, and each
    spectral layer keeps the real-FFT frequencies 0..modes // 2; it must be at most X // 2.
    """

    def __init__(self, modes: int, width: int, layers: int, fourier_frequencies: int):
        super().__init__()
        self.modes, self.fourier_frequencies = modes, fourier_frequencies
        self.fno = FNO(
            n_modes=(modes,),
            in_channels=3 + 2 * fourier_frequencies,
            out_channels=1,
            hidden_channels=width,
            n_layers=layers,
            positional_embedding=None,
        )
        last = self.fno.projection.fcs[-1]  # Conv1d(projection channels -> 1)
        with torch.no_grad():  # start close to persistence: small outputs in the residual form
            last.weight.mul_(0.1)
            last.bias.zero_()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Tensors only: neuraloperator's FNO adds its constructor arguments under the key '_metadata'; dropped."""
        state = super().state_dict(*args, **kwargs)
        state.pop("_metadata", None)
        return state

    def forward(self, u: Tensor, x: Tensor, nu: Tensor, dt: Tensor) -> Tensor:
        assert u.ndim == 2, f"u must be (B, X), got {tuple(u.shape)}"
        B, X = u.shape
        assert x.shape == (X,), f"x must be ({X},), got {tuple(x.shape)}"
        assert nu.shape == (B,) and dt.shape == (B,), f"nu, dt must be ({B},), got {tuple(nu.shape)}, {tuple(dt.shape)}"
        if self.modes > X // 2:
            raise ValueError(f"model.fno_modes {self.modes} is more than half the {X} grid points")
        length = periodic_length(x)
        u_n = (u - self.u_mean) / self.u_std  # (B, X)
        scalars = log_scalars(nu, dt)[:, :, None].expand(B, 2, X)  # (B, 2, X) constant channels
        position = fourier_features(x, length, self.fourier_frequencies).T.expand(B, -1, X)  # (B, 2F, X)
        channels = torch.cat([u_n[:, None], scalars.to(u_n.dtype), position.to(u_n.dtype)], dim=1)  # (B, 3 + 2F, X)
        delta = self.fno(channels)[:, 0]  # (B, X)
        return u + self.delta_std * delta
