"""cluster.yaml, checked offline with Ray's own schema and config preparation (what `ray up` runs first).

The GCP provider's bootstrap (service accounts, SSH keys, subnets) needs credentials and network;
it is never called here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
PHASE3 = ROOT / "ablations" / "phase3.yaml"
WRAPPER = ROOT / "scripts" / "run_ablation.py"

# key/token/password-like names followed by a value; placeholders and file paths are allowed values
SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b([\w-]*(?:api[_-]?key|access[_-]?key|secret|token|passw(?:or)?d|private[_-]?key|credential)s?[\w-]*)"
    r"[\"']?\s*[:=]\s*[\"']?([^\s\"',}#]+)")
SECRET_VALUE = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"  # PEM keys
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bAIza[0-9A-Za-z_\-]{35}\b"  # Google API key
    r"|\bya29\.[0-9A-Za-z_\-]+"  # Google OAuth access token
    r"|\"type\":\s*\"service_account\""  # GCP service-account key JSON
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bhf_[A-Za-z0-9]{30,}\b|\bsk-[A-Za-z0-9]{20,}\b|\bxox[abprs]-[A-Za-z0-9-]+"
    r"|\b[0-9a-f]{40}\b"  # W&B API keys are 40 hex characters
)


def secrets_in(text: str) -> list[str]:
    found = [m.group(0) for m in SECRET_VALUE.finditer(text)]
    for m in SECRET_ASSIGNMENT.finditer(text):
        value = m.group(2)
        if value.startswith(("YOUR_", "~", "/", "./", "$", "<")) or value.lower() in ("null", "none", "true", "false"):
            continue
        found.append(m.group(0))
    return found


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    """What `ray up` validates: the config merged with the GCP defaults, then checked against the schema."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _worker_type(config: dict) -> tuple[str, dict]:
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert len(workers) == 1, f"expected one worker node type, got {sorted(workers)}"
    return next(iter(workers.items()))


def _head_start(config: dict) -> str:
    starts = [c for c in config["head_start_ray_commands"] if "ray start" in c and "--head" in c]
    assert len(starts) == 1, config["head_start_ray_commands"]
    return " ".join(starts[0].split())


def test_raw_file_passes_rays_schema_and_validation(raw):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    validate_config(copy.deepcopy(raw))


def test_prepared_config_is_valid(prepared):
    assert prepared["cluster_name"] == "raysim"
    assert prepared["provider"]["type"] == "gcp"
    assert prepared["provider"]["project_id"] == "YOUR_GCP_PROJECT"  # a placeholder, never a real project


def test_validation_really_rejects_bad_configs(raw):
    bad = copy.deepcopy(raw)
    bad["max_worker"] = 5  # typo: the schema allows no unknown top-level keys
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(raw)
    name, _ = _worker_type(bad)
    bad["available_node_types"][name]["resources"]["GPU"] = 0.5  # resources are integers
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_worker_type_is_one_a100_scaled_from_zero(prepared):
    _, worker = _worker_type(prepared)
    assert worker["node_config"]["machineType"] == "a2-highgpu-1g"
    assert {"onHostMaintenance": "TERMINATE"} in worker["node_config"]["scheduling"]
    assert worker["resources"]["GPU"] == 1
    assert worker["resources"]["accelerator_type:A100"] == 1
    assert worker["resources"]["CPU"] >= 1
    assert worker["min_workers"] == 0
    arms = yaml.safe_load(PHASE3.read_text())["arms"]
    assert worker["max_workers"] >= max(3, len(arms)), "one A100 node per Phase 3 trial"
    assert prepared["max_workers"] >= worker["max_workers"]


def test_idle_a100_nodes_are_released(prepared):
    _, worker = _worker_type(prepared)
    timeout = worker.get("idle_timeout_s", prepared["idle_timeout_minutes"] * 60)
    assert 60 <= timeout <= 15 * 60


def test_head_is_cpu_only_and_has_a_resource_no_worker_has(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0
    assert "guestAccelerators" not in head["node_config"]
    _, worker = _worker_type(prepared)
    own = set(head["resources"]) - set(worker["resources"]) - {"CPU", "GPU", "memory", "object_store_memory"}
    assert own, "the head should advertise a custom resource (e.g. head: 1) to pin trial drivers"
    assert head.get("max_workers", 0) == 0


def test_dashboard_is_bound_to_localhost_only(raw, prepared):
    start = _head_start(prepared)
    assert "--dashboard-host=127.0.0.1" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_image_is_a_current_ray_gpu_image(prepared):
    docker = prepared["docker"]
    images = {docker["image"], docker.get("head_image", docker["image"]), docker.get("worker_image", docker["image"])}
    for image in images:
        repo, _, tag = image.partition(":")
        assert repo == "rayproject/ray", "ray-ml images are not published after 2.49"
        assert tag.startswith(f"{ray.__version__}-py3"), f"{image}: the cluster must run the Ray raysim pins"
    worker_image = docker.get("worker_image", docker["image"])
    assert worker_image.endswith("-gpu")


def test_setup_installs_torch_and_the_synced_project(prepared):
    assert prepared["file_mounts"].get("~/raysim") == "."
    for commands in (prepared["head_setup_commands"], prepared["worker_setup_commands"]):
        text = "\n".join(commands)
        assert re.search(r"pip install[^\n]* torch\b", text)
        assert re.search(r"pip install[^\n]* -e ~/raysim\b", text)
    assert any("google-api-python-client" in c for c in prepared["head_setup_commands"])


def test_no_secrets_in_the_file():
    assert secrets_in(CLUSTER_YAML.read_text()) == []


def test_secret_scan_catches_secrets():
    assert secrets_in("wandb_api_key: 0123456789abcdef0123456789abcdef01234567")
    assert secrets_in("env: {AWS_SECRET_ACCESS_KEY: abcdEFGH1234}")
    assert secrets_in("password = hunter2")
    assert secrets_in("-----BEGIN RSA PRIVATE KEY-----")
    assert not secrets_in("project_id: YOUR_GCP_PROJECT\n# ssh_private_key: ~/.ssh/key.pem\n"
                          "- key: install-nvidia-driver\n")


def _wrapper(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run the wrapper the way `ray submit` does: a lone copy in another directory, `python <copy> ARGS`."""
    copy_ = tmp_path / WRAPPER.name
    shutil.copy(WRAPPER, copy_)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([sys.executable, str(copy_), *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)


def test_run_ablation_wrapper_runs_raysim_run_from_the_project_root(tmp_path):
    proc = _wrapper(tmp_path, "ablations/phase3.yaml", "--profile", "cloud", "--dry-run")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "5 trials" in proc.stdout and "A100" in proc.stdout
    assert f"storage: {ROOT / 'results' / 'phase3-cloud'}" in proc.stdout


def test_run_ablation_wrapper_passes_the_exit_status(tmp_path):
    proc = _wrapper(tmp_path, "ablations/does-not-exist.yaml", "--dry-run")
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip()
