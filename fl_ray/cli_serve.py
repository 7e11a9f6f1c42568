"""``fl-ray serve RUN_DIR``: serve a verified round of a run behind an OpenAI-compatible API.

Receipts are verified first; if they do not vouch for the round, serving is refused with one line
naming what failed and exit code 1 (as ``fl-ray verify`` fails), and no weights are loaded.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def _cmd_serve(args: argparse.Namespace) -> int:
    from fl_ray.on_ray.serve_app import start_server, stop_server
    from fl_ray.serving.provenance import ProvenanceError

    try:
        server = start_server(
            args.run_dir,
            round_num=args.round,
            port=args.port,
            host=args.host,
            roster=args.roster,
            replicas=args.replicas,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            num_cpus=args.num_cpus,
            num_gpus=args.num_gpus,
        )
    except ProvenanceError as err:
        print(f"fl-ray serve: refused: {err}", file=sys.stderr)
        return 1
    prov = server.provenance
    print(f"serving {server.model_id!r} (run {prov.run}, round {prov.round}) at {server.url}/v1")
    print(f"receipt {prov.receipt}", flush=True)
    if not args.block:
        return 0
    # A service manager stops us with SIGTERM: shut Serve (and our embedded Ray) down cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        stop_server(server.owns_ray)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a run's verified round with Ray Serve (OpenAI-compatible API)",
        description="Defaults for port, replicas and resources come from the run's `serve:` "
        "recipe section; flags override them.",
    )
    p.add_argument("run_dir", help="run directory, e.g. runs/demo")
    p.add_argument("--round", type=int, help="round to serve (default: last complete)")
    p.add_argument("--port", type=int, help="HTTP port (default: recipe serve.port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--roster", help="roster.json of public addresses to verify receipts against")
    p.add_argument("--replicas", type=int, help="fixed number of replicas")
    p.add_argument("--min-replicas", type=int, help="autoscaling lower bound")
    p.add_argument("--max-replicas", type=int, help="autoscaling upper bound")
    p.add_argument("--num-cpus", type=float, help="CPUs per replica")
    p.add_argument("--num-gpus", type=float, help="GPUs per replica")
    p.add_argument(
        "--block",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run until interrupted (default); --no-block returns once deployed, which "
        "leaves the application running only on a cluster joined through RAY_ADDRESS",
    )
    p.set_defaults(func=_cmd_serve)
