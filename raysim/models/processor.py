"""Processors: latent tokens (B, N, D) conditioned on (nu, dt) -> latent tokens (B, N, D).

Both take an `attention` factory (a zero-argument callable returning a fresh
self-attention module, `StandardAttention` or `ChannelSeparatedAttention`,
chosen in build.py) and condition every block with AdaLN-Zero on an embedding
of [log10 nu, log10 dt].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from raysim.models.layers import Block, ScalarEmbedding, log_scalars

AttentionFactory = Callable[[], nn.Module]


def _check_inputs(z: Tensor, nu: Tensor, dt: Tensor, dim: int) -> None:
    assert z.ndim == 3 and z.shape[2] == dim, f"processor input must be (B, N, {dim}), got {tuple(z.shape)}"
    B = z.shape[0]
    assert nu.shape == (B,) and dt.shape == (B,), (
        f"nu and dt must be ({B},), got {tuple(nu.shape)} and {tuple(dt.shape)}"
    )


class PDETStackProcessor(nn.Module):
    """`depth` identical pre-norm AdaLN blocks; drop-path rises linearly from 0 to `drop_path`."""

    def __init__(self, dim: int, depth: int, attention: AttentionFactory, mlp_ratio: float, drop_path: float):
        super().__init__()
        self.dim = dim
        self.condition = ScalarEmbedding(2, dim)
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [0.0]
        self.blocks = nn.ModuleList(Block(dim, attention(), mlp_ratio, rate) for rate in rates)

    def forward(self, z: Tensor, nu: Tensor, dt: Tensor) -> Tensor:
        _check_inputs(z, nu, dt, self.dim)
        cond = self.condition(log_scalars(nu, dt))  # (B, D)
        for block in self.blocks:
            z = block(z, cond)
        return z


class TokenMerge(nn.Module):
    """Halve the tokens: concatenate neighbouring pairs, then a linear map: (B, N, D) -> (B, N/2, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(2 * dim)
        self.proj = nn.Linear(2 * dim, dim)

    def forward(self, z: Tensor) -> Tensor:
        B, N, D = z.shape
        return self.proj(self.norm(z.reshape(B, N // 2, 2 * D)))  # (B, N/2, D)


class TokenSplit(nn.Module):
    """Double the tokens: a linear map to two tokens each: (B, N, D) -> (B, 2N, D)."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * dim)

    def forward(self, z: Tensor) -> Tensor:
        B, N, D = z.shape
        return self.proj(z).reshape(B, 2 * N, D)  # (B, 2N, D)


class UShapedProcessor(nn.Module):
    """U-Net over tokens: down stages (each then halves the tokens), a bottleneck, mirrored up stages with skips.

    `stage_depths` = [d_0, ..., d_{n-1}]: stage i < n-1 has d_i blocks on the way
    down and d_i on the way up; the bottleneck has d_{n-1}. The width stays D at
    every level so arms differ in token count and attention only. Skips are
    concatenated and projected back to D; the projection starts as "take the skip", so, with every block
    starting at the identity (AdaLN-Zero), the whole processor starts as the identity like `PDETStackProcessor`.
    Drop-path rises linearly from 0 to `drop_path` in the order the blocks run (down, bottleneck, up).
    """

    def __init__(
        self, dim: int, stage_depths: list[int], attention: AttentionFactory, mlp_ratio: float, drop_path: float = 0.0
    ):
        super().__init__()
        assert stage_depths and all(d >= 1 for d in stage_depths), f"bad stage_depths {stage_depths}"
        self.dim, self.halvings = dim, len(stage_depths) - 1
        self.condition = ScalarEmbedding(2, dim)
        total = 2 * sum(stage_depths[:-1]) + stage_depths[-1]
        rates = iter(torch.linspace(0, drop_path, total).tolist() if total > 1 else [0.0])

        def stage(depth: int) -> nn.ModuleList:
            return nn.ModuleList(Block(dim, attention(), mlp_ratio, next(rates)) for _ in range(depth))

        self.down_stages = nn.ModuleList(stage(d) for d in stage_depths[:-1])
        self.merges = nn.ModuleList(TokenMerge(dim) for _ in stage_depths[:-1])
        self.bottleneck = stage(stage_depths[-1])
        self.splits = nn.ModuleList(TokenSplit(dim) for _ in stage_depths[:-1])
        self.skips = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in stage_depths[:-1])
        up = [stage(d) for d in reversed(stage_depths[:-1])]  # built deepest first: the order they run in
        self.up_stages = nn.ModuleList(reversed(up))
        with torch.no_grad():
            for skip in self.skips:  # [z_up, skip] -> skip: no up-sampled path at the start
                skip.weight.zero_()
                skip.weight[:, dim:].copy_(torch.eye(dim))
                skip.bias.zero_()

    def forward(self, z: Tensor, nu: Tensor, dt: Tensor) -> Tensor:
        _check_inputs(z, nu, dt, self.dim)
        N = z.shape[1]
        assert N % 2**self.halvings == 0 and N // 2**self.halvings >= 2, (
            f"{N} tokens cannot halve {self.halvings} times"
        )
        cond = self.condition(log_scalars(nu, dt))  # (B, D)
        skips = []
        for blocks, merge in zip(self.down_stages, self.merges, strict=True):
            for block in blocks:
                z = block(z, cond)
            skips.append(z)  # (B, N_i, D)
            z = merge(z)  # (B, N_i / 2, D)
        for block in self.bottleneck:
            z = block(z, cond)
        for i in reversed(range(self.halvings)):
            z = self.splits[i](z)  # (B, N_i, D)
            z = self.skips[i](torch.cat([z, skips[i]], dim=-1))  # (B, N_i, 2D) -> (B, N_i, D)
            for block in self.up_stages[i]:
                z = block(z, cond)
        return z
