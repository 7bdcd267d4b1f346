"""A fake multi-node autoscaling Ray cluster on one machine, for tests.

The recipe that works with ray 2.60 (shared/RAY_NOTES.md): `ray start --head` with
`RAY_FAKE_CLUSTER=1` and an autoscaling config whose provider is `fake_multinode`; the head's
autoscaler then "launches" worker nodes as extra raylets on this machine, each advertising the
resources of its node type (here a fake A100: `{"CPU": 1, "GPU": 1, "accelerator_type:A100": 1}`),
and removes them after `idle_timeout_minutes`.

Everything it starts lives under its own short temp dir and ports, so it never joins (or is joined
by) any other Ray instance on the machine, and `stop()` kills only the processes whose command
line names that temp dir or its GCS address (plus their children), by PID. It never runs
`ray stop`, which kills every Ray process on the machine.

    with FakeCluster(max_workers=3) as cluster:
        subprocess.run([sys.executable, "-m", "raysim.cli", "run", ...], env=cluster.client_env())

`FakeCluster(autoscaling=False)` is a plain head (no fake provider, no worker nodes) that `start()`
returns once its dashboard answers: the job API that `ray job submit` talks to (tests/test_job_submit.py).

`client_env()` is the environment for a driver subprocess: `RAY_ADDRESS` (the GCS address),
`RAY_API_SERVER_ADDRESS` (its dashboard, for the State API), the same `RAY_AUTH_MODE` as the
cluster (token auth would otherwise make `ray.init(address=...)` fail with InvalidAuthToken),
usage stats off. `run_python(code)` runs a snippet that way and returns the JSON object its last
stdout line prints. The cluster's own processes get the same two addresses (see `_address_env`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

try:
    import psutil
except ImportError:  # ray vendors psutil in ray/thirdparty_files, which `import ray` puts on sys.path
    import ray  # noqa: F401

    psutil = importlib.import_module("psutil")

# The node type name the fake provider gives the head node (ray.autoscaler._private.fake_multi_node).
HEAD_TYPE = "ray.head.default"
A100_RESOURCES = {"CPU": 1, "GPU": 1, "accelerator_type:A100": 1}
AUTH_MODE = "disabled"  # same value on both sides; "disabled" needs no ~/.ray/auth_token
RAY_BIN = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env() -> dict[str, str]:
    """This process's environment without anything that would point Ray at another cluster."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_FAKE_CLUSTER") and not k.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_MODE=AUTH_MODE, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def autoscaling_config(
    gcs_address: str,
    *,
    head_resources: dict[str, int],
    worker_types: dict[str, dict[str, Any]],
    max_workers: int,
    idle_timeout_minutes: float,
) -> dict[str, Any]:
    """A complete fake_multinode autoscaler config.

    Complete because the defaults `prepare_config` would merge in come from an `example.yaml`
    that the pip wheel does not ship, and the monitor reads `file_mounts`, `cluster_synced_files`
    and the command lists directly.
    """
    node_types: dict[str, Any] = {HEAD_TYPE: {"resources": head_resources, "node_config": {}, "max_workers": 0}}
    for name, spec in worker_types.items():
        node_types[name] = {"node_config": {}, "min_workers": 0, "max_workers": max_workers, **spec}
    return {
        "cluster_name": "raysim-fake",
        "max_workers": max_workers,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_timeout_minutes,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            # every fake node shares this machine's IP: identify nodes by id instead
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {},
        "docker": {},
        "available_node_types": node_types,
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


class FakeCluster:
    """Start with `start()` (or `with`), stop with `stop()`; both are safe to call twice."""

    def __init__(
        self,
        *,
        max_workers: int = 3,
        idle_timeout_minutes: float = 0.1,
        head_cpus: int = 1,
        head_resources: dict[str, int] | None = None,
        worker_types: dict[str, dict[str, Any]] | None = None,
        object_store_bytes: int = 100 * 1024**2,
        include_dashboard: bool = True,
        update_interval_s: int = 1,
        extra_env: dict[str, str] | None = None,
        start_timeout_s: float = 180.0,  # `ray start` took >60 s once with other Ray work loading 2 cores
        autoscaling: bool = True,  # False: a plain head (no fake provider, no worker nodes), e.g. for `ray job`
    ):
        self.max_workers = max_workers
        self.idle_timeout_minutes = idle_timeout_minutes
        self.head_cpus = head_cpus
        self.head_resources = {"head": 1} if head_resources is None else dict(head_resources)
        self.worker_types = worker_types or {
            "a100": {"resources": {**A100_RESOURCES, "object_store_memory": object_store_bytes}}
        }
        self.object_store_bytes = object_store_bytes
        self.include_dashboard = include_dashboard
        self.update_interval_s = update_interval_s
        self.extra_env = dict(extra_env or {})
        self.start_timeout_s = start_timeout_s
        self.autoscaling = autoscaling
        self.temp_dir: Path | None = None
        self.port: int | None = None
        self.dashboard_port: int | None = None
        self.address: str | None = None  # GCS address, what RAY_ADDRESS / ray.init(address=...) take
        self.start_seconds: float | None = None
        self._started = False

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> FakeCluster:
        if self._started:
            return self
        # short: Ray puts unix sockets under it (107-byte limit); own: nobody else's ray.init finds it
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rsfc", dir="/tmp"))
        self.port = free_port()
        self.dashboard_port = free_port()
        # Ray maps 127.0.0.1 to the node's IP anyway (nodes register as that IP): use it from the start
        self.address = f"{_node_ip()}:{self.port}"
        env = _base_env()
        autoscaling_args = []
        if self.autoscaling:
            config = autoscaling_config(
                self.address,
                head_resources={"CPU": self.head_cpus, **self.head_resources},
                worker_types=self.worker_types,
                max_workers=self.max_workers,
                idle_timeout_minutes=self.idle_timeout_minutes,
            )
            config_path = self.temp_dir / "autoscaling.yaml"
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
            env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S=str(self.update_interval_s))
            autoscaling_args = [f"--autoscaling-config={config_path}"]
        env.update(**self._address_env(), **self.extra_env)
        cmd = [
            RAY_BIN, "start", "--head",
            f"--port={self.port}",
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={self.head_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(self.head_resources)}",
            f"--object-store-memory={self.object_store_bytes}",
            *autoscaling_args,
            f"--include-dashboard={'true' if self.include_dashboard else 'false'}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--min-worker-port=0", "--max-worker-port=0",
            "--disable-usage-stats",
        ]
        self._started = True  # from here on stop() has something to clean up
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=self.start_timeout_s,
                                  cwd=self.temp_dir)
            if proc.returncode != 0:
                raise RuntimeError(f"ray start failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                   f"{proc.stderr[-3000:]}")
            if self.autoscaling:
                self.wait_for(lambda: self._monitor_running(), timeout=self.start_timeout_s,
                              what="autoscaler monitor")
            if self.include_dashboard and not self.autoscaling:  # the job API answers once this does
                self.wait_for(self._dashboard_up, timeout=self.start_timeout_s, what="dashboard")
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def __enter__(self) -> FakeCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Kill, by PID, only this cluster's processes and their children; return the PIDs killed."""
        if not self._started:
            return []
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.send_signal(sig)
                    killed.append(p.pid)
            _, alive = psutil.wait_procs(procs, timeout=max(1.0, min(10.0, deadline - time.monotonic())))
            if not alive and not self.processes():
                break
        self._started = False
        if self.temp_dir and not os.environ.get("RAYSIM_KEEP_FAKE_CLUSTER"):
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return sorted(set(killed))

    # ----------------------------------------------------------------- inspection
    def processes(self) -> list[psutil.Process]:
        """This cluster's processes: command line names its temp dir or GCS address, plus descendants.

        Descendants matter: Ray's worker processes rename themselves (`ray::IDLE`), and the fake
        provider starts worker-node raylets as children of the head's monitor process.
        """
        if self.temp_dir is None:
            return []
        marks = (str(self.temp_dir), self.address or "\0")
        me = os.getpid()
        roots: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(p.info["cmdline"] or [])
            if p.pid != me and any(m in cmdline for m in marks):
                roots[p.pid] = p
        found = dict(roots)
        for p in roots.values():
            with contextlib.suppress(psutil.Error):
                for child in p.children(recursive=True):
                    if child.pid != me:
                        found[child.pid] = child
        return list(found.values())

    def log_dir(self) -> Path | None:
        if self.temp_dir is None:
            return None
        latest = self.temp_dir / "session_latest" / "logs"
        return latest if latest.exists() else None

    def monitor_log(self, tail: int = 4000) -> str:
        logs = self.log_dir()
        if logs is None:
            return ""
        parts = []
        for name in ("monitor.log", "monitor.err", "monitor.out"):
            f = logs / name
            if f.is_file():
                parts.append(f"--- {name}\n{f.read_text(errors='replace')[-tail:]}")
        return "\n".join(parts)

    def _monitor_running(self) -> bool:
        return any("monitor.py" in " ".join(p.cmdline()) for p in self.processes() if _alive(p))

    def dashboard_url(self) -> str:
        """The dashboard's HTTP address: the job API (`ray job submit --address`) and the State API."""
        if self.dashboard_port is None or not self.include_dashboard:
            raise RuntimeError("cluster not started, or started without the dashboard")
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _dashboard_up(self) -> bool:
        try:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
            with opener.open(f"{self.dashboard_url()}/api/version", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def _address_env(self) -> dict[str, str]:
        """Where this cluster's GCS and dashboard are, for every process that might look them up.

        Ray code that calls the State API without an address (Ray Train V2's PlacementGroupCleaner
        does, in every cluster process) otherwise autodetects GCS processes by scanning `ps`; with
        any other Ray instance on the machine that raises "Found multiple active Ray instances",
        the cleaner's thread dies and a stopped trial's placement group is never removed.
        """
        if self.address is None:
            raise RuntimeError("cluster not started")
        env = {"RAY_ADDRESS": self.address}
        if self.include_dashboard:
            env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{self.dashboard_port}"
        return env

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment for a driver subprocess that should join this cluster."""
        env = _base_env()
        env.update(self._address_env())
        env.update(extra)
        return env

    def run_python(self, code: str, timeout: float = 120.0, **extra_env: str) -> dict[str, Any]:
        """Run `code` in a fresh interpreter joined to this cluster; return the JSON of its last stdout line."""
        proc = subprocess.run([sys.executable, "-c", code], env=self.client_env(**extra_env), capture_output=True,
                              text=True, timeout=timeout, cwd=self.temp_dir)
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"driver failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}\n"
                               f"{self.monitor_log()}")
        return json.loads(lines[-1])

    @staticmethod
    def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "condition", poll: float = 0.5) -> float:
        """Poll until `predicate()` is true; return the seconds it took, raise TimeoutError after `timeout`."""
        t0 = time.monotonic()
        while True:
            if predicate():
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{what} not reached in {timeout:.0f} s")
            time.sleep(poll)


def _node_ip() -> str:
    from ray.util import get_node_ip_address

    return get_node_ip_address()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def fake_cluster(**kwargs: Any) -> Iterator[FakeCluster]:
    """`with fake_cluster(max_workers=2) as c:` — started on entry, its own processes killed on exit."""
    cluster = FakeCluster(**kwargs)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
