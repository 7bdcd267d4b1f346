"""The per-trial driver: a Tune function trainable running one Ray Train fit per trial.

A trial is one Ray Train run (`raysim.train.pipeline`: both stages and evaluation in one worker), named
after the trial under `<study>/train/`, so a restored trial resumes from its latest checkpoint: completed
stages are skipped, the interrupted one continues from its last epoch. The trial's files live under
`<study>/trials/<arm>__seed<k>/`: result.json, per_trajectory.npz, per_step.npz and stages.json (the
finished run's checkpoint).
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

from raysim.analysis import storage
from raysim.analysis.load import trial_name as trial_key
from raysim.config import RunConfig, build_run, deep_merge, nest_dotted, to_dict
from raysim.redact import redact


def resolve_trial_config(config: dict[str, Any]) -> RunConfig:
    """The run config of a trial from its Tune config (arm, seed, arm_configs, overrides)."""
    arm, seed = config["arm"], int(config["seed"])
    arm_configs = config["arm_configs"]
    if isinstance(arm_configs, str):
        arm_configs = json.loads(arm_configs)
    data = deep_merge(arm_configs[arm], {"seed": seed})
    for key, value in (config.get("overrides") or {}).items():  # e.g. a user's search over operator.lr
        data = deep_merge(data, nest_dotted(key, value))
    return build_run(data, f"trial {trial_key(arm, seed)}", check_paths=False)


def _checkpoint(location: str):
    from ray.train import Checkpoint

    return Checkpoint(location)


def _checkpoint_uri(study_dir: str, checkpoint) -> str:
    path = checkpoint.path
    if storage.is_uri(study_dir) and "://" not in path:  # S3 paths come back without the scheme
        path = study_dir.split("://", 1)[0] + "://" + path
    return path


class TrialFailed(RuntimeError):
    """The trial's worker checkpointed a failure that a rerun would repeat (diverged, out of memory)."""

    def __init__(self, error: str, worker_traceback: str | None = None):
        super().__init__(error)
        self.worker_traceback = worker_traceback or error


def _stage_summary(stage_dir: str) -> dict[str, Any]:
    from raysim.train.common import load_checkpoint

    loop = load_checkpoint(stage_dir)["loop"]
    history = loop["history"]
    return {"history": history, "epochs_run": loop["epoch"], "nonfinite_steps": loop["nonfinite_steps"],
            "final_train_loss": history[-1]["train_loss"] if history else float("nan")}


def _read_trial_checkpoint(location: str) -> dict[str, Any]:
    """progress, evaluation outputs and stage summaries of a finished trial checkpoint."""
    import numpy as np

    from raysim.train.pipeline import EVALUATION, PROGRESS, STAGES

    with _checkpoint(location).as_directory() as d:
        root = Path(d)
        progress = json.loads((root / PROGRESS).read_text())
        if progress.get("failed"):
            return {"progress": progress}
        evaluation = root / EVALUATION
        if not (evaluation / "metrics.json").is_file():
            raise RuntimeError(f"trial checkpoint {location} holds no evaluation")
        out = {"progress": progress, "metrics": json.loads((evaluation / "metrics.json").read_text()),
               "stages": {s: _stage_summary(str(root / s)) for s in STAGES if (root / s / "state.pt").is_file()}}
        for name in ("per_trajectory", "per_step"):
            with np.load(evaluation / f"{name}.npz") as f:
                out[name] = {k: f[k] for k in f.files}
    return out


def _wandb_settings(
    cfg: RunConfig, study_dir: str, study: str, key: str, stage: str, tags: list[str] | tuple[str, ...] = ()
) -> dict[str, Any] | None:
    if not cfg.logging.wandb or cfg.logging.mode == "disabled":
        return None
    local = study_dir if not storage.is_uri(study_dir) else os.path.expanduser("~/.cache/raysim")
    run_id = f"{study}-{key}-{stage}".replace(".", "_").replace("=", "_").replace(",", "_")
    return {"project": cfg.logging.project, "group": cfg.logging.group or study,
            "tags": sorted({*cfg.logging.tags, *tags, stage}), "mode": cfg.logging.mode,
            "dir": os.path.join(local, "wandb"), "id": run_id, "name": f"{key}-{stage}",
            "config": redact(to_dict(cfg))}  # the run's config on its W&B page, credentials masked


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Operator stage, diffusion stage, evaluation; writes the trial's files; returns the metrics."""
    from raysim.train.pipeline import STAGES
    from raysim.train.ray_stage import fit_trial

    cfg = resolve_trial_config(config)
    arm, seed = config["arm"], int(config["seed"])
    key = trial_key(arm, seed)
    if config.get("overrides"):  # a user's own search: several trials share arm and seed
        key = f"{key}__{_tune_trial_id()}"
    study_dir = config["study_dir"]
    study = config.get("study_name", "study")
    trial_dir = storage.join(study_dir, "trials", key)
    stages_file = storage.join(trial_dir, "stages.json")
    stages: dict[str, Any] = storage.read_json(stages_file) if storage.exists(stages_file) else {}
    result_file = storage.join(trial_dir, "result.json")
    if "checkpoint" in stages and storage.exists(result_file):
        stored = storage.read_json(result_file)
        if stored.get("status") == "finished":  # Tune reran a trial whose end it had not saved: keep it as it is
            return stored["metrics"]
    record: dict[str, Any] = {"arm": arm, "seed": seed, "profile": config.get("profile"), "status": "running",
                              "error": None, "config": redact(to_dict(cfg)), "metrics": {}, "history": {},
                              "stage_info": {}, "wandb": {}, "node": socket.gethostname(),
                              "overrides": config.get("overrides") or {}}
    storage.write_json_atomic(result_file, record)
    start = time.time()
    wandb = {stage: _wandb_settings(cfg, study_dir, study, key, stage, config.get("study_tags", []))
             for stage in STAGES}
    try:
        if "checkpoint" not in stages:  # a restored trial whose fit finished goes straight to its files
            fit_start = time.time()
            result = fit_trial(cfg, run_name=key, storage_path=storage.join(study_dir, "train"), wandb=wandb,
                               callbacks=_tune_callbacks())
            fit_seconds = time.time() - fit_start
            if result.checkpoint is None:
                raise RuntimeError("the trial's trainer reported no checkpoint")
            stages = {"checkpoint": _checkpoint_uri(study_dir, result.checkpoint), "fit_seconds": fit_seconds,
                      "fit_start": fit_start}
            storage.write_json_atomic(stages_file, stages)
        saved = _read_trial_checkpoint(stages["checkpoint"])
        progress = saved["progress"]
        if progress.get("failed"):
            raise TrialFailed(progress["failed"], progress.get("failed_traceback"))
        for stage, summary in saved["stages"].items():
            stage_cfg = getattr(cfg, stage)
            record["history"][stage] = summary.pop("history")
            early = summary["epochs_run"] < stage_cfg.epochs
            record["stage_info"][stage] = {**summary, "epochs_planned": stage_cfg.epochs, "early_stopped": early,
                                           "checkpoint": storage.join(stages["checkpoint"], stage)}
            record["wandb"][stage] = wandb[stage]["id"] if wandb[stage] else None
        metrics = saved["metrics"]
        timings = _timings(progress["timings"], stages)
        wall = time.time() - start
        gpus = cfg.resources.num_workers if cfg.resources.use_gpu else 0
        train_wall = stages.get("fit_seconds") or wall
        metrics.update({
            "operator_final_loss": record["stage_info"]["operator"]["final_train_loss"],
            "diffusion_final_loss": record["stage_info"].get("diffusion", {}).get("final_train_loss", float("nan")),
            "train_seconds": timings.get("operator_seconds", 0.0) + timings.get("diffusion_seconds", 0.0),
            "samples_per_second": record["history"]["operator"][-1]["samples_per_second"],
            "gpu_hours": train_wall * gpus / 3600.0,
        })
        record.update(status="finished", metrics=metrics, wall_seconds=wall, timings=timings,
                      restarts=progress["restarts"], oom_adjustments=progress["oom"])
        storage.write_npz_atomic(storage.join(trial_dir, "per_trajectory.npz"), saved["per_trajectory"])
        storage.write_npz_atomic(storage.join(trial_dir, "per_step.npz"), saved["per_step"])
        storage.write_json_atomic(result_file, record)
        return metrics
    except Exception as exc:
        from raysim.analysis.load import error_reason

        trace = exc.worker_traceback if isinstance(exc, TrialFailed) else traceback.format_exc()[-4000:]
        error = str(exc) if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: {exc}"
        record.update(status="error", error=error_reason({"error": error, "traceback": trace}) or error[:500],
                      wall_seconds=time.time() - start, traceback=trace)
        storage.write_json_atomic(result_file, record)
        raise


def _tune_trial_id() -> str:
    from ray import tune

    try:
        return tune.get_context().get_trial_id()
    except Exception:  # outside Tune (raysim train)
        return "local"


def _tune_callbacks() -> list[Any]:
    from ray.tune.integration.ray_train import TuneReportCallback
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return [TuneReportCallback()] if _in_tune_session() else []


def _timings(worker: dict[str, float], stages: dict[str, Any]) -> dict[str, float]:
    """Where a trial's time went: the worker's own figures, and the trainer's start-up and shut-down around them."""
    out = {k: v for k, v in worker.items() if k.endswith("_seconds") or k == "reports"}
    if stages.get("fit_seconds") is not None:
        out["fit_seconds"] = stages["fit_seconds"]
        # the first worker of this fit (a study resumed after its driver was lost had workers before it)
        starts = [t for t in worker.get("worker_starts", []) if t >= stages["fit_start"]]
        if starts:
            out["startup_seconds"] = starts[0] - stages["fit_start"]
        out["shutdown_seconds"] = stages["fit_start"] + stages["fit_seconds"] - worker["last_report_start"]
        out["worker_starts"] = len(worker.get("worker_starts", []))
    return out


def trainable(config: dict[str, Any]) -> None:
    """The public Tune function trainable: `tune.Tuner(raysim.tune.trainable, param_space=...)`."""
    from ray import tune

    metrics = run_trial(config)
    tune.report({**metrics, "arm": config["arm"], "seed": config["seed"], "stage": "done"})
