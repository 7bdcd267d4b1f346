"""Building blocks shared by the operator and the corrector.

Fourier features of periodic coordinates, scalar (nu, dt, noise level) embeddings,
self- and cross-attention, the AdaLN-Zero transformer block and drop-path.
Every layer owns its weights and creates them in `__init__` (no lazy layers), so
the global torch seed at construction fixes the whole model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- coordinates and scalars


def periodic_length(x: Tensor) -> float:
    """Length L = X * dx of the periodic domain sampled by the uniform grid x (X,)."""
    assert x.ndim == 1 and x.shape[0] >= 2, f"grid x must be (X,) with X >= 2, got {tuple(x.shape)}"
    dx = x[1:] - x[:-1]  # (X-1,)
    assert torch.allclose(dx, dx[0].expand_as(dx), rtol=1e-3, atol=1e-6), (
        "x is not a uniform grid: pass the periodic domain length explicitly"
    )
    assert float(dx[0]) > 0, "grid x must be increasing"
    return float(dx[0]) * x.shape[0]


def fourier_features(x: Tensor, length: float, frequencies: int) -> Tensor:
    """sin/cos(2 pi k x / L) for k = 1..frequencies: (...,) -> (..., 2 * frequencies)."""
    k = torch.arange(1, frequencies + 1, device=x.device, dtype=torch.float32)  # (F,)
    angles = (2 * math.pi / length) * x.float()[..., None] * k  # (..., F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (..., 2F)


STENCIL = 2  # neighbours on each side that a point's embedding sees
POINT_CHANNELS = 2 * STENCIL + 1


def stencil(u: Tensor) -> Tensor:
    """u and its periodic neighbours on a regular grid: (B, X) -> (B, X, 2 * STENCIL + 1)."""
    return torch.stack([u.roll(s, dims=-1) for s in range(-STENCIL, STENCIL + 1)], dim=-1)


def locality_bias(queries: Tensor, keys: Tensor, length: float, width: float) -> Tensor:
    """Additive attention logits -d^2 / (2 width^2) from the periodic distance d: (Q,), (N,) -> (Q, N).

    UPT pools points into supernodes by neighbourhood; this Gaussian bias gives the
    Perceiver cross-attention the same locality from the first step (learned
    attention can still reach further), so tokens and decoded points start local.
    """
    d = (queries.float()[:, None] - keys.float()[None, :]).remainder(length)  # (Q, N) in [0, L)
    d = torch.minimum(d, length - d)
    return -0.5 * (d / width) ** 2


def token_centres(x: Tensor, tokens: int, length: float) -> Tensor:
    """Centres of `tokens` equal cells tiling the periodic domain that the grid x (X,) samples: (N,)."""
    start = float(x[0]) - 0.5 * length / x.shape[0]
    return start + (torch.arange(tokens, device=x.device, dtype=torch.float32) + 0.5) * (length / tokens)


def log_scalars(*values: Tensor) -> Tensor:
    """log10 of positive per-sample scalars, each (B,), stacked to (B, S) (clamped at 1e-8)."""
    return torch.stack([v.float().clamp_min(1e-8).log10() for v in values], dim=-1)  # (B, S)


class ScalarEmbedding(nn.Module):
    """(B, S) scalars -> (B, dim): each scalar with its sin/cos at 6 octaves, then an MLP."""

    def __init__(self, scalars: int, dim: int, octaves: int = 6):
        super().__init__()
        self.register_buffer("freqs", (math.pi / 4) * 2.0 ** torch.arange(octaves), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(scalars * (1 + 2 * octaves), dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, s: Tensor) -> Tensor:
        assert s.ndim == 2, f"scalars must be (B, S), got {tuple(s.shape)}"
        angles = s[..., None] * self.freqs  # (B, S, octaves)
        feats = torch.cat([s[..., None], angles.sin(), angles.cos()], dim=-1).flatten(1)  # (B, S * (1 + 2 octaves))
        return self.mlp(feats)


class MLP(nn.Module):
    """Two-layer GELU MLP on the last dimension."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int):
        super().__init__()
        self.fc = nn.Linear(dim_in, hidden)
        self.proj = nn.Linear(hidden, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


# --------------------------------------------------------------------------- attention


class PeriodicDistanceBias(nn.Module):
    """Learned attention logits -m_h * d(i, j) from the periodic token distance d (in tokens): N -> (H, N, N).

    The processor's counterpart of the encoder's and decoder's locality bias: Burgers is local, so each head
    starts with a preference for nearby tokens whose strength m_h > 0 it learns (initialised geometrically
    from 1/4 to 1/256 per token, so some heads start local and others almost global). The distance wraps
    around the periodic domain, so the bias is the same for every token and its mirror image.
    """

    def __init__(self, heads: int):
        super().__init__()
        strength = 2.0 ** (-2.0 - 6.0 * torch.arange(heads) / max(1, heads - 1))  # (H,) 1/4 .. 1/256
        self.raw_strength = nn.Parameter(torch.log(torch.expm1(strength)))  # softplus(raw) = strength

    def forward(self, tokens: int, device: torch.device | None = None) -> Tensor:
        i = torch.arange(tokens, device=device)
        d = (i[:, None] - i[None, :]).abs()  # (N, N)
        d = torch.minimum(d, tokens - d).float()  # periodic distance in tokens
        return -F.softplus(self.raw_strength)[:, None, None] * d  # (H, N, N)


class StandardAttention(nn.Module):
    """Multi-head self-attention over tokens (SDPA), dense q/k/v: (B, N, D) -> (B, N, D).

    With `locality`, a `PeriodicDistanceBias` is added to every head's logits.
    """

    def __init__(self, dim: int, heads: int, locality: bool = False):
        super().__init__()
        assert dim % heads == 0, f"latent_dim {dim} is not divisible by heads {heads}"
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias = PeriodicDistanceBias(heads) if locality else None

    def forward(self, z: Tensor) -> Tensor:
        B, N, D = z.shape
        qkv = self.qkv(z).view(B, N, 3, self.heads, D // self.heads)  # (B, N, 3, H, D/H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, N, D/H)
        mask = None if self.bias is None else self.bias(N, z.device).to(q.dtype)  # (H, N, N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class ChannelSeparatedAttention(nn.Module):
    """Attention over tokens within channel groups: (B, N, D) -> (B, N, D).

    The D channels split into G = D / group_size groups. Group g computes its own
    q/k/v from its own channels only (a block-diagonal projection, so it costs
    3 * D * group_size weights instead of 3 * D^2) and its own attention map; the
    output projection then mixes the groups. With group_size == D this is exactly
    single-head attention. With `locality`, each group's logits get a `PeriodicDistanceBias`.
    """

    def __init__(self, dim: int, group_size: int, locality: bool = False):
        super().__init__()
        assert dim % group_size == 0, f"channel groups of {group_size} do not divide latent_dim {dim}"
        self.groups, self.group_size = dim // group_size, group_size
        bound = 1 / math.sqrt(group_size)  # nn.Linear's default init range for fan_in = group_size
        self.qkv_weight = nn.Parameter(torch.empty(self.groups, group_size, 3 * group_size).uniform_(-bound, bound))
        self.qkv_bias = nn.Parameter(torch.zeros(self.groups, 3 * group_size))
        self.proj = nn.Linear(dim, dim)
        self.bias = PeriodicDistanceBias(self.groups) if locality else None

    def forward(self, z: Tensor) -> Tensor:
        B, N, D = z.shape
        zg = z.view(B, N, self.groups, self.group_size)  # (B, N, G, C)
        qkv = torch.einsum("bngc,gce->bnge", zg, self.qkv_weight) + self.qkv_bias  # (B, N, G, 3C)
        q, k, v = qkv.view(B, N, self.groups, 3, self.group_size).permute(3, 0, 2, 1, 4)  # each (B, G, N, C)
        mask = None if self.bias is None else self.bias(N, z.device).to(q.dtype)  # (G, N, N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, G, N, C)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries (B, Q, D) attend to context (B, N, D) -> (B, Q, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, f"latent_dim {dim} is not divisible by heads {heads}"
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, context: Tensor, bias: Tensor | None = None) -> Tensor:
        (B, Q, D), N = queries.shape, context.shape[1]
        q = self.q(queries).view(B, Q, self.heads, D // self.heads).transpose(1, 2)  # (B, H, Q, D/H)
        k, v = self.kv(context).view(B, N, 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, D/H)
        mask = None if bias is None else bias.to(q.dtype)  # (Q, N) additive logits
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Q, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, Q, D))  # (B, Q, D)


# --------------------------------------------------------------------------- transformer block


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch per sample with probability p (rescaled); identity at eval."""

    def __init__(self, p: float):
        super().__init__()
        assert 0 <= p < 1, f"drop_path must be in [0, 1), got {p}"
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p  # (B, 1, ...)
        return x * keep.to(x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Block(nn.Module):
    """Pre-norm transformer block with AdaLN-Zero conditioning: (B, N, D), cond (B, D) -> (B, N, D).

    The conditioning vector gives a shift, scale and gate for each branch; the
    modulation layer starts at zero, so every block starts as the identity.
    """

    def __init__(self, dim: int, attention: nn.Module, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dim)
        self.modulation = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.drop_path = DropPath(drop_path)

    def forward(self, z: Tensor, cond: Tensor) -> Tensor:
        mod = self.modulation(F.silu(cond))[:, None, :]  # (B, 1, 6D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)  # each (B, 1, D)
        z = z + self.drop_path(gate1 * self.attn(self.norm1(z) * (1 + scale1) + shift1))
        z = z + self.drop_path(gate2 * self.mlp(self.norm2(z) * (1 + scale2) + shift2))
        return z
