"""Malformed input, class by class: every case exits 2, prints no traceback, names the file and the
field (or the problem) on stderr's first line, and writes nothing (INTERFACE.md's contract).

Each case is a function that writes its bad input into a fresh working folder and returns the
command line and the words stderr's first line must hold. The CLI runs in-process
(`raysim.cli.main`); two cases go through the installed `raysim` script to prove the real exit
status. `ray.init` is replaced by a function that fails the test, so no case can start Ray.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

from raysim.cli import main

RAYSIM = Path(sys.executable).with_name("raysim")

# A small valid run config and a matrix over it; each case breaks one thing.
RUN: dict[str, Any] = {
    "name": "tiny",
    "data": {"generate": {"samples": 8, "nx": 64, "nt": 21}, "x_stride": 1, "t_stride": 2},
    "model": {"tokens": 8, "latent_dim": 16, "heads": 2, "group_size": 4, "depth": 1, "stage_depths": [1, 1],
              "fourier_features": 4},
    "operator": {"epochs": 1, "batch_size": 4},
    "diffusion": {"epochs": 1, "batch_size": 4, "hidden": 8, "layers": 1},
    "logging": {"wandb": False},
}
MATRIX: dict[str, Any] = {
    "name": "m",
    "base": "base.yaml",
    "arms": {
        "a": {"overrides": {"model": {"processor": "pdet_stack"}}},
        "b": {"overrides": {"model": {"processor": "u_shaped"}}},
    },
    "profiles": {"smoke": {}, "local": {}, "cloud": {}},
    "hypotheses": [{"id": "H1", "test": "within", "candidate": "a", "reference": "b"}],
}


# --------------------------------------------------------------------------- helpers


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cfg(w: Path, name: str = "run.yaml", **over: Any) -> str:
    """A run config: RUN with `over` merged in (sections as dicts)."""
    write_yaml(w / name, merged(RUN, over))
    return name


def matrix(w: Path, name: str = "m.yaml", run: dict[str, Any] | None = None, **over: Any) -> str:
    """A matrix over base.yaml (RUN, or RUN merged with `run`); `over` replaces top-level keys."""
    write_yaml(w / "base.yaml", merged(RUN, run or {}))
    data = copy.deepcopy(MATRIX)
    data.update(over)
    write_yaml(w / name, data)
    return name


def h5(path: Path, tensor: Any = None, *, attrs: dict[str, Any] | None = None, **datasets: Any) -> str:
    """An HDF5 file holding `tensor` (if given) and other datasets (names with '_' for '-')."""
    with h5py.File(path, "w") as f:
        if tensor is not None:
            f["tensor"] = tensor
        for name, value in datasets.items():
            f[name.replace("_", "-")] = value
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path.name


def good_h5(path: Path, n: int = 4, nt: int = 11, nx: int = 16, nan: bool = False, inf: bool = False) -> str:
    """A PDEBench-layout file (`tensor`, `x-coordinate`, `t-coordinate` with nt + 1 entries, nu)."""
    u = np.random.default_rng(0).standard_normal((n, nt, nx)).astype(np.float32)
    if nan:
        u[n - 1, 3, 5] = np.nan
    if inf:
        u[0, nt - 1, 0] = np.inf
    x = ((np.arange(nx) + 0.5) / nx).astype(np.float32)
    t = (np.arange(nt + 1) * 0.01).astype(np.float32)
    return h5(path, u, x_coordinate=x, t_coordinate=t, attrs={"nu": 0.01})


def tree(root: Path) -> set[str]:
    """Every file and folder under root, relative."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def call(argv: list[str]) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # argparse should never exit on its own; record it if it does
        return int(exc.code or 0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder as cwd (default outputs such as results/ would land here), HOME beside it."""
    w = tmp_path / "work"
    w.mkdir()
    monkeypatch.chdir(w)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the data cache (~/.cache/raysim) stays out of ~
    return w


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad input must fail before Ray starts: starting it fails the test."""
    import ray

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("ray.init called: bad input must be rejected before Ray starts")

    monkeypatch.setattr(ray, "init", refuse)


# --------------------------------------------------------------------------- the corpus

Case = Callable[[Path], tuple[list[str], list[str]]]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        assert name not in CASES, name
        CASES[name] = fn
        return fn

    return register


def text_case(name: str, content: str | bytes, *words: str) -> None:
    """`raysim validate c.yaml` on a file with this raw content."""

    def fn(w: Path) -> tuple[list[str], list[str]]:
        p = w / "c.yaml"
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["validate", "c.yaml"], ["c.yaml", *words]

    case(name)(fn)


def run_case(name: str, over: dict[str, Any], *words: str) -> None:
    """`raysim validate run.yaml` on RUN with `over` merged in."""

    def fn(w: Path) -> tuple[list[str], list[str]]:
        return ["validate", run_cfg(w, **over)], ["run.yaml", *words]

    case(name)(fn)


# YAML itself
text_case("yaml-syntax-error", "model: {tokens: 3\nname: x\n", "invalid YAML")
text_case("yaml-bad-indentation", "model:\n  tokens: 3\n latent_dim: 4\n", "invalid YAML")
text_case("yaml-python-tag", "name: !!python/object/apply:os.system [echo hi]\n", "invalid YAML")
text_case("empty-file", "", "empty file")
text_case("comments-only-file", "# nothing here\n", "empty file")
text_case("top-level-list", "- name: x\n- seed: 1\n", "top level must be a mapping", "list")
text_case("top-level-scalar", "42\n", "top level must be a mapping", "int")
text_case("binary-file", b"\xff\xfe\x00\x81garbage", "not a text file")

# Schema: unknown keys, wrong types
run_case("unknown-top-level-key", {"modle": {"tokens": 8}}, "modle", "unknown key")
run_case("unknown-nested-key", {"model": {"tokenz": 8}}, "model.tokenz", "unknown key")
run_case("wrong-type-int", {"model": {"tokens": "many"}}, "model.tokens", "must be an integer")
run_case("wrong-type-float-for-int", {"model": {"heads": 2.5}}, "model.heads", "must be an integer")
run_case("wrong-type-section", {"model": 3}, "model", "must be a mapping")
run_case("wrong-type-bool", {"logging": {"wandb": "yes please"}}, "logging.wandb", "true or false")
run_case("wrong-type-list", {"data": {"splits": 0.8}}, "data.splits", "must be a list")

# Typos in enumerated values
run_case("typo-processor", {"model": {"processor": "u-shaped"}}, "model.processor", "must be one of", "u-shaped")
run_case("typo-attention", {"model": {"attention": "channel_seperated"}}, "model.attention", "must be one of")
run_case("typo-encoder", {"model": {"encoder": "perciever"}}, "model.encoder", "must be one of")
run_case("typo-logging-mode", {"logging": {"mode": "offine"}}, "logging.mode", "must be one of")

# Sizes and cross-field rules
run_case("negative-tokens", {"model": {"tokens": -3}}, "model.tokens", "positive", "-3")
run_case("zero-latent-dim", {"model": {"latent_dim": 0}}, "model.latent_dim", "positive")
run_case("zero-batch-size", {"operator": {"batch_size": 0}}, "operator.batch_size", "positive")
run_case("zero-samples", {"data": {"generate": {"samples": 0}}}, "data.generate.samples", "positive")
run_case("zero-oom-floor", {"resources": {"min_micro_batch": 0}}, "resources.min_micro_batch", "positive")
run_case("heads-do-not-divide", {"model": {"heads": 3}}, "model.heads", "not divisible")
run_case("channel-groups-do-not-divide", {"model": {"attention": "channel_separated", "group_size": 6}},
         "model.group_size", "do not divide")
run_case("u-shaped-token-halving", {"model": {"processor": "u_shaped", "tokens": 6, "stage_depths": [1, 1, 1]}},
         "model.tokens", "cannot halve")
run_case("negative-learning-rate", {"operator": {"lr": -1e-3}}, "operator.lr", "learning rate")
run_case("absurd-learning-rate", {"diffusion": {"lr": 10.0}}, "diffusion.lr", "learning rate")
run_case("nan-learning-rate", {"operator": {"lr": float("nan")}}, "operator.lr", "finite")
run_case("splits-not-summing-to-1", {"data": {"splits": [0.5, 0.1, 0.1]}}, "data.splits", "summing to 1")


@case("config-file-missing")
def _(w: Path):
    return ["validate", "nope.yaml"], ["nope.yaml", "no such file"]


# Matrices: hypotheses, base, includes, arms, profiles


@case("hypothesis-unknown-candidate")
def _(w: Path):
    hyp = [{"id": "H1", "test": "within", "candidate": "zz", "reference": "b"}]
    return ["validate", matrix(w, hypotheses=hyp)], ["m.yaml", "hypotheses[0].candidate", "'zz'", "does not exist"]


@case("hypothesis-unknown-reference")
def _(w: Path):
    hyp = [{"id": "H1", "test": "within", "candidate": "a", "reference": "ushaped"}]
    return ["validate", matrix(w, hypotheses=hyp)], ["m.yaml", "hypotheses[0].reference", "'ushaped'"]


@case("hypothesis-reference-is-candidate")
def _(w: Path):
    hyp = [{"id": "H1", "test": "within", "candidate": "a", "reference": "a"}]
    return ["validate", matrix(w, hypotheses=hyp)], ["m.yaml", "hypotheses[0].reference", "'a'", "two different"]


@case("hypothesis-both-references")
def _(w: Path):
    hyp = [{"id": "H1", "test": "within", "candidate": "a", "reference": "b", "reference_value": 0.05}]
    return ["validate", matrix(w, hypotheses=hyp)], ["m.yaml", "hypotheses[0].reference", "exactly one"]


@case("hypothesis-no-reference")
def _(w: Path):
    hyp = [{"id": "H1", "test": "within", "candidate": "a"}]
    return ["validate", matrix(w, hypotheses=hyp)], ["m.yaml", "hypotheses[0].reference", "exactly one"]


@case("hypothesis-duplicate-id")
def _(w: Path):
    hyp = [{"id": "H1", "test": "within", "candidate": "a", "reference": "b"},
           {"id": "H1", "test": "better_by", "candidate": "b", "reference": "a"}]
    return ["validate", matrix(w, hypotheses=hyp)], ["m.yaml", ".id", "duplicate hypothesis id H1"]


@case("hypothesis-typo-test")
def _(w: Path):
    hyp = [{"id": "H1", "test": "better-by", "candidate": "a", "reference": "b"}]
    return ["validate", matrix(w, hypotheses=hyp)], ["m.yaml", "hypotheses[0].test", "must be one of"]


@case("matrix-base-missing")
def _(w: Path):
    name = matrix(w, base="nowhere.yaml")
    return ["validate", name], ["m.yaml", "base", "nowhere.yaml", "does not exist"]


@case("matrix-profile-missing")
def _(w: Path):
    return ["validate", matrix(w, profiles={"smoke": {}, "local": {}})], ["m.yaml", "profiles.cloud", "missing"]


@case("matrix-arm-override-invalid")
def _(w: Path):
    arms = copy.deepcopy(MATRIX["arms"])
    arms["a"]["overrides"]["model"]["tokens"] = -3
    return ["validate", matrix(w, arms=arms)], ["m.yaml", "arms.a[", "model.tokens", "positive"]


@case("matrix-arm-unknown-key")
def _(w: Path):
    arms = {"a": {"overides": {"model": {"tokens": 8}}}, "b": MATRIX["arms"]["b"]}
    return ["validate", matrix(w, arms=arms)], ["m.yaml", "arms.a.overides", "unknown key"]


@case("include-cycle")
def _(w: Path):
    write_yaml(w / "a.yaml", {"include": "b.yaml", "name": "a"})
    write_yaml(w / "b.yaml", {"include": "a.yaml", "seed": 1})
    return ["validate", "a.yaml"], ["yaml", "include", "include cycle"]


@case("include-self")
def _(w: Path):
    write_yaml(w / "a.yaml", {"include": "a.yaml", "name": "a"})
    return ["validate", "a.yaml"], ["a.yaml", "include", "include cycle"]


@case("include-missing-file")
def _(w: Path):
    write_yaml(w / "a.yaml", {"include": "gone.yaml", "name": "a"})
    return ["validate", "a.yaml"], ["a.yaml", "include", "gone.yaml", "does not exist"]


# A config's data.path


@case("data-path-missing-file")
def _(w: Path):
    return ["validate", run_cfg(w, data={"path": "gone.h5"})], ["run.yaml", "data.path", "gone.h5", "does not exist"]


@case("data-path-is-a-directory")
def _(w: Path):
    (w / "d.h5").mkdir()
    return ["validate", run_cfg(w, data={"path": "d.h5"})], ["run.yaml", "data.path", "d.h5"]


@case("data-path-not-hdf5")
def _(w: Path):
    (w / "text.h5").write_text("just text\n")
    return ["validate", run_cfg(w, data={"path": "text.h5"})], ["run.yaml", "data.path", "not an HDF5 file"]


@case("data-path-missing-tensor")
def _(w: Path):
    h5(w / "nt.h5", u=np.zeros((2, 3, 4), np.float32))
    return ["validate", run_cfg(w, data={"path": "nt.h5"})], ["run.yaml", "data.path", "tensor", "missing dataset"]


@case("data-path-wrong-rank-train")
def _(w: Path):
    h5(w / "r2.h5", np.zeros((11, 16), np.float32))
    return ["train", run_cfg(w, data={"path": "r2.h5"})], ["run.yaml", "data.path", "tensor", "rank 3"]


@case("data-path-nan-run-dry-run")
def _(w: Path):
    good_h5(w / "nan.h5", nan=True)
    return ["run", matrix(w, run={"data": {"path": "nan.h5"}}), "--dry-run", "--profile", "smoke"], [
        "m.yaml", "data.path", "nan.h5", "NaN"]


@case("data-path-inf-matrix-validate")
def _(w: Path):
    good_h5(w / "inf.h5", inf=True)
    return ["validate", matrix(w, run={"data": {"path": "inf.h5"}})], ["m.yaml", "data.path", "inf.h5", "Inf"]


@case("data-path-stride-does-not-divide")
def _(w: Path):
    good_h5(w / "g.h5", nx=16)
    return ["validate", run_cfg(w, data={"path": "g.h5", "x_stride": 3})], ["run.yaml", "data.x_stride", "16"]


# `raysim data inspect`


@case("inspect-missing-file")
def _(w: Path):
    return ["data", "inspect", "nope.h5"], ["nope.h5", "file not found"]


@case("inspect-directory")
def _(w: Path):
    (w / "folder.h5").mkdir()
    return ["data", "inspect", "folder.h5"], ["folder.h5", "not a file"]


@case("inspect-text-file")
def _(w: Path):
    (w / "text.h5").write_text("tensor = 1\n")
    return ["data", "inspect", "text.h5"], ["text.h5", "not an HDF5 file"]


@case("inspect-empty-file")
def _(w: Path):
    (w / "empty.h5").write_bytes(b"")
    return ["data", "inspect", "empty.h5"], ["empty.h5", "not an HDF5 file"]


@case("inspect-truncated-file")
def _(w: Path):
    good_h5(w / "full.h5", n=8, nt=40, nx=64)
    data = (w / "full.h5").read_bytes()
    (w / "cut.h5").write_bytes(data[: len(data) // 2])
    (w / "full.h5").unlink()
    return ["data", "inspect", "cut.h5"], ["cut.h5", "cannot be read as HDF5"]


@case("inspect-missing-tensor")
def _(w: Path):
    h5(w / "u.h5", u=np.zeros((2, 3, 4), np.float32))
    return ["data", "inspect", "u.h5"], ["u.h5", "tensor", "missing dataset", "u"]


@case("inspect-wrong-rank")
def _(w: Path):
    h5(w / "r2.h5", np.zeros((3, 4), np.float32))
    return ["data", "inspect", "r2.h5"], ["r2.h5", "tensor", "rank 3"]


@case("inspect-nan")
def _(w: Path):
    good_h5(w / "nan.h5", nan=True)
    return ["data", "inspect", "nan.h5"], ["nan.h5", "tensor", "NaN", "trajectory 3"]


@case("inspect-inf")
def _(w: Path):
    good_h5(w / "inf.h5", inf=True)
    return ["data", "inspect", "inf.h5"], ["inf.h5", "tensor", "Inf", "trajectory 0"]


@case("inspect-integer-tensor")
def _(w: Path):
    h5(w / "int.h5", np.zeros((2, 3, 4), np.int32))
    return ["data", "inspect", "int.h5"], ["int.h5", "tensor", "floating point"]


@case("inspect-tensor-is-a-group")
def _(w: Path):
    with h5py.File(w / "grp.h5", "w") as f:
        f.create_group("tensor")
    return ["data", "inspect", "grp.h5"], ["grp.h5", "tensor", "group"]


@case("inspect-dangling-link")
def _(w: Path):
    with h5py.File(w / "link.h5", "w") as f:
        f["tensor"] = h5py.SoftLink("/nowhere")
    return ["data", "inspect", "link.h5"], ["link.h5", "tensor", "cannot be opened"]


@case("inspect-external-data-missing")
def _(w: Path):
    with h5py.File(w / "ext.h5", "w") as f:
        f.create_dataset("tensor", shape=(2, 3, 4), dtype="f4", external=[("raw.bin", 0, h5py.h5f.UNLIMITED)])
    return ["data", "inspect", "ext.h5"], ["ext.h5", "tensor", "cannot be read"]


@case("inspect-x-coordinate-text")
def _(w: Path):
    h5(w / "xs.h5", np.zeros((2, 3, 4), np.float32), x_coordinate=np.array([b"a", b"b", b"c", b"d"]))
    return ["data", "inspect", "xs.h5"], ["xs.h5", "x-coordinate", "numbers"]


@case("inspect-x-coordinate-wrong-length")
def _(w: Path):
    h5(w / "xl.h5", np.zeros((2, 3, 4), np.float32), x_coordinate=np.arange(5.0))
    return ["data", "inspect", "xl.h5"], ["xl.h5", "x-coordinate", "4 entries"]


@case("inspect-t-coordinate-decreasing")
def _(w: Path):
    h5(w / "td.h5", np.zeros((2, 3, 4), np.float32), t_coordinate=np.array([1.0, 0.5, 0.0]))
    return ["data", "inspect", "td.h5"], ["td.h5", "t-coordinate", "increasing"]


@case("inspect-nu-not-a-number")
def _(w: Path):
    h5(w / "nu.h5", np.zeros((2, 3, 4), np.float32), attrs={"nu": "viscous"})
    return ["data", "inspect", "nu.h5"], ["nu.h5", "nu", "not a number"]


@case("inspect-nu-negative")
def _(w: Path):
    h5(w / "nn.h5", np.zeros((2, 3, 4), np.float32), attrs={"nu": -0.01})
    return ["data", "inspect", "nn.h5"], ["nn.h5", "nu", "positive"]


# Command line: subcommands, required arguments, argparse types
for _name, _argv, _words in [
    ("unknown-subcommand", ["frobnicate"], ["raysim", "invalid choice", "frobnicate"]),
    ("no-arguments", [], ["raysim", "required", "command", "validate"]),
    ("data-without-subcommand", ["data"], ["raysim data", "required", "command", "inspect"]),
    ("unknown-data-subcommand", ["data", "plot", "x.h5"], ["raysim data", "invalid choice", "plot"]),
    ("generate-without-out", ["data", "generate"], ["raysim data generate", "required", "--out"]),
    ("inspect-without-file", ["data", "inspect"], ["raysim data inspect", "required", "file"]),
    ("validate-without-files", ["validate"], ["raysim validate", "required", "files"]),
    ("promote-without-arm", ["promote", "somewhere"], ["raysim promote", "required", "--arm"]),
    ("generate-samples-not-int", ["data", "generate", "--out", "x.h5", "--samples", "abc"],
     ["raysim data generate", "--samples", "invalid int", "abc"]),
    ("generate-workers-not-int", ["data", "generate", "--out", "x.h5", "--workers", "abc"],
     ["raysim data generate", "--workers", "invalid int", "abc"]),
    ("bench-unknown-kind", ["bench", "gpu"], ["raysim bench", "invalid choice", "gpu"]),
    ("unknown-option", ["validate", "x.yaml", "--strict"], ["raysim", "unrecognized", "--strict"]),
]:
    case(_name)(lambda w, argv=_argv, words=_words: (argv, words))

# `raysim data generate`: bad values, bad --out; neither the file nor a temporary file may appear
for _name, _extra, _words in [
    ("generate-nu-zero", ["--nu", "0"], ["--nu", "positive"]),
    ("generate-nu-negative", ["--nu", "-0.01"], ["--nu", "positive"]),
    ("generate-nu-nan", ["--nu", "nan"], ["--nu", "positive"]),
    ("generate-samples-zero", ["--samples", "0"], ["--samples", ">= 1"]),
    ("generate-nx-odd", ["--nx", "33"], ["--nx", "even"]),
    ("generate-nt-one", ["--nt", "1"], ["--nt", ">= 2"]),
    ("generate-t-end-zero", ["--t-end", "0"], ["--t-end", "positive"]),
    ("generate-seed-negative", ["--seed", "-1"], ["--seed", ">= 0"]),
    ("generate-workers-zero", ["--workers", "0"], ["--workers", ">= 1"]),
    ("generate-workers-negative", ["--workers", "-1"], ["--workers", ">= 1"]),
]:
    case(_name)(lambda w, extra=_extra, words=_words: (
        ["data", "generate", "--out", "x.h5", "--samples", "2", "--nx", "16", "--nt", "5", *extra], ["x.h5", *words]))


@case("generate-out-folder-missing")
def _(w: Path):
    return ["data", "generate", "--out", "no/such/x.h5", "--samples", "1"], ["no/such", "--out", "does not exist"]


@case("generate-out-is-a-folder")
def _(w: Path):
    (w / "out.h5").mkdir()
    return ["data", "generate", "--out", "out.h5", "--samples", "1"], ["out.h5", "--out", "folder"]


# `raysim train` (all rejected before Ray starts)


@case("train-unknown-arm")
def _(w: Path):
    return ["train", matrix(w), "--arm", "pure-512"], ["m.yaml", "--arm", "unknown arm 'pure-512'", "a, b"]


@case("train-unknown-profile")
def _(w: Path):
    return ["train", matrix(w), "--arm", "a", "--profile", "huge"], ["m.yaml", "--profile", "'huge'"]


@case("train-set-unknown-key")
def _(w: Path):
    return ["train", matrix(w), "--arm", "a", "--set", "model.tokenz=8"], ["m.yaml", "model.tokenz", "unknown key"]


@case("train-set-without-equals")
def _(w: Path):
    return ["train", matrix(w), "--arm", "a", "--set", "model.tokens"], ["m.yaml", "--set", "key=value",
                                                                         "model.tokens"]


@case("train-set-wrong-type")
def _(w: Path):
    return ["train", run_cfg(w), "--set", "operator.lr=fast"], ["run.yaml", "operator.lr", "must be a number"]


@case("train-matrix-without-arm")
def _(w: Path):
    return ["train", matrix(w)], ["m.yaml", "--arm", "needs --arm"]


@case("train-run-config-with-arm")
def _(w: Path):
    return ["train", run_cfg(w), "--arm", "a"], ["run.yaml", "--arm", "matrices only"]


@case("train-out-is-a-file")
def _(w: Path):
    (w / "out").write_text("not a folder\n")
    return ["train", run_cfg(w), "--out", "out"], ["out", "--out", "not a folder"]


@case("train-config-missing")
def _(w: Path):
    return ["train", "gone.yaml"], ["gone.yaml", "no such file"]


# `raysim run --dry-run` (no storage folder may appear)


@case("run-unknown-profile")
def _(w: Path):
    return ["run", matrix(w), "--dry-run", "--profile", "huge"], ["m.yaml", "--profile", "'huge'"]


@case("run-set-unknown-key")
def _(w: Path):
    return ["run", matrix(w), "--dry-run", "--set", "operator.epoch=2"], ["m.yaml", "operator.epoch", "unknown key"]


@case("run-set-without-equals")
def _(w: Path):
    return ["run", matrix(w), "--dry-run", "--set", "operator.epochs:2"], ["m.yaml", "--set", "key=value"]


@case("run-set-empty-key")
def _(w: Path):
    return ["run", matrix(w), "--dry-run", "--set", "=2"], ["m.yaml", "--set", "key=value"]


@case("run-on-a-run-config")
def _(w: Path):
    return ["run", run_cfg(w), "--dry-run"], ["run.yaml", "not an ablation matrix"]


@case("run-storage-is-a-file")
def _(w: Path):
    (w / "store").write_text("x\n")
    return ["run", matrix(w), "--dry-run", "--storage", "store"], ["store", "--storage", "not a folder"]


@case("run-matrix-missing")
def _(w: Path):
    return ["run", "gone.yaml", "--dry-run"], ["gone.yaml", "no such file"]


# `raysim analyze`, `raysim promote` on folders that are not studies


@case("analyze-not-a-study")
def _(w: Path):
    (w / "plain").mkdir()
    (w / "plain" / "notes.txt").write_text("hello\n")
    return ["analyze", "plain"], ["plain", "not a study folder"]


@case("analyze-missing-folder")
def _(w: Path):
    return ["analyze", "gone"], ["gone", "not a study folder"]


@case("analyze-study-json-broken")
def _(w: Path):
    (w / "s").mkdir()
    (w / "s" / "study.json").write_text("{not json")
    return ["analyze", "s"], ["study.json", "unreadable JSON"]


@case("promote-unknown-arm-not-a-study")
def _(w: Path):
    (w / "plain").mkdir()
    return ["promote", "plain", "--arm", "pure-512"], ["plain", "not a study folder"]


@case("promote-missing-folder")
def _(w: Path):
    return ["promote", "gone", "--arm", "a"], ["gone", "no such study folder"]


@case("promote-unknown-arm")
def _(w: Path):
    (w / "s").mkdir()
    (w / "s" / "study.json").write_text('{"name": "s", "arms": ["a", "b"]}')
    return ["promote", "s", "--arm", "pure-512", "--leaderboard", "lb.csv", "--promoted-dir", "promoted"], [
        "s", "--arm", "unknown arm 'pure-512'", "a, b"]


@case("promote-leaderboard-is-a-folder")
def _(w: Path):
    (w / "s").mkdir()
    (w / "s" / "study.json").write_text('{"name": "s", "arms": ["a"]}')
    (w / "lb").mkdir()
    return ["promote", "s", "--arm", "a", "--leaderboard", "lb"], ["lb", "--leaderboard", "folder"]


# --------------------------------------------------------------------------- the tests


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, words = CASES[name](work)
    capsys.readouterr()
    before = tree(work)
    code = call(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert err.strip(), "nothing on stderr"
    assert "Traceback" not in err and "Traceback" not in out
    first = err.strip().splitlines()[0]
    missing = [word for word in words if word not in first]
    assert not missing, f"{missing} not in stderr's first line: {first!r}"
    assert tree(work) == before, f"wrote {sorted(tree(work) - before)}"
    assert not (work.parent / "home").exists(), "wrote under HOME"


def test_generate_leaves_no_file_and_no_temporary(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(["data", "generate", "--out", "x.h5", "--nu", "-1", "--samples", "2", "--nx", "16"]) == 2
    assert not (work / "x.h5").exists()
    assert not [p for p in work.iterdir() if p.name.endswith(".tmp")]


def test_dry_run_creates_no_storage(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = matrix(work)
    assert call(["run", name, "--dry-run", "--set", "model.tokens=-1", "--storage", "study"]) == 2
    assert "model.tokens" in capsys.readouterr().err
    assert not (work / "study").exists() and not (work / "results").exists()


def test_validate_reports_one_line_per_problem(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = run_cfg(work, "bad.yaml", model={"tokens": -3, "processor": "unet"}, logging={"mode": "loud"})
    good = run_cfg(work, "good.yaml")
    assert call(["validate", good, bad]) == 2
    out, err = capsys.readouterr()
    assert "good.yaml: valid" in out
    lines = err.strip().splitlines()
    assert len(lines) == 2, lines  # processor and mode; the size rules wait for a well-typed config
    assert all(line.startswith("bad.yaml: ") for line in lines)
    assert {line.split(": ")[1] for line in lines} == {"model.processor", "logging.mode"}


def test_inspect_problem_report_and_exit(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file with problems prints the whole report and exits 2; a clean file exits 0."""
    good_h5(work / "nan.h5", nan=True)
    assert call(["data", "inspect", "nan.h5"]) == 2
    out, err = capsys.readouterr()
    assert "shape (N, T, X): (4, 11, 16)" in out and "problem: nan.h5: tensor: contains NaN" in out
    assert err.strip() == "nan.h5: tensor: contains NaN (trajectory 3, frame 3)"
    good_h5(work / "ok_Nu0.01.h5")
    assert call(["data", "inspect", "ok_Nu0.01.h5"]) == 0
    out, err = capsys.readouterr()
    assert "problems: none" in out and not err


def test_valid_inputs_pass(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The fixtures the corpus breaks are valid, so each failure above comes from its one change."""
    good_h5(work / "g.h5")
    assert call(["validate", run_cfg(work), matrix(work), run_cfg(work, "data.yaml", data={"path": "g.h5"})]) == 0
    out, err = capsys.readouterr()
    assert out.count(": valid") == 3 and not err


def test_dry_run_with_a_good_data_file(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_h5(work / "g.h5")
    name = matrix(work, run={"data": {"path": "g.h5"}})
    before = tree(work)
    assert call(["run", name, "--dry-run", "--profile", "smoke", "--storage", "study"]) == 0
    assert "dry run: nothing was trained" in capsys.readouterr().out
    assert tree(work) == before


@pytest.mark.parametrize("argv,words", [
    (["frobnicate"], ["raysim", "invalid choice"]),
    (["data", "inspect", "BAD"], ["bad.h5", "tensor", "rank 3"]),
])
def test_installed_entry_point(work: Path, argv: list[str], words: list[str]) -> None:
    """The real `raysim` script: exit status 2, one line, no traceback."""
    h5(work / "bad.h5", np.zeros((3, 4), np.float32))
    argv = ["bad.h5" if a == "BAD" else a for a in argv]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(RAYSIM), *argv], cwd=work, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and all(word in lines[0] for word in words), proc.stderr
