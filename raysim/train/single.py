"""`raysim train`: one configuration, no Tune; both stages under Ray Train, then evaluation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raysim.analysis import storage
from raysim.config import MatrixConfig, build_run, deep_merge, load_any, parse_sets, read_yaml, resolve_arm, to_dict
from raysim.errors import UserError


def resolve(config: str, arm: str | None, profile: str | None, sets: list[str] | None) -> tuple[str, Any]:
    """(name, RunConfig) from a run config file or one arm of a matrix."""
    loaded = load_any(config)
    if isinstance(loaded, MatrixConfig):
        if arm is None:
            raise UserError(f"a matrix needs --arm (arms: {', '.join(loaded.arms)})", file=config, field="--arm")
        return arm, resolve_arm(loaded, arm, profile or loaded.default_profile, sets=sets)
    if arm is not None or profile is not None:
        raise UserError("--arm and --profile apply to ablation matrices only", file=config, field="--arm")
    data = deep_merge(read_yaml(config), parse_sets(sets))
    cfg = build_run(data, config)
    return cfg.name, cfg


def train_one(config: str, arm: str | None = None, profile: str | None = None, sets: list[str] | None = None,
              out: str | None = None) -> dict[str, Any]:
    """Train and evaluate one configuration; writes OUT/metrics.json; returns the metrics."""
    from raysim.train.common import ensure_data
    from raysim.tune.study import check_resources, init_ray
    from raysim.tune.trial import run_trial

    name, cfg = resolve(config, arm, profile, sets)
    out_dir = str(Path(out or Path("results", "runs", name)).resolve())
    metrics_file = storage.join(out_dir, "metrics.json")
    if storage.exists(metrics_file):
        raise UserError("already holds a finished run; choose another --out", file=out_dir, field="--out")
    data = to_dict(cfg)
    if data["data"]["path"]:
        data["data"]["path"] = str(Path(data["data"]["path"]).expanduser().resolve())
    init_ray()
    check_resources({name: cfg}, config)
    ensure_data(cfg.data)
    trial = {"arm": name, "seed": cfg.seed, "arm_configs": {name: data}, "profile": profile,
             "study_dir": out_dir, "study_name": name}
    metrics = run_trial(trial)
    storage.write_json_atomic(metrics_file, metrics)
    return metrics
