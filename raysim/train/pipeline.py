"""A whole trial in one worker: operator stage, diffusion stage and evaluation under one checkpoint.

One Ray Train fit per trial instead of one per stage: a fit's fixed cost (controller, worker process,
process group, shutdown) is paid once, and evaluation runs on the worker's own device. The checkpoint
reported after every epoch is one directory:

    progress.json   completed stages, restarts, OOM adjustments, timings; `failed` when it failed for good
    operator/       the operator stage's state (state.pt): while it trains, then its final weights
    diffusion/      the corrector stage's state
    evaluation/     metrics.json, per_trajectory.npz, per_step.npz

A restarted worker (a killed process, a restored trial) copies the latest checkpoint, skips the completed
stages and resumes the interrupted one from its last epoch. The same function runs in-process with a
`LocalStageContext` as the worker: the plain-PyTorch baseline of the overhead benchmark.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from raysim.config import RunConfig, StageConfig, build_run

STAGES = ("operator", "diffusion")


def _fails_for_good() -> tuple[type[BaseException], ...]:
    """Errors that a rerun of the same config would repeat: diverged training, no memory at the floor."""
    from raysim.errors import UserError
    from raysim.train.common import NonFiniteError
    from raysim.train.oom import StageOutOfMemory

    return NonFiniteError, StageOutOfMemory, UserError


_FAILS_FOR_GOOD = _fails_for_good()
PROGRESS = "progress.json"
EVALUATION = "evaluation"


def _write_json(path: Path, data: Any) -> None:
    from raysim.analysis.storage import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, default=float))  # NaN stays NaN, unlike write_json_atomic


class TrialState:
    """The worker's own copy of the trial checkpoint: the directory every report hands to the worker."""

    def __init__(self, resume: Path | None):
        self.root = Path(tempfile.mkdtemp(prefix="raysim-trial-"))
        self.resumed = resume is not None
        if resume is not None:
            shutil.copytree(resume, self.root, dirs_exist_ok=True)
        path = self.root / PROGRESS
        self.progress: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {
            "completed": [], "restarts": [], "oom": [], "stage_overrides": {}, "timings": {}}

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def has_state(self, stage: str) -> bool:
        return (self.stage_dir(stage) / "state.pt").is_file()

    def done(self, stage: str) -> bool:
        return stage in self.progress["completed"]

    def epochs_done(self, stage: str) -> int:
        if not self.has_state(stage):
            return 0
        from raysim.train.common import load_checkpoint

        return int(load_checkpoint(self.stage_dir(stage))["loop"]["epoch"])

    def keep(self, stage: str, checkpoint_dir: Path) -> None:
        """This stage's latest state replaces the previous one."""
        from raysim.train.common import replace_dir

        replace_dir(checkpoint_dir, self.stage_dir(stage))

    def add_time(self, key: str, seconds: float) -> None:
        timings = self.progress["timings"]
        timings[key] = timings.get(key, 0.0) + seconds

    def save(self) -> None:
        _write_json(self.root / PROGRESS, self.progress)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class StageContext:
    """The training loop's view of the worker during one stage (`fit` reports through it)."""

    def __init__(self, worker: Any, state: TrialState, stage: str, wandb: dict[str, Any] | None):
        self.worker, self.state, self.stage = worker, state, stage
        self._clock = time.perf_counter()
        self.rank, self.world_size = worker.rank, worker.world_size
        self._wandb = None
        if wandb and self.rank == 0:
            from ray.air.integrations.wandb import setup_wandb

            os.makedirs(wandb["dir"], exist_ok=True)
            self._wandb = setup_wandb(rank_zero_only=True, resume="allow", **wandb)

    def resume_dir(self) -> Path | None:
        return self.state.stage_dir(self.stage) if self.state.has_state(self.stage) else None

    def prepare_model(self, model):
        return self.worker.prepare_model(model)

    def prepare_loader(self, loader):
        return self.worker.prepare_loader(loader)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if checkpoint_dir is not None:  # rank 0
            self.state.keep(self.stage, checkpoint_dir)
        if metrics.get("stage_done"):
            self.state.progress["completed"].append(self.stage)
            self.finish()
        self.tick()  # the stage's time so far travels with the checkpoint: a lost worker's epochs still count
        _report(self.worker, self.state, metrics)

    def tick(self) -> None:
        now = time.perf_counter()
        self.state.add_time(f"{self.stage}_seconds", now - self._clock)
        self._clock = now

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _report(worker: Any, state: TrialState, metrics: dict[str, Any]) -> None:
    """One report of every rank; rank 0 hands over the whole trial checkpoint."""
    start = time.perf_counter()
    state.progress["timings"]["last_report_start"] = time.time()
    if worker.rank == 0:
        state.save()
    worker.report(metrics, state.root if worker.rank == 0 else None)
    state.add_time("report_seconds", time.perf_counter() - start)
    state.progress["timings"]["reports"] = state.progress["timings"].get("reports", 0) + 1


def _stage_config(cfg: RunConfig, stage: str, state: TrialState) -> StageConfig:
    """The stage's config with any micro-batch change an earlier out-of-memory retry made."""
    overrides = state.progress["stage_overrides"].get(stage)
    stage_cfg = getattr(cfg, stage)
    return dataclasses.replace(stage_cfg, **overrides) if overrides else stage_cfg


def _run_stage(cfg: RunConfig, stage: str, worker: Any, state: TrialState, wandb: dict[str, Any] | None) -> None:
    from raysim.train.oom import run_with_oom_recovery
    from raysim.train.stages import run_diffusion_stage, run_operator_stage

    view = StageContext(worker, state, stage, wandb)

    def run(stage_cfg: StageConfig) -> None:
        stage_run = dataclasses.replace(cfg, **{stage: stage_cfg})
        if stage == "operator":
            run_operator_stage(stage_run, view)
        else:
            run_diffusion_stage(stage_run, state.stage_dir("operator"), view)

    def on_retry(adjustment) -> None:
        state.progress["oom"].append(adjustment.as_dict())
        state.progress["stage_overrides"][stage] = {
            "batch_size": adjustment.batch_size_after, "grad_accum_steps": adjustment.grad_accum_after,
            "max_steps_per_epoch": adjustment.max_steps_per_epoch_after}
        print(f"[raysim] {adjustment.describe()}", flush=True)

    try:
        run_with_oom_recovery(stage, _stage_config(cfg, stage, state), run, floor=cfg.resources.min_micro_batch,
                              on_retry=on_retry)
    finally:
        view.finish()
        view.tick()


def _evaluate(cfg: RunConfig, worker: Any, state: TrialState) -> None:
    from raysim.train.evaluate import evaluate_checkpoints

    start = time.perf_counter()
    if worker.rank == 0:
        diffusion = state.stage_dir("diffusion") if state.done("diffusion") else None
        metrics, per_traj, per_step = evaluate_checkpoints(cfg, state.stage_dir("operator"), diffusion)
        out = state.root / EVALUATION
        out.mkdir(exist_ok=True)
        np.savez(out / "per_trajectory.npz", **per_traj)
        np.savez(out / "per_step.npz", **per_step)
        _write_json(out / "metrics.json", metrics)  # last: its presence marks a complete evaluation
    state.progress["completed"].append(EVALUATION)
    seconds = time.perf_counter() - start
    state.add_time("evaluation_seconds", seconds)
    _report(worker, state, {"stage": EVALUATION, "stage_done": True, "evaluation_seconds": seconds})


def run_trial_pipeline(cfg: RunConfig, worker: Any, wandb: dict[str, dict[str, Any] | None] | None = None
                       ) -> dict[str, Any]:
    """Both stages and evaluation on `worker`, resuming from its checkpoint; returns progress.json's data."""
    state = TrialState(worker.resume_dir())
    try:
        if state.progress.get("failed"):  # failed for good before: training again would fail again
            return state.progress
        if state.resumed:
            current = next((s for s in (*STAGES, EVALUATION) if not state.done(s)), None)
            if current is not None:
                state.progress["restarts"].append({"stage": current, "epoch": state.epochs_done(current),
                                                   "time": time.time()})
        state.progress["timings"].setdefault("worker_starts", []).append(time.time())
        try:
            for stage in STAGES:
                if stage == "diffusion" and not cfg.diffusion.enabled:
                    continue
                if not state.done(stage):
                    _run_stage(cfg, stage, worker, state, (wandb or {}).get(stage))
        except _FAILS_FOR_GOOD as exc:
            # checkpointed as failed, so neither Train's restart nor Tune's retry trains it again
            state.progress["failed"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            state.progress["failed_traceback"] = traceback.format_exc()[-4000:]
            _report(worker, state, {"stage": "failed", "stage_done": True})
            return state.progress
        if not state.done(EVALUATION):
            _evaluate(cfg, worker, state)
        return state.progress
    finally:
        state.close()


def trial_train_fn_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function of a whole trial; `config = {"run": run-config dict, "wandb": per stage}`."""
    from raysim.train.context import RayWorker

    run_trial_pipeline(build_run(config["run"], "train_loop_config", check_paths=False), RayWorker(),
                       config.get("wandb"))
