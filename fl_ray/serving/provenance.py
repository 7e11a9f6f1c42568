"""Provenance first: a round is served only after its receipt chain verifies.

Before any weights are read, the run's receipts up to the served round go through the same check
as ``fl-ray verify`` (:func:`fl_ray.receipts.verify.verify_run`: signatures against the roster,
the hash chain, and a recomputation of each round's merge from the stored updates). What passes
becomes a :class:`Provenance` -- run id, round, receipt hash -- that the server stamps on every
response, so a caller can always say which audited round produced an answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl_ray.rundir import RunDir

HEADER_RUN = "X-FL-Ray-Run"
HEADER_ROUND = "X-FL-Ray-Round"
HEADER_RECEIPT = "X-FL-Ray-Receipt"


class ProvenanceError(Exception):
    """The receipts do not vouch for the requested round; the message is one line saying why.

    Deliberately not a ``ValueError``: a refusal is not bad command-line input (exit 2) but a
    failed audit (exit 1, like ``fl-ray verify``).
    """


@dataclass(frozen=True)
class Provenance:
    """Which run, round and receipt produced a served model, and the hashes that receipt signs
    for what may be loaded (``fl_ray.receipts.hashing``: adapter ``state_hash``, base model
    fingerprint). Responses carry only run, round and receipt."""

    run: str
    round: int
    receipt: str
    adapter_hash: str = ""
    base_fingerprint: str = ""

    def headers(self) -> dict[str, str]:
        return {HEADER_RUN: self.run, HEADER_ROUND: str(self.round), HEADER_RECEIPT: self.receipt}

    def as_json(self) -> dict[str, Any]:
        return {"run": self.run, "round": self.round, "receipt": self.receipt}


def run_id(run: RunDir) -> str:
    """The run's identity as run.json records it (``run_id`` where present, else its name)."""
    info = run.run_info()
    return str(info.get("run_id") or info.get("run_name") or run.root.name)


def resolve_round(run: RunDir, round_num: int | None) -> int:
    """The round to serve: ``round_num`` if it is complete, else the last complete round."""
    if not (run.root / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{run.root} is not a run directory (no recipe.yaml)")
    complete = run.complete_rounds()
    if not complete:
        raise ValueError(f"{run.root} has no complete round to serve")
    if round_num is None:
        return complete[-1]
    if round_num not in complete:
        raise ValueError(
            f"round {round_num} is not a complete round of {run.root} "
            f"(complete: {complete[0]}..{complete[-1]})"
        )
    return round_num


def verify_provenance(
    run_dir: str | Path, round_num: int | None = None, roster: str | Path | None = None
) -> Provenance:
    """Verify receipts up to the served round; raise :class:`ProvenanceError` if they fail.

    ``round_num`` None serves the last complete round. Nothing of the model is loaded here.
    """
    run = RunDir(run_dir)
    served = resolve_round(run, round_num)
    try:
        from fl_ray.receipts.verify import verify_run
    except ModuleNotFoundError as err:
        if not (err.name or "").startswith("fl_ray.receipts"):
            raise
        raise ProvenanceError(
            "cannot verify receipts: fl_ray.receipts.verify is not installed"
        ) from None
    result = verify_run(
        run.root, roster_path=str(roster) if roster else None, upto_round=served, recompute=True
    )
    if not result.ok:
        raise ProvenanceError(f"receipts do not verify: {result.failure}")
    receipt = result.receipt_hashes.get(served)
    if not receipt:
        raise ProvenanceError(f"receipts do not verify: round {served} has no receipt hash")
    message = _verified_receipt_message(run, served, receipt)
    return Provenance(
        run=run_id(run),
        round=served,
        receipt=receipt,
        adapter_hash=message["global_after"],
        base_fingerprint=message["base_fingerprint"],
    )


def _verified_receipt_message(run: RunDir, round_num: int, receipt: str) -> dict[str, Any]:
    """The signed message of the receipt just verified, re-read and matched to its hash (so a
    file swapped after verification is caught)."""
    from fl_ray.receipts.chain import RECEIPT_FILE, parse_receipt, receipt_hash

    path = run.round_dir(round_num) / RECEIPT_FILE
    blob = path.read_bytes()
    if receipt_hash(blob) != receipt:
        raise ProvenanceError(f"round {round_num}: {path} changed after it was verified")
    return parse_receipt(blob).message


def check_adapter(provenance: Provenance, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse an adapter that is not the one the round's receipt signs (``global_after``)."""
    from fl_ray.receipts.hashing import state_hash

    if state_hash(state) != provenance.adapter_hash:
        raise ProvenanceError(
            f"round {provenance.round}: adapter {where} is not the one its receipt signs"
        )


def check_base_model(provenance: Provenance, base_path: str | Path) -> None:
    """Refuse a base model whose fingerprint differs from the receipt's (a replica may start on
    a node with its own copy of the base)."""
    from fl_ray.receipts.hashing import base_model_fingerprint

    if base_model_fingerprint(base_path) != provenance.base_fingerprint:
        raise ProvenanceError(
            f"round {provenance.round}: base model at {base_path} is not the one its receipt "
            "names (base_fingerprint differs)"
        )
