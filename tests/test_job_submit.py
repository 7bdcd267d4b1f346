"""`ray job submit --working-dir . -- raysim run ...` against a local Ray head with the dashboard.

The head is a real `ray start --head` (tests/fake_cluster.py, `autoscaling=False`: its own temp dir and
ports, token auth off on both sides, torn down by PID) that advertises what cluster.yaml's head does
(`head: 1`, so trial drivers ask for a sliver of `head` and both CPUs stay with the trainer workers).
The job runs a one-arm smoke study from the uploaded working tree; the test then checks the job's
status and logs, the study's files, that the upload left .git and .gitignore'd folders behind, and --
from Ray's own records -- that the run joined the submitted cluster instead of starting a Ray of its own:
the submission's driver job attached to this cluster, and its Ray Train workers ran on the head.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from fake_cluster import RAY_BIN, FakeCluster, psutil

ROOT = Path(__file__).resolve().parents[1]
BIN_DIR = str(Path(sys.executable).parent)  # `ray` and the `raysim` entry point of this environment

pytestmark = pytest.mark.slow

ARM = "pure-128"
TRIAL = f"{ARM}__seed0"
JOB_TIMEOUT_S = 600  # ~1-2 min alone on 2 cores; more while other Ray work shares them
STUDY_SETS = {
    "logging.wandb": "false",
    "operator.epochs": "1",
    "diffusion.epochs": "1",
    "evaluation.max_trajectories": "2",
}
METRICS = ("nrmse_one_step", "nrmse_rollout", "nrmse_ttc", "nrmse_ttc_random", "nrmse_persistence",
           "conservation_gap", "bc_violation", "ttc_improvement_pct", "operator_final_loss",
           "diffusion_final_loss", "params", "train_seconds")

# Waits for the job (JobSubmissionClient), stops it if it overruns, then collects what Ray knows about it.
WAIT = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors, list_nodes

url, sid, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = JobSubmissionClient(url)
t0 = time.time()
status = client.get_job_status(sid)
while not status.is_terminal() and time.time() - t0 < timeout:
    time.sleep(3)
    status = client.get_job_status(sid)
waited = time.time() - t0
timed_out = not status.is_terminal()
if timed_out:
    client.stop_job(sid)
    while not client.get_job_status(sid).is_terminal() and time.time() - t0 < timeout + 60:
        time.sleep(1)
info = client.get_job_info(sid)
jobs = client.list_jobs()
nodes = list_nodes(address=url, limit=1000, raise_on_missing_output=False)
actors = list_actors(address=url, detail=True, limit=10000, raise_on_missing_output=False)
print(json.dumps({
    "status": str(status.value), "timed_out": timed_out, "waited_s": waited, "logs": client.get_job_logs(sid),
    "info": {"job_id": info.job_id, "driver_node_id": info.driver_node_id, "message": info.message,
             "driver_exit_code": info.driver_exit_code},
    "jobs": [{k: getattr(j, k, None) for k in ("type", "job_id", "submission_id")} for j in jobs],
    "nodes": [{"node_id": n.node_id, "is_head_node": n.is_head_node, "state": n.state} for n in nodes],
    "actors": [{"class_name": a.class_name, "node_id": a.node_id, "job_id": a.job_id, "state": a.state,
                "name": a.name} for a in actors],
}, default=str))
"""


def _cluster_yaml_head_resources() -> dict[str, float]:
    """The custom resources cluster.yaml gives its head node (`head: 1`)."""
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    resources = config["available_node_types"][config["head_node_type"]].get("resources", {})
    return {k: v for k, v in resources.items() if k not in ("CPU", "GPU", "memory", "object_store_memory")}


def _write_matrix(folder: Path) -> Path:
    """A one-arm study: phase3's arm, profiles and base config, one hypothesis against a fixed value."""
    phase3 = yaml.safe_load((ROOT / "ablations" / "phase3.yaml").read_text())
    matrix = {
        "name": "jobsubmit",
        "description": "one arm of phase3, run through `ray job submit`",
        "base": str(ROOT / "ablations" / phase3["base"]),
        "metric": phase3["metric"],
        "seeds": [0],
        "default_profile": "smoke",
        "arms": {ARM: phase3["arms"][ARM]},
        "hypotheses": [{"id": "H1", "description": f"{ARM} within 50% of a fixed nRMSE", "test": "within",
                        "candidate": ARM, "reference_value": 0.05, "tolerance": 0.5}],
        "profiles": phase3["profiles"],
    }
    path = folder / "jobsubmit.yaml"
    path.write_text(yaml.safe_dump(matrix, sort_keys=False))
    return path


def _own_processes(marker: str) -> list[psutil.Process]:
    """Processes this test started through the job: their command line names its unique temp folder."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or []):
            found.append(p)
    return found


def _tail(text: str, n: int = 6000) -> str:
    return text[-n:] if len(text) > n else text


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobsubmit")


@pytest.fixture(scope="module")
def cluster(work):
    env_path = f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"  # the job's shell finds `raysim` here
    c = FakeCluster(autoscaling=False, head_cpus=2, head_resources=_cluster_yaml_head_resources(),
                    object_store_bytes=200 * 1024**2, extra_env={"PATH": env_path})
    try:
        yield c.start()
    finally:
        c.stop()
        # the job's driver normally dies with the head; kill by PID anything of ours that outlived it
        leftovers = _own_processes(str(work))
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.kill()
    assert not c.processes(), "head processes left behind"
    assert not leftovers, f"job processes outlived the head: {[p.pid for p in leftovers]}"


@pytest.fixture(scope="module")
def job(cluster, work) -> dict:
    matrix = _write_matrix(work)
    study = work / "study"
    sid = f"raysim-test-{uuid.uuid4().hex[:8]}"
    sets = [arg for key, value in STUDY_SETS.items() for arg in ("--set", f"{key}={value}")]
    entrypoint = ["raysim", "run", str(matrix), "--profile", "smoke", "--storage", str(study),
                  "--set", f"data.cache_dir={work / 'data'}", *sets]
    cmd = [RAY_BIN, "job", "submit", "--address", cluster.dashboard_url(), "--submission-id", sid,
           "--working-dir", ".", "--no-wait", "--", *entrypoint]
    t0 = time.monotonic()
    submit = subprocess.run(cmd, cwd=ROOT, env=cluster.client_env(), capture_output=True, text=True, timeout=300)
    assert submit.returncode == 0, f"ray job submit failed ({submit.returncode}):\n{submit.stdout}\n{submit.stderr}"
    out = _wait(cluster, sid)
    out["wall_s"] = time.monotonic() - t0
    out.update(sid=sid, study=study, command=cmd, submit_output=submit.stdout + submit.stderr,
               uploads=_uploaded_trees(cluster))
    print(f"\nray job submit -> {out['status']} in {out['wall_s']:.0f} s (head start {cluster.start_seconds:.0f} s)")
    return out


def _wait(cluster: FakeCluster, sid: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", WAIT, cluster.dashboard_url(), sid, str(JOB_TIMEOUT_S)],
                          env=cluster.client_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT_S + 180,
                          cwd=cluster.temp_dir)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"waiting for job {sid} failed ({proc.returncode}):\n{_tail(proc.stdout)}\n"
                           f"{_tail(proc.stderr)}")
    return json.loads(lines[-1])


def _uploaded_trees(cluster: FakeCluster) -> list[dict]:
    """The working_dir packages the head unpacked for jobs: which top-level entries and how many bytes."""
    root = cluster.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    trees = []
    for pkg in sorted(root.glob("*")) if root.is_dir() else []:
        if pkg.is_dir():
            files = [f for f in pkg.rglob("*") if f.is_file()]
            trees.append({"path": str(pkg), "entries": sorted(e.name for e in pkg.iterdir()),
                          "files": [str(f.relative_to(pkg)) for f in files],
                          "bytes": sum(f.stat().st_size for f in files)})
    return trees


def _why(job: dict) -> str:
    return (f"job {job['sid']}: {job['status']} (timed out: {job['timed_out']}; {job['info']})\n"
            f"--- job logs (tail)\n{_tail(job['logs'])}")


# ----------------------------------------------------------------------------- tests


def test_job_succeeded(job):
    assert not job["timed_out"], _why(job)
    assert job["status"] == "SUCCEEDED", _why(job)
    assert job["info"]["driver_exit_code"] in (0, None), _why(job)


def test_study_files(job):
    study: Path = job["study"]
    assert (study / "study.json").is_file(), _why(job)
    assert json.loads((study / "study.json").read_text())["name"] == "jobsubmit"
    result_file = study / "trials" / TRIAL / "result.json"
    assert result_file.is_file(), _why(job)
    result = json.loads(result_file.read_text())
    assert result["status"] == "finished", f"{result.get('error')}\n{_why(job)}"
    bad = {m: result["metrics"].get(m) for m in METRICS
           if not isinstance(result["metrics"].get(m), (int, float)) or not math.isfinite(result["metrics"][m])}
    assert not bad, f"missing or non-finite metrics {bad}\n{_why(job)}"
    assert (study / "report" / "ablation_report.md").is_file(), _why(job)
    hypotheses = json.loads((study / "report" / "hypotheses.json").read_text())
    assert [h["id"] for h in hypotheses] == ["H1"]


def test_logs_show_hypothesis_and_report(job):
    logs = job["logs"]
    report = job["study"] / "report" / "ablation_report.md"
    assert "[raysim] H1:" in logs, _why(job)  # announced as soon as the arm finished
    assert f"report: {report}" in logs, _why(job)


def test_run_joined_the_submitted_cluster(job):
    """Ray's own records: the submission's driver attached here and its trainer workers ran on this head."""
    assert "Started a local Ray instance" not in job["logs"], _why(job)
    heads = [n["node_id"] for n in job["nodes"] if n["is_head_node"]]
    assert len(heads) == 1 and len(job["nodes"]) == 1, job["nodes"]
    assert job["info"]["driver_node_id"] == heads[0], job["info"]
    drivers = [j for j in job["jobs"] if j["submission_id"] == job["sid"]]
    assert len(drivers) == 1 and drivers[0]["job_id"], f"no driver of {job['sid']} attached: {job['jobs']}"
    ours = [a for a in job["actors"] if a["job_id"] == drivers[0]["job_id"]]
    classes = {a["class_name"] for a in ours}
    # Tune's trial actor (a function trainable) and the stages' Ray Train workers, all on this head
    assert {"ImplicitFunc", "RayTrainWorker"} <= classes, f"{job['actors']}\n{_why(job)}"
    assert {a["node_id"] for a in ours} == {heads[0]}, ours


def test_working_dir_upload_leaves_git_and_ignored_folders_behind(job):
    assert len(job["uploads"]) == 1, [u["path"] for u in job["uploads"]]
    tree = job["uploads"][0]
    assert {"raysim", "ablations", "pyproject.toml", ".gitignore"} <= set(tree["entries"]), tree["entries"]
    assert "raysim/cli.py" in tree["files"]
    # Ray's default excludes (.git, .venv, venv, __pycache__) and the project's .gitignore both apply
    for name in (".git", ".venv", "venv", ".pytest_cache", ".ruff_cache", "raysim.egg-info"):
        assert name not in tree["entries"], f"{name} was uploaded"
    assert not [f for f in tree["files"] if "__pycache__" in f or f.startswith(("results/studies/", "results/runs/"))
                or (f.startswith("results/") and ("/train/" in f or "/tune/" in f))]
    assert tree["bytes"] < 64 * 1024**2, f"working_dir upload is {tree['bytes'] / 1024**2:.1f} MiB"
