"""Hypothesis tests of an ablation study: paired bootstrap ratios and PASS / FAIL / INCONCLUSIVE verdicts.

Pure functions on arrays; nothing here reads files. Per-trajectory arrays are shaped
(S, N): S seeds of one arm, N test trajectories, the same trajectories in the same
order for every arm of a study, so two arms are compared trajectory by trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, Literal

import numpy as np

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]
TESTS = ("within", "better_by")


# --------------------------------------------------------------------------- statistics


def _as_seeds_by_items(values: np.ndarray, name: str) -> np.ndarray:
    """`values` as a float64 (S, N) array; a 1-D array is one seed."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (seeds, trajectories) array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} holds {bad} non-finite value(s) of {arr.size}")
    return arr


def _resampled_means(values: np.ndarray, seed_counts: np.ndarray, item_counts: np.ndarray) -> np.ndarray:
    """Means of `values` (S, N) under bootstrap multiplicities: seeds (B, S), items (B, N) -> (B,)."""
    per_item = seed_counts @ values  # (B, N): each resample's seed-summed values per trajectory
    total = np.einsum("bn,bn->b", per_item, item_counts)
    return total / (values.shape[0] * values.shape[1])


def _seed_counts(rng: np.random.Generator, n_seeds: int, n_boot: int) -> np.ndarray:
    """Bootstrap multiplicities of seeds (B, S); all ones when there is a single seed."""
    if n_seeds == 1:
        return np.ones((n_boot, 1))
    return rng.multinomial(n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=n_boot).astype(np.float64)


def paired_bootstrap_ratio(
    candidate: np.ndarray,
    reference: np.ndarray | float,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Ratio of means candidate / reference with a percentile bootstrap interval: (ratio, low, high).

    Trajectories are resampled with the same indices for both arms (paired); when there
    are several seeds, seeds are resampled too (hierarchical), with shared indices when both
    arms have the same seeds. A float reference is fixed: only the candidate varies.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    cand = _as_seeds_by_items(candidate, "candidate")
    n_items = cand.shape[1]
    ref: np.ndarray | None = None
    if np.ndim(reference) == 0:
        ref_value = float(reference)
        if not math.isfinite(ref_value) or ref_value <= 0:
            raise ValueError(f"a fixed reference must be a positive number, got {reference}")
    else:
        ref = _as_seeds_by_items(reference, "reference")
        if ref.shape[1] != n_items:
            raise ValueError(f"candidate has {n_items} trajectories and reference {ref.shape[1]}: cannot pair them")
        ref_value = float(ref.mean())
        if ref_value <= 0:
            raise ValueError(f"the reference mean must be positive, got {ref_value:g}")
    ratio = float(cand.mean()) / ref_value

    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, 2_000_000 // n_items))  # bounds the (resamples, trajectories) count matrix
    ratios = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        item_counts = rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=size).astype(np.float64)
        cand_seeds = _seed_counts(rng, cand.shape[0], size)
        cand_means = _resampled_means(cand, cand_seeds, item_counts)  # (size,)
        if ref is None:
            ratios[start : start + size] = cand_means / ref_value
            continue
        ref_seeds = cand_seeds if ref.shape[0] == cand.shape[0] else _seed_counts(rng, ref.shape[0], size)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[start : start + size] = cand_means / _resampled_means(ref, ref_seeds, item_counts)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return float(ratio), float(low), float(high)


def bootstrap_mean_ci(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of an (S, N) array with a hierarchical percentile bootstrap interval: (mean, low, high)."""
    return paired_bootstrap_ratio(values, 1.0, n_boot=n_boot, seed=seed, level=level)


def verdict(
    test: str, ratio_ci: tuple[float, float] | list[float], tolerance: float = 0.05, margin: float = 0.10
) -> Verdict:
    """PASS / FAIL / INCONCLUSIVE for a ratio interval under a `within` or `better_by` test."""
    low, high = (float(v) if v is not None else math.nan for v in ratio_ci)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        return "INCONCLUSIVE"
    if test == "within":
        lower, upper = 1.0 - tolerance, 1.0 + tolerance
        if lower <= low and high <= upper:
            return "PASS"
        if high < lower or low > upper:
            return "FAIL"
        return "INCONCLUSIVE"
    if test == "better_by":
        bound = 1.0 - margin
        if high <= bound:
            return "PASS"
        if low > bound:
            return "FAIL"
        return "INCONCLUSIVE"
    raise ValueError(f"unknown test {test!r} (tests: {', '.join(TESTS)})")


def threshold_text(test: str, tolerance: float = 0.05, margin: float = 0.10) -> str:
    """The pass condition on the ratio, as text: `|ratio-1| <= 0.05` or `ratio <= 0.9`."""
    if test == "within":
        return f"|ratio-1| <= {tolerance:g}"
    return f"ratio <= {1.0 - margin:g}"


# --------------------------------------------------------------------------- hypotheses


_DEFAULTS: dict[str, Any] = {
    "description": "",
    "reference": None,
    "reference_value": None,
    "metric": None,
    "tolerance": 0.05,
    "margin": 0.10,
}


def _hypothesis_dict(h: Any) -> dict[str, Any]:
    """A HypothesisConfig or a mapping with the same keys, as a dict with defaults filled."""
    data = asdict(h) if is_dataclass(h) else dict(h)
    out = {**_DEFAULTS, **{k: v for k, v in data.items() if v is not None or k not in _DEFAULTS}}
    out["id"] = str(out.get("id", "?"))
    return out


def finite_float(value: Any) -> float | None:
    """A finite float, or None (for metrics that may be missing, NaN or not numbers)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _ci_text(low: float, high: float) -> str:
    return f"[{low:.3f}, {high:.3f}]"


def _verdict_reason(
    test: str, result: Verdict, low: float, high: float, tolerance: float, margin: float, level: float = 0.95
) -> str:
    """Why an interval gives its verdict, in one sentence."""
    ci = f"{level:.0%} CI of the ratio {_ci_text(low, high)}"
    if test == "within":
        band = f"[{1 - tolerance:g}, {1 + tolerance:g}]"
        return {
            "PASS": f"{ci} lies inside {band}",
            "FAIL": f"{ci} lies outside {band}",
            "INCONCLUSIVE": f"{ci} straddles an edge of {band}",
        }[result]
    bound = f"{1 - margin:g}"
    return {
        "PASS": f"{ci} lies at or below {bound}",
        "FAIL": f"{ci} lies above {bound}",
        "INCONCLUSIVE": f"{ci} straddles {bound}",
    }[result]


def evaluate_hypothesis(
    h: Any,
    per_traj: Mapping[str, np.ndarray] | None,
    values: Mapping[str, float],
    metric: str = "nrmse_rollout",
    *,
    seed_values: Mapping[str, np.ndarray] | None = None,
    arm_notes: Mapping[str, str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """One hypothesis tested on per-trajectory arrays (arm -> (S, N)), else per-seed values; a hypotheses.json object.

    `values` holds each arm's study-level value of the metric (mean over finished seeds),
    `seed_values` each arm's per-seed values (the fallback when there are no per-trajectory
    arrays), `arm_notes` why an arm has no value (failed, running, not in the study).
    """
    hyp = _hypothesis_dict(h)
    metric = hyp["metric"] or metric
    test = hyp.get("test")
    tolerance, margin = float(hyp["tolerance"]), float(hyp["margin"])
    candidate = hyp.get("candidate")
    reference = hyp["reference"]
    fixed = finite_float(hyp["reference_value"]) if reference is None else None
    out: dict[str, Any] = {
        "id": hyp["id"],
        "description": hyp["description"],
        "verdict": "INCONCLUSIVE",
        "metric": metric,
        "test": test,
        "candidate": candidate,
        "reference": reference,
        "reference_kind": "arm" if reference is not None else "fixed",
        "candidate_value": None,
        "reference_value": fixed,
        "ratio": None,
        "ci": [None, None],
        "threshold": threshold_text(test, tolerance, margin) if test in TESTS else "",
        "n_trajectories": 0,
        "n_seeds": 0,
        "reason": "",
    }
    if test not in TESTS:
        out["reason"] = f"unknown test {test!r} (tests: {', '.join(TESTS)})"
        return out
    if reference is None and fixed is None:
        out["reason"] = "no reference: give a reference arm or a positive reference_value"
        return out
    notes = dict(arm_notes or {})
    per_traj = per_traj or {}
    seed_values = seed_values or {}

    def value_of(arm: str) -> float | None:
        if finite_float(values.get(arm)) is not None:
            return finite_float(values.get(arm))
        if arm in per_traj and np.size(per_traj[arm]) and np.all(np.isfinite(per_traj[arm])):
            return float(np.mean(per_traj[arm]))
        return None

    arms = [candidate] if reference is None else [candidate, reference]
    missing = [arm for arm in arms if value_of(arm) is None]
    out["candidate_value"] = value_of(candidate)
    if reference is not None:
        out["reference_value"] = value_of(reference)
    if missing:
        out["reason"] = "; ".join(
            notes.get(arm) or f"arm {arm!r} has no finished trial with a finite {metric}" for arm in missing
        )
        return out
    ref_point = out["reference_value"]
    if ref_point <= 0:
        out["reason"] = f"reference value {ref_point:g} is not positive: a ratio means nothing"
        return out
    out["ratio"] = out["candidate_value"] / ref_point

    # Per-trajectory arrays first (paired, hierarchical over seeds), else the spread over seeds.
    caveats: list[str] = []
    sample: tuple[np.ndarray, np.ndarray | float] | None = None
    lacking = [arm for arm in arms if arm not in per_traj]
    if lacking:
        why = "no per-trajectory data" + (f" for arm {lacking[0]!r}" if per_traj else "")
    else:
        cand = np.atleast_2d(np.asarray(per_traj[candidate], dtype=np.float64))  # (S, N)
        ref = ref_point if reference is None else np.atleast_2d(np.asarray(per_traj[reference], dtype=np.float64))
        if np.ndim(ref) and cand.shape[1] != ref.shape[1]:
            why = f"per-trajectory arrays differ in length ({cand.shape[1]} vs {ref.shape[1]}): not paired"
        else:
            sample = (cand, ref)
            out["n_trajectories"] = int(cand.shape[1])
    if sample is None:
        seeds = {arm: np.asarray(seed_values.get(arm, []), dtype=np.float64).ravel() for arm in arms}
        seeds = {arm: s[np.isfinite(s)] for arm, s in seeds.items()}
        if not all(len(s) > 1 for s in seeds.values()):
            out["n_seeds"] = min(len(s) for s in seeds.values())
            out["reason"] = f"{why}; fewer than 2 seeds per arm: no confidence interval"
            return out
        sample = (seeds[candidate][:, None], ref_point if reference is None else seeds[reference][:, None])  # (S, 1)
        caveats.append(f"{why}: CI over seeds only")
    cand, ref = sample
    n_ref_seeds = cand.shape[0] if np.ndim(ref) == 0 else np.shape(ref)[0]
    out["n_seeds"] = int(min(cand.shape[0], n_ref_seeds))
    if n_ref_seeds != cand.shape[0]:
        caveats.append(f"seed counts differ ({cand.shape[0]} vs {n_ref_seeds}): seeds resampled unpaired")
    try:
        ratio, low, high = paired_bootstrap_ratio(cand, ref, n_boot=n_boot, seed=seed, level=level)
    except ValueError as exc:
        out["reason"] = f"bootstrap impossible: {exc}"
        return out
    if out["n_trajectories"]:
        out["ratio"] = ratio  # the interval's own point estimate (means over the same trajectories)
        out["candidate_value"] = float(cand.mean())
        if reference is not None:
            out["reference_value"] = float(np.mean(ref))
    out["ci"] = [low, high]
    out["verdict"] = verdict(test, (low, high), tolerance, margin)
    reason = _verdict_reason(test, out["verdict"], low, high, tolerance, margin, level)
    caveats += [notes[arm] for arm in arms if notes.get(arm)]
    out["reason"] = "; ".join([reason, *caveats])
    return out


def _arm_summaries(df: Any, metric: str) -> tuple[dict[str, float], dict[str, np.ndarray], dict[str, str]]:
    """Per arm from a study DataFrame: mean value, per-seed values, and a note on unfinished trials."""
    values: dict[str, float] = {}
    seeds: dict[str, np.ndarray] = {}
    notes: dict[str, str] = {}
    if df is None or len(df) == 0 or "arm" not in df.columns:
        return values, seeds, notes
    status = df["status"] if "status" in df.columns else None
    for arm, rows in df.groupby("arm", sort=False):
        arm = str(arm)
        finished = rows if status is None else rows[rows["status"] == "finished"]
        column = finished[metric] if metric in finished.columns else None
        per_seed = np.asarray(column, dtype=np.float64) if column is not None else np.array([])
        finite = per_seed[np.isfinite(per_seed)]
        if len(finite):
            values[arm] = float(finite.mean())
            seeds[arm] = finite
        unfinished = rows if status is None else rows[rows["status"] != "finished"]
        if len(unfinished) or not len(finite):
            notes[arm] = _unfinished_note(arm, rows, unfinished, metric, len(finite))
    return values, seeds, notes


def _unfinished_note(arm: str, rows: Any, unfinished: Any, metric: str, n_ok: int) -> str:
    """Why some or all trials of an arm give no value."""
    parts = []
    for state, group in unfinished.groupby("status", sort=False) if len(unfinished) else []:
        text = f"{len(group)} {state}"
        if state == "error" and "error" in group.columns:
            first = next((str(e) for e in group["error"] if isinstance(e, str) and e), "")
            if first:
                text += f" ({first.strip().splitlines()[-1][:160]})"
        parts.append(text)
    detail = ", ".join(parts)
    if n_ok == 0:
        if detail:
            return f"arm {arm!r} has no finished trial with a finite {metric}: {detail} of {len(rows)} trial(s)"
        return f"arm {arm!r} has no finite {metric} in its {len(rows)} finished trial(s)"
    return f"arm {arm!r}: {detail} of {len(rows)} trial(s) left out"


def evaluate_hypotheses(
    df: Any,
    hypotheses: Iterable[Any],
    per_traj: Mapping[str, np.ndarray] | None = None,
    metric: str = "nrmse_rollout",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Every hypothesis tested on a study DataFrame (one row per trial) and, for `metric`, per-trajectory arrays."""
    results = []
    for h in hypotheses:
        hyp = _hypothesis_dict(h)
        h_metric = hyp["metric"] or metric
        values, seeds, notes = _arm_summaries(df, h_metric)
        known = set(df["arm"].astype(str)) if df is not None and "arm" in getattr(df, "columns", []) else set()
        for arm in (hyp.get("candidate"), hyp["reference"]):
            if arm is not None and arm not in known and not (per_traj and arm in per_traj):
                notes.setdefault(arm, f"arm {arm!r} has no trials in the study")
        results.append(
            evaluate_hypothesis(
                hyp,
                per_traj if h_metric == metric else None,
                values,
                h_metric,
                seed_values=seeds,
                arm_notes=notes,
                n_boot=n_boot,
                seed=seed,
                level=level,
            )
        )
    return results
