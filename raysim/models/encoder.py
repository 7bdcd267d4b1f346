"""Encoders: points (normalised u, Fourier features of x) -> latent tokens (B, N, D).

`PerceiverEncoder` is the default. Learned queries cross-attending to the points
make the token count independent of the grid: 128 or 256 tokens on 256 points,
or any other resolution or irregular point set (UPT's discretisation-agnostic
encoder), and every token can gather information from the whole domain.
`PatchEncoder` is the cheap, local alternative: it needs X divisible by the
token count and its tokens are contiguous spatial patches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysim.models.layers import (
    MLP,
    POINT_CHANNELS,
    CrossAttention,
    fourier_features,
    locality_bias,
    stencil,
    token_centres,
)


def point_features(u: Tensor, x: Tensor, length: float, frequencies: int) -> Tensor:
    """Per-point inputs [u and its periodic neighbours, sin/cos(2 pi k x / L)]: (B, X), (X,) -> (B, X, 5 + 2F).

    The neighbours are UPT's message passing from a point's neighbourhood, on a
    regular grid: the embedding can form local differences (u_x, u_xx) itself.
    """
    B, X = u.shape
    assert x.shape == (X,), f"x must be ({X},) to match u {tuple(u.shape)}, got {tuple(x.shape)}"
    fx = fourier_features(x, length, frequencies).to(u.dtype)  # (X, 2F)
    return torch.cat([stencil(u), fx.expand(B, X, -1)], dim=-1)  # (B, X, 5 + 2F)


class PerceiverEncoder(nn.Module):
    """u (B, X), x (X,) -> tokens (B, N, D): `tokens` learned queries cross-attend to the embedded points."""

    def __init__(self, tokens: int, dim: int, heads: int, fourier_features: int, mlp_ratio: float):
        super().__init__()
        self.frequencies = fourier_features
        self.tokens = tokens
        self.point_embed = MLP(POINT_CHANNELS + 2 * fourier_features, dim, dim)
        self.queries = nn.Parameter(torch.randn(tokens, dim) * 0.02)
        self.query_pos = nn.Linear(2 * fourier_features, dim)  # each token knows where its cell is
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim)

    def forward(self, u: Tensor, x: Tensor, length: float) -> Tensor:
        assert u.ndim == 2, f"encoder input u must be (B, X), got {tuple(u.shape)}"
        points = self.point_embed(point_features(u, x, length, self.frequencies))  # (B, X, D)
        centres = token_centres(x, self.tokens, length)  # (N,)
        pos = self.query_pos(fourier_features(centres, length, self.frequencies).to(u.dtype))  # (N, D)
        z = (self.queries + pos).expand(u.shape[0], -1, -1)  # (B, N, D)
        width = max(length / self.tokens, length / x.shape[0])
        bias = locality_bias(centres, x, length, width)  # (N, X)
        z = z + self.cross(self.norm_q(z), self.norm_kv(points), bias)
        z = z + self.mlp(self.norm_mlp(z))
        return z


class PatchEncoder(nn.Module):
    """u (B, X), x (X,) -> tokens (B, N, D): strided patches of X / N points, each point embedded then averaged.

    A per-point MLP followed by a mean over the patch is a learned pooling that
    needs no X at construction (a patch-flattening linear layer would fix the
    patch size); positions enter through the Fourier features of every point.
    """

    def __init__(self, tokens: int, dim: int, fourier_features: int, mlp_ratio: float):
        super().__init__()
        self.tokens, self.frequencies = tokens, fourier_features
        self.point_embed = MLP(POINT_CHANNELS + 2 * fourier_features, dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim)

    def forward(self, u: Tensor, x: Tensor, length: float) -> Tensor:
        assert u.ndim == 2, f"encoder input u must be (B, X), got {tuple(u.shape)}"
        B, X = u.shape
        assert X % self.tokens == 0, f"patch encoder: X = {X} points is not divisible by {self.tokens} tokens"
        points = self.point_embed(point_features(u, x, length, self.frequencies))  # (B, X, D)
        z = points.view(B, self.tokens, X // self.tokens, -1).mean(dim=2)  # (B, N, D)
        z = z + self.mlp(self.norm_mlp(z))
        return z
