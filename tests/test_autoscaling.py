"""Autoscaling on a fake multi-node cluster: A100 demand launches worker nodes, idleness removes them.

The cluster (tests/fake_cluster.py) is a real `ray start --head` with the fake_multinode provider:
its autoscaler launches worker raylets on this machine that advertise a fake A100
(`{"CPU": 1, "GPU": 1, "accelerator_type:A100": 1}`), exactly as the cloud cluster's
autoscaler launches a2-highgpu-1g nodes from cluster.yaml. The head has no GPU, so every task
that asks for an A100 must run on a launched worker node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_cluster import FakeCluster

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

TASKS = 3
TASK_SECONDS = 8
MAX_WORKERS = 3

# The driver: submit A100 tasks, watch the node count while they run, then watch the workers go away.
DRIVER = f"""
import json, time
import ray

ray.init(log_to_driver=False)  # RAY_ADDRESS: the fake cluster's GCS
head = ray.get_runtime_context().get_node_id()

def workers():
    return sorted(n["NodeID"] for n in ray.nodes()
                  if n["Alive"] and n["Resources"].get("accelerator_type:A100", 0) > 0)

@ray.remote(num_cpus=1, num_gpus=1, accelerator_type="A100", max_retries=0)
def where(i):
    start = time.time()
    time.sleep({TASK_SECONDS})
    return {{"task": i, "node": ray.get_runtime_context().get_node_id(), "start": start,
             "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}}

t0 = time.time()
refs = [where.remote(i) for i in range({TASKS})]
pending, seen, max_alive, first_node = list(refs), set(), 0, None
while pending:
    _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
    alive = workers()
    seen.update(alive)
    max_alive = max(max_alive, len(alive))
    if alive and first_node is None:
        first_node = time.time() - t0
    if time.time() - t0 > 150:
        raise SystemExit("tasks did not finish in 150 s")
results = ray.get(refs)
done = time.time()

left, gone_after = workers(), None
while time.time() - done < 90:
    left = workers()
    seen.update(left)
    if not left:
        gone_after = time.time() - done
        break
    time.sleep(1)

print(json.dumps({{
    "head": head, "results": results, "workers_seen": sorted(seen), "max_alive_workers": max_alive,
    "first_worker_s": first_node, "tasks_done_s": done - t0,
    "first_task_start_s": min(r["start"] for r in results) - t0, "workers_left": left, "scale_down_s": gone_after,
}}))
"""


@pytest.fixture(scope="module")
def cluster():
    with FakeCluster(max_workers=MAX_WORKERS, idle_timeout_minutes=0.1) as c:
        yield c
    assert not c.processes(), "fake cluster processes left behind"


@pytest.fixture(scope="module")
def run(cluster):
    out = cluster.run_python(DRIVER, timeout=300)
    print(f"\nhead start {cluster.start_seconds:.1f} s; first worker node {out['first_worker_s']:.1f} s; "
          f"all {TASKS} tasks done {out['tasks_done_s']:.1f} s; max workers alive {out['max_alive_workers']}; "
          f"scale-down {out['scale_down_s']} s after idle")
    return out


def test_a100_demand_launches_several_worker_nodes(run):
    assert len(run["workers_seen"]) >= 2, run
    assert 2 <= run["max_alive_workers"] <= MAX_WORKERS, run


def test_tasks_ran_on_launched_a100_nodes_never_on_the_head(run):
    nodes = [r["node"] for r in run["results"]]
    assert sorted(r["task"] for r in run["results"]) == list(range(TASKS))
    assert run["head"] not in nodes
    assert set(nodes) <= set(run["workers_seen"])
    assert len(set(nodes)) >= 2, "the A100 tasks should have been spread over launched nodes"
    assert all(len(r["gpu_ids"]) == 1 for r in run["results"]), run["results"]


def test_idle_workers_are_removed(run):
    assert run["workers_left"] == [] and run["scale_down_s"] is not None, run


def test_client_env_joins_this_cluster_only(cluster):
    env = cluster.client_env()
    assert env["RAY_ADDRESS"] == cluster.address and env["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_FAKE_CLUSTER" not in env
    assert cluster.processes(), "the cluster's own processes are found by temp dir / GCS address"


@pytest.mark.skipif(not os.environ.get("RAYSIM_FAKE_CLUSTER_STUDY"),
                    reason="minutes on 2 cores; set RAYSIM_FAKE_CLUSTER_STUDY=1 to run")
def test_smoke_study_on_fake_a100_nodes(tmp_path):
    """`raysim run` joined to an autoscaling cluster: every stage on fake A100 nodes, computed on CPU."""
    sets = ["--set", f"data.cache_dir={tmp_path / 'data'}", "--set", "resources.use_gpu=true",
            "--set", "resources.accelerator_type=A100", "--set", "resources.force_cpu=true"]
    storage = tmp_path / "study"
    with FakeCluster(max_workers=2, idle_timeout_minutes=0.1) as c:
        proc = subprocess.run([sys.executable, "-m", "raysim.cli", "run", str(ROOT / "ablations" / "phase3.yaml"),
                               "--profile", "smoke", "--storage", str(storage), *sets],
                              env=c.client_env(WANDB_MODE="offline"), capture_output=True, text=True, timeout=1200,
                              cwd=ROOT)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + c.monitor_log()
    results = [json.loads(f.read_text()) for f in sorted((storage / "trials").glob("*/result.json"))]
    assert len(results) == 5 and all(r["status"] == "finished" for r in results), \
        [(r["arm"], r["status"], r.get("error")) for r in results]
    assert (storage / "report" / "ablation_report.md").is_file()
