"""Training stages in-process (the same functions Ray Train runs): resume, NaN guard, EMA, schedule."""

from __future__ import annotations

import copy

import pytest
import torch

from raysim.config import build_run
from raysim.train.common import NonFiniteError, load_checkpoint
from raysim.train.context import LocalStageContext
from raysim.train.stages import load_stage_model, run_diffusion_stage, run_operator_stage

TINY = {
    "data": {"generate": {"samples": 10, "nx": 256, "nt": 21, "t_end": 1.0}, "x_stride": 4, "t_stride": 2},
    "model": {"tokens": 16, "latent_dim": 16, "heads": 2, "group_size": 8, "depth": 1, "fourier_features": 4},
    "operator": {"epochs": 2, "batch_size": 8, "max_steps_per_epoch": 3, "final_loss_threshold": 1.0},
    "diffusion": {"epochs": 1, "batch_size": 8, "max_steps_per_epoch": 2, "hidden": 8, "layers": 1},
    "evaluation": {"ttc_candidates": 2, "max_trajectories": 2},
    "resources": {"torch_threads": 1},
}


@pytest.fixture
def tiny(tmp_path):
    data = copy.deepcopy(TINY)
    data["data"]["cache_dir"] = str(tmp_path / "data")
    return lambda **over: build_run(_merge(data, over), "test")


def _merge(a, b):
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _weights(directory):
    return load_checkpoint(directory)["train_model"]


def test_operator_stage_reports_every_epoch_with_a_loadable_checkpoint(tiny, tmp_path):
    ctx = LocalStageContext(tmp_path / "op")
    run_operator_stage(tiny(), ctx)
    assert [m["epoch"] for m in ctx.metrics] == [1, 2]
    assert ctx.metrics[-1]["stage_done"] and not ctx.metrics[-1]["early_stopped"]
    assert all(m["nonfinite_steps"] == 0 and m["samples_per_second"] > 0 for m in ctx.metrics)
    model = load_stage_model(ctx.checkpoint_dir)
    assert not any(p.requires_grad for p in model.parameters())


class Killed(Exception):
    pass


class KilledAfter(LocalStageContext):
    """Dies right after the n-th report, as a worker killed between epochs would."""

    def __init__(self, out_dir, n):
        super().__init__(out_dir)
        self.n = n

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        if len(self.metrics) == self.n:
            raise Killed


def test_resume_continues_exactly(tiny, tmp_path):
    cfg = tiny(operator={"epochs": 3})
    straight = LocalStageContext(tmp_path / "straight")
    run_operator_stage(cfg, straight)
    with pytest.raises(Killed):
        run_operator_stage(cfg, KilledAfter(tmp_path / "killed", 1))
    resumed = LocalStageContext(tmp_path / "killed")
    run_operator_stage(cfg, resumed)
    assert [m["epoch"] for m in resumed.metrics] == [2, 3]  # at most one epoch lost, none repeated
    a, b = _weights(straight.checkpoint_dir), _weights(resumed.checkpoint_dir)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    assert resumed.metrics[-1]["train_loss"] == straight.metrics[-1]["train_loss"]
    again = LocalStageContext(tmp_path / "killed")
    run_operator_stage(cfg, again)
    assert again.metrics == []  # a finished stage resumes to nothing


def test_nan_guard_skips_then_fails(tiny, tmp_path, monkeypatch):
    import raysim.train.stages as stages

    real = stages.operator_loss

    def poisoned(*args):
        inner = real(*args)
        calls = {"n": 0}

        def loss_fn(model, batch):
            loss = inner(model, batch)
            if not model.training:
                return loss
            calls["n"] += 1
            return loss * float("nan") if calls["n"] % 2 == 0 else loss

        return loss_fn

    monkeypatch.setattr(stages, "operator_loss", poisoned)
    ctx = LocalStageContext(tmp_path / "guarded")
    run_operator_stage(tiny(operator={"max_nonfinite_steps": 10}), ctx)
    assert ctx.metrics[-1]["nonfinite_steps"] == 3  # 6 steps, every second one poisoned and skipped
    assert all(torch.isfinite(v).all() for v in _weights(ctx.checkpoint_dir).values())
    with pytest.raises(NonFiniteError, match="non-finite"):
        run_operator_stage(tiny(operator={"max_nonfinite_steps": 1}), LocalStageContext(tmp_path / "tripped"))


def test_diffusion_stage_trains_on_the_frozen_operator(tiny, tmp_path):
    cfg = tiny()
    op = LocalStageContext(tmp_path / "op")
    run_operator_stage(cfg, op)
    before = {k: v.clone() for k, v in load_checkpoint(op.checkpoint_dir)["model"]["state_dict"].items()}
    diff = LocalStageContext(tmp_path / "diff")
    run_diffusion_stage(cfg, op.checkpoint_dir, diff)
    assert diff.metrics[-1]["stage"] == "diffusion" and diff.metrics[-1]["stage_done"]
    after = load_checkpoint(op.checkpoint_dir)["model"]["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the operator stayed frozen
    corrector = load_stage_model(diff.checkpoint_dir)
    assert float(corrector.r_std) > 0
    record = diff.metrics[-1]
    levels = cfg.diffusion.noise_steps + 1
    for k in range(levels):  # the loss per noise level on both splits, beside predicting nothing
        for key in ("train_loss_level", "val_loss_level", "reference_loss_level", "train_reference_loss_level"):
            assert f"{key}{k}" in record, f"{key}{k}"
    assert f"val_loss_level{levels}" not in record
    assert record["val_nrmse_one_step_operator"] > 0 and record["val_nrmse_one_step_corrected"] > 0
    assert load_checkpoint(diff.checkpoint_dir)["loop"]["history"][-1]["val_loss_level0"] == record["val_loss_level0"]


def test_corrector_residuals_come_from_states_the_operator_did_not_train_on(tiny, tmp_path):
    from raysim.train.common import prepare_data
    from raysim.train.corrector_data import build_residual_pairs, load_split
    from raysim.train.stages import residual_std

    cfg = tiny(data={"generate": {"samples": 20}})  # 2 validation trajectories
    op = LocalStageContext(tmp_path / "op")
    run_operator_stage(cfg, op)
    operator, data = load_stage_model(op.checkpoint_dir), prepare_data(cfg)
    rolled = build_residual_pairs(operator, cfg, data, "train", "rollout", torch.device("cpu"))
    forced = build_residual_pairs(operator, cfg, data, "train", "teacher_forced", torch.device("cpu"))
    assert torch.equal(rolled.inputs[:, 1:], rolled.preds[:, :-1])  # each input is the operator's previous output
    assert torch.equal(forced.inputs, forced.truth[:, :-1])
    assert residual_std(rolled) > residual_std(forced)  # out of sample, along a rollout, the errors are larger
    # held_out (the default): true states of validation trajectories, one half to train and one to validate
    held_train = build_residual_pairs(operator, cfg, data, "train", "held_out", torch.device("cpu"))
    held_val = build_residual_pairs(operator, cfg, data, "val", "held_out", torch.device("cpu"))
    val_trajectories, _ = load_split(cfg, data, "val", None)
    half = len(val_trajectories) // 2
    assert torch.equal(held_train.truth, val_trajectories[:half])
    assert torch.equal(held_val.truth, val_trajectories[half:])
    assert torch.equal(held_train.inputs, held_train.truth[:, :-1])
    train_trajectories, _ = load_split(cfg, data, "train", None)
    assert not any(torch.equal(t, v) for t in train_trajectories for v in val_trajectories)
    one = tiny()  # a single validation trajectory: the first half of its steps trains, the second validates
    one_data = prepare_data(one)
    assert len(one_data.splits["val"]) == 1
    first = build_residual_pairs(operator, one, one_data, "train", "held_out", torch.device("cpu"))
    second = build_residual_pairs(operator, one, one_data, "val", "held_out", torch.device("cpu"))
    assert len(first) and len(second) and int(first.keep.max()) < int(second.keep.min())
    assert len(first) + len(second) == first.steps
    diff = LocalStageContext(tmp_path / "diff")
    run_diffusion_stage(cfg, op.checkpoint_dir, diff)
    assert cfg.diffusion.residuals == "held_out"
    assert float(load_stage_model(diff.checkpoint_dir).r_std) == pytest.approx(residual_std(held_train), rel=1e-5)


# ----------------------------------------------------------------------------- the whole trial in one worker


def _pipeline_metrics(ctx):
    import json

    return json.loads((ctx.checkpoint_dir / "evaluation" / "metrics.json").read_text())


def test_trial_pipeline_resumes_at_the_interrupted_stage(tiny, tmp_path):
    from raysim.train.pipeline import run_trial_pipeline

    cfg = tiny()
    straight = LocalStageContext(tmp_path / "straight")
    progress = run_trial_pipeline(cfg, straight)
    assert progress["completed"] == ["operator", "diffusion", "evaluation"] and progress["restarts"] == []
    assert [(m["stage"], m.get("epoch")) for m in straight.metrics] == [
        ("operator", 1), ("operator", 2), ("diffusion", 1), ("evaluation", None)]
    for killed_after, resumed_at in ((1, ("operator", 1)), (2, ("diffusion", 0)), (3, ("evaluation", 0))):
        with pytest.raises(Killed):
            run_trial_pipeline(cfg, KilledAfter(tmp_path / f"killed{killed_after}", killed_after))
        resumed = LocalStageContext(tmp_path / f"killed{killed_after}")
        progress = run_trial_pipeline(cfg, resumed)
        assert [(r["stage"], r["epoch"]) for r in progress["restarts"]] == [resumed_at]
        assert [(m["stage"], m.get("epoch")) for m in resumed.metrics] == [
            (m["stage"], m.get("epoch")) for m in straight.metrics[killed_after:]]  # nothing repeated
        assert _pipeline_metrics(resumed) == pytest.approx(_pipeline_metrics(straight), rel=1e-6, nan_ok=True)


def test_out_of_memory_halves_the_micro_batch_and_continues(tiny, tmp_path, monkeypatch):
    import json

    import raysim.train.stages as stages
    from raysim.train.pipeline import run_trial_pipeline

    real, ctx = stages.operator_loss, LocalStageContext(tmp_path / "oom")

    def greedy(*args):  # a device that holds 4 samples once the first epoch is over
        inner = real(*args)

        def loss_fn(model, batch):
            if model.training and ctx.metrics and len(batch["u"]) > 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
            return inner(model, batch)

        return loss_fn

    monkeypatch.setattr(stages, "operator_loss", greedy)
    progress = run_trial_pipeline(tiny(operator={"epochs": 3}), ctx)
    [oom] = progress["oom"]
    assert (oom["batch_size_before"], oom["batch_size_after"], oom["grad_accum_after"]) == (8, 4, 2)
    assert oom["max_steps_per_epoch_after"] == 6 and oom["effective_batch"] == 8
    assert [m["epoch"] for m in ctx.metrics if m["stage"] == "operator"] == [1, 2, 3]  # epoch 1 kept, not redone
    saved = json.loads((ctx.checkpoint_dir / "progress.json").read_text())
    assert saved["stage_overrides"]["operator"]["batch_size"] == 4  # a restarted worker keeps the smaller batch
    assert progress["completed"][-1] == "evaluation"


def test_a_diverged_trial_is_checkpointed_as_failed_and_not_trained_again(tiny, tmp_path, monkeypatch):
    import raysim.train.stages as stages
    from raysim.train.pipeline import run_trial_pipeline

    real = stages.operator_loss
    monkeypatch.setattr(stages, "operator_loss", lambda *args: lambda model, batch: real(*args)(
        model, batch) * float("nan"))
    ctx = LocalStageContext(tmp_path / "diverged")
    progress = run_trial_pipeline(tiny(operator={"max_nonfinite_steps": 1}), ctx)
    assert progress["failed"].startswith("NonFiniteError") and "operator" not in progress["completed"]
    assert [m["stage"] for m in ctx.metrics] == ["failed"]
    again = LocalStageContext(tmp_path / "diverged")
    assert run_trial_pipeline(tiny(operator={"max_nonfinite_steps": 1}), again)["failed"] == progress["failed"]
    assert again.metrics == []  # a retry reads the verdict instead of training again
