"""The per-trial driver: a Tune function trainable running both Ray Train stages, then evaluation.

A trial's files live under `<study>/trials/<arm>__seed<k>/` (result.json, per_trajectory.npz,
per_step.npz, stages.json); stage runs are named per trial under `<study>/train/`, so a restored
trial skips finished stages and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from typing import Any

from raysim.analysis import storage
from raysim.analysis.load import trial_name as trial_key
from raysim.config import RunConfig, build_run, deep_merge, nest_dotted, to_dict


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


def _stage_summary(checkpoint) -> dict[str, Any]:
    from raysim.train.common import load_checkpoint

    with checkpoint.as_directory() as d:
        saved = load_checkpoint(d)
    loop = saved["loop"]
    history = loop["history"]
    return {"history": history, "epochs_run": loop["epoch"], "nonfinite_steps": loop["nonfinite_steps"],
            "final_train_loss": history[-1]["train_loss"] if history else float("nan")}


def _wandb_settings(
    cfg: RunConfig, study_dir: str, study: str, key: str, stage: str, tags: list[str] | tuple[str, ...] = ()
) -> dict[str, Any] | None:
    if not cfg.logging.wandb or cfg.logging.mode == "disabled":
        return None
    local = study_dir if not storage.is_uri(study_dir) else os.path.expanduser("~/.cache/raysim")
    run_id = f"{study}-{key}-{stage}".replace(".", "_").replace("=", "_").replace(",", "_")
    return {"project": cfg.logging.project, "group": cfg.logging.group or study,
            "tags": sorted({*cfg.logging.tags, *tags, stage}), "mode": cfg.logging.mode,
            "dir": os.path.join(local, "wandb"), "id": run_id, "name": f"{key}-{stage}"}


def run_trial(config: dict[str, Any]) -> dict[str, Any]:
    """Operator stage, diffusion stage, evaluation; writes the trial's files; returns the metrics."""
    import ray

    from raysim.train.ray_stage import fit_stage
    from raysim.train.stages import diffusion_train_fn_per_worker, operator_train_fn_per_worker

    cfg = resolve_trial_config(config)
    arm, seed = config["arm"], int(config["seed"])
    key = trial_key(arm, seed)
    if config.get("overrides"):  # a user's own search: several trials share arm and seed
        key = f"{key}__{_tune_trial_id()}"
    study_dir = config["study_dir"]
    study = config.get("study_name", "study")
    trial_dir = storage.join(study_dir, "trials", key)
    stages_file = storage.join(trial_dir, "stages.json")
    stages: dict[str, str] = storage.read_json(stages_file) if storage.exists(stages_file) else {}
    record: dict[str, Any] = {"arm": arm, "seed": seed, "profile": config.get("profile"), "status": "running",
                              "error": None, "config": to_dict(cfg), "metrics": {}, "history": {},
                              "stage_info": {}, "wandb": {}, "node": socket.gethostname(),
                              "overrides": config.get("overrides") or {}}
    storage.write_json_atomic(storage.join(trial_dir, "result.json"), record)
    start = time.time()
    callbacks = _tune_callbacks()

    def wandb_for(stage: str) -> dict[str, Any] | None:
        return _wandb_settings(cfg, study_dir, study, key, stage, config.get("study_tags", []))

    timings: dict[str, float] = {}
    try:
        ckpts = {}
        for stage, fn in (("operator", operator_train_fn_per_worker), ("diffusion", diffusion_train_fn_per_worker)):
            if stage == "diffusion" and not cfg.diffusion.enabled:
                continue
            wandb = wandb_for(stage)
            if stage not in stages:
                extra: dict[str, Any] = {"wandb": wandb}
                if stage == "diffusion":
                    extra["operator_checkpoint"] = ckpts["operator"]
                fit_start = time.time()
                result = fit_stage(fn, cfg, run_name=f"{key}-{stage}", storage_path=storage.join(study_dir, "train"),
                                   extra=extra, callbacks=callbacks)
                timings[f"{stage}_fit_seconds"] = time.time() - fit_start
                if result.checkpoint is None:
                    raise RuntimeError(f"{stage} stage reported no checkpoint")
                stages[stage] = _checkpoint_uri(study_dir, result.checkpoint)
                storage.write_json_atomic(stages_file, stages)
            ckpts[stage] = _checkpoint(stages[stage])
            summary = _stage_summary(ckpts[stage])
            stage_cfg = cfg.operator if stage == "operator" else cfg.diffusion
            record["history"][stage] = summary.pop("history")
            early = summary["epochs_run"] < stage_cfg.epochs
            record["stage_info"][stage] = {**summary, "epochs_planned": stage_cfg.epochs, "early_stopped": early,
                                           "checkpoint": stages[stage]}
            record["wandb"][stage] = wandb["id"] if wandb else None
        train_seconds = time.time() - start
        eval_start = time.time()
        metrics, per_traj, per_step = ray.get(_evaluate_remote(cfg).remote(to_dict(cfg), ckpts["operator"],
                                                                          ckpts.get("diffusion")))
        timings["evaluation_seconds"] = time.time() - eval_start
        wall = time.time() - start
        gpus = cfg.resources.num_workers if cfg.resources.use_gpu else 0
        metrics.update({
            "operator_final_loss": record["stage_info"]["operator"]["final_train_loss"],
            "diffusion_final_loss": record["stage_info"].get("diffusion", {}).get("final_train_loss", float("nan")),
            "train_seconds": train_seconds,
            "samples_per_second": record["history"]["operator"][-1]["samples_per_second"],
            "gpu_hours": wall * gpus / 3600.0,
        })
        record.update(status="finished", metrics=metrics, wall_seconds=wall, timings=timings)
        storage.write_npz_atomic(storage.join(trial_dir, "per_trajectory.npz"), per_traj)
        storage.write_npz_atomic(storage.join(trial_dir, "per_step.npz"), per_step)
        storage.write_json_atomic(storage.join(trial_dir, "result.json"), record)
        return metrics
    except Exception as exc:
        record.update(status="error", error=f"{type(exc).__name__}: {exc}".splitlines()[0][:500],
                      wall_seconds=time.time() - start, traceback=traceback.format_exc()[-4000:])
        storage.write_json_atomic(storage.join(trial_dir, "result.json"), record)
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


def _evaluate_remote(cfg: RunConfig):
    """Evaluation as a Ray task with a stage worker's resources (it runs where the GPU is)."""
    import ray

    from raysim.train.evaluate import evaluate_checkpoints

    def evaluate(run: dict[str, Any], operator_ckpt, diffusion_ckpt):
        run_cfg = build_run(run, "evaluation", check_paths=False)
        with operator_ckpt.as_directory() as op_dir:
            if diffusion_ckpt is None:
                return evaluate_checkpoints(run_cfg, op_dir, None)
            with diffusion_ckpt.as_directory() as diff_dir:
                return evaluate_checkpoints(run_cfg, op_dir, diff_dir)

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    r = cfg.resources
    options: dict[str, Any] = {"num_cpus": r.cpus_per_worker, "num_gpus": 1 if r.use_gpu else 0, "max_retries": 1,
                               # not inside the trial's tiny placement group: the task needs a worker's resources
                               "scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=None)}
    if r.accelerator_type:
        options["accelerator_type"] = r.accelerator_type
    return ray.remote(evaluate).options(**options)


def trainable(config: dict[str, Any]) -> None:
    """The public Tune function trainable: `tune.Tuner(raysim.tune.trainable, param_space=...)`."""
    from ray import tune

    metrics = run_trial(config)
    tune.report({**metrics, "arm": config["arm"], "seed": config["seed"], "stage": "done"})
