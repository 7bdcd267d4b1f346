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
    paired_bootstrap_ratio,
    promote,
    storage,
    study_cost,
    trial_cost,
    verdict,
    write_report,
)
from raysim.analysis.load import write_result, write_study
from raysim.config import METRICS, ArmConfig, HypothesisConfig, MatrixConfig, RunConfig, to_dict
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
    (r,) = evaluate_hypotheses(df, [h], per_traj={"ushaped-256": ref})
    assert r["verdict"] == "INCONCLUSIVE"
    assert "pure-256" in r["reason"] and "CUDA OOM" in r["reason"]
    (r,) = evaluate_hypotheses(df.iloc[:1], [h])
    assert r["verdict"] == "INCONCLUSIVE" and "pure-256" in r["reason"]


def test_without_per_trajectory_data() -> None:
    h = HypothesisConfig(id="H1", candidate="a", reference="b", test="within")
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
    assert "seeds only" in r["reason"]


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


def _result(arm: str, seed: int = 0, factor: float = 1.0, **changes: object) -> dict:
    processor, tokens, attention, _ = ARMS.get(arm, ("pdet_stack", 128, "standard", 1.0))
    config = to_dict(RunConfig(name=arm, seed=seed))
    config["model"].update(processor=processor, tokens=tokens, attention=attention)
    metrics = {name: 0.5 for name in METRICS}
    metrics.update(
        nrmse_rollout=0.06 * factor,
        nrmse_one_step=0.01 * factor,
        nrmse_ttc=0.055 * factor,
        nrmse_ttc_random=0.059 * factor,
        nrmse_persistence=0.2,
        nrmse_persistence_rollout=0.6,
        conservation_gap=0.01,
        bc_violation=0.02,
        operator_final_loss=2e-4,
        diffusion_final_loss=4e-3,
        params=100_000 + tokens * 100,
        flops_per_sample=1e8,
        gpu_hours=0.5,
    )
    history = {
        "operator": [{"epoch": e, "train_loss": 1e-2 / (e + 1), "nonfinite_steps": 0} for e in range(10)],
        "diffusion": [{"epoch": e, "train_loss": 5e-2 / (e + 1), "nonfinite_steps": 0} for e in range(10)],
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
            per_traj = {"nrmse_rollout": _noisy(base, factor, 0.001, seed=seed + 7), "nrmse_persistence": 10 * base}
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
    ):
        assert text in md, text
    csv = pd.read_csv(Path(out) / "architecture_comparison.csv")
    assert len(csv) == 5 and {"arm", "seed", "nrmse_rollout", "params", "usd"} <= set(csv.columns)
    assert (Path(out) / "architecture_comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "H2" in hypothesis_table(hypotheses)

    write_report(study, n_boot=500)  # again: replaced in place, no temporary files left behind
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(
        ["ablation_report.md", "architecture_comparison.csv", "architecture_comparison.png", "hypotheses.json"]
    )


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
    assert table["value"].iloc[1] == pytest.approx(0.048)
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
