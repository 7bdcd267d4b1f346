"""Autoregressive rollout and the full evaluation of a surrogate on test trajectories.

`evaluate` works on callables and tensors only: `predict(u) -> u_next` is the operator alone and
`sample_candidates(u, k, seed) -> (k, B, X)` draws k corrected predictions (candidate j with seed
``seed + j``). From these it builds the corrector's baselines with fresh noise at every step and batch,
TTC and its random-choice control. All fields are in physical (de-normalised) units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from raysim.eval.metrics import bc_violation_per_sample, conservation_gap_per_sample, nrmse_per_sample
from raysim.eval.ttc import physics_reward, select_per_sample, select_random

__all__ = [
    "METRIC_KEYS",
    "EvalResult",
    "candidate_seed",
    "evaluate",
    "rollout",
    "ttc_rollout",
    "with_operator_candidate",
]

Step = Callable[[Tensor], Tensor]
Sampler = Callable[[Tensor, int, int], Tensor]
Reward = Callable[..., Tensor]

METRIC_KEYS = (
    "nrmse_one_step",
    "nrmse_rollout",
    "nrmse_one_step_operator",
    "nrmse_rollout_operator",
    "nrmse_one_step_corrector_sample",
    "nrmse_rollout_corrector_sample",
    "nrmse_persistence",
    "nrmse_persistence_rollout",
    "conservation_gap",
    "conservation_drift",
    "bc_violation",
    "nrmse_ttc",
    "nrmse_ttc_random",
    "ttc_improvement_pct",
    "ttc_vs_random_pct",
    "ttc_evaluations",
)
_CORRECTOR_KEYS = ("nrmse_one_step_corrector_sample", "nrmse_rollout_corrector_sample", "nrmse_ttc",
                   "nrmse_ttc_random")
_TTC_KEYS = ("nrmse_ttc", "nrmse_ttc_random", "ttc_improvement_pct", "ttc_vs_random_pct", "ttc_evaluations")
_PER_TRAJ_KEYS = (
    "nrmse_one_step",
    "nrmse_one_step_operator",
    "nrmse_one_step_corrector_sample",
    "nrmse_persistence",
    "nrmse_rollout",
    "nrmse_rollout_operator",
    "nrmse_rollout_corrector_sample",
    "nrmse_persistence_rollout",
    "nrmse_ttc",
    "nrmse_ttc_random",
    "conservation_gap",
    "conservation_drift",
    "bc_violation",
)
_PER_STEP_KEYS = (
    "nrmse_rollout",
    "nrmse_rollout_operator",
    "nrmse_rollout_corrector_sample",
    "nrmse_persistence_rollout",
    "nrmse_ttc",
    "nrmse_ttc_random",
    "conservation_gap",
    "bc_violation",
)
# seed streams of one evaluation (`candidate_seed`); stream 1 seeds the control's generator
TTC_STREAM, CONTROL_STREAM, ONE_STEP_STREAM, MEAN_STREAM, SAMPLE_STREAM = 0, 1, 2, 3, 4
_SEED_SPACE = 1 << 60  # base seeds stay below this so base + offsets fits in 63 bits


@dataclass
class EvalResult:
    """Scalar metrics, per-trajectory values (for paired bootstrap) and per-step curves."""

    metrics: dict[str, float]
    per_trajectory: dict[str, np.ndarray] = field(default_factory=dict)  # each (N,)
    per_step: dict[str, np.ndarray] = field(default_factory=dict)  # each (steps,)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (arrays become lists; NaN stays float NaN)."""
        return {
            "metrics": dict(self.metrics),
            "per_trajectory": {k: v.tolist() for k, v in self.per_trajectory.items()},
            "per_step": {k: v.tolist() for k, v in self.per_step.items()},
        }


def _check_step_output(out: Tensor, u: Tensor, what: str) -> Tensor:
    """Raise unless a step returned a tensor shaped like its input."""
    if not isinstance(out, Tensor) or out.shape != u.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"{what} must return a tensor shaped {tuple(u.shape)}, got {shape}")
    return out


def rollout(step: Step, u0: Tensor, steps: int) -> Tensor:
    """Autoregressive rollout without gradients: u0 (B, X) -> (B, steps+1, X), frame 0 is u0."""
    if u0.ndim != 2:
        raise ValueError(f"u0 must be shaped (B, X), got {tuple(u0.shape)}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    frames = [u0]
    with torch.no_grad():
        u = u0
        for _ in range(steps):
            u = _check_step_output(step(u), u, "step")  # (B, X)
            frames.append(u)
    return torch.stack(frames, dim=1)  # (B, steps+1, X)


def _base_seed(seed: int, stream: int) -> int:
    """A deterministic 60-bit seed derived from (seed, stream)."""
    state = np.random.SeedSequence([int(seed), int(stream)]).generate_state(1, dtype=np.uint64)
    return int(state[0]) % _SEED_SPACE


def candidate_seed(seed: int, batch_index: int, step: int, horizon: int, k: int, stream: int = TTC_STREAM) -> int:
    """The seed passed to `sample_candidates` for one batch and rollout step (0-based).

    base(seed, stream) + (batch_index * horizon + step) * k: step seeds are k apart, so a
    sampler that gives candidate j the seed `seed + j` never reuses a seed
    across candidates, steps or batches of one evaluation. Each use of the sampler
    (TTC, the corrector mean, one sample, the one-step error) has its own stream,
    a distinct 60-bit base.
    """
    return _base_seed(seed, stream) + (batch_index * horizon + step) * k


def _draw(sample_candidates: Sampler, u: Tensor, k: int, seed: int) -> Tensor:
    """Call the sampler and check it returned (k, B, X)."""
    cands = sample_candidates(u, k, seed)
    want = (k, *u.shape)
    if not isinstance(cands, Tensor) or tuple(cands.shape) != want:
        shape = tuple(cands.shape) if isinstance(cands, Tensor) else type(cands).__name__
        raise ValueError(f"sample_candidates must return a tensor shaped {want}, got {shape}")
    return cands


def _score(reward: Reward, u: Tensor, cands: Tensor, dt: float, dx: float, nu: float | Tensor) -> Tensor:
    """Call the reward and check it returned (K, B)."""
    scores = reward(u, cands, dt, dx, nu)
    if not isinstance(scores, Tensor) or scores.shape != cands.shape[:2]:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"reward must return a tensor shaped {tuple(cands.shape[:2])}, got {shape}")
    return scores


def ttc_rollout(
    sample_candidates: Sampler,
    u0: Tensor,
    steps: int,
    *,
    k: int,
    seeds: list[int],
    dt: float,
    dx: float,
    nu: float | Tensor,
    reward: Reward = physics_reward,
    control_generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """TTC rollout (best reward per sample) and, with a generator, the random-choice control.

    Returns (ttc (B, steps+1, X), control (B, steps+1, X) or None).  At step s
    both paths draw k candidates with seed ``seeds[s]``.  Whenever the control's
    state equals the TTC state (always at step 0) the very same candidates are
    scored once and picked twice; once the paths differ, the control's
    candidates are drawn from its own state with the same seed (common random
    numbers), so the comparison stays paired.
    """
    if len(seeds) < steps:
        raise ValueError(f"need one seed per step, got {len(seeds)} for {steps} steps")
    u_ttc = u0  # (B, X)
    u_ctl = u0 if control_generator is not None else None
    path_ttc = [u0]
    path_ctl = [u0]
    with torch.no_grad():
        for s in range(steps):
            cands = _draw(sample_candidates, u_ttc, k, seeds[s])  # (K, B, X)
            scores = _score(reward, u_ttc, cands, dt, dx, nu)  # (K, B)
            u_next, _ = select_per_sample(cands, scores)  # (B, X)
            if u_ctl is not None and control_generator is not None:
                same_state = u_ctl is u_ttc or torch.equal(u_ctl, u_ttc)
                ctl_cands = cands if same_state else _draw(sample_candidates, u_ctl, k, seeds[s])  # (K, B, X)
                u_ctl, _ = select_random(ctl_cands, control_generator)  # (B, X)
                path_ctl.append(u_ctl)
            u_ttc = u_next
            path_ttc.append(u_ttc)
    ttc = torch.stack(path_ttc, dim=1)  # (B, steps+1, X)
    ctl = torch.stack(path_ctl, dim=1) if control_generator is not None else None
    return ttc, ctl


def with_operator_candidate(predict: Step, sample_candidates: Sampler) -> Sampler:
    """A sampler whose candidate 0 is the operator alone, predict(u), and 1..k-1 corrector samples (seeds + 1..)."""

    def draw(u: Tensor, k: int, seed: int) -> Tensor:
        alone = _check_step_output(predict(u), u, "predict").unsqueeze(0)  # (1, B, X)
        if k == 1:
            return alone
        return torch.cat([alone, _draw(sample_candidates, u, k - 1, seed + 1)])  # (k, B, X)

    return draw


def _seeded_rollout(draw: Callable[[Tensor, int], Tensor], u0: Tensor, seeds: list[int]) -> Tensor:
    """Rollout whose step s is draw(u, seeds[s]): u0 (B, X) -> (B, len(seeds) + 1, X)."""
    frames, u = [u0], u0
    for seed in seeds:
        u = _check_step_output(draw(u, seed), u, "corrector step")  # (B, X)
        frames.append(u)
    return torch.stack(frames, dim=1)


def _prepare_nu(nu: float | Tensor, n: int) -> float | Tensor:
    """Validate nu: a float, a 0-d tensor, or a tensor (or array) shaped (N,)."""
    if isinstance(nu, np.ndarray):
        nu = torch.as_tensor(nu)
    if isinstance(nu, Tensor):
        if nu.ndim == 0:
            return float(nu)
        if nu.shape != (n,):
            raise ValueError(f"nu must be a float or a tensor shaped ({n},), got {tuple(nu.shape)}")
        return nu
    return float(nu)


def evaluate(
    trajectories: Tensor,
    *,
    predict: Step,
    sample_candidates: Sampler | None,
    dt: float,
    dx: float,
    nu: float | Tensor,
    horizon: int | None = None,
    ttc_candidates: int = 4,
    corrector_samples: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    reward: Reward = physics_reward,
    operator_candidate: bool = False,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Evaluate the operator, its corrector and TTC on trajectories (N, T, X) in physical units.

    ``predict`` is the operator alone; ``sample_candidates`` (None: no corrector) draws corrected
    predictions. Metrics (averaged over trajectories and, where it applies, over steps):

    - ``nrmse_one_step_operator`` / ``nrmse_rollout_operator``: the operator alone, teacher-forced
      (predict(u[t]) against u[t+1] for every t < T-1) and autoregressive from u[0] over ``horizon``
      steps (default T-1).
    - ``nrmse_one_step`` / ``nrmse_rollout``: the baseline, the mean of ``corrector_samples`` corrector
      samples with fresh seeds at every step and batch (the operator alone without a corrector).
    - ``nrmse_one_step_corrector_sample`` / ``nrmse_rollout_corrector_sample``: one fresh sample per step.
    - ``nrmse_persistence``: u[t+1] = u[t]; ``nrmse_persistence_rollout``: u[0] held over the horizon.
    - ``conservation_gap`` / ``bc_violation``: on the baseline rollout, averaged over steps;
      ``conservation_drift``: the gap at the final step.
    - ``nrmse_ttc``: autoregressive; each step draws K candidates and keeps, per sample, the one with
      the highest ``reward(u, cands, dt, dx, nu)``. With ``operator_candidate`` candidate 0 is the
      operator alone and the other K-1 are corrector samples (`with_operator_candidate`).
    - ``nrmse_ttc_random``: the control, a seeded random candidate per sample from the same candidates
      (same candidates at equal states, same seeds otherwise; see `ttc_rollout`).
    - ``ttc_improvement_pct`` = (nrmse_rollout_operator - nrmse_ttc) / nrmse_rollout_operator * 100:
      TTC against the operator alone.
    - ``ttc_vs_random_pct`` = (nrmse_ttc_random - nrmse_ttc) / nrmse_ttc_random * 100: TTC against chance.
    - ``ttc_evaluations`` = K * horizon * N candidates scored.

    Corrector keys are NaN when ``sample_candidates`` is None. Seeds come from `candidate_seed`, one
    stream per use (distinct across steps, batches and candidates), so results are deterministic given
    ``seed`` and ``batch_size``. Shared work is done once: persistence and the operator alone.
    """
    if not isinstance(trajectories, Tensor):
        trajectories = torch.as_tensor(np.asarray(trajectories))
    if trajectories.ndim != 3:
        raise ValueError(f"trajectories must be shaped (N, T, X), got {tuple(trajectories.shape)}")
    n, t_len, _ = trajectories.shape
    if n < 1 or t_len < 2:
        raise ValueError(f"need at least one trajectory of at least 2 frames, got {tuple(trajectories.shape)}")
    h = t_len - 1 if horizon is None else int(horizon)
    if not 1 <= h <= t_len - 1:
        raise ValueError(f"horizon must be in [1, {t_len - 1}], got {horizon}")
    for name, value in (("ttc_candidates", ttc_candidates), ("corrector_samples", corrector_samples),
                        ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    nu_all = _prepare_nu(nu, n)
    dev = torch.device(device) if device is not None else trajectories.device
    k, samples = int(ttc_candidates), int(corrector_samples)
    corrected = sample_candidates is not None
    control_gen = torch.Generator(device="cpu")
    control_gen.manual_seed(_base_seed(seed, CONTROL_STREAM))

    per_traj: dict[str, list[Tensor]] = {key: [] for key in _PER_TRAJ_KEYS}
    step_sums: dict[str, Tensor] = {key: torch.zeros(h, dtype=torch.float64) for key in _PER_STEP_KEYS}

    def add(key: str, err: Tensor) -> None:
        """Record per-(sample, step) values err (B, S): mean over steps per trajectory, sum over samples per step."""
        err = err.detach().to("cpu", torch.float64)
        per_traj[key].append(err.mean(dim=1))  # (B,)
        if key in step_sums:
            step_sums[key] += err.sum(dim=0)  # (S,)

    def mean_step(u: Tensor, s: int) -> Tensor:
        assert sample_candidates is not None
        return _draw(sample_candidates, u, samples, s).mean(dim=0)  # (B, X)

    def sample_step(u: Tensor, s: int) -> Tensor:
        assert sample_candidates is not None
        return _draw(sample_candidates, u, 1, s)[0]  # (B, X)

    with torch.no_grad():
        for b_idx, start in enumerate(range(0, n, batch_size)):
            traj = trajectories[start : start + batch_size].to(dev)  # (B, T, X)
            bsz = traj.shape[0]
            nu_b = nu_all[start : start + bsz].to(dev) if isinstance(nu_all, Tensor) else nu_all
            nan = torch.full((bsz, h), float("nan"), dtype=torch.float64)

            # Teacher-forced one-step errors and persistence over every frame.
            one = {"op": [], "mean": [], "sample": [], "pers": []}
            for t in range(t_len - 1):
                u_t, truth_t = traj[:, t], traj[:, t + 1]  # (B, X)
                pred = _check_step_output(predict(u_t), u_t, "predict")  # (B, X)
                one["op"].append(nrmse_per_sample(pred, truth_t))  # (B,)
                one["pers"].append(nrmse_per_sample(u_t, truth_t))
                if corrected:
                    assert sample_candidates is not None
                    seed_t = candidate_seed(seed, b_idx, t, t_len - 1, samples, ONE_STEP_STREAM)
                    cands = _draw(sample_candidates, u_t, samples, seed_t)  # (S, B, X)
                    one["mean"].append(nrmse_per_sample(cands.mean(dim=0), truth_t))
                    one["sample"].append(nrmse_per_sample(cands[0], truth_t))
            add("nrmse_one_step_operator", torch.stack(one["op"], dim=1))  # (B, T-1)
            add("nrmse_persistence", torch.stack(one["pers"], dim=1))
            add("nrmse_one_step", torch.stack(one["mean" if corrected else "op"], dim=1))
            add("nrmse_one_step_corrector_sample", torch.stack(one["sample"], dim=1) if corrected else nan[:, :1])

            # Autoregressive rollouts against the truth over the horizon.
            truth = traj[:, 1 : h + 1]  # (B, H, X)
            alone = rollout(predict, traj[:, 0], h)[:, 1:]  # (B, H, X)
            add("nrmse_rollout_operator", nrmse_per_sample(alone, truth))  # (B, H)
            add("nrmse_persistence_rollout", nrmse_per_sample(traj[:, :1].expand_as(truth), truth))
            roll = alone
            if corrected:
                seeds = [candidate_seed(seed, b_idx, s, h, samples, MEAN_STREAM) for s in range(h)]
                roll = _seeded_rollout(mean_step, traj[:, 0], seeds)[:, 1:]
                seeds = [candidate_seed(seed, b_idx, s, h, 1, SAMPLE_STREAM) for s in range(h)]
                single = _seeded_rollout(sample_step, traj[:, 0], seeds)[:, 1:]
                add("nrmse_rollout_corrector_sample", nrmse_per_sample(single, truth))
            else:
                add("nrmse_rollout_corrector_sample", nan)
            add("nrmse_rollout", nrmse_per_sample(roll, truth))
            gap = conservation_gap_per_sample(roll, truth)  # (B, H)
            add("conservation_gap", gap)
            add("conservation_drift", gap[:, -1:])
            add("bc_violation", bc_violation_per_sample(roll, truth))

            # Test-time compute and its random-choice control.
            if corrected:
                assert sample_candidates is not None
                draw = with_operator_candidate(predict, sample_candidates) if operator_candidate else sample_candidates
                seeds = [candidate_seed(seed, b_idx, s, h, k, TTC_STREAM) for s in range(h)]
                ttc, ctl = ttc_rollout(draw, traj[:, 0], h, k=k, seeds=seeds, dt=dt, dx=dx, nu=nu_b, reward=reward,
                                       control_generator=control_gen)
                assert ctl is not None
                add("nrmse_ttc", nrmse_per_sample(ttc[:, 1:], truth))
                add("nrmse_ttc_random", nrmse_per_sample(ctl[:, 1:], truth))
            else:
                add("nrmse_ttc", nan)
                add("nrmse_ttc_random", nan)

    per_trajectory = {key: torch.cat(vals).numpy() for key, vals in per_traj.items()}  # each (N,)
    per_step = {key: (s / n).numpy() for key, s in step_sums.items()}  # each (H,)
    metrics = {key: float(np.mean(per_trajectory[key])) for key in _PER_TRAJ_KEYS}
    if corrected:
        metrics["ttc_improvement_pct"] = _pct_below(metrics["nrmse_ttc"], metrics["nrmse_rollout_operator"])
        metrics["ttc_vs_random_pct"] = _pct_below(metrics["nrmse_ttc"], metrics["nrmse_ttc_random"])
        metrics["ttc_evaluations"] = float(k * h * n)
    else:
        for key in (*_TTC_KEYS, *_CORRECTOR_KEYS):
            metrics[key] = math.nan
    return EvalResult(
        metrics={key: metrics[key] for key in METRIC_KEYS}, per_trajectory=per_trajectory, per_step=per_step
    )


def _pct_below(value: float, reference: float) -> float:
    """How far `value` lies below `reference`, in percent of the reference (NaN when the reference is 0)."""
    return (reference - value) / reference * 100.0 if reference > 0 else math.nan
