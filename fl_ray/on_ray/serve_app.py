"""Ray Serve: the deployment that hosts the federated model, and starting/stopping it.

Every Ray / Ray Serve call of the serving feature lives here, in fl_ray.on_ray with the rest.
The driver verifies the receipts and reads the adapter (:mod:`fl_ray.serving.provenance`),
then hands the replicas plain data, so a replica may start on a node that has the base model
but not the run directory.

``build_app`` is also the ``import_path`` target of ``serve_config.yaml`` (``serve run`` /
``serve deploy``): provenance is checked there too, before anything is deployed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict, ValidationError
from ray import serve
from ray.serve import Application

from fl_ray.config import ServeSpec, parse_recipe
from fl_ray.rundir import RunDir
from fl_ray.serving.api import build_api
from fl_ray.serving.engine import Engine, ServedRound, read_served_round
from fl_ray.serving.provenance import Provenance, verify_provenance

APP_NAME = "fl-ray"
_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@serve.deployment(name="FederatedModel", max_ongoing_requests=8, health_check_period_s=10)
@serve.ingress()
class FederatedModel:
    """One replica: the merged model of a verified round behind the OpenAI-compatible API."""

    def __init__(self, served: ServedRound) -> None:
        self.engine = Engine.load(served)

    def __serve_build_asgi_app__(self):
        return build_api(self.engine)


class ServeArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args:`` of an application in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid")

    run_dir: str
    round: int | None = None  # None: the last complete round
    roster: str | None = None  # roster.json; None: as `fl-ray verify` finds it
    replicas: int | None = None  # the rest default to the run recipe's `serve:` section
    min_replicas: int | None = None
    max_replicas: int | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None


def serve_spec(run_dir: str | Path, args: ServeArgs) -> ServeSpec:
    """The recipe's ``serve:`` section with any explicitly given option replacing its value."""
    recipe = parse_recipe(RunDir(run_dir).recipe_dict(), check_paths=False)
    given = {
        k: v
        for k, v in args.model_dump().items()
        if v is not None and k in ServeSpec.model_fields and k != "port"
    }
    # ServeSpec re-validates: a flag is held to the same bounds as the recipe key.
    try:
        return ServeSpec.model_validate({**recipe.serve.model_dump(), **given})
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"serve.{key}: {first['msg']} (got {first.get('input')!r})") from None


def deployment_options(spec: ServeSpec) -> dict[str, Any]:
    """Replicas (fixed, or autoscaled when min/max are set) and resources per replica."""
    options: dict[str, Any] = {
        "ray_actor_options": {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "runtime_env": {"env_vars": _ENV},
        }
    }
    if spec.min_replicas is not None or spec.max_replicas is not None:
        low = spec.min_replicas if spec.min_replicas is not None else 1
        high = spec.max_replicas if spec.max_replicas is not None else max(low, spec.replicas)
        if high < max(low, 1):
            raise ValueError(f"serve: max_replicas {high} is below min_replicas {low}")
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": max(low, 1),
        }
    else:
        options["num_replicas"] = spec.replicas
    return options


def prepare(args: ServeArgs) -> tuple[ServedRound, ServeSpec]:
    """Verify the receipts up to the round, then read what the replicas need (no Ray)."""
    provenance = verify_provenance(args.run_dir, args.round, args.roster)
    spec = serve_spec(args.run_dir, args)
    deployment_options(spec)  # bad replica bounds fail here, before any weights are read
    return read_served_round(args.run_dir, provenance), spec


def build_app(args: ServeArgs | dict[str, Any]) -> Application:
    """The Serve application for ``serve run`` / ``serve deploy``; raises
    :class:`~fl_ray.serving.provenance.ProvenanceError` (and deploys nothing) when the receipts
    do not verify."""
    # Serve hands a dict here (it converts only non-string annotations to the model).
    served, spec = prepare(ServeArgs.model_validate(args))
    return FederatedModel.options(**deployment_options(spec)).bind(served)


@dataclass(frozen=True)
class RunningServer:
    """A started server: where it listens, what it serves, and whether we own the Ray."""

    url: str
    model_id: str
    provenance: Provenance
    owns_ray: bool


def _connect(num_cpus_wanted: float) -> bool:
    """Join RAY_ADDRESS, or start an embedded local Ray; True if we started it."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env={"env_vars": _ENV})
        return False
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus_wanted)),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": _ENV},
    )
    return True


def start_server(
    run_dir: str | Path,
    round_num: int | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    roster: str | Path | None = None,
    replicas: int | None = None,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
) -> RunningServer:
    """Verify, then deploy the run's round on Ray Serve at ``http://host:port``; returns once
    every replica is healthy. Stop it with :func:`stop_server`."""
    args = ServeArgs(
        run_dir=str(run_dir),
        round=round_num,
        roster=str(roster) if roster else None,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    # Provenance and options are checked before Ray starts: a refusal costs nothing.
    served, spec = prepare(args)
    port = spec.port if port is None else port
    owns_ray = _connect(spec.num_cpus * max(spec.replicas, spec.min_replicas or 1))
    try:
        serve.start(http_options={"host": host, "port": port})
        app = FederatedModel.options(**deployment_options(spec)).bind(served)
        serve.run(app, name=APP_NAME, route_prefix="/")
    except BaseException:
        stop_server(owns_ray)
        raise
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return RunningServer(f"http://{shown}:{port}", served.model_id, served.provenance, owns_ray)


def stop_server(owns_ray: bool) -> None:
    """Stop serving: on an embedded Ray, Serve and Ray shut down; on a shared cluster only
    this application is deleted."""
    if not ray.is_initialized():
        return
    if owns_ray:
        serve.shutdown()
        ray.shutdown()
    else:
        serve.delete(APP_NAME)
