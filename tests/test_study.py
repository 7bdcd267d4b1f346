"""End to end: the Phase 3 smoke study on a real local Ray instance, then analyze, resume, promote."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHASE3 = str(ROOT / "ablations" / "phase3.yaml")
ARMS = {"ushaped-128", "ushaped-256", "pure-128", "pure-256", "pure-128-chansep", "fno-baseline"}

pytestmark = pytest.mark.slow


def raysim(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "raysim.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    storage = base / "phase3-smoke"
    sets = ["--set", f"data.cache_dir={base / 'data'}"]
    proc = raysim("run", PHASE3, "--profile", "smoke", "--storage", str(storage), *sets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"dir": storage, "base": base, "proc": proc, "sets": sets}


def test_study_writes_every_report_file(study):
    report = study["dir"] / "report"
    for name in ("ablation_report.md", "architecture_comparison.csv", "architecture_comparison.png",
                 "hypotheses.json"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    hypotheses = json.loads((report / "hypotheses.json").read_text())
    assert [h["id"] for h in hypotheses] == ["H1", "H2", "H3"]
    for h in hypotheses:
        assert h["verdict"] in ("PASS", "FAIL", "INCONCLUSIVE")
        assert {"metric", "candidate", "reference", "candidate_value", "reference_value", "ratio", "ci"} <= set(h)
    rows = list(csv.DictReader((report / "architecture_comparison.csv").open()))
    assert {r["arm"] for r in rows} == ARMS
    out = study["proc"].stdout
    assert "H1" in out and "H3" in out and f"report: {report / 'ablation_report.md'}" in out


def test_every_trial_finished_with_all_metrics(study):
    from raysim.analysis import load

    df = load(study["dir"])
    assert set(df["arm"]) == ARMS and (df["status"] == "finished").all()
    for name in ("nrmse_one_step", "nrmse_rollout", "nrmse_ttc", "nrmse_ttc_random", "nrmse_persistence",
                 "conservation_gap", "bc_violation", "ttc_improvement_pct", "operator_final_loss",
                 "diffusion_final_loss", "params", "train_seconds"):
        assert name in df.columns and df[name].notna().all(), name
    assert (df["params"] > 0).all()


def test_wandb_offline_runs_one_per_trial_and_stage(study):
    runs = list((study["dir"] / "wandb").rglob("offline-run-*"))
    ids = {p.name.split("-", 3)[3] for p in runs}  # offline-run-<date>_<time>-<run id>
    assert len(runs) == len(ids) == 2 * len(ARMS)


def test_analyze_reproduces_the_verdicts(study, tmp_path):
    proc = raysim("analyze", str(study["dir"]), "--out", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stderr
    first = json.loads((study["dir"] / "report" / "hypotheses.json").read_text())
    again = json.loads((tmp_path / "again" / "hypotheses.json").read_text())
    assert [(h["id"], h["verdict"], h["ratio"]) for h in first] == [(h["id"], h["verdict"], h["ratio"]) for h in again]


def test_resume_of_a_finished_study_reruns_nothing(study):
    results = sorted((study["dir"] / "trials").glob("*/result.json"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in results}
    proc = raysim("run", PHASE3, "--profile", "smoke", "--storage", str(study["dir"]), "--resume", *study["sets"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in results} == before


def test_second_run_into_the_same_storage_is_refused(study):
    proc = raysim("run", PHASE3, "--profile", "smoke", "--storage", str(study["dir"]), *study["sets"])
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr


def test_promote_gates_against_the_champion(study, tmp_path):
    from raysim.analysis import load

    df = load(study["dir"]).sort_values("nrmse_rollout")
    best, worst = df["arm"].iloc[0], df["arm"].iloc[-1]
    board = tmp_path / "leaderboard.csv"
    promoted = tmp_path / "promoted"
    common = ["--leaderboard", str(board), "--promoted-dir", str(promoted)]
    assert raysim("promote", str(study["dir"]), "--arm", best, *common).returncode == 0
    assert len(list(csv.DictReader(board.open()))) == 1 and any(promoted.glob("*.yaml"))
    refused = raysim("promote", str(study["dir"]), "--arm", worst, *common)
    assert refused.returncode == 1
    assert len(list(csv.DictReader(board.open()))) == 1
    bad = raysim("promote", str(study["dir"]), "--arm", "pure-512", *common)
    assert bad.returncode == 2 and "--arm" in bad.stderr


def test_seed_compatible_scripts(study, tmp_path):
    def script(name, *args):
        return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True,
                              text=True, timeout=300, cwd=ROOT)

    assert script("validate_config.py", PHASE3).returncode == 0
    assert script("validate_config.py", str(tmp_path / "missing.yaml")).returncode == 2
    out = tmp_path / "reports" / "phase3"
    proc = script("analyze_phase3_ablation.py", "--study", str(study["dir"]), "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "architecture_comparison.csv").is_file() and (out / "hypotheses.json").is_file()
    board = tmp_path / "board.csv"
    proc = script("promote_config.py", str(study["dir"]), "--arm", "pure-256", "--update-leaderboard",
                  "--leaderboard", str(board), "--promoted-dir", str(tmp_path / "promoted"))
    assert proc.returncode == 0 and board.is_file(), proc.stderr
