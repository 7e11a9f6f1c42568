"""``fl-ray keygen``, ``fl-ray keycheck`` and ``fl-ray verify``: keys and the offline audit.

Passwords come from an environment variable or a file, never from the command line (a command
line is visible to every user of the machine through the process table).
"""

from __future__ import annotations

import argparse

from fl_ray.receipts.keys import DEFAULT_PASSWORD_ENV


def _cmd_keygen(args: argparse.Namespace) -> int:
    from fl_ray.receipts.keys import create_keys, load_roster, read_password

    silos = [s.strip() for s in args.silos.split(",") if s.strip()]
    password = read_password(args.password_env, args.password_file)
    roster_path = create_keys(args.out_dir, args.federation, silos, password)
    roster = load_roster(roster_path)
    print(f"federation {roster.federation}: keystores and roster written to {args.out_dir}")
    print(f"  coordinator  {roster.coordinator}")
    for name, address in sorted(roster.silos.items()):
        print(f"  {name:<12} {address}")
    print(f"roster (public; give it to auditors): {roster_path}")
    return 0


def _cmd_keycheck(args: argparse.Namespace) -> int:
    from fl_ray.receipts.keys import load_account

    account = load_account(args.keystore, args.password_env, args.password_file)
    print(account.address)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from fl_ray.receipts.verify import verify_run

    result = verify_run(
        args.run_dir,
        roster_path=args.roster,
        upto_round=args.round,
        recompute=not args.no_recompute,
        echo=print,
        check_base=not args.skip_base,
    )
    if result.failure is not None:
        print(f"verify FAILED: {result.failure}")
        return 1
    print(f"verified rounds 0..{result.rounds[-1]}: chain head {result.head}")
    return 0


def _add_password_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--password-env",
        default=DEFAULT_PASSWORD_ENV,
        metavar="VAR",
        help=f"environment variable holding the keystore password (default {DEFAULT_PASSWORD_ENV})",
    )
    group.add_argument("--password-file", metavar="FILE", help="file holding the password")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="create keystores for the silos and coordinator + roster")
    p.add_argument("out_dir", help="directory for <silo>.json, coordinator.json, roster.json")
    p.add_argument("--federation", required=True, help="federation id (the EIP-712 domain)")
    p.add_argument("--silos", required=True, help="comma-separated silo names")
    _add_password_options(p)
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("keycheck", help="decrypt a keystore and print its address")
    p.add_argument("keystore")
    _add_password_options(p)
    p.set_defaults(func=_cmd_keycheck)

    p = sub.add_parser("verify", help="audit a run's signed receipts offline (no Ray)")
    p.add_argument("run_dir")
    p.add_argument("--roster", help="roster.json to trust (default: the run directory's copy)")
    p.add_argument("--round", type=int, help="verify rounds 0..N only")
    p.add_argument(
        "--no-recompute", action="store_true", help="check hashes and signatures, skip merges"
    )
    p.add_argument(
        "--skip-base", action="store_true", help="do not hash the base model (large models)"
    )
    p.set_defaults(func=_cmd_verify)
