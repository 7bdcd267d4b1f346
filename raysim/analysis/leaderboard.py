"""Promotion: gate a study arm against the leaderboard's champion; on pass, record it and save its config."""

from __future__ import annotations

import io
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from raysim.analysis import storage
from raysim.analysis.load import load_results, load_study, results_frame
from raysim.errors import UserError
from raysim.redact import redact_text

LEADERBOARD_COLUMNS = (
    "timestamp",
    "study",
    "arm",
    "seeds",
    "metric",
    "value",
    "conservation_gap",
    "bc_violation",
    "params",
    "config",
    "study_dir",
)
PHYSICS = ("conservation_gap", "bc_violation")


def read_leaderboard(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The leaderboard CSV, or an empty table with its columns when it does not exist yet."""
    if not storage.exists(path):
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    text = storage.read_text(path)
    if not text.strip():
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    try:
        return pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, ValueError) as exc:
        raise UserError(f"unreadable CSV: {exc}", file=str(path)) from None


def champion(board: pd.DataFrame, metric: str) -> dict[str, Any] | None:
    """The leaderboard row with the lowest value of `metric`, or None when no row has that metric."""
    if board.empty or "metric" not in board.columns or "value" not in board.columns:
        return None
    rows = board[(board["metric"] == metric) & np.isfinite(pd.to_numeric(board["value"], errors="coerce"))]
    if rows.empty:
        return None
    best = rows.loc[pd.to_numeric(rows["value"]).idxmin()]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in best.to_dict().items()}


def gate(
    candidate: dict[str, float], champ: dict[str, Any] | None, margin: float = 0.0, physics_tolerance: float = 0.05
) -> tuple[bool, str]:
    """Whether a candidate {"value", "conservation_gap", "bc_violation"} beats the champion, and why."""
    value = candidate.get("value")
    if value is None or not math.isfinite(value):
        return False, "the candidate has no finite value of the metric"
    if champ is None:
        return True, "first entry for this metric"
    best = float(champ["value"])
    target = best * (1.0 - margin)
    if not (value < best and value <= target):
        return False, f"{value:.4g} is not better than the champion {champ.get('arm')} ({best:.4g}) by {margin:.0%}"
    for name in PHYSICS:
        theirs = champ.get(name)
        if theirs is None or not math.isfinite(float(theirs)):
            continue
        ours = candidate.get(name)
        if ours is None or not math.isfinite(ours):
            return False, f"the candidate has no finite {name} (champion: {float(theirs):.4g})"
        limit = float(theirs) * (1.0 + physics_tolerance)
        if ours > limit:
            return False, (
                f"{name} {ours:.4g} is worse than the champion's {float(theirs):.4g} by more than "
                f"{physics_tolerance:.0%}"
            )
    return True, f"{value:.4g} beats the champion {champ.get('arm')} ({best:.4g}) by {1 - value / best:.1%}"


def promote(
    study_dir: str | os.PathLike[str],
    arm: str,
    leaderboard: str | os.PathLike[str] = "results/leaderboard.csv",
    promoted_dir: str | os.PathLike[str] = "ablations/promoted",
    metric: str | None = None,
) -> dict[str, Any]:
    """Gate `arm` against the champion; on pass append a leaderboard row and write its config."""
    study_dir = str(study_dir)
    study = load_study(study_dir)
    matrix = study.get("matrix") or {}
    results = load_results(study_dir)
    known = list(dict.fromkeys([*(study.get("arms") or matrix.get("arms") or []), *(str(r["arm"]) for r in results)]))
    if arm not in known:
        raise UserError(f"unknown arm {arm!r} (arms: {', '.join(known) or 'none'})", file=study_dir, field="--arm")
    finished = [r for r in results if str(r["arm"]) == arm and r.get("status") == "finished"]
    if not finished:
        raise UserError(f"arm {arm!r} has no finished trials", file=study_dir, field="--arm")
    metric = metric or matrix.get("metric") or "nrmse_rollout"
    df = results_frame(finished)
    if metric not in df.columns:
        raise UserError(f"arm {arm!r} has no metric {metric!r}", file=study_dir, field="--metric")

    def mean(name: str) -> float:
        values = np.asarray(df[name], dtype=np.float64) if name in df.columns else np.array([])
        values = values[np.isfinite(values)]
        return float(values.mean()) if len(values) else math.nan

    candidate = {"value": mean(metric), **{name: mean(name) for name in PHYSICS}}
    promotion = matrix.get("promotion") or {}
    board = read_leaderboard(leaderboard)
    champ = champion(board, metric)
    passed, reason = gate(
        candidate, champ, float(promotion.get("margin", 0.0)), float(promotion.get("physics_tolerance", 0.05))
    )
    name = study.get("name") or Path(study_dir.rstrip("/")).name
    outcome: dict[str, Any] = {
        "promoted": passed,
        "reason": reason,
        "study": name,
        "arm": arm,
        "metric": metric,
        **candidate,
        "champion": champ,
        "leaderboard": str(leaderboard),
        "config": None,
    }
    if not passed:
        return outcome

    config_path = storage.join(promoted_dir, f"{name}-{arm}.yaml")
    config = finished[0].get("config") or {}
    storage.write_text_atomic(config_path, yaml.safe_dump(storage.to_jsonable(config), sort_keys=False))
    row = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": name,
        "arm": arm,
        "seeds": len(finished),
        "metric": metric,
        "value": candidate["value"],
        "conservation_gap": candidate["conservation_gap"],
        "bc_violation": candidate["bc_violation"],
        "params": int(mean("params")) if math.isfinite(mean("params")) else None,
        "config": config_path,
        "study_dir": redact_text(study_dir),  # a bucket URI may carry keys (?secret_key=...)
    }
    board = read_leaderboard(leaderboard)  # re-read just before writing: the shortest window for a lost update
    new_row = pd.DataFrame([row])
    board = new_row if board.empty else pd.concat([board, new_row], ignore_index=True)
    storage.write_text_atomic(leaderboard, board.to_csv(index=False))
    outcome["config"] = config_path
    return outcome
