"""Tests for raysim.eval: metrics, rollout, TTC selection and the full evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raysim.eval.metrics import (
    bc_violation,
    bc_violation_per_sample,
    conservation_gap,
    conservation_gap_per_sample,
    frmse_bands,
    nrmse,
    nrmse_per_sample,
)
from raysim.eval.rollout import METRIC_KEYS, candidate_seed, evaluate, rollout, ttc_rollout
from raysim.eval.ttc import (
    burgers_residual,
    burgers_tendency,
    physics_reward,
    select_per_sample,
    select_random,
)

X = 32


def grid(nx: int = X) -> torch.Tensor:
    """Cell centres of (0, 1) with nx points, float64."""
    return (torch.arange(nx, dtype=torch.float64) + 0.5) / nx


def advection_trajectories(n: int = 5, t: int = 6, nx: int = X, seed: int = 0) -> torch.Tensor:
    """Linear advection by one cell per frame: frame t = roll(u0, t); shape (n, t, nx)."""
    g = torch.Generator().manual_seed(seed)
    x = grid(nx)
    amp = torch.rand(n, 2, generator=g, dtype=torch.float64) + 0.5  # (n, 2)
    phase = torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 * math.pi
    u0 = amp[:, :1] * torch.sin(2 * math.pi * x + phase[:, :1]) + amp[:, 1:] * torch.cos(
        4 * math.pi * x + phase[:, 1:]
    )  # (n, nx)
    return torch.stack([torch.roll(u0, s, dims=-1) for s in range(t)], dim=1)  # (n, t, nx)


def exact_step(u: torch.Tensor) -> torch.Tensor:
    """The exact step of `advection_trajectories`."""
    return torch.roll(u, 1, dims=-1)


# ----------------------------------------------------------------------------- metrics


def test_nrmse_scale_invariant() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randn(3, 4, X, generator=g, dtype=torch.float64)
    target = target * torch.tensor([1e-3, 1.0, 1e3], dtype=torch.float64).view(3, 1, 1)
    per = nrmse_per_sample(1.1 * target, target)
    assert per.shape == (3, 4)
    torch.testing.assert_close(per, torch.full((3, 4), 0.1, dtype=torch.float64))
    assert nrmse(1.1 * target, target).item() == pytest.approx(0.1, rel=1e-9)
    assert nrmse(target, target).item() == 0.0


def test_nrmse_hand_value() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    target = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # sqrt((0 + 1 + 4 + 9) / 4) / 1
    assert nrmse(pred, target).item() == pytest.approx(math.sqrt(14 / 4), rel=1e-6)
    with pytest.raises(ValueError):
        nrmse(pred, target[:3])


def test_conservation_gap_shift_and_offset() -> None:
    traj = advection_trajectories()
    u = traj[:, 0]  # (n, X)
    assert conservation_gap(torch.roll(u, 3, dims=-1), u).item() == pytest.approx(0.0, abs=1e-12)
    x = grid()
    target = torch.sin(2 * math.pi * x)  # rms = 1/sqrt(2), mean = 0
    gap = conservation_gap_per_sample(target + 0.1, target)
    assert gap.item() == pytest.approx(0.1 * math.sqrt(2), rel=1e-9)
    assert conservation_gap(target.expand(2, X) - 0.1, target.expand(2, X)).item() == pytest.approx(
        0.1 * math.sqrt(2), rel=1e-9
    )


def test_bc_violation_truth_zero_and_hand_values() -> None:
    traj = advection_trajectories()
    assert bc_violation(traj, traj).item() == 0.0
    assert torch.all(bc_violation_per_sample(traj, traj) == 0)
    target = torch.tensor([1.0, 0.0, 0.0, 3.0], dtype=torch.float64)  # rms sqrt(10/4), jump 2
    r = math.sqrt(10 / 4)
    # error only at the left cell, wrap jump smaller than the truth's: bRMSE only
    pred = torch.tensor([2.0, 0.0, 0.0, 3.0], dtype=torch.float64)
    assert bc_violation(pred, target).item() == pytest.approx(math.sqrt(0.5) / r, rel=1e-12)
    # error of 2 at the right cell, jump 4 vs 2: bRMSE sqrt(2) plus excess 2
    pred = torch.tensor([1.0, 0.0, 0.0, 5.0], dtype=torch.float64)
    assert bc_violation(pred, target).item() == pytest.approx((math.sqrt(2) + 2) / r, rel=1e-12)
    # interior errors do not count
    pred = torch.tensor([1.0, 7.0, -7.0, 3.0], dtype=torch.float64)
    assert bc_violation(pred, target).item() == 0.0


def test_frmse_bands_single_mode() -> None:
    x = grid(64)
    target = torch.sin(2 * math.pi * x).expand(3, 64)
    amp = 0.2
    pred = target + amp * torch.cos(2 * math.pi * 3 * x)  # error only in mode 3 (low band)
    bands = frmse_bands(pred, target)
    assert set(bands) == {"low", "mid", "high"}
    # |rfft|_3 / X = amp / 2, averaged over the 5 low modes 0..4
    assert bands["low"].item() == pytest.approx(amp / 2 / 5, rel=1e-9)
    assert bands["mid"].item() == pytest.approx(0.0, abs=1e-12)
    assert bands["high"].item() == pytest.approx(0.0, abs=1e-12)
    pred = target + amp * torch.cos(2 * math.pi * 20 * x)  # mode 20, high band 13..32
    assert frmse_bands(pred, target)["high"].item() == pytest.approx(amp / 2 / 20, rel=1e-9)


# ----------------------------------------------------------------------------- rollout


def test_rollout_shape_and_no_grad() -> None:
    w = torch.nn.Parameter(torch.ones(()))
    u0 = torch.randn(3, X)
    out = rollout(lambda u: w * exact_step(u), u0, 4)
    assert out.shape == (3, 5, X)
    assert not out.requires_grad
    torch.testing.assert_close(out[:, 0], u0)
    torch.testing.assert_close(out[:, 4], torch.roll(u0, 4, dims=-1))
    with pytest.raises(ValueError):
        rollout(lambda u: u[:, :-1], u0, 1)


def test_evaluate_exact_model_beats_persistence() -> None:
    traj = advection_trajectories(n=5, t=6)
    res = evaluate(traj, predict=exact_step, sample_candidates=None, dt=0.1, dx=1 / X, nu=0.01, batch_size=2)
    m = res.metrics
    assert tuple(m) == METRIC_KEYS
    assert m["nrmse_one_step"] < 1e-12
    assert m["nrmse_rollout"] < 1e-12
    assert m["conservation_gap"] < 1e-12 and m["conservation_drift"] < 1e-12
    assert m["bc_violation"] < 1e-12
    assert m["nrmse_persistence"] > 0.1
    assert m["nrmse_persistence_rollout"] > m["nrmse_persistence"]  # holding frame 0 drifts further
    for key in ("nrmse_ttc", "nrmse_ttc_random", "ttc_improvement_pct", "ttc_vs_random_pct", "ttc_evaluations",
                "nrmse_rollout_corrector_sample", "nrmse_one_step_corrector_sample"):
        assert math.isnan(m[key])
    assert m["nrmse_rollout"] == m["nrmse_rollout_operator"]  # no corrector: the baseline is the operator alone
    for key, arr in res.per_trajectory.items():
        assert arr.shape == (5,), key
    for key, arr in res.per_step.items():
        assert arr.shape == (5,), key
    # persistence error grows with the step for a shifting field
    assert np.all(np.diff(res.per_step["nrmse_persistence_rollout"][:3]) > 0)
    # batching does not change the answer
    res64 = evaluate(traj, predict=exact_step, sample_candidates=None, dt=0.1, dx=1 / X, nu=0.01)
    assert res64.metrics["nrmse_persistence"] == pytest.approx(m["nrmse_persistence"], rel=1e-12)


def test_evaluate_horizon_and_validation() -> None:
    traj = advection_trajectories(n=3, t=6)

    def biased(u: torch.Tensor) -> torch.Tensor:
        return exact_step(u) + 0.05

    res = evaluate(traj, predict=biased, sample_candidates=None, dt=0.1, dx=1 / X, nu=torch.full((3,), 0.01), horizon=2)
    assert res.per_step["nrmse_rollout"].shape == (2,)
    assert res.per_step["nrmse_rollout"][1] > res.per_step["nrmse_rollout"][0]  # bias accumulates
    assert res.metrics["conservation_drift"] > res.metrics["conservation_gap"]
    with pytest.raises(ValueError):
        evaluate(traj, predict=biased, sample_candidates=None, dt=0.1, dx=1 / X, nu=0.01, horizon=6)
    with pytest.raises(ValueError):
        evaluate(traj, predict=biased, sample_candidates=None, dt=0.1, dx=1 / X, nu=torch.ones(2))
    with pytest.raises(ValueError):
        evaluate(traj[0], predict=biased, sample_candidates=None, dt=0.1, dx=1 / X, nu=0.01)


# ----------------------------------------------------------------------------- TTC selection


def test_select_per_sample_picks_per_sample() -> None:
    candidates = torch.arange(3 * 2 * 4, dtype=torch.float32).view(3, 2, 4)  # (K, B, X)
    scores = torch.tensor([[0.0, 5.0], [1.0, 2.0], [3.0, -1.0]])  # sample 0 best k=2, sample 1 best k=0
    chosen, index = select_per_sample(candidates, scores)
    assert index.tolist() == [2, 0]
    torch.testing.assert_close(chosen, torch.stack([candidates[2, 0], candidates[0, 1]]))
    # a NaN score or a non-finite candidate never wins
    scores_nan = torch.tensor([[float("nan"), 5.0], [1.0, 2.0], [0.5, -1.0]])
    bad = candidates.clone()
    bad[0, 1, 0] = float("inf")
    _, index = select_per_sample(bad, scores_nan)
    assert index.tolist() == [1, 1]


def test_select_random_seeded_per_sample() -> None:
    candidates = torch.randn(4, 64, X)
    _, i1 = select_random(candidates, torch.Generator().manual_seed(3))
    c2, i2 = select_random(candidates, torch.Generator().manual_seed(3))
    _, i3 = select_random(candidates, torch.Generator().manual_seed(4))
    assert torch.equal(i1, i2)
    assert not torch.equal(i1, i3)
    assert len(set(i1.tolist())) > 1  # a choice per sample, not one per batch
    torch.testing.assert_close(c2, candidates[i2, torch.arange(64)])


def noisy_sampler(u: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Exact step plus seeded noise of a random level per candidate and sample: (k, B, X)."""
    g = torch.Generator().manual_seed(seed)
    level = torch.rand(k, u.shape[0], 1, generator=g, dtype=u.dtype)  # (k, B, 1)
    noise = torch.randn(k, *u.shape, generator=g, dtype=u.dtype)  # (k, B, X)
    return exact_step(u).unsqueeze(0) + 0.3 * level * noise


def oracle_reward(u: torch.Tensor, cands: torch.Tensor, dt: float, dx: float, nu: object) -> torch.Tensor:
    """A reward that knows the answer: minus the squared error to the exact step, (K, B)."""
    return -((cands - exact_step(u).unsqueeze(0)) ** 2).mean(dim=-1)


def test_ttc_oracle_picks_the_exact_candidate_per_sample() -> None:
    traj = advection_trajectories(n=6, t=5)

    def sampler(u: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        # candidate j is exact for the samples with b % k == j, garbage for the others
        cands = exact_step(u).unsqueeze(0).repeat(k, 1, 1) + 5.0  # (k, B, X)
        for b in range(u.shape[0]):
            cands[b % k, b] = exact_step(u[b])
        return cands

    res = evaluate(
        traj,
        predict=lambda u: exact_step(u) + 0.1,
        sample_candidates=sampler,
        dt=0.1,
        dx=1 / X,
        nu=0.01,
        ttc_candidates=3,
        reward=oracle_reward,
        batch_size=4,
    )
    m = res.metrics
    assert m["nrmse_ttc"] < 1e-12  # every sample found its own exact candidate
    assert m["nrmse_ttc_random"] > 1.0
    assert m["ttc_improvement_pct"] == pytest.approx(100.0)
    assert m["ttc_evaluations"] == 3 * 4 * 6


def test_ttc_oracle_beats_random_control() -> None:
    traj = advection_trajectories(n=8, t=5)
    res = evaluate(
        traj,
        predict=exact_step,
        sample_candidates=noisy_sampler,
        dt=0.1,
        dx=1 / X,
        nu=0.01,
        ttc_candidates=4,
        reward=oracle_reward,
        seed=7,
    )
    assert res.metrics["nrmse_ttc"] < res.metrics["nrmse_ttc_random"]
    assert np.all(res.per_trajectory["nrmse_ttc"] <= res.per_trajectory["nrmse_ttc_random"] + 1e-12)


def test_ttc_never_worse_than_worst_candidate() -> None:
    traj = advection_trajectories(n=6, t=2)
    k, seed = 5, 11
    res = evaluate(
        traj,
        predict=exact_step,
        sample_candidates=noisy_sampler,
        dt=0.1,
        dx=1 / X,
        nu=0.01,
        ttc_candidates=k,
        seed=seed,
        horizon=1,
    )  # physics reward, no knowledge of the truth
    cands = noisy_sampler(traj[:, 0], k, candidate_seed(seed, 0, 0, 1, k))  # the candidates TTC drew
    err = nrmse_per_sample(cands, traj[:, 1].unsqueeze(0).expand_as(cands))  # (K, N)
    got = torch.from_numpy(res.per_trajectory["nrmse_ttc"])
    assert torch.all(got <= err.max(dim=0).values + 1e-12)
    assert torch.all(got >= err.min(dim=0).values - 1e-12)
    assert torch.all(torch.from_numpy(res.per_trajectory["nrmse_ttc_random"]) <= err.max(dim=0).values + 1e-12)


class RecordingSampler:
    """Wraps a sampler and records every (seed, state, candidates) call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, u: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        out = noisy_sampler(u, k, seed)
        self.calls.append((seed, u.clone(), out.clone()))
        return out


def test_control_uses_the_same_candidates_and_seeds_are_distinct() -> None:
    traj = advection_trajectories(n=4, t=4)
    u0 = traj[:, 0]
    k = 4
    seeds = [candidate_seed(0, 0, s, 3, k) for s in range(3)]
    rec = RecordingSampler()
    ttc, ctl = ttc_rollout(
        rec, u0, 3, k=k, seeds=seeds, dt=0.1, dx=1 / X, nu=0.01, control_generator=torch.Generator().manual_seed(0)
    )
    assert ctl is not None and ttc.shape == ctl.shape == (4, 4, X)
    # step 0: generated once, picked twice
    step0 = [c for c in rec.calls if c[0] == seeds[0]]
    assert len(step0) == 1
    cands0 = step0[0][2]  # (K, B, X)
    for b in range(4):
        assert any(torch.equal(ctl[b, 1], cands0[j, b]) for j in range(k))
        assert any(torch.equal(ttc[b, 1], cands0[j, b]) for j in range(k))
    # later steps: the control draws with the very same seed as TTC (common random numbers)
    for s in (1, 2):
        assert 1 <= len([c for c in rec.calls if c[0] == seeds[s]]) <= 2
    assert {c[0] for c in rec.calls} == set(seeds)

    # seeds are distinct across steps, batches and candidates (seed + j)
    all_seeds = [candidate_seed(0, b, s, 10, k) + j for b in range(3) for s in range(10) for j in range(k)]
    assert len(set(all_seeds)) == len(all_seeds)
    assert candidate_seed(0, 0, 0, 10, k) != candidate_seed(1, 0, 0, 10, k)


def test_evaluate_ttc_deterministic_and_seed_dependent() -> None:
    traj = advection_trajectories(n=5, t=4)
    kwargs = dict(predict=exact_step, dt=0.1, dx=1 / X, nu=0.01, ttc_candidates=3, batch_size=2)
    rec_a, rec_b, rec_c = RecordingSampler(), RecordingSampler(), RecordingSampler()
    a = evaluate(traj, sample_candidates=rec_a, seed=0, **kwargs)
    b = evaluate(traj, sample_candidates=rec_b, seed=0, **kwargs)
    c = evaluate(traj, sample_candidates=rec_c, seed=1, **kwargs)
    assert a.metrics == b.metrics
    assert [x[0] for x in rec_a.calls] == [x[0] for x in rec_b.calls]
    assert all(torch.equal(x[2], y[2]) for x, y in zip(rec_a.calls, rec_b.calls, strict=True))
    assert not set(x[0] for x in rec_a.calls) & set(x[0] for x in rec_c.calls)
    assert not torch.equal(rec_a.calls[0][2], rec_c.calls[0][2])
    assert a.metrics["nrmse_ttc"] != c.metrics["nrmse_ttc"]
    # one TTC draw per (batch, step); the control adds at most as many again
    n_batches, steps = 3, 3
    ttc_seeds = {candidate_seed(0, b, s, steps, 3) for b in range(n_batches) for s in range(steps)}
    assert len(ttc_seeds) == n_batches * steps and ttc_seeds <= {x[0] for x in rec_a.calls}
    assert a.metrics["ttc_evaluations"] == 3 * steps * 5


# ----------------------------------------------------------------------------- physics reward


def burgers_setup(nx: int = 128) -> tuple[torch.Tensor, float, float]:
    """Two smooth periodic states (2, nx), dx and nu."""
    x = grid(nx)
    u = torch.stack([torch.sin(2 * math.pi * x) + 0.5 * torch.cos(4 * math.pi * x), 0.8 * torch.cos(2 * math.pi * x)])
    return u, 1.0 / nx, 0.05


def true_step(u: torch.Tensor, dt: float, dx: float, nu: float, substeps: int = 20) -> torch.Tensor:
    """Integrate the PDE over dt by tiny explicit Euler substeps (spectral derivatives)."""
    h = dt / substeps
    for _ in range(substeps):
        u = u + h * burgers_tendency(u, dx, nu, method="spectral")
    return u


@pytest.mark.parametrize("method", ["central", "spectral"])
def test_burgers_residual_true_step_small(method: str) -> None:
    u, dx, nu = burgers_setup()
    dt = 1e-4
    u_next = true_step(u, dt, dx, nu)
    good = burgers_residual(u, u_next, dt, dx, nu, method=method)
    assert good.shape == (2,)
    assert torch.all(good < 1e-2)
    perturbed = u_next + 1e-3 * torch.randn(
        u_next.shape, generator=torch.Generator().manual_seed(0), dtype=u_next.dtype
    )
    bad = burgers_residual(u, perturbed, dt, dx, nu, method=method)
    assert torch.all(bad > 100 * good)
    # persistence misses N(u) entirely: the residual is exactly -N(u)
    torch.testing.assert_close(burgers_residual(u, u, dt, dx, nu, method=method), torch.ones(2, dtype=u.dtype))


def test_physics_reward_prefers_the_true_step_per_sample() -> None:
    u, dx, nu = burgers_setup()
    dt = 1e-4
    u_next = true_step(u, dt, dx, nu)
    g = torch.Generator().manual_seed(1)
    cands = u_next.unsqueeze(0) + 1e-3 * torch.randn(3, *u.shape, generator=g, dtype=u.dtype)  # (K, B, X)
    cands[2, 0] = u_next[0]
    cands[0, 1] = u_next[1]
    scores = physics_reward(u, cands, dt, dx, torch.tensor([nu, nu]))
    assert scores.shape == (3, 2)
    _, index = select_per_sample(cands, scores)
    assert index.tolist() == [2, 0]
    # the conservation term penalises a constant offset, which the residual alone also sees
    shifted = physics_reward(u, (u_next + 1e-3).unsqueeze(0), dt, dx, nu, conservation_weight=1.0)
    plain = physics_reward(u, (u_next + 1e-3).unsqueeze(0), dt, dx, nu, conservation_weight=0.0)
    assert torch.all(shifted < plain)


def test_evaluate_float32_with_physics_reward_and_nu_per_trajectory() -> None:
    traj = advection_trajectories(n=3, t=4).float()
    res = evaluate(
        traj,
        predict=lambda u: exact_step(u) + 0.01,  # not exact, so ttc_improvement_pct is defined
        sample_candidates=noisy_sampler,
        dt=0.1,
        dx=1 / X,
        nu=np.array([0.01, 0.02, 0.05]),
        ttc_candidates=2,
        device="cpu",
    )
    assert all(math.isfinite(v) for v in res.metrics.values())
    assert res.per_trajectory["nrmse_ttc"].dtype == np.float64
    assert res.to_dict()["per_step"]["nrmse_ttc"] == res.per_step["nrmse_ttc"].tolist()


# ----------------------------------------------------------------------------- corrector baselines, fresh noise


class SeedLog:
    """A sampler that records (k, seed) of every call; candidate j is the exact step + (-1)^j * 0.1."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, u: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        self.calls.append((k, seed))
        sign = torch.tensor([(-1.0) ** j for j in range(k)], dtype=u.dtype).view(k, 1, 1)
        return exact_step(u).unsqueeze(0) + 0.1 * sign  # (k, B, X)


def test_corrector_mean_draws_fresh_seeds_at_every_step_and_batch() -> None:
    from raysim.eval.rollout import MEAN_STREAM, ONE_STEP_STREAM, SAMPLE_STREAM

    traj = advection_trajectories(n=5, t=5)
    log = SeedLog()
    res = evaluate(traj, predict=lambda u: exact_step(u) + 0.2, sample_candidates=log, dt=0.1, dx=1 / X, nu=0.01,
                   ttc_candidates=3, corrector_samples=4, batch_size=2, seed=3)
    steps, batches = 4, 3
    mean_seeds = [s for k, s in log.calls if k == 4]
    expected = {candidate_seed(3, b, s, steps, 4, stream) for b in range(batches) for s in range(steps)
                for stream in (MEAN_STREAM, ONE_STEP_STREAM)}
    assert set(mean_seeds) == expected and len(mean_seeds) == len(expected)  # one draw per (batch, step), no repeat
    single = [s for k, s in log.calls if k == 1]
    assert single == [candidate_seed(3, b, s, steps, 1, SAMPLE_STREAM) for b in range(batches) for s in range(steps)]
    used = [seed + j for k, seed in log.calls for j in range(k)]
    ttc_calls = [(k, s) for k, s in log.calls if k == 3]
    assert len(set(used)) == len(used) - 3 * (len(ttc_calls) - batches * steps)  # only the control reuses TTC's seeds
    m = res.metrics
    # the 4 samples' offsets cancel in their mean: the baseline is exact, one sample is off by 0.1 everywhere
    assert m["nrmse_one_step"] < 1e-12 and m["nrmse_rollout"] < 1e-12
    assert m["nrmse_one_step_corrector_sample"] > 0.05 and m["nrmse_rollout_corrector_sample"] > 0.05
    assert m["nrmse_one_step_operator"] > 0.1 and m["nrmse_rollout_operator"] > m["nrmse_one_step_operator"]
    for key in ("nrmse_rollout_operator", "nrmse_rollout_corrector_sample", "nrmse_one_step_operator"):
        assert res.per_trajectory[key].shape == (5,)
    assert res.per_step["nrmse_rollout_corrector_sample"].shape == (steps,)


def test_operator_is_evaluated_once_per_state() -> None:
    traj = advection_trajectories(n=4, t=4)
    calls = {"n": 0}

    def operator(u: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return exact_step(u)

    evaluate(traj, predict=operator, sample_candidates=None, dt=0.1, dx=1 / X, nu=0.01)
    assert calls["n"] == 2 * 3  # teacher-forced and rollout, persistence never calls it


def test_ttc_metrics_against_the_operator_and_against_chance() -> None:
    traj = advection_trajectories(n=6, t=5)
    kwargs = dict(dt=0.1, dx=1 / X, nu=0.01, ttc_candidates=3, batch_size=4)

    def operator(u: torch.Tensor) -> torch.Tensor:
        return exact_step(u) + 0.1

    def same(u: torch.Tensor, k: int, seed: int) -> torch.Tensor:  # every candidate the same: choice cannot matter
        return (exact_step(u) + 0.05).unsqueeze(0).repeat(k, 1, 1)

    res = evaluate(traj, predict=operator, sample_candidates=same, **kwargs).metrics
    candidate = evaluate(traj, predict=lambda u: exact_step(u) + 0.05, sample_candidates=None, **kwargs).metrics
    alone = res["nrmse_rollout_operator"]
    assert res["nrmse_ttc"] == pytest.approx(candidate["nrmse_rollout_operator"], rel=1e-12)
    assert res["ttc_vs_random_pct"] == pytest.approx(0.0, abs=1e-9)
    assert res["ttc_improvement_pct"] == pytest.approx((alone - res["nrmse_ttc"]) / alone * 100, rel=1e-9)
    assert res["ttc_improvement_pct"] > 10

    def one_exact(u: torch.Tensor, k: int, seed: int) -> torch.Tensor:  # candidate 1 exact, the others far off
        cands = exact_step(u).unsqueeze(0).repeat(k, 1, 1) + 1.0
        cands[min(1, k - 1)] = exact_step(u)
        return cands

    res = evaluate(traj, predict=operator, sample_candidates=one_exact, reward=oracle_reward, **kwargs)
    m = res.metrics
    assert m["nrmse_ttc"] < 1e-12 and m["nrmse_ttc_random"] > 0.5
    assert m["ttc_vs_random_pct"] == pytest.approx(100.0) and m["ttc_improvement_pct"] == pytest.approx(100.0)
    random_mean = float(np.mean(res.per_trajectory["nrmse_ttc_random"]))
    assert m["ttc_vs_random_pct"] == pytest.approx((random_mean - m["nrmse_ttc"]) / random_mean * 100)


def test_operator_candidate_is_candidate_zero() -> None:
    from raysim.eval.rollout import with_operator_candidate

    u = advection_trajectories(n=3, t=2)[:, 0]
    log = SeedLog()
    draw = with_operator_candidate(lambda v: exact_step(v) + 7.0, log)
    cands = draw(u, 3, 100)
    assert cands.shape == (3, 3, X)
    torch.testing.assert_close(cands[0], exact_step(u) + 7.0)
    assert log.calls == [(2, 101)]  # the samples take seeds 101, 102: the block of seed 100 stays unshared
    assert torch.equal(with_operator_candidate(exact_step, log)(u, 1, 5)[0], exact_step(u))


# ----------------------------------------------------------------------------- reward: resolved scales, weight


def test_low_pass_keeps_the_resolved_modes_only() -> None:
    from raysim.eval.ttc import low_pass

    x = grid(64)
    smooth, rough = torch.sin(2 * math.pi * 3 * x), 0.1 * torch.cos(2 * math.pi * 20 * x)
    torch.testing.assert_close(low_pass(smooth + rough, 8), smooth)
    torch.testing.assert_close(low_pass(smooth + rough, 21), smooth + rough)
    with pytest.raises(ValueError):
        low_pass(smooth, 0)


def test_resolved_modes_keep_unresolved_noise_from_deciding() -> None:
    u, dx, nu = burgers_setup(nx=128)
    dt = 1e-3
    u_next = true_step(u, dt, dx, nu)
    x = grid(128)
    rough = u_next + 3e-3 * torch.cos(2 * math.pi * 50 * x)  # the right step plus unresolved noise
    biased = u_next + 2e-3 * torch.sin(2 * math.pi * 2 * x)  # smooth, but a resolved-scale error
    cands = torch.stack([rough, biased])  # (2, B, X)
    assert physics_reward(u, cands, dt, dx, nu).argmax(0).tolist() == [1, 1]  # roughness decides
    assert physics_reward(u, cands, dt, dx, nu, resolved_modes=16).argmax(0).tolist() == [0, 0]


def test_conservation_weight_and_resolved_modes_reach_the_reward(monkeypatch) -> None:
    import raysim.eval.ttc as ttc
    from raysim.config import DiffusionStageConfig, RunConfig
    from raysim.models.build import build_corrector
    from raysim.train.evaluate import evaluate_models

    seen: list[tuple[float, int | None]] = []

    def recording(u_t, cands, dt, dx, nu, conservation_weight=1.0, method="spectral", resolved_modes=None):
        seen.append((conservation_weight, resolved_modes))
        return torch.zeros(cands.shape[:2])

    class Shift(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, u, x, nu, dt):
            return self.w * torch.roll(u, 1, dims=-1)

    monkeypatch.setattr(ttc, "physics_reward", recording)
    cfg = RunConfig(name="t")
    cfg.evaluation.conservation_weight, cfg.evaluation.reward_modes = 2.5, 7
    cfg.evaluation.ttc_candidates, cfg.evaluation.corrector_samples = 2, 2
    corrector = build_corrector(DiffusionStageConfig(hidden=8, layers=1)).eval()
    traj = advection_trajectories(n=2, t=3).float()
    metrics, per_traj, _ = evaluate_models(cfg, Shift(), corrector, traj, grid().float(), 0.1, 1 / X, 0.01)
    assert seen and set(seen) == {(2.5, 7)}
    assert {"nrmse_rollout", "nrmse_rollout_operator", "nrmse_rollout_corrector_sample"} <= set(per_traj)
    assert math.isfinite(metrics["ttc_vs_random_pct"])


def test_evaluate_models_without_a_corrector_reports_the_operator_alone() -> None:
    from raysim.config import RunConfig
    from raysim.train.evaluate import evaluate_models

    class Shift(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.full((), 0.9))
            self.spectral = torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))  # counts as 6 real numbers

        def forward(self, u, x, nu, dt):
            return self.w * torch.roll(u, 1, dims=-1)

    cfg = RunConfig(name="t")
    operator = Shift()
    for p in operator.parameters():
        p.requires_grad_(False)  # as loaded for evaluation
    traj = advection_trajectories(n=3, t=4).float()
    metrics, per_traj, per_step = evaluate_models(cfg, operator, None, traj, grid().float(), 0.1, 1 / X, 0.01)
    for name in ("nrmse_rollout_operator", "nrmse_one_step_operator"):
        assert math.isfinite(metrics[name]) and metrics[name] > 0, name
        assert per_traj[name].shape == (3,) and np.all(np.isfinite(per_traj[name])), name
    for alone, combined in (("nrmse_rollout_operator", "nrmse_rollout"), ("nrmse_one_step_operator", "nrmse_one_step")):
        assert metrics[alone] == metrics[combined]
        np.testing.assert_array_equal(per_traj[alone], per_traj[combined])
    np.testing.assert_array_equal(per_step["nrmse_rollout_operator"], per_step["nrmse_rollout"])
    assert per_step["nrmse_rollout_operator"].shape == (3,)
    for name in ("nrmse_rollout_corrector_sample", "nrmse_ttc", "ttc_vs_random_pct"):
        assert math.isnan(metrics[name]), name
    assert metrics["params_operator"] == metrics["params"] == 1 + 2 * 3


# ----------------------------------------------------------------------------- the corrector's per-level losses


def _pairs(n: int = 3, t: int = 5, nx: int = X, scale: float = 0.05):
    from raysim.train.corrector_data import ResidualPairs

    truth = advection_trajectories(n=n, t=t, nx=nx).float()
    g = torch.Generator().manual_seed(0)
    inputs = truth[:, :-1] + scale * torch.randn(n, t - 1, nx, generator=g)
    preds = truth[:, 1:] + scale * torch.randn(n, t - 1, nx, generator=g)
    return ResidualPairs(inputs, preds, truth, nu=0.01, dt=0.1)


class Nothing(torch.nn.Module):
    """A denoiser that predicts v_hat = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, channels: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        return self.w * channels[:, 0]


def test_predict_nothing_reference_matches_a_denoiser_that_predicts_nothing() -> None:
    from raysim.models.diffusion import DiffusionCorrector, noise_schedule, predict_nothing_loss
    from raysim.train.corrector_data import level_losses

    pairs = _pairs(n=8, t=9, nx=64)
    model = DiffusionCorrector(Nothing(), noise_schedule(3, 2e-3))
    model.set_residual_scale(0.08)
    batch = pairs.take(torch.arange(len(pairs)))
    mean_square = pairs.residual_mean_square() / 0.08**2
    losses = level_losses(model, batch, seed=0)
    reference = predict_nothing_loss(model.sigmas, mean_square)
    assert losses.shape == reference.shape == (4,)
    torch.testing.assert_close(losses, reference, rtol=0.03, atol=0.0)  # Monte Carlo over 64 x 64 noise draws
    assert reference[0] == pytest.approx(mean_square) and reference[-1] == pytest.approx(1.0, abs=1e-4)


def test_corrector_epoch_metrics_log_every_level_on_both_splits() -> None:
    from raysim.config import DiffusionStageConfig
    from raysim.models.build import build_corrector
    from raysim.train.corrector_data import corrector_metrics, operator_pairs, teacher_forced_batch

    truth = advection_trajectories(n=3, t=5).float()

    class Shift(torch.nn.Module):
        def forward(self, u, x, nu, dt):
            return 0.9 * torch.roll(u, 1, dims=-1)

    rollout_pairs = operator_pairs(Shift(), truth, grid().float(), 0.01, 0.1, "rollout", torch.device("cpu"))
    assert torch.equal(rollout_pairs.preds[:, :-1], rollout_pairs.inputs[:, 1:])  # the operator's own rollout
    assert torch.equal(rollout_pairs.inputs[:, 0], truth[:, 0])
    forced = operator_pairs(Shift(), truth, grid().float(), 0.01, 0.1, "teacher_forced", torch.device("cpu"))
    assert torch.equal(forced.inputs, truth[:, :-1])
    assert rollout_pairs.residual_mean_square() > forced.residual_mean_square()  # errors carried along a rollout
    corrector = build_corrector(DiffusionStageConfig(hidden=8, layers=1, noise_steps=2))
    corrector.set_residual_scale(rollout_pairs.residual_mean_square() ** 0.5)
    batch = rollout_pairs.take(rollout_pairs.spread(8))
    metrics = corrector_metrics(batch, batch, teacher_forced_batch(Shift(), rollout_pairs, 8, grid().float(),
                                                                   torch.device("cpu")), 2, 0, torch.device("cpu"))
    first, second = metrics(corrector), metrics(corrector)
    assert first == second  # the same noise every epoch: epochs are comparable
    for k in range(3):
        for key in ("train_loss_level", "val_loss_level", "reference_loss_level", "train_reference_loss_level"):
            assert math.isfinite(first[f"{key}{k}"]), f"{key}{k}"
    assert "train_loss_level3" not in first
    for key in ("operator", "corrector_sample", "corrected"):
        assert math.isfinite(first[f"val_nrmse_one_step_{key}"])


def test_rollout_pairs_end_where_the_rollout_drifts_away() -> None:
    from raysim.train.corrector_data import rollout_keep

    truth = torch.ones(2, 5, 4)
    inputs = truth[:, :-1].clone()
    inputs[0, 2] = 3.0  # nRMSE 2 at step 2 of trajectory 0: it and what follows are dropped
    inputs[1, 3] = 1.5  # nRMSE 0.5: kept
    assert rollout_keep(inputs, truth, 1.0).tolist() == [0, 1, 4, 5, 6, 7]
