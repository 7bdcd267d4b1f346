"""Unit tests for raysim.models: the latent operator, its parts, the diffusion corrector, checkpoints, counts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from raysim.config import DiffusionStageConfig, ModelConfig
from raysim.models import (
    DiffusionCorrector,
    LatentOperator,
    build_corrector,
    build_operator,
    count_params,
    flops_per_sample,
    load_model_state,
    model_state,
)
from raysim.models.build import _EXTRA_FLOPS, ATTENTIONS, ENCODERS, FAMILIES, PROCESSORS
from raysim.models.fno import FNOOperator
from raysim.models.layers import ChannelSeparatedAttention, DropPath, StandardAttention

X = 256
SMALL = dict(latent_dim=32, heads=2, group_size=8, depth=2, stage_depths=[1, 1], fourier_features=8)
SMALL_FNO = dict(family="fno", fno_width=16, fno_modes=8, fno_layers=2, fourier_features=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one intra-op thread is fastest and leaves the shared cores alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **overrides})


def grid(nx: int, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """Cell-left coordinates of a periodic grid on [lo, hi): (X,)."""
    return lo + (hi - lo) * torch.arange(nx, dtype=torch.float32) / nx


def fields(batch: int, nx: int, seed: int = 0) -> torch.Tensor:
    """Smooth periodic fields, sums of two random sine modes: (B, X)."""
    g = torch.Generator().manual_seed(seed)
    x = 2 * math.pi * torch.arange(nx) / nx  # (X,)
    k = torch.randint(1, 4, (batch, 2, 1), generator=g)  # (B, 2, 1)
    amp, phase = torch.rand(batch, 2, 1, generator=g), 2 * math.pi * torch.rand(batch, 2, 1, generator=g)
    return (amp * torch.sin(k * x + phase)).sum(dim=1)  # (B, X)


def inputs(batch: int = 2, nx: int = X, seed: int = 0):
    return fields(batch, nx, seed), grid(nx), torch.full((batch,), 0.01), torch.full((batch,), 0.05)


# --------------------------------------------------------------------------- operator


@pytest.mark.parametrize("tokens", [128, 256])
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("processor", PROCESSORS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_operator_shapes(encoder: str, processor: str, attention: str, tokens: int) -> None:
    torch.manual_seed(0)
    model = build_operator(small_config(encoder=encoder, processor=processor, attention=attention, tokens=tokens))
    assert isinstance(model, LatentOperator)
    u, x, nu, dt = inputs()
    out = model(u, x, nu, dt)
    assert out.shape == (2, X) and torch.isfinite(out).all()
    latent = model.encoder((u - model.u_mean) / model.u_std, x, 2.0)
    assert latent.shape == (2, tokens, 32)
    assert model.processor(latent, nu, dt).shape == (2, tokens, 32)


def test_shape_assertions_are_clear() -> None:
    model = build_operator(small_config(tokens=16))
    u, x, nu, dt = inputs()
    with pytest.raises(AssertionError, match=r"x must be \(256,\)"):
        model(u, x[:-1], nu, dt)
    with pytest.raises(AssertionError, match="nu, dt must be"):
        model(u, x, nu[:1], dt)
    with pytest.raises(AssertionError, match="not divisible by 24 tokens"):
        build_operator(small_config(encoder="patch", tokens=24))(u, x, nu, dt)
    with pytest.raises(ValueError, match="unknown processor"):
        build_operator(small_config(processor="mlp"))


def test_blocks_start_as_identity() -> None:
    torch.manual_seed(0)
    model = build_operator(small_config(processor="pdet_stack", tokens=16))
    z = torch.randn(2, 16, 32)
    _, _, nu, dt = inputs()
    assert torch.equal(model.processor(z, nu, dt), z)


def test_operator_overfits_a_tiny_batch() -> None:
    torch.manual_seed(0)
    model = build_operator(small_config(tokens=16, depth=2))
    u, x, nu, dt = inputs(batch=4, nx=64, seed=1)
    target = torch.roll(u, 3, dims=1)  # advection by 3 cells
    model.set_normalization(float(u.mean()), float(u.std()))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(u, x, nu, dt), target)
        first = loss.item() if first is None else first
        if loss.item() < first / 10:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, f"MSE {first:.3g} -> {loss.item():.3g}"


@pytest.mark.parametrize("processor", PROCESSORS)
def test_operator_checkpoint_round_trip(tmp_path, processor: str) -> None:
    torch.manual_seed(0)
    model = build_operator(small_config(processor=processor, attention="channel_separated", tokens=16)).eval()
    model.set_normalization(0.3, 2.5)
    with torch.no_grad():  # move the zero-initialised gates so the blocks matter
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(model_state(model), tmp_path / "op.pt")
    rng = torch.get_rng_state()
    loaded = load_model_state(torch.load(tmp_path / "op.pt", weights_only=True))
    assert torch.equal(torch.get_rng_state(), rng), "loading must not consume the global RNG"
    assert isinstance(loaded, LatentOperator) and not loaded.training
    assert float(loaded.u_std) == 2.5 and loaded.config == model.config
    u, x, nu, dt = inputs()
    assert torch.equal(loaded(u, x, nu, dt), model(u, x, nu, dt))


def test_seeding() -> None:
    cfg = small_config(tokens=16)

    def state(seed: int) -> dict:
        torch.manual_seed(seed)
        return build_operator(cfg).state_dict()

    a, b, c = state(0), state(0), state(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_decoder_at_arbitrary_queries() -> None:
    torch.manual_seed(0)
    model = build_operator(small_config(tokens=16))
    latent = torch.randn(3, 16, 32)
    scattered = torch.rand(37) * 2 - 1  # (Q,)
    assert model.decoder(latent, scattered, length=2.0).shape == (3, 37)
    assert model.decoder(latent, torch.rand(3, 11) * 2 - 1, length=2.0).shape == (3, 11)
    assert model.decoder(latent, grid(512)).shape == (3, 512)  # uniform grid: length inferred
    with pytest.raises(AssertionError, match="not a uniform grid"):
        model.decoder(latent, scattered.sort().values)


def test_drop_path_identity_at_eval_active_in_train() -> None:
    layer, x = DropPath(0.5), torch.ones(64, 4, 8)
    assert torch.equal(layer.eval()(x), x)
    torch.manual_seed(0)
    out = layer.train()(x)
    kept = out[:, 0, 0] != 0
    assert 0 < kept.sum() < 64 and torch.allclose(out[kept], torch.full_like(out[kept], 2.0))

    torch.manual_seed(0)
    model = build_operator(small_config(tokens=16, depth=3, drop_path=0.5))
    rates = [b.drop_path.p for b in model.processor.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])
    with torch.no_grad():
        for block in model.processor.blocks:
            block.modulation.bias.normal_()  # non-zero gates: the residual branches matter
    u, x, nu, dt = inputs()
    model.eval()
    assert torch.equal(model(u, x, nu, dt), model(u, x, nu, dt))
    model.train()
    assert not torch.equal(model(u, x, nu, dt), model(u, x, nu, dt))


def test_channel_separated_with_one_group_is_single_head_attention() -> None:
    torch.manual_seed(0)
    separated, standard = ChannelSeparatedAttention(32, group_size=32), StandardAttention(32, heads=1)
    with torch.no_grad():
        separated.qkv_weight[0].copy_(standard.qkv.weight.T)
        separated.qkv_bias[0].copy_(standard.qkv.bias)
        separated.proj.load_state_dict(standard.proj.state_dict())
    z = torch.randn(2, 16, 32)
    assert separated(z).shape == (2, 16, 32)
    assert torch.allclose(separated(z), standard(z), atol=1e-6)
    model = build_operator(small_config(attention="channel_separated", group_size=32, tokens=16))
    assert model(*inputs()).shape == (2, X)


def test_counts() -> None:
    torch.manual_seed(0)
    small, large = build_operator(small_config(tokens=128)), build_operator(small_config(tokens=256))
    assert 0 < count_params(small) < count_params(large)
    f_small, f_large = flops_per_sample(small, X), flops_per_sample(large, X)
    assert 0 < f_small < f_large
    # the attention maps are counted (the CPU SDPA kernel has no built-in FLOP formula)
    attn = StandardAttention(32, heads=2)
    linear_only = 2 * 128 * 32 * (3 * 32 + 32)
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        attn(torch.randn(1, 128, 32))
    assert counter.get_total_flops() == linear_only + 2 * 2 * 128 * 128 * 32


# --------------------------------------------------------------------------- FNO baseline


def small_fno(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL_FNO, **overrides})


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_runs_and_round_trips(tmp_path, family: str) -> None:
    torch.manual_seed(0)
    model = build_operator(small_config(tokens=16) if family == "upt" else small_fno()).eval()
    model.set_normalization(0.3, 2.5, 0.1)
    with torch.no_grad():  # move the small-initialised output layers so every weight matters
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    u, x, nu, dt = inputs()
    out = model(u, x, nu, dt)
    assert out.shape == (2, X) and torch.isfinite(out).all()
    torch.save(model_state(model), tmp_path / "op.pt")
    loaded = load_model_state(torch.load(tmp_path / "op.pt", weights_only=True))
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    assert torch.equal(loaded(u, x, nu, dt), out)
    assert count_params(model) > 0 and flops_per_sample(model, X) > 0


def test_fno_is_neuraloperators_fno_and_starts_near_persistence() -> None:
    torch.manual_seed(0)
    model = build_operator(small_fno())
    assert isinstance(model, FNOOperator) and type(model.fno).__module__ == "neuralop.models.fno"
    assert model.fno.positional_embedding is None and model.fno.domain_padding is None  # periodic features instead
    u, x, nu, dt = inputs()
    model.set_normalization(0.0, 1.0, 0.1)
    assert (model(u, x, nu, dt) - u).abs().max() < 0.01


def test_fno_shape_assertions() -> None:
    model = build_operator(small_fno())
    u, x, nu, dt = inputs()
    with pytest.raises(AssertionError, match=r"u must be \(B, X\)"):
        model(u[None], x, nu, dt)
    with pytest.raises(AssertionError, match=r"x must be \(256,\)"):
        model(u, x[:-1], nu, dt)
    with pytest.raises(AssertionError, match="nu, dt must be"):
        model(u, x, nu, dt[:1])
    with pytest.raises(ValueError, match=r"model\.fno_modes 8 is more than half the 12 grid points"):
        model(u[:, :12], grid(12), nu, dt)
    with pytest.raises(ValueError, match="unknown family"):
        build_operator(small_fno(family="cnn"))


def test_fno_trains_on_a_tiny_problem() -> None:
    torch.manual_seed(0)
    model = build_operator(small_fno())
    u, x, nu, dt = inputs(batch=4, nx=64, seed=1)
    target = torch.roll(u, 3, dims=1)  # advection by 3 cells
    model.set_normalization(float(u.mean()), float(u.std()), float((target - u).std()))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)  # complex spectral weights included
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(model(u, x, nu, dt), target)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] / 4, f"MSE {losses[0]:.3g} -> {losses[-1]:.3g}"


def test_fno_checkpoint_holds_tensors_only(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_operator(small_fno())
    ema = torch.optim.swa_utils.AveragedModel(model)  # wrappers are unwrapped
    state = model_state(ema)["state_dict"]
    assert "_metadata" not in model.state_dict() and "_metadata" not in ema.state_dict()
    assert all(type(v) is torch.Tensor for v in state.values())
    assert any(v.is_complex() for v in state.values())  # the spectral weights, saved as complex64 tensors
    torch.save(model_state(ema), tmp_path / "op.pt")
    rng = torch.get_rng_state()
    loaded = load_model_state(torch.load(tmp_path / "op.pt", weights_only=True))
    assert torch.equal(torch.get_rng_state(), rng), "loading must not consume the global RNG"
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_fno_counts() -> None:
    torch.manual_seed(0)
    model = build_operator(small_fno())
    complex_weights = [p for p in model.parameters() if p.is_complex()]
    assert len(complex_weights) == 2 and complex_weights[0].shape == (16, 16, 8 // 2 + 1)
    real = sum(p.numel() for p in model.parameters() if not p.is_complex())
    assert count_params(model) == real + 2 * sum(p.numel() for p in complex_weights)
    assert count_params(build_operator(small_fno(fno_width=32))) > count_params(model)

    with FlopCounterMode(display=False) as plain:
        model(*inputs(batch=1))
    assert flops_per_sample(model, X) > plain.get_total_flops() > 0  # FFTs and complex products added


def test_count_params_of_a_frozen_model_counts_every_weight() -> None:
    torch.manual_seed(0)
    model = build_operator(small_fno())
    trainable = count_params(model)
    for p in model.parameters():
        p.requires_grad_(False)
    assert count_params(model) == 0
    assert count_params(model, trainable_only=False) == trainable  # complex weights still count as two
    head = next(p for p in model.parameters() if not p.is_complex())
    head.requires_grad_(True)
    assert count_params(model) == head.numel()


def test_fft_and_complex_matmul_flops() -> None:
    def flops(fn, *args) -> int:
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
            fn(*args)
        return counter.get_total_flops()

    signal = torch.randn(3, 64)  # 3 signals of N = 64 points: 5 N log2 N each, half for a real transform
    assert flops(torch.fft.rfft, signal) == 3 * 2.5 * 64 * 6
    assert flops(torch.fft.irfft, torch.fft.rfft(signal), 64) == 3 * 2.5 * 64 * 6
    assert flops(torch.fft.fft, signal.to(torch.complex64)) == 3 * 5 * 64 * 6
    a, b = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert flops(torch.bmm, a, b) == 2 * 2 * 3 * 4 * 5
    assert flops(torch.bmm, a.to(torch.complex64), b.to(torch.complex64)) == 4 * 2 * 2 * 3 * 4 * 5


# --------------------------------------------------------------------------- diffusion corrector


def small_diffusion(**overrides) -> DiffusionStageConfig:
    return DiffusionStageConfig(**{"hidden": 16, "layers": 2, "noise_steps": 3, **overrides})


def test_diffusion_loss_has_gradients_everywhere() -> None:
    torch.manual_seed(0)
    model = build_corrector(small_diffusion())
    u, _, nu, dt = inputs(batch=8, nx=64)
    pred = u + 0.05 * u**2
    loss = model.loss(u, pred, pred + 0.1 * torch.sin(u), nu, dt)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_diffusion_sampling_seeds_and_initial_closeness() -> None:
    torch.manual_seed(0)
    model = build_corrector(small_diffusion()).eval()
    model.set_residual_scale(0.1)
    u, _, nu, dt = inputs(batch=3, nx=64)
    a = model.sample(u, u, nu, dt, torch.Generator().manual_seed(1))
    b = model.sample(u, u, nu, dt, torch.Generator().manual_seed(2))
    again = model.sample(u, u, nu, dt, torch.Generator().manual_seed(1))
    assert a.shape == (3, 64) and torch.equal(a, again) and not torch.allclose(a, b)
    assert (a - u).abs().max() < 0.1 * 0.6, "an untrained corrector should stay close to pred"
    many = model.sample_many(u, u, nu, dt, k=4, seed=10)
    assert many.shape == (4, 3, 64)
    for j in range(4):  # candidate j is the sample with seed 10 + j
        assert torch.allclose(many[j], model.sample(u, u, nu, dt, torch.Generator().manual_seed(10 + j)), atol=1e-6)


def test_diffusion_checkpoint_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_corrector(small_diffusion()).eval()
    model.set_normalization(0.1, 0.7)
    model.set_residual_scale(0.02)
    ema = torch.optim.swa_utils.AveragedModel(model)  # wrappers (EMA, DDP, compile) are unwrapped
    torch.save(model_state(ema), tmp_path / "corr.pt")
    loaded = load_model_state(torch.load(tmp_path / "corr.pt", weights_only=True))
    assert isinstance(loaded, DiffusionCorrector) and loaded.config == model.config
    assert torch.equal(loaded.sigmas, model.sigmas)
    u, _, nu, dt = inputs(batch=2, nx=64)
    assert torch.equal(loaded.sample_many(u, u, nu, dt, 2, 5), model.sample_many(u, u, nu, dt, 2, 5))
    assert dataclasses.asdict(loaded.config) == dataclasses.asdict(model.config)


def test_diffusion_learns_a_toy_residual() -> None:
    torch.manual_seed(0)
    model = build_corrector(small_diffusion())
    nu, dt = torch.full((32,), 0.01), torch.full((32,), 0.05)

    def batch(seed: int):
        u = fields(32, 32, seed)
        pred = 0.9 * u  # an operator that damps too much, plus a nonlinear error
        return u, pred, u + 0.2 * u**2

    u, pred, target = batch(0)
    model.set_normalization(0.0, float(u.std()))
    model.set_residual_scale(float((target - pred).std()))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        u, pred, target = batch(step)
        loss = model.loss(u, pred, target, nu, dt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    u, pred, target = batch(10_000)
    mean = model.sample_many(u, pred, nu, dt, k=4, seed=0).mean(dim=0)  # (B, X)
    err_pred = torch.mean((pred - target) ** 2)
    err_mean = torch.mean((mean - target) ** 2)
    assert err_mean < 0.3 * err_pred, f"corrected MSE {err_mean:.3g} vs pred alone {err_pred:.3g}"
