"""Tests of raysim.data: the Burgers solver, the HDF5 layout and reader, the datasets."""

from __future__ import annotations

import filecmp
import pickle
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from raysim.data import burgers
from raysim.data.burgers import cell_centres, generate, initial_conditions, solve, solver_nx
from raysim.data.dataset import (
    Normalizer,
    PairDataset,
    RolloutDataset,
    grid,
    spacing,
    split_indices,
)
from raysim.data.pdebench import find_problems, inspect_lines, nu_from_name, open_info
from raysim.errors import DataError


def nrmse(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """PDEBench nRMSE over the last axis."""
    return np.sqrt(np.mean((p - y) ** 2, -1)) / np.sqrt(np.mean(y**2, -1))


def sines(x: np.ndarray, amp, k, phase, length: float = 2.0) -> np.ndarray:
    """sum_i amp_i sin(2 pi k_i x / L + phase_i) on x."""
    return sum(a * np.sin(2 * np.pi * kk * x / length + p) for a, kk, p in zip(amp, k, phase, strict=True))


def cole_hopf(amp, k, phase, x: np.ndarray, t: float, eps: float, length: float = 2.0):
    """Exact u(x, t) of u_t + u u_x = eps u_xx for zero-mean sine data (Cole-Hopf + quadrature).

    u = sum_y ((x - y) / t) W / sum_y W, W = exp(-(x - y)^2 / (4 eps t) - U0(y) / (2 eps)),
    U0 the antiderivative of u0; trapezoidal rule in y, stabilised with log-sum-exp.
    """
    if t == 0:
        return sines(x, amp, k, phase, length)
    w = [2 * np.pi * kk / length for kk in k]

    def antiderivative(y):
        return sum(-a / ww * np.cos(ww * y + p) for a, ww, p in zip(amp, w, phase, strict=True))

    steep = sum(a * ww for a, ww in zip(amp, w, strict=True))  # max |u0'|
    span = 2 * sum(a / ww for a, ww in zip(amp, w, strict=True))  # range of U0
    ds = np.sqrt(2 * eps * t / (1 + t * steep)) / 6  # resolves the narrowest peak
    reach = np.sqrt(2 * t * (span + 80 * eps))  # the weight is < e^-40 beyond
    s = np.arange(-reach, reach + ds, ds)  # y = x + s
    ex = -(s[None, :] ** 2) / (4 * eps * t) - antiderivative(x[:, None] + s[None, :]) / (2 * eps)
    wgt = np.exp(ex - ex.max(axis=1, keepdims=True))
    return (wgt * (-s[None, :] / t)).sum(1) / wgt.sum(1)


def random_sines(seed: int, b: int):
    """b random two-mode sine initial conditions (amp, k, phase), each (b, 2)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1, (b, 2)), rng.integers(1, 5, (b, 2)), rng.uniform(0, 2 * np.pi, (b, 2))


@pytest.mark.parametrize("nu,nx,tol", [(0.1, 256, 1e-3), (0.01, 1024, 2e-2)])
def test_solver_matches_exact_cole_hopf(nu: float, nx: int, tol: float) -> None:
    b, nt, t_end = 2, 6, 2.0
    amp, k, phase = random_sines(1, b)
    x = cell_centres(nx)
    u0 = np.stack([sines(x, amp[i], k[i], phase[i]) for i in range(b)])
    frames = solve(u0, nu, t_end, nt)  # (b, nt, nx)
    assert frames.shape == (b, nt, nx)
    ref = np.stack([[cole_hopf(amp[i], k[i], phase[i], x, t, nu / np.pi)
                     for t in np.linspace(0, t_end, nt)] for i in range(b)])
    err = nrmse(frames, ref)  # (b, nt): every stored frame
    assert err.max() <= tol, err
    assert err.max() <= 1e-4  # in fact far better than the goal


def test_solver_matches_twice_refined_solution() -> None:
    nu, nx, nt, t_end = 0.01, 1024, 51, 0.5
    assert solver_nx(nu, nx) == nx
    lo, hi = -1.0, 1.0
    idx = [0, 6]  # 6 is a windowed initial condition for seed 0
    x = cell_centres(nx)
    xf = x[0] + np.arange(2 * nx) * (hi - lo) / (2 * nx)  # contains every x
    u0 = np.concatenate([initial_conditions(np.random.default_rng([0, i]), 1, x) for i in idx])
    u0f = np.concatenate([initial_conditions(np.random.default_rng([0, i]), 1, xf, (lo, hi))
                          for i in idx])
    np.testing.assert_allclose(u0f[:, ::2], u0)
    coarse = solve(u0, nu, t_end, nt, umax=2.0)
    fine = solve(u0f, nu, t_end, nt, umax=2.0, cfl=burgers.CFL / 2)[:, :, ::2]
    err = nrmse(coarse[:, 1:], fine[:, 1:])
    assert err.mean() <= 1e-3 and err.max() <= 1e-2, err.max()


def test_solver_conserves_mass_and_decays_energy() -> None:
    x = cell_centres(128)
    u0 = np.abs(initial_conditions(np.random.default_rng(3), 4, x))  # nonzero means
    frames = solve(u0, 0.1, 1.0, 11)
    mass = frames.mean(-1)  # (4, 11)
    np.testing.assert_allclose(mass, mass[:, :1].repeat(11, 1), atol=1e-12)
    energy = (frames**2).mean(-1)
    assert (np.diff(energy, axis=1) <= 1e-12).all()
    coarse = solve(u0, 0.1, 1.0, 11, out_nx=32)  # cell averages keep the mean
    np.testing.assert_allclose(coarse.mean(-1), mass, atol=1e-12)


def test_initial_conditions_are_seeded_and_bounded() -> None:
    x = cell_centres(256)
    a = initial_conditions(np.random.default_rng(5), 200, x)
    b = initial_conditions(np.random.default_rng(5), 200, x)
    assert a.shape == (200, 256)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a).max() <= burgers.U_BOUND
    assert (a.min(1) >= 0).any() and (a.max(1) <= 0).any()  # abs() and abs() + flip occur


def test_solver_grid_follows_viscosity() -> None:
    assert solver_nx(0.01, 1024) == 1024
    assert solver_nx(0.001, 1024) == 8192
    assert solver_nx(0.1, 64) == 128


def test_generate_is_deterministic_whatever_the_batch(tmp_path) -> None:
    kw = dict(nu=0.1, samples=5, nx=64, nt=11, t_end=0.5, seed=3)  # solver grid 128 -> averaged
    a = generate(tmp_path / "a.h5", batch=2, **kw)
    b = generate(tmp_path / "b.h5", batch=5, **kw)
    assert filecmp.cmp(a, b, shallow=False)
    c = generate(tmp_path / "c.h5", **{**kw, "samples": 3, "batch": 1})
    with h5py.File(a) as fa, h5py.File(c) as fc:
        np.testing.assert_array_equal(fa["tensor"][:3], fc["tensor"][...])
    d = generate(tmp_path / "d.h5", **{**kw, "seed": 4})
    with h5py.File(a) as fa, h5py.File(d) as fd:
        assert not np.array_equal(fa["tensor"][...], fd["tensor"][...])


def test_generate_writes_pdebench_layout(tmp_path) -> None:
    out = generate(tmp_path / "burgers.h5", nu=0.1, samples=3, nx=128, nt=21, t_end=1.0, batch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["burgers.h5"]  # no temporary left
    with h5py.File(out) as f:
        t = f["tensor"]
        assert t.shape == (3, 21, 128) and t.dtype == np.float32 and t.chunks == (1, 1, 128)
        x, tc = f["x-coordinate"][...], f["t-coordinate"][...]
        assert x.shape == (128,) and tc.shape == (22,)
        np.testing.assert_allclose(x, cell_centres(128), atol=1e-6)
        np.testing.assert_allclose(tc[:21], np.linspace(0, 1, 21), atol=1e-6)
        assert f.attrs["nu"] == 0.1 and f.attrs["seed"] == 0 and f.attrs["generator"] == "raysim"
        assert np.isfinite(t[...]).all()
    info = open_info(out)
    assert (info.n, info.nt, info.nx, info.nu, info.t_has_extra) == (3, 21, 128, 0.1, True)
    assert info.x_range == pytest.approx((-1.0, 1.0))
    assert info.dt == pytest.approx(0.05)


def test_generate_is_atomic(tmp_path, monkeypatch) -> None:
    out = tmp_path / "data.h5"
    out.write_bytes(b"previous")
    calls = []

    def failing_solve(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill in the middle of the file
        return solve(*args, **kwargs)

    monkeypatch.setattr(burgers, "solve", failing_solve)
    with pytest.raises(KeyboardInterrupt):
        generate(out, nu=0.1, samples=4, nx=32, nt=5, t_end=0.1, batch=2)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["data.h5"]


@pytest.mark.parametrize("kwargs,field", [
    ({"nu": 0.0}, "nu"), ({"nu": -1.0}, "nu"), ({"samples": 0}, "samples"),
    ({"nx": 63}, "nx"), ({"nt": 1}, "nt"), ({"t_end": 0.0}, "t_end"), ({"batch": 0}, "batch"), ({"seed": -1}, "seed"),
    ({"workers": 0}, "workers"), ({"workers": 2.0}, "workers"),
])
def test_generate_rejects_bad_arguments(tmp_path, kwargs, field) -> None:
    with pytest.raises(DataError) as exc:
        generate(tmp_path / "x.h5", **{"samples": 2, "nx": 32, "nt": 5, **kwargs})
    assert exc.value.field == field and field in str(exc.value)
    assert list(tmp_path.iterdir()) == []


SMALL = dict(nu=0.1, samples=10, nx=64, nt=11, t_end=0.5, seed=3, batch=3)  # batches of 3, 3, 3 and 1


def assert_same_file(a, b) -> None:
    """The same tensor, coordinates and attributes, and in fact the same bytes."""
    with h5py.File(a) as fa, h5py.File(b) as fb:
        for name in ("tensor", "x-coordinate", "t-coordinate"):
            np.testing.assert_array_equal(fa[name][...], fb[name][...], strict=True)
        assert dict(fa.attrs) == dict(fb.attrs)
    assert filecmp.cmp(a, b, shallow=False)


def test_generate_is_identical_for_any_number_of_workers(tmp_path) -> None:
    serial = generate(tmp_path / "serial.h5", **SMALL)
    for workers in (2, 3):  # spawned processes (Ray is not initialised here)
        assert_same_file(serial, generate(tmp_path / f"w{workers}.h5", workers=workers, **SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serial.h5", "w2.h5", "w3.h5"]


@pytest.mark.slow
def test_generate_through_ray_tasks_is_identical(tmp_path, monkeypatch) -> None:
    import ray

    def no_pool(*args, **kwargs):
        raise AssertionError("a Ray driver must solve the batches as Ray tasks")

    serial = generate(tmp_path / "serial.h5", **SMALL)
    monkeypatch.setattr(burgers, "_pool_batches", no_pool)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        assert burgers.available_cpus() == 2
        assert_same_file(serial, generate(tmp_path / "ray.h5", workers=2, **SMALL))
    finally:
        ray.shutdown()


FLAKY_SOLVER = """
from raysim.data import burgers


def solve_batch(problem, start, stop):
    if start >= 3:  # the first batch succeeds and is written, the next ones fail
        raise RuntimeError(f"worker failed on trajectories {start}..{stop - 1}")
    return burgers._solve_batch(problem, start, stop)
"""


def test_generate_worker_failure_leaves_nothing(tmp_path, monkeypatch) -> None:
    """A batch failing in a spawned worker: the error reaches the caller, no file and no temporary file."""
    modules = tmp_path / "modules"  # a module the spawned workers can import
    modules.mkdir()
    (modules / "flaky_solver.py").write_text(textwrap.dedent(FLAKY_SOLVER))
    monkeypatch.syspath_prepend(str(modules))
    import flaky_solver

    monkeypatch.setattr(burgers, "_solve_batch", flaky_solver.solve_batch)
    out = tmp_path / "data" / "x.h5"
    out.parent.mkdir()
    with pytest.raises(RuntimeError, match="worker failed"):
        generate(out, workers=2, **SMALL)
    assert list(out.parent.iterdir()) == []


def test_generate_progress_lines(tmp_path, capsys) -> None:
    """Not on a terminal: a few plain lines on stderr with progress, nothing without."""
    generate(tmp_path / "quiet.h5", **SMALL)
    assert capsys.readouterr() == ("", "")
    generate(tmp_path / "shown.h5", progress=True, **SMALL)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert not out and 1 <= len(lines) <= 4 and "\r" not in err
    assert "10/10" in lines[-1] and "traj/s" in lines[-1]


def test_cli_rejects_bad_workers(tmp_path) -> None:
    cmd = [sys.executable, "-m", "raysim.cli", "data", "generate", "--out", "x.h5", "--samples", "2", "--nx", "16",
           "--nt", "5", "--workers", "0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("x.h5: --workers: ") and ">= 1" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def write_pdebench_like(path, n: int = 3, nt: int = 201, nx: int = 1024, scale=None):
    """A file shaped like PDEBench's release: x cell centres on (-1, 1), 202 times, nu in name only."""
    rng = np.random.default_rng(0)
    x = cell_centres(nx).astype(np.float32)
    data = rng.standard_normal((n, nt, nx)).astype(np.float32)
    if scale is not None:
        data *= np.asarray(scale, dtype=np.float32)[:, None, None]
    with h5py.File(path, "w") as f:
        f["tensor"] = data
        f["x-coordinate"] = x
        f["t-coordinate"] = (np.arange(nt + 1) * 0.01).astype(np.float32)
    return data


def test_reads_released_pdebench_layout(tmp_path) -> None:
    path = tmp_path / "1D_Burgers_Sols_Nu0.01.hdf5"
    data = write_pdebench_like(path, n=2)
    info = open_info(path)
    assert (info.n, info.nt, info.nx) == (2, 201, 1024)
    assert info.nu == 0.01 and info.nu_source == "file name"
    assert info.t_has_extra and info.dt == pytest.approx(0.01)
    assert info.x_range == pytest.approx((-1.0, 1.0)) and info.dx == pytest.approx(2 / 1024)
    # PDEBench protocol: x_stride 4, t_stride 5 -> 256 x 41, dt = 0.05
    ds = PairDataset(path, [0, 1], x_stride=4, t_stride=5)
    assert (ds.nt, ds.nx, len(ds)) == (41, 256, 2 * 40)
    item = ds[40 + 7]
    assert item["u"].shape == (256,) and item["target"].shape == (1, 256)
    assert item["u"].dtype == torch.float32
    assert item["dt"] == pytest.approx(0.05) and item["nu"] == 0.01
    assert (item["traj"], item["t"]) == (1, 7)
    np.testing.assert_array_equal(item["u"].numpy(), data[1, 35, ::4])
    np.testing.assert_array_equal(item["target"].numpy(), data[1, 40:41, ::4])
    roll = RolloutDataset(path, [1], x_stride=4, t_stride=5)
    assert roll[0]["u"].shape == (41, 256)
    np.testing.assert_array_equal(roll[0]["u"].numpy(), data[1, ::5, ::4])
    x = grid(path, 4)
    assert x.shape == (256,) and x[0] == pytest.approx(-1 + 1 / 1024)
    assert spacing(path, 4) == pytest.approx((2 / 256, 2.0))
    lines = "\n".join(inspect_lines(path))
    assert "(2, 201, 1024)" in lines and "nu: 0.01" in lines and "problems: none" in lines


def test_nu_from_name() -> None:
    assert nu_from_name("1D_Burgers_Sols_Nu0.001.hdf5") == 0.001
    assert nu_from_name("/a/b/Burgers_Nu1e-3.h5") == 0.001
    assert nu_from_name("Burgers_Nu1.0.hdf5") == 1.0
    assert nu_from_name("burgers.h5") is None


def test_pair_dataset_strides_unroll_and_workers(tmp_path) -> None:
    path = tmp_path / "b.h5"
    data = write_pdebench_like(path, n=4, nt=21, nx=64)
    with h5py.File(path, "a") as f:
        f.attrs["nu"] = 0.1
    ds = PairDataset(path, [0, 2, 3], x_stride=2, t_stride=3, unroll=2)
    assert (ds.nt, ds.nx) == (7, 32)  # frames 0, 3, ..., 18
    assert len(ds) == 3 * 5 and ds.dt == pytest.approx(0.03)
    item = ds[len(ds) - 1]
    assert (item["traj"], item["t"]) == (3, 4)
    assert item["target"].shape == (2, 32)
    np.testing.assert_array_equal(item["target"].numpy(), data[3, 15:19:3, ::2])
    clone = pickle.loads(pickle.dumps(ds))  # after the file was opened
    assert clone._file is None
    np.testing.assert_array_equal(clone[4]["u"].numpy(), ds[4]["u"].numpy())
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1)
    batches = list(loader)
    assert batches[0]["u"].shape == (4, 32) and batches[0]["target"].shape == (4, 2, 32)
    assert torch.allclose(batches[0]["dt"], torch.full((4,), 0.03, dtype=torch.float64))
    with pytest.raises(DataError, match="unroll"):
        PairDataset(path, [0], t_stride=3, unroll=7)
    with pytest.raises(DataError, match="x_stride"):
        PairDataset(path, [0], x_stride=3)
    with pytest.raises(DataError, match="indices"):
        PairDataset(path, [4])


def test_dataset_needs_nu(tmp_path) -> None:
    path = tmp_path / "plain.h5"
    write_pdebench_like(path, n=1, nt=5, nx=8)
    with pytest.raises(DataError) as exc:
        PairDataset(path, [0])
    assert exc.value.field == "nu" and str(path) in str(exc.value)
    assert PairDataset(path, [0], nu=0.5)[0]["nu"] == 0.5


def test_split_indices_disjoint_covering_deterministic() -> None:
    s = split_indices(103, seed=1)
    assert [len(s[k]) for k in ("train", "val", "test")] == [83, 10, 10]
    allidx = np.concatenate(list(s.values()))
    assert sorted(allidx.tolist()) == list(range(103))
    for v in s.values():
        assert (np.diff(v) > 0).all()
    again = split_indices(103, seed=1)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    assert not np.array_equal(s["test"], split_indices(103, seed=2)["test"])
    small = split_indices(5)
    assert [len(small[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    with pytest.raises(DataError, match="fractions"):
        split_indices(10, (0.5, 0.1, 0.1))


def test_normalizer_uses_training_split_only(tmp_path) -> None:
    path = tmp_path / "n_Nu0.1.h5"
    n = 10
    split = split_indices(n, seed=0)
    scale = np.ones(n)
    scale[split["val"]] = scale[split["test"]] = 1000.0  # val/test on a wildly different scale
    data = write_pdebench_like(path, n=n, nt=11, nx=32, scale=scale)
    norm = Normalizer.fit(path, split["train"], x_stride=2, t_stride=2)
    train = data[split["train"]][:, ::2, ::2].astype(np.float64)
    assert norm.mean == pytest.approx(train.mean(), abs=1e-9)
    assert norm.std == pytest.approx(train.std(), rel=1e-9)
    assert norm.std < 2  # all data would give std ~ 400
    assert Normalizer.from_dict(norm.to_dict()) == norm
    z = norm.encode(torch.tensor([1.0, 2.0]))
    assert torch.allclose(norm.decode(z), torch.tensor([1.0, 2.0]))


def test_rollout_horizon(tmp_path) -> None:
    path = tmp_path / "r_Nu0.1.h5"
    write_pdebench_like(path, n=2, nt=11, nx=16)
    ds = RolloutDataset(path, [0, 1], t_stride=2, horizon=3)
    assert len(ds) == 2 and ds[1]["u"].shape == (4, 16) and ds[1]["dt"] == pytest.approx(0.02)
    with pytest.raises(DataError, match="horizon"):
        RolloutDataset(path, [0], t_stride=2, horizon=6)


def test_missing_x_coordinate_assumes_unit_domain(tmp_path) -> None:
    path = tmp_path / "nox_Nu0.1.h5"
    with h5py.File(path, "w") as f:
        f["tensor"] = np.zeros((1, 3, 10), np.float32)
        f["t-coordinate"] = np.array([0.0, 0.5, 1.0])
    info = open_info(path)
    assert info.x_assumed and info.x_range == (0.0, 1.0) and not info.t_has_extra
    np.testing.assert_allclose(grid(path), (np.arange(10) + 0.5) / 10)


def _bad_file(kind: str, path):
    """Write one class of broken file at path."""
    if kind == "not HDF5":
        path.write_text("just text\n")
        return
    with h5py.File(path, "w") as f:
        if kind == "missing tensor":
            f["u"] = np.zeros((2, 3, 4), np.float32)
        elif kind == "rank 2":
            f["tensor"] = np.zeros((3, 4), np.float32)
        elif kind == "integer":
            f["tensor"] = np.zeros((2, 3, 4), np.int32)
        else:
            data = np.zeros((4, 3, 8), np.float32)
            data[2, 1, 5] = np.nan if kind == "NaN" else np.inf
            f["tensor"] = data


@pytest.mark.parametrize("kind,words", [
    ("missing", "file not found"), ("not HDF5", "not an HDF5 file"),
    ("missing tensor", "tensor: missing dataset"), ("rank 2", "tensor: must have rank 3"),
    ("integer", "must be floating point"), ("NaN", "tensor: contains NaN (trajectory 2"),
    ("Inf", "tensor: contains Inf (trajectory 2"),
])
def test_bad_files_raise_data_error(tmp_path, kind, words) -> None:
    path = tmp_path / "bad.h5"
    if kind != "missing":
        _bad_file(kind, path)
    with pytest.raises(DataError) as exc:
        open_info(path)
    msg = str(exc.value)
    assert msg.startswith(str(path)) and words in msg, msg
    with pytest.raises(DataError):
        PairDataset(path, [0], nu=0.1)
    if kind in ("NaN", "Inf", "rank 2"):  # inspect reports rather than raises
        lines = inspect_lines(path)
        assert any(line.startswith("problem:") and words in line for line in lines), lines
        assert find_problems(path)[0].field == "tensor"
