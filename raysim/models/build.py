"""The one place config names become classes; parameter and FLOP counts; checkpoint payloads."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from raysim.config import DiffusionStageConfig, ModelConfig
from raysim.models.decoder import CrossAttentionDecoder
from raysim.models.diffusion import ConvDenoiser, DiffusionCorrector, noise_schedule
from raysim.models.encoder import PatchEncoder, PerceiverEncoder
from raysim.models.layers import ChannelSeparatedAttention, StandardAttention
from raysim.models.operator import LatentOperator
from raysim.models.processor import PDETStackProcessor, UShapedProcessor

ENCODERS = ("perceiver", "patch")
PROCESSORS = ("u_shaped", "pdet_stack")
ATTENTIONS = ("standard", "channel_separated")
CHECKPOINT_VERSION = 1


def build_operator(cfg: ModelConfig) -> LatentOperator:
    """A freshly initialised LatentOperator (weights from the global torch seed)."""
    d = cfg.latent_dim
    if cfg.attention == "standard":
        attention = functools.partial(StandardAttention, d, cfg.heads)
    elif cfg.attention == "channel_separated":
        attention = functools.partial(ChannelSeparatedAttention, d, cfg.group_size)
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
        processor = UShapedProcessor(d, list(cfg.stage_depths), attention, cfg.mlp_ratio)
    else:
        raise ValueError(f"unknown processor {cfg.processor!r} (known: {', '.join(PROCESSORS)})")

    decoder = CrossAttentionDecoder(d, cfg.heads, cfg.fourier_features, cfg.mlp_ratio)
    model = LatentOperator(encoder, processor, decoder)
    model.config = cfg
    return model


def build_corrector(cfg: DiffusionStageConfig) -> DiffusionCorrector:
    """A freshly initialised DiffusionCorrector with the geometric schedule of `cfg`."""
    model = DiffusionCorrector(ConvDenoiser(cfg.hidden, cfg.layers), noise_schedule(cfg.noise_steps, cfg.sigma_min))
    model.config = cfg
    return model


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# FlopCounterMode has no formula for the CPU flash-attention kernel; it is the same two matmuls.
_EXTRA_FLOPS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def flops_per_sample(model: nn.Module, nx: int) -> int:
    """Forward FLOPs for one sample on an nx-point grid (a corrector: one full `sample`, K + 1 denoiser calls).

    Runs with autograd on (never backward): FlopCounterMode's module tracker trips over parameters viewed under
    no_grad.
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
    if isinstance(model, LatentOperator):
        kind = "operator"
    elif isinstance(model, DiffusionCorrector):
        kind = "corrector"
    else:
        raise TypeError(f"cannot checkpoint a {type(model).__name__}: expected LatentOperator or DiffusionCorrector")
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
