"""A study in which one arm fails for good: the other arm finishes, the report says which arm failed and
why, every hypothesis that needs the failed arm is INCONCLUSIVE naming it, the leaderboard never ranks
it, nothing else crashes, and the exit status says that a trial failed.

The failing arm is a legal config that really diverges: `operator.weight_decay: 1.0e+8` (a typo for
1.0e-8, which validation accepts: it only requires >= 0). AdamW's decoupled decay multiplies every
weight matrix by (1 - lr * weight_decay) = -799 per step, so the weights overflow to Inf within a
dozen steps, every later loss is NaN, and the NaN guard (`operator.max_nonfinite_steps: 2`) stops the
trial with NonFiniteError. Two arms, one seed, the Phase 3 smoke profile cut to 2 + 1 epochs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PHASE3 = ROOT / "ablations" / "phase3.yaml"
GOOD, BAD = "pure-128", "pure-128-diverges"
GUARD = "NonFiniteError"  # what the NaN guard raises; its message says "non-finite loss or gradients"

pytestmark = pytest.mark.slow


def matrix(tmp: Path) -> Path:
    """Two arms of Phase 3's pure-128 on its smoke profile (fewer epochs and steps); one diverges."""
    phase3 = yaml.safe_load(PHASE3.read_text())
    smoke = phase3["profiles"]["smoke"]
    smoke["overrides"]["operator"].update(epochs=2, max_steps_per_epoch=4)
    smoke["overrides"]["diffusion"].update(epochs=1, max_steps_per_epoch=2)
    good = phase3["arms"][GOOD]
    bad = {"description": "weight_decay typo: 1.0e+8 for 1.0e-8",
           "overrides": {**good["overrides"], "operator": {"weight_decay": 1.0e8, "max_nonfinite_steps": 2}}}
    data = {
        "name": "failtest", "base": str(ROOT / "ablations" / phase3["base"]), "metric": "nrmse_rollout",
        "seeds": [0], "default_profile": "smoke", "arms": {GOOD: good, BAD: bad},
        "hypotheses": [
            {"id": "H1", "test": "within", "candidate": BAD, "reference": GOOD},
            {"id": "H2", "test": "better_by", "candidate": GOOD, "reference": BAD},
            {"id": "H3", "test": "within", "candidate": GOOD, "reference_value": 0.5, "tolerance": 0.5},
        ],
        "profiles": {"smoke": smoke, "local": phase3["profiles"]["local"], "cloud": phase3["profiles"]["cloud"]},
    }
    path = tmp / "failtest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def raysim(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "raysim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("failed-trial")
    storage = base / "study"
    proc = raysim("run", str(matrix(base)), "--profile", "smoke", "--storage", str(storage),
                  "--set", f"data.cache_dir={base / 'data'}", "--set", "logging.wandb=false", cwd=base)
    (base / "stdout.txt").write_text(proc.stdout)
    (base / "stderr.txt").write_text(proc.stderr)
    assert (storage / "report" / "ablation_report.md").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"dir": storage, "base": base, "proc": proc}


def test_the_other_arm_finished(study: dict) -> None:
    from raysim.analysis import load, load_per_trajectory

    df = load(study["dir"]).set_index("arm")
    assert set(df.index) == {GOOD, BAD}
    assert df.loc[GOOD, "status"] == "finished" and df.loc[BAD, "status"] == "error"
    for name in ("nrmse_rollout", "nrmse_one_step", "nrmse_ttc", "params", "operator_final_loss"):
        assert pd.notna(df.loc[GOOD, name]) and pd.isna(df.loc[BAD, name]), name
    assert set(load_per_trajectory(study["dir"])) == {GOOD}


def test_the_report_marks_the_failed_arm_with_the_guard_message(study: dict) -> None:
    report = study["dir"] / "report"
    md = (report / "ablation_report.md").read_text()
    failures = md.split("## Failed, running and missing trials", 1)[1]
    line = next(line for line in failures.splitlines() if line.startswith(f"- {BAD} seed 0"))
    assert "**error**" in line and GUARD in line and "non-finite loss or gradients" in line, line
    assert f"arms without any finished trial: {BAD}" in failures
    assert not any(line.startswith(f"- {GOOD} seed") for line in failures.splitlines())
    rows = pd.read_csv(report / "architecture_comparison.csv").set_index("arm")
    assert rows.loc[BAD, "status"] == "error" and GUARD in rows.loc[BAD, "error"]
    assert pd.isna(rows.loc[BAD, "nrmse_rollout"]) and rows.loc[GOOD, "status"] == "finished"


def test_hypotheses_needing_the_failed_arm_are_inconclusive_and_name_it(study: dict) -> None:
    hypotheses = {h["id"]: h for h in json.loads((study["dir"] / "report" / "hypotheses.json").read_text())}
    assert set(hypotheses) == {"H1", "H2", "H3"}
    for h in hypotheses.values():
        if BAD in (h["candidate"], h["reference"]):
            assert h["verdict"] == "INCONCLUSIVE", h
            assert f"'{BAD}'" in h["reason"] and GUARD in h["reason"], h["reason"]
            assert h["ci"] == [None, None] and h["ratio"] is None
    assert {h["id"] for h in hypotheses.values() if BAD in (h["candidate"], h["reference"])} == {"H1", "H2"}
    h3 = hypotheses["H3"]  # the finished arm alone: a real interval and verdict
    assert h3["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE") and None not in h3["ci"] and h3["n_trajectories"] > 0
    table = study["proc"].stdout.split("report: ")[0]
    assert re.search(r"^H1\s+INCONCLUSIVE", table, re.M) and re.search(r"^H2\s+INCONCLUSIVE", table, re.M), table


def test_the_leaderboard_never_ranks_the_failed_arm(study: dict, tmp_path: Path) -> None:
    board, promoted = tmp_path / "leaderboard.csv", tmp_path / "promoted"
    common = ["--leaderboard", str(board), "--promoted-dir", str(promoted)]
    refused = raysim("promote", str(study["dir"]), "--arm", BAD, *common, cwd=tmp_path, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no finished trials" in refused.stderr and "Traceback" not in refused.stderr
    assert not board.exists() and not promoted.exists()
    accepted = raysim("promote", str(study["dir"]), "--arm", GOOD, *common, cwd=tmp_path, timeout=300)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert list(pd.read_csv(board)["arm"]) == [GOOD]
    assert [p.name for p in promoted.iterdir()] == [f"failtest-{GOOD}.yaml"]


def tracebacks(stderr: str) -> list[str]:
    """The tracebacks on stderr, each whole: Ray prefixes its processes' lines with `(Name pid=N)` and
    interleaves them, so the lines are first sorted into one stream per process."""
    streams: dict[str, list[str]] = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", stderr).splitlines():
        prefix = re.match(r"^\((\w+ pid=\d+)\) ?", line)
        streams.setdefault(prefix[1] if prefix else "driver", []).append(line[prefix.end():] if prefix else line)
    blocks = []
    for lines in streams.values():
        blocks += ["Traceback" + b for b in "\n".join(lines).split("Traceback (most recent call last):")[1:]]
    return blocks


def test_nothing_but_the_failed_trial_raised(study: dict) -> None:
    """Every traceback through raysim's code on stderr is the trial's NonFiniteError (Ray's trial error print).

    Ray logs some warnings of its own with a traceback (the Train controller's GetTimeoutError when the
    CPUs are overloaded); they pass through no raysim file and are left to Ray.
    """
    out, err = study["proc"].stdout, study["proc"].stderr
    ours = [b for b in tracebacks(err) if f'File "{ROOT / "raysim"}' in b]
    assert ours, "no trial error was reported at all"
    others = [b[-2000:] for b in ours if GUARD not in b]
    assert not others, "tracebacks other than the trial's:\n" + "\n----\n".join(others)
    assert "hypotheses not evaluated yet" not in out  # the callback's guard against a crashing analysis
    assert f"report: {study['dir'] / 'report' / 'ablation_report.md'}" in out
    assert f"trial {BAD} seed 0 failed" in out
    assert "1 trial(s) failed; see the report" in err


def test_the_exit_status_says_a_trial_failed(study: dict) -> None:
    """Exit 1: the study ran and reported, but not every trial finished (2 is bad input, 0 all finished).

    A scheduler, CI job or `ray job submit` must be able to tell a study with a failed arm from a clean one
    without parsing the report; INTERFACE.md reserves 2 for bad input, so a failed trial is 1 (as a refused
    promotion is). Fails while raysim/tune/study.py's run_study returns 0 whatever its trials did.
    """
    proc = study["proc"]
    assert proc.returncode == 1, (
        f"exit {proc.returncode}: FIX NEEDED in raysim/tune/study.py run_study: `return 1 if errors else 0`")
