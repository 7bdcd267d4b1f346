"""The operator's training recipe: relative loss, pushforward unrolling, EMA warm-up, locality, comparable arms."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from raysim.config import ModelConfig, OperatorStageConfig
from raysim.eval.metrics import nrmse_per_sample
from raysim.models.build import build_operator
from raysim.models.layers import PeriodicDistanceBias
from raysim.train.common import EMA
from raysim.train.stages import OperatorLoss, relative_mse


def test_relative_loss_is_the_squared_nrmse_on_known_arrays():
    target = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.1, 0.1, 0.1, 0.1]])  # mean square 1 and 0.01
    pred = target + torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.01, -0.01, 0.01, -0.01]])
    # sample 1: 0.25 / 1; sample 2: 1e-4 / 1e-2 = 0.01 -> mean 0.13
    assert float(relative_mse(pred, target)) == pytest.approx(0.13, rel=1e-6)
    assert float(relative_mse(pred, target)) == pytest.approx(float((nrmse_per_sample(pred, target) ** 2).mean()))
    # a late, decayed frame weighs as much as an early one: scaling one sample leaves the loss unchanged
    scaled_pred, scaled_target = pred.clone(), target.clone()
    scaled_pred[1] *= 1e-3
    scaled_target[1] *= 1e-3
    assert float(relative_mse(scaled_pred, scaled_target)) == pytest.approx(0.13, rel=1e-4)


class _Recorder(nn.Module):
    """A one-parameter step u -> a * u that records its inputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.9))
        self.inputs: list[torch.Tensor] = []

    def forward(self, u, x, nu, dt):
        u.retain_grad() if u.requires_grad else None
        self.inputs.append(u)
        return self.a * u


def _batch(steps: int = 3, b: int = 2, x: int = 8):
    u = torch.randn(b, x)
    return {"u": u, "target": torch.stack([u * 0.5**k for k in range(1, steps + 1)], dim=1),
            "nu": torch.full((b,), 0.01), "dt": torch.full((b,), 0.05)}


def test_pushforward_trains_only_the_last_unrolled_step():
    torch.manual_seed(0)
    stage = OperatorStageConfig(unroll_steps=3, unroll_curriculum=0.0, loss="mse")
    loss_fn, model = OperatorLoss(torch.linspace(0, 1, 8), stage), _Recorder().train()
    batch = _batch()
    batch["u"].requires_grad_(True)
    for _ in range(20):  # until a batch unrolls more than one step
        model.inputs.clear()
        loss = loss_fn(model, batch)
        if len(model.inputs) > 1:
            break
    assert len(model.inputs) > 1
    loss.backward()
    assert batch["u"].grad is None or float(batch["u"].grad.abs().sum()) == 0  # no gradient through earlier steps
    assert not model.inputs[-1].requires_grad  # the trained step starts from a detached state
    k = len(model.inputs)
    # d/da of mean((a * s - y)^2) with s the detached (k-1)-step state only: the analytic one-step gradient
    s = (0.9 ** (k - 1)) * batch["u"].detach()
    expected = torch.mean(2 * (0.9 * s - batch["target"][:, k - 1]) * s)
    assert float(model.a.grad) == pytest.approx(float(expected), rel=1e-5)


def test_unroll_curriculum_grows_from_one_step():
    loss_fn = OperatorLoss(torch.linspace(0, 1, 8), OperatorStageConfig(unroll_steps=4, unroll_curriculum=0.5))
    seen = []
    for progress in (0.0, 0.1, 0.3, 0.5, 0.9):
        loss_fn.set_progress(progress)
        seen.append(loss_fn.max_unroll())
    assert seen[0] == 1 and seen[-2:] == [4, 4] and seen == sorted(seen)
    model = _Recorder().eval()  # eval: always one step, no noise (the validation loss)
    loss_fn(model, _batch(steps=4))
    assert len(model.inputs) == 1


def test_input_noise_perturbs_only_training_inputs():
    stage = OperatorStageConfig(input_noise=0.1)
    loss_fn, model, batch = OperatorLoss(torch.linspace(0, 1, 8), stage, data_std=2.0), _Recorder(), _batch()
    loss_fn(model.train(), batch)
    noise = model.inputs[-1] - batch["u"]
    assert 0.05 < float(noise.std()) < 0.5  # 0.1 of the data's std of 2
    model.inputs.clear()
    loss_fn(model.eval(), batch)
    assert torch.equal(model.inputs[-1], batch["u"])


def test_ema_warmup_follows_its_formula():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.99, warmup=True)
    expected = 0.0
    for n in range(200):
        with torch.no_grad():
            model.weight.fill_(1.0)
        d = min(0.99, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        expected = d * expected + (1 - d) * 1.0
    assert float(ema.model.weight) == pytest.approx(expected, rel=1e-5)
    assert float(ema.model.weight) > 0.99  # the initialisation is forgotten
    plain = EMA(nn.Linear(1, 1, bias=False), decay=0.99, warmup=False)
    assert plain.current_decay() == 0.99


def test_locality_bias_is_periodic_and_shaped_heads_by_tokens():
    bias = PeriodicDistanceBias(heads=4)
    b = bias(16)
    assert b.shape == (4, 16, 16)
    assert torch.all(b <= 0) and torch.all(torch.diagonal(b, dim1=1, dim2=2) == 0)
    assert torch.allclose(b[:, 0, 1], b[:, 0, 15])  # token 15 is token 0's neighbour across the wrap
    assert torch.allclose(b, b.transpose(1, 2))
    shifted = torch.roll(torch.roll(b, 3, dims=1), 3, dims=2)
    assert torch.allclose(shifted, b)  # translation invariant on the ring
    strengths = -b[:, 0, 1]
    assert torch.all(strengths[:-1] > strengths[1:])  # heads from local to almost global


@pytest.mark.parametrize("processor", ["pdet_stack", "u_shaped"])
@pytest.mark.parametrize("attention", ["standard", "channel_separated"])
def test_every_processor_starts_at_the_identity(processor, attention):
    torch.manual_seed(0)
    cfg = ModelConfig(processor=processor, attention=attention, tokens=16, latent_dim=32, heads=4, group_size=8,
                      depth=3, stage_depths=[1, 1, 2])
    model = build_operator(cfg)
    z = torch.randn(2, 16, 32)
    out = model.processor(z, torch.full((2,), 0.01), torch.full((2,), 0.05))
    assert torch.allclose(out, z, atol=1e-6)


def test_u_shaped_processor_honours_drop_path():
    cfg = ModelConfig(processor="u_shaped", tokens=16, latent_dim=32, heads=4, stage_depths=[1, 1, 2], drop_path=0.3)
    rates = [m.p for m in build_operator(cfg).processor.modules() if type(m).__name__ == "DropPath"]
    assert len(rates) == 2 * 2 + 2 and max(rates) == pytest.approx(0.3) and min(rates) == 0.0
    none = dataclasses.replace(cfg, drop_path=0.0)
    assert all(m.p == 0 for m in build_operator(none).processor.modules() if type(m).__name__ == "DropPath")


def test_decoder_point_features_see_the_local_input():
    torch.manual_seed(0)
    cfg = ModelConfig(tokens=16, latent_dim=32, heads=4, depth=1, decoder_point_features=True)
    model = build_operator(cfg)
    z = torch.randn(1, 16, 32)
    x = torch.linspace(-1, 1, 65)[:-1] + 1 / 64
    a, b = torch.zeros(1, 64), torch.zeros(1, 64)
    b[0, 10] = 1.0
    da = model.decoder(z, x, None, None, a)
    db = model.decoder(z, x, None, None, b)
    changed = (da - db).abs()[0] > 0
    assert changed[8:13].all() and not changed[20:].any()  # the stencil reaches two points either side


def test_sweep_script_refuses_an_unknown_arm_in_one_line():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "scripts" / "sweep_operator.py"), str(root / "ablations" /
                           "phase3.yaml"), "--arm", "no-such-arm"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--arm" in lines[0] and "no-such-arm" in lines[0] and "Traceback" not in proc.stderr
