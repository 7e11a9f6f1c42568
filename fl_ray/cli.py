"""``fl-ray`` command line: one subcommand per job, each a thin shell over the library.

Bad input (a recipe error, a missing file, a run directory that exists) prints one line to
stderr and exits with code 2 -- no traceback, nothing written.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from fl_ray.config import RecipeError

USAGE_ERRORS = (RecipeError, FileExistsError, FileNotFoundError, ValueError, PermissionError)


def _cmd_run(args: argparse.Namespace) -> int:
    from fl_ray.config import load_recipe
    from fl_ray.runner import resume_run, run_federation

    recipe = load_recipe(args.recipe, args.overrides)
    if args.resume:
        resume_run(recipe.run_dir, expected=recipe)
    else:
        run_federation(recipe)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from fl_ray.runner import resume_run

    resume_run(args.run_dir)
    return 0


def _cmd_build_base(args: argparse.Namespace) -> int:
    from fl_ray.demo_base import build_demo_base

    out = build_demo_base(
        args.out,
        arch=args.arch,
        seed=args.seed,
        vocab_size=args.vocab_size,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        intermediate=args.intermediate,
    )
    print(f"demo base model ({args.arch}) written to {out}")
    return 0


def _cmd_make_data(args: argparse.Namespace) -> int:
    from fl_ray.demo_data import generate_demo_data

    dirs = generate_demo_data(
        args.out, seed=args.seed, train_per_silo=args.train, eval_per_silo=args.eval
    )
    for name, path in dirs.items():
        print(f"{name}: {path}")
    return 0


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a federated recipe (starts or joins Ray)")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, nested as a.b=c")
    p.add_argument("--resume", action="store_true", help="continue the recipe's run directory")
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("resume", help="continue a run from its last complete round")
    p.add_argument("run_dir")
    p.set_defaults(func=_cmd_resume)


def _add_demo_assets(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-base", help="build the tiny demo base model + tokenizer offline")
    p.add_argument("out", help="output directory")
    p.add_argument("--arch", choices=["llama", "qwen2"], default="llama")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=344)
    p.set_defaults(func=_cmd_build_base)
    p = sub.add_parser("make-data", help="generate the four departments' demo data")
    p.add_argument("out", help="output directory (one subdirectory per department)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=240, help="train examples per silo")
    p.add_argument("--eval", type=int, default=48, help="held-out examples per silo")
    p.set_defaults(func=_cmd_make_data)


# Each entry adds one or more subcommands.
REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [_add_run, _add_demo_assets]
# Feature modules bring their own subcommands through a ``register(subparsers)`` function.
FEATURE_CLIS = (
    "fl_ray.cli_audit",  # keygen, verify
    "fl_ray.cli_serve",  # serve
    "fl_ray.cli_report",  # report
    "fl_ray.cli_cluster",  # submit
    "fl_ray.cli_bench",  # bench
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fl-ray",
        description="Federated LoRA fine-tuning across data silos on Ray, with signed receipts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for register in REGISTRARS:
        register(sub)
    for module_name in FEATURE_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:  # a real missing dependency, not an absent feature
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USAGE_ERRORS as err:
        print(f"fl-ray {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # a run that stopped (coordinator died, a silo could not start): one line, exit 1
        if type(err).__name__ not in ("RunInterrupted", "RuntimeError"):
            raise
        print(f"fl-ray {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
