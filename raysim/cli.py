"""`raysim data|validate|train|run|analyze|promote|bench`.

Bad input exits 2 with one line per problem (`FILE: field: reason`) and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raysim.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line, no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message, file=self.prog)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="raysim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="generate or inspect PDEBench-layout Burgers data")
    dsub = data.add_subparsers(dest="data_verb", required=True, parser_class=_Parser)
    gen = dsub.add_parser("generate", help="solve 1D Burgers and write a PDEBench-layout HDF5 file")
    gen.add_argument("--out", required=True)
    gen.add_argument("--nu", type=float, default=0.01)
    gen.add_argument("--samples", type=int, default=1024)
    gen.add_argument("--nx", type=int, default=1024)
    gen.add_argument("--nt", type=int, default=201)
    gen.add_argument("--t-end", type=float, default=2.0)
    gen.add_argument("--seed", type=int, default=0)
    ins = dsub.add_parser("inspect", help="shape, grid, time step, nu and problems of an HDF5 file")
    ins.add_argument("file")

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
    return p


def _validate(args: argparse.Namespace) -> int:
    from raysim.config import MatrixConfig, expand_arms, load_any

    problems: list[str] = []
    for file in args.files:
        try:
            cfg = load_any(file)
            if isinstance(cfg, MatrixConfig):
                found = []
                for profile in cfg.profiles:
                    try:
                        expand_arms(cfg, profile)
                    except UserError as exc:
                        found.extend(str(exc).splitlines())
                if found:
                    problems.extend(found)
                    continue
                print(
                    f"{file}: valid ({len(cfg.arms)} arms x {len(cfg.profiles)} profiles, "
                    f"{len(cfg.hypotheses)} hypotheses)"
                )
            else:
                print(f"{file}: valid (run config {cfg.name})")
        except UserError as exc:
            problems.extend(str(exc).splitlines())
    for line in problems:
        print(line, file=sys.stderr)
    return 2 if problems else 0


def _data(args: argparse.Namespace) -> int:
    if args.data_verb == "generate":
        from raysim.data.burgers import generate

        out = generate(
            args.out, nu=args.nu, samples=args.samples, nx=args.nx, nt=args.nt, t_end=args.t_end, seed=args.seed
        )
        print(f"wrote {out}")
        return 0
    from raysim.data.pdebench import inspect_lines

    for line in inspect_lines(args.file):
        print(line)
    return 0


def _train(args: argparse.Namespace) -> int:
    from raysim.train.single import train_one

    metrics = train_one(args.config, arm=args.arm, profile=args.profile, sets=args.sets, out=args.out)
    print(json.dumps(metrics, indent=2))
    return 0


def _run(args: argparse.Namespace) -> int:
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
    from raysim.analysis.report import write_report
    from raysim.train.stages import checkpoint_loads

    if not storage.exists(storage.join(args.study_dir, "study.json")):
        raise UserError("not a study folder (no study.json)", file=args.study_dir)
    folder = write_report(args.study_dir, args.out, load_checkpoint=checkpoint_loads)
    print(f"report: {storage.join(str(folder), 'ablation_report.md')}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from raysim.analysis.leaderboard import promote

    outcome = promote(args.study_dir, args.arm, leaderboard=args.leaderboard, promoted_dir=args.promoted_dir)
    print(outcome.get("reason", ""))
    return 0 if outcome.get("promoted") else 1


def _bench(args: argparse.Namespace) -> int:
    from raysim.bench import run_bench

    return run_bench(args.what, Path(args.out), quick=args.quick)


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
