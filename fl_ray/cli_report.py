"""``fl-ray report RUN_DIR``: plots and a self-contained HTML page for a run (issue 9)."""

from __future__ import annotations

import argparse


def _cmd_report(args: argparse.Namespace) -> int:
    from fl_ray.report import render_report  # matplotlib is imported only when asked for

    report = render_report(args.run_dir, roster_path=args.roster, out_dir=args.out)
    print(f"receipts: {report.verification.headline}")
    print(f"report: {report.html_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write report.html + PNG plots for a run (verifies its receipts)"
    )
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument(
        "--roster", help="roster.json of public addresses (default: RUN_DIR/roster.json)"
    )
    p.add_argument("--out", help="output directory (default: RUN_DIR/report)")
    p.set_defaults(func=_cmd_report)
