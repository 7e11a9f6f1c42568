"""fl-ray submit: run a recipe on a running Ray cluster as a Ray job.

This is ``ray job submit --working-dir . -- fl-ray run RECIPE [key=value ...]`` through Ray's
Job Submission SDK (the same client the ``ray job`` CLI uses), so that the exit code can carry the
job's final status, which ``ray job submit`` folds to 0 for a stopped job:

=========  =====================================================================
exit code  meaning
=========  =====================================================================
0          the job SUCCEEDED (or was submitted, with ``--no-wait``)
1          the job FAILED without a driver exit code, or the cluster is unreachable
N          the job FAILED and its driver (``fl-ray run``) exited with code N, e.g.
           2 for a recipe that the cluster's nodes cannot run (a missing data file)
3          the job was STOPPED (``ray job stop``)
2          bad input here: a recipe error, a recipe outside the working directory,
           a relative data path, a refused token
130        interrupted while following: the job keeps running on the cluster
=========  =====================================================================

Only the working directory travels (honouring ``.gitignore`` plus the excludes below): silo data
never does. Every path in the recipe therefore has to be absolute, naming the file on the node
that reads it -- each department's ``data_dir`` on its own node, the base model on every node.

Token authentication (Ray >= 2.59) needs no flag: with ``RAY_AUTH_MODE=token`` the SDK sends the
token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``. See
docs/cluster.md for TLS and why the jobs port (8265) must never be public.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from fl_ray.config import Recipe, load_recipe

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Never upload these: virtual environments, earlier runs, demo assets (model + data), git.
# Ray also honours the working directory's .gitignore and .rayignore.
WORKING_DIR_EXCLUDES = (".venv", "venv", ".git", "runs", "demo_assets", "__pycache__", "*.pyc")
EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130


def submission_address(flag: str | None) -> str:
    """``--address``, else ``RAY_API_SERVER_ADDRESS``, else an http ``RAY_ADDRESS``, else local."""
    if flag:
        return flag
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        value = os.environ.get(name, "")
        if value.startswith(("http://", "https://")):
            return value
    return DEFAULT_ADDRESS


def relative_recipe(recipe_path: str | Path, working_dir: str | Path) -> str:
    """The recipe's path inside the working directory, as the job will see it (POSIX)."""
    recipe = Path(recipe_path).resolve()
    root = Path(working_dir).resolve()
    try:
        return recipe.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(
            f"recipe {recipe_path} is outside the working directory {working_dir}: "
            "only the working directory is uploaded"
        ) from None


def check_cluster_paths(recipe: Recipe) -> None:
    """Reject relative model/data paths: on a cluster they would resolve inside the uploaded
    working directory, i.e. the data would have travelled with the job."""
    if not Path(recipe.base_model.path).is_absolute():
        raise ValueError(
            f"base_model.path {recipe.base_model.path!r} is relative: on a cluster give the "
            "absolute path the model has on every node"
        )
    if getattr(recipe.data, "source", "files") != "files":
        return  # generated data (benchmarks): nothing is read from disk
    for i, silo in enumerate(recipe.silos):
        if not Path(silo.data_dir).is_absolute():
            raise ValueError(
                f"silos.{i}.data_dir {silo.data_dir!r} is relative: on a cluster give the "
                f"absolute path on silo {silo.name}'s own node"
            )


def job_entrypoint(recipe_rel: str, overrides: list[str]) -> str:
    """The shell command the job runs on the head node."""
    return shlex.join(["fl-ray", "run", recipe_rel, *overrides])


def job_runtime_env(working_dir: str | Path) -> dict[str, Any]:
    """Only the working directory: ``fl-ray run`` adds its own env_vars (offline hubs) in
    ``ray.init``, and Ray refuses a job whose runtime_env sets the same field twice."""
    return {"working_dir": str(working_dir), "excludes": list(WORKING_DIR_EXCLUDES)}


def exit_code_for(status: str, driver_exit_code: int | None) -> int:
    """Map a finished job's status (and its driver's exit code) to this command's exit code."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return EXIT_STOPPED
    if driver_exit_code:  # FAILED with the driver's own code: 2 means the recipe was refused
        return int(driver_exit_code)
    return 1


async def _follow(client: Any, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _cmd_submit(args: argparse.Namespace) -> int:
    # Validate here what can be validated here; the paths are checked on the cluster's nodes.
    recipe = load_recipe(args.recipe, args.overrides, check_paths=False)
    check_cluster_paths(recipe)
    recipe_rel = relative_recipe(args.recipe, args.working_dir)

    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = submission_address(args.address)
    try:
        client = JobSubmissionClient(address, verify=args.verify)
        job_id = client.submit_job(
            entrypoint=job_entrypoint(recipe_rel, args.overrides),
            submission_id=args.submission_id,
            runtime_env=job_runtime_env(args.working_dir),
            metadata={"fl_ray_recipe": recipe_rel, "fl_ray_run_name": recipe.run_name},
            entrypoint_num_cpus=args.entrypoint_num_cpus,
        )
    except AuthenticationError as err:
        raise PermissionError(f"{address} refused the job: {str(err).splitlines()[0]}") from None
    except (ConnectionError, RuntimeError) as err:
        print(f"fl-ray submit: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"submitted job {job_id} to {address}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    try:
        asyncio.run(_follow(client, job_id))
    except KeyboardInterrupt:
        print(
            f"stopped following; job {job_id} keeps running "
            f"(ray job stop --address {address} {job_id})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    info = client.get_job_info(job_id)
    status = str(getattr(info.status, "value", info.status))
    code = exit_code_for(status, info.driver_exit_code)
    message = f": {info.message}" if status != "SUCCEEDED" and info.message else ""
    print(f"job {job_id} {status}{message}", file=sys.stderr)
    return code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fl-ray submit``."""
    p = subparsers.add_parser(
        "submit",
        help="run a recipe on a Ray cluster as a Ray job (ray job submit -- fl-ray run ...)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("recipe", help="YAML recipe inside the working directory")
    p.add_argument("overrides", nargs="*", help="key=value overrides, passed to fl-ray run")
    p.add_argument(
        "--address",
        help="jobs API of the head, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS,"
        " an http RAY_ADDRESS, or http://127.0.0.1:8265)",
    )
    p.add_argument("--working-dir", default=".", help="directory uploaded with the job")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--submission-id", default=None, help="job id to use (default: Ray's)")
    p.add_argument(
        "--entrypoint-num-cpus",
        type=float,
        default=None,
        help="CPUs reserved for the driver (default: none; the coordinator mostly waits)",
    )
    p.add_argument(
        "--verify",
        default=True,
        type=_verify_arg,
        help="TLS: 'false' to skip checking the head's certificate, or a CA bundle path",
    )
    p.set_defaults(func=_cmd_submit)


def _verify_arg(text: str) -> bool | str:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    return text
