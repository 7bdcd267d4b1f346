"""Read a study folder (finished or partial) into plain dicts, a DataFrame and per-trajectory arrays.

Layout (written by the trial driver, see `trial_dir` and `write_result`):
`<study>/study.json`, `<study>/trials/<arm>__seed<k>/{result.json, per_trajectory.npz, per_step.npz}`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from raysim.analysis import storage
from raysim.analysis.hypotheses import DEFAULT_METRIC
from raysim.config import METRICS
from raysim.errors import UserError

STUDY_FILE = "study.json"
TRIALS_DIR = "trials"
RESULT_FILE = "result.json"
PER_TRAJECTORY_FILE = "per_trajectory.npz"
PER_STEP_FILE = "per_step.npz"
STATUSES = ("finished", "error", "running")
_TRIAL_NAME = re.compile(r"^(?P<arm>.+?)__seed(?P<seed>-?\d+)(__(?P<variant>\w+))?$")  # variant: a user's search


# --------------------------------------------------------------------------- layout (both sides)


def trial_name(arm: str, seed: int) -> str:
    """The folder name of one trial: `<arm>__seed<k>`."""
    return f"{arm}__seed{int(seed)}"


def parse_trial_name(name: str) -> tuple[str, int] | None:
    """`(arm, seed)` from a trial folder name, or None when it is not one."""
    match = _TRIAL_NAME.match(name)
    return (match["arm"], int(match["seed"])) if match else None


def trial_dir(study_dir: str | os.PathLike[str], arm: str, seed: int) -> str:
    """The folder (path or URI) of one trial."""
    return storage.join(study_dir, TRIALS_DIR, trial_name(arm, seed))


def write_study(study_dir: str | os.PathLike[str], study: Mapping[str, Any]) -> None:
    """Write `study.json` atomically."""
    storage.write_json_atomic(storage.join(study_dir, STUDY_FILE), dict(study))


def write_result(
    study_dir: str | os.PathLike[str],
    result: Mapping[str, Any],
    per_trajectory: Mapping[str, np.ndarray] | None = None,
    per_step: Mapping[str, np.ndarray] | None = None,
) -> str:
    """Write one trial's arrays, then its result.json (last, so a result never names missing arrays)."""
    folder = trial_dir(study_dir, result["arm"], result["seed"])
    if per_trajectory is not None:
        storage.write_npz_atomic(storage.join(folder, PER_TRAJECTORY_FILE), dict(per_trajectory))
    if per_step is not None:
        storage.write_npz_atomic(storage.join(folder, PER_STEP_FILE), dict(per_step))
    storage.write_json_atomic(storage.join(folder, RESULT_FILE), dict(result))
    return folder


# --------------------------------------------------------------------------- reading

# `pkg.module.NonFiniteError: message` (also `ray.exceptions.RayTaskError(WorkerGroupError): ...`)
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception|Interrupt|Exit))"
                             r"(?:\([\w.]+\))?: (?P<message>\S.*)$")


def error_reason(result: Mapping[str, Any]) -> str | None:
    """A failed trial's error as one line naming its root cause, credentials masked.

    Ray Train wraps a worker's exception (`WorkerGroupError: Training failed due to worker errors:`)
    and puts the worker's own traceback inside the message; the root cause is the last exception line
    of the recorded traceback (else of the recorded error); failing both, the recorded error is kept.
    """
    from raysim.redact import redact_text

    error = str(result.get("error") or "").strip()
    for text in (result.get("traceback"), error):
        causes = [m for m in map(_EXCEPTION_LINE.match, str(text or "").splitlines()) if m]
        if causes:
            error = f"{causes[-1]['name']}: {causes[-1]['message']}"
            break
    return redact_text(error) if error else None



def _require_study(study_dir: str | os.PathLike[str]) -> str:
    study_dir = str(study_dir)
    if not storage.is_dir(study_dir):
        raise UserError("no such study folder", file=study_dir)
    return study_dir


def load_study(study_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The study's `study.json`, or {} when the driver has not written it (yet)."""
    path = storage.join(_require_study(study_dir), STUDY_FILE)
    if not storage.exists(path):
        return {}
    try:
        study = storage.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"unreadable JSON: {exc}", file=path) from None
    if not isinstance(study, dict):
        raise UserError("must hold a JSON object", file=path)
    return study


def _matrix_arms(study: Mapping[str, Any]) -> Mapping[str, Any]:
    """study.json's `matrix.arms`, or {} when it is missing or not a mapping."""
    matrix = study.get("matrix")
    arms = matrix.get("arms") if isinstance(matrix, Mapping) else None
    return arms if isinstance(arms, Mapping) else {}


def _arm_order(study: Mapping[str, Any]) -> list[str]:
    arms = study.get("arms")
    if not isinstance(arms, list) or not arms:
        arms = list(_matrix_arms(study))
    return [str(a) for a in arms]


def baseline_arms(study: Mapping[str, Any]) -> list[str]:
    """The study's baseline arms: study.json's `baseline_arms`, else the matrix's arms with `baseline: true`.

    A value of the wrong type (`baseline_arms` not a list of names, a flag not a boolean) counts as no baseline.
    """
    if not isinstance(study, Mapping):
        return []
    if "baseline_arms" in study:
        names = study["baseline_arms"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            return []
        return list(dict.fromkeys(names))
    return [str(name) for name, arm in _matrix_arms(study).items()
            if isinstance(arm, Mapping) and arm.get("baseline") is True]


def load_results(study_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every trial's result.json, in the study's arm order then by seed; stubs for trials without one."""
    study_dir = _require_study(study_dir)
    order = {arm: i for i, arm in enumerate(_arm_order(load_study(study_dir)))}
    trials_root = storage.join(study_dir, TRIALS_DIR)
    results = []
    for name in storage.listdir(trials_root):
        parsed = parse_trial_name(name)
        if parsed is None:
            continue
        arm, seed = parsed
        path = storage.join(trials_root, name, RESULT_FILE)
        stub = {"arm": arm, "seed": seed, "status": "running", "error": None, "metrics": {}, "config": {}}
        if not storage.exists(path):
            results.append({**stub, "trial_dir": storage.join(trials_root, name)})
            continue
        try:
            result = storage.read_json(path)
            if not isinstance(result, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            result = {**stub, "status": "error", "error": f"unreadable result.json: {exc}"}
        result.setdefault("arm", arm)
        result.setdefault("seed", seed)
        result.setdefault("status", "running")
        if result["status"] == "error":
            result["error"] = error_reason(result)
        result["trial_dir"] = storage.join(trials_root, name)
        results.append(result)
    results.sort(key=lambda r: (order.get(str(r["arm"]), len(order)), str(r["arm"]), int(r["seed"])))
    return results


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"tokens": 128}}` -> `{"model.tokens": 128}` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def results_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: arm, seed, status, error, profile, metrics, `config.*`, node, wall_seconds."""
    rows = []
    for r in results:
        row: dict[str, Any] = {
            "arm": str(r.get("arm")),
            "seed": int(r.get("seed", 0)),
            "status": r.get("status") or "running",
            "error": r.get("error"),
            "profile": r.get("profile"),
        }
        row.update({name: _float(v) for name, v in (r.get("metrics") or {}).items()})
        row.update({f"config.{k}": v for k, v in flatten(r.get("config") or {}).items()})
        row["node"] = r.get("node")
        row["wall_seconds"] = _float(r.get("wall_seconds"))
        rows.append(row)
    df = pd.DataFrame(rows)
    base = ["arm", "seed", "status", "error", "profile"]
    for name in [*base, *METRICS, "node", "wall_seconds"]:
        if name not in df.columns:
            df[name] = np.nan if name in METRICS or name == "wall_seconds" else None
    metric_cols = [c for c in df.columns if c not in base and not c.startswith("config.") and c not in ("node",)]
    metric_cols = [c for c in metric_cols if c != "wall_seconds"]
    ordered = [*METRICS, *sorted(c for c in metric_cols if c not in METRICS)]
    config_cols = sorted(c for c in df.columns if c.startswith("config."))
    return df[[*base, *ordered, *config_cols, "node", "wall_seconds"]].reset_index(drop=True)


def load(study_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """A study (finished or partial) as a DataFrame, one row per trial; see `results_frame`."""
    return results_frame(load_results(study_dir))


def stack_arrays(results: list[dict[str, Any]], file: str, metric: str) -> dict[str, np.ndarray]:
    """arm -> (S, L) array of `metric` from each finished trial's `file` (from `load_results`), seeds in order."""
    by_arm: dict[str, list[np.ndarray]] = {}
    for r in results:
        if r.get("status") != "finished" or not r.get("trial_dir"):
            continue
        path = storage.join(r["trial_dir"], file)
        if not storage.exists(path):
            continue
        try:
            arrays = storage.read_npz(path)
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path}: unreadable ({exc}); left out", stacklevel=3)
            continue
        if metric in arrays:
            by_arm.setdefault(str(r["arm"]), []).append(np.asarray(arrays[metric], dtype=np.float64).ravel())
    out = {}
    for arm, rows in by_arm.items():
        if len({len(a) for a in rows}) != 1:
            warnings.warn(f"arm {arm}: {file} arrays of {metric} differ in length across seeds; left out", stacklevel=3)
            continue
        out[arm] = np.stack(rows)  # (S, L)
    return out


def load_per_trajectory(study_dir: str | os.PathLike[str], metric: str = DEFAULT_METRIC) -> dict[str, np.ndarray]:
    """arm -> (S, N) per-test-trajectory values of `metric` (default: that of `evaluate_hypotheses`), finished seeds."""
    return stack_arrays(load_results(study_dir), PER_TRAJECTORY_FILE, metric)


def load_per_step(study_dir: str | os.PathLike[str], metric: str = "nrmse_rollout") -> dict[str, np.ndarray]:
    """arm -> (S, steps) per-rollout-step values of `metric` over the arm's finished seeds."""
    return stack_arrays(load_results(study_dir), PER_STEP_FILE, metric)
