"""Result files are written to a temporary name and renamed: a writer killed at any moment leaves every
result file whole (the old content or the new), and what it leaves behind never counts as a result.

The killed writer is real: a subprocess that imports raysim once and forks one writer after another;
each writer rewrites a study's report, one trial's files, promoted configs and a leaderboard in a loop
until the test SIGKILLs it, half the time at a random moment and half the time the moment one of its
temporary files appears (the middle of a write). After every kill every file in the output folders
must parse completely. A control run with a writer that writes in place proves the check catches a
torn file. Also: `raysim run` into a folder holding another study refuses and touches nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from raysim.analysis import load, load_results, storage
from raysim.analysis.leaderboard import LEADERBOARD_COLUMNS, read_leaderboard
from raysim.analysis.load import write_result, write_study
from raysim.analysis.report import REPORT_FILES, build_report
from raysim.config import METRICS, ArmConfig, HypothesisConfig, MatrixConfig, RunConfig, to_dict

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "ablations" / "burgers_base.yaml"
# arm -> factor on the reference errors (lower is better); the writer promotes them worst first
ARMS = {"ushaped-128": 1.0, "ushaped-256": 1.1, "pure-128": 1.01, "pure-256": 0.8, "pure-128-chansep": 1.2}
PROMOTION_METRICS = ("nrmse_rollout", "nrmse_one_step", "nrmse_ttc")
N_TRAJ = 32
PNG_HEAD, PNG_TAIL = b"\x89PNG\r\n\x1a\n", b"\x00\x00\x00\x00IEND\xaeB`\x82"
MD_END = "## Failed, running and missing trials\n\nNone: every trial finished.\n"


# --------------------------------------------------------------------------- a study folder


def _result(arm: str, factor: float) -> dict[str, Any]:
    config = to_dict(RunConfig(name=arm))
    config["model"]["processor"] = "u_shaped" if arm.startswith("ushaped") else "pdet_stack"
    config["model"]["tokens"] = 256 if "256" in arm else 128
    metrics = {name: 0.5 for name in METRICS}
    metrics.update(nrmse_rollout=0.06 * factor, nrmse_one_step=0.01 * factor, nrmse_ttc=0.055 * factor,
                   nrmse_ttc_random=0.06 * factor, conservation_gap=0.01, bc_violation=0.02, params=1e5)
    history = [{"epoch": e + 1, "train_loss": 1e-2 / (e + 1), "nonfinite_steps": 0} for e in range(3)]
    return {"arm": arm, "seed": 0, "profile": "smoke", "status": "finished", "error": None, "config": config,
            "metrics": metrics, "history": {"operator": history, "diffusion": history},
            "stage_info": {s: {"epochs_run": 3, "epochs_planned": 3, "early_stopped": False, "nonfinite_steps": 0}
                           for s in ("operator", "diffusion")},
            "wandb": {}, "node": "node-1", "wall_seconds": 60.0}


def make_study(root: Path) -> Path:
    """A finished five-arm study folder: study.json, and per trial result.json and both .npz files."""
    matrix = MatrixConfig(
        name="phase3", base=str(BASE), arms={arm: ArmConfig() for arm in ARMS},
        hypotheses=[HypothesisConfig(id="H1", candidate="pure-128", reference="ushaped-128", test="within"),
                    HypothesisConfig(id="H2", candidate="pure-256", reference="ushaped-256", test="better_by")])
    write_study(root, {"name": "phase3", "matrix": to_dict(matrix), "profile": "smoke", "seeds": [0],
                       "arms": list(ARMS), "created": "2025-11-04T00:00:00"})
    base = np.random.default_rng(0).uniform(0.03, 0.09, N_TRAJ)
    for arm, factor in ARMS.items():
        per_traj = {"nrmse_rollout": base * factor, "nrmse_persistence": base * 10}
        per_step = {"nrmse_rollout": np.linspace(0.01, 0.1, 6) * factor, "nrmse_persistence": np.linspace(0.1, 1, 6)}
        write_result(root, _result(arm, factor), per_traj, per_step)
    return root


# --------------------------------------------------------------------------- the writer


# Imports raysim once, then forks one writer per seed read on stdin, prints its pid, and on "reap" waits
# for it and prints how it ended. A writer loops until killed. `naive` swaps the atomic write for an in-place one.
# Nothing here touches pyarrow before forking (forking after Arrow's threads start is unsafe).
WRITER = r"""
import os, pickle, random, sys, traceback
from raysim.analysis import storage
from raysim.analysis.leaderboard import promote, read_leaderboard
from raysim.analysis.load import write_result
from raysim.analysis.report import save_report

study, out, naive = sys.argv[1], sys.argv[2], sys.argv[3] == "naive"
arms, metrics = sys.argv[4].split(","), sys.argv[5].split(",")
with open(sys.argv[6], "rb") as f:
    report = pickle.load(f)  # built once by the test (plotting takes seconds): the writers only write it

if naive:
    def in_place(location, data):
        os.makedirs(os.path.dirname(location), exist_ok=True)
        with open(location, "wb") as f:  # truncates, then writes: what a plain open(..., "w") does
            for i in range(0, len(data), 4096):  # in blocks, each synced: a slow disk, a window a kill can hit
                f.write(data[i : i + 4096])
                f.flush()
                os.fsync(f.fileno())
    storage.write_bytes_atomic = in_place

def loop(seed):
    rng = random.Random(seed)
    trials = os.path.join(study, "trials")
    boards = os.path.join(out, "boards")
    while True:
        save_report(report, os.path.join(out, "report"))  # write_report's writing half
        name = rng.choice(sorted(os.listdir(trials)))  # one trial's files, as the trial driver writes them
        folder = os.path.join(trials, name)
        result = storage.read_json(os.path.join(folder, "result.json"))
        write_result(study, result, storage.read_npz(os.path.join(folder, "per_trajectory.npz")),
                     storage.read_npz(os.path.join(folder, "per_step.npz")))
        # promotions, worst arm first, so that each one beats the champion and rewrites the board;
        # a board with every (metric, arm) on it is full: the next one starts
        os.makedirs(boards, exist_ok=True)
        names = sorted(n for n in os.listdir(boards) if not storage.is_tmp_name(n))
        k = len(names)
        if names and len(read_leaderboard(os.path.join(boards, names[-1]))) < len(metrics) * len(arms):
            k -= 1
        board = os.path.join(boards, f"board-{k:04d}.csv")
        for metric in metrics:
            for arm in arms:
                promote(study, arm, leaderboard=board, promoted_dir=os.path.join(out, "promoted"), metric=metric)

for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        try:
            loop(int(line))
        except BaseException:
            traceback.print_exc()
        os._exit(3)
    print(pid, flush=True)
    assert sys.stdin.readline() == "reap\n"  # unreaped, the pid cannot go to another process before the kill
    _, status = os.waitpid(pid, 0)
    print(f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}",
          flush=True)
"""


class Writers:
    """The forking writer process: `start(seed)` forks a writer and returns its pid; `ended()` says how it ended."""

    def __init__(self, study: Path, out: Path, naive: bool = False):
        arms = ",".join(sorted(ARMS, key=ARMS.__getitem__, reverse=True))
        built = out.parent / f"report-{out.name}.pkl"
        built.write_bytes(pickle.dumps({k: v for k, v in build_report(study, n_boot=20).items() if k != "frame"}))
        self.log = (out.parent / f"writers-{out.name}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(study), str(out), "naive" if naive else "atomic", arms,
             ",".join(PROMOTION_METRICS), str(built)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=out.parent)

    def start(self, seed: int) -> int:
        self.proc.stdin.write(f"{seed}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), f"the writer process died: {self.errors()}"
        return int(line)

    def ended(self) -> str:
        self.proc.stdin.write("reap\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def errors(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()[-3000:]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.log.close()


def tmp_files(folders: list[Path]) -> set[Path]:
    return {p for folder in folders if folder.is_dir() for p in folder.iterdir() if storage.is_tmp_name(p.name)}


def watched(study: Path, out: Path) -> list[Path]:
    """Every folder the writer writes into."""
    return [out / "report", out / "boards", out / "promoted", study, *sorted((study / "trials").iterdir())]


def kill_when_writing(pid: int, folders: list[Path], seen: set[Path], rng: random.Random, limit: float = 3.0) -> None:
    """SIGKILL the writer the moment a new temporary file appears (the middle of a write), else after `limit` s."""
    deadline = time.monotonic() + limit
    time.sleep(rng.uniform(0.0, 0.3))
    while time.monotonic() < deadline and not (tmp_files(folders) - seen):
        pass
    os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- what must hold after a kill


def check_outputs(study: Path, out: Path, rows_before: dict[str, int]) -> list[str]:
    """Every result file present parses completely; returns the problems found (empty when all is well)."""
    problems: list[str] = []

    def bad(path: Path, why: str) -> None:
        problems.append(f"{path.relative_to(out.parent)}: {why}")

    expected_files = {*REPORT_FILES}
    for path in sorted((out / "report").iterdir()) if (out / "report").is_dir() else []:
        if storage.is_tmp_name(path.name):
            continue
        data = path.read_bytes()
        if path.name not in expected_files:
            bad(path, "not a report file")
        elif path.suffix == ".png" and not (data.startswith(PNG_HEAD) and data.endswith(PNG_TAIL)):
            bad(path, f"not a whole PNG ({len(data)} bytes)")
        elif path.suffix == ".md":
            text = data.decode("utf-8", "replace")
            if not (text.startswith("# Ablation report: phase3\n") and text.endswith(MD_END)):
                bad(path, f"not a finished report ({len(text)} characters, ends {text[-60:]!r})")
        elif path.suffix == ".csv":
            try:
                table = pd.read_csv(io.BytesIO(data))
            except (ValueError, pd.errors.ParserError) as exc:
                bad(path, f"unreadable CSV: {exc}")
                continue
            if sorted(table["arm"]) != sorted(ARMS) or not data.endswith(b"\n"):
                bad(path, f"torn CSV ({len(table)} rows)")
        elif path.suffix == ".json":
            try:
                ids = [h["id"] for h in json.loads(data)]
            except (ValueError, TypeError, KeyError) as exc:
                bad(path, f"unreadable JSON: {exc}")
                continue
            if ids != ["H1", "H2"]:
                bad(path, f"hypotheses {ids}")

    for path in sorted((out / "boards").iterdir()) if (out / "boards").is_dir() else []:
        if storage.is_tmp_name(path.name):
            continue
        data = path.read_bytes()
        try:
            board = read_leaderboard(path)
        except Exception as exc:  # read_leaderboard raises UserError on a torn CSV
            bad(path, f"unreadable leaderboard: {exc}")
            continue
        if not data:
            continue  # never written by raysim, but harmless: read_leaderboard reads it as an empty board
        if list(board.columns) != list(LEADERBOARD_COLUMNS) or not data.endswith(b"\n"):
            bad(path, f"torn leaderboard: columns {list(board.columns)}")
        elif board[["arm", "metric", "value", "timestamp"]].isna().any().any():
            bad(path, "a leaderboard row with empty fields")
        elif len(board) < rows_before.get(path.name, 0):
            bad(path, f"lost rows: {len(board)} after {rows_before[path.name]}")
        rows_before[path.name] = len(board)

    configs = {r["arm"]: storage.to_jsonable(r["config"]) for r in load_results(study)}
    for path in sorted((out / "promoted").iterdir()) if (out / "promoted").is_dir() else []:
        if storage.is_tmp_name(path.name):
            continue
        arm = path.name.removeprefix("phase3-").removesuffix(".yaml")
        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            bad(path, f"unreadable YAML: {exc}")
            continue
        if config != configs.get(arm):
            bad(path, "not the arm's whole config")

    df = load(study)
    if sorted(df["arm"]) != sorted(ARMS) or not (df["status"] == "finished").all():
        problems.append(f"study: trials {list(zip(df['arm'], df['status'], df['error'], strict=True))}")
    for folder in sorted((study / "trials").iterdir()):
        for name in ("per_trajectory.npz", "per_step.npz"):
            try:
                arrays = storage.read_npz(folder / name)
            except Exception as exc:
                bad(folder / name, f"unreadable: {exc}")
                continue
            if sorted(arrays) != ["nrmse_persistence", "nrmse_rollout"]:
                bad(folder / name, f"arrays {sorted(arrays)}")

    for folder in watched(study, out):  # anything else in the folders is a temporary file, hidden
        for path in folder.iterdir() if folder.is_dir() else []:
            known = path.is_dir() or path.name in {*REPORT_FILES, "study.json", "result.json", "per_trajectory.npz",
                                                   "per_step.npz"} or path.suffix in (".csv", ".yaml")
            if not known and not storage.is_tmp_name(path.name):
                bad(path, "neither a result file nor a hidden temporary file")
    return problems


def tree_state(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under root: content hash and mtime of files, mtime of folders."""
    state = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        key = str(path.relative_to(root))
        if stat.S_ISDIR(info.st_mode):
            state[key] = ("dir", info.st_mtime_ns)
        else:
            state[key] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mtime_ns, info.st_mode)
    return state


# --------------------------------------------------------------------------- the tests


KILLS = 40


def test_result_files_survive_sigkill_at_any_moment(tmp_path: Path) -> None:
    study = make_study(tmp_path / "study")
    out = tmp_path / "out"
    out.mkdir()
    writers = Writers(study, out)
    rng = random.Random(1)
    seen: set[Path] = set()
    rows: dict[str, int] = {}
    endings = []
    try:
        for i in range(KILLS):
            pid = writers.start(i)
            if i % 2:
                kill_when_writing(pid, watched(study, out), seen, rng)
            else:
                time.sleep(rng.uniform(0.05, 1.0))
                os.kill(pid, signal.SIGKILL)
            endings.append(writers.ended())
            problems = check_outputs(study, out, rows)
            assert not problems, f"after kill {i + 1}:\n" + "\n".join(problems)
            seen |= tmp_files(watched(study, out))
    finally:
        writers.close()
    assert endings == ["signal 9"] * KILLS, f"a writer ended on its own: {endings}\n{writers.errors()}"
    # the test exercised what it claims: kills landed inside writes, and the writers made progress
    assert seen, "no kill landed inside a write: nothing was tested"
    print(f"{KILLS} kills, {len(seen)} inside a write (temporary files left), {sum(rows.values())} board rows")
    assert sum(rows.values()) >= len(PROMOTION_METRICS) * len(ARMS), f"too little was written: {rows}"
    assert {p.name for p in (out / "report").iterdir() if not storage.is_tmp_name(p.name)} == set(REPORT_FILES)


def test_atomic_writes_respect_the_umask_and_clear_stale_leftovers(tmp_path: Path) -> None:
    """A result file gets the umask's mode (mkstemp's 0600 would hide reports from the rest of a shared
    machine); a write clears its own target's temporary files left by a writer killed long ago, nothing else."""
    target = tmp_path / "phase3-pure-128.yaml"
    stale = tmp_path / storage.tmp_name(target.name)
    fresh = tmp_path / storage.tmp_name(target.name)
    other = tmp_path / storage.tmp_name("leaderboard.csv")
    for path in (stale, fresh, other):
        path.write_text("half a fi")
    old = time.time() - 2 * storage.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    storage.write_text_atomic(target, "model: {tokens: 128}\n")
    assert target.read_text() == "model: {tokens: 128}\n"
    assert not stale.exists() and fresh.exists() and other.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    storage.write_json_atomic(tmp_path / "r" / "result.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "r" / "result.json").stat().st_mode) == 0o666 & ~umask


def test_the_check_catches_a_writer_that_writes_in_place(tmp_path: Path) -> None:
    """Control: the same kills against a writer that truncates and rewrites in place tear a file."""
    study = make_study(tmp_path / "study")
    out = tmp_path / "out"
    out.mkdir()
    writers = Writers(study, out, naive=True)
    rng = random.Random(2)
    found: list[str] = []
    try:
        for i in range(KILLS):
            pid = writers.start(i)
            time.sleep(rng.uniform(0.05, 1.0))
            os.kill(pid, signal.SIGKILL)
            writers.ended()
            try:
                found = check_outputs(study, out, {})
            except Exception as exc:  # a torn result.json or study.json can break loading itself
                found = [f"{type(exc).__name__}: {exc}"]
            if found:
                break
    finally:
        writers.close()
    assert found, f"{KILLS} kills of an in-place writer left no torn file: the check cannot see one"
    print(f"control: torn after {i + 1} kill(s): {found[0]}")


def test_run_into_a_folder_holding_another_study_changes_nothing(tmp_path: Path) -> None:
    """`raysim run` of a different study refuses (exit 2, one line, no traceback) and touches no byte or mtime.

    The same study without --resume is tests/test_study.py's case; here a different one, with and without --resume.
    """
    study = make_study(tmp_path / "study")
    (study / "report").mkdir()
    (study / "report" / "ablation_report.md").write_text("# Ablation report: phase3\n")
    matrix = tmp_path / "other.yaml"
    matrix.write_text(yaml.safe_dump({
        "name": "other", "base": str(BASE), "arms": {"a": {}, "b": {"overrides": {"model": {"tokens": 64}}}},
        "profiles": {"smoke": {}, "local": {}, "cloud": {}}}))
    before = tree_state(study)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(HOME=str(tmp_path / "home"), PYTHONWARNINGS="ignore")
    for extra in ([], ["--resume"]):
        proc = subprocess.run(
            [sys.executable, "-m", "raysim.cli", "run", str(matrix), "--profile", "smoke", "--storage", str(study),
             "--set", f"data.cache_dir={tmp_path / 'data'}", *extra],
            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 2, f"{extra}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert str(study) in lines[0] and "--storage" in lines[0] and "phase3" in lines[0], lines[0]
        assert tree_state(study) == before, f"{extra}: the refused run changed the folder"
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()
    assert not list(tmp_path.glob("results*")), "the refused run wrote a default study folder"
