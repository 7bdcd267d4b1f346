"""The study report, rebuilt from storage alone: markdown, CSV, plot and hypotheses.json, written atomically."""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from raysim.analysis import storage
from raysim.analysis.cost import study_cost, trial_cost
from raysim.analysis.hypotheses import DEFAULT_METRIC, bootstrap_mean_ci, evaluate_hypotheses, paired_bootstrap_ratio
from raysim.analysis.load import (
    PER_STEP_FILE,
    PER_TRAJECTORY_FILE,
    baseline_arms,
    load_results,
    load_study,
    results_frame,
    stack_arrays,
)
from raysim.analysis.milestones import MILESTONES, check_milestones
from raysim.redact import redact_text

REPORT_DIR = "report"
REPORT_FILES = ("ablation_report.md", "architecture_comparison.csv", "architecture_comparison.png", "hypotheses.json")
ERROR_METRICS = (
    "nrmse_one_step_operator",
    "nrmse_rollout_operator",
    "nrmse_one_step",
    "nrmse_rollout",
    "nrmse_one_step_corrector_sample",
    "nrmse_rollout_corrector_sample",
    "nrmse_persistence",
    "nrmse_persistence_rollout",
)
TTC_COLUMNS = ("nrmse_ttc", "nrmse_ttc_random", "ttc_vs_random_pct", "ttc_improvement_pct")
CORRECTOR_COLUMNS = ("val_nrmse_one_step_operator", "val_nrmse_one_step_corrected")
TTC_GAIN_BAR = 5.0  # TTC counts as a gain when its rollout nRMSE is this many % below chance, interval above 0
PHYSICS_METRICS = (
    "conservation_gap",
    "conservation_drift",
    "bc_violation",
    "operator_final_loss",
    "diffusion_final_loss",
    "ttc_evaluations",
    "train_seconds",
    "samples_per_second",
)
ARCH_COLUMNS = ("processor", "tokens", "attention", "latent_dim", "depth", "heads")
PERSISTENCE_OF = {
    "nrmse_rollout": "nrmse_persistence_rollout",
    "nrmse_rollout_operator": "nrmse_persistence_rollout",
    "nrmse_rollout_corrector_sample": "nrmse_persistence_rollout",
    "nrmse_ttc": "nrmse_persistence_rollout",
    "nrmse_ttc_random": "nrmse_persistence_rollout",
    "nrmse_one_step": "nrmse_persistence",
    "nrmse_one_step_operator": "nrmse_persistence",
    "nrmse_one_step_corrector_sample": "nrmse_persistence",
}
PER_STEP_PERSISTENCE = ("nrmse_persistence_rollout", "nrmse_persistence")  # the first a study's per_step files hold
BASELINE_METRIC = "nrmse_rollout_operator"  # the `vs baseline` column: this arm's value / the baseline arm's
BASELINE_BAR = {"color": "0.72", "hatch": "//", "edgecolor": "0.25"}  # a baseline arm in the figure: grey
BASELINE_CURVE = {"color": "0.35", "linestyle": "-.", "linewidth": 2}
MARKS = {True: "✅", False: "❌", None: "–"}


# --------------------------------------------------------------------------- formatting


def _fmt(value: Any, digits: int = 4) -> str:
    """A number for a table: 4 significant digits, '–' when missing."""
    if value is None or isinstance(value, str):
        return value or "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return "–" if math.isnan(number) else str(number)
    return f"{number:.{digits}g}"


def _fmt_int(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{int(number):,}" if math.isfinite(number) else "–"


def _mean_std(values: pd.Series) -> str:
    """`mean` or `mean ± std` (several seeds) of the finite values."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return "–"
    if len(finite) == 1:
        return _fmt(finite[0])
    return f"{_fmt(finite.mean())} ± {_fmt(finite.std(ddof=1), 2)}"


def _first_line(text: Any, limit: int = 200) -> str:
    lines = [line for line in str(text or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:limit]


def _label(arm: str, baselines: Collection[str] = ()) -> str:
    """An arm's name in a table: `fno-baseline (baseline)` for a baseline arm."""
    return f"{arm} (baseline)" if arm in baselines else arm


def _mapping(value: Any) -> Mapping[str, Any]:
    """`value` when it is a mapping, else {} (study.json is read as untrusted input)."""
    return value if isinstance(value, Mapping) else {}


def _table(rows: list[list[Any]], headers: list[str]) -> str:
    """A GitHub markdown table; pipes inside cells are escaped."""
    cells = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    return tabulate(cells, headers=headers, tablefmt="github", disable_numparse=True)


def _scope_text(h: Mapping[str, Any]) -> str:
    """`2 seeds × 64 traj`, `3 / 2 seeds × 64 traj` (candidate / reference) or `single seed × 64 traj`."""
    counts = list((h.get("n_seeds_by_arm") or {}).values()) or [h.get("n_seeds") or 0]
    if h.get("single_seed"):
        seeds = "single seed" if set(counts) == {1} else f"single seed ({' / '.join(map(str, counts))} seeds)"
    else:
        seeds = f"{counts[0] if len(set(counts)) == 1 else ' / '.join(map(str, counts))} seeds"
    trajectories = h.get("n_trajectories") or 0
    return f"{seeds} × {trajectories} traj" if trajectories else f"{seeds}, no per-trajectory data"


def _verdict_text(h: Mapping[str, Any], bold: bool = False) -> str:
    text = f"**{h.get('verdict')}**" if bold else str(h.get("verdict"))
    return f"{text} (single seed)" if h.get("single_seed") else text


def _other_ratio_text(h: Mapping[str, Any]) -> str:
    if h.get("other_ratio") is None:
        return "–"
    return f"{_fmt(h['other_ratio'])} ({h.get('other_metric')})"


def hypothesis_table(results: list[dict[str, Any]]) -> str:
    """The hypothesis verdicts as a terminal table."""
    rows = []
    for r in results:
        low, high = r.get("ci") or [None, None]
        reference = r.get("reference") or f"fixed {_fmt(r.get('reference_value'))}"
        rows.append(
            [
                r.get("id"),
                _verdict_text(r),
                r.get("metric"),
                r.get("candidate"),
                reference,
                _fmt(r.get("ratio")),
                f"[{_fmt(low)}, {_fmt(high)}]" if low is not None else "–",
                r.get("threshold"),
                _scope_text(r),
                r.get("reason"),
            ]
        )
    headers = ["id", "verdict", "metric", "candidate", "reference", "ratio", "95% CI", "pass if", "scope", "reason"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True, maxcolwidths=[*[None] * 9, 60])


# --------------------------------------------------------------------------- summaries


def _arm_order(study: Mapping[str, Any], df: pd.DataFrame) -> list[str]:
    listed = study.get("arms")
    if not isinstance(listed, list) or not listed:
        listed = list(_mapping(_mapping(study.get("matrix")).get("arms")))
    arms = [str(a) for a in listed]
    return arms + [a for a in dict.fromkeys(df["arm"].astype(str)) if a not in arms]


def _finished(df: pd.DataFrame, arm: str) -> pd.DataFrame:
    return df[(df["arm"] == arm) & (df["status"] == "finished")]


def _config_value(df: pd.DataFrame, arm: str, key: str) -> str:
    column = f"config.model.{key}"
    if column not in df.columns:
        return "–"
    values = [v for v in df.loc[df["arm"] == arm, column] if v is not None and not pd.isna(v)]
    return str(values[0]) if values else "–"


def _metric_columns(df: pd.DataFrame) -> list[str]:
    skip = {"arm", "seed", "status", "error", "profile", "node", "wall_seconds"}
    return [c for c in df.columns if c not in skip and not c.startswith("config.")]


def _persistence_metric(metric: str, df: pd.DataFrame) -> str | None:
    for name in (PERSISTENCE_OF.get(metric), "nrmse_persistence"):
        if name and name in df.columns and np.isfinite(np.asarray(df[name], dtype=np.float64)).any():
            return name if metric.startswith("nrmse") else None
    return None


def _interval(
    arm: str, per_traj: Mapping[str, np.ndarray], df: pd.DataFrame, metric: str, n_boot: int
) -> tuple[float, float, float] | None:
    """Mean of `metric` for an arm with a bootstrap 95% interval (trajectories, else seeds), or None."""
    if arm in per_traj and np.all(np.isfinite(per_traj[arm])):
        return bootstrap_mean_ci(per_traj[arm], n_boot=n_boot)
    values = np.asarray(_finished(df, arm)[metric], dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) > 1:
        return bootstrap_mean_ci(values[:, None], n_boot=n_boot)
    if len(values) == 1:
        return float(values[0]), math.nan, math.nan
    return None


# --------------------------------------------------------------------------- plot


def _comparison_figure(
    arms: list[str],
    df: pd.DataFrame,
    metric: str,
    per_traj: Mapping[str, np.ndarray],
    per_step: Mapping[str, np.ndarray],
    persistence_steps: Mapping[str, np.ndarray],
    n_boot: int,
    baselines: Collection[str] = (),
    step_metric: str = "nrmse_rollout",
) -> Any:
    """The comparison figure (a matplotlib Figure): study metric per arm (left), `step_metric` per step (right).

    A baseline arm is drawn apart: a grey hatched bar with a dotted line at its value (left), a grey
    dash-dotted curve beside persistence's (right).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.8), constrained_layout=True)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(arms))]
    shown = []
    for i, arm in enumerate(arms):
        interval = _interval(arm, per_traj, df, metric, n_boot)
        if interval is None:
            continue
        mean, low, high = interval
        error = [[mean - low], [high - mean]] if math.isfinite(low) else None
        if arm in baselines:
            left.bar(i, mean, yerr=error, capsize=5, **BASELINE_BAR)
            left.axhline(mean, color="0.35", linestyle=":", label=f"{_label(arm, baselines)}: {_fmt(mean)}")
        else:
            left.bar(i, mean, color=colors[i], yerr=error, capsize=5)
        shown.append(i)
    left.set_xticks(range(len(arms)), [_label(arm, baselines) for arm in arms], rotation=20, ha="right")
    persistence = _persistence_metric(metric, df)
    if persistence is not None:
        values = np.asarray(df.loc[df["status"] == "finished", persistence], dtype=np.float64)
        values = values[np.isfinite(values)]
        if len(values):
            left.axhline(values.mean(), color="k", linestyle="--", label=f"persistence ({persistence})")
    if left.get_legend_handles_labels()[0]:
        left.legend(loc="best")
    left.set_ylabel(metric)
    left.set_title(f"{metric} per arm (bootstrap 95% CI)" if shown else f"{metric}: no finished arm")

    plotted = False
    ordered = [a for a in arms if a not in baselines] + [a for a in arms if a in baselines]  # baselines last
    for arm in ordered:
        if arm in per_step and per_step[arm].size:
            curve = np.nanmean(per_step[arm], axis=0)  # (steps,)
            style = BASELINE_CURVE if arm in baselines else {"color": colors[arms.index(arm)]}
            right.plot(np.arange(1, len(curve) + 1), curve, label=_label(arm, baselines), **style)
            plotted = True
    if persistence_steps:
        stacked = [np.nanmean(a, axis=0) for a in persistence_steps.values() if a.size]
        if stacked and len({len(c) for c in stacked}) == 1:
            curve = np.nanmean(np.stack(stacked), axis=0)
            right.plot(np.arange(1, len(curve) + 1), curve, "k--", label="persistence")
            plotted = True
    if plotted:
        right.set_yscale("log")
        right.legend(loc="best", fontsize="small")
        right.set_title(f"{step_metric} per rollout step")
    else:
        right.set_title("no per-step data")
    right.set_xlabel("rollout step")
    right.set_ylabel("nRMSE")
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


# --------------------------------------------------------------------------- markdown


def _arms_section(
    arms: list[str], df: pd.DataFrame, arm_cfgs: Mapping[str, Any], seeds: list[int], baselines: Collection[str] = ()
) -> list[str]:
    families = {arm: _config_value(df, arm, "family") for arm in arms}
    other_families = any(family not in ("–", "upt") for family in families.values())
    rows = []
    for arm in arms:
        rows_arm = df[df["arm"] == arm]
        done = len(_finished(df, arm))
        planned = len(seeds) or len(rows_arm)
        description = _mapping(arm_cfgs.get(arm)).get("description", "")
        family = families[arm]
        if family == "fno":
            sizes = ", ".join(f"{key} {_config_value(df, arm, f'fno_{key}')}" for key in ("modes", "width", "layers"))
            family = f"fno ({sizes})"
        latent = family in ("–", "upt")  # the UPT columns say nothing about another family's model
        rows.append(
            [
                _label(arm, baselines),
                *([family] if other_families else []),
                *[_config_value(df, arm, key) if latent else "–" for key in ARCH_COLUMNS],
                _fmt_int(_finished(df, arm)["params"].mean()) if done else "–",
                _fmt(_finished(df, arm)["flops_per_sample"].mean(), 3)
                if done and "flops_per_sample" in df.columns
                else "–",
                f"{done}/{planned}",
                description,
            ]
        )
    headers = ["arm", *(["family"] if other_families else []), *ARCH_COLUMNS, "params", "FLOPs/sample", "finished",
               "description"]
    return ["## Arms", "", _table(rows, headers), ""]


def _ttc_against_chance(
    arm: str, df: pd.DataFrame, ttc_arrays: Mapping[str, Mapping[str, np.ndarray]], n_boot: int
) -> tuple[float, float, float] | None:
    """TTC's rollout nRMSE below its random control in % with a paired bootstrap interval, or None."""
    ttc, rnd = (ttc_arrays.get(m, {}).get(arm) for m in ("nrmse_ttc", "nrmse_ttc_random"))
    if ttc is not None and rnd is not None and ttc.shape == rnd.shape and np.all(np.isfinite(ttc) & np.isfinite(rnd)):
        if float(rnd.mean()) > 0:
            ratio, low, high = paired_bootstrap_ratio(ttc, rnd, n_boot=n_boot)
            return (1 - ratio) * 100, (1 - high) * 100, (1 - low) * 100
    values = np.asarray(_finished(df, arm).get("ttc_vs_random_pct", pd.Series(dtype=float)), dtype=np.float64)
    values = values[np.isfinite(values)]
    return (float(values.mean()), math.nan, math.nan) if len(values) else None


def _findings(arm: str, df: pd.DataFrame, ttc_arrays: Mapping[str, Mapping[str, np.ndarray]], n_boot: int) -> list[str]:
    """What the corrector and TTC did for one arm, in words."""
    fin = _finished(df, arm)

    def mean(column: str) -> float | None:
        values = np.asarray(fin[column], dtype=np.float64) if column in fin.columns else np.array([])
        values = values[np.isfinite(values)]
        return float(values.mean()) if len(values) else None

    out = []
    val_corrected, val_alone = mean("val_nrmse_one_step_corrected"), mean("val_nrmse_one_step_operator")
    rollout, rollout_alone = mean("nrmse_rollout"), mean("nrmse_rollout_operator")
    corrected = mean("nrmse_rollout_corrector_sample") is not None or mean("nrmse_ttc") is not None
    if rollout is not None and rollout_alone is not None and corrected:
        parts = []
        if val_corrected is not None and val_alone is not None:
            parts.append(f"validation one-step nRMSE {_fmt(val_corrected)} with it vs {_fmt(val_alone)} without")
        parts.append(f"test rollout nRMSE {_fmt(rollout)} with it vs {_fmt(rollout_alone)} without")
        hurts = [name for name, a, b in (("one-step", val_corrected, val_alone), ("rollout", rollout, rollout_alone))
                 if a is not None and b is not None and not a < b]
        verdict = (f"the corrector does not help ({' and '.join(hurts)} error not lower with it)" if hurts
                   else "the corrector lowers the error")
        out.append(f"- {arm}: {verdict}: {'; '.join(parts)}.")
    gain = _ttc_against_chance(arm, df, ttc_arrays, n_boot)
    if gain is not None:
        pct, low, high = gain
        interval = f" (95% CI [{_fmt(low, 3)}, {_fmt(high, 3)}] %)" if math.isfinite(low) else " (no interval)"
        if pct >= TTC_GAIN_BAR and math.isfinite(low) and low > 0:
            out.append(f"- {arm}: TTC's rollout nRMSE is {_fmt(pct, 3)}% below its random-choice control{interval}.")
        else:
            out.append(f"- {arm}: TTC gave no gain: its rollout nRMSE is {_fmt(pct, 3)}% below its random-choice "
                       f"control{interval}; a gain needs {TTC_GAIN_BAR:g}% or more with the interval above 0.")
    return out


def _metrics_section(
    arms: list[str],
    df: pd.DataFrame,
    metric: str,
    arm_cfgs: Mapping[str, Any],
    n_boot: int,
    per_traj: Mapping[str, np.ndarray],
    ttc_arrays: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    baselines: Collection[str] = (),
) -> list[str]:
    note = f"Study metric: `{metric}`. Values are means over finished seeds (± std across seeds)."
    lines = ["## Metrics", "", note, ""]
    error_cols = [m for m in ERROR_METRICS if m in df.columns]
    baseline, baseline_value = _baseline_value(arms, df, baselines)
    rows = []
    for arm in arms:
        fin = _finished(df, arm)
        interval = _interval(arm, per_traj, df, metric, n_boot)
        ci = f"[{_fmt(interval[1])}, {_fmt(interval[2])}]" if interval and math.isfinite(interval[1]) else "–"
        reference = _mapping(_mapping(arm_cfgs.get(arm)).get("reference_values")).get(metric)
        row = [_label(arm, baselines), *[_mean_std(fin[m]) for m in error_cols], ci, _fmt(reference)]
        if baseline is not None:
            row.append(_fmt(_finished_mean(fin, BASELINE_METRIC) / baseline_value))
        rows.append(row)
    headers = ["arm", *error_cols, f"{metric} 95% CI", f"{metric} reference (earlier phase)"]
    if baseline is not None:
        headers.append("vs baseline")
    lines += ["### Errors (the operator alone, with its corrector, and persistence)", ""]
    lines += [_table(rows, headers), ""]
    lines += ["`*_operator`: the operator alone; `nrmse_one_step` / `nrmse_rollout`: operator + the mean of the "
              "corrector's samples, fresh noise at every step; `*_corrector_sample`: one fresh corrector sample "
              "per step.", ""]
    if baseline is not None:
        lines += [f"`vs baseline`: the arm's `{BASELINE_METRIC}` / that of the baseline arm {baseline} "
                  f"({_fmt(baseline_value)}); below 1: a lower error than the baseline.", ""]
    ttc_cols = [m for m in (*TTC_COLUMNS, *CORRECTOR_COLUMNS) if m in df.columns]
    if ttc_cols:
        rows = [[_label(arm, baselines), *[_mean_std(_finished(df, arm)[m]) for m in ttc_cols]] for arm in arms]
        lines += ["### Corrector and test-time compute", "", _table(rows, ["arm", *ttc_cols]), ""]
        lines += ["`ttc_vs_random_pct`: how far TTC's rollout nRMSE lies below its random-choice control (the same "
                  "candidates, one picked at random per sample), in %; `ttc_improvement_pct`: below the operator "
                  "alone (`nrmse_rollout_operator`), in %. `val_*`: one-step nRMSE on the validation split, "
                  "measured at the end of the diffusion stage.", ""]
    findings = [line for arm in arms for line in _findings(arm, df, ttc_arrays or {}, n_boot)]
    if findings:
        lines += ["Findings:", "", *findings, ""]
    listed = {*ERROR_METRICS, *TTC_COLUMNS, *CORRECTOR_COLUMNS, "params", "flops_per_sample", "gpu_hours"}
    physics_cols = [m for m in PHYSICS_METRICS if m in df.columns]
    physics_cols += sorted(m for m in _metric_columns(df) if m not in listed and m not in physics_cols)
    rows = [[_label(arm, baselines), *[_mean_std(_finished(df, arm)[m]) for m in physics_cols]] for arm in arms]
    lines += ["### Physics and training", "", _table(rows, ["arm", *physics_cols]), ""]
    return lines


def _finished_mean(fin: pd.DataFrame, column: str) -> float:
    """Mean of a column's finite values over finished trials, NaN when there are none."""
    values = np.asarray(fin[column], dtype=np.float64) if column in fin.columns else np.array([])
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def _baseline_value(arms: list[str], df: pd.DataFrame, baselines: Collection[str]) -> tuple[str | None, float]:
    """The first baseline arm with a positive finished `BASELINE_METRIC`, and that value; (None, NaN) if none."""
    for arm in arms:
        if arm in baselines:
            value = _finished_mean(_finished(df, arm), BASELINE_METRIC)
            if value > 0:
                return arm, value
    return None, math.nan


def _references_section(
    arms: list[str], df: pd.DataFrame, arm_cfgs: Mapping[str, Any], baselines: Collection[str] = ()
) -> list[str]:
    rows = []
    for arm in arms:
        for name, reference in _mapping(_mapping(arm_cfgs.get(arm)).get("reference_values")).items():
            value = _finished_mean(_finished(df, arm), name)
            number = _finite_number(reference)
            ratio = value / number if number else math.nan
            rows.append([_label(arm, baselines), name, _fmt(reference), _fmt(value), _fmt(ratio)])
    if not rows:
        return []
    headers = ["arm", "metric", "reference value (earlier phase)", "measured here", "measured / reference"]
    return ["### Reference values of earlier phases", "", _table(rows, headers), ""]


def _finite_number(value: Any) -> float:
    """A finite float, or NaN for anything else (booleans included)."""
    if isinstance(value, bool):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _milestones_section(
    results: list[dict[str, Any]], checks: list[list[dict[str, Any]]], baselines: Collection[str] = ()
) -> list[str]:
    lines = ["## Milestones", "", "✅ passed, ❌ failed, – not checked or not applicable.", ""]
    if not results:
        return [*lines, "No trials yet.", ""]
    rows = []
    failures = []
    for r, trial_checks in zip(results, checks, strict=True):
        by_name = {c["name"]: c for c in trial_checks}
        rows.append([f"{_label(str(r['arm']), baselines)} seed {r['seed']}",
                     *[MARKS[by_name[n]["passed"]] for n in MILESTONES]])
        trial = f"{r['arm']} seed {r['seed']}"
        failures += [f"- {trial}, {c['name']}: {c['detail']}" for c in trial_checks if c["passed"] is False]
    lines += [_table(rows, ["trial", *MILESTONES]), ""]
    if failures:
        lines += ["Failed checks:", "", *failures, ""]
    details = [
        f"- {r['arm']} seed {r['seed']}: " + "; ".join(f"{c['name']}: {c['detail']}" for c in trial_checks)
        for r, trial_checks in zip(results, checks, strict=True)
    ]
    lines += ["<details><summary>All checks</summary>", "", *details, "", "</details>", ""]
    return lines


def _hypotheses_section(hypotheses: list[dict[str, Any]]) -> list[str]:
    lines = ["## Hypotheses", ""]
    if not hypotheses:
        return [*lines, "The matrix names no hypotheses.", ""]
    rows = []
    for h in hypotheses:
        low, high = h["ci"]
        reference = h["reference"] if h["reference_kind"] == "arm" else f"fixed value {_fmt(h['reference_value'])}"
        rows.append(
            [
                h["id"],
                h["description"],
                f"`{h['metric']}`",
                h["candidate"],
                reference,
                _fmt(h["ratio"]),
                f"[{_fmt(low)}, {_fmt(high)}]" if low is not None else "–",
                h["threshold"],
                _scope_text(h),
                _fmt(h.get("params_ratio"), 3),
                _fmt(h.get("flops_ratio"), 3),
                _other_ratio_text(h),
                _verdict_text(h, bold=True),
            ]
        )
    headers = [
        "id",
        "hypothesis",
        "metric",
        "candidate",
        "reference",
        "ratio",
        "95% CI",
        "pass if",
        "scope (seeds × test trajectories)",
        "params ratio",
        "FLOPs ratio",
        "ratio on the other rollout metric",
        "verdict",
    ]
    lines += [_table(rows, headers), ""]
    lines += [
        f"- {h['id']} ({h['metric']}, {h['test']}; candidate {_fmt(h['candidate_value'])}, reference "
        f"{_fmt(h['reference_value'])}; {h.get('interval') or 'no interval'}): {h['reason']}"
        for h in hypotheses
    ]
    lines += [
        "",
        "Ratio = candidate / reference of the metric's mean over seeds and test trajectories; params, FLOPs "
        "and the other rollout metric (operator + corrector `nrmse_rollout` beside the operator's own "
        "`nrmse_rollout_operator`) are the same ratio of the arms' means, shown without an interval. "
        "With at least 2 seeds per arm the 95% CI is a t interval on the log ratio: its variance adds each "
        "arm's between-seed variance of its per-seed means and the variance of the paired per-trajectory "
        "differences (less the seed × trajectory noise already counted), and its degrees of freedom are "
        "Welch–Satterthwaite's. It is meant to cover the ratio of the expected metric over training seeds "
        "and over test trajectories from the same distribution; with 2–3 seeds it has few degrees of "
        "freedom and is wide; with 2 seeds it tends to cover somewhat more often than 95%, and somewhat "
        "less when one arm's seeds vary far more than the other's. Against a fixed reference value the "
        "number carries no uncertainty: the candidate's seed and trajectory parts are each scaled by their "
        "own t quantile and added in quadrature (conservative). "
        "A verdict marked *single seed* compares one trained model per arm: its interval is a paired "
        "bootstrap over the test trajectories only, says nothing about seed-to-seed variation, and "
        "another training seed may change it. PASS needs the whole interval on the right side of the "
        "threshold, FAIL the whole interval on the wrong side; anything else is INCONCLUSIVE.",
        "",
    ]
    return lines


def _cost_section(results: list[dict[str, Any]], arms: list[str], baselines: Collection[str] = ()) -> list[str]:
    cost = study_cost(results)
    rates = sorted({trial_cost(r)["cost_per_gpu_hour"] for r in results})
    rows = [
        [_label(arm, baselines), c["trials"], _fmt(c["gpu_hours"], 3), f"${c['usd']:.2f}"]
        for arm in arms
        if (c := cost["per_arm"].get(arm))
    ]
    rows.append(["total", cost["trials"], _fmt(cost["gpu_hours"], 3), f"${cost['usd']:.2f}"])
    wall = sum(float(r.get("wall_seconds") or 0) for r in results)
    rate = ", ".join(f"${r:g}" for r in rates) or "–"
    return [
        "## Cost",
        "",
        f"GPU hours x cost_per_gpu_hour ({rate}/GPU-hour, from the trials' resources); "
        f"total trial wall time {wall / 3600:.2f} h.",
        "",
        _table(rows, ["arm", "trials", "GPU hours", "USD"]),
        "",
    ]


def _wandb_section(results: list[dict[str, Any]]) -> list[str]:
    rows = [
        [f"{r['arm']} seed {r['seed']}", *[(r.get("wandb") or {}).get(s) or "–" for s in ("operator", "diffusion")]]
        for r in results
        if any((r.get("wandb") or {}).values())
    ]
    if not rows:
        return ["## W&B runs", "", "No W&B runs recorded.", ""]
    return ["## W&B runs", "", _table(rows, ["trial", "operator", "diffusion"]), ""]


def _failures_section(results: list[dict[str, Any]], arms: list[str], seeds: list[int]) -> list[str]:
    lines = ["## Failed, running and missing trials", ""]
    present = {(str(r["arm"]), int(r["seed"])) for r in results}
    items = []
    for r in results:
        trial = f"{r['arm']} seed {r['seed']}"
        if r.get("status") == "error":
            items.append(f"- {trial}: **error** on {r.get('node') or 'unknown node'}: {_first_line(r.get('error'))}")
        elif r.get("status") == "running":
            items.append(f"- {trial}: running (no result yet)")
    items += [
        f"- {arm} seed {seed}: missing (no trial folder)"
        for arm in arms
        for seed in seeds
        if (arm, int(seed)) not in present
    ]
    done = {str(r["arm"]) for r in results if r.get("status") == "finished"}
    failed_arms = [arm for arm in arms if arm not in done]
    if failed_arms:
        items.append("- arms without any finished trial: " + ", ".join(failed_arms))
    return [*lines, *(items or ["None: every trial finished."]), ""]


def _recoveries_section(results: list[dict[str, Any]]) -> list[str]:
    """Worker restarts from a checkpoint and out-of-memory retries: the trial finished, but not in one go."""
    items = []
    for r in sorted(results, key=lambda r: (str(r["arm"]), int(r["seed"]))):
        trial = f"{r['arm']} seed {r['seed']}"
        for restart in r.get("restarts") or []:
            items.append(f"- {trial}: resumed from its checkpoint at {restart.get('stage')} epoch "
                         f"{restart.get('epoch')} (a worker or the driver was lost)")
        for oom in r.get("oom_adjustments") or []:
            items.append(f"- {trial}: {oom.get('stage')} ran out of memory at micro-batch "
                         f"{oom.get('batch_size_before')}; continued at {oom.get('batch_size_after')} x "
                         f"{oom.get('grad_accum_after')} accumulation "
                         f"(effective batch {oom.get('effective_batch')} unchanged)")
    if not items:
        return []
    return ["## Recoveries", "", *items, ""]


# --------------------------------------------------------------------------- writing


def _csv(df: pd.DataFrame, results: list[dict[str, Any]]) -> str:
    """One row per arm and seed: identity, architecture, metrics, cost, node and error."""
    arch = [f"config.model.{k}" for k in ARCH_COLUMNS if f"config.model.{k}" in df.columns]
    table = df[["arm", "seed", "status", *arch, *_metric_columns(df), "wall_seconds", "node", "error"]].copy()
    table = table.rename(columns={c: c.removeprefix("config.model.") for c in arch})
    costs = [trial_cost(r) for r in results]
    table["gpu_hours"] = [c["gpu_hours"] for c in costs]
    table["usd"] = [c["usd"] for c in costs]
    return table.to_csv(index=False)


def build_report(
    study_dir: str | os.PathLike[str],
    load_checkpoint: Callable[[str], bool] | None = None,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Everything the report shows, from storage: the DataFrame, hypotheses, milestones, markdown, CSV, PNG."""
    study = load_study(study_dir)
    results = load_results(study_dir)
    df = results_frame(results)
    matrix = _mapping(study.get("matrix"))
    metric = matrix.get("metric") or DEFAULT_METRIC
    arm_cfgs = _mapping(matrix.get("arms"))
    seeds = [int(s) for s in study.get("seeds") or []]
    arms = _arm_order(study, df)
    baselines = [arm for arm in baseline_arms(study) if arm in arms]
    hypotheses_cfg = matrix.get("hypotheses") or []

    metrics_needed = {metric, *[h.get("metric") or metric for h in hypotheses_cfg]}
    per_traj = {m: stack_arrays(results, PER_TRAJECTORY_FILE, m) for m in metrics_needed}
    hypotheses = []
    for h in hypotheses_cfg:
        h_metric = h.get("metric") or metric
        hypotheses += evaluate_hypotheses(df, [h], per_traj=per_traj[h_metric], metric=h_metric, n_boot=n_boot)
    checks = [check_milestones(r, load_checkpoint=load_checkpoint) for r in results]

    name = study.get("name") or Path(str(study_dir).rstrip("/")).name
    profile = study.get("profile") or next((r.get("profile") for r in results if r.get("profile")), None)
    header = [
        f"# Ablation report: {name}",
        "",
        f"- Profile: `{profile or 'unknown'}`",
        f"- Study metric: `{metric}`",
        f"- Seeds: {', '.join(map(str, seeds)) or '–'}",
        f"- Trials: {len(results)} found, {sum(r.get('status') == 'finished' for r in results)} finished",
        f"- Created: {study.get('created') or '–'}; report built {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- Storage: `{redact_text(str(study_dir))}`",  # a bucket URI may carry keys (?secret_key=...)
        "",
    ]
    if matrix.get("description"):
        header[1:1] = ["", str(matrix["description"]).strip()]
    if not study:
        header += ["study.json is missing: arms, seeds and hypotheses come from the trials alone.", ""]
    lines = [
        *header,
        *_hypotheses_section(hypotheses),
        *_arms_section(arms, df, arm_cfgs, seeds, baselines),
        *_metrics_section(arms, df, metric, arm_cfgs, n_boot, per_traj[metric],
                          {m: stack_arrays(results, PER_TRAJECTORY_FILE, m) for m in TTC_COLUMNS[:2]}, baselines),
        *_references_section(arms, df, arm_cfgs, baselines),
        "![architecture comparison](architecture_comparison.png)",
        "",
        *_milestones_section(results, checks, baselines),
        *_cost_section(results, arms, baselines),
        *_wandb_section(results),
        *_recoveries_section(results),
        *_failures_section(results, arms, seeds),
    ]
    step_metric = metric if stack_arrays(results, PER_STEP_FILE, metric) else "nrmse_rollout"  # rollout metrics only
    per_step = stack_arrays(results, PER_STEP_FILE, step_metric)
    persistence_steps = next((found for name in PER_STEP_PERSISTENCE
                              if (found := stack_arrays(results, PER_STEP_FILE, name))), {})
    png = _png(_comparison_figure(arms, df, metric, per_traj[metric], per_step, persistence_steps, n_boot, baselines,
                                 step_metric))
    return {
        "frame": df,
        "hypotheses": hypotheses,
        "milestones": checks,
        "markdown": "\n".join(lines),
        "csv": _csv(df, results),
        "png": png,
    }


def write_report(
    study_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    load_checkpoint: Callable[[str], bool] | None = None,
    n_boot: int = 2000,
) -> Path | str:
    """Write the four report files (default `<study>/report/`), each atomically; return the folder."""
    report = build_report(study_dir, load_checkpoint=load_checkpoint, n_boot=n_boot)
    return save_report(report, out_dir if out_dir is not None else storage.join(study_dir, REPORT_DIR))


def save_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> Path | str:
    """Write a built report's four files into `out_dir`, each atomically (tmp + rename); return the folder."""
    out = str(out_dir)
    storage.write_bytes_atomic(storage.join(out, "architecture_comparison.png"), report["png"])
    storage.write_text_atomic(storage.join(out, "architecture_comparison.csv"), report["csv"])
    storage.write_text_atomic(
        storage.join(out, "hypotheses.json"),
        json.dumps(storage.to_jsonable(report["hypotheses"]), indent=2, allow_nan=False) + "\n",
    )
    storage.write_text_atomic(storage.join(out, "ablation_report.md"), report["markdown"])
    return out if storage.is_uri(out) else Path(out)
