"""Unit tests of raysim.analysis: bootstrap verdicts on synthetic arrays, a fake study folder, promotion, milestones."""

from __future__ import annotations

import copy
import io
import json
import math
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raysim.analysis import (
    check_milestones,
    evaluate_hypotheses,
    evaluate_hypothesis,
    hypothesis_table,
    load,
    load_per_trajectory,
    load_results,
    log_ratio_t_interval,
    paired_bootstrap_ratio,
    promote,
    storage,
    study_cost,
    t_quantile,
    trial_cost,
    verdict,
    write_report,
)
from raysim.analysis.load import baseline_arms, load_study, write_result, write_study
from raysim.config import METRICS, ArmConfig, HypothesisConfig, MatrixConfig, ProfileConfig, RunConfig, to_dict
from raysim.errors import UserError

N_TRAJ = 64
HYPOTHESIS_KEYS = {
    "id",
    "description",
    "verdict",
    "metric",
    "test",
    "candidate",
    "reference",
    "reference_kind",
    "candidate_value",
    "reference_value",
    "ratio",
    "ci",
    "threshold",
    "n_trajectories",
    "n_seeds",
    "n_seeds_by_arm",
    "single_seed",
    "interval",
    "df",
    "params_ratio",
    "params_metric",
    "flops_ratio",
    "other_metric",
    "other_ratio",
    "reason",
}


def _reference(n: int = N_TRAJ, seeds: int = 1, seed: int = 0) -> np.ndarray:
    """Per-trajectory errors of a reference arm, (seeds, n), around 0.06."""
    return np.random.default_rng(seed).uniform(0.03, 0.09, size=(seeds, n))


def _noisy(reference: np.ndarray, factor: float, noise: float, seed: int = 1) -> np.ndarray:
    """`factor` x reference plus zero-mean noise (exactly zero mean, so the ratio of means is `factor`)."""
    eps = np.random.default_rng(seed).normal(0.0, noise, size=reference.shape)
    return factor * reference + (eps - eps.mean())


# --------------------------------------------------------------------------- statistics


def test_within_clear_pass() -> None:
    ref = _reference()
    ratio, low, high = paired_bootstrap_ratio(_noisy(ref, 1.0, 0.001), ref)
    assert ratio == pytest.approx(1.0)
    assert 0.95 < low <= ratio <= high < 1.05
    assert verdict("within", (low, high), tolerance=0.05, margin=0.1) == "PASS"


def test_within_clear_fail() -> None:
    ref = _reference()
    ratio, low, high = paired_bootstrap_ratio(_noisy(ref, 1.3, 0.001), ref)
    assert ratio == pytest.approx(1.3)
    assert verdict("within", (low, high), tolerance=0.05, margin=0.1) == "FAIL"


def test_within_overlapping_interval_is_inconclusive() -> None:
    ref = _reference()
    ratio, low, high = paired_bootstrap_ratio(_noisy(ref, 1.05, 0.03), ref)
    assert ratio == pytest.approx(1.05)
    assert low < 1.05 < high
    assert verdict("within", (low, high), tolerance=0.05, margin=0.1) == "INCONCLUSIVE"


@pytest.mark.parametrize(("factor", "expected"), [(0.8, "PASS"), (0.98, "FAIL")])
def test_better_by(factor: float, expected: str) -> None:
    ref = _reference()
    _, low, high = paired_bootstrap_ratio(_noisy(ref, factor, 0.001), ref)
    assert verdict("better_by", (low, high), tolerance=0.05, margin=0.10) == expected


def test_pairing_removes_shared_difficulty() -> None:
    """Trajectory difficulty shared by both arms cancels: a paired CI is narrow although values vary 3x."""
    ref = _reference()
    _, low, high = paired_bootstrap_ratio(1.02 * ref, ref)
    assert high - low < 1e-9
    assert low == pytest.approx(1.02)


def test_fixed_reference_only_candidate_varies() -> None:
    cand = _noisy(np.full((1, N_TRAJ), 0.058), 1.0, 0.002)
    ratio, low, high = paired_bootstrap_ratio(cand, 0.0577)
    assert ratio == pytest.approx(0.058 / 0.0577)
    assert low < ratio < high
    assert verdict("within", (low, high), 0.05, 0.1) == "PASS"
    r = evaluate_hypothesis(
        HypothesisConfig(id="H1", candidate="pure-128", test="within", reference_value=0.0577),
        {"pure-128": cand},
        {"pure-128": float(cand.mean())},
    )
    assert r["reference_kind"] == "fixed" and r["reference"] is None
    assert r["reference_value"] == 0.0577 and r["verdict"] == "PASS"


def test_several_seeds_hierarchical() -> None:
    ref = _reference(seeds=3)
    offsets = np.array([[0.9], [1.0], [1.1]])  # seed-to-seed spread of the candidate
    cand = ref * offsets
    ratio, low, high = paired_bootstrap_ratio(cand, ref)
    _, low_1, high_1 = paired_bootstrap_ratio(cand[1:2], ref[1:2])
    assert ratio == pytest.approx(1.0, abs=0.02)
    assert low < 1.0 < high
    assert high - low > 0.05  # seeds resampled: their spread shows in the interval
    assert high_1 - low_1 < 1e-9  # one seed: the same trajectories, no spread
    same_ratio, same_low, same_high = paired_bootstrap_ratio(ref, ref)
    assert (same_ratio, same_low, same_high) == pytest.approx((1.0, 1.0, 1.0))


def test_bootstrap_is_deterministic_and_rejects_bad_input() -> None:
    ref = _reference()
    cand = _noisy(ref, 1.0, 0.01)
    assert paired_bootstrap_ratio(cand, ref, seed=3) == paired_bootstrap_ratio(cand, ref, seed=3)
    with pytest.raises(ValueError, match="cannot pair"):
        paired_bootstrap_ratio(cand, ref[:, :10])
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap_ratio(np.full((1, 4), np.nan), ref[:, :4])


def test_t_quantile_known_values() -> None:
    """Two-sided 95% quantiles of Student's t from tables, and real-valued df between them."""
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 5: 2.5706, 10: 2.2281, 30: 2.0423, 120: 1.9799}
    values = t_quantile(0.95, np.array(list(table), dtype=float))
    assert values == pytest.approx(list(table.values()), abs=1e-4)
    assert t_quantile(0.90, 4.0) == pytest.approx(2.1318, abs=1e-4)
    assert t_quantile(0.99, 7.0) == pytest.approx(3.4995, abs=1e-4)
    assert t_quantile(0.95, 1e7) == pytest.approx(1.95996, abs=1e-4)  # the normal quantile
    between = t_quantile(0.95, np.array([1.5, 2.5, 7.5]))
    assert 12.7062 > between[0] > 4.3027 > between[1] > 3.1824 and 2.3646 > between[2] > 2.3060
    with pytest.raises(ValueError):
        t_quantile(0.95, 0.5)


def test_t_interval_known_answer() -> None:
    """Shared difficulty (3x across trajectories) cancels; +-10% seed spread in both arms gives Welch df 2."""
    base = np.random.default_rng(0).uniform(0.03, 0.09, size=N_TRAJ)
    ref = base[None, :] * np.array([[0.9], [1.1]])  # (2 seeds, N): relative per-seed means 0.9 and 1.1
    cand = 1.3 * ref
    ratio, low, high, df, log_se = log_ratio_t_interval(cand, ref)
    assert ratio == pytest.approx(1.3) and df == pytest.approx(2.0)
    assert log_se == pytest.approx(math.sqrt(0.02))  # 2 arms x var([0.9, 1.1]) / 2 seeds
    half = 4.302652729749464 * math.sqrt(0.02)
    assert (low, high) == pytest.approx((1.3 * math.exp(-half), 1.3 * math.exp(half)))
    per_seed = log_ratio_t_interval(cand.mean(1, keepdims=True), ref.mean(1, keepdims=True))  # (2, 1): seeds only
    assert per_seed.low == pytest.approx(low) and per_seed.high == pytest.approx(high)
    still = log_ratio_t_interval(np.stack([1.3 * base] * 3), np.stack([base] * 3))  # no variation at all
    assert still.low == pytest.approx(1.3) and still.high == pytest.approx(1.3)
    flat = np.full((1, N_TRAJ), 0.05) * np.array([[0.9], [1.1]])  # no trajectory spread: the seed term alone
    fixed = log_ratio_t_interval(flat, 0.04)  # fixed reference: t with 1 df on one arm's seed term
    assert fixed.ratio == pytest.approx(1.25) and math.isnan(fixed.df)
    assert math.log(fixed.high / fixed.ratio) == pytest.approx(12.706204736174707 * math.sqrt(0.01))
    spread = log_ratio_t_interval(ref, 0.04)  # trajectories now vary 3x: against a fixed number that counts
    assert spread.log_se > fixed.log_se


def test_t_interval_rejects_bad_input() -> None:
    ref = _reference(seeds=2)
    with pytest.raises(ValueError, match="seeds >= 2"):
        log_ratio_t_interval(ref[:1], ref)
    with pytest.raises(ValueError, match="pair"):
        log_ratio_t_interval(ref, ref[:, :10])
    with pytest.raises(ValueError, match="non-finite"):
        log_ratio_t_interval(np.full((2, N_TRAJ), np.nan), ref)
    with pytest.raises(ValueError, match="positive"):
        log_ratio_t_interval(ref, 0.0)


def _simulated_studies(rng: np.random.Generator, n_studies: int, n_seeds: int, ratio: float) -> list[np.ndarray]:
    """Candidate and reference (studies, seeds, 64 trajectories) whose expected metrics have ratio `ratio`.

    Value = arm scale x seed effect x trajectory difficulty x noise, each factor lognormal with mean 1:
    seed effects sd 10% (candidate) and 20% (reference); a difficulty shared by both arms (sd 0.5; the
    candidate's error grows with it as difficulty^1.2, rescaled to mean 1); independent noise (sd 0.3).
    The expectation over seeds and trajectories of each arm is its scale, so the truth is `ratio`.
    """
    sd_difficulty = 0.5
    difficulty = rng.lognormal(-(sd_difficulty**2) / 2, sd_difficulty, size=(n_studies, 1, N_TRAJ))
    arms = []
    for scale, sd_seed, power in ((ratio, 0.10, 1.2), (1.0, 0.20, 1.0)):
        seed_effect = rng.lognormal(-(sd_seed**2) / 2, sd_seed, size=(n_studies, n_seeds, 1))
        noise = rng.lognormal(-(0.3**2) / 2, 0.3, size=(n_studies, n_seeds, N_TRAJ))
        mean_power = np.exp(-power * sd_difficulty**2 / 2 + power**2 * sd_difficulty**2 / 2)  # E[difficulty^power]
        arms.append(scale * seed_effect * difficulty**power / mean_power * noise)
    return arms


@pytest.mark.parametrize("n_seeds", [2, 3, 5])
def test_t_interval_covers_the_ratio_of_expected_metrics(n_seeds: int) -> None:
    """2000 simulated studies: the 95% interval covers the true ratio in 93-97% of them, for 2, 3 and 5 seeds."""
    truth = 0.9
    cand, ref = _simulated_studies(np.random.default_rng(100 + n_seeds), 2000, n_seeds, truth)
    interval = log_ratio_t_interval(cand, ref)  # vectorised over studies
    covered = np.mean((interval.low <= truth) & (truth <= interval.high))
    assert 0.93 <= covered <= 0.97, covered
    fixed = log_ratio_t_interval(cand, 1.0)  # against the reference's true mean as a fixed number: conservative
    covered_fixed = np.mean((fixed.low <= truth) & (truth <= fixed.high))
    assert 0.94 <= covered_fixed <= 0.99, covered_fixed


def test_bootstrap_over_two_seeds_under_covers() -> None:
    """Why the t interval: a percentile bootstrap over 2 seeds and the trajectories covers far less than 95%."""
    cand, ref = _simulated_studies(np.random.default_rng(7), 200, 2, 0.9)
    intervals = [paired_bootstrap_ratio(c, r, n_boot=300)[1:] for c, r in zip(cand, ref, strict=True)]
    assert np.mean([low <= 0.9 <= high for low, high in intervals]) < 0.85


def _study_frame(seeds: dict[str, int], metric: str = "nrmse_rollout_operator") -> pd.DataFrame:
    rows = [{"arm": arm, "seed": s, "status": "finished", metric: 0.06} for arm, n in seeds.items() for s in range(n)]
    return pd.DataFrame(rows)


def test_single_seed_verdict_is_labelled() -> None:
    h = HypothesisConfig(id="H1", candidate="a", reference="b", test="within", tolerance=0.2)
    ref = _reference()
    per_traj = {"a": _noisy(ref, 1.02, 0.001), "b": ref}
    (r,) = evaluate_hypotheses(_study_frame({"a": 1, "b": 1}), [h], per_traj)
    assert r["metric"] == "nrmse_rollout_operator" and r["verdict"] == "PASS"
    assert r["single_seed"] is True and r["n_seeds"] == 1 and r["n_seeds_by_arm"] == {"a": 1, "b": 1}
    assert r["interval"] == f"single seed: bootstrap over {N_TRAJ} test trajectories only" and r["df"] is None
    assert "single seed" in r["reason"] and r["ci"][0] < r["ratio"] < r["ci"][1]
    assert "(single seed)" in hypothesis_table([r]) and "single seed" in hypothesis_table([r])

    per_traj = {"a": np.concatenate([per_traj["a"], 1.01 * per_traj["a"]]), "b": ref}  # 2 seeds against 1
    (r,) = evaluate_hypotheses(_study_frame({"a": 2, "b": 1}), [h], per_traj)
    assert r["single_seed"] is True and r["n_seeds"] == 1 and r["n_seeds_by_arm"] == {"a": 2, "b": 1}
    assert r["interval"].startswith("single seed (b): bootstrap") and "variation of b not covered" in r["interval"]


def test_several_seeds_use_the_t_interval() -> None:
    h = HypothesisConfig(id="H2", candidate="a", reference="b", test="better_by", margin=0.1)
    ref = _reference(seeds=3)
    cand = 0.7 * ref * np.array([[0.98], [1.0], [1.02]])
    (r,) = evaluate_hypotheses(_study_frame({"a": 3, "b": 3}), [h], {"a": cand, "b": ref})
    assert r["verdict"] == "PASS" and r["single_seed"] is False and r["n_seeds"] == 3
    scope = f"3 seeds × {N_TRAJ} test trajectories (seeds and trajectories)"
    assert r["interval"] == f"t interval on log ratio over {scope}"
    assert r["df"] > 1 and r["ratio"] == pytest.approx(cand.mean() / ref.mean())
    (r,) = evaluate_hypotheses(_study_frame({"a": 3, "b": 2}), [h], {"a": cand, "b": ref[:2]})
    assert r["n_seeds"] == 2 and r["n_seeds_by_arm"] == {"a": 3, "b": 2} and "3 / 2 seeds" in r["interval"]

    fixed = HypothesisConfig(id="H1-fixed", candidate="a", test="within", reference_value=0.042)
    (r,) = evaluate_hypotheses(_study_frame({"a": 3}), [fixed], {"a": cand})
    assert r["reference_kind"] == "fixed" and r["reference_value"] == 0.042 and r["single_seed"] is False
    assert "reference fixed" in r["interval"] and r["df"] is None and r["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
    assert r["params_ratio"] is None and r["other_ratio"] is None


def test_verdict_edges() -> None:
    assert verdict("within", (0.95, 1.05), 0.05, 0.1) == "PASS"
    assert verdict("within", (1.06, 1.2), 0.05, 0.1) == "FAIL"
    assert verdict("within", (0.5, 0.9), 0.05, 0.1) == "FAIL"
    assert verdict("within", (0.9, 1.2), 0.05, 0.1) == "INCONCLUSIVE"
    assert verdict("better_by", (0.7, 0.9), 0.05, 0.1) == "PASS"
    assert verdict("better_by", (0.85, 0.95), 0.05, 0.1) == "INCONCLUSIVE"
    assert verdict("within", (math.nan, math.nan), 0.05, 0.1) == "INCONCLUSIVE"
    with pytest.raises(ValueError):
        verdict("close_to", (1.0, 1.0), 0.05, 0.1)


def test_missing_arm_is_inconclusive_with_reason() -> None:
    ref = _reference()
    h = {"id": "H2", "candidate": "pure-256", "reference": "ushaped-256", "test": "better_by", "margin": 0.1}
    r = evaluate_hypothesis(h, {"ushaped-256": ref}, {"ushaped-256": float(ref.mean())})
    assert r["verdict"] == "INCONCLUSIVE"
    assert "pure-256" in r["reason"]
    assert set(r) == HYPOTHESIS_KEYS

    df = pd.DataFrame(
        [
            {"arm": "ushaped-256", "seed": 0, "status": "finished", "error": None, "nrmse_rollout": 0.06},
            {
                "arm": "pure-256",
                "seed": 0,
                "status": "error",
                "error": "Traceback\nRuntimeError: CUDA OOM",
                "nrmse_rollout": np.nan,
            },
        ]
    )
    (r,) = evaluate_hypotheses(df, [h], per_traj={"ushaped-256": ref}, metric="nrmse_rollout")
    assert r["verdict"] == "INCONCLUSIVE"
    assert "pure-256" in r["reason"] and "CUDA OOM" in r["reason"]
    (r,) = evaluate_hypotheses(df.iloc[:1], [h], metric="nrmse_rollout")
    assert r["verdict"] == "INCONCLUSIVE" and "pure-256" in r["reason"]


def test_without_per_trajectory_data() -> None:
    h = HypothesisConfig(id="H1", candidate="a", reference="b", test="within", metric="nrmse_rollout")
    one_seed = pd.DataFrame(
        [{"arm": a, "seed": 0, "status": "finished", "nrmse_rollout": v} for a, v in (("a", 0.061), ("b", 0.06))]
    )
    (r,) = evaluate_hypotheses(one_seed, [h])
    assert r["verdict"] == "INCONCLUSIVE"
    assert "no per-trajectory data" in r["reason"]
    assert r["ratio"] == pytest.approx(0.061 / 0.06)

    rows = [{"arm": "a", "seed": s, "status": "finished", "nrmse_rollout": 0.06 + 1e-4 * s} for s in range(4)]
    rows += [{"arm": "b", "seed": s, "status": "finished", "nrmse_rollout": 0.06 - 1e-4 * s} for s in range(4)]
    (r,) = evaluate_hypotheses(pd.DataFrame(rows), [h])
    assert r["verdict"] == "PASS" and r["n_seeds"] == 4 and r["n_trajectories"] == 0
    assert "seeds only" in r["reason"] and "seeds only" in r["interval"] and not r["single_seed"]
    assert r["df"] == pytest.approx(6.0, rel=0.01)  # Welch-Satterthwaite on near-equal relative spreads: 3 + 3


# --------------------------------------------------------------------------- a fake study

ARMS = {
    "ushaped-128": ("u_shaped", 128, "standard", 1.00),
    "ushaped-256": ("u_shaped", 256, "standard", 1.04),
    "pure-128": ("pdet_stack", 128, "standard", 1.00),
    "pure-256": ("pdet_stack", 256, "standard", 0.80),
    "pure-128-chansep": ("pdet_stack", 128, "channel_separated", 1.01),
}


def _matrix() -> MatrixConfig:
    arms = {name: ArmConfig(description=f"{p} {t} {a}") for name, (p, t, a, _) in ARMS.items()}
    arms["ushaped-128"].reference_values = {"nrmse_rollout": 0.0577}
    arms["ushaped-256"].reference_values = {"nrmse_rollout": 0.0596}
    return MatrixConfig(
        name="phase3",
        base="burgers_base.yaml",
        arms=arms,
        hypotheses=[
            HypothesisConfig(id="H1", candidate="pure-128", reference="ushaped-128", test="within"),
            HypothesisConfig(id="H2", candidate="pure-256", reference="ushaped-256", test="better_by", margin=0.1),
            HypothesisConfig(id="H3", candidate="pure-128", reference="pure-128-chansep", test="within"),
            HypothesisConfig(id="H1-fixed", candidate="pure-128", reference_value=0.0577, test="within"),
        ],
    )


def _levels(ratio: float, levels: int = 4) -> dict[str, float]:
    """Per-level diffusion losses of an epoch record: each level's validation loss `ratio` x its reference."""
    out = {}
    for k in range(levels):
        reference = 1.2 if k == 0 else 1.0
        out.update({f"val_loss_level{k}": ratio * reference, f"reference_loss_level{k}": reference,
                    f"train_loss_level{k}": ratio * reference, f"train_reference_loss_level{k}": 1.0})
    return out


def _result(arm: str, seed: int = 0, factor: float = 1.0, **changes: object) -> dict:
    processor, tokens, attention, _ = ARMS.get(arm, ("pdet_stack", 128, "standard", 1.0))
    config = to_dict(RunConfig(name=arm, seed=seed))
    config["model"].update(processor=processor, tokens=tokens, attention=attention)
    metrics = {name: 0.5 for name in METRICS}
    metrics.update(
        nrmse_rollout=0.06 * factor,
        nrmse_one_step=0.01 * factor,
        nrmse_rollout_operator=0.065 * factor,
        nrmse_one_step_operator=0.011 * factor,
        nrmse_ttc=0.055 * factor,
        nrmse_ttc_random=0.059 * factor,
        nrmse_persistence=0.2,
        nrmse_persistence_rollout=0.6,
        conservation_gap=0.01,
        bc_violation=0.02,
        operator_final_loss=2e-4,
        diffusion_final_loss=4e-3,
        params=100_000 + tokens * 100,
        params_operator=80_000 + tokens * 100 + (20_000 if processor == "pdet_stack" else 0),
        flops_per_sample=1e8 * tokens / 128 * (1.5 if processor == "pdet_stack" else 1.0),
        gpu_hours=0.5,
        val_nrmse_one_step_corrected=0.009 * factor,
        val_nrmse_one_step_operator=0.011 * factor,
    )
    history = {
        "operator": [{"epoch": e, "train_loss": 1e-2 / (e + 1), "nonfinite_steps": 0} for e in range(10)],
        "diffusion": [{"epoch": e, "train_loss": 5e-2 / (e + 1), "nonfinite_steps": 0, **_levels(0.6)}
                      for e in range(10)],
    }
    stage_info = {
        stage: {
            "epochs_run": 10,
            "epochs_planned": 10,
            "early_stopped": False,
            "nonfinite_steps": 0,
            "checkpoint": f"/ckpt/{arm}/{stage}",
        }
        for stage in ("operator", "diffusion")
    }
    result = {
        "arm": arm,
        "seed": seed,
        "profile": "smoke",
        "status": "finished",
        "error": None,
        "config": config,
        "metrics": metrics,
        "history": history,
        "stage_info": stage_info,
        "wandb": {"operator": f"raysim/{arm}-op", "diffusion": None},
        "node": "node-1",
        "wall_seconds": 120.0,
    }
    result.update(copy.deepcopy(changes))
    return result


def _write_study(root: Path | str, arms: dict = ARMS, seeds: tuple[int, ...] = (0,)) -> str:
    study = str(root)
    write_study(
        study,
        {
            "name": "phase3",
            "matrix": to_dict(_matrix()),
            "profile": "smoke",
            "seeds": list(seeds),
            "arms": list(ARMS),
            "created": "2025-11-04T00:00:00",
        },
    )
    base = _reference(seed=42)[0]
    steps = np.linspace(0.01, 0.1, 8)
    for arm, (*_, factor) in arms.items():
        for seed in seeds:
            per_traj = {
                "nrmse_rollout": _noisy(base, factor, 0.001, seed=seed + 7),
                "nrmse_rollout_operator": _noisy(base, factor * 1.08, 0.001, seed=seed + 11),
                "nrmse_persistence": 10 * base,
            }
            per_step = {"nrmse_rollout": steps * factor, "nrmse_persistence": steps * 6}
            write_result(study, _result(arm, seed, factor), per_traj, per_step)
    return study


def test_load_gives_one_row_per_trial(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study")
    df = load(study)
    assert len(df) == 5
    assert list(df["arm"]) == list(ARMS)
    for column in [
        "arm",
        "seed",
        "status",
        "error",
        "node",
        "wall_seconds",
        *METRICS,
        "flops_per_sample",
        "config.model.tokens",
        "config.model.processor",
        "config.resources.cost_per_gpu_hour",
    ]:
        assert column in df.columns, column
    assert set(df["status"]) == {"finished"}
    assert df.loc[df["arm"] == "pure-256", "config.model.tokens"].item() == 256
    per_traj = load_per_trajectory(study, "nrmse_rollout")
    assert set(per_traj) == set(ARMS) and per_traj["pure-128"].shape == (1, N_TRAJ)


def test_partial_study_loads(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study", arms={k: v for k, v in ARMS.items() if k != "pure-256"})
    write_result(study, _result("pure-256", status="error", error="Traceback\nValueError: boom", metrics={}))
    (tmp_path / "study" / "trials" / "pure-128__seed1").mkdir()  # started, no result yet
    df = load(study)
    assert len(df) == 6
    assert df.set_index(["arm", "seed"]).loc[("pure-128", 1), "status"] == "running"
    assert math.isnan(df.loc[df["arm"] == "pure-256", "nrmse_rollout"].item())
    results = {r["id"]: r for r in evaluate_hypotheses(df, _matrix().hypotheses, load_per_trajectory(study))}
    assert results["H2"]["verdict"] == "INCONCLUSIVE" and "boom" in results["H2"]["reason"]
    assert results["H1"]["verdict"] == "PASS"


def test_load_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such study folder"):
        load(tmp_path / "nowhere")


def test_write_report(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study")
    out = write_report(study, n_boot=500)
    assert Path(out) == tmp_path / "study" / "report"
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(
        ["ablation_report.md", "architecture_comparison.csv", "architecture_comparison.png", "hypotheses.json"]
    )
    hypotheses = json.loads((Path(out) / "hypotheses.json").read_text())
    assert [h["id"] for h in hypotheses] == ["H1", "H2", "H3", "H1-fixed"]
    for h in hypotheses:
        assert HYPOTHESIS_KEYS <= set(h)
        assert h["verdict"] in {"PASS", "FAIL", "INCONCLUSIVE"}
        assert len(h["ci"]) == 2
    by_id = {h["id"]: h for h in hypotheses}
    assert by_id["H1"]["verdict"] == "PASS" and by_id["H1"]["reference_kind"] == "arm"
    assert by_id["H2"]["verdict"] == "PASS" and by_id["H2"]["n_trajectories"] == N_TRAJ
    assert by_id["H1-fixed"]["reference_kind"] == "fixed" and by_id["H1-fixed"]["reference"] is None
    md = (Path(out) / "ablation_report.md").read_text()
    for text in (
        "phase3",
        "smoke",
        "H1",
        "H2",
        "H3",
        "nrmse_ttc_random",
        "nrmse_persistence",
        "0.0577",
        "FLOPs",
        "✅",
        "$",
        "raysim/pure-128-op",
        "fixed value",
        "**PASS** (single seed)",
        f"single seed × {N_TRAJ} traj",
        "ratio on the other rollout metric",
        "FLOPs ratio",
    ):
        assert text in md, text
    assert all(h["single_seed"] and h["interval"].startswith("single seed") for h in hypotheses)
    csv = pd.read_csv(Path(out) / "architecture_comparison.csv")
    assert len(csv) == 5 and {"arm", "seed", "nrmse_rollout", "params", "usd"} <= set(csv.columns)
    assert (Path(out) / "architecture_comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "H2" in hypothesis_table(hypotheses)

    write_report(study, n_boot=500)  # again: replaced in place, no temporary files left behind
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(
        ["ablation_report.md", "architecture_comparison.csv", "architecture_comparison.png", "hypotheses.json"]
    )


def test_report_on_two_seeds_rebuilt_from_storage(tmp_path: Path) -> None:
    """Two seeds per arm: t-interval verdicts with their scope and cost ratios, rebuilt alike from the files alone."""
    study = _write_study(tmp_path / "study", seeds=(0, 1))
    out = write_report(study, n_boot=200)
    by_id = {h["id"]: h for h in json.loads((Path(out) / "hypotheses.json").read_text())}
    h1, h2 = by_id["H1"], by_id["H2"]
    for h in (h1, h2):
        assert h["metric"] == "nrmse_rollout_operator" and h["other_metric"] == "nrmse_rollout"
        assert h["n_seeds"] == 2 and h["n_seeds_by_arm"] == {h["candidate"]: 2, h["reference"]: 2}
        assert h["single_seed"] is False and h["n_trajectories"] == N_TRAJ and h["df"] is not None
        assert h["interval"].startswith(f"t interval on log ratio over 2 seeds × {N_TRAJ} test trajectories")
        assert h["flops_ratio"] == pytest.approx(1.5) and h["params_metric"] == "params_operator"
    assert h1["params_ratio"] == pytest.approx(112_800 / 92_800) and h1["other_ratio"] == pytest.approx(1.0)
    assert h2["params_ratio"] == pytest.approx(125_600 / 105_600) and h2["other_ratio"] == pytest.approx(0.8 / 1.04)
    assert h2["ratio"] == pytest.approx(0.8 / 1.04) and h2["verdict"] == "PASS"
    assert by_id["H1-fixed"]["single_seed"] is False and "reference fixed" in by_id["H1-fixed"]["interval"]
    md = (Path(out) / "ablation_report.md").read_text()
    assert f"2 seeds × {N_TRAJ} traj" in md and "(single seed)" not in md.split("## Arms")[0]
    assert "t interval on the log ratio" in md and "Welch–Satterthwaite" in md

    again = write_report(study, tmp_path / "again", n_boot=200)  # what `raysim analyze` runs
    first, second = (json.loads((Path(d) / "hypotheses.json").read_text()) for d in (out, again))
    assert first == second


def test_write_report_on_a_partial_study(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study", arms={"ushaped-128": ARMS["ushaped-128"], "pure-128": ARMS["pure-128"]})
    write_result(study, _result("pure-256", status="error", error="RuntimeError: diverged", metrics={}))
    out = write_report(study, tmp_path / "out", n_boot=200)
    md = (Path(out) / "ablation_report.md").read_text()
    assert "diverged" in md and "missing" in md
    hypotheses = json.loads((Path(out) / "hypotheses.json").read_text())
    assert {h["id"]: h["verdict"] for h in hypotheses}["H2"] == "INCONCLUSIVE"


def test_report_lists_restarts_and_out_of_memory_retries(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study", arms={"pure-128": ARMS["pure-128"]})
    oom = {"stage": "operator", "batch_size_before": 64, "batch_size_after": 32, "grad_accum_after": 2,
           "effective_batch": 64}
    write_result(study, _result("pure-128", restarts=[{"stage": "diffusion", "epoch": 3}], oom_adjustments=[oom]))
    md = (Path(write_report(study, tmp_path / "out", n_boot=200)) / "ablation_report.md").read_text()
    section = md.split("## Recoveries", 1)[1].split("##", 1)[0]
    assert "pure-128 seed 0: resumed from its checkpoint at diffusion epoch 3" in section
    assert "micro-batch 64; continued at 32 x 2 accumulation (effective batch 64 unchanged)" in section


def test_storage_on_an_object_store() -> None:
    root = "mock:///bucket/study"
    storage.write_text_atomic(storage.join(root, "a", "x.txt"), "one")
    storage.write_text_atomic(storage.join(root, "a", "x.txt"), "two")
    assert storage.read_text(storage.join(root, "a", "x.txt")) == "two"
    assert storage.listdir(storage.join(root, "a")) == ["x.txt"]
    assert storage.exists(root) and not storage.exists(storage.join(root, "b"))
    assert storage.join("s3://bucket/x?region=us-east-1", "trials") == "s3://bucket/x/trials?region=us-east-1"


def test_report_and_promotion_on_an_object_store(tmp_path: Path) -> None:
    study = _write_study(f"mock:///bucket-{uuid.uuid4().hex}/study", arms={"pure-128": ARMS["pure-128"]})
    assert len(load(study)) == 1
    out = write_report(study, n_boot=100)
    assert out == storage.join(study, "report")
    assert storage.listdir(out) == sorted(
        ["ablation_report.md", "architecture_comparison.csv", "architecture_comparison.png", "hypotheses.json"]
    )
    board = storage.join(study, "leaderboard.csv")
    assert promote(study, "pure-128", leaderboard=board, promoted_dir=tmp_path)["promoted"]
    assert len(pd.read_csv(io.StringIO(storage.read_text(board)))) == 1


# --------------------------------------------------------------------------- promotion


def test_promote(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study")
    board = tmp_path / "results" / "leaderboard.csv"
    promoted = tmp_path / "promoted"
    first = promote(study, "ushaped-128", leaderboard=board, promoted_dir=promoted)
    assert first["promoted"] is True
    assert len(pd.read_csv(board)) == 1

    worse = promote(study, "ushaped-256", leaderboard=board, promoted_dir=promoted)
    assert worse["promoted"] is False and "champion" in worse["reason"]
    assert len(pd.read_csv(board)) == 1
    assert not (promoted / "phase3-ushaped-256.yaml").exists()

    better = promote(study, "pure-256", leaderboard=board, promoted_dir=promoted)
    assert better["promoted"] is True
    table = pd.read_csv(board)
    assert len(table) == 2 and table["arm"].tolist() == ["ushaped-128", "pure-256"]
    assert table["value"].iloc[1] == pytest.approx(0.065 * 0.8)  # the study metric, nrmse_rollout_operator
    config = (promoted / "phase3-pure-256.yaml").read_text()
    assert "pdet_stack" in config and "tokens: 256" in config
    assert [p.name for p in board.parent.iterdir()] == ["leaderboard.csv"]


def test_promote_refuses_worse_physics(tmp_path: Path) -> None:
    arms = {"ushaped-128": ARMS["ushaped-128"]}
    study = _write_study(tmp_path / "study", arms=arms)
    sloppy = _result("pure-256", factor=0.8)
    sloppy["metrics"]["conservation_gap"] = 0.02  # twice the champion's
    write_result(study, sloppy)
    board = tmp_path / "leaderboard.csv"
    assert promote(study, "ushaped-128", leaderboard=board, promoted_dir=tmp_path / "p")["promoted"]
    refused = promote(study, "pure-256", leaderboard=board, promoted_dir=tmp_path / "p")
    assert refused["promoted"] is False and "conservation_gap" in refused["reason"]


def test_promote_unknown_or_unfinished_arm(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study", arms={"ushaped-128": ARMS["ushaped-128"]})
    with pytest.raises(UserError) as info:
        promote(study, "nope", leaderboard=tmp_path / "lb.csv", promoted_dir=tmp_path / "p")
    assert info.value.field == "--arm" and info.value.file == study
    with pytest.raises(UserError, match="no finished trials"):
        promote(study, "pure-256", leaderboard=tmp_path / "lb.csv", promoted_dir=tmp_path / "p")
    assert not (tmp_path / "lb.csv").exists()


# --------------------------------------------------------------------------- milestones and cost


def _by_name(checks: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in checks}


def test_milestones_of_a_clean_run() -> None:
    checks = _by_name(check_milestones(_result("pure-128"), load_checkpoint=lambda path: True))
    assert all(c["passed"] is True for c in checks.values()), checks
    assert check_milestones(_result("pure-128"))[-1]["passed"] is None  # no loader: not checked


def test_milestones_nonfinite_gradients_fail() -> None:
    result = _result("pure-128")
    result["stage_info"]["diffusion"]["nonfinite_steps"] = 3
    check = _by_name(check_milestones(result))["no NaN/Inf gradients"]
    assert check["passed"] is False and "3 non-finite" in check["detail"]


def test_milestones_early_stopping_is_said() -> None:
    result = _result("pure-128")
    result["stage_info"]["operator"].update(epochs_run=6, early_stopped=True)
    check = _by_name(check_milestones(result))["all epochs run"]
    assert check["passed"] is True and "early-stopped" in check["detail"]
    result["stage_info"]["operator"]["early_stopped"] = False
    assert _by_name(check_milestones(result))["all epochs run"]["passed"] is False


def test_milestones_losses_metrics_and_checkpoints() -> None:
    result = _result("pure-128")
    result["metrics"]["operator_final_loss"] = 5e-3
    result["metrics"].pop("nrmse_ttc")
    result["history"]["diffusion"][-1]["train_loss"] = 1.0
    result["metrics"]["diffusion_final_loss"] = 9e-3
    checks = _by_name(check_milestones(result, load_checkpoint=lambda path: "operator" in path))
    assert checks["operator final loss"]["passed"] is False
    assert (
        checks["diffusion loss converged"]["passed"] is False
        and "rising" in checks["diffusion loss converged"]["detail"]
    )
    assert (
        checks["evaluation metrics logged"]["passed"] is False
        and "nrmse_ttc" in checks["evaluation metrics logged"]["detail"]
    )
    assert checks["checkpoints loadable"]["passed"] is False
    assert _by_name(check_milestones(result, {"operator": 1e-2}))["operator final loss"]["passed"] is True
    running = check_milestones({"arm": "a", "seed": 0, "status": "running"})
    assert all(c["passed"] is None for c in running)


def test_milestone_diffusion_levels_against_predict_nothing() -> None:
    check = _by_name(check_milestones(_result("pure-128")))["diffusion loss converged"]
    assert check["passed"] is True and "level 3: 0.6 vs 1 (-40%)" in check["detail"]
    result = _result("pure-128")
    result["history"]["diffusion"][-1]["val_loss_level2"] = 0.97  # 3% below predicting nothing: not learned
    check = _by_name(check_milestones(result))["diffusion loss converged"]
    assert check["passed"] is False and "level(s) 2 not 5% below" in check["detail"]
    result["history"]["diffusion"][-1]["val_loss_level0"] = 1.3  # above its reference 1.2
    assert "level(s) 0, 2" in _by_name(check_milestones(result))["diffusion loss converged"]["detail"]
    result = _result("pure-128")
    result["history"]["diffusion"] = [{"epoch": 1, "train_loss": 0.1, "nonfinite_steps": 0}]  # a fixed 0.5 is gone
    result["metrics"]["diffusion_final_loss"] = 0.1
    check = _by_name(check_milestones(result))["diffusion loss converged"]
    assert check["passed"] is False and "no per-level" in check["detail"]
    result["config"]["diffusion"]["enabled"] = False
    assert _by_name(check_milestones(result))["diffusion loss converged"]["passed"] is None


def test_milestone_corrector_helps() -> None:
    check = _by_name(check_milestones(_result("pure-128")))["corrector helps"]
    assert check["passed"] is True and "0.009 corrected vs 0.011 alone (-18.2%)" in check["detail"]
    assert "test rollout 0.06 vs 0.065" in check["detail"]
    result = _result("pure-128")
    result["metrics"]["val_nrmse_one_step_corrected"] = 0.012
    check = _by_name(check_milestones(result))["corrector helps"]
    assert check["passed"] is False and "(+9.1%)" in check["detail"]
    for key in ("val_nrmse_one_step_corrected", "val_nrmse_one_step_operator"):  # the stage's last record instead
        result["metrics"].pop(key)
    result["history"]["diffusion"][-1].update(val_nrmse_one_step_corrected=0.02, val_nrmse_one_step_operator=0.03)
    assert _by_name(check_milestones(result))["corrector helps"]["passed"] is True
    result["history"]["diffusion"][-1].pop("val_nrmse_one_step_corrected")
    assert _by_name(check_milestones(result))["corrector helps"]["passed"] is None  # not measured
    result["config"]["diffusion"]["enabled"] = False
    assert _by_name(check_milestones(result))["corrector helps"]["passed"] is None


def test_report_says_when_ttc_and_the_corrector_give_no_gain() -> None:
    from raysim.analysis.report import _findings

    df = pd.DataFrame([
        {"arm": "a", "status": "finished", "nrmse_rollout": 0.5, "nrmse_rollout_operator": 0.4,
         "nrmse_rollout_corrector_sample": 0.6, "val_nrmse_one_step_corrected": 0.03,
         "val_nrmse_one_step_operator": 0.02},
        {"arm": "b", "status": "finished", "nrmse_rollout": 0.3, "nrmse_rollout_operator": 0.4,
         "nrmse_rollout_corrector_sample": 0.35, "val_nrmse_one_step_corrected": 0.01,
         "val_nrmse_one_step_operator": 0.02},
    ])
    rng = np.random.default_rng(0)
    random = rng.uniform(0.2, 0.6, size=(1, 64))
    arrays = {"nrmse_ttc": {"a": random * (1 + rng.normal(0, 0.05, size=(1, 64))), "b": 0.9 * random},
              "nrmse_ttc_random": {"a": random, "b": random}}
    a, b = _findings("a", df, arrays, 500), _findings("b", df, arrays, 500)
    assert "the corrector does not help (one-step and rollout error not lower with it)" in a[0]
    assert "TTC gave no gain" in a[1]
    assert "the corrector lowers the error" in b[0]
    assert "TTC's rollout nRMSE is 10% below its random-choice control (95% CI [10, 10] %)" in b[1]


def test_cost() -> None:
    result = _result("pure-128")
    assert trial_cost(result)["usd"] == pytest.approx(0.5 * 1.89)
    cpu = _result("pure-128")
    cpu["metrics"].pop("gpu_hours")
    assert trial_cost(cpu)["gpu_hours"] == 0.0
    gpu = copy.deepcopy(cpu)
    gpu["config"]["resources"].update(use_gpu=True, cost_per_gpu_hour=2.0)
    assert trial_cost(gpu)["usd"] == pytest.approx(120 / 3600 * 2.0)
    total = study_cost([result, result, gpu])
    assert total["trials"] == 3 and total["per_arm"]["pure-128"]["gpu_hours"] == pytest.approx(1.0 + 120 / 3600)


def test_load_results_survives_a_corrupt_result(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study", arms={"pure-128": ARMS["pure-128"]})
    bad = tmp_path / "study" / "trials" / "pure-256__seed0"
    bad.mkdir()
    (bad / "result.json").write_text("{not json")
    statuses = {r["arm"]: r["status"] for r in load_results(study)}
    assert statuses == {"pure-128": "finished", "pure-256": "error"}


# --------------------------------------------------------------------------- the baseline arm

BASELINE_FACTOR = 1.3


def _study_with_baseline(root: Path, **study_changes: object) -> str:
    """The fake study plus a `fno-baseline` arm marked `baseline: true` (its errors 1.3x pure-128's)."""
    study = _write_study(root)
    matrix = _matrix()
    matrix.arms["fno-baseline"] = ArmConfig(description="a standard FNO", baseline=True)
    data = {"name": "phase3", "matrix": to_dict(matrix), "profile": "smoke", "seeds": [0],
            "arms": [*ARMS, "fno-baseline"], "baseline_arms": ["fno-baseline"], "created": "2025-11-04T00:00:00"}
    data.update(study_changes)
    write_study(study, {k: v for k, v in data.items() if v is not None})
    base = _reference(seed=42)[0]
    per_traj = {"nrmse_rollout": _noisy(base, BASELINE_FACTOR, 0.001, seed=7),
                "nrmse_rollout_operator": _noisy(base, BASELINE_FACTOR * 1.08, 0.001, seed=11)}
    per_step = {"nrmse_rollout": np.linspace(0.01, 0.1, 8) * BASELINE_FACTOR,
                "nrmse_persistence_rollout": np.linspace(0.01, 0.1, 8) * 6}
    result = _result("fno-baseline", 0, BASELINE_FACTOR)
    result["config"]["model"]["family"] = "fno"
    result["metrics"].update(nrmse_rollout_corrector_sample=0.07, nrmse_one_step_corrector_sample=0.012)
    write_result(study, result, per_traj, per_step)
    return study


def _section(md: str, title: str) -> str:
    return md.split(title, 1)[1].split("\n#", 1)[0]


def test_report_marks_the_baseline_arm(tmp_path: Path) -> None:
    study = _study_with_baseline(tmp_path / "study")
    md = (Path(write_report(study, tmp_path / "out", n_boot=200)) / "ablation_report.md").read_text()
    for title in ("## Arms", "### Errors", "### Corrector and test-time compute", "### Physics and training",
                  "## Milestones", "## Cost"):
        section = _section(md, title)
        assert "| fno-baseline (baseline)" in section, title
        assert "| pure-128 " in section and "pure-128 (baseline)" not in section, title
    arms_table = _section(md, "## Arms")
    assert "| family " in arms_table and "| fno (modes 16, width 64, layers 4) | –" in arms_table
    assert "| pure-128                | upt " in arms_table
    errors = _section(md, "### Errors")
    header = [c.strip() for c in errors.strip().splitlines()[2].strip("|").split("|")]
    assert header[-1] == "vs baseline"
    assert {"nrmse_rollout_operator", "nrmse_one_step_operator", "nrmse_rollout_corrector_sample",
            "nrmse_one_step_corrector_sample", "nrmse_rollout", "nrmse_persistence_rollout"} <= set(header)
    rows = {cells[0]: cells for line in errors.strip().splitlines()[4:]
            if line.startswith("|") and (cells := [c.strip() for c in line.strip("|").split("|")])}
    assert rows["fno-baseline (baseline)"][-1] == "1"
    assert float(rows["pure-256"][-1]) == pytest.approx(0.8 / BASELINE_FACTOR, rel=1e-3)
    assert "that of the baseline arm fno-baseline" in errors
    physics = _section(md, "### Physics and training").strip().splitlines()[0]  # the header
    assert "nrmse_" not in physics and "conservation_gap" in physics


def test_report_figure_draws_the_baseline_apart(tmp_path: Path) -> None:
    from raysim.analysis.report import _comparison_figure

    study = _study_with_baseline(tmp_path / "study")
    df = load(study)
    arms = [*ARMS, "fno-baseline"]
    per_traj = load_per_trajectory(study, "nrmse_rollout")
    per_step = {arm: np.linspace(0.01, 0.1, 8)[None] * (2 if arm == "fno-baseline" else 1) for arm in arms}
    persistence = {arm: np.linspace(0.1, 0.6, 8)[None] for arm in arms}
    fig = _comparison_figure(arms, df, "nrmse_rollout", per_traj, per_step, persistence, 100, ["fno-baseline"])
    left, right = fig.axes
    bars = left.patches
    assert len(bars) == len(arms)
    assert bars[-1].get_hatch() == "//" and all(not b.get_hatch() for b in bars[:-1])
    assert [t.get_text() for t in left.get_xticklabels()][-1] == "fno-baseline (baseline)"
    legend = [t.get_text() for t in left.get_legend().get_texts()]
    assert any(text.startswith("fno-baseline (baseline): ") for text in legend)
    lines = {line.get_label(): line for line in right.get_lines()}
    assert {"fno-baseline (baseline)", "persistence", "pure-128"} <= set(lines)
    assert lines["fno-baseline (baseline)"].get_linestyle() == "-."
    np.testing.assert_allclose(lines["fno-baseline (baseline)"].get_ydata(), np.linspace(0.02, 0.2, 8))
    labels = [line.get_label() for line in right.get_lines()]
    assert labels[-2:] == ["fno-baseline (baseline)", "persistence"]


def test_report_without_a_baseline_has_no_baseline_column(tmp_path: Path) -> None:
    study = _write_study(tmp_path / "study")
    md = (Path(write_report(study, tmp_path / "out", n_boot=200)) / "ablation_report.md").read_text()
    assert "(baseline)" not in md and "vs baseline" not in md


@pytest.mark.parametrize("changes", [
    {"baseline_arms": "fno-baseline"},
    {"baseline_arms": {"fno-baseline": True}},
    {"baseline_arms": [1, "fno-baseline"]},
    {"baseline_arms": None, "matrix": {"arms": {"fno-baseline": {"baseline": "yes"}}}},
    {"baseline_arms": None, "matrix": {"arms": ["fno-baseline"]}},
    {"baseline_arms": None, "matrix": "phase3"},
])
def test_a_baseline_of_the_wrong_type_counts_as_none(tmp_path: Path, changes: dict) -> None:
    study = _study_with_baseline(tmp_path / "study", **changes)
    assert baseline_arms(load_study(study)) == []
    md = (Path(write_report(study, tmp_path / "out", n_boot=100)) / "ablation_report.md").read_text()
    assert "(baseline)" not in md and "vs baseline" not in md and "| fno-baseline " in md


def test_baseline_arms_from_study_json_or_its_matrix() -> None:
    assert baseline_arms({"baseline_arms": ["fno", "fno"], "matrix": {"arms": {"other": {"baseline": True}}}}) == [
        "fno"]
    assert baseline_arms({"matrix": {"arms": {"a": {"baseline": False}, "fno": {"baseline": True}, "b": {}}}}) == [
        "fno"]
    assert baseline_arms({}) == [] and baseline_arms({"baseline_arms": []}) == []


def test_study_json_records_the_baseline_arms(tmp_path: Path) -> None:
    from raysim.tune.study import _write_study_json

    matrix = _matrix()
    matrix.arms["fno-baseline"] = ArmConfig(baseline=True)
    matrix.profiles = {"local": ProfileConfig(seeds=[0, 1])}
    _write_study_json(str(tmp_path), matrix, "local")
    study = load_study(tmp_path)
    assert study["baseline_arms"] == ["fno-baseline"] and baseline_arms(study) == ["fno-baseline"]
    del study["baseline_arms"]  # an older study.json: the matrix's flags still say it
    assert baseline_arms(study) == ["fno-baseline"]
