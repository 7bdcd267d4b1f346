"""Real faults on a real embedded Ray instance: a Ray Train worker SIGKILLed mid-stage, and a whole
`raysim run` driver (and its Ray instance) SIGKILLed mid-study and then resumed.

Each command runs in a session of its own; its processes are tracked through /proc (tests/reliability/
procs.py) and killed only by PID or by its own process group, so other Ray instances on the machine are
never touched. Both studies are tiny two-arm matrices derived from phase3.yaml's smoke profile (32 latent
tokens, a few seconds per operator epoch) and share one generated data file.

Observables: the trial's result.json (status, restarts, history, metrics), the Train run's registered
checkpoint (checkpoint_manager_snapshot.json: what a restarted worker resumes from; Tune's result lines
reach the storage folder only when Tune syncs, too late to time a kill by), file hashes, and /proc.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from raysim.config import deep_merge, load_matrix, resolve_arm
from reliability.procs import Command, Proc, kill

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PHASE3 = ROOT / "ablations" / "phase3.yaml"
QUICK, LONG = "pure32-quick", "pure32-long"
LONG_EPOCHS = 8  # operator epochs of LONG: the window in which a kill lands mid-stage
COMMAND_TIMEOUT = 480.0  # seconds; the machine may be shared with other Ray tests


# --------------------------------------------------------------------------- the study


def write_matrix(path: Path) -> Path:
    """Two arms of phase3's pure transformer at 32 tokens; the smoke profile runs one trial at a time."""
    phase3 = yaml.safe_load(PHASE3.read_text())
    pure = phase3["arms"]["pure-128"]["overrides"]
    profiles = copy.deepcopy(phase3["profiles"])
    profiles["smoke"]["max_concurrent_trials"] = 1  # QUICK finishes while LONG has not started
    arms = {
        QUICK: {"description": "one operator epoch, one diffusion epoch",
                "overrides": deep_merge(pure, {"model": {"tokens": 32}, "operator": {"epochs": 1},
                                               "diffusion": {"epochs": 1}})},
        LONG: {"description": f"{LONG_EPOCHS} operator epochs",
               "overrides": deep_merge(pure, {"model": {"tokens": 32}, "operator": {"epochs": LONG_EPOCHS}})},
    }
    matrix = {
        "name": "faults", "description": "fault injection on the phase3 smoke profile",
        "base": str(ROOT / "ablations" / "burgers_base.yaml"), "metric": "nrmse_rollout", "seeds": [0],
        "default_profile": "smoke", "arms": arms, "profiles": profiles,
        "hypotheses": [{"id": "H1", "description": "longer training is within 5%", "test": "within",
                        "candidate": LONG, "reference": QUICK, "tolerance": 0.05}],
    }
    path.write_text(yaml.safe_dump(matrix, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict[str, Any]:
    """The matrix file and `--set`s both tests use; the data file is generated once, here."""
    from raysim.train.common import ensure_data

    base = tmp_path_factory.mktemp("faults")
    matrix = write_matrix(base / "faults.yaml")
    sets = [f"data.cache_dir={base / 'data'}", "logging.wandb=false"]
    ensure_data(resolve_arm(load_matrix(matrix), LONG, "smoke", sets=sets).data)
    return {"matrix": str(matrix), "sets": sets, "set_args": [a for s in sets for a in ("--set", s)]}


def raysim(log: Path, *args: str) -> Command:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    return Command([sys.executable, "-m", "raysim.cli", *args], log=log, env=env, cwd=ROOT)


# --------------------------------------------------------------------------- observables


def read_json(path: Path) -> Any:
    """A JSON file, or None while it is missing or half written."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def registered(train_run: Path) -> dict[str, Any] | None:
    """Metrics of the latest checkpoint Ray Train registered for a run: what a restarted worker resumes from."""
    snapshot = read_json(train_run / "checkpoint_manager_snapshot.json") or {}
    return (snapshot.get("latest_checkpoint_result") or {}).get("metrics")


def tune_reports(storage: Path, arm: str) -> list[dict[str, Any]]:
    """Every result line Tune logged for `arm`'s trial, in order."""
    out = []
    for path in sorted((storage / "tune").glob("*/result.json")):
        for line in path.read_text().splitlines():
            try:
                result = json.loads(line)
            except json.JSONDecodeError:  # the line being written
                continue
            if (result.get("config") or {}).get("arm") == arm:
                out.append(result)
    return out


def operator_epochs(reports: list[dict[str, Any]]) -> list[int]:
    return [r["epoch"] for r in reports if r.get("stage") == "operator"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_run_state(run: Path) -> dict[str, str]:
    """A Train run's checkpoint folders and snapshot, as file -> hash."""
    return {str(p.relative_to(run)): sha256(p) for p in sorted(run.rglob("*")) if p.is_file()}


def check_finished(result: dict[str, Any], epochs: int, why: str) -> None:
    """status finished, each operator epoch 1..epochs in the history once, every metric finite."""
    assert result["status"] == "finished", f"status {result['status']}: {result.get('error')}\n{why}"
    history = [h["epoch"] for h in result["history"]["operator"]]
    assert history == list(range(1, epochs + 1)), f"operator history epochs {history}\n{why}"
    bad = {k: v for k, v in result["metrics"].items() if not math.isfinite(v)}
    assert not bad, f"non-finite metrics {bad}\n{why}"


def no_leftovers(cmd: Command, timeout: float = 60.0) -> None:
    """Every process the command's session ever held is gone (else they are killed by PID, and reported)."""
    left = cmd.tracker.wait_gone(timeout)
    for p in left:
        kill(p)
    assert not left, "processes of the run still alive {:.0f} s after it ended:\n{}".format(
        timeout, "\n".join(map(str, left)))


def train_workers(cmd: Command) -> list[Proc]:
    """The command's Ray Train worker processes (their title is ray::RayTrainWorker[.method])."""
    return [p for p in cmd.tracker.poll() if p.cmdline.startswith("ray::RayTrainWorker")]


# --------------------------------------------------------------------------- the tests


def clean_run(matrix: str, arm: str, sets: list[str], out: Path) -> tuple[list[dict], dict[str, float]]:
    """Per-epoch records and evaluation metrics of an uninterrupted in-process run (plain PyTorch)."""
    from raysim.train.context import LocalStageContext
    from raysim.train.pipeline import run_trial_pipeline

    ctx = LocalStageContext(out)
    run_trial_pipeline(resolve_arm(load_matrix(matrix), arm, "smoke", sets=sets), ctx)
    metrics = json.loads((ctx.checkpoint_dir / "evaluation" / "metrics.json").read_text())
    return [m for m in ctx.metrics if "epoch" in m], metrics


def test_train_worker_killed_mid_stage_resumes_from_its_last_epoch(study, tmp_path):
    """SIGKILL the Train worker mid operator stage: the fit restarts it from the last registered epoch,
    the command exits 0, and the trial's results equal a clean in-process run of the same config."""
    out = tmp_path / "run"
    train_run = out / "train" / f"{LONG}__seed0"
    cmd = raysim(tmp_path / "train.log", "train", study["matrix"], "--arm", LONG, "--profile", "smoke",
                 "--out", str(out), *study["set_args"])
    # the clean run (bit-identical to an uninterrupted Ray worker, tests/test_train.py) trains meanwhile
    with ThreadPoolExecutor(1) as pool:
        clean = pool.submit(clean_run, study["matrix"], LONG, study["sets"], tmp_path / "clean")
        try:
            def operator_epoch_registered():
                m = registered(train_run)
                return m if m and m.get("stage") == "operator" and m.get("epoch", 0) >= 1 else None

            seen = cmd.wait_for("registered operator epoch", operator_epoch_registered, timeout=COMMAND_TIMEOUT)
            workers = cmd.wait_for("RayTrainWorker process", lambda: train_workers(cmd), timeout=60)
            assert len(workers) == 1, "expected one Train worker:\n" + "\n".join(map(str, workers))
            worker = workers[0]
            at_kill = registered(train_run)
            assert at_kill["stage"] == "operator" and not at_kill["stage_done"], (
                f"the operator stage ended before the kill ({at_kill}); give {LONG} more epochs\n{cmd.tail()}")
            kill(worker)
            code = cmd.wait(COMMAND_TIMEOUT)
            why = cmd.tail()
            assert code == 0, f"exit {code} after the worker was killed at {at_kill}\n{why}"
            no_leftovers(cmd)
        finally:
            cmd.close()
        clean_history, clean_metrics = clean.result()

    result = json.loads((out / "trials" / f"{LONG}__seed0" / "result.json").read_text())
    check_finished(result, LONG_EPOCHS, why)
    restarts = result["restarts"]
    assert len(restarts) == 1 and restarts[0]["stage"] == "operator", f"restarts {restarts}\n{why}"
    # at most one epoch of work lost: it resumed from the epoch registered before the kill (or a later one
    # that was being registered as the kill landed), never from an earlier one
    assert seen["epoch"] <= restarts[0]["epoch"] <= at_kill["epoch"] + 1 < LONG_EPOCHS + 1, (
        f"resumed at epoch {restarts[0]['epoch']}, registered before the kill: {seen['epoch']} .. "
        f"{at_kill['epoch']}\n{why}")
    assert (out / "trials" / f"{LONG}__seed0" / "stages.json").is_file()

    history = [h for stage in ("operator", "diffusion") for h in result["history"][stage]]
    assert [(h["stage"], h["epoch"]) for h in history] == [(m["stage"], m["epoch"]) for m in clean_history]
    for key in ("train_loss", "val_loss"):
        assert [h[key] for h in history] == pytest.approx([m[key] for m in clean_history], rel=1e-6), (
            f"{key} per epoch differs from a clean run")
    assert {k: result["metrics"][k] for k in clean_metrics} == pytest.approx(clean_metrics, rel=1e-6), (
        "evaluation metrics differ from a clean run")


def test_killed_driver_resumes_the_study_and_keeps_finished_trials(study, tmp_path):
    """SIGKILL `raysim run` and its Ray instance after one trial finished and while the other trains;
    `--resume` leaves the finished trial untouched and resumes the other from its last epoch."""
    storage = tmp_path / "study"
    trials = storage / "trials"
    args = ["run", study["matrix"], "--profile", "smoke", "--storage", str(storage), *study["set_args"]]
    first = raysim(tmp_path / "run.log", *args)
    quick_done_at: list[float] = []
    try:
        def one_finished_other_training():
            if not quick_done_at:
                if (read_json(trials / f"{QUICK}__seed0" / "result.json") or {}).get("status") == "finished":
                    quick_done_at.append(time.monotonic())
                return None
            # killed as soon as possible: Tune saves which trials finished only every 10 s or more, so the
            # resumed study may rerun the finished trial, which must then leave its files as they are
            # Train's registered checkpoint, not Tune's result lines: those reach the storage folder late
            m = registered(storage / "train" / f"{LONG}__seed0")
            return m if m and m.get("stage") == "operator" and m.get("epoch", 0) >= 1 else None

        seen = first.wait_for(f"{QUICK} finished and {LONG} training", one_finished_other_training,
                              timeout=COMMAND_TIMEOUT)
        first.kill_group()
        # the group held the driver, GCS, raylet and dashboard; workers have groups of their own and must
        # follow the raylet on their own
        left = first.tracker.wait_gone(30)
        for p in left:
            kill(p)
        assert not left, "Ray processes outlived the killed driver by 30 s:\n" + "\n".join(map(str, left))
        killed_log = first.tail()
    finally:
        first.close()

    quick_dir = trials / f"{QUICK}__seed0"
    quick_files = {name: sha256(quick_dir / name) for name in ("result.json", "per_trajectory.npz", "stages.json")}
    quick_train = train_run_state(storage / "train" / f"{QUICK}__seed0")
    assert not (trials / f"{LONG}__seed0" / "stages.json").exists(), f"{LONG}'s fit finished before the kill"

    second = raysim(tmp_path / "resume.log", *args, "--resume")
    try:
        code = second.wait(COMMAND_TIMEOUT)
        why = f"{killed_log}\n{second.tail()}"
        assert code == 0, f"--resume exited {code}\n{why}"
        no_leftovers(second)
    finally:
        second.close()

    assert {name: sha256(quick_dir / name) for name in quick_files} == quick_files, (
        f"{QUICK}'s files changed on resume\n{why}")
    assert train_run_state(storage / "train" / f"{QUICK}__seed0") == quick_train, (
        f"{QUICK}'s Train run changed on resume (refitted?)\n{why}")

    long_result = json.loads((trials / f"{LONG}__seed0" / "result.json").read_text())
    check_finished(long_result, LONG_EPOCHS, why)
    restarts = long_result["restarts"]
    assert len(restarts) == 1 and restarts[0]["stage"] == "operator", f"restarts {restarts}\n{why}"
    resumed = restarts[0]["epoch"]
    assert seen["epoch"] <= resumed < LONG_EPOCHS, (
        f"resumed at epoch {resumed}, registered before the kill: {seen['epoch']}\n{why}")
    # the resumed trial reports to Tune the epochs it had not trained, and only those (Ray 2.60's restore
    # also replaces the trial's result.json in storage: the killed driver's lines are gone)
    epochs = operator_epochs(tune_reports(storage, LONG))
    assert epochs[resumed - LONG_EPOCHS:] == list(range(resumed + 1, LONG_EPOCHS + 1)), (
        f"resumed at epoch {resumed}; Tune saw operator epochs {epochs}\n{why}")

    report = storage / "report" / "ablation_report.md"
    assert report.is_file(), f"no report\n{why}"
    text = report.read_text()
    assert QUICK in text and LONG in text, f"the report does not name both arms:\n{text[:2000]}"
