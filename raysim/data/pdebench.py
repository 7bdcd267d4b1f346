"""Reading and validating PDEBench-layout Burgers HDF5 files (PDEBench's own or raysim's).

Layout: `tensor` (N, T, X) float, `x-coordinate` (X,) cell centres, `t-coordinate`
(T,) or (T + 1,) -- PDEBench's released files carry one extra time. nu comes from the
attributes `nu`/`Nu` or from the file name (`..._Nu0.01.hdf5`, `..._Nu1e-3.h5`).
A file without `x-coordinate` is taken to hold cell centres on (0, 1), the domain of
the PDEBench paper. Nothing here reads more than a bounded number of trajectories.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raysim.errors import DataError

CHECK_TRAJECTORIES = 64  # trajectories scanned for NaN/Inf by default
ASSUMED_X_RANGE = (0.0, 1.0)  # domain assumed when `x-coordinate` is missing
_NU_IN_NAME = re.compile(r"_Nu(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
# What h5py and numpy raise for a broken link, a missing external raw file, a corrupt chunk or
# a dataset of strings: each becomes a DataError naming the file and the dataset.
_READ_ERRORS = (OSError, KeyError, ValueError, TypeError, RuntimeError)


@dataclass(frozen=True)
class BurgersInfo:
    """What a Burgers HDF5 file holds: shape, grid, time step and viscosity."""

    path: Path
    n: int  # trajectories
    nt: int  # frames per trajectory
    nx: int  # points per frame
    x_range: tuple[float, float]  # periodic domain (lo, hi): cell edges around the centres
    dt: float | None  # time between frames, None when `t-coordinate` is missing
    nu: float | None  # PDEBench's Nu (equation uses nu / pi), None when unknown
    t_has_extra: bool  # `t-coordinate` has nt + 1 entries, as in PDEBench's files
    x_assumed: bool = False  # no `x-coordinate`: cell centres on (0, 1) assumed
    nu_source: str = ""  # "attrs", "file name" or ""

    @property
    def length(self) -> float:
        """Periodic domain length."""
        return self.x_range[1] - self.x_range[0]

    @property
    def dx(self) -> float:
        """Grid spacing of the stored points."""
        return self.length / self.nx


def nu_from_name(name: str) -> float | None:
    """nu parsed from a PDEBench-style file name (`_Nu0.01`, `_Nu1e-3`), or None."""
    m = _NU_IN_NAME.search(Path(name).name)
    return float(m.group(1)) if m else None


def _open(path: Path):
    """Open path read-only with h5py, raising DataError for a missing or non-HDF5 file."""
    import h5py

    if not path.exists():
        raise DataError("file not found", file=str(path))
    if not path.is_file():
        raise DataError("not a file", file=str(path))
    try:
        if not h5py.is_hdf5(path):
            raise DataError("not an HDF5 file", file=str(path))
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"cannot be read as HDF5 ({exc})", file=str(path)) from None


def _why(exc: BaseException) -> str:
    """An exception's message without KeyError's quotes."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _node(f, name: str, file: str):
    """The object at `name` in an open file; DataError for a broken soft or external link."""
    try:
        return f[name]
    except _READ_ERRORS as exc:
        raise DataError(f"cannot be opened ({_why(exc)})", file=file, field=name) from None


def _coordinate(f, name: str, file: str, problems: list[DataError]) -> np.ndarray | None:
    """A coordinate dataset as float64 (K,); None, with the problem noted, when it is a group, text or unreadable."""
    try:
        node = _node(f, name, file)
        if not hasattr(node, "shape"):
            raise DataError("is a group, not a dataset", file=file, field=name)
        try:
            return np.asarray(node[...], dtype=np.float64).reshape(-1)
        except _READ_ERRORS as exc:
            raise DataError(f"cannot be read as numbers ({_why(exc)})", file=file, field=name) from None
    except DataError as exc:
        problems.append(exc)
        return None


def _scan_finite(tensor, n: int, check: int) -> tuple[str | None, int]:
    """First NaN/Inf problem among `check` evenly spaced trajectories, and how many were read."""
    if check <= 0 or n == 0:
        return None, 0
    picks = np.unique(np.linspace(0, n - 1, min(n, check)).round().astype(int))
    for i in picks:  # one trajectory at a time: memory stays at T * X values
        traj = tensor[int(i)]  # (T, X)
        if not np.isfinite(traj).all():
            kind = "NaN" if np.isnan(traj).any() else "Inf"
            frame = int(np.argmax(~np.isfinite(traj).all(axis=1)))
            return f"contains {kind} (trajectory {int(i)}, frame {frame})", len(picks)
    return None, len(picks)


def _collect(path: str | Path, check_trajectories: int) -> tuple[dict, list[DataError]]:
    """Read the metadata of path; return the fields found and every problem, in order."""
    path = Path(path)
    file = str(path)
    problems: list[DataError] = []
    fields: dict = {"path": path}
    with _open(path) as f:
        try:
            _collect_open(f, file, check_trajectories, fields, problems)
        except DataError as exc:
            problems.append(exc)
        except _READ_ERRORS as exc:  # whatever else h5py raises on a damaged file: still one line
            problems.append(DataError(f"cannot be read ({type(exc).__name__}: {_why(exc)})", file=file))
    return fields, problems


def _collect_open(f, file: str, check_trajectories: int, fields: dict, problems: list[DataError]) -> None:
    """_collect on an open file: fill `fields` and append to `problems`; a DataError raised here is one more."""
    if "tensor" not in f:
        keys = ", ".join(sorted(f.keys())) or "none"
        problems.append(DataError(f"missing dataset (keys found: {keys})", file=file, field="tensor"))
        return
    tensor = _node(f, "tensor", file)
    if not hasattr(tensor, "shape"):
        problems.append(DataError("is a group, not a dataset", file=file, field="tensor"))
        return
    fields["shape"] = tuple(int(s) for s in tensor.shape)
    fields["dtype"] = str(tensor.dtype)
    if tensor.ndim != 3:
        problems.append(DataError(f"must have rank 3 (N, T, X), got shape {tensor.shape}", file=file, field="tensor"))
        return
    if tensor.dtype.kind != "f":
        problems.append(DataError(f"must be floating point, got {tensor.dtype}", file=file, field="tensor"))
        return
    n, nt, nx = fields["shape"]
    if n < 1 or nt < 2 or nx < 2:
        problems.append(DataError(f"needs N >= 1, T >= 2, X >= 2, got shape {tensor.shape}", file=file,
                                  field="tensor"))
        return
    fields.update(n=n, nt=nt, nx=nx)

    if "x-coordinate" in f:
        x = _coordinate(f, "x-coordinate", file, problems)
        if x is None:
            pass
        elif x.shape != (nx,):
            problems.append(DataError(f"must have {nx} entries like tensor's X, got {x.size}", file=file,
                                      field="x-coordinate"))
        elif not np.isfinite(x).all() or not (np.diff(x) > 0).all():
            problems.append(DataError("must be finite and increasing", file=file, field="x-coordinate"))
        else:
            half = 0.5 * (x[-1] - x[0]) / (nx - 1)
            fields["x_range"] = (float(x[0] - half), float(x[-1] + half))
    else:
        fields["x_range"] = ASSUMED_X_RANGE
        fields["x_assumed"] = True

    fields["dt"] = None
    fields["t_has_extra"] = False
    if "t-coordinate" in f:
        t = _coordinate(f, "t-coordinate", file, problems)
        if t is None:
            pass
        elif t.size not in (nt, nt + 1):
            problems.append(DataError(f"must have {nt} or {nt + 1} entries for {nt} frames, got {t.size}",
                                      file=file, field="t-coordinate"))
        elif not np.isfinite(t[:2]).all() or not t[1] > t[0]:
            problems.append(DataError("must start with two increasing finite times", file=file,
                                      field="t-coordinate"))
        else:
            fields["dt"] = float(t[1] - t[0])
            fields["t_has_extra"] = t.size == nt + 1

    fields["nu"], fields["nu_source"] = None, ""
    for key in ("nu", "Nu"):
        if key in f.attrs:
            try:
                raw = f.attrs[key]
            except _READ_ERRORS as exc:
                problems.append(DataError(f"attribute cannot be read ({_why(exc)})", file=file, field=key))
                break
            try:
                fields["nu"], fields["nu_source"] = float(raw), "attrs"
            except _READ_ERRORS:
                problems.append(DataError(f"attribute is not a number: {raw!r}", file=file, field=key))
            break
    name = Path(file).name
    if fields["nu"] is None and nu_from_name(name) is not None:
        fields["nu"], fields["nu_source"] = nu_from_name(name), "file name"
    if fields["nu"] is not None and not (math.isfinite(fields["nu"]) and fields["nu"] > 0):
        problems.append(DataError(f"must be a positive number, got {fields['nu']}", file=file, field="nu"))

    try:
        bad, checked = _scan_finite(tensor, n, check_trajectories)
    except _READ_ERRORS as exc:  # a missing external raw file, a corrupt chunk, an unavailable filter
        raise DataError(f"cannot be read ({_why(exc)})", file=file, field="tensor") from None
    fields["checked"] = checked
    if bad:
        problems.append(DataError(bad, file=file, field="tensor"))


def open_info(path: str | Path, check_trajectories: int = CHECK_TRAJECTORIES) -> BurgersInfo:
    """Validate a PDEBench-layout Burgers file and describe it; raise DataError on the first problem."""
    fields, problems = _collect(path, check_trajectories)
    if problems:
        raise problems[0]
    return BurgersInfo(
        path=fields["path"], n=fields["n"], nt=fields["nt"], nx=fields["nx"],
        x_range=fields["x_range"], dt=fields["dt"], nu=fields["nu"],
        t_has_extra=fields["t_has_extra"], x_assumed=fields.get("x_assumed", False),
        nu_source=fields["nu_source"],
    )


def find_problems(path: str | Path, check_trajectories: int = CHECK_TRAJECTORIES) -> list[DataError]:
    """Every problem found in path (empty when the file is usable)."""
    try:
        return _collect(path, check_trajectories)[1]
    except DataError as exc:
        return [exc]


def inspect_lines(path: str | Path, check_trajectories: int = CHECK_TRAJECTORIES) -> list[str]:
    """Human-readable description of a file for `raysim data inspect`; problems start with 'problem:'.

    Raises DataError only when there is nothing to inspect (missing file, not HDF5).
    """
    return inspect_report(path, check_trajectories)[0]


def inspect_report(
    path: str | Path, check_trajectories: int = CHECK_TRAJECTORIES
) -> tuple[list[str], list[DataError]]:
    """(inspect_lines, the problems behind its 'problem:' lines); `raysim data inspect` exits 2 on any.

    Raises DataError only when there is nothing to inspect (missing file, not HDF5).
    """
    fields, problems = _collect(path, check_trajectories)
    lines = [f"file: {fields['path']}"]
    if "shape" in fields:
        lines.append(f"shape (N, T, X): {fields['shape']} {fields['dtype']}")
    if "n" in fields:
        lo, hi = fields.get("x_range", (float("nan"), float("nan")))
        if fields.get("x_assumed"):
            lines.append(f"x range: ({lo:g}, {hi:g}) assumed (no x-coordinate: cell centres "
                         "on (0, 1))")
        elif "x_range" in fields:
            lines.append(f"x range: ({lo:g}, {hi:g}), {fields['nx']} cell centres, "
                         f"dx = {(hi - lo) / fields['nx']:.6g}, periodic")
        if fields.get("dt") is not None:
            extra = (f" (t-coordinate has {fields['nt'] + 1} entries for {fields['nt']} frames, "
                     "like PDEBench)") if fields.get("t_has_extra") else ""
            lines.append(f"time step: {fields['dt']:.6g}, t in [0, "
                         f"{fields['dt'] * (fields['nt'] - 1):.6g}]{extra}")
        else:
            lines.append("time step: unknown (no valid t-coordinate)")
        nu = fields.get("nu")
        lines.append(f"nu: {nu:g} (from {fields.get('nu_source')}; equation uses nu/pi)"
                     if nu is not None else "nu: unknown (no nu attribute, no _Nu in the name)")
        lines.append(f"NaN/Inf check: {fields.get('checked', 0)} of {fields['n']} trajectories read")
    lines.extend(f"problem: {p}" for p in problems)
    if not problems:
        lines.append("problems: none")
    return lines, problems
