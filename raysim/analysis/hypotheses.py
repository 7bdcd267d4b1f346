"""Hypothesis tests of an ablation study: intervals of a ratio of means and PASS / FAIL / INCONCLUSIVE verdicts.

Pure functions on arrays; nothing here reads files. Per-trajectory arrays are shaped
(S, N): S seeds of one arm, N test trajectories, the same trajectories in the same
order for every arm of a study, so two arms are compared trajectory by trajectory.

With at least 2 seeds per arm a verdict uses `log_ratio_t_interval` (seeds and
trajectories); with a single seed, `paired_bootstrap_ratio` over trajectories only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from raysim.config import MatrixConfig

Verdict = Literal["PASS", "FAIL", "INCONCLUSIVE"]
TESTS = ("within", "better_by")
DEFAULT_METRIC: str = MatrixConfig.metric  # the operator's own rollout error unless a matrix names another
# Shown beside a verdict: the other rollout error (operator + corrector versus the operator alone).
OTHER_METRIC = {
    "nrmse_rollout_operator": "nrmse_rollout",
    "nrmse_rollout": "nrmse_rollout_operator",
    "nrmse_one_step_operator": "nrmse_one_step",
    "nrmse_one_step": "nrmse_one_step_operator",
}


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


def _log_beta(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    return lgamma(a) + lgamma(b) - lgamma(a + b)


def _beta_fraction(a: np.ndarray, b: np.ndarray, x: np.ndarray, max_terms: int = 5000) -> np.ndarray:
    """The continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny = 1e-300

    def guard(v: np.ndarray) -> np.ndarray:
        return np.where(np.abs(v) < tiny, tiny, v)

    c = np.ones_like(x)
    d = 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    fraction = d.copy()
    for m in range(1, max_terms + 1):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m)),  # even step
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0)),  # odd step
        ):
            d = 1.0 / guard(1.0 + numerator * d)
            c = guard(1.0 + numerator / c)
            step = d * c
            fraction *= step
        if np.all(np.abs(step - 1.0) < 1e-15):
            break
    return fraction


def _beta_regularized(a: np.ndarray, b: np.ndarray, x: np.ndarray, log_beta: np.ndarray | None = None) -> np.ndarray:
    """The regularized incomplete beta function I_x(a, b), elementwise, for 0 < x < 1 (log B(a, b) may be given)."""
    a, b, x = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a, b, x)))
    log_beta = _log_beta(a, b) if log_beta is None else log_beta  # symmetric in a and b
    direct = x < (a + 1.0) / (a + b + 2.0)  # where the fraction converges fast; else I_x(a,b) = 1 - I_{1-x}(b,a)
    pa, pb, px = np.where(direct, a, b), np.where(direct, b, a), np.where(direct, x, 1.0 - x)
    log_front = pa * np.log(px) + pb * np.log1p(-px) - log_beta - np.log(pa)
    value = np.exp(log_front) * _beta_fraction(pa, pb, px)
    return np.where(direct, value, 1.0 - value)


def t_quantile(level: float, df: np.ndarray | float) -> np.ndarray | float:
    """The two-sided `level` quantile of Student's t with `df` >= 1 degrees of freedom (real-valued), elementwise.

    Bisection on the tail P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2); df above 10^5 uses the normal quantile.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    nu = np.asarray(df, dtype=np.float64)
    if np.any(~(nu >= 1)):
        raise ValueError("degrees of freedom must be at least 1")
    tail = 1.0 - level
    flat = nu.ravel()
    low = np.zeros_like(flat)
    high = np.full_like(flat, math.tan(math.pi * level / 2))  # the quantile at df = 1 (Cauchy), the largest
    normal = flat > 1e5
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    nu_t = np.where(normal, 1.0, flat)
    log_beta = _log_beta(nu_t / 2.0, np.full_like(nu_t, 0.5))
    for _ in range(60):
        mid = 0.5 * (low + high)
        p_t = _beta_regularized(nu_t / 2.0, 0.5, nu_t / (nu_t + mid**2), log_beta)
        above = np.where(normal, erfc(mid / math.sqrt(2.0)), p_t) > tail  # P(|T| > mid) > tail: quantile is higher
        low, high = np.where(above, mid, low), np.where(above, high, mid)
    quantile = (0.5 * (low + high)).reshape(nu.shape)
    return float(quantile) if quantile.ndim == 0 else quantile


class RatioInterval(NamedTuple):
    """A ratio of means with its interval: point estimate, bounds, degrees of freedom, standard error of the log."""

    ratio: Any
    low: Any
    high: Any
    df: Any
    log_se: Any


def _interaction_mean_square(rel: np.ndarray) -> np.ndarray:
    """Seed x trajectory residual mean square of (..., S, N) values (two-way layout without replication)."""
    n_seeds, n_items = rel.shape[-2:]
    residual = rel - rel.mean(-1, keepdims=True) - rel.mean(-2, keepdims=True) + rel.mean((-2, -1), keepdims=True)
    return (residual**2).sum((-2, -1)) / ((n_seeds - 1) * (n_items - 1))


def log_ratio_t_interval(
    candidate: np.ndarray, reference: np.ndarray | float, level: float = 0.95
) -> RatioInterval:
    """Ratio of means candidate / reference with a t interval on its log, over training seeds and test trajectories.

    `candidate` is (..., S_c, N) and `reference` (..., S_r, N) on the same N trajectories, or a
    positive number (or (...) array) for a fixed reference; S >= 2 seeds per arm, leading axes
    are independent studies. The target is the ratio of the expected metric, the expectation
    taken over seeds and over the trajectory distribution. On values relative to each arm's
    mean (the linearised log of the mean), the variance of the log ratio is the sum of
    - each arm's between-seed variance of its per-seed means, / S (seed effects and the
      seed x trajectory noise of those means), and
    - the variance of the paired per-trajectory differences of seed-averaged values, / N,
      less the seed x trajectory noise already counted above (each arm's residual mean square / S),
      floored at zero (with N = 1 this term is absent: the interval covers seeds only).
    Two arms: Student's t quantile with Welch-Satterthwaite degrees of freedom (terms with S_c - 1,
    S_r - 1 and N - 1). A fixed reference: the seed term scaled by t(S_c - 1), the trajectory term by
    t(N - 1), added in quadrature; `df` is then NaN.
    """
    cand = np.asarray(candidate, dtype=np.float64)
    if cand.ndim < 2 or cand.shape[-2] < 2 or cand.shape[-1] < 1:
        raise ValueError(f"candidate must be a (..., seeds >= 2, trajectories) array, got shape {cand.shape}")
    fixed = np.ndim(reference) < 2
    ref = np.asarray(reference, dtype=np.float64)
    if not fixed and (ref.shape[-2] < 2 or ref.shape[-1] != cand.shape[-1]):
        raise ValueError(f"reference must be (..., seeds >= 2, {cand.shape[-1]}) to pair with candidate, "
                         f"got shape {ref.shape}")
    for name, arr in (("candidate", cand), ("reference", ref)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(arr)))} non-finite value(s) of {arr.size}")
    n_items = cand.shape[-1]
    mean_c = cand.mean((-2, -1))
    mean_r = ref if fixed else ref.mean((-2, -1))
    if np.any(mean_c <= 0) or np.any(mean_r <= 0):
        raise ValueError("the means of candidate and reference must be positive for a ratio")

    def seed_term(rel: np.ndarray) -> np.ndarray:
        return rel.mean(-1).var(-1, ddof=1) / rel.shape[-2]  # (...)

    def noise_term(rel: np.ndarray) -> np.ndarray:
        return _interaction_mean_square(rel) / rel.shape[-2] if n_items > 1 else np.zeros(rel.shape[:-2])

    rel_c = cand / mean_c[..., None, None]  # (..., S_c, N)
    terms = [(seed_term(rel_c), cand.shape[-2] - 1.0)]
    paired = rel_c.mean(-2)  # (..., N): per-trajectory seed-averaged values
    noise = noise_term(rel_c)
    if not fixed:
        rel_r = ref / mean_r[..., None, None]  # (..., S_r, N)
        terms.append((seed_term(rel_r), ref.shape[-2] - 1.0))
        paired = paired - rel_r.mean(-2)
        noise = noise + noise_term(rel_r)
    if n_items > 1:
        trajectory_term = np.maximum(paired.var(-1, ddof=1) - noise, 0.0) / n_items
        terms.append((trajectory_term, n_items - 1.0))
    variance = sum(v for v, _ in terms)
    log_se = np.sqrt(variance)
    if fixed:
        # A single seed term: each term scaled by its own t quantile (exact when either term is alone,
        # conservative between), as Satterthwaite's df is liberal when one term has few df.
        half = np.sqrt(sum(t_quantile(level, k) ** 2 * v for v, k in terms))
        df = np.full(np.shape(variance), np.nan)
    else:
        spread = sum(v**2 / k for v, k in terms)
        with np.errstate(divide="ignore", invalid="ignore"):
            df = np.where(spread > 0, variance**2 / np.where(spread > 0, spread, 1.0), np.inf)
        df = np.maximum(df, 1.0)  # Satterthwaite's df is at least the smallest term's df, which is >= 1
        half = np.asarray(t_quantile(level, np.minimum(df, 1e6))) * log_se
    ratio = mean_c / mean_r
    out = [ratio, ratio * np.exp(-half), ratio * np.exp(half), df, log_se]
    if np.ndim(ratio) == 0:
        out = [float(v) for v in out]
    return RatioInterval(*out)


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
    metric: str = DEFAULT_METRIC,
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
    With at least 2 seeds per arm the interval is `log_ratio_t_interval`; with one seed in
    an arm, `paired_bootstrap_ratio` over trajectories, and the object says `single_seed`.
    The cost and other-metric ratios are left empty here (`evaluate_hypotheses` fills them).
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
        "n_seeds_by_arm": {},
        "single_seed": False,
        "interval": "none",
        "df": None,
        "params_ratio": None,
        "params_metric": None,
        "flops_ratio": None,
        "other_metric": OTHER_METRIC.get(metric, "nrmse_rollout"),
        "other_ratio": None,
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

    # Per-trajectory arrays first (paired), else the per-seed values (seeds only).
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
        _set_seed_counts(out, {arm: len(s) for arm, s in seeds.items()})
        if not all(len(s) > 1 for s in seeds.values()):
            out["interval"] = "none: no per-trajectory data and fewer than 2 seeds per arm"
            out["reason"] = f"{why}; fewer than 2 seeds per arm: no confidence interval"
            return out
        sample = (seeds[candidate][:, None], ref_point if reference is None else seeds[reference][:, None])  # (S, 1)
        caveats.append(f"{why}: CI over seeds only")
    cand, ref = sample
    counts = {candidate: cand.shape[0]} if reference is None else {candidate: cand.shape[0], reference: ref.shape[0]}
    _set_seed_counts(out, counts)
    try:
        if out["single_seed"]:
            ratio, low, high = paired_bootstrap_ratio(cand, ref, n_boot=n_boot, seed=seed, level=level)
            if len(set(counts.values())) > 1:
                caveats.append("seed counts differ: the other arm's seeds resampled")
        else:
            ratio, low, high, df, _ = log_ratio_t_interval(cand, ref, level)
            out["df"] = df if math.isfinite(df) else None  # none for a fixed reference; infinite without variation
    except ValueError as exc:
        out["reason"] = f"interval impossible: {exc}"
        return out
    out["interval"] = _interval_text(counts, out["n_trajectories"], reference is None)
    if out["n_trajectories"]:
        out["ratio"] = ratio  # the interval's own point estimate (means over the same trajectories)
        out["candidate_value"] = float(cand.mean())
        if reference is not None:
            out["reference_value"] = float(np.mean(ref))
    out["ci"] = [low, high]
    out["verdict"] = verdict(test, (low, high), tolerance, margin)
    reason = _verdict_reason(test, out["verdict"], low, high, tolerance, margin, level)
    if out["single_seed"]:
        single = ", ".join(arm for arm, n in counts.items() if n < 2)
        caveats.insert(0, f"single seed: the interval covers only which test trajectories were drawn, for one "
                       f"trained model of {single}; another training seed may change the verdict")
    caveats += [notes[arm] for arm in arms if notes.get(arm)]
    out["reason"] = "; ".join([reason, *caveats])
    return out


def _set_seed_counts(out: dict[str, Any], counts: Mapping[str, int]) -> None:
    """`n_seeds` (the fewest of any arm), `n_seeds_by_arm` and `single_seed` of a hypotheses.json object."""
    out["n_seeds_by_arm"] = {arm: int(n) for arm, n in counts.items()}
    out["n_seeds"] = int(min(counts.values())) if counts else 0
    out["single_seed"] = out["n_seeds"] == 1


def _seeds_text(counts: Mapping[str, int]) -> str:
    """`2 seeds`, or `3 / 2 seeds` (candidate / reference) when the arms differ."""
    values = list(counts.values())
    text = str(values[0]) if len(set(values)) == 1 else " / ".join(map(str, values))
    return f"{text} seed{'' if values == [1] * len(values) else 's'}"


def _interval_text(counts: Mapping[str, int], n_items: int, fixed: bool) -> str:
    """What the interval is and which variation it covers, in one line."""
    few = [arm for arm, n in counts.items() if n < 2]
    if few:
        if len(few) == len(counts):
            return f"single seed: bootstrap over {n_items} test trajectories only"
        other = next(arm for arm in counts if arm not in few)
        return (f"single seed ({few[0]}): bootstrap over {n_items} test trajectories and the {counts[other]} "
                f"seeds of {other}; seed-to-seed variation of {few[0]} not covered")
    if not n_items:
        return f"t interval on log ratio over {_seeds_text(counts)} (seeds only: no per-trajectory data)"
    scope = "candidate's seeds and trajectories; reference fixed" if fixed else "seeds and trajectories"
    return f"t interval on log ratio over {_seeds_text(counts)} × {n_items} test trajectories ({scope})"


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


def _finished_mean(df: Any, arm: str, column: str) -> float | None:
    """Mean of a column over an arm's finished trials (finite values), or None."""
    if df is None or column not in getattr(df, "columns", []) or "arm" not in df.columns:
        return None
    rows = df[df["arm"].astype(str) == arm]
    if "status" in rows.columns:
        rows = rows[rows["status"] == "finished"]
    values = np.asarray(rows[column], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _ratio_between(df: Any, candidate: str, reference: str, column: str) -> float | None:
    """candidate / reference of an arm-level mean column, or None when either is missing or not positive."""
    cand, ref = _finished_mean(df, candidate, column), _finished_mean(df, reference, column)
    return cand / ref if cand is not None and ref is not None and ref > 0 else None


def _params_column(df: Any, metric: str, candidate: str, reference: str) -> str | None:
    """The parameter count to compare: the operator's for an operator-only metric, else the whole model's."""
    order = ("params_operator", "params") if metric.endswith("_operator") else ("params", "params_operator")
    return next((c for c in order if _ratio_between(df, candidate, reference, c) is not None), None)


def _add_scope(out: dict[str, Any], df: Any) -> None:
    """Cost ratios (parameters, FLOPs per sample) and the ratio on the other rollout metric, arm against arm."""
    candidate, reference = out["candidate"], out["reference"]
    if reference is None or candidate is None:
        return
    column = _params_column(df, out["metric"], candidate, reference)
    if column is not None:
        out["params_metric"] = column
        out["params_ratio"] = _ratio_between(df, candidate, reference, column)
    out["flops_ratio"] = _ratio_between(df, candidate, reference, "flops_per_sample")
    out["other_ratio"] = _ratio_between(df, candidate, reference, out["other_metric"])


def evaluate_hypotheses(
    df: Any,
    hypotheses: Iterable[Any],
    per_traj: Mapping[str, np.ndarray] | None = None,
    metric: str = DEFAULT_METRIC,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Every hypothesis tested on a study DataFrame (one row per trial) and, for `metric`, per-trajectory arrays.

    A hypothesis naming another metric than `metric` uses that metric's column of `df` (per-seed
    values) unless `per_traj` is for its metric; each object also carries the parameter, FLOPs and
    other-metric ratios of its arms from `df` (means over finished trials).
    """
    results = []
    for h in hypotheses:
        hyp = _hypothesis_dict(h)
        h_metric = hyp["metric"] or metric
        values, seeds, notes = _arm_summaries(df, h_metric)
        known = set(df["arm"].astype(str)) if df is not None and "arm" in getattr(df, "columns", []) else set()
        for arm in (hyp.get("candidate"), hyp["reference"]):
            if arm is not None and arm not in known and not (per_traj and arm in per_traj):
                notes.setdefault(arm, f"arm {arm!r} has no trials in the study")
        out = evaluate_hypothesis(
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
        _add_scope(out, df)
        results.append(out)
    return results
