"""A signed run directory without training: the receipts tests' fixture and the verify benchmark.

Every part is real except the training: real keystores (demo scrypt cost), real EIP-712
signatures by each silo and the coordinator, the real strategy merge, and ``RunDir.write_round``
for the files. Silo updates are the global adapter plus seeded noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl_ray.config import Recipe, parse_recipe
from fl_ray.receipts.chain import RECEIPT_FILE, Contribution, RoundNotary, check_silo_update
from fl_ray.receipts.chain import sign_silo_update as _sign
from fl_ray.receipts.hashing import ZERO_HASH, base_model_fingerprint, state_hash
from fl_ray.receipts.keys import (
    COORDINATOR,
    DEMO_PASSWORD_FILE,
    ROSTER_FILE,
    create_demo_keys,
    load_account,
    load_roster,
)
from fl_ray.rundir import RunDir

AdapterState = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SyntheticRun:
    run_dir: Path
    keys_dir: Path
    roster_path: Path
    recipe: Recipe


def _noise_like(state: AdapterState, gen: torch.Generator, scale: float) -> AdapterState:
    return {
        k: v + scale * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in state.items()
    }


def synthesise_run(
    out_dir: str | Path,
    initial_state: Mapping[str, torch.Tensor],
    silos: list[str],
    rounds: int,
    *,
    run_name: str = "synthetic",
    federation_id: str = "fl-ray-demo",
    strategy: Mapping[str, Any] | None = None,
    save_updates: bool = True,
    seed: int = 0,
    keys_dir: str | Path | None = None,
    dropped: Mapping[int, Mapping[str, str]] | None = None,
    aborted_rounds: frozenset[int] = frozenset(),
    base_config: Mapping[str, Any] | None = None,
) -> SyntheticRun:
    """Write ``out_dir/<run_name>``: rounds 0..``rounds`` with receipts, like a real run's.

    ``keys_dir`` reuses demo keys made earlier (default: new ones in ``out_dir/keys``);
    ``dropped`` maps a round to silos that round drops (with reasons); ``aborted_rounds`` merge
    nothing. The base model directory holds only ``config.json`` (``base_config``).
    """
    import json

    from fl_ray.silo import derive_seed
    from fl_ray.strategies import aggregate, shared_keys

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = Path(keys_dir) if keys_dir else out / "keys"
    if not (keys / ROSTER_FILE).exists():
        create_demo_keys(keys, federation_id, silos)
    roster = load_roster(keys / ROSTER_FILE)
    password_file = keys / DEMO_PASSWORD_FILE
    accounts = {
        name: load_account(keys / f"{name}.json", password_file=password_file)
        for name in [*silos, COORDINATOR]
    }
    base = out / "base"
    base.mkdir(exist_ok=True)
    (base / "config.json").write_text(json.dumps(base_config or {"model_type": "llama"}))
    tree = {
        "run_name": run_name,
        "output_dir": str(out),
        "seed": seed,
        "rounds": rounds,
        "base_model": {"path": str(base)},
        "silos": [{"name": s, "data_dir": str(out / "data" / s)} for s in silos],
        "strategy": dict(strategy or {"name": "fedavg"}),
        "output": {"save_updates": save_updates, "save_merged": False},
        "federation": {"id": federation_id, "roster": str(keys / ROSTER_FILE)},
    }
    recipe = parse_recipe(tree, check_paths=False)
    run = RunDir.create(recipe, {"run_name": run_name, "recipe_sha256": recipe.fingerprint()})
    (run.root / ROSTER_FILE).write_bytes((keys / ROSTER_FILE).read_bytes())
    notary = RoundNotary(
        accounts[COORDINATOR],
        federation_id,
        run_name,
        recipe.fingerprint(),
        base_model_fingerprint(base),
    )
    name, params = recipe.strategy.name, recipe.strategy.params()
    global_state = {k: v.clone() for k, v in initial_state.items()}
    server_state: AdapterState = {}
    global_hash = state_hash(global_state)
    metrics: dict[str, Any] = {"round": 0, "status": "initial"}
    receipt = notary.receipt_for_round(
        0, "initial", global_hash, global_hash, name, params, [], {}, metrics, ZERO_HASH
    )
    run.write_round(0, global_state, metrics, extra_files={RECEIPT_FILE: receipt})
    gen = torch.Generator().manual_seed(seed)
    sent = shared_keys(name, global_state)
    for r in range(1, rounds + 1):
        drops = dict((dropped or {}).get(r, {}))
        accepted: dict[str, tuple[AdapterState, Contribution]] = {}
        for i, silo in enumerate(s for s in silos if s not in drops):
            update = _noise_like({k: global_state[k] for k in sent}, gen, 0.01)
            examples = 10 + i
            signed = _sign(accounts[silo], federation_id, run_name, r, silo, update, examples,
                           global_state)  # fmt: skip
            contribution = check_silo_update(
                federation_id, run_name, r, silo, update, examples, global_hash,
                signed.signature, roster.silos[silo],
            )  # fmt: skip
            accepted[silo] = (update, contribution)
        status = "aborted" if r in aborted_rounds else "ok"
        names = sorted(accepted)
        if status == "ok":
            merged = aggregate(
                name,
                params,
                global_state,
                [accepted[n][0] for n in names],
                [float(accepted[n][1].num_examples) for n in names],
                server_state,
                seed=derive_seed(seed, "merge", r),
            )
            new_global, new_server = merged.state, merged.server_state
        else:
            new_global, new_server = global_state, server_state
        new_hash = state_hash(new_global)
        metrics = {"round": r, "status": status, "contributed": names, "dropped": drops}
        receipt = notary.receipt_for_round(
            r,
            status,
            global_hash,
            new_hash,
            name,
            params,
            [accepted[n][1] for n in names],
            drops,
            metrics,
            RoundNotary.receipt_hash(receipt),
            server_state_after=state_hash(new_server),
        )
        updates = {n: accepted[n][0] for n in names} if save_updates else None
        run.write_round(r, new_global, metrics, updates, new_server, {RECEIPT_FILE: receipt})
        global_state, server_state, global_hash = new_global, new_server, new_hash
    return SyntheticRun(run.root, keys, keys / ROSTER_FILE, recipe)
