"""Secrets: `raysim.redact` masks credentials and nothing else; a real `raysim train` with W&B (offline)
and fake credentials in its environment writes them nowhere; the local Ray dashboard listens on
127.0.0.1 only. (cluster.yaml's own secret scan and dashboard flag are tests/test_cluster.py's.)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from raysim.analysis import write_report
from raysim.analysis.load import write_result, write_study
from raysim.config import RunConfig, load_matrix, to_dict
from raysim.redact import MASK, is_secret_key, redact, redact_text

ROOT = Path(__file__).resolve().parents[2]
PHASE3 = ROOT / "ablations" / "phase3.yaml"
FAKE_WANDB_KEY = "0123456789abcdef0123456789abcdef0badc0de"  # the shape of a W&B API key: 40 hex characters
FAKE_AWS_SECRET = "FAKEawsSECRETkey/0123456789+abcdefghijXYZ"  # the shape of an AWS secret access key
FAKE_AWS_KEY_ID = "AKIAFAKEFAKEFAKE1234"
SHA = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # a git commit: 40 hex characters too


# --------------------------------------------------------------------------- redact: by key


@pytest.mark.parametrize("key", [
    "api_key", "API_KEY", "apikey", "apiKey", "WANDB_API_KEY", "wandb.api_key", "wandb.apiKey", "token",
    "auth_token", "GITHUB_TOKEN", "sessionToken", "secret", "client_secret", "AWS_SECRET_ACCESS_KEY",
    "aws_access_key_id", "password", "db.password", "passwd", "credential", "credentials", "gcp-credentials",
    "private_key", "ssh_private_key", "privateKey", "access_key", "auth", "Authorization", "x-auth-token",
])
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)
    assert redact({key: "hunter2"}) == {key: MASK}


@pytest.mark.parametrize("key", [
    "tokens", "model.tokens", "max_tokens", "key", "keys", "monkey", "author", "authors", "passage", "secretary",
    "tokenizer", "access", "private", "api", "key_frames", "primary_key_column", "cache_dir", "project",
])
def test_ordinary_keys(key: str) -> None:
    assert not is_secret_key(key)
    assert redact({key: "hunter2"}) == {key: "hunter2"}


def test_secret_keys_nested_and_in_lists() -> None:
    data = {"wandb": {"api_key": "k", "project": "p"}, "runs": [{"token": "t", "id": 3}], "aws": ({"secret": 1},)}
    assert redact(data) == {"wandb": {"api_key": MASK, "project": "p"}, "runs": [{"token": MASK, "id": 3}],
                            "aws": ({"secret": MASK},)}


def test_a_section_under_a_secret_key_is_judged_entry_by_entry() -> None:
    """Ray's `auth: {ssh_user: ubuntu}` stays readable; what is secret inside a section is still masked."""
    assert redact({"auth": {"ssh_user": "ubuntu"}}) == {"auth": {"ssh_user": "ubuntu"}}
    data = {"credentials": {"user": "u", "password": "p", "private_key": "k", "note": FAKE_WANDB_KEY}}
    assert redact(data) == {"credentials": {"user": "u", "password": MASK, "private_key": MASK, "note": MASK}}
    assert redact({"tokens": [1, 2], "api_keys": ["a", "", None, {"id": 1}]}) == {
        "tokens": [1, 2], "api_keys": [MASK, "", None, {"id": 1}]}


def test_unset_secrets_stay_visible() -> None:
    """None, a flag or an empty string holds no secret, and says that none was set."""
    data = {"api_key": None, "auth": True, "token": "", "password": False}
    assert redact(data) == data


# --------------------------------------------------------------------------- redact: by value


@pytest.mark.parametrize("text,secret", [
    (f"key {FAKE_WANDB_KEY} in a sentence", FAKE_WANDB_KEY),
    (f"local-{'ab12' * 10}", f"local-{'ab12' * 10}"),  # on-prem W&B keys: prefix, dash, 40+ characters
    (f"id={FAKE_AWS_KEY_ID}", FAKE_AWS_KEY_ID),
    ("ASIAABCDEFGHIJKLMNOP,next", "ASIAABCDEFGHIJKLMNOP"),
    ("Authorization: Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl"),
    ("curl -H 'authorization: bearer abcdefgh12345678'", "abcdefgh12345678"),
    ("s3://AKIDUSER:s3cr3t-p4ss@minio.local:9000/bucket", "s3cr3t-p4ss"),
    ("https://bob:hunter2@example.com/x", "hunter2"),
])
def test_credential_shaped_values_are_masked_anywhere(text: str, secret: str) -> None:
    assert secret in text
    assert secret not in redact_text(text)
    assert secret not in json.dumps(redact({"note": text, "list": [text], "nested": {"deep": (text,)}}))


def test_url_password_masked_but_user_and_host_kept() -> None:
    assert redact_text("https://bob:hunter2@example.com/x") == f"https://bob:{MASK}@example.com/x"
    assert redact_text("https://example.com/user@x") == "https://example.com/user@x"


@pytest.mark.parametrize("line,secret", [
    (f"WANDB_API_KEY={FAKE_WANDB_KEY}", FAKE_WANDB_KEY),
    (f"export AWS_SECRET_ACCESS_KEY={FAKE_AWS_SECRET}", FAKE_AWS_SECRET),
    (f"env: {{'AWS_SECRET_ACCESS_KEY': '{FAKE_AWS_SECRET}', 'HOME': '/root'}}", FAKE_AWS_SECRET),
    ('{"password": "two words", "tokens": 128}', "two words"),
    ("s3://bucket/x?region=eu&secret_key=abc123&access_key=AKID", "abc123"),
    ("connecting with token=abc.def-ghi and lr=0.001", "abc.def-ghi"),
])
def test_log_lines(line: str, secret: str) -> None:
    masked = redact_text(line)
    assert secret not in masked and MASK in masked, masked


def test_log_lines_keep_everything_else() -> None:
    line = "{'HOME': '/root', 'tokens': 128} epoch 3 lr=0.001 path=/data/burgers_nu0.01_n24_x1024.h5 at 12:30"
    assert redact_text(line) == line
    assert redact_text("AWS_SECRET_ACCESS_KEY=abc/DEF+1 HOME=/root").endswith(" HOME=/root")


def test_commit_shas_are_kept_under_commit_keys_only() -> None:
    """A commit id makes a run reproducible and is no secret; elsewhere 40 hex characters may be a W&B key."""
    data = {"commit": SHA, "git_commit": SHA, "git": {"sha": SHA}, "revision": SHA[:12], "note": SHA}
    assert redact(data) == {**data, "note": MASK}
    assert redact_text(f"commit {SHA}") == f"commit {MASK}"
    assert redact({"commit": f"{SHA} {FAKE_WANDB_KEY}"}) == {"commit": f"{MASK} {MASK}"}  # not a bare sha


def test_longer_hex_strings_are_not_keys() -> None:
    sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert redact_text(sha256) == sha256
    assert redact_text("0123456789abcdef0123456789abcdef0123456") == "0123456789abcdef0123456789abcdef0123456"


def test_configs_and_matrices_pass_unchanged() -> None:
    """Every number, path, name and id of a real run config and of phase3.yaml survives."""
    run = to_dict(RunConfig())
    run["data"]["path"] = "/data/pdebench/1D_Burgers_Sols_Nu0.01.hdf5"
    assert redact(run) == run
    matrix = to_dict(load_matrix(PHASE3))
    assert redact(matrix) == matrix
    raw = yaml.safe_load(PHASE3.read_text())
    assert redact(raw) == raw
    record = {"arm": "pure-128", "seed": 0, "wandb": {"operator": "phase3-pure-128__seed0-operator"},
              "created": "2026-11-26T01:29:21+00:00", "node": "ip-10-0-0-1", "ratio": 1.0e-3, "ci": [0.9, 1.1]}
    assert redact(record) == record


def test_cluster_yaml_has_nothing_to_mask_and_publishes_no_port() -> None:
    """raysim's own redaction agrees with tests/test_cluster.py's scan; the container publishes no port."""
    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert redact(raw) == raw
    options = " ".join(raw.get("docker", {}).get("run_options", [])).split()
    published = [o for o in options if o in ("-p", "-P", "--publish", "--publish-all") or o.startswith("--publish=")]
    assert not published, options  # the dashboard is reached over SSH (`ray dashboard cluster.yaml`), never published


def test_redact_returns_a_deep_copy() -> None:
    data = {"a": {"b": [1, {"token": "t"}]}, "c": "text"}
    before = copy.deepcopy(data)
    out = redact(data)
    out["a"]["b"][1]["x"] = 1
    out["a"]["b"].append(2)
    assert data == before and out["a"] is not data["a"] and out["a"]["b"] is not data["a"]["b"]


# --------------------------------------------------------------------------- what raysim writes


def test_report_masks_credentials_in_trial_errors(tmp_path: Path) -> None:
    """A failed trial's error message (a storage URI, an exception text) reaches the report masked."""
    study = tmp_path / "study"
    write_study(study, {"name": "s", "arms": ["a"], "seeds": [0], "matrix": {"arms": {"a": {}}}})
    error = f"OSError: cannot write s3://AKID:{FAKE_AWS_SECRET}@minio:9000/b (key {FAKE_WANDB_KEY})"
    write_result(study, {"arm": "a", "seed": 0, "status": "error", "error": error, "config": {}, "metrics": {},
                         "traceback": f"Traceback (most recent call last):\n  File x\n{error}"})
    out = write_report(study, n_boot=10)
    for path in Path(out).iterdir():
        text = path.read_bytes()
        assert FAKE_AWS_SECRET.encode() not in text and FAKE_WANDB_KEY.encode() not in text, path.name
    assert "OSError: cannot write s3://AKID:***@minio:9000/b" in (Path(out) / "ablation_report.md").read_text()


def test_local_ray_dashboard_is_bound_to_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    """init_ray's embedded Ray: the dashboard on 127.0.0.1 (ray.init's arguments, recorded; Ray not started)."""
    import ray

    from raysim.tune import study

    calls: list[dict[str, Any]] = []

    class Recorded(Exception):
        pass

    def record(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs)
        raise Recorded

    saved = dict(os.environ)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", record)
    try:
        with pytest.raises(Recorded):
            study.init_ray()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    (kwargs,) = calls
    assert kwargs.get("address") == "local"
    assert kwargs.get("dashboard_host") == "127.0.0.1"
    env_vars = kwargs.get("runtime_env", {}).get("env_vars", {})
    assert not [k for k in env_vars if is_secret_key(k)], env_vars  # no credential is shipped to every worker


# --------------------------------------------------------------------------- a real run


def _files_holding(roots: list[Path], needles: list[bytes]) -> dict[str, list[str]]:
    """Every file under `roots` (text or binary) holding one of `needles`: path -> the needles found."""
    found = {}
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                hits = [n.decode() for n in needles if n in data]
                if hits:
                    found[str(path)] = hits
    return found


@pytest.mark.slow
def test_train_with_wandb_writes_no_credential_anywhere(tmp_path: Path) -> None:
    """`raysim train` (smoke, W&B offline) with credentials in its environment: none reaches its output folder,
    the W&B offline runs, Ray's session folder (logs included) or its own output; the dashboard was on 127.0.0.1.
    """
    out = tmp_path / "out"
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(WANDB_MODE="offline", WANDB_API_KEY=FAKE_WANDB_KEY, AWS_SECRET_ACCESS_KEY=FAKE_AWS_SECRET,
               AWS_ACCESS_KEY_ID=FAKE_AWS_KEY_ID, RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1")
    sets = [f"data.cache_dir={tmp_path / 'data'}", "logging.wandb=true", "operator.epochs=1",
            "operator.max_steps_per_epoch=2", "diffusion.epochs=1", "diffusion.max_steps_per_epoch=1",
            "evaluation.max_trajectories=1"]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "raysim.cli", "train", str(PHASE3), "--arm", "pure-128", "--profile", "smoke",
             "--out", str(out), *[a for s in sets for a in ("--set", s)]],
            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        _check_train_run(proc, tmp_path, out, ray_tmp)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _check_train_run(proc: subprocess.CompletedProcess, tmp_path: Path, out: Path, ray_tmp: Path) -> None:
    (tmp_path / "stdout.txt").write_text(proc.stdout)
    (tmp_path / "stderr.txt").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sessions = [p for p in (ray_tmp / "ray").glob("session_*") if p.is_dir() and not p.is_symlink()]
    assert len(sessions) == 1, sessions

    # the search covers what it claims: the offline W&B runs (binary .wandb files), Ray's logs, the results
    runs = list((out / "wandb").rglob("offline-run-*"))
    assert len(runs) == 2, runs  # operator and diffusion
    assert list(out.rglob("*.wandb")) and (out / "metrics.json").is_file() and (sessions[0] / "logs").is_dir()
    assert _files_holding([*out.rglob("*.wandb")], [b"pure-128__seed0"]), "the scan cannot read .wandb files"

    needles = [FAKE_WANDB_KEY.encode(), FAKE_AWS_SECRET.encode(), FAKE_AWS_KEY_ID.encode()]
    leaks = _files_holding([out, sessions[0], tmp_path / "stdout.txt", tmp_path / "stderr.txt"], needles)
    assert not leaks, "credentials written to:\n" + "\n".join(f"{p}: {n}" for p, n in leaks.items())

    dashboard = (sessions[0] / "logs" / "dashboard.log").read_text()
    assert "Dashboard head http address: 127.0.0.1:" in dashboard, dashboard[-2000:]
    assert "0.0.0.0" not in dashboard
