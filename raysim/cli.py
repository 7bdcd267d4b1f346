"""`raysim data|validate|train|run|analyze|promote|bench`.

Bad input exits 2 with one line per problem (`FILE: field: reason`) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from raysim.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (`raysim VERB: argument --x: reason`), no usage dump."""

    commands: tuple[str, ...] = ()  # this parser's subcommands, named when one is missing

    def error(self, message: str) -> None:  # type: ignore[override]
        if self.commands and message.endswith("required: command"):
            message += f" (one of: {', '.join(self.commands)})"
        raise UserError(" ".join(message.split()), file=self.prog)


def _commands(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    parser.commands = tuple(sub.choices)  # type: ignore[attr-defined]


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="raysim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", metavar="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="generate or inspect PDEBench-layout Burgers data")
    dsub = data.add_subparsers(dest="data_verb", metavar="command", required=True, parser_class=_Parser)
    gen = dsub.add_parser("generate", help="solve 1D Burgers and write a PDEBench-layout HDF5 file")
    gen.add_argument("--out", required=True)
    gen.add_argument("--nu", type=float, default=0.01)
    gen.add_argument("--samples", type=int, default=1024)
    gen.add_argument("--nx", type=int, default=1024)
    gen.add_argument("--nt", type=int, default=201)
    gen.add_argument("--t-end", type=float, default=2.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--workers", type=int, default=None,
                     help="processes solving batches of trajectories in parallel (default: the CPUs available, "
                          "at most one per batch); the output is identical for any value")
    ins = dsub.add_parser("inspect", help="shape, grid, time step, nu and problems of an HDF5 file")
    ins.add_argument("file")
    _commands(data, dsub)

    val = sub.add_parser("validate", help="validate run configs and ablation matrices")
    val.add_argument("files", nargs="+")

    tr = sub.add_parser("train", help="one configuration (no Tune): operator, diffusion, evaluation")
    tr.add_argument("config")
    tr.add_argument("--arm")
    tr.add_argument("--profile")
    tr.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    tr.add_argument("--out")

    run = sub.add_parser("run", help="the whole study as a Ray Tune grid")
    run.add_argument("matrix")
    run.add_argument("--profile")
    run.add_argument("--storage")
    run.add_argument("--resume", action="store_true")
    run.add_argument("--dry-run", action="store_true")
    run.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")

    an = sub.add_parser("analyze", help="rebuild the report from stored results")
    an.add_argument("study_dir")
    an.add_argument("--out")

    pr = sub.add_parser("promote", help="gate an arm against the champion and record it")
    pr.add_argument("study_dir")
    pr.add_argument("--arm", required=True)
    pr.add_argument("--leaderboard", default="results/leaderboard.csv")
    pr.add_argument("--promoted-dir", default="ablations/promoted")

    be = sub.add_parser("bench", help="benchmarks; each writes a JSON file of its figures")
    be.add_argument("what", choices=["overhead", "train", "data"])
    be.add_argument("--out", default="results/bench")
    be.add_argument("--quick", action="store_true", help="a fast harness check, not a measurement")
    be.add_argument("--repeats", type=int, default=3, help="A/B repetitions of the overhead benchmark")
    _commands(p, sub)
    return p


# --------------------------------------------------------------------------- checks before anything runs


def _check_sets(sets: list[str], file: str) -> None:
    """Every `--set` is `key=value` with a non-empty key; the error names the config file."""
    for item in sets:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"expected key=value, got {item!r}", file=file, field="--set")


def _local_path(location: str | None) -> Path | None:
    """`location` as a local path, None for a URI or nothing."""
    if not location:
        return None
    from raysim.analysis import storage

    return None if storage.is_uri(location) else Path(location).expanduser()


def _check_folder(location: str | None, field: str) -> None:
    """A local output folder that exists as something other than a folder is bad input."""
    path = _local_path(location)
    if path is not None and path.exists() and not path.is_dir():
        raise UserError("is a file, not a folder", file=str(location), field=field)


class _DataChecks:
    """`data.path` of resolved configs, checked before Ray starts: PDEBench layout, NaN/Inf, strides, splits.

    A bad data file then fails in the driver as `CONFIG: field: DATAFILE: field: reason` instead of
    inside a trial. Each file is read once and each problem reported once, however many arms share it.
    """

    def __init__(self) -> None:
        self._infos: dict[Path, Any] = {}  # resolved path -> BurgersInfo, or the file's first problem
        self._reported: set[str] = set()

    def problems(self, cfg: Any, file: str, prefix: str = "") -> list[UserError]:
        from raysim.data.pdebench import find_problems, open_info

        d = cfg.data
        if not d.path:
            return []
        path = Path(d.path).expanduser()
        key = path.resolve()
        if key not in self._infos:
            found = find_problems(path)
            self._infos[key] = found[0] if found else open_info(path, check_trajectories=0)
        info = self._infos[key]
        errors = []
        if isinstance(info, UserError):
            errors.append(UserError(str(info), file, f"{prefix}data.path"))
        else:
            if info.nx % d.x_stride:
                errors.append(UserError(f"must divide the {info.nx} grid points of {d.path}, got {d.x_stride}",
                                        file, f"{prefix}data.x_stride"))
            if (info.nt + d.t_stride - 1) // d.t_stride < 3:
                errors.append(UserError(f"leaves fewer than 3 of the {info.nt} frames of {d.path}, got "
                                        f"{d.t_stride}", file, f"{prefix}data.t_stride"))
            if info.dt is None:
                errors.append(UserError(f"{d.path}: t-coordinate: missing or invalid, the time step is unknown",
                                        file, f"{prefix}data.path"))
            if info.n < sum(1 for s in d.splits if s > 0):
                errors.append(UserError(f"{d.path} holds {info.n} trajectories, too few for splits {d.splits}",
                                        file, f"{prefix}data.splits"))
        new = [e for e in errors if e.reason not in self._reported]  # the same file under every arm: once
        self._reported.update(e.reason for e in new)
        return new


# --------------------------------------------------------------------------- verbs


def _validate(args: argparse.Namespace) -> int:
    from raysim.config import MatrixConfig, expand_arms, load_any

    problems: list[str] = []
    for file in args.files:
        checks = _DataChecks()
        try:
            cfg = load_any(file)
            if isinstance(cfg, MatrixConfig):
                found = []
                for profile in cfg.profiles:
                    try:
                        arms = expand_arms(cfg, profile)
                    except UserError as exc:
                        found.extend(str(exc).splitlines())
                        continue
                    for arm, run_cfg in arms.items():
                        found.extend(str(e) for e in checks.problems(run_cfg, file, f"arms.{arm}[{profile}]."))
                if found:
                    problems.extend(found)
                    continue
                print(
                    f"{file}: valid ({len(cfg.arms)} arms x {len(cfg.profiles)} profiles, "
                    f"{len(cfg.hypotheses)} hypotheses)"
                )
            else:
                found = [str(e) for e in checks.problems(cfg, file)]
                if found:
                    problems.extend(found)
                    continue
                print(f"{file}: valid (run config {cfg.name})")
        except UserError as exc:
            problems.extend(str(exc).splitlines())
    for line in problems:
        print(line, file=sys.stderr)
    return 2 if problems else 0


_GENERATE_FLAGS = {"nu": "--nu", "samples": "--samples", "nx": "--nx", "nt": "--nt", "t_end": "--t-end",
                   "seed": "--seed", "workers": "--workers", "out": "--out"}


def _data(args: argparse.Namespace) -> int:
    from raysim.errors import DataError

    if args.data_verb == "generate":
        from raysim.data.burgers import available_cpus, generate

        workers = available_cpus() if args.workers is None else args.workers  # generate() caps it at the batches
        try:
            out = generate(
                args.out, nu=args.nu, samples=args.samples, nx=args.nx, nt=args.nt, t_end=args.t_end, seed=args.seed,
                workers=workers, progress=True,
            )
        except DataError as exc:  # name the file being written and the flag, not generate()'s argument
            raise DataError(exc.reason, file=exc.file or args.out,
                            field=_GENERATE_FLAGS.get(exc.field or "", exc.field)) from None
        except OSError as exc:  # cannot create or write the file; generate() removed its temporary file
            raise DataError(f"cannot be written ({exc.strerror or exc})", file=args.out, field="--out") from None
        print(f"wrote {out}")
        return 0
    from raysim.data.pdebench import inspect_report

    lines, problems = inspect_report(args.file)
    for line in lines:
        print(line)
    for problem in problems:  # `FILE: field: reason`, one line each, after the report
        print(problem, file=sys.stderr)
    return 2 if problems else 0


def _train(args: argparse.Namespace) -> int:
    from raysim.config import ConfigErrors, MatrixConfig, load_any
    from raysim.train.single import resolve, train_one

    # Everything that can be wrong with the input is checked here, before train_one imports or starts Ray.
    _check_sets(args.sets, args.config)
    _check_folder(args.out, "--out")
    loaded = load_any(args.config)
    _, cfg = resolve(args.config, args.arm, args.profile, args.sets)
    prefix = f"arms.{args.arm}[{args.profile or loaded.default_profile}]." if isinstance(loaded, MatrixConfig) else ""
    errors = _DataChecks().problems(cfg, args.config, prefix)
    if errors:
        raise ConfigErrors(errors)
    metrics = train_one(args.config, arm=args.arm, profile=args.profile, sets=args.sets, out=args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
    from raysim.config import ConfigErrors, expand_arms, is_matrix, load_matrix, read_yaml

    if not is_matrix(read_yaml(args.matrix)):
        raise UserError("is a run config, not an ablation matrix (no arms, axes or hypotheses); use raysim train",
                        file=args.matrix)
    _check_sets(args.sets, args.matrix)
    _check_folder(args.storage, "--storage")
    matrix = load_matrix(args.matrix)
    profile = args.profile or matrix.default_profile
    checks = _DataChecks()
    errors = []
    for arm, cfg in expand_arms(matrix, profile, args.sets).items():
        errors.extend(checks.problems(cfg, args.matrix, f"arms.{arm}[{profile}]."))
    if errors:
        raise ConfigErrors(errors)

    from raysim.tune.study import run_study

    return run_study(
        args.matrix,
        profile=args.profile,
        storage_uri=args.storage,
        resume=args.resume,
        dry_run=args.dry_run,
        sets=args.sets,
    )


def _analyze(args: argparse.Namespace) -> int:
    from raysim.analysis import storage

    if not storage.exists(storage.join(args.study_dir, "study.json")):
        raise UserError("not a study folder (no study.json)", file=args.study_dir)
    _check_folder(args.out, "--out")
    from raysim.analysis.load import load_study
    from raysim.analysis.report import write_report

    load_study(args.study_dir)  # an unreadable study.json fails here, before torch is imported
    from raysim.train.stages import checkpoint_loads

    folder = write_report(args.study_dir, args.out, load_checkpoint=checkpoint_loads)
    print(f"report: {storage.join(str(folder), 'ablation_report.md')}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from raysim.analysis import storage
    from raysim.analysis.leaderboard import promote

    if not storage.is_dir(args.study_dir):
        raise UserError("no such study folder", file=args.study_dir)
    if not (storage.exists(storage.join(args.study_dir, "study.json"))
            or storage.is_dir(storage.join(args.study_dir, "trials"))):
        raise UserError("not a study folder (no study.json, no trials/)", file=args.study_dir)
    board = _local_path(args.leaderboard)
    if board is not None and board.is_dir():
        raise UserError("is a folder, not a CSV file", file=args.leaderboard, field="--leaderboard")
    _check_folder(args.promoted_dir, "--promoted-dir")
    outcome = promote(args.study_dir, args.arm, leaderboard=args.leaderboard, promoted_dir=args.promoted_dir)
    print(outcome.get("reason", ""))
    return 0 if outcome.get("promoted") else 1


def _bench(args: argparse.Namespace) -> int:
    from raysim.bench import run_bench

    if args.repeats < 1:
        raise UserError(f"must be a positive integer, got {args.repeats}", file="raysim bench", field="--repeats")
    return run_bench(args.what, Path(args.out), quick=args.quick, repeats=args.repeats)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `raysim` command."""
    try:
        args = _parser().parse_args(argv)
        handler = {
            "data": _data,
            "validate": _validate,
            "train": _train,
            "run": _run,
            "analyze": _analyze,
            "promote": _promote,
            "bench": _bench,
        }[args.verb]
        return handler(args)
    except UserError as exc:
        for line in str(exc).splitlines():
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raysim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
