"""The one place config names become classes; parameter and FLOP counts; checkpoint payloads."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from raysim.config import DiffusionStageConfig, ModelConfig
from raysim.models.decoder import CrossAttentionDecoder
from raysim.models.diffusion import ConvDenoiser, DiffusionCorrector, noise_schedule
from raysim.models.encoder import PatchEncoder, PerceiverEncoder
from raysim.models.fno import FNOOperator
from raysim.models.layers import ChannelSeparatedAttention, StandardAttention
from raysim.models.operator import LatentOperator
from raysim.models.processor import PDETStackProcessor, UShapedProcessor

FAMILIES = ("upt", "fno")
ENCODERS = ("perceiver", "patch")
PROCESSORS = ("u_shaped", "pdet_stack")
ATTENTIONS = ("standard", "channel_separated")
CHECKPOINT_VERSION = 1


def build_operator(cfg: ModelConfig) -> LatentOperator | FNOOperator:
    """A freshly initialised operator of `cfg.family`: a LatentOperator or an FNOOperator (global torch seed)."""
    if cfg.family == "fno":
        fno = FNOOperator(cfg.fno_modes, cfg.fno_width, cfg.fno_layers, cfg.fourier_features)
        fno.config = cfg
        return fno
    if cfg.family != "upt":
        raise ValueError(f"unknown family {cfg.family!r} (known: {', '.join(FAMILIES)})")
    d = cfg.latent_dim
    if cfg.attention == "standard":
        attention = functools.partial(StandardAttention, d, cfg.heads, cfg.attention_locality)
    elif cfg.attention == "channel_separated":
        attention = functools.partial(ChannelSeparatedAttention, d, cfg.group_size, cfg.attention_locality)
    else:
        raise ValueError(f"unknown attention {cfg.attention!r} (known: {', '.join(ATTENTIONS)})")

    if cfg.encoder == "perceiver":
        encoder = PerceiverEncoder(cfg.tokens, d, cfg.heads, cfg.fourier_features, cfg.mlp_ratio)
    elif cfg.encoder == "patch":
        encoder = PatchEncoder(cfg.tokens, d, cfg.fourier_features, cfg.mlp_ratio)
    else:
        raise ValueError(f"unknown encoder {cfg.encoder!r} (known: {', '.join(ENCODERS)})")

    if cfg.processor == "pdet_stack":
        processor = PDETStackProcessor(d, cfg.depth, attention, cfg.mlp_ratio, cfg.drop_path)
    elif cfg.processor == "u_shaped":
        processor = UShapedProcessor(d, list(cfg.stage_depths), attention, cfg.mlp_ratio, cfg.drop_path)
    else:
        raise ValueError(f"unknown processor {cfg.processor!r} (known: {', '.join(PROCESSORS)})")

    decoder = CrossAttentionDecoder(d, cfg.heads, cfg.fourier_features, cfg.mlp_ratio, cfg.decoder_point_features)
    model = LatentOperator(encoder, processor, decoder)
    model.config = cfg
    return model


def build_corrector(cfg: DiffusionStageConfig) -> DiffusionCorrector:
    """A freshly initialised DiffusionCorrector with the geometric schedule of `cfg`."""
    model = DiffusionCorrector(ConvDenoiser(cfg.hidden, cfg.layers), noise_schedule(cfg.noise_steps, cfg.sigma_min))
    model.config = cfg
    return model


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of real parameters (only those with requires_grad unless `trainable_only` is False).

    A complex weight (the FNO's spectral layers) counts as two real numbers per element.
    """
    params = (p for p in module.parameters() if p.requires_grad or not trainable_only)
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in params)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _fft_count(shape, dim, per_point: float) -> int:
    """per_point * N log2 N for each signal of N = prod(shape[dim]) points in a tensor of `shape`."""
    n = math.prod(shape[d] for d in dim)
    return int(per_point * math.prod(shape) * math.log2(max(n, 2)))


def _fft_r2c_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_count(input_shape, dim, 2.5)  # a real FFT: half a complex one


def _fft_c2r_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_count(out_shape, dim, 2.5)  # the real output's length is the signal's


def _fft_c2c_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    return _fft_count(input_shape, dim, 5.0)  # radix-2 Cooley-Tukey: 5 N log2 N


def _bmm_flops(a, b, *args, out_val=None, **kwargs) -> int:
    """2 b m n k for real operands; a complex multiply-add is 4 real multiplies and 4 adds, so 4x that."""
    batch, m, k = a.shape
    flops = 2 * batch * m * k * b.shape[-1]
    return 4 * flops if a.is_complex() or b.is_complex() else flops


_bmm_flops._get_raw = True  # FlopCounterMode passes this formula the tensors (for their dtype), not their shapes

# FlopCounterMode has no formula for the CPU flash-attention kernel (it is the same two matmuls) nor for FFTs,
# and counts a complex matmul (the FNO's spectral mixing) like a real one.
_EXTRA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._fft_r2c: _fft_r2c_flops,
    torch.ops.aten._fft_c2r: _fft_c2r_flops,
    torch.ops.aten._fft_c2c: _fft_c2c_flops,
    torch.ops.aten.bmm: _bmm_flops,
}


def flops_per_sample(model: nn.Module, nx: int) -> int:
    """Forward FLOPs for one sample on an nx-point grid (a corrector: one full `sample`, K + 1 denoiser calls).

    FlopCounterMode's counts plus `_EXTRA_FLOPS`: FFTs are estimated at 5 N log2 N per complex transform of N
    points (2.5 N log2 N for a real one), and complex matmuls count 4x their real size. Runs with autograd on
    (never backward): FlopCounterMode's module tracker trips over parameters viewed under no_grad.
    """
    model = unwrap(model)
    p = next(model.parameters())
    u = torch.sin(torch.linspace(0, 6.28, nx, device=p.device))[None]  # (1, X)
    x = torch.arange(nx, device=p.device, dtype=torch.float32) / nx  # (X,)
    nu = torch.full((1,), 0.01, device=p.device)
    dt = torch.full((1,), 0.05, device=p.device)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
            if isinstance(model, DiffusionCorrector):
                model.sample(u, u, nu, dt)
            else:
                model(u, x, nu, dt)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / AveragedModel (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    for wrapper_attribute in ("module", "_orig_mod"):
        inner = getattr(model, wrapper_attribute, None)
        if isinstance(inner, nn.Module):
            return unwrap(inner)
    return model


def model_state(model: nn.Module) -> dict[str, Any]:
    """Checkpoint payload {version, kind, config, state_dict}: plain types and CPU tensors only (wrappers removed)."""
    model = unwrap(model)
    if isinstance(model, (LatentOperator, FNOOperator)):
        kind = "operator"
    elif isinstance(model, DiffusionCorrector):
        kind = "corrector"
    else:
        expected = "LatentOperator, FNOOperator or DiffusionCorrector"
        raise TypeError(f"cannot checkpoint a {type(model).__name__}: expected {expected}")
    if model.config is None:
        raise ValueError(f"this {kind} was not made by build_{kind}: it has no config to rebuild it from")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "config": dataclasses.asdict(model.config),
        "state_dict": state,
    }


def load_model_state(state: dict[str, Any]) -> nn.Module:
    """Rebuild the model of a `model_state` payload (on CPU, in eval mode)."""
    kind = state.get("kind")
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"unsupported checkpoint version {state.get('version')!r} (expected {CHECKPOINT_VERSION})")
    if kind not in ("operator", "corrector"):
        raise ValueError(f"unknown checkpoint kind {kind!r} (expected 'operator' or 'corrector')")
    config_class = ModelConfig if kind == "operator" else DiffusionStageConfig
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(state["config"]) - known)
    if unknown:
        raise ValueError(f"checkpoint config has keys {config_class.__name__} does not know: {', '.join(unknown)}")
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten: leave the global RNG as it was
        if kind == "operator":
            model: nn.Module = build_operator(ModelConfig(**state["config"]))
        else:
            model = build_corrector(DiffusionStageConfig(**state["config"]))
    model.load_state_dict(state["state_dict"])
    return model.eval()
