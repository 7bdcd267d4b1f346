"""Decoder: queries at arbitrary x cross-attend to the latent tokens, one value per query."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raysim.models.layers import (
    MLP,
    POINT_CHANNELS,
    CrossAttention,
    fourier_features,
    locality_bias,
    periodic_length,
    stencil,
)


class CrossAttentionDecoder(nn.Module):
    """latent (B, N, D), x_query (Q,) or (B, Q) -> (B, Q): one (normalised) value per query point.

    A query is the embedded Fourier features of its coordinate; it attends to
    the tokens, passes an MLP and a linear head. `length` is the periodic
    domain length; when omitted it is inferred from x_query, which must then be
    a uniform grid (for scattered queries pass the input grid's length).
    `centres` (N,), the token cells' centres from the encoder's grid, adds a
    locality bias so that a query starts by reading the tokens near it. With `point_features`, a query at
    an input grid point also sees the normalised input's stencil there, `u_points` (B, Q) (the encoder's
    neighbourhood features), so the local part of the update does not have to pass through the tokens;
    queries off the input grid (no `u_points`) read the tokens alone.
    """

    def __init__(self, dim: int, heads: int, fourier_features: int, mlp_ratio: float, point_features: bool = False):
        super().__init__()
        self.dim, self.frequencies, self.point_features = dim, fourier_features, point_features
        self.query_embed = MLP(2 * fourier_features, dim, dim)
        self.point_embed = MLP(POINT_CHANNELS, dim, dim) if point_features else None
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim)
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)
        with torch.no_grad():  # start close to persistence: small outputs in the operator's residual form
            self.head.weight.mul_(0.1)

    def forward(
        self,
        latent: Tensor,
        x_query: Tensor,
        length: float | None = None,
        centres: Tensor | None = None,
        u_points: Tensor | None = None,
    ) -> Tensor:
        assert latent.ndim == 3 and latent.shape[2] == self.dim, (
            f"decoder latent must be (B, N, {self.dim}), got {tuple(latent.shape)}"
        )
        B = latent.shape[0]
        assert x_query.ndim == 1 or (x_query.ndim == 2 and x_query.shape[0] == B), (
            f"x_query must be (Q,) or ({B}, Q), got {tuple(x_query.shape)}"
        )
        if length is None:
            length = periodic_length(x_query if x_query.ndim == 1 else x_query[0])
        q = self.query_embed(fourier_features(x_query, length, self.frequencies).to(latent.dtype))  # (Q | B Q, D)
        q = q.expand(B, -1, -1) if q.ndim == 2 else q  # (B, Q, D)
        if self.point_embed is not None and u_points is not None:  # off the input grid: the tokens alone
            assert u_points.shape == q.shape[:2], f"u_points must be {tuple(q.shape[:2])}, got {tuple(u_points.shape)}"
            q = q + self.point_embed(stencil(u_points).to(q.dtype))  # (B, Q, D)
        bias = None
        if centres is not None and x_query.ndim == 1:  # queries attend first to the tokens of nearby cells
            bias = locality_bias(x_query, centres, length, length / latent.shape[1])  # (Q, N)
        q = q + self.cross(self.norm_q(q), self.norm_kv(latent), bias)
        q = q + self.mlp(self.norm_mlp(q))
        return self.head(self.norm_out(q)).squeeze(-1)  # (B, Q)
